"""Chapter 5 — FlashAttention: tiling and online softmax (Dao et al., 2022; Dao, 2023).

Attention on a GPU is limited by memory traffic, not arithmetic: the standard implementation
(Algorithm 0) writes the ``N × N`` scores ``S`` and probabilities ``P`` to the GPU's main memory
(HBM) and reads them back. FlashAttention computes the same output tile by tile in on-chip SRAM,
with the *online softmax* (Milakov & Gimelshein, 2018) rescaling partial results, so ``S`` and
``P`` never reach HBM.

Public API (stable: Chapter 12's Triton kernels are checked against these functions)::

    sram_block_sizes(M, d) -> (Br, Bc)                   # Bc = ⌈M/4d⌉, Br = min(⌈M/4d⌉, d)
    softmax_stats(x) -> (m, l)                            # m(x) = max x, ℓ(x) = Σ e^(x − m(x))
    online_softmax_merge((m1, l1), (m2, l2)) -> (m, l)    # the statistics of [x¹ x²]
    online_softmax(x, block_size, return_stats=False)     # streaming softmax over blocks == softmax
    standard_attention(q, k, v, *, causal, scale, hbm) -> O                  # Algorithm 0
    standard_attention_backward(q, k, v, P, dO, *, scale, hbm) -> dQ, dK, dV # through stored P
    flash_attention_v1(q, k, v, *, causal, scale, M, Br, Bc, hbm, return_stats) -> O [, l, m]
                                                          # Algorithm 1: outer loop over K/V blocks
    flash_attention_forward(q, k, v, *, causal, scale, M, Br, Bc, hbm) -> (O, L)
                                                          # FlashAttention-2 order, L = m + log ℓ
    flash_attention_backward(q, k, v, o, L, do, *, causal, scale, M, Br, Bc, hbm) -> dQ, dK, dV
                                                          # recomputation from L (FA-2, Alg. 2)
    flash_attention(q, k, v, *, causal, scale, M, Br, Bc) -> O     # differentiable (autograd.Function)
    HBMCounter, IOCount                                   # count HBM reads/writes (elements) and FLOPs
    standard_attention_io(N, d, ...), flash_attention_io(N, d, ...)   # the same counts, closed form
    peak_memory(fn, *args, **kwargs) -> (result, bytes)   # peak bytes of tensors fn allocates

Shapes: ``q`` is ``[..., N, d]`` (usually ``[batch, heads, N, head_dim]``), ``k`` ``[..., N_k, d]``,
``v`` ``[..., N_k, d_v]``; the output ``O`` is ``[..., N, d_v]`` and the log-sum-exp ``L`` is ``[..., N]``.
``scale`` multiplies the scores (default ``1/√d``); ``causal`` is top-left aligned, query ``i`` sees
keys ``j ≤ i`` (as ``F.scaled_dot_product_attention(is_causal=True)``). Block sizes: ``Br`` query
rows and ``Bc`` key columns per tile; give them directly, or give the SRAM size ``M`` (in elements)
and get the paper's formula; by default ``Br = Bc = 64``. Half-precision inputs are computed in
float32 (the on-chip accumulators of real kernels are float32) and the output cast back.

HBM accounting: pass ``hbm=HBMCounter()`` and each function records every load from and store to
"HBM" of the large tensors (Q, K, V, O, S, P, ℓ, m, L, D and the gradients) in elements, and the
FLOPs of its matrix products (``2·m·n·k`` each; the elementwise work is O(N²), not counted). The
closed forms :func:`standard_attention_io` and :func:`flash_attention_io` give the same numbers
(``tests/test_flash.py`` checks counted == formula), from which Theorem 2 of the paper follows:
standard attention needs Θ(Nd + N²) HBM accesses, FlashAttention Θ(N²d²/M).

Everything is tested against ``F.scaled_dot_product_attention`` and autograd in
``tests/test_flash.py``.
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from dataclasses import dataclass

import torch

from course_lib.attention import _check_qkv, attention_scores, softmax
from course_lib.utils import check_floating, check_int, check_tensor

__all__ = [
    "sram_block_sizes",
    "softmax_stats",
    "online_softmax_merge",
    "online_softmax",
    "HBMCounter",
    "IOCount",
    "standard_attention",
    "standard_attention_backward",
    "flash_attention_v1",
    "flash_attention_forward",
    "flash_attention_backward",
    "FlashAttentionFunction",
    "flash_attention",
    "standard_attention_io",
    "flash_attention_io",
    "peak_memory",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
DEFAULT_BLOCK = 64


# ----------------------------------------------------------------------------- block sizes
def sram_block_sizes(M: int, d: int) -> tuple[int, int]:
    """Algorithm 1, line 1: ``Bc = ⌈M / 4d⌉`` and ``Br = min(⌈M / 4d⌉, d)``.

    ``M`` is the on-chip SRAM size in elements. The tiles ``K_j, V_j`` (``Bc × d`` each),
    ``Q_i, O_i`` (``Br × d`` each) then take about ``4·Bc·d ≈ M`` elements, and the score tile
    ``S_ij`` (``Br × Bc ≤ d·M/4d = M/4``) fits as well.

    Returns:
        ``(Br, Bc)``.
    """
    check_int("M", M)
    check_int("d", d)
    bc = -(-M // (4 * d))
    return min(bc, d), bc


def _block_sizes(d: int, M, Br, Bc) -> tuple[int, int]:
    if M is not None:
        if Br is not None or Bc is not None:
            raise ValueError(f"M: give either the SRAM size M or the block sizes Br, Bc, not both; got M={M!r}, Br={Br!r}, Bc={Bc!r}")
        return sram_block_sizes(M, d)
    br = DEFAULT_BLOCK if Br is None else check_int("Br", Br)
    bc = DEFAULT_BLOCK if Bc is None else check_int("Bc", Bc)
    return br, bc


# ----------------------------------------------------------------------------- online softmax
def softmax_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistics of a block ``x`` (along the last dim): ``m(x) = max_i x_i`` and
    ``ℓ(x) = Σ_i e^(x_i − m(x))``, so that ``softmax(x) = e^(x − m(x)) / ℓ(x)``.

    A block with every entry ``-inf`` (fully masked) has ``m = -inf`` and ``ℓ = 0``.

    Args:
        x: ``[..., B]`` floating.
    Returns:
        ``(m, l)``, each ``[...]``.
    """
    check_tensor("x", x, min_dim=1)
    check_floating("x", x)
    m = x.amax(dim=-1)
    l = torch.exp(x - _finite(m).unsqueeze(-1)).sum(dim=-1)
    return m, l


def _finite(m: torch.Tensor) -> torch.Tensor:
    """``m`` with ``-inf`` replaced by 0: the shift for rows that have seen no key yet."""
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def online_softmax_merge(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]):
    """Merge the statistics of two blocks into those of their concatenation ``x = [x¹ x²]``:

        m(x) = max(m¹, m²),   ℓ(x) = e^(m¹ − m(x)) ℓ¹ + e^(m² − m(x)) ℓ².

    Each old sum is rescaled from its own maximum to the common one; the merge is
    associative and commutative, so blocks can be merged in any grouping and order.

    Args:
        a, b: ``(m, l)`` pairs of tensors of one (broadcastable) shape.
    Returns:
        ``(m, l)`` of the concatenation.
    """
    for name, pair in (("a", a), ("b", b)):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"{name}: expected a pair (m, l) of tensors; got {type(pair).__name__}")
        check_tensor(f"{name}[0] (m)", pair[0])
        check_tensor(f"{name}[1] (l)", pair[1])
    (m1, l1), (m2, l2) = a, b
    m = torch.maximum(m1, m2)
    ms = _finite(m)
    return m, torch.exp(m1 - ms) * l1 + torch.exp(m2 - ms) * l2


def online_softmax(x: torch.Tensor, block_size: int, return_stats: bool = False):
    """Softmax along the last dim, reading ``x`` in blocks of ``block_size``.

    Pass 1 streams over the blocks keeping only the running ``(m, ℓ)`` (merged with
    :func:`online_softmax_merge`); pass 2 writes ``e^(x − m) / ℓ`` block by block. Never is a
    whole row's exponential held at once: this is the online normalizer of Milakov & Gimelshein.

    Args:
        x: ``[..., n]`` floating; ``n`` need not be a multiple of ``block_size``.
    Returns:
        ``softmax(x)`` (and ``(m, l)`` of each row if ``return_stats``).
    """
    check_tensor("x", x, min_dim=1)
    check_floating("x", x)
    check_int("block_size", block_size)
    n = x.shape[-1]
    m = torch.full(x.shape[:-1], float("-inf"), dtype=x.dtype, device=x.device)
    l = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    for start in range(0, n, block_size):
        m, l = online_softmax_merge((m, l), softmax_stats(x[..., start:start + block_size]))
    safe_l = torch.where(l == 0, torch.ones_like(l), l)
    p = torch.empty_like(x)
    for start in range(0, n, block_size):
        p[..., start:start + block_size] = torch.exp(x[..., start:start + block_size] - _finite(m).unsqueeze(-1)) / safe_l.unsqueeze(-1)
    return (p, (m, l)) if return_stats else p


# ----------------------------------------------------------------------------- HBM accounting
@dataclass(frozen=True)
class IOCount:
    """HBM traffic in elements (``reads``, ``writes``) and matrix-product FLOPs."""

    reads: int
    writes: int
    flops: int

    @property
    def total(self) -> int:
        """Reads + writes, in elements."""
        return self.reads + self.writes

    def bytes(self, itemsize: int = 2) -> int:
        """Reads + writes in bytes, at ``itemsize`` bytes per element (2 for fp16)."""
        return self.total * itemsize

    def __add__(self, other: "IOCount") -> "IOCount":
        return IOCount(self.reads + other.reads, self.writes + other.writes, self.flops + other.flops)


class HBMCounter:
    """Records the loads from and stores to HBM that an algorithm performs.

    ``read(name, t)`` and ``write(name, t)`` add ``t.numel()`` elements under ``name`` (and return
    ``t``, so a load reads like ``Qi = hbm.read("Q", q[..., rows, :])``); ``matmul(a, b)`` computes
    ``a @ b`` and adds its ``2·m·n·k`` FLOPs (times the batch). ``count()`` gives an :class:`IOCount`.
    """

    def __init__(self) -> None:
        self.reads: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()
        self.flops = 0

    def read(self, name: str, t: torch.Tensor) -> torch.Tensor:
        self.reads[name] += t.numel()
        return t

    def write(self, name: str, t: torch.Tensor) -> torch.Tensor:
        self.writes[name] += t.numel()
        return t

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = a @ b
        self.flops += 2 * out.numel() * a.shape[-1]
        return out

    def count(self) -> IOCount:
        return IOCount(sum(self.reads.values()), sum(self.writes.values()), self.flops)

    def table(self) -> dict[str, tuple[int, int]]:
        """``{name: (elements read, elements written)}``."""
        return {k: (self.reads[k], self.writes[k]) for k in sorted(set(self.reads) | set(self.writes))}


class _NoCount(HBMCounter):
    """The counter used when none is passed: records nothing."""

    def read(self, name, t):
        return t

    def write(self, name, t):
        return t

    def matmul(self, a, b):
        return a @ b


def _counter(hbm) -> HBMCounter:
    if hbm is None:
        return _NoCount()
    if not isinstance(hbm, HBMCounter):
        raise ValueError(f"hbm: expected an HBMCounter or None; got {type(hbm).__name__}")
    return hbm


def _prepare(q, k, v, scale):
    _check_qkv(q, k, v)
    if scale is not None and not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale)):
        raise ValueError(f"scale: expected a finite number; got {scale!r}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    compute = torch.float32 if q.dtype in _LOW_PRECISION else q.dtype
    return scale, compute


def _causal_keep(r0: int, r1: int, c0: int, c1: int, device) -> torch.Tensor:
    """``[r1 − r0, c1 − c0]`` bool: query row i may see key column j when j ≤ i."""
    i = torch.arange(r0, r1, device=device).unsqueeze(1)
    j = torch.arange(c0, c1, device=device).unsqueeze(0)
    return j <= i


# ----------------------------------------------------------------------------- Algorithm 0
def standard_attention(q, k, v, *, causal: bool = False, scale: float | None = None, hbm: HBMCounter | None = None,
                       return_probs: bool = False):
    """Algorithm 0, the standard implementation, materialising ``S`` and ``P`` in HBM:

    1. read Q, K; compute ``S = scale · Q Kᵀ``; write S       (``[..., N, N_k]``)
    2. read S; compute ``P = softmax(S)`` (causal mask applied here); write P
    3. read P, V; compute ``O = P V``; write O.

    Args:
        q ``[..., N, d]``, k ``[..., N_k, d]``, v ``[..., N_k, d_v]``.
        return_probs: also return ``P`` (the backward pass of standard attention reads it).
    Returns:
        ``O`` ``[..., N, d_v]`` (and ``P``).
    """
    scale, compute = _prepare(q, k, v, scale)
    hbm = _counter(hbm)
    Q, K, V = (t.to(compute) for t in (q, k, v))
    S = hbm.write("S", hbm.matmul(hbm.read("Q", Q), hbm.read("K", K).transpose(-2, -1)) * scale)
    S = hbm.read("S", S)
    if causal:
        S = S.masked_fill(~_causal_keep(0, S.shape[-2], 0, S.shape[-1], S.device), float("-inf"))
    P = hbm.write("P", softmax(S, dim=-1))
    O = hbm.write("O", hbm.matmul(hbm.read("P", P), hbm.read("V", V))).to(q.dtype)
    return (O, P) if return_probs else O


def standard_attention_backward(q, k, v, P, do, *, scale: float | None = None, hbm: HBMCounter | None = None):
    """Backward of Algorithm 0 through the stored probabilities ``P`` (read back from HBM):

        dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP − rowsum(dP ∘ P)),  dQ = scale · dS K,  dK = scale · dSᵀ Q.

    Each product is its own kernel, so dP and dS (``N × N_k``) are written to and read from HBM.

    Returns:
        ``(dQ, dK, dV)`` in the dtypes of ``q, k, v``.
    """
    scale, compute = _prepare(q, k, v, scale)
    hbm = _counter(hbm)
    Q, K, V, dO = (t.to(compute) for t in (q, k, v, do))
    dV = hbm.write("dV", hbm.matmul(hbm.read("P", P).transpose(-2, -1), hbm.read("dO", dO)))
    dP = hbm.write("dP", hbm.matmul(hbm.read("dO", dO), hbm.read("V", V).transpose(-2, -1)))
    P, dP = hbm.read("P", P), hbm.read("dP", dP)
    dS = hbm.write("dS", P * (dP - (dP * P).sum(dim=-1, keepdim=True)))
    dQ = hbm.write("dQ", hbm.matmul(hbm.read("dS", dS), hbm.read("K", K)) * scale)
    dK = hbm.write("dK", hbm.matmul(hbm.read("dS", dS).transpose(-2, -1), hbm.read("Q", Q)) * scale)
    return dQ.to(q.dtype), dK.to(k.dtype), dV.to(v.dtype)


# ----------------------------------------------------------------------------- Algorithm 1
def flash_attention_v1(q, k, v, *, causal: bool = False, scale: float | None = None, M: int | None = None,
                       Br: int | None = None, Bc: int | None = None, hbm: HBMCounter | None = None,
                       return_stats: bool = False):
    """Algorithm 1 of FlashAttention (Dao et al., 2022), line by line.

    ``O``, ``ℓ``, ``m`` live in HBM. The outer loop runs over the ``T_c = ⌈N_k / Bc⌉`` key/value
    blocks ``j`` (each loaded once); the inner loop over the ``T_r = ⌈N / Br⌉`` query blocks ``i``
    loads ``Q_i, O_i, ℓ_i, m_i``, computes the tile ``S_ij = scale · Q_i K_jᵀ`` on chip and its
    statistics ``m̃_ij, P̃_ij = e^(S_ij − m̃_ij), ℓ̃_ij``, merges them into the running ones and
    writes back the rescaled, *normalised* output

        O_i ← diag(ℓ_i^new)⁻¹ (diag(ℓ_i) e^(m_i − m_i^new) O_i + e^(m̃_ij − m_i^new) P̃_ij V_j).

    With ``causal``, tiles entirely above the diagonal are skipped; tiles on it are masked.

    Returns:
        ``O`` ``[..., N, d_v]`` (and the final ``ℓ``, ``m``, each ``[..., N]``, if ``return_stats``).
    """
    scale, compute = _prepare(q, k, v, scale)
    hbm = _counter(hbm)
    br, bc = _block_sizes(q.shape[-1], M, Br, Bc)
    N, Nk = q.shape[-2], k.shape[-2]
    lead, dev = q.shape[:-2], q.device
    O = hbm.write("O", torch.zeros(*lead, N, v.shape[-1], dtype=compute, device=dev))  # line 2, in HBM
    l = hbm.write("l", torch.zeros(*lead, N, dtype=compute, device=dev))
    m = hbm.write("m", torch.full((*lead, N), float("-inf"), dtype=compute, device=dev))
    for c0 in range(0, Nk, bc):                                         # line 5: key/value blocks j
        c1 = min(c0 + bc, Nk)
        Kj = hbm.read("K", k[..., c0:c1, :]).to(compute)                # line 6
        Vj = hbm.read("V", v[..., c0:c1, :]).to(compute)
        for r0 in range(0, N, br):                                      # line 7: query blocks i
            r1 = min(r0 + br, N)
            if causal and c0 > r1 - 1:                                  # the whole tile is above the diagonal
                continue
            Qi = hbm.read("Q", q[..., r0:r1, :]).to(compute)            # line 8
            Oi = hbm.read("O", O[..., r0:r1, :])
            li = hbm.read("l", l[..., r0:r1])
            mi = hbm.read("m", m[..., r0:r1])
            Sij = hbm.matmul(Qi, Kj.transpose(-2, -1)) * scale          # line 9, on chip
            if causal and c1 - 1 > r0:                                  # the tile crosses the diagonal
                Sij = Sij.masked_fill(~_causal_keep(r0, r1, c0, c1, dev), float("-inf"))
            m_tilde = Sij.amax(dim=-1)                                  # line 10
            P_tilde = torch.exp(Sij - _finite(m_tilde).unsqueeze(-1))
            l_tilde = P_tilde.sum(dim=-1)
            m_new = torch.maximum(mi, m_tilde)                          # line 11
            alpha = torch.exp(mi - _finite(m_new))                      # e^(m_i − m_new)
            beta = torch.exp(m_tilde - _finite(m_new))                  # e^(m̃_ij − m_new)
            l_new = alpha * li + beta * l_tilde
            safe = torch.where(l_new == 0, torch.ones_like(l_new), l_new)
            O_new = ((li * alpha).unsqueeze(-1) * Oi + beta.unsqueeze(-1) * hbm.matmul(P_tilde, Vj)) / safe.unsqueeze(-1)
            O[..., r0:r1, :] = hbm.write("O", O_new)                    # line 12
            l[..., r0:r1] = hbm.write("l", l_new)                       # line 13
            m[..., r0:r1] = hbm.write("m", m_new)
    O = O.to(q.dtype)
    return (O, l, m) if return_stats else O


# ----------------------------------------------------------------------------- FlashAttention-2
def flash_attention_forward(q, k, v, *, causal: bool = False, scale: float | None = None, M: int | None = None,
                            Br: int | None = None, Bc: int | None = None, hbm: HBMCounter | None = None):
    """The FlashAttention-2 forward pass (Dao, 2023, Algorithm 1): the loops swapped.

    The outer loop runs over query blocks ``Q_i`` (each loaded once, and on a GPU one thread block
    each, in parallel); the inner loop streams ``K_j, V_j``. The accumulator is kept *unnormalised*,

        m_new = max(m, rowmax(S_ij)),  P̃ = e^(S_ij − m_new),  ℓ ← e^(m − m_new) ℓ + rowsum(P̃),
        acc ← diag(e^(m − m_new)) acc + P̃ V_j,

    and divided by ``ℓ`` once, after the last block: ``O_i = diag(ℓ)⁻¹ acc``. Only ``O_i`` and the
    log-sum-exp ``L_i = m + log ℓ`` are written to HBM; ``L`` is all the backward pass needs to
    recompute ``P = e^(S − L)``. With ``causal``, the inner loop stops at the diagonal.

    Returns:
        ``(O, L)``: ``[..., N, d_v]`` in the dtype of ``q``, and ``[..., N]`` in the compute dtype
        (float32 for half-precision inputs).
    """
    scale, compute = _prepare(q, k, v, scale)
    hbm = _counter(hbm)
    br, bc = _block_sizes(q.shape[-1], M, Br, Bc)
    N, Nk = q.shape[-2], k.shape[-2]
    lead, dev = q.shape[:-2], q.device
    O = torch.empty(*lead, N, v.shape[-1], dtype=q.dtype, device=dev)
    L = torch.empty(*lead, N, dtype=compute, device=dev)
    for r0 in range(0, N, br):                                          # outer: query blocks i
        r1 = min(r0 + br, N)
        Qi = hbm.read("Q", q[..., r0:r1, :]).to(compute)
        acc = torch.zeros(*lead, r1 - r0, v.shape[-1], dtype=compute, device=dev)   # on chip
        m = torch.full((*lead, r1 - r0), float("-inf"), dtype=compute, device=dev)
        l = torch.zeros(*lead, r1 - r0, dtype=compute, device=dev)
        c_end = min(Nk, r1) if causal else Nk                           # causal: no tile above the diagonal
        for c0 in range(0, c_end, bc):                                  # inner: key/value blocks j
            c1 = min(c0 + bc, Nk)
            Kj = hbm.read("K", k[..., c0:c1, :]).to(compute)
            Vj = hbm.read("V", v[..., c0:c1, :]).to(compute)
            S = hbm.matmul(Qi, Kj.transpose(-2, -1)) * scale
            if causal and c1 - 1 > r0:
                S = S.masked_fill(~_causal_keep(r0, r1, c0, c1, dev), float("-inf"))
            m_new = torch.maximum(m, S.amax(dim=-1))
            ms = _finite(m_new)
            P = torch.exp(S - ms.unsqueeze(-1))
            alpha = torch.exp(m - ms)                                   # rescale the old partial results
            l = alpha * l + P.sum(dim=-1)
            acc = alpha.unsqueeze(-1) * acc + hbm.matmul(P, Vj)
            m = m_new
        safe = torch.where(l == 0, torch.ones_like(l), l)
        O[..., r0:r1, :] = hbm.write("O", acc / safe.unsqueeze(-1)).to(q.dtype)   # normalise once
        L[..., r0:r1] = hbm.write("L", m + torch.log(l))                # −inf for a row with no key
    return O, L


def flash_attention_backward(q, k, v, o, L, do, *, causal: bool = False, scale: float | None = None,
                             M: int | None = None, Br: int | None = None, Bc: int | None = None,
                             hbm: HBMCounter | None = None):
    """The FlashAttention-2 backward pass (Dao, 2023, Algorithm 2): recompute, never store, P.

    Preprocessing: ``D = rowsum(dO ∘ O)`` (``[..., N]``; it equals ``rowsum(P ∘ dP)``), and
    ``dQ = 0`` in HBM. Outer loop over key/value blocks ``j`` (``dK_j, dV_j`` accumulate on chip),
    inner loop over query blocks ``i``:

        S = scale · Q_i K_jᵀ,  P = e^(S − L_i),  dV_j += Pᵀ dO_i,  dP = dO_i V_jᵀ,
        dS = P ∘ (dP − D_i),  dQ_i += scale · dS K_j  (read-modify-write in HBM),  dK_j += scale · dSᵀ Q_i.

    (The paper's listing also loads ``O_i`` in the inner loop; with ``D`` precomputed it is not
    needed, so it is not loaded here.)

    Args:
        o, L: the forward's output and log-sum-exp; do: ``∂loss/∂O``, shaped like ``o``.
    Returns:
        ``(dQ, dK, dV)`` in the dtypes of ``q, k, v``.
    """
    scale, compute = _prepare(q, k, v, scale)
    hbm = _counter(hbm)
    N, Nk = q.shape[-2], k.shape[-2]
    out_shape = (*q.shape[:-1], v.shape[-1])
    for name, t, shape in (("o", o, out_shape), ("do", do, out_shape), ("L", L, tuple(q.shape[:-1]))):
        check_tensor(name, t)
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name}: expected shape {tuple(shape)}; got {tuple(t.shape)}")
    br, bc = _block_sizes(q.shape[-1], M, Br, Bc)
    dev = q.device
    D = hbm.write("D", (hbm.read("dO", do).to(compute) * hbm.read("O", o).to(compute)).sum(dim=-1))
    dQ = hbm.write("dQ", torch.zeros(q.shape, dtype=compute, device=dev))
    dK = torch.empty(k.shape, dtype=compute, device=dev)
    dV = torch.empty(v.shape, dtype=compute, device=dev)
    L = L.to(compute)
    for c0 in range(0, Nk, bc):                                         # outer: key/value blocks j
        c1 = min(c0 + bc, Nk)
        Kj = hbm.read("K", k[..., c0:c1, :]).to(compute)
        Vj = hbm.read("V", v[..., c0:c1, :]).to(compute)
        dKj = torch.zeros_like(Kj)
        dVj = torch.zeros_like(Vj)
        for r0 in (_rows_from(c0, N, br) if causal else range(0, N, br)):
            r1 = min(r0 + br, N)
            Qi = hbm.read("Q", q[..., r0:r1, :]).to(compute)
            dOi = hbm.read("dO", do[..., r0:r1, :]).to(compute)
            dQi = hbm.read("dQ", dQ[..., r0:r1, :])
            Li = hbm.read("L", L[..., r0:r1])
            Di = hbm.read("D", D[..., r0:r1])
            S = hbm.matmul(Qi, Kj.transpose(-2, -1)) * scale
            if causal and c1 - 1 > r0:
                S = S.masked_fill(~_causal_keep(r0, r1, c0, c1, dev), float("-inf"))
            P = torch.exp(S - _finite(Li).unsqueeze(-1))                # recomputed from L
            dVj = dVj + hbm.matmul(P.transpose(-2, -1), dOi)
            dP = hbm.matmul(dOi, Vj.transpose(-2, -1))
            dS = P * (dP - Di.unsqueeze(-1))
            dQ[..., r0:r1, :] = hbm.write("dQ", dQi + hbm.matmul(dS, Kj) * scale)
            dKj = dKj + hbm.matmul(dS.transpose(-2, -1), Qi) * scale
        dK[..., c0:c1, :] = hbm.write("dK", dKj)
        dV[..., c0:c1, :] = hbm.write("dV", dVj)
    return dQ.to(q.dtype), dK.to(k.dtype), dV.to(v.dtype)


def _rows_from(c0: int, N: int, br: int):
    """Query-block starts whose block reaches key ``c0`` (the causal skip): the blocks with r1 − 1 ≥ c0."""
    return (r0 for r0 in range(0, N, br) if min(r0 + br, N) - 1 >= c0)


class FlashAttentionFunction(torch.autograd.Function):
    """``O = softmax(scale · Q Kᵀ) V`` with the FlashAttention-2 forward (saving only ``O`` and
    ``L``) and the recomputing backward. Use through :func:`flash_attention`."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, Br, Bc):
        O, L = flash_attention_forward(q, k, v, causal=causal, scale=scale, Br=Br, Bc=Bc)
        ctx.save_for_backward(q, k, v, O, L)
        ctx.options = dict(causal=causal, scale=scale, Br=Br, Bc=Bc)
        return O

    @staticmethod
    def backward(ctx, dO):
        q, k, v, O, L = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(q, k, v, O, L, dO.contiguous(), **ctx.options)
        return dq, dk, dv, None, None, None, None


def flash_attention(q, k, v, *, causal: bool = False, scale: float | None = None, M: int | None = None,
                    Br: int | None = None, Bc: int | None = None) -> torch.Tensor:
    """Differentiable FlashAttention: ``[..., N, d]`` queries → ``[..., N, d_v]`` output.

    Saves ``Q, K, V, O, L`` for the backward — O(N) extra memory, never the ``N × N`` matrix P.
    """
    _prepare(q, k, v, scale)
    br, bc = _block_sizes(q.shape[-1], M, Br, Bc)
    return FlashAttentionFunction.apply(q, k, v, causal, scale, br, bc)


# ----------------------------------------------------------------------------- closed forms
def standard_attention_io(N: int, d: int, *, backward: bool = False, batch_heads: int = 1) -> IOCount:
    """HBM traffic of :func:`standard_attention` (and its backward), ``N_k = N``, ``d_v = d``.

    Forward (Algorithm 0): reads ``Q, K`` (2Nd), ``S`` (N²), ``P, V`` (N² + Nd); writes ``S, P`` (2N²),
    ``O`` (Nd) — in all ``4Nd + 4N²``, Θ(Nd + N²). FLOPs ``4N²d``.
    Backward: reads ``5N² + 5Nd``, writes ``2N² + 3Nd``; FLOPs ``8N²d``.
    """
    check_int("N", N), check_int("d", d), check_int("batch_heads", batch_heads)
    reads, writes, flops = 3 * N * d + 2 * N * N, 2 * N * N + N * d, 4 * N * N * d
    if backward:
        reads += 5 * N * N + 5 * N * d
        writes += 2 * N * N + 3 * N * d
        flops += 8 * N * N * d
    return IOCount(reads * batch_heads, writes * batch_heads, flops * batch_heads)


def flash_attention_io(N: int, d: int, M: int | None = None, *, Br: int | None = None, Bc: int | None = None,
                       version: int = 1, backward: bool = False, batch_heads: int = 1) -> IOCount:
    """HBM traffic of the FlashAttention functions here (not causal; ``N_k = N``, ``d_v = d``).

    With ``T_c = ⌈N/Bc⌉`` and ``T_r = ⌈N/Br⌉`` (blocks from ``M`` by :func:`sram_block_sizes`):

    * ``version=1`` (:func:`flash_attention_v1`): K, V read once (2Nd); every one of the ``T_c``
      outer steps reads and writes all of ``O, ℓ, m``: reads ``2Nd + T_c(2Nd + 2N)``, writes
      ``(Nd + 2N)(T_c + 1)`` (the ``+1`` is line 2, initialising them in HBM).
      Since ``T_c ≈ 4Nd/M``, that is Θ(N²d²/M) — Theorem 2 of the paper.
    * ``version=2`` (:func:`flash_attention_forward`): Q read once, K and V once per query block:
      reads ``Nd + 2Nd·T_r``, writes ``Nd + N`` (O and L).

    ``backward`` adds :func:`flash_attention_backward`: reads ``4Nd + T_c(3Nd + 2N)``, writes
    ``N + Nd(T_c + 3)``. FLOPs: ``4N²d`` forward, ``10N²d`` backward (S is recomputed).
    """
    check_int("N", N), check_int("d", d), check_int("batch_heads", batch_heads)
    if version not in (1, 2):
        raise ValueError(f"version: expected 1 (Algorithm 1) or 2 (FlashAttention-2 order); got {version!r}")
    br, bc = _block_sizes(d, M, Br, Bc)
    Tr, Tc = -(-N // br), -(-N // bc)
    if version == 1:
        reads, writes = 2 * N * d + Tc * (2 * N * d + 2 * N), (N * d + 2 * N) * (Tc + 1)
    else:
        reads, writes = N * d + 2 * N * d * Tr, N * d + N
    flops = 4 * N * N * d
    if backward:
        reads += 4 * N * d + Tc * (3 * N * d + 2 * N)
        writes += N + N * d * (Tc + 3)
        flops += 10 * N * N * d
    return IOCount(reads * batch_heads, writes * batch_heads, flops * batch_heads)


# ----------------------------------------------------------------------------- memory
def peak_memory(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)``; return ``(result, peak_bytes)``, the most bytes of tensors it
    allocated that were alive at one time (inputs not counted).

    On a GPU (inputs on CUDA) this is ``torch.cuda.max_memory_allocated`` minus the memory in use
    before the call. On the CPU, where PyTorch keeps no allocator statistics, a
    ``TorchDispatchMode`` sees every tensor an operator returns: a tensor with new storage adds
    its bytes, and a ``weakref.finalize`` on it subtracts them when it is freed. This measures what
    the implementation really allocates (temporaries included), not what we declare.
    """
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    if tensors and tensors[0].is_cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return result, torch.cuda.max_memory_allocated() - base

    from torch.utils._python_dispatch import TorchDispatchMode

    state = {"live": 0, "peak": 0}
    seen: set[int] = {t.untyped_storage().data_ptr() for t in tensors}

    def free(nbytes, ptr):
        state["live"] -= nbytes
        seen.discard(ptr)

    class _Track(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    storage = t.untyped_storage()
                    ptr = storage.data_ptr()
                    if ptr in seen or storage.nbytes() == 0:
                        continue                         # a view, an in-place result, or an input
                    seen.add(ptr)
                    state["live"] += storage.nbytes()
                    state["peak"] = max(state["peak"], state["live"])
                    weakref.finalize(t, free, storage.nbytes(), ptr)
            return out

    with _Track():
        result = fn(*args, **kwargs)
    return result, state["peak"]
