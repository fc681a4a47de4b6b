"""Argument normalisation and validation, done once, before any tier runs.

Every public function in :mod:`pooling_lib.functional` calls into this module first. It turns the
user's arguments (ints or pairs, ``stride=None``, a layout name) into one :class:`PoolGeometry`,
and raises a :class:`ValueError` or :class:`TypeError` that names the argument and the rule it broke.
The compiled kernels run with bounds checks off, so nothing reaches them that this module has not checked.
"""
from __future__ import annotations

import functools
import numbers
import operator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LAYOUTS",
    "PoolGeometry",
    "pool2d_output_size",
    "as_pair",
    "check_input",
    "check_layout",
    "check_grad_out",
    "check_divisor_override",
    "to_nchw",
    "from_nchw",
    "pool_geometry",
    "avg_divisors",
    "first_real_tap",
]

LAYOUTS = ("NCHW", "NHWC")
_FLOAT32 = np.dtype(np.float32)  # native byte order
_FLOAT64 = np.dtype(np.float64)


def _as_int(value, name):
    """Return ``value`` as a Python int, or raise TypeError naming ``name``.

    Accepts Python and NumPy integers; rejects bools, floats (even 2.0) and everything else.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int or a tuple of one or two ints, got {value!r} of type "
                        f"{type(value).__name__}")
    return operator.index(value)


def as_pair(value, name):
    """Normalise an int, a pair of ints or (as PyTorch allows) a 1-tuple to a ``(height, width)`` tuple of ints.

    >>> as_pair(3, "kernel_size")
    (3, 3)
    >>> as_pair((2, 3), "stride")
    (2, 3)
    >>> as_pair((2,), "padding")
    (2, 2)
    """
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            v = _as_int(value[0], name)
            return (v, v)
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a tuple of one or two ints, got a sequence of length "
                             f"{len(value)}: {value!r}")
        return (_as_int(value[0], name), _as_int(value[1], name))
    if isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be an int or a tuple of one or two ints, got an array; pass a tuple instead")
    v = _as_int(value, name)
    return (v, v)


INT_MAX = 2**31 - 1  # sizes are C ints in the compiled kernels, as in PyTorch, which refuses larger ones too
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _stride_pair(stride, kernel):
    """The stride as a pair: ``None`` or an empty tuple or list (PyTorch's default) means the kernel size."""
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        return kernel
    return _positive_pair(stride, "stride")


def _positive_pair(value, name):
    pair = as_pair(value, name)
    if min(pair) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    if max(pair) > INT_MAX:
        raise ValueError(f"{name} must be at most 2**31 - 1 (a C int, as in PyTorch), got {value!r}")
    return pair


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def pool2d_output_size(input_size, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Number of window positions along one or two axes, exactly as PyTorch counts them.

    .. math:: L_\\text{out} = \\left\\lfloor \\frac{L + 2p - d(k-1) - 1}{s} \\right\\rfloor + 1

    With ``ceil_mode=True`` the division rounds up, but a last window that would *start* in the
    right-hand padding is dropped (it would contain no input cell).

    Parameters
    ----------
    input_size : int or (int, int)
        ``L`` (or ``(H, W)``), the length of the unpadded input along the axis.
    kernel_size, stride, padding, dilation : int or (int, int)
        Window size ``k``, step ``s`` (``None`` means ``kernel_size``), zero-padding ``p`` on each side,
        and spacing ``d`` between the window's taps.
    ceil_mode : bool
        Round the division up instead of down.

    Returns
    -------
    int or (int, int)
        An int when ``input_size`` is an int, else a pair. The result may be zero or negative when the
        window does not fit; :func:`pool_geometry` turns that into a ValueError.

    Raises
    ------
    TypeError, ValueError
        For non-integer or non-positive ``kernel_size``, ``stride``, ``dilation``, negative ``padding``
        or ``input_size``, and for a pair of two different values with a single ``input_size``.

    Examples
    --------
    >>> pool2d_output_size(14, 3, 2)
    6
    >>> pool2d_output_size(5, 2, 2, ceil_mode=True)
    3
    >>> pool2d_output_size((56, 56), 3, 2, padding=1)
    (28, 28)
    """
    scalar = not isinstance(input_size, (tuple, list))
    sizes = as_pair(input_size, "input_size")
    if min(sizes) < 0:
        raise ValueError(f"input_size must be non-negative, got {input_size!r}")
    k = _positive_pair(kernel_size, "kernel_size")
    s = _stride_pair(stride, k)
    p = as_pair(padding, "padding")
    if min(p) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    d = _positive_pair(dilation, "dilation")
    ceil_mode = _check_bool(ceil_mode, "ceil_mode")
    if scalar:  # one length: a pair of two different values would be half ignored
        for name, pair in (("kernel_size", k), ("stride", s), ("padding", p), ("dilation", d)):
            if pair[0] != pair[1]:
                raise ValueError(f"{name} has two different values, {pair}, but input_size is one length, "
                                 f"{input_size!r}: pass (H, W) as input_size")
    out = tuple(_output_length(*args, ceil_mode) for args in zip(sizes, k, s, p, d))
    return out[0] if scalar else out


def _output_length(length, k, s, p, d, ceil_mode):
    span = length + 2 * p - d * (k - 1) - 1  # room left for the window's first tap to move
    if ceil_mode:
        out = -(-span // s) + 1  # ceiling division
        # PyTorch: the last window must start inside the input or the left padding, never in the right padding.
        if (out - 1) * s >= length + p:
            out -= 1
    else:
        out = span // s + 1
    return out


@dataclass(frozen=True)
class PoolGeometry:
    """Everything a tier needs to know about one pooling call, already checked.

    Sizes are for the NCHW view of the input: ``N`` images, ``C`` channels, ``H`` x ``W`` plane,
    ``out_h`` x ``out_w`` windows of ``kernel_h`` x ``kernel_w`` taps.
    """

    N: int
    C: int
    H: int
    W: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dilation_h: int
    dilation_w: int
    out_h: int
    out_w: int
    ceil_mode: bool

    @property
    def out_shape(self):
        """Shape of the pooled output in NCHW order."""
        return (self.N, self.C, self.out_h, self.out_w)


def check_layout(layout):
    """Return ``layout`` if it is "NCHW" or "NHWC", else raise ValueError."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return layout


def check_input(x, name="x", ndim=4):
    """Return ``x`` as a float32 or float64 ndarray, or raise.

    float32 and float64 keep their dtype (a byte-swapped one becomes native); every other real dtype (integers,
    bool, float16, longdouble) is converted to float64. Complex, object, string and other non-real dtypes are a TypeError.
    """
    if not (type(x) is np.ndarray and (x.dtype is _FLOAT32 or x.dtype is _FLOAT64)):  # else nothing to convert
        x = _as_float_array(x, name)
    if x.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got ndim={x.ndim} with shape {x.shape}")
    return x


def _as_float_array(x, name):
    """``x`` as a float32 or float64 ndarray (see :func:`check_input`), or raise TypeError."""
    if not isinstance(x, np.ndarray):
        if isinstance(x, (list, tuple, numbers.Number)):
            try:
                x = np.asarray(x)
            except ValueError as exc:  # a ragged nested list: NumPy's message does not name the argument
                raise ValueError(f"{name} must be an array, or nested lists of numbers with one shape: {exc}") \
                    from None
        else:
            raise TypeError(f"{name} must be a NumPy array, got {type(x).__name__}")
    kind = x.dtype.kind
    if kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers (float32, float64, an integer or bool dtype), got dtype {x.dtype}")
    if kind == "f" and x.dtype.itemsize in (4, 8):
        x = x.astype(np.float32 if x.dtype.itemsize == 4 else np.float64, copy=False)  # byte-swapped -> native
    else:
        x = x.astype(np.float64)
    return x


def to_nchw(x, layout):
    """A view of ``x`` with axes in NCHW order (no copy)."""
    return x.transpose(0, 3, 1, 2) if layout == "NHWC" else x


def from_nchw(y, layout):
    """A view of an NCHW-ordered array in the caller's ``layout`` (no copy)."""
    return y.transpose(0, 2, 3, 1) if layout == "NHWC" else y


def check_divisor_override(divisor_override):
    if divisor_override is None:
        return None
    value = _as_int(divisor_override, "divisor_override")
    if value == 0:
        raise ValueError("divisor_override must be a non-zero int or None, got 0")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"divisor_override must fit in 64 bits (-2**63 to 2**63 - 1, as in PyTorch), got {value!r}")
    return value


def _exact_ints(value):
    """True for a Python int or a pair (tuple) of Python ints; False for bools, NumPy ints, floats and lists."""
    kind = type(value)
    return kind is int or (kind is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int)


def pool_geometry(x_nchw, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, layout="NCHW"):
    """Validate the pooling arguments against an NCHW view of the input and return a :class:`PoolGeometry`.

    Rules, each a ValueError or TypeError naming the argument:
    ``kernel_size``, ``stride`` and ``dilation`` are positive ints or pairs; ``padding`` is a
    non-negative int or pair of at most half the kernel size (``padding <= kernel_size // 2``, as PyTorch);
    the dilated window must fit the padded input (at least one output position) and every window must cover at
    least one input cell (a dilation larger than the input can step over all of them); ``H`` and ``W`` and ``C``
    are at least 1 (``N`` may be 0).

    A geometry that passed is kept (``_kept_geometry``) and returned again for the same shape, exact-int arguments
    and layout.
    """
    args = (x_nchw.shape, kernel_size, stride, padding, dilation, ceil_mode, layout)
    if (type(ceil_mode) is bool and _exact_ints(kernel_size) and _exact_ints(padding) and _exact_ints(dilation)
            and (stride is None or _exact_ints(stride))):
        return _kept_geometry(*args)
    return _check_geometry(*args)


def _check_geometry(shape, kernel_size, stride, padding, dilation, ceil_mode, layout):
    """:func:`pool_geometry`'s checks, for an input of NCHW ``shape``."""
    k = _positive_pair(kernel_size, "kernel_size")
    s = _stride_pair(stride, k)
    p = as_pair(padding, "padding")
    if min(p) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(
            f"padding must be at most half of kernel_size (padding <= kernel_size // 2), "
            f"got padding={padding!r} with kernel_size={kernel_size!r}"
        )
    d = _positive_pair(dilation, "dilation")
    ceil_mode = _check_bool(ceil_mode, "ceil_mode")
    N, C, H, W = shape
    if C < 1 or H < 1 or W < 1:
        shape = shape if layout == "NCHW" else (N, H, W, C)
        raise ValueError(f"x must have at least one channel, row and column, got shape {shape} ({layout})")
    out_h = _output_length(H, k[0], s[0], p[0], d[0], ceil_mode)
    out_w = _output_length(W, k[1], s[1], p[1], d[1], ceil_mode)
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"kernel_size={kernel_size!r} with dilation={dilation!r} is larger than the padded input "
            f"(H={H}, W={W}, padding={padding!r}, stride={stride!r}, ceil_mode={ceil_mode}): the output size "
            f"would be ({out_h}, {out_w}); it must be at least 1 along each axis"
        )
    for axis, length, kk, ss, pp, dd, out in (("H", H, k[0], s[0], p[0], d[0], out_h), ("W", W, k[1], s[1], p[1], d[1], out_w)):
        empty = _first_empty_window(length, kk, ss, pp, dd, out)
        if empty is not None:
            raise ValueError(
                f"dilation={dilation!r} is too large for the input ({axis}={length}) with kernel_size={kernel_size!r}, "
                f"padding={padding!r}: window {empty} along {axis} has every tap in the padding; "
                f"every window must cover at least one input cell"
            )
    return PoolGeometry(N, C, H, W, *k, *s, *p, *d, out_h, out_w, ceil_mode)


# A network calls each pooling layer with the same arguments and input shape batch after batch, and the checks in
# _check_geometry are dozens of Python steps. When the work before a call has pushed Python's own code and data out
# of the caches, as a layer's work does, they took 0.11 ms on the README's machine and a kept geometry 0.03 ms;
# the benchmark input's whole 2x2 max forward takes 1.2 ms on two threads there. So pool_geometry keeps the last
# geometries that passed (_kept_geometry), but only for exact Python ints (and a bool ceil_mode): True == 1 and
# 2.0 == 2 hash alike, and those arguments must still raise their TypeError.
_kept_geometry = functools.lru_cache(maxsize=256)(_check_geometry)


def _first_empty_window(length, k, s, p, d, out):
    """Index of the first window (along one axis) whose taps all fall in the padding, or None.

    This can only happen when the dilation exceeds the input length: the taps step over every real cell.
    PyTorch returns -inf with an index outside the plane for such a window; pooling_lib refuses it instead.
    """
    if d <= length:
        return None
    start = np.arange(out) * s - p
    first_real = first_real_tap(start, d)
    empty = np.flatnonzero((first_real >= length) | (first_real > start + d * (k - 1)))
    return int(empty[0]) if empty.size else None


def first_real_tap(start, dilation):
    """Coordinate of a window's first tap that is not in the top/left padding (PyTorch's initial winner).

    ``start`` is the window's first tap, ``i * stride - padding``; an int or an array of them.
    """
    behind = np.maximum(-start, 0)
    return start + -(-behind // dilation) * dilation


def check_grad_out(grad_out, expected_nchw_shape, dtype, layout):
    """Return ``grad_out`` as an NCHW view of dtype ``dtype``; its shape must equal the forward output's.

    ``expected_nchw_shape`` is the forward output's shape in NCHW order; ``grad_out`` is given in ``layout``.
    """
    grad_out = check_input(grad_out, "grad_out", ndim=len(expected_nchw_shape))
    _check_output_shape(grad_out, "grad_out", expected_nchw_shape, layout)
    return to_nchw(grad_out.astype(dtype, copy=False), layout)


def _check_output_shape(a, name, expected_nchw_shape, layout):
    """Raise ValueError unless ``a`` (given in ``layout``) has the forward output's shape, ``expected_nchw_shape`` in
    NCHW order."""
    expected = tuple(expected_nchw_shape)
    if layout == "NHWC" and len(expected) == 4:
        expected = (expected[0], expected[2], expected[3], expected[1])
    if a.shape != expected:
        raise ValueError(f"{name} must have the shape of the forward output, {expected} ({layout}), got {a.shape}")


def check_indices(indices, expected_nchw_shape, layout):
    """Return ``indices`` as an int64 NCHW view; it must be an integer array of the forward output's shape (given
    in ``layout``), as ``max_pool2d(..., return_indices=True)`` returns it. Whether each index lies in its plane
    is checked by the tier, as it reads them (see :func:`index_error`)."""
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be a NumPy array of integers (what return_indices=True returns), "
                        f"got {type(indices).__name__}")
    if indices.dtype.kind not in "iu":
        raise TypeError(f"indices must hold integers (return_indices=True gives int64), got dtype {indices.dtype}")
    _check_output_shape(indices, "indices", expected_nchw_shape, layout)
    return to_nchw(indices.astype(np.int64, copy=False), layout)


def index_error(count, g):
    """The ValueError for ``count`` indices outside their plane (every tier raises this one)."""
    return ValueError(
        f"indices must be flat positions h * W + w in their plane, in [0, H * W) = [0, {g.H * g.W}); "
        f"found {count} outside it"
    )


def avg_divisors(g, count_include_pad=True, divisor_override=None):
    """The ``(out_h, out_w)`` int64 array of divisors PyTorch's average pooling uses for each window.

    ``divisor_override`` when given; else, with ``count_include_pad``, the window's extent clipped to the padded
    input (a ``ceil_mode`` window stops at the padding's edge); else the number of real cells it covers.
    """
    if divisor_override is not None:
        return np.full((g.out_h, g.out_w), divisor_override, dtype=np.int64)

    def sizes(out, stride, pad, kernel, length):
        start = np.arange(out) * stride - pad
        end = np.minimum(start + kernel, length + pad)
        if count_include_pad:
            return end - start
        return np.minimum(end, length) - np.maximum(start, 0)

    rows = sizes(g.out_h, g.stride_h, g.pad_h, g.kernel_h, g.H)
    cols = sizes(g.out_w, g.stride_w, g.pad_w, g.kernel_w, g.W)
    return rows[:, None] * cols[None, :]
