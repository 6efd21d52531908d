"""Tiled matrix multiplication ``C = A B`` in Triton — the loop FlashAttention's inner loop is made of.

``A`` is ``[M, K]``, ``B`` is ``[K, N]``, ``C`` is ``[M, N]``. The output is cut into tiles of
``BLOCK_M × BLOCK_N``; one program instance computes one tile:

* **grid**: ``cdiv(M, BLOCK_M) · cdiv(N, BLOCK_N)`` program instances on one axis;
* **K loop**: the instance walks along ``K`` in steps of ``BLOCK_K``, loads an ``A`` tile
  ``[BLOCK_M, BLOCK_K]`` and a ``B`` tile ``[BLOCK_K, BLOCK_N]``, and adds their product into an
  **fp32 accumulator** held in registers (``tl.dot(a, b, acc)``), whatever the input dtype: a sum
  of ``K`` fp16 products accumulated in fp16 would lose the small terms;
* **masks on the ragged edges**: when ``M``, ``N`` or ``K`` is not a multiple of its block, the
  tiles that stick out load ``0`` there (``0`` adds nothing to a dot product) and the store skips
  the rows and columns past the end;
* **grouped tile ordering** (``GROUP_M``): program ``pid`` is mapped to tile ``(pid_m, pid_n)``
  column by column inside groups of ``GROUP_M`` tile rows, not row by row across the whole
  output. Programs that run at the same time then share the ``A`` and ``B`` tiles they load, and
  the second load of a tile hits the L2 cache instead of HBM (:func:`tile_order` is the same map
  in Python, for counting).

On a GPU the block sizes, ``num_warps`` and ``num_stages`` come from ``triton.autotune`` over a
short list keyed on ``(M, N, K)``; in the interpreter (which cannot time anything) they are fixed.
This follows the structure of Triton's tutorial 03 (matrix multiplication); the code is ours.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from course_lib.triton_kernels.mode import INTERPRETED
from course_lib.triton_kernels._common import check_block, check_kernel_input, dot_precision

__all__ = ["matmul", "matmul_kernel", "grouped_tile", "tile_order", "MATMUL_CONFIGS"]


@triton.jit
def grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Map program ``pid`` to its output tile ``(pid_m, pid_n)``, column-major inside groups of
    ``GROUP_M`` tile rows (the last group may be shorter)."""
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                  stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr, PRECISION: tl.constexpr):
    """One ``[BLOCK_M, BLOCK_N]`` tile of ``C = A B``; A ``[M, K]``, B ``[K, N]``, C ``[M, N]``."""
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)      # rows of C (and A) this tile owns
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)      # columns of C (and B)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak   # [BLOCK_M, BLOCK_K]
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn   # [BLOCK_K, BLOCK_N]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = k0 + offs_k < K                            # the ragged last K step loads zeros
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & (offs_n[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)   # fp32 accumulation
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


#: The autotuner's short list (GPU only): tile shapes × warps × pipeline stages.
MATMUL_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
    for bm, bn, bk, w, s in [
        (128, 256, 64, 8, 3), (128, 128, 64, 4, 4), (128, 64, 32, 4, 4),
        (64, 128, 32, 4, 4), (64, 64, 32, 2, 5), (128, 128, 32, 8, 3),
    ]
]
matmul_kernel_autotuned = None if INTERPRETED else triton.autotune(
    configs=MATMUL_CONFIGS, key=["M", "N", "K", "PRECISION"])(matmul_kernel)


def matmul(a: torch.Tensor, b: torch.Tensor, *, block_m: int | None = None, block_n: int | None = None,
           block_k: int | None = None, group_m: int = 8, num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """``a @ b`` by :func:`matmul_kernel`.

    Args:
        a: ``[M, K]``; b: ``[K, N]``; same dtype (fp32, fp16, or bf16 on sm ≥ 80) and device.
            fp32 is multiplied exactly (``input_precision="ieee"``), fp16/bf16 on tensor cores;
            the accumulator is fp32 in every case.
        block_m, block_n, block_k: tile sizes, powers of two ≥ 16 (``tl.dot`` needs 16). Default:
            autotuned on a GPU; 32, 32, 32 in the interpreter.
        group_m: tile rows per group of the L2-friendly ordering (1 = plain row-major order).
        num_warps, num_stages: launch parameters used when the blocks are given (ignored by the
            interpreter, which runs one program at a time).

    Returns:
        ``C`` ``[M, N]`` in the dtype of ``a``.
    """
    check_kernel_input("a", a, ndim=2)
    check_kernel_input("b", b, ndim=2)
    if b.dtype != a.dtype:
        raise ValueError(f"b: expected the dtype of a, {a.dtype}; got {b.dtype}")
    if b.shape[0] != a.shape[1]:
        raise ValueError(f"b: expected shape ({a.shape[1]}, N) (K = a.shape[1]); got {tuple(b.shape)}")
    if not isinstance(group_m, int) or group_m < 1:
        raise ValueError(f"group_m: expected an int ≥ 1; got {group_m!r}")
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty((M, N), dtype=a.dtype, device=a.device)
    if M == 0 or N == 0:
        return c
    if K == 0:
        return c.zero_()
    precision = dot_precision(a.dtype)
    args = (a, b, c, M, N, K, *a.stride(), *b.stride(), *c.stride())
    if block_m is None and block_n is None and block_k is None and not INTERPRETED:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
        matmul_kernel_autotuned[grid](*args, PRECISION=precision)
        return c
    block_m, block_n, block_k = (32 if b_ is None else b_ for b_ in (block_m, block_n, block_k))
    for name, blk in (("block_m", block_m), ("block_n", block_n), ("block_k", block_k)):
        check_block(name, blk, minimum=16)
    grid = (triton.cdiv(M, block_m) * triton.cdiv(N, block_n),)
    matmul_kernel[grid](*args, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
                        PRECISION=precision, num_warps=num_warps, num_stages=num_stages)
    return c


def tile_order(num_pid_m: int, num_pid_n: int, group_m: int) -> list[tuple[int, int]]:
    """The tile ``(pid_m, pid_n)`` of each program ``pid`` — :func:`grouped_tile` in Python.

    ``group_m = 1`` is plain row-major order: program ``pid`` gets ``divmod(pid, num_pid_n)``.
    """
    out = []
    for pid in range(num_pid_m * num_pid_n):
        in_group = group_m * num_pid_n
        first = (pid // in_group) * group_m
        size = min(num_pid_m - first, group_m)
        out.append((first + (pid % in_group) % size, (pid % in_group) // size))
    return out
