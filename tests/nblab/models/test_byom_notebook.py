"""notebooks/bring_your_model.ipynb runs headless: a JSON-lines corpus, a BPE tokenizer, a
tiny Llama, a bf16 / mxfp8 / nvfp4 sweep as batch jobs, export and reload (its own
asserts check the tokenizer round trip and equal logits after the reload)."""

from pathlib import Path

from nblab.notebooks import execute
from nblab.recipe import Recipe
from nblab.runs import RunStore

NOTEBOOK = Path(__file__).parents[3] / "notebooks" / "bring_your_model.ipynb"


def test_bring_your_model_notebook_sweeps_exports_and_reloads(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("NBLAB_HOME", str(home))
    nb = execute(
        NOTEBOOK,
        tmp_path / "out.ipynb",
        {"steps": 12, "documents": 200, "sweep_name": "byom", "jobs": 2},
        execution_timeout=600,
        interrupt_on_timeout=True,
    )
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors, "\n".join("\n".join(o.traceback) for o in errors)
    runs = RunStore(home).runs(sweep="byom")
    assert sorted(runs.status) == ["succeeded"] * 3
    presets = {
        Recipe.from_toml(RunStore(home).run(r)["recipe"]).precision.preset for r in runs.run_id
    }
    assert presets == {"bf16", "mxfp8", "nvfp4"}
    for run_id in runs.run_id:  # each run folder holds the tokenizer it read
        assert (RunStore(home).run_dir(run_id) / "tokenizer" / "tokenizer.json").is_file()
    text = "".join(str(o.get("text", "")) for c in nb.cells for o in c.get("outputs", []))
    assert "LlamaForCausalLM max |logits difference|: 0.0" in text
