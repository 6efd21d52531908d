"""Checks for Exercise 7 (Feed-forward and GLU variants).

Tasks, in the order of the exercise notebook (weights in the maths layout ``x W``:
``w_gate``, ``w_up`` are ``[d_model, d_ff]``, ``w_down`` is ``[d_ff, d_model]``):

1. ``swiglu_forward(x, w_gate, w_up, w_down)`` → ``(SiLU(x W_gate) ⊗ (x W_up)) W_down``;
2. ``glu_hidden_dim(d_model, multiple_of)`` → 8/3 · d_model rounded *up* to a multiple of
   ``multiple_of`` (LLaMA's rule; d = 4096, multiple_of = 256 → 11008);
3. ``glu_ffn(x, w_gate, w_up, w_down, variant)`` → the GLU variant ``variant`` (``"glu"``,
   ``"bilinear"``, ``"reglu"``, ``"geglu"``, ``"swiglu"``);
4. ``ffn_param_count(d_model, d_ff, kind, bias)`` → parameters of a standard (``"relu"``,
   ``"gelu"``) or GLU FFN;
5. (transfer) ``glu_width_for_budget(d_model, d_ff, bias, multiple_of)`` → the widest GLU FFN, a
   multiple of ``multiple_of``, with no more parameters than a standard FFN of width ``d_ff``;
6. (transfer) ``glu_jacobian(x, w_gate, w_up, w_down, variant)`` → ``[d_model, d_model]``, the Jacobian
   ``J[i, j] = ∂y_j/∂x_i`` of a GLU FFN at one token, derived by hand (autograd is refused).

References come from ``course_lib.ffn`` (tested against ``F.silu``, ``F.gelu`` and a hand-written
LLaMA MLP); an answer to Tasks 1–4 that calls them is refused (:mod:`course_lib.grading.forbid`); a wrong answer is compared with the known wrong answers (gate and up swapped,
sigmoid instead of SiLU, no rounding, 4·d instead of 8/3·d, …) and the message names the match.
"""

from __future__ import annotations

import math
import numbers
import sys

import torch
import torch.nn.functional as F

from course_lib import ffn
from course_lib.ffn import GLU_VARIANTS, ffn_num_parameters, glu_hidden_dim
from course_lib.grading import call_student, expect_close, expect_number, expect_tensor, passed
from course_lib.grading.forbid import AUTOGRAD_MESSAGE, Refused, autograd, call_without_library, refusing

__all__ = ["check_swiglu_forward", "check_glu_hidden_dim", "check_glu_ffn", "check_ffn_param_count",
           "check_glu_width_for_budget", "check_glu_jacobian", "reference_glu_ffn", "BUDGET_CASES"]

SWAPPED = "gate and up swapped (activation applied to the wrong branch): φ goes on x·W_gate, not on x·W_up"
SIGMOID = "sigmoid instead of SiLU (GLU instead of SwiGLU): Swish(z) = z·σ(z), not σ(z)"


def reference_glu_ffn(x, w_gate, w_up, w_down, variant="swiglu"):
    """``(φ(x W_gate) ⊗ (x W_up)) W_down`` with φ = ``GLU_VARIANTS[variant]``."""
    return (GLU_VARIANTS[variant](x @ w_gate) * (x @ w_up)) @ w_down


def _library(task: str) -> list[tuple[object, str]]:
    """The library functions that answer a warm-up outright: calling them scores nothing (F.silu, F.gelu, …
    are the tools the tasks expect; Tasks 5 and 6 have no library answer, and Task 6 refuses autograd)."""
    this = sys.modules[__name__]
    glu = [(ffn.GatedFeedForward, "forward"), (this, "reference_glu_ffn")]
    return {
        "swiglu_forward": glu,
        "glu_ffn": glu,
        "glu_hidden_dim": [(ffn, "glu_hidden_dim")],
        "ffn_param_count": [(ffn, "ffn_num_parameters"), (ffn, "build_feed_forward"), (ffn, "FeedForward"),
                            (ffn, "GatedFeedForward")],
    }[task]


def _call(task: str, fn, *args, **kwargs):
    """The student's function, with the library functions of ``task`` forbidden."""
    return call_without_library(fn, _library(task), *args, name=task, **kwargs)


def _weights(g, d, h, dtype):
    s = d ** -0.5
    return (torch.randn(d, h, generator=g, dtype=dtype) * s, torch.randn(d, h, generator=g, dtype=dtype) * s,
            torch.randn(h, d, generator=g, dtype=dtype) * h ** -0.5)


def _glu_mistakes(x, wg, wu, wd, variant):
    act = GLU_VARIANTS[variant]
    m = {}
    if variant != "bilinear":
        m[SWAPPED] = (act(x @ wu) * (x @ wg)) @ wd
    if variant == "swiglu":
        m[SIGMOID] = (torch.sigmoid(x @ wg) * (x @ wu)) @ wd
        m["ReLU instead of SiLU (ReGLU instead of SwiGLU)"] = (F.relu(x @ wg) * (x @ wu)) @ wd
        m["GELU instead of SiLU (GEGLU instead of SwiGLU)"] = (F.gelu(x @ wg) * (x @ wu)) @ wd
    if variant == "geglu":
        m["tanh approximation of GELU: use the exact erf form (F.gelu's default)"] = \
            (F.gelu(x @ wg, approximate="tanh") * (x @ wu)) @ wd
        m["SiLU instead of GELU (SwiGLU instead of GEGLU)"] = (F.silu(x @ wg) * (x @ wu)) @ wd
    if variant == "glu":
        m["SiLU instead of sigmoid (SwiGLU instead of GLU)"] = (F.silu(x @ wg) * (x @ wu)) @ wd
    m["no gate: the up branch x·W_up must multiply the activated gate element-wise"] = act(x @ wg) @ wd
    m["activation applied after the product: φ goes on the gate branch only, φ(x·W_gate) ⊗ (x·W_up)"] = \
        act((x @ wg) * (x @ wu)) @ wd
    m["added the branches instead of multiplying them element-wise"] = (act(x @ wg) + (x @ wu)) @ wd
    return m


def _cases(seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape, h, dtype in [((5, 8), 12, torch.float64), ((2, 7, 16), 40, torch.float64),
                            ((3, 4, 6), 16, torch.float32), ((1, 1, 4), 8, torch.float64)]:
        x = torch.randn(*shape, generator=g, dtype=dtype) * 1.5
        out.append((x, *_weights(g, shape[-1], h, dtype)))
    return out


# ----------------------------------------------------------------------------- task 1
def check_swiglu_forward(swiglu_forward) -> None:
    """Task 1: the SwiGLU FFN of LLaMA (no biases)."""
    cases = _cases(701)
    for x, wg, wu, wd in cases:
        name = f"swiglu_forward(x {tuple(x.shape)}, d_ff={wg.shape[1]}, {str(x.dtype)[6:]})"
        got = _call("swiglu_forward", swiglu_forward, x.clone(), wg.clone(), wu.clone(), wd.clone())
        got = expect_tensor(name, got, tuple(x.shape))
        expect_close(name, got, reference_glu_ffn(x, wg, wu, wd, "swiglu"),
                     mistakes=_glu_mistakes(x, wg, wu, wd, "swiglu"))
    passed("swiglu_forward", len(cases))


# ----------------------------------------------------------------------------- task 2
def check_glu_hidden_dim(glu_hidden_dim_fn) -> None:
    """Task 2: 8/3 · d_model rounded up to a multiple of ``multiple_of``."""
    cases = [(4096, 256), (5120, 256), (8192, 256), (768, 64), (512, 128), (100, 8), (96, 64), (3 * 64, 64), (1, 1)]
    for d, m in cases:
        name = f"glu_hidden_dim(d_model={d}, multiple_of={m})"
        raw = _call("glu_hidden_dim", glu_hidden_dim_fn, d, m)
        got = expect_number(name, raw)
        want = glu_hidden_dim(d, multiple_of=m)
        if got == want:
            if not isinstance(raw, numbers.Integral) or isinstance(raw, bool):
                raise AssertionError(f"{name}: expected an int (a width); got {type(raw).__name__} {raw!r}: "
                                     "use integer arithmetic (// and a ceiling division)")
            continue
        h = int(8 * d / 3)
        mistakes = {
            "rounded 8/3·d up directly: LLaMA first takes the integer part h = ⌊8d/3⌋ and then rounds h up to a "
            "multiple (the two differ when ⌊8d/3⌋ is already a multiple)": [m * math.ceil(8 * d / 3 / m)],
            "forgot to round up to multiple_of: 8/3·d must be rounded up to a multiple of multiple_of":
                [h, 8 * d / 3, round(8 * d / 3)],
            "used 4·d instead of 8/3·d: a GLU FFN has three matrices, so 2/3 of 4·d keeps the parameter count":
                [4 * d, m * -(-4 * d // m)],
            "rounded down (or to the nearest multiple) instead of up: use a ceiling division, "
            "multiple_of · ⌈h / multiple_of⌉": [m * (h // m), m * round(h / m)],
            "used 2/3·d instead of 2/3·4·d = 8/3·d": [m * -(-int(2 * d / 3) // m), int(2 * d / 3)],
        }
        for message, alts in mistakes.items():
            if got != want and any(abs(got - a) < 1e-9 for a in alts):
                raise AssertionError(f"{name}: {message} (expected {want}, got {got:.10g})")
        raise AssertionError(f"{name}: expected {want}; got {got:.10g}")
    passed("glu_hidden_dim", len(cases))


# ----------------------------------------------------------------------------- task 3
def check_glu_ffn(glu_ffn) -> None:
    """Task 3: all five GLU variants with one function."""
    cases = _cases(702)
    n = 0
    for variant in ("glu", "bilinear", "reglu", "geglu", "swiglu"):
        for x, wg, wu, wd in cases[:3]:
            name = f"glu_ffn(variant={variant!r}, x {tuple(x.shape)}, {str(x.dtype)[6:]})"
            got = _call("glu_ffn", glu_ffn, x.clone(), wg.clone(), wu.clone(), wd.clone(), variant)
            got = expect_tensor(name, got, tuple(x.shape))
            mistakes = _glu_mistakes(x, wg, wu, wd, variant)
            for other in GLU_VARIANTS:
                if other != variant:
                    mistakes.setdefault(f"computed the {other!r} variant: check the dispatch on `variant`",
                                        reference_glu_ffn(x, wg, wu, wd, other))
            expect_close(name, got, reference_glu_ffn(x, wg, wu, wd, variant), mistakes=mistakes)
            n += 1
    x, wg, wu, wd = cases[0]
    try:
        glu_ffn(x, wg, wu, wd, "swish")
    except ValueError:
        pass
    except NotImplementedError:
        raise AssertionError("glu_ffn is not implemented yet: replace `raise NotImplementedError` with your answer")
    except Exception as exc:
        raise AssertionError(f"glu_ffn(variant='swish'): expected a ValueError naming the variant; "
                             f"got {type(exc).__name__}: {exc}") from None
    else:
        raise AssertionError("glu_ffn(variant='swish'): expected a ValueError for an unknown variant; got no error")
    passed("glu_ffn", n + 1)


# ----------------------------------------------------------------------------- task 4
def check_ffn_param_count(ffn_param_count) -> None:
    """Task 4: 2·d·d_ff (+ d_ff + d) for a standard FFN, 3·d·d_ff (+ 2·d_ff + d) for a GLU."""
    cases = [(512, 2048, "relu", True), (512, 2048, "gelu", False), (4096, 11008, "swiglu", False),
             (768, 2048, "geglu", True), (64, 172, "reglu", True), (10, 14, "glu", True), (10, 14, "bilinear", False)]
    for d, h, kind, bias in cases:
        name = f"ffn_param_count(d_model={d}, d_ff={h}, kind={kind!r}, bias={bias})"
        got = expect_number(name, _call("ffn_param_count", ffn_param_count, d, h, kind, bias))
        want = ffn_num_parameters(d, h, kind, bias)
        if got == want:
            continue
        glu = kind in GLU_VARIANTS
        mistakes = {
            "counted two matrices for a GLU FFN: gate, up and down make 3·d·d_ff":
                [2 * d * h + bias * (h + d), 2 * d * h + bias * (2 * h + d)] if glu else [],
            "counted three matrices for a standard FFN: only up and down (2·d·d_ff)":
                [] if glu else [3 * d * h + bias * (2 * h + d), 3 * d * h + bias * (h + d)],
            "forgot the biases (bias=True adds one per output unit of every linear map)":
                [3 * d * h if glu else 2 * d * h] if bias else [],
            "counted biases although bias=False": [] if bias else [want + (2 * h + d if glu else h + d)],
            "GLU biases: gate and up each have d_ff biases, down has d_model (2·d_ff + d)":
                [3 * d * h + h + d, 3 * d * h + 3 * h] if (glu and bias) else [],
        }
        for message, alts in mistakes.items():
            if any(got == a for a in alts):
                raise AssertionError(f"{name}: {message} (expected {want}, got {got:.10g})")
        raise AssertionError(f"{name}: expected {want}; got {got:.10g}")
    passed("ffn_param_count", len(cases))


# ----------------------------------------------------------------------------- task 5 (transfer)
def _widest(d: int, d_ff: int, bias: bool, m: int) -> int:
    """The largest multiple of m with 3·d·h + b(2h + d) ≤ 2·d·d_ff + b(d_ff + d), in integers."""
    b = int(bias)
    return m * ((2 * d * d_ff + b * d_ff) // (m * (3 * d + 2 * b)))


BUDGET_CASES = {
    # what: d_model, d_ff, bias, multiple_of
    "GPT-2 small (d = 768, 4d, biases), multiple of 64": (768, 3072, True, 64),
    "T5-11B's FFN (d = 1024, d_ff = 65 536, no biases), multiple of 256": (1024, 65536, False, 256),
    "BERT-base without biases, multiple of 128": (768, 3072, False, 128),
}


def check_glu_width_for_budget(width_fn) -> None:
    """Task 5: the widest GLU (3 maps) that a standard FFN's (2 maps) parameter budget pays for."""
    g = torch.Generator().manual_seed(705)
    cases = [(what, *spec) for what, spec in BUDGET_CASES.items()]
    cases += [("a small FFN with biases, multiple of 1", 10, 50, True, 1),
              ("d_ff = 2d with biases, multiple of 8", 100, 200, True, 8)]
    for i in range(4):                                            # FFNs the sheet does not print
        d = 32 * int(torch.randint(2, 64, (1,), generator=g))
        d_ff = 64 * int(torch.randint(d // 64 + 1, 4 * d // 16, (1,), generator=g))
        bias = bool(torch.randint(0, 2, (1,), generator=g))
        m = [1, 8, 64, 128, 256][int(torch.randint(0, 5, (1,), generator=g))]
        cases.append((f"an unseen FFN #{i + 1}", d, d_ff, bias, m))
    for what, d, D, bias, m in cases:
        name = f"glu_width_for_budget(d_model={d}, d_ff={D}, bias={bias}, multiple_of={m}) [{what}]"
        raw = call_student(width_fn, d, D, bias, m, name="glu_width_for_budget")
        got = expect_number(name, raw)
        want = _widest(d, D, bias, m)
        budget = ffn_num_parameters(d, D, "gelu", bias)
        if got == want:
            if not isinstance(raw, numbers.Integral) or isinstance(raw, bool):
                raise AssertionError(f"{name}: expected an int (a width); got {type(raw).__name__} {raw!r}")
            continue
        exact = (2 * d * D + bias * D) / (3 * d + 2 * bias)             # the real-valued width that spends the budget
        mistakes = {
            "rounded up (as LLaMA does) or to the nearest multiple: then the GLU has more parameters than the "
            "budget; round down to the largest multiple that still fits": m * math.ceil(exact / m),
            f"used 8/3·d_model: that matches a 4·d_model FFN only; here d_ff = {D}, so solve 3·d·h (+ biases) ≤ "
            f"2·d·d_ff (+ biases) for h": m * math.floor(8 * d / 3 / m),
            "ignored the biases: with bias=True the GLU has 2·h + d biases, the standard FFN d_ff + d; put them "
            "into the budget": m * math.floor(2 * D / 3 / m),
            "not a multiple of multiple_of: round the width down to a multiple": math.floor(exact),
        }
        named = [message for message, alt in mistakes.items() if alt != want and got == alt]
        if named:                                  # two mistakes can give the same width: name each
            raise AssertionError(f"{name}: " + "; or ".join(named) + f" (expected {want}, got {got:.10g})")
        if got > 0 and got == int(got):
            used = ffn_num_parameters(d, int(got), "swiglu", bias)
            if used > budget:
                raise AssertionError(f"{name}: a GLU of width {got:.0f} has {used:,} parameters, more than the "
                                     f"standard FFN's {budget:,}; expected {want}")
            if got % m == 0:
                raise AssertionError(f"{name}: a GLU of width {got:.0f} fits ({used:,} ≤ {budget:,} parameters) but "
                                     f"is not the widest: {want} fits too")
        raise AssertionError(f"{name}: expected {want}; got {got:.10g}")
    passed("glu_width_for_budget", len(cases))


# ----------------------------------------------------------------------------- task 6 (transfer)
def _phi_and_slope(z: torch.Tensor, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The gate's activation φ(z) and its derivative φ'(z)."""
    sig = torch.sigmoid(z)
    if variant == "glu":
        return sig, sig * (1 - sig)
    if variant == "bilinear":
        return z, torch.ones_like(z)
    if variant == "reglu":
        return F.relu(z), (z > 0).to(z.dtype)
    if variant == "geglu":
        return F.gelu(z), torch.special.ndtr(z) + z * torch.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return F.silu(z), sig * (1 + z * (1 - sig))


def _jacobian_terms(x, wg, wu, wd, variant):
    """``J = (W_gate diag(φ'(g) ⊙ u) + W_up diag(φ(g))) W_down``, in its two terms."""
    g, u = x @ wg, x @ wu
    phi, slope = _phi_and_slope(g, variant)
    return (wg * (slope * u)) @ wd, (wu * phi) @ wd


JACOBIAN_VARIANTS = ("swiglu", "geglu", "glu", "reglu", "bilinear")


def check_glu_jacobian(glu_jacobian) -> None:
    """Task 6: the Jacobian of ``(φ(x W_gate) ⊗ x W_up) W_down`` at one token, against autograd's."""
    g = torch.Generator().manual_seed(706)
    n = 0
    for variant in JACOBIAN_VARIANTS:
        for d, h, at_zero in [(6, 10, False), (16, 40, False), (8, 12, True)]:
            wg, wu, wd = _weights(g, d, h, torch.float64)
            x = torch.zeros(d, dtype=torch.float64) if at_zero else torch.randn(d, generator=g, dtype=torch.float64) * 1.5
            where = "x = 0" if at_zero else f"x of size {d}"
            name = f"glu_jacobian({where}, d_ff={h}, variant={variant!r})"
            got = call_student(glu_jacobian, x.clone(), wg.clone(), wu.clone(), wd.clone(), variant, name="glu_jacobian")
            got = expect_tensor(name, got, (d, d))
            f = lambda t: reference_glu_ffn(t, wg, wu, wd, variant)
            want = torch.autograd.functional.jacobian(f, x).T         # autograd's [j, i] = ∂y_j/∂x_i
            # (not torch.func.jacrev: its first call imports torch._dynamo, seconds on a small CPU)
            gate, up = _jacobian_terms(x, wg, wu, wd, variant)
            gx, ux = x @ wg, x @ wu
            phi, _ = _phi_and_slope(gx, variant)
            sig = torch.sigmoid(gx)
            mistakes = {}     # the variant's own derivative first: for GLU, φ' = σ is also 'φ where φ' belongs'
            if variant == "swiglu":
                mistakes["SiLU'(z) = σ(z) only: SiLU(z) = z·σ(z) is a product, SiLU'(z) = σ(z)(1 + z(1 − σ(z)))"] = \
                    (wg * (sig * ux)) @ wd + up
            if variant == "geglu":
                mistakes["GELU'(z) = Φ(z) only: GELU(z) = z·Φ(z) is a product, GELU'(z) = Φ(z) + z·φ(z) with φ the "
                         "standard normal density"] = (wg * (torch.special.ndtr(gx) * ux)) @ wd + up
            if variant == "glu":
                mistakes["σ'(z) = σ(z): the sigmoid's derivative is σ(z)(1 − σ(z))"] = (wg * (sig * ux)) @ wd + up
            mistakes |= {
                "transposed: J[i, j] = ∂y_j/∂x_i, so that dy = dx @ J in the course's row layout (for y = x W, J = W)":
                    want.T,
                "the gate's term is missing (φ(x W_gate) treated as a constant): the product rule gives "
                "W_gate diag(φ'(g) ⊙ u) W_down + W_up diag(φ(g)) W_down": up,
                "the up branch's term is missing (x W_up treated as a constant): the product rule gives "
                "W_gate diag(φ'(g) ⊙ u) W_down + W_up diag(φ(g)) W_down": gate,
                "φ where φ' belongs in the gate's term: W_gate diag(φ'(g) ⊙ u) W_down": (wg * (phi * ux)) @ wd + up,
            }
            expect_close(name, got, want, atol=1e-8, rtol=1e-6, mistakes=mistakes)
            n += 1
    # the point: derived, not differentiated by autograd
    wg, wu, wd = _weights(g, 8, 16, torch.float64)
    x = torch.randn(8, generator=g, dtype=torch.float64)
    try:
        with refusing(autograd(), AUTOGRAD_MESSAGE):
            glu_jacobian(x, wg, wu, wd, "swiglu")
    except Refused:
        raise AssertionError(
            "glu_jacobian: the Jacobian was computed by autograd (torch.autograd / torch.func / .backward()): the "
            "task is to derive it — write J = W_gate diag(φ'(g) ⊙ u) W_down + W_up diag(φ(g)) W_down from the "
            "product rule, with g = x W_gate, u = x W_up") from None
    except Exception:
        pass                                                       # its errors were reported above
    passed("glu_jacobian", n + 1)
