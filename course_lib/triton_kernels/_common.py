"""Input checks shared by the kernel wrappers: a clear ``ValueError`` before any launch."""

from __future__ import annotations

from typing import Iterable

import torch

from course_lib.triton_kernels.mode import DEVICE, INTERPRETED
from course_lib.utils import check_floating, check_tensor

#: dtypes the kernels accept. bf16 is left out on purpose: the interpreter's tl.dot is wrong on
#: it and Colab's T4 (sm_75) has no bf16; fp32 and fp16 work everywhere.
KERNEL_DTYPES = (torch.float32, torch.float16)


def check_kernel_input(name: str, x, *, ndim: int | None = None, min_dim: int | None = None,
                       dtypes: Iterable[torch.dtype] = KERNEL_DTYPES) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor of an accepted dtype on the kernel device."""
    check_tensor(name, x, ndim=ndim, min_dim=min_dim)
    check_floating(name, x, dtypes)
    if x.device.type != DEVICE.type:
        mode = "the Triton interpreter (no GPU)" if INTERPRETED else "compiled Triton kernels"
        raise ValueError(f"{name}: expected a tensor on {DEVICE.type} for {mode}; got device {x.device}")


def check_same(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` has the shape, dtype and device of ``ref``."""
    if tuple(x.shape) != tuple(ref.shape):
        raise ValueError(f"{name}: expected the shape of {ref_name}, {tuple(ref.shape)}; got {tuple(x.shape)}")
    if x.dtype != ref.dtype:
        raise ValueError(f"{name}: expected the dtype of {ref_name}, {ref.dtype}; got {x.dtype}")
    if x.device != ref.device:
        raise ValueError(f"{name}: expected the device of {ref_name}, {ref.device}; got {x.device}")


def check_block(name: str, block: int, *, minimum: int = 1) -> None:
    """Raise ``ValueError`` unless ``block`` is a power of two ≥ ``minimum`` (tl.arange needs it)."""
    if not isinstance(block, int) or block < minimum or block & (block - 1):
        raise ValueError(f"{name}: expected a power of two ≥ {minimum} (tl.arange needs one); got {block!r}")
