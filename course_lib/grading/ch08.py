"""Checks for Exercise 8 (Mixture of Experts).

Tasks, in the order of the exercise notebook:

1. ``top_k_gating(logits, k)`` → ``(weights [T, k], indices [T, k])`` — softmax over the experts,
   keep the k largest, renormalise them to sum to 1;
2. ``moe_forward(x, weights, indices, experts)`` → ``[T, d]`` — ``y_t = Σ_j w_tj · E_{i_tj}(x_t)``
   computed by dispatch: each expert called once, on the batch of its tokens;
3. ``load_balancing_loss(probs, indices, alpha)`` → scalar — ``α · n · Σ_i f_i · P_i``;
4. ``param_count(...)`` → ``(total, active)`` — parameters of a Mixtral-shaped MoE model.

References come from ``course_lib.moe`` (tested in ``tests/test_moe.py``); when an answer is
wrong, the check recomputes the known wrong answers (softmax over tokens, weights not
renormalised, f_i from probabilities, the missing factor n, …) and names the one it matches.
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib.ffn import build_feed_forward
from course_lib.grading import call_student, expect_close, expect_number, expect_tensor, passed
from course_lib.model import ModelConfig, count_parameters
from course_lib.moe import load_balancing_loss, moe_naive, top_k_gating

__all__ = ["check_top_k_gating", "check_moe_forward", "check_load_balancing_loss", "check_param_count"]


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
        res = _pair(name, call_student(top_k_gating_fn, logits.clone(), k, name="top_k_gating"))
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
    """Wraps an expert and counts its calls (the dispatch calls each expert at most once)."""

    def __init__(self, expert: nn.Module):
        super().__init__()
        self.expert, self.calls = expert, 0

    def forward(self, x):
        self.calls += 1
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
            got = call_student(moe_forward, x.clone(), w.clone(), idx.clone(), counting, name="moe_forward")
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
        got = call_student(load_balancing_loss_fn, p_in, idx.clone(), alpha, name="load_balancing_loss")
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
        res = call_student(param_count, **cfg, name="param_count")
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
