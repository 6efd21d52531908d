"""Checks that exercise notebooks call, and the tools they share.

A check runs the student's code on seeded cases and edge cases, compares with a reference
(usually PyTorch's own function) at a tolerance set per dtype, and

* raises ``AssertionError`` whose message names the likely mistake when it fails —
  it recomputes the known wrong answers (scaled by d instead of √d, softmax over the wrong
  axis, …) and says which one the student's output matches;
* prints one stable line, ``✓ <task>: all N cases passed``, when it passes (the line is the
  check cell's stored reference output, compared by nbval).

One module per chapter: ``course_lib.grading.ch01`` … Beside them: ``notebook`` (answer and check
cells, nbgrader's metadata, stubbing, merging), ``autograde`` (the ``course-grade`` command) and
``nbval_report`` (its pytest plugin). Importing this package imports neither.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

__all__ = [
    "tolerance",
    "call_student",
    "expect_tensor",
    "expect_number",
    "expect_close",
    "passed",
]

_TOL = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) used to compare results computed in ``dtype``."""
    return _TOL.get(dtype, (1e-5, 1e-4))


def call_student(fn: Callable, *args, name: str | None = None, **kwargs):
    """Call the student's function; turn its exceptions into a clear AssertionError."""
    name = name or getattr(fn, "__name__", "your function")
    if not callable(fn):
        raise AssertionError(f"{name}: expected a function; got {type(fn).__name__}")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise AssertionError(
            f"{name} is not implemented yet: replace `raise NotImplementedError` with your answer"
        ) from None
    except Exception as exc:  # the student's bug, reported as a failed check
        raise AssertionError(f"{name} raised {type(exc).__name__}: {exc}") from exc


def expect_tensor(name: str, got, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> torch.Tensor:
    """Assert ``got`` is a tensor of the given shape (and dtype); return it."""
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{name}: expected a torch.Tensor; got {type(got).__name__}")
    if tuple(got.shape) != tuple(shape):
        raise AssertionError(f"{name}: expected shape {tuple(shape)}; got {tuple(got.shape)}")
    if dtype is not None and got.dtype != dtype:
        raise AssertionError(f"{name}: expected dtype {dtype}; got {got.dtype}")
    return got


def expect_number(name: str, got) -> float:
    """Assert ``got`` is a finite real number (a Python, NumPy or 0-d tensor scalar)."""
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            raise AssertionError(f"{name}: expected a single number; got a tensor of shape {tuple(got.shape)}")
        got = got.item()
    try:
        value = float(got)
    except (TypeError, ValueError):
        raise AssertionError(f"{name}: expected a number; got {type(got).__name__}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise AssertionError(f"{name}: expected a finite number; got {value}")
    return value


def expect_close(
    name: str,
    got: torch.Tensor,
    want: torch.Tensor,
    *,
    mistakes: Mapping[str, torch.Tensor | None] = (),
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """Assert ``got ≈ want``; on failure, name the first known mistake that ``got`` matches.

    Args:
        mistakes: message → what that mistake would have produced (None: not applicable).
    """
    d_atol, d_rtol = tolerance(want.dtype)
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    got_c = got.detach().to(want.dtype).cpu()
    want_c = want.detach().cpu()
    if not torch.isfinite(got_c).all() and torch.isfinite(want_c).all():
        bad = (~torch.isfinite(got_c)).sum().item()
        raise AssertionError(
            f"{name}: {bad} NaN or inf values where the reference is finite "
            "(overflow in exp? subtract the row maximum before exponentiating)"
        )
    if torch.allclose(got_c, want_c, atol=atol, rtol=rtol, equal_nan=True):
        return
    for message, alt in dict(mistakes).items():
        if alt is None or tuple(alt.shape) != tuple(got_c.shape):
            continue
        alt_c = alt.detach().to(want.dtype).cpu()
        if torch.allclose(got_c, alt_c, atol=atol, rtol=rtol, equal_nan=True):
            raise AssertionError(f"{name}: {message}")
    err = (got_c - want_c).abs().nan_to_num(float("inf")).max().item()
    raise AssertionError(f"{name}: wrong values (max abs error {err:.3g}, tolerance {atol:g} + {rtol:g}·|ref|)")


def passed(task: str, n_cases: int) -> None:
    """Print the stable line that a passing check cell shows (and nbval compares)."""
    print(f"✓ {task}: all {n_cases} cases passed")
