"""Where nblab's own notebooks are: inside the installed package (a wheel ships
them as nblab/notebooks/) or at the repository root (an editable checkout)."""

from __future__ import annotations

from pathlib import Path

_PACKAGED = Path(__file__).resolve().parent / "notebooks"
_CHECKOUT = Path(__file__).resolve().parents[1] / "notebooks"


def notebook(name: str) -> Path:
    """The path of notebooks/<name>; FileNotFoundError names both places looked in."""
    for folder in (_PACKAGED, _CHECKOUT):
        path = folder / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"notebook {name!r} is neither in {_PACKAGED} nor in {_CHECKOUT}")
