"""The Slurm job of test_slurm_time_limit_requeues_and_resumes_from_checkpoint, submitted
and watched in a process of its own: conftest.py starts it as the session starts (the run
sleeps through most of its ~75 s: 0.5 s a step, Slurm's 30-s checks, requeues), so the
rest of the suite runs meanwhile; the test then checks what the run left in HOME.

    python time_limit_job.py HOME    exit 0 once the launcher saw the run end, else 1

A 1-minute limit on a run that needs longer. Slurm signals an attempt 20-50 s into a
1-minute limit (its check runs every ~30 s). At least 0.5 s a step on any machine
(NBLAB_STEP_DELAY_S, set by conftest.py in this process's environment, which sbatch
exports to the job): 100 steps (50 s, after at least 5 s of start-up) cannot finish
inside one attempt, and each attempt still makes progress; up to 6 requeues leave room
for early signals and a slow machine. gpt-debug, whose step is ~0.02 s of the 0.5
(gpt-tiny's ~0.2 s only lengthened the run: 70 s of work and 3 requeues; now 52 s and
1-2 requeues, about 72 s in all).
"""

from __future__ import annotations

import signal
import sys

from nblab.batch.slurm import SlurmLauncher
from nblab.recipe import Recipe
from nblab.runs import RunStore

STEPS = 100
STEP_DELAY_S = "0.5"
WAIT_S = 480


def recipe() -> Recipe:
    sets = ["train.device=cpu", "eval.interval=0", "metrics.log_interval=1"]
    sets += [f"train.steps={STEPS}", "checkpoint.interval=5", "checkpoint.keep=2"]
    return Recipe.preset("gpt-debug").with_overrides(sets)


def main(home: str) -> int:
    store = RunStore(home)
    r = recipe()
    run_id = store.create_run("job", r.to_toml(), "slurm-tests", steps=r.train.steps)
    launcher = SlurmLauncher(store=store, time_min=1, release_requeued=True, max_requeues=6)
    launcher.POLL_S = 1.0  # releases a requeued job within ~1 s (sacct ~0.1 s a call)
    launcher.submit([run_id])
    print(f"run {run_id}: Slurm job {launcher.job_id(run_id)}", flush=True)
    try:
        ended = launcher.wait(timeout=WAIT_S)
    except KeyboardInterrupt:  # SIGTERM below: the session ended first
        launcher.cancel(run_id)
        raise
    print(f"ended: {ended}; states {launcher.states()}; run {store.run(run_id)}", flush=True)
    return 0 if ended else 1


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main(sys.argv[1]))
