"""Small helpers shared by every chapter: device choice, seeding, input validation.

The validators raise ``ValueError`` messages that name the argument and state what was
expected and what was received, e.g.::

    ValueError: k: expected the last dimension (head_dim) to equal q's, 64; got shape (2, 5, 32)
"""

from __future__ import annotations

import os
import platform
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

__all__ = [
    "default_device",
    "set_seed",
    "check_tensor",
    "check_floating",
    "check_int",
    "check_number",
    "check_choice",
    "check_probability",
    "best_time",
    "glue",
]


def default_device() -> torch.device:
    """``cuda`` when a GPU is present, otherwise ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_seed(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a seeded CPU generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def use_triton_interpreter_without_gpu() -> bool:
    """Choose how Triton kernels run, once, before anything imports triton; return True if interpreted.

    Without a CUDA GPU, set ``TRITON_INTERPRET=1`` (Chapter 12's kernels then run in Triton's
    interpreter on the CPU), and warn if triton was already imported without it — packages such as
    ``transformers`` and ``torch.utils.flop_counter`` import triton, and triton reads the variable
    when it is imported. ``import course_lib`` calls this first thing, so importing course_lib before
    those packages is enough; ``course_lib.triton_kernels.mode`` calls it again and exposes the result.
    """
    interpret = ("1", "true", "on", "yes")
    if not torch.cuda.is_available():
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "").lower() not in interpret:
            warnings.warn(
                "triton was imported before course_lib on a machine without a GPU: Triton kernels may not "
                "run in the interpreter; set TRITON_INTERPRET=1 before importing triton (or import course_lib first)",
                RuntimeWarning, stacklevel=3)
        os.environ["TRITON_INTERPRET"] = "1"
    return os.environ.get("TRITON_INTERPRET", "").lower() in interpret


def cpu_name() -> str:
    """The processor's model name (Linux's /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages (other programs slow a timed run down); None where unknown."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):   # not on every platform
        return None


def machine_description(device: torch.device | str | None = None) -> str:
    """One line for a saved result: the CPU, its logical CPUs, torch's threads and the device (GPU name)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, device {device}{gpu}"


def glue(name: str, value, display: bool = False):
    """Hand a computed number to the page's prose: ``myst_nb.glue`` where myst-nb is installed.

    The prose then writes ``{glue:text}`name:.2f``` instead of retyping the number, so the text and
    the output cannot disagree. Where myst-nb is missing (Colab) nothing is recorded and nothing is
    shown. Returns None, so that a cell ending in a glue call shows no stray value.
    """
    try:
        from myst_nb import glue as _glue
    except ImportError:
        return None
    _glue(name, value, display=display)


def best_time(fn, *args, repeats: int = 3, **kwargs) -> float:
    """Best wall-clock time of ``fn(*args, **kwargs)`` over ``repeats`` runs, in seconds.

    One warm-up call first (allocations, kernel selection); on a GPU every run is bracketed
    by ``torch.cuda.synchronize()`` so the asynchronous launch is not what gets timed.
    """
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn(*args, **kwargs)
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_tensor(name: str, x, *, min_dim: int | None = None, ndim: int | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor with the requested number of dims."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor; got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions; got shape {_shape(x)}")
    if min_dim is not None and x.dim() < min_dim:
        raise ValueError(
            f"{name}: expected at least {min_dim} dimensions; got shape {_shape(x)}"
        )


def check_floating(name: str, x: torch.Tensor, allowed: Iterable[torch.dtype] | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` has a floating dtype (optionally one of ``allowed``)."""
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype; got {x.dtype}")
    if allowed is not None:
        allowed = tuple(allowed)
        if x.dtype not in allowed:
            names = ", ".join(str(a) for a in allowed)
            raise ValueError(f"{name}: expected dtype in ({names}); got {x.dtype}")


# ----------------------------------------------------------------------------- scalar arguments
# One vocabulary for every public edge of course_lib: "name: expected …; got …".
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value, minimum: int = 1, *, optional: bool = False):
    """Return ``value`` if it is an int ``≥ minimum`` (or None when ``optional``), else raise ``ValueError``."""
    if optional and value is None:
        return value
    if not _is_int(value) or value < minimum:
        expected = f"{'None or ' if optional else ''}an integer ≥ {minimum}"
        raise ValueError(f"{name}: expected {expected}; got {value!r}")
    return value


def check_number(name: str, value, *, above: float | None = None, at_least: float | None = None,
                 optional: bool = False):
    """Return ``value`` if it is a real number (``> above``, ``≥ at_least``; None when ``optional``),
    else raise ``ValueError``."""
    if optional and value is None:
        return value
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
    if not ok:
        bound = f" > {above:g}" if above is not None else f" ≥ {at_least:g}" if at_least is not None else ""
        raise ValueError(f"{name}: expected {'None or ' if optional else ''}a number{bound}; got {value!r}")
    return value


def check_probability(name: str, value, *, below_one: bool = True):
    """Return ``value`` if it is a probability in ``[0, 1)`` (``[0, 1]`` with ``below_one=False``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and 0.0 <= value and (value < 1.0 if below_one else value <= 1.0)
    if not ok:
        raise ValueError(f"{name}: expected a probability in [0, 1{')' if below_one else ']'}; got {value!r}")
    return value


def check_choice(name: str, value, choices):
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them."""
    if value not in tuple(choices):
        raise ValueError(f"{name}: expected one of {tuple(choices)}; got {value!r}")
    return value
