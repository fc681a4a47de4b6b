"""Shared helpers and hypothesis strategies for the pooling_lib test suite.

Imported by the test modules (``from _helpers import ...``); pytest puts ``tests/`` on ``sys.path``.
Nothing here imports torch when it is imported: :func:`import_torch` does, for the tests that use it as an oracle.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import pooling_lib

BACKENDS = pooling_lib.available_backends()
FAST_BACKENDS = tuple(b for b in BACKENDS if b != "naive")  # every tier checked against the naive reference
DTYPES = (np.float32, np.float64)
LAYOUTS = ("NCHW", "NHWC")

TORCH_REASON = "PyTorch is not installed: the cross-check needs it (CI installs torch==2.13.0)"


def running_in_ci():
    """True when the environment variable CI is set to something other than "", "0", "false" or "no"."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def run_on_threads(monkeypatch, n):
    """Make every compiled call of the current test use ``n`` threads, whatever its input's size
    (``SMALL_WORK = 0``); ``monkeypatch`` restores the tier's thread count and threshold at teardown."""
    from pooling_lib import cython_tier

    monkeypatch.setattr(cython_tier, "SMALL_WORK", 0)
    monkeypatch.setattr(cython_tier, "_num_threads", cython_tier.get_num_threads())  # put back at teardown
    cython_tier.set_num_threads(n)


def import_torch():
    """PyTorch, the oracle: without it the caller (a test, or a whole module at import) is skipped, visibly; under
    CI a missing or broken torch FAILS instead, so that a broken install cannot switch the cross-checks off."""
    if running_in_ci():
        try:
            import torch
        except Exception as exc:  # ImportError, or a broken install raising something else
            pytest.fail(f"CI is set but PyTorch cannot be imported ({type(exc).__name__}: {exc}); "
                        f"the PyTorch cross-check must run in CI. {TORCH_REASON}", pytrace=False)
        return torch
    return pytest.importorskip("torch", reason=TORCH_REASON)


def compiled_builds():
    """The builds of the compiled kernels this machine can run, by name: ``baseline``, and ``avx2`` where the CPU has
    AVX2 and that build loads. Empty when the compiled tier is not built."""
    try:
        from pooling_lib import cython_tier
    except ImportError:
        return {}
    builds = {"baseline": cython_tier.BASELINE}
    avx2 = cython_tier._load_avx2() if cython_tier.BASELINE.cpu_has_avx2() else None
    if avx2 is not None:
        builds["avx2"] = avx2
    return builds


# Hypothesis budget: the naive tier is slow, so shapes are small and the example count modest.
PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# For tests that run several functions on every tier per example.
COMPOUND_SETTINGS = settings(PROPERTY_SETTINGS, max_examples=50)


# --------------------------------------------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------------------------------------------
def assert_identical(actual, expected, err_msg="", signed_zeros=True):
    """Same shape, same dtype, same values bit for bit (NaN equals NaN; the sign of zero must match too,
    unless ``signed_zeros`` is False)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape} {err_msg}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype} {err_msg}"
    np.testing.assert_array_equal(actual, expected, err_msg=err_msg, strict=True)
    if signed_zeros and actual.dtype.kind == "f":
        real = ~np.isnan(expected)
        np.testing.assert_array_equal(np.signbit(actual[real]), np.signbit(expected[real]),
                                      err_msg=f"sign of zero differs {err_msg}")


_UINT = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


def assert_same_bits(actual, expected, err_msg=""):
    """Same shape, same float dtype, and the same bits in every element: unlike :func:`assert_identical`, a NaN
    must have the other's sign and payload (max and min pooling return a window's winner as it is, NaN or not)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape} {err_msg}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype} {err_msg}"
    assert actual.dtype in _UINT, f"assert_same_bits compares float32 or float64 arrays, got {actual.dtype}"
    a, e = actual.view(_UINT[actual.dtype]), expected.view(_UINT[expected.dtype])
    differ = np.argwhere(a != e)
    if differ.size:
        shown = ", ".join(f"{tuple(int(v) for v in at)}: {int(a[tuple(at)]):#x} != {int(e[tuple(at)]):#x}"
                          for at in differ[:5])
        raise AssertionError(f"{len(differ)} of {a.size} elements differ in their bits ({shown}) {err_msg}")


def nans(dtype):
    """Four NaNs of ``dtype`` with different bits: +NaN (NumPy's), -NaN, and a positive and a negative NaN with a
    payload (quiet NaNs, so no operation may change them except by picking another)."""
    if np.dtype(dtype) == np.float32:
        bits = np.array([0x7FC00000, 0xFFC00000, 0x7FC01234, 0xFFD05678], dtype=np.uint32)
    else:
        bits = np.array([0x7FF8000000000000, 0xFFF8000000000000, 0x7FF8000000001234, 0xFFFA000000005678],
                        dtype=np.uint64)
    return bits.view(dtype)


# --------------------------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------------------------
def to_layout(x_nchw, layout):
    """A contiguous copy of an NCHW array in ``layout`` (NHWC input is what an NHWC caller really has)."""
    if layout == "NHWC":
        return np.ascontiguousarray(np.transpose(x_nchw, (0, 2, 3, 1)))
    return np.ascontiguousarray(x_nchw)


def from_layout(y, layout):
    """An NCHW view of an array given in ``layout``."""
    return np.transpose(y, (0, 3, 1, 2)) if layout == "NHWC" else y


# --------------------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------------------
def output_length(length, k, s, p, d, ceil_mode):
    """Brute-force count of PyTorch's window positions along one axis (independent of params.py's formula).

    Window ``i`` starts at ``i*s`` in padded coordinates and its last tap is ``i*s + d*(k-1)``. Without ceil_mode
    the last tap must lie inside the padded input; with ceil_mode it may run past the right padding, as long as
    no more than ``s - 1`` cells past it (rounding up), and the window must not start in the right padding.
    """
    last_allowed = length + 2 * p - 1
    count = 0
    i = 0
    while True:
        start = i * s
        last_tap = start + d * (k - 1)
        if ceil_mode:
            ok = last_tap <= last_allowed + s - 1 and start - p < length
        else:
            ok = last_tap <= last_allowed
        if not ok:
            return count
        count += 1
        i += 1


def has_empty_window(length, k, s, p, d, ceil_mode):
    """True when some window along this axis has all its (dilated) taps in the padding.

    That happens only with dilation (e.g. L=2, k=2, p=1, d=3: taps at -1 and 2). The library rejects such
    geometries with a ValueError (``test_errors.py::test_window_with_no_input_cell`` and
    ``test_output_size.py::test_rejected_geometries``); the strategies here avoid them.
    """
    n = output_length(length, k, s, p, d, ceil_mode)
    for i in range(n):
        start = i * s - p
        if not any(0 <= start + t * d < length for t in range(k)):
            return True
    return False


@dataclass
class PoolConfig:
    """One pooling call's parameters plus the NCHW input shape."""

    shape: tuple  # NCHW
    kernel_size: object
    stride: object
    padding: object
    dilation: object = 1
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: object = None
    extra: dict = field(default_factory=dict)

    def max_kwargs(self):
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    dilation=self.dilation, ceil_mode=self.ceil_mode)

    def avg_kwargs(self):
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    ceil_mode=self.ceil_mode, count_include_pad=self.count_include_pad,
                    divisor_override=self.divisor_override)

    def out_hw(self):
        return pooling_lib.pool2d_output_size(self.shape[2:], self.kernel_size, self.stride, self.padding,
                                              self.dilation, self.ceil_mode)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _maybe_int(draw, pair):
    """Pass a pair as an int when both entries agree, half of the time (both spellings are public)."""
    if pair[0] == pair[1] and draw(st.booleans()):
        return pair[0]
    return pair


@st.composite
def pool_configs(draw, avg=False, max_side=9, max_kernel=3, max_batch=2, max_channels=3):
    """A valid pooling configuration on a small input: kernel, stride (or None), padding <= k//2, dilation
    (max/min only), ceil_mode, and for average pooling count_include_pad and divisor_override.

    Geometries in which some window holds no input cell (possible only with dilation) are excluded; see
    :func:`has_empty_window`.
    """
    k = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride_is_none = draw(st.integers(0, 4)) == 0
    if stride_is_none:
        s = k
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    d = (1, 1) if avg else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    ceil_mode = draw(st.booleans())
    sizes = []
    for axis in range(2):
        smallest = d[axis] * (k[axis] - 1) + 1 - 2 * p[axis]
        if ceil_mode:  # rounding up lets a window run up to s - 1 cells past the padding
            smallest -= s[axis] - 1
        smallest = max(1, smallest)
        sizes.append(draw(st.integers(smallest, max(smallest, max_side))))
    H, W = sizes
    for axis, L in enumerate(sizes):
        if has_empty_window(L, k[axis], s[axis], p[axis], d[axis], ceil_mode):
            # Shift to a geometry without empty windows rather than rejecting (keeps hypothesis efficient).
            d = (1, d[1]) if axis == 0 else (d[0], 1)
    N = draw(st.integers(1, max_batch))
    C = draw(st.integers(1, max_channels))
    cfg = PoolConfig(
        shape=(N, C, H, W),
        kernel_size=_maybe_int(draw, k),
        stride=None if stride_is_none else _maybe_int(draw, s),
        padding=_maybe_int(draw, p),
        dilation=1 if avg else _maybe_int(draw, d),
        ceil_mode=ceil_mode,
    )
    if avg:
        cfg.count_include_pad = draw(st.booleans())
        cfg.divisor_override = draw(st.one_of(st.none(), st.none(), st.integers(-5, 7).filter(bool)))
    return cfg


# Values that make ties (small integers, +0.0 and -0.0), NaN, and both infinities common.
SPECIAL_VALUES = [math.nan, -math.inf, math.inf, -0.0, 0.0]


def pool_values(with_specials=True):
    ints = st.integers(-3, 3).map(float)
    if not with_specials:
        return ints
    return st.one_of(ints, ints, ints, st.sampled_from(SPECIAL_VALUES))


@st.composite
def pool_inputs(draw, cfg, dtype, with_specials=True, floats=False):
    """An NCHW array of the config's shape with tie-prone values (and NaN / +-inf when ``with_specials``).

    With ``floats``, random floats of many magnitudes instead (from a drawn seed: hypothesis's own floats are mostly
    round numbers), whose sums round differently when added in another order; no ties and no special values.
    """
    if floats:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        return (rng.standard_normal(cfg.shape) * np.exp2(rng.integers(-6, 7, cfg.shape))).astype(dtype)
    return draw(arrays(dtype, cfg.shape, elements=pool_values(with_specials)))


def finite_grad(rng_seed, shape, dtype):
    """A reproducible upstream gradient of ``shape`` (standard normal values, in ``dtype``)."""
    return np.random.default_rng(rng_seed).standard_normal(shape).astype(dtype)


def distinct_values(shape, seed=0):
    """Float64 values in [-1, 1], in random order, pairwise at least ``1 / size`` apart (no near-ties).

    Gradient checks of max/min pooling need this: a finite difference across a tie is not a derivative. The
    values are kept small so that the finite differences' rounding error stays far below the tolerance, and
    both signs occur, so padding zeros would win if the library let them.
    """
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    base = rng.permutation(size).astype(np.float64) - (size - 1) / 2
    jitter = rng.uniform(-0.25, 0.25, size)
    return ((base + jitter) * (2.0 / size)).reshape(shape)
