"""The Cython chapter and the shipped kernel cannot drift apart.

Chapter 8 builds max pooling forward in ``%%cython`` cells, version after version; its last version must be,
character for character, the block of ``pooling_lib/_kernels.pyx`` between the CHAPTER 8 KERNEL markers (the
kernel that ``pooling_lib`` compiles, and calls when a window's taps lie too far apart for its fast kernel). A ``%%cython`` cell that fails to compile prints to stderr and
raises nothing, so every such cell must be followed by a code cell that uses what it built.
"""
import json
import re

import pytest

from toc_notebooks import ROOT

CHAPTER = ROOT / "book" / "08_cython_step_by_step.ipynb"
KERNELS = ROOT / "pooling_lib" / "_kernels.pyx"
BEGIN = "# --- BEGIN CHAPTER 8 KERNEL ---"
END = "# --- END CHAPTER 8 KERNEL ---"


def marked_block(text):
    """The lines strictly between the BEGIN and END marker lines (each marker must occur exactly once)."""
    lines = text.splitlines()
    begins = [k for k, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [k for k, line in enumerate(lines) if line.strip() == END]
    assert len(begins) == 1 and len(ends) == 1, f"expected one {BEGIN!r} and one {END!r} line in {KERNELS}"
    assert begins[0] < ends[0], "the BEGIN marker must come before the END marker"
    return "\n".join(lines[begins[0] + 1 : ends[0]])


def code_cells(path):
    cells = json.loads(path.read_text())["cells"]
    return [(k, cell["cell_type"], "".join(cell["source"])) for k, cell in enumerate(cells)]


def is_cython_cell(cell_type, source):
    return cell_type == "code" and source.lstrip().startswith("%%cython")


def cell_body(source):
    """A %%cython cell's code: everything after the magic line."""
    _, _, body = source.lstrip().partition("\n")
    return body


@pytest.fixture(scope="module")
def cells():
    return code_cells(CHAPTER)


def test_marked_block_is_not_empty():
    block = marked_block(KERNELS.read_text())
    assert re.search(r"^def max_pool2d_nchw\(", block, re.M), "the marked block must define max_pool2d_nchw"


def test_last_cython_cell_is_the_shipped_kernel(cells):
    cython_cells = [source for _, kind, source in cells if is_cython_cell(kind, source)]
    assert cython_cells, "chapter 8 has no %%cython cell"
    book = cell_body(cython_cells[-1]).strip("\n")
    shipped = marked_block(KERNELS.read_text()).strip("\n")
    if book != shipped:
        import difflib

        diff = "\n".join(difflib.unified_diff(shipped.splitlines(), book.splitlines(), "pooling_lib/_kernels.pyx",
                                              "chapter 8, last %%cython cell", lineterm=""))
        pytest.fail(f"the book's last %%cython cell differs from the marked kernel block:\n{diff}")


def test_last_cython_cell_builds_with_openmp(cells):
    magic = [source for _, kind, source in cells if is_cython_cell(kind, source)][-1].lstrip().splitlines()[0]
    assert "--compile-args=-fopenmp" in magic and "--link-args=-fopenmp" in magic, magic


def test_every_cython_cell_is_followed_by_a_code_cell(cells):
    for position, (k, kind, source) in enumerate(cells):
        if not is_cython_cell(kind, source):
            continue
        assert position + 1 < len(cells), f"cell {k} (%%cython) is the last cell of the chapter"
        _, next_kind, next_source = cells[position + 1]
        assert next_kind == "code" and next_source.strip(), (
            f"cell {k} (%%cython) must be followed immediately by a code cell that uses what it built"
        )
        assert not is_cython_cell(next_kind, next_source), f"cell {k} (%%cython) is followed by another %%cython cell"
