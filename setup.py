"""Build hook: ship the grader's references inside the package (``course_lib/grading/references``).

``pip install git+…`` (how Colab installs course_lib) gets no ``solutions/`` folder, so the
wheel carries, for each ``solutions/NN_topic.ipynb``, the solution with its answers stubbed:
the check cells, the code between them and the stored reference outputs, which is all the
grader needs. An editable install (``make setup``) reads ``solutions/`` itself.
Everything else is in pyproject.toml.
"""

import importlib.util
import json
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _notebook_module():
    """course_lib/grading/notebook.py, loaded on its own (the build has no torch, no nbformat)."""
    spec = importlib.util.spec_from_file_location("_course_notebook", HERE / "course_lib" / "grading" / "notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithReferences(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        nbmod = _notebook_module()
        out = Path(self.build_lib) / "course_lib" / "grading" / "references"
        out.mkdir(parents=True, exist_ok=True)
        for solution in sorted((HERE / "solutions").glob("*.ipynb")):
            ref = nbmod.make_reference(json.loads(solution.read_text(encoding="utf-8")))
            nbmod.to_nbgrader(ref, nbmod.exercise_id(ref) or solution.stem)
            text = json.dumps(ref, indent=1, ensure_ascii=False, sort_keys=True) + "\n"
            (out / solution.name).write_text(text, encoding="utf-8")


setup(cmdclass={"build_py": BuildWithReferences})
