"""The compile-only mode of the kernel launcher: what a launch would compile, no GPU.

`compile_only(arch)` makes triton believe a GPU of compute capability `arch` is the
current device (a stand-in for its active CUDA driver) and asks its JIT cache hook to
skip every compile. The launcher then runs unchanged: it validates, plans the tiles,
allocates, and launches each kernel; triton binds the arguments and specializes the
kernel exactly as it would on that GPU (constexprs, argument types, divisibility,
launch options such as enable_fp_fusion), hands the hook its specialization data,
and returns without compiling or launching. `capture` collects that data per
distinct specialization, for `build` to compile.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .cases import Case


@dataclass
class Specialization:
    """One distinct kernel specialization for one target, and the cases reaching it."""

    data: str  # triton's specialization data (JSON): signature, constexprs, attrs, options
    cases: list[Case] = field(default_factory=list)

    @property
    def fields(self) -> dict:
        return json.loads(self.data)

    @property
    def kernel(self) -> str:
        return self.fields["name"].rpartition(".")[2]

    @property
    def arch(self) -> int:
        return self.fields["target"]["arch"]

    @property
    def key(self) -> str:
        """The specialization without its target: equal across targets."""
        return f"{self.kernel}{self.fields['key']}"


def _stand_in_driver(arch: int):
    """triton's CUDA driver, reporting a GPU of capability `arch` that is not there.
    Each target is its own device number, so triton keeps a binder per target."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.driver import CudaDriver

    class StandInDriver(CudaDriver):
        def __init__(self):  # CudaDriver's would load libcuda
            pass

        def get_current_device(self):
            return arch

        def set_current_device(self, device):
            pass

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

    return StandInDriver()


def _require_compiler() -> None:
    import triton

    from ..triton import quantize as tq

    if not isinstance(tq._quantize_kernel, triton.runtime.JITFunction):
        raise RuntimeError(
            "the AOT compile needs triton's compiler, but the kernels were loaded under "
            "the interpreter (TRITON_INTERPRET is set); run it in a process without it"
        )


@contextlib.contextmanager
def compile_only(arch: int) -> Iterator[list[str]]:
    """Inside, Triton launches compile nothing and run nothing: each appends its
    specialization data to the yielded list (one entry per launch)."""
    import triton
    from triton import knobs

    _require_compiler()
    seen: list[str] = []

    def hook(*, compile, **_):
        seen.append(compile["specialization_data"])
        return True  # handled: triton neither compiles nor launches

    drivers = triton.runtime.driver
    previous_hook, previous_driver = knobs.runtime.jit_cache_hook, drivers._active
    knobs.runtime.jit_cache_hook = hook
    drivers.set_active(_stand_in_driver(arch))
    try:
        yield seen
    finally:
        knobs.runtime.jit_cache_hook = previous_hook
        drivers._active = previous_driver


def capture(cases: Iterable[Case], archs: Iterable[int]) -> list[Specialization]:
    """The distinct kernel specializations the cases launch, for each target. Cases
    that differ only in origin launch once (the same call)."""
    calls: dict[tuple, list[Case]] = {}
    for case in cases:
        calls.setdefault(case.call, []).append(case)
    found: dict[str, Specialization] = {}
    for arch in archs:
        for same in calls.values():
            with compile_only(arch) as seen:
                try:
                    same[0].launch()
                except Exception as err:
                    label = same[0].label
                    raise RuntimeError(f"compile-only launch of {label} failed: {err}") from err
            for data in seen:
                found.setdefault(data, Specialization(data)).cases.extend(same)
    return list(found.values())
