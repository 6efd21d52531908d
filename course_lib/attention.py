"""Chapter 1 — scaled dot-product attention (Vaswani et al., 2017).

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V

Shapes follow the course convention: attention internals are ``[..., seq, head_dim]``,
usually ``[batch, heads, seq, head_dim]``; queries have length ``T``, keys and values
length ``S`` (``S = T`` for self-attention).

Chapter 4 adds grouped-query attention (GQA, Ainslie et al., 2023): ``h`` query heads share
``h_kv`` key/value heads, query head ``i`` reading K/V head ``i // n_rep`` (``n_rep = h / h_kv``).
Two ways to compute it live here, beside the attention they feed (where LLaMA's code keeps them):

* :func:`repeat_kv` copies every K/V head ``n_rep`` times and calls ordinary attention — the
  textbook version, and the reference in the tests;
* :func:`grouped_query_attention` stacks the ``n_rep`` query heads of a group as ``n_rep · T`` rows
  of one query matrix instead, so K and V are read once and never copied — what makes a smaller
  cache a faster decoding step.

Everything here is checked against ``torch.softmax`` and
``torch.nn.functional.scaled_dot_product_attention`` in ``tests/test_attention.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course_lib.masks import causal_mask
from course_lib.utils import check_floating, check_int, check_tensor

__all__ = [
    "softmax",
    "entropy",
    "softmax_jacobian",
    "attention_scores",
    "softcap",
    "scaled_dot_product_attention",
    "repeat_kv",
    "group_queries",
    "ungroup_queries",
    "group_mask",
    "grouped_query_attention",
    "plot_attention",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax along ``dim``.

    softmax(x)_i = exp(x_i − m) / Σ_j exp(x_j − m),  m = max_j x_j

    Subtracting the row maximum changes nothing mathematically (it cancels between
    numerator and denominator) but keeps every exponent ≤ 0, so ``exp`` never overflows
    (``exp(89.)`` is already ``inf`` in float32, ``exp(12.)`` in float16).

    A row whose entries are all ``-inf`` (a fully masked row) has no finite maximum;
    this function returns zeros for it, where ``torch.softmax`` returns NaN.
    Low-precision inputs (fp16/bf16) are computed in float32 and cast back.

    Args:
        x: any floating tensor.
        dim: the dimension that sums to one.
    Returns:
        a tensor of the shape and dtype of ``x``.
    """
    check_tensor("x", x, min_dim=1)
    check_floating("x", x)
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim: expected a dimension of x (shape {tuple(x.shape)}); got {dim}")
    xf = x.float() if x.dtype in _LOW_PRECISION else x
    m = xf.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all -inf row → shift by 0
    e = torch.exp(xf - m)
    denom = e.sum(dim=dim, keepdim=True)
    out = e / torch.where(denom == 0, torch.ones_like(denom), denom)
    return out.to(x.dtype)


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """Logit soft-capping (Gemma-2): ``cap · tanh(x / cap)``.

    Close to the identity for ``|x| ≪ cap`` (tanh(u) ≈ u), smoothly bounded to ``(−cap, cap)``
    for large ``|x|``; its derivative ``1 − tanh²(x / cap)`` vanishes for ``|x| ≫ cap``. Applied to
    attention scores it must come *before* the mask (capping −inf would give −cap, a finite score).

    Args:
        x: any floating tensor.
        cap: the bound σ > 0.
    Returns:
        a tensor of the shape and dtype of ``x``.
    """
    check_floating("x", x)
    if not (isinstance(cap, (int, float)) and not isinstance(cap, bool) and cap > 0):
        raise ValueError(f"cap: expected a positive number; got {cap!r}")
    return cap * torch.tanh(x / cap)


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy −Σ p log p (in nats) of probability rows along ``dim``.

    ``0 · log 0`` is taken as 0. The uniform distribution over n items has entropy log n;
    a one-hot row has entropy 0 — the two ends of softmax saturation.
    """
    check_tensor("p", p, min_dim=1)
    check_floating("p", p)
    pf = p.float()
    return -(pf * torch.log(pf.clamp_min(torch.finfo(pf.dtype).tiny))).sum(dim=dim)


def softmax_jacobian(p: torch.Tensor) -> torch.Tensor:
    """The Jacobian of softmax from its output: J = diag(p) − p pᵀ, for every row.

    ∂softmax(z)_i/∂z_j = p_i (δ_ij − p_j). When p is nearly one-hot every entry is close to 0:
    a saturated softmax passes almost no gradient back to its logits.

    Args:
        p: probabilities ``[..., n]``.
    Returns:
        ``[..., n, n]``.
    """
    check_tensor("p", p, min_dim=1)
    check_floating("p", p)
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, min_dim=2)
        check_floating(name, t)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"q, k, v: expected one dtype; got q {q.dtype}, k {k.dtype}, v {v.dtype}"
        )
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"k: expected the last dimension (head_dim) to equal q's, {q.shape[-1]}; "
            f"got k of shape {tuple(k.shape)} for q of shape {tuple(q.shape)}"
        )
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"v: expected the sequence dimension (-2) to equal k's, {k.shape[-2]}; "
            f"got v of shape {tuple(v.shape)} for k of shape {tuple(k.shape)}"
        )
    if k.dim() != q.dim() or v.dim() != q.dim() or k.shape[:-2] != q.shape[:-2] or v.shape[:-2] != q.shape[:-2]:
        raise ValueError(
            "q, k, v: expected the same leading (batch, heads) dimensions; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


def _check_mask(mask: torch.Tensor, target: tuple[int, ...], dtype: torch.dtype) -> None:
    check_tensor("mask", mask)
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise ValueError(
            f"mask: expected dtype torch.bool (True = attend) or a floating additive mask; got {mask.dtype}"
        )
    try:
        shape = torch.broadcast_shapes(mask.shape, target)
    except RuntimeError:
        shape = None
    if shape != torch.Size(target):
        raise ValueError(
            f"mask: expected a shape that broadcasts to the scores' shape {target}; "
            f"got {tuple(mask.shape)}"
        )


def attention_scores(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The scaled logits ``q kᵀ · scale``, scale = 1/√d_k by default.

    Args:
        q: ``[..., T, d_k]``;  k: ``[..., S, d_k]``.
    Returns:
        ``[..., T, S]``.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return (q @ k.transpose(-2, -1)) * scale


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    return_weights: bool = False,
):
    """softmax(q kᵀ / √d_k + mask) v, the same contract as ``F.scaled_dot_product_attention``.

    Args:
        q: queries ``[..., T, d_k]`` (typically ``[batch, heads, T, head_dim]``).
        k: keys ``[..., S, d_k]``.
        v: values ``[..., S, d_v]``.
        mask: broadcastable to ``[..., T, S]``. Boolean: ``True`` where a query may attend
            (torch's convention). Floating: added to the scores (0 or ``-inf``).
        is_causal: apply the causal mask ``j ≤ i`` (top-left aligned, as torch does).
        scale: multiplies the scores; default ``1/√d_k``.
        return_weights: also return the attention weights ``[..., T, S]``.

    Returns:
        the output ``[..., T, d_v]`` in the dtype of ``q``, and the weights if
        ``return_weights``. A query row whose keys are all masked gets weights 0 and
        output 0 (as torch's SDPA does), not NaN.

    Low-precision inputs are computed with float32 scores and softmax, as fused kernels do.
    """
    _check_qkv(q, k, v)
    T, S = q.shape[-2], k.shape[-2]
    score_shape = (*q.shape[:-2], T, S)
    if is_causal and mask is not None:
        raise ValueError("mask: pass either mask or is_causal=True, not both")
    if mask is not None:
        _check_mask(mask, score_shape, q.dtype)
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale: expected a finite number; got {scale!r}")

    compute_dtype = torch.float32 if q.dtype in _LOW_PRECISION else q.dtype
    qc, kc, vc = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
    scores = attention_scores(qc, kc, scale)  # [..., T, S]

    if is_causal:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(compute_dtype)

    weights = softmax(scores, dim=-1)  # fully masked rows → 0
    out = (weights @ vc).to(q.dtype)
    if return_weights:
        return out, weights.to(q.dtype)
    return out


# ----------------------------------------------------------------------------- GQA (Chapter 4)
def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[B, h_kv, T, d]`` → ``[B, h_kv·n_rep, T, d]``: K/V head ``g`` serves query heads ``g·n_rep … g·n_rep + n_rep − 1``.

    Each K/V head is repeated ``n_rep`` times *consecutively* (``torch.repeat_interleave`` on the
    head dimension, not ``Tensor.repeat``, which would tile the heads 0, 1, 0, 1, …). ``n_rep = 1``
    (multi-head attention) returns ``x`` itself. For ``n_rep > 1`` the expand + reshape is a copy
    of the whole tensor: at a decoding step, ``n_rep`` copies of the cache — exactly the memory
    traffic GQA exists to avoid (:func:`grouped_query_attention` avoids it).
    """
    check_tensor("x", x, ndim=4)
    check_int("n_rep", n_rep)
    if n_rep == 1:
        return x
    B, h_kv, T, d = x.shape
    return x[:, :, None, :, :].expand(B, h_kv, n_rep, T, d).reshape(B, h_kv * n_rep, T, d)


def group_queries(q: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    """``[B, h, T, d]`` → ``[B, h_kv, n_rep·T, d]``: the ``n_rep`` query heads of each group as rows of one matrix.

    Query heads ``g·n_rep … g·n_rep + n_rep − 1`` all read K/V head ``g``, so they can be one
    query matrix of ``n_rep · T`` rows against that head's ``S`` keys. A view when ``q`` is
    contiguous: nothing is copied.
    """
    B, h, T, d = q.shape
    return q.reshape(B, n_kv_heads, (h // n_kv_heads) * T, d)


def ungroup_queries(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of :func:`group_queries`: ``[B, h_kv, n_rep·T, ...]`` → ``[B, h, T, ...]``."""
    B, h_kv, rows = x.shape[:3]
    return x.reshape(B, n_heads, rows * h_kv // n_heads, *x.shape[3:])


def group_mask(mask: torch.Tensor, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """A mask ``[B or 1, 1 or h, T, S]`` laid out for :func:`group_queries`: ``[B or 1, 1 or h_kv, n_rep·T, S]``.

    A per-head mask (ALiBi's bias) is regrouped like the queries (a view); a mask shared by all
    heads is repeated for the ``n_rep`` query heads of a group (``n_rep`` copies of the mask,
    not of K/V).
    """
    Bm, hm, T, S = mask.shape
    n_rep = n_heads // n_kv_heads
    if hm == n_heads:
        return mask.reshape(Bm, n_kv_heads, n_rep * T, S)
    return mask[:, :, None].expand(Bm, hm, n_rep, T, S).reshape(Bm, hm, n_rep * T, S)


def grouped_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                            *, is_causal: bool = False, dropout_p: float = 0.0,
                            scale: float | None = None) -> torch.Tensor:
    """Attention of ``h`` query heads over ``h_kv`` K/V heads with PyTorch's fused kernel, K/V never copied.

    Args:
        q: ``[B, h, T, d]``;  k, v: ``[B, h_kv, S, d]`` with ``h_kv`` dividing ``h``.
        mask: ``[B or 1, 1 or h, T, S]``, boolean (True = attend) or additive; or None.
        is_causal: the causal mask, bottom-right aligned (``course_lib.masks.causal_mask``:
            the T queries are the last T of the S positions).
        scale: the factor of the scores ``q kᵀ``; None → ``1 / √d`` (Gemma-2: ``1 / √256``
            whatever its ``d``).
    Returns:
        ``[B, h, T, d]``, equal to ``F.scaled_dot_product_attention(q, repeat_kv(k), repeat_kv(v), …)``.

    The queries are regrouped (:func:`group_queries`) so that one call attends ``n_rep · T`` query
    rows over each K/V head's keys: a decoding step reads the cache once, whatever ``n_rep`` is.
    """
    h, h_kv = q.shape[1], k.shape[1]
    T, S = q.shape[2], k.shape[2]
    if h % h_kv:
        raise ValueError(f"k: expected a number of K/V heads dividing the {h} query heads; got shape {tuple(k.shape)}")
    if is_causal and (T != S or h_kv != h):     # torch's is_causal is top-left aligned: spell the mask out
        mask, is_causal = causal_mask(T, S, device=q.device)[None, None], False
    if h_kv == h:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p,
                                              scale=scale)
    if mask is not None:
        mask = group_mask(mask, h, h_kv)
    out = F.scaled_dot_product_attention(group_queries(q, h_kv), k, v, attn_mask=mask, dropout_p=dropout_p,
                                         scale=scale)
    return ungroup_queries(out, h)


def plot_attention(
    weights,
    queries=None,
    keys=None,
    *,
    ax=None,
    title: str | None = None,
    cmap: str = "viridis",
    annotate: bool = False,
    colorbar: bool = True,
    vmin: float | None = 0.0,
    vmax: float | None = None,
):
    """Draw one attention map (rows = queries, columns = keys) and return the Axes.

    Args:
        weights: ``[T, S]`` tensor or array (detached and moved to the CPU here).
        queries, keys: optional tick labels (e.g. the tokens), lengths T and S.
        annotate: write each weight in its cell (for small maps).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    w = weights.detach().float().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights, dtype=float)
    if w.ndim != 2:
        raise ValueError(f"weights: expected a 2-D map [T, S]; got shape {w.shape}")
    T, S = w.shape
    if queries is not None and len(queries) != T:
        raise ValueError(f"queries: expected {T} labels (one per row); got {len(queries)}")
    if keys is not None and len(keys) != S:
        raise ValueError(f"keys: expected {S} labels (one per column); got {len(keys)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * S + 2, 0.45 * T + 1.2))
    im = ax.imshow(w, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    if queries is not None:
        ax.set_yticks(range(T), labels=[str(x) for x in queries])
    if keys is not None:
        ax.set_xticks(range(S), labels=[str(x) for x in keys], rotation=45, ha="right")
    if annotate:
        hi = w.max() if w.size else 0
        for i in range(T):
            for j in range(S):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if w[i, j] > 0.6 * hi else "white")
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax
