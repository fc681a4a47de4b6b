"""Small cases worked out by hand, on every backend, including each mistake listed in the seeds' README.

Every expected array below was written by hand from the definition (the windows are listed in comments),
not computed by the library.
"""
import numpy as np
import pytest

import pooling_lib as pl
from _helpers import assert_identical, assert_same_bits, nans

nan, inf = np.nan, np.inf


def plane(rows, dtype=np.float64):
    """A (1, 1, H, W) array from a list of rows."""
    return np.array(rows, dtype=dtype)[None, None]


def idx(rows):
    return np.array(rows, dtype=np.int64)[None, None]


# --------------------------------------------------------------------------------------------------------------
# Max pooling with padding on an all-negative input: padding must not win, and no gradient may be lost
# --------------------------------------------------------------------------------------------------------------
def test_padding_never_wins_on_negative_input(backend):
    x = plane([[-1, -2],
               [-3, -4]])
    # k=2, s=1, p=1: a 3x3 grid of windows over the padded 4x4 plane; window (i, j) covers rows i-1..i, cols j-1..j.
    # Zero padding would make every border window return 0; the real cells must win instead.
    out, ind = pl.max_pool2d(x, 2, stride=1, padding=1, return_indices=True, backend=backend)
    assert_identical(out, plane([[-1, -1, -2],
                                 [-1, -1, -2],
                                 [-3, -3, -4]]))
    assert_identical(ind, idx([[0, 0, 1],
                               [0, 0, 1],
                               [2, 2, 3]]))
    grad_out = plane([[1, 2, 3],
                      [4, 5, 6],
                      [7, 8, 9]])
    grad = pl.max_pool2d_backward(grad_out, x, 2, stride=1, padding=1, backend=backend)
    # x[0,0] wins windows with grads 1, 2, 4, 5; x[0,1] wins 3, 6; x[1,0] wins 7, 8; x[1,1] wins 9.
    assert_identical(grad, plane([[12, 9],
                                  [15, 9]]))
    assert grad.sum() == grad_out.sum()  # nothing was sent to a padding cell


def test_padding_never_wins_k3_s2(backend):
    x = plane([[-5, -1, -7],
               [-2, -8, -3],
               [-6, -4, -9]])
    # k=3, s=2, p=1: windows cover rows/cols {-1,0,1} and {1,2,3}.
    out, ind = pl.max_pool2d(x, 3, stride=2, padding=1, return_indices=True, backend=backend)
    assert_identical(out, plane([[-1, -1],
                                 [-2, -3]]))
    # (0,0): cells (0,0)..(1,1) -> -1 at (0,1); (0,1): rows 0-1, cols 1-2 -> -1 at (0,1);
    # (1,0): rows 1-2, cols 0-1 -> -2 at (1,0); (1,1): rows 1-2, cols 1-2 -> -3 at (1,2).
    assert_identical(ind, idx([[1, 1], [3, 5]]))
    grad = pl.max_pool2d_backward(plane([[1, 10], [100, 1000]]), x, 3, stride=2, padding=1, backend=backend)
    assert_identical(grad, plane([[0, 11, 0],
                                  [100, 0, 1000],
                                  [0, 0, 0]]))


def test_min_pool_padding_never_wins_on_positive_input(backend):
    x = plane([[1, 2],
               [3, 4]])
    out, ind = pl.min_pool2d(x, 2, stride=1, padding=1, return_indices=True, backend=backend)
    assert_identical(out, plane([[1, 1, 2], [1, 1, 2], [3, 3, 4]]))
    assert_identical(ind, idx([[0, 0, 1], [0, 0, 1], [2, 2, 3]]))
    grad = pl.min_pool2d_backward(np.ones((1, 1, 3, 3)), x, 2, stride=1, padding=1, backend=backend)
    assert_identical(grad, plane([[4, 2], [2, 1]]))


def test_all_minus_inf_with_padding_keeps_gradient(backend):
    # Every value is -inf: nothing is "greater", so the winner stays the window's first real cell (never padding).
    x = plane([[-inf, -inf]])
    # k=(1,3), s=1, p=(0,1): window 0 covers cols -1, 0, 1; window 1 covers 0, 1, 2.
    out, ind = pl.max_pool2d(x, (1, 3), stride=1, padding=(0, 1), return_indices=True, backend=backend)
    assert_identical(out, plane([[-inf, -inf]]))
    assert_identical(ind, idx([[0, 0]]))
    grad = pl.max_pool2d_backward(plane([[1, 2]]), x, (1, 3), stride=1, padding=(0, 1), backend=backend)
    assert_identical(grad, plane([[3, 0]]))


# --------------------------------------------------------------------------------------------------------------
# padding=0: the crop z[:, :, p:-p, p:-p] is empty when p == 0
# --------------------------------------------------------------------------------------------------------------
def test_padding_zero_backward_is_full_size(backend):
    x = plane([[1, 5, 2, 0],
               [3, 4, 7, 1]])
    # k=2: windows {1,5,3,4} -> 5 at flat 1, {2,0,7,1} -> 7 at flat 6
    assert_identical(pl.max_pool2d(x, 2, padding=0, backend=backend), plane([[5, 7]]))
    grad = pl.max_pool2d_backward(plane([[10, 20]]), x, 2, padding=0, backend=backend)
    assert_identical(grad, plane([[0, 10, 0, 0],
                                  [0, 0, 20, 0]]))
    assert_identical(pl.avg_pool2d(x, 2, padding=0, backend=backend), plane([[3.25, 2.5]]))
    grad = pl.avg_pool2d_backward(plane([[4, 8]]), x, 2, padding=0, backend=backend)
    assert_identical(grad, plane([[1, 1, 2, 2],
                                  [1, 1, 2, 2]]))
    grad = pl.min_pool2d_backward(plane([[10, 20]]), x, 2, padding=(0, 0), backend=backend)
    assert_identical(grad, plane([[10, 0, 0, 20],
                                  [0, 0, 0, 0]]))


# --------------------------------------------------------------------------------------------------------------
# Ties: exactly one winner, the first in row-major order; the gradient is not duplicated
# --------------------------------------------------------------------------------------------------------------
def test_ties_first_in_row_major_order(backend):
    x = plane([[1, 3, 3, 0],
               [3, 2, 0, 3]])
    # window 0 = [[1,3],[3,2]]: max 3 at (0,1)=1 and (1,0)=4 -> row-major first is 1 (column-major would say 4)
    # window 1 = [[3,0],[0,3]]: max 3 at (0,2)=2 and (1,3)=7 -> 2
    out, ind = pl.max_pool2d(x, 2, return_indices=True, backend=backend)
    assert_identical(out, plane([[3, 3]]))
    assert_identical(ind, idx([[1, 2]]))
    grad = pl.max_pool2d_backward(plane([[5, 7]]), x, 2, backend=backend)
    assert_identical(grad, plane([[0, 5, 7, 0],
                                  [0, 0, 0, 0]]))
    # min: window 0 -> 1 at 0; window 1 -> 0 at (0,3)=3 and (1,2)=6 -> 3
    out, ind = pl.min_pool2d(x, 2, return_indices=True, backend=backend)
    assert_identical(out, plane([[1, 0]]))
    assert_identical(ind, idx([[0, 3]]))
    grad = pl.min_pool2d_backward(plane([[5, 7]]), x, 2, backend=backend)
    assert_identical(grad, plane([[5, 0, 0, 7],
                                  [0, 0, 0, 0]]))


def test_all_equal_window_sends_gradient_once(backend, dtype):
    x = np.full((1, 1, 2, 2), 2.0, dtype=dtype)
    out, ind = pl.max_pool2d(x, 2, return_indices=True, backend=backend)
    assert_identical(out, np.full((1, 1, 1, 1), 2.0, dtype=dtype))
    assert_identical(ind, idx([[0]]))
    grad = pl.max_pool2d_backward(np.full((1, 1, 1, 1), 3.0, dtype=dtype), x, 2, backend=backend)
    # A mask "window == window.max()" would give 3 to all four cells (total 12 instead of 3).
    assert_identical(grad, np.array([[[[3, 0], [0, 0]]]], dtype=dtype))


def test_signed_zeros_tie(backend):
    # 0.0 == -0.0: a tie, so the first one wins, and the value returned is that cell's own zero.
    x = plane([[-0.0, 0.0, 0.0, -0.0]])
    out, ind = pl.max_pool2d(x, (1, 2), return_indices=True, backend=backend)
    assert_identical(out, plane([[-0.0, 0.0]]))
    assert_identical(ind, idx([[0, 2]]))


# --------------------------------------------------------------------------------------------------------------
# Overlapping windows (stride < kernel): a cell that wins several windows accumulates (+=)
# --------------------------------------------------------------------------------------------------------------
def test_overlapping_windows_accumulate(backend):
    x = plane([[1, 2, 1],
               [2, 9, 2],
               [1, 2, 1]])
    # k=2, s=1: all four windows contain the centre (flat 4)
    out, ind = pl.max_pool2d(x, 2, stride=1, return_indices=True, backend=backend)
    assert_identical(out, plane([[9, 9], [9, 9]]))
    assert_identical(ind, idx([[4, 4], [4, 4]]))
    grad = pl.max_pool2d_backward(plane([[1, 2], [3, 4]]), x, 2, stride=1, backend=backend)
    assert_identical(grad, plane([[0, 0, 0], [0, 10, 0], [0, 0, 0]]))


def test_cell_winning_two_of_three_windows(backend):
    x = plane([[1, 5, 2, 4, 3]])
    # k=(1,3), s=1: [1,5,2] -> 5 @1; [5,2,4] -> 5 @1; [2,4,3] -> 4 @3
    out, ind = pl.max_pool2d(x, (1, 3), stride=1, return_indices=True, backend=backend)
    assert_identical(out, plane([[5, 5, 4]]))
    assert_identical(ind, idx([[1, 1, 3]]))
    grad = pl.max_pool2d_backward(plane([[1, 10, 100]]), x, (1, 3), stride=1, backend=backend)
    assert_identical(grad, plane([[0, 11, 0, 100, 0]]))
    # average pooling overlaps too: each window adds grad/3 to its three cells
    grad = pl.avg_pool2d_backward(plane([[3, 6, 9]]), x, (1, 3), stride=1, backend=backend)
    assert_identical(grad, plane([[1, 3, 6, 5, 3]]))


# --------------------------------------------------------------------------------------------------------------
# stride != kernel_size (the seed's NHWC classes slice with the stride and expand with np.repeat)
# --------------------------------------------------------------------------------------------------------------
def test_stride_larger_than_kernel(backend):
    x = np.arange(20, dtype=np.float64).reshape(1, 1, 4, 5)
    # k=2, s=(2,3): rows {0,1},{2,3}; cols {0,1},{3,4}; column 2 is never visited.
    out, ind = pl.max_pool2d(x, 2, stride=(2, 3), return_indices=True, backend=backend)
    assert_identical(out, plane([[6, 9], [16, 19]]))
    assert_identical(ind, idx([[6, 9], [16, 19]]))
    grad = pl.max_pool2d_backward(plane([[1, 2], [3, 4]]), x, 2, stride=(2, 3), backend=backend)
    expected = np.zeros((1, 1, 4, 5))
    expected[0, 0, 1, 1], expected[0, 0, 1, 4], expected[0, 0, 3, 1], expected[0, 0, 3, 4] = 1, 2, 3, 4
    assert_identical(grad, expected)
    # averages: (0+1+5+6)/4, (3+4+8+9)/4, (10+11+15+16)/4, (13+14+18+19)/4
    assert_identical(pl.avg_pool2d(x, 2, stride=(2, 3), backend=backend), plane([[3, 6], [13, 16]]))
    grad = pl.avg_pool2d_backward(plane([[4, 8], [12, 16]]), x, 2, stride=(2, 3), backend=backend)
    assert_identical(grad, plane([[1, 1, 0, 2, 2],
                                  [1, 1, 0, 2, 2],
                                  [3, 3, 0, 4, 4],
                                  [3, 3, 0, 4, 4]]))


def test_non_square_kernel_and_stride(backend):
    x = plane([[1, 8, 2, 7, 3, 6],
               [9, 0, 4, 4, 5, 1],
               [2, 2, 8, 1, 0, 3]])
    # k=(3,2), s=(1,2): one row of windows over cols {0,1}, {2,3}, {4,5}
    out, ind = pl.max_pool2d(x, (3, 2), stride=(1, 2), return_indices=True, backend=backend)
    assert_identical(out, plane([[9, 8, 6]]))
    assert_identical(ind, idx([[6, 14, 5]]))
    out = pl.avg_pool2d(x, (3, 2), stride=(1, 2), backend=backend)
    assert_identical(out, plane([[22 / 6, 26 / 6, 18 / 6]]))


# --------------------------------------------------------------------------------------------------------------
# The floor in the output size: (14 - 3) / 2 + 1 = 6.5 -> 6 windows
# --------------------------------------------------------------------------------------------------------------
def test_floor_in_output_size(backend):
    x = np.arange(14, dtype=np.float64)[None, None, None, :]
    # k=3, s=2: windows start at 0, 2, ..., 10; each max is its last cell; cell 13 is in no window
    out, ind = pl.max_pool2d(x, (1, 3), stride=(1, 2), return_indices=True, backend=backend)
    assert_identical(out, plane([[2, 4, 6, 8, 10, 12]]))
    assert_identical(ind, idx([[2, 4, 6, 8, 10, 12]]))
    # ceil_mode adds a 7th, partial window over cells 12, 13
    out, ind = pl.max_pool2d(x, (1, 3), stride=(1, 2), ceil_mode=True, return_indices=True, backend=backend)
    assert_identical(out, plane([[2, 4, 6, 8, 10, 12, 13]]))
    assert_identical(ind, idx([[2, 4, 6, 8, 10, 12, 13]]))
    out = pl.avg_pool2d(x, (1, 3), stride=(1, 2), ceil_mode=True, backend=backend)
    assert_identical(out, plane([[1, 3, 5, 7, 9, 11, 12.5]]))


# --------------------------------------------------------------------------------------------------------------
# Dilation, NaN and -inf
# --------------------------------------------------------------------------------------------------------------
def test_dilation(backend):
    x = plane([[1, 9, 2, 8, 3]])
    # k=(1,2), d=(1,2), s=1: taps {j, j+2}: [1,2] -> 2 @2; [9,8] -> 9 @1; [2,3] -> 3 @4
    out, ind = pl.max_pool2d(x, (1, 2), stride=1, dilation=(1, 2), return_indices=True, backend=backend)
    assert_identical(out, plane([[2, 9, 3]]))
    assert_identical(ind, idx([[2, 1, 4]]))
    grad = pl.max_pool2d_backward(plane([[1, 2, 3]]), x, (1, 2), stride=1, dilation=(1, 2), backend=backend)
    assert_identical(grad, plane([[0, 2, 1, 0, 3]]))
    out, ind = pl.min_pool2d(x, (1, 2), stride=1, dilation=(1, 2), return_indices=True, backend=backend)
    assert_identical(out, plane([[1, 8, 2]]))
    assert_identical(ind, idx([[0, 3, 2]]))


def test_dilation_with_padding(backend):
    x = plane([[-4, -3, -2, -1]])
    # k=(1,2), d=(1,2), p=(0,1), s=(1,2): L_out = (4 + 2 - 2 - 1) // 2 + 1 = 2
    # window 0 taps at cols -1 (padding), 1 -> only -3 @1; window 1 taps at 1, 3 -> max(-3, -1) = -1 @3
    out, ind = pl.max_pool2d(x, (1, 2), stride=(1, 2), padding=(0, 1), dilation=(1, 2), return_indices=True,
                             backend=backend)
    assert_identical(out, plane([[-3, -1]]))
    assert_identical(ind, idx([[1, 3]]))


def test_nan_wins_and_last_nan_gives_index(backend):
    x = plane([[1, nan, 3, nan, 2, 7]])
    out, ind = pl.max_pool2d(x, (1, 2), return_indices=True, backend=backend)
    # [1, nan] -> nan @1; [3, nan] -> nan @3; [2, 7] -> 7 @5
    assert_identical(out, plane([[nan, nan, 7]]))
    assert_identical(ind, idx([[1, 3, 5]]))
    # one window over all six: the running "maximum" is replaced by each NaN, so the last NaN (flat 3) wins
    out, ind = pl.max_pool2d(x, (1, 6), return_indices=True, backend=backend)
    assert_identical(out, plane([[nan]]))
    assert_identical(ind, idx([[3]]))
    # a NaN first stays: 5 > nan is False
    out, ind = pl.max_pool2d(plane([[nan, 5]]), (1, 2), return_indices=True, backend=backend)
    assert_identical(ind, idx([[0]]))
    # min pooling treats NaN the same way
    out, ind = pl.min_pool2d(x, (1, 6), return_indices=True, backend=backend)
    assert_identical(out, plane([[nan]]))
    assert_identical(ind, idx([[3]]))
    grad = pl.max_pool2d_backward(plane([[1, 2, 3]]), x, (1, 2), backend=backend)
    assert_identical(grad, plane([[0, 1, 0, 2, 0, 3]]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_winning_nan_keeps_its_sign_and_payload(backend, dtype):
    """A window's winner is returned as it is: a NaN winner keeps its sign and payload bits, with and without
    indices, for max and min pooling (PyTorch copies the winning element; it does not make a new NaN)."""
    pos, neg, pos_payload, neg_payload = nans(dtype)
    x = np.array([[[[1, neg, 3, pos_payload, neg_payload, 2, pos, 5]]]], dtype=dtype)
    # (1, 2) windows: [1, -nan] -> -nan; [3, +nan'] -> +nan'; [-nan', 2] -> -nan'; [+nan, 5] -> +nan
    pairs = np.array([[[[neg, pos_payload, neg_payload, pos]]]], dtype=dtype)
    # (1, 4) windows: the last NaN of each wins: [1, -nan, 3, +nan'] -> +nan'; [-nan', 2, +nan, 5] -> +nan
    fours = np.array([[[[pos_payload, pos]]]], dtype=dtype)
    for pool in (pl.max_pool2d, pl.min_pool2d):
        for kernel, expected in (((1, 2), pairs), ((1, 4), fours)):
            assert_same_bits(pool(x, kernel, backend=backend), expected, err_msg=f"{pool.__name__} {kernel}")
            out, _ = pool(x, kernel, return_indices=True, backend=backend)
            assert_same_bits(out, expected, err_msg=f"{pool.__name__} {kernel} with indices")
            nhwc = pool(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), kernel, layout="NHWC", backend=backend)
            assert_same_bits(nhwc.transpose(0, 3, 1, 2), expected, err_msg=f"{pool.__name__} {kernel} NHWC")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_inf_values(backend):
    x = plane([[-inf, 1, inf, inf],
               [-inf, -inf, 0, -1]])
    out, ind = pl.max_pool2d(x, 2, return_indices=True, backend=backend)
    assert_identical(out, plane([[1, inf]]))
    assert_identical(ind, idx([[1, 2]]))
    out, ind = pl.min_pool2d(x, 2, return_indices=True, backend=backend)
    assert_identical(out, plane([[-inf, -1]]))
    assert_identical(ind, idx([[0, 7]]))
    # the average of +inf and -inf is NaN; of finite and +inf is +inf
    out = pl.avg_pool2d(plane([[inf, -inf, inf, 1]]), (1, 2), backend=backend)
    assert_identical(out, plane([[nan, inf]]))


# --------------------------------------------------------------------------------------------------------------
# Average pooling divisors: count_include_pad, divisor_override, ceil_mode windows
# --------------------------------------------------------------------------------------------------------------
X33 = plane([[1, 2, 3],
             [4, 5, 6],
             [7, 8, 9]])
# k=2, s=2, p=1 on 3x3: windows cover rows/cols {-1,0} and {1,2}, so their real cells are
# (0,0): {1} sum 1 (1 cell); (0,1): {2,3} sum 5 (2 cells); (1,0): {4,7} sum 11 (2 cells); (1,1): {5,6,8,9} sum 28.


@pytest.mark.parametrize("kwargs, expected", [
    (dict(count_include_pad=True), [[1 / 4, 5 / 4], [11 / 4, 28 / 4]]),
    (dict(count_include_pad=False), [[1 / 1, 5 / 2], [11 / 2, 28 / 4]]),
    (dict(divisor_override=2), [[1 / 2, 5 / 2], [11 / 2, 28 / 2]]),
    (dict(divisor_override=3, count_include_pad=False), [[1 / 3, 5 / 3], [11 / 3, 28 / 3]]),
    (dict(divisor_override=-1), [[-1, -5], [-11, -28]]),
])
def test_avg_divisors_with_padding(backend, kwargs, expected):
    out = pl.avg_pool2d(X33, 2, stride=2, padding=1, backend=backend, **kwargs)
    assert_identical(out, plane(expected))


def test_avg_padding_backward(backend):
    grad_out = plane([[4, 8], [12, 16]])
    grad = pl.avg_pool2d_backward(grad_out, X33, 2, stride=2, padding=1, backend=backend)
    # include pad: every divisor 4 -> shares 1, 2, 3, 4 spread over the real cells only
    assert_identical(grad, plane([[1, 2, 2], [3, 4, 4], [3, 4, 4]]))
    grad = pl.avg_pool2d_backward(grad_out, X33, 2, stride=2, padding=1, count_include_pad=False, backend=backend)
    # divisors 1, 2, 2, 4 -> shares 4, 4, 6, 4
    assert_identical(grad, plane([[4, 4, 4], [6, 4, 4], [6, 4, 4]]))
    grad = pl.avg_pool2d_backward(grad_out, X33, 2, stride=2, padding=1, divisor_override=8, backend=backend)
    assert_identical(grad, plane([[0.5, 1, 1], [1.5, 2, 2], [1.5, 2, 2]]))


X6 = plane([[1, 2, 3, 4, 5, 6]])
# k=(1,3), s=(1,2), p=(0,1), ceil_mode: span 6 + 2 - 2 - 1 = 5, ceil(5/2) + 1 = 4 windows starting at -1, 1, 3, 5.
# window 0: cols -1 (pad), 0, 1        -> sum 3,  3 cells incl. pad, 2 real
# window 1: cols 1, 2, 3               -> sum 9,  3 and 3
# window 2: cols 3, 4, 5               -> sum 15, 3 and 3
# window 3: cols 5, 6 (pad), 7 (beyond the padding) -> sum 6; counting padding it spans 5..6 = 2 cells; 1 real


@pytest.mark.parametrize("kwargs, expected_out, expected_grad", [
    (dict(count_include_pad=True), [[1, 3, 5, 3]], [[1, 3, 2, 5, 3, 9]]),
    (dict(count_include_pad=False), [[1.5, 3, 5, 6]], [[1.5, 3.5, 2, 5, 3, 15]]),
    (dict(divisor_override=4), [[0.75, 2.25, 3.75, 1.5]], [[0.75, 2.25, 1.5, 3.75, 2.25, 5.25]]),
])
def test_avg_ceil_mode_window_divisors(backend, kwargs, expected_out, expected_grad):
    out = pl.avg_pool2d(X6, (1, 3), stride=(1, 2), padding=(0, 1), ceil_mode=True, backend=backend, **kwargs)
    assert_identical(out, plane(expected_out))
    # grad_out [3, 6, 9, 12]: each window adds grad / divisor to its real cells
    grad = pl.avg_pool2d_backward(plane([[3, 6, 9, 12]]), X6, (1, 3), stride=(1, 2), padding=(0, 1),
                                  ceil_mode=True, backend=backend, **kwargs)
    assert_identical(grad, plane(expected_grad))


def test_avg_ceil_mode_without_padding(backend):
    x = plane([[1, 2, 3, 4, 5]])
    # k=(1,2), s=(1,2), ceil_mode: windows [1,2], [3,4], [5]; the last is cut at the input's edge (no padding),
    # so even with count_include_pad its divisor is 1
    out = pl.avg_pool2d(x, (1, 2), ceil_mode=True, backend=backend)
    assert_identical(out, plane([[1.5, 3.5, 5]]))
    out = pl.avg_pool2d(x, (1, 2), ceil_mode=True, divisor_override=2, backend=backend)
    assert_identical(out, plane([[1.5, 3.5, 2.5]]))


# --------------------------------------------------------------------------------------------------------------
# dtype preservation: float32 stays float32 (the seeds always returned float64)
# --------------------------------------------------------------------------------------------------------------
def test_float32_stays_float32(backend):
    x = plane([[1, 2], [3, 4]], dtype=np.float32)
    g = np.ones((1, 1, 1, 1), dtype=np.float32)
    for out in (pl.max_pool2d(x, 2, backend=backend), pl.min_pool2d(x, 2, backend=backend),
                pl.avg_pool2d(x, 2, backend=backend),
                pl.max_pool2d_backward(g, x, 2, backend=backend), pl.min_pool2d_backward(g, x, 2, backend=backend),
                pl.avg_pool2d_backward(g, x, 2, backend=backend)):
        assert out.dtype == np.float32
    out, ind = pl.max_pool2d(x, 2, return_indices=True, backend=backend)
    assert out.dtype == np.float32 and ind.dtype == np.int64
    assert_identical(pl.avg_pool2d(x, 2, backend=backend), np.array([[[[2.5]]]], dtype=np.float32))
    # a float64 grad_out does not promote the gradient of a float32 input
    grad = pl.max_pool2d_backward(np.ones((1, 1, 1, 1)), x, 2, backend=backend)
    assert_identical(grad, np.array([[[[0, 0], [0, 1]]]], dtype=np.float32))


def test_float32_global_and_layers_keep_dtype(backend):
    x = plane([[1, 2], [3, 4]], dtype=np.float32)
    g = np.ones((1, 1), dtype=np.float32)
    b = dict(backend=backend)
    assert_identical(pl.global_max_pool2d(x, **b), np.array([[4]], dtype=np.float32))
    assert_identical(pl.global_avg_pool2d(x, **b), np.array([[2.5]], dtype=np.float32))
    assert_identical(pl.global_max_pool2d_backward(g, x, **b), np.array([[[[0, 0], [0, 1]]]], dtype=np.float32))
    assert_identical(pl.global_avg_pool2d_backward(g, x, **b), np.full((1, 1, 2, 2), 0.25, dtype=np.float32))
    for layer in (pl.MaxPool2d(2, **b), pl.MinPool2d(2, **b), pl.AvgPool2d(2, **b), pl.GlobalMaxPool2d(**b),
                  pl.GlobalAvgPool2d(**b)):
        out = layer.forward(x)
        assert out.dtype == np.float32
        assert layer.backward(np.ones_like(out)).dtype == np.float32


def test_float32_arithmetic_is_float32(backend):
    # e = 2**-24 is half an ulp of 1 in float32: in float32, (1 + e) + e rounds to 1 at each step, so the sum
    # is exactly 1; summing in float64 and rounding at the end would give 1 + 2**-23 instead.
    x = np.array([[[[1.0, 2.0 ** -24, 2.0 ** -24]]]], dtype=np.float32)
    out = pl.avg_pool2d(x, (1, 3), divisor_override=1, backend=backend)
    assert_identical(out, np.array([[[[1.0]]]], dtype=np.float32))


# --------------------------------------------------------------------------------------------------------------
# Global pooling: the backward is its own function (the seed redefined the forward's name)
# --------------------------------------------------------------------------------------------------------------
def test_global_max_forward_and_backward_are_different_functions(backend):
    assert pl.global_max_pool2d is not pl.global_max_pool2d_backward
    assert pl.global_max_pool2d.__name__ == "global_max_pool2d"
    assert pl.global_max_pool2d_backward.__name__ == "global_max_pool2d_backward"
    x = np.array([[[[1, 7], [7, 3]]],
                  [[[-5, -2], [-9, -2]]]], dtype=np.float64)  # (2, 1, 2, 2)
    before = pl.global_max_pool2d(x, backend=backend)
    assert_identical(before, np.array([[7.0], [-2.0]]))
    grad = pl.global_max_pool2d_backward(np.array([[10.0], [20.0]]), x, backend=backend)
    # first maxima: 7 at (0,1) for image 0; -2 at (0,1) for image 1 (tie with (1,1))
    assert_identical(grad, np.array([[[[0, 10], [0, 0]]], [[[0, 20], [0, 0]]]], dtype=np.float64))
    # the forward still is the forward after the backward ran
    assert_identical(pl.global_max_pool2d(x, backend=backend), before)


def test_global_avg_hand_computed(backend):
    x = np.array([[[[1, 7], [7, 3]], [[0, 0], [0, -2]]],
                  [[[-5, -2], [-9, -2]], [[1, 1], [1, 1]]]], dtype=np.float64)  # (2, 2, 2, 2)
    assert_identical(pl.global_avg_pool2d(x, backend=backend), np.array([[4.5, -0.5], [-4.5, 1.0]]))
    grad = pl.global_avg_pool2d_backward(np.array([[4.0, 8.0], [-4.0, 0.0]]), x, backend=backend)
    expected = np.empty_like(x)
    expected[0, 0], expected[0, 1], expected[1, 0], expected[1, 1] = 1, 2, -1, 0
    assert_identical(grad, expected)
    assert_identical(pl.global_max_pool2d(x, backend=backend), np.array([[7.0, 0.0], [-2.0, 1.0]]))


def test_global_pooling_nhwc(backend):
    x = np.array([[[[1, 7], [7, 3]], [[0, 0], [0, -2]]]], dtype=np.float64)  # (1, 2, 2, 2) NCHW
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    assert_identical(pl.global_max_pool2d(x_nhwc, layout="NHWC", backend=backend), np.array([[7.0, 0.0]]))
    assert_identical(pl.global_avg_pool2d(x_nhwc, layout="NHWC", backend=backend), np.array([[4.5, -0.5]]))
    grad = pl.global_max_pool2d_backward(np.array([[1.0, 2.0]]), x_nhwc, layout="NHWC", backend=backend)
    expected = np.zeros((1, 2, 2, 2))
    expected[0, 0, 1, 0] = 1  # channel 0's max 7 at (h=0, w=1)
    expected[0, 0, 0, 1] = 2  # channel 1's max 0 first at (0, 0)
    assert_identical(grad, expected)
