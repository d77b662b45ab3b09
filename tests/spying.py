"""spy_on: record the calls into some of a module's functions and still run them.
Shared by the dispatch tests of the Triton and compiled backends (tests/ is on sys.path
through its conftest.py)."""

from __future__ import annotations


def spy_on(monkeypatch, module, names) -> list[str]:
    """The names of module's functions in `names`, appended as each is called."""
    calls: list[str] = []
    for name in names:
        original = getattr(module, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return calls
