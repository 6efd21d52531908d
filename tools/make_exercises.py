"""Generate exercises/ from solutions/: ``python -m tools.make_exercises SRC DST``.

Each solution region becomes a stub raising NotImplementedError, outputs are stripped and
cell ids are kept (the grader matches answer cells by id); the exercise id (the file's stem)
goes into the notebook's metadata, and the cells get nbgrader's metadata, so a renamed copy
still finds its reference and nbgrader's formgrader can open the sheet. ``--check`` writes nothing and
exits 1 when an exercise is missing, stale or has no solution (the test suite runs it).
Never edit exercises/ by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

from course_lib.grading.notebook import make_exercise


def render(solution: Path) -> str:
    nb = make_exercise(nbformat.read(solution, as_version=4), exercise=solution.stem)
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("solutions", type=Path)
    ap.add_argument("exercises", type=Path)
    ap.add_argument("--check", action="store_true", help="only report differences")
    args = ap.parse_args(argv)
    problems = []
    sources = sorted(args.solutions.glob("*.ipynb"))
    for sol in sources:
        dst = args.exercises / sol.name
        text = render(sol)
        current = dst.read_text(encoding="utf-8") if dst.exists() else None
        if current == text:
            continue
        if args.check:
            problems.append(f"{dst}: {'missing' if current is None else 'out of sync with ' + str(sol)}")
        else:
            args.exercises.mkdir(parents=True, exist_ok=True)
            dst.write_text(text, encoding="utf-8")
            print(f"wrote {dst}")
    names = {s.name for s in sources}
    for ex in sorted(args.exercises.glob("*.ipynb")):
        if ex.name not in names:
            problems.append(f"{ex}: no solution {args.solutions / ex.name}")
    for p in problems:
        print(p)
    if problems and args.check:
        print("run `make exercises` to regenerate exercises/ from solutions/")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
