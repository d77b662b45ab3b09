"""nblab.train: datasets, the training loop, checkpoints and metrics (models: nblab.models).

ds = build_dataset("pydoc")
result = nblab.train.trainer.train(Recipe.preset("gpt-tiny"))
"""

from nblab.train.data import (
    DATASETS,
    AdditionDataset,
    Dataset,
    MissingDependencyError,
    TokenStreamDataset,
    build_dataset,
    exact_match_accuracy,
)

__all__ = [
    "DATASETS",
    "AdditionDataset",
    "Dataset",
    "MissingDependencyError",
    "TokenStreamDataset",
    "build_dataset",
    "exact_match_accuracy",
]
