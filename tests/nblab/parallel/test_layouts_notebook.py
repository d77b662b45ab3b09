"""notebooks/parallel_layouts.ipynb, headless: the plan prints, the layouts train and
the FSDP 2 and PP 2 runs' losses equal the single process's."""

from pathlib import Path

from nblab.notebooks import execute
from nblab.runs import RunStore

NOTEBOOK = Path(__file__).parents[3] / "notebooks" / "parallel_layouts.ipynb"


def test_parallel_layouts_notebook_plans_runs_and_compares(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("NBLAB_HOME", str(home))  # the kernel inherits it
    nb = execute(
        NOTEBOOK,
        tmp_path / "out.ipynb",
        {
            "steps": 3,
            "layouts": {
                "single": [],
                "fsdp2": ["parallel.nproc=2", "parallel.dp_shard=2"],
                "pp2": ["parallel.nproc=2", "parallel.pp=2"],
            },
            "sweep_name": "layouts",
        },
        execution_timeout=600,
    )
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "dp_shard 8" in text and "rejected" in text  # the 8-GPU plan
    store = RunStore(home)
    runs = store.runs(sweep="layouts").set_index("name")
    assert set(runs.status) == {"succeeded"} and set(runs.step) == {3}
    single, fsdp, pp = (
        store.metrics(runs.run_id[f"layout-{n}"], keys="loss").value.to_numpy()
        for n in ("single", "fsdp2", "pp2")
    )
    assert len(single) == 3
    assert abs(single - fsdp).max() < 1e-4 and abs(single - pp).max() < 1e-4
    html = "".join(o["data"].get("text/html", "") for o in outputs if "data" in o)
    assert "max |loss - single|" in html  # the comparison table rendered
