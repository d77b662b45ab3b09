"""notebooks/finetune_and_merge.ipynb, headless and short: pretrain, four LoRA fine-tunes
(two learning rates x base as trained / nvfp4 packed), uniform, greedy and TIES merges,
the report, and the closing verdict computed from the runs."""

from __future__ import annotations

from pathlib import Path

from nblab.notebooks import execute
from nblab.runs import RunStore

NOTEBOOK = Path(__file__).parents[3] / "notebooks" / "finetune_and_merge.ipynb"


def test_finetune_and_merge_notebook_runs_headless(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("NBLAB_HOME", str(home))  # the kernel inherits it
    nb = execute(
        NOTEBOOK,
        tmp_path / "out.ipynb",
        {"pretrain_steps": 30, "finetune_steps": 8, "sweep_name": "ftnb"},
        execution_timeout=900,
    )
    store = RunStore(home)
    runs = store.runs(sweep="ftnb")
    assert set(runs.status) == {"succeeded"}
    train, merges = runs[runs.kind == "train"], runs[runs.kind == "merge"]
    assert sorted(train.name) == sorted(
        f"lr={lr},base={b}" for lr in ("0.003", "0.01") for b in ("trained", "nvfp4")
    )
    assert sorted(merges.name) == ["merge-greedy", "merge-ties", "merge-uniform"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "frozen base nvfp4" in text and "bytes saved" in text
    markdown = "".join(o["data"].get("text/markdown", "") for o in outputs if "data" in o)
    assert "soups beat their best ingredient** on val loss, and" in markdown
    assert "on exact match" in markdown
    assert "Across formats, the best ingredient of each: bf16 " in markdown  # bf16 and nvfp4 base
    report = (home / "sweeps" / "ftnb" / "report.html").read_text()
    assert "Merges" in report and "soup_minus_best" in report  # the report's merge section
    assert "its best ingredient (" in report  # the verdict of each merge
