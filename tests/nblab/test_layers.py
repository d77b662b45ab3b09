"""Packages import downward only (../shared/ARCHITECTURE.md): read from the source, every
import statement counted, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

NBLAB = Path(__file__).resolve().parents[2] / "nblab"
MODEL_MODULES = ("nblab.models.gpt", "nblab.models.hf", "nblab.models.py", "transformers")


def imports_of(path: Path) -> set[str]:
    """Every module an import statement in `path` names (absolute and relative)."""
    package = ".".join(path.relative_to(NBLAB.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def imports_under(folder: str) -> dict[str, set[str]]:
    return {
        str(path.relative_to(NBLAB.parent)): imports_of(path)
        for path in sorted((NBLAB / folder).rglob("*.py"))
    }


def offending(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    out = {}
    for path, modules in imports_under(folder).items():
        bad = sorted(m for m in modules if m.startswith(forbidden))
        if bad:
            out[path] = bad
    return out


def test_the_reader_sees_imports_inside_functions():
    """The check itself: launch.py imports the trainer inside a function."""
    assert "nblab.train.trainer" in imports_of(NBLAB / "launch.py")


def test_parallel_speaks_only_the_model_protocol():
    assert offending("parallel", (*MODEL_MODULES, "nblab.train", "nblab.launch")) == {}


def test_the_trainer_never_starts_torchrun():
    assert offending("train", ("nblab.launch", "nblab.batch", "nblab.parallel.launch")) == {}


@pytest.mark.parametrize(
    ("folder", "above"),
    [
        ("models", ("nblab.train", "nblab.parallel", "nblab.batch", "nblab.launch")),
        ("precision", ("nblab.models", "nblab.train", "nblab.parallel", "nblab.batch")),
        # fine-tuning is a model-level layer under the planner and the trainer
        ("finetune", ("nblab.train", "nblab.parallel", "nblab.batch", "nblab.merge")),
        ("merge", ("nblab.batch", "nblab.server", "nblab.widgets", "nblab.launch")),
        # evaluations sit beside the trainer: launch, batch jobs and views call them
        ("eval", ("nblab.launch", "nblab.batch", "nblab.widgets", "nblab.server", "nblab.cli")),
    ],
)
def test_lower_layers_do_not_import_upper_ones(folder, above):
    assert offending(folder, above) == {}
