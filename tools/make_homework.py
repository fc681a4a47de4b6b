"""Generate the student edition of the homework: ``book/exercises/exNN_*.ipynb`` -> ``homework/``.

The companion notebooks in ``book/exercises/`` are the one source of truth. Each exercise there is

* a markdown cell with the statement, in a sphinx-exercise ``{exercise}`` directive labeled ``ex-chNN-...``;
* a markdown cell ``{solution-start} <label>`` (with ``:class: dropdown``), the student's code cell, and a
  markdown cell ``{solution-end}``: the book shows the code cell folded away as the solution;
* inside that code cell, the solution code between the nbgrader-style markers ``### BEGIN SOLUTION`` and
  ``### END SOLUTION``;
* a check cell, ``check_<name>(<name>)`` from :mod:`pooling_lib.grading`.

The student edition keeps the statements and the check cells and replaces every marked block with
``raise NotImplementedError()`` at the marker's indentation (a ``%%cython`` cell still compiles). It drops the
gated solution directives and the cells tagged ``book-only``, turns the MyST-only markup (the ``{exercise}``
fence, ``{doc}`` links) into plain Jupyter markdown, clears every output and execution count, and keeps no
metadata but the kernelspec and the list of exercises the grader reads (``pooling_homework``).

Usage (``make homework``)::

    python tools/make_homework.py            # (re)write homework/
    python tools/make_homework.py --check    # exit 1 if homework/ is not what the sources generate
"""
from __future__ import annotations

import argparse
import posixpath
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = ROOT / "book" / "exercises"
TARGET_DIR = ROOT / "homework"
SOURCE_GLOB = "ex[0-9][0-9]_*.ipynb"

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = "raise NotImplementedError()"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

_SOLUTION_DIRECTIVE = re.compile(r"^\s*(`{3,}|:{3,})\{solution(-start|-end)?\}")
_EXERCISE_OPEN = re.compile(r"^(`{3,}|:{3,})\{exercise\}[^\n]*$", re.M)
_CHECK_CALL = re.compile(r"\bcheck_([A-Za-z0-9_]+)\s*\(")
_ROLE = re.compile(r"\{(\w+)\}`([^`<]*?)\s*(?:<([^`>]+)>)?`")


class HomeworkError(ValueError):
    """A source notebook breaks the exercise conventions; the message says where and how."""


# ---------------------------------------------------------------------------------------------------------
# Code cells: markers -> stub
# ---------------------------------------------------------------------------------------------------------
def solution_blocks(source):
    """The ``(begin_line, end_line)`` pairs of the marked solution blocks of a cell (0-based, inclusive).

    Raises HomeworkError on a marker without its partner or a nested BEGIN.
    """
    blocks, start = [], None
    for number, line in enumerate(source.splitlines()):
        text = line.strip()
        if text == BEGIN:
            if start is not None:
                raise HomeworkError(f"line {number + 1}: {BEGIN} inside another solution block")
            start = number
        elif text == END:
            if start is None:
                raise HomeworkError(f"line {number + 1}: {END} without a {BEGIN}")
            blocks.append((start, number))
            start = None
        elif BEGIN in line or END in line:
            raise HomeworkError(f"line {number + 1}: a solution marker must be alone on its line: {line!r}")
    if start is not None:
        raise HomeworkError(f"line {start + 1}: {BEGIN} without an {END}")
    return blocks


def strip_solutions(source):
    """Replace each marked block (markers included) by ``raise NotImplementedError()`` at the marker's indent."""
    lines = source.splitlines()
    blocks = solution_blocks(source)
    for begin, end in reversed(blocks):
        indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
        lines[begin:end + 1] = [indent + STUB]
    return "\n".join(lines)


def solution_lines(source):
    """The lines inside the marked blocks of a cell (markers excluded)."""
    lines = source.splitlines()
    return [line for begin, end in solution_blocks(source) for line in lines[begin + 1:end]]


# ---------------------------------------------------------------------------------------------------------
# Markdown cells: MyST -> plain Jupyter markdown
# ---------------------------------------------------------------------------------------------------------
def _doc_link(text, target, source_dir, target_dir):
    """A ``{doc}`` reference as a relative markdown link to the notebook (or page) it names; a link to another
    exercise notebook points to its student edition."""
    resolved = posixpath.normpath(posixpath.join(source_dir, target))
    if posixpath.dirname(resolved) == source_dir and re.fullmatch(r"ex\d\d_\w+", posixpath.basename(resolved)):
        return f"[{text or posixpath.basename(target)}]({posixpath.basename(resolved)}.ipynb)"
    for suffix in (".ipynb", ".md"):
        if (ROOT / (resolved + suffix)).exists():
            resolved += suffix
            break
    else:
        resolved += ".ipynb"
    href = posixpath.relpath(resolved, target_dir)
    return f"[{text or posixpath.basename(target)}]({href})"


def plain_markdown(source, source_dir="book/exercises", target_dir="homework"):
    """Turn the MyST-only markup of a statement into markdown that Jupyter renders.

    The ``{exercise}`` fence becomes a bold "Exercise." lead-in (its options are dropped); ``{doc}`` roles become
    links relative to the student edition; any other role keeps its text.
    """
    match = _EXERCISE_OPEN.search(source)
    while match:
        fence = match.group(1)
        close = re.compile(rf"^{re.escape(fence)}\s*$", re.M)
        end = close.search(source, match.end())
        if end is None:
            raise HomeworkError(f"an {{exercise}} directive is not closed by {fence}")
        body = source[match.end():end.start()].strip("\n").splitlines()
        while body and body[0].startswith(":"):  # directive options such as :label:
            body.pop(0)
        text = "\n".join(body).strip("\n")
        source = source[:match.start()] + "**Exercise.** " + text + source[end.end():]
        match = _EXERCISE_OPEN.search(source)

    def role(m):
        name, text, target = m.group(1), m.group(2).strip(), m.group(3)
        if name == "doc":
            return _doc_link(text, target or text, source_dir, target_dir)
        return text or (target or "")

    return _ROLE.sub(role, source)


def is_solution_directive(cell):
    return cell.cell_type == "markdown" and bool(_SOLUTION_DIRECTIVE.match(cell.source))


# ---------------------------------------------------------------------------------------------------------
# Whole notebooks
# ---------------------------------------------------------------------------------------------------------
def check_structure(nb, name="notebook"):
    """Raise HomeworkError unless every solution code cell sits between ``{solution-start}`` and
    ``{solution-end}`` cells and every gated solution wraps exactly one code cell with markers."""
    inside, label, wrapped = False, None, 0
    for index, cell in enumerate(nb.cells):
        where = f"{name}, cell {index}"
        if is_solution_directive(cell):
            kind = _SOLUTION_DIRECTIVE.match(cell.source).group(2)
            if kind == "-start":
                if inside:
                    raise HomeworkError(f"{where}: solution-start inside another gated solution")
                inside, wrapped = True, 0
                label = cell.source.split("}", 1)[1].split("\n", 1)[0].strip()
                if not label.startswith("ex-ch"):
                    raise HomeworkError(f"{where}: solution-start must name an exercise label ex-chNN-..., "
                                        f"got {label!r}")
            elif kind == "-end":
                if not inside:
                    raise HomeworkError(f"{where}: solution-end without solution-start")
                if wrapped != 1:
                    raise HomeworkError(f"{where}: the gated solution {label} must wrap exactly one code cell with "
                                        f"{BEGIN} markers, found {wrapped}")
                inside = False
            else:
                raise HomeworkError(f"{where}: use the gated solution-start / solution-end directives, not "
                                    "{solution}: the solution code must live in a code cell")
        elif cell.cell_type == "code":
            try:
                has_markers = bool(solution_blocks(cell.source))
            except HomeworkError as exc:
                raise HomeworkError(f"{where}: {exc}") from None
            if has_markers and not inside:
                raise HomeworkError(f"{where}: a code cell with solution markers must sit inside a gated solution")
            if inside:
                if not has_markers:
                    raise HomeworkError(f"{where}: the code cell inside the gated solution {label} has no "
                                        f"{BEGIN} / {END} markers")
                wrapped += 1
        elif inside:
            raise HomeworkError(f"{where}: only the solution code cell may sit inside the gated solution {label}")
    if inside:
        raise HomeworkError(f"{name}: the gated solution {label} is not closed by solution-end")


def exercise_names(nb):
    """The exercise names a notebook checks, in order (from its ``check_<name>(`` calls)."""
    names = []
    for cell in nb.cells:
        if cell.cell_type == "code" and not solution_blocks(cell.source):
            for name in _CHECK_CALL.findall(cell.source):
                if name not in names:
                    names.append(name)
    return names


STUDENT_NOTE = (
    "*Student edition* (generated from `book/exercises/{source}` by `make homework`; edits to this file are "
    "yours alone). In each exercise, replace `raise NotImplementedError()` with your code and run the check "
    "cell below it; do not change the check cells. Your teacher grades the notebook with "
    "`python -m pooling_lib.grading {source}`, which runs it from top to bottom in a fresh kernel, so make sure "
    "it does (*Kernel > Restart & Run All*)."
)


def student_notebook(nb, source_name):
    """The student edition of the solution notebook ``nb`` (a new notebook; ``nb`` is not modified)."""
    check_structure(nb, source_name)
    out = nbformat.v4.new_notebook()
    out.metadata = {
        "kernelspec": dict(KERNELSPEC),
        "language_info": {"name": "python"},
        "pooling_homework": {"exercises": exercise_names(nb), "source": f"book/exercises/{source_name}"},
    }
    cells = []
    for cell in nb.cells:
        if is_solution_directive(cell) or "book-only" in cell.get("metadata", {}).get("tags", []):
            continue
        if cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(plain_markdown(cell.source))
        elif cell.cell_type == "code":
            has_solution = bool(solution_blocks(cell.source))
            new = nbformat.v4.new_code_cell(strip_solutions(cell.source))
            if not has_solution and _CHECK_CALL.search(cell.source):
                new.metadata = {"editable": False, "deletable": False}  # the check cells stay as given
        else:
            new = nbformat.v4.new_raw_cell(cell.source)
        new.id = cell.get("id") or f"cell-{len(cells)}"
        cells.append(new)
    note = nbformat.v4.new_markdown_cell(STUDENT_NOTE.format(source=source_name))
    note.id = f"{Path(source_name).stem[:4]}-student-note"
    cells.insert(1, note)
    out.cells = cells
    text = nbformat.writes(out)
    for marker in (BEGIN, END, "solution-start", "solution-end"):
        if marker in text:
            raise HomeworkError(f"{source_name}: {marker!r} survived in the student edition")
    return out


README = """\
# Homework: student edition

These notebooks are the exercises of *Pooling Layers from Scratch* without their solutions. They are generated
from the book's companion notebooks in `book/exercises/` by `make homework` (`python tools/make_homework.py`):
do not edit them here, edit the sources and regenerate.

| notebook | exercises |
|---|---|
{rows}

## Students

Open a notebook, read the chapter it names, and in each exercise replace `raise NotImplementedError()` with your
code. Run the check cell under the exercise: it calls your function on a battery of small cases and, if one
fails, shows the input, the expected and the actual result, and a hint naming the likely mistake. A function
that still raises `NotImplementedError` on every case is reported as "not implemented yet"; one that raises it on
some cases only earns the share of the checks it passes (each case is a check, and so is the rule below, once a
case passes). Write the code yourself: a function that calls `pooling_lib`'s pooling code or uses PyTorch, in any
case, earns no credit (see `book/exercises/index.md`).

## Teachers

Collect the filled-in notebooks (any file names) and run, in the course environment:

```
python -m pooling_lib.grading submissions/*.ipynb
python -m pooling_lib.grading --json grades.json submissions/*.ipynb   # also a machine-readable record
```

Each notebook is executed from top to bottom in a fresh kernel, then every exercise's check is run again by the
grader on the functions the notebook defined. The command prints a score per exercise and a total, and exits
with status 0 only when every check passed (1 when one failed, 2 when a notebook could not be graded). The grader
is not a sandbox: a notebook's code runs in the kernel the checks run in (see `book/exercises/index.md`).
"""


def readme(names_by_notebook):
    rows = "\n".join(f"| `{nb}` | {', '.join(f'`{n}`' for n in names)} |" for nb, names in names_by_notebook.items())
    return README.format(rows=rows)


def render(sources=None):
    """Everything ``homework/`` should hold, as ``{file name: text}``, generated in memory from the sources."""
    sources = sorted(SOURCE_DIR.glob(SOURCE_GLOB)) if sources is None else sources
    files, names = {}, {}
    for path in sources:
        nb = nbformat.read(path, as_version=4)
        student = student_notebook(nb, path.name)
        nbformat.validate(student)
        files[path.name] = nbformat.writes(student) + "\n"
        names[path.name] = student.metadata["pooling_homework"]["exercises"]
    files["README.md"] = readme(names)
    return files


def stale_files(target_dir=TARGET_DIR, files=None):
    """Names of the files in ``target_dir`` that differ from, are missing from, or are extra to the generated
    set (a notebook left behind by a deleted source counts)."""
    files = render() if files is None else files
    stale = [name for name, text in files.items()
             if not (target_dir / name).exists() or (target_dir / name).read_text(encoding="utf-8") != text]
    extra = [p.name for p in target_dir.glob("*") if p.is_file() and p.name not in files] \
        if target_dir.exists() else []
    return sorted(stale + extra)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report whether homework/ is up to date")
    args = parser.parse_args(argv)
    try:
        files = render()
    except HomeworkError as exc:
        print(f"make_homework: {exc}", file=sys.stderr)
        return 2
    if args.check:
        stale = stale_files(TARGET_DIR, files)
        if stale:
            print("homework/ is stale; run `make homework`: " + ", ".join(stale), file=sys.stderr)
            return 1
        print(f"homework/ is up to date ({len(files)} files)")
        return 0
    TARGET_DIR.mkdir(exist_ok=True)
    for old in TARGET_DIR.glob("*"):
        if old.is_file() and old.name not in files:
            old.unlink()
    for name, text in files.items():
        (TARGET_DIR / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} files to {TARGET_DIR.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
