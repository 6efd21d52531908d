"""Shared test settings: hypothesis profile, the repository root, and notebook lists."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]

# CI is a 2-core machine: a moderate number of examples per property, no per-example
# deadline (the first call into torch is slow), derandomized so a failure reproduces.
settings.register_profile(
    "course", max_examples=60, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "course"))


def notebooks(folder: str) -> list[Path]:
    return sorted((ROOT / folder).glob("[0-9][0-9]_*.ipynb"))
