"""Ahead-of-time compile of every Triton kernel specialization, without a GPU.

cases    the API calls covered (Case; the named QuantSpecs; SHAPES: the tile plans)
capture  the launcher's compile-only mode: a stand-in GPU driver, compiles skipped;
         the distinct specializations the cases launch, per target
build    compile them (triton.compile, worker processes), cached by kernel source,
         triton version, target and specialization: registers, spills, shared memory,
         fma left in the PTX
report   the table, its failures (errors, spills, fma, fp fusion) and the roofline
cli      python -m nblab_kernels.aot (nblab.precision.aot adds the presets' roles)

Needs triton's compiler: run it where TRITON_INTERPRET is not set.
"""
