"""Loss parity: every layout trains gpt-tiny like one process, step for step.

Two torchrun jobs (parity_worker.py, gloo on CPU): DDP 2, FSDP 2, TP 2 and PP 2 on 2
processes; FSDP 2 x TP 2 and PP 2 x TP 2 on 4. Each runs 20 steps in bf16 and in mxfp4
with the single process's seed and global batch (the pp layouts, and their single
process, in 2 micro-batches).

Tolerances. The math is the same in every layout; only the order of fp32 sums differs
(a dp rank's rows reduced with the other's, a TP all-reduce of partial sums, the
pipeline's sum of micro-batch gradients), and every layout clips with the same fp64
gradient norm. No quantization group changes with the layout either: mxfp4's blocks of
32 run along the features and the 64-token sequences, and ParallelDims.validate refuses
a shard that would split a block. So:

- bf16: every step's loss and the final val loss within EXACT = 2e-6, a few fp32 ulps
  of a loss near 4 (one ulp is 4.8e-7). Measured: at most 7.2e-7.
- mxfp4: step 1 within EXACT too (the same quantized forward: bf16 and mxfp4 differ
  there by 5e-4 to 9e-3). After that, a weight one ulp away from the single process's
  can sit on the other side of an fp4 rounding boundary, and one flipped code moves the
  loss by about 1e-4, which later steps carry on. Every step and the val loss within
  FLIPS = 5e-3. Measured: TP 2 bit-exact, PP 2 and PP 2 x TP 2 within 2e-6; the layouts
  that split rows (DDP, FSDP, FSDP x TP) flip a code from step 6 and stay within 2.4e-3
  (val 1.8e-4), while the bf16 and mxfp4 curves are up to 1.9e-2 apart.

A Hugging Face Llama (transformers' LlamaForCausalLM, random init, GQA) trains the same
way under FSDP 2 and TP 2 (its config's own tensor-parallel plan) in bf16, within EXACT
of one process.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nblab.train.trainer import build_data

sys.path.insert(0, str(Path(__file__).parent))
from parity_worker import (  # noqa: E402
    LLAMA,
    LLAMA_LAYOUTS,
    PARITY_LAYOUTS,
    PRESETS,
    micro_batches,
    nproc,
    parity_recipe,
    train,
)
from test_runtime import _env  # noqa: E402

WORKER = Path(__file__).parent / "parity_worker.py"
EXACT = 2e-6
FLIPS = 5e-3


@pytest.fixture(scope="module")
def reference():
    """The single process's losses, per (preset, grad_accum)."""
    dataset = build_data(parity_recipe(None, "bf16"))
    accums = {micro_batches(layout) for layout in PARITY_LAYOUTS}
    return {
        (preset, m): train(parity_recipe(None, preset, m), dataset)
        for preset in PRESETS
        for m in accums
    }


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """What both torchrun jobs saved: {(layout, preset): {"losses", "val_loss"}}."""
    out = tmp_path_factory.mktemp("parity")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    start = time.perf_counter()
    # both jobs at once: their steps wait on gloo more than they compute (2 cores: 47 s
    # together, 69 s one after the other); the results do not depend on the timing
    jobs = {
        n: subprocess.Popen(
            [*cmd, "--nproc-per-node", str(n), str(WORKER), str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        for n in sorted({nproc(layout) for layout in PARITY_LAYOUTS})
    }
    for n, job in jobs.items():
        output, _ = job.communicate(timeout=400)
        assert job.returncode == 0, f"{n} ranks:\n{output[-6000:]}"
    print(f"parity jobs: {time.perf_counter() - start:.1f} s")
    found = {
        (layout, preset): torch.load(out / f"{layout}_{preset}.pt")
        for layout in PARITY_LAYOUTS
        for preset in PRESETS
    }
    for layout in LLAMA_LAYOUTS:
        found["llama_" + layout, "bf16"] = torch.load(out / f"llama_{layout}_bf16.pt")
    return found


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("layout", list(PARITY_LAYOUTS))
def test_layout_loss_equals_one_process_for_20_steps(layouts, reference, layout, preset):
    got, ref = layouts[layout, preset], reference[preset, micro_batches(layout)]
    assert len(got["losses"]) == len(ref["losses"]) == 20
    tol = EXACT if preset == "bf16" else FLIPS
    assert got["losses"][0] == pytest.approx(ref["losses"][0], abs=EXACT, rel=0)
    assert got["losses"] == pytest.approx(ref["losses"], abs=tol, rel=0)
    assert got["val_loss"] == pytest.approx(ref["val_loss"], abs=tol, rel=0)
    # the run learned (so equal curves mean something): the loss fell by more than 0.5
    assert ref["losses"][0] - ref["losses"][-1] > 0.5


def test_mxfp4_is_quantized_in_the_parity_runs(reference):
    """The two presets' curves differ, at step 1 by far more than EXACT: mxfp4 really
    quantized, so its step-1 check above is a check of the quantized forward."""
    for m in {micro_batches(layout) for layout in PARITY_LAYOUTS}:
        bf16, mxfp4 = reference["bf16", m]["losses"], reference["mxfp4", m]["losses"]
        assert abs(bf16[0] - mxfp4[0]) > 100 * EXACT
        assert max(abs(a - b) for a, b in zip(bf16, mxfp4, strict=True)) > 2 * FLIPS


@pytest.fixture(scope="module")
def llama_reference():
    dataset = build_data(parity_recipe(None, "bf16"))
    return train(parity_recipe(None, "bf16", model=LLAMA), dataset)


@pytest.mark.parametrize("layout", LLAMA_LAYOUTS)
def test_hf_llama_layout_loss_equals_one_process_for_20_steps(layouts, llama_reference, layout):
    ref, got = llama_reference, layouts["llama_" + layout, "bf16"]
    assert len(got["losses"]) == len(ref["losses"]) == 20
    assert got["losses"] == pytest.approx(ref["losses"], abs=EXACT, rel=0)
    assert got["val_loss"] == pytest.approx(ref["val_loss"], abs=EXACT, rel=0)
    assert ref["losses"][0] - ref["losses"][-1] > 0.5  # it learned
