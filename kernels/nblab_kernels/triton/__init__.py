"""Triton kernels that match `nblab_kernels.reference` bit for bit.

`plan` (what the kernels support and how a spec is tiled) imports no triton, so
dispatch can ask it on any machine; `quantize` holds the kernels and imports
triton, and is loaded only when a Triton backend is actually used.
"""
