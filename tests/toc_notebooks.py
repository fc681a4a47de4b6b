"""Print the notebooks listed in _toc.yml, one per line (the Makefile hands them to nbval).

Also used by tests/test_book.py to check that the TOC and book/ hold the same notebooks.
"""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def toc_files():
    """Every file named in _toc.yml, as paths relative to the repository root (without suffix)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    found = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                found.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc.get("parts", toc.get("chapters", [])))
    return found


def toc_notebooks():
    """Paths of the .ipynb files in the TOC, relative to the repository root."""
    return [f"{name}.ipynb" for name in toc_files() if (ROOT / f"{name}.ipynb").exists()]


if __name__ == "__main__":
    print("\n".join(toc_notebooks()))
