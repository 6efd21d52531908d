"""Small helpers shared by every chapter: device choice, seeding, input validation.

The validators raise ``ValueError`` messages that name the argument and state what was
expected and what was received, e.g.::

    ValueError: k: expected the last dimension (head_dim) to equal q's, 64; got shape (2, 5, 32)
"""

from __future__ import annotations

import random
from typing import Iterable

import numpy as np
import torch

__all__ = [
    "default_device",
    "set_seed",
    "check_tensor",
    "check_floating",
    "best_time",
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


def best_time(fn, *args, repeats: int = 3, **kwargs) -> float:
    """Best wall-clock time of ``fn(*args, **kwargs)`` over ``repeats`` runs, in seconds.

    One warm-up call first (allocations, kernel selection); on a GPU every run is bracketed
    by ``torch.cuda.synchronize()`` so the asynchronous launch is not what gets timed.
    """
    import time

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
