"""Compile captured specializations for their targets, in parallel, cached.

Each specialization is compiled by `triton.compile` from the data the launcher
handed over (as triton's own `JITFunction.preload` does), in worker processes. The
result is a small record: registers and spills from ptxas' own report (`-v`, which
triton passes), shared memory from the compiled metadata, every floating-point fma
left in the PTX with the source line it comes from, and the compile time.

Records are cached as JSON files in `cache_dir()` (default ~/.cache/nblab/kernels-aot,
outside any clone, so another clone on the machine reuses them), keyed by a hash of
the kernel's source (`kernel_digest`), the triton version, the target and the
specialization. A changed kernel source misses and recompiles; records unused for
CACHE_DAYS are pruned.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import importlib
import io
import json
import multiprocessing
import os
import re
import resource
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .capture import Specialization
from .report import constexprs

RECORD_VERSION = 2  # bump when a record's fields change
CACHE_DAYS = 30
# A source line with this marker may hold an fma: its comment says why it is exact.
EXACT_FMA = "exact-fma:"


def cache_dir() -> Path:
    if os.environ.get("NBLAB_AOT_CACHE"):
        return Path(os.environ["NBLAB_AOT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nblab" / "kernels-aot"


@functools.cache
def kernel_digest(name: str) -> str:
    """triton's own hash of a kernel's source (JITFunction.cache_key): the function,
    the jit functions it calls, the constexpr globals it reads, and its first line."""
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr).cache_key


def record_key(data: str, digest: str) -> str:
    """Cache key of one specialization. The libdevice path in the options names the
    venv it lives in, so only its file name counts (its content is triton's)."""
    import triton

    fields = json.loads(data)
    libs = fields["options"].get("extern_libs") or []
    fields["options"]["extern_libs"] = [[name, Path(path).name] for name, path in libs]
    text = json.dumps([RECORD_VERSION, digest, triton.__version__, fields], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------
# one compile (in a worker)
# ---------------------------------------------------------------------------

_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
# a floating-point fma / mad instruction (integer mad.lo etc. are exact)
_PTX_FMA = re.compile(r"^\s*(?:@!?%\w+\s+)?((?:fma|mad)\.[\w.]*?(?:bf16|f16|f32|f64)\w*)\b")
_PTX_LOC = re.compile(r"^\s*\.loc\s+(\d+)\s+(\d+)\s+\d+")
_PTX_FILE = re.compile(r'^\s*\.file\s+(\d+)\s+"([^"]+)"')


def fma_sites(ptx: str) -> list[dict]:
    """Every floating-point fma in the PTX, with the source line of its `.loc` and
    whether that line (or the one above it) carries the EXACT_FMA marker."""
    lines = ptx.splitlines()
    files = {m.group(1): m.group(2) for line in lines if (m := _PTX_FILE.match(line))}  # at the end
    loc: tuple[str, int] | None = None
    sites = []
    for line in lines:
        if m := _PTX_LOC.match(line):
            loc = (m.group(1), int(m.group(2)))
        elif m := _PTX_FMA.match(line):
            path, lineno = (files.get(loc[0], "?"), loc[1]) if loc else ("?", 0)
            text, above = _source_line(path, lineno), _source_line(path, lineno - 1)
            sites.append(
                dict(
                    instr=m.group(1),
                    file=Path(path).name,
                    line=lineno,
                    source=text.strip(),
                    exact=EXACT_FMA in text or EXACT_FMA in above,
                )
            )
    return sites


def _source_line(path: str, lineno: int) -> str:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return ""
    return lines[lineno - 1] if 0 < lineno <= len(lines) else ""


def _constexpr(value):
    if isinstance(value, dict):  # dtypes and jit functions: none in these kernels
        raise ValueError(f"unsupported constexpr in specialization data: {value!r}")
    return tuple(value) if isinstance(value, list) else value


def compile_specialization(data: str) -> dict:
    """Compile one specialization (from `capture`) for its target: the record."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    fields = json.loads(data)
    module, _, name = fields["name"].rpartition(".")
    fn = getattr(importlib.import_module(module), name)
    target = GPUTarget(**fields["target"])
    keys = (tuple(k) for k in fields["constant_keys"])
    constexprs = {k: _constexpr(v) for k, v in zip(keys, fields["constant_vals"], strict=True)}
    attrs = {tuple(k): v for k, v in zip(fields["attrs_keys"], fields["attrs_vals"], strict=True)}
    signature = {k: _constexpr(v) for k, v in fields["signature"].items()}
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in fields["options"].items()}
    options = make_backend(target).parse_options(options)
    src = ASTSource(fn, signature, constexprs, attrs)

    log = io.StringIO()
    knobs.nvidia.dump_ptxas_log = True  # triton prints ptxas -v's report
    start, cpu = time.perf_counter(), _cpu_seconds()
    with contextlib.redirect_stdout(log):
        kernel = triton.compile(src, target=target, options=options.__dict__)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    report = log.getvalue()
    regs, spills = _PTXAS_REGS.search(report), _PTXAS_SPILLS.search(report)
    if regs is None or spills is None:
        raise RuntimeError(f"no ptxas report for {name} on sm_{target.arch}: {report[-500:]!r}")
    stack, stores, loads = (int(g) for g in spills.groups())
    return dict(
        kernel=name,
        arch=target.arch,
        num_warps=kernel.metadata.num_warps,
        registers=int(regs.group(1)),
        spill_stores=stores,
        spill_loads=loads,
        stack=stack,
        shared=kernel.metadata.shared,
        enable_fp_fusion=options.enable_fp_fusion,
        fma=fma_sites(kernel.asm["ptx"]),
        compile_s=round(seconds, 3),
        cpu_s=round(cpu, 3),
    )


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (ptxas)."""
    usage = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return sum(u.ru_utime + u.ru_stime for u in usage)


def _worker_init(triton_cache: str) -> None:
    # a private triton cache per run: a hit there would skip ptxas and its report
    os.environ["TRITON_CACHE_DIR"] = triton_cache
    os.environ.pop("TRITON_INTERPRET", None)


def _task(data: str) -> tuple[dict | None, str | None]:
    try:
        return compile_specialization(data), None
    except Exception as err:  # reported per specialization, the others go on
        return None, f"{type(err).__name__}: {err}"


# ---------------------------------------------------------------------------
# all of them
# ---------------------------------------------------------------------------


def _cost(spec: Specialization) -> int:
    """Rough compile cost, to start the slow ones first."""
    named = constexprs(spec)
    return 4 * bool(named.get("STATS")) + 2 * bool(named.get("HAD_LOG2N")) + 1


def build(
    specs: Iterable[Specialization],
    jobs: int | None = None,
    cache: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, dict], dict[str, str], dict]:
    """Compile every specialization not in the cache. Returns (records by data,
    errors by data, stats: hits, compiled, wall seconds)."""
    cache = cache_dir() if cache is None else cache
    cache.mkdir(parents=True, exist_ok=True)
    specs = list(specs)
    records: dict[str, dict] = {}
    errors: dict[str, str] = {}
    todo = []
    for spec in specs:
        digest = kernel_digest(spec.fields["name"])
        path = cache / f"{record_key(spec.data, digest)}.json"
        if path.exists():
            records[spec.data] = json.loads(path.read_text())
            os.utime(path)  # still in use: not pruned
        else:
            todo.append((spec, path))
    start = time.perf_counter()
    if todo:
        todo.sort(key=lambda t: -_cost(t[0]))
        jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
        with (
            tempfile.TemporaryDirectory(prefix="nblab-aot-triton-") as triton_cache,
            concurrent.futures.ProcessPoolExecutor(
                jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(triton_cache,),
            ) as pool,
        ):
            # each record is cached as it arrives: an interrupted run resumes from there
            futures = {pool.submit(_task, spec.data): (spec, path) for spec, path in todo}
            done = concurrent.futures.as_completed(futures)
            for n, future in enumerate(done, 1):
                (spec, path), (record, error) = futures[future], future.result()
                if error is not None:
                    errors[spec.data] = error
                else:
                    records[spec.data] = record
                    _write_atomic(path, json.dumps(record, sort_keys=True))
                if progress and (n % 100 == 0 or n == len(todo)):
                    progress(f"compiled {n}/{len(todo)} ({time.perf_counter() - start:.0f} s)")
    _prune(cache)
    stats = dict(
        hits=len(specs) - len(todo), compiled=len(todo), seconds=time.perf_counter() - start
    )
    return records, errors, stats


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)  # two runs at once never see half a record


def _prune(cache: Path) -> None:
    old = time.time() - CACHE_DAYS * 86400
    for path in cache.glob("*.json"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < old:
                path.unlink()
