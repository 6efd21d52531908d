"""Mixture of Experts: a router, top-k gating, expert dispatch and the load-balancing loss.

An MoE layer replaces the FFN of a Transformer block by ``n`` expert FFNs and a *router* that
sends every token to ``k`` of them (Shazeer et al., 2017; Switch Transformer, Fedus et al., 2021;
Mixtral, Jiang et al., 2024 — 8 SwiGLU experts, top-2):

    p(E | x) = softmax(x W_r)                                   router probabilities, [T, n]
    g(x)     = softmax over the top-k of x W_r  (= the top-k of p, renormalised to sum to 1)
    y        = Σ_{i ∈ topk(x)} g_i(x) · E_i(x)                   aggregation, [T, d_model]

Tokens are rows: the functions below take ``x`` of shape ``[T, d_model]`` (flatten
``[batch, seq, d_model]`` first; :class:`MoE` does it for you).

* :func:`router_probs`, :func:`top_k_gating` — the router and top-k gating with renormalisation;
* :func:`noisy_top_k_logits` — Shazeer's noisy gating ``H(x) = x W_g + ε · softplus(x W_noise)``,
  :func:`mix_uniform_noise` — ``(1 − α) p + α ε`` with ``ε`` on the simplex;
* :func:`moe_naive` (a loop over tokens) and :func:`moe_dispatch` (sort the (token, expert)
  assignments by expert, run each expert once on its tokens, ``index_add_`` the weighted outputs
  back) — the same result, the second is how MoE layers are implemented;
* :func:`expert_capacity`, :func:`capacity_keep_mask` — Switch's capacity factor and the tokens it
  drops;
* :func:`load_balancing_loss` — ``L = α · n · Σ_i f_i P_i`` (``f_i`` fraction of tokens routed to
  expert ``i``, ``P_i`` mean router probability of expert ``i``); equals ``α`` at perfect balance,
  up to ``α · n / k`` when a top-``k`` router collapses (``α · n`` for top-1);
* :class:`MoE` — the layer (experts are FFNs of :mod:`course_lib.ffn`, SwiGLU by default);
* total vs active parameters of a Mixtral-shaped model: ``course_lib.model.count_parameters(config, active=True)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.ffn import FFN_KINDS, build_feed_forward
from course_lib.utils import check_choice, check_floating, check_int, check_number, check_tensor

__all__ = [
    "router_probs",
    "top_k_gating",
    "noisy_top_k_logits",
    "mix_uniform_noise",
    "moe_naive",
    "moe_dispatch",
    "dense_moe",
    "expert_capacity",
    "capacity_keep_mask",
    "expert_fractions",
    "load_balancing_loss",
    "MoE",
    "moe_aux_loss",
]


def _check_logits(name: str, logits: torch.Tensor) -> None:
    check_tensor(name, logits, ndim=2)
    check_floating(name, logits)


def _check_k(k, n_experts: int) -> None:
    if not (isinstance(k, int) and 1 <= k <= n_experts):
        raise ValueError(f"k: expected an int in [1, n_experts = {n_experts}]; got {k!r}")


# ----------------------------------------------------------------------------- router and gating
def router_probs(logits: torch.Tensor) -> torch.Tensor:
    """``p(E | x) = softmax(x W_r)`` over the experts (the last axis): ``[T, n] → [T, n]``.

    Half-precision logits are soft-maxed in float32 (routing is sensitive to rounding)."""
    _check_logits("logits", logits)
    if logits.dtype in (torch.float16, torch.bfloat16):
        return torch.softmax(logits.float(), dim=-1).to(logits.dtype)
    return torch.softmax(logits, dim=-1)


def top_k_gating(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k gating with renormalisation (Mixtral).

    Args:
        logits: router logits ``x W_r``, ``[T, n_experts]``.
        k: experts per token.

    Returns:
        ``(weights, indices, probs)``: ``weights`` ``[T, k]`` — the top-k router probabilities
        renormalised to sum to 1 per token (equal to a softmax over the top-k logits);
        ``indices`` ``[T, k]`` (long) — the chosen experts, largest first; ``probs`` ``[T, n]`` —
        the full softmax (what the load-balancing loss needs).
    """
    _check_logits("logits", logits)
    _check_k(k, logits.shape[-1])
    probs = router_probs(logits)
    top_p, indices = probs.topk(k, dim=-1)
    weights = top_p / top_p.sum(dim=-1, keepdim=True)
    return weights, indices, probs


def noisy_top_k_logits(x: torch.Tensor, w_gate: torch.Tensor, w_noise: torch.Tensor, k: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Noisy top-k gating logits of Shazeer et al. (2017).

        H(x)_i = (x W_g)_i + ε_i · softplus((x W_noise)_i),   ε_i ~ N(0, 1)
        KeepTopK(H, k)_i = H_i if i is among the k largest, −∞ otherwise

    ``softmax`` of the result is the gate. ``x`` ``[T, d]``, ``w_gate``/``w_noise`` ``[d, n]``
    → ``[T, n]``. The learned noise scale lets the router explore (and spreads the load).
    """
    check_tensor("x", x, ndim=2)
    check_floating("x", x)
    for name, w in (("w_gate", w_gate), ("w_noise", w_noise)):
        check_tensor(name, w, ndim=2)
        if w.shape[0] != x.shape[-1]:
            raise ValueError(f"{name}: expected shape [d = {x.shape[-1]}, n_experts]; got {tuple(w.shape)}")
    if w_gate.shape != w_noise.shape:
        raise ValueError(f"w_noise: expected the shape of w_gate {tuple(w_gate.shape)}; got {tuple(w_noise.shape)}")
    _check_k(k, w_gate.shape[-1])
    clean = x @ w_gate
    eps = torch.randn(clean.shape, generator=generator, dtype=clean.dtype).to(clean.device)
    h = clean + eps * F.softplus(x @ w_noise)
    kth = h.topk(k, dim=-1).values[:, -1:]
    return h.masked_fill(h < kth, float("-inf"))


def mix_uniform_noise(probs: torch.Tensor, alpha: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noisy probabilities ``(1 − λ) · p + λ · ε`` (``λ`` = ``alpha``), ``ε ∈ [0, 1]^n``, ``Σ ε = 1``.

    A didactic form of routing noise, not a published method (Shazeer et al.'s noisy top-k,
    :func:`noisy_top_k_logits`, is the published one); chapter 8 writes the weight as ``λ`` so it
    is not confused with the balancing-loss weight ``α``.

    ``ε`` is drawn uniformly on the simplex (normalised exponentials = Dirichlet(1, …, 1)), so the
    result is still a distribution. Too small a ``λ`` does not stop a collapse; too large makes
    the routing random and the experts learn the same thing.
    """
    _check_logits("probs", probs)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a number in [0, 1]; got {alpha!r}")
    u = torch.rand(probs.shape, generator=generator, dtype=torch.float64).clamp_min(1e-12)
    e = -u.log()
    eps = (e / e.sum(-1, keepdim=True)).to(probs.dtype).to(probs.device)
    return (1 - alpha) * probs + alpha * eps


# ----------------------------------------------------------------------------- aggregation
def _check_routing(x, weights, indices, experts):
    check_tensor("x", x, ndim=2)
    check_floating("x", x)
    check_tensor("weights", weights, ndim=2)
    check_tensor("indices", indices, ndim=2)
    if weights.shape != indices.shape or weights.shape[0] != x.shape[0]:
        raise ValueError(f"weights, indices: expected shape [T = {x.shape[0]}, k] each; "
                         f"got {tuple(weights.shape)} and {tuple(indices.shape)}")
    if indices.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"indices: expected an integer dtype (int64); got {indices.dtype}")
    n = len(experts)
    if indices.numel() and (indices.min() < 0 or indices.max() >= n):
        raise ValueError(f"indices: expected expert ids in [0, {n}); got range "
                         f"[{indices.min().item()}, {indices.max().item()}]")


def moe_naive(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, experts) -> torch.Tensor:
    """``y_t = Σ_j weights[t, j] · E_{indices[t, j]}(x_t)``, one token at a time (the definition).

    ``x`` ``[T, d]``, ``weights``/``indices`` ``[T, k]``, ``experts`` a sequence of modules
    ``[*, d] → [*, d]``; returns ``[T, d]``.
    """
    _check_routing(x, weights, indices, experts)
    rows = []
    for t in range(x.shape[0]):
        y = torch.zeros_like(x[t])
        for j in range(indices.shape[1]):
            y = y + weights[t, j] * experts[int(indices[t, j])](x[t:t + 1])[0]
        rows.append(y)
    return torch.stack(rows) if rows else x.new_zeros(x.shape)


def moe_dispatch(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, experts,
                 keep: torch.Tensor | None = None) -> torch.Tensor:
    """The same sum, computed expert by expert (how MoE layers are implemented).

    1. flatten the ``T·k`` (token, expert) assignments and sort them by expert (stable);
    2. for each expert, gather its tokens, run the expert **once** on that batch, multiply by
       the gate weights;
    3. ``index_add_`` the results back to their token rows.

    ``keep`` ``[T, k]`` (bool, optional) drops assignments (a token over an expert's capacity):
    a dropped assignment contributes nothing. Returns ``[T, d]``.
    """
    _check_routing(x, weights, indices, experts)
    T, k = indices.shape
    token = torch.arange(T, device=x.device).repeat_interleave(k)
    expert = indices.reshape(-1)
    gate = weights.reshape(-1)
    if keep is not None:
        if keep.shape != indices.shape or keep.dtype != torch.bool:
            raise ValueError(f"keep: expected a bool tensor of shape {tuple(indices.shape)}; "
                             f"got {keep.dtype} {tuple(keep.shape)}")
        sel = keep.reshape(-1)
        token, expert, gate = token[sel], expert[sel], gate[sel]
    order = torch.argsort(expert, stable=True)
    token, gate = token[order], gate[order]
    counts = torch.bincount(expert, minlength=len(experts)).tolist()
    out = torch.zeros_like(x)
    start = 0
    for e, c in enumerate(counts):
        if c == 0:
            continue
        idx = token[start:start + c]
        y = experts[e](x[idx]) * gate[start:start + c, None].to(x.dtype)
        out = out.index_add(0, idx, y)
        start += c
    return out


def dense_moe(x: torch.Tensor, probs: torch.Tensor, experts) -> torch.Tensor:
    """Dense MoE: every expert on every token, ``y = Σ_i p_i(x) E_i(x)`` (``probs`` ``[T, n]``)."""
    check_tensor("x", x, ndim=2)
    _check_logits("probs", probs)
    if probs.shape != (x.shape[0], len(experts)):
        raise ValueError(f"probs: expected shape [T = {x.shape[0]}, n = {len(experts)}]; got {tuple(probs.shape)}")
    outs = torch.stack([e(x) for e in experts], dim=1)          # [T, n, d]
    return (probs.to(x.dtype)[..., None] * outs).sum(dim=1)


# ----------------------------------------------------------------------------- capacity
def expert_capacity(n_tokens: int, n_experts: int, capacity_factor: float, k: int = 1) -> int:
    """Switch Transformer's capacity: ``⌈capacity_factor · k · T / n⌉`` assignments per expert."""
    if not (isinstance(n_tokens, int) and n_tokens >= 0):
        raise ValueError(f"n_tokens: expected a non-negative int; got {n_tokens!r}")
    if not (isinstance(n_experts, int) and n_experts > 0):
        raise ValueError(f"n_experts: expected a positive int; got {n_experts!r}")
    if not capacity_factor > 0:
        raise ValueError(f"capacity_factor: expected a positive number; got {capacity_factor!r}")
    return math.ceil(capacity_factor * k * n_tokens / n_experts)


def capacity_keep_mask(indices: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """``[T, k]`` bool: which assignments fit, first come first served in (token, slot) order.

    An expert takes its first ``capacity`` assignments; the rest are *dropped* (in a block, a
    dropped token passes through the residual connection unchanged).
    """
    check_tensor("indices", indices, ndim=2)
    if not (isinstance(capacity, int) and capacity >= 0):
        raise ValueError(f"capacity: expected a non-negative int; got {capacity!r}")
    flat = indices.reshape(-1)
    onehot = F.one_hot(flat, n_experts)                          # [T·k, n]
    position = (onehot.cumsum(0) * onehot).sum(-1) - 1           # rank of the assignment at its expert
    return (position < capacity).reshape(indices.shape)


# ----------------------------------------------------------------------------- load balancing
def expert_fractions(indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """``f_i``: the fraction of the routed assignments (counts, not probabilities) that go to expert i.

    ``indices`` ``[T]`` (top-1, as in Switch) or ``[T, k]``; returns ``[n]`` summing to 1.
    """
    check_tensor("indices", indices, min_dim=1)
    if indices.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"indices: expected an integer dtype; got {indices.dtype}")
    flat = indices.reshape(-1).long()
    return torch.bincount(flat, minlength=n_experts).double() / max(flat.numel(), 1)


def load_balancing_loss(probs: torch.Tensor, indices: torch.Tensor, alpha: float = 0.01) -> torch.Tensor:
    """Switch Transformer's auxiliary loss ``L = α · n · Σ_i f_i · P_i``.

    Args:
        probs: router probabilities ``[T, n]`` (the full softmax, before top-k).
        indices: the experts the tokens were dispatched to, ``[T]`` or ``[T, k]``.
        alpha: the loss weight α (Switch uses 10⁻²).

    ``f_i`` (:func:`expert_fractions`) is a count and carries no gradient; ``P_i = mean_t p_i(x_t)``
    does, so the router is pushed to lower the probability of over-loaded experts. With uniform
    routing ``Σ f_i P_i = 1/n`` and ``L = α``. ``f`` is taken over the ``T·k`` assignments (it sums
    to 1), so ``f_i ≤ 1/k`` and ``L ≤ α · n / k``: a collapsed top-1 router gives ``L ≈ α · n``, a
    collapsed top-2 router ``L ≈ α · n / 2``. (Hugging Face's ``load_balancing_loss_func`` lets ``f``
    sum to ``k`` instead, so its value at balance is ``k · α``.)
    """
    _check_logits("probs", probs)
    if indices.shape[0] != probs.shape[0]:
        raise ValueError(f"indices: expected first dimension T = {probs.shape[0]}; got shape {tuple(indices.shape)}")
    n = probs.shape[-1]
    f = expert_fractions(indices, n).to(probs.dtype).to(probs.device)
    P = probs.mean(dim=0)
    return alpha * n * (f * P).sum()


# ----------------------------------------------------------------------------- the layer
class MoE(nn.Module):
    """A sparse MoE layer: router (``Linear(d_model → n_experts)``, no bias) + ``n_experts`` FFNs.

    Args:
        d_model: width of the residual stream; ``d_ff``: hidden width of each expert.
        n_experts, top_k: ``n`` and ``k`` (Mixtral: 8 and 2).
        kind: the expert FFN, any kind of :func:`course_lib.ffn.build_feed_forward` (``"swiglu"``
            as in Mixtral; ``"gelu"``, ``"relu"``, other GLU variants).
        noisy: Shazeer's noisy top-k gating (training only; ``W_noise`` starts at zero).
        capacity_factor: if set, each expert takes at most ``⌈cf · k · T / n⌉`` assignments
            (Switch); the rest are dropped (counted in ``self.dropped``).
        alpha: weight of the load-balancing loss stored in ``self.aux_loss`` after each forward.

    ``forward``: ``[..., d_model] → [..., d_model]``. After a call, ``self.aux_loss`` (a scalar with
    gradient), ``self.last_indices`` ``[T, k]`` and ``self.dropped`` (int) describe the routing.
    """

    def __init__(self, d_model: int, d_ff: int, n_experts: int = 8, top_k: int = 2, *,
                 kind: str = "swiglu", bias: bool = False, noisy: bool = False,
                 capacity_factor: float | None = None, alpha: float = 0.01, device=None, dtype=None):
        super().__init__()
        check_int("d_model", d_model)
        check_int("n_experts", n_experts)
        _check_k(top_k, n_experts)
        check_choice("kind", kind, FFN_KINDS)
        check_number("capacity_factor", capacity_factor, above=0, optional=True)
        self.d_model, self.n_experts, self.top_k = d_model, n_experts, top_k
        self.noisy, self.capacity_factor, self.alpha = noisy, capacity_factor, alpha
        self.router = nn.Linear(d_model, n_experts, bias=False, device=device, dtype=dtype)
        self.w_noise = (nn.Parameter(torch.zeros(d_model, n_experts, device=device, dtype=dtype))
                        if noisy else None)
        self.experts = nn.ModuleList(
            build_feed_forward(kind, d_model, d_ff, bias=bias, device=device, dtype=dtype)
            for _ in range(n_experts))
        self.aux_loss = torch.zeros(())
        self.last_indices: torch.Tensor | None = None
        self.dropped = 0

    def route(self, x: torch.Tensor):
        """``x`` ``[T, d]`` → ``(weights [T, k], indices [T, k], probs [T, n])``."""
        logits = self.router(x)
        if self.noisy and self.training:
            h = noisy_top_k_logits(x, self.router.weight.T, self.w_noise, self.top_k)
            probs = router_probs(logits)
            weights, indices = torch.softmax(h, dim=-1).topk(self.top_k, dim=-1)
            return weights, indices, probs
        return top_k_gating(logits, self.top_k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.d_model)
        weights, indices, probs = self.route(flat)
        keep = None
        if self.capacity_factor is not None:
            cap = expert_capacity(flat.shape[0], self.n_experts, self.capacity_factor, self.top_k)
            keep = capacity_keep_mask(indices, self.n_experts, cap)
        self.dropped = 0 if keep is None else int((~keep).sum())
        self.last_indices = indices.detach()
        self.aux_loss = load_balancing_loss(probs, indices, self.alpha)
        return moe_dispatch(flat, weights, indices, self.experts, keep).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, top_k={self.top_k}, noisy={self.noisy}, capacity_factor={self.capacity_factor}"


def moe_aux_loss(model: nn.Module) -> torch.Tensor:
    """The sum of the ``aux_loss`` of every :class:`MoE` layer in ``model`` (add it to the LM loss)."""
    losses = [m.aux_loss for m in model.modules() if isinstance(m, MoE)]
    return torch.stack(losses).sum() if losses else torch.zeros(())
