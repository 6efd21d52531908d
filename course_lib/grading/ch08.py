"""Checks for Exercise 8 (Mixture of Experts).

Tasks, in the order of the exercise notebook:

1. ``top_k_gating(logits, k)`` → ``(weights [T, k], indices [T, k])`` — softmax over the experts,
   keep the k largest, renormalise them to sum to 1;
2. ``moe_forward(x, weights, indices, experts)`` → ``[T, d]`` — ``y_t = Σ_j w_tj · E_{i_tj}(x_t)``
   computed by dispatch: each expert called once, on the batch of its tokens;
3. ``load_balancing_loss(probs, indices, alpha)`` → scalar — ``α · n · Σ_i f_i · P_i``;
4. ``param_count(...)`` → ``(total, active)`` — parameters of a Mixtral-shaped MoE model;
5. (transfer) ``expert_choice(x, logits, experts, capacity_factor)`` → ``(y [T, d], unrouted [T])`` —
   expert-choice routing (Zhou et al., 2022): every expert picks its ``⌈cf · T / n⌉`` best tokens;
6. (transfer) ``priority_keep_mask(indices, n_experts, capacity_factor)`` → ``[T, k]`` bool — the
   capacity ``⌈cf · k · T / n⌉`` of top-k routing with GShard's priority (all first choices first).

References come from ``course_lib.moe`` (tested in ``tests/test_moe.py``); when an answer is
wrong, the check recomputes the known wrong answers (softmax over tokens, weights not
renormalised, f_i from probabilities, the missing factor n, token-order instead of slot priority,
the capacity without k, …) and names the one it matches; the forward and expert-choice checks also
count the expert calls and the rows each call gets (dispatch, not a loop or a dense pass).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import course_lib.model
import course_lib.moe
from course_lib.ffn import build_feed_forward
from course_lib.grading import call_student, expect_close, expect_number, expect_tensor, passed
from course_lib.grading.forbid import call_without
from course_lib.model import ModelConfig, count_parameters
from course_lib.moe import load_balancing_loss, moe_naive, top_k_gating

__all__ = ["check_top_k_gating", "check_moe_forward", "check_load_balancing_loss", "check_param_count",
           "check_expert_choice", "check_priority_keep_mask", "EXPERT_CHOICE_CASES"]


_LIBRARY_MESSAGE = ("course_lib does the work here: it is the reference the check compares you with; write it "
                    "with plain torch")


def _library(*names: str) -> list[tuple[object, str]]:
    """The functions of ``course_lib.moe`` that an answer must not call (they are its reference)."""
    return [(course_lib.moe, n) for n in names]


def _pair(name: str, res):
    if not (isinstance(res, (tuple, list)) and len(res) == 2):
        raise AssertionError(f"{name}: expected a pair (weights, indices); got {type(res).__name__}")
    return res


def _dense(weights: torch.Tensor, indices: torch.Tensor, n: int) -> torch.Tensor:
    """``[T, n]`` gate matrix: weight at the chosen experts, 0 elsewhere (order-independent)."""
    return torch.zeros(weights.shape[0], n, dtype=weights.dtype).scatter(-1, indices.long(), weights)


# ----------------------------------------------------------------------------- task 1
def check_top_k_gating(top_k_gating_fn) -> None:
    """Task 1: top-k gating with renormalisation (Mixtral)."""
    g = torch.Generator().manual_seed(801)
    cases = [(6, 4, 2, 1.0), (10, 8, 2, 2.0), (5, 8, 1, 1.0), (7, 3, 3, 1.0), (9, 16, 4, 3.0), (4, 8, 2, 40.0)]
    for T, n, k, scale in cases:
        name = f"top_k_gating(logits [{T}, {n}], k={k})"
        logits = torch.randn(T, n, generator=g, dtype=torch.float64) * scale
        res = _pair(name, call_without(top_k_gating_fn, _library("top_k_gating", "router_probs"), _LIBRARY_MESSAGE,
                                         logits.clone(), k, name="top_k_gating"))
        w_got = expect_tensor(f"{name}: weights", res[0], (T, k))
        i_got = expect_tensor(f"{name}: indices", res[1], (T, k))
        if i_got.is_floating_point():
            raise AssertionError(f"{name}: indices must be an integer tensor (expert ids); got {i_got.dtype}")
        w_want, i_want, probs = top_k_gating(logits, k)
        if not torch.equal(i_got.long().sort(-1).values, i_want.sort(-1).values):
            p_tok = torch.softmax(logits, dim=0)
            if torch.equal(i_got.long().sort(-1).values, p_tok.topk(k, -1).indices.sort(-1).values) and \
                    not torch.equal(p_tok.topk(k, -1).indices.sort(-1).values, i_want.sort(-1).values):
                raise AssertionError(f"{name}: softmax over tokens instead of experts: the router gives each "
                                     "token a distribution over the n experts (softmax along the last axis)")
            if torch.equal(i_got.long().sort(-1).values, (-logits).topk(k, -1).indices.sort(-1).values):
                raise AssertionError(f"{name}: took the k smallest logits; keep the k largest")
            raise AssertionError(f"{name}: wrong experts chosen (the k largest logits of each token)")
        got = _dense(w_got.double(), i_got.long(), n)
        want = _dense(w_want, i_want, n)
        p_tok = torch.softmax(logits, dim=0)
        expect_close(f"{name}: weights", got, want, mistakes={
            "top-k weights not renormalised: divide the k kept probabilities by their sum (Mixtral takes a "
            "softmax over the top-k logits, which is the same)": _dense(probs.gather(-1, i_want), i_want, n),
            "softmax over tokens instead of experts: normalise along the last axis (the n experts)":
                _dense(p_tok.gather(-1, i_want) / p_tok.gather(-1, i_want).sum(-1, keepdim=True), i_want, n),
            "softmax over tokens instead of experts, and not renormalised": _dense(p_tok.gather(-1, i_want), i_want, n),
            "returned the raw logits; the weights are probabilities": _dense(logits.gather(-1, i_want), i_want, n),
        })
    passed("top-k gating", len(cases))


# ----------------------------------------------------------------------------- task 2
class _Counting(nn.Module):
    """Wraps an expert and counts its calls and the rows it was given (dispatch: once, on its own tokens)."""

    def __init__(self, expert: nn.Module):
        super().__init__()
        self.expert, self.calls, self.rows = expert, 0, 0

    def forward(self, x):
        self.calls += 1
        self.rows += int(x.shape[0]) if x.dim() > 1 else 1
        return self.expert(x)


def check_moe_forward(moe_forward) -> None:
    """Task 2: the MoE forward by dispatch."""
    g = torch.Generator().manual_seed(802)
    cases = [(12, 4, 2, 6), (20, 8, 2, 8), (9, 3, 1, 5), (7, 5, 5, 4), (16, 6, 3, 6), (3, 8, 2, 4)]
    for T, n, k, d in cases:
        name = f"moe_forward(T={T}, n_experts={n}, k={k}, d={d})"
        torch.manual_seed(T * 100 + n)
        experts = nn.ModuleList(build_feed_forward("swiglu", d, 2 * d, bias=False, dtype=torch.float64)
                                for _ in range(n))
        x = torch.randn(T, d, generator=g, dtype=torch.float64)
        w, idx, _ = top_k_gating(torch.randn(T, n, generator=g, dtype=torch.float64), k)
        counting = nn.ModuleList(_Counting(e) for e in experts)
        with torch.no_grad():
            got = call_without(moe_forward, _library("moe_dispatch", "moe_naive", "dense_moe"), _LIBRARY_MESSAGE,
                               x.clone(), w.clone(), idx.clone(), counting, name="moe_forward")
            got = expect_tensor(name, got, (T, d))
            want = moe_naive(x, w, idx, experts)
            outs = torch.stack([e(x) for e in experts], dim=1)          # [T, n, d]
            chosen = outs.gather(1, idx[..., None].expand(T, k, d))      # [T, k, d]
            by_slot = torch.stack([outs[:, j] for j in range(k)], dim=1) if k <= n else None
            expect_close(name, got, want, mistakes={
                "forgot the gate weights: the expert outputs are multiplied by g_i(x) before summing":
                    chosen.sum(1),
                "averaged the expert outputs; weight them by the gate values instead": chosen.mean(1),
                "weights[t, j] belongs to expert indices[t, j], not to expert j": (w[..., None] * by_slot).sum(1),
                "only the first chosen expert was used": w[:, :1] * chosen[:, 0] if k > 1 else None,
                "the outputs were not added back to their tokens' rows (scatter with index_add_)":
                    torch.zeros(T, d, dtype=torch.float64),
            })
        many = [i for i, e in enumerate(counting) if e.calls > 1]
        if many:
            raise AssertionError(f"{name}: expert {many[0]} was called {counting[many[0]].calls} times: group the "
                                 "tokens by expert and call each expert once, on all of its tokens")
        unused = set(range(n)) - set(idx.unique().tolist())
        wasted = [i for i in unused if counting[i].calls > 0]
        if wasted:
            raise AssertionError(f"{name}: expert {wasted[0]} received no token but was called: a sparse MoE runs "
                                 "only the experts it routed tokens to")
        routed = torch.bincount(idx.reshape(-1), minlength=n).tolist()
        extra = [i for i, e in enumerate(counting) if e.rows > routed[i]]
        if extra:
            e = extra[0]
            raise AssertionError(f"{name}: expert {e} was run on {counting[e].rows} rows but only {routed[e]} "
                                 f"assignments were routed to it: gather its tokens (x[rows]) and run it on "
                                 "those only, not on the whole batch")
    passed("MoE forward", len(cases))


# ----------------------------------------------------------------------------- task 3
def check_load_balancing_loss(load_balancing_loss_fn) -> None:
    """Task 3: ``L = α · n · Σ_i f_i P_i`` (f_i from counts, P_i mean router probability)."""
    g = torch.Generator().manual_seed(803)
    cases = []
    for T, n, k, alpha, temp in [(32, 4, 1, 0.01, 1.0), (40, 8, 2, 0.01, 2.0), (16, 4, 2, 0.1, 0.5),
                                 (50, 5, 1, 1.0, 3.0), (24, 6, 3, 0.02, 1.0)]:
        logits = torch.randn(T, n, generator=g, dtype=torch.float64) * temp
        cases.append((f"T={T}, n={n}, k={k}, α={alpha}", logits, k, alpha))
    n = 8
    cases.append(("uniform routing (must give α)", torch.zeros(64, n, dtype=torch.float64), 2, 0.01))
    collapsed = torch.full((64, n), -30.0, dtype=torch.float64)
    collapsed[:, 0] = 30.0
    cases.append(("a router collapsed onto expert 0 (≈ α·n)", collapsed, 1, 0.01))
    for what, logits, k, alpha in cases:
        name = f"load_balancing_loss with {what}"
        probs = torch.softmax(logits, -1)
        T, n = probs.shape
        if what.startswith("uniform"):
            idx = (torch.arange(T * k) % n).reshape(T, k)
        else:
            idx = probs.topk(k, -1).indices
        p_in = probs.clone().requires_grad_(True)
        got = call_without(load_balancing_loss_fn, _library("load_balancing_loss", "expert_fractions"), _LIBRARY_MESSAGE,
                           p_in, idx.clone(), alpha, name="load_balancing_loss")
        value = expect_number(name, got)
        want = load_balancing_loss(probs, idx, alpha)
        counts = torch.bincount(idx.reshape(-1), minlength=n).double()
        f = counts / counts.sum()
        P = probs.mean(0)
        mistakes = {
            "f_i computed from probabilities instead of counts: f_i is the fraction of tokens dispatched "
            "to expert i (count the indices)": alpha * n * (P * P).sum(),
            "forgot the factor n (number of experts): L = α · n · Σ f_i P_i, which is α at perfect balance":
                alpha * (f * P).sum(),
            "forgot the factor α": n * (f * P).sum(),
            "off by a factor T: f_i is a fraction (count / (T · k)) and P_i a mean over tokens, not raw "
            "counts or a sum": alpha * n * (counts * P).sum(),
            "f_i divided by T instead of T · k (each token is dispatched k times)":
                alpha * n * (counts / T * P).sum() if k > 1 else None,
            "P_i summed over tokens instead of averaged": alpha * n * (f * probs.sum(0)).sum() if k > 1 else None,
        }
        expect_close(name, torch.tensor([value], dtype=torch.float64), want.reshape(1),
                     mistakes={m: v.reshape(1) for m, v in mistakes.items() if v is not None})
        if not (isinstance(got, torch.Tensor) and got.requires_grad):
            raise AssertionError(f"{name}: the loss must be a tensor with a gradient through P_i (the router "
                                 "learns from it); do not call .item() or detach the probabilities")
    passed("load-balancing loss", len(cases))


# ----------------------------------------------------------------------------- task 4
def _mixtral_counts(d_model, d_ff, n_layers, n_experts, top_k, vocab_size, n_heads, n_kv_heads) -> tuple[int, int]:
    """(total, active) of a Mixtral-shaped model (SwiGLU experts, RMSNorm, no biases, untied head)."""
    cfg = ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                      n_kv_heads=n_kv_heads, d_ff=d_ff, ffn="swiglu", n_experts=n_experts, top_k=top_k,
                      norm="rmsnorm", pos_encoding="rope", bias=False, tie_embeddings=False)
    return count_parameters(cfg), count_parameters(cfg, active=True)


def check_param_count(param_count) -> None:
    """Task 4: total vs active parameters (Mixtral 8×7B and small models)."""
    cases = [
        ("Mixtral 8x7B", dict(d_model=4096, d_ff=14336, n_layers=32, n_experts=8, top_k=2, vocab_size=32000,
                              n_heads=32, n_kv_heads=8)),
        ("a small model", dict(d_model=64, d_ff=96, n_layers=2, n_experts=4, top_k=1, vocab_size=100,
                               n_heads=4, n_kv_heads=2)),
        ("multi-head attention (n_kv_heads = n_heads)", dict(d_model=32, d_ff=48, n_layers=3, n_experts=8,
                                                             top_k=2, vocab_size=50, n_heads=4, n_kv_heads=4)),
        ("top_k = n_experts (dense)", dict(d_model=16, d_ff=40, n_layers=1, n_experts=3, top_k=3, vocab_size=10,
                                           n_heads=2, n_kv_heads=1)),
    ]
    for what, cfg in cases:
        name = f"param_count for {what}"
        res = call_without(param_count, [(course_lib.model, "count_parameters")], _LIBRARY_MESSAGE, **cfg,
                           name="param_count")
        if not (isinstance(res, (tuple, list)) and len(res) == 2):
            raise AssertionError(f"{name}: expected a pair (total, active); got {type(res).__name__}")
        got = tuple(int(round(expect_number(name, v))) for v in res)
        want = _mixtral_counts(**cfg)
        if got == want:
            continue
        d, dff, L, n, k, V = (cfg[x] for x in ("d_model", "d_ff", "n_layers", "n_experts", "top_k", "vocab_size"))
        hd = d // cfg["n_heads"]
        expert = 3 * d * dff
        alt = {
            "active parameters count all the experts; only top_k experts run per token":
                (want[0], want[0]),
            "total parameters count only top_k experts; every expert is stored": (want[1], want[1]),
            "a SwiGLU expert has three matrices (gate, up, down): 3·d·d_ff, not 2·d·d_ff":
                (want[0] - L * n * d * dff, want[1] - L * k * d * dff),
            "K and V projections counted with n_heads instead of n_kv_heads (GQA shares them)":
                tuple(v + L * 2 * d * (cfg["n_heads"] - cfg["n_kv_heads"]) * hd for v in want),
            "the embedding and the LM head were counted once; Mixtral does not tie them":
                tuple(v - V * d for v in want),
            "the embedding and the LM head are used by every token: count them in the active parameters too":
                (want[0], want[1] - 2 * V * d),
            "forgot the router (d_model · n_experts per layer)": tuple(v - L * d * n for v in want),
            "forgot the norms (two RMSNorm weights per layer and the final one)": tuple(v - 2 * L * d - d for v in want),
            "counted experts per layer but forgot to multiply by n_layers":
                (want[0] - (L - 1) * n * expert, want[1] - (L - 1) * k * expert),
        }
        for message, value in alt.items():
            if got == tuple(value) and tuple(value) != want:
                raise AssertionError(f"{name}: {message}")
        raise AssertionError(f"{name}: got (total, active) = {got}; expected {want}")
    passed("parameter count", len(cases))


# ----------------------------------------------------------------------------- task 5 (transfer)
class _Rows(nn.Module):
    """Wraps an expert; records the number of rows of every call (expert choice: one call of c rows)."""

    def __init__(self, expert: nn.Module):
        super().__init__()
        self.expert, self.rows = expert, []

    def forward(self, x):
        self.rows.append(int(x.shape[0]) if x.dim() > 1 else 1)
        return self.expert(x)


def _expert_choice(x, logits, experts, capacity, *, probs_dim=-1, renorm=False, gated=True):
    """Expert-choice MoE (Zhou et al., 2022): every expert takes its ``capacity`` highest-scoring tokens.

    ``S = softmax(logits)`` over the experts ``[T, n]``; expert ``e`` picks ``topk(S[:, e], c)``;
    ``y_t = Σ_{(e, slot) : I[e, slot] = t} G[e, slot] · E_e(x_t)``. Returns ``(y [T, d], unrouted [T])``.
    """
    T, n = logits.shape
    S = torch.softmax(logits, dim=probs_dim)
    G, I = S.t().topk(capacity, dim=-1)                      # [n, c] gates and token ids, one row per expert
    if renorm:                                               # per token: the gates it received sum to 1
        total = torch.zeros(T, dtype=S.dtype).index_add_(0, I.reshape(-1), G.reshape(-1))
        G = G / total[I]
    if not gated:
        G = torch.ones_like(G)
    y = torch.zeros_like(x)
    for e in range(n):
        y.index_add_(0, I[e], G[e, :, None] * experts[e](x[I[e]]))
    routed = torch.zeros(T, dtype=torch.bool)
    routed[I.reshape(-1)] = True
    return y, ~routed


EXPERT_CHOICE_CASES = [  # T, n, d, capacity_factor
    (8, 4, 4, 1.0), (12, 3, 6, 2.0), (10, 4, 5, 1.0), (16, 8, 4, 0.5), (9, 2, 4, 1.5), (5, 5, 3, 3.0),
]


def check_expert_choice(expert_choice_fn) -> None:
    """Task 5: expert-choice routing — every expert takes its ⌈capacity_factor · T / n⌉ best tokens."""
    g = torch.Generator().manual_seed(805)
    cases = list(EXPERT_CHOICE_CASES)
    for _ in range(3):                                        # sizes the sheet does not print
        n = int(torch.randint(2, 7, (1,), generator=g))
        T = int(torch.randint(n + 1, 30, (1,), generator=g))
        cf = [0.75, 1.0, 1.25, 2.0][int(torch.randint(0, 4, (1,), generator=g))]
        cases.append((T, n, int(torch.randint(3, 7, (1,), generator=g)), cf))
    for T, n, d, cf in cases:
        name = f"expert_choice(T={T}, n_experts={n}, capacity_factor={cf})"
        c = math.ceil(cf * T / n)
        torch.manual_seed(T * 31 + n)
        experts = nn.ModuleList(build_feed_forward("swiglu", d, 2 * d, bias=False, dtype=torch.float64)
                                for _ in range(n))
        x = torch.randn(T, d, generator=g, dtype=torch.float64)
        logits = torch.randn(T, n, generator=g, dtype=torch.float64) * 2
        wrapped = nn.ModuleList(_Rows(e) for e in experts)
        with torch.no_grad():
            res = call_student(expert_choice_fn, x.clone(), logits.clone(), wrapped, cf, name="expert_choice")
            if not (isinstance(res, (tuple, list)) and len(res) == 2):
                raise AssertionError(f"{name}: expected a pair (y, unrouted); got {type(res).__name__}")
            y = expect_tensor(f"{name}: y", res[0], (T, d))
            unrouted = expect_tensor(f"{name}: unrouted", res[1], (T,))
            want_y, want_un = _expert_choice(x, logits, experts, c)
            for e, rows in enumerate(w.rows for w in wrapped):
                if len(rows) != 1:
                    raise AssertionError(
                        f"{name}: expert {e} was called {len(rows)} times; in expert choice every expert is called "
                        f"exactly once, on the batch of the c tokens it picked")
                if rows[0] != c:
                    if rows[0] == c - 1 and c - 1 == math.floor(cf * T / n):
                        raise AssertionError(f"{name}: capacity rounded down; c = ⌈capacity_factor · T / n⌉ = {c}")
                    if rows[0] == T:
                        raise AssertionError(f"{name}: expert {e} was run on all {T} tokens; run it on the c = {c} "
                                             "tokens it picked only")
                    raise AssertionError(
                        f"{name}: expert {e} processed {rows[0]} tokens; with expert choice every expert takes exactly "
                        f"c = ⌈capacity_factor · T / n⌉ = {c} tokens (the k best tokens per expert, not the k best "
                        "experts per token)")
            expect_close(f"{name}: y", y, want_y, mistakes={
                "softmax over the tokens instead of the experts: S = softmax(x W_g) is still a distribution over "
                "the n experts for each token (dim = -1); the experts then pick along the token axis":
                    _expert_choice(x, logits, experts, c, probs_dim=0)[0],
                "the gates were renormalised per token; expert choice uses the router probabilities S[t, e] as they "
                "are (a token may be picked by several experts, or none)": _expert_choice(x, logits, experts, c,
                                                                                          renorm=True)[0],
                "forgot the gate values: multiply each expert's output by G[e, slot] = S[t, e]":
                    _expert_choice(x, logits, experts, c, gated=False)[0],
            })
        if unrouted.dtype != torch.bool:
            raise AssertionError(f"{name}: unrouted must be a bool tensor (True = no expert picked the token); "
                                 f"got {unrouted.dtype}")
        if torch.equal(unrouted, ~want_un):
            raise AssertionError(f"{name}: unrouted is inverted: True marks the tokens that NO expert picked")
        if not torch.equal(unrouted, want_un):
            raise AssertionError(f"{name}: unrouted marks tokens {unrouted.nonzero().flatten().tolist()}; the tokens "
                                 f"no expert picked are {want_un.nonzero().flatten().tolist()}")
    passed("expert choice", len(cases))


# ----------------------------------------------------------------------------- task 6 (transfer)
def _priority_keep(indices: torch.Tensor, n_experts: int, capacity: int, *, token_order=False) -> torch.Tensor:
    """``[T, k]`` bool: GShard's priority — every first choice (slot 0, in token order) before any second…"""
    T, k = indices.shape
    flat = indices.reshape(-1) if token_order else indices.t().reshape(-1)      # the order of arrival
    onehot = F.one_hot(flat, n_experts)
    position = (onehot.cumsum(0) * onehot).sum(-1) - 1                           # place in its expert's queue
    keep = position < capacity
    return keep.reshape(T, k) if token_order else keep.reshape(k, T).t()


def _routing(T: int, n: int, k: int, skew: float, g: torch.Generator) -> torch.Tensor:
    logits = torch.randn(T, n, generator=g) + skew * torch.linspace(1, 0, n)
    return logits.topk(k, -1).indices


def check_priority_keep_mask(keep_mask_fn) -> None:
    """Task 6: capacity ⌈cf · k · T / n⌉ per expert, first choices of all tokens served before second choices."""
    g = torch.Generator().manual_seed(806)
    cases = [(16, 4, 2, 1.0, 1.5), (20, 5, 2, 1.25, 2.0), (12, 3, 2, 0.5, 0.0), (30, 6, 2, 2.0, 3.0)]
    for _ in range(4):                                  # routings the sheet does not print, k = 1 … 3
        n = int(torch.randint(3, 9, (1,), generator=g))
        k = int(torch.randint(1, 4, (1,), generator=g))
        T = int(torch.randint(8, 40, (1,), generator=g))
        cf = [0.5, 1.0, 1.25, 1.5][int(torch.randint(0, 4, (1,), generator=g))]
        cases.append((T, n, k, cf, float(torch.rand((), generator=g)) * 3))
    F_ = math.floor
    for T, n, k, cf, skew in cases:
        name = f"priority_keep_mask(T={T}, n_experts={n}, k={k}, capacity_factor={cf})"
        indices = _routing(T, n, k, skew, g)
        got = call_without(keep_mask_fn, _library("capacity_keep_mask", "expert_capacity"), _LIBRARY_MESSAGE,
                           indices.clone(), n, cf, name="priority_keep_mask")
        got = expect_tensor(name, got, (T, k))
        if got.dtype != torch.bool:
            raise AssertionError(f"{name}: expected a bool mask (True = the assignment is kept); got {got.dtype}")
        C = math.ceil(cf * k * T / n)
        want = _priority_keep(indices, n, C)
        if torch.equal(got, want):
            continue
        mistakes = {
            "first come, first served in token order (token 0's choices, then token 1's, …): GShard serves "
            "the first choices of ALL tokens before any second choice, so a token loses its second expert "
            "before another token loses its first": _priority_keep(indices, n, C, token_order=True),
            "capacity without k: there are k · T assignments to share, C = ⌈capacity_factor · k · T / n⌉":
                _priority_keep(indices, n, math.ceil(cf * T / n)),
            "capacity rounded down: C = ⌈capacity_factor · k · T / n⌉ (a ceiling)":
                _priority_keep(indices, n, F_(cf * k * T / n)),
            "one assignment too many per expert (≤ C instead of < C: queue places are counted from 0)":
                _priority_keep(indices, n, C + 1),
            "token order and no k in the capacity": _priority_keep(indices, n, math.ceil(cf * T / n),
                                                                   token_order=True),
        }
        for message, alt in mistakes.items():
            if not torch.equal(alt, want) and torch.equal(got, alt):
                raise AssertionError(f"{name}: {message}")
        raise AssertionError(f"{name}: {int((got != want).sum())} of the {T * k} assignments wrongly kept or "
                             f"dropped (capacity C = {C} per expert)")
    passed("priority keep mask", len(cases))
