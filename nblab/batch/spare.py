"""A spare job: a job process started before its run, with its kernel up and warm.

A job's own cost is mostly a fresh Python importing torch and nblab in the kernel (about
2.5 s on 2 cores, more than the training of a small run). LocalLauncher(spare=True) keeps
one spare ready: `python -m nblab.batch.job --spare LOG` starts its kernel at once, runs
WARM_UP in it (silently: the notebook's execution counts start at 1 as usual), then
waits for a run id on stdin. Given one, it is an ordinary job with a kernel that has
already started (the same job.json, signals, statuses and exit codes); its kernel moves
to the run folder, and LOG (the spare's and its kernel's stdout and stderr) becomes the
run's job.log. A spare that gets no run within IDLE_S, or whose stdin closes (its
launcher ended), stops its kernel and exits 0 without touching the store.

Only where every job gets the same environment: a CPU machine (on one with GPUs each
job gets its own CUDA_VISIBLE_DEVICES), and a run without a job.log yet (a resumed run
keeps appending to its own).
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

IDLE_S = 300.0  # a spare nobody uses goes away (it holds a kernel with torch loaded)
READY_S = 120.0  # the longest wait for the kernel to start and warm up
SPARES = "spares"  # the folder of spares' logs under $NBLAB_HOME
READY = "[nblab job] spare ready"  # the line a spare logs once it waits for a run

# What every job's kernel imports before its run is known: the notebook's and the
# trainer's heavy modules (torch._dynamo: every optimizer imports it on creation;
# torch.distributed.checkpoint: the final checkpoint).
WARM_UP = """\
import matplotlib.figure, matplotlib.backends.backend_agg, IPython.display
import torch, torch._dynamo, torch.distributed.checkpoint
import nblab.launch, nblab.recipe, nblab.runs, nblab.train.trainer
"""


# ---------------------------------------------------------------------------
# In the spare (python -m nblab.batch.job --spare LOG)
# ---------------------------------------------------------------------------


def run_code(km: Any, code: str, timeout: float = READY_S, *, started: bool = True) -> str | None:
    """Run `code` silently in km's kernel; None, or the error it raised ("Name: value").
    started=False: wait for the kernel to be ready first (that wait drains its output
    for 0.2 s; a request to a started kernel needs none, its reply is awaited)."""
    kc = km.blocking_client()
    kc.start_channels(iopub=not started, stdin=False, hb=False)
    try:
        if not started:
            kc.wait_for_ready(timeout=timeout)
        msg_id = kc.execute(code, silent=True, store_history=False)
        deadline = time.monotonic() + timeout
        while True:
            reply = kc.get_shell_msg(timeout=max(0.0, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        content = reply["content"]
        if content["status"] == "ok":
            return None
        return f"{content.get('ename', content['status'])}: {content.get('evalue', '')}"
    finally:
        kc.stop_channels()


def start_warm_kernel(manager_class: type) -> Any:
    """A started kernel (manager_class, python3) that has run WARM_UP. A failed warm-up
    is reported on stderr and leaves the kernel as it is: the notebook will say what
    is missing."""
    from nblab.notebooks import start_kernel

    km = start_kernel(manager_class)
    error = run_code(km, WARM_UP, started=False)
    if error is not None:
        print(f"[nblab job] spare warm-up: {error}", file=sys.stderr, flush=True)
    return km


def alive(km: Any) -> bool:
    from jupyter_core.utils import run_sync

    return bool(run_sync(km.is_alive)())


def wait_for_run(stream: IO[str], idle_s: float = IDLE_S) -> str | None:
    """The run id the launcher writes on `stream` (one line), or None: end of the stream
    (the launcher closed it or ended) or `idle_s` without a word."""
    ready, _, _ = select.select([stream], [], [], idle_s)
    line = stream.readline() if ready else ""
    return line.strip() or None


def adopt_log(log: Path, run_dir: Path) -> None:
    """The spare's log becomes run_dir/job.log (the spare and its kernel keep writing to
    the same file). Where the run already has a job.log, this process appends to that
    one from now on and the spare's log stays where it is."""
    target = run_dir / "job.log"
    try:
        os.link(log, target)
    except FileExistsError:
        with open(target, "ab") as out:
            os.dup2(out.fileno(), sys.stdout.fileno())
            os.dup2(out.fileno(), sys.stderr.fileno())
        return
    log.unlink()


# ---------------------------------------------------------------------------
# In the launcher
# ---------------------------------------------------------------------------


@dataclass
class Spare:
    proc: subprocess.Popen
    log: Path

    def take(self, run_id: str) -> subprocess.Popen | None:
        """Hand `run_id` to this spare; its process, or None when it has already gone."""
        if self.proc.poll() is not None:
            return None
        try:
            self.proc.stdin.write(f"{run_id}\n".encode())
            self.proc.stdin.close()
        except OSError:  # it ended meanwhile
            return None
        return self.proc

    def ready(self) -> bool:
        """Whether it has warmed up and waits for a run (its log says so)."""
        try:
            return READY in self.log.read_text(errors="replace")
        except OSError:  # taken: the log is the run's now
            return False

    def close(self) -> None:
        """Tell the spare to go (end of its stdin); it stops its kernel and exits."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()


def spawn(cmd: list[str], env: dict[str, str], home: Path) -> Spare:
    """Start `cmd` (a job command without its run id) as a spare, in a session of its
    own like every job, in `home` with its log in home/spares/."""
    folder = home / SPARES
    folder.mkdir(parents=True, exist_ok=True)
    fd, log = tempfile.mkstemp(prefix="spare-", suffix=".log", dir=folder)
    try:
        proc = subprocess.Popen(
            [*cmd, "--spare", log],
            stdin=subprocess.PIPE,
            stdout=fd,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=home,
            start_new_session=True,
        )
    finally:
        os.close(fd)
    return Spare(proc, Path(log))
