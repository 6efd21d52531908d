"""A pytest plugin that records, for each nbval cell item, its cell id, tags and outcome.

The grader runs ``pytest --nbval… -p course_lib.grading.nbval_report`` in a subprocess and
reads the JSON this plugin writes to ``$COURSE_GRADE_REPORT`` when the session ends.
"""

from __future__ import annotations

import json
import os

import pytest

_RESULTS: list[dict] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    cell = getattr(item, "cell", None)
    if cell is None:
        return
    if rep.when == "call" or (rep.when != "call" and not rep.passed):
        _RESULTS.append(
            {
                "cell_num": getattr(item, "cell_num", None),
                "cell_id": cell.get("id"),
                "when": rep.when,
                "outcome": rep.outcome,
                "longrepr": "" if rep.passed else str(rep.longrepr),
            }
        )


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("COURSE_GRADE_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"exitstatus": int(exitstatus), "cells": _RESULTS}, f)
