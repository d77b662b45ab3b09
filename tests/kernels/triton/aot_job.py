"""The AOT compile run that test_aot_compile.py reads, as a background job.

conftest.py starts it right after collection when a selected test needs it, at the
lowest CPU priority, and moves those tests to the end of the session: a cold run
(every specialization for four targets) takes minutes on two cores, and overlaps
the rest of the suite instead of adding to it. Warm (records cached in
~/.cache/nblab/kernels-aot) it takes seconds. Run alone, the fixture starts it itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
TEST_FILE = "test_aot_compile.py"
FIXTURE = "aot"
KEY = pytest.StashKey["AotJob"]()


def compiler_env() -> dict[str, str]:
    """This environment without the interpreter, with this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    paths = [str(ROOT), str(ROOT / "kernels"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


class AotJob:
    """`python -m nblab.precision.aot --json` in its own process group."""

    def __init__(self, workdir: Path):
        self.out, self.log = workdir / "aot.json", workdir / "aot.log"
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def start(self, nice: int = 19) -> None:
        cmd = [sys.executable, "-m", "nblab.precision.aot", "--json", str(self.out)]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=compiler_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its workers and ptxas stop with it (stop())
                preexec_fn=(lambda: os.nice(nice)) if nice else None,
            )
        self.started = time.monotonic()

    def result(self, timeout: float) -> dict:
        """Wait for the run (at most `timeout` s more) and return its JSON, with the
        exit code and the log's tail."""
        assert self.proc is not None, "the AOT job was never started"
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(
                f"the AOT compile did not finish {time.monotonic() - self.started:.0f} s after "
                f"it started (a cold cache on a busy machine?); the records it made are kept, "
                f"a rerun resumes. Log: {self.log.read_text()[-2000:]}"
            )
        log = self.log.read_text()
        assert self.out.exists(), f"the AOT compile wrote no results (exit {code}): {log[-3000:]}"
        result = json.loads(self.out.read_text())
        result["returncode"], result["log"] = code, log
        return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group it leads: its own workers
            self.proc.wait(timeout=30)
