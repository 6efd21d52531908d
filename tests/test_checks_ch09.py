"""The Exercise 9 checks pass the reference answers and name the likely mistake otherwise.

Each wrong answer below is written the way a student would write it (not taken from the
grading module), so the checks are shown to recognise the mistake itself.
"""

from __future__ import annotations

import math

import pytest
import torch

from course_lib import norms
from course_lib.grading import ch09
from course_lib.norms import rms_norm as imported_rms_norm
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


def layer_norm_module(x, gamma, beta, eps):
    m = torch.nn.LayerNorm(x.shape[-1], eps=eps, dtype=x.dtype)
    with torch.no_grad():
        m.weight.copy_(gamma), m.bias.copy_(beta)
    return m(x).detach()


def rms_norm_module(x, gamma, eps):
    m = torch.nn.RMSNorm(x.shape[-1], eps=eps, dtype=x.dtype)
    with torch.no_grad():
        m.weight.copy_(gamma)
    return m(x).detach()


def test_layer_norm_passes(capsys):
    ch09.check_layer_norm(ln)
    ch09.check_layer_norm(ln_fp32)
    assert capsys.readouterr().out == "✓ layer_norm: all 7 cases passed\n" * 2


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
    # right numbers the wrong way: the task is the formula, the library is the check's reference
    (lambda x, g, b, e: torch.nn.functional.layer_norm(x, x.shape[-1:], g, b, e), "a library norm .* does the work here"),
    (lambda x, g, b, e: torch.layer_norm(x, x.shape[-1:], g, b, e), "a library norm .* does the work here"),
    (layer_norm_module, "a library norm .* does the work here"),
    (lambda x, g, b, e: norms.layer_norm(x, g, b, e), "a library norm .* does the work here"),
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
    assert capsys.readouterr().out == "✓ rms_norm: all 7 cases passed\n"


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
    (lambda x, g, e: torch.nn.functional.rms_norm(x, x.shape[-1:], g, e), "a library norm .* does the work here"),
    (rms_norm_module, "a library norm .* does the work here"),
    (lambda x, g, e: imported_rms_norm(x, g, e), "your function calls `imported_rms_norm`"),
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
    (lambda x, g, p, e: norms.rms_norm(x, g, e, p=p), "a library norm .* does the work here"),
])
def test_prms_norm_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch09.check_prms_norm(wrong)


# ----------------------------------------------------------------------------- task 5 (transfer)
def ln_backward(x, gamma, grad_y, eps, *, mean_term=True, var_term=True, use_gamma=True, eps_in=True,
                dgamma="xhat", reduce="sum", keep_shape=False):
    n = x.shape[-1]
    mu = x.mean(-1, keepdim=True)
    sigma = torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + (eps if eps_in else 0.0))
    xhat = (x - mu) / sigma
    g = grad_y * gamma if use_gamma else grad_y
    dx = g
    if mean_term:
        dx = dx - g.mean(-1, keepdim=True)
    if var_term:
        dx = dx - xhat * (g * xhat).mean(-1, keepdim=True)
    dx = dx / sigma
    red = (lambda t: t.reshape(-1, n).sum(0)) if reduce == "sum" else (lambda t: t.reshape(-1, n).mean(0))
    if keep_shape:
        red = lambda t: t                                    # noqa: E731
    dg = red(grad_y * (xhat if dgamma == "xhat" else x))
    return dx, dg, red(grad_y)


def ln_backward_autograd(x, gamma, grad_y, eps):
    """Right numbers, by asking autograd: the task is to derive them."""
    x = x.clone().requires_grad_(True)
    g, b = gamma.clone().requires_grad_(True), torch.zeros_like(gamma, requires_grad=True)
    torch.nn.functional.layer_norm(x, (x.shape[-1],), g, b, eps).backward(grad_y)
    return x.grad, g.grad, b.grad


def ln_backward_2d_only(x, gamma, grad_y, eps):
    """Right for [T, n] inputs, but γ's and β's gradients summed over dim 0 only."""
    dx, _, _ = ln_backward(x, gamma, grad_y, eps)
    xhat = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
    return dx, (grad_y * xhat).sum(0), grad_y.sum(0)


def test_layer_norm_backward_passes(capsys):
    ch09.check_layer_norm_backward(ln_backward)
    assert capsys.readouterr().out == "✓ layer_norm_backward: all 7 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "layer_norm_backward is not implemented yet"),
    (lambda *a: ln_backward(*a, mean_term=False), "μ treated as a constant"),
    (lambda *a: ln_backward(*a, var_term=False), "σ treated as a constant"),
    (lambda *a: ln_backward(*a, mean_term=False, var_term=False), "μ and σ both treated as constants"),
    (lambda *a: ln_backward(*a, use_gamma=False), "γ forgotten"),
    (lambda *a: ln_backward(*a, eps_in=False), "ε missing"),
    (lambda *a: ln_backward(*a, dgamma="x"), "uses x instead of the normalised x̂"),
    (lambda *a: ln_backward(*a, reduce="mean"), "averaged over the vectors"),
    (lambda *a: ln_backward(*a, keep_shape=True), "has the shape of x"),
    (ln_backward_autograd, "autograd does the work here"),
    (ln_backward_2d_only, "grad_gamma: expected shape"),
    (lambda *a: ln_backward(*a)[:2], "expected a triple"),
])
def test_layer_norm_backward_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch09.check_layer_norm_backward(wrong)


def test_autograd_is_restored_after_the_check():
    with pytest.raises(AssertionError):
        ch09.check_layer_norm_backward(ln_backward_autograd)
    x = torch.ones(3, requires_grad=True)
    (x * x).sum().backward()
    assert torch.equal(x.grad, 2 * torch.ones(3))


# ----------------------------------------------------------------------------- task 6 (transfer)
def fold(W, b, *, axis=-1, centre_b=True, centre_W=True, scalar=False, scale=False):
    if scalar:
        return W - W.mean(), b - b.mean()
    W2 = W - W.mean(axis, keepdim=True) if centre_W else W
    b2 = b - b.mean() if centre_b else b
    if scale:
        W2, b2 = W2 / W2.std(-1, keepdim=True), b2 / b2.std()
    return W2, b2


def fold_projection(W, b):
    """The same, written as a product with the centring matrix I − 11ᵀ/n (SliceGPT's form)."""
    n = W.shape[-1]
    M = torch.eye(n, dtype=W.dtype) - torch.full((n, n), 1 / n, dtype=W.dtype)
    return W @ M, b @ M


def fold_first_case_only(W, b):
    """Right when W is [6, 4] (the sheet's demo), centres along dim 0 otherwise."""
    return fold(W, b, axis=-1 if W.shape == (6, 4) else 0)


def test_fold_centring_passes(capsys):
    ch09.check_fold_centring(fold)
    ch09.check_fold_centring(fold_projection)
    assert capsys.readouterr().out == "✓ fold_centring: all 6 cases passed\n" * 2


@pytest.mark.parametrize("wrong, message", [
    (stub, "fold_centring is not implemented yet"),
    (lambda W, b: fold(W, b, axis=0), "centred along the wrong axis"),
    (lambda W, b: fold(W, b, centre_b=False), "the bias was not centred"),
    (lambda W, b: fold(W, b, centre_W=False), "the weights were not centred"),
    (lambda W, b: fold(W, b, scalar=True), "subtracted the mean of all of W"),
    (lambda W, b: fold(W, b, scale=True), "also divided by a standard deviation"),
    (lambda W, b: (fold(W, b)[0].T, fold(W, b)[1]), "expected shape"),
    (fold_first_case_only, "centred along the wrong axis"),
    (lambda W, b: fold(W, b)[0], "expected a pair"),
])
def test_fold_centring_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch09.check_fold_centring(wrong)
