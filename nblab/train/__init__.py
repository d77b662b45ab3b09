"""nblab.train: the built-in model and datasets (the training loop builds on these).

ds = build_dataset("pydoc")
model = build_model("gpt", "tiny", vocab_size=ds.vocab_size, max_seq_len=256)
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
from nblab.train.model import FLAVOURS, GPT, MODELS, GPTConfig, build_model

__all__ = [
    "DATASETS",
    "FLAVOURS",
    "GPT",
    "MODELS",
    "AdditionDataset",
    "Dataset",
    "GPTConfig",
    "MissingDependencyError",
    "TokenStreamDataset",
    "build_dataset",
    "build_model",
    "exact_match_accuracy",
]
