"""The Exercise 8 checks pass the reference answers and name the likely mistake otherwise.

Each wrong answer below is written the way a student would write it (not taken from the
grading module), so the checks are shown to recognise the mistake itself.
"""

from __future__ import annotations

import math

import pytest
import torch

from course_lib import moe
from course_lib.grading import ch08
from course_lib.model import ModelConfig, count_parameters
from course_lib.moe import expert_capacity
from helpers import stub


# ----------------------------------------------------------------------------- task 1
def gating(logits, k, *, dim=-1, renorm=True, smallest=False, raw=False):
    probs = torch.softmax(logits, dim=dim)
    top_p, idx = probs.topk(k, dim=-1, largest=not smallest)
    if raw:
        return logits.gather(-1, idx), idx
    return (top_p / top_p.sum(-1, keepdim=True) if renorm else top_p), idx


def gating_softmax_of_topk(logits, k):
    top, idx = logits.topk(k, dim=-1)
    return torch.softmax(top, dim=-1), idx


def test_gating_passes(capsys):
    ch08.check_top_k_gating(gating)
    ch08.check_top_k_gating(gating_softmax_of_topk)
    ch08.check_top_k_gating(lambda l, k: tuple(t.flip(-1) for t in gating(l, k)))   # any order of the k
    assert capsys.readouterr().out == "✓ top-k gating: all 6 cases passed\n" * 3


@pytest.mark.parametrize("wrong, message", [
    (stub, "top_k_gating is not implemented yet"),
    (lambda l, k: gating(l, k, renorm=False), "top-k weights not renormalised"),
    (lambda l, k: gating(l, k, dim=0), "softmax over tokens instead of experts"),
    (lambda l, k: gating(l, k, smallest=True), "k smallest"),
    (lambda l, k: gating(l, k, raw=True), "raw logits"),
    (lambda l, k: gating(l, k)[0], "expected a pair"),
    (lambda l, k: (gating(l, k)[0], gating(l, k)[1].double()), "integer tensor"),
    (lambda l, k: moe.top_k_gating(l, k)[:2], "course_lib does the work here"),
])
def test_gating_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch08.check_top_k_gating(wrong)


# ----------------------------------------------------------------------------- task 2
def forward_dispatch(x, weights, indices, experts, *, weighted=True, positional=False):
    T, k = indices.shape
    out = torch.zeros_like(x)
    flat_e = indices.reshape(-1)
    flat_t = torch.arange(T).repeat_interleave(k)
    flat_w = weights.reshape(-1) if weighted else torch.ones(T * k, dtype=x.dtype)
    if positional:
        flat_e = torch.arange(k).repeat(T)
    for e in range(len(experts)):
        sel = flat_e == e
        if sel.any():
            out.index_add_(0, flat_t[sel], flat_w[sel, None] * experts[e](x[flat_t[sel]]))
    return out


def forward_loop(x, weights, indices, experts):
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(indices.shape[1]):
            out[t] += weights[t, j] * experts[int(indices[t, j])](x[t:t + 1])[0]
    return out


def forward_all_experts(x, weights, indices, experts):
    outs = torch.stack([e(x) for e in experts], 1)
    gates = torch.zeros(x.shape[0], len(experts), dtype=x.dtype).scatter(-1, indices, weights)
    return (gates[..., None] * outs).sum(1)


def forward_whole_batch(x, weights, indices, experts):
    """Right numbers, but every used expert runs on all T tokens and the rows are picked afterwards."""
    T, k = indices.shape
    out = torch.zeros_like(x)
    for e in indices.unique().tolist():
        y_all = experts[e](x)                                   # the whole batch: no dispatch
        hit = (indices == e)
        out += (weights * hit).sum(-1, keepdim=True) * y_all
    return out


def forward_mean(x, weights, indices, experts):
    return forward_dispatch(x, torch.full_like(weights, 1.0 / weights.shape[1]), indices, experts)


def test_forward_passes(capsys):
    ch08.check_moe_forward(forward_dispatch)
    assert capsys.readouterr().out == "✓ MoE forward: all 6 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "moe_forward is not implemented yet"),
    (lambda *a: forward_dispatch(*a, weighted=False), "forgot the gate weights"),
    (forward_mean, "averaged the expert outputs"),
    (lambda *a: forward_dispatch(*a, positional=True), "belongs to expert indices\\[t, j\\], not to expert j"),
    (lambda x, w, i, e: forward_dispatch(x, w[:, :1], i[:, :1], e), "only the first chosen expert"),
    (lambda x, *a: torch.zeros_like(x), "not added back"),
    (forward_loop, "expert \\d+ was called \\d+ times: group the tokens by expert"),
    (forward_all_experts, "received no token but was called|was run on 12 rows but only \\d+ assignments"),
    (lambda x, *a: x[:, :1], "expected shape"),
    (forward_whole_batch, "was run on \\d+ rows but only \\d+ assignments"),
    (moe.moe_dispatch, "course_lib does the work here"),
    (lambda *a: moe.moe_naive(*a), "course_lib does the work here"),
])
def test_forward_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch08.check_moe_forward(wrong)


# ----------------------------------------------------------------------------- task 3
def balance(probs, indices, alpha, *, from_probs=False, factor_n=True, with_alpha=True, raw_counts=False,
            per_token=False, sum_p=False):
    n = probs.shape[-1]
    counts = torch.bincount(indices.reshape(-1), minlength=n).to(probs.dtype)
    f = counts if raw_counts else counts / (indices.shape[0] if per_token else indices.numel())
    P = probs.sum(0) if sum_p else probs.mean(0)
    if from_probs:
        f = probs.mean(0)
    return (alpha if with_alpha else 1.0) * (n if factor_n else 1) * (f * P).sum()


def test_balance_passes(capsys):
    ch08.check_load_balancing_loss(balance)
    assert capsys.readouterr().out == "✓ load-balancing loss: all 7 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "load_balancing_loss is not implemented yet"),
    (lambda *a: balance(*a, from_probs=True), "f_i computed from probabilities instead of counts"),
    (lambda *a: balance(*a, factor_n=False), "forgot the factor n"),
    (lambda *a: balance(*a, with_alpha=False), "forgot the factor α"),
    (lambda *a: balance(*a, raw_counts=True), "off by a factor T: f_i is a fraction"),
    (lambda *a: balance(*a, per_token=True), "divided by T instead of T · k"),
    (lambda *a: balance(*a, sum_p=True), "off by a factor T|P_i summed over tokens"),
    (lambda *a: balance(*a).item(), "gradient through P_i"),
    (lambda p, i, a: balance(p.detach(), i, a), "gradient through P_i"),
    (lambda p, i, a: moe.load_balancing_loss(p, i, a), "your function calls `moe`|course_lib does the work here"),
])
def test_balance_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch08.check_load_balancing_loss(wrong)


# ----------------------------------------------------------------------------- task 4
def count(d_model, d_ff, n_layers, n_experts, top_k, vocab_size, n_heads, n_kv_heads, *, mats=3, kv=None,
          heads_once=False, active_all=False, total_k=False, no_router=False, no_norms=False,
          embed_active=True, layers_once=False):
    d, hd = d_model, d_model // n_heads
    kv = n_kv_heads if kv is None else kv
    attn = 2 * d * d + 2 * d * kv * hd
    expert = mats * d * d_ff
    shared = attn + (0 if no_router else d * n_experts) + (0 if no_norms else 2 * d)
    embed = vocab_size * d * (1 if heads_once else 2) + (0 if no_norms else d)
    n_total = top_k if total_k else n_experts
    n_active = n_experts if active_all else top_k
    Le = 1 if layers_once else n_layers
    total = n_layers * shared + Le * n_total * expert + embed
    active = n_layers * shared + Le * n_active * expert + (embed if embed_active else (0 if no_norms else d))
    return total, active


def count_with_the_library(d_model, d_ff, n_layers, n_experts, top_k, vocab_size, n_heads, n_kv_heads):
    cfg = ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                      n_kv_heads=n_kv_heads, d_ff=d_ff, ffn="swiglu", n_experts=n_experts, top_k=top_k,
                      norm="rmsnorm", pos_encoding="rope", bias=False, tie_embeddings=False)
    return count_parameters(cfg), count_parameters(cfg, active=True)


def test_count_passes(capsys):
    ch08.check_param_count(count)
    ch08.check_param_count(lambda **cfg: tuple(float(v) for v in count(**cfg)))
    assert capsys.readouterr().out == "✓ parameter count: all 4 cases passed\n" * 2


@pytest.mark.parametrize("wrong, message", [
    (stub, "param_count is not implemented yet"),
    (lambda **c: count(**c, active_all=True), "active parameters count all the experts"),
    (lambda **c: count(**c, total_k=True), "total parameters count only top_k experts"),
    (lambda **c: count(**c, mats=2), "three matrices"),
    (lambda **c: count(**c, kv=c["n_heads"]), "n_kv_heads"),
    (lambda **c: count(**c, heads_once=True), "counted once"),
    (lambda **c: count(**c, embed_active=False), "count them in the active parameters too"),
    (lambda **c: count(**c, no_router=True), "forgot the router"),
    (lambda **c: count(**c, no_norms=True), "forgot the norms"),
    (lambda **c: count(**c, layers_once=True), "forgot to multiply by n_layers"),
    (lambda **c: count(**c)[0], "expected a pair"),
    (lambda **c: count_with_the_library(**c), "course_lib does the work here"),
])
def test_count_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch08.check_param_count(wrong)


# ----------------------------------------------------------------------------- task 5 (transfer)
def expert_choice(x, logits, experts, capacity_factor, *, dim=-1, renorm=False, gated=True, rounding=math.ceil,
                  token_choice=False, whole_batch=False, invert=False):
    T, n = logits.shape
    c = rounding(capacity_factor * T / n)
    S = torch.softmax(logits, dim=dim)
    y = torch.zeros_like(x)
    routed = torch.zeros(T, dtype=torch.bool)
    if token_choice:                                        # the k best experts per token instead
        w, idx = S.topk(c, dim=-1)
        for e in range(n):
            t, j = (idx == e).nonzero(as_tuple=True)
            if len(t):
                y.index_add_(0, t, w[t, j, None] * experts[e](x[t]))
        return y, torch.zeros(T, dtype=torch.bool)
    G, I = S.T.topk(c, dim=-1)                              # [n, c]
    if renorm:
        tot = torch.zeros(T, dtype=S.dtype).index_add_(0, I.flatten(), G.flatten())
        G = G / tot[I]
    for e in range(n):
        if whole_batch:
            out = experts[e](x)[I[e]]
        else:
            out = experts[e](x[I[e]])
        y.index_add_(0, I[e], (G[e, :, None] if gated else 1.0) * out)
        routed[I[e]] = True
    return y, (routed if invert else ~routed)


def expert_choice_loop(x, logits, experts, capacity_factor):
    """Right numbers, one expert call per picked token."""
    T, n = logits.shape
    c = math.ceil(capacity_factor * T / n)
    S = torch.softmax(logits, -1)
    y, routed = torch.zeros_like(x), torch.zeros(T, dtype=torch.bool)
    for e in range(n):
        for t in S[:, e].argsort(descending=True)[:c].tolist():
            y[t] += S[t, e] * experts[e](x[t:t + 1])[0]
            routed[t] = True
    return y, ~routed


def expert_choice_demo_only(x, logits, experts, capacity_factor):
    """Right on the sheet's first case only (hard-codes its capacity of 2 tokens per expert)."""
    T, n = logits.shape
    S = torch.softmax(logits, -1)
    G, I = S.T.topk(min(2, T), dim=-1)
    y, routed = torch.zeros_like(x), torch.zeros(T, dtype=torch.bool)
    for e in range(n):
        y.index_add_(0, I[e], G[e, :, None] * experts[e](x[I[e]]))
        routed[I[e]] = True
    return y, ~routed


def test_expert_choice_passes(capsys):
    ch08.check_expert_choice(expert_choice)
    assert capsys.readouterr().out == "✓ expert choice: all 9 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "expert_choice is not implemented yet"),
    (lambda *a: expert_choice(*a, dim=0), "softmax over the tokens instead of the experts"),
    (lambda *a: expert_choice(*a, renorm=True), "renormalised per token"),
    (lambda *a: expert_choice(*a, gated=False), "forgot the gate values"),
    (lambda *a: expert_choice(*a, rounding=math.floor), "capacity rounded down"),
    (lambda *a: expert_choice(*a, token_choice=True), "not the k best experts per token"),
    (lambda *a: expert_choice(*a, whole_batch=True), "was run on all \\d+ tokens"),
    (lambda *a: expert_choice(*a, invert=True), "unrouted is inverted"),
    (lambda *a: (lambda y, u: (y, u.int()))(*expert_choice(*a)), "must be a bool tensor"),
    (lambda *a: (expert_choice(*a)[0], torch.zeros(a[0].shape[0], dtype=torch.bool)), "the tokens no expert picked"),
    (expert_choice_loop, "called \\d+ times"),
    (expert_choice_demo_only, "expert 0 processed 2 tokens"),
    (lambda *a: expert_choice(*a)[0], "expected a pair"),
])
def test_expert_choice_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch08.check_expert_choice(wrong)


# ----------------------------------------------------------------------------- task 6 (transfer)
def keep_mask(indices, n_experts, capacity_factor, *, order="priority", with_k=True, rounding=math.ceil, le=False):
    T, k = indices.shape
    C = rounding(capacity_factor * (k if with_k else 1) * T / n_experts)
    keep = torch.zeros(T, k, dtype=torch.bool)
    used = [0] * n_experts
    arrivals = ([(t, j) for j in range(k) for t in range(T)] if order == "priority"
                else [(t, j) for t in range(T) for j in range(k)])
    for t, j in arrivals:
        e = int(indices[t, j])
        if used[e] < C or (le and used[e] == C):
            keep[t, j] = True
            used[e] += 1
    return keep


def keep_mask_fixed_capacity(indices, n_experts, capacity_factor):
    """Right order, but the capacity of the sheet's demo (8 slots) hard-coded."""
    T, k = indices.shape
    keep, used = torch.zeros(T, k, dtype=torch.bool), [0] * n_experts
    for j in range(k):
        for t in range(T):
            e = int(indices[t, j])
            if used[e] < 8:
                keep[t, j], used[e] = True, used[e] + 1
    return keep


def keep_mask_library_capacity(indices, n_experts, capacity_factor):
    """Right, but the capacity from course_lib.moe.expert_capacity (imported at the top, as a cell would)."""
    T, k = indices.shape
    C = expert_capacity(T, n_experts, capacity_factor, k)
    keep, used = torch.zeros(T, k, dtype=torch.bool), [0] * n_experts
    for j in range(k):
        for t in range(T):
            e = int(indices[t, j])
            if used[e] < C:
                keep[t, j], used[e] = True, used[e] + 1
    return keep


def test_keep_mask_passes(capsys):
    ch08.check_priority_keep_mask(keep_mask)
    assert capsys.readouterr().out == "✓ priority keep mask: all 8 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "priority_keep_mask is not implemented yet"),
    (lambda *a: keep_mask(*a, order="token"), "first come, first served in token order"),
    (lambda *a: keep_mask(*a, with_k=False), "capacity without k"),
    (lambda *a: keep_mask(*a, rounding=math.floor), "capacity rounded down"),
    (lambda *a: keep_mask(*a, le=True), "one assignment too many per expert"),
    (lambda *a: keep_mask(*a, order="token", with_k=False), "token order and no k"),
    (keep_mask_fixed_capacity, "wrongly kept or dropped"),
    (lambda *a: keep_mask(*a).int(), "expected a bool mask"),
    (lambda i, n, cf: keep_mask(i, n, cf)[:, 0], "expected shape"),
    (keep_mask_library_capacity, "your function calls `expert_capacity`"),
])
def test_keep_mask_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch08.check_priority_keep_mask(wrong)
