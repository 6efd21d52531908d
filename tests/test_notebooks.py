"""The lecture notebooks (`make test-notebooks`), each executed once per `make test`:

* lecture notebooks run top to bottom (into the book's execution cache, so the book build
  that follows executes nothing) within the time budget;
* every notebook starts with the current setup cell and is in the table of contents.

The solutions and exercises are graded in ``test_grading_notebooks.py`` (`make test-grading`).
"""

from __future__ import annotations

import json

import nbformat
import pytest

from tools import nbexec, setup_cell
from helpers import notebooks, toc_files

pytestmark = pytest.mark.notebooks

LECTURES = notebooks("notebooks")
SOLUTIONS = notebooks("solutions")
EXERCISES = notebooks("exercises")
# Budget per lecture notebook on a 2-core CPU is 60 s (Triton chapter: 120 s), measured alone
# and recorded in the README (every chapter measures 14–28 s there). Under `pytest -n 2` a notebook
# shares the cores with whatever the other worker runs (grading kernels, the Triton interpreter),
# and one run of 06_positions (20 s alone) took 141 s that way on a fresh clone, so the guard here
# is four times the budget: it catches a notebook that is far over budget, not a busy neighbour.
BUDGET = {"12_triton.ipynb": 480}
DEFAULT_BUDGET = 240


def ids(paths):
    return [p.name for p in paths]


def test_there_is_something_to_test():
    assert LECTURES and SOLUTIONS and EXERCISES
    assert {p.name for p in SOLUTIONS} == {p.name for p in EXERCISES}
    assert {p.name for p in SOLUTIONS} <= {p.name for p in LECTURES}, "each exercise belongs to a chapter"


@pytest.mark.parametrize("path", LECTURES, ids=ids(LECTURES))
def test_lecture_notebook_executes_within_budget(path):
    nb = nbformat.read(path, as_version=4)
    assert all(c.get("outputs", []) == [] for c in nb.cells if c.cell_type == "code"), \
        f"{path.name}: lecture notebooks are stored without outputs"
    assert "widgets" not in nb.metadata, f"{path.name}: stored widget state"
    result = nbexec.run_one(str(path), force=True, inplace=False, timeout=nbexec.DEFAULT_TIMEOUT)
    assert result.error is None, f"{path.name} failed:\n{result.error}"
    assert result.seconds < BUDGET.get(path.name, DEFAULT_BUDGET), f"{path.name}: {result.seconds:.0f} s"
    assert nbexec.is_cached(path), "the executed notebook must be in the book's cache"


@pytest.mark.parametrize("path", LECTURES + SOLUTIONS + EXERCISES,
                         ids=[f"{p.parent.name}/{p.name}" for p in LECTURES + SOLUTIONS + EXERCISES])
def test_notebook_starts_with_the_current_setup_cell(path):
    assert setup_cell.check(path) is None, setup_cell.check(path)
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert json.loads(nbformat.writes(nb))  # valid JSON, valid nbformat


def test_every_notebook_is_in_the_table_of_contents():
    files = {f"{p.parent.name}/{p.stem}" for p in LECTURES + EXERCISES}
    listed = set(toc_files())
    assert files <= listed, f"missing from _toc.yml: {sorted(files - listed)}"
