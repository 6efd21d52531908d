"""Grading where course_lib is installed without the repository, as Colab installs it.

A clone of this working tree is installed with ``pip install git+file://…`` (not editable) into
a fresh virtual environment outside the working tree; from a temporary folder, a chapter is
executed and two copies of an exercise — renamed as Colab and a student would — are graded with
no flags. The fresh environment reuses the dependencies of ``.venv`` through a ``.pth`` line
(``--no-deps``), so nothing is downloaded: only course_lib itself is built and installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest

from course_lib.grading.notebook import is_answer
from helpers import ROOT

pytestmark = pytest.mark.grading

CHAPTER = "01_attention.ipynb"


def _run(cmd, cwd, env, timeout=300):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _clone_of_the_working_tree(dst: Path, env) -> Path:
    """A git repository holding the working tree as it is now (what `git+file://` will clone)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    _run(git + ["init", "-q"], dst, env)
    _run(git + ["add", "-A"], dst, env)
    _run(git + ["commit", "-q", "-m", "snapshot"], dst, env)
    return dst


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv with course_lib installed from git, a work folder, env)."""
    base = tmp_path_factory.mktemp("installed")
    assert not base.resolve().is_relative_to(ROOT), "the install must live outside the working tree"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_XDIST_WORKER")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    repo = _clone_of_the_working_tree(base / "repo", env)
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base, env)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     base, env).stdout.strip())
    # The dependencies (torch, nbval, ipykernel, setuptools, pip …) come from .venv, as
    # --system-site-packages would give them; the .pth line does not run .venv's own .pth
    # files, so the editable course_lib of the working tree is not visible.
    (site / "_course_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
          f"git+file://{repo}"], base, env)
    work = base / "work"
    work.mkdir()
    return python, work, env


def test_installed_package_is_the_wheel_not_the_working_tree(installed):
    python, work, env = installed
    out = subprocess.run(
        [str(python), "-c",
         "import importlib.util, json, course_lib, course_lib.grading.autograde as a;"
         "print(json.dumps([course_lib.__file__, sorted(p.name for p in a.PACKAGE_REFERENCES.glob('*.ipynb')),"
         " importlib.util.find_spec('tools') is None]))"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    where, references, no_tools = json.loads(out.stdout)
    assert Path(where).resolve().is_relative_to(python.parent.parent.resolve()), where
    assert references == sorted(p.name for p in (ROOT / "solutions").glob("*.ipynb"))
    assert no_tools, "the maintainer tools must not be installed with course_lib"
    shipped = nbformat.read(Path(where).parent / "grading" / "references" / CHAPTER, as_version=4)
    assert not any("### BEGIN SOLUTION" in c.source for c in shipped.cells), "answers must be stubbed"


def test_a_chapter_runs_and_renamed_exercises_grade_from_a_temporary_folder(installed):
    python, work, env = installed
    chapter = nbformat.read(ROOT / "notebooks" / CHAPTER, as_version=4)
    venv = str(python.parent.parent.resolve())
    chapter.cells.append(nbformat.v4.new_code_cell(
        f"import course_lib\nassert course_lib.__file__.startswith({venv!r}), course_lib.__file__"))
    (work / "chapter").mkdir()
    nbformat.write(chapter, work / "chapter" / CHAPTER)
    _run([str(python), "-c",
          "import sys, nbformat, nbclient\n"
          "nb = nbformat.read(sys.argv[1], as_version=4)\n"
          "nbclient.NotebookClient(nb, timeout=120, kernel_name='python3').execute()\n",
          CHAPTER], work / "chapter", env)

    # Colab's "Save a copy" and a student's own name; one filled in, one not.
    solution = nbformat.read(ROOT / "solutions" / CHAPTER, as_version=4)
    answers = {c.id: c.source for c in solution.cells if is_answer(c)}
    filled = nbformat.read(ROOT / "exercises" / CHAPTER, as_version=4)
    for cell in filled.cells:
        if cell.id in answers:
            cell.source = answers[cell.id]
    sheets = work / "sheets"
    sheets.mkdir()
    nbformat.write(filled, sheets / "Copy of 01_attention.ipynb")
    shutil.copy(ROOT / "exercises" / CHAPTER, sheets / "01_attention_ana.ipynb")
    proc = subprocess.run([str(python.parent / "course-grade"), "sheets", "--json", "scores.json", "--jobs", "2"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one of the two is not full marks
    reports = {Path(r["notebook"]).name: r for r in json.loads((work / "scores.json").read_text())["notebooks"]}
    assert set(reports) == {"Copy of 01_attention.ipynb", "01_attention_ana.ipynb"}, proc.stdout
    copy, ana = reports["Copy of 01_attention.ipynb"], reports["01_attention_ana.ipynb"]
    assert copy["full_marks"] and copy["score"] == copy["max_score"] == 16, proc.stdout
    assert ana["score"] == 0 and ana["max_score"] == 16 and not ana["error"], proc.stdout
    assert Path(copy["reference"]).resolve().is_relative_to(python.parent.parent.resolve()), copy["reference"]
