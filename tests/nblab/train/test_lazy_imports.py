"""What validating a recipe imports: not torch.distributed.checkpoint and the DTensor,
sympy it brings (~0.5 s of every job's and every CLI call's start), nor pandas or
matplotlib. Checked in a fresh interpreter, where sys.modules shows what was imported."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch.distributed.checkpoint", "torch.distributed.tensor", "sympy", "pandas")

SCRIPT = """
import json, sys
from pathlib import Path
from nblab.recipe import Recipe
from nblab.train import checkpoint, weights  # both name checkpoints; neither reads one

recipe = Recipe.from_toml(Recipe.preset("gpt-debug").to_toml())
assert recipe.problems() == []
assert checkpoint.list_checkpoints(Path(sys.argv[1])) == []
print(json.dumps(sorted(m for m in sys.modules if m.startswith(tuple(sys.argv[2:])))))
"""


def imported_by(script: str, tmp_path, *prefixes: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), *prefixes],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return json.loads(out.splitlines()[-1])


def test_validating_a_recipe_reads_no_checkpoint_library(tmp_path):
    assert imported_by(SCRIPT, tmp_path, *HEAVY, "matplotlib") == []


def test_the_check_sees_a_module_once_it_is_imported(tmp_path):
    """The same script, after a checkpoint was read: the library is there."""
    reads = SCRIPT.replace("print(", "checkpoint._dcp().FileSystemReader(sys.argv[1])\nprint(", 1)
    assert "torch.distributed.checkpoint" in imported_by(reads, tmp_path, *HEAVY)
