# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Placeholder: the Cython tier is written in the next step."""
def omp_threads():
    return 1
