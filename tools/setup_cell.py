"""The first cell of every notebook: install course_lib in Colab, do nothing elsewhere.

The cell's text is rendered from _config.yml's repository URL, so the URL has one home.
``python -m tools.setup_cell --write notebooks solutions`` rewrites the cells;
``--check`` (used by the tests) fails when a notebook's first cell is out of date.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

from tools.project import repository_url

SETUP_TAG = "setup"

TEMPLATE = '''\
# Setup: in Colab, install course_lib from the course repository; elsewhere do nothing.
import importlib.util, os, subprocess, sys
if "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ:
    if importlib.util.find_spec("course_lib") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                        "git+{url}"], check=True)'''


def setup_source() -> str:
    return TEMPLATE.format(url=repository_url())


def setup_cell() -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(setup_source())
    cell.metadata["tags"] = [SETUP_TAG, "remove-cell"]
    return cell


def is_setup_cell(cell) -> bool:
    return cell.cell_type == "code" and SETUP_TAG in cell.get("metadata", {}).get("tags", [])


def notebooks(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out += sorted(p.glob("*.ipynb")) if p.is_dir() else [p]
    return out


def check(path: Path) -> str | None:
    """None when the notebook starts with the current setup cell, else what is wrong."""
    nb = nbformat.read(path, as_version=4)
    if not nb.cells or not is_setup_cell(nb.cells[0]):
        return f"{path}: the first cell is not the setup cell (tag '{SETUP_TAG}')"
    if nb.cells[0].source != setup_source():
        return f"{path}: the setup cell differs from the one rendered from _config.yml"
    return None


def write(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    if nb.cells and is_setup_cell(nb.cells[0]):
        if nb.cells[0].source == setup_source():
            return False
        nb.cells[0].source = setup_source()
    else:
        nb.cells.insert(0, setup_cell())
    nbformat.write(nb, path)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("paths", nargs="+")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    bad = 0
    for path in notebooks(args.paths):
        if args.check:
            msg = check(path)
            if msg:
                print(msg)
                bad += 1
        elif write(path):
            print(f"updated {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
