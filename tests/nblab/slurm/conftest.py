"""A real one-node Slurm cluster for the Slurm launcher tests (scripts/slurm-up.sh), and
the time-limit test's job, which starts with the session (time_limit_job.py says why)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CLUSTER_DIR = os.environ.get("NBLAB_SLURM_DIR", "/tmp/nblab-slurm")
EXIT_CANNOT_INSTALL = 3  # slurm-up.sh: Slurm cannot be installed here
TIME_LIMIT_TEST = "test_slurm_time_limit_requeues_and_resumes_from_checkpoint"
TIME_LIMIT_JOB = Path(__file__).with_name("time_limit_job.py")

_up: subprocess.CompletedProcess | None = None  # slurm-up.sh's answer, once a session
_time_limit: TimeLimitJob | None = None
_fixture_used = False  # slurm_cluster handed out: its teardown stops the cluster


def _cluster_up() -> subprocess.CompletedProcess:
    """Start the cluster (installing Slurm if missing), once per session."""
    global _up
    if _up is None:
        env = dict(os.environ, NBLAB_SLURM_DIR=CLUSTER_DIR)
        script = str(ROOT / "scripts" / "slurm-up.sh")
        _up = subprocess.run([script], env=env, capture_output=True, text=True)
    return _up


class TimeLimitJob:
    """time_limit_job.py in its own process, with its own NBLAB_HOME and the step delay
    in its environment only (the tests running meanwhile never see it)."""

    def __init__(self):
        import time_limit_job

        self.home = Path(tempfile.mkdtemp(prefix="nblab-slurm-time-limit-"))
        self.log = self.home / "time_limit_job.log"
        self.result: tuple[int | None, str] | None = None  # wait()'s, once it ended
        env = dict(
            os.environ,
            SLURM_CONF=f"{CLUSTER_DIR}/slurm.conf",
            NBLAB_HOME=str(self.home),
            NBLAB_STEP_DELAY_S=time_limit_job.STEP_DELAY_S,
        )
        with self.log.open("w") as log:
            cmd = [sys.executable, str(TIME_LIMIT_JOB), str(self.home)]
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float) -> tuple[int | None, str]:
        """(exit code, its output); None if it had not ended within `timeout` s."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return None, self.log.read_text()
        return self.proc.returncode, self.log.read_text()

    def stop(self) -> None:
        """SIGTERM: it cancels its Slurm job and exits."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def pytest_collection_finish(session):
    """The time-limit test's job waits more than it computes (~75 s, mostly the 0.5 s
    step delay and Slurm's 30-s checks; its CPU is each attempt's few seconds of
    start-up): when that test is selected, bring the cluster up and submit it now, so
    the suite runs meanwhile; the test waits for it."""
    global _time_limit
    if session.config.option.collectonly or _time_limit is not None:
        return
    if not any(item.name == TIME_LIMIT_TEST for item in session.items):
        return
    if _cluster_up().returncode == 0:  # else the slurm_cluster fixture skips or fails
        _time_limit = TimeLimitJob()


def pytest_sessionfinish(session):
    """Stop the time-limit job if it still runs (a session cut short: -x, Ctrl-C),
    remove its folder unless a test failed, and stop the cluster the hook above started
    if no test was handed it."""
    if _time_limit is not None:
        _time_limit.stop()
        if session.testsfailed == 0:
            shutil.rmtree(_time_limit.home, ignore_errors=True)
    if _up is not None and _up.returncode == 0 and not _fixture_used:
        _cluster_down()


def _cluster_down() -> None:
    env = dict(os.environ, NBLAB_SLURM_DIR=CLUSTER_DIR)
    subprocess.run([str(ROOT / "scripts" / "slurm-down.sh")], env=env, capture_output=True)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The cluster, started once per session (installing Slurm if missing); stopped
    after. Skips only when Slurm cannot be installed; a cluster that fails to start
    fails. A test gets it once the time-limit job has left it: no two tests' jobs wait
    on the node's 2 CPUs (in the whole suite that job ended long before)."""
    global _fixture_used
    up = _cluster_up()
    if up.returncode == EXIT_CANNOT_INSTALL:
        pytest.skip(f"Slurm cannot be installed here: {up.stderr.strip()}")
    if up.returncode != 0:
        pytest.fail(f"scripts/slurm-up.sh failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
    if _time_limit is not None:
        _time_limit.result = _time_limit.wait(timeout=540)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = f"{CLUSTER_DIR}/slurm.conf"
    _fixture_used = True
    yield os.environ["SLURM_CONF"]
    if _time_limit is not None:
        _time_limit.stop()
    _cluster_down()
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


@pytest.fixture
def time_limit_job(slurm_cluster) -> TimeLimitJob:
    """The time-limit test's job, ended: started with the session when the test was
    selected, else now (then the test waits its whole length)."""
    global _time_limit
    if _time_limit is None:
        _time_limit = TimeLimitJob()
        _time_limit.result = _time_limit.wait(timeout=540)
    return _time_limit
