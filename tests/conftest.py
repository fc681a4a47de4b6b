"""Fixtures shared by the pooling_lib tests. Helpers and hypothesis strategies live in ``_helpers.py``."""
import numpy as np
import pytest

import pooling_lib


@pytest.fixture(params=pooling_lib.available_backends())
def backend(request):
    """Each tier this installation has ("naive", "numpy" and, once built, "cython"), one test run per tier."""
    return request.param


@pytest.fixture
def backends():
    """The tuple of every available tier, for tests that compare tiers with one another."""
    return pooling_lib.available_backends()


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture(params=["NCHW", "NHWC"])
def layout(request):
    return request.param
