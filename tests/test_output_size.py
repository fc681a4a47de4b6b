"""pool2d_output_size: the floor formula, ceil_mode and its dropped last window, dilation, pairs, and errors."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from _helpers import PROPERTY_SETTINGS, has_empty_window, output_length
from pooling_lib import max_pool2d, pool2d_output_size


@pytest.mark.parametrize(
    "args, kwargs, expected",
    [
        # (L, k, s): the blog's example needs a floor: (14 - 3) / 2 + 1 = 6.5 -> 6 windows
        ((14, 3, 2), {}, 6),
        ((14, 3, 2), {"ceil_mode": True}, 7),  # rounded up: the 7th window covers cells 12, 13
        ((5, 2, 2), {}, 2),
        ((5, 2, 2), {"ceil_mode": True}, 3),
        ((4, 2), {}, 2),  # stride=None means stride = kernel_size
        ((7, 3), {}, 2),
        ((7, 3, None), {"ceil_mode": True}, 3),
        ((6, 3, 1, 1), {}, 6),  # "same" size: k=3, s=1, p=1
        ((56, 3, 2, 1), {}, 28),  # ResNet's stem pooling
        ((112, 3, 2, 1), {}, 56),
        # dilation: the window spans d*(k-1)+1 cells
        ((7, 3, 1, 0, 2), {}, 3),  # span 5 -> positions 0, 1, 2
        ((7, 3, 2, 0, 2), {}, 2),
        ((5, 3, 1, 0, 2), {}, 1),
        ((8, 2, 1, 1, 3), {}, 7),  # (8 + 2 - 3 - 1) / 1 + 1
        # ceil_mode keeps a partial last window ...
        ((6, 3, 2, 1), {"ceil_mode": True}, 4),  # windows start at -1, 1, 3, 5: the last one at cell 5 is kept
        ((6, 3, 2, 1), {}, 3),
        # ... but drops one that would start in the right-hand padding (PyTorch's rule)
        ((5, 3, 3, 1), {"ceil_mode": True}, 2),  # ceil(4/3)+1 = 3, but window 3 starts at 6-1 = 5 = L: dropped
        ((5, 3, 3, 1), {}, 2),
        ((1, 2, 2, 1), {"ceil_mode": True}, 1),  # ceil(1/2)+1 = 2; window 2 starts at 1 = L: dropped
        ((3, 2, 2, 1), {"ceil_mode": True}, 2),  # ceil(3/2)+1 = 3; window 3 starts at 3 = L: dropped
        # ceil_mode lets a window overhang the input: k=3 on 2 cells with stride 2 gives one window
        ((2, 3, 2), {"ceil_mode": True}, 1),
        ((2, 3, 2), {}, 0),
        ((1, 1), {}, 1),
    ],
)
def test_hand_computed_sizes(args, kwargs, expected):
    got = pool2d_output_size(*args, **kwargs)
    assert got == expected
    assert type(got) is int


def test_window_too_large_gives_non_positive_size():
    # The formula itself may go to zero or below; the pooling functions turn that into a ValueError.
    assert pool2d_output_size(2, 3) == 0  # floor(-1/3) + 1
    assert pool2d_output_size(1, 5, 1) == -3  # floor(-4/1) + 1
    with pytest.raises(ValueError, match="kernel_size"):
        max_pool2d(np.zeros((1, 1, 1, 1)), 5, 1)


def test_pairs():
    assert pool2d_output_size((14, 5), (3, 2), (2, 1)) == (6, 4)
    assert pool2d_output_size((14, 5), 3, 2) == (6, 2)
    assert pool2d_output_size([14, 5], [3, 2]) == (4, 2)
    assert pool2d_output_size((8, 9), (2, 3), (2, 2), (1, 1), (3, 1)) == (4, 5)
    assert pool2d_output_size((5, 14), (3, 3), (3, 2), (1, 0), 1, ceil_mode=True) == (2, 7)
    out = pool2d_output_size((56, 56), 3, 2, padding=1)
    assert out == (28, 28) and type(out) is tuple and all(type(v) is int for v in out)


def test_numpy_integers_accepted():
    assert pool2d_output_size(np.int64(14), np.int32(3), np.int16(2)) == 6
    assert pool2d_output_size((np.int64(14), 5), (np.int8(3), 2), (2, np.uint8(1))) == (6, 4)


@pytest.mark.parametrize("name, kwargs", [
    ("input_size", dict(input_size=-1, kernel_size=2)),
    ("input_size", dict(input_size=(4, 4, 4), kernel_size=2)),
    ("input_size", dict(input_size=4.0, kernel_size=2)),
    ("kernel_size", dict(input_size=4, kernel_size=0)),
    ("kernel_size", dict(input_size=4, kernel_size=-2)),
    ("kernel_size", dict(input_size=4, kernel_size=2.0)),
    ("kernel_size", dict(input_size=4, kernel_size=True)),
    ("kernel_size", dict(input_size=4, kernel_size=(2, 2, 2))),
    ("stride", dict(input_size=4, kernel_size=2, stride=0)),
    ("stride", dict(input_size=4, kernel_size=2, stride=(1, -1))),
    ("stride", dict(input_size=4, kernel_size=2, stride=1.5)),
    ("padding", dict(input_size=4, kernel_size=2, padding=-1)),
    ("padding", dict(input_size=4, kernel_size=2, padding=0.0)),
    ("dilation", dict(input_size=4, kernel_size=2, dilation=0)),
    ("dilation", dict(input_size=4, kernel_size=2, dilation=False)),
    ("ceil_mode", dict(input_size=4, kernel_size=2, ceil_mode=1)),
    ("ceil_mode", dict(input_size=4, kernel_size=2, ceil_mode="yes")),
])
def test_bad_arguments(name, kwargs):
    with pytest.raises((TypeError, ValueError), match=name):
        pool2d_output_size(**kwargs)


@PROPERTY_SETTINGS
@given(
    length=st.integers(0, 40),
    k=st.integers(1, 6),
    s=st.integers(1, 5),
    d=st.integers(1, 4),
    ceil_mode=st.booleans(),
    data=st.data(),
)
def test_formula_matches_window_count(length, k, s, d, ceil_mode, data):
    """The closed form equals a loop that places windows one by one (when at least one fits).

    Padding is at most k // 2, the library's (and PyTorch's) precondition: with more, ceil_mode could add a
    window that starts in the right padding and the formula's single correction would not remove it.
    """
    p = data.draw(st.integers(0, k // 2), label="padding")
    got = pool2d_output_size(length, k, s, p, d, ceil_mode)
    expected = output_length(length, k, s, p, d, ceil_mode)
    assert max(got, 0) == expected


@PROPERTY_SETTINGS
@given(length=st.integers(1, 40), k=st.integers(1, 6), s=st.integers(1, 5), d=st.integers(1, 3),
       ceil_mode=st.booleans(), data=st.data())
def test_output_size_is_the_forward_shape(length, k, s, d, ceil_mode, data):
    p = data.draw(st.integers(0, k // 2))
    assume(not has_empty_window(length, k, s, p, d, ceil_mode))  # rejected: see test_rejected_geometries
    n = pool2d_output_size(length, k, s, p, d, ceil_mode)
    x = np.zeros((1, 1, 1, length))
    if n < 1:
        with pytest.raises(ValueError, match="kernel_size"):
            max_pool2d(x, (1, k), (1, s), (0, p), (1, d), ceil_mode, backend="numpy")
    else:
        out = max_pool2d(x, (1, k), (1, s), (0, p), (1, d), ceil_mode, backend="numpy")
        assert out.shape == (1, 1, 1, n)


@PROPERTY_SETTINGS
@given(length=st.integers(1, 12), k=st.integers(1, 5), s=st.integers(1, 4), d=st.integers(1, 6),
       ceil_mode=st.booleans(), data=st.data())
def test_rejected_geometries(length, k, s, d, ceil_mode, data):
    """A geometry is accepted exactly when at least one window fits and no window holds only padding
    (a dilation larger than the input can step over every cell; PyTorch then returns -inf with an index
    outside the plane, and its backward writes out of bounds)."""
    p = data.draw(st.integers(0, k // 2), label="padding")
    x = np.zeros((1, 1, 2, length))
    fits = output_length(length, k, s, p, d, ceil_mode) >= 1
    if fits and not has_empty_window(length, k, s, p, d, ceil_mode):
        max_pool2d(x, (1, k), (1, s), (0, p), (1, d), ceil_mode, backend="numpy")
    else:
        with pytest.raises(ValueError, match="kernel_size" if not fits else "dilation"):
            max_pool2d(x, (1, k), (1, s), (0, p), (1, d), ceil_mode, backend="numpy")
