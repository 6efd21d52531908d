"""Autograde exercise notebooks: ``python -m course_lib.grade NOTEBOOK|FOLDER [--json FILE]``.

For each notebook the grader

1. reads the student's notebook (an unreadable file scores 0, it does not crash the grader);
2. merges the student's answer cells into a pristine copy of the reference solution
   (``solutions/<same name>``): check cells and their stored outputs come from the reference,
   so editing a check cell or pasting reference outputs gains nothing;
3. runs the merged notebook under ``pytest --nbval-lax`` (``--nbval`` with ``--strict``) with a
   per-cell timeout, in a subprocess with an overall time limit; check cells are compared
   with their reference output (strict on check cells);
4. prints a score table — task, points, status, first line of the failure — and, with
   ``--json``, writes the same for an LMS.

A task earns its points when all of its check cells pass. Student code that raises, hangs or
returns the wrong shape costs that task's points and nothing else. The exit status is 0 only
when every graded notebook has full marks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from course_lib.grading.notebook import (
    NotebookFormatError,
    check_info,
    is_answer,
    is_check,
    merge,
    tasks,
)

DEFAULT_CELL_TIMEOUT = 60
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning|Failed)|AssertionError|StopIteration)(?::\s*(.*))?$")


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
    score: float = 0.0
    max_score: float = 0.0
    tasks: list[TaskResult] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0

    @property
    def full_marks(self) -> bool:
        return not self.error and self.max_score > 0 and self.score == self.max_score

    def to_dict(self) -> dict:
        d = asdict(self)
        d["full_marks"] = self.full_marks
        return d


def failure_line(longrepr: str) -> str:
    """The first line worth showing a student from nbval's failure report."""
    text = _ANSI.sub("", longrepr or "")
    if "Timeout of" in text:
        m = re.search(r"Timeout of ([\d.]+) seconds exceeded[^\n.]*", text)
        return f"timed out: {m.group(0)}" if m else "timed out"
    if "Cell outputs differ" in text:
        return "the check's output differs from the reference output"
    if "Kernel dead" in text:
        return "the kernel died (an earlier cell crashed or hung it)"
    tb = text.split("Traceback:", 1)[-1]
    last = ""
    for line in tb.splitlines():
        m = _EXC_LINE.match(line.strip())
        if m:
            last = line.strip()
    if last:
        return last
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "failed"


def find_reference(notebook: Path, reference: Path | None) -> Path:
    if reference is not None:
        return reference / notebook.name if reference.is_dir() else reference
    from course_lib.tools.project import ROOT

    return ROOT / "solutions" / notebook.name


def _read_student(path: Path):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise ValueError("not a Jupyter notebook (no 'cells' list)")
    return data


def _run_nbval(merged: Path, *, strict: bool, cell_timeout: float, report_json: Path, workdir: Path) -> tuple[int, str]:
    ini = workdir / "pytest.ini"
    ini.write_text("[pytest]\naddopts =\n")
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
    env = dict(os.environ, COURSE_GRADE_REPORT=str(report_json), PYTHONHASHSEED="0")
    env.pop("PYTEST_XDIST_WORKER", None)
    n_cells = len(nbformat.read(merged, as_version=4).cells)
    limit = 120 + n_cells * (cell_timeout + 10)
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        out += f"\n[grader] the notebook ran past the overall limit of {limit} s and was stopped"
    return proc.returncode, out


def grade(notebook: Path, *, reference: Path | None = None, strict: bool = False,
          cell_timeout: float = DEFAULT_CELL_TIMEOUT, keep: Path | None = None) -> Report:
    """Grade one notebook against its reference solution; never raises on student input."""
    t0 = time.perf_counter()
    ref_path = find_reference(notebook, reference)
    report = Report(notebook=str(notebook), reference=str(ref_path))
    try:
        ref = nbformat.read(ref_path, as_version=4)
        max_points = tasks(ref)
    except (OSError, ValueError, NotebookFormatError, nbformat.ValidationError) as exc:
        report.error = f"no usable reference solution at {ref_path}: {exc}"
        return report
    report.max_score = sum(max_points.values())

    def all_failed(msg: str) -> Report:
        report.tasks = [TaskResult(t, 0.0, p, "failed", msg) for t, p in max_points.items()]
        report.seconds = time.perf_counter() - t0
        return report

    try:
        student = _read_student(notebook)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return all_failed(f"could not read the notebook: {exc}")

    merged = merge(student, ref, strict=strict)
    workdir = Path(tempfile.mkdtemp(prefix="grade-"))
    try:
        merged_path = workdir / notebook.name
        nbformat.write(merged, merged_path)
        result_json = workdir / "result.json"
        rc, out = _run_nbval(merged_path, strict=strict, cell_timeout=cell_timeout,
                             report_json=result_json, workdir=workdir)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(merged_path, keep / notebook.name)
            (keep / (notebook.stem + ".log")).write_text(out)
        try:
            cells = json.loads(result_json.read_text())["cells"]
        except (OSError, ValueError, KeyError):
            tail = " | ".join(ln for ln in out.strip().splitlines()[-3:])
            return all_failed(f"the notebook could not be run: {tail}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    by_id: dict[str, dict] = {}
    for r in cells:  # a cell may report setup and call; a failure wins
        prev = by_id.get(r["cell_id"])
        if prev is None or prev["outcome"] == "passed":
            by_id[r["cell_id"]] = r

    status: dict[str, list[str]] = {t: [] for t in max_points}
    seen: dict[str, bool] = {t: False for t in max_points}
    answer_error = ""  # the last failing answer cell since the previous check cell
    for cell in merged.cells:
        r = by_id.get(cell.get("id"))
        if is_answer(cell):
            if r is not None and r["outcome"] != "passed":
                answer_error = "answer cell: " + failure_line(r["longrepr"])
            continue
        if not is_check(cell):
            continue
        task, _ = check_info(cell)
        seen[task] = True
        if r is None:
            status[task].append("the check did not run")
        elif r["outcome"] != "passed":
            msg = failure_line(r["longrepr"])
            if answer_error and ("NameError" in msg or "NotImplementedError" in msg):
                msg = answer_error
            status[task].append(msg)
        answer_error = ""

    for task, pts in max_points.items():
        failures = status[task]
        ok = seen[task] and not failures
        report.tasks.append(TaskResult(task, pts if ok else 0.0, pts, "passed" if ok else "failed",
                                       "" if ok else failures[0]))
    report.score = sum(t.points for t in report.tasks)
    report.seconds = time.perf_counter() - t0
    return report


def _fmt(x: float) -> str:
    return f"{x:g}"


def format_report(report: Report) -> str:
    lines = [f"{report.notebook}  (reference: {report.reference})"]
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
    return "\n".join(lines)


def _notebooks(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.glob("*.ipynb") if not p.name.startswith("."))
    return [path]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m course_lib.grade", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebook", type=Path, help="an exercise notebook, or a folder of them")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the scores as JSON")
    ap.add_argument("--reference", type=Path, help="the solution notebook or folder (default: solutions/)")
    ap.add_argument("--strict", action="store_true",
                    help="compare every cell's output with the reference (used for solutions/)")
    ap.add_argument("--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT, metavar="S",
                    help=f"seconds allowed per cell (default {DEFAULT_CELL_TIMEOUT})")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="keep the merged notebook and pytest log here")
    args = ap.parse_args(argv)

    if not args.notebook.exists():
        print(f"notebook: no such file or folder: {args.notebook}", file=sys.stderr)
        return 2
    paths = _notebooks(args.notebook)
    if not paths:
        print(f"notebook: no .ipynb files in {args.notebook}", file=sys.stderr)
        return 2
    reports = []
    for p in paths:
        r = grade(p, reference=args.reference, strict=args.strict,
                  cell_timeout=args.cell_timeout, keep=args.keep)
        reports.append(r)
        print(format_report(r), flush=True)
    if len(reports) > 1:
        score = sum(r.score for r in reports)
        total = sum(r.max_score for r in reports)
        print(f"ALL: {_fmt(score)} / {_fmt(total)} over {len(reports)} notebooks")
    if args.json:
        data = reports[0].to_dict() if len(reports) == 1 else {"notebooks": [r.to_dict() for r in reports]}
        args.json.write_text(json.dumps(data, indent=2))
    return 0 if all(r.full_marks for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
