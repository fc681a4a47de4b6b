"""The NumPy tier: vectorised, with no Python loop over N, C, H or W.

The only Python loops run over the taps of a window. For tap ``(a, b)`` the strided
view ``xp[:, :, a*d_h : ... : s_h, b*d_w : ... : s_w]`` holds that tap of *every* window at once, so a
running maximum (or sum) over the taps pools the whole batch. The update rule is the naive tier's, applied
elementwise, so max/min pooling (forward and backward) and average pooling (forward and backward) are
bit-identical to it. The average-pooling backward adds a cell's shares tap by tap rather than window by window,
so it visits the taps in reverse: a cell then receives its shares in row-major window order, as in the naive tier
and PyTorch, and sums of three or more shares round the same way.
"""
import dataclasses

import numpy as np

from .params import avg_divisors, first_real_tap, index_error

__all__ = ["max_pool_forward", "max_pool_backward", "max_pool_backward_indices", "avg_pool_forward",
           "avg_pool_backward"]


def _pad_amounts(g):
    """Padding ``(top, bottom, left, right)`` so that every window, ceil_mode ones included, lies inside."""
    need_h = (g.out_h - 1) * g.stride_h + g.dilation_h * (g.kernel_h - 1) + 1
    need_w = (g.out_w - 1) * g.stride_w + g.dilation_w * (g.kernel_w - 1) + 1
    bottom = max(need_h - g.H - g.pad_h, 0)
    right = max(need_w - g.W - g.pad_w, 0)
    return g.pad_h, bottom, g.pad_w, right


def _padded(x, g, fill):
    top, bottom, left, right = _pad_amounts(g)
    if top == bottom == left == right == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=fill)


def _tap_views(xp, g, dilation=True):
    """Yield ``(a, b, view)`` for every tap of the window, in row-major order."""
    dh = g.dilation_h if dilation else 1
    dw = g.dilation_w if dilation else 1
    h_stop = (g.out_h - 1) * g.stride_h + 1
    w_stop = (g.out_w - 1) * g.stride_w + 1
    for a in range(g.kernel_h):
        for b in range(g.kernel_w):
            yield a, b, xp[:, :, a * dh : a * dh + h_stop : g.stride_h, b * dw : b * dw + w_stop : g.stride_w]


def max_pool_forward(x, g, minimum=False, return_indices=True):
    """Max (min) pooling as a running maximum over the window's taps. Returns ``(out, indices or None)``.

    Without indices, a plain running ``np.maximum`` (``np.minimum``) over the taps gives the same bits as the
    update rule wherever a window holds no NaN and its best value is not a zero (+0.0 and -0.0 are the only
    equal values with different bits, and which of them wins depends on the order); the planes where either
    happens are recomputed with the rule.
    """
    if return_indices or g.N * g.C == 0:
        return _max_pool_rule(x, g, minimum, return_indices)
    out = _running_extremum(x, g, minimum)
    suspect = np.isnan(out)
    zero = out == 0
    if zero.any():
        # a zero result is exact when its plane holds no -0.0 at all (then every zero is +0.0)
        negative_zero = np.signbit(x) & (x == 0)
        planes = negative_zero.reshape(g.N * g.C, g.H * g.W).any(axis=1)
        suspect.reshape(g.N * g.C, g.out_h * g.out_w)[planes & zero.reshape(g.N * g.C, -1).any(axis=1)] = True
    if suspect.any():
        planes = np.flatnonzero(suspect.reshape(g.N * g.C, -1).any(axis=1))
        sub = x.reshape(g.N * g.C, 1, g.H, g.W)[planes]  # (copies when x is not contiguous)
        exact, _ = _max_pool_rule(sub, dataclasses.replace(g, N=len(planes), C=1), minimum, False)
        out.reshape(g.N * g.C, g.out_h, g.out_w)[planes] = exact[:, 0]
    return out, None


def _running_extremum(x, g, minimum):
    """``np.maximum`` (``np.minimum``) over every tap's strided view, each clipped to the windows whose tap is
    a real cell, so no padded copy is made. Exact except at NaN and at zero results (see above).

    The extremum of a window is the extremum of its rows' extrema, so for windows of 3x3 taps or more it is
    cheaper in two passes: along W (``kernel_w`` taps, for every input row), then along H (``kernel_h`` taps of
    that): ``kernel_h + kernel_w`` array operations instead of ``kernel_h * kernel_w``.
    """
    worst = np.inf if minimum else -np.inf
    pick = np.minimum if minimum else np.maximum
    if g.kernel_h * g.kernel_w <= g.kernel_h + g.kernel_w:  # 1xk, kx1 and 2x2 windows: one pass is cheaper
        out = np.full(g.out_shape, worst, dtype=x.dtype)
        for a in range(g.kernel_h):
            i0, i1, h0 = _tap_range(a, g.out_h, g.stride_h, g.pad_h, g.dilation_h, g.H)
            if i0 >= i1:
                continue
            for b in range(g.kernel_w):
                j0, j1, w0 = _tap_range(b, g.out_w, g.stride_w, g.pad_w, g.dilation_w, g.W)
                if j0 >= j1:
                    continue
                view = x[:, :, h0 : h0 + (i1 - i0 - 1) * g.stride_h + 1 : g.stride_h,
                         w0 : w0 + (j1 - j0 - 1) * g.stride_w + 1 : g.stride_w]
                dst = out[:, :, i0:i1, j0:j1]
                pick(dst, view, out=dst)
        return out
    rows = np.full((g.N, g.C, g.H, g.out_w), worst, dtype=x.dtype)  # every input row, pooled along W
    for b in range(g.kernel_w):
        j0, j1, w0 = _tap_range(b, g.out_w, g.stride_w, g.pad_w, g.dilation_w, g.W)
        if j0 < j1:
            dst = rows[:, :, :, j0:j1]
            pick(dst, x[:, :, :, w0 : w0 + (j1 - j0 - 1) * g.stride_w + 1 : g.stride_w], out=dst)
    out = np.full(g.out_shape, worst, dtype=x.dtype)
    for a in range(g.kernel_h):
        i0, i1, h0 = _tap_range(a, g.out_h, g.stride_h, g.pad_h, g.dilation_h, g.H)
        if i0 < i1:
            dst = out[:, :, i0:i1, :]
            pick(dst, rows[:, :, h0 : h0 + (i1 - i0 - 1) * g.stride_h + 1 : g.stride_h, :], out=dst)
    return out


def _tap_range(t, n_out, stride, pad, dilation, length):
    """Windows ``[i0, i1)`` whose tap ``t`` is a real cell, and that tap's input coordinate for window ``i0``."""
    offset = t * dilation - pad  # input coordinate of tap t in window i is i * stride + offset
    i0 = max(0, -(offset // stride)) if offset < 0 else 0
    i1 = min(n_out, (length - 1 - offset) // stride + 1) if length - 1 - offset >= 0 else 0
    return i0, max(i0, i1), i0 * stride + offset


def _max_pool_rule(x, g, minimum=False, return_indices=True):
    """The update rule applied tap by tap to padded strided views: exact, with or without indices."""
    worst = np.inf if minimum else -np.inf
    xp = _padded(x, g, worst)  # padding holds -inf (+inf for min): it can never replace the running best
    better = np.less if minimum else np.greater
    best = np.full(g.out_shape, worst, dtype=x.dtype)
    if return_indices:
        rows0 = np.arange(g.out_h) * g.stride_h - g.pad_h
        cols0 = np.arange(g.out_w) * g.stride_w - g.pad_w
        index = (first_real_tap(rows0, g.dilation_h)[:, None] * g.W + first_real_tap(cols0, g.dilation_w)[None, :])
        index = np.broadcast_to(index, g.out_shape).astype(np.int64)
        tap_index = rows0[:, None] * g.W + cols0[None, :]
    for a, b, view in _tap_views(xp, g):
        take = better(view, best)
        take |= np.isnan(view)
        np.copyto(best, view, where=take)
        if return_indices:
            np.copyto(index, tap_index + (a * g.dilation_h * g.W + b * g.dilation_w), where=take)
    return best, (index if return_indices else None)


def max_pool_backward(grad_out, x, g, minimum=False):
    """Find the winners again (the forward with indices), then scatter as :func:`max_pool_backward_indices`."""
    _, index = max_pool_forward(x, g, minimum)
    return _scatter(grad_out, index, x.dtype, g)


def max_pool_backward_indices(grad_out, indices, x, g):
    """Scatter-add each window's gradient to its indexed cell, in row-major window order (as PyTorch), after
    checking that every index lies in its plane. ``x`` gives only the dtype."""
    outside = (indices < 0) | (indices >= g.H * g.W)
    if outside.any():
        raise index_error(int(outside.sum()), g)
    return _scatter(grad_out, indices, x.dtype, g)


def _scatter(grad_out, indices, dtype, g):
    """``grad_x`` with each ``grad_out`` value added to the plane cell its index names, in row-major window order."""
    plane = g.H * g.W
    flat = indices.reshape(g.N * g.C, g.out_h * g.out_w) + (np.arange(g.N * g.C, dtype=np.int64) * plane)[:, None]
    grad_x = np.zeros(g.N * g.C * plane, dtype=dtype)
    np.add.at(grad_x, flat.ravel(), np.ascontiguousarray(grad_out, dtype=dtype).ravel())
    return grad_x.reshape(g.N, g.C, g.H, g.W)


def avg_pool_forward(x, g, count_include_pad=True, divisor_override=None):
    """Sum the taps (zero padding adds nothing), then divide by PyTorch's divisor."""
    xp = _padded(x, g, 0)
    total = np.zeros(g.out_shape, dtype=x.dtype)
    for _, _, view in _tap_views(xp, g, dilation=False):
        total += view
    total /= avg_divisors(g, count_include_pad, divisor_override).astype(x.dtype)
    return total


def avg_pool_backward(grad_out, g, dtype, count_include_pad=True, divisor_override=None):
    """Add each window's ``grad_out / divisor`` to every tap's cell, then cut the padding off.

    A cell receives at most one share per tap, from the window ``(i, j)`` with ``(a, b) = (h - i s_h, w - j s_w)``
    (padded coordinates): visiting the taps from the last to the first therefore hands each cell its shares in
    row-major window order, the order of the naive tier and of PyTorch, so the sums are the same bits."""
    share = grad_out / avg_divisors(g, count_include_pad, divisor_override).astype(dtype)
    top, bottom, left, right = _pad_amounts(g)
    grad_p = np.zeros((g.N, g.C, g.H + top + bottom, g.W + left + right), dtype=dtype)
    for _, _, view in reversed(list(_tap_views(grad_p, g, dilation=False))):
        view += share
    return grad_p[:, :, top : top + g.H, left : left + g.W]
