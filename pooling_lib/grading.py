"""Homework checks, and the command that grades filled-in homework notebooks.

In a notebook, each exercise ends with a check cell::

    from pooling_lib.grading import check_max_pool_backward
    check_max_pool_backward(max_pool_backward)

A check runs the student's function over a battery of small cases (ties, overlapping windows, padding,
all-negative inputs, float32 and float64, odd shapes) and compares each answer with ``pooling_lib``'s. It never
raises on a wrong answer: it returns a :class:`CheckResult` (``passed``, ``score``, ``message``) that the
notebook displays, and whose message names the FIRST failing case in plain words: the call, the expected and
the actual result, and a hint naming the likely mistake. The hint comes from a diagnosis: the grader also runs
known-wrong versions of the function (zero padding, ``=`` instead of ``+=``, the gradient sent to every tied
maximum, stride confused with kernel size, no floor, dividing by k*k, float64 output for float32 input, ...)
and says which one the student's answer matches. A function that still raises ``NotImplementedError`` on every
case is reported as "not implemented yet" (a case that raises it alone just fails). A function that calls
``pooling_lib``'s own pooling code or PyTorch (where the exercise is to write it) or the grader's references, in
any case, earns no credit, and so does one that gives every right answer but misses the exercise's extra requirement (no
loop over the data, a compiled and fast kernel).

Teachers grade a folder of submissions with::

    python -m pooling_lib.grading submissions/*.ipynb

which executes each notebook in a fresh kernel (``nbclient``, needed only for this command), then runs every
exercise's check once more itself, on the functions the notebook defined, and prints a score per exercise
and a total. The exit status is 0 only when every check of every notebook passed.

How the grader reads results back: after the notebook's own cells it runs one extra cell that calls
:func:`_report` with a fresh random token; the report is one ``display_data`` output of the private MIME type
``application/vnd.pooling-lib.grading+json`` carrying that token. Nothing a student prints can be mistaken
for it, and a check cell the student deleted or edited does not matter: the grader runs the checks itself, after
reloading this module and :mod:`pooling_lib._grading_cases` (which undoes a replaced ``run_check``). The checks
still run in the student's kernel, after the student's code: a notebook that sets out to tamper with NumPy,
``pooling_lib`` or IPython can change its grade, which only reading the notebook (or a sandbox) rules out.
Which exercises a notebook holds is read from its metadata (``pooling_homework.exercises``, written by
``tools/make_homework.py``) and from the ``check_<name>(`` calls in its cells; only when neither names one, from
an ``exNN`` in its file name.
"""
from __future__ import annotations

import argparse
import html
import json
import linecache
import os
import re
import secrets
import sys
import traceback
from dataclasses import asdict, dataclass, field

import numpy as np

from ._grading_cases import EXERCISES, GRADER_MODULE, TORCH, _tolerance, call_watched, forbidden_calls

__all__ = [
    "CheckResult",
    "run_check",
    "EXERCISES",
    "exercises_for_chapter",
    "check_shift_agreement",
    "check_output_size",
    "check_max_pool_forward",
    "check_min_pool_forward",
    "check_max_pool_backward",
    "check_avg_pool_backward",
    "check_global_max_pool_backward",
    "check_adaptive_avg_pool2d",
    "check_max_pool_vectorized",
    "check_max_pool_cython",
    "check_memory_bound",
    "NotebookGrade",
    "notebook_exercises",
    "grade_notebook",
    "main",
]

MIME_TYPE = "application/vnd.pooling-lib.grading+json"
NOT_IMPLEMENTED = "not implemented yet"


# ---------------------------------------------------------------------------------------------------------
# The result of one check
# ---------------------------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """The outcome of one check: shown in the notebook, read back by the grading command.

    Attributes
    ----------
    exercise : str
        The exercise's name (the student's function name).
    status : str
        ``"passed"``, ``"failed"`` or ``"not implemented yet"``.
    score, points : float
        Points earned and available: full points when every check passes, otherwise the fraction of checks passed
        (rounded to 0.01); zero when not implemented, when the function calls code it must not, or when it
        misses the exercise's extra requirement.
    message : str
        Plain words: for a failure, the first failing case, expected and actual result, and a hint.
    cases_passed, cases_total : int
    """

    exercise: str
    status: str
    score: float
    points: float
    message: str
    cases_passed: int = 0
    cases_total: int = 0

    @property
    def passed(self):
        return self.status == "passed"

    def __bool__(self):
        return self.passed

    def headline(self):
        if self.status == "passed":
            tail = f" (all {self.cases_total} checks passed)"
        elif self.status == NOT_IMPLEMENTED:
            tail = ""
        elif self.score == 0 and self.cases_passed:  # right answers, but a rule or the extra requirement failed
            tail = f" ({self.cases_passed} of {self.cases_total} checks passed, but no credit)"
        else:
            tail = f" ({self.cases_passed} of {self.cases_total} checks passed)"
        return f"{self.exercise}: {self.status.upper()}{tail}, score {self.score:g}/{self.points:g}"

    def __str__(self):
        return self.headline() + ("\n" + self.message if self.message else "")

    def __repr__(self):
        return str(self)

    def _repr_html_(self):
        color = {"passed": "#2e7d32", "failed": "#c62828"}.get(self.status, "#616161")
        body = f"<pre style='margin:0.4em 0 0 0;white-space:pre-wrap'>{html.escape(self.message)}</pre>" \
            if self.message else ""
        return (f"<div style='border-left:4px solid {color};padding:0.3em 0.8em'>"
                f"<strong style='color:{color}'>{html.escape(self.headline())}</strong>{body}</div>")

    def to_dict(self):
        return asdict(self) | {"passed": self.passed}


# ---------------------------------------------------------------------------------------------------------
# Showing values and calls in plain words
# ---------------------------------------------------------------------------------------------------------
def _fmt(value, indent="    "):
    """A value for a message: small arrays in full, large ones by shape and their first plane."""
    if isinstance(value, np.ndarray):
        with np.printoptions(precision=4, suppress=True, threshold=1000, linewidth=100, legacy=False):
            if value.size <= 40 or value.ndim < 3:
                text = np.array2string(value, separator=", ")
                head = f"array of shape {value.shape}, dtype {value.dtype}:"
            else:
                lead = (0,) * (value.ndim - 2)
                text = np.array2string(value[lead], separator=", ")
                head = f"array of shape {value.shape}, dtype {value.dtype}; its plane {list(lead)} is:"
        return head + "\n" + "\n".join(indent + line for line in text.splitlines())
    if isinstance(value, tuple):
        return "(" + ", ".join(_fmt_short(v) for v in value) + ")"
    return repr(value)


def _fmt_short(value):
    if isinstance(value, np.ndarray):
        return f"<array of shape {value.shape}, dtype {value.dtype}>"
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return repr(value)


def _fmt_result(value, ex):
    """Results: a tuple of arrays shows each part in full (with its name)."""
    parts = getattr(ex.result, "parts", None)
    if parts and isinstance(value, (tuple, list)) and len(value) == len(parts):
        return "\n".join(f"  {p.name} = {_fmt(v)}" for p, v in zip(parts, value))
    return "  " + _fmt(value)


def _first_difference(got, expected, mismatch):
    """For arrays of the right shape: how many values differ, and the first one."""
    if mismatch.what != "values":
        return ""
    if isinstance(got, (tuple, list)) and isinstance(expected, tuple):
        got, expected = got[mismatch.component], expected[mismatch.component]
    if not (isinstance(got, np.ndarray) and isinstance(expected, np.ndarray)) or got.shape != expected.shape \
            or got.ndim == 0:
        return ""
    rtol, atol = (0.0, 0.0) if expected.dtype.kind in "iu" else _tolerance(expected.dtype)
    with np.errstate(all="ignore"):
        wrong = ~np.isclose(got.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol,
                            equal_nan=True)
    if not wrong.any():
        return ""
    first = tuple(int(i) for i in np.argwhere(wrong)[0])
    return (f": {int(wrong.sum())} of {wrong.size} values differ, the first at index {first} "
            f"(expected {_fmt_short(expected[first].item())}, got {_fmt_short(got[first].item())})")


def _call_text(ex, case):
    """``name(x, kernel_size=3, ...)``: arrays by name, scalars by value."""
    shown = []
    for name, value in zip(ex.params, case.args):
        shown.append(name if isinstance(value, np.ndarray) else f"{name}={value!r}")
    return f"{ex.name}({', '.join(shown)})"


def _inputs_text(ex, case):
    lines = []
    for name, value in zip(ex.params, case.args):
        if isinstance(value, np.ndarray):
            lines.append(f"  {name} = {_fmt(value)}")
    return "\n".join(lines)


def _where_raised(exc):
    """The last line of the student's own code in the traceback (not NumPy's or the grader's)."""
    frames = traceback.extract_tb(exc.__traceback__)
    here = os.path.dirname(os.path.abspath(__file__))
    numpy_dir = os.path.dirname(np.__file__)
    own = [f for f in frames if not f.filename.startswith((here, numpy_dir, sys.prefix, sys.base_prefix))]
    if not own:
        return ""
    f = own[-1]
    line = f.line or linecache.getline(f.filename, f.lineno).strip()
    return f" (line {f.lineno}: {line})" if line else f" (line {f.lineno})"


def _exception_hint(exc):
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, AttributeError) and re.search(r"'(float|int|bool|object|lib)'|has no attribute 'pad'", text):
        from ._grading_cases import HINT_NUMPY2
        return HINT_NUMPY2
    if isinstance(exc, ValueError) and ("zero-size array" in str(exc) or "empty sequence" in str(exc)):
        from ._grading_cases import HINT_NEGATIVE_START
        return ("a window is empty. Maybe " + HINT_NEGATIVE_START + " Or the window starts past the end of the "
                "input: check the output size, floor((H + 2p - k) / s) + 1 rows from H and columns from W.")
    if isinstance(exc, IndexError):
        return ("an index ran past the array: check where each window starts and ends, and the output size "
                "floor((H + 2p - k) / s) + 1.")
    if isinstance(exc, ValueError) and "Buffer dtype mismatch" in str(exc):
        return ("the kernel must accept both float32 and float64: declare the memoryview with the fused type "
                "floating (from cython cimport floating).")
    return ""


# ---------------------------------------------------------------------------------------------------------
# Running a battery
# ---------------------------------------------------------------------------------------------------------
def _copy_args(args):
    return tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args)


def _modified_inputs(before, after):
    for b, a in zip(before, after):
        if isinstance(b, np.ndarray) and not np.array_equal(a, b, equal_nan=True):
            return True
    return False


def _diagnose(ex, first, outcomes):
    """The hint for the first wrong answer ``first`` = ``(case, got, expected, mismatch)``.

    Two mistakes can give the same wrong answer on one case, so a known-wrong variant is chosen by looking at
    every case: it must reproduce the first wrong answer, and among those the one that agrees with the student's
    answers on the most cases wins (the earlier variant on a tie). Then the exercise's heuristics.
    """
    from ._grading_cases import HINT_FLOAT64

    case, got, expected, mismatch = first
    if mismatch.what == "dtype":
        got_part = got[mismatch.component] if isinstance(got, (tuple, list)) else got
        want_part = expected[mismatch.component] if isinstance(expected, tuple) else expected
        if getattr(want_part, "dtype", None) == np.float32 and getattr(got_part, "dtype", None) == np.float64:
            return HINT_FLOAT64
        if isinstance(want_part, np.ndarray):
            return f"create the array with dtype {want_part.dtype}."
        return "return an int: use // (floor division) or int(...), not / or np.floor (which give floats)."
    best, best_agreement = None, -1
    for variant in ex.variants:
        wrong = _run_variant(variant, case)
        if wrong is _FAILED or not _matches(ex, got, wrong, mismatch):
            continue
        agreement = 0
        for other_case, other_got in outcomes:
            if other_case is case:
                continue
            other_wrong = _run_variant(variant, other_case)
            if other_wrong is not _FAILED and ex.result.compare(other_got, other_wrong, check_dtype=False) is None:
                agreement += 1
        if agreement > best_agreement:
            best, best_agreement = variant, agreement
    if best is not None:
        return best.hint
    if ex.heuristics is not None:
        hint = ex.heuristics(case, got, expected)
        if hint:
            return hint
    if mismatch.what == "shape":
        return ("the output has the wrong shape: the number of windows along an axis is "
                "floor((L + 2p - k) / s) + 1.")
    return ""


_FAILED = object()


def _run_variant(variant, case):
    try:
        with np.errstate(all="ignore"):
            return variant.fn(*_copy_args(case.args))
    except Exception:  # a variant that cannot run on this case cannot be the explanation
        return _FAILED


def _matches(ex, got, wrong, mismatch):
    """Does the student's (wrong) answer equal the variant's, on the part that was found wrong?"""
    try:
        if isinstance(getattr(ex.result, "parts", None), tuple) and isinstance(got, (tuple, list)) \
                and isinstance(wrong, (tuple, list)) and len(got) == len(wrong):
            part = ex.result.parts[mismatch.component]
            return part.compare(got[mismatch.component], wrong[mismatch.component], check_dtype=False) is None
        return ex.result.compare(got, wrong, check_dtype=False) is None
    except Exception:
        return False


def _failure_text(ex, index, case, n_cases, got=None, expected=None, mismatch=None, hint="", raised=None):
    lines = [f"First failing case ({index + 1} of {n_cases}): {case.label}.",
             f"  call: {_call_text(ex, case)}"]
    inputs = _inputs_text(ex, case)
    if inputs:
        lines.append(inputs)
    if raised is not None:
        text = (str(raised).strip().splitlines() or [""])[0]
        text = text if len(text) <= 160 else text[:157] + "..."
        lines.append(f"it raised {type(raised).__name__}: {text}{_where_raised(raised)}")
    elif mismatch.what == "dtype":
        lines.append(f"the values are right, but {mismatch.text}.")
    else:
        lines.append("expected:")
        lines.append(_fmt_result(expected, ex))
        lines.append("got:")
        lines.append(_fmt_result(got, ex))
        lines.append(f"what differs: {mismatch.text}{_first_difference(got, expected, mismatch)}.")
    if hint:
        lines.append(f"hint: {hint}")
    return "\n".join(lines)


HINT_NOT_IMPLEMENTED_CASE = ("your function raises NotImplementedError for this case, so the case counts as "
                             "failed: the exercise asks for every case the statement describes.")
HINT_OWN_CODE = ("the exercise is to write it yourself with NumPy (the check compares your answers with "
                 "pooling_lib's).")
HINT_GRADER_CODE = ("pooling_lib's public functions are fine in this exercise, but not the grader's own answers "
                    "(pooling_lib._grading_cases): compute the result yourself.")


def _calls_text(ex, used, all_right):
    """The report for a function that calls code it must not: no credit, whatever its answers."""
    start = "Every case gives the right answer, but your" if all_right else "Your"
    grader = f"pooling_lib.{GRADER_MODULE}."
    if used == [TORCH]:
        whose = "PyTorch"
    elif all(u.startswith(grader) for u in used):
        whose = "the grader's own code"
    elif TORCH in used:
        whose = "PyTorch and pooling_lib's own code"
    else:
        whose = "pooling_lib's own code"
    if not ex.own_code:
        hint = HINT_GRADER_CODE
    elif ex.allowed:
        helpers = sorted({name.split(".")[-1] for name in ex.allowed} & {"pool2d_output_size", "pool_geometry"})
        hint = HINT_OWN_CODE + f" Only its output-size helpers ({', '.join(helpers)}) may be called."
    else:
        hint = HINT_OWN_CODE
    return f"{start} function calls {whose} ({', '.join(used)}), so it earns no credit.\nhint: {hint}"


def run_check(name, fn):
    """Run exercise ``name``'s battery on ``fn`` and return a :class:`CheckResult` (never raises on a wrong
    answer or an exception inside ``fn``).

    No credit (score 0) for a function that calls, in any case of the battery, pooling_lib's own pooling code or
    PyTorch (when the exercise asks for the student's own code; ``Exercise.allowed`` lists the exceptions) or the
    grader's references, nor for one that gives every right answer but fails the exercise's extra requirement.
    "not implemented yet" when every case raises NotImplementedError; a case that raises it alone just fails.
    """
    ex = EXERCISES[name]
    if not callable(fn):
        return CheckResult(name, "failed", 0.0, ex.points,
                           f"check_{name} needs your function {name} itself, got {_describe(fn)}.", 0, 1)
    cases = ex.cases()
    n_total = len(cases) + int(ex.own_code) + int(ex.extra is not None)
    passed, first_failure, first_wrong, outcomes = 0, None, None, []  # first_failure: the report's text
    called, not_implemented = set(), 0  # what fn called in the library (every case), cases raising NotImplemented
    for index, case in enumerate(cases):
        args = _copy_args(case.args)
        try:
            with np.errstate(all="ignore"):
                got = call_watched(fn, args, called)
        except NotImplementedError as exc:
            not_implemented += 1
            if first_failure is None and first_wrong is None:
                first_failure = _failure_text(ex, index, case, len(cases), raised=exc, hint=HINT_NOT_IMPLEMENTED_CASE)
            continue
        except Exception as exc:  # the student's bug, reported in words
            if first_failure is None and first_wrong is None:
                hint = (ex.exception_hint(exc) if ex.exception_hint else None) or _exception_hint(exc)
                first_failure = _failure_text(ex, index, case, len(cases), raised=exc, hint=hint)
            continue
        outcomes.append((case, got))
        expected = ex.reference(*_copy_args(case.args))
        mismatch = ex.result.compare(got, expected)
        if mismatch is None and _modified_inputs(case.args, args):
            if first_failure is None and first_wrong is None:
                first_failure = (f"First failing case ({index + 1} of {len(cases)}): {case.label}.\n"
                                 f"  call: {_call_text(ex, case)}\n"
                                 "the result is right, but the function modified its input arrays in place.\n"
                                 "hint: work on a copy (or write into a new array); a layer must not change its "
                                 "input.")
            continue
        if mismatch is None:
            passed += 1
            continue
        if first_failure is None and first_wrong is None:
            first_wrong = (index, case, got, expected, mismatch)  # worded below, once every case has run
    if cases and not_implemented == len(cases):
        return CheckResult(name, NOT_IMPLEMENTED, 0.0, ex.points,
                           f"{name} still raises NotImplementedError: replace that line with your code, "
                           f"then run this check again.", 0, n_total)
    used = forbidden_calls(ex, called)
    if used:  # no credit: the answers are pooling_lib's (or the grader's, or PyTorch's), not the student's
        all_right = first_failure is None and first_wrong is None
        return CheckResult(name, "failed", 0.0, ex.points, _calls_text(ex, used, all_right), passed, n_total)
    if first_failure is None and first_wrong is not None:
        index, case, got, expected, mismatch = first_wrong
        hint = _diagnose(ex, first_wrong[1:], outcomes)
        first_failure = _failure_text(ex, index, case, len(cases), got, expected, mismatch, hint)
    if ex.own_code and passed:
        passed += 1  # the rule is a check of its own: the right answers are the student's (no case called
        # pooling_lib's pooling code or PyTorch); with no right answer there is nothing it vouches for
    if first_failure is None and ex.extra is not None:
        def watched(*args):  # the extra's own inputs are watched too: no pooling_lib for large inputs only
            return call_watched(fn, args, called)

        try:
            problem = ex.extra(fn, watched)
        except Exception as exc:
            problem = (f"the extra check raised {type(exc).__name__}: {exc}", "")
        used = forbidden_calls(ex, called)
        if used:  # the rule, counted as passed above, failed after all
            return CheckResult(name, "failed", 0.0, ex.points, _calls_text(ex, used, True),
                               passed - int(ex.own_code), n_total)
        if problem is None:
            passed += 1
        else:  # no credit: the requirement is the point of the exercise, as much as the answers
            what, hint = problem
            text = (f"Every case gives the right answer, but {what}\nThe exercise asks for that too, so it earns no "
                    f"credit." + (f"\nhint: {hint}" if hint else ""))
            return CheckResult(name, "failed", 0.0, ex.points, text, passed, n_total)
    if first_failure is None:
        return CheckResult(name, "passed", ex.points, ex.points, "", passed, n_total)
    score = round(ex.points * passed / n_total, 2)
    return CheckResult(name, "failed", score, ex.points, first_failure, passed, n_total)


def _describe(value):
    return f"{type(value).__name__} {value!r}"[:80]


def exercises_for_chapter(chapter):
    """Names of the exercises that go with chapter ``chapter`` (an int), in book order."""
    return [name for name, ex in EXERCISES.items() if ex.chapter == chapter]


def _make_check(name):
    ex = EXERCISES[name]

    def check(fn):
        return run_check(name, fn)

    check.__name__ = check.__qualname__ = f"check_{name}"
    check.__doc__ = (f"Check exercise \"{ex.title}\" (chapter {ex.chapter}, label ``{ex.label}``).\n\n"
                     f"Calls ``fn({', '.join(ex.params)})`` on a battery of cases, compares with pooling_lib, and "
                     f"returns a :class:`CheckResult`; never raises on a wrong answer.")
    return check


check_shift_agreement = _make_check("shift_agreement")
check_output_size = _make_check("output_size")
check_max_pool_forward = _make_check("max_pool_forward")
check_min_pool_forward = _make_check("min_pool_forward")
check_max_pool_backward = _make_check("max_pool_backward")
check_avg_pool_backward = _make_check("avg_pool_backward")
check_global_max_pool_backward = _make_check("global_max_pool_backward")
check_adaptive_avg_pool2d = _make_check("adaptive_avg_pool2d")
check_max_pool_vectorized = _make_check("max_pool_vectorized")
check_max_pool_cython = _make_check("max_pool_cython")
check_memory_bound = _make_check("memory_bound")


# ---------------------------------------------------------------------------------------------------------
# Grading notebooks
# ---------------------------------------------------------------------------------------------------------
class _TimeUp(BaseException):
    """Raised by the alarm in the student's function when a check runs too long: a BaseException, so that
    ``run_check`` (which reports every ``Exception`` of the student's as a failed case) lets it through."""


ALARM_REPEATS = 5  # interrupts sent to a check past its time limit (code may catch some) before it is left to run


def _check_in_time(name, fn, seconds):
    """``run_check(name, fn)``, or a failed result if it takes longer than ``seconds`` (an endless loop).

    A SIGALRM timer, where there is one (POSIX, main thread), interrupts the student's Python code, and again every
    second up to ``ALARM_REPEATS`` times in case the code catches the interrupt. Code that catches them all, or
    that runs in C (a compiled kernel), is not stopped here: the grading cell's own time limit ends the run then.
    A timer that was already set (another tool's) is set again afterwards, with what was left of its time.
    """
    import signal
    import threading
    import time

    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        return run_check(name, fn)
    alarms = 0

    def time_up(signum, frame):
        nonlocal alarms
        alarms += 1
        if alarms > ALARM_REPEATS:
            signal.setitimer(signal.ITIMER_REAL, 0)  # give up: the cell's time limit takes over
            return
        raise _TimeUp()

    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, time_up)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        return run_check(name, fn)
    except _TimeUp:
        return CheckResult(name, "failed", 0.0, EXERCISES[name].points,
                           f"the check of {name} did not finish within {seconds:g} s, so it was stopped: an endless "
                           f"loop, or a function far too slow for the small cases of the check?", 0, 1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:  # the caller's timer: what was left of it (at least a moment, so that it still fires)
            signal.setitimer(signal.ITIMER_REAL, max(outer_delay - (time.monotonic() - start), 1e-3), outer_interval)


def _report(names, namespace, token, seconds=None):
    """Run in the graded kernel, after the student's cells: check each exercise's function as the notebook
    defined it (each check stopped after ``seconds``, if given), and emit one display_data output that the
    grading command reads back."""
    from IPython.display import display

    results = []
    for name in names:
        fn = namespace.get(name)
        if fn is None:
            results.append(CheckResult(name, "failed", 0.0, EXERCISES[name].points,
                                       f"the notebook does not define {name} (did its cell run without errors?).",
                                       0, 1))
        else:
            results.append(_check_in_time(name, fn, seconds))
    display({MIME_TYPE: {"token": token, "results": [r.to_dict() for r in results]}}, raw=True)


@dataclass
class NotebookGrade:
    """Scores of one notebook: a :class:`CheckResult` per exercise, or ``error`` if it could not be graded."""

    path: str
    results: list = field(default_factory=list)
    error: str = ""
    notes: list = field(default_factory=list)  # what the teacher should know: cells stopped at the time limit

    @property
    def score(self):
        return round(sum(r.score for r in self.results), 2)

    @property
    def points(self):
        return sum(r.points for r in self.results)

    @property
    def passed(self):
        return not self.error and bool(self.results) and all(r.passed for r in self.results)


_CHECK_CALL = re.compile(r"\bcheck_([A-Za-z0-9_]+)\s*\(")
_CHAPTER = re.compile(r"(?:^|[^0-9A-Za-z])ex(\d\d)(?:[^0-9]|$)")  # "ex06_x", "bob_ex06"; not "alex09"


def notebook_exercises(nb, path=""):
    """The exercises a notebook holds, in book order: from its metadata and its check calls; only when neither
    names one, from an ``exNN`` in its file name (a student edition whose metadata and check cells were lost)."""
    found = set(nb.get("metadata", {}).get("pooling_homework", {}).get("exercises", []))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            found.update(m for m in _CHECK_CALL.findall(_source(cell)) if m in EXERCISES)
    found &= set(EXERCISES)
    match = _CHAPTER.search(os.path.basename(str(path)))
    if not found and match:
        found.update(exercises_for_chapter(int(match.group(1))))
    return [name for name in EXERCISES if name in found]


def _source(cell):
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


# The grader's last cell. It reloads the grading modules first, so that a notebook that replaced run_check, _report
# or an exercise's cases (pooling_lib.grading.run_check = ...) is graded by the real ones. That is all it undoes: the
# checks run in the student's kernel, after the student's code, and code that tampers with NumPy, pooling_lib itself
# or IPython can still change a grade (see book/exercises/index.md).
_REPORT_CELL = """\
import importlib as _pooling_importlib
import pooling_lib._grading_cases as _pooling_cases
import pooling_lib.grading as _pooling_grading
_pooling_importlib.reload(_pooling_cases)
_pooling_grading = _pooling_importlib.reload(_pooling_grading)
_pooling_grading._report({names!r}, globals(), {token!r}, {seconds!r})"""


INTERRUPT_GRACE = 10.0  # seconds a cell has to stop after the interrupt its time limit sent


def _client_class():
    """nbclient's NotebookClient, but a cell past its time limit is interrupted once, and ends the run (as
    CellTimeoutError) only if it is still running ``INTERRUPT_GRACE`` seconds later: it caught the interrupt, or
    it is in C code that does not see it. (nbclient's own ``interrupt_on_timeout`` would interrupt it again and
    again and wait forever.)"""
    import asyncio
    import time

    from jupyter_core.utils import ensure_async
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError

    class InterruptOnceClient(NotebookClient):
        _stopping = None  # (the cell being stopped, when its grace ends)

        async def _async_handle_timeout(self, timeout, cell=None):
            now = time.monotonic()
            if self._stopping is None or self._stopping[0] is not cell:
                self._stopping = (cell, now + INTERRUPT_GRACE)
                await ensure_async(self.km.interrupt_kernel())
                return None
            if now > self._stopping[1]:
                raise CellTimeoutError.error_from_timeout_and_cell("Cell execution timed out", timeout, cell)
            await asyncio.sleep(0.2)  # nbclient asks again at once: wait for the reply to the interrupt
            return None

    return InterruptOnceClient


def grade_notebook(path, timeout=600, kernel_name="python3"):
    """Execute the notebook at ``path`` in a fresh kernel and grade every exercise it holds.

    Cells that raise do not stop the run (a half-done notebook still gets the points it earned). ``timeout`` is
    per cell, in seconds: generous, because the Cython exercise compiles. A cell that runs longer is interrupted
    and the run goes on (``NotebookGrade.notes`` says which), unless the cell is still running ``INTERRUPT_GRACE``
    seconds later: then the notebook cannot be graded (``NotebookGrade.error``). In the grading cell, each
    exercise's check gets ``timeout`` seconds of its own, so an endless loop in Python fails its own exercise only.
    Returns a :class:`NotebookGrade`.
    """
    import subprocess

    import nbformat  # imported here: pooling_lib itself does not need Jupyter
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    grade = NotebookGrade(str(path))
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:
        grade.error = f"cannot read the notebook: {type(exc).__name__}: {exc}"
        return grade
    names = notebook_exercises(nb, path)
    if not names:
        grade.error = "no homework exercise found in this notebook"
        return grade
    token = secrets.token_hex(16)
    n_cells = len(nb.cells)
    report = nbformat.v4.new_code_cell(_REPORT_CELL.format(names=names, token=token, seconds=timeout))
    nb.cells.append(report)
    # the grading cell may take each check's time limit, and then some: it must not be the cell that is stopped
    client = _client_class()(nb, timeout=timeout, kernel_name=kernel_name, allow_errors=True,
                             interrupt_on_timeout=True,
                             timeout_func=lambda cell: (timeout and timeout * (len(names) + 1) if cell is report
                                                        else timeout),
                             resources={"metadata": {"path": os.path.dirname(os.path.abspath(str(path)))}})
    try:
        client.execute(stderr=subprocess.DEVNULL)
    except CellTimeoutError as exc:
        grade.error = (f"a cell ran longer than {timeout} s and did not stop when interrupted (an endless loop that "
                       f"catches KeyboardInterrupt, or one in compiled code?): {str(exc).splitlines()[0]}")
    except DeadKernelError as exc:
        grade.error = f"the kernel died while running the notebook: {exc}"
    except Exception as exc:
        grade.error = f"the notebook could not be executed: {type(exc).__name__}: {exc}"
    if grade.error:
        grade.results = [CheckResult(n, "failed", 0.0, EXERCISES[n].points, grade.error, 0, 1) for n in names]
        return grade
    code_cells = 0
    for cell in nb.cells[:n_cells]:
        code_cells += cell.get("cell_type") == "code"
        if any(o.get("output_type") == "error" and o.get("ename") == "KeyboardInterrupt"
               for o in cell.get("outputs", [])):
            grade.notes.append(f"code cell {code_cells} ran longer than {timeout} s and was stopped; the run went on")
    for output in nb.cells[-1].get("outputs", []):
        payload = output.get("data", {}).get(MIME_TYPE)
        if isinstance(payload, str):
            payload = json.loads(payload)
        if isinstance(payload, dict) and payload.get("token") == token:
            fields = ("exercise", "status", "score", "points", "message", "cases_passed", "cases_total")
            grade.results = [CheckResult(**{k: r[k] for k in fields}) for r in payload["results"]]
            return grade
    errors = [o for o in nb.cells[-1].get("outputs", []) if o.get("output_type") == "error"]
    detail = f"{errors[0]['ename']}: {errors[0]['evalue']}" if errors else "no report"
    grade.error = f"the grading cell did not report ({detail})"
    grade.results = [CheckResult(n, "failed", 0.0, EXERCISES[n].points, grade.error, 0, 1) for n in names]
    return grade


def _print_grade(grade, out, verbose):
    print(f"== {grade.path}", file=out)
    if grade.error:
        print(f"   ERROR: {grade.error}", file=out)
    for note in grade.notes:
        print(f"   NOTE: {note}", file=out)
    width = max([len(r.exercise) for r in grade.results] + [8])
    for r in grade.results:
        print(f"   {r.exercise:<{width}}  {r.score:5.2f} / {r.points:g}  {r.status}", file=out)
        if verbose and r.message and r.status != NOT_IMPLEMENTED and not grade.error:
            print("\n".join("      " + line for line in r.message.splitlines()), file=out)
    print(f"   {'total':<{width}}  {grade.score:5.2f} / {grade.points:g}", file=out)


def main(argv=None):
    """``python -m pooling_lib.grading NOTEBOOK.ipynb [MORE.ipynb ...]``: grade notebooks, print the scores.

    Exit status: 0 when every check of every notebook passed, 1 when any failed or is not implemented,
    2 when a notebook could not be graded at all (unreadable, no exercise, kernel died, a cell still running
    ``INTERRUPT_GRACE`` seconds after its time limit interrupted it, or a grading cell that did not report). A
    student's cell that stops when interrupted at the limit does not stop the run.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pooling_lib.grading",
        description="Execute filled-in homework notebooks and print a score per exercise and a total.")
    parser.add_argument("notebooks", nargs="+", help="the .ipynb files to grade")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default 600)")
    parser.add_argument("--quiet", action="store_true", help="scores only, without the failure messages")
    parser.add_argument("--json", metavar="FILE", help="also write every result to FILE as JSON ('-' = stdout)")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks graded at once, each in its own kernel "
                        "(default 1)")
    args = parser.parse_args(argv)

    if args.jobs > 1 and len(args.notebooks) > 1:
        from concurrent.futures import ThreadPoolExecutor  # each notebook runs in its own kernel process

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            grades = list(pool.map(lambda p: grade_notebook(p, timeout=args.timeout), args.notebooks))
        for grade in grades:
            _print_grade(grade, sys.stdout, verbose=not args.quiet)
    else:
        grades = []
        for path in args.notebooks:
            grades.append(grade_notebook(path, timeout=args.timeout))
            _print_grade(grades[-1], sys.stdout, verbose=not args.quiet)
            sys.stdout.flush()
    if len(grades) > 1:
        total = round(sum(g.score for g in grades), 2)
        print(f"== all {len(grades)} notebooks: {total:.2f} / {sum(g.points for g in grades):g}")
    failing = [f"{g.path}: {r.exercise} ({r.status})" for g in grades for r in g.results if not r.passed]
    if failing:
        print("not passed:\n" + "\n".join("   " + f for f in failing))
    if args.json:
        data = [{"notebook": g.path, "score": g.score, "points": g.points, "passed": g.passed, "error": g.error,
                 "notes": g.notes, "results": [r.to_dict() for r in g.results]} for g in grades]
        text = json.dumps(data, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(text + "\n")
    if any(g.error for g in grades):
        return 2
    return 0 if all(g.passed for g in grades) else 1


if __name__ == "__main__":
    sys.exit(main())
