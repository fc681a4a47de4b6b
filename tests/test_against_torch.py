"""Cross-check against PyTorch, the reference the library promises to match.

Forward values, winner indices and gradients of ``torch.nn.functional.max_pool2d`` / ``avg_pool2d`` /
``adaptive_max_pool2d(x, 1)`` / ``adaptive_avg_pool2d(x, 1)`` over a few hundred seeded random configurations
(ties, NaN of both signs and with payloads, +-inf, padding, ceil_mode, dilation, count_include_pad,
divisor_override, float32 and float64, NCHW and NHWC against PyTorch's channels_last), on every backend, and average
pooling on many channels with order-sensitive values (the compiled vector loops). Max/min pooling (values, indices,
gradients) and average pooling (forward and backward) must match bit for bit; a max or min pooling's NaN winner must
keep its sign and payload (its raw bits are compared); global average pooling's forward agrees to rounding (PyTorch's
mean sums in another order), and its gradient bit for bit.

PyTorch is an oracle, not a dependency: without it this module is skipped, visibly. When the environment
variable ``CI`` is set (CI sets ``CI=true``), a missing or broken torch FAILS instead, so that a broken
install cannot silently switch the cross-check off.
"""
import functools

import numpy as np
import pytest

import pooling_lib as pl
from _helpers import (BACKENDS, assert_identical, assert_same_bits, has_empty_window, import_torch, nans,
                      run_on_threads, to_layout)

torch = import_torch()

import torch.nn.functional as TF  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

torch.set_num_threads(1)  # tiny tensors: threads only add overhead (results do not depend on it)

N_MAX_CONFIGS = 150
N_AVG_CONFIGS = 150
N_GLOBAL_CONFIGS = 40
VALUE_KINDS = ("ties", "specials", "normal")


# --------------------------------------------------------------------------------------------------------------
# Seeded random configurations
# --------------------------------------------------------------------------------------------------------------
def _values(rng, shape, kind, dtype):
    if kind == "normal":
        return rng.standard_normal(shape).astype(dtype)
    x = rng.integers(-3, 4, shape).astype(dtype)  # small integers: ties in most windows
    if kind == "specials":  # NaNs that differ in sign and payload: max and min pooling return the winner's bits
        specials = np.concatenate([nans(dtype), np.array([-np.inf, np.inf, -0.0], dtype=dtype)])
        mask = rng.random(shape) < 0.2
        x[mask] = rng.choice(specials, size=int(mask.sum()))
    return x


def _geometry(rng, avg):
    """Draw (kernel, stride, padding, dilation, ceil_mode, H, W) until the geometry is valid and has no window
    without an input cell (that case is tested in test_errors.py::test_window_with_no_input_cell)."""
    while True:
        k = tuple(int(v) for v in rng.integers(1, 5, 2))
        s = None if rng.random() < 0.2 else tuple(int(v) for v in rng.integers(1, 4, 2))
        p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        d = (1, 1) if avg else tuple(int(v) for v in rng.choice([1, 1, 2, 3], 2))
        ceil_mode = bool(rng.random() < 0.5)
        H, W = (int(v) for v in rng.integers(1, 11, 2))
        ss = s or k
        out = pl.pool2d_output_size((H, W), k, ss, p, d, ceil_mode)
        if min(out) < 1:
            continue
        if any(has_empty_window(L, k[a], ss[a], p[a], d[a], ceil_mode) for a, L in enumerate((H, W))):
            continue
        # exercise both spellings: an int where both entries agree
        def spell(v):
            return v[0] if v is not None and v[0] == v[1] and rng.random() < 0.5 else v
        return dict(kernel_size=spell(k), stride=spell(s), padding=spell(p), dilation=spell(d),
                    ceil_mode=ceil_mode), (H, W)


@functools.lru_cache(maxsize=None)
def make_case(kind, i):
    """Configuration ``i`` of ``kind`` ("max", "avg" or "global"): (x in its layout, kwargs, layout, dtype)."""
    rng = np.random.default_rng([{"max": 1, "avg": 2, "global": 3}[kind], i])
    dtype = (np.float32, np.float64)[i % 2]
    layout = ("NCHW", "NHWC")[(i // 2) % 2]
    values = VALUE_KINDS[i % 3]
    N, C = int(rng.integers(1, 3)), int(rng.integers(1, 4))
    if kind == "global":
        kwargs, (H, W) = {}, tuple(int(v) for v in rng.integers(1, 9, 2))
    else:
        kwargs, (H, W) = _geometry(rng, avg=(kind == "avg"))
        if kind == "avg":
            del kwargs["dilation"]
            kwargs["count_include_pad"] = bool(rng.random() < 0.5)
            kwargs["divisor_override"] = [None, None, None, int(rng.integers(1, 7)), -int(rng.integers(1, 4))][
                int(rng.integers(0, 5))]
    x = _values(rng, (N, C, H, W), values, dtype)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x, kwargs, layout, dtype


def _describe(kind, i):
    x, kwargs, layout, dtype = make_case(kind, i)
    return f"{kind}{i}-{layout}-{np.dtype(dtype).name}-{x.shape}-{kwargs}"


# --------------------------------------------------------------------------------------------------------------
# PyTorch side
# --------------------------------------------------------------------------------------------------------------
def to_torch(x, layout):
    """A leaf tensor with NCHW axes; for NHWC input its memory is channels_last (as a real NHWC tensor's)."""
    t = torch.from_numpy(np.array(x))
    if layout == "NHWC":
        t = t.permute(0, 3, 1, 2)
        assert t.is_contiguous(memory_format=torch.channels_last)
    return t.detach().requires_grad_(True)


def from_torch(t, layout):
    a = t.detach().numpy()
    return a.transpose(0, 2, 3, 1) if layout == "NHWC" else a


def to_torch_grad(g, layout):
    t = torch.from_numpy(np.array(g))
    return t.permute(0, 3, 1, 2) if layout == "NHWC" else t


@functools.lru_cache(maxsize=None)
def torch_extremum(i, op):
    """PyTorch's max pooling of x; min pooling as max pooling of -x (values negated back, same winners).

    The min gradient is the max gradient at -x with the same upstream gradient: it routes each window's
    gradient to the winner of -x, i.e. to the minimum of x (differentiating -max(-x) through autograd instead
    would negate the untouched zeros into -0.0).
    """
    x, kw, layout, dtype = make_case("max", i)
    t = to_torch(x if op == "max" else -x, layout)
    out, ind = TF.max_pool2d(t, kw["kernel_size"], kw["stride"], kw["padding"], kw["dilation"], kw["ceil_mode"],
                             return_indices=True)
    g = np.random.default_rng([9, i]).standard_normal(from_torch(out, layout).shape).astype(dtype)
    out.backward(to_torch_grad(g, layout))
    values = from_torch(out, layout)
    return (values if op == "max" else -values), from_torch(ind, layout), g, from_torch(t.grad, layout)


@functools.lru_cache(maxsize=None)
def torch_avg(i):
    x, kw, layout, dtype = make_case("avg", i)
    t = to_torch(x, layout)
    out = TF.avg_pool2d(t, kw["kernel_size"], kw["stride"], kw["padding"], kw["ceil_mode"],
                        kw["count_include_pad"], kw["divisor_override"])
    g = np.random.default_rng([9, i]).standard_normal(from_torch(out, layout).shape).astype(dtype)
    out.backward(to_torch_grad(g, layout))
    return from_torch(out, layout), g, from_torch(t.grad, layout)


def avg_tolerance(dtype):
    return dict(rtol=1e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("i", range(N_MAX_CONFIGS), ids=lambda i: _describe("max", i))
@pytest.mark.parametrize("op", ["max", "min"])
def test_extremum_pool_matches_torch_bitwise(op, i, backend):
    x, kw, layout, dtype = make_case("max", i)
    t_out, t_ind, g, t_grad = torch_extremum(i, op)
    forward, backward = {"max": (pl.max_pool2d, pl.max_pool2d_backward),
                         "min": (pl.min_pool2d, pl.min_pool2d_backward)}[op]
    out, ind = forward(x, **kw, return_indices=True, layout=layout, backend=backend)
    assert_same_bits(out, t_out, err_msg="forward values")
    assert_identical(ind, t_ind, err_msg="indices")
    assert_same_bits(forward(x, **kw, layout=layout, backend=backend), t_out, err_msg="forward without indices")
    grad = backward(g, x, **kw, layout=layout, backend=backend)
    assert_identical(grad, t_grad, err_msg="gradient")
    grad = backward(g, x, **kw, layout=layout, backend=backend, indices=ind)
    assert_identical(grad, t_grad, err_msg="gradient from the indices")


def _aten_backward(g, x, kw, indices, layout):
    """PyTorch's backward from indices, ``aten::max_pool2d_with_indices_backward``, in our layout."""
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]  # noqa: E731
    t = torch.ops.aten.max_pool2d_with_indices_backward(
        to_torch_grad(g, layout), to_torch(x, layout).detach(), pair(kw["kernel_size"]),
        pair(kw["stride"] if kw["stride"] is not None else kw["kernel_size"]), pair(kw["padding"]),
        pair(kw["dilation"]), kw["ceil_mode"], to_torch_grad(indices, layout))
    return from_torch(t, layout)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("i", range(0, N_MAX_CONFIGS, 3), ids=lambda i: _describe("max", i))
def test_backward_from_any_indices_matches_torch_bitwise(i, backend):
    """Indices anywhere in the plane (not the winners; often several windows on one cell): the gradient goes
    where they say, summed in window order, as in PyTorch's backward."""
    x, kw, layout, dtype = make_case("max", i)
    _, t_ind, g, _ = torch_extremum(i, "max")
    plane = x.shape[1] * x.shape[2] if layout == "NHWC" else x.shape[2] * x.shape[3]
    indices = np.random.default_rng([10, i]).integers(0, plane, t_ind.shape)
    expected = _aten_backward(g, x, kw, indices, layout)
    grad = pl.max_pool2d_backward(g, x, **kw, layout=layout, backend=backend, indices=indices)
    assert_identical(grad, expected)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kw", [
    ((2, 3, 56, 56), dict(kernel_size=2, stride=2, padding=0)),   # tiled exactly: the streamed 2x2 rows (AVX2)
    ((2, 3, 34, 30), dict(kernel_size=2, stride=2, padding=0)),   # out_w = 15: built in the buffer, then streamed
    ((2, 3, 33, 31), dict(kernel_size=2, stride=2, padding=0, ceil_mode=True)),
    ((2, 3, 56, 56), dict(kernel_size=3, stride=2, padding=1)),
])
@pytest.mark.parametrize("stray", [False, True])
def test_streamed_paths_match_torch_bitwise(monkeypatch, shape, kw, dtype, layout, threads, stray):
    """The compiled forward with indices and backward from indices on their streaming paths (forced with
    STREAM_MIN_BYTES = 0), with ties and NaN; ``stray``: some indices point outside their window, so a plane half
    streamed must be redone by the scatter. Min pooling's forward is checked against the NumPy tier."""
    ct = pytest.importorskip("pooling_lib.cython_tier")
    monkeypatch.setattr(ct, "STREAM_MIN_BYTES", 0)
    run_on_threads(monkeypatch, threads)                 # so that two threads really share the planes
    rng = np.random.default_rng(list(shape) + [threads])
    x = rng.integers(-2, 3, shape).astype(dtype)
    x[0, 0, 5:9, 3:7] = np.nan
    t = to_torch(x, "NCHW")
    out, ind = TF.max_pool2d(t, **kw, return_indices=True)
    to = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))  # noqa: E731
    xl = to(x) if layout == "NHWC" else x
    ours, ours_ind = pl.max_pool2d(xl, **kw, layout=layout, backend="cython", return_indices=True)
    assert_identical(ours, from_torch(out, layout), err_msg="forward values")
    assert_identical(ours_ind, from_torch(ind, layout), err_msg="forward indices")
    for backend in ("cython", "numpy"):
        mins = pl.min_pool2d(xl, **kw, layout=layout, backend=backend, return_indices=True)
        if backend == "cython":
            expected_mins = mins
        else:
            assert_identical(expected_mins[0], mins[0], err_msg="min values")
            assert_identical(expected_mins[1], mins[1], err_msg="min indices")
    indices = ind.numpy().copy()
    if stray:
        indices[1, 2, -1, -1] = 0                     # the last window of the last plane points at cell (0, 0)
        indices[0, 1, 3, :] = shape[2] * shape[3] - 1
    g = rng.standard_normal(indices.shape).astype(dtype)
    g[:, :, ::3] = -0.0
    ka = {"ceil_mode": False, "dilation": 1, **kw}
    expected = _aten_backward(g, x, ka, indices, "NCHW")
    if layout == "NHWC":
        grad = pl.max_pool2d_backward(to(g), to(x), **kw, layout="NHWC", backend="cython", indices=to(indices))
        grad = grad.transpose(0, 3, 1, 2)
    else:
        grad = pl.max_pool2d_backward(g, x, **kw, backend="cython", indices=indices)
    assert_identical(grad, expected)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kw", [
    ((2, 3, 56, 56), dict(kernel_size=2, stride=2)),               # tiled exactly: the streamed 2x2 rows (AVX2)
    ((2, 3, 56, 60), dict(kernel_size=2, stride=2)),               # out_w = 30, not a multiple of 4: the buffer
    ((2, 3, 33, 31), dict(kernel_size=2, stride=2)),               # a last row and column no window covers
    ((2, 3, 56, 56), dict(kernel_size=3, stride=2, padding=1)),    # overlapping windows: the buffer
    ((2, 3, 20, 24), dict(kernel_size=2, stride=1, padding=1, count_include_pad=False)),
])
def test_avg_backward_streamed_matches_torch(monkeypatch, shape, kw, dtype, threads):
    """The compiled average backward with its gradient streamed (forced with STREAM_MIN_BYTES = 0) gives the bits
    of the ordinary path, and PyTorch's gradient bit for bit: each cell gets ``0 + g / divisor`` from each window
    that covers it, in row-major window order (so a -0.0 gradient comes out +0.0, as the sum from zero gives)."""
    ct = pytest.importorskip("pooling_lib.cython_tier")
    run_on_threads(monkeypatch, threads)                 # so that two threads really share the planes
    rng = np.random.default_rng(list(shape) + [threads])
    x = rng.standard_normal(shape).astype(dtype)
    t = to_torch(x, "NCHW").requires_grad_(True)
    out = TF.avg_pool2d(t, **kw)
    g = rng.standard_normal(tuple(out.shape)).astype(dtype)
    g[:, :, ::3] = -0.0
    out.backward(torch.from_numpy(g))
    expected = t.grad.numpy()
    monkeypatch.setattr(ct, "STREAM_MIN_BYTES", 2**62)
    plain = pl.avg_pool2d_backward(g, x, **kw, backend="cython")
    monkeypatch.setattr(ct, "STREAM_MIN_BYTES", 0)
    streamed = pl.avg_pool2d_backward(g, x, **kw, backend="cython")
    assert_identical(streamed, plain, err_msg="streamed against ordinary stores")
    assert_identical(streamed, expected, err_msg="against PyTorch")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad, divisor_override", [(True, None), (False, None), (True, 7)])
def test_avg_backward_3x3_stride2_pad1_matches_torch(dtype, ceil_mode, count_include_pad, divisor_override):
    """The compiled tier has a gradient kernel of its own for 3x3 windows at stride 2 with padding 1, which writes
    each cell once (every backend is checked here): odd and even heights and widths from 1 to 9 (so the last row
    and column lie in one window or in two, and ceil_mode adds a window), and gradients whose magnitudes span six
    decades, so that adding a cell's shares in another order than PyTorch's (row-major window order, from 0)
    changes the last bits; -0.0 gradients must come out +0.0."""
    rng = np.random.default_rng([int(ceil_mode), int(count_include_pad), np.dtype(dtype).itemsize])
    kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
              divisor_override=divisor_override)
    for H in range(1, 10):
        for W in range(1, 10):
            x = rng.standard_normal((2, 3, H, W)).astype(dtype)
            t = to_torch(x, "NCHW")
            out = TF.avg_pool2d(t, **kw)
            g = (rng.standard_normal(tuple(out.shape)) * 10.0 ** rng.integers(-3, 4, tuple(out.shape)))
            g = g.astype(dtype)
            g[:, 1] = -0.0
            out.backward(torch.from_numpy(g))
            for backend in BACKENDS:
                grad = pl.avg_pool2d_backward(g, x, **kw, backend=backend)
                assert_identical(grad, t.grad.numpy(), err_msg=f"{backend}, H={H}, W={W}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("i", range(N_AVG_CONFIGS), ids=lambda i: _describe("avg", i))
def test_avg_pool_matches_torch(i, backend):
    x, kw, layout, dtype = make_case("avg", i)
    t_out, g, t_grad = torch_avg(i)
    out = pl.avg_pool2d(x, **kw, layout=layout, backend=backend)
    # Every tier sums a window's real cells in row-major order from 0 in the input dtype and divides once,
    # as PyTorch 2.13's CPU kernels do (NCHW and channels_last): the forward matches bit for bit, except for the
    # sign of a zero average under a negative divisor_override (0.0 / -2 is -0.0 here; PyTorch returns +0.0).
    assert_identical(out, t_out, err_msg="forward", signed_zeros=(kw["divisor_override"] or 1) > 0)
    grad = pl.avg_pool2d_backward(g, x, **kw, layout=layout, backend=backend)
    assert grad.dtype == dtype and grad.shape == t_grad.shape
    assert_identical(grad, t_grad, err_msg="gradient")


# Average pooling where the compiled tier runs its vector loops: 19 channels (NHWC: two 8-lane float32 vectors or
# four 4-lane float64 ones, then 3 channels left) and rows of 16 to 34 windows (NCHW), with values of many
# magnitudes, so that a sum added in any order but PyTorch's (the window's taps in row-major order) rounds to other
# bits somewhere. The seeded random configurations above have at most 3 channels and 10 columns.
WIDE_AVG = [
    dict(kernel_size=2, stride=2),                                      # NCHW 2x2 stride-2 loop; NHWC whole pixels
    dict(kernel_size=3, stride=1, padding=1),                           # 3x3 taps in one pass; NHWC AVX2 sums
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0), divisor_override=5),   # the tap-by-tap loops
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kw", WIDE_AVG, ids=str)
def test_avg_pool_many_channels_matches_torch_bitwise(kw, dtype, layout, backend):
    rng = np.random.default_rng([12, WIDE_AVG.index(kw), np.dtype(dtype).itemsize])

    def spread(shape):  # no ties, magnitudes from 2**-6 to 2**6: every sum's rounding depends on its order
        return (rng.standard_normal(shape) * np.exp2(rng.integers(-6, 7, shape))).astype(dtype)

    shape = (1, 19, 8, 34)
    out_hw = pl.pool2d_output_size(shape[2:], kw["kernel_size"], kw["stride"], kw.get("padding", 0),
                                   ceil_mode=kw.get("ceil_mode", False))
    x, g = spread(shape), spread(shape[:2] + out_hw)
    xl, gl = to_layout(x, layout), to_layout(g, layout)
    t = to_torch(xl, layout)
    t_out = TF.avg_pool2d(t, **kw)
    t_out.backward(to_torch_grad(gl, layout))
    out = pl.avg_pool2d(xl, **kw, layout=layout, backend=backend)
    assert_same_bits(out, from_torch(t_out, layout), err_msg="forward")
    grad = pl.avg_pool2d_backward(gl, xl, **kw, layout=layout, backend=backend)
    assert_same_bits(grad, from_torch(t.grad, layout), err_msg="gradient")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("i", range(N_GLOBAL_CONFIGS), ids=lambda i: _describe("global", i))
def test_global_pooling_matches_torch(i, backend):
    x, _, layout, dtype = make_case("global", i)
    t = to_torch(x, layout)
    t_out, t_ind = TF.adaptive_max_pool2d(t, 1, return_indices=True)
    g = np.random.default_rng([9, i]).standard_normal(t_out.shape[:2]).astype(dtype)
    t_out.backward(torch.from_numpy(g)[:, :, None, None])
    out = pl.global_max_pool2d(x, layout=layout, backend=backend)
    assert_same_bits(out, t_out.detach().numpy()[:, :, 0, 0], err_msg="global max")
    assert_identical(pl.global_max_pool2d_backward(g, x, layout=layout, backend=backend), from_torch(t.grad, layout),
                     err_msg="global max gradient")
    # the winner indices, and the backward that routes by them
    out_i, ind = pl.global_max_pool2d(x, layout=layout, backend=backend, return_indices=True)
    assert_same_bits(out_i, out, err_msg="global max with indices")
    assert_identical(ind, t_ind.numpy()[:, :, 0, 0], err_msg="global max indices")
    assert_identical(pl.global_max_pool2d_backward(g, x, layout=layout, backend=backend, indices=ind),
                     from_torch(t.grad, layout), err_msg="global max gradient from indices")

    t = to_torch(x, layout)
    t_out = TF.adaptive_avg_pool2d(t, 1)
    g.flat[::3] = -0.0                               # PyTorch's mean backward keeps a -0.0 gradient -0.0
    g.flat[1::3] = 0.0
    t_out.backward(torch.from_numpy(g)[:, :, None, None])
    out = pl.global_avg_pool2d(x, layout=layout, backend=backend)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, t_out.detach().numpy()[:, :, 0, 0], equal_nan=True, **avg_tolerance(dtype))
    # the backward is one division per plane, grad_out / (H * W), as in PyTorch: the same bits
    assert_identical(pl.global_avg_pool2d_backward(g, x, layout=layout, backend=backend), from_torch(t.grad, layout),
                     err_msg="global average gradient")


def _drops_a_window(kw, hw):
    """True when ceil_mode's rounding up would add a last window (along H or W) that starts in the right padding,
    which PyTorch drops: ``(n - 1) * s >= L + p`` for the rounded-up count ``n = ceil((L + 2p - d(k-1) - 1) / s) + 1``.
    """
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    k, p, d = pair(kw["kernel_size"]), pair(kw["padding"]), pair(kw.get("dilation", 1))
    s = pair(kw["stride"]) if kw["stride"] is not None else k
    for L, kk, ss, pp, dd in zip(hw, k, s, p, d):
        n = -(-(L + 2 * pp - dd * (kk - 1) - 1) // ss) + 1
        if kw["ceil_mode"] and (n - 1) * ss >= L + pp:
            return True
    return False


def _bits(a):
    """The set of the raw bit patterns (ints) of the float32 or float64 values in ``a``."""
    return {int(v) for v in np.ravel(a).view(np.uint32 if a.dtype == np.float32 else np.uint64)}


def test_the_configurations_cover_the_features():
    """The random configurations really contain what this module claims to test."""
    seen = set()
    for i in range(N_MAX_CONFIGS):
        x, kw, layout, dtype = make_case("max", i)
        pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
        k, p, d = pair(kw["kernel_size"]), pair(kw["padding"]), pair(kw["dilation"])
        s = pair(kw["stride"]) if kw["stride"] is not None else k
        hw = x.shape[1:3] if layout == "NHWC" else x.shape[2:]
        seen |= {("layout", layout), ("dtype", np.dtype(dtype).name)}
        seen |= {("padding",)} if max(p) > 0 else set()
        seen |= {("dilation",)} if max(d) > 1 else set()
        seen |= {("ceil",)} if kw["ceil_mode"] else set()
        seen |= {("overlap",)} if s[0] < k[0] or s[1] < k[1] else set()
        seen |= {("stride>kernel",)} if s[0] > k[0] or s[1] > k[1] else set()
        seen |= {("nan",)} if np.isnan(x).any() else set()
        seen |= {("-inf",)} if np.isneginf(x).any() else set()
        seen |= {("nan bits", np.dtype(dtype).name, b) for b in _bits(x[np.isnan(x)])}
        if kw["ceil_mode"]:
            args = (hw, kw["kernel_size"], kw["stride"], kw["padding"], kw["dilation"])
            if pl.pool2d_output_size(*args, ceil_mode=True) != pl.pool2d_output_size(*args, ceil_mode=False):
                seen.add(("ceil-changes-size",))
        seen |= {("ceil-drops-window",)} if _drops_a_window(kw, hw) else set()
    for i in range(N_AVG_CONFIGS):
        x, kw, layout, _ = make_case("avg", i)
        seen |= {("count_include_pad", kw["count_include_pad"])}
        seen |= {("divisor_override", None if kw["divisor_override"] is None else kw["divisor_override"] > 0)}
        seen |= {("avg ceil-drops-window",)} if _drops_a_window(kw, x.shape[1:3] if layout == "NHWC" else
                                                                    x.shape[2:]) else set()
    expected = {("layout", "NCHW"), ("layout", "NHWC"), ("dtype", "float32"), ("dtype", "float64"), ("padding",),
                ("dilation",), ("ceil",), ("overlap",), ("stride>kernel",), ("nan",), ("-inf",),
                ("ceil-changes-size",), ("ceil-drops-window",), ("avg ceil-drops-window",),
                ("count_include_pad", True), ("count_include_pad", False),
                ("divisor_override", None), ("divisor_override", True), ("divisor_override", False)}
    # every NaN of nans() (both signs, with and without a payload), in both dtypes
    expected |= {("nan bits", np.dtype(dtype).name, b) for dtype in (np.float32, np.float64)
                 for b in _bits(nans(dtype))}
    assert expected <= seen, expected - seen


REJECTED = [
    (5, 5, dict(kernel_size=2, padding=2)),  # padding over half the kernel
    (5, 5, dict(kernel_size=3, padding=2)),
    (5, 5, dict(kernel_size=(3, 1), padding=(1, 1))),
    (5, 5, dict(kernel_size=1, padding=1)),
    (2, 2, dict(kernel_size=3)),  # output too small
    (1, 6, dict(kernel_size=(2, 2), stride=1)),
    (3, 3, dict(kernel_size=(2, 5), padding=(0, 0))),
    (3, 3, dict(kernel_size=(2, 6), stride=1, ceil_mode=True)),  # rounding up cannot help with stride 1
]
REJECTED_DILATED = [
    (4, 4, dict(kernel_size=3, dilation=2)),  # a dilated window of 5 cells on 4
    (6, 6, dict(kernel_size=(2, 3), dilation=(1, 4), padding=(0, 1))),  # 9 cells on 6 + 2
]


@pytest.mark.parametrize("H, W, kw", REJECTED + REJECTED_DILATED)
def test_max_pool_configurations_torch_rejects_raise_value_error(H, W, kw):
    x = np.zeros((1, 1, H, W))
    with pytest.raises(RuntimeError):
        TF.max_pool2d(torch.from_numpy(x), **kw)
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="padding|kernel_size"):
            pl.max_pool2d(x, **kw, backend=backend)
        with pytest.raises(ValueError, match="padding|kernel_size"):
            pl.min_pool2d(x, **kw, backend=backend)


@pytest.mark.parametrize("H, W, kw", REJECTED)
def test_avg_pool_configurations_torch_rejects_raise_value_error(H, W, kw):
    x = np.zeros((1, 1, H, W))
    with pytest.raises(RuntimeError):
        TF.avg_pool2d(torch.from_numpy(x), **kw)
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="padding|kernel_size"):
            pl.avg_pool2d(x, **kw, backend=backend)


def test_output_sizes_match_torch():
    """pool2d_output_size equals PyTorch's output shape wherever PyTorch accepts the geometry."""
    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(400):
        L = int(rng.integers(1, 16))
        k, s, d = int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.integers(1, 4))
        p = int(rng.integers(0, k // 2 + 1))
        ceil_mode = bool(rng.random() < 0.5)
        try:
            shape = TF.max_pool2d(torch.zeros(1, 1, 1, L), (1, k), (1, s), (0, p), (1, d), ceil_mode).shape
        except RuntimeError:
            assert pl.pool2d_output_size(L, k, s, p, d, ceil_mode) < 1
            continue
        assert pl.pool2d_output_size(L, k, s, p, d, ceil_mode) == shape[-1], (L, k, s, p, d, ceil_mode)
        checked += 1
    assert checked > 300
