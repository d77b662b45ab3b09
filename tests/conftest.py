import os

# CI has no GPU: Triton kernels run under the interpreter. Set before triton loads.
os.environ.setdefault("TRITON_INTERPRET", "1")

# "auto" compiles the quantizers of large CPU layers (gpt-tiny's) with torch.compile:
# seconds per graph in every process. Only the compiled backend's own tests (which
# ask for it, or set this back) pay that; the rest run auto on the reference, whose
# numbers the compiled kernels equal bit for bit. Jobs the tests start inherit it.
os.environ.setdefault("NBLAB_AUTO_COMPILED", "0")
