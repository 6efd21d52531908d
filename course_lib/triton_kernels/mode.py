"""Compiled or interpreted: decided here, once, before anything imports triton.

Without a CUDA GPU, ``TRITON_INTERPRET=1`` is set (by ``course_lib.utils.use_triton_interpreter_without_gpu``,
which ``import course_lib`` already called; it warns if triton was imported too early to honour it).
This module exposes ``INTERPRETED`` and ``DEVICE``; every kernel module imports them from here, below the package's
``__init__``, so that the package has no import cycle.
"""

from __future__ import annotations

import torch

from course_lib.utils import use_triton_interpreter_without_gpu

#: True when kernels run in Triton's interpreter on the CPU, False when they are compiled for a GPU.
INTERPRETED: bool = use_triton_interpreter_without_gpu()
#: The device kernel inputs must live on.
DEVICE: torch.device = torch.device("cpu" if INTERPRETED else "cuda")
