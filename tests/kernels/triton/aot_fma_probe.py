"""Two tiny kernels with an explicit fma, for the AOT fma check's own test: the PTX
fma of the first has no marker at its source line, the second's has one."""

import triton
import triton.language as tl


@triton.jit
def fma_unmarked(a_ptr, b_ptr, c_ptr, out_ptr):
    i = tl.arange(0, 32)
    a, b, c = tl.load(a_ptr + i), tl.load(b_ptr + i), tl.load(c_ptr + i)
    tl.store(out_ptr + i, tl.fma(a, b, c))


@triton.jit
def fma_marked(a_ptr, b_ptr, c_ptr, out_ptr):
    i = tl.arange(0, 32)
    a, b, c = tl.load(a_ptr + i), tl.load(b_ptr + i), tl.load(c_ptr + i)
    # exact-fma: only the marker is under test here, not the arithmetic
    tl.store(out_ptr + i, tl.fma(a, b, c))
