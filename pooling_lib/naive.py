"""The naive tier: plain Python loops, written to be read next to the book.

Every function takes an NCHW array (any strides) and a checked :class:`~pooling_lib.params.PoolGeometry`.
They do no validation of their own (:mod:`pooling_lib.functional` has done it), except that the backward from
indices checks that each index lies in its plane as it reads it. This tier is the reference
the other two are tested against, so it follows PyTorch's CPU kernels line for line:

* a window's taps are visited in row-major order, skipping the ones that fall in the padding;
* the running maximum starts at ``-inf`` with the index of the window's first real cell, and a tap replaces it
  when it is larger *or NaN* (so the first maximum wins a tie, and a NaN always wins);
* sums are accumulated in the input's dtype, in the same order, and divided once.
"""
import numpy as np

from .params import index_error

__all__ = ["max_pool_forward", "max_pool_backward", "max_pool_backward_indices", "avg_pool_forward",
           "avg_pool_backward"]


def _taps(start, kernel, dilation, length):
    """Input coordinates of a window's taps along one axis, skipping the padding."""
    return [start + t * dilation for t in range(kernel) if 0 <= start + t * dilation < length]


def max_pool_forward(x, g, minimum=False, return_indices=True):
    """Max (or, with ``minimum=True``, min) pooling. Returns ``(out, indices)``, both of shape ``g.out_shape``.

    ``indices[n, c, i, j]`` is the flat position ``h * W + w`` of the winner in the unpadded ``H x W`` plane.
    """
    out = np.empty(g.out_shape, dtype=x.dtype)
    indices = np.empty(g.out_shape, dtype=np.int64)
    worst = np.inf if minimum else -np.inf
    for n in range(g.N):
        for c in range(g.C):
            plane = x[n, c]
            for i in range(g.out_h):
                rows = _taps(i * g.stride_h - g.pad_h, g.kernel_h, g.dilation_h, g.H)
                for j in range(g.out_w):
                    cols = _taps(j * g.stride_w - g.pad_w, g.kernel_w, g.dilation_w, g.W)
                    best = x.dtype.type(worst)
                    winner_index = rows[0] * g.W + cols[0]
                    for h in rows:
                        for w in cols:
                            value = plane[h, w]
                            better = value < best if minimum else value > best
                            if better or np.isnan(value):
                                best = value
                                winner_index = h * g.W + w
                    out[n, c, i, j] = best
                    indices[n, c, i, j] = winner_index
    return out, (indices if return_indices else None)


def max_pool_backward(grad_out, x, g, minimum=False):
    """Gradient of max (min) pooling: each window's ``grad_out`` goes to its one winner, and adds up."""
    _, indices = max_pool_forward(x, g, minimum)
    return max_pool_backward_indices(grad_out, indices, x, g)


def max_pool_backward_indices(grad_out, indices, x, g):
    """Each window's ``grad_out`` added to the cell its index names (``x`` gives only the dtype)."""
    grad_x = np.zeros((g.N, g.C, g.H, g.W), dtype=x.dtype)
    outside = 0
    for n in range(g.N):
        for c in range(g.C):
            for i in range(g.out_h):
                for j in range(g.out_w):
                    index = int(indices[n, c, i, j])
                    if not 0 <= index < g.H * g.W:
                        outside += 1
                        continue
                    h, w = divmod(index, g.W)
                    grad_x[n, c, h, w] += grad_out[n, c, i, j]  # +=: one cell may win several windows
    if outside:
        raise index_error(outside, g)
    return grad_x


def _avg_window(i, stride, pad, kernel, length):
    """Clipped bounds ``[start, end)`` of window ``i`` along one axis, and its size counting padding."""
    start = i * stride - pad
    end = min(start + kernel, length + pad)  # a ceil_mode window may reach past the padding: cut it there
    size_with_pad = end - start
    return max(start, 0), min(end, length), size_with_pad


def _avg_divisor(g, i, j, count_include_pad, divisor_override):
    h0, h1, size_h = _avg_window(i, g.stride_h, g.pad_h, g.kernel_h, g.H)
    w0, w1, size_w = _avg_window(j, g.stride_w, g.pad_w, g.kernel_w, g.W)
    if divisor_override is not None:
        divisor = divisor_override
    elif count_include_pad:
        divisor = size_h * size_w
    else:
        divisor = (h1 - h0) * (w1 - w0)
    return (h0, h1, w0, w1), divisor


def avg_pool_forward(x, g, count_include_pad=True, divisor_override=None):
    """Average pooling: the sum of a window's real cells divided by PyTorch's divisor."""
    out = np.empty(g.out_shape, dtype=x.dtype)
    zero = x.dtype.type(0)
    for n in range(g.N):
        for c in range(g.C):
            plane = x[n, c]
            for i in range(g.out_h):
                for j in range(g.out_w):
                    (h0, h1, w0, w1), divisor = _avg_divisor(g, i, j, count_include_pad, divisor_override)
                    total = zero
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            total += plane[h, w]
                    out[n, c, i, j] = total / x.dtype.type(divisor)
    return out


def avg_pool_backward(grad_out, g, dtype, count_include_pad=True, divisor_override=None):
    """Gradient of average pooling: each window spreads ``grad_out / divisor`` over its real cells."""
    grad_x = np.zeros((g.N, g.C, g.H, g.W), dtype=dtype)
    for n in range(g.N):
        for c in range(g.C):
            for i in range(g.out_h):
                for j in range(g.out_w):
                    (h0, h1, w0, w1), divisor = _avg_divisor(g, i, j, count_include_pad, divisor_override)
                    share = grad_out[n, c, i, j] / dtype.type(divisor)
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            grad_x[n, c, h, w] += share
    return grad_x
