# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# cython: language_level=3
"""The kernels of ``_kernels.pyx``, compiled a second time with AVX2 (256-bit vectors) by ``setup.py``.

Same source, same results to the bit (no fused multiply-add, no fast-math in either build); only the vector width
differs. :mod:`pooling_lib.cython_tier` uses this build when the CPU has AVX2 and the baseline one otherwise.
"""
include "_kernels.pyx"
