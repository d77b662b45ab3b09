"""The compiled backend's C kernels: reference._hadamard_2d along dim -1 (fwht.c) and the
quantizers' group amax (amax.c). Built with the system C compiler on first use (about
a second), cached by source, flags, compiler and CPU under ~/.cache/nblab/cpu-kernels
(NBLAB_CPU_KERNELS), and called through ctypes, which lets go of the GIL: large
tensors are split over torch's threads. Each function returns None where no C
compiler builds them; the caller then keeps its torch.compile path (the same bits,
slower)."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCES = [Path(__file__).with_name(name) for name in ("fwht.c", "amax.c")]
HEADERS = [Path(__file__).with_name("vec16.h")]  # in the cache key, as the sources
# -march=native: the cache key holds the CPU's flags, so a shared home never hands one
# CPU another's build; no fast-math and no contraction: every operation rounds as torch's
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC")
SIZES = (16, 32, 64, 128)
# below this one thread: a hand-off to the pool costs 40-50 us (2 threads, 2048 x 128:
# the inverse transform 41 us on one thread, 63 us split; the group amax 24 and 58 us)
SPLIT_MIN_NUMEL = 2**20


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "nblab" / "cpu-kernels"
    return Path(os.environ.get("NBLAB_CPU_KERNELS", default))


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + " " + flags


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        "\n".join(
            [*(f.read_text() for f in SOURCES + HEADERS), " ".join(FLAGS), version, _cpu()]
        ).encode()
    ).hexdigest()[:20]
    path = cache_dir() / f"kernels-{key}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".so")
        os.close(fd)
        built = subprocess.run([cc, *FLAGS, *map(str, SOURCES), "-o", tmp], capture_output=True)
        if built.returncode != 0:
            os.unlink(tmp)
            return None
        os.replace(tmp, path)  # atomic: processes building at once write the same file
    lib = ctypes.CDLL(str(path))
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    for n in SIZES:
        fn = getattr(lib, f"nblab_fwht{n}")
        fn.argtypes = [pointer, pointer, size, pointer, ctypes.c_float, ctypes.c_int]
        fn.restype = None
        fn = getattr(lib, f"nblab_fwht{n}_t")
        fn.argtypes = [pointer, pointer, size, size, size, size, pointer, ctypes.c_float]
        fn.restype = None
    lib.nblab_group_amax.argtypes = [pointer, pointer, size, size]
    lib.nblab_group_amax.restype = None
    return lib


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1))


def hadamard(
    x2: torch.Tensor, n: int, signs: torch.Tensor, inv_sqrt: float, inverse: bool
) -> torch.Tensor | None:
    """reference._hadamard_2d(x2, n, seed, -1, inverse) for an fp32 CPU x2 whose last dim
    n divides, given hadamard_signs(n, seed) and the fp32 1/sqrt(n). x2 is contiguous,
    or, forward only, the transpose of a contiguous tensor (a dim-0 role's x^T), which is
    read in place; the result is contiguous. None if the C code cannot be built here."""
    lib = _library()
    if lib is None:
        return None
    out = torch.empty(x2.shape, dtype=x2.dtype)
    x_ptr, out_ptr, s_ptr = x2.data_ptr(), out.data_ptr(), signs.data_ptr()
    if x2.is_contiguous():
        fn, size = getattr(lib, f"nblab_fwht{n}"), 4 * n

        def run(lo: int, hi: int) -> None:  # chunks [lo, hi)
            fn(x_ptr + lo * size, out_ptr + lo * size, hi - lo, s_ptr, inv_sqrt, int(inverse))

        _split(run, x2.numel() // n, x2.numel())
    else:
        assert x2.t().is_contiguous() and not inverse, "x2 or x2^T contiguous; forward only"
        fn, (cols, rows) = getattr(lib, f"nblab_fwht{n}_t"), x2.shape

        def run(lo: int, hi: int) -> None:  # x's columns [lo, hi): out's rows
            fn(x_ptr, out_ptr, rows, cols, lo, hi, s_ptr, inv_sqrt)

        _split(run, cols, x2.numel())
    return out


def group_amax(x2: torch.Tensor, g: int) -> torch.Tensor | None:
    """x2.reshape(-1, g).abs().amax(1) for a contiguous fp32 CPU x2 (g a multiple of 16
    that divides its size), except that a group holding an Inf or a NaN gives some
    non-finite value (amax.c). None if the C code cannot be built here."""
    lib = _library()
    if lib is None:
        return None
    assert x2.is_contiguous() and g % 16 == 0 and x2.numel() % g == 0
    out = torch.empty(x2.numel() // g, dtype=torch.int32)
    x_ptr, out_ptr, size = x2.data_ptr(), out.data_ptr(), 4 * g

    def run(lo: int, hi: int) -> None:  # groups [lo, hi)
        lib.nblab_group_amax(x_ptr + lo * size, out_ptr + lo * 4, hi - lo, g)

    _split(run, out.numel(), x2.numel())
    return out.view(torch.float32)


def _split(run, parts_of: int, numel: int) -> None:
    """run(lo, hi) over [0, parts_of), split over torch's threads for large tensors."""
    parts = min(torch.get_num_threads(), parts_of) if numel >= SPLIT_MIN_NUMEL else 1
    if parts == 1:
        run(0, parts_of)
        return
    bounds = [parts_of * i // parts for i in range(parts + 1)]
    list(_pool().map(run, bounds[:-1], bounds[1:]))
