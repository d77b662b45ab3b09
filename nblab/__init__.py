"""nblab: a notebook-first lab for low-precision training recipes."""

from nblab.recipe import Recipe, RecipeError

__all__ = ["Recipe", "RecipeError"]
