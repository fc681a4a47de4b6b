"""Tests of the homework: the companion notebooks follow the conventions, the student edition in homework/ is what
tools/make_homework.py generates and holds no solution, and the grading command works end to end.

The end-to-end tests start Jupyter kernels; they are grouped into three runs of the grading command (the
student edition with one wrong submission, two passing notebooks, and three broken ones) to stay fast. Only the
first compiles a %%cython cell (the student's stub).
"""
import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from pooling_lib import grading

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = ROOT / "book" / "exercises"
HOMEWORK_DIR = ROOT / "homework"

_spec = importlib.util.spec_from_file_location("make_homework", ROOT / "tools" / "make_homework.py")
make_homework = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_homework)

SOURCES = sorted(SOURCE_DIR.glob("ex[0-9][0-9]_*.ipynb"))
SOURCE_NAMES = [p.name for p in SOURCES]
CHAPTERS = {1: "why_pool", 2: "windows_and_output_sizes", 3: "max_pool_forward", 4: "max_pool_backward",
            5: "average_pooling", 6: "global_pooling", 7: "vectorising_with_numpy", 8: "cython_step_by_step",
            9: "how_fast_is_fast"}


def _read(path):
    return nbformat.read(path, as_version=4)


def _strings(node):
    """Every string anywhere in a JSON document (sources, outputs, metadata), keys included."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


# ---------------------------------------------------------------------------------------------------------
# The sources: one notebook per chapter of Parts I-III, following the conventions
# ---------------------------------------------------------------------------------------------------------
def test_one_companion_notebook_per_chapter():
    assert SOURCE_NAMES == [f"ex{n:02d}_{topic}.ipynb" for n, topic in CHAPTERS.items()]
    assert (SOURCE_DIR / "index.md").exists()


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_a_source_notebook_follows_the_conventions(name):
    nb = _read(SOURCE_DIR / name)
    chapter = int(name[2:4])
    make_homework.check_structure(nb, name)  # gated solutions wrap exactly the marked code cells
    assert nb.metadata["kernelspec"] == make_homework.KERNELSPEC
    # one title, then no heading that skips a level
    levels = [len(m.group(1)) for c in nb.cells if c.cell_type == "markdown"
              for m in re.finditer(r"^(#+) ", c.source, re.M)]
    assert levels[0] == 1 and levels.count(1) == 1
    assert all(b - a <= 1 for a, b in zip(levels, levels[1:]))
    # every exercise: a labeled statement, its gated solution, and a check of an exercise of this chapter
    labels = [m for c in nb.cells if c.cell_type == "markdown" for m in re.findall(r":label: (\S+)", c.source)]
    starts = [c.source.split("}", 1)[1].split("\n", 1)[0].strip() for c in nb.cells
              if make_homework.is_solution_directive(c) and "solution-start" in c.source]
    names = make_homework.exercise_names(nb)
    assert labels == starts == [grading.EXERCISES[n].label for n in names]
    assert all(label.startswith(f"ex-ch{chapter:02d}-") for label in labels)
    assert names == grading.exercises_for_chapter(chapter)
    assert all(":class: dropdown" in c.source for c in nb.cells
               if make_homework.is_solution_directive(c) and "solution-start" in c.source)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_a_source_notebook_is_stored_with_passing_checks(name):
    nb = _read(SOURCE_DIR / name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "execute the notebook before committing it"
    for cell in code:
        assert not [o for o in cell.outputs if o.output_type == "error" or o.get("name") == "stderr"]
    reports = [c.outputs[0]["data"]["text/plain"] for c in code if re.match(r"check_\w+\(\w+\)$", c.source)]
    assert len(reports) == len(make_homework.exercise_names(nb))
    for exercise, report in zip(make_homework.exercise_names(nb), reports):
        ex = grading.EXERCISES[exercise]
        total = len(ex.cases()) + int(ex.own_code) + int(ex.extra is not None)  # stale if the battery changed
        assert report == f"{exercise}: PASSED (all {total} checks passed), score 1/1"


# The pooling parameters' symbols (book/notation.md), and how a statement may define them: with the argument's name,
# or in words.
SYMBOLS = {"k": ("$k$ = `kernel_size`", "a pooling window of $k$ taps"),
           "s": ("$s$ = `stride`", "stride $s$", "in steps of $s$ (the stride)"),
           "p": ("$p$ = `padding`", "padding $p$", "padded with $p$ cells")}
_MATH = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$", re.S)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_a_statement_defines_the_symbols_it_uses(name):
    statements = [c.source for c in _read(SOURCE_DIR / name).cells
                  if c.cell_type == "markdown" and "{exercise}" in c.source]
    assert statements
    for text in statements:
        math = " ".join(a or b for a, b in _MATH.findall(text))
        math = re.sub(r"\\[A-Za-z]+(\{[^}]*\})?", " ", math)  # \lfloor, \text{out}: no symbols inside
        for symbol, definitions in SYMBOLS.items():
            if re.search(rf"(?<![A-Za-z]){symbol}(?![A-Za-z])", math):
                assert any(d in " ".join(text.split()) for d in definitions), \
                    f"{name}: a statement uses ${symbol}$ without defining it ({definitions[0]})"


# ---------------------------------------------------------------------------------------------------------
# The student edition
# ---------------------------------------------------------------------------------------------------------
def test_the_student_edition_is_up_to_date():
    stale = make_homework.stale_files(HOMEWORK_DIR)
    assert stale == [], f"homework/ is stale ({', '.join(stale)}): run `make homework`"


def test_a_stale_or_extra_file_is_noticed(tmp_path):
    files = make_homework.render()
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert make_homework.stale_files(tmp_path, files) == []
    first = SOURCE_NAMES[0]
    (tmp_path / first).write_text(files[first].replace("NotImplementedError", "NotImplemented"), encoding="utf-8")
    (tmp_path / "ex99_old.ipynb").write_text("{}", encoding="utf-8")
    (tmp_path / "README.md").unlink()
    assert make_homework.stale_files(tmp_path, files) == sorted(["README.md", first, "ex99_old.ipynb"])


def _solution_only_lines(source_nb):
    """Solution lines (stripped, longer than 10 characters) that appear nowhere else in the source notebook."""
    solution, elsewhere = [], []
    for cell in source_nb.cells:
        if cell.cell_type == "code" and make_homework.solution_blocks(cell.source):
            solution += make_homework.solution_lines(cell.source)
            elsewhere.append(make_homework.strip_solutions(cell.source))
        else:
            elsewhere.append(cell.source)
    statement = "\n".join(elsewhere)
    lines = {line.strip() for line in solution if len(line.strip()) > 10}
    return sorted(line for line in lines if line not in statement)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_no_solution_code_survives_in_the_student_edition(name):
    secret = _solution_only_lines(_read(SOURCE_DIR / name))
    assert len(secret) >= 3  # the test has something to look for
    source_raw = (SOURCE_DIR / name).read_text(encoding="utf-8")
    assert all(line in "\n".join(_strings(json.loads(source_raw))) for line in secret)  # and the search finds it
    raw = (HOMEWORK_DIR / name).read_text(encoding="utf-8")
    everything = "\n".join(_strings(json.loads(raw)))
    leaked = [line for line in secret if line in everything or json.dumps(line)[1:-1] in raw]
    assert leaked == []


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_the_student_edition_is_clean(name):
    nb = _read(HOMEWORK_DIR / name)
    assert set(nb.metadata) == {"kernelspec", "language_info", "pooling_homework"}
    assert nb.metadata["pooling_homework"]["exercises"] == grading.exercises_for_chapter(int(name[2:4]))
    text = (HOMEWORK_DIR / name).read_text(encoding="utf-8")
    for banned in ("BEGIN SOLUTION", "END SOLUTION", "solution-start", "solution-end", "{exercise}", ":label:",
                   "{doc}", "book-only", "nbval", "hide-input"):
        assert banned not in text
    stubs = 0
    for cell in nb.cells:
        assert set(cell.metadata) <= {"editable", "deletable"}
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [] and cell.execution_count is None
        if "NotImplementedError" in cell.source:
            stubs += 1
        if not cell.source.lstrip().startswith("%"):
            ast.parse("\n".join(l for l in cell.source.splitlines() if not l.lstrip().startswith("%")))
    assert stubs == len(nb.metadata["pooling_homework"]["exercises"])


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_each_stub_is_the_function_with_its_body_replaced(name):
    nb = _read(HOMEWORK_DIR / name)
    for exercise in nb.metadata["pooling_homework"]["exercises"]:
        cell = next(c for c in nb.cells if c.cell_type == "code" and f"def {exercise}(" in c.source)
        lines = cell.source.splitlines()
        source = "\n".join(lines[1:] if lines[0].startswith("%%cython") else lines)
        if lines[0].startswith("%%cython"):  # Cython: check the text, the cell compiles in the CLI test
            body = source.split(f"def {exercise}(", 1)[1]
            assert body.rstrip().endswith('"""\n    raise NotImplementedError()') or \
                body.rstrip().splitlines()[-1] == "    raise NotImplementedError()"
            continue
        function = next(node for node in ast.parse(source).body
                        if isinstance(node, ast.FunctionDef) and node.name == exercise)
        body = function.body[1:] if ast.get_docstring(function) else function.body
        assert len(body) == 1 and ast.unparse(body[0]) == "raise NotImplementedError()"


# ---------------------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------------------
def test_markers_become_a_stub_at_their_indentation():
    source = ("def f(x):\n    '''Doc.'''\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n    ### END SOLUTION\n\n"
              "class A:\n    def g(self):\n        ### BEGIN SOLUTION\n        return 2\n        ### END SOLUTION\n")
    stub = make_homework.strip_solutions(source)
    assert stub == ("def f(x):\n    '''Doc.'''\n    raise NotImplementedError()\n\n"
                    "class A:\n    def g(self):\n        raise NotImplementedError()")
    assert make_homework.solution_lines(source) == ["    y = x + 1", "    return y", "        return 2"]


@pytest.mark.parametrize("source", ["### BEGIN SOLUTION\nx = 1\n", "x = 1\n### END SOLUTION\n",
                                    "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n",
                                    "x = 1  ### BEGIN SOLUTION\n"])
def test_unbalanced_markers_are_refused(source):
    with pytest.raises(make_homework.HomeworkError):
        make_homework.strip_solutions(source)


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbformat.v4.new_code_cell(c)
                for c in cells]
    return nb


START = "md:```{solution-start} ex-ch02-x\n:class: dropdown\n```"
END = "md:```{solution-end}\n```"
SOLUTION = "def x():\n    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION"


@pytest.mark.parametrize("cells, problem", [
    ((SOLUTION,), "must sit inside a gated solution"),
    ((START, "def x():\n    return 42", END), "has no"),
    ((START, SOLUTION, SOLUTION, END), "exactly one code cell"),
    ((START, SOLUTION), "not closed"),
    ((END,), "without solution-start"),
    (("md:```{solution-start} x\n```", SOLUTION, END), "ex-chNN"),
])
def test_badly_gated_solutions_are_refused(cells, problem):
    with pytest.raises(make_homework.HomeworkError, match=problem):
        make_homework.check_structure(_nb(*cells))


def test_statements_become_plain_markdown():
    source = ("## Title\n\n````{exercise}\n:label: ex-ch03-a\n\nWrite `f`; see "
              "{doc}`the chapter <../03_max_pool_forward>` and {doc}`the loops <ex03_max_pool_forward>`, "
              "as {ref}`before <ex-ch02-output-size>`.\n````")
    assert make_homework.plain_markdown(source) == (
        "## Title\n\n**Exercise.** Write `f`; see [the chapter](../book/03_max_pool_forward.ipynb) and "
        "[the loops](ex03_max_pool_forward.ipynb), as before.")


def test_a_student_notebook_drops_solutions_outputs_and_metadata():
    nb = _nb("md:# T", "md:Folded.", "import numpy as np", "md:````{exercise}\n:label: ex-ch02-x\n\nDo it.\n````",
             START, SOLUTION, END, "check_output_size(x)")
    nb.cells[1].metadata["tags"] = ["book-only"]
    nb.cells[5].outputs = [nbformat.v4.new_output("stream", text="42\n")]
    nb.cells[5].metadata["tags"] = ["nbval-ignore-output"]
    nb.metadata["secret"] = "return 42"
    student = make_homework.student_notebook(nb, "ex02_t.ipynb")
    sources = [c.source for c in student.cells]
    assert sources[0] == "# T" and sources[1].startswith("*Student edition*")
    assert sources[2:] == ["import numpy as np", "**Exercise.** Do it.", "def x():\n    raise NotImplementedError()",
                           "check_output_size(x)"]
    assert student.cells[4].outputs == [] and student.cells[4].metadata == {}
    assert student.cells[5].metadata == {"editable": False, "deletable": False}
    assert "secret" not in student.metadata
    assert student.metadata["pooling_homework"]["exercises"] == ["output_size"]


# ---------------------------------------------------------------------------------------------------------
# The grading command, end to end
# ---------------------------------------------------------------------------------------------------------
def _grade(*args, timeout=300):
    done = subprocess.run([sys.executable, "-m", "pooling_lib.grading", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout


def _filled(student_name, replacement, tmp_path, new_name, drop_checks=False, extra_cells=()):
    """A copy of a student notebook with its stub replaced (a student's submission)."""
    nb = _read(HOMEWORK_DIR / student_name)
    for cell in nb.cells:
        if cell.cell_type == "code" and "raise NotImplementedError()" in cell.source:
            cell.source = cell.source.replace("    raise NotImplementedError()", replacement)
    if drop_checks:
        nb.cells = [c for c in nb.cells if not re.match(r"check_\w+\(", c.source)]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in extra_cells]
    path = tmp_path / new_name
    nbformat.write(nb, path)
    return path


def _json_results(stdout):
    data = json.loads(stdout[stdout.index("\n[") + 1:])
    return {Path(g["notebook"]).name: g for g in data}


WRONG_OUTPUT_SIZE = "    return (length + 2 * padding - dilation * (kernel_size - 1) - 1) / stride + 1"
RIGHT_OUTPUT_SIZE = """\
    span = length + 2 * padding - dilation * (kernel_size - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    return out - 1 if ceil_mode and (out - 1) * stride >= length + padding else out"""


FAKE_REPORT = ("from IPython.display import display\n"
               "print('output_size: PASSED')\n"
               "display({'application/vnd.pooling-lib.grading+json': {'token': 'x', 'results': []}}, raw=True)")


def test_the_student_edition_grades_as_not_implemented(tmp_path):
    wrong = _filled("ex02_windows_and_output_sizes.ipynb", WRONG_OUTPUT_SIZE, tmp_path, "bob.ipynb")
    # A notebook that only pretends to pass, printing and displaying an imitation of the grader's report.
    pretender = _filled("ex02_windows_and_output_sizes.ipynb", "    raise NotImplementedError()", tmp_path,
                        "pretender.ipynb", drop_checks=True, extra_cells=[FAKE_REPORT])
    code, stdout = _grade("--jobs", "2", "--json", "-", *sorted(HOMEWORK_DIR.glob("ex*.ipynb")), wrong, pretender)
    assert code == 1
    grades = _json_results(stdout)
    expected = {p.name: grading.exercises_for_chapter(int(p.name[2:4])) for p in SOURCES}
    for name, exercises in expected.items():
        results = grades[name]["results"]
        assert [r["exercise"] for r in results] == exercises
        assert all(r["status"] == "not implemented yet" and r["score"] == 0 for r in results)
        for exercise in exercises:
            assert f"homework/{name}: {exercise} (not implemented yet)" in stdout  # named in the summary
    bob = grades["bob.ipynb"]["results"]
    assert [(r["exercise"], r["status"]) for r in bob] == [("output_size", "failed")]
    assert "hint: the division needs a floor" in stdout  # the first failing case, in the text report
    assert [r["status"] for r in grades["pretender.ipynb"]["results"]] == ["not implemented yet"]


def test_a_solution_and_a_renamed_submission_pass(tmp_path):
    # A submission under another name, with its check cell deleted and prints that imitate the grader.
    alice = _filled("ex02_windows_and_output_sizes.ipynb", RIGHT_OUTPUT_SIZE, tmp_path, "alice.ipynb",
                    drop_checks=True, extra_cells=[FAKE_REPORT])
    code, stdout = _grade("--jobs", "2", SOURCE_DIR / "ex03_max_pool_forward.ipynb", alice)
    assert code == 0, stdout
    assert "max_pool_forward   1.00 / 1  passed" in stdout and "min_pool_forward   1.00 / 1  passed" in stdout
    assert "output_size   1.00 / 1  passed" in stdout
    assert "all 2 notebooks: 3.00 / 3" in stdout
    assert "not passed" not in stdout


def test_notebooks_that_cannot_be_graded(tmp_path):
    unreadable = tmp_path / "broken.ipynb"
    unreadable.write_text("{not json")
    nothing = tmp_path / "notes.ipynb"
    nbformat.write(_nb("print('hello')"), nothing)
    # an endless cell that ignores the interrupt (as C code would): the run ends (it used to wait forever)
    stubborn = _filled("ex02_windows_and_output_sizes.ipynb", "    raise NotImplementedError()", tmp_path,
                       "stubborn.ipynb", extra_cells=["import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                                      "while True:\n    pass"])
    code, stdout = _grade("--json", "-", "--timeout", "3", unreadable, nothing, stubborn)
    assert code == 2
    grades = _json_results(stdout)
    assert "cannot read the notebook" in grades["broken.ipynb"]["error"]
    assert "no homework exercise found" in grades["notes.ipynb"]["error"]
    assert grades["stubborn.ipynb"]["error"].startswith("a cell ran longer than 3 s and did not stop when interrupted")


def test_no_time_limit(tmp_path):
    grade = grading.grade_notebook(SOURCE_DIR / "ex02_windows_and_output_sizes.ipynb", timeout=None)
    assert not grade.error and grade.passed, grade


ENDLESS_ADAPTIVE = "def adaptive_avg_pool2d(x, output_size):\n    while True:\n        pass"


def test_an_endless_loop_fails_its_own_exercise_only(tmp_path):
    # A cell that never ends is stopped and the run goes on; a function that never returns fails its own check.
    nb = _read(SOURCE_DIR / "ex06_global_pooling.ipynb")
    nb.cells += [nbformat.v4.new_code_cell("while True:\n    pass"), nbformat.v4.new_code_cell(ENDLESS_ADAPTIVE)]
    path = tmp_path / "ex06_endless.ipynb"
    nbformat.write(nb, path)
    code, stdout = _grade("--timeout", "4", path)
    assert code == 1, stdout
    n_code = sum(cell.cell_type == "code" for cell in nb.cells) - 1
    assert f"NOTE: code cell {n_code} ran longer than 4 s and was stopped; the run went on" in stdout, stdout
    assert "global_max_pool_backward   1.00 / 1  passed" in stdout, stdout
    assert "adaptive_avg_pool2d        0.00 / 1  failed" in stdout, stdout
    assert "the check of adaptive_avg_pool2d did not finish within 4 s" in stdout, stdout


TAMPER_RUN_CHECK = ("import pooling_lib.grading as g\n"
                    "g.run_check = lambda name, fn: g.CheckResult(name, 'passed', 1.0, 1.0, '', 1, 1)\n"
                    "g.EXERCISES['output_size'].cases = lambda: []")
TAMPER_REPORT = ("import pooling_lib.grading as g\n"
                 "from IPython.display import display\n"
                 "def fake(names, namespace, token):\n"
                 "    results = [g.CheckResult(n, 'passed', 1.0, 1.0, '', 1, 1).to_dict() for n in names]\n"
                 "    display({g.MIME_TYPE: {'token': token, 'results': results}}, raw=True)\n"
                 "g._report = fake")


def test_replacing_the_checks_in_the_kernel_does_not_pass(tmp_path):
    # The checks run in the student's kernel (see book/exercises/index.md: the grader is no sandbox), but the
    # grader reloads its modules before checking, so a notebook that replaced run_check, an exercise's cases or
    # _report is graded by the real ones.
    notebooks = [_filled("ex02_windows_and_output_sizes.ipynb", "    raise NotImplementedError()", tmp_path, name,
                         extra_cells=[tamper]) for name, tamper in (("run_check.ipynb", TAMPER_RUN_CHECK),
                                                                    ("report.ipynb", TAMPER_REPORT))]
    code, stdout = _grade("--json", "-", *notebooks)
    assert code == 1, stdout
    grades = _json_results(stdout)
    for path in notebooks:
        assert [(r["exercise"], r["status"]) for r in grades[path.name]["results"]] == \
            [("output_size", "not implemented yet")]
