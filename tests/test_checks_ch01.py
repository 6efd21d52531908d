"""The Exercise 1 checks pass the reference answers and name the likely mistake otherwise.

Each wrong implementation below is a mistake students make; the check must fail on it with
a message that says what went wrong (and fail on the unfilled stub).
"""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.grading import ch01
from helpers import stub


# ----------------------------------------------------------------------------- answers
def softmax_ok(x, dim=-1):
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def attention_ok(q, k, v, mask=None, *, scale=None, axis=-1, invert=False, transpose=False, nan_ok=False):
    d = q.shape[-1]
    s = q @ k.transpose(-2, -1) * (1 / math.sqrt(d) if scale is None else scale)
    if mask is not None:
        m = mask.transpose(-2, -1) if transpose and mask.shape[-1] == mask.shape[-2] else mask
        s = s.masked_fill(m if invert else ~m, float("-inf"))
    w = torch.softmax(s, dim=axis)
    if not nan_ok:
        w = w.nan_to_num(0.0)
    return w @ v, w


def attention_finite_fill(q, k, v, mask=None):
    """Blocked scores set to −1e9: right everywhere except on a fully masked row (uniform, not 0)."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, -1e9)
    w = torch.softmax(s, dim=-1)
    return w @ v, w


def qk_variance_ok(d, scaled, n_samples=20_000, seed=0, *, stat="var", divisor=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n_samples, d, generator=g)
    k = torch.randn(n_samples, d, generator=g)
    dots = (q * k).sum(-1)
    if scaled:
        dots = dots / (math.sqrt(d) if divisor is None else divisor(d))
    return (dots.var() if stat == "var" else dots.std()).item()


# ----------------------------------------------------------------------------- task 1
def test_softmax_passes_and_prints_one_stable_line(capsys):
    ch01.check_softmax(softmax_ok)
    ch01.check_softmax(softmax_ok)
    assert capsys.readouterr().out == "✓ softmax: all 7 cases passed\n" * 2


def _inplace(x, dim=-1):
    x -= x.amax(dim=dim, keepdim=True)
    x.exp_()
    return x / x.sum(dim=dim, keepdim=True)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "softmax is not implemented yet"),
        (lambda x, dim=-1: torch.exp(x) / torch.exp(x).sum(dim=dim, keepdim=True), "NaN or inf"),
        (lambda x, dim=-1: softmax_ok(x, dim=0), "softmax over the wrong axis"),
        (lambda x, dim=-1: softmax_ok(x, dim=-1), "softmax over the wrong axis"),
        (lambda x, dim=-1: torch.exp(x - x.amax(dim=dim, keepdim=True)), "not normalized"),
        (lambda x, dim=-1: torch.log_softmax(x, dim=dim), "log-softmax"),
        (lambda x, dim=-1: softmax_ok(x, dim).float(), "expected dtype torch.float64"),
        (lambda x, dim=-1: softmax_ok(x, dim).reshape(-1), "expected shape"),
        (lambda x, dim=-1: softmax_ok(x, dim).tolist(), "expected a torch.Tensor"),
        (_inplace, "modified its input in place"),
        (lambda x, dim=-1: softmax_ok(x, dim) * 0.999, "wrong values"),
        (lambda x, dim=-1: torch.softmax(x, dim=dim), "softmax: calls torch.softmax"),
        (lambda x, dim=-1: torch.nn.functional.softmax(x, dim=dim), "softmax: calls torch.softmax"),
        (lambda x, dim=-1: x.softmax(dim), "softmax: calls torch.softmax"),
    ],
)
def test_softmax_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch01.check_softmax(wrong)


# ----------------------------------------------------------------------------- task 2
def test_attention_passes(capsys):
    ch01.check_attention(attention_ok)
    assert capsys.readouterr().out == "✓ attention: all 7 cases passed\n"


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "attention is not implemented yet"),
        (lambda q, k, v, mask=None: attention_ok(q, k, v, mask, scale=1 / q.shape[-1]), r"scaled by 1/d instead of 1/√d"),
        (lambda q, k, v, mask=None: attention_ok(q, k, v, mask, scale=1.0), "not scaled"),
        (lambda q, k, v, mask=None: attention_ok(q, k, v, mask, scale=math.sqrt(q.shape[-1])), "multiplied by √d"),
        (lambda q, k, v, mask=None: attention_ok(q, k, v, mask, axis=-2), "softmax over the wrong axis"),
        (lambda q, k, v, mask=None: attention_ok(q, k, v, mask, invert=True), "mask inverted"),
        (lambda q, k, v, mask=None: attention_ok(q, k, v, mask, transpose=True), "mask transposed"),
        (lambda q, k, v, mask=None: attention_ok(q, k, v, mask, nan_ok=True), "fully masked query row"),
        (lambda q, k, v, mask=None: attention_finite_fill(q, k, v, mask), "got uniform weights"),
        (lambda q, k, v, mask=None: attention_ok(q, k, v, mask)[0], "expected a tuple"),
        (lambda q, k, v, mask=None: attention_ok(q, k, v, mask)[::-1], "expected shape"),
        (lambda q, k, v, mask=None: (attention_ok(q, k, v, mask)[0].double(), attention_ok(q, k, v, mask)[1]), "expected dtype torch.float32"),
        (lambda q, k, v, mask=None: (torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                                     attention_ok(q, k, v, mask)[1]), "attention: calls F.scaled_dot_product_attention"),
    ],
)
def test_attention_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch01.check_attention(wrong)


# ----------------------------------------------------------------------------- task 3
def test_qk_variance_passes(capsys):
    ch01.check_qk_variance(qk_variance_ok)
    assert capsys.readouterr().out == "✓ qk_variance: all 18 cases passed\n"


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "qk_variance is not implemented yet"),
        (lambda d, scaled, n_samples=20_000, seed=0: qk_variance_ok(d, scaled, n_samples, seed, stat="std"), "standard deviation"),
        (lambda d, scaled, n_samples=20_000, seed=0: qk_variance_ok(d, scaled, n_samples, seed, divisor=lambda d: d), r"scaled by d instead of √d"),
        (lambda d, scaled, n_samples=20_000, seed=0: qk_variance_ok(d, False, n_samples, seed), "scaling is missing"),
        (lambda d, scaled, n_samples=20_000, seed=0: qk_variance_ok(d, scaled, n_samples, int(torch.randint(0, 10**6, ()))), "not reproducible"),
        (lambda d, scaled, n_samples=20_000, seed=0: qk_variance_ok(d, scaled, 20, seed), "expected ≈"),
        (lambda d, scaled, n_samples=20_000, seed=0: float("nan"), "expected a finite number"),
        (lambda d, scaled, n_samples=20_000, seed=0: 1.0 if scaled else float(d), "the theory's value"),
        (lambda d, scaled, n_samples=20_000, seed=0: qk_variance_ok(d, scaled, 20_000, 0), "another seed"),
        (lambda d, scaled, n_samples=20_000, seed=0: qk_variance_ok(d, scaled, 20_000, seed), "another seed or another n_samples"),
    ],
)
def test_qk_variance_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch01.check_qk_variance(wrong)


# ----------------------------------------------------------------------------- task 4
def test_saturation_passes(capsys):
    want = next(d for d in ch01.D_GRID if ch01.reference_mean_max_weight(d, False) > ch01.SATURATION_THRESHOLD)
    assert want == 64  # the value the exercise's plot shows; it follows from the seeded data
    ch01.check_saturation(ch01.reference_mean_max_weight, want)
    assert capsys.readouterr().out == "✓ saturation: all 11 cases passed\n"


def _mmw(d, scaled, n_keys=64, n_queries=512, seed=0, *, reduce_over="keys", scale=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n_queries, d, generator=g)
    k = torch.randn(n_keys, d, generator=g)
    s = q @ k.T / (math.sqrt(d) if scaled and scale else 1)
    w = torch.softmax(s, dim=-1)
    return (w.amax(-1) if reduce_over == "keys" else w.amax(0)).mean().item()


@pytest.mark.parametrize(
    "wrong_fn, wrong_d, message",
    [
        (stub, 64, "mean_max_weight is not implemented yet"),
        (ch01.reference_mean_max_weight, 256, "D_SATURATED = 256"),
        (ch01.reference_mean_max_weight, 16, "D_SATURATED = 16"),
        (lambda d, scaled, **kw: _mmw(d, scaled, scale=False), 64, "looks unscaled"),
        (lambda d, scaled, **kw: _mmw(d, scaled, reduce_over="queries"), 64, r"expected ≈|\[1/n_keys, 1\]"),
        (lambda d, scaled, **kw: 1.0 - _mmw(d, scaled), 64, "expected ≈"),
    ],
)
def test_saturation_names_the_mistake(wrong_fn, wrong_d, message):
    with pytest.raises(AssertionError, match=message):
        ch01.check_saturation(wrong_fn, wrong_d)


# ----------------------------------------------------------------------------- task 5 (transfer)
def logit_scale_ok(d, mu_q, sigma_q, mu_k, sigma_k):
    return 1 / math.sqrt(d * sigma_k ** 2 * (sigma_q ** 2 + mu_q ** 2))


def test_logit_scale_passes(capsys):
    ch01.check_logit_scale(logit_scale_ok)
    assert capsys.readouterr().out == "✓ logit_scale: all 12 cases passed\n"


def test_logit_scale_is_what_sampling_measures():
    """The reference is a derivation: sampled rows of scores, scaled by it, have variance ≈ 1 over the keys."""
    g = torch.Generator().manual_seed(0)
    for d, mq, sq, mk, sk in [(32, 1.0, 0.5, 2.0, 1.5), (200, -0.7, 1.2, 0.4, 0.3)]:
        q = mq + sq * torch.randn(400, d, generator=g, dtype=torch.float64)
        k = mk + sk * torch.randn(2000, d, generator=g, dtype=torch.float64)
        spread = (ch01._logit_scale(d, mq, sq, mk, sk) * q @ k.T).var(dim=-1).mean().item()
        assert abs(spread - 1) < 0.05, spread


def _wrong_first_only(d, mu_q, sigma_q, mu_k, sigma_k):
    """Right on the sheet's first example (the centred, unit-variance case), 1/√d elsewhere."""
    return 1 / math.sqrt(d)


@pytest.mark.parametrize("wrong, message", [
    (stub, "logit_scale is not implemented yet"),
    (lambda d, mq, sq, mk, sk: 1 / math.sqrt(d * (sq ** 2 * sk ** 2 + sq ** 2 * mk ** 2 + mq ** 2 * sk ** 2)),
     "over all \\(q, k\\) pairs"),
    (lambda d, mq, sq, mk, sk: 1 / math.sqrt(d * sq ** 2 * sk ** 2), "the means are ignored"),
    (_wrong_first_only, "the chapter's 1/√d"),
    (lambda d, mq, sq, mk, sk: 1 / math.sqrt(d * (sq ** 2 + mq ** 2) * (sk ** 2 + mk ** 2)), "E\\[\\(q·k\\)²\\]|over all \\(q, k\\) pairs"),
    (lambda d, mq, sq, mk, sk: logit_scale_ok(d, mq, sq, mk, sk) ** 2, "returned 1/variance"),
    (lambda d, mq, sq, mk, sk: 1 / logit_scale_ok(d, mq, sq, mk, sk), "returned the standard deviation"),
    (lambda d, mq, sq, mk, sk: 1 / math.sqrt(d * sk * (sq + mq ** 2)), "used σ where σ² belongs"),
    (lambda d, mq, sq, mk, sk: 1.01 * logit_scale_ok(d, mq, sq, mk, sk), "expected"),
    (lambda *a: "0.125", "logit_scale"),
])
def test_logit_scale_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch01.check_logit_scale(wrong)


# ----------------------------------------------------------------------------- task 6 (transfer)
def kernel_ok(x_query, x_train, bandwidth, *, bias=True, h_power=2, two=1.0, sign=1.0):
    h2 = bandwidth ** h_power
    q = torch.cat([x_query / h2, torch.ones(len(x_query), 1, dtype=x_query.dtype)], dim=1)
    b = -(x_train ** 2).sum(-1, keepdim=True) / (2 * h2) if bias else torch.zeros(len(x_train), 1, dtype=x_train.dtype)
    k = torch.cat([two * x_train, two * b], dim=1)
    return sign * q, k


def test_kernel_queries_keys_passes(capsys):
    ch01.check_kernel_queries_keys(kernel_ok)
    assert capsys.readouterr().out == "✓ kernel_queries_keys: all 8 cases passed\n"


def kernel_table(x_query, x_train, bandwidth):
    """Right weights the wrong way: q is the log-weight table [T, S], k the identity: not attention."""
    w = ch01.nadaraya_watson_weights(x_query, x_train, bandwidth)
    return w.log(), torch.eye(len(x_train), dtype=x_train.dtype)


def kernel_first_coordinate_only(x_query, x_train, bandwidth):
    """Right for the sheet's 1-D demo only: the key's bias uses the first coordinate, not |x_i|²."""
    q, k = kernel_ok(x_query, x_train, bandwidth)
    k[:, -1] = -x_train[:, 0] ** 2 / (2 * bandwidth ** 2)
    return q, k


def kernel_two_p_features(x_query, x_train, bandwidth):
    """A right answer with 2p features: one bias per coordinate, summed by the dot product."""
    h2 = bandwidth ** 2
    q = torch.cat([x_query / h2, torch.ones_like(x_query)], dim=1)
    k = torch.cat([x_train, -x_train ** 2 / (2 * h2)], dim=1)
    return q, k


def test_kernel_queries_keys_accepts_any_feature_layout(capsys):
    ch01.check_kernel_queries_keys(kernel_two_p_features)
    assert capsys.readouterr().out == "✓ kernel_queries_keys: all 8 cases passed\n"


def kernel_row_constant_from_keys(x_query, x_train, bandwidth):
    """Queries carry the mean of the training points: right weights, but q depends on the keys' data."""
    q, k = kernel_ok(x_query, x_train, bandwidth)
    return q + x_train.mean(), k


@pytest.mark.parametrize("wrong, message", [
    (stub, "kernel_queries_keys is not implemented yet"),
    (lambda *a: kernel_ok(*a, bias=False), "the key's own term −\\|x_i\\|²/\\(2h²\\) is missing"),
    (lambda *a: kernel_ok(*a, h_power=1), "the bandwidth enters squared"),
    (lambda *a: kernel_ok(*a, two=2.0), "a factor 2 is missing"),
    (lambda *a: kernel_ok(*a, sign=-1.0), "sign flipped"),
    (kernel_table, "the queries changed when only the training points changed"),
    (kernel_first_coordinate_only, "wrong values|the key's own term"),
    (kernel_row_constant_from_keys, "the queries changed when only the training points changed"),
    (lambda xq, xt, h: (kernel_ok(xq, xt, h)[0], kernel_ok(xq, xt, h)[1] + xq.mean()), "key i must be a function of x_i alone"),
    (lambda *a: kernel_ok(*a)[0], "expected a tuple"),
    (lambda xq, xt, h: (kernel_ok(xq, xt, h)[0], kernel_ok(xq, xt, h)[1][:, :-1]), "the same feature width"),
    (lambda xq, xt, h: kernel_ok(xq, xt, h)[::-1], "one row per query"),
    (lambda xq, xt, h: (1.01 * kernel_ok(xq, xt, h)[0], kernel_ok(xq, xt, h)[1]), "wrong values"),
])
def test_kernel_queries_keys_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch01.check_kernel_queries_keys(wrong)
