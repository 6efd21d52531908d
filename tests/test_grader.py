"""The grading pipeline: stubbing, merging, and the grader's behaviour on bad student work."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import nbformat
import pytest

from course_lib import grade as grader
from course_lib.grading.notebook import (
    BEGIN,
    NotebookFormatError,
    is_answer,
    is_check,
    make_exercise,
    merge,
    stub_source,
    validate_solution,
)
from helpers import ROOT

pytestmark = pytest.mark.grading

SOLUTION = ROOT / "solutions" / "01_attention.ipynb"


def test_stub_keeps_the_surrounding_code_and_indentation():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\nprint('after')"
    assert stub_source(src) == (
        "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError(\"fill in this answer\")\nprint('after')"
    )
    ns: dict = {}
    exec(stub_source(src), ns)  # noqa: S102 - the stub must be valid Python
    with pytest.raises(NotImplementedError):
        ns["f"](1)


@pytest.mark.parametrize(
    "src, message",
    [
        ("### BEGIN SOLUTION\nx = 1", "without"),
        ("x = 1\n### END SOLUTION", "without"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "nested"),
    ],
)
def test_stub_rejects_unbalanced_markers(src, message):
    with pytest.raises(NotebookFormatError, match=message):
        stub_source(src)


def test_exercise_is_the_solution_with_answers_stubbed_and_outputs_stripped():
    sol = nbformat.read(SOLUTION, as_version=4)
    ex = make_exercise(sol)
    assert [c.id for c in ex.cells] == [c.id for c in sol.cells]
    for s, e in zip(sol.cells, ex.cells):
        if e.cell_type == "code":
            assert e.outputs == [] and e.execution_count is None
        if is_answer(s):
            assert "BEGIN SOLUTION" not in e.source and "NotImplementedError" in e.source
        else:
            assert e.source == s.source
    assert "widgets" not in ex.metadata


def test_solution_conventions_are_enforced():
    sol = nbformat.read(SOLUTION, as_version=4)
    validate_solution(sol)
    broken = copy.deepcopy(sol)
    check = next(c for c in broken.cells if is_check(c))
    check.outputs = []
    with pytest.raises(NotebookFormatError, match="stored executed"):
        validate_solution(broken)
    broken = copy.deepcopy(sol)
    next(c for c in broken.cells if is_check(c)).metadata["grade"].pop("points")
    with pytest.raises(NotebookFormatError, match="needs 'task' and 'points'"):
        validate_solution(broken)


def test_merge_matches_answers_without_ids_by_order():
    """Colab may save a notebook without cell ids: answers are then matched by order."""
    sol = nbformat.read(SOLUTION, as_version=4)
    student = json.loads(nbformat.writes(make_exercise(sol)))
    for n, cell in enumerate(c for c in student["cells"] if is_answer(c)):
        cell.pop("id")
        cell["metadata"].pop("grade")
        cell["source"] = f"answer_{n} = {n}"
    merged = merge(student, sol)
    answers = [c.source for c in merged.cells if is_answer(c)]
    assert answers == [f"answer_{n} = {n}" for n in range(len(answers))]


def _student_with(answers: dict[str, str]) -> nbformat.NotebookNode:
    """The exercise with some answer cells (by grade id) replaced."""
    ex = make_exercise(nbformat.read(SOLUTION, as_version=4))
    sol = nbformat.read(SOLUTION, as_version=4)
    for e, s in zip(ex.cells, sol.cells):
        gid = e.metadata.get("grade", {}).get("id")
        if gid in answers:
            e.source = answers[gid] if answers[gid] is not None else s.source
    return ex


def test_grader_survives_hangs_wrong_shapes_and_a_dead_kernel(tmp_path):
    """Each broken task loses its own points only; the grader reports why and never crashes."""
    student = _student_with({
        "softmax-answer": "def softmax(x, dim=-1):\n    while True:\n        pass",
        "attention-answer": "def attention(q, k, v, mask=None):\n    return v, v",
        "qk-variance-answer": None,  # the reference answer
        "mean-max-weight-answer": None,
        "d-saturated-answer": "import os\nos._exit(1)",
    })
    path = tmp_path / "01_attention.ipynb"
    nbformat.write(student, path)
    report = grader.grade(path, reference=SOLUTION, cell_timeout=10)
    got = {t.task: (t.points, t.message) for t in report.tasks}
    assert report.score == 2 and report.max_score == 10, grader.format_report(report)
    assert got["qk_variance"][0] == 2
    assert "timed out" in got["softmax"][1]
    assert "expected shape (2, 3, 5, 4); got (2, 3, 6, 4)" in got["attention"][1]
    assert got["saturation"][0] == 0 and got["saturation"][1]
    table = grader.format_report(report)
    assert "TOTAL" in table and "2 / 10" in table


def test_unreadable_notebook_scores_zero_and_exit_status_is_nonzero(tmp_path):
    bad = tmp_path / "01_attention.ipynb"
    bad.write_text("{ this is not json")
    out = tmp_path / "score.json"
    proc = subprocess.run(
        [sys.executable, "-m", "course_lib.grade", str(bad), "--reference", str(SOLUTION), "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(out.read_text())
    assert data["score"] == 0 and data["max_score"] == 10 and not data["full_marks"]
    assert all("could not read the notebook" in t["message"] for t in data["tasks"])


def test_grade_cli_rejects_a_missing_path(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "course_lib.grade", str(tmp_path / "nope.ipynb")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_failure_line_extraction():
    rep = ("Notebook cell execution failed\nCell 5: Cell execution caused an exception\n\nInput:\nx\n\n"
           "Traceback:\n\x1b[0;31mAssertionError\x1b[0m: softmax on x: wrong values\n")
    assert grader.failure_line(rep) == "AssertionError: softmax on x: wrong values"
    assert grader.failure_line("Cell outputs differ\n...") == "the check's output differs from the reference output"
    assert grader.failure_line("Timeout of 10 seconds exceeded executing cell") .startswith("timed out")
    assert BEGIN == "### BEGIN SOLUTION"
