"""Every bad input raises the right exception type with a message that names the offending argument."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pooling_lib as pl
from _helpers import compiled_builds, import_torch
from pooling_lib import functional as F

X = np.zeros((1, 1, 4, 4))
G2 = np.zeros((1, 1, 2, 2))  # the output (and grad_out) shape of a 2x2 pooling of X

def _caller(function, backward, windowed):
    """Call ``function`` with good defaults (x = X, kernel_size = 2, a grad_out of the right shape) overridden
    by the keyword arguments given; ``grad_out`` is used only by backward functions."""
    def call(**kw):
        x = kw.pop("x", X)
        grad_out = kw.pop("grad_out", G2 if windowed else np.zeros((1, 1)))
        if windowed:
            kw = {"kernel_size": 2, **kw}
        return function(grad_out, x, **kw) if backward else function(x, **kw)
    return call


EXTREMUM_FUNCS = {name: _caller(getattr(pl, name), name.endswith("backward"), True)
                  for name in ("max_pool2d", "min_pool2d", "max_pool2d_backward", "min_pool2d_backward")}
AVG_FUNCS = {name: _caller(getattr(pl, name), name.endswith("backward"), True)
             for name in ("avg_pool2d", "avg_pool2d_backward")}
WINDOWED_FUNCS = {**EXTREMUM_FUNCS, **AVG_FUNCS}
GLOBAL_FUNCS = {name: _caller(getattr(pl, name), name.endswith("backward"), False)
                for name in ("global_max_pool2d", "global_avg_pool2d", "global_max_pool2d_backward",
                             "global_avg_pool2d_backward")}
ALL_FUNCS = {**WINDOWED_FUNCS, **GLOBAL_FUNCS}


def test_the_good_defaults_work():
    """The tables above are valid calls, so each error below comes from the one bad argument."""
    for name, call in ALL_FUNCS.items():
        call()


# --------------------------------------------------------------------------------------------------------------
# Size arguments
# --------------------------------------------------------------------------------------------------------------
SIZE_CASES = [
    (0, ValueError), (-1, ValueError), ((2, 0), ValueError), ((-2, 2), ValueError),
    (2.0, TypeError), ((2, 2.0), TypeError), (True, TypeError), ((2, False), TypeError), (np.bool_(True), TypeError),
    ((2, 2, 2), ValueError), ("2", TypeError), (np.array([2, 2]), TypeError), ((2, 0.5), TypeError), ((0,), ValueError),
    (1.5, TypeError), (2**31, ValueError), ((2, 2**31), ValueError),  # a C int in the kernels, as in PyTorch
]


@pytest.mark.parametrize("value, exc", SIZE_CASES, ids=repr)
@pytest.mark.parametrize("func", list(WINDOWED_FUNCS))
def test_bad_kernel_size(func, value, exc):
    with pytest.raises(exc, match="kernel_size"):
        WINDOWED_FUNCS[func](kernel_size=value)


@pytest.mark.parametrize("func", list(WINDOWED_FUNCS))
def test_an_empty_tuple_is_a_size_only_for_the_stride(func):
    # PyTorch: an empty stride means the default (kernel_size); an empty kernel_size, padding or dilation is an error
    for name in ("kernel_size", "padding") + (("dilation",) if func in EXTREMUM_FUNCS else ()):
        with pytest.raises(ValueError, match=name):
            WINDOWED_FUNCS[func](**{name: ()})
    assert_same = WINDOWED_FUNCS[func](stride=()).tobytes() == WINDOWED_FUNCS[func](stride=None).tobytes()
    assert assert_same and WINDOWED_FUNCS[func](stride=[]).shape == WINDOWED_FUNCS[func]().shape


@pytest.mark.parametrize("value, exc", SIZE_CASES, ids=repr)
@pytest.mark.parametrize("func", list(WINDOWED_FUNCS))
def test_bad_stride(func, value, exc):
    with pytest.raises(exc, match="stride"):
        WINDOWED_FUNCS[func](stride=value)


@pytest.mark.parametrize("value, exc", SIZE_CASES, ids=repr)
@pytest.mark.parametrize("func", list(EXTREMUM_FUNCS))
def test_bad_dilation(func, value, exc):
    with pytest.raises(exc, match="dilation"):
        EXTREMUM_FUNCS[func](dilation=value)


@pytest.mark.parametrize("value, exc", [
    (-1, ValueError), ((0, -1), ValueError), (1.0, TypeError), (True, TypeError), ((0, 0, 0), ValueError),
    (None, TypeError),
], ids=repr)
@pytest.mark.parametrize("func", list(WINDOWED_FUNCS))
def test_bad_padding(func, value, exc):
    with pytest.raises(exc, match="padding"):
        WINDOWED_FUNCS[func](padding=value)


@pytest.mark.parametrize("kernel_size, padding", [(2, 2), (3, 2), (1, 1), ((3, 3), (0, 2)), ((2, 4), (2, 1)),
                                                  ((4, 1), (1, 1))])
@pytest.mark.parametrize("func", list(WINDOWED_FUNCS))
def test_padding_over_half_the_kernel(func, kernel_size, padding):
    x = np.zeros((1, 1, 6, 6))
    with pytest.raises(ValueError, match="padding"):
        WINDOWED_FUNCS[func](x=x, kernel_size=kernel_size, padding=padding, grad_out=np.zeros((1, 1, 9, 9)))


def test_padding_exactly_half_the_kernel_is_allowed():
    out = pl.max_pool2d(np.zeros((1, 1, 4, 4)), (4, 3), padding=(2, 1), stride=1)
    assert out.shape == (1, 1, 5, 4)


@pytest.mark.parametrize("shape, kwargs", [
    ((1, 1, 2, 2), dict(kernel_size=3)),
    ((1, 1, 4, 2), dict(kernel_size=(2, 3))),
    ((1, 1, 5, 5), dict(kernel_size=3, dilation=3)),  # the dilated window spans 7 cells
    ((1, 1, 1, 1), dict(kernel_size=2, padding=0, stride=1)),
    ((1, 1, 2, 2), dict(kernel_size=5, padding=1)),  # 5 > 2 + 2
    ((1, 2, 2, 6), dict(kernel_size=(2, 3), layout="NHWC")),  # NHWC: W = 2 (read as NCHW, W = 6 would fit)
])
@pytest.mark.parametrize("func", list(EXTREMUM_FUNCS))
def test_window_larger_than_padded_input(func, shape, kwargs):
    with pytest.raises(ValueError, match="kernel_size"):
        EXTREMUM_FUNCS[func](x=np.zeros(shape), grad_out=np.zeros((1, 1, 1, 1)), **kwargs)


@pytest.mark.parametrize("func", list(AVG_FUNCS))
def test_avg_window_larger_than_padded_input(func):
    with pytest.raises(ValueError, match="kernel_size"):
        AVG_FUNCS[func](x=np.zeros((1, 1, 2, 2)), kernel_size=(3, 2), grad_out=np.zeros((1, 1, 1, 1)))


# --------------------------------------------------------------------------------------------------------------
# Flags and options
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [1, 0, "True", None, 1.0, np.array([True])], ids=repr)
@pytest.mark.parametrize("func", list(WINDOWED_FUNCS))
def test_non_bool_ceil_mode(func, value):
    with pytest.raises(TypeError, match="ceil_mode"):
        WINDOWED_FUNCS[func](ceil_mode=value)


@pytest.mark.parametrize("value", [1, 0, "False", None])
@pytest.mark.parametrize("func", list(AVG_FUNCS))
def test_non_bool_count_include_pad(func, value):
    with pytest.raises(TypeError, match="count_include_pad"):
        AVG_FUNCS[func](count_include_pad=value)


def test_numpy_bools_are_bools():
    a = pl.avg_pool2d(np.ones((1, 1, 3, 3)), 2, padding=1, ceil_mode=np.bool_(False), count_include_pad=np.bool_(False))
    np.testing.assert_array_equal(a, np.ones((1, 1, 2, 2)))


@pytest.mark.parametrize("backend", pl.available_backends())
def test_the_largest_sizes_and_divisors_work(backend):
    # the limits are PyTorch's: sizes up to 2**31 - 1, divisor_override over all of int64; the values are exact
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    assert pl.max_pool2d(x, 2, stride=2**31 - 1, backend=backend).tolist() == [[[[5.0]]]]
    assert pl.max_pool2d(x, 1, dilation=2**31 - 1, backend=backend).tobytes() == x.tobytes()
    assert pl.max_pool2d_backward(np.ones((1, 1, 1, 1)), x, 2, stride=2**31 - 1, backend=backend).sum() == 1.0
    for d in (2**63 - 1, -2**63):
        want = np.array([[[[10.0, 18.0], [42.0, 50.0]]]]) / np.float64(d)  # window sums over the divisor
        assert pl.avg_pool2d(x, 2, divisor_override=d, backend=backend).tobytes() == want.tobytes()
        got = pl.avg_pool2d_backward(np.ones((1, 1, 2, 2)), x, 2, divisor_override=d, backend=backend)
        assert got.tobytes() == np.full((1, 1, 4, 4), 1.0 / np.float64(d)).tobytes()


@pytest.mark.parametrize("value, exc", [(0, ValueError), (np.int64(0), ValueError), (2.0, TypeError),
                                        (True, TypeError), ("2", TypeError), ((2, 2), TypeError),
                                        (2**63, ValueError), (-2**63 - 1, ValueError)], ids=repr)
@pytest.mark.parametrize("func", list(AVG_FUNCS))
def test_bad_divisor_override(func, value, exc):
    with pytest.raises(exc, match="divisor_override"):
        AVG_FUNCS[func](divisor_override=value)


@pytest.mark.parametrize("value", ["nchw", "NWHC", "CHW", "", None, 0, ("NCHW",)], ids=repr)
@pytest.mark.parametrize("func", list(ALL_FUNCS))
def test_unknown_layout(func, value):
    with pytest.raises(ValueError, match="layout"):
        ALL_FUNCS[func](layout=value)


@pytest.mark.parametrize("value", ["torch", "Naive", "", None, 1, "numba"], ids=repr)
@pytest.mark.parametrize("func", list(ALL_FUNCS))
def test_unknown_backend(func, value):
    with pytest.raises(ValueError, match="backend"):
        ALL_FUNCS[func](backend=value)


def test_backend_not_built(monkeypatch):
    """On a machine without the compiled extension, asking for it names the backend and the ones available."""
    monkeypatch.delitem(F._TIERS, "cython", raising=False)
    assert pl.available_backends() == ("naive", "numpy")
    with pytest.raises(ValueError, match="backend='cython'.*not available"):
        pl.max_pool2d(X, 2, backend="cython")
    with pytest.raises(ValueError, match="backend='cython'.*not available"):
        pl.global_avg_pool2d(X, backend="cython")
    with pytest.raises(ValueError, match="backend='cython'.*not available"):
        pl.GlobalMaxPool2d(backend="cython").forward(X)
    # "auto" falls back to the NumPy tier
    np.testing.assert_array_equal(pl.max_pool2d(X, 2, backend="auto"), np.zeros((1, 1, 2, 2)))


def test_available_backends():
    backends = pl.available_backends()
    assert isinstance(backends, tuple)
    assert backends[:2] == ("naive", "numpy")
    assert set(backends) <= {"naive", "numpy", "cython"}


# --------------------------------------------------------------------------------------------------------------
# The input array
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 4), (1, 4, 4), (1, 1, 1, 4, 4), ()])
@pytest.mark.parametrize("func", list(ALL_FUNCS))
def test_wrong_ndim(func, shape):
    with pytest.raises(ValueError, match=r"\bx\b.*4-D"):
        ALL_FUNCS[func](x=np.zeros(shape))


@pytest.mark.parametrize("x", [
    np.zeros((1, 1, 4, 4), dtype=np.complex128),
    np.zeros((1, 1, 4, 4), dtype=np.complex64),
    np.zeros((1, 1, 4, 4), dtype=object),
    np.full((1, 1, 4, 4), "a"),
    np.zeros((1, 1, 4, 4), dtype="S1"),
    np.zeros((1, 1, 4, 4), dtype="datetime64[s]"),
    np.zeros((1, 1, 4, 4), dtype="timedelta64[s]"),
], ids=lambda a: str(a.dtype))
@pytest.mark.parametrize("func", list(ALL_FUNCS))
def test_non_real_dtypes(func, x):
    with pytest.raises(TypeError, match=r"\bx\b"):
        ALL_FUNCS[func](x=x)


@pytest.mark.parametrize("x", [None, {"a": 1}, "abc", object()], ids=["None", "dict", "str", "object"])
@pytest.mark.parametrize("func", list(ALL_FUNCS))
def test_not_an_array(func, x):
    with pytest.raises(TypeError, match=r"\bx\b"):
        ALL_FUNCS[func](x=x)


@pytest.mark.parametrize("shape", [(1, 0, 4, 4), (1, 1, 0, 4), (1, 1, 4, 0)])
@pytest.mark.parametrize("func", list(WINDOWED_FUNCS))
def test_empty_plane_or_no_channels(func, shape):
    with pytest.raises(ValueError, match=r"\bx\b"):
        WINDOWED_FUNCS[func](x=np.zeros(shape), kernel_size=1, grad_out=np.zeros(shape))


# --------------------------------------------------------------------------------------------------------------
# grad_out
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1, 2, 3), (1, 1, 3, 3), (1, 2, 2, 2), (2, 1, 2, 2), (1, 1, 4, 4), (1, 1, 2),
                                   (1, 1, 2, 2, 1), (4,)])
@pytest.mark.parametrize("func", [f for f in WINDOWED_FUNCS if f.endswith("backward")])
def test_grad_out_wrong_shape(func, shape):
    with pytest.raises(ValueError, match="grad_out"):
        WINDOWED_FUNCS[func](grad_out=np.zeros(shape))


@pytest.mark.parametrize("func", [f for f in WINDOWED_FUNCS if f.endswith("backward")])
def test_grad_out_given_in_the_other_layout(func):
    x = np.zeros((1, 4, 6, 3))  # NHWC: C = 3, (H, W) = (4, 6); the output is (1, 2, 3, 3) in NHWC
    WINDOWED_FUNCS[func](x=x, grad_out=np.zeros((1, 2, 3, 3)), layout="NHWC")
    with pytest.raises(ValueError, match="grad_out"):
        WINDOWED_FUNCS[func](x=x, grad_out=np.zeros((1, 3, 2, 3)), layout="NHWC")  # NCHW order


@pytest.mark.parametrize("shape", [(1,), (1, 2), (2, 1), (1, 1, 1, 1), (), (1, 1, 1)])
@pytest.mark.parametrize("func", ["global_max_pool2d_backward", "global_avg_pool2d_backward"])
def test_global_grad_out_wrong_shape(func, shape):
    with pytest.raises(ValueError, match="grad_out"):
        GLOBAL_FUNCS[func](grad_out=np.zeros(shape))


@pytest.mark.parametrize("func", ["global_max_pool2d_backward", "global_avg_pool2d_backward"])
def test_global_grad_out_nhwc(func):
    x = np.zeros((2, 3, 4, 5))  # NHWC: N = 2, C = 5
    assert GLOBAL_FUNCS[func](x=x, grad_out=np.zeros((2, 5)), layout="NHWC").shape == x.shape
    with pytest.raises(ValueError, match="grad_out"):
        GLOBAL_FUNCS[func](x=x, grad_out=np.zeros((2, 3)), layout="NHWC")


@pytest.mark.parametrize("func", [f for f in ALL_FUNCS if f.endswith("backward")])
@pytest.mark.parametrize("dtype", [np.complex128, object, "U1"])
def test_grad_out_non_real(func, dtype):
    shape = (1, 1) if func.startswith("global") else (1, 1, 2, 2)
    with pytest.raises(TypeError, match="grad_out"):
        ALL_FUNCS[func](grad_out=np.zeros(shape, dtype=dtype))


# --------------------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [pl.MaxPool2d(2), pl.MinPool2d(2), pl.AvgPool2d(2), pl.GlobalMaxPool2d(),
                                   pl.GlobalAvgPool2d()], ids=lambda layer: type(layer).__name__)
def test_layer_backward_before_forward(layer):
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.zeros((1, 1, 2, 2)))


def test_layer_with_bad_options_raises_like_the_function():
    with pytest.raises(ValueError, match="padding"):
        pl.MaxPool2d(2, padding=2).forward(X)
    with pytest.raises(ValueError, match="layout"):
        pl.GlobalAvgPool2d(layout="CHW").forward(X)
    with pytest.raises(TypeError, match="divisor_override"):
        pl.AvgPool2d(2, divisor_override=1.5).forward(X)
    layer = pl.MaxPool2d(2)
    layer.forward(X)
    with pytest.raises(ValueError, match="grad_out"):
        layer.backward(np.zeros((1, 1, 3, 3)))


# --------------------------------------------------------------------------------------------------------------
# A window with no input cell (dilation + padding): rejected with a ValueError naming dilation, on every tier
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, kw", [
    ((1, 2, 2, 2), dict(kernel_size=2, stride=1, padding=1, dilation=3)),  # taps at -1 (padding) and 2 (past W)
    ((1, 1, 5, 2), dict(kernel_size=(1, 2), stride=1, padding=(0, 1), dilation=(1, 3))),
    ((1, 1, 3, 8), dict(kernel_size=2, stride=(1, 2), padding=(1, 0), dilation=(4, 1))),  # rows: taps -1 and 3
    ((1, 1, 2, 2), dict(kernel_size=2, stride=1, padding=1, dilation=3, ceil_mode=True)),
])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_window_with_no_input_cell(backends, shape, kw, layout):
    """A dilation larger than the plane can step over every input cell of a window.

    PyTorch 2.13 returns -inf for such a window with an index outside the plane, and its backward then writes
    the gradient out of bounds (into the next plane, or past the buffer for the last one). The library refuses
    the geometry instead (params.pool_geometry): a ValueError naming ``dilation``, on every tier, forward and
    backward, max and min - never an IndexError or a result.
    """
    # the window count is positive: the error below is about the empty window, not about a window too large
    assert min(pl.pool2d_output_size(shape[2:], kw["kernel_size"], kw["stride"], kw["padding"], kw["dilation"],
                                     kw.get("ceil_mode", False))) >= 1
    x = np.arange(float(np.prod(shape))).reshape(shape)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    grad_out = np.ones((1, 1, 1, 1))
    for backend in backends:
        for call in (lambda: pl.max_pool2d(x, **kw, layout=layout, return_indices=True, backend=backend),
                     lambda: pl.min_pool2d(x, **kw, layout=layout, backend=backend),
                     lambda: pl.max_pool2d_backward(grad_out, x, **kw, layout=layout, backend=backend),
                     lambda: pl.min_pool2d_backward(grad_out, x, **kw, layout=layout, backend=backend)):
            with pytest.raises(ValueError, match="dilation"):
                call()
    layer = pl.MaxPool2d(**kw, layout=layout)
    with pytest.raises(ValueError, match="dilation"):
        layer(x)


# --------------------------------------------------------------------------------------------------------------
# The compiled tier: bad shapes and odd strides give an error or the right answer, never a crash (subprocess)
# --------------------------------------------------------------------------------------------------------------
CYTHON_SCRIPT = textwrap.dedent("""
    import warnings
    warnings.simplefilter("ignore")
    import numpy as np
    import pooling_lib as pl

    rng = np.random.default_rng(0)
    failures = []

    def expect_error(label, exc, fn):
        try:
            fn()
        except exc:
            return
        except Exception as e:
            failures.append(f"{label}: {type(e).__name__}: {e}")
            return
        failures.append(f"{label}: no error")

    x = rng.integers(-3, 4, (2, 3, 6, 7)).astype(np.float64)
    for dtype in (np.float32, np.float64):
        xd = x.astype(dtype)
        for fwd, bwd, kw in ((pl.max_pool2d, pl.max_pool2d_backward, dict(kernel_size=3, stride=2, padding=1)),
                             (pl.min_pool2d, pl.min_pool2d_backward, dict(kernel_size=2, stride=1, dilation=2)),
                             (pl.avg_pool2d, pl.avg_pool2d_backward, dict(kernel_size=2)),
                             (pl.avg_pool2d, pl.avg_pool2d_backward, dict(kernel_size=3, stride=2, padding=1,
                                                                          ceil_mode=True))):
            out = fwd(xd, **kw, backend="cython")
            oh, ow = out.shape[2:]
            # wrong grad_out shapes, including one with the right size but the wrong shape, and huge ones
            for shape in [(2, 3, oh, ow + 1), (2, 3, oh + 1, ow), (2, 3, ow, oh), (3, 2, oh, ow), (2, 3, oh),
                          (2, 3, oh * ow), (2, 3, oh, ow, 1), (2, 3, 50, 50), (1, 1, 1, 1), (0, 3, oh, ow)]:
                for layout in ("NCHW", "NHWC"):
                    if shape == ((2, 3, oh, ow) if layout == "NCHW" else (2, oh, ow, 3)):
                        continue  # that one is right
                    xl = xd if layout == "NCHW" else np.ascontiguousarray(xd.transpose(0, 2, 3, 1))
                    expect_error(f"{fwd.__name__} {kw} grad_out {shape} {layout}", ValueError,
                                 lambda: bwd(np.zeros(shape, dtype), xl, **kw, layout=layout, backend="cython"))
            g = rng.standard_normal(out.shape).astype(dtype)
            ref_out = fwd(xd, **kw, backend="naive")
            ref_grad = bwd(g, xd, **kw, backend="naive")
            views = {
                "transposed": np.ascontiguousarray(xd.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2),
                "sliced": np.repeat(np.repeat(xd, 2, axis=2), 3, axis=3)[:, :, ::2, ::3],
                "reversed": np.ascontiguousarray(xd[..., ::-1])[..., ::-1],
                "fortran": np.asfortranarray(xd),
                "nhwc_memory": np.ascontiguousarray(xd.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
                "channel_slice": np.stack([xd, xd], axis=2).reshape(2, 6, 6, 7)[:, ::2],
            }
            ro = xd.copy()
            ro.flags.writeable = False
            views["readonly"] = ro
            for name, v in views.items():
                assert np.array_equal(v, xd), name
                try:
                    got = fwd(v, **kw, backend="cython")
                    if got.dtype != ref_out.dtype or got.tobytes() != ref_out.tobytes():
                        failures.append(f"{fwd.__name__} {kw} {name} {dtype.__name__}: wrong forward")
                    gv = np.asfortranarray(g) if name == "fortran" else g[..., ::-1].copy()[..., ::-1]
                    got = bwd(gv, v, **kw, backend="cython")
                    if got.dtype != ref_grad.dtype or np.ascontiguousarray(got).tobytes() != ref_grad.tobytes():
                        failures.append(f"{bwd.__name__} {kw} {name} {dtype.__name__}: wrong backward")
                except Exception as e:
                    failures.append(f"{fwd.__name__} {kw} {name} {dtype.__name__}: {type(e).__name__}: {e}")
    print("FAILURES:" if failures else "OK")
    print("\\n".join(failures))
""")


def test_cython_tier_never_crashes_on_bad_shapes_or_strides():
    if "cython" not in pl.available_backends():
        pytest.skip("the compiled tier is not built on this machine")
    proc = subprocess.run([sys.executable, "-c", CYTHON_SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the subprocess crashed (exit code {proc.returncode}):\n{proc.stderr[-3000:]}"
    assert proc.stdout.startswith("OK"), proc.stdout[-5000:]



def test_nchw_backward_kernel_refuses_short_scratch_rows():
    """The NCHW max backward keeps the winners of two window rows in each thread's ``tap_buf`` row (3x3 stride-2
    padding-1 windows write each gradient row once both are known), so it needs ``tap_buf`` rows of ``2 * out_w``
    values and ``best_buf`` and ``win_buf`` rows of ``out_w``: shorter ones get a ValueError before any thread
    writes."""
    if "cython" not in pl.available_backends():
        pytest.skip("the compiled tier is not built on this machine")
    from pooling_lib import cython_tier
    kernel = cython_tier._kernels.extremum_backward_nchw
    x = np.zeros((1, 2, 5, 5))                  # all ties: each window's winner is its first real cell
    grad_out = np.ones((1, 2, 3, 3))
    geometry = (3, 3, 2, 2, 1, 1, 1, 1)         # kh, kw, sh, sw, ph, pw, dh, dw
    grad_x = np.full_like(x, 7.0)
    kernel(x, grad_out, grad_x, np.empty((1, 3)), np.empty((1, 6)), np.empty((1, 3), dtype=np.int64), *geometry,
           False, 1)
    expected = np.zeros_like(x)
    expected[np.ix_([0], [0, 1], [0, 1, 3], [0, 1, 3])] = 1   # windows from rows (columns) -1, 1, 3: first real cell
    assert np.array_equal(grad_x, expected)
    for best, tap, win in [((1, 2), (1, 6), (1, 3)), ((1, 3), (1, 5), (1, 3)), ((1, 3), (1, 6), (1, 2)),
                           ((0, 3), (1, 6), (1, 3))]:
        grad_x = np.full_like(x, 7.0)
        with pytest.raises(ValueError, match=r"2 \* out_w = 6"):
            kernel(x, grad_out, grad_x, np.empty(best), np.empty(tap), np.empty(win, dtype=np.int64), *geometry,
                   False, 1)
        assert (grad_x == 7.0).all()            # refused before anything was written


def test_nhwc_backward_kernel_refuses_short_scratch_rows():
    """The NHWC max backward works in two halves of each thread's scratch rows (the running values and the next
    tap's), so it needs rows of ``2 * C`` values: shorter ones get a ValueError before any thread writes."""
    if "cython" not in pl.available_backends():
        pytest.skip("the compiled tier is not built on this machine")
    from pooling_lib import cython_tier
    kernel = cython_tier._kernels.extremum_backward_nhwc
    x = np.zeros((1, 4, 4, 3))                  # all ties: each 2x2 window's winner is its first cell
    grad_out = np.ones((1, 2, 2, 3))
    geometry = (2, 2, 2, 2, 0, 0, 1, 1)         # kh, kw, sh, sw, ph, pw, dh, dw
    grad_x = np.full_like(x, 7.0)
    kernel(x, grad_out, grad_x, np.empty((1, 6)), np.empty((1, 6)), *geometry, False, 1)
    expected = np.zeros_like(x)
    expected[:, ::2, ::2, :] = 1
    assert np.array_equal(grad_x, expected)
    for best, tap in [(np.empty((1, 5)), np.empty((1, 6))), (np.empty((1, 6)), np.empty((1, 3))),
                      (np.empty((1, 6)), np.empty((0, 6)))]:
        grad_x = np.full_like(x, 7.0)
        with pytest.raises(ValueError, match=r"2 \* C = 6"):
            kernel(x, grad_out, grad_x, best, tap, *geometry, False, 1)
        assert (grad_x == 7.0).all()            # refused before anything was written


def _bad_forward_arrays():
    """(what is wrong, x, out, third array, error type, message) for the two forward kernels that take ndarrays:
    each case breaks one rule of their C checks (``_check_array``, ``_check_pool_arrays``)."""
    x = np.zeros((1, 2, 6, 6))
    out = np.full((1, 2, 3, 3), 7.0)
    readonly = np.full((1, 2, 3, 3), 7.0)
    readonly.flags.writeable = False
    return [
        ("x not an ndarray", x.tolist(), out, TypeError, r"Argument 'x' has incorrect type"),
        ("x of ints", x.astype(np.int32), out, ValueError, r"x must be float32 or float64, got int32"),
        ("x 3-d", x[0], out, ValueError, r"x must have 4 dimensions, got 3"),
        ("x big-endian", x.astype(">f8"), out, ValueError, r"x has dtype >f8, expected float64 in native byte order"),
        ("x strided", np.zeros((1, 2, 6, 12))[..., ::2], out, ValueError, r"x must be C-contiguous and aligned"),
        ("out float32", x, out.astype(np.float32), ValueError, r"out has dtype float32, expected float64"),
        ("out read-only", x, readonly, ValueError, r"out must be writeable"),
        ("out of another C", x, np.full((1, 3, 3, 3), 7.0), ValueError, r"out must have the N and C of x, 1 and 2, "
                                                                        r"got 1 and 3"),
        ("out too tall", x, np.full((1, 2, 4, 3), 7.0), ValueError, r"out's last window starts outside x: 4 x 3 "),
        ("out too wide", x, np.full((1, 2, 3, 4), 7.0), ValueError, r"out's last window starts outside x: 3 x 4 "),
    ]


@pytest.mark.parametrize("case", range(10))
def test_forward_kernels_check_their_arrays(case):
    """The NCHW max and average forward kernels take plain ndarrays (a typed memoryview cost about 35 µs more to
    enter, on every call) and check them in C before any thread runs: each bad array gets its ValueError or
    TypeError, and ``out`` is left as it was. Checked in every build, with 2x2 stride-2 windows on a 6 x 6 plane."""
    if "cython" not in pl.available_backends():
        pytest.skip("the compiled tier is not built on this machine")
    what, x, out, error, message = _bad_forward_arrays()[case]
    no_indices = np.empty((0, 0, 0, 0), dtype=np.int64)
    divisors = np.full((3, 3), 4.0)
    for kernels in compiled_builds().values():
        calls = [lambda: kernels.extremum_nchw(x, out, no_indices, 2, 2, 2, 2, 0, 0, 1, 1, False, False, 1),
                 lambda: kernels.avg_nchw(x, out, divisors, 2, 2, 2, 2, 0, 0, 1)]
        for call in calls:
            with pytest.raises(error, match=message):
                call()
            assert (out == 7.0).all(), f"{what}: out was written"   # refused before any thread ran


def test_forward_kernels_check_indices_and_divisors():
    """The max forward checks ``indices`` when it tracks the winners (int64, 4-d, writeable, the shape of ``out``);
    the average forward checks ``divisors`` (2-d, the dtype of ``x``, ``out_h x out_w``); both refuse a size, stride
    or dilation below 1 and a negative padding (a stride of 0 would divide by zero in C). The good arrays pass."""
    if "cython" not in pl.available_backends():
        pytest.skip("the compiled tier is not built on this machine")
    x = np.arange(72.0).reshape(1, 2, 6, 6)
    out = np.empty((1, 2, 3, 3))
    for kernels in compiled_builds().values():
        indices = np.empty((1, 2, 3, 3), dtype=np.int64)
        kernels.extremum_nchw(x, out, indices, 2, 2, 2, 2, 0, 0, 1, 1, False, True, 1)
        expected, expected_indices = pl.max_pool2d(x, 2, return_indices=True, backend="numpy")
        assert np.array_equal(out, expected) and np.array_equal(indices, expected_indices)
        for bad, message in [(np.empty((1, 2, 3, 3), dtype=np.int32), r"indices has dtype int32, expected int64"),
                             (np.empty((1, 2, 3, 2), dtype=np.int64), r"indices must have the shape of out"),
                             (np.empty((0, 0, 0, 0), dtype=np.int64), r"indices must have the shape of out")]:
            with pytest.raises(ValueError, match=message):
                kernels.extremum_nchw(x, out, bad, 2, 2, 2, 2, 0, 0, 1, 1, False, True, 1)
        kernels.avg_nchw(x, out, np.full((3, 3), 4.0), 2, 2, 2, 2, 0, 0, 1)
        assert np.array_equal(out, pl.avg_pool2d(x, 2, backend="numpy"))
        for bad, message in [(np.full((3, 3), 4.0, dtype=np.float32), r"divisors has dtype float32, expected float64"),
                             (np.full((3, 2), 4.0), r"divisors must have out's 3 x 3 windows, got \(3, 2\)"),
                             (np.full(9, 4.0), r"divisors must have 2 dimensions, got 1")]:
            with pytest.raises(ValueError, match=message):
                kernels.avg_nchw(x, out, bad, 2, 2, 2, 2, 0, 0, 1)
        for geometry in [(0, 2, 2, 2, 0, 0), (2, 2, 0, 2, 0, 0), (2, 2, 2, -1, 0, 0), (2, 2, 2, 2, -1, 0)]:
            with pytest.raises(ValueError, match=r"kernel sizes, strides and dilations must be >= 1 and paddings >= 0"):
                kernels.avg_nchw(x, out, np.full((3, 3), 4.0), *geometry, 1)
            with pytest.raises(ValueError, match=r"kernel sizes, strides and dilations must be >= 1 and paddings >= 0"):
                kernels.extremum_nchw(x, out, indices, *geometry, 1, 1, False, True, 1)
        with pytest.raises(ValueError, match=r"dilation 1 x 0"):
            kernels.extremum_nchw(x, out, indices, 2, 2, 2, 2, 0, 0, 1, 0, False, True, 1)


# The NCHW kernels of max pooling with indices, of the backward from indices and of the average backward take
# ndarrays too, checked in C; the kernels that still take typed memoryviews (which check each array's dtype,
# dimensions and memory order) check how the arrays' shapes fit together. Each kernel gets its arguments by name from
# these good ones (x: 1 x 2 x 6 x 6, 2x2 windows at stride 2).
def _good_kernel_args():
    x = np.arange(72.0).reshape(1, 2, 6, 6)
    indices = np.ascontiguousarray(pl.max_pool2d(x, 2, return_indices=True, backend="numpy")[1])
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))      # the same input in NHWC memory: (N, H, W, C)
    return {
        "extremum_index_nchw": dict(x=x, out=np.full((1, 2, 3, 3), 7.0), indices=np.full((1, 2, 3, 3), 7),
                                    best_buf=np.empty((1, 3)), tap_buf=np.empty((1, 3)),
                                    geometry=(2, 2, 2, 2, 0, 0, 1, 1), minimum=False, num_threads=1),
        "max_backward_indices": dict(grad_out=np.ones((1, 2, 3, 3)), indices=indices, grad_x=np.full_like(x, 7.0),
                                     stage=np.empty((0, 0)), bad=np.zeros(1, dtype=np.int64), nhwc=False,
                                     blocks_2x2=True, rows_3x3=False, num_threads=1),
        "avg_backward_nchw": dict(grad_out=np.ones((1, 2, 3, 3)), grad_x=np.full_like(x, 7.0),
                                  divisors=np.full((3, 3), 4.0), share_buf=np.empty((1, 9)), stage=np.empty((0, 0)),
                                  geometry=(2, 2, 2, 2, 0, 0), num_threads=1),
        # the kernels that still take typed memoryviews check how their arrays' shapes fit together
        "extremum_backward_nchw": dict(x=x, grad_out=np.ones((1, 2, 3, 3)), grad_x=np.full_like(x, 7.0),
                                       best_buf=np.empty((1, 3)), tap_buf=np.empty((1, 6)),
                                       win_buf=np.empty((1, 3), dtype=np.int64), geometry=(2, 2, 2, 2, 0, 0, 1, 1),
                                       minimum=False, num_threads=1),
        "extremum_nhwc": dict(x=xh, out=np.full((1, 3, 3, 2), 7.0), indices=np.full((1, 3, 3, 2), 7),
                              geometry=(2, 2, 2, 2, 0, 0, 1, 1), minimum=False, track=True, num_threads=1),
        "extremum_backward_nhwc": dict(x=xh, grad_out=np.ones((1, 3, 3, 2)), grad_x=np.full_like(xh, 7.0),
                                       best_buf=np.empty((1, 4)), tap_buf=np.empty((1, 4)),
                                       geometry=(2, 2, 2, 2, 0, 0, 1, 1), minimum=False, num_threads=1),
        "avg_nhwc": dict(x=xh, out=np.full((1, 3, 3, 2), 7.0), divisors=np.full((3, 3), 4.0),
                         geometry=(2, 2, 2, 2, 0, 0), num_threads=1),
        "avg_backward_nhwc": dict(grad_out=np.ones((1, 3, 3, 2)), grad_x=np.full_like(xh, 7.0),
                                  divisors=np.full((3, 3), 4.0), share_buf=np.empty((1, 2)),
                                  geometry=(2, 2, 2, 2, 0, 0), num_threads=1),
    }


def _call_kernel(kernels, name, args):
    values = []
    for value in args.values():
        values.extend(value if isinstance(value, tuple) else [value])
    return getattr(kernels, name)(*values)


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


# (kernel, argument, bad value, message): each breaks one rule of the kernel's C checks
BAD_KERNEL_ARGS = [
    ("extremum_index_nchw", "x", np.zeros((1, 2, 6, 6), dtype=np.float32), r"out has dtype float64, expected float32"),
    ("extremum_index_nchw", "out", np.full((1, 2, 3, 4), 7.0), r"out's last window starts outside x: 3 x 4 "),
    ("extremum_index_nchw", "indices", np.full((1, 2, 3, 3), 7, dtype=np.int32), r"indices has dtype int32"),
    ("extremum_index_nchw", "indices", np.full((1, 2, 3, 2), 7), r"indices must have the shape of out"),
    ("extremum_index_nchw", "indices", _read_only(np.full((1, 2, 3, 3), 7)), r"indices must be writeable"),
    ("extremum_index_nchw", "best_buf", np.empty((1, 2)), r"best_buf needs a row of at least 3 values for each of "
                                                          r"the 1 threads, got \(1, 2\)"),
    ("extremum_index_nchw", "best_buf", np.empty((1, 3), dtype=np.float32), r"best_buf has dtype float32"),
    ("extremum_index_nchw", "tap_buf", np.empty((0, 3)), r"tap_buf needs a row of at least 3 values"),
    ("extremum_index_nchw", "tap_buf", _read_only(np.empty((1, 3))), r"tap_buf must be writeable"),
    ("extremum_index_nchw", "num_threads", 0, r"num_threads must be >= 1, got 0"),
    ("extremum_index_nchw", "num_threads", 2, r"best_buf needs a row of at least 3 values for each of the 2 threads"),
    ("extremum_index_nchw", "geometry", (2, 2, 0, 2, 0, 0, 1, 1), r"strides and dilations must be >= 1"),
    ("extremum_index_nchw", "geometry", (2, 2, 2, 2, 0, 0, 2**29, 1), r"a window's last tap is 3221225473 cells "
                                                                       r"after its first: this kernel needs less "
                                                                       r"than 2\*\*31"),
    ("extremum_index_nchw", "geometry", (2, 2, 2, 2, 1, 0, 7, 1), r"every window must cover a cell of x: window 0 "
                                                                   r"along H has every tap in the padding"),
    ("extremum_index_nchw", "geometry", (2, 2, 2, 2, 0, 1, 1, 7), r"window 0 along W has every tap in the padding"),
    ("max_backward_indices", "grad_x", np.full((1, 2, 6, 6), 7, dtype=np.int32), r"grad_x must be float32 or "
                                                                                  r"float64, got int32"),
    ("max_backward_indices", "grad_x", _read_only(np.full((1, 2, 6, 6), 7.0)), r"grad_x must be writeable"),
    ("max_backward_indices", "grad_x", np.full((2, 6, 6), 7.0), r"grad_x must have 4 dimensions, got 3"),
    ("max_backward_indices", "grad_x", np.full((1, 3, 6, 6), 7.0), r"grad_out must have the N and C of grad_x, 1 "
                                                                    r"and 3, got 1 and 2"),
    ("max_backward_indices", "nhwc", True, r"grad_out must have the N and C of grad_x \(NHWC\), 1 and 6, got 1 and 3"),
    ("max_backward_indices", "grad_out", np.ones((1, 2, 3, 3), dtype=np.float32), r"grad_out has dtype float32, "
                                                                                   r"expected float64"),
    ("max_backward_indices", "grad_out", np.ones((1, 2, 3, 6))[..., ::2], r"grad_out must be C-contiguous"),
    ("max_backward_indices", "indices", np.zeros((1, 2, 3, 3), dtype=np.int32), r"indices has dtype int32"),
    ("max_backward_indices", "indices", np.zeros((1, 2, 3, 2), dtype=np.int64), r"indices must have the shape of "
                                                                                 r"grad_out, \(1, 2, 3, 3\)"),
    ("max_backward_indices", "bad", np.zeros(0, dtype=np.int64), r"bad needs a count for each of the 1 threads"),
    ("max_backward_indices", "bad", np.zeros(1, dtype=np.int32), r"bad has dtype int32"),
    ("max_backward_indices", "stage", np.empty((1, 35)), r"stage \(when it has rows\) needs a row of at least 36 "),
    ("max_backward_indices", "stage", np.empty((0, 0), dtype=np.float32), r"stage has dtype float32"),
    ("max_backward_indices", "num_threads", 0, r"num_threads must be >= 1, got 0"),
    ("avg_backward_nchw", "grad_x", _read_only(np.full((1, 2, 6, 6), 7.0)), r"grad_x must be writeable"),
    ("avg_backward_nchw", "grad_x", np.full((1, 2, 6, 6), 7.0, dtype=np.float32), r"grad_out has dtype float64, "
                                                                                   r"expected float32"),
    ("avg_backward_nchw", "grad_out", np.ones((1, 2, 4, 3)), r"grad_out's last window starts outside grad_x: 4 x 3 "),
    ("avg_backward_nchw", "divisors", np.full((3, 2), 4.0), r"divisors must have grad_out's 3 x 3 windows, got "
                                                            r"\(3, 2\)"),
    ("avg_backward_nchw", "share_buf", np.empty((1, 8)), r"share_buf needs a row of at least 9 values"),
    ("avg_backward_nchw", "share_buf", np.empty((1, 9), dtype=np.float32), r"share_buf has dtype float32"),
    # 3x3 windows at stride 2 need two layer rows of W values besides the shares and the spread: 3 + 6 * 3
    ("avg_backward_nchw", "*", dict(share_buf=np.empty((1, 20)), geometry=(3, 3, 2, 2, 1, 1)),
     r"share_buf needs a row of at least 21 values"),
    ("avg_backward_nchw", "stage", np.empty((1, 35)), r"stage \(when it has rows\) needs a row of at least 36 "),
    ("avg_backward_nchw", "geometry", (2, 2, 2, 2, -1, 0), r"strides and dilations must be >= 1 and paddings >= 0"),
    ("avg_backward_nchw", "num_threads", 0, r"num_threads must be >= 1, got 0"),
    ("extremum_backward_nchw", "grad_x", np.full((1, 2, 6, 5), 7.0), r"grad_x must have the shape of x, "
                                                                     r"\(1, 2, 6, 6\), got \(1, 2, 6, 5\)"),
    ("extremum_backward_nchw", "grad_out", np.ones((1, 3, 3, 3)), r"grad_out must have the N and C of x, 1 and 2, "
                                                                  r"got 1 and 3"),
    ("extremum_backward_nchw", "grad_out", np.ones((1, 2, 4, 3)), r"grad_out's last window starts outside x: 4 x 3"),
    ("extremum_backward_nchw", "num_threads", 0, r"num_threads must be >= 1, got 0"),
    ("extremum_nhwc", "out", np.full((1, 3, 3, 3), 7.0), r"out must have the N and C of x, 1 and 2, got 1 and 3"),
    ("extremum_nhwc", "out", np.full((1, 3, 4, 2), 7.0), r"out's last window starts outside x: 3 x 4"),
    ("extremum_nhwc", "indices", np.full((1, 3, 2, 2), 7), r"indices must have the shape of out, \(1, 3, 3, 2\), got "
                                                           r"\(1, 3, 2, 2\)"),
    ("extremum_nhwc", "geometry", (2, 2, 2, 0, 0, 0, 1, 1), r"strides and dilations must be >= 1"),
    ("extremum_nhwc", "num_threads", 0, r"num_threads must be >= 1, got 0"),
    ("extremum_backward_nhwc", "grad_x", np.full((1, 6, 4, 2), 7.0), r"grad_x must have the shape of x, "
                                                                     r"\(1, 6, 6, 2\), got \(1, 6, 4, 2\)"),
    ("extremum_backward_nhwc", "grad_out", np.ones((2, 3, 3, 2)), r"grad_out must have the N and C of x, 1 and 2, "
                                                                  r"got 2 and 2"),
    ("extremum_backward_nhwc", "*", dict(x=np.zeros((1, 6, 6, 2), dtype=np.float32),
                                         grad_out=np.ones((1, 3, 3, 2), dtype=np.float32),
                                         grad_x=np.full((1, 6, 6, 2), 7, dtype=np.float32),
                                         best_buf=np.empty((1, 4), dtype=np.float32),
                                         tap_buf=np.empty((1, 4), dtype=np.float32),
                                         geometry=(4096, 4096, 2, 2, 0, 0, 1, 1)),
     r"a float32 window must have fewer than 2\*\*24 taps .* got 4096 x 4096"),
    ("extremum_backward_nhwc", "num_threads", 0, r"num_threads must be >= 1, got 0"),
    ("avg_nhwc", "divisors", np.full((3, 2), 4.0), r"divisors must have out's 3 x 3 windows, got \(3, 2\)"),
    ("avg_nhwc", "out", np.full((2, 3, 3, 2), 7.0), r"out must have the N and C of x, 1 and 2, got 2 and 2"),
    ("avg_nhwc", "num_threads", 0, r"num_threads must be >= 1, got 0"),
    ("avg_backward_nhwc", "divisors", np.full((2, 3), 4.0), r"divisors must have grad_out's 3 x 3 windows"),
    ("avg_backward_nhwc", "share_buf", np.empty((1, 1)), r"share_buf needs a row of at least 2 values for each of "
                                                         r"the 1 threads, got \(1, 1\)"),
    ("avg_backward_nhwc", "num_threads", 2, r"share_buf needs a row of at least 2 values for each of the 2 threads"),
    ("avg_backward_nhwc", "grad_out", np.ones((1, 3, 4, 2)), r"grad_out's last window starts outside grad_x: 3 x 4"),
    ("avg_backward_nhwc", "num_threads", 0, r"num_threads must be >= 1, got 0"),
]


@pytest.mark.parametrize("kernel, argument, bad, message", BAD_KERNEL_ARGS,
                         ids=[f"{k}-{a if a != '*' else 'several'}-{i}"
                              for i, (k, a, _, _) in enumerate(BAD_KERNEL_ARGS)])
def test_other_kernels_check_their_arguments(kernel, argument, bad, message):
    """Each bad argument gets a ValueError that names it, in both builds, and the array the kernel writes is left as
    it was: refused before any thread ran. (``"*"``: several arguments at once, here a float32 call.)"""
    if "cython" not in pl.available_backends():
        pytest.skip("the compiled tier is not built on this machine")
    for kernels in compiled_builds().values():
        args = _good_kernel_args()[kernel]
        args.update(bad if argument == "*" else {argument: bad})
        written = args["grad_x"] if "grad_x" in args else args["out"]
        before = written.copy()
        with pytest.raises(ValueError, match=message):
            _call_kernel(kernels, kernel, args)
        assert np.array_equal(written, before), "the kernel wrote before it refused"


def test_other_kernels_run_on_the_good_arguments():
    """The good arguments of the table above give the NumPy tier's results in both builds (so each refusal comes
    from its one bad argument), also with a streamed gradient (``stage`` with a row per thread) and two threads."""
    if "cython" not in pl.available_backends():
        pytest.skip("the compiled tier is not built on this machine")
    x = np.arange(72.0).reshape(1, 2, 6, 6)
    expected_out, expected_indices = pl.max_pool2d(x, 2, return_indices=True, backend="numpy")
    max_grad = pl.max_pool2d_backward(np.ones((1, 2, 3, 3)), x, 2, indices=expected_indices, backend="numpy")
    avg_out = pl.avg_pool2d(x, 2, backend="numpy")
    avg_grad = pl.avg_pool2d_backward(np.ones((1, 2, 3, 3)), x, 2, backend="numpy")
    nhwc = (0, 2, 3, 1)
    for kernels in compiled_builds().values():
        for threads in (1, 2):
            for stage in (np.empty((0, 0)), np.empty((threads, 36))):
                args = _good_kernel_args()
                for a in args.values():
                    a["num_threads"] = threads
                    for buf in ("best_buf", "tap_buf", "win_buf", "share_buf"):
                        if buf in a:
                            a[buf] = np.empty((threads, a[buf].shape[1]), dtype=a[buf].dtype)
                    if "stage" in a:
                        a["stage"] = stage
                args["max_backward_indices"]["bad"] = np.zeros(threads, dtype=np.int64)
                for name, a in args.items():
                    _call_kernel(kernels, name, a)
                found = args["extremum_index_nchw"]
                assert np.array_equal(found["out"], expected_out)
                assert np.array_equal(found["indices"], expected_indices)
                assert np.array_equal(args["max_backward_indices"]["grad_x"], max_grad)
                assert not args["max_backward_indices"]["bad"].any()
                assert np.array_equal(args["avg_backward_nchw"]["grad_x"], avg_grad)
                assert np.array_equal(args["extremum_backward_nchw"]["grad_x"], max_grad)
                assert np.array_equal(args["extremum_nhwc"]["out"], expected_out.transpose(nhwc))
                assert np.array_equal(args["extremum_nhwc"]["indices"], expected_indices.transpose(nhwc))
                assert np.array_equal(args["extremum_backward_nhwc"]["grad_x"], max_grad.transpose(nhwc))
                assert np.array_equal(args["avg_nhwc"]["out"], avg_out.transpose(nhwc))
                assert np.array_equal(args["avg_backward_nhwc"]["grad_x"], avg_grad.transpose(nhwc))


# --------------------------------------------------------------------------------------------------------------
# The backward from indices
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["naive", "numpy", "cython"])
@pytest.mark.parametrize("bad", [-1, 64, 2**63 - 1])
def test_index_outside_the_plane_is_a_value_error(backend, bad):
    if backend not in pl.available_backends():
        pytest.fail(f"backend {backend} is not built")
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    out, indices = pl.max_pool2d(x, 2, return_indices=True)
    indices[1, 2, 3, 3] = bad
    with pytest.raises(ValueError, match=r"indices must be flat positions h \* W \+ w in their plane, in \[0, H \* W\) "
                                         r"= \[0, 64\); found 1 outside it"):
        pl.max_pool2d_backward(out, x, 2, indices=indices, backend=backend)


def test_indices_of_the_wrong_shape_or_type_are_refused():
    x = np.zeros((1, 2, 4, 4))
    out, indices = pl.max_pool2d(x, 2, return_indices=True)
    with pytest.raises(ValueError, match=r"indices must have the shape of the forward output, \(1, 2, 2, 2\) "
                                         r"\(NCHW\), got \(1, 2, 2, 1\)"):
        pl.max_pool2d_backward(out, x, 2, indices=indices[..., :1])
    with pytest.raises(TypeError, match="indices must hold integers .* got dtype float64"):
        pl.max_pool2d_backward(out, x, 2, indices=indices.astype(float))
    with pytest.raises(TypeError, match="indices must be a NumPy array of integers .* got list"):
        pl.min_pool2d_backward(out, x, 2, indices=indices.tolist())
    nhwc = np.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match=r"\(1, 2, 2, 2\) \(NHWC\), got \(1, 2, 2, 1\)"):
        pl.max_pool2d_backward(np.zeros((1, 2, 2, 2)), nhwc, 2, layout="NHWC", indices=np.zeros((1, 2, 2, 1), int))


@pytest.mark.parametrize("backend", pl.available_backends())
@pytest.mark.parametrize("kw", [dict(kernel_size=(3,)), dict(kernel_size=3, stride=(2,), padding=(1,)),
                                dict(kernel_size=3, stride=()), dict(kernel_size=(3,), stride=[], dilation=(2,)),
                                dict(kernel_size=(2, 3), stride=(1,), padding=(1,))], ids=repr)
def test_one_tuples_and_an_empty_stride_are_pytorchs(backend, kw):
    torch = import_torch()
    x = np.random.default_rng(3).standard_normal((2, 3, 9, 8))
    out, indices = pl.max_pool2d(x, **kw, return_indices=True, backend=backend)
    t_out, t_indices = torch.nn.functional.max_pool2d(torch.from_numpy(x), **kw, return_indices=True)
    assert out.tobytes() == t_out.numpy().tobytes() and indices.tobytes() == t_indices.numpy().tobytes()
    if "dilation" not in kw:
        assert pl.avg_pool2d(x, **kw, backend=backend).tobytes() == \
            torch.nn.functional.avg_pool2d(torch.from_numpy(x), **kw).numpy().tobytes()


def _unaligned(a):
    """A C-contiguous copy of ``a`` whose data starts one byte into its buffer: not aligned."""
    b = np.ndarray(a.shape, a.dtype, buffer=bytearray(a.nbytes + 1), offset=1)
    b[...] = a
    assert b.flags.c_contiguous and not b.flags.aligned
    return b


@pytest.mark.parametrize("backend", pl.available_backends())
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unaligned_arrays_give_the_same_bits(backend, layout, dtype):
    # NumPy makes such arrays from a buffer at an odd offset; the compiled kernels need aligned ones (a copy)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x
    kw = dict(kernel_size=3, stride=2, padding=1, layout=layout, backend=backend)
    for forward, backward in ((pl.max_pool2d, pl.max_pool2d_backward), (pl.min_pool2d, pl.min_pool2d_backward)):
        out, indices = forward(x, **kw, return_indices=True)
        got, got_indices = forward(_unaligned(x), **kw, return_indices=True)
        assert got.tobytes() == out.tobytes() and got_indices.tobytes() == indices.tobytes()
        g = rng.standard_normal(out.shape).astype(dtype)
        want = backward(g, x, **kw, indices=indices)
        assert backward(_unaligned(g), _unaligned(x), **kw, indices=_unaligned(indices)).tobytes() == want.tobytes()
        assert backward(_unaligned(g), _unaligned(x), **kw).tobytes() == want.tobytes()
    out = pl.avg_pool2d(x, **kw)
    assert pl.avg_pool2d(_unaligned(x), **kw).tobytes() == out.tobytes()
    g = rng.standard_normal(out.shape).astype(dtype)
    assert pl.avg_pool2d_backward(_unaligned(g), x, **kw).tobytes() == pl.avg_pool2d_backward(g, x, **kw).tobytes()
    gkw = dict(layout=layout, backend=backend)
    g2 = rng.standard_normal((2, 3)).astype(dtype)
    for forward, backward in ((pl.global_max_pool2d, pl.global_max_pool2d_backward),
                              (pl.global_avg_pool2d, pl.global_avg_pool2d_backward)):
        assert forward(_unaligned(x), **gkw).tobytes() == forward(x, **gkw).tobytes()
        assert backward(_unaligned(g2), _unaligned(x), **gkw).tobytes() == backward(g2, x, **gkw).tobytes()


def test_set_num_threads_checks_its_argument():
    if "cython" not in pl.available_backends():
        pytest.skip("the compiled tier is not built on this machine")
    from pooling_lib import cython_tier

    for bad, exc in (("2", TypeError), (2.0, TypeError), (True, TypeError), (None, TypeError), (0, ValueError),
                     (-1, ValueError), (cython_tier.MAX_THREADS + 1, ValueError), (2**31, ValueError)):
        with pytest.raises(exc, match="n must be a positive int"):
            cython_tier.set_num_threads(bad)
    previous = cython_tier.set_num_threads(np.int64(2))
    try:
        assert cython_tier.set_num_threads(cython_tier.MAX_THREADS) == 2
    finally:
        cython_tier.set_num_threads(previous)


def test_pool2d_output_size_refuses_half_a_pair():
    assert pl.pool2d_output_size(5, (2, 2)) == 2 and pl.pool2d_output_size((5, 7), (2, 3)) == (2, 2)
    for name, kw in (("kernel_size", dict(kernel_size=(2, 3))), ("stride", dict(kernel_size=2, stride=(1, 2))),
                     ("padding", dict(kernel_size=2, padding=(0, 1))),
                     ("dilation", dict(kernel_size=2, dilation=(1, 2)))):
        with pytest.raises(ValueError, match=f"{name} has two different values.*input_size is one length"):
            pl.pool2d_output_size(5, **kw)


@pytest.mark.parametrize("func", list(GLOBAL_FUNCS))
@pytest.mark.parametrize("shape", [(1, 1, 0, 3), (1, 1, 3, 0)])
def test_global_pooling_of_an_empty_plane_names_x(func, shape):
    with pytest.raises(ValueError, match=r"x must have a plane of at least 1 x 1 for global pooling"):
        GLOBAL_FUNCS[func](x=np.zeros(shape))


def test_a_ragged_list_names_x():
    with pytest.raises(ValueError, match="x must be an array, or nested lists of numbers with one shape"):
        pl.max_pool2d([[[[1.0, 2.0], [3.0]]]], 1)


def test_global_max_indices_are_checked():
    x = np.zeros((2, 3, 4, 4))
    for bad, exc, rule in ((np.zeros((2, 3, 1, 1), np.int64), ValueError, "indices must have the shape"),
                           (np.zeros((3, 2), np.int64), ValueError, "indices must have the shape"),
                           ([[0, 0, 0], [0, 0, 0]], TypeError, "indices must be a NumPy array"),
                           (np.full((2, 3), 16, np.int64), ValueError, "indices"),
                           (np.zeros((2, 3)), TypeError, "indices")):
        with pytest.raises(exc, match=rule):
            pl.global_max_pool2d_backward(np.ones((2, 3)), x, indices=bad)
