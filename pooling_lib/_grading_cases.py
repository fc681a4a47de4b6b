"""The homework exercises as data: for each one its reference, its battery of cases, and its known mistakes.

This module is private to :mod:`pooling_lib.grading`, which runs the batteries and words the reports. An
:class:`Exercise` holds

* ``reference``: the right answer, computed with ``pooling_lib`` itself (or, for adaptive pooling, which
  ``pooling_lib`` does not provide, a loop written here and tested against PyTorch);
* ``cases``: small, seeded inputs that exercise ties, overlapping windows, padding, all-negative inputs,
  float32 and float64, odd and non-square shapes;
* ``variants``: *known-wrong* implementations, one per classic mistake, each with the hint to give when a
  student's output matches it (the diagnosis: a wrong answer that equals "zero padding" most likely *is*
  zero padding);
* ``heuristics``: fallback hints for wrong answers that match no variant exactly;
* ``extra``: a check run once every case passes (vectorization, speed); failing it earns no credit;
* ``own_code`` and ``allowed``: whether the student must write the function without ``pooling_lib``'s own
  pooling code, and which of its argument helpers (the output size) are allowed all the same.

Everything here runs on tiny arrays, so plain loops are fine and easy to read.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import numbers
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import functional as F
from .params import pool2d_output_size

__all__ = ["Case", "Variant", "Exercise", "Mismatch", "EXERCISES"]


# ---------------------------------------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One call of the student's function: ``fn(*args)``, described in plain words by ``label``."""

    label: str
    args: tuple


@dataclass(frozen=True)
class Variant:
    """A known-wrong implementation (same signature as the student's) and the hint its mistake deserves."""

    hint: str
    fn: Callable


@dataclass(frozen=True)
class Mismatch:
    """Why ``got`` differs from ``expected``: ``what`` is "type", "shape", "values" or "dtype"."""

    what: str
    text: str
    component: int = 0  # for tuple results: which part differs


# pooling_lib's argument helpers: they count the windows and check the arguments, but pool nothing. Every exercise
# that must be written without pooling_lib allows them (chapter 2 teaches pool2d_output_size as the library's
# helper, chapter 8's wrapper calls pool_geometry), except the output-size exercise, whose answer they are.
# The rest of pooling_lib.params stays forbidden: avg_divisors is the average pooling exercise's divisor,
# first_real_tap a window's first real cell, and the others are plumbing no exercise needs.
GEOMETRY_HELPERS = ("pooling_lib.params.pool2d_output_size", "pooling_lib.params.pool_geometry",
                    "pooling_lib.params.PoolGeometry.out_shape",
                    "pooling_lib.params.out_shape")  # the same property, named by co_name before Python 3.11


@dataclass
class Exercise:
    """Everything the grader needs to check one exercise."""

    name: str  # the student's function name; the check is ``check_<name>``
    chapter: int
    label: str  # the sphinx-exercise label in the book
    title: str
    params: tuple  # parameter names, for showing calls
    reference: Callable
    cases: Callable[[], list]
    result: Any  # a comparator: _Array, _Tuple, _Int, _Float
    variants: tuple = ()
    heuristics: Callable | None = None  # (case, got, expected) -> hint or None
    extra: Callable | None = None  # (fn, watched) -> None when fine, else (what went wrong, hint); watched(*args)
    # calls fn while watching for pooling_lib calls (use it for every call but timed ones)
    own_code: bool = True  # the student must not call pooling_lib's pooling functions
    allowed: tuple = GEOMETRY_HELPERS  # pooling_lib functions a student may call all the same (own_code only)
    exception_hint: Callable | None = None  # (exception) -> hint or None, for errors typical of the exercise
    points: float = 1.0


# ---------------------------------------------------------------------------------------------------------
# Comparators
# ---------------------------------------------------------------------------------------------------------
def _tolerance(dtype):
    return (1e-5, 1e-6) if np.dtype(dtype) == np.float32 else (1e-10, 1e-12)


class _Array:
    """An ndarray result, compared exactly (max/min pooling, integer-valued sums) or to a dtype's tolerance."""

    def __init__(self, name="the output", exact=True):
        self.name = name
        self.exact = exact

    def compare(self, got, expected, check_dtype=True):
        if not isinstance(got, np.ndarray):
            return Mismatch("type", f"{self.name} should be a NumPy array, got {type(got).__name__}")
        if got.shape != expected.shape:
            return Mismatch("shape", f"{self.name} has shape {got.shape}, expected {expected.shape}")
        if got.dtype.kind not in "biuf":
            return Mismatch("dtype", f"{self.name} has dtype {got.dtype}, expected {expected.dtype}")
        if self.exact:
            same = np.array_equal(got, expected, equal_nan=True)
        else:
            rtol, atol = _tolerance(expected.dtype)
            same = np.allclose(got.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol,
                               equal_nan=True)
        if not same:
            return Mismatch("values", f"{self.name} has wrong values")
        if check_dtype and got.dtype != expected.dtype:
            return Mismatch("dtype", f"{self.name} has dtype {got.dtype}, expected {expected.dtype}")
        return None


class _Int:
    """An int result (numpy integers accepted, bool and float rejected)."""

    def __init__(self, name="the result"):
        self.name = name

    def compare(self, got, expected, check_dtype=True):
        if isinstance(got, (bool, np.bool_)) or not isinstance(got, numbers.Real):
            return Mismatch("type", f"{self.name} should be an int, got {type(got).__name__}")
        if got != expected:
            return Mismatch("values", f"{self.name} is wrong")
        if check_dtype and not isinstance(got, numbers.Integral):
            return Mismatch("dtype", f"{self.name} should be an int, got the {type(got).__name__} {got!r}")
        return None


class _Float:
    """A real number, compared with a relative tolerance; ints and 0-d arrays are accepted."""

    def __init__(self, name="the result", rtol=1e-9):
        self.name = name
        self.rtol = rtol

    def compare(self, got, expected, check_dtype=True):
        if isinstance(got, np.ndarray) and got.ndim == 0:
            got = got[()]
        if isinstance(got, (bool, np.bool_)) or not isinstance(got, numbers.Real):
            return Mismatch("type", f"{self.name} should be a number, got {type(got).__name__}")
        if not math.isclose(float(got), float(expected), rel_tol=self.rtol, abs_tol=1e-12):
            return Mismatch("values", f"{self.name} is wrong")
        return None


class _Tuple:
    """A tuple of results, each with its own comparator; reports the first part that differs."""

    def __init__(self, *parts):
        self.parts = parts

    def compare(self, got, expected, check_dtype=True):
        n = len(self.parts)
        if not isinstance(got, (tuple, list)) or len(got) != n:
            names = ", ".join(p.name for p in self.parts)
            return Mismatch("type", f"the function should return a tuple ({names}), got {_describe_type(got)}")
        for k, (part, g, e) in enumerate(zip(self.parts, got, expected)):
            m = part.compare(g, e, check_dtype)
            if m is not None:
                return Mismatch(m.what, m.text, k)
        return None


def _describe_type(value):
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------------------------------------------------
# Loop pooling with switches, to build the known-wrong variants
# ---------------------------------------------------------------------------------------------------------
def _out_len(length, k, s, p):
    return (length + 2 * p - k) // s + 1


def _windows(x, k, s, p, *, step=None, size=None, out_hw=None):
    """Yield ``(n, c, i, j, taps)``; ``taps`` lists the window's ``(h, w)`` in row-major order, padding included
    (coordinates outside ``0..H-1`` / ``0..W-1`` are padding), cut at the padded extent."""
    N, C, H, W = x.shape
    step = s if step is None else step
    size = k if size is None else size
    out_h, out_w = out_hw if out_hw is not None else (_out_len(H, k, s, p), _out_len(W, k, s, p))
    for n in range(N):
        for c in range(C):
            for i in range(out_h):
                for j in range(out_w):
                    h0, w0 = i * step - p, j * step - p
                    taps = [(h, w) for h in range(h0, h0 + size) for w in range(w0, w0 + size)
                            if -p <= h < H + p and -p <= w < W + p]
                    yield n, c, i, j, taps


def _out_hw(x, k, s, p, output_size):
    H, W = x.shape[2:]
    if output_size == "floor":
        return _out_len(H, k, s, p), _out_len(W, k, s, p)
    if output_size == "H//s":
        return H // s, W // s
    if output_size == "from_height":
        return _out_len(H, k, s, p), _out_len(H, k, s, p)
    raise AssertionError(output_size)


def _extremum(x, k, s, p, *, minimum=False, zero_pad=False, last_tie=False, step=None, size=None,
              output_size="floor"):
    """Max (min) pooling by loops with switches for the classic mistakes.

    Returns ``(out, winners, ties, oh_ow)``: ``winners[n, c, i, j]`` is the winning ``(h, w)`` (possibly in the
    padding), ``ties`` maps each window to every tap equal to its best value.
    """
    N, C, H, W = x.shape
    out_hw = _out_hw(x, k, s, p, output_size)
    out = np.zeros((N, C) + out_hw, dtype=x.dtype)
    winners, ties = {}, {}
    for n, c, i, j, taps in _windows(x, k, s, p, step=step, size=size, out_hw=out_hw):
        best, where, values = None, None, []
        for h, w in taps:
            if 0 <= h < H and 0 <= w < W:
                v = x[n, c, h, w]
            elif zero_pad:
                v = x.dtype.type(0)
            else:
                continue  # padding never wins
            values.append(((h, w), v))
            if best is None:
                better = True
            elif minimum:
                better = v <= best if last_tie else v < best
            else:
                better = v >= best if last_tie else v > best
            if better:
                best, where = v, (h, w)
        if best is None:  # a window that holds only padding (possible only in a variant)
            best, where = x.dtype.type(0), None
        out[n, c, i, j] = best
        winners[n, c, i, j] = where
        ties[n, c, i, j] = [hw for hw, v in values if v == best]
    return out, winners, ties


def _route(x, grad_out, winners, ties, mode="add"):
    """Backward of max/min pooling from winners: ``mode`` is "add" (right), "assign" (``=``), "ties" (every
    tied maximum gets the gradient) or "ties_assign"."""
    N, C, H, W = x.shape
    grad = np.zeros(x.shape, dtype=x.dtype)
    for (n, c, i, j), where in winners.items():
        if i >= grad_out.shape[2] or j >= grad_out.shape[3]:
            continue
        g = grad_out[n, c, i, j]
        targets = ties[n, c, i, j] if mode.startswith("ties") else ([where] if where is not None else [])
        for h, w in targets:
            if 0 <= h < H and 0 <= w < W:  # a winner in the padding: its gradient is lost
                if mode in ("add", "ties"):
                    grad[n, c, h, w] += g
                else:
                    grad[n, c, h, w] = g
    return grad


def _indices(x, winners, out_shape, frame="unpadded", p=0):
    """Flat winner indices: "unpadded" ``h*W + w`` (right) or "padded" ``(h+p)*(W+2p) + (w+p)``."""
    N, C, H, W = x.shape
    idx = np.zeros(out_shape, dtype=np.int64)
    for (n, c, i, j), where in winners.items():
        h, w = where if where is not None else (0, 0)
        if frame == "unpadded":
            idx[n, c, i, j] = h * W + w
        else:
            idx[n, c, i, j] = (h + p) * (W + 2 * p) + (w + p)
    return idx


def _window_indices(x, winners, out_shape, k, s, p):
    idx = np.zeros(out_shape, dtype=np.int64)
    for (n, c, i, j), where in winners.items():
        h, w = where
        idx[n, c, i, j] = (h - (i * s - p)) * k + (w - (j * s - p))
    return idx


def _as64(array):
    return np.asarray(array).astype(np.float64)


# ---------------------------------------------------------------------------------------------------------
# pooling_lib on its NumPy tier: the references never depend on the compiled extension
# ---------------------------------------------------------------------------------------------------------
def _max_pool(x, k, s=None, p=0, **kw):
    return F.max_pool2d(x, k, s, p, backend="numpy", **kw)


def _min_pool(x, k, s=None, p=0, **kw):
    return F.min_pool2d(x, k, s, p, backend="numpy", **kw)


def _avg_pool(x, k, s=None, p=0):
    return F.avg_pool2d(x, k, s, p, backend="numpy")


def _global_max(x):
    return _max_pool(x, x.shape[2:])[:, :, 0, 0]


def _global_max_backward(grad_out, x):
    return F.max_pool2d_backward(grad_out[:, :, None, None], x, x.shape[2:], backend="numpy")


def _global_avg_backward(grad_out, x):
    return F.avg_pool2d_backward(grad_out[:, :, None, None], x, x.shape[2:], backend="numpy")


# ---------------------------------------------------------------------------------------------------------
# Did the student call pooling_lib's own pooling (or the grader's answers)?
# ---------------------------------------------------------------------------------------------------------
_POOLING_MODULES = ("functional", "naive", "numpy_tier", "cython_tier", "params", "layers")
GRADER_MODULE = "_grading_cases"  # this module: the references and known-wrong variants are answers too


def _watched_files():
    here = os.path.dirname(os.path.abspath(__file__))
    return {os.path.join(here, m + ".py"): m for m in _POOLING_MODULES + (GRADER_MODULE,)}


TORCH = "torch"  # what call_watched records for any use of PyTorch, whose pooling is an answer too


@functools.lru_cache(maxsize=None)
def _torch_dir():
    """The directory of the installed ``torch`` package (found once, without importing it), or None."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return os.path.join(locations[0], "") if locations else None


def _is_torch(fn):
    """True for a built-in function or method of PyTorch (``torch.max_pool2d``, a ``Tensor``'s ``max``)."""
    module = getattr(fn, "__module__", None) or type(getattr(fn, "__self__", None)).__module__ or ""
    return module == TORCH or module.startswith(TORCH + ".")


def call_watched(fn, args, called):
    """Return ``fn(*args)``, adding to the set ``called`` the names of the functions of pooling_lib's pooling
    modules, and of this module (the grader's own answers), that it calls from outside them, and ``"torch"``
    when it uses PyTorch in any way (a function of its Python code, or a built-in of its C code).

    A profiler is on during the call only: the grader's own calls of its references (made by ``run_check``, not
    from inside the student's function) are not watched, and a call between watched modules (the library's own
    plumbing, a reference calling pooling_lib) is not an entry point. ``called`` is filled even when ``fn``
    raises. Compiled code (a Cython kernel, the library's own ``_kernels``) calls other functions without the
    profiler seeing them: only the Python calls are watched.
    """
    files = _watched_files()
    torch_dir = _torch_dir()
    here = sys._getframe()  # in a watched file itself: what it calls directly (fn) is an entry point

    def profile(frame, event, arg):
        if event == "call":
            filename = frame.f_code.co_filename
            module = files.get(filename)
            caller = frame.f_back
            if module is not None and (caller is None or caller is here or caller.f_code.co_filename not in files):
                name = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)  # Class.method from 3.11
                called.add(f"pooling_lib.{module}.{name}")  # an entry point, not plumbing
            elif torch_dir is not None and filename.startswith(torch_dir):
                called.add(TORCH)
        elif event == "c_call" and _is_torch(arg):
            called.add(TORCH)

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        return fn(*args)
    finally:
        sys.setprofile(previous)


def forbidden_calls(ex, called):
    """The calls in ``called`` (see :func:`call_watched`) that earn exercise ``ex`` no credit, sorted: every one
    but ``ex.allowed`` when the student must write the code (``own_code``), else the grader's own functions."""
    if ex.own_code:
        return sorted(name for name in called if name not in ex.allowed)
    return sorted(name for name in called if name.startswith(f"pooling_lib.{GRADER_MODULE}."))


# ---------------------------------------------------------------------------------------------------------
# Case builders
# ---------------------------------------------------------------------------------------------------------
def _rng(seed):
    return np.random.default_rng(seed)


def _ints(rng, shape, low, high, dtype):
    """Integer-valued floats in ``[low, high)``: ties happen and every sum is exact."""
    return rng.integers(low, high, size=shape).astype(dtype)


def _normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


_F32, _F64 = np.float32, np.float64


def _forward_cases(contiguous=False):
    """Cases ``(x, kernel_size, stride, padding)`` shared by the max-pooling forward exercises."""
    rng = _rng(3)
    specs = [
        ("non-overlapping 2x2 windows, float64", _ints(rng, (1, 1, 4, 4), 0, 9, _F64), 2, 2, 0),
        ("a wide input (4 x 7), float64", _ints(rng, (1, 1, 4, 7), 0, 9, _F64), 2, 2, 0),
        ("overlapping 3x3 windows, stride 1, with ties, float64", _ints(rng, (1, 1, 5, 5), 0, 4, _F64), 3, 1, 0),
        ("padding 1 on an all-negative input, float64", _ints(rng, (1, 1, 4, 4), -9, -1, _F64), 3, 2, 1),
        ("overlapping windows with padding and ties, float32", _ints(rng, (2, 2, 5, 6), -3, 3, _F32), 3, 2, 1),
        ("stride larger than the kernel on a non-square input, float32", _ints(rng, (1, 2, 7, 5), -5, 5, _F32),
         2, 3, 1),
        ("padding 1 on an all-negative input, float32", _ints(rng, (2, 1, 6, 6), -9, -1, _F32), 2, 2, 1),
        ("odd shape (3, 2, 9, 11), kernel 3, stride 2, float64", _normal(rng, (3, 2, 9, 11), _F64), 3, 2, 0),
        ("kernel 4, stride 3, padding 2, non-square, float32", _normal(rng, (1, 2, 10, 7), _F32), 4, 3, 2),
    ]
    cases = []
    for label, x, k, s, p in specs:
        if contiguous:
            x = np.ascontiguousarray(x)
        cases.append(Case(label, (x, k, s, p)))
    return cases


def _top_heavy(rng, size):
    """A plane of distinct values whose rows decrease downwards: each window's maximum is in its top row."""
    rows = (size - 1 - np.arange(size))[:, None] * size
    return (rows + np.stack([rng.permutation(size) for _ in range(size)])).reshape(1, 1, size, size).astype(_F64)


def _backward_cases():
    """Cases ``(grad_out, x, kernel_size, stride, padding)`` for max pooling backward."""
    rng = _rng(4)
    specs = [
        ("non-overlapping 2x2 windows, no ties, float64", rng.permutation(16).reshape(1, 1, 4, 4).astype(_F64),
         2, 2, 0),
        ("non-overlapping 2x2 windows with tied maxima, float64", _ints(rng, (1, 1, 4, 4), 0, 2, _F64), 2, 2, 0),
        ("overlapping 3x3 windows, stride 1 (one cell can win several windows), float64",
         _ints(rng, (1, 1, 5, 5), 0, 5, _F64), 3, 1, 0),
        ("overlapping 3x3 windows at stride 2 on a 6x6 plane, float64", _top_heavy(rng, 6), 3, 2, 0),
        ("overlapping 2x2 windows, stride 1, with ties, float32", _ints(rng, (1, 2, 4, 5), 0, 3, _F32), 2, 1, 0),
        ("padding 1 on an all-negative input, float64", _ints(rng, (1, 1, 4, 4), -9, -1, _F64), 3, 2, 1),
        ("overlapping windows, padding and ties, float32", _ints(rng, (2, 2, 6, 5), -3, 3, _F32), 3, 2, 1),
        ("odd shape (2, 3, 7, 9), kernel 3, stride 3, padding 1, float64", _normal(rng, (2, 3, 7, 9), _F64),
         3, 3, 1),
    ]
    cases = []
    for label, x, k, s, p in specs:
        out_shape = (x.shape[0], x.shape[1], _out_len(x.shape[2], k, s, p), _out_len(x.shape[3], k, s, p))
        grad_out = _ints(rng, out_shape, 1, 10, x.dtype)  # integer-valued: every sum is exact in any order
        cases.append(Case(label, (grad_out, x, k, s, p)))
    return cases


# ---------------------------------------------------------------------------------------------------------
# Hints, worded once
# ---------------------------------------------------------------------------------------------------------
HINT_ZERO_PAD = ("you pad with zeros: on an all-negative input a border window then returns 0, a value that is "
                 "not in the input. Padding must never win: skip the padded cells (or pad with -inf for max, "
                 "+inf for min).")
HINT_ZERO_PAD_BACKWARD = ("you pad with zeros: on an all-negative input the maximum of a border window is a "
                          "padding cell, so its gradient lands in the padding and is lost. Padding must never "
                          "win: skip the padded cells (or pad with -inf).")
HINT_STRIDE_AS_SIZE = ("your windows are stride x stride: the window size is kernel_size; the stride is only "
                       "the step between one window and the next.")
HINT_KERNEL_AS_STEP = ("your windows step by kernel_size: window (i, j) starts at (i*stride - padding, "
                       "j*stride - padding); stride and kernel_size are only equal for non-overlapping windows.")
HINT_H_DIV_S = ("your output size is H // stride: the number of windows is floor((H + 2p - k) / s) + 1.")
HINT_W_FROM_H = ("your output width is computed from the height: use W for the width (this input is not "
                 "square).")
HINT_ALL_TIES = ("you send the gradient to every tied maximum of a window (a mask like window == window.max()), "
                 "so it is counted several times. Exactly one cell per window must receive it: the first maximum "
                 "in row-major order.")
HINT_ASSIGN = ("you write the gradient with = instead of +=: a cell that wins several overlapping windows must "
               "receive the sum of their gradients.")
HINT_LAST_TIE = ("on a tie you pick the last maximum (a >= comparison): PyTorch keeps the first maximum in "
                 "row-major order (replace only when strictly greater).")
HINT_LAST_TIE_MIN = ("on a tie you pick the last minimum (a <= comparison): keep the first minimum in row-major "
                     "order (replace only when strictly smaller).")
HINT_REPEAT = ("your backward treats the windows as non-overlapping k x k blocks (like expanding the pooled output "
               "and grad_out with np.repeat): that is only right when stride == kernel_size. With overlapping "
               "windows, loop over the windows and add each one's gradient to its own winner (and a mask "
               "x == upsampled output also marks every tied maximum).")
HINT_EMPTY_CROP = ("your result is empty: a crop like grad[:, :, p:-p, p:-p] selects nothing when p == 0 "
                   "(-0 is 0). Crop with grad[:, :, p:p + H, p:p + W] instead.")
HINT_FLOAT64 = ("your output is float64 for a float32 input: allocate it with the input's dtype "
                "(np.zeros(shape, dtype=x.dtype)); float32 must stay float32.")
HINT_NUMPY2 = ("NumPy 2 removed np.float (use float or np.float64) and np.lib.pad (use np.pad).")


def _heuristic_empty(case, got, expected):
    if isinstance(got, np.ndarray) and got.size == 0 and np.size(expected) > 0:
        return HINT_EMPTY_CROP
    return None


# ---------------------------------------------------------------------------------------------------------
# Chapter 1: shift tolerance
# ---------------------------------------------------------------------------------------------------------
def _shift_agreement(x, kernel_size, shift):
    a = F.max_pool2d(x, kernel_size, backend="numpy")
    b = F.max_pool2d(np.roll(x, shift, axis=-1), kernel_size, backend="numpy")
    return float(np.mean(a == b))


def _shift_cases():
    rng = _rng(1)
    specs = [
        ("8x8 image, kernel 2, shift 1, float64", _ints(rng, (1, 1, 8, 8), 0, 10, _F64), 2, 1),
        ("8x8 image, kernel 4, shift 1, float64", _ints(rng, (1, 1, 8, 8), 0, 10, _F64), 4, 1),
        ("8x8 image, kernel 4, shift 3, float64", _ints(rng, (1, 1, 8, 8), 0, 10, _F64), 4, 3),
        ("shift 0 (nothing moves), float32", _ints(rng, (1, 2, 6, 6), 0, 10, _F32), 3, 0),
        ("batch of 2 non-square 3-channel images, kernel 2, shift 2, float32",
         _ints(rng, (2, 3, 6, 10), 0, 5, _F32), 2, 2),
        ("smooth image (neighbors often equal), kernel 3, shift 1, float64",
         np.repeat(_ints(rng, (1, 1, 9, 3), 0, 4, _F64), 3, axis=-1), 3, 1),
    ]
    return [Case(label, (x, k, s)) for label, x, k, s in specs]


def _agree(a, b):
    return float(np.mean(a == b))


SHIFT_AGREEMENT = Exercise(
    name="shift_agreement",
    chapter=1,
    label="ex-ch01-shift-agreement",
    title="How much of max pooling survives a shift?",
    params=("x", "kernel_size", "shift"),
    reference=_shift_agreement,
    cases=_shift_cases,
    # float32's precision: a fraction computed in float32 (np.mean of a float32 array) is right too, and two
    # distinct fractions of these cases (at most 90 pooled values) differ by far more than 1e-6.
    result=_Float("the fraction", rtol=1e-6),
    own_code=False,  # measuring with pooling_lib's max_pool2d is the point
    variants=(
        Variant("you compared the shifted and unshifted *inputs*; compare the max-pooled outputs "
                "(kernel_size x kernel_size windows, stride kernel_size) instead.",
                lambda x, k, s: _agree(x, np.roll(x, s, axis=-1))),
        Variant("you shifted along the rows (axis -2); the exercise shifts the columns: np.roll(x, shift, axis=-1).",
                lambda x, k, s: _agree(_max_pool(x, k), _max_pool(np.roll(x, s, axis=-2), k))),
        Variant("you returned a count: divide by the number of pooled values to get a fraction in [0, 1].",
                lambda x, k, s: float(np.sum(_max_pool(x, k) == _max_pool(np.roll(x, s, axis=-1), k)))),
        Variant("you pooled with stride 1; the exercise pools with stride equal to kernel_size (the default).",
                lambda x, k, s: _agree(_max_pool(x, k, 1), _max_pool(np.roll(x, s, axis=-1), k, 1))),
        Variant("you used average pooling; the exercise is about max pooling.",
                lambda x, k, s: _agree(_avg_pool(x, k), _avg_pool(np.roll(x, s, axis=-1), k))),
        Variant("you returned the fraction that *changed*; return the fraction that stays the same.",
                lambda x, k, s: 1.0 - _shift_agreement(x, k, s)),
    ),
)


# ---------------------------------------------------------------------------------------------------------
# Chapter 2: the output size
# ---------------------------------------------------------------------------------------------------------
def _output_size(length, kernel_size, stride, padding=0, dilation=1, ceil_mode=False):
    return pool2d_output_size(length, kernel_size, stride, padding, dilation, ceil_mode)


def _output_size_cases():
    specs = [
        ("the classic example: 14 cells, kernel 3, stride 2", (14, 3, 2, 0, 1, False)),
        ("non-overlapping windows that tile exactly", (8, 2, 2, 0, 1, False)),
        ("a window that does not fit at the end is dropped", (7, 2, 2, 0, 1, False)),
        ("padding 1, kernel 3, stride 2 (ResNet's stem)", (112, 3, 2, 1, 1, False)),
        ("padding 1, kernel 3, stride 1 (same size)", (5, 3, 1, 1, 1, False)),
        ("stride larger than the kernel", (10, 2, 3, 0, 1, False)),
        ("dilation 2 (the window spans 5 cells)", (9, 3, 1, 0, 2, False)),
        ("dilation 2 with padding 1 and stride 2", (11, 3, 2, 1, 2, False)),
        ("the window is exactly the input", (4, 4, 1, 0, 1, False)),
        ("ceil_mode keeps a partial last window", (5, 2, 2, 0, 1, True)),
        ("ceil_mode when the windows tile exactly", (6, 2, 2, 0, 1, True)),
        ("ceil_mode drops a last window that would start in the right padding", (5, 3, 3, 1, 1, True)),
        ("ceil_mode with stride 2, kernel 3, padding 1", (14, 3, 2, 1, 1, True)),
    ]
    return [Case(label, args) for label, args in specs]


def _span(L, k, s, p, d):
    return L + 2 * p - d * (k - 1) - 1


def _ceil_drop_before_padding(L, k, s, p=0, d=1, c=False):
    """ceil_mode's drop rule compared with L instead of L + p: the padded axis's left padding forgotten."""
    if not c:
        return _span(L, k, s, p, d) // s + 1
    out = -(-_span(L, k, s, p, d) // s) + 1
    return out - 1 if (out - 1) * s >= L else out


OUTPUT_SIZE = Exercise(
    name="output_size",
    chapter=2,
    label="ex-ch02-output-size",
    title="The output-size formula",
    params=("length", "kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    allowed=(),  # pool2d_output_size is the answer here
    reference=_output_size,
    cases=_output_size_cases,
    result=_Int("the output size"),
    variants=(
        Variant("the division needs a floor: (14 - 3) / 2 + 1 = 6.5, and 6.5 windows is 6 windows. Use // "
                "(and, for ceil_mode, round up instead).",
                lambda L, k, s, p=0, d=1, c=False: _span(L, k, s, p, d) / s + 1),
        Variant("round() is not floor(): the count of windows rounds down. Use //.",
                lambda L, k, s, p=0, d=1, c=False: round(_span(L, k, s, p, d) / s) + 1),
        Variant("H // stride is not the number of windows: it ignores the kernel size and the padding. Use "
                "floor((L + 2p - d(k-1) - 1) / s) + 1.",
                lambda L, k, s, p=0, d=1, c=False: L // s),
        Variant("you confused the stride and the kernel size: the stride divides, the kernel size is subtracted.",
                lambda L, k, s, p=0, d=1, c=False: _output_size(L, s, k, p, d, c)),
        Variant("you left out the padding: it adds p cells on *each* side, 2p in all.",
                lambda L, k, s, p=0, d=1, c=False: _output_size(L, k, s, 0, d, c)),
        Variant("you added the padding once: it sits on both sides, so the padded length is L + 2p.",
                lambda L, k, s, p=0, d=1, c=False: (math.ceil if c else math.floor)((L + p - d * (k - 1) - 1) / s)
                + 1),
        Variant("you left out the dilation: a dilated window spans d(k - 1) + 1 cells.",
                lambda L, k, s, p=0, d=1, c=False: _output_size(L, k, s, p, 1, c)),
        Variant("you ignored ceil_mode: with ceil_mode=True the division rounds up.",
                lambda L, k, s, p=0, d=1, c=False: _output_size(L, k, s, p, d, False)),
        Variant("with ceil_mode=True the division rounds up, but a last window that would start in the right "
                "padding (at or after L + p) is dropped: it would contain no input cell.",
                lambda L, k, s, p=0, d=1, c=False: (-(-_span(L, k, s, p, d) // s) if c else _span(L, k, s, p, d)
                                                    // s) + 1),
        Variant("with ceil_mode=True you drop the last window when (out - 1) * stride >= length, but (out - 1) * "
                "stride is where that window starts on the *padded* axis, whose first p cells are the left padding: "
                "there the right padding begins at L + p. Drop the last window only when (out - 1) * stride >= "
                "length + padding.", _ceil_drop_before_padding),
        Variant("(L - k) / s + 1 is the formula without padding or dilation; use the full "
                "floor((L + 2p - d(k-1) - 1) / s) + 1.",
                lambda L, k, s, p=0, d=1, c=False: (L - k) // s + 1),
    ),
)


# ---------------------------------------------------------------------------------------------------------
# Chapter 3: max pooling forward, min pooling
# ---------------------------------------------------------------------------------------------------------
def _max_forward_ref(x, k, s, p):
    return F.max_pool2d(x, k, s, p, backend="numpy")


def _forward_variants(minimum=False, zero_hint=HINT_ZERO_PAD):
    """Wrong forwards: each returns what a loop with that mistake would return."""

    def v(**kw):
        return lambda x, k, s, p: _extremum(x, k, s, p, minimum=minimum, **kw)[0]

    return (
        Variant(zero_hint, v(zero_pad=True)),
        Variant(HINT_STRIDE_AS_SIZE, lambda x, k, s, p: _extremum(x, k, s, p, minimum=minimum, size=s)[0]),
        Variant(HINT_KERNEL_AS_STEP, lambda x, k, s, p: _extremum(x, k, s, p, minimum=minimum, step=k)[0]),
        Variant(HINT_H_DIV_S, v(output_size="H//s")),
        Variant(HINT_W_FROM_H, v(output_size="from_height")),
        Variant("you ignore the padding: the windows start at i*stride - padding, and the output size counts "
                "2*padding extra cells.",
                lambda x, k, s, p: _extremum(x, k, s, 0, minimum=minimum)[0]),
    )


MAX_POOL_FORWARD = Exercise(
    name="max_pool_forward",
    chapter=3,
    label="ex-ch03-max-pool-forward",
    title="Max pooling with loops, padding that never wins",
    params=("x", "kernel_size", "stride", "padding"),
    reference=_max_forward_ref,
    cases=_forward_cases,
    result=_Array("the output"),
    variants=_forward_variants()
    + (Variant("you computed the minimum; max pooling keeps the maximum.",
               lambda x, k, s, p: _min_pool(x, k, s, p)),),
)


def _min_forward_ref(x, k, s, p):
    return F.min_pool2d(x, k, s, p, return_indices=True, backend="numpy")


def _min_cases():
    rng = _rng(5)
    specs = [
        ("non-overlapping 2x2 windows, float64", _ints(rng, (1, 1, 4, 4), 0, 9, _F64), 2, 2, 0),
        ("non-overlapping 2x2 windows with tied minima, float64", _ints(rng, (1, 1, 4, 4), 0, 2, _F64), 2, 2, 0),
        ("padding 1 on an all-positive input, float64", _ints(rng, (1, 1, 4, 4), 1, 9, _F64), 3, 2, 1),
        ("overlapping windows with padding and ties, float32", _ints(rng, (2, 2, 5, 6), 0, 3, _F32), 3, 2, 1),
        ("stride larger than the kernel on a non-square input, float32", _ints(rng, (1, 2, 7, 5), -5, 5, _F32),
         2, 3, 1),
        ("odd shape (2, 3, 9, 7), kernel 3, stride 2, float64", _normal(rng, (2, 3, 9, 7), _F64), 3, 2, 0),
    ]
    return [Case(label, (x, k, s, p)) for label, x, k, s, p in specs]


def _min_variant(**kw):
    def fn(x, k, s, p):
        out, winners, _ = _extremum(x, k, s, p, minimum=True, **kw)
        return out, _indices(x, winners, out.shape)

    return fn


def _min_padded_frame(x, k, s, p):
    out, winners, _ = _extremum(x, k, s, p, minimum=True)
    return out, _indices(x, winners, out.shape, frame="padded", p=p)


def _min_window_frame(x, k, s, p):
    out, winners, _ = _extremum(x, k, s, p, minimum=True)
    return out, _window_indices(x, winners, out.shape, k, s, p)


MIN_POOL_FORWARD = Exercise(
    name="min_pool_forward",
    chapter=3,
    label="ex-ch03-min-pool-forward",
    title="Min pooling and the index of each winner",
    params=("x", "kernel_size", "stride", "padding"),
    reference=_min_forward_ref,
    cases=_min_cases,
    result=_Tuple(_Array("out"), _Array("indices")),
    variants=(
        Variant("you pad with zeros: on an all-positive input a border window then returns 0, a value that is "
                "not in the input. Padding must never win: skip the padded cells (or pad with +inf for min).",
                _min_variant(zero_pad=True)),
        Variant(HINT_LAST_TIE_MIN, _min_variant(last_tie=True)),
        Variant("your indices count in the padded plane: give each winner's flat position h * W + w in the "
                "unpadded H x W input.", _min_padded_frame),
        Variant("your indices are positions inside each window: give each winner's flat position h * W + w in "
                "the whole (unpadded) H x W input, as return_indices does.", _min_window_frame),
        Variant("you computed the maximum; min pooling keeps the minimum.",
                lambda x, k, s, p: _max_pool(x, k, s, p, return_indices=True)),
        Variant(HINT_STRIDE_AS_SIZE, lambda x, k, s, p: _min_variant(size=s)(x, k, s, p)),
        Variant(HINT_KERNEL_AS_STEP, lambda x, k, s, p: _min_variant(step=k)(x, k, s, p)),
    ),
)


# ---------------------------------------------------------------------------------------------------------
# Chapter 4: max pooling backward
# ---------------------------------------------------------------------------------------------------------
def _max_backward_ref(grad_out, x, k, s, p):
    return F.max_pool2d_backward(grad_out, x, k, s, p, backend="numpy")


def _max_backward_variant(mode="add", minimum=False, **kw):
    def fn(grad_out, x, k, s, p):
        _, winners, ties = _extremum(x, k, s, p, minimum=minimum, **kw)
        return _route(x, grad_out, winners, ties, mode)

    return fn


def _repeat_backward(grad_out, x, k, s, p):
    """The np.repeat backward: upsample the pooled output and grad_out by k and mask the cells equal to their
    block's value. Like the student's code, it raises ValueError when the upsampled shape is not x's."""
    y = F.max_pool2d(x, k, s, p, backend="numpy")
    y_up = np.repeat(np.repeat(y, k, axis=2), k, axis=3)
    g_up = np.repeat(np.repeat(grad_out, k, axis=2), k, axis=3)
    return ((x == y_up) * g_up).astype(x.dtype)


HINT_BROADCAST = ("the shapes do not fit: expanding the pooled arrays with np.repeat gives out_h * kernel_size "
                  "rows, which is H only when stride == kernel_size and there is no padding. Loop over the "
                  "windows instead and add each window's gradient to its own cells.")


def _broadcast_hint(exc):
    if isinstance(exc, ValueError) and "broadcast" in str(exc):
        return HINT_BROADCAST
    return None


def _empty_crop(ref):
    def fn(*args):
        out = ref(*args)
        p = args[-1] if not isinstance(args[-1], (bool, np.bool_)) else args[-2]
        return out[:, :, :0, :0] if p == 0 else out

    return fn


def _gradient_sum_heuristic(case, got, expected):
    hint = _heuristic_empty(case, got, expected)
    if hint:
        return hint
    grad_out = case.args[0]
    if isinstance(got, np.ndarray) and got.shape == expected.shape:
        total, want = float(np.sum(_as64(got))), float(np.sum(_as64(grad_out)))
        if total > want:
            return (f"your gradient sums to {total:g} but grad_out sums to {want:g}: some window's gradient is "
                    "counted more than once (every tied maximum? several cells per window?). Each window passes "
                    "its gradient to exactly one input cell.")
        if total < want:
            return (f"your gradient sums to {total:g} but grad_out sums to {want:g}: some gradient is lost "
                    "(overwritten with = instead of +=? sent to a padding cell?). Each window passes its whole "
                    "gradient to one input cell.")
    return None


MAX_POOL_BACKWARD = Exercise(
    name="max_pool_backward",
    chapter=4,
    label="ex-ch04-max-pool-backward",
    title="Max pooling backward with ties and overlapping windows",
    params=("grad_out", "x", "kernel_size", "stride", "padding"),
    reference=_max_backward_ref,
    cases=_backward_cases,
    result=_Array("grad_x"),
    variants=(
        Variant(HINT_ALL_TIES, _max_backward_variant("ties")),
        Variant(HINT_ASSIGN, _max_backward_variant("assign")),
        Variant(HINT_LAST_TIE, _max_backward_variant(last_tie=True)),
        Variant(HINT_ZERO_PAD_BACKWARD, _max_backward_variant(zero_pad=True)),
        Variant(HINT_REPEAT, _repeat_backward),
        Variant(HINT_EMPTY_CROP, _empty_crop(_max_backward_ref)),
        Variant(HINT_STRIDE_AS_SIZE, lambda g, x, k, s, p: _max_backward_variant(size=s)(g, x, k, s, p)),
        Variant(HINT_KERNEL_AS_STEP, lambda g, x, k, s, p: _max_backward_variant(step=k)(g, x, k, s, p)),
        Variant("you return the gradient of the padded input: crop the padding off, so that grad_x has the "
                "shape of x.",
                lambda g, x, k, s, p: np.pad(_max_backward_ref(g, x, k, s, p), ((0, 0), (0, 0), (p, p), (p, p)))),
    ),
    heuristics=_gradient_sum_heuristic,
    exception_hint=_broadcast_hint,
)


# ---------------------------------------------------------------------------------------------------------
# Chapter 5: average pooling backward
# ---------------------------------------------------------------------------------------------------------
def _avg_backward_ref(grad_out, x, k, s, p, count_include_pad):
    return F.avg_pool2d_backward(grad_out, x, k, s, p, count_include_pad=count_include_pad, backend="numpy")


def _avg_backward_loops(grad_out, x, k, s, p, count_include_pad, *, divisor="right", mode="add", step=None):
    N, C, H, W = x.shape
    grad = np.zeros(x.shape, dtype=x.dtype)
    for n, c, i, j, taps in _windows(x, k, s, p, step=step):
        real = [(h, w) for h, w in taps if 0 <= h < H and 0 <= w < W]
        if divisor == "right":
            d = len(taps) if count_include_pad else len(real)
        elif divisor == "kk":
            d = k * k
        elif divisor == "real":
            d = len(real)
        elif divisor == "k":
            d = k
        else:
            d = 1
        share = grad_out[n, c, i, j] / x.dtype.type(d)
        for h, w in real:
            if mode == "add":
                grad[n, c, h, w] += share
            else:
                grad[n, c, h, w] = share
    return grad


def _avg_negative_start(grad_out, x, k, s, p, count_include_pad):
    """The slice written with the window's start as it is: a window cut by the padding starts at a negative
    index, from which a slice counts from the end (x[-1:2] is empty), so such a window's gradient is lost."""
    N, C, H, W = x.shape
    grad = np.zeros(x.shape, dtype=x.dtype)
    for n, c, i, j, taps in _windows(x, k, s, p):
        real = [(h, w) for h, w in taps if 0 <= h < H and 0 <= w < W]
        share = grad_out[n, c, i, j] / x.dtype.type(len(taps) if count_include_pad else len(real))
        top, left = i * s - p, j * s - p
        grad[n, c, top:top + k, left:left + k] += share
    return grad


HINT_NEGATIVE_START = ("a window cut by the padding starts at a negative index (top = i*stride - padding), and a "
                       "slice from a negative start counts from the end of the array: x[-1:2] is empty, so that "
                       "window's cells are missed. Clip the start to 0: rows max(top, 0) to "
                       "min(top + kernel_size, H), and the same for the columns.")


def _avg_variant(**kw):
    return lambda g, x, k, s, p, cip: _avg_backward_loops(g, x, k, s, p, cip, **kw)


def _avg_cases():
    rng = _rng(6)
    specs = [
        ("non-overlapping 2x2 windows, no padding, float64", (1, 1, 4, 4), _F64, 2, 2, 0, False),
        ("padding 1, count_include_pad=False (border windows hold fewer real cells), float64",
         (1, 1, 4, 4), _F64, 3, 2, 1, False),
        ("padding 1, count_include_pad=True (padding counts in the divisor), float64",
         (1, 1, 4, 4), _F64, 3, 2, 1, True),
        ("overlapping 3x3 windows, stride 1, float64", (1, 1, 5, 5), _F64, 3, 1, 0, False),
        ("overlapping 3x3 windows at stride 2 on a 6x6 plane, float64", (1, 1, 6, 6), _F64, 3, 2, 0, True),
        ("overlapping windows with padding, count_include_pad=False, float32", (2, 2, 5, 6), _F32, 3, 2, 1, False),
        ("kernel 2, stride 2, padding 1, count_include_pad=False, non-square, float32",
         (1, 2, 5, 4), _F32, 2, 2, 1, False),
        ("odd shape (2, 3, 7, 9), kernel 3, stride 2, padding 1, count_include_pad=True, float32",
         (2, 3, 7, 9), _F32, 3, 2, 1, True),
    ]
    cases = []
    for label, shape, dtype, k, s, p, cip in specs:
        x = _normal(rng, shape, dtype)
        out_shape = shape[:2] + (_out_len(shape[2], k, s, p), _out_len(shape[3], k, s, p))
        grad_out = _ints(rng, out_shape, -6, 7, dtype)
        cases.append(Case(label, (grad_out, x, k, s, p, cip)))
    return cases


AVG_POOL_BACKWARD = Exercise(
    name="avg_pool_backward",
    chapter=5,
    label="ex-ch05-avg-pool-backward",
    title="Average pooling backward, with and without counting the padding",
    params=("grad_out", "x", "kernel_size", "stride", "padding", "count_include_pad"),
    reference=_avg_backward_ref,
    cases=_avg_cases,
    result=_Array("grad_x", exact=False),
    variants=(
        Variant("you always divide by kernel_size * kernel_size: with count_include_pad=False a border window "
                "averages only its real cells, so divide by their number.", _avg_variant(divisor="kk")),
        Variant("with count_include_pad=True the divisor counts the padded cells too (k * k for a window "
                "inside the padded input); you divided by the real cells only.", _avg_variant(divisor="real")),
        Variant(HINT_ASSIGN.replace("wins several overlapping windows", "belongs to several overlapping windows"),
                _avg_variant(mode="assign")),
        Variant("you forgot to divide: each of a window's cells receives grad_out / divisor.",
                _avg_variant(divisor="none")),
        Variant("you divided by kernel_size; the window has kernel_size * kernel_size cells.",
                _avg_variant(divisor="k")),
        Variant(HINT_REPEAT.split(" (and a mask")[0] + ".", lambda g, x, k, s, p, cip: np.broadcast_to(
            np.repeat(np.repeat(g / x.dtype.type(k * k), k, axis=2), k, axis=3), x.shape).astype(x.dtype)),
        Variant(HINT_EMPTY_CROP, _empty_crop(_avg_backward_ref)),
        Variant(HINT_NEGATIVE_START, _avg_negative_start),
    ),
    heuristics=_heuristic_empty,
    exception_hint=_broadcast_hint,
)


# ---------------------------------------------------------------------------------------------------------
# Chapter 6: global max pooling backward, adaptive average pooling
# ---------------------------------------------------------------------------------------------------------
def _global_max_backward_ref(grad_out, x):
    return _global_max_backward(grad_out, x)


def _global_variant(mode="add", last_tie=False):
    def fn(grad_out, x):
        N, C = x.shape[:2]
        grad = np.zeros(x.shape, dtype=x.dtype)
        for n in range(N):
            for c in range(C):
                plane = x[n, c]
                best = plane.max()
                hits = list(zip(*np.nonzero(plane == best)))
                for h, w in (hits if mode == "ties" else [hits[-1] if last_tie else hits[0]]):
                    grad[n, c, h, w] += grad_out[n, c]
        return grad

    return fn


def _global_cases():
    rng = _rng(7)
    specs = [
        ("one plane, one clear maximum, float64", _normal(rng, (1, 1, 3, 3), _F64)),
        ("tied maxima in each plane, float64", _ints(rng, (1, 2, 3, 4), 0, 3, _F64)),
        ("all-negative input with ties, float32", _ints(rng, (2, 2, 4, 3), -5, -1, _F32)),
        ("batch of 3, 4 channels, odd non-square planes, float32", _ints(rng, (3, 4, 5, 7), -9, 9, _F32)),
        ("1 x 1 planes, float64", _normal(rng, (2, 3, 1, 1), _F64)),
    ]
    cases = []
    for label, x in specs:
        grad_out = _ints(rng, x.shape[:2], 1, 10, x.dtype)
        cases.append(Case(label, (grad_out, x)))
    return cases


def _global_heuristic(case, got, expected):
    grad_out, x = case.args
    if isinstance(got, np.ndarray) and got.shape == grad_out.shape:
        return ("your function returns an (N, C) array, the shape of the *forward* output: did you define the "
                "backward under the forward's name, or return the pooled maxima? The backward returns an array "
                "of x's shape.")
    return _gradient_sum_heuristic(case, got, expected)


GLOBAL_MAX_POOL_BACKWARD = Exercise(
    name="global_max_pool_backward",
    chapter=6,
    label="ex-ch06-global-max-backward",
    title="Global max pooling backward",
    params=("grad_out", "x"),
    reference=_global_max_backward_ref,
    cases=_global_cases,
    result=_Array("grad_x"),
    variants=(
        Variant("you return the global maximum of each plane, the *forward* result (shape (N, C)): the backward "
                "must return the gradient with x's shape. (A classic slip: defining the backward under the "
                "forward's name, so one silently replaces the other.)", lambda g, x: _global_max(x)),
        Variant(HINT_ALL_TIES, _global_variant("ties")),
        Variant(HINT_LAST_TIE, _global_variant(last_tie=True)),
        Variant("you spread grad_out / (H * W) over the whole plane: that is global *average* pooling's backward. "
                "For the maximum, the plane's first maximum alone receives grad_out.",
                lambda g, x: _global_avg_backward(g, x)),
        Variant("you copied grad_out to every cell of the plane: only the plane's first maximum receives it.",
                lambda g, x: np.broadcast_to(g[:, :, None, None], x.shape).astype(x.dtype)),
    ),
    heuristics=_global_heuristic,
)


def _adaptive_bounds(length, out):
    """PyTorch's adaptive windows along one axis: ``[floor(i L / out), ceil((i + 1) L / out))``."""
    return [((i * length) // out, -(-((i + 1) * length) // out)) for i in range(out)]


def _adaptive_avg(x, output_size, *, bounds=_adaptive_bounds, dtype=None):
    x = np.asarray(x)
    oh, ow = (output_size, output_size) if isinstance(output_size, numbers.Integral) else tuple(output_size)
    N, C, H, W = x.shape
    out = np.empty((N, C, oh, ow), dtype=dtype or x.dtype)
    rows, cols = bounds(H, oh), bounds(W, ow)
    for i, (h0, h1) in enumerate(rows):
        for j, (w0, w1) in enumerate(cols):
            window = x[:, :, h0:h1, w0:w1]
            count = max((h1 - h0) * (w1 - w0), 1)
            out[:, :, i, j] = window.sum(axis=(2, 3), dtype=x.dtype) / x.dtype.type(count)
    return out


def adaptive_avg_pool2d_reference(x, output_size):
    """Adaptive average pooling exactly as ``torch.nn.functional.adaptive_avg_pool2d`` (up to rounding).

    Output cell ``(i, j)`` averages rows ``floor(i H / out_h)`` up to (not including) ``ceil((i + 1) H / out_h)``
    and the same for columns. float32 stays float32.
    """
    return _adaptive_avg(x, output_size)


def _adaptive_floor_end(length, out):
    return [((i * length) // out, ((i + 1) * length) // out) for i in range(out)]


def _adaptive_uniform(length, out):
    k = max(length // out, 1)
    return [(i * k, i * k + k) for i in range(out)]


def _adaptive_cases():
    rng = _rng(8)
    specs = [
        ("6x6 to 3x3 (the same as 2x2 average pooling), float64", (1, 1, 6, 6), _F64, 3),
        ("5x5 to 3x3 (windows of 2, 3 and 2 cells; neighbors share one cell), float64", (1, 1, 5, 5), _F64, 3),
        ("7x5 to (3, 2), non-square, float64", (2, 2, 7, 5), _F64, (3, 2)),
        ("4x4 to 1 (global average pooling), float32", (1, 3, 4, 4), _F32, 1),
        ("10x7 to (4, 3), float32", (1, 3, 10, 7), _F32, (4, 3)),
        ("3x3 to (5, 4): more outputs than inputs, float64", (1, 1, 3, 3), _F64, (5, 4)),
    ]
    return [Case(label, (_ints(rng, shape, -9, 10, dtype), out)) for label, shape, dtype, out in specs]


ADAPTIVE_AVG_POOL2D = Exercise(
    name="adaptive_avg_pool2d",
    chapter=6,
    label="ex-ch06-adaptive-avg",
    title="Adaptive average pooling",
    params=("x", "output_size"),
    reference=adaptive_avg_pool2d_reference,
    cases=_adaptive_cases,
    result=_Array("the output", exact=False),
    variants=(
        Variant("your windows end at floor((i + 1) * H / out): round the end *up*, ceil((i + 1) * H / out), so "
                "that windows cover every row and may overlap by one.",
                lambda x, o: _adaptive_avg(x, o, bounds=_adaptive_floor_end)),
        Variant("you use equal windows of H // out cells at a stride of H // out: that is ordinary average "
                "pooling and only right when out divides H. Window i runs from floor(i H / out) to "
                "ceil((i + 1) H / out).", lambda x, o: _adaptive_avg(x, o, bounds=_adaptive_uniform)),
    ),
)


# ---------------------------------------------------------------------------------------------------------
# Chapter 7: vectorized max pooling
# ---------------------------------------------------------------------------------------------------------
def _library_dirs():
    """Directories whose code is not the student's: the Python installation, NumPy and pooling_lib."""
    dirs = {os.path.dirname(os.__file__), os.path.dirname(np.__file__), os.path.dirname(os.path.abspath(__file__)),
            sys.prefix, sys.base_prefix, sys.exec_prefix}
    return tuple(sorted(d for d in dirs if d))


def count_python_lines(fn, *args):
    """Number of Python lines executed in the caller's own code (not NumPy's, the standard library's or
    pooling_lib's) while ``fn(*args)`` runs. A loop over the data makes this grow with the input size."""
    skip = _library_dirs()
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return local

    def on_call(frame, event, arg):
        name = frame.f_code.co_filename
        if name.startswith(skip) or name.startswith("<frozen"):
            return None
        return local

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        fn(*args)
    finally:
        sys.settrace(previous)
    return count


# The vectorization check: the lines of the student's Python run for a small base input, then for inputs grown
# along one axis at a time. A Python loop over that axis (N, C, H or W, or the output rows or columns; a for loop,
# a comprehension, or map or np.vectorize over a function of the student's) runs at least one line per step, and
# a 16 times larger axis gives it at least 15 more steps (60 more output rows or columns for H or W); a vectorized
# function runs the same lines whatever the size (its loops, over the k x k taps, do not depend on the input),
# give or take a few lines of size-dependent branches: LINE_SLACK.
VECTORIZED_BASE = (1, 1, 8, 8)
VECTORIZED_GROWTH = 16
LINE_SLACK = 8
_AXES = (("N", "the images (N)"), ("C", "the channels (C)"), ("H", "the rows (H)"), ("W", "the columns (W)"))


def _shape_text(shape):
    return " x ".join(str(n) for n in shape)


def _vectorized_extra(fn, watched):
    rng = _rng(9)
    n_base = count_python_lines(watched, rng.standard_normal(VECTORIZED_BASE), 3, 2, 1)
    for axis, (letter, words) in enumerate(_AXES):
        shape = list(VECTORIZED_BASE)
        shape[axis] *= VECTORIZED_GROWTH
        n_grown = count_python_lines(watched, rng.standard_normal(shape), 3, 2, 1)
        if n_grown > n_base + LINE_SLACK:
            return (f"it is not vectorized: it ran {n_base} lines of your Python for a {_shape_text(VECTORIZED_BASE)} "
                    f"input and {n_grown} for a {_shape_text(shape)} one ({letter} {VECTORIZED_GROWTH} times larger), "
                    f"so it loops in Python over {words}, or over the windows along that axis.",
                    "loop only over the kernel_size x kernel_size taps of the window: for tap (a, b) the strided "
                    "slice xp[:, :, a:a + stride*(out_h - 1) + 1:stride, b:b + stride*(out_w - 1) + 1:stride] holds "
                    "that tap of every window at once; keep a running np.maximum over the taps.")
    return None


MAX_POOL_VECTORIZED = Exercise(
    name="max_pool_vectorized",
    chapter=7,
    label="ex-ch07-vectorized-max",
    title="Max pooling without a loop over the data",
    params=("x", "kernel_size", "stride", "padding"),
    reference=_max_forward_ref,
    cases=_forward_cases,
    result=_Array("the output"),
    variants=_forward_variants(),
    extra=_vectorized_extra,
)


# ---------------------------------------------------------------------------------------------------------
# Chapter 8: a Cython max pooling kernel
# ---------------------------------------------------------------------------------------------------------
SPEED_FACTOR = 10.0  # the kernel may be at most this many times slower than pooling_lib's NumPy tier


def _best_time(fn, args, repeat=3, budget=2.0):
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        if elapsed > budget:
            break
    return best


def _speed_extra(fn, watched):
    x = _rng(10).standard_normal((4, 16, 64, 64))
    args = (x, 3, 2, 1)
    watched(*args)  # warm up, watching for pooling_lib calls; the timed calls are not watched
    student = _best_time(fn, args)
    numpy_tier = _best_time(lambda *a: F.max_pool2d(*a, backend="numpy"), args, repeat=5)
    if student > SPEED_FACTOR * numpy_tier:
        return (f"the kernel is correct but slow: on a 4x16x64x64 input it is {student / numpy_tier:.0f} times "
                f"slower than pooling_lib's NumPy version (the limit is {SPEED_FACTOR:.0f}).",
                "keep Python out of the loop body: typed memoryviews and cdef Py_ssize_t loop variables, a "
                "C loop over the taps, no np.max / np.argmax / slicing per window, no Python objects "
                "(run %%cython -a to see the yellow lines).")
    if not is_compiled_with_cython(fn):
        return (f"it is a plain Python function ({type(fn).__name__}), not one compiled by Cython.",
                "write the kernel in the %%cython cell, as a def function with typed arguments.")
    return None


def is_compiled_with_cython(fn):
    """True for a function compiled by Cython (``cython_function_or_method``, ``fused_cython_function``)."""
    return any("cython" in kind.__name__ for kind in type(fn).__mro__)


MAX_POOL_CYTHON = Exercise(
    name="max_pool_cython",
    chapter=8,
    label="ex-ch08-cython-max",
    title="A Cython max pooling kernel",
    params=("x", "kernel_size", "stride", "padding"),
    reference=_max_forward_ref,
    cases=lambda: _forward_cases(contiguous=True),
    result=_Array("the output"),
    variants=_forward_variants(),
    extra=_speed_extra,
)


# ---------------------------------------------------------------------------------------------------------
# Chapter 9: the memory-traffic bound
# ---------------------------------------------------------------------------------------------------------
def _memory_bound(shape, kernel_size, stride, padding, itemsize, bandwidth_gb_s, *, out_len=_out_len,
                  reads=1, writes=1, gb=1e9, use_itemsize=True):
    N, C, H, W = shape
    out_h, out_w = out_len(H, kernel_size, stride, padding), out_len(W, kernel_size, stride, padding)
    size = itemsize if use_itemsize else 1
    moved = size * (reads * N * C * H * W + writes * N * C * out_h * out_w)
    return moved, moved / (bandwidth_gb_s * gb)


def _memory_no_reuse(shape, k, s, p, itemsize, bw):
    N, C, H, W = shape
    outputs = N * C * _out_len(H, k, s, p) * _out_len(W, k, s, p)
    moved = itemsize * (outputs * k * k + outputs)
    return moved, moved / (bw * 1e9)


def _memory_cases():
    specs = [
        ("a ResNet stem: (32, 64, 112, 112) float32, kernel 3, stride 2, padding 1, 100 GB/s",
         ((32, 64, 112, 112), 3, 2, 1, 4, 100.0)),
        ("the same in float64", ((32, 64, 112, 112), 3, 2, 1, 8, 100.0)),
        ("(8, 16, 64, 64) float32, kernel 2, stride 2, 25 GB/s", ((8, 16, 64, 64), 2, 2, 0, 4, 25.0)),
        ("(1, 3, 16, 12) float64, kernel 3, stride 2, no padding (7 x 5 windows), 10 GB/s",
         ((1, 3, 16, 12), 3, 2, 0, 8, 10.0)),
        ("(4, 8, 30, 20) float32, kernel 3, stride 1, padding 1 (output as large as the input), 50 GB/s",
         ((4, 8, 30, 20), 3, 1, 1, 4, 50.0)),
    ]
    return [Case(label, args) for label, args in specs]


def _memory_heuristic(case, got, expected):
    if isinstance(got, (tuple, list)) and len(got) == 2:
        moved, seconds = got
        want_moved, want_seconds = expected
        if isinstance(moved, numbers.Real) and moved == want_moved and isinstance(seconds, numbers.Real) \
                and seconds:
            ratio = float(seconds) / want_seconds
            if math.isclose(ratio, 1e3, rel_tol=1e-6):
                return "your time is in milliseconds; return seconds."
            if math.isclose(ratio, 1e9, rel_tol=1e-6):
                return "you divided by the bandwidth in GB/s without converting: 1 GB/s is 1e9 bytes per second."
            if math.isclose(ratio, 1 / 8, rel_tol=1e-6):
                return "you divided by bits per second: the bandwidth is in gigabytes (1e9 bytes) per second."
    return None


MEMORY_BOUND = Exercise(
    name="memory_bound",
    chapter=9,
    label="ex-ch09-memory-bound",
    title="The memory-traffic bound of a pooling pass",
    params=("shape", "kernel_size", "stride", "padding", "itemsize", "bandwidth_gb_s"),
    reference=_memory_bound,
    cases=_memory_cases,
    result=_Tuple(_Float("bytes_moved", rtol=0.0), _Float("seconds", rtol=1e-9)),
    own_code=False,  # pool2d_output_size is a fair tool here
    variants=(
        Variant("you counted only the bytes read: the pass also writes its output, N*C*H_out*W_out values.",
                lambda *a: _memory_bound(*a, writes=0)),
        Variant("you counted only the bytes written: the pass must also read its whole input once.",
                lambda *a: _memory_bound(*a, reads=0)),
        Variant("you counted kernel_size * kernel_size reads per output: the bound assumes each input value "
                "comes from memory once (the caches serve the overlapping windows), so reads are N*C*H*W values.",
                _memory_no_reuse),
        Variant("a GB here is 1e9 bytes (memory bandwidth is quoted in decimal units), not 2**30.",
                lambda *a: _memory_bound(*a, gb=2.0 ** 30)),
        Variant("you counted values, not bytes: multiply by itemsize (4 for float32, 8 for float64).",
                lambda *a: _memory_bound(*a, use_itemsize=False)),
        Variant("the output size needs the floor formula floor((H + 2p - k) / s) + 1, not H // stride.",
                lambda *a: _memory_bound(*a, out_len=lambda L, k, s, p: L // s)),
        Variant("you left out the padding in the output size: floor((H + 2p - k) / s) + 1.",
                lambda *a: _memory_bound(*a, out_len=lambda L, k, s, p: (L - k) // s + 1)),
    ),
    heuristics=_memory_heuristic,
)


EXERCISES = {
    ex.name: ex
    for ex in (
        SHIFT_AGREEMENT,
        OUTPUT_SIZE,
        MAX_POOL_FORWARD,
        MIN_POOL_FORWARD,
        MAX_POOL_BACKWARD,
        AVG_POOL_BACKWARD,
        GLOBAL_MAX_POOL_BACKWARD,
        ADAPTIVE_AVG_POOL2D,
        MAX_POOL_VECTORIZED,
        MAX_POOL_CYTHON,
        MEMORY_BOUND,
    )
}
