"""dtypes (float32/float64 kept, other real dtypes -> float64), layouts, empty batches, and import hygiene."""
import subprocess
import sys

import numpy as np
import pytest

import pooling_lib as pl
from _helpers import assert_identical, to_layout

X_INT = np.array([[[[3, -1, 4, 1],
                    [-5, 9, -2, 6],
                    [5, 3, -5, 8],
                    [9, -7, 9, 3]]]])
# 2x2 windows: [3,-1,-5,9] -> max 9 @5, min -5 @4, sum 6; [4,1,-2,6] -> 6 @7, -2 @6, 9;
#              [5,3,9,-7] -> 9 @12, -7 @13, 10;      [-5,8,9,3] -> 9 @14, -5 @10, 15
MAX = np.array([[[[9.0, 6.0], [9.0, 9.0]]]])
MAX_IDX = np.array([[[[5, 7], [12, 14]]]])
MIN = np.array([[[[-5.0, -2.0], [-7.0, -5.0]]]])
AVG = np.array([[[[1.5, 2.25], [2.5, 3.75]]]])


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64,
                                   np.float16, np.longdouble, ">f8", "<f8"])
def test_real_dtypes_become_float64_with_the_right_values(dtype, backend):
    x = X_INT.astype(dtype)
    out, ind = pl.max_pool2d(x, 2, return_indices=True, backend=backend)
    expected_dtype = np.float64
    assert_identical(out, MAX.astype(expected_dtype))
    assert_identical(ind, MAX_IDX)
    assert_identical(pl.min_pool2d(x, 2, backend=backend), MIN)
    assert_identical(pl.avg_pool2d(x, 2, backend=backend), AVG)  # true division, not integer division
    grad = pl.max_pool2d_backward(np.ones((1, 1, 2, 2), dtype=np.int32), x, 2, backend=backend)
    expected = np.zeros((1, 1, 4, 4))
    expected.reshape(-1)[[5, 7, 12, 14]] = 1
    assert_identical(grad, expected)
    grad = pl.avg_pool2d_backward(np.full((1, 1, 2, 2), 4, dtype=np.int64), x, 2, backend=backend)
    assert_identical(grad, np.ones((1, 1, 4, 4)))
    assert_identical(pl.global_max_pool2d(x, backend=backend), np.array([[9.0]]))
    assert_identical(pl.global_avg_pool2d(x, backend=backend), np.array([[np.float64(X_INT.sum()) / 16]]))


def test_unsigned_and_extreme_integers(backend):
    x = np.array([[[[0, 255], [128, 7]]]], dtype=np.uint8)
    assert_identical(pl.max_pool2d(x, 2, backend=backend), np.array([[[[255.0]]]]))
    assert_identical(pl.avg_pool2d(x, 2, backend=backend), np.array([[[[97.5]]]]))  # no uint8 overflow
    x = np.array([[[[-128, 127]]]], dtype=np.int8)
    assert_identical(pl.min_pool2d(x, (1, 2), backend=backend), np.array([[[[-128.0]]]]))
    assert_identical(pl.avg_pool2d(x, (1, 2), backend=backend), np.array([[[[-0.5]]]]))  # no int8 overflow
    x = np.array([[[[2**40, -(2**40)]]]], dtype=np.int64)
    assert_identical(pl.max_pool2d(x, (1, 2), backend=backend), np.array([[[[2.0**40]]]]))


def test_bool_input(backend):
    x = np.array([[[[True, False, False, False],
                    [False, False, False, True]]]])
    out, ind = pl.max_pool2d(x, 2, return_indices=True, backend=backend)
    assert_identical(out, np.array([[[[1.0, 1.0]]]]))
    assert_identical(ind, np.array([[[[0, 7]]]]))
    assert_identical(pl.avg_pool2d(x, 2, backend=backend), np.array([[[[0.25, 0.25]]]]))
    assert_identical(pl.min_pool2d(x, 2, backend=backend), np.array([[[[0.0, 0.0]]]]))


def test_nested_lists_are_accepted():
    assert_identical(pl.max_pool2d([[[[1, 2], [3, 4]]]], 2), np.array([[[[4.0]]]]))
    assert_identical(pl.global_avg_pool2d([[[[1, 2], [3, 4]]]]), np.array([[2.5]]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_out_dtype_follows_x(dtype, backend):
    x = X_INT.astype(dtype)
    for grad_dtype in (np.float32, np.float64, np.int64, np.float16):
        g = np.ones((1, 1, 2, 2), dtype=grad_dtype)
        assert pl.max_pool2d_backward(g, x, 2, backend=backend).dtype == dtype
        assert pl.min_pool2d_backward(g, x, 2, backend=backend).dtype == dtype
        assert pl.avg_pool2d_backward(g, x, 2, backend=backend).dtype == dtype
    g = np.ones((1, 1), dtype=np.float64)
    assert pl.global_max_pool2d_backward(g, x, backend=backend).dtype == dtype
    assert pl.global_avg_pool2d_backward(g, x, backend=backend).dtype == dtype


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_float64_grad_out_is_rounded_to_float32_first(backend, layout):
    """A float64 ``grad_out`` for a float32 ``x`` is cast to float32 first, then summed in float32: the gradient is
    the one for ``grad_out.astype(np.float32)``, bit for bit (overlapping windows, so that most cells add up several
    gradients; random gradients of many magnitudes, so that adding in float64 and rounding once gives other bits)."""
    rng = np.random.default_rng(17)
    x = to_layout(rng.integers(-3, 4, (2, 3, 9, 8)).astype(np.float32), layout)   # ties: first maximum wins
    kw = dict(kernel_size=3, stride=1, padding=1, layout=layout, backend=backend)
    akw = dict(kernel_size=(3, 2), stride=(1, 2), padding=1, count_include_pad=False, layout=layout, backend=backend)
    out, ind = pl.max_pool2d(x, **kw, return_indices=True)
    cases = {"max": (out.shape, lambda g, xd: pl.max_pool2d_backward(g, xd, **kw)),
             "max from indices": (out.shape, lambda g, xd: pl.max_pool2d_backward(g, xd, **kw, indices=ind)),
             "min": (out.shape, lambda g, xd: pl.min_pool2d_backward(g, xd, **kw)),
             "avg": (pl.avg_pool2d(x, **akw).shape, lambda g, xd: pl.avg_pool2d_backward(g, xd, **akw))}
    for name, (shape, backward) in cases.items():
        g64 = rng.standard_normal(shape) * np.exp2(rng.integers(-12, 13, shape))
        expected = backward(g64.astype(np.float32), x)
        assert expected.dtype == np.float32
        assert_identical(backward(g64, x), expected, err_msg=name)
        # the data can tell: adding the float64 gradients in float64 and rounding once gives other bits somewhere
        assert not np.array_equal(backward(g64, x.astype(np.float64)).astype(np.float32), expected), name


def test_float32_and_float64_agree_on_exact_values(backend):
    rng = np.random.default_rng(0)
    x = rng.integers(-8, 9, (2, 3, 9, 8)).astype(np.float64)  # small integers: exact in both dtypes
    for fwd, bwd, kw in ((pl.max_pool2d, pl.max_pool2d_backward, dict(kernel_size=3, stride=2, padding=1)),
                         (pl.avg_pool2d, pl.avg_pool2d_backward, dict(kernel_size=2, divisor_override=1))):
        out64, out32 = fwd(x, **kw, backend=backend), fwd(x.astype(np.float32), **kw, backend=backend)
        assert out32.dtype == np.float32
        assert_identical(out32.astype(np.float64), out64)
        g = rng.integers(-4, 5, out64.shape).astype(np.float64)
        assert_identical(bwd(g, x.astype(np.float32), **kw, backend=backend).astype(np.float64),
                         bwd(g, x, **kw, backend=backend))


# --------------------------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------------------------
def test_nhwc_output_is_in_nhwc(backend):
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 8))  # NCHW
    x_nhwc = to_layout(x, "NHWC")
    out, ind = pl.max_pool2d(x_nhwc, (2, 4), layout="NHWC", return_indices=True, backend=backend)
    assert out.shape == (2, 3, 2, 3) and ind.shape == (2, 3, 2, 3)  # (N, H_out, W_out, C)
    assert_identical(out, pl.max_pool2d(x, (2, 4), backend=backend).transpose(0, 2, 3, 1))
    out = pl.avg_pool2d(x_nhwc, (2, 4), layout="NHWC", backend=backend)
    assert out.shape == (2, 3, 2, 3)
    assert_identical(out, pl.avg_pool2d(x, (2, 4), backend=backend).transpose(0, 2, 3, 1))
    grad = pl.avg_pool2d_backward(np.ones((2, 3, 2, 3)), x_nhwc, (2, 4), layout="NHWC", backend=backend)
    assert grad.shape == x_nhwc.shape
    assert_identical(grad, np.full(x_nhwc.shape, 1 / 8))


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3, 1, 1), (2, 1, 4, 5), (1, 3, 1, 4), (2, 1, 1, 1)])
def test_the_compiled_tier_reads_the_memory_order_from_the_strides(shape):
    """``cython_tier._is_nhwc`` picks the kernel by memory order. When both orders describe the memory (one
    channel, or a 1x1 plane), the strides of the size-1 axes decide, so a global pooling's (N, C, 1, 1)
    ``grad_out`` handed over in NHWC memory stays NHWC."""
    if "cython" not in pl.available_backends():
        pytest.skip("the compiled tier is not built on this machine")
    from pooling_lib.cython_tier import _is_nhwc
    nchw = np.zeros(shape)
    nhwc = np.zeros((shape[0], shape[2], shape[3], shape[1])).transpose(0, 3, 1, 2)
    assert not _is_nhwc(nchw)
    assert _is_nhwc(nhwc) == (shape[1] > 1)
    assert not _is_nhwc(nchw[:, :, ::-1])  # neither order: not NHWC


def test_layout_changes_the_meaning_of_the_axes(backend):
    # The same (1, 2, 2, 2) array read as NCHW (C=2, 2x2 planes) or as NHWC (H=2, W=2, C=2)
    a = np.arange(8.0).reshape(1, 2, 2, 2)
    assert_identical(pl.global_max_pool2d(a, backend=backend), np.array([[3.0, 7.0]]))  # planes [0..3], [4..7]
    assert_identical(pl.global_max_pool2d(a, layout="NHWC", backend=backend),
                     np.array([[6.0, 7.0]]))  # channels even / odd
    assert_identical(pl.max_pool2d(a, (1, 2), backend=backend), np.array([[[[1.0], [3.0]], [[5.0], [7.0]]]]))
    assert_identical(pl.max_pool2d(a, (1, 2), layout="NHWC", backend=backend),
                     np.array([[[[2.0, 3.0]], [[6.0, 7.0]]]]))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_empty_batch(backend, layout):
    shape = (0, 3, 5, 5)
    x = np.zeros(to_layout(np.zeros(shape), layout).shape)
    out_shape = (0, 3, 2, 2) if layout == "NCHW" else (0, 2, 2, 3)
    for fwd, bwd in ((pl.max_pool2d, pl.max_pool2d_backward), (pl.min_pool2d, pl.min_pool2d_backward),
                     (pl.avg_pool2d, pl.avg_pool2d_backward)):
        out = fwd(x, 2, layout=layout, backend=backend)
        assert out.shape == out_shape and out.dtype == np.float64
        grad = bwd(np.zeros(out_shape), x, 2, layout=layout, backend=backend)
        assert grad.shape == x.shape
    out, ind = pl.max_pool2d(x, 2, layout=layout, return_indices=True, backend=backend)
    assert ind.shape == out_shape and ind.dtype == np.int64
    assert pl.global_max_pool2d(x, layout=layout, backend=backend).shape == (0, 3)
    assert pl.global_max_pool2d_backward(np.zeros((0, 3)), x, layout=layout, backend=backend).shape == x.shape
    assert pl.global_avg_pool2d_backward(np.zeros((0, 3)), x, layout=layout, backend=backend).shape == x.shape


def test_single_cell_planes(backend):
    x = np.array([[[[-2.0]], [[np.nan]], [[-np.inf]]]])  # (1, 3, 1, 1)
    out, ind = pl.max_pool2d(x, 1, return_indices=True, backend=backend)
    assert_identical(out, x)
    assert_identical(ind, np.zeros((1, 3, 1, 1), dtype=np.int64))
    assert_identical(pl.max_pool2d_backward(np.full((1, 3, 1, 1), 5.0), x, 1, backend=backend),
                     np.full((1, 3, 1, 1), 5.0))
    assert_identical(pl.global_max_pool2d(x, backend=backend), x[:, :, 0, 0])


# --------------------------------------------------------------------------------------------------------------
# Import hygiene
# --------------------------------------------------------------------------------------------------------------
def test_import_does_not_pull_in_torch_or_matplotlib():
    code = ("import sys, pooling_lib, pooling_lib.layers, pooling_lib.gradcheck\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib', 'hypothesis', "
            "'pytest', 'IPython'))\n"
            "print(','.join(bad))\n")
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"import pooling_lib imported: {proc.stdout.strip()}"


def test_byte_swapped_float32_stays_float32(backend):
    x = X_INT.astype(">f4")
    out = pl.max_pool2d(x, 2, backend=backend)
    assert out.dtype == np.float32 and out.dtype.isnative
    assert_identical(out, MAX.astype(np.float32))
