"""Chapter 10 — sparse attention: sliding windows, dilated windows, global tokens,
the Sparse Transformer's strided and fixed patterns, and block-sparse attention.

Full attention over ``n`` positions computes an ``n × n`` score matrix. Sparse attention lets
query ``i`` attend only to an index set ``S_i`` of keys,

    a(x_i, S_i) = softmax( (x_i W_q) (x_j W_k)ᵀ_{j ∈ S_i} / √d_k ) (x_j W_v)_{j ∈ S_i},

which is ordinary attention with the boolean mask ``M[i, j] = (j ∈ S_i)``. Every pattern here
is such a mask: ``[T, S]`` (queries × keys), ``True`` where a query may attend (PyTorch's
convention, as in ``course_lib.masks``), and causal unless stated otherwise.

Sections, top to bottom:

* cost — :func:`score_matrix_bytes`, :func:`nnz`;
* local patterns — :func:`sliding_window_mask`, :func:`dilated_window_mask`,
  :func:`global_tokens_mask`;
* the Sparse Transformer's factorized patterns (Child et al., 2019) —
  :func:`strided_pattern`, :func:`fixed_pattern`, :func:`union`, :func:`head_masks`,
  :func:`layer_schedule`;
* information flow across layers — :func:`reachable`, :func:`hop_distance`,
  :func:`receptive_field`, :func:`layers_needed`;
* computing only what the mask keeps — :func:`block_layout`, :func:`block_sparse_attention`.

Tested in ``tests/test_sparse.py`` against dense masked attention
(``course_lib.attention.scaled_dot_product_attention``) and brute-force path counting.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from course_lib.attention import _check_qkv, softmax
from course_lib.masks import causal_mask
from course_lib.utils import check_int, check_tensor

__all__ = [
    "score_matrix_bytes",
    "nnz",
    "sliding_window_mask",
    "dilated_window_mask",
    "global_tokens_mask",
    "strided_pattern",
    "fixed_pattern",
    "union",
    "head_masks",
    "layer_schedule",
    "reachable",
    "hop_distance",
    "receptive_field",
    "layers_needed",
    "block_layout",
    "block_sparse_attention",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
MODES = ("interleaved", "merged", "heads")


# ----------------------------------------------------------------------------- helpers
def _check_mask2d(name: str, mask) -> torch.Tensor:
    check_tensor(name, mask, ndim=2)
    if mask.dtype != torch.bool:
        raise ValueError(f"{name}: expected dtype torch.bool (True = attend); got {mask.dtype}")
    return mask


def _offsets(T: int, S: int | None, device) -> tuple[torch.Tensor, int]:
    """``[T, S]`` matrix of ``p_i − j``, the distance from query i back to key j.

    Queries are the last T of the S positions (bottom-right aligned, as ``causal_mask``):
    query row ``i`` sits at absolute position ``p_i = i + S − T``.
    """
    S = T if S is None else S
    check_int("T", T, 0)
    check_int("S", S, 0)
    if S < T:
        raise ValueError(f"S: expected at least T = {T} keys (queries are the last T positions); got S = {S}")
    i = torch.arange(T, device=device).unsqueeze(1) + (S - T)
    j = torch.arange(S, device=device).unsqueeze(0)
    return i - j, S


# ----------------------------------------------------------------------------- cost
def score_matrix_bytes(n: int, dtype: torch.dtype | int = torch.float16, *, heads: int = 1,
                       layers: int = 1, batch: int = 1) -> int:
    """Bytes of the ``n × n`` attention score matrix: ``batch · layers · heads · n² · bytes``.

    Args:
        n: sequence length (queries = keys = ``n``).
        dtype: a torch dtype (its element size is used) or a number of bytes per element.
        heads, layers, batch: how many such matrices exist at once.
    """
    check_int("n", n, 0)
    size = torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else dtype
    check_int("dtype", size, 1)
    for name, v in (("heads", heads), ("layers", layers), ("batch", batch)):
        check_int(name, v, 1)
    return batch * layers * heads * n * n * size


def nnz(mask: torch.Tensor) -> int:
    """Number of ``True`` entries: the number of (query, key) scores a pattern computes."""
    check_tensor("mask", mask)
    if mask.dtype != torch.bool:
        raise ValueError(f"mask: expected dtype torch.bool; got {mask.dtype}")
    return int(mask.sum().item())


# ----------------------------------------------------------------------------- local patterns
def sliding_window_mask(T: int, window: int, S: int | None = None, *, device=None) -> torch.Tensor:
    """Causal sliding window: query i attends to the last ``window`` keys, itself included.

    ``mask[i, j] = 0 ≤ p_i − j < window`` with ``p_i = i + S − T`` (bottom-right aligned, so
    with a KV cache the T new queries are the last T positions). Row i of a square mask keeps
    keys ``max(0, i − window + 1) … i``: ``window = 1`` is the diagonal, ``window ≥ S`` is the
    causal mask.

    Conventions differ by one: Mistral's paper lets position i see ``i − W … i`` (W + 1 keys),
    which is ``sliding_window_mask(T, W + 1)`` here.

    Returns:
        ``[T, S]`` bool.
    """
    check_int("window", window, 1)
    dist, _ = _offsets(T, S, device)
    return (dist >= 0) & (dist < window)


def dilated_window_mask(T: int, window: int, dilation: int, S: int | None = None, *, device=None) -> torch.Tensor:
    """Causal dilated window: ``window`` keys spaced ``dilation`` apart, ending at the query.

    ``mask[i, j] = (p_i − j) ∈ {0, δ, 2δ, …, (window − 1)·δ}``: one layer spans
    ``(window − 1)·δ + 1`` positions at the cost of ``window`` scores per query
    (Longformer's dilated sliding window). ``dilation = 1`` is :func:`sliding_window_mask`.

    Returns:
        ``[T, S]`` bool.
    """
    check_int("window", window, 1)
    check_int("dilation", dilation, 1)
    dist, _ = _offsets(T, S, device)
    return (dist >= 0) & (dist % dilation == 0) & (dist < window * dilation - (dilation - 1))


def global_tokens_mask(n: int, global_idx: Sequence[int] | torch.Tensor, *, causal: bool = True,
                       device=None) -> torch.Tensor:
    """The global part of a Longformer-style pattern: global tokens see all, all see them.

    Row g (a global token) is True everywhere and column g is True everywhere; with
    ``causal`` the result is intersected with the causal mask (then a global token sees its
    whole prefix and every later token sees it). Combine with a local window by
    :func:`union`, e.g. ``union(sliding_window_mask(n, w), global_tokens_mask(n, [0]))``.

    Returns:
        ``[n, n]`` bool.
    """
    check_int("n", n, 0)
    idx = torch.as_tensor(global_idx, dtype=torch.long, device=device).reshape(-1)
    if idx.numel() and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"global_idx: expected positions in [0, {n}); got {idx.tolist()}")
    is_global = torch.zeros(n, dtype=torch.bool, device=device)
    is_global[idx] = True
    mask = is_global.unsqueeze(1) | is_global.unsqueeze(0)
    if causal:
        mask &= causal_mask(n, device=device)
    return mask


# ----------------------------------------------------------------------------- factorized patterns
def strided_pattern(n: int, l: int, *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Sparse Transformer's strided pattern (Child et al., 2019), two causal ``[n, n]`` masks.

    * ``A1[i, j] = 0 ≤ i − j ≤ l``: ``A¹_i = {t, …, i}``, ``t = max(0, i − l)`` — the previous
      ``l`` positions and i itself (``l + 1`` keys; ``sliding_window_mask(n, l + 1)``);
    * ``A2[i, j] = j ≤ i and (i − j) mod l = 0``: every l-th position back from i.

    Two hops, A¹ then A² (or A² then A¹), connect every ``j ≤ i``. With ``l ≈ √n`` each
    row keeps ``O(√n)`` keys.
    """
    check_int("l", l, 1)
    dist, _ = _offsets(n, None, device)
    a1 = (dist >= 0) & (dist <= l)
    a2 = (dist >= 0) & (dist % l == 0)
    return a1, a2


def fixed_pattern(n: int, l: int, c: int, *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Sparse Transformer's fixed pattern (Child et al., 2019), two causal ``[n, n]`` masks.

    * ``A1[i, j] = j ≤ i and ⌊j / l⌋ = ⌊i / l⌋``: the query's own block of ``l`` positions;
    * ``A2[i, j] = j ≤ i and j mod l ∈ {l − c, …, l − 1}``: the last ``c`` positions of every
      block, the "summary" columns that every later query reads.

    A¹ first, then A², connects every ``j ≤ i`` in two hops (the summary cell of j's block has
    gathered j); the opposite order does not. ``n`` need not be a multiple of ``l``.
    """
    check_int("l", l, 1)
    check_int("c", c, 1)
    if c > l:
        raise ValueError(f"c: expected 1 ≤ c ≤ l = {l} summary positions per block; got {c}")
    pos = torch.arange(n, device=device)
    causal = causal_mask(n, device=device)
    a1 = causal & ((pos // l).unsqueeze(1) == (pos // l).unsqueeze(0))
    a2 = causal & (pos % l >= l - c).unsqueeze(0)
    return a1, a2


def union(*masks: torch.Tensor) -> torch.Tensor:
    """Elementwise OR of boolean masks of one shape: the *merged* pattern ``∪_m A^m``."""
    if not masks:
        raise ValueError("masks: expected at least one mask")
    out = None
    for m in masks:
        check_tensor("masks", m)
        if m.dtype != torch.bool:
            raise ValueError(f"masks: expected dtype torch.bool; got {m.dtype}")
        if out is not None and m.shape != out.shape:
            raise ValueError(f"masks: expected one shape {tuple(out.shape)}; got {tuple(m.shape)}")
        out = m.clone() if out is None else out | m
    return out


def head_masks(patterns: Sequence[torch.Tensor], n_heads: int) -> torch.Tensor:
    """Give head h the pattern ``patterns[h mod p]``: a ``[n_heads, T, S]`` mask.

    Passed to attention with ``q`` of shape ``[batch, n_heads, T, d]`` it broadcasts over
    the batch, so the p patterns run side by side in separate heads of one layer.
    """
    check_int("n_heads", n_heads, 1)
    if not patterns:
        raise ValueError("patterns: expected at least one mask")
    for m in patterns:
        _check_mask2d("patterns", m)
    return torch.stack([patterns[h % len(patterns)] for h in range(n_heads)])


def layer_schedule(patterns: Sequence[torch.Tensor], n_layers: int, mode: str) -> list[list[torch.Tensor]]:
    """The masks every layer uses, for the three ways of combining p factorized patterns.

    * ``"interleaved"`` — layer r uses one pattern, ``A^(r mod p)``;
    * ``"merged"`` — every layer uses one head over the union ``∪_m A^m``;
    * ``"heads"`` — every layer runs p heads, head m over ``A^m``.

    Returns:
        ``n_layers`` lists of ``[n, n]`` masks, one per attention head of the layer.
    """
    check_int("n_layers", n_layers, 1)
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}; got {mode!r}")
    if not patterns:
        raise ValueError("patterns: expected at least one mask")
    for m in patterns:
        _check_mask2d("patterns", m)
    if mode == "interleaved":
        return [[patterns[r % len(patterns)]] for r in range(n_layers)]
    if mode == "merged":
        return [[union(*patterns)] for _ in range(n_layers)]
    return [list(patterns) for _ in range(n_layers)]


# ----------------------------------------------------------------------------- flow across layers
def _layer_connectivity(layer) -> torch.Tensor:
    masks = [layer] if isinstance(layer, torch.Tensor) else list(layer)
    if not masks:
        raise ValueError("layers: expected each layer to be a mask or a non-empty list of head masks")
    for m in masks:
        _check_mask2d("layers", m)
        if m.shape[0] != m.shape[1]:
            raise ValueError(f"layers: expected square self-attention masks [n, n]; got {tuple(m.shape)}")
    return union(*masks)


def _bool_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # counts of paths can overflow nothing here: entries ≤ n, computed in float32 exactly for n < 2²⁴
    return (a.float() @ b.float()) > 0


def reachable(layers: Sequence, *, residual: bool = True) -> torch.Tensor:
    """Which inputs each output depends on after a stack of attention layers.

    ``R[i, j] = True`` when there is a path ``j = t_0 → t_1 → … → t_L = i`` with
    ``t_{r-1}`` in the mask of layer r at row ``t_r``: the boolean product
    ``M_L ⋯ M_2 M_1`` (layer 1 is applied first, so it is the rightmost factor).
    With ``residual`` (as in a Transformer block, ``x + Attn(x)``) each layer's mask gets its
    diagonal, so a path may also stay in place.

    Args:
        layers: one entry per layer, a ``[n, n]`` bool mask or a list of head masks
            (a layer with several heads passes on the union of their connections).
    Returns:
        ``[n, n]`` bool.
    """
    if len(layers) == 0:
        raise ValueError("layers: expected at least one layer")
    reach = None
    for layer in layers:
        m = _layer_connectivity(layer)
        if reach is not None and m.shape != reach.shape:
            raise ValueError(f"layers: expected every layer's mask to be {tuple(reach.shape)}; got {tuple(m.shape)}")
        if residual:
            m = m | torch.eye(m.shape[0], dtype=torch.bool, device=m.device)
        reach = m if reach is None else _bool_matmul(m, reach)
    return reach


def hop_distance(mask: torch.Tensor, max_hops: int | None = None) -> torch.Tensor:
    """Fewest hops from each key j to each query i when every layer uses ``mask`` (a BFS).

    Hop k reaches ``(M ∨ I)^k``; ``D[i, j]`` is the smallest such k with ``j`` reached
    (0 on the diagonal), ``-1`` where j never reaches i within ``max_hops``
    (default ``n``, enough for any path).

    Returns:
        ``[n, n]`` int64.
    """
    _check_mask2d("mask", mask)
    n = mask.shape[0]
    if mask.shape[1] != n:
        raise ValueError(f"mask: expected a square [n, n] mask; got {tuple(mask.shape)}")
    max_hops = n if max_hops is None else check_int("max_hops", max_hops, 0)
    eye = torch.eye(n, dtype=torch.bool, device=mask.device)
    step = mask | eye
    dist = torch.full((n, n), -1, dtype=torch.long, device=mask.device)
    dist[eye] = 0
    reach = eye
    for k in range(1, max_hops + 1):
        new = _bool_matmul(step, reach)
        dist[new & ~reach] = k
        if torch.equal(new, reach):
            break
        reach = new
    return dist


def receptive_field(window: int, layers: int) -> int:
    """Positions (itself included) a query sees after ``layers`` sliding-window layers.

    Each layer looks back ``window − 1`` positions (:func:`sliding_window_mask`), and the
    look-backs add up: ``layers · (window − 1) + 1``. In Mistral's convention (keys
    ``i − W … i``, i.e. ``window = W + 1``) that is ``layers · W`` previous tokens — the
    ``W · k`` of the paper: 32 · 4096 = 131 072.
    """
    check_int("window", window, 1)
    check_int("layers", layers, 0)
    return layers * (window - 1) + 1


def layers_needed(distance: int, window: int) -> int:
    """Fewest sliding-window layers for position i to see position ``i − distance``.

    ``⌈distance / (window − 1)⌉`` (0 for distance 0); raises for ``window = 1``
    (the diagonal never reaches another position).
    """
    check_int("distance", distance, 0)
    check_int("window", window, 1)
    if distance == 0:
        return 0
    if window == 1:
        raise ValueError("window: a window of 1 (the query alone) never reaches another position; expected ≥ 2")
    return -(-distance // (window - 1))


# ----------------------------------------------------------------------------- block-sparse attention
def _pad_mask(mask: torch.Tensor, b: int) -> torch.Tensor:
    """Pad a ``[T, S]`` mask with False up to multiples of ``b`` (no copy when already aligned)."""
    T, S = mask.shape
    nq, nk = -(-T // b), -(-S // b)
    if nq * b == T and nk * b == S:
        return mask
    padded = mask.new_zeros(nq * b, nk * b)
    padded[:T, :S] = mask
    return padded


def block_layout(mask: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[⌈T/b⌉, ⌈S/b⌉]`` bool: which ``b × b`` blocks of a ``[T, S]`` mask hold any True.

    The last block row / column is partial when ``b`` does not divide T or S.
    """
    _check_mask2d("mask", mask)
    check_int("block_size", block_size, 1)
    padded = _pad_mask(mask, block_size)
    nq, nk = padded.shape[0] // block_size, padded.shape[1] // block_size
    return padded.view(nq, block_size, nk, block_size).any(dim=3).any(dim=1)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    block_size: int,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Masked attention that computes only the ``b × b`` blocks where ``mask`` has a True.

    For every query block, the key blocks with any True in the mask are gathered side by
    side (padded to the largest count with blocks that are masked out), the scores are
    computed for those blocks only, and one softmax runs over all of a row's gathered keys —
    so the result equals dense masked attention ``softmax(q kᵀ·scale + mask) v``
    (``course_lib.attention.scaled_dot_product_attention``), fully masked rows giving 0.
    Work: ``⌈T/b⌉ · K_max · b²`` scores instead of ``T · S``, with ``K_max`` the most active
    blocks in any block row.

    Args:
        q: ``[..., T, d]``;  k: ``[..., S, d]``;  v: ``[..., S, d_v]``.
        mask: ``[T, S]`` bool, True = attend, shared by the batch and the heads.
        block_size: ``b``; T and S need not be multiples of it.
        scale: multiplies the scores; default ``1/√d``.
    Returns:
        ``[..., T, d_v]`` in the dtype of ``q`` (fp16/bf16 computed in float32).
    """
    _check_qkv(q, k, v)
    _check_mask2d("mask", mask)
    check_int("block_size", block_size, 1)
    T, S = q.shape[-2], k.shape[-2]
    if tuple(mask.shape) != (T, S):
        raise ValueError(f"mask: expected shape (T, S) = ({T}, {S}); got {tuple(mask.shape)}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale: expected a finite number; got {scale!r}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    mask = mask.to(q.device)
    b = block_size
    nq, nk = -(-T // b), -(-S // b)
    lead, d, dv = q.shape[:-2], q.shape[-1], v.shape[-1]
    compute = torch.float32 if q.dtype in _LOW_PRECISION else q.dtype

    mpad = _pad_mask(mask, b)                                        # [nq·b, nk·b]
    layout = mpad.view(nq, b, nk, b).any(dim=3).any(dim=1)           # [nq, nk]: active blocks
    counts = layout.sum(dim=1)                                       # active key blocks per query block
    k_max = int(counts.max().item()) if nq else 0
    if k_max == 0:
        return q.new_zeros(*lead, T, dv)
    # index of the r-th active key block of each query block (padding slots point at block 0)
    order = torch.sort((~layout).to(torch.int8), dim=1, stable=True).indices[:, :k_max]   # [nq, K]
    valid = torch.arange(k_max, device=q.device).unsqueeze(0) < counts.unsqueeze(1)      # [nq, K]

    def pad_seq(x, n_blocks):                                        # [..., L, e] → [..., n_blocks, b, e]
        L = x.shape[-2]
        x = x.to(compute)
        if n_blocks * b != L:
            x = torch.cat([x, x.new_zeros(*x.shape[:-2], n_blocks * b - L, x.shape[-1])], dim=-2)
        return x.reshape(*x.shape[:-2], n_blocks, b, x.shape[-1])

    qb = pad_seq(q, nq)                                              # [..., nq, b, d]
    kb, vb = pad_seq(k, nk), pad_seq(v, nk)                          # [..., nk, b, d]
    kg = kb[..., order, :, :].reshape(*lead, nq, k_max * b, d)       # [..., nq, K·b, d]
    vg = vb[..., order, :, :].reshape(*lead, nq, k_max * b, dv)

    mblocks = mpad.view(nq, b, nk, b).permute(0, 2, 1, 3)            # [nq, nk, b(query), b(key)]
    mg = mblocks[torch.arange(nq, device=q.device).unsqueeze(1), order]   # [nq, K, b, b]
    mg = (mg & valid[:, :, None, None]).permute(0, 2, 1, 3).reshape(nq, b, k_max * b)

    scores = (qb @ kg.transpose(-2, -1)) * scale                     # [..., nq, b, K·b]
    scores = scores.masked_fill(~mg, float("-inf"))
    weights = softmax(scores, dim=-1)                                # one softmax over all gathered blocks
    out = weights @ vg                                               # [..., nq, b, d_v]
    return out.reshape(*lead, nq * b, dv)[..., :T, :].to(q.dtype)
