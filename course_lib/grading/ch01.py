"""Checks for Exercise 1 (attention and scaling).

Tasks, in the order of the exercise notebook:

1. ``softmax(x, dim=-1)`` — numerically stable, any dimension;
2. ``attention(q, k, v, mask=None)`` → ``(output, weights)`` — scaled dot-product attention
   with a boolean mask (True = may attend); a fully masked query row gets zeros;
3. ``qk_variance(d, scaled, n_samples=20_000, seed=0)`` — the measured Var(q·k);
4. ``mean_max_weight(d, scaled, …)`` and the number ``D_SATURATED`` read off its plot;
5. (transfer) ``logit_scale(d, mu_q, sigma_q, mu_k, sigma_k)`` — the scale that gives the scores of one
   query over many keys variance 1 when the entries of q and k are not centred (derived, then sampled);
6. (transfer) ``kernel_queries_keys(x_query, x_train, bandwidth)`` → ``(q, k)`` — Nadaraya–Watson kernel
   regression written as attention: ``softmax(q kᵀ)`` must be the Gaussian-kernel weight matrix, with each
   query a function of its own point and each key of its own point.

Each check compares with PyTorch (or with course_lib's reference) on seeded cases and names
the likely mistake when the student's result matches a known wrong answer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course_lib.attention import scaled_dot_product_attention
from course_lib.grading import call_student, expect_close, expect_number, expect_tensor, passed
from course_lib.grading.forbid import call_without

__all__ = [
    "check_softmax",
    "check_attention",
    "check_qk_variance",
    "check_saturation",
    "D_GRID",
    "SATURATION_THRESHOLD",
    "reference_mean_max_weight",
    "check_logit_scale",
    "LOGIT_SCALE_EXAMPLES",
    "check_kernel_queries_keys",
    "nadaraya_watson_weights",
]

D_GRID = (4, 16, 64, 256, 1024)


_SOFTMAXES = [(torch, "softmax"), (torch.nn.functional, "softmax"), (torch.Tensor, "softmax"),
              (torch.special, "softmax")]
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
        got = call_without(softmax, _SOFTMAXES, "calls torch.softmax (or F.softmax): the task asks you to write it yourself",
                           x, dim=dim, name="softmax")
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
        if not mask.any(-1).all():
            w = torch.softmax((s / math.sqrt(d)).masked_fill(~mask, -1e9), dim=-1)
            out["a fully masked query row got uniform weights (a large finite negative such as −1e9 instead of −inf): "
                "a query that may attend to nothing must get weights 0 and output 0"] = (w @ v, w)
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
        res = call_without(attention, [(F, "scaled_dot_product_attention")],
                           "calls F.scaled_dot_product_attention: the task asks you to write it yourself",
                           q_, k_, v_, mask=m, name="attention")
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
            if raw == d or sc == 1.0:
                raise AssertionError(f"qk_variance(d={d}, seed={seed}) returned exactly {raw if raw == d else sc:g}, "
                                     "the theory's value: a sample variance never hits it exactly — draw the pairs "
                                     "and measure it")
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
    other = expect_number("qk_variance", call_student(qk_variance, 64, scaled=False, n_samples=20_000, seed=7,
                                                      name="qk_variance"))
    small = expect_number("qk_variance", call_student(qk_variance, 64, scaled=False, n_samples=200, seed=0,
                                                      name="qk_variance"))
    if other == a or small == a:
        raise AssertionError("qk_variance gives the same value for another seed or another n_samples: it must draw "
                             "n_samples pairs from a generator seeded with seed and measure their variance")
    passed("qk_variance", n + 2)


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


# ----------------------------------------------------------------------------- task 5 (transfer)
def _logit_scale(d: int, mu_q: float, sigma_q: float, mu_k: float, sigma_k: float) -> float:
    """c with E_q[Var_k(c · q·k | q)] = 1: the spread of one query's scores over many keys.

    With q fixed, q·k = Σ_j q_j k_j has variance Σ_j q_j² σ_k² over the keys; averaged over queries,
    E[q_j²] = σ_q² + μ_q². The key mean μ_k only shifts the whole row by μ_k Σ_j q_j, which the
    softmax ignores.
    """
    return 1.0 / math.sqrt(d * sigma_k ** 2 * (sigma_q ** 2 + mu_q ** 2))


def _logit_scale_mistakes(d, mq, sq, mk, sk) -> dict[str, float]:
    row = d * sk ** 2 * (sq ** 2 + mq ** 2)
    pair = d * (sq ** 2 * sk ** 2 + sq ** 2 * mk ** 2 + mq ** 2 * sk ** 2)
    return {
        "this normalises the variance over all (q, k) pairs, which counts the key mean μ_k; but μ_k only shifts a "
        "whole row of scores by μ_k·Σ_j q_j, and the softmax ignores a shift of its row: the spread over the keys "
        "of one query is Σ_j q_j² σ_k²": 1 / math.sqrt(pair),
        "the means are ignored (1/√(d σ_q² σ_k²), which is the chapter's 1/√d when σ = 1): for a fixed query the keys' spread is Σ_j q_j² σ_k², and "
        "E[q_j²] = σ_q² + μ_q², not σ_q²": 1 / math.sqrt(d * sq ** 2 * sk ** 2),
        "this is 1/√d, the scale for mean-0, variance-1 entries only: redo the derivation with μ and σ":
            1 / math.sqrt(d),
        "this normalises E[(q·k)²] over pairs, (σ_q² + μ_q²)(σ_k² + μ_k²) per coordinate: the key mean only shifts "
        "a row, subtract it (a variance over the keys, not a second moment)":
            1 / math.sqrt(d * (sq ** 2 + mq ** 2) * (sk ** 2 + mk ** 2)),
        "returned 1/variance: the scale is 1/√variance (a variance scales with c², not c)": 1 / row,
        "returned the standard deviation of the scores: the scale divides by it, c = 1/std": math.sqrt(row),
        "used σ where σ² belongs (sigma_q, sigma_k are standard deviations)":
            1 / math.sqrt(d * sk * (sq + mq ** 2)),
    }


LOGIT_SCALE_EXAMPLES = [  # d, mu_q, sigma_q, mu_k, sigma_k: the sheet prints these
    (64, 0.0, 1.0, 0.0, 1.0),
    (64, 0.0, 2.0, 0.0, 0.5),
    (64, 1.0, 1.0, 0.0, 1.0),
    (64, 0.0, 1.0, 1.0, 1.0),
]


def check_logit_scale(logit_scale) -> None:
    """Task 5: the scale that gives one query's scores over the keys variance 1, for non-centred q and k."""
    g = torch.Generator().manual_seed(105)
    cases = list(LOGIT_SCALE_EXAMPLES)
    for _ in range(8):                                # sizes and moments the sheet does not print
        d = int(torch.randint(3, 2048, (1,), generator=g))
        mq, mk = (round(float(x), 3) for x in 3 * torch.rand(2, generator=g) - 1)
        sq, sk = (round(float(x), 3) for x in 0.2 + 2 * torch.rand(2, generator=g))
        cases.append((d, mq, sq, mk, sk))
    for d, mq, sq, mk, sk in cases:
        name = f"logit_scale(d={d}, mu_q={mq}, sigma_q={sq}, mu_k={mk}, sigma_k={sk})"
        got = expect_number(name, call_student(logit_scale, d, mq, sq, mk, sk, name="logit_scale"))
        want = _logit_scale(d, mq, sq, mk, sk)
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        for message, alt in _logit_scale_mistakes(d, mq, sq, mk, sk).items():
            if not math.isclose(alt, want, rel_tol=1e-6) and math.isclose(got, alt, rel_tol=1e-6):
                raise AssertionError(f"{name}: {message}")
        raise AssertionError(f"{name}: expected {want:.6g}; got {got:.6g}")
    passed("logit_scale", len(cases))


# ----------------------------------------------------------------------------- task 6 (transfer)
def nadaraya_watson_weights(x_query: torch.Tensor, x_train: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Gaussian-kernel weights K(x, x_i) / Σ_l K(x, x_l), K = exp(−|x − x_i|² / (2h²)): [T, p], [S, p] → [T, S]."""
    return torch.softmax(-torch.cdist(x_query, x_train) ** 2 / (2 * bandwidth ** 2), dim=-1)


def _kernel_mistakes(xq, xt, h) -> dict[str, torch.Tensor]:
    sq = torch.cdist(xq, xt) ** 2
    return {
        "the key's own term −|x_i|²/(2h²) is missing: softmax(x·x_i / h²) favours training points of large norm, "
        "not near ones; append it to each key as an extra coordinate (and a 1 to each query)":
            torch.softmax(xq @ xt.T / h ** 2, dim=-1),
        "the bandwidth enters squared: exp(−|x − x_i|² / (2h²)), not / (2h)": torch.softmax(-sq / (2 * h), dim=-1),
        "a factor 2 is missing: the kernel is exp(−|x − x_i|² / (2h²)), so q·k_i = (x·x_i − |x_i|²/2) / h²":
            torch.softmax(-sq / h ** 2, dim=-1),
        "sign flipped: the weights must fall with the distance (−|x − x_i|²), not grow":
            torch.softmax(sq / (2 * h ** 2), dim=-1),
    }


def check_kernel_queries_keys(kernel_queries_keys) -> None:
    """Task 6: queries and keys whose softmax(q kᵀ) is the Nadaraya–Watson weight matrix."""
    g = torch.Generator().manual_seed(106)
    cases = [(5, 7, 1, 0.5), (8, 20, 1, 0.2), (6, 9, 2, 1.0), (3, 11, 3, 0.7)]
    for _ in range(4):                                # sizes and bandwidths the sheet does not use
        T, S, p = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((2, 12), (3, 30), (1, 5)))
        cases.append((T, S, p, round(0.2 + float(torch.rand(1, generator=g)), 3)))
    for T, S, p, h in cases:
        name = f"kernel_queries_keys(x_query [{T}, {p}], x_train [{S}, {p}], bandwidth={h})"
        xq = torch.randn(T, p, generator=g, dtype=torch.float64)
        xt = 1.5 * torch.randn(S, p, generator=g, dtype=torch.float64)
        res = call_student(kernel_queries_keys, xq.clone(), xt.clone(), h, name="kernel_queries_keys")
        if not (isinstance(res, tuple) and len(res) == 2):
            raise AssertionError(f"{name}: expected a tuple (q, k); got {type(res).__name__}")
        q, k = res
        for what, t, rows in (("q", q, T), ("k", k, S)):
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != rows:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise AssertionError(f"{name}: {what} must be a 2-D tensor with one row per "
                                     f"{'query' if what == 'q' else 'training point'} ({rows} rows); got {shape}")
        if q.shape[1] != k.shape[1]:
            raise AssertionError(f"{name}: q and k need the same feature width; got {q.shape[1]} and {k.shape[1]}")
        # The point of attention: a query is computed from its own point only, a key from its own point only.
        q_other, k_other = call_student(kernel_queries_keys, xq.clone(), xt.flip(0) + 1.0, h,
                                        name="kernel_queries_keys")
        if isinstance(q_other, torch.Tensor) and q_other.shape == q.shape and not torch.allclose(
                q_other.double(), q.double(), atol=1e-9):
            raise AssertionError(f"{name}: the queries changed when only the training points changed: "
                                 "a query must depend on its own x alone (the keys carry the training points; "
                                 "a precomputed [T, S] table of weights is not a query)")
        _, k_perm = call_student(kernel_queries_keys, 2 * xq + 1.0, xt.flip(0).clone(), h,
                                 name="kernel_queries_keys")
        if isinstance(k_perm, torch.Tensor) and k_perm.shape == k.shape and not torch.allclose(
                k_perm.double(), k.double().flip(0), atol=1e-9):
            raise AssertionError(f"{name}: a key changed when the queries (or the order of the other points) changed: "
                                 "key i must be a function of x_i alone")
        got = torch.softmax(q.double() @ k.double().T, dim=-1)
        expect_close(f"{name}: softmax(q kᵀ)", got, nadaraya_watson_weights(xq, xt, h),
                     mistakes=_kernel_mistakes(xq, xt, h), atol=1e-6, rtol=1e-5)  # float32 answers too
    passed("kernel_queries_keys", len(cases))
