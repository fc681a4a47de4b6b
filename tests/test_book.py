"""The book's table of contents and its notebooks agree, and every notebook is stored executed.

nbval (run by `make test` over the notebooks that `tests/toc_notebooks.py` lists) compares the stored outputs;
these checks make sure no notebook escapes it and that what is stored is a real, clean run.
"""
import json
from pathlib import Path

import pytest

from toc_notebooks import ROOT, toc_files, toc_notebooks

BOOK_NOTEBOOKS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "book").rglob("*.ipynb")
                        if ".ipynb_checkpoints" not in p.parts)


def test_every_toc_entry_exists():
    missing = [name for name in toc_files()
               if not any((ROOT / f"{name}{suffix}").exists() for suffix in (".ipynb", ".md"))]
    assert not missing, f"_toc.yml names files that do not exist: {missing}"


def test_toc_and_book_folder_hold_the_same_notebooks():
    listed = set(toc_notebooks())
    on_disk = set(BOOK_NOTEBOOKS)
    assert on_disk - listed == set(), f"notebooks in book/ missing from _toc.yml: {sorted(on_disk - listed)}"
    assert listed - on_disk == set(), f"_toc.yml lists notebooks outside book/: {sorted(listed - on_disk)}"


@pytest.mark.parametrize("path", BOOK_NOTEBOOKS)
def test_notebook_is_stored_executed_in_order(path):
    nb = json.loads((ROOT / path).read_text())
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", f"{path}: kernel must be python3"
    counts = [cell.get("execution_count") for cell in nb["cells"] if cell["cell_type"] == "code"]
    assert counts, f"{path} has no code cell"
    assert None not in counts, f"{path} has unexecuted code cells: store it with its outputs"
    assert counts == list(range(1, len(counts) + 1)), f"{path} was not run top to bottom in a fresh kernel: {counts}"


@pytest.mark.parametrize("path", BOOK_NOTEBOOKS)
def test_notebook_has_no_errors_or_stderr(path):
    nb = json.loads((ROOT / path).read_text())
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"{path}, cell {i}: stored error {out.get('ename')}"
            assert not (out["output_type"] == "stream" and out["name"] == "stderr"), (
                f"{path}, cell {i}: stderr output (the book build fails on it): {''.join(out['text'])[:200]}"
            )


@pytest.mark.parametrize("path", BOOK_NOTEBOOKS)
def test_randomness_is_seeded(path):
    nb = json.loads((ROOT / path).read_text())
    source = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    for unseeded in ("np.random.rand(", "np.random.randn(", "np.random.random(", "np.random.randint(",
                     "np.random.normal(", "np.random.uniform(", "default_rng()"):
        assert unseeded not in source, f"{path} uses unseeded randomness: {unseeded}"
