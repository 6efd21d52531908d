"""The Exercise 6 checks pass the reference answers and name the likely mistake otherwise."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.grading import ch06
from helpers import refused_then_passes, stub


# ----------------------------------------------------------------------------- task 1
def sin_table(n, d, *, exponent=2.0, swap=False, concat=False, start=0):
    t = torch.arange(start, n + start, dtype=torch.float32)[:, None]
    i = torch.arange(d // 2, dtype=torch.float32)
    a = t / 10000 ** (exponent * i / d)
    s, c = (a.cos(), a.sin()) if swap else (a.sin(), a.cos())
    if concat:
        return torch.cat((s, c), dim=-1)
    return torch.stack((s, c), dim=-1).flatten(-2)


def test_sinusoidal_passes(capsys):
    ch06.check_sinusoidal(sin_table)
    assert capsys.readouterr().out == "✓ sinusoidal: all 5 cases passed\n"


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "sinusoidal_table is not implemented yet"),
        (lambda n, d: sin_table(n, d, swap=True), "sin and cos swapped"),
        (lambda n, d: sin_table(n, d, exponent=1.0), "θ_i exponent off by the factor 2"),
        (lambda n, d: sin_table(n, d, exponent=4.0), "column index 2i"),
        (lambda n, d: sin_table(n, d, concat=True), "concatenated"),
        (lambda n, d: sin_table(n, d, start=1), "positions start at 1"),
        (lambda n, d: sin_table(n, d).T, "expected shape"),
        (lambda n, d: sin_table(n, d) * 1.01, "wrong values"),
    ],
)
def test_sinusoidal_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch06.check_sinusoidal(wrong)


# ----------------------------------------------------------------------------- task 2
def rope_ok(x, positions, layout, *, flip_layout=False, exponent=2.0, sign=1.0, swap=False, absolute=False):
    d = x.shape[-1]
    if flip_layout:
        layout = "half" if layout == "interleaved" else "interleaved"
    theta = 10000.0 ** (-exponent * torch.arange(d // 2, dtype=torch.float32) / d)
    pos = torch.ones_like(positions) * 3 if absolute else positions
    ang = pos.float()[:, None] * theta  # [T, d/2]
    if layout == "interleaved":
        ang = ang.repeat_interleave(2, -1)
        rot = torch.stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)
    else:
        ang = torch.cat((ang, ang), -1)
        x1, x2 = x.chunk(2, -1)
        rot = torch.cat((-x2, x1), -1)
    c, s = ang.cos(), ang.sin()
    if swap:
        c, s = s, c
    return x * c + sign * rot * s


def test_rope_passes(capsys):
    ch06.check_rope(rope_ok)
    assert capsys.readouterr().out == "✓ rope: all 9 cases passed\n"


def rope_add(x, positions, layout):  # adds instead of rotating: breaks the relative property
    return x + positions.float()[:, None] / 10


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "rope is not implemented yet"),
        (lambda x, p, lay: rope_ok(x, p, lay, flip_layout=True), r"pairs rotated in the wrong layout \(interleaved vs half-split\)"),
        (lambda x, p, lay: rope_ok(x, p, lay, exponent=1.0), "θ_i exponent off by the factor 2"),
        (lambda x, p, lay: rope_ok(x, p, lay, sign=-1.0), "wrong direction"),
        (lambda x, p, lay: rope_ok(x, p, lay, swap=True), "sin and cos swapped"),
        (lambda x, p, lay: rope_ok(x, p, lay, exponent=1.0, flip_layout=True), "wrong layout and θ exponent"),
        (lambda x, p, lay: rope_ok(x, p, lay, exponent=2.2), "does depend only on m − n"),
        (rope_add, "changes when m and n are shifted together"),
        (lambda x, p, lay: rope_ok(x, p, lay)[..., :-1], "expected shape"),
    ],
)
def test_rope_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch06.check_rope(wrong)


def rope_complex(x, positions, layout):
    """Meta's LLaMA code: pairs as complex numbers, multiplied by e^(i m θ) — elementwise, so it passes."""
    d = x.shape[-1]
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rot = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64), positions.double()[:, None] * theta)
    if layout == "half":
        pairs = torch.stack((x[..., : d // 2], x[..., d // 2:]), -1).double()
        out = torch.view_as_real(torch.view_as_complex(pairs.contiguous()) * rot)
        return torch.cat((out[..., 0], out[..., 1]), -1).to(x.dtype)
    out = torch.view_as_real(torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous()) * rot)
    return out.flatten(-2).to(x.dtype)


def test_rope_passes_the_complex_form(capsys):
    ch06.check_rope(rope_complex)
    assert "all 9 cases passed" in capsys.readouterr().out


def rotation_rows(positions, d):
    """``[T, d, d]``: the block-diagonal rotation of each position, interleaved layout, row form y = x R."""
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = positions.float()[:, None] * theta                           # [T, d/2]
    c, s_ = ang.cos(), ang.sin()
    R = torch.zeros(len(positions), d, d)
    i = torch.arange(d // 2)
    R[:, 2 * i, 2 * i], R[:, 2 * i + 1, 2 * i + 1] = c, c
    R[:, 2 * i + 1, 2 * i], R[:, 2 * i, 2 * i + 1] = -s_, s_            # row-vector form: y = x R
    return R


def test_rope_with_a_rotation_matrix_gets_the_numbers_but_fails_the_point():
    """A d × d block-diagonal rotation per position gives the right values at O(d²) per vector."""
    from course_lib.positional import interleaved_to_half_permutation

    def rotated(x, layout, apply):
        if layout == "half":
            p = interleaved_to_half_permutation(x.shape[-1])
            return apply(x[..., torch.argsort(p)])[..., p]
        return apply(x)

    def by_matrix(x, positions, layout):
        R = rotation_rows(positions, x.shape[-1])
        return rotated(x, layout, lambda x: (x[..., None, :] @ R)[..., 0, :])
    with pytest.raises(AssertionError, match="the rotation was done with a matrix"):
        ch06.check_rope(by_matrix)

    def by_einsum(x, positions, layout):          # the same matrix, applied with einsum
        R = rotation_rows(positions, x.shape[-1]).to(x.dtype)
        return rotated(x, layout, lambda x: torch.einsum("bhtj,tji->bhti", x, R))
    with pytest.raises(AssertionError, match="a matrix product summing over 256 coordinates"):
        ch06.check_rope(by_einsum)


def test_rope_with_an_outer_product_for_the_angles_passes(capsys):
    """Products that sum over one index (torch.outer, einsum 'i,j->ij') are not rotations: they pass."""
    def outer(x, positions, layout):
        d = x.shape[-1]
        theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
        ang = torch.einsum("t,i->ti", positions.float(), theta) if layout == "half" else torch.outer(positions.float(), theta)
        if layout == "interleaved":
            ang = ang.repeat_interleave(2, -1)
            rot = torch.stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)
        else:
            ang = torch.cat((ang, ang), -1)
            rot = torch.cat((-x[..., d // 2:], x[..., : d // 2]), -1)
        return x * ang.cos() + rot * ang.sin()
    ch06.check_rope(outer)
    assert "all 9 cases passed" in capsys.readouterr().out


# ----------------------------------------------------------------------------- task 3
def slopes_ok(n):
    def pow2(n):
        return [2 ** (-8 * h / n) for h in range(1, n + 1)]
    c = 2 ** math.floor(math.log2(n))
    return pow2(c) + pow2(2 * c)[0::2][: n - c]


def test_alibi_slopes_passes(capsys):
    ch06.check_alibi_slopes(slopes_ok)
    assert capsys.readouterr().out == "✓ alibi_slopes: all 8 cases passed\n"
    ch06.check_alibi_slopes(lambda n: torch.tensor(slopes_ok(n)))  # a tensor is fine too


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "alibi_slopes is not implemented yet"),
        (lambda n: [2 ** (-8 * h / n) for h in range(1, n + 1)], "not a power of two"),
        (lambda n: [2 ** (-8 * h / n) for h in range(n)], "slopes start at 1"),
        (lambda n: slopes_ok(n)[::-1], "reverse order"),
        (lambda n: [1 / (2 * h) for h in range(1, n + 1)], "slopes not geometric"),
        (lambda n: [h / n for h in range(1, n + 1)], "slopes not geometric"),
        (lambda n: [2.0 ** -h for h in range(1, n + 1)], r"slopes 2\^\(−h\) for every n"),
        (lambda n: slopes_ok(n)[:-1], "expected shape"),
    ],
)
def test_alibi_slopes_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch06.check_alibi_slopes(wrong)


# ----------------------------------------------------------------------------- task 4
def interp_ok(pos, L, Lp):
    return pos.float() * L / Lp


def test_interpolation_passes(capsys):
    ch06.check_interpolation(interp_ok)
    assert capsys.readouterr().out == "✓ interpolation: all 5 cases passed\n"


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "interpolate_positions is not implemented yet"),
        (lambda p, L, Lp: p.float() * Lp / L, "positions multiplied instead of divided"),
        (lambda p, L, Lp: p.float(), "positions unchanged"),
        (lambda p, L, Lp: torch.div(p * L, Lp, rounding_mode="floor"), "expected float positions"),
        (lambda p, L, Lp: torch.floor(p.float() * L / Lp), "rounded to integers"),
        (lambda p, L, Lp: p.float() * L / Lp + 0.5, "wrong values"),
    ],
)
def test_interpolation_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch06.check_interpolation(wrong)


# ----------------------------------------------------------------------------- task 5
def rel_ok(n, k, *, lo=None, hi=None, transpose=False, clip=True, shift=0):
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    d = (i - j) if transpose else (j - i)
    if clip:
        d = d.clamp(-k if lo is None else lo, k if hi is None else hi)
    return d + shift


def test_relative_matrix_passes(capsys):
    ch06.check_relative_matrix(rel_ok)
    assert capsys.readouterr().out == "✓ relative_matrix: all 6 cases passed\n"


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "relative_matrix is not implemented yet"),
        (lambda n, k: rel_ok(n, k, lo=-k + 1, hi=k - 1), "clip range off by one"),
        (lambda n, k: rel_ok(n, k, lo=-k - 1, hi=k + 1), "clip range off by one"),
        (lambda n, k: rel_ok(n, k, transpose=True), "transposed"),
        (lambda n, k: rel_ok(n, k, clip=False), "not clipped"),
        (lambda n, k: rel_ok(n, k, shift=k), "table row"),
        (lambda n, k: rel_ok(n, k).float(), "expected an integer tensor"),
        (lambda n, k: rel_ok(n, k, lo=-k, hi=k - 1), "entries are wrong"),
    ],
)
def test_relative_matrix_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch06.check_relative_matrix(wrong)


# ----------------------------------------------------------------------------- task 6 (transfer)
def ntk_ok(base, head_dim, rotary_dim, s, *, width="rotary", exponent="r/(r-2)"):
    r = rotary_dim if width == "rotary" else head_dim
    e = {"r/(r-2)": r / (r - 2), "(r-2)/r": (r - 2) / r, "int": r // (r - 2), "none": 0.0}[exponent]
    return base * s ** e


def test_ntk_base_passes(capsys):
    ch06.check_ntk_base(ntk_ok)
    assert capsys.readouterr().out == "✓ ntk_base: all 8 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "ntk_base is not implemented yet"),
    (lambda *a: ntk_ok(*a, width="head"), "used head_dim = 80 where the rotating width rotary_dim = 32 belongs"),
    (lambda *a: ntk_ok(*a, exponent="(r-2)/r"), "exponent inverted"),
    (lambda *a: ntk_ok(*a, exponent="int"), "base · s: .* integer division"),
    (lambda *a: ntk_ok(*a, exponent="none"), "base unchanged"),
    (lambda b, D, r, s: b / s ** (r / (r - 2)), "the base divided by the scale"),
    (lambda b, D, r, s: b * s ** (r / (r - 1)), "the slowest rotating pair slows by 3.9.*, not s = 4"),
    (lambda *a: None, "expected a number"),
])
def test_ntk_base_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch06.check_ntk_base(wrong)


# ----------------------------------------------------------------------------- task 7 (transfer)
def yarn_ok(head_dim, base, s, train_len, alpha=1.0, beta=32.0, *, two_pi=True, ratio="L/lambda", clamp=True,
            reverse=False):
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    wavelength = 2 * math.pi / theta if two_pi else 1 / theta
    r = train_len / wavelength if ratio == "L/lambda" else wavelength / train_len
    gamma = (r - alpha) / (beta - alpha)
    if clamp:
        gamma = gamma.clamp(0, 1)
    if reverse:
        gamma = 1 - gamma
    return (1 - gamma) * theta / s + gamma * theta


def yarn_by_index(head_dim, base, s, train_len, alpha=1.0, beta=32.0):
    """The ramp of the reference code: linear in the pair index between the pairs where r = β and r = α."""
    def pair_where(turns):
        return head_dim * math.log(train_len / (turns * 2 * math.pi)) / (2 * math.log(base))
    low, high = max(math.floor(pair_where(beta)), 0), min(math.ceil(pair_where(alpha)), head_dim // 2 - 1)
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    keep = 1 - ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)
    return (1 - keep) * theta / s + keep * theta


def test_yarn_passes(capsys):
    ch06.check_yarn_frequencies(yarn_ok)
    assert capsys.readouterr().out == "✓ yarn_frequencies: all 7 cases passed\n"


def test_yarn_passes_float32(capsys):
    ch06.check_yarn_frequencies(lambda *a: yarn_ok(*a).float())
    assert "all 7 cases passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (stub, "yarn_frequencies is not implemented yet"),
    (lambda *a: yarn_ok(*a, reverse=True), "the ramp is reversed"),
    (lambda *a: yarn_ok(*a, ratio="lambda/L"), "r inverted"),
    (lambda *a: yarn_ok(*a, two_pi=False), "wavelength without the 2π"),
    (lambda *a: yarn_ok(*a, clamp=False), "the ramp is not clamped"),
    (lambda d, b, s, *a: yarn_ok(d, b, 1.0, *a) / s, "every pair interpolated"),
    (lambda d, b, s, *a: yarn_ok(d, b, 1.0, *a), "no pair changed"),
    (yarn_by_index, "the ramp is linear in the pair index"),
    (lambda *a: yarn_ok(*a)[:-1], "expected shape"),
    (lambda *a: yarn_ok(*a) * 1.001, "wrong values"),
])
def test_yarn_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch06.check_yarn_frequencies(wrong)


# ----------------------------------------------------------------------------- calling the library scores nothing
from course_lib import positional as P  # noqa: E402


def rope_by_library(x, positions, layout):
    cos, sin = P.rope_cos_sin(positions, x.shape[-1], layout=layout, dtype=torch.float64)
    return P.apply_rope(x.double(), cos, sin, layout).to(x.dtype)


def rope_by_library_rotation(x, positions, layout):
    """The angles by hand, the layout's rotation from the library."""
    d = x.shape[-1]
    ang = positions.double()[:, None] * 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.cat((ang, ang), -1) if layout == "half" else ang.repeat_interleave(2, -1)
    rotate = P.rotate_half if layout == "half" else P.rotate_every_two
    return (x.double() * ang.cos() + rotate(x.double()) * ang.sin()).to(x.dtype)


@pytest.mark.parametrize("check, answer", [
    (ch06.check_sinusoidal, lambda n, d: P.sinusoidal_position_encoding(n, d)),
    (ch06.check_rope, rope_by_library),
    (ch06.check_rope, rope_by_library_rotation),
    (ch06.check_alibi_slopes, P.alibi_slopes),
    (ch06.check_interpolation, P.interpolate_positions),
    (ch06.check_relative_matrix, P.relative_position_matrix),
    (ch06.check_ntk_base, lambda base, head_dim, rotary_dim, s: P.ntk_scaled_base(base, s, rotary_dim)),
])
def test_calling_the_library_scores_nothing(check, answer, monkeypatch):
    refused_then_passes(check, answer, ch06, monkeypatch)
