"""Fault tolerance of a 2-process FSDP run: one rank killed with SIGKILL.

`nblab run gpt-debug --nproc 2` checkpoints every 2 steps; a pause after each step
(NBLAB_STEP_DELAY_S) lets the test kill rank 1 mid-run. The run must end `failed` naming
rank 1, rank 0 must be gone within 10 s of the kill, and `nblab run --resume` continues
from the last checkpoint: the steps after it give the very losses the killed run logged.
About 30 s on 2 cores (two torchrun jobs).
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from waiting import wait_for

from nblab.launch import TORCHRUN_LOG, _killed_rank
from nblab.runs import RunStore
from nblab.runs.liveness import pid_alive

sys.path.insert(0, str(Path(__file__).parent))
from test_runtime import _env  # noqa: E402

STEPS = 12
SETS = ["train.steps=12", "checkpoint.interval=2", "eval.interval=0", "eval.batches=1"]


def cli(home: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nblab.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(NBLAB_HOME=str(home), **env),
    )


def losses(store: RunStore, run_id: str) -> dict[int, float]:
    frame = store.metrics(run_id, keys=["loss"])
    return dict(zip(frame.step.tolist(), frame.value.tolist(), strict=True))


def checkpoints(run_dir: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step_*"))


def test_kill_9_of_one_rank_fails_the_run_and_the_checkpoint_resumes_exactly(tmp_path):
    home = tmp_path / "home"
    args = ["run", "gpt-debug", "--nproc", "2", *(a for s in SETS for a in ("--set", s))]
    parent = cli(home, *args, NBLAB_STEP_DELAY_S="0.4")
    store = RunStore(home)
    run_id = wait_for(lambda: len(store.runs()) and store.runs().run_id.iloc[0], 120, "the run")
    run_dir = store.run_dir(run_id)
    # past a checkpoint (steps 2 and 4) and a step beyond it
    wait_for(lambda: (store.run(run_id)["step"] or 0) >= 5, 180, "step 5")
    pids = {int(f.name[4:]): int(f.read_text()) for f in (run_dir / "pids").iterdir()}
    assert sorted(pids) == [0, 1]
    os.kill(pids[1], signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: not pid_alive(pids[0]), 30, "rank 0 to end")
    gone_after = time.monotonic() - killed
    output = parent.communicate(timeout=60)[0]
    print(f"rank 0 gone {gone_after:.2f} s after rank 1 was killed")
    assert gone_after < 10, f"rank 0 outlived the kill by {gone_after:.1f} s"

    run = store.run(run_id)
    assert parent.returncode != 0, output
    assert run["status"] == "failed", output
    assert run["error"].startswith("rank 1: "), run["error"]
    assert "SIGKILL" in run["error"], run["error"]
    assert "rank 1" in output  # the user sees it too
    before = losses(store, run_id)
    last = max(checkpoints(run_dir))
    assert last >= 4 and max(before) > last  # steps after the checkpoint were logged

    resumed = cli(home, "run", "--resume", run_id)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output[-4000:]
    run = store.run(run_id)
    assert run["status"] == "succeeded" and run["step"] == STEPS
    log = (run_dir / "train.log").read_text()
    assert re.search(rf"resumed from \S+/checkpoints/step_0*{last} at step {last}\n", log)
    after = losses(store, run_id)
    assert sorted(after) == list(range(1, STEPS + 1))  # every step once
    again = [s for s in before if s > last]
    # the same layout from the same checkpoint: the same losses, bit for bit on CPU
    assert [after[s] for s in again] == pytest.approx([before[s] for s in again], abs=1e-6)


REPORT = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : {other} (pid: 16423)
Root Cause (first observed failure):
[0]:
  rank      : 1 (local_rank: 1)
  exitcode  : {first} (pid: 16424)
  traceback : Signal 9 (SIGKILL) received by PID 16424
"""


def test_the_rank_a_signal_ended_first_is_read_from_torchruns_report(tmp_path):
    """Whatever rank 0 recorded after it (a connection reset, or a cancel when torchrun
    stopped it), the run names the rank killed first; a rank stopped by SIGTERM or
    SIGINT (a cancel) is not a failure, nor one that exited with an error code."""
    log = tmp_path / TORCHRUN_LOG
    log.write_text(REPORT.format(first=-9, other=-15))
    assert _killed_rank(log, 0) == (1, "killed by signal 9 (SIGKILL)", "")
    assert _killed_rank(log, log.stat().st_size) is None  # an earlier attempt's report
    for first in (-15, -2, 1):
        log.write_text(REPORT.format(first=first, other=-15))
        assert _killed_rank(log, 0) is None
    assert _killed_rank(tmp_path / "absent.log", 0) is None
