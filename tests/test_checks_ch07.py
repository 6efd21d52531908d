"""Mutation tests of course_lib.grading.ch07: every check passes the reference answer, fails the
stub with "not implemented", and fails each typical wrong answer with a message naming the mistake."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.grading import ch07
from helpers import refused_then_passes, stub


ACTS = {"glu": torch.sigmoid, "bilinear": lambda z: z, "reglu": F.relu, "geglu": F.gelu, "swiglu": F.silu}


# ----------------------------------------------------------------------------- task 1
def swiglu_ok(x, wg, wu, wd, *, act=F.silu, swap=False, where="gate", combine="mul"):
    g, u = (x @ wu, x @ wg) if swap else (x @ wg, x @ wu)
    if where == "after":
        h = act(g * u)
    elif where == "nogate":
        h = act(g)
    elif combine == "add":
        h = act(g) + u
    else:
        h = act(g) * u
    return h @ wd


def test_swiglu_passes(capsys):
    ch07.check_swiglu_forward(swiglu_ok)
    assert capsys.readouterr().out == "✓ swiglu_forward: all 4 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "swiglu_forward is not implemented yet"),
    (lambda *a: swiglu_ok(*a, swap=True), "gate and up swapped \\(activation applied to the wrong branch\\)"),
    (lambda *a: swiglu_ok(*a, act=torch.sigmoid), "sigmoid instead of SiLU \\(GLU instead of SwiGLU\\)"),
    (lambda *a: swiglu_ok(*a, act=F.relu), "ReLU instead of SiLU"),
    (lambda *a: swiglu_ok(*a, act=F.gelu), "GELU instead of SiLU"),
    (lambda *a: swiglu_ok(*a, where="after"), "activation applied after the product"),
    (lambda *a: swiglu_ok(*a, where="nogate"), "no gate"),
    (lambda *a: swiglu_ok(*a, combine="add"), "added the branches"),
    (lambda *a: swiglu_ok(*a) * 1.1, "wrong values"),
    (lambda x, *w: swiglu_ok(x, *w)[..., :-1], "expected shape"),
    (lambda *a: swiglu_ok(*a).tolist(), "expected a torch.Tensor"),
])
def test_swiglu_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch07.check_swiglu_forward(wrong)


# ----------------------------------------------------------------------------- task 2
def hidden_ok(d, m, *, base="8/3", rounding="up"):
    h = int(2 * 4 * d / 3) if base == "8/3" else (4 * d if base == "4" else int(2 * d / 3))
    if rounding == "up":
        return m * ((h + m - 1) // m)
    if rounding == "down":
        return m * (h // m)
    if rounding == "nearest":
        return m * round(h / m)
    return h


def test_hidden_dim_passes(capsys):
    ch07.check_glu_hidden_dim(hidden_ok)
    assert capsys.readouterr().out == "✓ glu_hidden_dim: all 9 cases passed\n"


def test_hidden_dim_passes_math_ceil(capsys):
    ch07.check_glu_hidden_dim(lambda d, m: m * math.ceil(int(8 * d / 3) / m))
    assert "all 9 cases passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (stub, "glu_hidden_dim is not implemented yet"),
    (lambda d, m: hidden_ok(d, m, rounding=None), "forgot to round up to multiple_of"),
    (lambda d, m: 8 * d / 3, "forgot to round up to multiple_of"),
    (lambda d, m: hidden_ok(d, m, base="4"), "used 4·d instead of 8/3·d"),
    (lambda d, m: hidden_ok(d, m, base="4", rounding=None), "used 4·d instead of 8/3·d"),
    (lambda d, m: hidden_ok(d, m, rounding="down"), "rounded down \\(or to the nearest multiple\\) instead of up"),
    (lambda d, m: hidden_ok(d, m, rounding="nearest"), "rounded down \\(or to the nearest multiple\\) instead of up"),
    (lambda d, m: hidden_ok(d, m, base="2/3"), "used 2/3·d instead of"),
    (lambda d, m: m * math.ceil(8 * d / 3 / m), "rounded 8/3·d up directly"),
    (lambda d, m: float(hidden_ok(d, m)), "expected an int"),
    (lambda d, m: hidden_ok(d, m) + m, "expected 11008; got 11264"),
    (lambda d, m: None, "expected a number"),
])
def test_hidden_dim_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch07.check_glu_hidden_dim(wrong)


# ----------------------------------------------------------------------------- task 3
def glu_ok(x, wg, wu, wd, variant, *, table=ACTS, swap=(), strict=True):
    if variant not in table:
        if strict:
            raise ValueError(f"variant: unknown {variant!r}")
        variant = "swiglu"
    act = table[variant]
    g, u = (x @ wu, x @ wg) if variant in swap else (x @ wg, x @ wu)
    return (act(g) * u) @ wd


def test_glu_ffn_passes(capsys):
    ch07.check_glu_ffn(glu_ok)
    assert capsys.readouterr().out == "✓ glu_ffn: all 16 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "glu_ffn is not implemented yet"),
    (lambda *a: glu_ok(*a, table={**ACTS, "swiglu": torch.sigmoid}), "sigmoid instead of SiLU"),
    (lambda *a: glu_ok(*a, table={**ACTS, "glu": F.silu}), "SiLU instead of sigmoid \\(SwiGLU instead of GLU\\)"),
    (lambda *a: glu_ok(*a, table={**ACTS, "geglu": lambda z: F.gelu(z, approximate="tanh")}), "tanh approximation"),
    (lambda *a: glu_ok(*a, table={**ACTS, "geglu": F.silu}), "SiLU instead of GELU"),
    (lambda *a: glu_ok(*a, table={**ACTS, "reglu": F.gelu}), "computed the 'geglu' variant"),
    (lambda *a: glu_ok(*a, table={**ACTS, "bilinear": F.relu}), "computed the 'reglu' variant"),
    (lambda *a: glu_ok(*a, swap=("reglu",)), "gate and up swapped"),
    (lambda *a: glu_ok(*a, strict=False), "expected a ValueError for an unknown variant"),
    (lambda x, wg, wu, wd, v: glu_ok(x, wg, wu, wd, v) if v in ACTS else {}[v], "expected a ValueError naming"),
])
def test_glu_ffn_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch07.check_glu_ffn(wrong)


# ----------------------------------------------------------------------------- task 4
def count_ok(d, h, kind, bias, *, glu_mats=3, std_mats=2, biases=True, glu_bias="2h+d", always_bias=False):
    glu = kind in ("glu", "bilinear", "reglu", "geglu", "swiglu")
    n = (glu_mats if glu else std_mats) * d * h
    if (bias and biases) or always_bias:
        n += ({"2h+d": 2 * h + d, "h+d": h + d, "3h": 3 * h}[glu_bias]) if glu else h + d
    return n


def test_param_count_passes(capsys):
    ch07.check_ffn_param_count(count_ok)
    assert capsys.readouterr().out == "✓ ffn_param_count: all 7 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "ffn_param_count is not implemented yet"),
    (lambda *a: count_ok(*a, glu_mats=2), "counted two matrices for a GLU FFN"),
    (lambda *a: count_ok(*a, std_mats=3), "counted three matrices for a standard FFN"),
    (lambda *a: count_ok(*a, biases=False), "forgot the biases"),
    (lambda *a: count_ok(*a, always_bias=True), "counted biases although bias=False"),
    (lambda *a: count_ok(*a, glu_bias="h+d"), "GLU biases"),
    (lambda *a: count_ok(*a, glu_bias="3h"), "GLU biases"),
    (lambda *a: count_ok(*a) + 1, "expected 2099712; got 2099713"),
])
def test_param_count_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch07.check_ffn_param_count(wrong)


# ----------------------------------------------------------------------------- task 5 (transfer)
def width_ok(d, D, bias, m, *, rounding="down", biases=True, rule="budget"):
    b = int(bias) if biases else 0
    exact = (2 * d * D + b * D) / (3 * d + 2 * b) if rule == "budget" else 8 * d / 3
    if rounding == "none":
        return math.floor(exact)
    return m * {"down": math.floor, "up": math.ceil, "nearest": round}[rounding](exact / m)


def test_width_for_budget_passes(capsys):
    ch07.check_glu_width_for_budget(width_ok)
    assert capsys.readouterr().out == "✓ glu_width_for_budget: all 9 cases passed\n"


def test_width_for_budget_passes_a_search(capsys):
    """Counting parameters and stepping down from the LLaMA width is a fine way to find it."""
    def search(d, D, bias, m):
        from course_lib.ffn import ffn_num_parameters
        h = m * (2 * D // (3 * m) + 1)
        while ffn_num_parameters(d, h, "swiglu", bias) > ffn_num_parameters(d, D, "gelu", bias):
            h -= m
        return h
    ch07.check_glu_width_for_budget(search)
    assert "all 9 cases passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (stub, "glu_width_for_budget is not implemented yet"),
    (lambda *a: width_ok(*a, rounding="up"), "rounded up \\(as LLaMA does\\) or to the nearest multiple"),
    (lambda *a: width_ok(*a, rounding="nearest"), "rounded up \\(as LLaMA does\\) or to the nearest multiple"),
    (lambda *a: width_ok(*a, rule="8/3"), "used 8/3·d_model: that matches a 4·d_model FFN only"),
    (lambda *a: width_ok(*a, biases=False), "ignored the biases"),
    (lambda *a: width_ok(*a, rounding="none"), "not a multiple of multiple_of"),
    (lambda d, D, bias, m: width_ok(d, D, bias, m) - m, "fits .* but is not the widest"),
    (lambda d, D, bias, m: width_ok(d, D, bias, m) + 2 * m, "more than the standard FFN's"),
    (lambda *a: float(width_ok(*a)), "expected an int"),
])
def test_width_for_budget_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch07.check_glu_width_for_budget(wrong)


# ----------------------------------------------------------------------------- task 6 (transfer)
def slope(z, variant, *, silu_simple=False, gelu_simple=False, sigmoid_simple=False):
    sig = torch.sigmoid(z)
    if variant == "glu":
        return sig if sigmoid_simple else sig * (1 - sig)
    if variant == "bilinear":
        return torch.ones_like(z)
    if variant == "reglu":
        return (z > 0).to(z.dtype)
    if variant == "geglu":
        cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
        return cdf if gelu_simple else cdf + z * torch.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return sig if silu_simple else sig + z * sig * (1 - sig)


def jacobian_ok(x, wg, wu, wd, variant, *, gate=True, up=True, transpose=False, phi_for_slope=False, **kw):
    g, u = x @ wg, x @ wu
    phi = ACTS[variant](g)
    s = phi if phi_for_slope else slope(g, variant, **kw)
    J = (wg * (s * u) if gate else 0) + (wu * phi if up else 0)
    J = J @ wd
    return J.T if transpose else J


def test_glu_jacobian_passes(capsys):
    ch07.check_glu_jacobian(jacobian_ok)
    assert capsys.readouterr().out == "✓ glu_jacobian: all 16 cases passed\n"


def test_glu_jacobian_passes_an_einsum_form(capsys):
    def einsum_form(x, wg, wu, wd, variant):
        g, u = x @ wg, x @ wu
        return torch.einsum("ik,k,kj->ij", wg, slope(g, variant) * u, wd) + torch.einsum("ik,k,kj->ij", wu, ACTS[variant](g), wd)
    ch07.check_glu_jacobian(einsum_form)
    assert "all 16 cases passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (stub, "glu_jacobian is not implemented yet"),
    (lambda *a: jacobian_ok(*a, transpose=True), "transposed: J\\[i, j\\] = ∂y_j/∂x_i"),
    (lambda *a: jacobian_ok(*a, gate=False), "the gate's term is missing"),
    (lambda *a: jacobian_ok(*a, up=False), "the up branch's term is missing"),
    (lambda *a: jacobian_ok(*a, phi_for_slope=True), "φ where φ' belongs"),
    (lambda *a: jacobian_ok(*a, silu_simple=True), "SiLU'\\(z\\) = σ\\(z\\) only"),
    (lambda *a: jacobian_ok(*a, gelu_simple=True), "GELU'\\(z\\) = Φ\\(z\\) only"),
    (lambda *a: jacobian_ok(*a, sigmoid_simple=True), "σ'\\(z\\) = σ\\(z\\): the sigmoid's derivative"),
    (lambda x, *w: jacobian_ok(x, *w)[:, :-1], "expected shape"),
    (lambda *a: jacobian_ok(*a) * 1.01, "wrong values"),
])
def test_glu_jacobian_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch07.check_glu_jacobian(wrong)


def _forward(x, wg, wu, wd, variant):
    return (ACTS[variant](x @ wg) * (x @ wu)) @ wd


@pytest.mark.parametrize("by_autograd", [
    lambda x, wg, wu, wd, v: torch.autograd.functional.jacobian(lambda t: _forward(t, wg, wu, wd, v), x).T,
    lambda x, wg, wu, wd, v: torch.func.jacrev(lambda t: _forward(t, wg, wu, wd, v))(x).T,
    lambda x, wg, wu, wd, v: torch.func.jacfwd(lambda t: _forward(t, wg, wu, wd, v))(x).T,
    lambda x, wg, wu, wd, v: torch.stack([torch.autograd.grad(_forward(xx, wg, wu, wd, v)[j], xx)[0]
                                          for xx in [x.clone().requires_grad_()] for j in range(x.shape[0])]).T,
], ids=["autograd.functional.jacobian", "func.jacrev", "func.jacfwd", "autograd.grad"])
def test_glu_jacobian_by_autograd_gets_the_numbers_but_fails_the_point(by_autograd):
    with pytest.raises(AssertionError, match="the Jacobian was computed by autograd"):
        ch07.check_glu_jacobian(by_autograd)


def test_glu_jacobian_by_backward_fails_the_point():
    def by_backward(x, wg, wu, wd, v):
        rows = []
        for j in range(x.shape[0]):
            xx = x.clone().requires_grad_()
            _forward(xx, wg, wu, wd, v)[j].backward()
            rows.append(xx.grad)
        return torch.stack(rows).T
    with pytest.raises(AssertionError, match="the Jacobian was computed by autograd"):
        ch07.check_glu_jacobian(by_backward)
    assert torch.autograd.grad is not None and "refuse" not in torch.autograd.grad.__name__     # restored


# ----------------------------------------------------------------------------- calling the library scores nothing
from course_lib import ffn  # noqa: E402


def glu_by_module(x, wg, wu, wd, variant="swiglu"):
    """course_lib.ffn.GatedFeedForward with the given weights."""
    f = ffn.GatedFeedForward(wg.shape[0], wg.shape[1], variant).to(x.dtype)
    with torch.no_grad():
        f.gate_proj.weight.copy_(wg.T)
        f.up_proj.weight.copy_(wu.T)
        f.down_proj.weight.copy_(wd.T)
        return f(x)


def params_by_module(d, h, kind, bias):
    return sum(p.numel() for p in ffn.build_feed_forward(kind, d, h, bias=bias, device="meta").parameters())


@pytest.mark.parametrize("check, answer", [
    (ch07.check_swiglu_forward, glu_by_module),
    (ch07.check_swiglu_forward, lambda x, wg, wu, wd: ch07.reference_glu_ffn(x, wg, wu, wd)),
    (ch07.check_glu_hidden_dim, lambda d, m: ffn.glu_hidden_dim(d, multiple_of=m)),
    (ch07.check_glu_ffn, glu_by_module),
    (ch07.check_ffn_param_count, lambda d, h, kind, bias: ffn.ffn_num_parameters(d, h, kind, bias)),
    (ch07.check_ffn_param_count, params_by_module),
])
def test_calling_the_library_scores_nothing(check, answer, monkeypatch):
    refused_then_passes(check, answer, ch07, monkeypatch)
