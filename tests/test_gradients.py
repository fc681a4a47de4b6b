"""Numerical gradient checks of every backward on every backend, and tests of the checking tools themselves."""
from functools import partial

import numpy as np
import pytest

import pooling_lib as pl
from _helpers import distinct_values
from pooling_lib import GradcheckError, gradcheck, numerical_gradient, rel_error

TOL = 1e-7  # float64, h = 1e-5: a correct piecewise-linear backward lands near 1e-10


def check(forward, backward, x, **kwargs):
    """gradcheck with the pooling options bound, and an explicit upstream gradient."""
    out = forward(x, **kwargs)
    grad_out = np.random.default_rng(1).standard_normal(out.shape)
    error = gradcheck(partial(forward, **kwargs), partial(backward, **kwargs), x, grad_out=grad_out, tol=TOL)
    assert 0 <= error <= TOL
    return error


MAX_CONFIGS = [
    dict(kernel_size=2),
    dict(kernel_size=2, stride=1),  # overlapping windows: cells win several windows
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0)),
    dict(kernel_size=2, stride=1, padding=1, dilation=2),
    dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, layout="NHWC"),
    dict(kernel_size=(2, 3), stride=3, dilation=(2, 1)),
]


@pytest.mark.parametrize("kwargs", MAX_CONFIGS, ids=str)
@pytest.mark.parametrize("op", ["max", "min"])
def test_gradcheck_extremum_pool(backend, op, kwargs):
    forward, backward = {"max": (pl.max_pool2d, pl.max_pool2d_backward),
                         "min": (pl.min_pool2d, pl.min_pool2d_backward)}[op]
    shape = (2, 5, 6, 2) if kwargs.get("layout") == "NHWC" else (2, 2, 5, 6)
    x = distinct_values(shape, seed=7)
    check(forward, backward, x, backend=backend, **kwargs)


def test_gradcheck_negative_input_with_padding(backend):
    # All values negative: zero padding would win the border windows and swallow their gradient.
    x = -np.abs(distinct_values((1, 2, 4, 4), seed=2)) - 1
    check(pl.max_pool2d, pl.max_pool2d_backward, x, kernel_size=3, stride=1, padding=1, backend=backend)
    check(pl.min_pool2d, pl.min_pool2d_backward, -x, kernel_size=3, stride=1, padding=1, backend=backend)


AVG_CONFIGS = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
    dict(kernel_size=3, stride=2, padding=1, divisor_override=5),
    dict(kernel_size=3, stride=2, padding=1, divisor_override=-2, count_include_pad=False),
    dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), ceil_mode=True),
    dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), ceil_mode=True, count_include_pad=False),
    dict(kernel_size=2, stride=(1, 2), padding=1, ceil_mode=True, divisor_override=3),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, layout="NHWC"),
]


@pytest.mark.parametrize("kwargs", AVG_CONFIGS, ids=str)
def test_gradcheck_avg_pool(backend, kwargs):
    shape = (2, 5, 6, 2) if kwargs.get("layout") == "NHWC" else (2, 2, 5, 6)
    x = np.random.default_rng(5).standard_normal(shape)  # average pooling is linear: ties do not matter
    check(pl.avg_pool2d, pl.avg_pool2d_backward, x, backend=backend, **kwargs)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_gradcheck_global_pooling(layout, backend):
    x = distinct_values((2, 3, 4, 5), seed=4)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    check(pl.global_max_pool2d, pl.global_max_pool2d_backward, x, layout=layout, backend=backend)
    check(pl.global_avg_pool2d, pl.global_avg_pool2d_backward, x, layout=layout, backend=backend)
    x = -np.abs(x) - 1  # an all-negative plane
    check(pl.global_max_pool2d, pl.global_max_pool2d_backward, x, layout=layout, backend=backend)


def test_gradcheck_layers(backend):
    x = distinct_values((1, 2, 5, 5), seed=9)
    for layer in (pl.MaxPool2d(3, 2, 1, backend=backend), pl.MinPool2d(2, 1, backend=backend),
                  pl.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False, backend=backend),
                  pl.GlobalMaxPool2d(backend=backend), pl.GlobalAvgPool2d(backend=backend)):
        def forward(v, layer=layer):
            return layer.forward(v)

        def backward(g, v, layer=layer):
            layer.forward(v)
            return layer.backward(g)

        assert gradcheck(forward, backward, x, tol=TOL) <= TOL


# --------------------------------------------------------------------------------------------------------------
# The tools themselves
# --------------------------------------------------------------------------------------------------------------
def test_numerical_gradient_of_known_functions():
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    g = np.array([[1.0, 2.0], [-1.0, 0.5]])
    # f(x) = x**3 elementwise: dL/dx = 3 x**2 * g
    num = numerical_gradient(lambda v: v ** 3, x, g)
    np.testing.assert_allclose(num, 3 * x ** 2 * g, rtol=1e-8)
    # a non-elementwise f: f(x) = [x00 * x11, sum(x)], L = 2 f0 - f1
    f = lambda v: np.array([v[0, 0] * v[1, 1], v.sum()])  # noqa: E731
    num = numerical_gradient(f, x, np.array([2.0, -1.0]))
    np.testing.assert_allclose(num, [[2 * 3.0 - 1, -1], [-1, 2 * 1.0 - 1]], rtol=1e-8)
    assert num.dtype == np.float64 and num.shape == x.shape


def test_numerical_gradient_leaves_x_alone_and_uses_float64():
    x = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    x0 = x.copy()
    seen = []

    def f(v):
        seen.append(v.dtype)
        return v * 2

    num = numerical_gradient(f, x, np.ones(3))
    np.testing.assert_array_equal(x, x0)
    assert set(seen) == {np.dtype(np.float64)}
    np.testing.assert_allclose(num, [2, 2, 2], rtol=1e-9)


def test_numerical_gradient_step_size():
    # For f = x**2 the central difference is exact: (x+h)^2 - (x-h)^2 = 4xh, whatever h
    x = np.array([3.0])
    for h in (1e-2, 1e-4, 1e-6):
        np.testing.assert_allclose(numerical_gradient(lambda v: v ** 2, x, np.ones(1), h=h), [6.0], rtol=1e-7)
    # For f = x**3 the error is h**2: with a large h it shows
    big = numerical_gradient(lambda v: v ** 3, np.array([1.0]), np.ones(1), h=0.1)
    np.testing.assert_allclose(big, [3.0 + 0.1 ** 2], rtol=1e-12)


def test_rel_error_values():
    assert rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert rel_error(np.array([1.0]), np.array([1.1])) == pytest.approx(0.1 / 2.1)
    # the largest entry counts
    assert rel_error(np.array([1.0, 10.0]), np.array([1.0, 12.0])) == pytest.approx(2 / 22)
    # both zero: 0/max(1e-8, 0) = 0; tiny values use the 1e-8 floor
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_error(np.array([0.0]), np.array([1e-9])) == pytest.approx(1e-9 / 1e-8)
    # opposite signs: the error is 1
    assert rel_error(np.array([2.0]), np.array([-2.0])) == pytest.approx(1.0)
    assert rel_error(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0
    assert isinstance(rel_error(np.ones(2), np.ones(2)), float)
    assert rel_error([1.0, 2.0], [1.0, 4.0]) == pytest.approx(2 / 6)  # lists are accepted


def test_rel_error_needs_one_shape():
    with pytest.raises(ValueError, match="shape"):
        rel_error(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        rel_error(np.zeros((2, 3)), np.zeros((3, 2)))


def test_gradcheck_passes_a_correct_backward_and_returns_the_error():
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 4))
    err = gradcheck(partial(pl.avg_pool2d, kernel_size=2), partial(pl.avg_pool2d_backward, kernel_size=2), x)
    assert isinstance(err, float) and err < 1e-8


def _assignment_backward(grad_out, x, **kw):
    """A max-pooling backward with '=' instead of '+=': a cell that wins several windows keeps only the last."""
    _, ind = pl.max_pool2d(x, **kw, return_indices=True)
    grad = np.zeros_like(x)
    N, C, H, W = x.shape
    for n in range(N):
        for c in range(C):
            grad[n, c].ravel()[ind[n, c].ravel()] = grad_out[n, c].ravel()
    return grad


def _zero_padding_backward(grad_out, x, kernel_size, stride, padding):
    """The seed's mistake: pad with zeros, so on a negative input the padding wins and the gradient is lost."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    grad = np.zeros_like(xp)
    out_h, out_w = grad_out.shape[2:]
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i in range(out_h):
                for j in range(out_w):
                    win = xp[n, c, i * stride:i * stride + kernel_size, j * stride:j * stride + kernel_size]
                    a, b = np.unravel_index(np.argmax(win), win.shape)
                    grad[n, c, i * stride + a, j * stride + b] += grad_out[n, c, i, j]
    return grad[:, :, padding:-padding, padding:-padding]


def test_gradcheck_rejects_wrong_backwards():
    x = distinct_values((1, 1, 3, 3), seed=0)
    x[0, 0, 1, 1] = 100.0  # the centre wins all four 2x2 windows of stride 1
    kw = dict(kernel_size=2, stride=1)
    forward = partial(pl.max_pool2d, **kw)
    with pytest.raises(GradcheckError, match="relative error"):
        gradcheck(forward, partial(_assignment_backward, **kw), x)
    with pytest.raises(GradcheckError):
        gradcheck(forward, lambda g, v: 2 * pl.max_pool2d_backward(g, v, **kw), x)
    with pytest.raises(GradcheckError):  # a gradient of the right shape but routed to the wrong cell
        gradcheck(forward, lambda g, v: pl.min_pool2d_backward(g, v, **kw), x)
    assert issubclass(GradcheckError, AssertionError)

    x = -np.abs(distinct_values((1, 1, 4, 4), seed=1)) - 1
    kw = dict(kernel_size=3, stride=1, padding=1)
    with pytest.raises(GradcheckError):
        gradcheck(partial(pl.max_pool2d, **kw), partial(_zero_padding_backward, **kw), x)
    # the library's own backward passes the same check
    assert gradcheck(partial(pl.max_pool2d, **kw), partial(pl.max_pool2d_backward, **kw), x) <= TOL


def test_gradcheck_draws_grad_out_from_seed():
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 4))
    seen = []

    def backward(g, v):
        seen.append(np.array(g))
        return pl.avg_pool2d_backward(g, v, 2)

    forward = partial(pl.avg_pool2d, kernel_size=2)
    gradcheck(forward, backward, x, seed=3)
    gradcheck(forward, backward, x, seed=3)
    gradcheck(forward, backward, x, seed=4)
    np.testing.assert_array_equal(seen[0], seen[1])
    assert not np.array_equal(seen[0], seen[2])
    np.testing.assert_array_equal(seen[0], np.random.default_rng(3).standard_normal((1, 1, 2, 2)))


def test_gradcheck_tolerance_is_respected():
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 4))
    forward = partial(pl.avg_pool2d, kernel_size=2)
    slightly_off = lambda g, v: pl.avg_pool2d_backward(g, v, 2) * (1 + 1e-4)  # noqa: E731
    with pytest.raises(GradcheckError):
        gradcheck(forward, slightly_off, x)
    assert gradcheck(forward, slightly_off, x, tol=1e-3) < 1e-3
