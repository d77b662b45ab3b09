"""Sensitivity scans: exact against full forwards, on any model of the protocol, and a
layer scaled to saturate a format stands out."""

from __future__ import annotations

import math

import pytest
import torch
from eval_helpers import debug

from nblab.eval.ptq import Evaluator
from nblab.eval.report import SCAN_FILE, read_json
from nblab.eval.run import run
from nblab.eval.sensitivity import Scan, scan
from nblab.eval.source import eval_recipe, resolve_source
from nblab.train.trainer import train

QWEN = {  # a Hugging Face model: blocks called with keyword arguments
    "model.name": "hf",
    "model.architecture": "qwen2",
    "model.config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    },
}


def evaluator_of(store, recipe):
    trained = train(recipe, store=store)
    source = resolve_source(trained.run_id, store=store)
    return Evaluator(eval_recipe(source), source)


def same_rows(a: Scan, b: Scan) -> bool:
    return [(r.module, r.role, r.reason) for r in a.rows] == [
        (r.module, r.role, r.reason) for r in b.rows
    ] and all(
        x.delta_loss == y.delta_loss or (math.isnan(x.delta_loss) and math.isnan(y.delta_loss))
        for x, y in zip(a.rows, b.rows, strict=True)
    )


@pytest.mark.parametrize("model", ["gpt", "hf"])
def test_replaying_the_unchanged_blocks_gives_the_rows_of_full_forwards(store, model):
    recipe = debug("data.tokenizer=byte", "train.steps=6")
    evaluator = evaluator_of(store, recipe.with_overrides(QWEN) if model == "hf" else recipe)
    replayed = scan(evaluator, "mxfp4", by="role")  # x alone and W alone: both paths
    full = scan(evaluator, "mxfp4", by="role", replay=False)
    assert same_rows(replayed, full)
    assert replayed.block_passes < full.block_passes
    assert replayed.forward_passes == full.forward_passes
    roles = {r.role for r in replayed.rows}
    assert roles == {"fwd_x", "fwd_w"}
    modules = {r.module for r in replayed.rows}
    assert len(modules) == len(evaluator.linears)  # every linear, the format's keep list aside


def test_a_layer_scaled_to_saturate_the_format_is_the_most_sensitive(store):
    """fp16 holds nothing past 65504: the weights of a layer scaled past it saturate (and
    the cast makes them inf), the scan ranks that layer first with SQNR -inf, and no
    other layer saturates or loses more than noise."""
    evaluator = evaluator_of(store, debug())
    scaled = "layers.0.mlp.up"
    with torch.no_grad():
        evaluator.model.get_submodule(scaled).weight.mul_(1e7)  # about 2e5 and up
    result = scan(evaluator, "fp16", weights_only=True)
    rows = {r.module: r for r in result.rows}
    worst = max(result.rows, key=lambda r: r.delta_loss)
    assert worst.module == scaled and worst.delta_loss == math.inf
    assert rows[scaled].saturation > 0.5 and rows[scaled].sqnr_db == -math.inf
    others = [r for m, r in rows.items() if m != scaled]
    assert all(r.saturation == 0 and abs(r.delta_loss) < 1e-3 for r in others)


def test_a_scan_run_records_its_rows_and_the_sqnr_of_the_same_tensors(store):
    trained = train(debug(), store=store)
    source = resolve_source(trained.run_id, store=store)
    result = run(eval_recipe(source, precision="nvfp4", scan="role"), store=store)
    saved = Scan.from_dict(read_json(store, result.run_id, SCAN_FILE))
    assert same_rows(saved, result.scan)
    assert saved.base_loss == store.metrics(result.run_id, keys=["val_loss"]).value.iloc[0]
    stats = store.stats(result.run_id)
    by_tensor = stats.set_index(["module", "role"]).sqnr
    quantized = [r for r in saved.rows if not r.reason]
    assert quantized and all(by_tensor[(r.module, r.role)] == r.sqnr_db for r in quantized)
    assert {r.module for r in saved.rows if r.reason} == {"lm_head"}  # vocab 103 vs tile 16
