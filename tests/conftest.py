import os

# CI has no GPU: Triton kernels run under the interpreter. Set before triton loads.
os.environ.setdefault("TRITON_INTERPRET", "1")
