"""Compiled or interpreted: decided here, once, before anything imports triton.

Without a CUDA GPU this module sets ``TRITON_INTERPRET=1`` (triton 3.x reads it when a kernel is
decorated with ``@triton.jit``), and warns if triton was imported too early to honour it. It exposes
``INTERPRETED`` and ``DEVICE``; every kernel module imports them from here, below the package's
``__init__``, so that the package has no import cycle.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch

_TRUE = ("1", "true", "on", "yes")

if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "").lower() not in _TRUE:
        warnings.warn(
            "triton was imported before course_lib.triton_kernels on a machine without a GPU: "
            "set TRITON_INTERPRET=1 before importing triton (import course_lib.triton_kernels first)",
            RuntimeWarning,
            stacklevel=2,
        )
    os.environ["TRITON_INTERPRET"] = "1"

#: True when kernels run in Triton's interpreter on the CPU, False when they are compiled for a GPU.
INTERPRETED: bool = os.environ.get("TRITON_INTERPRET", "").lower() in _TRUE
#: The device kernel inputs must live on.
DEVICE: torch.device = torch.device("cpu" if INTERPRETED else "cuda")
