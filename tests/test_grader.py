"""The grading pipeline: stubbing, merging, finding the reference, the grader's behaviour on bad
student work, the plugin's records, and a whole class graded at once."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib.grading import autograde as grader
from course_lib.grading.notebook import (
    NotebookFormatError,
    exercise_id,
    is_answer,
    is_check,
    make_exercise,
    merge,
    stub_source,
    tasks,
    to_nbgrader,
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
    next(c for c in broken.cells if is_check(c)).metadata["nbgrader"].pop("points")
    with pytest.raises(NotebookFormatError, match="needs 'grade_id' and 'points'"):
        validate_solution(broken)


def test_merge_matches_answers_without_ids_by_order():
    """Colab may save a notebook without cell ids: answers are then matched by order."""
    sol = nbformat.read(SOLUTION, as_version=4)
    student = json.loads(nbformat.writes(make_exercise(sol)))
    for n, cell in enumerate(c for c in student["cells"] if is_answer(c)):
        cell.pop("id")
        cell["metadata"].pop("nbgrader")
        cell["source"] = f"answer_{n} = {n}"
    merged = merge(student, sol)
    answers = [c.source for c in merged.cells if is_answer(c)]
    assert answers == [f"answer_{n} = {n}" for n in range(len(answers))]


def _student_with(answers: dict[str, str]) -> nbformat.NotebookNode:
    """The exercise with some answer cells (by grade id) replaced."""
    ex = make_exercise(nbformat.read(SOLUTION, as_version=4))
    sol = nbformat.read(SOLUTION, as_version=4)
    for e, s in zip(ex.cells, sol.cells):
        gid = e.metadata.get("nbgrader", {}).get("grade_id")
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
    assert report.score == 1 and report.max_score == 16, grader.format_report(report)
    assert got["qk_variance"][0] == 1
    assert "timed out" in got["softmax"][1]
    assert "expected shape (2, 3, 5, 4); got (2, 3, 6, 4)" in got["attention"][1]
    assert got["saturation"][0] == 0 and got["saturation"][1]
    table = grader.format_report(report)
    assert "TOTAL" in table and "1 / 16" in table


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
    assert data["score"] == 0 and data["max_score"] == 16 and not data["full_marks"]
    assert all("could not read the notebook" in t["message"] for t in data["tasks"])


def test_grade_cli_rejects_a_missing_path(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "course_lib.grade", str(tmp_path / "nope.ipynb")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_failure_messages_come_from_the_plugins_records():
    """The plugin records what happened as data; the message is built from it, not parsed."""
    assert grader.failure_message({"kind": "error", "ename": "AssertionError",
                                   "evalue": "softmax on x: wrong values\nmore"}) == \
        "AssertionError: softmax on x: wrong values"
    assert grader.failure_message({"kind": "output"}) == "the check's output differs from the reference output"
    assert grader.failure_message({"kind": "timeout", "timeout": 10}).startswith("timed out")
    assert "kernel died" in grader.failure_message({"kind": "kernel"})
    assert grader.failure_message({"kind": "other", "exc_type": "RuntimeError", "message": "x"}) == "RuntimeError: x"


def test_plugin_records_exception_type_message_and_cell(tmp_path):
    """Run nbval with the plugin on a small notebook: each failure is recorded as data."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", id="ok"),
                nbformat.v4.new_code_cell("raise ValueError('boom: the answer')", id="raises"),
                nbformat.v4.new_code_cell("print('two')", id="differs"),
                nbformat.v4.new_code_cell("import time\ntime.sleep(60)", id="hangs")]
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="one\n")]
    nb.cells[2].execution_count = 3
    nb.cells[2].metadata["tags"] = ["nbval-check-output"]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    cells, log = grader.run_nbval(path, strict=False, cell_timeout=5, workdir=tmp_path)
    assert cells is not None, log
    got = {r["cell_id"]: r for r in cells if r["when"] == "call"}
    assert got["ok"]["outcome"] == "passed" and "kind" not in got["ok"]
    assert (got["raises"]["kind"], got["raises"]["ename"], got["raises"]["evalue"]) == \
        ("error", "ValueError", "boom: the answer")
    assert got["raises"]["cell_num"] == 1
    assert got["differs"]["kind"] == "output"
    assert got["hangs"]["kind"] == "timeout" and got["hangs"]["timeout"] == 5


# ----------------------------------------------------------------------------- the reference
def test_exercise_carries_its_id_and_nbgrader_metadata():
    ex = make_exercise(nbformat.read(SOLUTION, as_version=4), exercise="01_attention")
    assert exercise_id(ex) == "01_attention"
    checks = [c.metadata["nbgrader"] for c in ex.cells if is_check(c)]
    answers = [c.metadata["nbgrader"] for c in ex.cells if is_answer(c)]
    assert [c["grade_id"] for c in checks] == ["softmax", "attention", "qk_variance", "saturation", "logit_scale",
                                               "kernel_queries_keys"]
    assert all(c["grade"] and c["locked"] and not c["solution"] and c["points"] > 0 for c in checks)
    assert all(a["solution"] and not a["grade"] and not a["locked"] for a in answers)
    assert all(c["schema_version"] == 3 for c in checks + answers)
    assert not any("grade" in c.metadata for c in ex.cells)


def test_old_schema_is_still_read_and_migrates_idempotently():
    """A student's old copy, or a branch that still writes metadata.grade, keeps working."""
    new = nbformat.read(SOLUTION, as_version=4)
    old = copy.deepcopy(new)
    old.metadata.pop("course_lib")
    for cell in old.cells:
        nbg = cell.metadata.pop("nbgrader", None)
        if nbg and nbg["grade"]:
            cell.metadata["grade"] = {"task": nbg["grade_id"], "points": nbg["points"]}
        elif nbg:
            cell.metadata["grade"] = {"id": nbg["grade_id"]}
    assert tasks(old) == tasks(new) == {"softmax": 2, "attention": 2, "qk_variance": 1, "saturation": 1,
                                        "logit_scale": 5, "kernel_queries_keys": 5}
    assert merge(make_exercise(old), new) == merge(make_exercise(new), new)
    assert to_nbgrader(old, "01_attention") is True
    assert old == new
    assert to_nbgrader(old, "01_attention") is False


@pytest.mark.parametrize("name", ["Copy of 01_attention.ipynb", "01_attention_ana.ipynb", "homework.ipynb"])
def test_a_renamed_copy_finds_its_reference_without_flags(tmp_path, name):
    ex = json.loads(nbformat.writes(make_exercise(nbformat.read(SOLUTION, as_version=4))))
    assert grader.exercise_of(tmp_path / name, ex) == "01_attention"
    assert grader.find_reference(tmp_path / name, None, "01_attention").name == "01_attention.ipynb"
    ex["metadata"].pop("course_lib")  # no id: the file name decides, when it names the exercise
    expected = None if name == "homework.ipynb" else "01_attention"
    assert grader.exercise_of(tmp_path / name, ex) == expected
    with pytest.raises(LookupError, match="give --reference"):
        grader.find_reference(tmp_path / name, None, None)


# ----------------------------------------------------------------------------- code outside the answers
def test_code_outside_an_answer_cell_is_named_by_cell_and_task(tmp_path):
    """A softmax written in a new cell passes its inline check but is not graded: the grader says so."""
    student = _student_with({"attention-answer": None, "qk-variance-answer": None,
                             "mean-max-weight-answer": None, "d-saturated-answer": None})
    sol = nbformat.read(SOLUTION, as_version=4)
    answer = next(c for c in sol.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "softmax-answer")
    at = next(i for i, c in enumerate(student.cells) if c.id == answer.id)
    code = "\n".join(ln for ln in answer.source.splitlines() if "SOLUTION" not in ln)
    student.cells.insert(at + 1, nbformat.v4.new_code_cell(code))  # the stub stays above it
    student.cells.insert(len(student.cells), nbformat.v4.new_code_cell("!course-grade mine.ipynb"))
    path = tmp_path / "Copy of 01_attention.ipynb"
    nbformat.write(student, path)
    report = grader.grade(path)
    got = {t.task: t for t in report.tasks}
    assert report.score == 4, grader.format_report(report)
    want = f"your code in cell {at + 2} was not graded: move it into the answer cell of Task 1 (softmax)"
    assert got["softmax"].message == want
    assert report.notes == [want], "the grading cell at the end is not student work to report"
    assert "NOTE: " + want in grader.format_report(report)


# ----------------------------------------------------------------------------- a whole class
def _class_folder(root: Path) -> Path:
    """alice: full marks; bob: the stub and a broken file; carol: forges the report and kills pytest."""
    sol = nbformat.read(SOLUTION, as_version=4)
    (root / "alice").mkdir(parents=True)
    nbformat.write(_student_with({k: None for k in ("softmax-answer", "attention-answer", "qk-variance-answer",
                                                    "mean-max-weight-answer", "d-saturated-answer",
                                                    "logit-scale-answer", "kernel-qk-answer")}),
                   root / "alice" / "Copy of 01_attention.ipynb")
    (root / "bob" / "week1").mkdir(parents=True)
    nbformat.write(make_exercise(sol), root / "bob" / "week1" / "01_attention.ipynb")
    (root / "bob" / "03_masks.ipynb").write_text('{"cells": [')
    (root / "carol").mkdir()
    passed = [{"cell_id": c.id, "when": "call", "outcome": "passed"} for c in sol.cells if c.cell_type == "code"]
    forge = ("import json, os, signal\n"
             f"fake = {{'exitstatus': 0, 'cells': {passed!r}}}\n"
             "json.dump(fake, open(os.environ['COURSE_GRADE_REPORT'], 'w'))\n"
             "os.kill(os.getppid(), signal.SIGKILL)")
    nbformat.write(_student_with({"softmax-answer": forge}), root / "carol" / "01_attention.ipynb")
    return root


def test_a_class_is_graded_in_parallel_one_row_per_student_and_task(tmp_path):
    klass = _class_folder(tmp_path / "class")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "course_lib.grade", str(klass), "--jobs", "2", "--cell-timeout", "20",
         "--json", str(out / "grades.json"), "--csv", str(out / "grades.csv"),
         "--gradebook", str(out / "gradebook.csv")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    data = json.loads((out / "grades.json").read_text())
    assert len(data["notebooks"]) == 4
    with open(out / "grades.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert table == [{k: str(v) for k, v in r.items()} for r in data["rows"]]
    by = {}
    for r in table:
        by.setdefault((r["student"], r["exercise"]), []).append(r)
    assert sorted(by) == [("alice", "01_attention"), ("bob", "01_attention"), ("bob", "03_masks"),
                          ("carol", "01_attention")], proc.stdout
    alice = by["alice", "01_attention"]
    assert [r["task"] for r in alice] == ["softmax", "attention", "qk_variance", "saturation", "logit_scale",
                                          "kernel_queries_keys"]
    assert all(r["status"] == "passed" and r["points"] == r["max_points"] for r in alice), proc.stdout
    assert all(float(r["points"]) == 0 for r in by["bob", "01_attention"] + by["carol", "01_attention"]), proc.stdout
    assert all("could not be run" in r["message"] for r in by["carol", "01_attention"]), proc.stdout
    assert all("could not read the notebook" in r["message"] for r in by["bob", "03_masks"]), proc.stdout
    with open(out / "gradebook.csv", newline="") as f:
        book = list(csv.reader(f))
    assert book[0] == ["student", "01_attention", "03_masks", "total"]
    assert book[1:] == [["alice", "16", "0", "16"], ["bob", "0", "0", "0"], ["carol", "0", "0", "0"]]
