"""The solutions and the generated exercises, graded (`make test-grading`):

* each solution reproduces its stored outputs (strict nbval) — that run is its grading run,
  so it must also score full marks;
* each generated exercise scores 0, and so does a tampered one (check cells edited to print
  the passing line, reference outputs pasted in), which merges to exactly the same notebook;
* exercises are in sync with solutions.
"""

from __future__ import annotations

import nbformat
import pytest

from course_lib.grading import autograde as grader
from course_lib.grading.notebook import is_check, merge
from tools import make_exercises
from helpers import ROOT, notebooks

pytestmark = pytest.mark.grading

SOLUTIONS = notebooks("solutions")
EXERCISES = notebooks("exercises")


def ids(paths):
    return [p.name for p in paths]


@pytest.mark.parametrize("path", SOLUTIONS, ids=ids(SOLUTIONS))
def test_solution_reproduces_its_outputs_and_scores_full_marks(path):
    report = grader.grade(path, reference=path, strict=True)
    assert report.full_marks, grader.format_report(report)
    assert len(report.tasks) >= 4, f"{path.name}: at least four graded tasks"


@pytest.mark.parametrize("path", EXERCISES, ids=ids(EXERCISES))
def test_unfilled_exercise_scores_zero_and_tampering_gains_nothing(path, tmp_path):
    reference = ROOT / "solutions" / path.name
    report = grader.grade(path, reference=reference)
    assert report.score == 0 and report.max_score > 0, grader.format_report(report)
    assert all(t.status == "failed" and t.message for t in report.tasks)

    # Tamper: make every check cell print its passing line and paste the reference outputs.
    ref = nbformat.read(reference, as_version=4)
    tampered = nbformat.read(path, as_version=4)
    for cell, ref_cell in zip(tampered.cells, ref.cells):
        if is_check(cell):
            line = "".join(o.get("text", "") for o in ref_cell.outputs).strip()
            cell.source = f"print({line!r})"
            cell.outputs = ref_cell.outputs
            cell.execution_count = ref_cell.execution_count
    plain = merge(nbformat.read(path, as_version=4), ref)
    assert merge(tampered, ref) == plain, "tampered check cells must be replaced by the reference"
    tampered_path = tmp_path / path.name
    nbformat.write(tampered, tampered_path)
    report = grader.grade(tampered_path, reference=reference)
    assert report.score == 0, grader.format_report(report)


def test_exercises_are_in_sync_with_solutions(capsys):
    assert make_exercises.main([str(ROOT / "solutions"), str(ROOT / "exercises"), "--check"]) == 0, capsys.readouterr().out
