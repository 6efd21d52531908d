"""Keep the exercise sheets and their chapters in the shape the grader and the book expect.

``python -m tools.sheets --write`` (``make sheets``; ``make exercises`` runs it first) is
idempotent — run it again after merging a branch that edits a solution — and for each
``solutions/NN_topic.ipynb``

* converts its cell metadata to nbgrader's schema and writes its exercise id into the
  notebook's metadata (``course_lib.grading.notebook.to_nbgrader``; the old
  ``metadata.grade`` schema is converted, the new one left alone);
* points its text at the student's workspace (``make grade NB=workspace/…``, not the
  generated ``exercises/`` that ``make exercises`` overwrites) and ends it with one
  "Done — grade your work" cell (tag ``grading``), the same in every sheet;
* checks that the sheet links to its chapter, and gives the chapter
  (``notebooks/NN_topic.ipynb``) a link to its sheet: one markdown cell at the very end
  (tag ``exercise-link``) when no cell of the chapter links there yet.

``--check`` writes nothing and exits 1 when any of that is not so (the tests run it).
Only markdown and metadata change, so stored outputs and the book's execution cache stay valid.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

from course_lib.grading.notebook import to_nbgrader
from tools.project import ROOT

GRADING_TAG = "grading"
LINK_TAG = "exercise-link"
_TITLE = re.compile(r"^#\s+(Exercise\s+\d+\s+—\s+.+)$", re.M)
_OLD_DONE = re.compile(r"Run every cell, then grade the whole notebook:\s*```bash\s*make grade NB=exercises/")

DONE = """\
## Done — grade your work

Run every cell, then grade the whole notebook. Only the answer cells are graded: the grader runs
a pristine copy of this sheet with your answer cells put in, and names any code you wrote in
another cell ("your code in cell 7 was not graded: move it into the answer cell of Task 2").
A renamed copy grades the same: the grader finds this sheet's reference from the notebook itself.

* **On your machine**, in a clone of the repository: `make workspace` copies every sheet once
  into `workspace/` (ignored by git, never touched by `make exercises`); work there, then

  ```bash
  make grade NB=workspace/{name}     # or: course-grade workspace/{name}
  ```

* **In Colab**: *File → Save a copy in Drive*, work in the copy, then grade it in a new cell at
  the end (the grader ignores that cell):

  ```ipython
  import json; from google.colab import _message
  json.dump(_message.blocking_request("get_ipynb")["ipynb"], open("mine.ipynb", "w"))
  !course-grade mine.ipynb
  ```

  or download it (*File → Download → Download .ipynb*) and grade it on your machine.

[Exercises and grading](../book/grading.md) explains the score table and what is checked."""

LINK = """\
**Exercises.** [{title}](../exercises/{name}) puts this chapter to work: graded tasks with a \
check after each one that gives instant feedback, and one command that grades the whole sheet \
([how](../book/grading.md))."""


def _links_to(nb, target: str) -> bool:
    return any(c.cell_type == "markdown" and f"]({target})" in c.source for c in nb.cells)


def fix_solution(nb, name: str) -> list[str]:
    """Bring a solution into shape in place; return what changed."""
    changes = []
    if to_nbgrader(nb, Path(name).stem):
        changes.append("nbgrader metadata / exercise id")
    for cell in nb.cells:
        if cell.cell_type != "markdown" or GRADING_TAG in cell.metadata.get("tags", []):
            continue
        new = cell.source.replace("NB=exercises/", "NB=workspace/").replace(
            "python -m course_lib.grade exercises/", "course-grade workspace/")
        if new != cell.source:
            cell.source = new
            changes.append(f"cell {cell.id}: grade the workspace copy")
    done = DONE.format(name=name)
    managed = [c for c in nb.cells if GRADING_TAG in c.metadata.get("tags", [])]
    old = [c for c in nb.cells if c.cell_type == "markdown" and _OLD_DONE.search(c.source.replace("NB=workspace/", "NB=exercises/"))]
    cell = (managed or old or [None])[0]
    if cell is None:
        cell = nbformat.v4.new_markdown_cell(done)
        cell.metadata["tags"] = [GRADING_TAG]
        nb.cells.append(cell)
        changes.append("added the Done cell")
    elif cell.source != done or GRADING_TAG not in cell.metadata.get("tags", []):
        cell.source = done
        cell.metadata["tags"] = sorted(set(cell.metadata.get("tags", [])) | {GRADING_TAG})
        changes.append(f"cell {cell.id}: the Done cell")
    return changes


def fix_chapter(nb, name: str, title: str) -> list[str]:
    if _links_to(nb, f"../exercises/{name}"):
        return []
    cell = nbformat.v4.new_markdown_cell(LINK.format(title=title, name=name))
    cell.metadata["tags"] = [LINK_TAG]
    nb.cells.append(cell)
    return ["added a link to its exercise sheet"]


def run(root: Path, write: bool) -> list[str]:
    problems = []
    for sol_path in sorted((root / "solutions").glob("[0-9][0-9]_*.ipynb")):
        name = sol_path.name
        sol = nbformat.read(sol_path, as_version=4)
        changes = fix_solution(sol, name)
        if not _links_to(sol, f"../notebooks/{name}"):
            problems.append(f"{sol_path}: the intro does not link to its chapter ../notebooks/{name}")
        m = _TITLE.search(next((c.source for c in sol.cells if c.cell_type == "markdown"), ""))
        title = m.group(1).strip() if m else f"Exercise {name[:2].lstrip('0')}"
        if changes:
            problems += [f"{sol_path}: {c}" for c in changes]
            if write:
                nbformat.write(sol, sol_path)
        chapter_path = root / "notebooks" / name
        if not chapter_path.exists():
            problems.append(f"{sol_path}: no chapter {chapter_path}")
            continue
        chapter = nbformat.read(chapter_path, as_version=4)
        changes = fix_chapter(chapter, name, title)
        if changes:
            problems += [f"{chapter_path}: {c}" for c in changes]
            if write:
                nbformat.write(chapter, chapter_path)
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--write", action="store_true")
    ap.add_argument("--root", type=Path, default=ROOT)
    args = ap.parse_args(argv)
    problems = run(args.root, write=args.write)
    for p in problems:
        print(("updated " if args.write else "") + p)
    if args.check and problems:
        print("run `make sheets` (python -m tools.sheets --write), then `make exercises`")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
