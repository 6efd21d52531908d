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
        (lambda q, k, v, mask=None: attention_ok(q, k, v, mask)[0], "expected a tuple"),
        (lambda q, k, v, mask=None: attention_ok(q, k, v, mask)[::-1], "expected shape"),
        (lambda q, k, v, mask=None: (attention_ok(q, k, v, mask)[0].double(), attention_ok(q, k, v, mask)[1]), "expected dtype torch.float32"),
    ],
)
def test_attention_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch01.check_attention(wrong)


# ----------------------------------------------------------------------------- task 3
def test_qk_variance_passes(capsys):
    ch01.check_qk_variance(qk_variance_ok)
    assert capsys.readouterr().out == "✓ qk_variance: all 17 cases passed\n"


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
