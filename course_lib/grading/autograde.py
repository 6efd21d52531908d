"""Autograde exercise notebooks: ``course-grade NOTEBOOK|FOLDER [--json FILE] [--csv FILE]``.

(Also ``python -m course_lib.grade``.) For each notebook the grader

1. reads the student's notebook (an unreadable file scores 0, it does not crash the grader);
2. finds its reference from the notebook itself — the exercise id that ``make exercises``
   writes into its metadata (a renamed copy, "Copy of 01_attention.ipynb", still finds it),
   else from its file name — among the references installed with course_lib (so it works
   after ``pip install git+…``, in Colab) or the repository's ``solutions/``;
3. merges the student's answer cells into a pristine copy of the reference: check cells and
   their stored outputs come from the reference, so editing a check cell or pasting
   reference outputs gains nothing; code the student wrote outside the answer cells is named
   by cell and task ("your code in cell 7 was not graded: …");
4. runs the merged notebook under ``pytest --nbval-lax`` (``--nbval`` with ``--strict``) with a
   per-cell timeout, in its own process group with an overall time limit; the plugin
   ``course_lib.grading.nbval_report`` records each cell's outcome as data;
5. prints a score table — task, points, status, first line of the failure — and, with
   ``--json``/``--csv``, writes one row per student and task for an LMS.

Given a folder (a student's workspace, or a whole class with a folder per student), it grades
every notebook under it, ``--jobs`` at a time. A task earns its points when its check cell
passes. Student code that raises, hangs or returns the wrong shape costs that task's points;
a notebook that cannot be read or run costs its own rows, nothing else. The exit status is 0
only when every graded notebook has full marks.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from course_lib.grading.notebook import (
    NotebookFormatError,
    check_info,
    exercise_id,
    is_answer,
    is_check,
    merge,
    tasks,
)

DEFAULT_CELL_TIMEOUT = 60
# A cell that runs the grader itself (the sheets' Colab recipe) is not student work to report.
_GRADER_CALLS = ("course-grade", "course_lib.grade", "get_ipynb")
PACKAGE_REFERENCES = Path(__file__).resolve().parent / "references"  # built by setup.py
_CHECKOUT = Path(__file__).resolve().parents[2]


@dataclass
class TaskResult:
    task: str
    points: float
    max_points: float
    status: str  # "passed" | "failed"
    message: str = ""


@dataclass
class Report:
    notebook: str
    reference: str
    exercise: str = ""
    student: str = ""
    score: float = 0.0
    max_score: float = 0.0
    tasks: list[TaskResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # code that was not graded, and why
    error: str = ""
    seconds: float = 0.0

    @property
    def full_marks(self) -> bool:
        return not self.error and self.max_score > 0 and self.score == self.max_score

    def to_dict(self) -> dict:
        d = asdict(self)
        d["full_marks"] = self.full_marks
        return d


# ----------------------------------------------------------------------------- the reference
def reference_dirs() -> list[Path]:
    """Where references are looked for: the installed package's, then a checkout's solutions/."""
    dirs = [PACKAGE_REFERENCES]
    if (_CHECKOUT / "pyproject.toml").is_file():
        dirs.append(_CHECKOUT / "solutions")
    return [d for d in dirs if d.is_dir()]


def known_exercises() -> list[str]:
    return sorted({p.stem for d in reference_dirs() for p in d.glob("*.ipynb")})


def exercise_of(notebook: Path, student: dict | None) -> str | None:
    """The exercise id in the notebook's metadata, else the longest known id in its file name."""
    found = exercise_id(student) if isinstance(student, dict) else None
    if found:
        return found
    name = notebook.name.lower()
    matches = [e for e in known_exercises() if e.lower() in name]
    return max(matches, key=len) if matches else None


def find_reference(notebook: Path, reference: Path | None, exercise: str | None) -> Path:
    if reference is not None:
        if not reference.is_dir():
            return reference
        by_id = reference / f"{exercise}.ipynb"
        return by_id if exercise and by_id.exists() else reference / notebook.name
    if exercise:
        for d in reference_dirs():
            if (d / f"{exercise}.ipynb").exists():
                return d / f"{exercise}.ipynb"
    where = " or ".join(str(d) for d in reference_dirs()) or "(none installed)"
    raise LookupError(
        f"cannot tell which exercise this is (exercise id {exercise!r}; references in {where}): "
        "give --reference SOLUTION"
    )


# ----------------------------------------------------------------------------- running
def _read_student(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise ValueError("not a Jupyter notebook (no 'cells' list)")
    return data


def run_nbval(merged: Path, *, strict: bool, cell_timeout: float, workdir: Path,
              env: dict | None = None) -> tuple[list[dict] | None, str]:
    """Run ``merged`` under pytest + nbval; return (per-cell records, or None, and the log's tail)."""
    ini = workdir / "pytest.ini"
    ini.write_text("[pytest]\naddopts =\n")
    report_json = workdir / "result.json"
    cmd = [
        sys.executable, "-m", "pytest", str(merged),
        "--nbval" if strict else "--nbval-lax",
        "--nbval-current-env",
        f"--nbval-cell-timeout={cell_timeout}",
        "--nbval-kernel-startup-timeout=120",
        "-p", "course_lib.grading.nbval_report",
        "-p", "no:cacheprovider",
        "-c", str(ini), "--rootdir", str(workdir),
        "-q", "--no-header", "-rN", "--color=no",
    ]
    env = dict(env or os.environ, COURSE_GRADE_REPORT=str(report_json), PYTHONHASHSEED="0")
    env.pop("PYTEST_XDIST_WORKER", None)
    n_cells = len(nbformat.read(merged, as_version=4).cells)
    limit = 120 + n_cells * (cell_timeout + 10)
    log_path = workdir / "pytest.log"
    note = ""
    with open(log_path, "wb") as log:  # a file, not a pipe: a student printing gigabytes fills no memory
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            note = f"\n[grader] the notebook ran past the overall limit of {limit} s and was stopped"
        try:  # whatever the student's code left running in the process group goes too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    with open(log_path, "rb") as f:
        f.seek(max(0, log_path.stat().st_size - 20_000))
        out = f.read().decode("utf-8", "replace") + note
    try:
        data = json.loads(report_json.read_text(encoding="utf-8"))
        # pytest itself must have finished and written this: 0 all passed, 1 some failed
        if proc.returncode not in (0, 1) or data.get("exitstatus") != proc.returncode:
            return None, out
        return list(data["cells"]), out
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, out


def failure_message(record: dict) -> str:
    """The first line worth showing a student, from the plugin's record of a failed cell."""
    kind = record.get("kind")
    if kind == "timeout":
        return f"timed out: the cell ran longer than the limit of {record.get('timeout') or '?'} s"
    if kind == "output":
        return "the check's output differs from the reference output"
    if kind == "kernel":
        return "the kernel died (an earlier cell crashed or hung it)"
    if kind == "error":
        lines = [ln.strip() for ln in str(record.get("evalue", "")).splitlines() if ln.strip()]
        return f"{record.get('ename')}: {lines[0]}" if lines else str(record.get("ename"))
    return ": ".join(x for x in (record.get("exc_type"), record.get("message")) if x) or "failed"


def ungraded_code(student: dict, reference, max_points: dict[str, float]) -> dict[str, list[str]]:
    """Task → notes on code the student wrote outside the answer cells (which is not run).

    A code cell of the student's notebook that is not an answer cell and whose text is no
    cell of the reference is code the grader ignores: say where it is and where it belongs
    (the task of the next check cell).
    """
    def norm(src) -> str:
        text = "".join(src) if isinstance(src, list) else str(src or "")
        return "\n".join(ln.rstrip() for ln in text.strip().splitlines())

    known = {norm(c.get("source")) for c in reference.cells}
    order = list(max_points)
    cells = [c for c in student.get("cells", []) if isinstance(c, dict)]
    notes: dict[str, list[str]] = {}
    for pos, cell in enumerate(cells, 1):
        src = norm(cell.get("source"))
        if cell.get("cell_type") != "code" or is_answer(cell) or not src or src in known:
            continue
        if any(call in src for call in _GRADER_CALLS):
            continue
        task = None
        for later in cells[pos:]:
            try:
                if is_check(later) and check_info(later)[0] in max_points:
                    task = check_info(later)[0]
                    break
            except NotebookFormatError:
                continue
        task = task or (order[-1] if order else None)
        if task is None:
            continue
        notes.setdefault(task, []).append(
            f"your code in cell {pos} was not graded: move it into the answer cell of "
            f"Task {order.index(task) + 1} ({task})"
        )
    return notes


def attribute(merged, cells: list[dict], max_points: dict[str, float]) -> list[TaskResult]:
    """Per task: full points when its check cell passed, else 0 and the first failure."""
    by_id: dict[str, dict] = {}
    for r in cells:  # a cell may report setup and call; a failure wins
        prev = by_id.get(r.get("cell_id"))
        if prev is None or prev.get("outcome") == "passed":
            by_id[r.get("cell_id")] = r

    status: dict[str, list[str]] = {t: [] for t in max_points}
    seen: dict[str, bool] = {t: False for t in max_points}
    answer_error = ""  # the last failing answer cell since the previous check cell
    for cell in merged.cells:
        r = by_id.get(cell.get("id"))
        if is_answer(cell):
            if r is not None and r.get("outcome") != "passed":
                answer_error = "answer cell: " + failure_message(r)
            continue
        if not is_check(cell):
            continue
        task, _ = check_info(cell)
        seen[task] = True
        if r is None:
            status[task].append("the check did not run")
        elif r.get("outcome") != "passed":
            msg = failure_message(r)
            if answer_error and (r.get("ename") in ("NameError", "NotImplementedError")
                                 or "NotImplementedError" in str(r.get("evalue", ""))):
                msg = answer_error
            status[task].append(msg)
        answer_error = ""

    out = []
    for task, pts in max_points.items():
        ok = seen[task] and not status[task]
        out.append(TaskResult(task, pts if ok else 0.0, pts, "passed" if ok else "failed",
                              "" if ok else status[task][0]))
    return out


def grade(notebook: Path, *, reference: Path | None = None, strict: bool = False,
          cell_timeout: float = DEFAULT_CELL_TIMEOUT, keep: Path | None = None,
          env: dict | None = None, student: str = "") -> Report:
    """Grade one notebook against its reference solution; never raises on student input."""
    t0 = time.perf_counter()
    notebook = Path(notebook)
    report = Report(notebook=str(notebook), reference="", student=student)
    try:
        data = _read_student(notebook)
        read_error = None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        data, read_error = None, exc
    try:
        report.exercise = exercise_of(notebook, data) or ""
        ref_path = find_reference(notebook, reference, report.exercise or None)
        report.reference = str(ref_path)
        ref = nbformat.read(ref_path, as_version=4)
        max_points = tasks(ref)
    except (LookupError, OSError, ValueError, NotebookFormatError, nbformat.ValidationError) as exc:
        report.error = f"no usable reference solution: {exc}"
        return report
    report.exercise = report.exercise or (exercise_id(ref) or Path(ref_path).stem)
    report.max_score = sum(max_points.values())

    def all_failed(msg: str) -> Report:
        report.tasks = [TaskResult(t, 0.0, p, "failed", msg) for t, p in max_points.items()]
        report.seconds = time.perf_counter() - t0
        return report

    if data is None:
        return all_failed(f"could not read the notebook: {read_error}")
    merged = merge(data, ref, strict=strict)
    workdir = Path(tempfile.mkdtemp(prefix="grade-"))
    try:
        merged_path = workdir / "submission.ipynb"
        nbformat.write(merged, merged_path)
        cells, out = run_nbval(merged_path, strict=strict, cell_timeout=cell_timeout, workdir=workdir, env=env)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(merged_path, keep / notebook.name)
            (keep / (notebook.stem + ".log")).write_text(out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if cells is None:
        tail = " | ".join(ln for ln in out.strip().splitlines()[-3:])
        return all_failed(f"the notebook could not be run: {tail}")

    report.tasks = attribute(merged, cells, max_points)
    if not strict:
        notes = ungraded_code(data, ref, max_points)
        report.notes = [n for task in max_points for n in notes.get(task, [])]
        for t in report.tasks:  # a failed task whose code is elsewhere: say so first
            if t.status == "failed" and notes.get(t.task):
                t.message = notes[t.task][0]
    report.score = sum(t.points for t in report.tasks)
    report.seconds = time.perf_counter() - t0
    return report


# ----------------------------------------------------------------------------- many notebooks
def find_notebooks(path: Path) -> list[Path]:
    """``path`` itself, or every notebook under the folder (not hidden, not checkpoints)."""
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*.ipynb")
                  if not any(part.startswith(".") for part in p.relative_to(path).parts))


def student_of(path: Path, root: Path) -> str:
    """A class folder has a folder per student: the first folder under ``root``, else ''."""
    if not root.is_dir():
        return ""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else ""


def grade_many(paths: list[Path], root: Path, *, jobs: int = 1, on_done=None, **kwargs) -> list[Report]:
    """Grade ``paths`` ``jobs`` at a time; one notebook's failure never stops the others."""
    env = dict(os.environ)
    if jobs > 1:  # kernels side by side: one torch thread each, not one per core each
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))

    def one(p: Path) -> Report:
        student = student_of(p, root)
        try:
            r = grade(p, env=env, student=student, **kwargs)
        except Exception as exc:  # the grader's own bug on a strange file: that row only
            r = Report(notebook=str(p), reference="", student=student,
                       error=f"the grader failed on this notebook: {type(exc).__name__}: {exc}")
        if on_done is not None:
            on_done(r)
        return r

    if jobs <= 1 or len(paths) <= 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, paths))


ROW_FIELDS = ["student", "exercise", "notebook", "task", "points", "max_points", "status", "message"]


def rows(reports: list[Report]) -> list[dict]:
    """One row per student, notebook and task (a notebook with no usable reference: one row)."""
    out = []
    for r in reports:
        base = {"student": r.student, "exercise": r.exercise, "notebook": r.notebook}
        if r.error and not r.tasks:
            out.append(dict(base, task="", points=0, max_points=r.max_score, status="error", message=r.error))
        for t in r.tasks:
            out.append(dict(base, task=t.task, points=t.points, max_points=t.max_points,
                            status=t.status, message=t.message))
    return out


def write_csv(path: Path, reports: list[Report]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        w.writeheader()
        w.writerows(rows(reports))


def write_gradebook(path: Path, reports: list[Report]) -> None:
    """One row per student, one column per exercise (its score), and the total: an LMS's import."""
    exercises = sorted({r.exercise for r in reports if r.exercise})
    book: dict[str, dict[str, float]] = {}
    for r in reports:
        scores = book.setdefault(r.student, {})
        key = r.exercise or Path(r.notebook).stem
        scores[key] = max(scores.get(key, 0.0), r.score)  # two copies of one sheet: the better
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["student", *exercises, "total"])
        for student in sorted(book):
            s = book[student]
            w.writerow([student, *(_fmt(s.get(e, 0.0)) for e in exercises), _fmt(sum(s.values()))])


# ----------------------------------------------------------------------------- the command
def _fmt(x: float) -> str:
    return f"{x:g}"


def format_report(report: Report) -> str:
    who = f"[{report.student}] " if report.student else ""
    lines = [f"{who}{report.notebook}  (reference: {report.reference or '?'})"]
    if report.error:
        lines.append(f"  ERROR: {report.error}")
        return "\n".join(lines)
    w = max([len("task")] + [len(t.task) for t in report.tasks])
    lines.append(f"  {'task':<{w}}  {'points':>9}  {'status':<7}  message")
    for t in report.tasks:
        pts = f"{_fmt(t.points)} / {_fmt(t.max_points)}"
        msg = t.message if len(t.message) <= 110 else t.message[:107] + "..."
        lines.append(f"  {t.task:<{w}}  {pts:>9}  {t.status:<7}  {msg}")
    total = f"{_fmt(report.score)} / {_fmt(report.max_score)}"
    lines.append(f"  {'TOTAL':<{w}}  {total:>9}  {'full marks' if report.full_marks else ''}  ({report.seconds:.1f} s)")
    lines += [f"  NOTE: {n}" for n in report.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="course-grade", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebook", type=Path, help="an exercise notebook, or a folder (searched recursively)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the scores as JSON")
    ap.add_argument("--csv", type=Path, metavar="FILE", help="also write one row per student and task as CSV")
    ap.add_argument("--gradebook", type=Path, metavar="FILE",
                    help="also write one row per student, one column per exercise, as CSV")
    ap.add_argument("--reference", type=Path,
                    help="the solution notebook or folder (default: found from the notebook's exercise id)")
    ap.add_argument("--strict", action="store_true",
                    help="compare every cell's output with the reference (used for solutions/)")
    ap.add_argument("--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT, metavar="S",
                    help=f"seconds allowed per cell (default {DEFAULT_CELL_TIMEOUT})")
    ap.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1, metavar="N",
                    help="notebooks graded at once (default: the machine's cores)")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="keep the merged notebook and pytest log here")
    args = ap.parse_args(argv)

    if not args.notebook.exists():
        print(f"notebook: no such file or folder: {args.notebook}", file=sys.stderr)
        return 2
    paths = find_notebooks(args.notebook)
    if not paths:
        print(f"notebook: no .ipynb files in {args.notebook}", file=sys.stderr)
        return 2
    reports = grade_many(paths, args.notebook, jobs=max(1, args.jobs), reference=args.reference,
                         strict=args.strict, cell_timeout=args.cell_timeout, keep=args.keep,
                         on_done=lambda r: print(format_report(r), flush=True))
    if len(reports) > 1:
        score = sum(r.score for r in reports)
        total = sum(r.max_score for r in reports)
        students = {r.student for r in reports}
        who = f", {len(students)} students" if len(students) > 1 else ""
        print(f"ALL: {_fmt(score)} / {_fmt(total)} over {len(reports)} notebooks{who}")
    if args.json:
        data = (reports[0].to_dict() if len(reports) == 1 and not args.notebook.is_dir()
                else {"notebooks": [r.to_dict() for r in reports], "rows": rows(reports)})
        args.json.write_text(json.dumps(data, indent=2))
    if args.csv:
        write_csv(args.csv, reports)
    if args.gradebook:
        write_gradebook(args.gradebook, reports)
    return 0 if all(r.full_marks for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
