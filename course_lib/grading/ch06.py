"""Checks for Exercise 6 (positions).

Tasks, in the order of the exercise notebook:

1. ``sinusoidal_table(n, d)`` → ``[n, d]``: PE[t, 2i] = sin(t·ω_i), PE[t, 2i+1] = cos(t·ω_i),
   ω_i = 10000^(−2i/d);
2. ``rope(x, positions, layout)`` → x rotated by RoPE in the named layout (``"interleaved"``: pairs
   (x_0, x_1), (x_2, x_3), …; ``"half"``: pairs (x_i, x_{i+d/2})), θ_i = 10000^(−2i/d); the check
   also verifies that the rotated scores depend only on m − n;
3. ``alibi_slopes(n_heads)`` → ``[n_heads]`` for 8, 12, 16 … heads (the ALiBi reference code);
4. ``interpolate_positions(position_ids, train_len, target_len)`` → float positions m · L / L';
5. ``relative_matrix(n, k)`` → ``[n, n]`` int, clip(j − i, −k, k).

Each check builds the reference with ``course_lib.positional`` (tested against torch and the
papers' code in ``tests/test_positional.py``) and, on a wrong answer, recomputes the typical
wrong answers to name the mistake.
"""

from __future__ import annotations

import math

import torch

from course_lib import positional as ref
from course_lib.grading import call_student, expect_close, expect_tensor, passed

__all__ = [
    "check_sinusoidal",
    "check_rope",
    "check_alibi_slopes",
    "check_interpolation",
    "check_relative_matrix",
]


def _freqs(d: int, exponent: float = 2.0, base: float = 10000.0) -> torch.Tensor:
    """ω_i = base^(−exponent·i/d), i = 0 … d/2 − 1, in float64."""
    i = torch.arange(d // 2, dtype=torch.float64)
    return base ** (-exponent * i / d)


def _interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.stack((a, b), dim=-1).flatten(-2)


# ----------------------------------------------------------------------------- task 1
def check_sinusoidal(sinusoidal_table) -> None:
    """Task 1: the sinusoidal table of Vaswani et al., ``[n, d]``."""
    cases = [(6, 8), (50, 16), (1, 4), (33, 2), (128, 64)]
    for n, d in cases:
        name = f"sinusoidal_table({n}, {d})"
        got = expect_tensor(name, call_student(sinusoidal_table, n, d, name="sinusoidal_table"), (n, d))
        want = ref.sinusoidal_position_encoding(n, d, dtype=torch.float64)
        t = torch.arange(n, dtype=torch.float64)[:, None]
        a = t * _freqs(d)
        a1 = (t + 1) * _freqs(d)
        mistakes = {
            "sin and cos swapped: even columns 2i hold sin(t·ω_i), odd columns 2i+1 hold cos(t·ω_i)":
                _interleave(a.cos(), a.sin()),
            "θ_i exponent off by the factor 2 (10000^(−i/d) instead of 10000^(−2i/d))":
                _interleave((t * _freqs(d, 1.0)).sin(), (t * _freqs(d, 1.0)).cos()),
            "exponent uses the column index 2i where the pair index i belongs (10000^(−4i/d)): "
            "columns 2i and 2i+1 share ω_i = 10000^(−2i/d)":
                _interleave((t * _freqs(d, 4.0)).sin(), (t * _freqs(d, 4.0)).cos()),
            "sines and cosines concatenated (all sin, then all cos); interleave them: column 2i is sin, 2i+1 is cos":
                torch.cat((a.sin(), a.cos()), dim=-1),
            "positions start at 1; the first row is position t = 0 (sin 0 = 0, cos 0 = 1)":
                _interleave(a1.sin(), a1.cos()),
        }
        expect_close(name, got.to(torch.float64), want, mistakes=mistakes, atol=1e-4, rtol=1e-4)
    passed("sinusoidal", len(cases))


# ----------------------------------------------------------------------------- task 2
def _rope_variants(x: torch.Tensor, pos: torch.Tensor, layout: str) -> dict[str, torch.Tensor]:
    d = x.shape[-1]
    other = "half" if layout == "interleaved" else "interleaved"

    def rot(lay, exponent=2.0, sign=1.0, swap=False):
        ang = ref._spread(pos.double()[:, None] * _freqs(d, exponent), lay)
        c, s = ang.cos(), ang.sin()
        if swap:
            c, s = s, c
        r = ref.rotate_half(x) if lay == "half" else ref.rotate_every_two(x)
        return x * c + sign * r * s

    return {
        f"pairs rotated in the wrong layout (interleaved vs half-split): layout={layout!r} pairs "
        + ("neighbours (x_0, x_1), (x_2, x_3), …" if layout == "interleaved" else "x_i with x_{i+d/2}"): rot(other),
        "θ_i exponent off by the factor 2 (10000^(−i/d) instead of 10000^(−2i/d))": rot(layout, 1.0),
        "rotation in the wrong direction (R(−mθ)): the first coordinate of a pair becomes x₁cos − x₂sin":
            rot(layout, sign=-1.0),
        "sin and cos swapped": rot(layout, swap=True),
        "wrong layout and θ exponent off by the factor 2 (10000^(−i/d))": rot(other, 1.0),
    }


def _relative_property(rope, layout: str, d: int) -> bool:
    """Does q_m · k_n from the student's rope depend only on m − n? (m, n) vs (m + s, n + s)."""
    g = torch.Generator().manual_seed(66)
    q, k = torch.randn(1, 1, 1, d, generator=g), torch.randn(1, 1, 1, d, generator=g)
    try:
        def score(m, n):
            qm = rope(q, torch.tensor([m]), layout)
            kn = rope(k, torch.tensor([n]), layout)
            return (qm * kn).sum().item()
        return all(abs(score(m, n) - score(m + s, n + s)) < 1e-3 for m, n, s in [(5, 2, 11), (3, 9, 40), (0, 17, 7)])
    except Exception:
        return False


def check_rope(rope) -> None:
    """Task 2: ``rope(x [B, H, T, d], positions [T], layout)`` for both layouts, base 10 000."""
    g = torch.Generator().manual_seed(6)
    cases = [((2, 3, 5, 8), "interleaved"), ((2, 3, 5, 8), "half"), ((1, 2, 9, 16), "interleaved"),
             ((1, 2, 9, 16), "half"), ((1, 1, 4, 64), "interleaved"), ((1, 1, 4, 64), "half")]
    for shape, layout in cases:
        x = torch.randn(*shape, generator=g)
        pos = torch.arange(shape[2]) * 3 + 1
        name = f"rope(x of shape {shape}, positions {pos.tolist()}, layout={layout!r})"
        got = expect_tensor(name, call_student(rope, x.clone(), pos.clone(), layout, name="rope"), shape)
        cos, sin = ref.rope_cos_sin(pos, shape[-1], layout=layout, dtype=torch.float64)
        want = ref.apply_rope(x.double(), cos, sin, layout)
        try:
            expect_close(name, got.double(), want, mistakes=_rope_variants(x.double(), pos, layout), atol=1e-4, rtol=1e-4)
        except AssertionError as exc:
            if "wrong values" in str(exc):
                keeps = _relative_property(rope, layout, shape[-1])
                hint = (" (q_m·k_n does depend only on m − n, so it is a rotation: check θ_i and which coordinates form pairs)"
                        if keeps else " (and q_m·k_n changes when m and n are shifted together: rotate both by their own "
                        "position, x·cos(mθ) + rotate(x)·sin(mθ))")
                raise AssertionError(str(exc) + hint) from None
            raise
    for layout in ref.ROPE_LAYOUTS:
        if not _relative_property(rope, layout, 32):
            raise AssertionError(f"rope(layout={layout!r}): q_m·k_n must depend only on m − n")
    passed("rope", len(cases) + 2)


# ----------------------------------------------------------------------------- task 3
def check_alibi_slopes(alibi_slopes) -> None:
    """Task 3: the ALiBi slopes for 8, 12, 16, … heads."""
    cases = [8, 16, 12, 4, 6, 1, 24, 32]
    for n in cases:
        name = f"alibi_slopes({n})"
        raw = call_student(alibi_slopes, n, name="alibi_slopes")
        if isinstance(raw, (list, tuple)):
            try:
                raw = torch.tensor([float(v) for v in raw])
            except (TypeError, ValueError):
                raise AssertionError(f"{name}: expected numbers; got {raw!r}") from None
        got = expect_tensor(name, raw, (n,)).double()
        want = ref.alibi_slopes(n).double()
        h = torch.arange(1, n + 1, dtype=torch.float64)
        pow2 = 2.0 ** (-8.0 * h / n)
        mistakes = {
            f"for {n} heads, which is not a power of two, the reference code takes the slopes of the closest "
            f"power of two ({2 ** int(math.log2(n))} heads), then every other slope of twice that many; "
            f"2^(−8h/n) is only for powers of two": pow2 if n & (n - 1) else None,
            "slopes start at 1 (h = 0 … n−1): the first head's slope is 2^(−8/n), m_h = 2^(−8h/n) for h = 1 … n":
                2.0 ** (-8.0 * (h - 1) / n) if not n & (n - 1) else None,
            "slopes in reverse order: the first head has the largest slope 2^(−8/n)": want.flip(0),
            "slopes not geometric: m_h = 1/(2h) is linear in 1/h; ALiBi's slopes are 2^(−8h/n), "
            "each the previous times 2^(−8/n)": 1.0 / (2 * h),
            "slopes not geometric: m_h = h/n grows linearly; ALiBi's slopes are 2^(−8h/n)": h / n,
            "slopes 2^(−h) for every n: the ratio depends on n, m_h = 2^(−8h/n) (2^(−h) only for 8 heads)":
                2.0 ** -h if n != 8 else None,
        }
        expect_close(name, got, want, mistakes=mistakes, atol=1e-6, rtol=1e-5)
    passed("alibi_slopes", len(cases))


# ----------------------------------------------------------------------------- task 4
def check_interpolation(interpolate_positions) -> None:
    """Task 4: position interpolation, m → m · L / L' (float)."""
    cases = [(2048, 8192, 64), (16, 64, 64), (100, 150, 150), (512, 512, 20), (8, 32, 32)]
    for L, Lp, n in cases:
        pos = torch.arange(n)
        name = f"interpolate_positions(arange({n}), train_len={L}, target_len={Lp})"
        got = expect_tensor(name, call_student(interpolate_positions, pos.clone(), L, Lp, name="interpolate_positions"), (n,))
        if not got.is_floating_point():
            raise AssertionError(f"{name}: expected float positions; got {got.dtype} "
                                 "(positions rounded to integers: interpolation needs fractional positions)")
        want = pos.double() * L / Lp
        s = Lp / L
        mistakes = {
            "positions multiplied instead of divided: interpolation squeezes m into [0, L), m · L / L' = m / s": pos.double() * s,
            "positions unchanged: that is extrapolation; divide by s = L'/L": pos.double() if s != 1 else None,
            "positions rounded to integers: interpolation needs fractional positions": torch.floor(pos.double() / s),
        }
        expect_close(name, got.double(), want, mistakes=mistakes, atol=1e-5, rtol=1e-5)
    passed("interpolation", len(cases))


# ----------------------------------------------------------------------------- task 5
def check_relative_matrix(relative_matrix) -> None:
    """Task 5: the clipped relative-position matrix ``P[i, j] = clip(j − i, −k, k)``."""
    cases = [(5, 2), (8, 3), (6, 0), (4, 10), (12, 4), (1, 1)]
    for n, k in cases:
        name = f"relative_matrix({n}, {k})"
        got = expect_tensor(name, call_student(relative_matrix, n, k, name="relative_matrix"), (n, n))
        if got.is_floating_point() or got.dtype == torch.bool:
            raise AssertionError(f"{name}: expected an integer tensor; got {got.dtype}")
        want = ref.relative_position_matrix(n, k)
        got = got.long()
        if torch.equal(got, want):
            continue
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        mistakes = {
            f"clip range off by one: the offsets go from −k to k = {k} inclusive": [(j - i).clamp(-k + 1, k - 1),
                                                                                  (j - i).clamp(-k - 1, k + 1)],
            "transposed: P[i, j] is the key's position minus the query's, j − i": [(i - j).clamp(-k, k)],
            "not clipped: distances beyond k all share the embedding of ±k": [j - i],
            "returned the table row clip(j − i) + k; the task asks for the offsets themselves": [(j - i).clamp(-k, k) + k],
        }
        for message, alts in mistakes.items():
            if any(torch.equal(got, a) and not torch.equal(a, want) for a in alts):
                raise AssertionError(f"{name}: {message}")
        bad = (got != want).nonzero()[0].tolist()
        raise AssertionError(f"{name}: {int((got != want).sum())} entries are wrong; first at (i={bad[0]}, j={bad[1]}): "
                             f"expected {int(want[bad[0], bad[1]])}, got {int(got[bad[0], bad[1]])}")
    passed("relative_matrix", len(cases))
