"""Checks for Exercise 1 (attention and scaling).

Tasks, in the order of the exercise notebook:

1. ``softmax(x, dim=-1)`` — numerically stable, any dimension;
2. ``attention(q, k, v, mask=None)`` → ``(output, weights)`` — scaled dot-product attention
   with a boolean mask (True = may attend); a fully masked query row gets zeros;
3. ``qk_variance(d, scaled, n_samples=20_000, seed=0)`` — the measured Var(q·k);
4. ``mean_max_weight(d, scaled, …)`` and the number ``D_SATURATED`` read off its plot.

Each check compares with PyTorch (or with course_lib's reference) on seeded cases and names
the likely mistake when the student's result matches a known wrong answer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course_lib.attention import scaled_dot_product_attention
from course_lib.grading import call_student, expect_close, expect_number, expect_tensor, passed

__all__ = [
    "check_softmax",
    "check_attention",
    "check_qk_variance",
    "check_saturation",
    "D_GRID",
    "SATURATION_THRESHOLD",
    "reference_mean_max_weight",
]

D_GRID = (4, 16, 64, 256, 1024)
SATURATION_THRESHOLD = 0.75


# ----------------------------------------------------------------------------- task 1
def check_softmax(softmax) -> None:
    """Task 1: a numerically stable softmax along ``dim``."""
    g = torch.Generator().manual_seed(101)
    cases = [
        ("random logits [4, 7]", torch.randn(4, 7, generator=g), -1),
        ("a 3-D tensor, dim=1", torch.randn(2, 5, 3, generator=g), 1),
        ("a 3-D tensor, dim=0", torch.randn(3, 2, 4, generator=g), 0),
        ("float64 logits", torch.randn(3, 6, generator=g, dtype=torch.float64), -1),
        ("large logits (±1e4)", 1e4 * torch.randn(4, 9, generator=g), -1),
        ("very negative logits (−1e4 − x)", -1e4 - torch.rand(2, 5, generator=g), -1),
        ("one logit far above the rest", torch.tensor([[1000.0, 0.0, -1000.0, 1.0]]), -1),
    ]
    for what, x, dim in cases:
        x_before = x.clone()
        got = call_student(softmax, x, dim=dim, name="softmax")
        got = expect_tensor(f"softmax on {what}", got, tuple(x.shape), x.dtype)
        if not torch.equal(x, x_before):
            raise AssertionError(f"softmax on {what}: your function modified its input in place")
        want = torch.softmax(x, dim=dim)
        other = 0 if dim in (-1, x.dim() - 1) else -1
        expect_close(
            f"softmax on {what}",
            got,
            want,
            mistakes={
                f"softmax over the wrong axis (normalized along dim {other}, expected dim {dim})":
                    torch.softmax(x, dim=other),
                "softmax over the wrong axis (always normalized along the last dim)":
                    torch.softmax(x, dim=-1) if dim not in (-1, x.dim() - 1) else None,
                "not normalized: divide exp(x) by its sum along dim":
                    torch.exp(x - x.amax(dim=dim, keepdim=True)),
                "this is log-softmax; exponentiate it":
                    torch.log_softmax(x, dim=dim),
            },
        )
    passed("softmax", len(cases))


# ----------------------------------------------------------------------------- task 2
def _attention_mistakes(q, k, v, mask):
    d = q.shape[-1]
    s = q @ k.transpose(-2, -1)

    def finish(scores, m=mask, dim=-1):
        if m is not None:
            scores = scores.masked_fill(~m, float("-inf"))
        w = torch.softmax(scores, dim=dim).nan_to_num(0.0)
        return w @ v, w

    out = {
        "scores scaled by 1/d instead of 1/√d": finish(s / d),
        "scores not scaled: divide q·kᵀ by √d": finish(s),
        "scores multiplied by √d instead of divided": finish(s * math.sqrt(d)),
        "softmax over the wrong axis (over queries, dim −2; it must normalize over keys, dim −1)": finish(s / math.sqrt(d), dim=-2),
    }
    if mask is not None:
        out["mask inverted: True means 'may attend' (torch's convention), False is blocked"] = finish(s / math.sqrt(d), ~mask)
        if mask.shape[-1] == mask.shape[-2]:
            out["mask transposed: rows are queries, columns are keys"] = finish(s / math.sqrt(d), mask.transpose(-2, -1))
    return out


def check_attention(attention) -> None:
    """Task 2: ``attention(q, k, v, mask=None) -> (output, weights)``."""
    g = torch.Generator().manual_seed(202)
    B, H, T, S, d, dv = 2, 3, 5, 6, 8, 4
    q = torch.randn(B, H, T, d, generator=g)
    k = torch.randn(B, H, S, d, generator=g)
    v = torch.randn(B, H, S, dv, generator=g)
    qs, ks, vs = q[..., :5, :], torch.randn(B, H, 5, d, generator=g), torch.randn(B, H, 5, dv, generator=g)
    rand_mask = torch.rand(T, S, generator=g) > 0.4
    rand_mask[:, 0] = True  # every query keeps at least one key
    square_mask = torch.rand(5, 5, generator=g) > 0.5
    square_mask[torch.arange(5), torch.arange(5)] = True
    square_mask[0, 1:] = False  # make it clearly non-symmetric
    square_mask[1:, 0] = True
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    padding = torch.ones(B, 1, 1, S, dtype=torch.bool)
    padding[1, ..., 4:] = False  # the second sequence has 4 real keys
    fully = rand_mask.clone()
    fully[2] = False  # query 2 may attend to nothing

    cases = [
        ("no mask", q, k, v, None),
        ("large logits (q·100)", q * 100, k, v, None),
        ("a boolean [T, S] mask", q, k, v, rand_mask),
        ("a non-symmetric square mask", qs, ks, vs, square_mask),
        ("the causal mask", qs, ks, vs, causal),
        ("a padding mask [B, 1, 1, S]", q, k, v, padding),
        ("a fully masked query row", q, k, v, fully),
    ]
    for what, q_, k_, v_, m in cases:
        res = call_student(attention, q_, k_, v_, mask=m, name="attention")
        if not (isinstance(res, tuple) and len(res) == 2):
            raise AssertionError(f"attention with {what}: expected a tuple (output, weights); got {type(res).__name__}")
        out, w = res
        Tq, Sk = q_.shape[-2], k_.shape[-2]
        expect_tensor(f"output with {what}", out, (B, H, Tq, dv), q_.dtype)
        expect_tensor(f"weights with {what}", w, (B, H, Tq, Sk), q_.dtype)
        if what == "a fully masked query row" and not torch.isfinite(w).all():
            raise AssertionError(
                "weights with a fully masked query row: NaN (softmax of a row of −inf). "
                "A query that may attend to nothing must get weights 0 and output 0, as torch's SDPA gives"
            )
        want_out = F.scaled_dot_product_attention(q_, k_, v_, attn_mask=m)
        _, want_w = scaled_dot_product_attention(q_, k_, v_, m, return_weights=True)
        mistakes = _attention_mistakes(q_, k_, v_, m)
        expect_close(f"weights with {what}", w, want_w, mistakes={msg: mw for msg, (_, mw) in mistakes.items()})
        expect_close(f"output with {what}", out, want_out, mistakes={msg: mo for msg, (mo, _) in mistakes.items()})
    passed("attention", len(cases))


# ----------------------------------------------------------------------------- task 3
def check_qk_variance(qk_variance) -> None:
    """Task 3: Var(q·k) ≈ d unscaled and ≈ 1 after dividing by √d, for q, k ~ N(0, I_d)."""
    n = 0
    for d in (16, 64, 256, 1024):
        for seed in (0, 1):
            raw = expect_number(f"qk_variance(d={d}, scaled=False)",
                                call_student(qk_variance, d, scaled=False, n_samples=20_000, seed=seed, name="qk_variance"))
            sc = expect_number(f"qk_variance(d={d}, scaled=True)",
                               call_student(qk_variance, d, scaled=True, n_samples=20_000, seed=seed, name="qk_variance"))
            n += 2
            if abs(raw - math.sqrt(d)) < 0.15 * math.sqrt(d):
                raise AssertionError(f"qk_variance(d={d}, scaled=False) = {raw:.3g} ≈ √d: that is the standard deviation, not the variance")
            if abs(raw / d - 1) > 0.1:
                raise AssertionError(f"qk_variance(d={d}, scaled=False) = {raw:.4g}; expected ≈ d = {d} (within 10%)")
            if abs(sc * d - 1) < 0.1 and d >= 16:
                raise AssertionError(f"qk_variance(d={d}, scaled=True) = {sc:.3g} ≈ 1/d: you scaled by d instead of √d")
            if abs(sc - raw) < 1e-9 * max(1.0, raw):
                raise AssertionError(f"qk_variance(d={d}, scaled=True) equals the unscaled value: the scaling is missing")
            if abs(sc - 1) > 0.1:
                raise AssertionError(f"qk_variance(d={d}, scaled=True) = {sc:.4g}; expected ≈ 1 (within 10%)")
    a = call_student(qk_variance, 64, scaled=False, n_samples=20_000, seed=0, name="qk_variance")
    b = call_student(qk_variance, 64, scaled=False, n_samples=20_000, seed=0, name="qk_variance")
    if expect_number("qk_variance", a) != expect_number("qk_variance", b):
        raise AssertionError("qk_variance is not reproducible: use the seed (torch.Generator().manual_seed(seed))")
    passed("qk_variance", n + 1)


# ----------------------------------------------------------------------------- task 4
def reference_mean_max_weight(d: int, scaled: bool, n_keys: int = 64, n_queries: int = 512, seed: int = 0) -> float:
    """The mean over queries of the largest attention weight, for q, k ~ N(0, I_d)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n_queries, d, generator=g)
    k = torch.randn(n_keys, d, generator=g)
    s = q @ k.T
    if scaled:
        s = s / math.sqrt(d)
    return torch.softmax(s, dim=-1).amax(dim=-1).mean().item()


def check_saturation(mean_max_weight, d_saturated) -> None:
    """Task 4: the mean max attention weight, and the d at which unscaled attention saturates."""
    n = 0
    for d in D_GRID:
        for scaled in (False, True):
            want = reference_mean_max_weight(d, scaled)
            got = expect_number(f"mean_max_weight(d={d}, scaled={scaled})",
                                call_student(mean_max_weight, d, scaled=scaled, name="mean_max_weight"))
            n += 1
            if not 1 / 64 - 1e-6 <= got <= 1 + 1e-6:
                raise AssertionError(
                    f"mean_max_weight(d={d}, scaled={scaled}) = {got:.3g}: a max weight lies in [1/n_keys, 1]; "
                    "take the softmax over keys, then the max over keys, then the mean over queries"
                )
            unscaled = reference_mean_max_weight(d, False)
            if scaled and abs(want - unscaled) > 0.1 and abs(got - unscaled) < 0.05:
                raise AssertionError(f"mean_max_weight(d={d}, scaled=True) = {got:.3f} looks unscaled: divide the scores by √d")
            if abs(got - want) > 0.05:
                raise AssertionError(
                    f"mean_max_weight(d={d}, scaled={scaled}) = {got:.3f}; expected ≈ {want:.3f} (±0.05)"
                )
    want_d = next(d for d in D_GRID if reference_mean_max_weight(d, False) > SATURATION_THRESHOLD)
    got_d = expect_number("D_SATURATED", d_saturated)
    if got_d != want_d:
        raise AssertionError(
            f"D_SATURATED = {got_d:g}; it is the smallest d in {D_GRID} whose unscaled mean max weight "
            f"exceeds {SATURATION_THRESHOLD} — read it off your table"
        )
    passed("saturation", n + 1)
