"""`nblab sweep` interrupted with Ctrl-C mid-way, then resumed (issue 17 section 6).

A 3-point sweep of gpt-debug jobs, one job at a time: 3 steps, then 600 (about 3 s on
2 cores), then 3. Ctrl-C (SIGINT to the command's process group, as a terminal sends
it) lands once the second point has logged its first step, so it is still training:
the first point has succeeded, the second is stopped, the third never started. `nblab
sweep --resume` (two jobs at a time) then runs the second and third points only. No
point runs twice (the finished one is left alone, the stopped job is gone before its
point runs again) and none is lost: each point ends with exactly one succeeded run.
About 17 s on 2 cores (four papermill jobs). With 3 steps at every point, the second
could finish between the test seeing it run and the Ctrl-C (it did once in CI).
"""

import os
import signal
import subprocess
import sys

from waiting import wait_for

from nblab.runs import RunStore
from nblab.runs.liveness import pid_alive

SWEEP = """\
name = "ctrl-c"
base = "gpt-debug"

[set]
"eval.interval" = 0
"metrics.stats_interval" = 0
"metrics.histogram_interval" = 0

[zip]
"train.seed" = [0, 1, 2]
"train.steps" = [3, 600, 3]
"""
STEPS = [3, 600, 3]
WAIT_S = 240  # generous: the CI box is 2 shared cores


def sweep(path, home, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nblab.cli", "sweep", str(path), "--jobs", "1", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NBLAB_HOME": str(home)},
        start_new_session=True,  # its own process group, as in a terminal
        preexec_fn=default_sigint,
    )


def default_sigint() -> None:
    """A shell starts background commands with SIGINT ignored, and an ignored SIGINT is
    inherited (Python then never raises KeyboardInterrupt): the sweep gets the
    terminal's default, whatever started this test."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_mid_sweep_then_resume_runs_no_point_twice_and_loses_none(tmp_path):
    home, path = tmp_path / "home", tmp_path / "ctrl-c.toml"
    path.write_text(SWEEP)
    store = RunStore(home)
    first = sweep(path, home)

    def statuses():
        return store.runs(sweep="ctrl-c").set_index("name").status.to_dict()

    def second_training():
        runs = store.runs(sweep="ctrl-c")
        s = runs.set_index("name").status.to_dict()
        if list(s.values())[:2] != ["succeeded", "running"]:
            return None
        second = runs.set_index("name").loc[list(s)[1]]
        return len(store.metrics(second.run_id, keys=["loss"])) > 0 and s

    seen = wait_for(second_training, WAIT_S, "point 1 to succeed and point 2 to log a step")
    names = list(seen)
    assert len(names) == 3
    running = store.runs(sweep="ctrl-c").set_index("name").loc[names[1]]
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C
    output = first.communicate(timeout=120)[0]
    assert "cancelling sweep ctrl-c" in output, output[-3000:]
    assert first.returncode != 0
    after = statuses()
    assert after == {names[0]: "succeeded", names[1]: "cancelled", names[2]: "cancelled"}
    # the stopped job is gone: its point cannot run twice at once
    assert running.pid and not pid_alive(int(running.pid))

    # the two points left run side by side (the Ctrl-C above needed one job at a time)
    resumed = sweep(path, home, "--resume", "--jobs", "2")
    output = resumed.communicate(timeout=WAIT_S)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert f"left alone (succeeded or running): {names[0]}" in output

    runs = store.runs(sweep="ctrl-c")
    assert len(runs) == 5  # 3 first, and one new run for each of the 2 unfinished points
    for name, steps in zip(names, STEPS, strict=True):
        mine = runs[runs.name == name]
        assert (mine.status == "succeeded").sum() == 1, mine  # none lost, none twice
        ok = mine[mine.status == "succeeded"].iloc[0]
        loss = store.metrics(ok.run_id, keys=["loss"])
        assert sorted(loss.step) == list(range(1, steps + 1))
    assert (runs.name == names[0]).sum() == 1  # the finished point was not run again
    assert sorted(runs.status) == ["cancelled", "cancelled"] + ["succeeded"] * 3
