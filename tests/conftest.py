"""Shared test settings: the hypothesis profile and one torch thread per worker.

Helpers that tests import (the repository root, notebook lists, the exercise stub) live in
``tests/helpers.py``: pytest advises against importing from conftest."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Triton's interpreter must be chosen before anything imports triton. Some test modules import
# packages that import triton themselves (transformers, torch.utils.flop_counter), and pytest-xdist
# collects every module in every worker, so course_lib, which chooses the mode on import, comes first.
import course_lib  # noqa: E402,F401

# CI is a 2-core machine: a moderate number of examples per property, no per-example
# deadline (the first call into torch is slow), derandomized so a failure reproduces.
settings.register_profile(
    "course", max_examples=60, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "course"))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One torch thread per test process, restored after each module.

    The tests run many tiny tensor ops (tiles, experts, decoding steps); with `pytest -n 2` on a
    2-core machine a thread per core in each worker only adds hand-off overhead (5–10× slower).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
