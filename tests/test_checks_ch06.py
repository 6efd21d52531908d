"""The Exercise 6 checks pass the reference answers and name the likely mistake otherwise."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.grading import ch06
from helpers import stub


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
    assert capsys.readouterr().out == "✓ rope: all 8 cases passed\n"


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
