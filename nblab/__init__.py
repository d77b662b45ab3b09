"""nblab: a notebook-first lab for low-precision training recipes."""

from typing import Any

__all__ = ["Recipe", "RecipeError"]


def __getattr__(name: str) -> Any:
    # Lazy: `import nblab.runs` (every job, the Jupyter server) must not pay for torch.
    if name in __all__:
        from nblab import recipe

        return getattr(recipe, name)
    raise AttributeError(f"module 'nblab' has no attribute {name!r}")
