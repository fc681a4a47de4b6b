"""The compiled tier's fallback kernels for max and min pooling with indices, against PyTorch, bit for bit.

For NCHW input, :func:`pooling_lib.cython_tier.max_pool_forward` with indices normally runs the backward's winner
search (``extremum_index_nchw``), which holds each tap's offset in its window as a float. When a window reaches too
far for that (``_float_taps`` is False: an offset of 2**24 cells or more for float32, 2**31 for float64), it falls
back to ``extremum_nchw`` (min pooling) or to the book's chapter 8 kernel ``max_pool2d_nchw`` (max pooling). Inputs
that large do not fit in a test, so here ``_float_taps`` is patched to say False on ordinary inputs, and each build's
fallback kernels must give PyTorch's values (their raw bits: NaN signs and payloads, signed zeros) and indices on
seeded configurations with ties, NaN, infinities, padding, dilation and ceil_mode; some of them on two threads.
A recording stand-in for the kernels module checks that the fallback kernels really ran.

Like test_against_torch.py, this module is skipped without PyTorch, visibly, except under CI, where it fails.
"""

import numpy as np
import pytest

import pooling_lib as pl
from _helpers import (assert_identical, assert_same_bits, compiled_builds, has_empty_window, import_torch, nans,
                      run_on_threads)

cython_tier = pytest.importorskip("pooling_lib.cython_tier", reason="the compiled tier is not built")

torch = import_torch()

import torch.nn.functional as TF  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

BUILDS = compiled_builds()
N_CONFIGS = 36
FALLBACK = {"max": "max_pool2d_nchw", "min": "extremum_nchw"}


def make_case(i):
    """Configuration ``i``: (NCHW x, max_pool2d keyword arguments, threads)."""
    rng = np.random.default_rng([20, i])
    dtype = (np.float32, np.float64)[i % 2]
    while True:
        k = tuple(int(v) for v in rng.integers(1, 5, 2))
        s = tuple(int(v) for v in rng.integers(1, 4, 2))
        p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        d = tuple(int(v) for v in rng.choice([1, 1, 2, 3], 2))
        ceil_mode = bool(rng.random() < 0.5)
        H, W = (int(v) for v in rng.integers(1, 13, 2))
        if min(pl.pool2d_output_size((H, W), k, s, p, d, ceil_mode)) < 1:
            continue
        if not any(has_empty_window(L, k[a], s[a], p[a], d[a], ceil_mode) for a, L in enumerate((H, W))):
            break
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4)), H, W)
    x = rng.integers(-3, 4, shape).astype(dtype)          # small integers: ties in most windows
    specials = np.concatenate([nans(dtype), np.array([-np.inf, np.inf, -0.0, 0.0], dtype=dtype)])
    mask = rng.random(shape) < 0.3
    x[mask] = rng.choice(specials, size=int(mask.sum()))
    if i % 4 == 1:    # a plane of -inf: every window's winner is its first real cell, with -inf, as for +inf in min
        x[0, -1] = -np.inf
    elif i % 4 == 3:
        x[-1, 0] = np.inf
    kwargs = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil_mode)
    return x, kwargs, (2 if i % 3 == 0 else 1)


def _describe(i):
    x, kw, threads = make_case(i)
    return f"{i}-{x.dtype.name}-{x.shape}-{kw}-{threads}thr"


def torch_pool(x, kw, op):
    """PyTorch's max pooling of x, and min pooling as max pooling of -x with the values negated back (NumPy's
    negation flips the sign bit only, so a NaN winner's bits come back as they were)."""
    out, ind = TF.max_pool2d(torch.from_numpy(x if op == "max" else -x), **kw, return_indices=True)
    values = out.numpy()
    return (values if op == "max" else -values), ind.numpy()


class _Recording:
    """Stands in for a build of the kernels module: runs its kernels and records each call's name and its last
    argument (the thread count)."""

    def __init__(self, module):
        self._module = module
        self.calls = []

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls.append((name, args[-1] if args else None))
            return attr(*args, **kwargs)

        return call


@pytest.fixture(params=sorted(BUILDS))
def recording(request, monkeypatch):
    kernels = _Recording(BUILDS[request.param])
    monkeypatch.setattr(cython_tier, "_kernels", kernels)
    monkeypatch.setattr(cython_tier, "_float_taps", lambda g, dtype: False)
    return kernels


@pytest.mark.parametrize("i", range(N_CONFIGS), ids=_describe)
def test_fallback_kernels_match_torch_bitwise(recording, monkeypatch, i):
    x, kw, threads = make_case(i)
    run_on_threads(monkeypatch, threads)
    for op, pool in (("max", pl.max_pool2d), ("min", pl.min_pool2d)):
        recording.calls.clear()
        out, ind = pool(x, **kw, return_indices=True, backend="cython")
        assert recording.calls == [(FALLBACK[op], threads)], f"{op}: ran {recording.calls}"
        t_out, t_ind = torch_pool(x, kw, op)
        assert_same_bits(out, t_out, err_msg=f"{op} values")
        assert_identical(ind, t_ind, err_msg=f"{op} indices")


def test_the_configurations_cover_the_features():
    """The seeded configurations hold what the module claims: both dtypes, padding, dilation, ceil_mode that changes
    the size, two threads, and every special value (each NaN of ``nans``) in a window that it wins."""
    seen = set()
    for i in range(N_CONFIGS):
        x, kw, threads = make_case(i)
        seen |= {("dtype", x.dtype.name), ("threads", threads)}
        seen |= {("padding",)} if max(kw["padding"]) > 0 else set()
        seen |= {("dilation",)} if max(kw["dilation"]) > 1 else set()
        if kw["ceil_mode"] and (pl.pool2d_output_size(x.shape[2:], **kw)
                                != pl.pool2d_output_size(x.shape[2:], **dict(kw, ceil_mode=False))):
            seen.add(("ceil-changes-size",))
        for op in ("max", "min"):
            values, _ = torch_pool(x, kw, op)
            bits = values.view(np.uint32 if x.dtype == np.float32 else np.uint64)
            seen |= {(op, x.dtype.name, int(b)) for b in np.unique(bits)}
    expected = {("dtype", "float32"), ("dtype", "float64"), ("threads", 1), ("threads", 2), ("padding",),
                ("dilation",), ("ceil-changes-size",)}
    for dtype, uint in ((np.float32, np.uint32), (np.float64, np.uint64)):
        specials = np.concatenate([nans(dtype), np.array([-np.inf, np.inf, -0.0, 0.0], dtype=dtype)])
        expected |= {(op, np.dtype(dtype).name, int(b)) for op in ("max", "min") for b in specials.view(uint)}
    assert expected <= seen, expected - seen
