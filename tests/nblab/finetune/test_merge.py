"""Merges as runs: made from the sweep "ft" (LoRA, LoRA on an nvfp4 base, full fine-tune of
one pretrained run), evaluated on the members' val batches, refused by field before
anything is written."""

from __future__ import annotations

import json

import pytest
import torch

from nblab.cli import main as cli
from nblab.merge import MergeError, plan_merge, run_merge
from nblab.merge.run import read_json
from nblab.train.finetuned import dense_weights
from nblab.train.trainer import train


def test_the_uniform_soup_of_identical_checkpoints_equals_the_checkpoint(runs, store):
    member = runs.members["lora-nvfp4"]
    result = run_merge(plan_merge([member, member], "uniform", store=store), store=store)
    _, merged, step = dense_weights(result.run_id, store=store)
    _, original, _ = dense_weights(member, store=store)
    assert step == 0 and set(merged) == set(original)
    assert all(torch.equal(merged[k], original[k]) for k in original)
    run = store.run(result.run_id)
    assert (run["kind"], run["status"], run["sweep"]) == ("merge", "succeeded", "ft")
    assert json.loads(run["sources"]) == [{"run_id": member, "step": 6}] * 2


def test_a_greedy_soup_is_never_worse_on_held_out_val_than_its_best_ingredient(runs, store):
    result = run_merge(plan_merge("ft", "greedy", store=store), store=store)
    assert sorted(result.spec.members) == sorted(runs.members.values())
    assert result.val_loss <= result.best_member["val_loss"]
    assert result.soup_minus_best <= 0
    assert result.taken[0] == result.best_member["run_id"]
    # the same val batches as its members: the full fine-tune computes with exactly the
    # plain model the merge evaluates, and scores here what it recorded
    full = next(m for m in result.members if m["run_id"] == runs.members["full"])
    assert full["val_loss"] == pytest.approx(full["recorded_val_loss"], abs=1e-6)
    saved = read_json(store.run_dir(result.run_id))
    assert saved["taken"] == result.taken and saved["method"] == "greedy"
    formats = {m["name"]: m["format"] for m in saved["members"]}
    assert formats == {"lora": "bf16", "lora-nvfp4": "bf16 (base nvfp4)", "full": "bf16"}
    metrics = store.metrics(result.run_id)
    assert set(metrics.key) >= {"val_loss", "val_accuracy", "soup_minus_best_val_loss"}


@pytest.mark.parametrize(
    ("method", "options"),
    [("ties", {}), ("dare", {"p": 0.5, "then": "ties"}), ("fisher", {})],
)
def test_every_method_makes_a_merge_run(runs, store, method, options):
    spec = plan_merge("ft", method, store=store, **options)
    if method != "fisher":
        assert spec.base == runs.base  # the members' shared model.init_from
    result = run_merge(spec, store=store)
    assert store.run(result.run_id)["status"] == "succeeded"
    assert torch.isfinite(torch.tensor(result.val_loss))


def test_cli_merges_a_sweep_and_nblab_runs_shows_the_kind(runs, store, capsys):
    assert cli(["merge", "ft", "--method", "task-arithmetic", "--top-k", "2", "--lam", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "soup minus best" in out and "merging 2 runs" in out
    assert cli(["runs", "--sweep", "ft"]) == 0
    listing = capsys.readouterr().out
    assert "merge-task-arithmetic-top2" in listing and " merge " in listing


def _count(store) -> int:
    return len(store.runs())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"method": "soup"}, "--method"),
        ({"method": "task-arithmetic", "lam": 1.5}, "--lam"),
        ({"method": "task-arithmetic", "lam": 0.0}, "--lam"),
        ({"method": "dare", "p": 1.0}, "--p"),
        ({"method": "dare", "p": -0.1}, "--p"),
        ({"method": "ties", "trim": 0.0}, "--trim"),
        ({"method": "uniform", "top_k": 1}, "members"),
        ({"method": "ties", "base": "no-such-run"}, "--base"),
        ({"method": "uniform", "base": "no-such-run"}, "--base"),
        ({"method": "greedy", "lam": 0.5}, "--lam"),
        ({"method": "ties", "p": 0.5}, "--p"),
    ],
)
def test_bad_input_is_refused_with_the_field_named_before_anything_is_written(
    runs, store, kwargs, field
):
    before = _count(store)
    kwargs = dict(kwargs)
    method = kwargs.pop("method")
    with pytest.raises(MergeError) as err:
        plan_merge("ft", method, store=store, **kwargs)
    assert err.value.field == field
    assert _count(store) == before


def test_members_of_another_architecture_are_refused_naming_the_parameter(
    runs, store, base_recipe, capsys
):
    odd = train(
        base_recipe.with_overrides(
            {"model.config": {"ffn_hidden": 96}, "train.steps": 1, "name": "odd"}
        ),
        store=store,
    )
    before = _count(store)
    with pytest.raises(MergeError) as err:
        plan_merge([runs.members["lora"], odd.run_id], "uniform", store=store)
    assert err.value.field == "members" and err.value.value == odd.run_id
    assert "'layers.0.mlp.gate.weight'" in str(err.value)
    assert "(128, 64)" in str(err.value) and "(96, 64)" in str(err.value)
    assert cli(["merge", runs.members["lora"], odd.run_id, "--method", "greedy"]) == 2
    assert "layers.0.mlp.gate.weight" in capsys.readouterr().err
    assert _count(store) == before


def test_members_of_several_precisions_merge_evaluated_in_bf16(tmp_path, base_recipe):
    from nblab.merge.run import MergeSpec, merge_recipe
    from nblab.runs import RunStore

    store = RunStore(tmp_path / "home")
    recipes = [base_recipe.with_overrides({"precision.preset": p}) for p in ("nvfp4", "mxfp8")]
    ids = [store.create_run(f"p{i}", r.to_toml(), "s") for i, r in enumerate(recipes)]
    mixed = merge_recipe(MergeSpec("uniform", ids, [1, 1], "s", name="merge-uniform"), store)
    assert mixed.precision.preset == "bf16" and mixed.name == "merge-uniform"
    assert mixed.finetune.method == "full"  # the merged model is plain
    same = merge_recipe(MergeSpec("uniform", [ids[0]] * 2, [1, 1], "s", name="m"), store)
    assert same.precision.preset == "nvfp4"
