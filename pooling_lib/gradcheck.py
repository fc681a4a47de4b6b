"""Numerical gradient checking: central differences and the relative error between two gradients."""
import numpy as np

__all__ = ["numerical_gradient", "rel_error", "gradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """Raised by :func:`gradcheck` when the analytic and numerical gradients disagree."""


def numerical_gradient(f, x, grad_out, h=1e-5):
    """Central-difference estimate of the gradient of ``L(x) = sum(f(x) * grad_out)`` with respect to ``x``.

    ``dL/dx[i] ~ (L(x + h e_i) - L(x - h e_i)) / (2h)``, one entry at a time, computed in float64.

    Parameters
    ----------
    f : callable, ndarray -> ndarray
    x : ndarray, the point at which to differentiate (not modified)
    grad_out : ndarray, the shape of ``f(x)``: the upstream gradient
    h : float, the step

    Returns
    -------
    ndarray of float64, the shape of ``x``

    Examples
    --------
    >>> import numpy as np
    >>> g = numerical_gradient(lambda v: v ** 2, np.array([1.0, -2.0]), np.ones(2))
    >>> np.round(g, 6)
    array([ 2., -4.])
    """
    x = np.array(x, dtype=np.float64)  # a private float64 copy we may perturb
    grad_out = np.asarray(grad_out, dtype=np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        plus = np.sum(f(x) * grad_out)
        x[i] = old - h
        minus = np.sum(f(x) * grad_out)
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def rel_error(a, b):
    """Largest elementwise relative error ``|a - b| / max(1e-8, |a| + |b|)`` (CS231n's measure).

    >>> rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    0.0
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error needs arrays of one shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def gradcheck(forward, backward, x, grad_out=None, h=1e-5, tol=1e-7, seed=0):
    """Compare ``backward(grad_out, x)`` with :func:`numerical_gradient` of ``forward`` at ``x``.

    Parameters
    ----------
    forward : callable, ``forward(x) -> out``
    backward : callable, ``backward(grad_out, x) -> grad_x`` (the signature of ``max_pool2d_backward`` & co.;
        bind the pooling options with ``functools.partial``)
    x : ndarray of float64. For max/min pooling, use values with no near-ties (closer than ``h``).
    grad_out : ndarray or None; None draws one from a standard normal with ``seed``.
    h, tol : float, the finite-difference step and the largest relative error accepted

    Returns
    -------
    float, the relative error (at most ``tol``)

    Raises
    ------
    GradcheckError
        When the relative error exceeds ``tol``; the message names the worst entry.

    Examples
    --------
    >>> import numpy as np
    >>> from functools import partial
    >>> from pooling_lib import avg_pool2d, avg_pool2d_backward
    >>> x = np.random.default_rng(0).normal(size=(1, 1, 4, 4))
    >>> gradcheck(partial(avg_pool2d, kernel_size=2), partial(avg_pool2d_backward, kernel_size=2), x) < 1e-7
    True
    """
    x = np.asarray(x, dtype=np.float64)
    if grad_out is None:
        grad_out = np.random.default_rng(seed).standard_normal(np.shape(forward(x)))
    analytic = np.asarray(backward(grad_out, x), dtype=np.float64)
    numeric = numerical_gradient(forward, x, grad_out, h)
    error = rel_error(analytic, numeric)
    if not error <= tol:
        worst = np.unravel_index(np.argmax(np.abs(analytic - numeric)), x.shape)
        raise GradcheckError(
            f"gradient check failed: relative error {error:.3g} > tol {tol:.3g}; worst at index {worst}: "
            f"analytic {analytic[worst]:.6g}, numerical {numeric[worst]:.6g}"
        )
    return error
