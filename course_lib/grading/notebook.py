"""The structure of graded notebooks: answer cells, check cells, stubs, and the merge.

A solution notebook (``solutions/NN_topic.ipynb``) is the single source:

* an **answer cell** is a code cell whose source holds a solution between the lines
  ``### BEGIN SOLUTION`` and ``### END SOLUTION``; it is tagged ``answer`` and its metadata is
  nbgrader's, ``{"nbgrader": {"grade_id": "softmax-answer", "solution": true, "grade": false,
  "locked": false, "schema_version": 3}}``;
* a **check cell** is a code cell tagged ``check``, an nbgrader autograder-test cell:
  ``{"nbgrader": {"grade_id": "softmax", "points": 2, "grade": true, "solution": false,
  "locked": true, "schema_version": 3}}``; its ``grade_id`` is the task's name. It calls
  ``course_lib.grading`` and prints one stable line when the task passes (stored in the
  solution as its output);
* the notebook's metadata names the exercise, ``{"course_lib": {"exercise": "01_attention"}}``,
  so a renamed copy ("Copy of 01_attention.ipynb") still finds its reference.

The schema before nbgrader's, ``metadata.grade = {"task", "points"}`` on check cells and
``{"id"}`` on answer cells, is still read (a student's old copy, a branch not yet migrated);
``to_nbgrader`` converts a notebook in place and is idempotent.

``make_exercise`` turns a solution into an exercise (answers stubbed, outputs stripped, ids
kept); ``merge`` puts a student's answer cells into a pristine copy of the solution, which
is what the grader runs, so check cells and reference outputs always come from solutions/.
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the build hook in setup.py loads this module without nbformat
    import nbformat

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
ANSWER_TAG = "answer"
CHECK_TAG = "check"
NBVAL_CHECK_TAG = "nbval-check-output"
SCHEMA_VERSION = 3  # nbgrader's cell-metadata schema
EXERCISE_KEY = "course_lib"  # notebook metadata: {"course_lib": {"exercise": "01_attention"}}
STUB_LINES = ("# YOUR CODE HERE", 'raise NotImplementedError("fill in this answer")')

GRADE_ID_RE = re.compile(r"^[a-zA-Z0-9_\-]*$")  # nbgrader's schema for grade_id
_BEGIN_RE = re.compile(r"^([ \t]*)### BEGIN SOLUTION[ \t]*$")
_END_RE = re.compile(r"^[ \t]*### END SOLUTION[ \t]*$")


class NotebookFormatError(ValueError):
    """A solution notebook breaks the conventions above."""


def tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _nbgrader(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def is_answer(cell) -> bool:
    return cell.get("cell_type") == "code" and (
        BEGIN in _text(cell.get("source", "")) or ANSWER_TAG in tags(cell) or _nbgrader(cell).get("solution") is True
    )


def is_check(cell) -> bool:
    nbg = _nbgrader(cell)
    return cell.get("cell_type") == "code" and (
        CHECK_TAG in tags(cell) or (nbg.get("grade") is True and not nbg.get("solution"))
    )


def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else str(source)


def grade_id(name: str) -> str:
    """``name`` as nbgrader allows a grade_id (letters, digits, ``_`` and ``-``): "basic masks" → "basic_masks"."""
    return re.sub(r"[^a-zA-Z0-9_\-]", "_", str(name))


def check_info(cell) -> tuple[str, float]:
    """(task, points) of a check cell: nbgrader's grade_id and points (or the old metadata.grade)."""
    nbg = _nbgrader(cell)
    if nbg:
        if "grade_id" not in nbg or "points" not in nbg:
            raise NotebookFormatError(
                f"check cell {cell.get('id')}: metadata.nbgrader needs 'grade_id' and 'points'; got {nbg!r}"
            )
        return grade_id(nbg["grade_id"]), float(nbg["points"])
    grade = cell.get("metadata", {}).get("grade", {})
    if "task" not in grade or "points" not in grade:
        raise NotebookFormatError(
            f"check cell {cell.get('id')}: metadata.nbgrader needs 'grade_id' and 'points'; got {grade!r}"
        )
    return grade_id(grade["task"]), float(grade["points"])


def answer_key(cell, index: int) -> str:
    """A stable key for an answer cell: its grade id, else its position."""
    meta = cell.get("metadata", {})
    gid = _nbgrader(cell).get("grade_id") or meta.get("grade", {}).get("id")
    return grade_id(gid or f"answer-{index}")


def exercise_id(nb) -> str | None:
    """The exercise a notebook belongs to, as ``make exercises`` wrote it into its metadata."""
    meta = nb.get("metadata", {}).get(EXERCISE_KEY, {})
    value = meta.get("exercise") if isinstance(meta, dict) else None
    return str(value) if value else None


def to_nbgrader(nb, exercise: str | None = None) -> bool:
    """Convert ``nb`` (a solution) in place to nbgrader's cell metadata; return whether it changed.

    Check cells get ``grade_id`` = their task and their points, answer cells ``solution: true``
    and their grade id; the old ``metadata.grade`` is dropped. With ``exercise`` the notebook's
    metadata gets the exercise id. Running it again changes nothing.
    """
    before = repr(nb)
    n = 0
    for cell in nb["cells"]:
        if cell.get("cell_type") != "code":
            continue
        meta = cell.setdefault("metadata", {})
        if is_check(cell):
            task, points = check_info(cell)
            meta["nbgrader"] = {"grade": True, "grade_id": task, "locked": True,
                                "points": int(points) if points == int(points) else points,
                                "schema_version": SCHEMA_VERSION, "solution": False}
            meta.pop("grade", None)
        elif is_answer(cell):
            meta["nbgrader"] = {"grade": False, "grade_id": answer_key(cell, n), "locked": False,
                                "schema_version": SCHEMA_VERSION, "solution": True}
            meta.pop("grade", None)
            n += 1
    if exercise is not None:
        nb.setdefault("metadata", {})[EXERCISE_KEY] = {"exercise": exercise}
    return repr(nb) != before


def tasks(nb) -> dict[str, float]:
    """Task → total points, in notebook order."""
    out: dict[str, float] = {}
    for cell in nb.cells:
        if is_check(cell):
            task, points = check_info(cell)
            out[task] = out.get(task, 0.0) + points
    return out


def stub_source(source: str) -> str:
    """Replace every BEGIN/END SOLUTION region by a stub that raises NotImplementedError.

    The stub keeps the indentation of the BEGIN line, so a solution inside a function body
    becomes a function that raises when called, and a top-level solution raises when run.
    """
    lines = source.split("\n")
    out: list[str] = []
    inside = False
    for n, line in enumerate(lines, 1):
        m = _BEGIN_RE.match(line)
        if m:
            if inside:
                raise NotebookFormatError(f"line {n}: nested '{BEGIN}'")
            inside = True
            out += [m.group(1) + s for s in STUB_LINES]
        elif _END_RE.match(line):
            if not inside:
                raise NotebookFormatError(f"line {n}: '{END}' without '{BEGIN}'")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise NotebookFormatError(f"'{BEGIN}' without '{END}'")
    return "\n".join(out)


def validate_solution(nb) -> None:
    """Raise NotebookFormatError unless ``nb`` follows the solution conventions."""
    ids = [c.get("id") for c in nb.cells]
    if None in ids or len(set(ids)) != len(ids):
        raise NotebookFormatError("every cell needs a unique id (nbformat ≥ 4.5)")
    n_answers = 0
    for cell in nb.cells:
        if is_answer(cell):
            n_answers += 1
            if BEGIN not in cell.source:
                raise NotebookFormatError(f"answer cell {cell.id}: no '{BEGIN}' region")
            stub_source(cell.source)  # raises on unbalanced markers
            if is_check(cell):
                raise NotebookFormatError(f"cell {cell.id}: both an answer and a check cell")
        if is_check(cell):
            check_info(cell)
            if cell.get("execution_count") is None or not cell.get("outputs"):
                raise NotebookFormatError(
                    f"check cell {cell.id}: the solution must be stored executed, with the "
                    "check's passing line as its output"
                )
    if not n_answers or not tasks(nb):
        raise NotebookFormatError("a graded notebook needs answer cells and check cells")
    ids = [str(_nbgrader(c).get("grade_id", check_info(c)[0])) for c in nb.cells if is_check(c)]
    ids += [str(_nbgrader(c)["grade_id"]) for c in nb.cells if is_answer(c) and "grade_id" in _nbgrader(c)]
    if len(set(ids)) != len(ids):
        raise NotebookFormatError(f"grade ids must be unique (one check cell per task); got {ids}")
    bad = [i for i in ids if not i or not GRADE_ID_RE.match(i)]
    if bad:
        raise NotebookFormatError(f"grade ids must match {GRADE_ID_RE.pattern} (nbgrader's schema); got {bad}")


def make_exercise(solution, exercise: str | None = None) -> nbformat.NotebookNode:
    """The exercise generated from a solution: answers stubbed, outputs stripped, ids kept.

    The exercise id (``exercise``, else the solution's own) goes into the notebook's metadata.
    """
    validate_solution(solution)
    nb = copy.deepcopy(solution)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            if is_answer(cell):
                cell.source = stub_source(cell.source)
                if ANSWER_TAG not in tags(cell):
                    cell.metadata.setdefault("tags", []).append(ANSWER_TAG)
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    to_nbgrader(nb, exercise or exercise_id(solution))  # an exercise always has nbgrader's metadata, whatever its solution still has
    return nb


def make_reference(solution) -> dict:
    """What the installed grader ships for an exercise: the solution with its answers stubbed.

    Check cells, the code between them and every stored output stay: they are what the
    grader compares with. Works on plain JSON (``setup.py`` builds these without nbformat).
    """
    nb = copy.deepcopy(solution)
    for cell in nb["cells"]:
        if is_answer(cell):
            cell["source"] = stub_source(_text(cell["source"]))
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def _student_answers(student) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """The student's answer cells, indexed by cell id, by grade id, and in order."""
    by_id: dict[str, str] = {}
    by_key: dict[str, str] = {}
    ordered: list[str] = []
    n = 0
    for cell in student.get("cells", []):
        if cell.get("cell_type") != "code" or not is_answer(cell):
            continue
        src = _text(cell.get("source", ""))
        if cell.get("id"):
            by_id[str(cell["id"])] = src
        by_key[answer_key(cell, n)] = src
        ordered.append(src)
        n += 1
    return by_id, by_key, ordered


def merge(student, reference, *, strict: bool = False) -> nbformat.NotebookNode:
    """A pristine copy of ``reference`` with the student's answer cells put in.

    Answer cells are matched by cell id, then by ``metadata.grade.id``, then by their order
    among answer cells (Colab may drop ids); an answer the student's notebook lacks stays a
    stub. Everything else — check cells, their stored outputs, the prose and the other code —
    comes from ``reference``. Check cells are tagged ``nbval-check-output`` so nbval compares
    their outputs even in lax mode; with ``strict`` every cell is compared (the solution run).
    """
    by_id, by_key, ordered = _student_answers(student)
    merged = copy.deepcopy(reference)
    n = 0
    for cell in merged.cells:
        if cell.cell_type != "code":
            continue
        if is_answer(cell):
            key = answer_key(cell, n)
            if cell.get("id") in by_id:
                src = by_id[cell["id"]]
            elif key in by_key:
                src = by_key[key]
            elif n < len(ordered):
                src = ordered[n]
            else:
                src = stub_source(cell.source)
            n += 1
            cell.source = src
            if not strict:
                # a student's answer prints what it likes: never compare it
                cell.outputs = []
                cell.execution_count = None
        elif is_check(cell) and NBVAL_CHECK_TAG not in tags(cell):
            cell.metadata.setdefault("tags", []).append(NBVAL_CHECK_TAG)
    return merged
