"""Tests of pooling_lib.grading, in process (no kernel): the checks pass the book's solutions, report a stub as
"not implemented yet", never raise, and catch each mistake of the seed documents with the matching hint.

The wrong implementations below are written the way a student would write them, independently of the
known-wrong variants inside the grader, so a diagnosis that only matched its own variant would fail here.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
import pytest

import pooling_lib
from pooling_lib import grading
from _helpers import import_torch
from pooling_lib import _grading_cases as cases
from pooling_lib.grading import EXERCISES, run_check

ROOT = Path(__file__).resolve().parent.parent
EXERCISE_DIR = ROOT / "book" / "exercises"
CHECK_CELL = re.compile(r"^\s*check_\w+\(\w+\)\s*$")


def _solutions():
    """Every Python solution function of the book's exercise notebooks, by exercise name (the %%cython cell is
    skipped: compiling it is the notebook tests' job)."""
    namespace = {}
    for path in sorted(EXERCISE_DIR.glob("ex[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] != "code" or source.lstrip().startswith("%%") or CHECK_CELL.match(source):
                continue
            code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("%"))
            exec(compile(code, str(path), "exec"), namespace)
    return {name: namespace[name] for name in EXERCISES if name in namespace}


SOLUTIONS = _solutions()
PYTHON_EXERCISES = [name for name in EXERCISES if name != "max_pool_cython"]


def _hint(result):
    return result.message.split("hint: ", 1)[1] if "hint: " in result.message else ""


# ---------------------------------------------------------------------------------------------------------
# The right answers pass
# ---------------------------------------------------------------------------------------------------------
def test_the_homework_has_the_exercises_the_issue_asks_for():
    assert len(EXERCISES) >= 8
    assert {ex.chapter for ex in EXERCISES.values()} == set(range(1, 10))
    for name in ("output_size", "max_pool_backward", "avg_pool_backward", "global_max_pool_backward",
                 "min_pool_forward", "adaptive_avg_pool2d", "max_pool_vectorized", "max_pool_cython"):
        assert name in EXERCISES
    assert sorted(SOLUTIONS) == sorted(PYTHON_EXERCISES)


@pytest.mark.parametrize("name", PYTHON_EXERCISES)
def test_the_books_solution_passes(name):
    result = run_check(name, SOLUTIONS[name])
    assert result.passed, str(result)
    assert result.score == result.points == 1.0
    assert result.cases_passed == result.cases_total >= 5
    assert result.message == ""


def test_the_cython_check_wants_a_fast_compiled_kernel():
    # The vectorized solution is correct and about as fast as pooling_lib's NumPy tier: it passes the speed limit
    # (so the limit is reachable), and only then fails because it is not compiled, with no credit: a compiled
    # kernel is the exercise. The compiled solution passing is checked by executing the exercise notebook (nbval
    # and the grading command).
    result = grading.check_max_pool_cython(SOLUTIONS["max_pool_vectorized"])
    assert result.status == "failed" and result.score == 0.0
    assert result.message.startswith("Every case gives the right answer, but")
    assert "not one compiled by Cython" in result.message and "earns no credit" in result.message
    assert cases.is_compiled_with_cython(np.add.reduce) is False


# ---------------------------------------------------------------------------------------------------------
# Stubs, exceptions, junk: reported, never raised
# ---------------------------------------------------------------------------------------------------------
def _stub(*args):
    raise NotImplementedError()


@pytest.mark.parametrize("name", list(EXERCISES))
def test_a_stub_is_not_implemented_yet(name):
    result = getattr(grading, f"check_{name}")(_stub)
    assert result.status == grading.NOT_IMPLEMENTED
    assert not result.passed and not result
    assert result.score == 0.0
    assert "NOT IMPLEMENTED YET" in str(result)
    assert "Traceback" not in str(result)


def test_an_exception_is_reported_in_words_with_the_line():
    def output_size(length, kernel_size, stride, padding=0, dilation=1, ceil_mode=False):
        return length // (stride - stride)

    result = grading.check_output_size(output_size)
    assert result.status == "failed" and result.score == 0.0
    assert "ZeroDivisionError" in result.message
    assert "length // (stride - stride)" in result.message  # the offending line of the student's code
    assert "Traceback" not in result.message


def test_a_non_function_is_reported():
    result = grading.check_output_size(42)
    assert result.status == "failed"
    assert "output_size itself" in result.message


def test_a_wrong_answer_gets_partial_credit_and_a_readable_report():
    def output_size(length, kernel_size, stride, padding=0, dilation=1, ceil_mode=False):
        return (length + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1  # ignores ceil_mode

    result = grading.check_output_size(output_size)
    assert result.status == "failed"
    assert 0 < result.score < 1
    assert result.cases_passed == 12 and result.cases_total == 14  # 11 of 13 cases, and the no-pooling_lib rule
    assert "First failing case (10 of 13): ceil_mode keeps a partial last window" in result.message
    assert "expected:\n  3\ngot:\n  2" in result.message
    assert "ceil_mode" in _hint(result)
    html = result._repr_html_()
    assert "FAILED" in html and "<pre" in html


def test_the_html_report_escapes_the_message():
    result = grading.CheckResult("x", "failed", 0.0, 1.0, "a < b & c", 0, 1)
    assert "a &lt; b &amp; c" in result._repr_html_()


def test_reports_are_deterministic():
    def wrong(grad_out, x, kernel_size, stride, padding):
        return np.zeros_like(x)

    first, second = grading.check_max_pool_backward(wrong), grading.check_max_pool_backward(wrong)
    assert str(first) == str(second)


def test_modifying_the_input_in_place_fails():
    def max_pool_vectorized(x, kernel_size, stride, padding):
        out = SOLUTIONS["max_pool_vectorized"](x, kernel_size, stride, padding)
        x[...] = 0
        return out

    result = grading.check_max_pool_vectorized(max_pool_vectorized)
    assert result.status == "failed"
    assert "modified its input arrays in place" in result.message


def test_calling_pooling_lib_is_not_writing_it():
    result = grading.check_max_pool_forward(lambda x, k, s, p: pooling_lib.max_pool2d(x, k, s, p))
    assert result.status == "failed" and result.score == 0.0  # every answer right, but no credit
    assert "pooling_lib.functional.max_pool2d" in result.message
    result = grading.check_output_size(pooling_lib.pool2d_output_size)
    assert result.status == "failed" and "pool2d_output_size" in result.message


def test_the_rule_against_calling_pooling_lib_counts_when_answers_are_wrong():
    # index.md: each case is a check, and so is the rule against calling pooling_lib once a case passes
    def max_pool_backward(grad_out, x, kernel_size, stride, padding):  # = instead of +=
        grad = np.zeros_like(x)
        xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=-np.inf)
        for n in range(grad_out.shape[0]):
            for c in range(grad_out.shape[1]):
                for i in range(grad_out.shape[2]):
                    for j in range(grad_out.shape[3]):
                        window = xp[n, c, i * stride:i * stride + kernel_size, j * stride:j * stride + kernel_size]
                        a, b = divmod(int(np.argmax(window)), window.shape[1])
                        grad[n, c, i * stride + a - padding, j * stride + b - padding] = grad_out[n, c, i, j]
        return grad

    result = grading.check_max_pool_backward(max_pool_backward)
    ex = cases.EXERCISES["max_pool_backward"]
    battery = ex.cases()
    right = sum(ex.result.compare(max_pool_backward(*c.args), cases._max_backward_ref(*c.args)) is None
                for c in battery)
    assert 0 < right < len(battery)
    assert result.cases_passed == right + 1 and result.cases_total == len(battery) + 1
    assert result.score == round(result.cases_passed / result.cases_total, 2)
    assert "hint: you write the gradient with = instead of +=" in result.message


def test_no_credit_reports_the_checks_that_passed():
    result = grading.check_max_pool_vectorized(SOLUTIONS["max_pool_forward"])  # right answers, but loops
    n_cases = len(cases.EXERCISES["max_pool_vectorized"].cases())
    assert result.score == 0.0 and result.cases_passed == n_cases + 1 and result.cases_total == n_cases + 2
    assert result.headline().startswith(f"max_pool_vectorized: FAILED ({n_cases + 1} of {n_cases + 2} checks "
                                        "passed, but no credit), score 0/1")
    result = grading.check_max_pool_forward(lambda x, k, s, p: pooling_lib.max_pool2d(x, k, s, p))
    n_cases = len(cases.EXERCISES["max_pool_forward"].cases())
    assert result.score == 0.0 and result.cases_passed == n_cases and result.cases_total == n_cases + 1
    assert "but no credit" in result.headline()


def test_a_check_that_runs_too_long_is_stopped():
    def output_size(length, kernel_size, stride, padding=0, dilation=1, ceil_mode=False):
        while True:
            pass

    result = grading._check_in_time("output_size", output_size, 0.5)
    assert result.status == "failed" and result.score == 0.0
    assert "did not finish within 0.5 s" in result.message


def test_a_check_in_time_leaves_the_callers_timer_and_handler_as_they_were():
    import signal

    def handler(signum, frame):
        raise AssertionError("the outer timer fired during the test")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 100.0)
    try:
        assert grading._check_in_time("max_pool_forward", SOLUTIONS["max_pool_forward"], 30).passed
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 90.0 < left < 100.0 and signal.getsignal(signal.SIGALRM) is handler
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_check_in_time_gives_the_check_result():
    right = grading._check_in_time("max_pool_forward", SOLUTIONS["max_pool_forward"], 60)
    assert right.passed, str(right)
    wrong = grading._check_in_time("max_pool_forward", lambda x, k, s, p: np.zeros(1), 60)
    assert str(wrong) == str(grading.check_max_pool_forward(lambda x, k, s, p: np.zeros(1)))


def test_a_correct_loop_is_not_vectorized():
    # ex03's loops submitted for ex07: every answer is right, but the loop over the data is what ex07 forbids, so
    # it earns nothing (not 10 checks of 11)
    result = grading.check_max_pool_vectorized(SOLUTIONS["max_pool_forward"])  # loops over the windows
    assert result.status == "failed" and result.score == 0.0
    assert "not vectorized" in result.message and "loops in Python over the rows (H)" in result.message
    assert "earns no credit" in result.message


# ---------------------------------------------------------------------------------------------------------
# The seed documents' mistakes, written as a student would, each caught with its hint
# ---------------------------------------------------------------------------------------------------------
def _out(length, k, s, p):
    return (length + 2 * p - k) // s + 1


def max_forward_zero_padding(x, kernel_size, stride, padding):
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))  # zeros: the mistake
    N, C, H, W = x.shape
    out = np.zeros((N, C, _out(H, kernel_size, stride, padding), _out(W, kernel_size, stride, padding)), x.dtype)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            window = xp[:, :, i * stride:i * stride + kernel_size, j * stride:j * stride + kernel_size]
            out[:, :, i, j] = window.max(axis=(2, 3))
    return out


def vectorized_zero_padding(x, kernel_size, stride, padding):
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=0)
    N, C, H, W = x.shape
    oh, ow = _out(H, kernel_size, stride, padding), _out(W, kernel_size, stride, padding)
    out = np.full((N, C, oh, ow), -np.inf, dtype=x.dtype)
    for a in range(kernel_size):
        for b in range(kernel_size):
            out = np.maximum(out, xp[:, :, a:a + stride * (oh - 1) + 1:stride, b:b + stride * (ow - 1) + 1:stride])
    return out


def min_forward_zero_padding(x, kernel_size, stride, padding):
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    N, C, H, W = x.shape
    oh, ow = _out(H, kernel_size, stride, padding), _out(W, kernel_size, stride, padding)
    out, idx = np.zeros((N, C, oh, ow), x.dtype), np.zeros((N, C, oh, ow), np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(oh):
                for j in range(ow):
                    window = xp[n, c, i * stride:i * stride + kernel_size, j * stride:j * stride + kernel_size]
                    a, b = np.unravel_index(np.argmin(window), window.shape)
                    out[n, c, i, j] = window[a, b]
                    idx[n, c, i, j] = (i * stride + a - padding) * W + (j * stride + b - padding)
    return out, idx


def max_backward_zero_padding(grad_out, x, kernel_size, stride, padding):
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    grad_p = np.zeros_like(xp)
    N, C, oh, ow = grad_out.shape
    for n in range(N):
        for c in range(C):
            for i in range(oh):
                for j in range(ow):
                    window = xp[n, c, i * stride:i * stride + kernel_size, j * stride:j * stride + kernel_size]
                    a, b = np.unravel_index(np.argmax(window), window.shape)
                    grad_p[n, c, i * stride + a, j * stride + b] += grad_out[n, c, i, j]
    H, W = x.shape[2:]
    return grad_p[:, :, padding:padding + H, padding:padding + W]


def max_backward_crop_bug(grad_out, x, kernel_size, stride, padding):
    p = padding
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    grad_p = np.zeros_like(xp)
    N, C, oh, ow = grad_out.shape
    for n in range(N):
        for c in range(C):
            for i in range(oh):
                for j in range(ow):
                    window = xp[n, c, i * stride:i * stride + kernel_size, j * stride:j * stride + kernel_size]
                    a, b = np.unravel_index(np.argmax(window), window.shape)
                    grad_p[n, c, i * stride + a, j * stride + b] += grad_out[n, c, i, j]
    return grad_p[:, :, p:-p, p:-p]  # empty when p == 0: the mistake


def avg_backward_crop_bug(grad_out, x, kernel_size, stride, padding, count_include_pad):
    p, k = padding, kernel_size
    grad_p = np.zeros((x.shape[0], x.shape[1], x.shape[2] + 2 * p, x.shape[3] + 2 * p), x.dtype)
    H, W = x.shape[2:]
    for i in range(grad_out.shape[2]):
        for j in range(grad_out.shape[3]):
            rows = min(i * stride + k, H + p) - max(i * stride, p)
            cols = min(j * stride + k, W + p) - max(j * stride, p)
            divisor = k * k if count_include_pad else rows * cols
            grad_p[:, :, i * stride:i * stride + k, j * stride:j * stride + k] += \
                (grad_out[:, :, i, j] / divisor)[:, :, None, None]
    return grad_p[:, :, p:-p, p:-p]


def avg_backward_always_kk(grad_out, x, kernel_size, stride, padding, count_include_pad):
    grad = SOLUTIONS["avg_pool_backward"](grad_out, x, kernel_size, stride, padding, True)
    return grad  # divides by k*k whatever count_include_pad says


def global_backward_named_like_forward(grad_out, x):
    # The seed defines the backward under the forward's name; the name then holds the forward only.
    return x.max(axis=(2, 3))


def cython_slow_per_window(x, kernel_size, stride, padding):
    N, C, H, W = x.shape
    oh, ow = _out(H, kernel_size, stride, padding), _out(W, kernel_size, stride, padding)
    out = np.empty((N, C, oh, ow), dtype=x.dtype)
    for n in np.arange(N):
        for c in np.arange(C):
            for i in np.arange(oh):
                for j in np.arange(ow):
                    top, left = max(i * stride - padding, 0), max(j * stride - padding, 0)
                    window = x[n, c, top:i * stride - padding + kernel_size, left:j * stride - padding + kernel_size]
                    out[n, c, i, j] = np.max(window)  # a Python call per window: the mistake
    return out


def forward_with_np_lib_pad(x, kernel_size, stride, padding):
    xp = np.lib.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), "constant")
    return xp


def forward_with_np_float(x, kernel_size, stride, padding):
    return np.zeros(x.shape, dtype=np.float)


def forward_stride_as_window(x, kernel_size, stride, padding):
    # The NHWC classes sliced windows with the stride instead of the kernel size.
    H, W = x.shape[2:]
    oh, ow = _out(H, kernel_size, stride, padding), _out(W, kernel_size, stride, padding)
    out = np.empty(x.shape[:2] + (oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            top, left = i * stride - padding, j * stride - padding
            out[:, :, i, j] = x[:, :, max(top, 0):top + stride, max(left, 0):left + stride].max(axis=(2, 3))
    return out


def forward_width_from_height(x, kernel_size, stride, padding):
    H, W = x.shape[2:]
    oh = ow = _out(H, kernel_size, stride, padding)  # the width checked against the height
    out = np.empty(x.shape[:2] + (oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            top, left = i * stride - padding, j * stride - padding
            out[:, :, i, j] = x[:, :, max(top, 0):top + kernel_size, max(left, 0):left + kernel_size].max(axis=(2, 3))
    return out


def forward_h_div_stride(x, kernel_size, stride, padding):
    H, W = x.shape[2:]
    oh, ow = H // stride, W // stride
    out = np.empty(x.shape[:2] + (oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            top, left = i * stride - padding, j * stride - padding
            out[:, :, i, j] = x[:, :, max(top, 0):top + kernel_size, max(left, 0):left + kernel_size].max(axis=(2, 3))
    return out


def output_size_h_div_stride(length, kernel_size, stride, padding=0, dilation=1, ceil_mode=False):
    return length // stride


def output_size_no_floor(length, kernel_size, stride, padding=0, dilation=1, ceil_mode=False):
    return (length - kernel_size) / stride + 1  # the seed's formula, with true division


def max_backward_np_repeat(grad_out, x, kernel_size, stride, padding):
    y = SOLUTIONS["max_pool_forward"](x, kernel_size, stride, padding)
    k = kernel_size
    y_up = np.repeat(np.repeat(y, k, axis=2), k, axis=3)
    g_up = np.repeat(np.repeat(grad_out, k, axis=2), k, axis=3)
    return (x == y_up) * g_up


def max_backward_mask(grad_out, x, kernel_size, stride, padding):
    grad = np.zeros_like(x)
    H, W = x.shape[2:]
    for i in range(grad_out.shape[2]):
        for j in range(grad_out.shape[3]):
            top, left = max(i * stride - padding, 0), max(j * stride - padding, 0)
            bottom, right = min(i * stride - padding + kernel_size, H), min(j * stride - padding + kernel_size, W)
            window = x[:, :, top:bottom, left:right]
            mask = window == window.max(axis=(2, 3), keepdims=True)  # every tied maximum: the mistake
            grad[:, :, top:bottom, left:right] += mask * grad_out[:, :, i, j][:, :, None, None]
    return grad


def max_backward_assign(grad_out, x, kernel_size, stride, padding):
    grad = np.zeros_like(x)
    N, C, H, W = x.shape
    for n in range(N):
        for c in range(C):
            for i in range(grad_out.shape[2]):
                for j in range(grad_out.shape[3]):
                    top, left = max(i * stride - padding, 0), max(j * stride - padding, 0)
                    window = x[n, c, top:i * stride - padding + kernel_size, left:j * stride - padding + kernel_size]
                    a, b = np.unravel_index(np.argmax(window), window.shape)
                    grad[n, c, top + a, left + b] = grad_out[n, c, i, j]  # = instead of +=
    return grad


def global_backward_mask(grad_out, x):
    mask = x == x.max(axis=(2, 3), keepdims=True)
    return mask * grad_out[:, :, None, None]


def float64_everywhere(solution):
    return lambda *args: (lambda r: tuple(np.asarray(v, np.float64) if v.dtype.kind == "f" else v for v in r)
                          if isinstance(r, tuple) else r.astype(np.float64))(solution(*args))


SEED_MISTAKES = [
    # padding with zeros: on an all-negative input the padding wins
    ("max_pool_forward", max_forward_zero_padding, cases.HINT_ZERO_PAD),
    ("max_pool_vectorized", vectorized_zero_padding, cases.HINT_ZERO_PAD),
    ("max_pool_cython", max_forward_zero_padding, cases.HINT_ZERO_PAD),
    ("min_pool_forward", min_forward_zero_padding, "on an all-positive input a border window then returns 0"),
    ("max_pool_backward", max_backward_zero_padding, cases.HINT_ZERO_PAD_BACKWARD),
    # the crop z[:, :, p:-p, p:-p] is empty when p == 0
    ("max_pool_backward", max_backward_crop_bug, cases.HINT_EMPTY_CROP),
    ("avg_pool_backward", avg_backward_crop_bug, cases.HINT_EMPTY_CROP),
    # the global max backward defined under the forward's name
    ("global_max_pool_backward", global_backward_named_like_forward, "the backward under the forward's name"),
    # np.lib.pad and np.float are gone in NumPy 2
    ("max_pool_forward", forward_with_np_lib_pad, cases.HINT_NUMPY2),
    ("max_pool_vectorized", forward_with_np_float, cases.HINT_NUMPY2),
    # the NHWC classes: stride as window size, width from height, H // stride, np.repeat
    ("max_pool_forward", forward_stride_as_window, cases.HINT_STRIDE_AS_SIZE),
    ("max_pool_forward", forward_width_from_height, cases.HINT_W_FROM_H),
    ("max_pool_forward", forward_h_div_stride, cases.HINT_H_DIV_S),
    ("output_size", output_size_h_div_stride, "H // stride is not the number of windows"),
    ("max_pool_backward", max_backward_np_repeat, cases.HINT_REPEAT),
    # the mask-based backward sends the gradient to every tied maximum
    ("max_pool_backward", max_backward_mask, cases.HINT_ALL_TIES),
    ("global_max_pool_backward", global_backward_mask, cases.HINT_ALL_TIES),
    # (H - k) / s + 1 needs a floor
    ("output_size", output_size_no_floor, "the division needs a floor"),
    # average pooling always divides by k*k
    ("avg_pool_backward", avg_backward_always_kk, "you always divide by kernel_size * kernel_size"),
    # = instead of += with overlapping windows
    ("max_pool_backward", max_backward_assign, cases.HINT_ASSIGN),
]


@pytest.mark.parametrize("name, wrong, hint", SEED_MISTAKES,
                         ids=[f"{n}-{w.__name__}" for n, w, _ in SEED_MISTAKES])
def test_a_seed_mistake_is_caught_with_its_hint(name, wrong, hint):
    result = run_check(name, wrong)
    assert result.status == "failed", str(result)
    assert hint in _hint(result), str(result)
    assert "First failing case" in result.message


@pytest.mark.parametrize("name", ["max_pool_forward", "min_pool_forward", "max_pool_backward", "avg_pool_backward",
                                  "global_max_pool_backward", "adaptive_avg_pool2d", "max_pool_vectorized"])
def test_float64_output_for_float32_input_is_named(name):
    result = run_check(name, float64_everywhere(SOLUTIONS[name]))
    assert result.status == "failed"
    assert _hint(result) == cases.HINT_FLOAT64, str(result)
    assert "the values are right, but" in result.message


def test_a_cython_kernel_with_python_calls_per_window_is_too_slow():
    result = grading.check_max_pool_cython(cython_slow_per_window)
    assert result.status == "failed" and result.score == 0.0  # every answer right; the speed check fails
    assert "correct but slow" in result.message and "np.max" in _hint(result)


def min_pool_computes_max(x, kernel_size, stride, padding):
    out, indices = SOLUTIONS["min_pool_forward"](-x, kernel_size, stride, padding)
    return -out, indices  # the maximum and its first index


def adaptive_floor_end(x, output_size):
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    N, C, H, W = x.shape
    out = np.empty((N, C, out_h, out_w), x.dtype)
    for i in range(out_h):
        for j in range(out_w):
            window = x[:, :, i * H // out_h:(i + 1) * H // out_h, j * W // out_w:(j + 1) * W // out_w]
            out[:, :, i, j] = window.mean(axis=(2, 3))  # the end rounded down
    return out


def memory_bound_gibibytes(shape, kernel_size, stride, padding, itemsize, bandwidth_gb_s):
    moved = SOLUTIONS["memory_bound"](shape, kernel_size, stride, padding, itemsize, bandwidth_gb_s)[0]
    return moved, moved / (bandwidth_gb_s * 2 ** 30)


def memory_bound_milliseconds(shape, kernel_size, stride, padding, itemsize, bandwidth_gb_s):
    moved = SOLUTIONS["memory_bound"](shape, kernel_size, stride, padding, itemsize, bandwidth_gb_s)[0]
    return moved, 1e3 * moved / (bandwidth_gb_s * 1e9)


def shift_compares_inputs(x, kernel_size, shift):
    return float(np.mean(x == np.roll(x, shift, axis=-1)))


OTHER_MISTAKES = [
    ("min_pool_forward", min_pool_computes_max, "you computed the maximum"),
    ("adaptive_avg_pool2d", adaptive_floor_end, "round the end *up*"),
    ("memory_bound", memory_bound_gibibytes, "not 2**30"),
    ("memory_bound", memory_bound_milliseconds, "milliseconds"),
    ("shift_agreement", shift_compares_inputs, "compared the shifted"),
]


@pytest.mark.filterwarnings("ignore:Mean of empty slice")
@pytest.mark.parametrize("name, wrong, hint", OTHER_MISTAKES,
                         ids=[f"{n}-{w.__name__}" for n, w, _ in OTHER_MISTAKES])
def test_other_mistakes_are_caught(name, wrong, hint):
    result = run_check(name, wrong)
    assert result.status == "failed"
    assert hint in _hint(result), str(result)


# ---------------------------------------------------------------------------------------------------------
# The adaptive reference (pooling_lib has no adaptive pooling) agrees with PyTorch
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, output_size", [((2, 3, 6, 6), 3), ((1, 2, 5, 5), 3), ((2, 2, 7, 5), (3, 2)),
                                                ((1, 1, 3, 3), (5, 4)), ((1, 3, 10, 7), (4, 3)), ((1, 1, 4, 4), 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_adaptive_reference_matches_pytorch(shape, output_size, dtype):
    torch = import_torch()
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    ours = cases.adaptive_avg_pool2d_reference(x, output_size)
    theirs = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), output_size).numpy()
    assert ours.dtype == x.dtype and ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------
# Reading notebooks, importing without Jupyter
# ---------------------------------------------------------------------------------------------------------
def test_the_exercises_of_a_notebook_are_found_three_ways():
    by_metadata = {"metadata": {"pooling_homework": {"exercises": ["memory_bound"]}}, "cells": []}
    assert grading.notebook_exercises(by_metadata, "anything.ipynb") == ["memory_bound"]
    by_call = {"metadata": {}, "cells": [{"cell_type": "code", "source": "check_output_size(output_size)"}]}
    assert grading.notebook_exercises(by_call, "submission.ipynb") == ["output_size"]
    by_name = {"metadata": {}, "cells": []}
    assert grading.notebook_exercises(by_name, "alice_ex06_global_pooling.ipynb") == \
        ["global_max_pool_backward", "adaptive_avg_pool2d"]
    assert grading.notebook_exercises(by_name, "notes.ipynb") == []


def test_pooling_lib_and_the_checks_import_without_jupyter():
    code = ("import sys\n"
            "for name in ('nbclient', 'nbformat', 'IPython', 'jupyter_client'):\n"
            "    sys.modules[name] = None\n"
            "import pooling_lib, pooling_lib.grading as g\n"
            "r = g.check_output_size(lambda L, k, s, p=0, d=1, c=False: (L + 2*p - d*(k-1) - 1) // s + 1)\n"
            "print(r.status)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "failed"  # right values, but ceil_mode ignored: the check itself ran


# ---------------------------------------------------------------------------------------------------------
# No credit for pooling_lib's answers, in any case; the output-size helper is allowed
# ---------------------------------------------------------------------------------------------------------
def _sol(name):
    return SOLUTIONS[name]


# pooling_lib where the padding is not 0, the student's own code where it is: the battery's first case has no
# padding, so only a check that watches every case sees the library.
LIBRARY_SOMETIMES = {
    "max_pool_forward": lambda x, k, s, p: pooling_lib.max_pool2d(x, k, s, p) if p else _sol("max_pool_forward")(
        x, k, s, p),
    "min_pool_forward": lambda x, k, s, p: pooling_lib.min_pool2d(x, k, s, p, return_indices=True) if p else
    _sol("min_pool_forward")(x, k, s, p),
    "max_pool_backward": lambda g, x, k, s, p: pooling_lib.max_pool2d_backward(g, x, k, s, p) if p else
    _sol("max_pool_backward")(g, x, k, s, p),
    "avg_pool_backward": lambda g, x, k, s, p, cip: pooling_lib.avg_pool2d_backward(
        g, x, k, s, p, count_include_pad=cip) if p else _sol("avg_pool_backward")(g, x, k, s, p, cip),
    "max_pool_vectorized": lambda x, k, s, p: pooling_lib.max_pool2d(x, k, s, p) if p else
    _sol("max_pool_vectorized")(x, k, s, p),
}


@pytest.mark.parametrize("name", list(LIBRARY_SOMETIMES))
def test_calling_pooling_lib_in_some_cases_only_earns_nothing(name):
    assert EXERCISES[name].cases()[0].args[-1 if name != "avg_pool_backward" else -2] == 0  # the first: no padding
    result = run_check(name, LIBRARY_SOMETIMES[name])
    assert result.status == "failed" and result.score == 0.0, str(result)
    assert "calls pooling_lib's own code (pooling_lib.functional." in result.message
    assert "earns no credit" in result.message


def test_pytorch_is_not_writing_it_either():
    torch = import_torch()

    def max_pool_forward(x, kernel_size, stride, padding):  # PyTorch's pooling, a Python function of torch
        return torch.nn.functional.max_pool2d(torch.from_numpy(x), kernel_size, stride, padding).numpy()

    def max_pool_backward(grad_out, x, kernel_size, stride, padding):  # PyTorch's autograd
        t = torch.from_numpy(x.copy()).requires_grad_()
        torch.nn.functional.max_pool2d(t, kernel_size, stride, padding).backward(torch.from_numpy(grad_out))
        return t.grad.numpy()

    def global_max_pool_backward(grad_out, x):  # only built-in methods of a tensor: no Python code of torch runs
        t = torch.from_numpy(x)
        flat = t.flatten(2).argmax(2).numpy()
        grad = np.zeros(x.shape, x.dtype)
        n, c = np.indices(flat.shape)
        grad.reshape(x.shape[0], x.shape[1], -1)[n, c, flat] = grad_out
        return grad

    for name, fn in (("max_pool_forward", max_pool_forward), ("max_pool_backward", max_pool_backward),
                     ("global_max_pool_backward", global_max_pool_backward)):
        result = run_check(name, fn)
        assert result.status == "failed" and result.score == 0.0, str(result)
        assert "calls PyTorch (torch), so it earns no credit" in result.message, str(result)
    result = run_check("max_pool_forward", max_pool_forward)
    assert result.message.startswith("Every case gives the right answer, but your function calls PyTorch")


def test_pytorch_is_fine_where_pooling_lib_is():
    torch = import_torch()

    def memory_bound(shape, kernel_size, stride, padding, itemsize, bandwidth_gb_s):
        n_out = torch.tensor(pooling_lib.pool2d_output_size(shape[2:], kernel_size, stride, padding)).prod().item()
        moved = itemsize * shape[0] * shape[1] * (shape[2] * shape[3] + n_out)
        return moved, moved / (bandwidth_gb_s * 1e9)

    result = grading.check_memory_bound(memory_bound)
    assert result.passed, str(result)


def test_calling_pooling_lib_with_some_wrong_answers_earns_nothing():
    # float64 for every input: the float64 cases pass, the float32 ones fail; the answers are still pooling_lib's
    result = grading.check_max_pool_forward(lambda x, k, s, p: pooling_lib.max_pool2d(x, k, s, p).astype(np.float64))
    assert result.status == "failed" and result.score == 0.0
    assert result.message.startswith("Your function calls pooling_lib's own code (pooling_lib.functional.max_pool2d)")


def test_calling_pooling_lib_for_the_large_inputs_of_the_vectorization_check_earns_nothing():
    def max_pool_vectorized(x, kernel_size, stride, padding):
        if x.shape[0] >= 16:  # larger than any case of the battery
            return pooling_lib.max_pool2d(x, kernel_size, stride, padding)
        return SOLUTIONS["max_pool_vectorized"](x, kernel_size, stride, padding)

    result = grading.check_max_pool_vectorized(max_pool_vectorized)
    assert result.status == "failed" and result.score == 0.0
    assert "pooling_lib.functional.max_pool2d" in result.message


def _loop_with_output_size(x, kernel_size, stride, padding):
    out_h, out_w = pooling_lib.pool2d_output_size(x.shape[2:], kernel_size, stride, padding)
    out = _sol("max_pool_forward")(x, kernel_size, stride, padding)
    assert out.shape[2:] == (out_h, out_w)
    return out


def _vectorized_with_geometry(x, kernel_size, stride, padding):
    from pooling_lib.params import pool_geometry

    assert pool_geometry(x, kernel_size, stride, padding).out_shape[2:] == \
        pooling_lib.pool2d_output_size(x.shape[2:], kernel_size, stride, padding)
    return _sol("max_pool_vectorized")(x, kernel_size, stride, padding)


def _backward_with_output_size(grad_out, x, kernel_size, stride, padding):
    assert pooling_lib.pool2d_output_size(x.shape[2:], kernel_size, stride, padding) == grad_out.shape[2:]
    return _sol("max_pool_backward")(grad_out, x, kernel_size, stride, padding)


def _avg_backward_with_output_size(grad_out, x, kernel_size, stride, padding, count_include_pad):
    assert pooling_lib.pool2d_output_size(x.shape[2:], kernel_size, stride, padding) == grad_out.shape[2:]
    return _sol("avg_pool_backward")(grad_out, x, kernel_size, stride, padding, count_include_pad)


@pytest.mark.parametrize("name, fn", [("max_pool_forward", _loop_with_output_size),
                                      ("max_pool_vectorized", _vectorized_with_geometry),
                                      ("max_pool_backward", _backward_with_output_size),
                                      ("avg_pool_backward", _avg_backward_with_output_size)])
def test_the_output_size_helper_is_allowed(name, fn):
    result = run_check(name, fn)
    assert result.passed, str(result)
    assert result.score == 1.0


def test_the_output_size_helper_is_the_answer_of_the_output_size_exercise():
    def output_size(length, kernel_size, stride, padding=0, dilation=1, ceil_mode=False):
        return pooling_lib.pool2d_output_size(length, kernel_size, stride, padding, dilation, ceil_mode)

    result = grading.check_output_size(output_size)
    assert result.status == "failed" and result.score == 0.0
    assert "pooling_lib.params.pool2d_output_size" in result.message
    assert "output-size helpers" not in result.message


def test_the_rest_of_params_is_not_allowed():
    from pooling_lib.params import avg_divisors, pool_geometry

    def avg_pool_backward(grad_out, x, kernel_size, stride, padding, count_include_pad):
        divisors = avg_divisors(pool_geometry(x, kernel_size, stride, padding), count_include_pad)  # ex05's point
        grad_x = np.zeros_like(x)
        for i in range(grad_out.shape[2]):
            for j in range(grad_out.shape[3]):
                top, left = i * stride - padding, j * stride - padding
                rows = slice(max(top, 0), min(top + kernel_size, x.shape[2]))
                cols = slice(max(left, 0), min(left + kernel_size, x.shape[3]))
                grad_x[:, :, rows, cols] += (grad_out[:, :, i, j] / divisors[i, j])[:, :, None, None]
        return grad_x

    result = grading.check_avg_pool_backward(avg_pool_backward)
    assert result.status == "failed" and result.score == 0.0
    assert "(pooling_lib.params.avg_divisors)" in result.message  # pool_geometry is allowed, avg_divisors not
    assert "output-size helpers (pool2d_output_size, pool_geometry) may be called" in result.message


# ---------------------------------------------------------------------------------------------------------
# The grader's own answers are not the student's
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(EXERCISES))
def test_the_graders_reference_earns_nothing(name):
    result = run_check(name, EXERCISES[name].reference)
    assert result.status == "failed" and result.score == 0.0, str(result)
    assert "calls the grader's own code (pooling_lib._grading_cases." in result.message


@pytest.mark.parametrize("name, fn", [
    ("max_pool_forward", lambda x, k, s, p: cases._extremum(x, k, s, p)[0]),
    ("avg_pool_backward", cases._avg_backward_loops),
    ("adaptive_avg_pool2d", cases.adaptive_avg_pool2d_reference),
    ("max_pool_backward", lambda g, x, k, s, p: cases._max_backward_variant()(g, x, k, s, p)),
    ("memory_bound", lambda *args: cases._memory_bound(*args)),  # pooling_lib is fine here, the grader is not
])
def test_the_graders_private_loops_earn_nothing(name, fn):
    result = run_check(name, fn)
    assert result.status == "failed" and result.score == 0.0, str(result)
    assert "pooling_lib._grading_cases." in result.message


# ---------------------------------------------------------------------------------------------------------
# No Python loop over any one of N, C, H, W
# ---------------------------------------------------------------------------------------------------------
def _padded(x, k, s, p):
    """The -inf-padded input and an empty output, for the half-vectorised answers below."""
    N, C, H, W = x.shape
    out_h, out_w = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    return xp, np.empty((N, C, out_h, out_w), dtype=x.dtype)


def vectorized_but_a_loop_over_rows(x, kernel_size, stride, padding):
    k, s, p = kernel_size, stride, padding
    xp, out = _padded(x, k, s, p)
    out_h, out_w = out.shape[2:]
    for i in range(out_h):  # the output rows, one line each
        out[:, :, i, :] = sliding_window_view(xp[:, :, i * s:i * s + k, :], k, axis=3)[:, :, :, ::s][
            :, :, :, :out_w].max(axis=(2, 4))
    return out


def vectorized_but_a_loop_over_planes(x, kernel_size, stride, padding):
    k, s, p = kernel_size, stride, padding
    xp, out = _padded(x, k, s, p)
    N, C, out_h, out_w = out.shape
    for n in range(N):
        for c in range(C):
            out[n, c] = sliding_window_view(xp[n, c], (k, k))[::s, ::s][:out_h, :out_w].max(axis=(2, 3))
    return out


def vectorized_but_a_loop_over_channels(x, kernel_size, stride, padding):
    return np.stack([SOLUTIONS["max_pool_vectorized"](x[:, c:c + 1], kernel_size, stride, padding)[:, 0]
                     for c in range(x.shape[1])], axis=1)


def vectorized_without_any_loop(x, kernel_size, stride, padding):
    k, s, p = kernel_size, stride, padding
    H, W = x.shape[2:]
    out_h, out_w = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    return sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s][:, :, :out_h, :out_w].max(axis=(4, 5))


def vectorized_with_taps_and_branches(x, kernel_size, stride, padding):
    N, C, H, W = x.shape
    if N * C == 1:  # a size-dependent branch or two is not a loop over the data
        x = x.copy()
    out_h = (H + 2 * padding - kernel_size) // stride + 1
    out_w = (W + 2 * padding - kernel_size) // stride + 1
    if H != W:
        pass
    xp = np.full((N, C, H + 2 * padding, W + 2 * padding), -np.inf, dtype=x.dtype)
    xp[:, :, padding:padding + H, padding:padding + W] = x
    out = None
    for a in range(kernel_size):  # the k x k taps: allowed
        for b in range(kernel_size):
            rows = slice(a, a + stride * (out_h - 1) + 1, stride)
            cols = slice(b, b + stride * (out_w - 1) + 1, stride)
            tap = xp[:, :, rows, cols]
            out = tap.copy() if out is None else np.maximum(out, tap)
    return out


@pytest.mark.parametrize("fn, axis", [(vectorized_but_a_loop_over_rows, "the rows (H)"),
                                      (vectorized_but_a_loop_over_planes, "the images (N)"),
                                      (vectorized_but_a_loop_over_channels, "the channels (C)")])
def test_a_loop_over_one_axis_is_not_vectorized(fn, axis):
    result = grading.check_max_pool_vectorized(fn)
    assert result.status == "failed" and result.score == 0.0, str(result)
    assert result.message.startswith("Every case gives the right answer, but it is not vectorized")
    assert f"loops in Python over {axis}" in result.message


@pytest.mark.parametrize("fn", [vectorized_without_any_loop, vectorized_with_taps_and_branches])
def test_a_vectorized_function_passes(fn):
    result = grading.check_max_pool_vectorized(fn)
    assert result.passed, str(result)


# ---------------------------------------------------------------------------------------------------------
# NotImplementedError for some cases only; float32 fractions; the ceil_mode drop rule; case labels; file names
# ---------------------------------------------------------------------------------------------------------
def test_not_implemented_for_some_cases_is_a_partial_failure():
    def output_size(length, kernel_size, stride, padding=0, dilation=1, ceil_mode=False):
        if ceil_mode:
            raise NotImplementedError("ceil_mode not supported")
        return (length + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1

    result = grading.check_output_size(output_size)
    assert result.status == "failed"
    assert result.cases_passed == 10 and result.cases_total == 14 and 0 < result.score < 1  # 9 cases + the rule
    assert "First failing case (10 of 13): ceil_mode keeps a partial last window" in result.message
    assert "it raised NotImplementedError: ceil_mode not supported" in result.message
    assert "raises NotImplementedError for this case" in _hint(result)


def test_a_float32_fraction_is_right():
    def shift_agreement32(x, kernel_size, shift):
        a = pooling_lib.max_pool2d(x, kernel_size)
        b = pooling_lib.max_pool2d(np.roll(x, shift, axis=-1), kernel_size)
        return np.mean((a == b).astype(np.float32))  # np.float32(0.43333334) for 13/30

    assert isinstance(shift_agreement32(*EXERCISES["shift_agreement"].cases()[4].args), np.float32)
    assert grading.check_shift_agreement(shift_agreement32).passed
    wrong = grading.check_shift_agreement(lambda x, k, s: np.float32(shift_agreement32(x, k, s) + 1 / 90))
    assert wrong.status == "failed" and "the fraction is wrong" in wrong.message


def output_size_ceil_drop_without_padding(length, kernel_size, stride, padding=0, dilation=1, ceil_mode=False):
    span = length + 2 * padding - dilation * (kernel_size - 1) - 1
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= length:  # the padding forgotten: the right padding begins at length + padding
        out -= 1
    return out


def test_the_ceil_mode_drop_rule_without_the_padding_is_named():
    result = grading.check_output_size(output_size_ceil_drop_without_padding)
    assert result.status == "failed"
    assert "ignored ceil_mode" not in _hint(result)
    assert "(out - 1) * stride >= length + padding" in _hint(result), str(result)


def test_the_adaptive_labels_describe_their_windows():
    label = next(c.label for c in EXERCISES["adaptive_avg_pool2d"].cases() if c.label.startswith("5x5 to 3x3"))
    assert cases._adaptive_bounds(5, 3) == [(0, 2), (1, 4), (3, 5)]
    assert "windows of 2, 3 and 2 cells" in label and "overlap by one" not in label


def test_the_file_name_counts_only_when_nothing_else_names_an_exercise():
    by_call = {"metadata": {}, "cells": [{"cell_type": "code", "source": "check_output_size(output_size)"}]}
    assert grading.notebook_exercises(by_call, "ex09_memory.ipynb") == ["output_size"]
    by_metadata = {"metadata": {"pooling_homework": {"exercises": ["output_size"]}}, "cells": []}
    assert grading.notebook_exercises(by_metadata, "bob_ex06.ipynb") == ["output_size"]
    nothing = {"metadata": {}, "cells": []}
    assert grading.notebook_exercises(nothing, "bob_ex06.ipynb") == \
        ["global_max_pool_backward", "adaptive_avg_pool2d"]
    assert grading.notebook_exercises(nothing, "alex09.ipynb") == []  # "ex09" inside a word is no chapter
    assert grading.notebook_exercises(by_call, "alex09.ipynb") == ["output_size"]
