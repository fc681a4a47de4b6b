"""Property-based tests (hypothesis): every tier agrees with the naive reference, and the symmetries hold.

Inputs are small arrays of small integers (so ties are everywhere), signed zeros, NaN and +-inf; half of the
average pooling cases hold random floats of many magnitudes instead, whose sums depend on the order of the
additions. Max/min pooling must agree BIT FOR BIT across tiers (values, indices and gradients), and so must average
pooling's forward and backward (every tier sums a window's taps in row-major order, and adds a cell's shares in
row-major window order, as PyTorch does).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pooling_lib as pl
from _helpers import (
    BACKENDS,
    DTYPES,
    FAST_BACKENDS,
    LAYOUTS,
    COMPOUND_SETTINGS,
    PROPERTY_SETTINGS,
    assert_identical,
    finite_grad,
    from_layout,
    pool_configs,
    pool_inputs,
    to_layout,
)

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

EXTREMA = {
    "max": (pl.max_pool2d, pl.max_pool2d_backward),
    "min": (pl.min_pool2d, pl.min_pool2d_backward),
}


@st.composite
def max_case(draw):
    cfg = draw(pool_configs())
    dtype = draw(st.sampled_from(DTYPES))
    x = draw(pool_inputs(cfg, dtype))
    layout = draw(st.sampled_from(LAYOUTS))
    seed = draw(st.integers(0, 2**32 - 1))
    return cfg, x, dtype, layout, seed


@st.composite
def avg_case(draw):
    cfg = draw(pool_configs(avg=True))
    dtype = draw(st.sampled_from(DTYPES))
    x = draw(pool_inputs(cfg, dtype, floats=draw(st.booleans())))  # floats: the order of a window's sum shows
    layout = draw(st.sampled_from(LAYOUTS))
    seed = draw(st.integers(0, 2**32 - 1))
    return cfg, x, dtype, layout, seed


# --------------------------------------------------------------------------------------------------------------
# Every tier == naive
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["max", "min"])
@PROPERTY_SETTINGS
@given(case=max_case())
def test_extremum_tiers_agree_bitwise(op, case):
    cfg, x_nchw, dtype, layout, seed = case
    forward, backward = EXTREMA[op]
    kw = cfg.max_kwargs()
    x = to_layout(x_nchw, layout)
    out_ref, ind_ref = forward(x, **kw, return_indices=True, layout=layout, backend="naive")
    grad_out = finite_grad(seed, out_ref.shape, dtype)
    grad_ref = backward(grad_out, x, **kw, layout=layout, backend="naive")
    assert out_ref.dtype == dtype and grad_ref.dtype == dtype and ind_ref.dtype == np.int64
    assert grad_ref.shape == x.shape
    for backend in FAST_BACKENDS:
        out, ind = forward(x, **kw, return_indices=True, layout=layout, backend=backend)
        assert_identical(out, out_ref, err_msg=f"{op} forward, backend={backend}")
        assert_identical(ind, ind_ref, err_msg=f"{op} indices, backend={backend}")
        assert_identical(forward(x, **kw, layout=layout, backend=backend), out_ref,
                         err_msg=f"{op} forward without indices, backend={backend}")
        grad = backward(grad_out, x, **kw, layout=layout, backend=backend)
        assert_identical(grad, grad_ref, err_msg=f"{op} backward, backend={backend}")
    # "auto" is one of the tiers
    assert_identical(forward(x, **kw, layout=layout), out_ref)


@COMPOUND_SETTINGS
@given(case=max_case())
def test_extremum_indices_point_at_the_values(case):
    """out == x.flat[index] in each plane, every index is inside the window, and the gradient sums add up."""
    cfg, x, dtype, layout, seed = case
    kw = cfg.max_kwargs()
    out, ind = pl.max_pool2d(x, **kw, return_indices=True, backend="numpy")
    N, C, H, W = x.shape
    flat = x.reshape(N, C, H * W)
    gathered = np.take_along_axis(flat, ind.reshape(N, C, -1), axis=2).reshape(out.shape)
    assert_identical(gathered, out)
    assert ind.min() >= 0 and ind.max() < H * W
    grad_out = np.ones(out.shape, dtype)
    grad = pl.max_pool2d_backward(grad_out, x, **kw, backend="numpy")
    assert grad.sum() == grad_out.size  # no gradient lost to padding, none duplicated by ties
    counts = np.zeros((N, C, H * W))
    np.add.at(counts, (np.arange(N)[:, None, None], np.arange(C)[None, :, None], ind.reshape(N, C, -1)), 1)
    assert_identical(grad, counts.reshape(x.shape).astype(dtype))


@PROPERTY_SETTINGS
@given(case=avg_case())
def test_avg_tiers_agree(case):
    cfg, x_nchw, dtype, layout, seed = case
    kw = cfg.avg_kwargs()
    x = to_layout(x_nchw, layout)
    out_ref = pl.avg_pool2d(x, **kw, layout=layout, backend="naive")
    grad_out = finite_grad(seed, out_ref.shape, dtype)
    grad_ref = pl.avg_pool2d_backward(grad_out, x, **kw, layout=layout, backend="naive")
    assert out_ref.dtype == dtype and grad_ref.dtype == dtype and grad_ref.shape == x.shape
    for backend in FAST_BACKENDS:
        out = pl.avg_pool2d(x, **kw, layout=layout, backend=backend)
        assert_identical(out, out_ref, err_msg=f"avg forward, backend={backend}")
        grad = pl.avg_pool2d_backward(grad_out, x, **kw, layout=layout, backend=backend)
        assert_identical(grad, grad_ref, err_msg=f"avg backward, backend={backend}")


@PROPERTY_SETTINGS
@given(case=avg_case(), c=st.integers(1, 99))
def test_avg_of_constant_input(case, c):
    """On a constant input c, each output is c * (real cells) / divisor: checks every divisor rule at once.

    The sum of a window's cells (c each, an integer up to 99) is exact, so each output is one correctly rounded
    division of two exact numbers, in the input's dtype: the results must be those bits, in the layout drawn (an ulp
    off, as from multiplying by a rounded 1 / divisor, is an error)."""
    cfg, _, dtype, layout, _ = case
    x = to_layout(np.full(cfg.shape, c, dtype=dtype), layout)
    kw = cfg.avg_kwargs()
    (kh, kw_), (sh, sw), (ph, pw) = [(v, v) if isinstance(v, int) else v
                                     for v in (cfg.kernel_size, cfg.stride or cfg.kernel_size, cfg.padding)]
    oh, ow = cfg.out_hw()
    H, W = cfg.shape[2:]
    expected = np.empty((oh, ow), dtype=dtype)
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * sh - ph, j * sw - pw
            h1, w1 = min(h0 + kh, H + ph), min(w0 + kw_, W + pw)
            real = (min(h1, H) - max(h0, 0)) * (min(w1, W) - max(w0, 0))
            if cfg.divisor_override is not None:
                divisor = cfg.divisor_override
            elif cfg.count_include_pad:
                divisor = (h1 - h0) * (w1 - w0)
            else:
                divisor = real
            expected[i, j] = dtype(c * real) / dtype(divisor)  # exact / exact, rounded once in dtype
    expected = to_layout(np.broadcast_to(expected, cfg.shape[:2] + (oh, ow)), layout)
    for backend in BACKENDS:
        out = pl.avg_pool2d(x, **kw, layout=layout, backend=backend)
        assert_identical(out, expected, err_msg=f"{layout}, backend={backend}")


# --------------------------------------------------------------------------------------------------------------
# Symmetries
# --------------------------------------------------------------------------------------------------------------
@COMPOUND_SETTINGS
@given(case=max_case(), avg=avg_case())
def test_nhwc_is_nchw_transposed(case, avg):
    cfg, x, dtype, _, seed = case
    x_nhwc = to_layout(x, "NHWC")
    kw = cfg.max_kwargs()
    for backend in BACKENDS:
        for op, (forward, backward) in EXTREMA.items():
            out, ind = forward(x, **kw, return_indices=True, backend=backend)
            out_t, ind_t = forward(x_nhwc, **kw, return_indices=True, layout="NHWC", backend=backend)
            assert_identical(from_layout(out_t, "NHWC"), out, err_msg=f"{op} {backend}")
            assert_identical(from_layout(ind_t, "NHWC"), ind, err_msg=f"{op} {backend}")
            g = finite_grad(seed, out.shape, dtype)
            grad = backward(g, x, **kw, backend=backend)
            grad_t = backward(to_layout(g, "NHWC"), x_nhwc, **kw, layout="NHWC", backend=backend)
            assert_identical(from_layout(grad_t, "NHWC"), grad, err_msg=f"{op} backward {backend}")
    cfg, x, dtype, _, seed = avg
    x_nhwc = to_layout(x, "NHWC")
    kw = cfg.avg_kwargs()
    for backend in BACKENDS:
        out = pl.avg_pool2d(x, **kw, backend=backend)
        assert_identical(from_layout(pl.avg_pool2d(x_nhwc, **kw, layout="NHWC", backend=backend), "NHWC"), out)
        g = finite_grad(seed, out.shape, dtype)
        grad = pl.avg_pool2d_backward(g, x, **kw, backend=backend)
        grad_t = pl.avg_pool2d_backward(to_layout(g, "NHWC"), x_nhwc, **kw, layout="NHWC", backend=backend)
        assert_identical(from_layout(grad_t, "NHWC"), grad, err_msg=f"avg backward {backend}")


@COMPOUND_SETTINGS
@given(case=max_case())
def test_min_is_negated_max(case):
    cfg, x_nchw, dtype, layout, seed = case
    x = to_layout(x_nchw, layout)
    kw = dict(cfg.max_kwargs(), layout=layout)
    for backend in BACKENDS:
        out_min, ind_min = pl.min_pool2d(x, **kw, return_indices=True, backend=backend)
        out_max, ind_max = pl.max_pool2d(-x, **kw, return_indices=True, backend=backend)
        assert_identical(out_min, -out_max, err_msg=backend)
        assert_identical(ind_min, ind_max, err_msg=backend)
        g = finite_grad(seed, out_min.shape, dtype)
        assert_identical(pl.min_pool2d_backward(g, x, **kw, backend=backend),
                         pl.max_pool2d_backward(g, -x, **kw, backend=backend), err_msg=backend)


# --------------------------------------------------------------------------------------------------------------
# Non-contiguous, transposed, sliced, reversed, read-only inputs give what their contiguous copies give
# --------------------------------------------------------------------------------------------------------------
def make_view(kind, x):
    """A view holding the same values as the NCHW array ``x`` but with unusual strides (or flags)."""
    N, C, H, W = x.shape
    if kind == "transposed_hw":
        base = np.ascontiguousarray(x.transpose(0, 1, 3, 2))
        return base.transpose(0, 1, 3, 2)
    if kind == "sliced":
        base = np.full((N, 2 * C, 2 * H + 1, 3 * W), 99, dtype=x.dtype)
        base[:, 1::2, 1::2, ::3] = x
        return base[:, 1::2, 1::2, ::3]
    if kind == "reversed":
        base = np.ascontiguousarray(x[:, ::-1, ::-1, ::-1])
        return base[:, ::-1, ::-1, ::-1]
    if kind == "fortran":
        return np.asfortranarray(x)
    if kind == "nhwc_memory":  # NCHW shape, NHWC memory: what a channels-last tensor looks like
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    if kind == "readonly":
        y = x.copy()
        y.flags.writeable = False
        return y
    if kind == "broadcast":  # zero strides over the batch axis, read-only
        return np.broadcast_to(x[:1], x.shape)
    raise AssertionError(kind)


VIEW_KINDS = ["transposed_hw", "sliced", "reversed", "fortran", "nhwc_memory", "readonly", "broadcast"]


@COMPOUND_SETTINGS
@given(case=max_case(), avg=avg_case(), kind=st.sampled_from(VIEW_KINDS), grad_kind=st.sampled_from(VIEW_KINDS))
def test_strided_inputs_match_contiguous_copies(case, avg, kind, grad_kind):
    for cfg, x, dtype, layout, seed, is_avg in (case + (False,), avg + (True,)):
        if kind == "broadcast":
            x = np.broadcast_to(x[:1], x.shape).copy()  # make the contiguous reference equal the broadcast view
        view = make_view(kind, x)
        x_layout, view_layout = to_layout(x, layout), (view if layout == "NCHW" else view.transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(view_layout, x_layout)
        if is_avg:
            kw = dict(cfg.avg_kwargs(), layout=layout)
            ops = [("avg", pl.avg_pool2d, pl.avg_pool2d_backward)]
        else:
            kw = dict(cfg.max_kwargs(), layout=layout)
            ops = [(name, f, b) for name, (f, b) in EXTREMA.items()]
        for backend in BACKENDS:
            for name, forward, backward in ops:
                msg = f"{name}, {kind} input, {grad_kind} grad_out, {layout}, backend={backend}"
                out = forward(x_layout, **kw, backend=backend)
                assert_identical(forward(view_layout, **kw, backend=backend), out, err_msg=msg)
                g = finite_grad(seed, from_layout(out, layout).shape, dtype)
                if grad_kind == "broadcast":
                    g = np.broadcast_to(g[:1], g.shape).copy()
                g_view = make_view(grad_kind, g)
                g_layout = to_layout(g, layout)
                g_view_layout = g_view if layout == "NCHW" else g_view.transpose(0, 2, 3, 1)
                ref = backward(g_layout, x_layout, **kw, backend=backend)
                got = backward(g_view_layout, view_layout, **kw, backend=backend)
                # the compiled tier picks its kernel by memory order: both kernels give the same bits
                assert_identical(got, ref, err_msg=msg)
                assert np.shares_memory(got, g_view) is False and np.shares_memory(got, view) is False


def test_inputs_are_not_modified(backend):
    rng = np.random.default_rng(3)
    x = rng.integers(-3, 4, (2, 3, 7, 6)).astype(np.float64)
    x[0, 0, 0, 0] = np.nan
    g_max = rng.standard_normal((2, 3, 4, 3))
    g_avg = rng.standard_normal((2, 3, 4, 3))
    x0, g_max0, g_avg0 = x.copy(), g_max.copy(), g_avg.copy()
    pl.max_pool2d(x, 3, 2, 1, backend=backend)
    pl.max_pool2d_backward(g_max, x, 3, 2, 1, backend=backend)
    pl.min_pool2d_backward(g_max, x, 3, 2, 1, backend=backend)
    pl.avg_pool2d(x, 3, 2, 1, backend=backend)
    pl.avg_pool2d_backward(g_avg, x, 3, 2, 1, backend=backend)
    for a, b in ((x, x0), (g_max, g_max0), (g_avg, g_avg0)):
        assert_identical(a, b)


def test_outputs_are_fresh_arrays(backend):
    """Two calls do not return views of one shared buffer, and results do not alias the inputs."""
    x = np.arange(32.0).reshape(1, 2, 4, 4)
    a = pl.max_pool2d(x, 2, backend=backend)
    b = pl.max_pool2d(x, 2, backend=backend)
    assert not np.shares_memory(a, b) and not np.shares_memory(a, x)
    a = pl.avg_pool2d(x, 1, backend=backend)  # a 1x1 window: the output equals the input
    assert_identical(a, x)
    assert not np.shares_memory(a, x)
    g = np.ones((1, 2, 4, 4))
    a = pl.avg_pool2d_backward(g, x, 1, backend=backend)
    assert not np.shares_memory(a, g)
    a = pl.max_pool2d_backward(g, x, 1, backend=backend)
    assert not np.shares_memory(a, g)


# --------------------------------------------------------------------------------------------------------------
# Global pooling is pooling with one window that covers the plane; layers equal the functions
# --------------------------------------------------------------------------------------------------------------
@COMPOUND_SETTINGS
@given(case=max_case())
def test_global_pooling_is_a_full_window(case):
    cfg, x_nchw, dtype, layout, seed = case
    x = to_layout(x_nchw, layout)
    H, W = x_nchw.shape[2:]

    def squeeze(y):
        return from_layout(y, layout)[:, :, 0, 0]

    g = finite_grad(seed, x_nchw.shape[:2], dtype)
    g4 = to_layout(g[:, :, None, None], layout)
    gmax_ref = squeeze(pl.max_pool2d(x, (H, W), layout=layout, backend="naive"))
    gavg_ref = squeeze(pl.avg_pool2d(x, (H, W), layout=layout, backend="naive"))
    for backend in BACKENDS:
        kw = dict(layout=layout, backend=backend)
        gmax = pl.global_max_pool2d(x, **kw)
        assert gmax.shape == x_nchw.shape[:2] and gmax.dtype == dtype
        assert_identical(gmax, gmax_ref, err_msg=backend)
        assert_identical(pl.global_avg_pool2d(x, **kw), gavg_ref, err_msg=backend)
        assert_identical(pl.global_max_pool2d_backward(g, x, **kw),
                         pl.max_pool2d_backward(g4, x, (H, W), layout=layout, backend="naive"), err_msg=backend)
        assert_identical(pl.global_avg_pool2d_backward(g, x, **kw),
                         pl.avg_pool2d_backward(g4, x, (H, W), layout=layout, backend="naive"), err_msg=backend)


@COMPOUND_SETTINGS
@given(case=max_case(), avg=avg_case(), backend=st.sampled_from(BACKENDS))
def test_layers_equal_functions(case, avg, backend):
    cfg, x_nchw, dtype, layout, seed = case
    x = to_layout(x_nchw, layout)
    for layer_cls, (forward, backward) in ((pl.MaxPool2d, EXTREMA["max"]), (pl.MinPool2d, EXTREMA["min"])):
        layer = layer_cls(**cfg.max_kwargs(), layout=layout, backend=backend)
        out = layer.forward(x)
        assert_identical(out, forward(x, **cfg.max_kwargs(), layout=layout, backend=backend))
        g = finite_grad(seed, out.shape, dtype)
        assert_identical(layer.backward(g), backward(g, x, **cfg.max_kwargs(), layout=layout, backend=backend))
    for layer, forward, backward in ((pl.GlobalMaxPool2d(layout=layout, backend=backend), pl.global_max_pool2d,
                                      pl.global_max_pool2d_backward),
                                     (pl.GlobalAvgPool2d(layout=layout, backend=backend), pl.global_avg_pool2d,
                                      pl.global_avg_pool2d_backward)):
        out = layer(x)
        assert_identical(out, forward(x, layout=layout, backend=backend))
        g = finite_grad(seed, out.shape, dtype)
        assert_identical(layer.backward(g), backward(g, x, layout=layout, backend=backend))
    cfg, x_nchw, dtype, layout, seed = avg
    x = to_layout(x_nchw, layout)
    layer = pl.AvgPool2d(**cfg.avg_kwargs(), layout=layout, backend=backend)
    out = layer(x)
    assert_identical(out, pl.avg_pool2d(x, **cfg.avg_kwargs(), layout=layout, backend=backend))
    g = finite_grad(seed, out.shape, dtype)
    assert_identical(layer.backward(g), pl.avg_pool2d_backward(g, x, **cfg.avg_kwargs(), layout=layout,
                                                                backend=backend))
