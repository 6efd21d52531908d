"""A pytest plugin that records, for each nbval cell item, what happened to it — as data.

The grader runs ``pytest --nbval… -p course_lib.grading.nbval_report`` in a subprocess and
reads the JSON this plugin writes to ``$COURSE_GRADE_REPORT`` when the session ends. Each
record says which cell it is (id, number), whether it passed, and when it did not, why:

* ``kind``: ``"error"`` (the cell raised: ``ename`` and ``evalue`` are the kernel's own
  exception type and message), ``"timeout"`` (the cell ran past ``--nbval-cell-timeout``),
  ``"output"`` (it ran but printed something else than the reference), ``"kernel"`` (the
  kernel was dead: an earlier cell killed it), or ``"other"`` (``exc_type``/``message`` of the
  exception pytest caught);
* ``exc_type`` and ``message``: the exception pytest caught, from ``call.excinfo``.

Nothing here parses pytest's or nbval's text.
"""

from __future__ import annotations

import json
import os

import pytest

_RESULTS: list[dict] = []


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Note whether this cell is the one that timed out (nbval's flag is per notebook)."""
    parent = getattr(item, "parent", None)
    before = bool(getattr(parent, "timed_out", False))
    yield
    item._course_timed_out = bool(getattr(parent, "timed_out", False)) and not before


def _kind(item, excinfo) -> tuple[str, str, str]:
    """(kind, ename, evalue) of a failed cell item."""
    errors = [o for o in getattr(item, "test_outputs", None) or [] if o.get("output_type") == "error"]
    if getattr(item, "_course_timed_out", False):
        return "timeout", "", ""
    kernel = getattr(getattr(item, "parent", None), "kernel", None)
    if errors and errors[-1].get("ename") != "KeyboardInterrupt":
        return "error", str(errors[-1].get("ename", "")), str(errors[-1].get("evalue", ""))
    if getattr(item, "comparison_traceback", None) and not errors:
        return "output", "", ""
    if kernel is not None and not kernel.is_alive():
        return "kernel", "", ""
    return "other", "", ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    cell = getattr(item, "cell", None)
    if cell is None:
        return
    if rep.when == "call" or (rep.when != "call" and not rep.passed):
        record = {
            "cell_num": getattr(item, "cell_num", None),
            "cell_id": cell.get("id"),
            "when": rep.when,
            "outcome": rep.outcome,
        }
        if not rep.passed:
            kind, ename, evalue = _kind(item, call.excinfo)
            record.update(
                kind=kind, ename=ename, evalue=evalue,
                exc_type=call.excinfo.typename if call.excinfo else "",
                message=_first_line(call.excinfo.value) if call.excinfo else "",
                timeout=item.config.getoption("nbval_cell_timeout", None),
            )
        _RESULTS.append(record)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("COURSE_GRADE_REPORT")
    if path:
        if os.path.lexists(path):  # whatever a student's code left there is not ours
            os.unlink(path)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"exitstatus": int(exitstatus), "cells": _RESULTS}, f)
