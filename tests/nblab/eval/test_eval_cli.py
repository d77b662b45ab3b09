"""nblab eval / sensitivity / advise from the command line: bad input is named with what
exists and writes nothing; evaluations are runs of kind eval that sweeps can make."""

from __future__ import annotations

import re

import pytest
from eval_helpers import debug

from nblab.batch.base import Launcher
from nblab.batch.sweeps import run_sweep
from nblab.cli import main as cli
from nblab.eval.report import eval_runs
from nblab.eval.source import eval_recipe, resolve_source, run_fields
from nblab.launch import launch
from nblab.recipe import Recipe, RecipeError
from nblab.runs import RunStore
from nblab.sweep import Sweep
from nblab.train.trainer import train


def snapshot(store) -> tuple:
    """Everything a refused request must leave as it was: the runs and every file."""
    files = sorted(str(p.relative_to(store.home)) for p in store.home.rglob("*") if p.is_file())
    runs = store.runs()
    return list(runs.run_id), list(runs.status), [f for f in files if not f.startswith("nblab.db")]


@pytest.fixture
def trained(store):
    return train(debug(), store=store).run_id


@pytest.fixture(scope="module")
def refusing(tmp_path_factory):
    """(home, a trained run, a run that saved no checkpoint): a store every refused
    request must leave as it is."""
    home = tmp_path_factory.mktemp("refusing") / "home"
    mp = pytest.MonkeyPatch()
    mp.setenv("NBLAB_HOME", str(home))
    try:
        store = RunStore(home)
        trained = train(debug(), store=store).run_id
        empty = store.create_run("never-saved", debug().to_toml())
    finally:
        mp.undo()
    return home, trained, empty


BAD = [
    (["eval", "nope", "--precision", "nvfp4"], "unknown run 'nope' in .*runs with checkpoints"),
    (
        ["eval", "{run}", "--step", "7", "--precision", "nvfp4"],
        r"saved no checkpoint at step 7; saved: \[6, 12\]",
    ),
    (
        ["eval", "{run}", "--precision", "nvfp4,nvfp5"],
        r"eval.precision: 'nvfp5' -> \"\" \(the \[precision\] section\), a precision preset",
    ),
    (["eval", "{empty}", "--precision", "nvfp4"], "has no checkpoints"),
    (["eval", "{run}", "--precision", "nvfp4", "--batches", "0"], "--batches: 0 -> an integer"),
    (["sensitivity", "{run}", "--precision", "fp5"], "eval.precision: 'fp5'"),
    (["sensitivity", "nope", "--precision", "nvfp4"], "unknown run 'nope'"),
    (
        ["advise", "{run}", "--preset", "int4_b32", "--budget", "0.1"],
        "--preset 'int4_b32' is unknown; accepted: bf16, fp8_tensorwise",
    ),
    (["advise", "{run}", "--preset", "nvfp4", "--budget", "-1"], "a Δ val loss >= 0"),
    (
        ["advise", "{run}", "--preset", "nvfp4", "--bits", "1"],
        r"--bits 1 is below what nvfp4 takes .*: \d+\.\d+ bits per element",
    ),
    (["advise", "{run}", "--step", "5", "--preset", "nvfp4", "--bits", "5"], r"saved: \[6, 12\]"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a[:2]) for a, _ in BAD])
def test_bad_input_is_named_and_nothing_is_written(refusing, monkeypatch, capsys, argv, message):
    home, trained, empty = refusing
    monkeypatch.setenv("NBLAB_HOME", str(home))
    store = RunStore(home)
    argv = [a.format(run=trained, empty=empty) for a in argv]
    before = snapshot(store)
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert snapshot(store) == before


def test_an_evaluation_is_not_a_source(store, trained, capsys):
    assert cli(["eval", trained, "--precision", "mxfp4"]) == 0
    evaluation = store.runs().run_id.iloc[-1]
    assert cli(["eval", evaluation, "--precision", "mxfp4"]) == 2
    assert f"is an eval run; evaluate the training run it was made from ({trained})" in (
        capsys.readouterr().err
    )


def test_eval_prints_a_row_per_format_and_runs_lists_them_as_eval(store, trained, capsys):
    assert cli(["eval", trained, "--precision", "nvfp4,int4_b32", "--weights-only"]) == 0
    out = capsys.readouterr().out
    assert "val loss" in out and "nvfp4" in out and "int4_b32" in out
    assert cli(["runs"]) == 0
    header, *lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    kind = header.index("kind")
    assert [line[kind] for line in lines] == ["train", "eval", "eval"]


def test_a_training_recipe_cannot_set_the_fields_of_an_evaluation():
    with pytest.raises(RecipeError, match="eval.precision: 'nvfp4' -> its default in a training"):
        Recipe.preset("gpt-debug").with_overrides(["eval.precision=nvfp4"])
    with pytest.raises(RecipeError, match="eval.scan: 'layer' -> \"\" \\(one evaluation\\)"):
        Recipe.preset("gpt-debug").with_overrides(["eval.scan=layer"])


def test_a_sweep_over_eval_precision_makes_eval_runs_of_the_source(store, trained, tmp_path):
    source = resolve_source(trained, store=store)
    path = tmp_path / "eval.toml"
    assert cli(["eval", trained, "--precision", "mxfp4", "--save-recipe", str(path)]) == 0
    assert len(store.runs()) == 1  # only the training run: the recipe was written, no run
    base = Recipe.from_toml(path)
    assert base == eval_recipe(source)
    points = Sweep.from_overrides(base, ["eval.precision=nvfp4,mxfp4,int4_b32"]).expand()
    assert [p.recipe.eval.precision for p in points] == ["nvfp4", "mxfp4", "int4_b32"]
    fields = run_fields(points[0].recipe, store)
    assert fields == {"steps": 12, "kind": "eval", "sources": [{"run_id": trained, "step": 12}]}
    assert run_fields(debug(), store) == {"steps": 12}

    # run_sweep creates the runs and a launcher runs them as a batch job does: launch() of
    # the run's recipe with its run id (papermill's job is test_eval_views' Measure)
    sweep = Sweep.from_overrides(base, ["eval.precision=nvfp4,int4_b32"])
    handle = run_sweep(sweep, launcher=InProcessLauncher(store), store=store)
    runs = store.runs(sweep=sweep.name)
    assert list(runs.run_id) == handle.run_ids and set(runs.status) == {"succeeded"}
    assert set(runs.kind) == {"eval"} and list(runs.steps) == [12, 12]
    evals = eval_runs(store).set_index("run_id").loc[handle.run_ids]
    assert list(evals.precision) == ["nvfp4", "int4_b32"] and evals.val_loss.notna().all()


class InProcessLauncher(Launcher):
    """Runs each submitted run at once in this process, as a batch job would (launch)."""

    def __init__(self, store: RunStore):
        self.store, self.run_ids = store, []

    def submit(self, run_ids) -> None:
        for run_id in run_ids:
            self.run_ids.append(run_id)
            launch(
                Recipe.from_toml(self.store.run(run_id)["recipe"]), store=self.store, run_id=run_id
            )

    def poll(self) -> dict[str, str]:
        return {r: self.store.run(r)["status"] for r in self.run_ids}

    def cancel(self, run_id: str) -> None:
        raise NotImplementedError

    def wait(self, timeout: float | None = None) -> bool:
        return True
