"""The precision advisor: greedy by Δ loss per bit, a patch relative to the preset, and an
advised recipe that meets its budget when measured."""

from __future__ import annotations

import pytest

from nblab.cli import main as cli
from nblab.eval.advisor import AdviceError, advise, keep_patch
from nblab.eval.report import ADVICE_FILE, SCAN_FILE, eval_runs, read_json
from nblab.eval.sensitivity import Scan, ScanRow
from nblab.precision.plan import keeping_token
from nblab.precision.presets import resolve_precision
from nblab.recipe import Recipe

MODULES = [f"layers.{b}.{m}" for b in range(4) for m in ("attn.wq", "mlp.down")] + ["lm_head"]


def fake_scan(deltas: dict[str, float], preset: str = "nvfp4") -> Scan:
    """A module scan of a 4-block model: 1000-element weights at 4.5 bits, the down
    projections twice as large; lm_head not quantizable."""
    rows = []
    for m in MODULES:
        block = None if m == "lm_head" else int(m.split(".")[1])
        reason = "out_features=103 is not a multiple of block 16" if m == "lm_head" else ""
        params = 2000 if m.endswith("down") else 1000
        delta = float("nan") if reason else deltas.get(m, 0.0)
        rows.append(
            ScanRow(m, "fwd", delta, 20.0, 0.0, 0.0, 16.0 if reason else 4.5, params, block, reason)
        )
    return Scan(preset, False, "module", 3.0, 2, 1024, 10, 40, 1.0, 1.0, rows=rows)


DELTAS = {
    "layers.3.mlp.down": 0.020,  # 0.010 per 1000 elements
    "layers.2.mlp.down": 0.012,
    "layers.0.attn.wq": 0.008,  # 0.008 per 1000: kept after down 3, before down 2
    "layers.1.attn.wq": -0.004,  # noise: never worth keeping
}


def test_modules_are_kept_by_loss_per_bit_until_the_budget_holds():
    scan = fake_scan(DELTAS)
    advice = advise(scan, "nvfp4", budget=0.015)
    assert advice.order[:3] == ["layers.3.mlp.down", "layers.0.attn.wq", "layers.2.mlp.down"]
    assert advice.floor_delta == pytest.approx(0.040)  # negatives count as 0
    assert advice.keep == ["layers.3.mlp.down", "layers.0.attn.wq"]
    assert advice.predicted_delta == pytest.approx(0.012)
    assert advice.forced == ["lm_head"]
    assert advise(scan, "nvfp4", budget=0.05).keep == []
    assert advise(scan, "nvfp4", budget=0.0).keep == advice.order[:3]


def test_a_bits_budget_keeps_what_fits_in_greedy_order():
    scan = fake_scan(DELTAS)
    floor = advise(scan, "nvfp4", bits=99).floor_bits
    total = 4 * 1000 + 4 * 2000 + 1000  # 4 wq, 4 down, lm_head (always 16 bits)
    assert floor == pytest.approx((12000 * 4.5 + 1000 * 16) / total)
    one_down = floor + 2000 * 11.5 / total
    advice = advise(scan, "nvfp4", bits=one_down + 1e-9)
    assert advice.keep == ["layers.3.mlp.down"]  # wq of block 0 would not fit as well
    assert advice.bits_per_element == pytest.approx(one_down)
    with pytest.raises(AdviceError, match=r"below what nvfp4 takes .* 5\.385 bits"):
        advise(scan, "nvfp4", bits=5.0)


@pytest.mark.parametrize(
    ("keep", "patch"),
    [
        ([], ["!last:15%"]),  # nvfp4 keeps the last block: here nothing needs to stay high
        (["layers.3.attn.wq", "layers.3.mlp.down"], []),  # exactly the preset's last:15%
        (
            ["layers.3.mlp.down", "layers.0.attn.wq"],
            ["!last:15%", "layers.0.attn.wq", "layers.3.mlp.down"],
        ),
    ],
)
def test_the_patch_is_relative_to_the_presets_own_keep_list(keep, patch):
    got = keep_patch("nvfp4", MODULES, keep, ["lm_head"], "layers.", "lm_head")
    assert sorted(got) == sorted(patch)
    resolved = resolve_precision({"preset": "nvfp4", "keep_high_precision": got})
    kept = {m for m in MODULES if keeping_token(m, resolved, 4, "layers.", "lm_head")}
    assert kept - {"lm_head"} == set(keep)


def test_bad_advice_requests_are_named():
    scan = fake_scan(DELTAS)
    with pytest.raises(AdviceError, match="one budget"):
        advise(scan, "nvfp4")
    with pytest.raises(AdviceError, match="accepted .*: bf16, fp8_tensorwise"):
        advise(scan, "int4_b32", budget=0.1)
    with pytest.raises(AdviceError, match="scan is of 'nvfp4', not of preset 'mxfp4'"):
        advise(scan, "mxfp4", budget=0.1)
    role_scan = fake_scan(DELTAS)
    role_scan.by = "role"
    with pytest.raises(AdviceError, match="--by module"):
        advise(role_scan, "nvfp4", budget=0.1)


def test_the_advised_recipe_meets_its_budget_when_measured(tiny_store, capsys):
    """nblab advise on gpt-tiny: scan, advice, a PTQ eval of the advised recipe within the
    budget; a second advice reuses the scan."""
    store, run_id = tiny_store
    assert cli(["sensitivity", run_id, "--precision", "nvfp4"]) == 0
    scan_run = eval_runs(store).run_id.iloc[-1]
    rows = read_json(store, scan_run, SCAN_FILE)["rows"]
    floor = sum(max(r["delta_loss"], 0) for r in rows if not r["reason"])
    budget = round(floor / 3, 5)  # nvfp4 everywhere misses it: modules must stay high
    capsys.readouterr()
    assert cli(["advise", run_id, "--preset", "nvfp4", "--budget", str(budget)]) == 0
    out = capsys.readouterr().out
    assert f"module scan: run {scan_run} (reused)" in out
    assert "predicted Δ loss" in out and "measured Δ loss" in out
    evals = eval_runs(store)
    measured = evals[evals.advice].iloc[-1]
    advice = read_json(store, measured.run_id, ADVICE_FILE)
    assert advice["keep"] and advice["floor_delta"] > budget
    assert advice["measured_delta"] <= budget
    assert advice["predicted_delta"] <= budget
    assert measured.val_loss - advice["base_loss"] == pytest.approx(advice["measured_delta"])
    recipe = Recipe.from_toml(store.run(measured.run_id)["recipe"])
    assert recipe.precision.preset == "nvfp4"
    assert recipe.precision.keep_high_precision == advice["patch"]
    trainable = Recipe.from_toml(store.run_dir(measured.run_id) / "advised.toml")
    assert not trainable.eval.source and trainable.precision.keep_high_precision == advice["patch"]
    assert cli(["advise", run_id, "--preset", "nvfp4", "--bits", "9"]) == 0
    assert "(reused)" in capsys.readouterr().out
    assert list(eval_runs(store).query("scan == 'module'").run_id) == [scan_run]


def test_advise_with_train_trains_the_advised_recipe(store, capsys):
    from eval_helpers import debug

    from nblab.train.trainer import train

    source = train(debug(), store=store)
    assert cli(["advise", source.run_id, "--preset", "mxfp4", "--budget", "0.5", "--train"]) == 0
    evals = eval_runs(store)
    advice = read_json(store, evals[evals.advice].run_id.iloc[-1], ADVICE_FILE)
    trained = store.run(advice["trained_run"])
    assert trained["kind"] == "train" and trained["status"] == "succeeded"
    assert Recipe.from_toml(trained["recipe"]).precision.preset == "mxfp4"
    assert advice["trained_val_loss"] is not None and advice["source_val_loss"] is not None
    assert "trained in the advised recipe" in capsys.readouterr().out
