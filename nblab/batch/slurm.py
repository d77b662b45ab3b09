"""The Slurm launcher: one Slurm job per run, submitted with submitit.

    launcher = SlurmLauncher(partition="gpu", time_min=120, account="proj")
    handle = run_sweep(sweep, launcher=launcher, wait=False)
    launcher.poll()        # {run_id: status}; Slurm states land in runs/<run_id>/slurm.json
    launcher.cancel(run_id)                # scancel; the run ends `cancelled`
    nblab sweep sweeps/x.toml --launcher slurm --partition gpu --time-min 120

Each job runs what a local job runs, `python -m nblab.batch.job RUN_ID` (the train
notebook through papermill), on a node of the allocation, so status, metrics and
checkpoints reach the run store exactly as for local jobs. The store ($NBLAB_HOME),
this venv and the submitit folder must therefore be on a filesystem every node shares.

Points that ask for the same resources go in one job array (`executor.batch()`);
resources come from the launcher's options, else from the recipe: GPUs per node from
`parallel.nproc` (none for `train.device = "cpu"`), nodes from `nodes`. A point on
more than one node runs `torchrun --nnodes N --rdzv-backend c10d` on every node of its
allocation (no notebook: the trainer's rank 0 records the run).

The Slurm job id and its latest state live in `runs/<run_id>/slurm.json` (the runs
table has no column for them):

    {"job_id": "41_0", "state": "RUNNING", "partition": "debug", "time_min": 60,
     "log": ".../41_0_0_log.out", "requeues": 1, "submitted": 1764133000.0,
     "history": [[1764133000.0, "PENDING"], [1764133003.2, "RUNNING"], ...]}

Time limit and preemption: Slurm signals the job (USR2) `signal_delay_s` before its
end. submitit then calls RunJob.checkpoint(): it lets the trainer finish the step it is
in and write its checkpoint (at most `align_s` seconds), stops the job (SIGTERM: the
trainer records where it stopped), marks the run `queued` again and hands submitit the
same run with resume=True, which requeues the Slurm job; the next attempt continues from
the last checkpoint, so no finished step is lost or repeated. Set `checkpoint.interval`
in the recipe: without it a requeued run starts over.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nblab.batch.base import Launcher
from nblab.runs import TERMINAL_STATUSES, RunStore

SLURM_JSON = "slurm.json"
SUBMITIT_FOLDER = "slurm"  # under $NBLAB_HOME unless `folder` says otherwise
RDZV_PORT_BASE = 29400

# Slurm job states (sacct / squeue, first word: "CANCELLED by 0" -> CANCELLED)
WAITING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING")
ACTIVE = ("RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")
# what a run becomes when its job ended this way and the job itself recorded nothing
ENDED = {
    "COMPLETED": ("failed", "the Slurm job completed without ending the run"),
    "FAILED": ("failed", "the Slurm job failed"),
    "CANCELLED": ("cancelled", "cancelled (scancel)"),
    "TIMEOUT": ("failed", "the Slurm job reached its time limit and was not requeued"),
    "PREEMPTED": ("failed", "the Slurm job was preempted and not requeued"),
    "NODE_FAIL": ("failed", "the Slurm job's node failed"),
    "BOOT_FAIL": ("failed", "the Slurm job's node did not boot"),
    "OUT_OF_MEMORY": ("failed", "the Slurm job ran out of memory (raise mem_gb)"),
    "DEADLINE": ("failed", "the Slurm job missed its deadline"),
    "REVOKED": ("failed", "the Slurm job was revoked"),
}


SETTLED_BY_JOB = ("succeeded", "diverged", "cancelled")  # a cancel does not overwrite these


class SlurmError(RuntimeError):
    """sbatch is missing, or it (or scancel / sacct) refused what nblab asked."""


# ---------------------------------------------------------------------------
# slurm.json: the run's Slurm job
# ---------------------------------------------------------------------------


def read_slurm_info(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / SLURM_JSON).read_text())
    except (OSError, ValueError):
        return {}


def slurm_jobs(store: RunStore, run_ids: Iterable[str]) -> dict[str, str]:
    """{run_id: Slurm job id} of those runs that were submitted to Slurm (slurm.json)."""
    jobs = {}
    for run_id in run_ids:
        job_id = read_slurm_info(store.run_dir(run_id)).get("job_id")
        if job_id:
            jobs[run_id] = str(job_id)
    return jobs


def scancel_runs(store: RunStore, run_ids: Iterable[str], wait: float = 20.0) -> dict[str, str]:
    """`nblab cancel` for runs submitted to Slurm, from any host that reaches the
    cluster: one scancel for all their jobs; once Slurm has ended them (at most `wait`
    s), each run reads `cancelled` (unless its job had already ended it otherwise) and
    its slurm.json the job's final state. Returns {run_id: status} of the runs that have
    a Slurm job; runs without one (local jobs, `nblab run`) are left out."""
    jobs = slurm_jobs(store, run_ids)
    if not jobs:
        return {}
    _run(["scancel", *jobs.values()])
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(_in_queue(j) for j in jobs.values()):
        time.sleep(0.5)  # COMPLETING: its processes are still stopping
    try:
        states = slurm_states(jobs.values())
    except SlurmError:
        states = {}
    out = {}
    for run_id, job_id in jobs.items():
        if store.run(run_id)["status"] not in SETTLED_BY_JOB:
            # still running, or `failed` by the reaper once Slurm's SIGTERM took the
            # kernel: the user's cancel stands
            store.set_status(run_id, "cancelled", error=f"cancelled (scancel {job_id})")
        state = states.get(job_id) or (None if _in_queue(job_id) else "CANCELLED")
        if state is not None:
            record_slurm_job(store, run_id, state=state)
        out[run_id] = store.run(run_id)["status"]
    return out


def scancel_run(store: RunStore, run_id: str, wait: float = 20.0) -> bool:
    """scancel_runs for one run; False when it has no Slurm job."""
    return bool(scancel_runs(store, [run_id], wait))


def write_slurm_info(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into run_dir/slurm.json (atomically); a new `state` is appended to
    the history. Returns the merged record."""
    info = read_slurm_info(run_dir)
    state = fields.get("state")
    if state is not None and state != info.get("state"):
        info.setdefault("history", []).append([round(time.time(), 3), state])
    info |= fields
    tmp = Path(run_dir) / f".{SLURM_JSON}.{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, Path(run_dir) / SLURM_JSON)
    return info


def record_slurm_job(store: RunStore, run_id: str, **fields: Any) -> dict[str, Any]:
    """write_slurm_info, and the job id and state into the run store's runs table."""
    info = write_slurm_info(store.run_dir(run_id), **fields)
    job = f"slurm:{info['job_id']}" if info.get("job_id") else None
    store.set_scheduler_job(run_id, job, info.get("state"))
    return info


# ---------------------------------------------------------------------------
# The Slurm commands
# ---------------------------------------------------------------------------


def find_sbatch() -> str:
    """The path of sbatch, or SlurmError saying what to do."""
    path = shutil.which("sbatch")
    if path is None:
        raise SlurmError(
            "sbatch was not found on PATH "
            f"({os.environ.get('PATH', '')}): the slurm launcher submits jobs with sbatch. "
            "Run nblab on a Slurm login node, add Slurm's bin folder to PATH, or use "
            "--launcher local (scripts/slurm-up.sh starts a one-node cluster on Debian)."
        )
    return path


def _run(cmd: Sequence[str], timeout: float = 60) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{cmd[0]} was not found on PATH: is Slurm installed here?") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(cmd)} did not answer within {timeout:g}s") from None
    if out.returncode != 0:
        message = (out.stderr or out.stdout).strip()
        raise SlurmError(f"{' '.join(cmd)} failed (exit {out.returncode}): {message}")
    return out.stdout


def normalize_state(state: str) -> str:
    """'CANCELLED by 0' -> 'CANCELLED'; '' -> 'UNKNOWN'."""
    return (state.split() or ["UNKNOWN"])[0].rstrip("+")


def slurm_states(job_ids: Iterable[str]) -> dict[str, str]:
    """{job_id: state} from sacct (array tasks as '41_0'); jobs sacct does not know yet
    are left out. Without accounting (sacct fails) squeue answers for live jobs."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    job_ids = [str(j) for j in job_ids]
    if not job_ids:
        return {}
    parents = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = _run(["sacct", "-X", "-P", "-o", "JobID,State", "-j", ",".join(parents)])
        info = SlurmInfoWatcher().read_info(out)
    except SlurmError:
        out = _run(["squeue", "-h", "-o", "%i|%T", "-j", ",".join(parents)])
        info = SlurmInfoWatcher().read_info("JobID|State\n" + out)
    return {j: normalize_state(info[j]["State"]) for j in job_ids if j in info}


def _in_queue(job_id: str) -> bool:
    """Whether squeue still lists the job (pending, running or completing)."""
    try:
        return bool(_run(["squeue", "-h", "-o", "%T", "-j", job_id]).strip())
    except SlurmError:  # "Invalid job id": long gone
        return False


def cluster_has_gpus(partition: str | None = None) -> bool:
    """Whether any node (of `partition`) offers a gpu GRES, by sinfo."""
    cmd = ["sinfo", "-h", "-o", "%G"] + (["-p", partition] if partition else [])
    try:
        return "gpu" in _run(cmd)
    except SlurmError:
        return False


# ---------------------------------------------------------------------------
# Resources of a point
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """What one run asks Slurm for. Runs with equal Resources share a job array."""

    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time_min: int = 60
    partition: str | None = None
    account: str | None = None
    extra: tuple[tuple[str, Any], ...] = ()

    def executor_parameters(self, signal_delay_s: int) -> dict[str, Any]:
        """Keyword arguments of submitit's SlurmExecutor.update_parameters."""
        params: dict[str, Any] = {
            "nodes": self.nodes,
            "ntasks_per_node": 1,  # one task per node: a job, or torchrun for its GPUs
            "time": self.time_min,
            "signal_delay_s": signal_delay_s,
        }
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        for key in ("cpus_per_task", "partition", "account"):
            if getattr(self, key) is not None:
                params[key] = getattr(self, key)
        if self.mem_gb is not None:
            params["mem"] = _mem(self.mem_gb)
        if self.extra:
            params["additional_parameters"] = dict(self.extra)
        return params

    def sbatch_flags(self) -> str:
        """The sbatch options these resources become, as a user would type them."""
        flags = [f"--nodes={self.nodes}", f"--time={self.time_min}"]
        if self.gpus_per_node:
            flags.append(f"--gpus-per-node={self.gpus_per_node}")
        for key in ("cpus_per_task", "partition", "account"):
            if getattr(self, key) is not None:
                flags.append(f"--{key.replace('_', '-')}={getattr(self, key)}")
        if self.mem_gb is not None:
            flags.append(f"--mem={_mem(self.mem_gb)}")
        flags += [_flag(k, v) for k, v in self.extra]
        return " ".join(flags)


def _mem(mem_gb: float) -> str:
    return f"{int(mem_gb)}G" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}M"


def _flag(key: str, value: Any) -> str:
    key = key.replace("_", "-")
    return f"--{key}" if value is True else f"--{key}={value}"


def parse_extra(extra: Mapping[str, Any] | Sequence[str] | None) -> tuple[tuple[str, Any], ...]:
    """Extra sbatch flags, from {"qos": "high", "exclusive": True} or
    ["--qos=high", "--exclusive"], as sorted (key, value) pairs (keys with '_')."""
    if not extra:
        return ()
    pairs: dict[str, Any] = {}
    if isinstance(extra, Mapping):
        items = list(extra.items())
    elif isinstance(extra, str) or not isinstance(extra, Sequence):
        raise ValueError(
            f"extra={extra!r}: sbatch flags as a table {{qos = 'high'}} or a list "
            "['--qos=high', '--exclusive']"
        )
    else:
        items = []
        for flag in extra:
            if not isinstance(flag, str) or not flag.startswith("--"):
                raise ValueError(f"extra flag {flag!r}: a long sbatch option such as '--qos=high'")
            key, eq, value = flag[2:].partition("=")
            items.append((key, value if eq else True))
    for key, value in items:
        pairs[str(key).replace("-", "_")] = value
    return tuple(sorted(pairs.items()))


def resources_for(recipe, defaults: Resources, *, gpus_available: bool | None) -> Resources:
    """`defaults` (the launcher's options) completed from `recipe`: GPUs per node from
    parallel.nproc over the nodes (none for a CPU recipe, or where the cluster has no
    GPUs and the recipe does not insist on cuda)."""
    nproc = max(1, recipe.parallel.nproc)
    if nproc % defaults.nodes:
        raise ValueError(
            f"parallel.nproc={nproc} does not split over nodes={defaults.nodes}: "
            "the processes per node must be equal (nproc a multiple of nodes)"
        )
    gpus = defaults.gpus_per_node
    if gpus is None:  # the launcher left it to the recipe
        device = recipe.train.device
        wants = device.startswith("cuda") or (device == "auto" and bool(gpus_available))
        gpus = nproc // defaults.nodes if wants else 0
    return Resources(**(asdict(defaults) | {"gpus_per_node": gpus}))


# ---------------------------------------------------------------------------
# What runs inside the allocation
# ---------------------------------------------------------------------------


def multinode_torchrun_command(
    run_id: str,
    home: str | Path,
    *,
    nnodes: int,
    nproc_per_node: int,
    head: str,
    port: int,
    rdzv_id: str,
    resume: bool = False,
) -> list[str]:
    """The command every node of a multi-node point runs: torchrun with a c10d
    rendezvous on the allocation's first node, each rank nblab.launch."""
    from nblab.launch import ENTRY_MODULE

    cmd = [sys.executable, "-m", "torch.distributed.run"]
    cmd += [f"--nnodes={nnodes}", f"--nproc-per-node={nproc_per_node}"]
    cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={head}:{port}", f"--rdzv-id={rdzv_id}"]
    cmd += ["-m", ENTRY_MODULE, "--run-id", run_id, "--home", str(home)]
    return cmd + (["--resume"] if resume else [])


def _latest_checkpoint(run_dir: Path) -> int | None:
    steps = []
    for path in (run_dir / "checkpoints").glob("step_*"):
        with contextlib.suppress(ValueError):
            steps.append(int(path.name[5:]))
    return max(steps) if steps else None


def _ignore_slurm_signals() -> None:  # preexec_fn: children leave USR2 / USR1 to the job
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


class RunJob:
    """The function submitit runs on the allocation: RunJob(home)(run_id, resume).

    On one node it runs `python -m nblab.batch.job RUN_ID [--resume]` as a child that
    ignores Slurm's USR2 (submitit's checkpoint signal, which this process handles); on
    several nodes every node runs multinode_torchrun_command. `checkpoint()` is
    submitit's hook for a time limit or a preemption (see the module doc)."""

    def __init__(self, home: str | Path, *, align_s: float = 20.0):
        self.home = str(home)
        self.align_s = align_s
        self._child: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"home": self.home, "align_s": self.align_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["home"], align_s=state["align_s"])

    def __call__(self, run_id: str, resume: bool = False) -> int:
        store = RunStore(self.home)
        job_id = _this_job_id()
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        env = dict(os.environ, NBLAB_HOME=self.home)
        env.setdefault("OMP_NUM_THREADS", os.environ.get("SLURM_CPUS_PER_TASK", "1"))
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        if rank == 0:
            if restarts and store.run(run_id)["status"] == "running":
                # Slurm restarted the job (a requeue submitit did not see): the last
                # attempt is gone, so the run continues from its checkpoint
                store.set_status(run_id, "queued", error="requeued by Slurm")
                resume = True
            record_slurm_job(store, run_id, job_id=job_id, state="RUNNING", node=_hostname())
        nnodes = int(os.environ.get("SLURM_JOB_NUM_NODES", "1") or 1)
        if nnodes > 1:
            return self._multinode(store, run_id, resume, nnodes, env, rank)
        cmd = [sys.executable, "-m", "nblab.batch.job", run_id] + (["--resume"] if resume else [])
        self._child = subprocess.Popen(
            cmd, env=env, preexec_fn=_ignore_slurm_signals, start_new_session=True
        )
        code = _wait(self._child)
        print(f"[nblab slurm] run {run_id}: nblab.batch.job exited {code}", flush=True)
        return code

    def _multinode(self, store, run_id, resume, nnodes, env, rank) -> int:
        from submitit import JobEnvironment

        job_env = JobEnvironment()
        gpus = os.environ.get("SLURM_GPUS_ON_NODE") or os.environ.get("SLURM_GPUS_PER_NODE")
        recipe_nproc = _recipe_nproc(store, run_id)
        per_node = int(gpus) if gpus and gpus.isdigit() else max(1, recipe_nproc // nnodes)
        job_id = str(job_env.job_id)
        cmd = multinode_torchrun_command(
            run_id,
            self.home,
            nnodes=nnodes,
            nproc_per_node=per_node,
            head=job_env.hostnames[0],
            port=RDZV_PORT_BASE + int(job_id.split("_")[0]) % 1000,
            rdzv_id=job_id,
            resume=resume,
        )
        if rank == 0:
            store.set_status(run_id, "running", pid=os.getpid())
        self._child = subprocess.Popen(
            cmd, env=env, preexec_fn=_ignore_slurm_signals, start_new_session=True
        )
        code = _wait(self._child)
        if rank == 0 and store.run(run_id)["status"] not in TERMINAL_STATUSES:
            store.set_status(run_id, "failed", error=f"torchrun exited with code {code}")
        return code

    def checkpoint(self, run_id: str, resume: bool = False):
        """submitit's hook (on USR2): stop at a step boundary, resubmit with resume."""
        from submitit.helpers import DelayedSubmission

        store = RunStore(self.home)
        run_dir = store.run_dir(run_id)
        step = self._stop_after_checkpoint(store, run_id)
        status = store.run(run_id)["status"]
        if status in ("succeeded", "diverged"):
            # it finished meanwhile: end the job cleanly (exit 0, Slurm says COMPLETED);
            # returning None would have submitit fail the job for a declined requeue
            raise SystemExit(0)
        note = f"requeued by Slurm (time limit or preemption) at step {step or 0}"
        if _latest_checkpoint(run_dir) is None:
            note += "; no checkpoint yet, so it starts over (set checkpoint.interval)"
        store.set_status(run_id, "queued", error=note)
        info = read_slurm_info(run_dir)
        record_slurm_job(store, run_id, state="REQUEUED", requeues=int(info.get("requeues", 0)) + 1)
        print(f"[nblab slurm] run {run_id}: {note}", flush=True)
        return DelayedSubmission(self, run_id, resume=True)

    def _stop_after_checkpoint(self, store: RunStore, run_id: str) -> int | None:
        """Let the trainer reach a step whose checkpoint is written and flushed (at most
        align_s), then SIGTERM the job (it stops its kernel, the trainer records where it
        was). Returns the last checkpointed step."""
        run_dir = store.run_dir(run_id)
        child = self._child
        first = (_latest_checkpoint(run_dir), store.run(run_id).get("step"))
        deadline = time.monotonic() + self.align_s
        while child is not None and not _exited(child) and time.monotonic() < deadline:
            ckpt, step = _latest_checkpoint(run_dir), store.run(run_id).get("step")
            if ckpt is not None and step == ckpt and (ckpt, step) != first:
                break  # checkpoint `step` saved and its events flushed: a clean boundary
            time.sleep(0.02)
        if child is not None and not _exited(child):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while not _exited(child) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _exited(child):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
        return _latest_checkpoint(run_dir)


# checkpoint() runs in a signal handler that may have interrupted the wait for the child,
# so neither waits with Popen.wait (its lock would deadlock): both reap with WNOHANG.
def _exited(child: subprocess.Popen) -> bool:
    if child.returncode is not None:
        return True
    try:
        pid, status = os.waitpid(child.pid, os.WNOHANG)
    except ChildProcessError:  # reaped elsewhere
        child.returncode = child.returncode if child.returncode is not None else -1
        return True
    if pid == 0:
        return False
    child.returncode = os.waitstatus_to_exitcode(status)
    return True


def _wait(child: subprocess.Popen) -> int:
    while not _exited(child):
        time.sleep(0.2)
    return int(child.returncode)


def _recipe_nproc(store: RunStore, run_id: str) -> int:
    from nblab.recipe import Recipe

    return Recipe.from_toml(store.run(run_id)["recipe"]).parallel.nproc


def _this_job_id() -> str:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID", "")


def _hostname() -> str:
    import socket

    return socket.gethostname()


# ---------------------------------------------------------------------------
# The launcher
# ---------------------------------------------------------------------------


@dataclass
class _Submitted:
    run_id: str
    job_id: str
    state: str = "PENDING"
    log: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class SlurmLauncher(Launcher):
    """Submits each queued run as a Slurm job (see the module doc).

    partition, account, time_min (the job's time limit, minutes), cpus_per_task,
    mem_gb, gpus_per_node (default: from the recipe's parallel.nproc), nodes, extra
    (more sbatch flags: {"qos": "high"} or ["--qos=high"]): the job's resources.
    folder: submitit's folder (scripts, pickles, logs), default $NBLAB_HOME/slurm.
    signal_delay_s: seconds before the time limit at which Slurm sends USR2 (default
    90, less for short limits). max_requeues: time limits a run may hit and resume.
    resume: the first attempt already continues from the run's checkpoint.
    release_requeued: poll() lets a requeued job start at once (`scontrol update
    StartTime=now`) instead of after Slurm's hold of about two minutes; some clusters
    allow that only to operators.
    """

    POLL_S = 2.0

    def __init__(
        self,
        partition: str | None = None,
        account: str | None = None,
        time_min: int = 60,
        cpus_per_task: int | None = None,
        mem_gb: float | None = None,
        gpus_per_node: int | None = None,
        nodes: int | None = None,
        extra: Mapping[str, Any] | Sequence[str] | None = None,
        folder: str | Path | None = None,
        store: RunStore | None = None,
        *,
        signal_delay_s: int | None = None,
        max_requeues: int = 3,
        resume: bool = False,
        align_s: float | None = None,
        release_requeued: bool = False,
    ):
        find_sbatch()  # first: no Slurm, no launcher
        _positive("time_min", time_min, int)
        for name, value, kind in (
            ("cpus_per_task", cpus_per_task, int),
            ("mem_gb", mem_gb, (int, float)),
            ("nodes", nodes, int),
        ):
            if value is not None:
                _positive(name, value, kind)
        if gpus_per_node is not None and (
            not isinstance(gpus_per_node, int)
            or isinstance(gpus_per_node, bool)
            or gpus_per_node < 0
        ):
            raise ValueError(f"gpus_per_node={gpus_per_node!r}: an integer >= 0 (or None)")
        self.store = store or RunStore()
        self.folder = Path(folder) if folder else self.store.home / SUBMITIT_FOLDER
        self.defaults = Resources(
            nodes=nodes or 1,
            gpus_per_node=gpus_per_node,  # type: ignore[arg-type]  # None: from the recipe
            cpus_per_task=cpus_per_task,
            mem_gb=mem_gb,
            time_min=time_min,
            partition=partition,
            account=account,
            extra=parse_extra(extra),
        )
        if signal_delay_s is None:  # Slurm may signal up to ~30 s before the delay
            signal_delay_s = 90 if time_min >= 5 else 10
        if not 0 <= signal_delay_s < time_min * 60:
            raise ValueError(
                f"signal_delay_s={signal_delay_s}: seconds before the time limit "
                f"({time_min} min) at which the job is told to stop; 0 <= it < {time_min * 60}"
            )
        self.signal_delay_s = signal_delay_s
        self.align_s = align_s if align_s is not None else min(20.0, max(1.0, signal_delay_s * 0.3))
        self.max_requeues = max_requeues
        self.resume = resume
        self.release_requeued = release_requeued
        self._jobs: dict[str, _Submitted] = {}
        self._gpus_available: bool | None = None

    def __repr__(self) -> str:
        return (
            f"SlurmLauncher({self.defaults.sbatch_flags()}, "
            f"jobs={len(self._jobs)}, folder={str(self.folder)!r})"
        )

    # -- the interface ------------------------------------------------------------
    def submit(self, run_ids: Iterable[str]) -> None:
        """One job per run; runs with equal resources go in one job array. SlurmError
        (sbatch's own message, with the flags asked for) if sbatch refuses them."""
        import submitit
        from submitit.core.utils import FailedJobError

        from nblab.recipe import Recipe

        run_ids = list(run_ids)
        groups: dict[Resources, list[str]] = {}
        for run_id in run_ids:
            recipe = Recipe.from_toml(self.store.run(run_id)["recipe"])  # KeyError: unknown
            groups.setdefault(self._resources(recipe), []).append(run_id)
        for resources, ids in groups.items():
            executor = submitit.SlurmExecutor(
                folder=self.folder / "%j", max_num_timeout=self.max_requeues
            )
            executor.update_parameters(
                job_name=f"nblab-{self.store.run(ids[0])['sweep'] or ids[0]}",
                **resources.executor_parameters(self.signal_delay_s),
            )
            fn = RunJob(self.store.home, align_s=self.align_s)
            try:
                with executor.batch():
                    jobs = [executor.submit(fn, run_id, self.resume) for run_id in ids]
            except (FailedJobError, subprocess.CalledProcessError, OSError) as err:
                error = SlurmError(
                    f"sbatch refused the job for run(s) {', '.join(ids)} "
                    f"(asked: {resources.sbatch_flags()}): {_sbatch_message(err)}"
                )
                for run_id in run_ids:  # nothing will start them: they end here
                    if run_id not in self._jobs:
                        self.store.set_status(run_id, "failed", error=str(error))
                raise error from None
            for run_id, job in zip(ids, jobs, strict=True):
                sub = _Submitted(run_id, str(job.job_id), log=str(job.paths.stdout))
                self._jobs[run_id] = sub
                record_slurm_job(
                    self.store,
                    run_id,
                    job_id=sub.job_id,
                    state="PENDING",
                    partition=resources.partition,
                    time_min=resources.time_min,
                    sbatch=resources.sbatch_flags(),
                    log=sub.log,
                    requeues=0,
                    submitted=round(time.time(), 3),
                )

    def poll(self) -> dict[str, str]:
        """Refresh the Slurm states (slurm.json) and settle runs whose job ended without
        recording an end; return {run_id: status} from the store."""
        self.refresh()
        frame = self.store.runs()
        status = dict(zip(frame.run_id, frame.status, strict=True))
        return {run_id: status.get(run_id, "unknown") for run_id in self._jobs}

    def states(self) -> dict[str, str]:
        """{run_id: Slurm state} as last seen (PENDING, RUNNING, COMPLETED, ...)."""
        return {run_id: sub.state for run_id, sub in self._jobs.items()}

    def job_id(self, run_id: str) -> str:
        return self._jobs[run_id].job_id

    def refresh(self) -> dict[str, str]:
        """One sacct call for every job; record changes; returns states()."""
        if not self._jobs:
            return {}
        try:
            found = slurm_states(sub.job_id for sub in self._jobs.values())
        except SlurmError as err:
            print(f"nblab slurm: {err}", file=sys.stderr)
            return self.states()
        for run_id, sub in self._jobs.items():
            state = found.get(sub.job_id)
            if state is None:
                continue
            if state != sub.state:
                sub.state = state
                record_slurm_job(self.store, run_id, state=state)
            if state == "PENDING" and self.release_requeued:
                self._release(run_id, sub)
            self._settle(run_id, state)
        return self.states()

    def _release(self, run_id: str, sub: _Submitted) -> None:
        """Slurm holds a requeued job about two minutes (reason BeginTime): let it start
        now, once per requeue."""
        requeues = int(read_slurm_info(self.store.run_dir(run_id)).get("requeues", 0))
        if requeues > sub.extra.get("released", 0):
            sub.extra["released"] = requeues
            try:
                _run(["scontrol", "update", f"JobId={sub.job_id}", "StartTime=now"])
            except SlurmError as err:
                print(f"nblab slurm: could not release requeued job: {err}", file=sys.stderr)

    def _settle(self, run_id: str, state: str) -> None:
        """A job that ended while its run is not: the run ends as the job did."""
        if state not in ENDED:
            return
        run = self.store.run(run_id)
        if run["status"] in TERMINAL_STATUSES:
            return
        if run["status"] == "queued" and state == "COMPLETED":
            return  # a requeue that sacct still shows as the last attempt's end
        status, why = ENDED[state]
        sub = self._jobs[run_id]
        self.store.set_status(run_id, status, error=f"{why} (job {sub.job_id}; log {sub.log})")

    def cancel(self, run_id: str, wait: float = 20.0) -> None:
        """scancel the run's job; the run ends `cancelled` (recorded by the job as it
        stops, else here once Slurm has ended it, at most `wait` s later)."""
        sub = self._jobs.get(run_id)
        if sub is None:
            job_id = read_slurm_info(self.store.run_dir(run_id)).get("job_id")
            if not job_id:
                raise KeyError(f"run {run_id!r} has no Slurm job (not submitted by Slurm)")
            sub = self._jobs[run_id] = _Submitted(run_id, str(job_id))
        if self.store.run(run_id)["status"] in TERMINAL_STATUSES:
            return
        _run(["scancel", sub.job_id])
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _in_queue(sub.job_id):
            time.sleep(0.5)  # COMPLETING: its processes are still stopping
        if self.store.run(run_id)["status"] not in SETTLED_BY_JOB:
            # the job recorded `cancelled`, or Slurm's SIGTERM to the kernel left the
            # run `failed` (writer gone) or still `running`: the user's cancel stands
            self.store.set_status(run_id, "cancelled", error=f"cancelled (scancel {sub.job_id})")
        self.refresh()

    def wait(self, timeout: float | None = None) -> bool:
        """Until every run has ended in the store and its job in Slurm (True), or
        `timeout` s (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.refresh()
            ended = self.store.runs()
            ended = set(ended.run_id[ended.status.isin(TERMINAL_STATUSES)])
            done = all(
                run_id in ended and sub.state not in WAITING + ACTIVE + ("REQUEUED",)
                for run_id, sub in self._jobs.items()
            )
            if done:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(self.POLL_S)

    # -- helpers --------------------------------------------------------------------
    def _resources(self, recipe) -> Resources:
        if self.defaults.gpus_per_node is None and self._gpus_available is None:
            self._gpus_available = recipe.train.device != "cpu" and cluster_has_gpus(
                self.defaults.partition
            )
        return resources_for(recipe, self.defaults, gpus_available=self._gpus_available)


def _positive(name: str, value: Any, kind) -> None:
    if not isinstance(value, kind) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name}={value!r}: a number > 0")


def _sbatch_message(err: BaseException) -> str:
    text = str(err).strip()
    lines = [line for line in text.splitlines() if "error" in line.lower()]
    return " / ".join(lines) if lines else text


# ---------------------------------------------------------------------------
# Sweep TOML: `launcher = "slurm"` and a [slurm] table
# ---------------------------------------------------------------------------

SLURM_OPTIONS = (
    "partition",
    "account",
    "time_min",
    "cpus_per_task",
    "mem_gb",
    "gpus_per_node",
    "nodes",
    "extra",
    "signal_delay_s",
    "max_requeues",
    "release_requeued",
)


def split_launcher_settings(data: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """Remove `launcher` and the [slurm] table from a sweep TOML's data (in place);
    return (launcher name or None, slurm options). ValueError names a bad key or value."""
    name = data.pop("launcher", None)
    options = data.pop("slurm", {})
    if name is not None and name not in ("local", "slurm"):
        raise ValueError(f"launcher = {name!r} in the sweep file: one of 'local', 'slurm'")
    if not isinstance(options, Mapping):
        raise ValueError(f"slurm = {options!r} in the sweep file: a [slurm] table")
    unknown = [k for k in options if k not in SLURM_OPTIONS]
    if unknown:
        raise ValueError(
            f"[slurm] {', '.join(unknown)}: unknown; accepted: {', '.join(SLURM_OPTIONS)}"
        )
    return name, dict(options)


__all__ = [
    "RunJob",
    "Resources",
    "SlurmError",
    "SlurmLauncher",
    "multinode_torchrun_command",
    "read_slurm_info",
    "scancel_runs",
    "slurm_jobs",
    "slurm_states",
    "split_launcher_settings",
]
