"""The grading layout, without running a notebook (fast: part of `make test-lib`).

* the autograder imports nothing that is not installed with course_lib (no maintainer tools);
* solutions carry nbgrader's metadata and their exercise id, and so does every exercise;
* each chapter links to its exercise sheet and each sheet back to its chapter;
* students work in workspace/ (ignored, never overwritten) and every page says so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import nbformat
import pytest

from course_lib.grading.notebook import GRADE_ID_RE, exercise_id, is_answer, is_check, validate_solution
from helpers import ROOT, notebooks
from tools import sheets

SOLUTIONS = notebooks("solutions")
EXERCISES = notebooks("exercises")


def test_autograder_imports_only_what_is_installed_with_course_lib(tmp_path):
    code = ("import sys, course_lib.grade, course_lib.grading.autograde\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tools', 'yaml', 'jupyter_cache', 'helpers'))\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'course-grade = "course_lib.grading.autograde:main"' in pyproject
    assert not (ROOT / "course_lib" / "tools").exists(), "maintainer tools live in tools/, outside the package"


def test_sheets_are_in_shape(capsys):
    """nbgrader metadata, exercise ids, the Done cell, chapter links: `make sheets` would change nothing."""
    assert sheets.main(["--check"]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("path", SOLUTIONS + EXERCISES, ids=[f"{p.parent.name}/{p.name}" for p in SOLUTIONS + EXERCISES])
def test_sheet_has_nbgrader_metadata_and_its_exercise_id(path):
    nb = nbformat.read(path, as_version=4)
    assert exercise_id(nb) == path.stem
    if path.parent.name == "solutions":
        validate_solution(nb)
    for cell in nb.cells:
        meta = cell.metadata
        assert "grade" not in meta, f"{path.name} cell {cell.id}: old metadata.grade (run `make sheets`)"
        if is_check(cell):
            nbg = meta["nbgrader"]
            assert nbg["grade"] and nbg["locked"] and not nbg["solution"] and nbg["points"] > 0
        elif is_answer(cell):
            nbg = meta["nbgrader"]
            assert nbg["solution"] and not nbg["grade"] and nbg["grade_id"]
        if "nbgrader" in meta:
            assert meta["nbgrader"]["schema_version"] == 3
            assert GRADE_ID_RE.match(meta["nbgrader"]["grade_id"]), meta["nbgrader"]  # nbgrader's pattern


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_chapter_and_sheet_link_to_each_other(path):
    def links(nb_path, target):
        nb = nbformat.read(nb_path, as_version=4)
        return any(c.cell_type == "markdown" and f"]({target})" in c.source for c in nb.cells)

    assert links(ROOT / "notebooks" / path.name, f"../exercises/{path.name}"), f"chapter {path.name} -> its sheet"
    assert links(ROOT / "exercises" / path.name, f"../notebooks/{path.name}"), f"sheet {path.name} -> its chapter"


def test_students_work_in_an_ignored_workspace_and_every_page_says_so(tmp_path):
    assert "/workspace/" in (ROOT / ".gitignore").read_text().splitlines()
    pages = [ROOT / "README.md", ROOT / "book" / "grading.md"]
    for page in pages:
        text = page.read_text()
        assert "make workspace" in text and "workspace/" in text, page
    for path in pages + SOLUTIONS + EXERCISES:
        text = path.read_text()
        assert "NB=exercises/" not in text and "grade exercises/" not in text, f"{path}: students grade workspace/"
    for path in EXERCISES:
        done = nbformat.read(path, as_version=4).cells[-1]
        assert "grading" in done.metadata.get("tags", []) and "make workspace" in done.source, path.name

    # `make workspace` copies the sheets and never overwrites a student's copy.
    shutil.copy(ROOT / "Makefile", tmp_path)
    shutil.copytree(ROOT / "exercises", tmp_path / "exercises")
    (tmp_path / "workspace").mkdir()
    (tmp_path / "workspace" / EXERCISES[0].name).write_text("my work")
    proc = subprocess.run(["make", "-s", "-o", "setup", "workspace"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "workspace" / EXERCISES[0].name).read_text() == "my work"
    assert sorted(p.name for p in (tmp_path / "workspace").glob("*.ipynb")) == [p.name for p in EXERCISES]
    assert json.loads((tmp_path / "workspace" / EXERCISES[1].name).read_text())["cells"]


# ----------------------------------------------------------------------------- what a sheet asks (issue 16)
TASK_HEADING = re.compile(
    r"^## Task (?P<n>\d+) — .+ \((?P<kind>warm-up|transfer), (?P<points>\d+) points?, (?P<stars>★{1,3}), "
    r"(?P<minutes>\d+) min\)$")
TOTAL = re.compile(r"Total: (?P<points>\d+) points, about (?P<lo>\d+)–(?P<hi>\d+) minutes")


def sheet_tasks(nb) -> list[dict]:
    """The tasks of a solution, in order: heading fields, the markdown above the answer, answer tags, points."""
    found: list[dict] = []
    for cell in nb.cells:
        first = cell.source.splitlines()[0] if cell.source else ""
        if cell.cell_type == "markdown" and first.startswith("## Task"):
            match = TASK_HEADING.match(first)
            assert match, f"task heading not in the form '## Task N — title (warm-up|transfer, P points, ★…, M min)': {first!r}"
            found.append(dict(match.groupdict(), text=cell.source, answers=[], checked=0.0))
        elif found and cell.cell_type == "markdown" and not first.startswith("## Task"):
            if not found[-1]["answers"]:
                found[-1]["text"] += "\n" + cell.source
        elif found and is_answer(cell):
            found[-1]["answers"].append(cell.metadata.get("tags", []))
        elif found and is_check(cell):
            found[-1]["checked"] += cell.metadata["nbgrader"]["points"]
    return found


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_sheet_is_mostly_transfer_with_points_stars_minutes_and_hints(path):
    """≥ 2 transfer tasks carrying most points, each with a dropdown hint; the intro's totals add up."""
    nb = nbformat.read(path, as_version=4)
    tasks = sheet_tasks(nb)
    assert tasks, f"{path.name}: no '## Task' headings"
    for t in tasks:
        is_transfer = t["kind"] == "transfer"
        tagged = any("transfer" in tags for tags in t["answers"])
        assert t["answers"], f"{path.name} Task {t['n']}: no answer cell"
        assert is_transfer == tagged, f"{path.name} Task {t['n']}: heading says {t['kind']}, answer tags {t['answers']}"
        assert float(t["points"]) == t["checked"], \
            f"{path.name} Task {t['n']}: heading says {t['points']} points, its checks give {t['checked']}"
        if is_transfer:
            assert ":class: dropdown" in t["text"] and "Hint" in t["text"], \
                f"{path.name} Task {t['n']}: a transfer task needs a collapsible hint (```{{admonition}} Hint / :class: dropdown)"
    transfer = [t for t in tasks if t["kind"] == "transfer"]
    total = sum(int(t["points"]) for t in tasks)
    assert len(transfer) >= 2, f"{path.name}: {len(transfer)} transfer task(s); every sheet needs at least two"
    assert 2 * sum(int(t["points"]) for t in transfer) > total, f"{path.name}: most points must be on transfer tasks"
    intro = next(c.source for c in nb.cells if c.cell_type == "markdown")
    match = TOTAL.search(intro)
    assert match, f"{path.name}: the intro must say 'Total: P points, about A–B minutes'"
    minutes = sum(int(t["minutes"]) for t in tasks)
    assert int(match["points"]) == total, f"{path.name}: intro says {match['points']} points, the tasks sum to {total}"
    assert int(match["lo"]) <= minutes <= int(match["hi"]), \
        f"{path.name}: intro says {match['lo']}–{match['hi']} minutes, the tasks' estimates sum to {minutes}"
    assert 45 <= int(match["lo"]) and int(match["hi"]) <= 100, f"{path.name}: aim at 45–90 minutes a sheet"
