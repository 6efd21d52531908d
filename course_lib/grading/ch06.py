"""Checks for Exercise 6 (positions).

Tasks, in the order of the exercise notebook:

1. ``sinusoidal_table(n, d)`` → ``[n, d]``: PE[t, 2i] = sin(t·ω_i), PE[t, 2i+1] = cos(t·ω_i),
   ω_i = 10000^(−2i/d);
2. ``rope(x, positions, layout)`` → x rotated by RoPE in the named layout (``"interleaved"``: pairs
   (x_0, x_1), (x_2, x_3), …; ``"half"``: pairs (x_i, x_{i+d/2})), θ_i = 10000^(−2i/d); the check
   also verifies that the rotated scores depend only on m − n;
3. ``alibi_slopes(n_heads)`` → ``[n_heads]`` for 8, 12, 16 … heads (the ALiBi reference code);
4. ``interpolate_positions(position_ids, train_len, target_len)`` → float positions m · L / L';
5. ``relative_matrix(n, k)`` → ``[n, n]`` int, clip(j − i, −k, k);
6. (transfer) ``ntk_base(base, head_dim, rotary_dim, s)`` → the NTK-aware base for a head that rotates
   only its first ``rotary_dim`` coordinates: the slowest rotating pair slows by exactly s;
7. (transfer) ``yarn_frequencies(head_dim, base, s, train_len, alpha, beta)`` → ``[head_dim/2]``: YaRN's
   "NTK-by-parts" frequencies, interpolated or kept per pair by the turns it makes in the context.

Each check builds the reference with ``course_lib.positional`` (tested against torch and the
papers' code in ``tests/test_positional.py``), or recomputes the paper's formula and checks its
properties (tasks 6 and 7); an answer that calls the library function of its task is refused
(:mod:`course_lib.grading.forbid`); on a wrong answer it recomputes the typical wrong answers to name
the mistake.
"""

from __future__ import annotations

import math

import torch

from course_lib import positional as ref
from course_lib.grading import expect_close, expect_number, expect_tensor, passed
from course_lib.grading.forbid import call_without_library

__all__ = [
    "check_sinusoidal",
    "check_rope",
    "check_alibi_slopes",
    "check_interpolation",
    "check_relative_matrix",
    "check_ntk_base",
    "check_yarn_frequencies",
]


# The library functions that answer a task outright: calling them scores nothing (the sheet asks for plain
# torch). Task 7 (YaRN) has none; its θ_i may come from anywhere.
_ROPE = ["rope_frequencies", "rope_angles", "rope_cos_sin", "rotate_half", "rotate_every_two", "apply_rope",
         "apply_rotary_pos_emb", "rope_rotation_matrix", "RotaryEmbedding"]
_LIBRARY = {
    "sinusoidal_table": ["sinusoidal_position_encoding", "sinusoidal_frequencies", "SinusoidalPositionalEmbedding"],
    "rope": _ROPE,
    "alibi_slopes": ["alibi_slopes"],
    "interpolate_positions": ["interpolate_positions", "interpolation_scale"],
    "relative_matrix": ["relative_position_matrix", "relative_positions"],
    "ntk_base": ["ntk_scaled_base"],
    "yarn_frequencies": [],
}


def _call(fn, *args, name: str, **kwargs):
    """The student's function ``name``, with the ``course_lib.positional`` functions of its task forbidden."""
    return call_without_library(fn, [(ref, f) for f in _LIBRARY[name]], *args, name=name, **kwargs)


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
        got = expect_tensor(name, _call(sinusoidal_table, n, d, name="sinusoidal_table"), (n, d))
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
        got = expect_tensor(name, _call(rope, x.clone(), pos.clone(), layout, name="rope"), shape)
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
    _check_elementwise(rope)
    passed("rope", len(cases) + 3)


def _contracted(func, args, kwargs) -> int:
    """The length of the contracted dimension of a matrix product (1 for an outer product), else 0."""
    name = getattr(func, "__name__", "")
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if name in ("matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "mv", "dot", "inner") and tensors:
        return tensors[0].shape[-1] if tensors[0].dim() else 1
    if name == "linear" and tensors:
        return tensors[0].shape[-1]
    if name in ("addmm", "baddbmm", "addbmm", "addmv") and len(tensors) >= 3:
        return tensors[1].shape[-1]
    if name == "einsum" and args and isinstance(args[0], str):
        equation = args[0].replace(" ", "")
        operands = [a for a in (args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:])
                    if isinstance(a, torch.Tensor)]
        inputs, _, output = equation.partition("->")
        sizes: dict[str, int] = {}
        for sub, t in zip(inputs.split(","), operands):
            head, _, tail = sub.partition("...")
            for letter, size in zip(head, t.shape):
                sizes[letter] = size
            for letter, size in zip(reversed(tail), reversed(t.shape)):
                sizes[letter] = size
        n = 1
        for letter, size in sizes.items():
            if letter not in output and letter.isalpha():
                n *= size
        return n
    return 0


def _check_elementwise(rope) -> None:
    """The task asks for the O(d) form: a d × d rotation matrix gives the same numbers at O(d²) per vector.

    A ``TorchFunctionMode`` sees every matrix product the answer calls (``@``, ``torch.matmul``,
    ``einsum``, ``F.linear`` …) and the length of the dimension it sums over: the elementwise form, the
    angles' outer product (a sum over 1) and Meta's complex multiplication pass, ``x @ R`` does not.
    (Cheaper than ``FlopCounterMode``, whose dispatch mode imports ``torch._dynamo``.)
    """
    from torch.overrides import TorchFunctionMode

    d = 256
    longest = []

    class _Products(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            longest.append(_contracted(func, args, kwargs or {}))
            return func(*args, **(kwargs or {}))

    x = torch.randn(1, 2, 8, d, generator=torch.Generator().manual_seed(67))
    with _Products():
        _call(rope, x, torch.arange(8), "half", name="rope")
    if max(longest, default=0) >= 4:
        raise AssertionError(
            f"rope(x of shape (1, 2, 8, {d}), layout='half'): a matrix product summing over {max(longest)} "
            "coordinates: the rotation was done with a matrix, O(d²) per vector. RoPE is elementwise, "
            "y = x·cos + rotate(x)·sin: O(d)")


# ----------------------------------------------------------------------------- task 3
def check_alibi_slopes(alibi_slopes) -> None:
    """Task 3: the ALiBi slopes for 8, 12, 16, … heads."""
    cases = [8, 16, 12, 4, 6, 1, 24, 32]
    for n in cases:
        name = f"alibi_slopes({n})"
        raw = _call(alibi_slopes, n, name="alibi_slopes")
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
        got = expect_tensor(name, _call(interpolate_positions, pos.clone(), L, Lp, name="interpolate_positions"), (n,))
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
        got = expect_tensor(name, _call(relative_matrix, n, k, name="relative_matrix"), (n, n))
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


# ----------------------------------------------------------------------------- task 6 (transfer)
def _slowdown(base: float, new_base: float, rotary_dim: int) -> tuple[float, float]:
    """How much the fastest and the slowest rotating pair slow down, θ_i / θ'_i, for a new base."""
    slow = (new_base / base) ** ((rotary_dim - 2) / rotary_dim)
    return 1.0, slow


NTK_CASES = [  # base, head_dim, rotary_dim, s
    (10000.0, 128, 128, 4.0),       # LLaMA-2, every coordinate rotated
    (10000.0, 80, 32, 8.0),         # Phi-2-shaped: 40 % of an 80-wide head
    (10000.0, 256, 64, 2.0),        # GPT-NeoX-20B-shaped: 25 % of a 256-wide head (rotary_pct = 0.25)
    (500000.0, 128, 128, 16.0),     # LLaMA-3 base
]


def check_ntk_base(ntk_base) -> None:
    """Task 6: ``base' = base · s^(r/(r−2))`` with r = rotary_dim: the slowest rotating pair slows by exactly s."""
    g = torch.Generator().manual_seed(606)
    cases = list(NTK_CASES)
    for _ in range(4):                                           # heads the sheet does not print
        head_dim = 16 * int(torch.randint(2, 17, (1,), generator=g))
        rotary_dim = 2 * int(torch.randint(2, head_dim // 2 + 1, (1,), generator=g))
        s = float(torch.randint(2, 33, (1,), generator=g)) / 2 + 1
        cases.append((float([1e4, 5e5, 1e6][int(torch.randint(0, 3, (1,), generator=g))]), head_dim, rotary_dim, s))
    for base, D, r, s in cases:
        name = f"ntk_base(base={base:g}, head_dim={D}, rotary_dim={r}, s={s:g})"
        got = expect_number(name, _call(ntk_base, base, D, r, s, name="ntk_base"))
        want = base * s ** (r / (r - 2))
        if math.isclose(got, want, rel_tol=1e-9):
            continue
        if got <= 0:
            raise AssertionError(f"{name}: a base must be positive; got {got:g}")
        _, slow = _slowdown(base, got, r)
        mistakes = {
            f"used head_dim = {D} where the rotating width rotary_dim = {r} belongs: the frequencies are "
            f"base^(−2i/{r}), so the slowest rotating pair has exponent ({r} − 2)/{r}":
                base * s ** (D / (D - 2)) if D != r else None,
            "exponent inverted: s^((r − 2)/r) slows the slowest pair by only s^(((r − 2)/r)²); it needs "
            "s^(r/(r − 2))": base * s ** ((r - 2) / r),
            f"base · s: the slowest pair's frequency is base^(−(r − 2)/r), so a base · s slows it by s^((r − 2)/r) "
            f"= {s ** ((r - 2) / r):.4g}, not s (beware of integer division: r // (r − 2) is 1)": base * s,
            "base unchanged: NTK-aware scaling raises the base so that the slow pairs slow down": base,
            "the base divided by the scale: a larger base slows every pair but the first, a smaller one speeds "
            "them up": base / s ** (r / (r - 2)),
        }
        for message, alt in mistakes.items():
            if alt is not None and math.isclose(got, alt, rel_tol=1e-6):
                raise AssertionError(f"{name}: {message} (expected {want:.6g}, got {got:.6g})")
        raise AssertionError(
            f"{name}: expected {want:.6g}; got {got:.6g}: with your base the slowest rotating pair slows by "
            f"{slow:.4g}, not s = {s:g} (the fastest, θ_0 = 1, never changes)")
    passed("ntk_base", len(cases))


# ----------------------------------------------------------------------------- task 7 (transfer)
def _yarn(head_dim, base, s, L, alpha, beta, *, variant="paper"):
    """YaRN's NTK-by-parts frequencies (Peng et al., 2023, §3.2) and the likely wrong versions."""
    theta = ref.rope_frequencies(head_dim, base, dtype=torch.float64)
    wavelength = (1 / theta) if variant == "no_2pi" else 2 * math.pi / theta
    r = wavelength / L if variant == "inverted_r" else L / wavelength
    gamma = (r - alpha) / (beta - alpha)
    if variant != "no_clamp":
        gamma = gamma.clamp(0, 1)
    if variant == "by_index":                 # a ramp linear in the pair index between the pairs where r = β and r = α
        low = math.floor(head_dim * math.log(L / (beta * 2 * math.pi)) / (2 * math.log(base)))
        high = math.ceil(head_dim * math.log(L / (alpha * 2 * math.pi)) / (2 * math.log(base)))
        low, high = max(low, 0), min(high, head_dim // 2 - 1)
        i = torch.arange(head_dim // 2, dtype=torch.float64)
        gamma = 1 - ((i - low) / max(high - low, 1e-3)).clamp(0, 1)
    if variant == "reversed":
        gamma = 1 - gamma
    return (1 - gamma) * theta / s + gamma * theta


YARN_CASES = [  # head_dim, base, s, train_len, alpha, beta
    (128, 10000.0, 4.0, 4096, 1.0, 32.0),      # LLaMA-2 to 16 k, the paper's α, β
    (64, 10000.0, 8.0, 2048, 1.0, 32.0),
    (128, 500000.0, 8.0, 8192, 1.0, 32.0),     # LLaMA-3's base: fewer pairs in the ramp
]


def check_yarn_frequencies(yarn_frequencies) -> None:
    """Task 7: per pair, θ_i/s where r_i < α, θ_i where r_i > β, a linear blend in r between."""
    g = torch.Generator().manual_seed(607)
    cases = list(YARN_CASES)
    for _ in range(4):                                          # settings the sheet does not print
        d = 16 * int(torch.randint(2, 13, (1,), generator=g))
        base = [1e4, 5e4, 5e5][int(torch.randint(0, 3, (1,), generator=g))]
        s = float(torch.randint(2, 33, (1,), generator=g))
        L = 256 * int(torch.randint(2, 33, (1,), generator=g))
        alpha = float(torch.randint(1, 4, (1,), generator=g))
        beta = alpha + float(torch.randint(8, 64, (1,), generator=g))
        cases.append((d, base, s, L, alpha, beta))
    for d, base, s, L, alpha, beta in cases:
        name = f"yarn_frequencies(head_dim={d}, base={base:g}, s={s:g}, train_len={L}, alpha={alpha:g}, beta={beta:g})"
        got = _call(yarn_frequencies, d, base, s, L, alpha, beta, name="yarn_frequencies")
        got = expect_tensor(name, got, (d // 2,)).double()
        want = _yarn(d, base, s, L, alpha, beta)
        theta = ref.rope_frequencies(d, base, dtype=torch.float64)
        wrong = {
            "the ramp is reversed: the fast pairs (many turns, r > β) must keep θ_i and the slow ones (r < α) be "
            "interpolated, θ_i / s — local order lives in the fast pairs": _yarn(d, base, s, L, alpha, beta,
                                                                                   variant="reversed"),
            "r inverted: r_i is the number of turns pair i makes over the trained context, L / λ_i, not λ_i / L":
                _yarn(d, base, s, L, alpha, beta, variant="inverted_r"),
            "wavelength without the 2π: pair i turns once every λ_i = 2π / θ_i tokens":
                _yarn(d, base, s, L, alpha, beta, variant="no_2pi"),
            "the ramp is not clamped: γ = (r − α)/(β − α) must be cut to [0, 1], so that the pairs outside "
            "[α, β] get exactly θ_i / s or θ_i": _yarn(d, base, s, L, alpha, beta, variant="no_clamp"),
            "every pair interpolated (θ_i / s): that is position interpolation; YaRN keeps the fast pairs":
                theta / s,
            "no pair changed: the slow pairs (r < α) must be interpolated, θ_i / s": theta,
            "the ramp is linear in the pair index (as some code does it), not in r: blend by "
            "γ_i = (r_i − α)/(β − α)": _yarn(d, base, s, L, alpha, beta, variant="by_index"),
        }
        expect_close(name, got, want, atol=0, rtol=1e-6, mistakes=wrong)
    passed("yarn_frequencies", len(cases))
