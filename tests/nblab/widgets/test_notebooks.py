from pathlib import Path

import pytest

from nblab.notebooks import execute
from nblab.runs import RunStore

NOTEBOOKS = Path(__file__).parents[3] / "notebooks"
CELL_TIMEOUT_S = 600


def _execute(name: str, out: Path, parameters: dict):
    nb = execute(
        NOTEBOOKS / name,
        out,
        parameters,
        # A hung cell fails the test with the kernel's traceback (the interrupt's
        # KeyboardInterrupt lands in the cell's output) instead of hanging the suite.
        execution_timeout=CELL_TIMEOUT_S,
        interrupt_on_timeout=True,
    )
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, "\n".join("\n".join(o.traceback) for o in errors)
    return nb, outputs


def test_format_explorer_notebook_runs_headless(tmp_path):
    out = tmp_path / "out.ipynb"
    nb, outputs = _execute(
        "format_explorer.ipynb",
        out,
        {"specs": ["mxfp8", "nvfp4"], "sample": "laplace", "size": 64},
    )
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("hadamard16 e2m1 block16" in t for t in tables)  # nvfp4 with the transform


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A temporary NBLAB_HOME: the kernel papermill starts inherits it."""
    monkeypatch.setenv("NBLAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_quickstart_notebook_runs_headless(tmp_path, home):
    _execute(
        "quickstart.ipynb",
        tmp_path / "quickstart.ipynb",
        {
            "base": "gpt-debug",
            "steps": 2,
            "presets": ["bf16", "nvfp4"],
            "jobs": 2,
            "sweep_name": "qs",
            "wait_for_jobs": True,
        },
    )
    runs = RunStore(home).runs(sweep="qs")
    assert len(runs) == 2
    assert set(runs.status) == {"succeeded"}
    assert set(runs.step) == {2}


def test_fp4_recipes_notebook_runs_headless(tmp_path, home):
    nb, outputs = _execute(
        "fp4_recipes.ipynb",
        tmp_path / "fp4_recipes.ipynb",
        {"steps": 6, "jobs": 2, "flavour": "debug", "sweep_name": "fp4"},
    )
    runs = RunStore(home).runs(sweep="fp4")
    assert len(runs) == 5
    assert set(runs.status) == {"succeeded"}
    assert set(runs.step) == {6}
    recipes = [RunStore(home).run(r)["recipe"] for r in runs.run_id]
    assert sum('preset = "nvfp4"' in r for r in recipes) == 3
    assert any('rounding = "rne"' in r for r in recipes)  # the no-RHT/SR variant
    assert any("!last:15%" in r for r in recipes)  # nvfp4 with every block in fp4
    # the summary table names every variant; the heatmap rendered
    html = "".join(o["data"].get("text/html", "") for o in outputs if "data" in o)
    for variant in ("bf16", "mxfp4", "nvfp4 no RHT/SR", "nvfp4 all-fp4"):
        assert variant in html
    assert any(
        "QuantErrorHeatmap" in o["data"].get("text/plain", "") for o in outputs if "data" in o
    )


def test_ptq_and_advisor_notebook_runs_headless(tmp_path, home, monkeypatch):
    """Train gpt-tiny in bf16, evaluate every preset, scan nvfp4, advise under a budget,
    verify the advice when measured, apply it and build the report (the notebook asserts
    each)."""
    # the kernels on one thread: on a busy 2-core machine two wait on each other
    # (benchmarks/results/sensitivity-scan-gpt-tiny-cpu.txt: a scan 7x slower on two)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    _execute(
        "ptq_and_advisor.ipynb",
        tmp_path / "ptq_and_advisor.ipynb",
        {"steps": 60, "eval_batches": 2, "sweep_name": "ptq", "budget": 0.02},
    )
    from nblab.precision.presets import PRECISION_PRESETS

    store = RunStore(home)
    runs = store.runs()
    assert set(runs.status) == {"succeeded"}
    # every preset weights only and with activations, the scan, the measured advice
    assert (runs.kind == "eval").sum() == 2 * len(PRECISION_PRESETS) + 2
    assert (home / "sweeps" / "ptq" / "report.html").exists()
