"""The Exercise 9 checks pass the reference answers and name the likely mistake otherwise.

Each wrong answer below is written the way a student would write it (not taken from the
grading module), so the checks are shown to recognise the mistake itself.
"""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.grading import ch09
from helpers import stub


# ----------------------------------------------------------------------------- task 1
def ln(x, gamma, beta, eps, *, unbiased=False, outside=False, dim=-1, affine=True, centre=True, order="ok"):
    mu = x.mean(dim, keepdim=True) if centre else 0
    if centre:
        var = torch.var(x, dim=dim, keepdim=True, unbiased=unbiased)
    else:
        var = (x * x).mean(dim, keepdim=True)
    xhat = (x - mu) / (torch.sqrt(var) + eps) if outside else (x - mu) / torch.sqrt(var + eps)
    if not affine:
        return xhat
    return (xhat + beta) * gamma if order == "swapped" else xhat * gamma + beta


def ln_fp32(x, gamma, beta, eps):
    """Half-precision statistics computed in fp32, as torch does."""
    if x.dtype != torch.float16:
        return ln(x, gamma, beta, eps)
    return ln(x.float(), gamma.float(), beta.float(), eps).half()


def test_layer_norm_passes(capsys):
    ch09.check_layer_norm(ln)
    ch09.check_layer_norm(ln_fp32)
    ch09.check_layer_norm(lambda x, g, b, eps: torch.nn.functional.layer_norm(x, x.shape[-1:], g, b, eps))
    assert capsys.readouterr().out == "✓ layer_norm: all 7 cases passed\n" * 3


@pytest.mark.parametrize("wrong, message", [
    (stub, "layer_norm_forward is not implemented yet"),
    (lambda x, g, b, e: ln(x, g, b, e, unbiased=True), "unbiased variance"),
    (lambda x, g, b, e: ln(x, g, b, e, outside=True), "eps outside the square root"),
    (lambda x, g, b, e: ln(x, g, b, e, dim=0), "normalised over the wrong dimension"),
    (lambda x, g, b, e: ln(x, g, b, e, dim=-2), "normalised over the wrong dimension \\(dim=-2\\)"),
    (lambda x, g, b, e: (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + e) * g + b, "over the whole tensor"),
    (lambda x, g, b, e: ln(x, g, b, e, affine=False), "γ and β missing"),
    (lambda x, g, b, e: ln(x, g, b, e, order="swapped"), "β added before multiplying by γ"),
    (lambda x, g, b, e: ln(x, g, b, e, centre=False), "the mean was not subtracted"),
    (lambda x, g, b, e: ln(x, g, b, e)[..., :-1], "expected shape"),
    (lambda x, g, b, e: ln(x, g, b, e) + 0.1, "wrong values"),
])
def test_layer_norm_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch09.check_layer_norm(wrong)


# ----------------------------------------------------------------------------- task 2
def rms(x, gamma, eps, *, centre=False, outside=False, dim=-1, total="mean", affine=True):
    if centre:
        x = x - x.mean(dim, keepdim=True)
    if total == "mean":
        ms = x.pow(2).mean(dim, keepdim=True)
    elif total == "sum":
        ms = x.pow(2).sum(dim, keepdim=True)
    else:
        ms = x.abs().mean(dim, keepdim=True)
    y = x / (ms.sqrt() + eps) if outside else x * torch.rsqrt(ms + eps)
    return y * gamma if affine else y


def test_rms_norm_passes(capsys):
    ch09.check_rms_norm(rms)
    ch09.check_rms_norm(lambda x, g, eps: torch.nn.functional.rms_norm(x, x.shape[-1:], g, eps))
    assert capsys.readouterr().out == "✓ rms_norm: all 7 cases passed\n" * 2


@pytest.mark.parametrize("wrong, message", [
    (stub, "rms_norm_forward is not implemented yet"),
    (lambda x, g, e: rms(x, g, e, centre=True), "subtracted the mean in RMSNorm"),
    (lambda x, g, e: rms(x, g, e, outside=True), "eps outside the square root"),
    (lambda x, g, e: rms(x, g, e, dim=0), "normalised over the wrong dimension"),
    (lambda x, g, e: rms(x, g, e, dim=-2), "wrong dimension \\(dim=-2\\)"),
    (lambda x, g, e: x / torch.sqrt(x.pow(2).mean() + e) * g, "over the whole tensor"),
    (lambda x, g, e: rms(x, g, e, total="sum"), "sum of squares instead of their mean"),
    (lambda x, g, e: rms(x, g, e, total="abs"), "without squaring"),
    (lambda x, g, e: rms(x, g, e, affine=False), "γ missing"),
    (lambda x, g, e: rms(x, g, e).sum(-1), "expected shape"),
])
def test_rms_norm_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch09.check_rms_norm(wrong)


# ----------------------------------------------------------------------------- task 3
def block(x, attn, ffn, norm1, norm2, placement):
    if placement == "pre":
        x = x + attn(norm1(x))
        return x + ffn(norm2(x))
    x = norm1(x + attn(x))
    return norm2(x + ffn(x))


def always_post(x, attn, ffn, norm1, norm2, placement):
    return block(x, attn, ffn, norm1, norm2, "post")


def always_pre(x, attn, ffn, norm1, norm2, placement):
    return block(x, attn, ffn, norm1, norm2, "pre")


def one_norm(x, attn, ffn, norm1, norm2, placement):
    return block(x, attn, ffn, norm1, norm1, placement)


def parallel(x, attn, ffn, norm1, norm2, placement):
    if placement == "pre":
        return x + attn(norm1(x)) + ffn(norm2(x))
    h = norm1(x + attn(x))
    return norm2(h + ffn(x))


def no_residual(x, attn, ffn, norm1, norm2, placement):
    if placement == "pre":
        return ffn(norm2(attn(norm1(x))))
    return norm2(ffn(norm1(attn(x))))


def norm_on_output(x, attn, ffn, norm1, norm2, placement):
    if placement == "post":
        return block(x, attn, ffn, norm1, norm2, placement)
    x = x + norm1(attn(x))
    return x + norm2(ffn(x))


def test_block_passes(capsys):
    ch09.check_block(block)
    assert capsys.readouterr().out == "✓ block: all 6 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "block_forward is not implemented yet"),
    (always_post, "norm applied after the residual add \\(post-LN\\) when pre-LN was asked"),
    (always_pre, "pre-LN computed when post-LN was asked"),
    (one_norm, "the same norm used for both sub-layers"),
    (parallel, "the FFN was applied to the block input x"),
    (no_residual, "the residual connection is missing"),
    (norm_on_output, "normalised the sub-layer's output instead of its input"),
])
def test_block_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch09.check_block(wrong)


def test_block_post_mistakes_are_caught_too():
    """A block correct for pre-LN but wrong for post-LN (the parallel FFN only there) still fails."""
    def half_right(x, attn, ffn, norm1, norm2, placement):
        return block(x, attn, ffn, norm1, norm2, "pre") if placement == "pre" else parallel(x, attn, ffn, norm1, norm2, "post")
    with pytest.raises(AssertionError, match="placement='post'.*the FFN was applied to the block input x"):
        ch09.check_block(half_right)


# ----------------------------------------------------------------------------- task 4
def prms(x, gamma, p, eps, *, k_of=lambda p, n: math.ceil(p * n), denom="k", only_first=False, centre=False):
    n = x.shape[-1]
    k = max(1, k_of(p, n))
    if centre:
        x = x - x[..., :k].mean(-1, keepdim=True)
    s = x[..., :k].pow(2).sum(-1, keepdim=True)
    ms = s / (k if denom == "k" else n)
    if only_first:
        y = x.clone()
        y[..., :k] = x[..., :k] / torch.sqrt(ms + eps)
        return y * gamma
    return x / torch.sqrt(ms + eps) * gamma


def test_prms_norm_passes(capsys):
    ch09.check_prms_norm(prms)
    assert capsys.readouterr().out == "✓ prms_norm: all 7 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "prms_norm_forward is not implemented yet"),
    (lambda x, g, p, e: prms(x, g, 1.0, e), "the RMS was taken over all n entries"),
    (lambda x, g, p, e: prms(x, g, p, e, k_of=lambda p, n: int(p * n)), "k rounded down"),
    (lambda x, g, p, e: prms(x, g, p, e, denom="n"), "divided by n"),
    (lambda x, g, p, e: prms(x, g, p, e, only_first=True), "only the first k entries were normalised"),
    (lambda x, g, p, e: prms(x, g, p, e, centre=True), "subtracted the mean"),
    (lambda x, g, p, e: prms(x, g, p, e) / g, "γ missing"),
    (lambda x, g, p, e: prms(x, g, p, e)[..., : math.ceil(p * x.shape[-1])], "expected shape"),
])
def test_prms_norm_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch09.check_prms_norm(wrong)
