"""Input checks shared by the kernel wrappers: a clear ``ValueError`` before any launch."""

from __future__ import annotations

from typing import Iterable

import torch

from course_lib.triton_kernels.mode import DEVICE, INTERPRETED
from course_lib.utils import check_floating, check_tensor

#: dtypes the kernels accept everywhere: fp32 and fp16.
KERNEL_DTYPES = (torch.float32, torch.float16)


def bf16_supported() -> bool:
    """True when the kernels are compiled for a GPU of compute capability ≥ 8.0 (Ampere on).

    bf16 is refused elsewhere: the interpreter's ``tl.dot`` on bf16 goes through NumPy, which has
    no bf16 type (Triton's debugging docs list it as unsupported), and a T4 (sm_75) has no bf16
    tensor cores.
    """
    return not INTERPRETED and torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def supported_dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes the kernels accept on this machine: fp32, fp16, and bf16 where :func:`bf16_supported`."""
    return KERNEL_DTYPES + ((torch.bfloat16,) if bf16_supported() else ())


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` for ``tl.dot`` on ``dtype`` operands.

    fp32 → ``"ieee"``: exact fp32 products on the FMA units. Triton's default for fp32 on
    sm ≥ 80 is ``"tf32"`` (10-bit mantissa on tensor cores), which would miss an fp32 reference
    by ~1e-3. fp16/bf16 operands go to tensor cores whatever this says (``"tf32"`` is ignored).
    """
    return "ieee" if dtype == torch.float32 else "tf32"


def check_kernel_input(name: str, x, *, ndim: int | None = None, min_dim: int | None = None,
                       dtypes: Iterable[torch.dtype] | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor of an accepted dtype on the kernel device."""
    check_tensor(name, x, ndim=ndim, min_dim=min_dim)
    check_floating(name, x, supported_dtypes() if dtypes is None else dtypes)
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
