"""Checks for Exercise 11 (Mixed precision).

Tasks, in the order of the exercise notebook:

1. ``format_properties(exponent_bits, mantissa_bits)`` → ``(max, eps, tiny)`` of an IEEE-like binary
   format (implicit leading bit, bias ``2^(e−1) − 1``, top exponent reserved for inf/NaN);
2. ``update_scale(scale, growth_tracker, found_inf, growth_factor, backoff_factor, growth_interval)``
   → ``(scale, growth_tracker)`` — the dynamic loss-scale rule of ``torch.amp.GradScaler``;
3. ``scaled_sgd_step(params, grads, scale, lr)`` → ``(new_params, stepped)`` — unscale the gradients of
   ``S · loss``, skip the step if any is inf/NaN, else take an SGD step;
4. ``master_update(master, grad, lr)`` → ``(new_master, model_weights)`` — an SGD step on fp32 master
   weights from an fp16 gradient, returning the fp32 master and its fp16 copy;
5. (transfer) ``flush_thresholds(exponent_bits, mantissa_bits)`` → ``(zero_max, inf_min)`` — the largest
   magnitude that rounds to 0 and the smallest that rounds to inf (round to nearest, ties to even),
   checked by casting to ``torch.float16``, ``bfloat16``, ``float8_e5m2`` and ``float32`` and, for formats
   without a torch dtype, with ``course_lib.precision.round_to_format``;
6. (transfer) ``smallest_loss_scale(grads, max_zero_fraction)`` → the smallest power of two ``S`` such
   that at most ``max_zero_fraction`` of ``S · grads`` become 0 in fp16 and none becomes inf, or
   ``None``; checked on unseen log-normal gradient populations against torch's own fp16 cast.

References come from ``course_lib.precision`` (tested against ``torch.finfo`` and
``torch.amp.GradScaler``), ``torch._amp_update_scale_`` (the kernel behind ``GradScaler.update``) and
torch's casts; an answer to Tasks 1–5 that calls them is refused (:mod:`course_lib.grading.forbid`); a wrong answer is compared with the known wrong answers (mantissa bits
off by one, growth on every step, factors hard-coded, no unscale, no skip, the update done in fp16,
subnormals forgotten, ``max`` taken for the overflow threshold, no overflow check, …).
"""

from __future__ import annotations

import math

import torch

from course_lib import precision
from course_lib.grading import expect_close, expect_number, expect_tensor, passed
from course_lib.grading.forbid import call_without_library
from course_lib.precision import FloatFormat, master_weight_step, round_to_format

__all__ = ["check_format_properties", "check_update_scale", "check_scaled_sgd_step", "check_master_update",
           "check_flush_thresholds", "check_smallest_loss_scale", "gradient_population"]


# The functions that answer a task outright: calling them scores nothing (the sheet's intro says so).
# Task 6: a search with torch's casts is allowed, the library's underflow count is not.
_FORMATS = [(precision, "FloatFormat"), (precision, "get_format"), (precision, "format_table"), (torch, "finfo")]
_LIBRARY = {
    "format_properties": _FORMATS,
    "update_scale": [(precision, "update_scale"), (precision, "DynamicLossScaler"), (torch, "_amp_update_scale_"),
                     (torch.amp, "GradScaler")],
    "scaled_sgd_step": [(precision, "master_weight_step"), (precision, "has_inf_or_nan"),
                        (precision, "DynamicLossScaler"), (torch.amp, "GradScaler")],
    "master_update": [(precision, "master_weight_step")],
    "flush_thresholds": _FORMATS + [(precision, "round_to_format")],
    "smallest_loss_scale": [(precision, "underflow_fraction")],
}


def _call(task: str, fn, *args, **kwargs):
    """The student's function, with the library functions of ``task`` forbidden."""
    return call_without_library(fn, _LIBRARY[task], *args, name=task, **kwargs)


def _tuple(name: str, res, n: int):
    if not (isinstance(res, (tuple, list)) and len(res) == n):
        raise AssertionError(f"{name}: expected a tuple of {n} values; got {type(res).__name__}")
    return res


# ----------------------------------------------------------------------------- task 1
def _p2(k: int) -> float:
    return math.ldexp(1.0, k) if k < 1024 else math.inf


def check_format_properties(format_properties) -> None:
    """Task 1: ``max = (2 − 2^−m) · 2^bias``, ``eps = 2^−m``, ``tiny = 2^(1 − bias)``."""
    cases = [("fp32", 8, 23), ("fp16", 5, 10), ("bf16", 8, 7), ("tf32", 8, 10), ("fp64", 11, 52),
             ("fp8 e4m3-like IEEE", 4, 3), ("fp8 e5m2", 5, 2)]
    for what, e, m in cases:
        name = f"format_properties({e}, {m}) ({what})"
        res = _tuple(name, _call("format_properties", format_properties, e, m), 3)
        f = FloatFormat(what, e, m)
        got = [expect_number(f"{name}: {k}", v) for k, v in zip(("max", "eps", "tiny"), res)]
        bias = 2 ** (e - 1) - 1
        for k, g, want, wrong in [
            ("max", got[0], f.max, {
                "mantissa bits off by one (implicit leading bit): max = (2 − 2^−m) · 2^emax with the m stored bits":
                    [(2 - 2.0 ** -(m + 1)) * _p2(bias), (2 - 2.0 ** -(m - 1)) * _p2(bias)],
                "the largest exponent is 2^(e−1) − 1 = bias (the all-ones exponent is reserved for inf/NaN)":
                    [(2 - 2.0 ** -m) * _p2(bias + 1)],
                "forgot the mantissa: the largest number is 1.11…1₂ · 2^emax = (2 − 2^−m) · 2^emax, not 2^emax":
                    [_p2(bias), _p2(bias + 1)],
            }),
            ("eps", got[1], f.eps, {
                "mantissa bits off by one (implicit leading bit): eps = 2^−m where m counts the stored bits":
                    [2.0 ** -(m + 1), 2.0 ** -(m - 1)],
            }),
            ("tiny", got[2], f.tiny, {
                "that is the smallest subnormal 2^(emin − m); tiny is the smallest normal number 2^emin = 2^(1 − bias)":
                    [f.smallest_subnormal],
                "bias off by one: emin = 1 − bias with bias = 2^(e−1) − 1": [2.0 ** -bias, 2.0 ** (2 - bias)],
            }),
        ]:
            if math.isclose(g, want, rel_tol=1e-12):
                continue
            for message, alts in wrong.items():
                if any(math.isclose(g, a, rel_tol=1e-12) for a in alts):
                    raise AssertionError(f"{name}: {k}: {message}")
            raise AssertionError(f"{name}: {k}: expected {want!r}; got {g!r}")
    passed("format properties", len(cases))


# ----------------------------------------------------------------------------- task 2
def _scale_trace(fn, found, init, gf, bf, K):
    s, t, out = init, 0, []
    for f in found:
        s, t = fn(s, t, f, gf, bf, K)
        out.append((float(s), int(t)))
    return out


def _torch_update_scale(s, t, f, gf, bf, k):
    """One step of ``torch._amp_update_scale_``, the in-place kernel that ``GradScaler.update`` calls."""
    scale, tracker = torch.tensor([float(s)]), torch.tensor([int(t)], dtype=torch.int32)
    torch._amp_update_scale_(scale, tracker, torch.tensor([1.0 if f else 0.0]), gf, bf, k)
    return scale.item(), int(tracker.item())


def check_update_scale(update_scale_fn) -> None:
    """Task 2: the scale sequence over scripted overflow patterns equals GradScaler's own update kernel."""
    patterns = [  # what, found_inf per step, K, init_scale, growth_factor, backoff_factor
        ("10 clean steps, K = 3", [False] * 10, 3, 1024.0, 2.0, 0.5),
        ("an overflow in the middle, K = 2", [False, False, False, True, False, False, False], 2, 1024.0, 2.0, 0.5),
        ("an overflow after K − 1 clean steps, K = 3", [False, False, True, False, False, False, False], 3,
         1024.0, 2.0, 0.5),
        ("three overflows in a row, K = 2", [True, True, True, False, False, False], 2, 1024.0, 2.0, 0.5),
        ("K = 1 (grow after every clean step)", [False, True, False, False], 1, 1024.0, 2.0, 0.5),
        ("growth_factor 4, backoff_factor 0.25, K = 2", [False, False, True, False, False, False, True], 2,
         96.0, 4.0, 0.25),
    ]
    for what, found, K, init, gf, bf in patterns:
        name = f"update_scale on {what}"

        def student(s, t, f, gf, bf, k):
            res = _tuple(name, _call("update_scale", update_scale_fn, s, t, f, gf, bf, k), 2)
            return expect_number(f"{name}: scale", res[0]), expect_number(f"{name}: growth_tracker", res[1])

        want = _scale_trace(_torch_update_scale, found, init, gf, bf, K)
        got = _scale_trace(student, found, init, gf, bf, K)
        if [g[0] for g in got] == [w[0] for w in want]:
            if got != want:
                raise AssertionError(f"{name}: the scales are right but growth_tracker is not: expected "
                                     f"{[w[1] for w in want]}; got {[g[1] for g in got]}")
            continue
        wrong = {
            "scale grows on every step instead of after K clean steps":
                lambda s, t, f, gf, bf, k: (s * bf, 0) if f else (s * gf, t + 1),
            "growth_tracker is not reset to 0 on an overflow: growth needs K *consecutive* clean steps":
                lambda s, t, f, gf, bf, k: (s * bf, t) if f else ((s * gf, 0) if t + 1 == k else (s, t + 1)),
            "growth_tracker is not reset to 0 after growing: the next growth needs K new clean steps":
                lambda s, t, f, gf, bf, k: (s * bf, 0) if f else ((s * gf, t + 1) if t + 1 >= k else (s, t + 1)),
            "off by one: grow when K clean steps are counted (tracker + 1 == K), not after K + 1":
                lambda s, t, f, gf, bf, k: (s * bf, 0) if f else ((s * gf, 0) if t + 1 > k else (s, t + 1)),
            "no backoff on overflow: multiply the scale by backoff_factor":
                lambda s, t, f, gf, bf, k: (s, 0) if f else ((s * gf, 0) if t + 1 == k else (s, t + 1)),
            "growth and backoff swapped":
                lambda s, t, f, gf, bf, k: (s * gf, 0) if f else ((s * bf, 0) if t + 1 == k else (s, t + 1)),
            "growth_factor and backoff_factor hard-coded as 2 and 0.5: use the arguments (GradScaler lets "
            "you choose them)":
                lambda s, t, f, gf, bf, k: _torch_update_scale(s, t, f, 2.0, 0.5, k),
        }
        for message, rule in wrong.items():
            if [g[0] for g in got] == [a[0] for a in _scale_trace(rule, found, init, gf, bf, K)]:
                raise AssertionError(f"{name}: {message}")
        raise AssertionError(f"{name}: expected scales {[w[0] for w in want]}; got {[g[0] for g in got]}")
    passed("update scale", len(patterns))


# ----------------------------------------------------------------------------- task 3
def check_scaled_sgd_step(scaled_sgd_step) -> None:
    """Task 3: unscale by 1/S, skip on inf/NaN, else ``p − lr · g / S``."""
    g = torch.Generator().manual_seed(1101)
    cases = []
    for S in (1024.0, 65536.0, 8.0):
        params = [torch.randn(4, 3, generator=g), torch.randn(5, generator=g)]
        grads = [torch.randn(4, 3, generator=g) * S, torch.randn(5, generator=g) * S]
        cases.append((f"finite gradients, S = {S:g}", params, grads, S))
    params = [torch.randn(3, generator=g), torch.randn(2, 2, generator=g)]
    cases.append(("an inf in the second gradient", params, [torch.randn(3, generator=g),
                                                            torch.tensor([[1.0, math.inf], [0.0, 1.0]])], 512.0))
    cases.append(("a NaN in the first gradient", params, [torch.tensor([math.nan, 1.0, 2.0]),
                                                          torch.randn(2, 2, generator=g)], 512.0))
    lr = 0.1
    for what, params, grads, S in cases:
        name = f"scaled_sgd_step with {what}"
        res = _tuple(name, _call("scaled_sgd_step", scaled_sgd_step, [p.clone() for p in params],
                                 [q.clone() for q in grads], S, lr), 2)
        new, stepped = res
        if not isinstance(new, (list, tuple)) or len(new) != len(params):
            raise AssertionError(f"{name}: expected a list of {len(params)} new parameter tensors")
        overflow = any(not torch.isfinite(q).all() for q in grads)
        if bool(stepped) != (not overflow):
            raise AssertionError(f"{name}: stepped should be {not overflow}: "
                                 + ("did not skip the step on overflow (an inf/NaN gradient means: skip it)"
                                    if overflow else "skipped a step whose gradients are all finite"))
        for i, (p, q, n) in enumerate(zip(params, grads, new)):
            n = expect_tensor(f"{name}: new_params[{i}]", n, tuple(p.shape))
            if overflow:
                if not torch.isfinite(n).all() or not torch.equal(n.float(), p):
                    raise AssertionError(f"{name}: new_params[{i}]: did not skip the step on overflow: the parameters "
                                         "must be returned unchanged")
                continue
            expect_close(f"{name}: new_params[{i}]", n, p - lr * q / S, mistakes={
                "forgot to unscale gradients before the optimizer step (divide by S)": p - lr * q,
                "multiplied by S instead of dividing: unscale with 1/S": p - lr * q * S,
                "gradient ascent: the step is p − lr · g / S": p + lr * q / S,
            })
    passed("scaled SGD step", len(cases))


# ----------------------------------------------------------------------------- task 4
def check_master_update(master_update) -> None:
    """Task 4: fp32 master ← master − lr · g (g in fp16, applied in fp32); model weights = fp16 copy."""
    g = torch.Generator().manual_seed(1102)
    cases = [("an update below fp16's resolution near 1", torch.ones(6), torch.full((6,), 1e-4).half(), 1.0),
             ("weights of mixed sizes", torch.randn(8, generator=g) * 4, (torch.randn(8, generator=g) * 1e-3).half(),
              0.5),
             ("a 2-D weight", 1 + torch.rand(3, 4, generator=g), (torch.randn(3, 4, generator=g) * 1e-2).half(), 0.1)]
    for what, master, grad, lr in cases:
        name = f"master_update with {what}"
        res = _tuple(name, _call("master_update", master_update, master.clone(), grad.clone(), lr), 2)
        want_master, want_model, _ = master_weight_step(master, grad, lr)
        got_master = expect_tensor(f"{name}: new_master", res[0], tuple(master.shape))
        if got_master.dtype != torch.float32:
            raise AssertionError(f"{name}: new_master has dtype {got_master.dtype}: master weights stay in float32")
        expect_close(f"{name}: new_master", got_master, want_master, atol=0, rtol=1e-6, mistakes={
            "the update was done in fp16 and lost: update the fp32 master weights, then cast":
                (master.half() - lr * grad).float(),
            "gradient ascent: the step is master − lr · grad": master + lr * grad.float(),
        })
        got_model = expect_tensor(f"{name}: model_weights", res[1], tuple(master.shape))
        if got_model.dtype != torch.float16:
            raise AssertionError(f"{name}: model_weights has dtype {got_model.dtype}: the model's copy is float16")
        if not torch.equal(got_model, want_model):
            if torch.equal(got_model, master.half()):
                raise AssertionError(f"{name}: model_weights: returned the old weights; cast the *new* master to fp16")
            raise AssertionError(f"{name}: model_weights: expected new_master.to(torch.float16)")
    passed("master update", len(cases))


# ----------------------------------------------------------------------------- task 5 (transfer)
# formats with a torch dtype: (name, e, m, dtype, the dtype that holds the probes exactly). The probes
# of a 16- or 8-bit format are float32: torch casts float64 to them through float32 (two roundings).
_CAST_FORMATS = [("fp16", 5, 10, torch.float16, torch.float32), ("bf16", 8, 7, torch.bfloat16, torch.float32),
                 ("fp8 e5m2", 5, 2, torch.float8_e5m2, torch.float32), ("fp32", 8, 23, torch.float32, torch.float64)]


def _thresholds(e: int, m: int) -> tuple[float, float]:
    """``(zero_max, inf_min)``: half the smallest subnormal (a tie, rounded to the even 0) and
    ``max + ulp(max) / 2`` (a tie between ``max``, whose last bit is odd, and the even ``2^(emax+1)``)."""
    f = FloatFormat("format", e, m)
    return f.smallest_subnormal / 2, f.max + _p2(f.emax - m) / 2


def _cast(values: list[float], e: int, m: int) -> list[float]:
    """``values`` rounded to the format: by torch's own cast where the format has a dtype."""
    for _, ee, mm, dtype, probe in _CAST_FORMATS:
        if (ee, mm) == (e, m):
            return torch.tensor(values, dtype=probe).to(dtype).to(torch.float64).tolist()
    return round_to_format(torch.tensor(values, dtype=torch.float64), FloatFormat("format", e, m)).tolist()


def check_flush_thresholds(flush_thresholds) -> None:
    """Task 5: the largest magnitude that becomes 0 and the smallest that becomes inf, verified by casting."""
    g = torch.Generator().manual_seed(1105)
    cases = [(name, e, m) for name, e, m, _, _ in _CAST_FORMATS] + [("tf32", 8, 10)]
    for i in range(2):      # formats with no torch dtype that the sheet does not print
        e, m = int(torch.randint(3, 8, (1,), generator=g)), int(torch.randint(2, 13, (1,), generator=g))
        cases.append((f"an unseen format #{i + 1}", e, m))
    for what, e, m in cases:
        name = f"flush_thresholds({e}, {m}) ({what})"
        res = _tuple(name, _call("flush_thresholds", flush_thresholds, e, m), 2)
        zero_max, inf_min = (expect_number(f"{name}: {k}", v) for k, v in zip(("zero_max", "inf_min"), res))
        want_zero, want_inf = _thresholds(e, m)
        f = FloatFormat(what, e, m)
        for k, got, want, wrong in [
            ("zero_max", zero_max, want_zero, {
                "subnormals forgotten: below the smallest normal number 2^emin come the subnormals, down to "
                "2^(emin − m); only what rounds below the smallest subnormal is lost": [f.tiny, f.tiny / 2],
                "the smallest subnormal itself is representable: round to nearest sends to 0 only magnitudes up "
                "to half of it (the tie at exactly half goes to the even neighbour, 0)": [f.smallest_subnormal],
                "mantissa bits off by one: the smallest subnormal is 2^(emin − m) with the m stored bits":
                    [f.smallest_subnormal, f.smallest_subnormal / 4],
            }),
            ("inf_min", inf_min, want_inf, {
                "max itself is finite, and so is everything that rounds to it: a magnitude becomes inf from "
                "max + ulp(max)/2 on (ulp(max) = 2^(emax − m))": [f.max],
                "2^(emax + 1) = max + ulp(max) is one rounding step too far: the tie max + ulp(max)/2 already "
                "goes to inf (ties go to the even neighbour, and max's last mantissa bit is odd)": [_p2(f.emax + 1)],
            }),
        ]:
            if got == want:
                continue
            for message, alts in wrong.items():
                if any(math.isclose(got, a, rel_tol=1e-12) for a in alts):
                    raise AssertionError(f"{name}: {k}: {message}")
            raise AssertionError(f"{name}: {k}: expected {want!r}; got {got!r} "
                                 f"(which rounds to {_cast([got], e, m)[0]!r} in this format)")
    passed("flush thresholds", len(cases))


# ----------------------------------------------------------------------------- task 6 (transfer)
def gradient_population(n: int, log2_centre: float, log2_spread: float, seed: int) -> torch.Tensor:
    """``n`` float32 gradients with ``log2|g| ~ N(log2_centre, log2_spread²)`` and random signs (a
    log-normal population, the shape Micikevicius et al. report), clipped to float32's normal range."""
    g = torch.Generator().manual_seed(seed)
    log2 = (torch.randn(n, generator=g, dtype=torch.float64) * log2_spread + log2_centre).clamp(-120, 120)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    return (torch.exp2(log2) * sign).float()


_K_RANGE = range(-150, 151)       # every power of two that keeps S·g inside float32's range for the cases


def _fp16_counts(grads: torch.Tensor, k: int, zero_at: float | None = None) -> tuple[float, bool]:
    """``(fraction that becomes 0, any becomes inf)`` for ``2^k · grads`` cast to fp16 by torch (the scaled
    values are exact in float32, so the cast rounds once); ``zero_at``: count ``|S·g| < zero_at`` as lost."""
    scaled = (grads.double() * _p2(k) if k < 1024 else grads.double() * math.inf).float()
    half = scaled.to(torch.float16)
    zero = (half == 0) if zero_at is None else (scaled.abs() < zero_at)
    return zero.double().mean().item(), bool(torch.isinf(half).any())


def _smallest_scale(grads, max_zero_fraction, *, zero_at=None, overflow_check=True, ks=_K_RANGE,
                    largest=False, strict=False):
    """The reference (defaults) and the known mistakes: ``zero_at`` a wrong underflow threshold, no overflow
    check, a limited search range ``ks``, the largest safe scale instead, ``<`` for ``≤``."""
    ok = []
    for k in ks:
        zero, inf = _fp16_counts(grads, k, zero_at)
        meets = zero < max_zero_fraction if strict else zero <= max_zero_fraction
        if largest:
            if not inf and meets:
                ok.append(k)
            continue
        if meets:
            return None if (inf and overflow_check) else _p2(k)
    return _p2(max(ok)) if ok else None


SCALE_CASES = {
    # what: (n, log2 centre, log2 spread, seed, max_zero_fraction)
    "activation gradients around 2^-24, at most 1% may vanish": (4000, -24.0, 5.0, 11, 0.01),
    "the same population, none may vanish": (4000, -24.0, 5.0, 11, 0.0),
    "a wide population (spread 7 binades): no scale fits": (4000, -20.0, 7.0, 12, 0.001),
    "large gradients around 2^3: S below 1": (2000, 3.0, 2.0, 13, 0.0),
}


def check_smallest_loss_scale(smallest_loss_scale) -> None:
    """Task 6: the smallest power of two S with at most ``max_zero_fraction`` of ``S·g`` lost in fp16 and no
    inf, or None; compared with torch's own cast over every power of two on unseen gradient populations."""
    g = torch.Generator().manual_seed(1106)
    cases = [(what, *spec) for what, spec in SCALE_CASES.items()]
    cases.append(("tiny gradients around 2^-60 (S far beyond 2^24)", 3000, -60.0, 3.0, 14, 0.001))
    for i in range(3):          # populations the sheet does not print
        centre = float(torch.empty(1).uniform_(-40.0, 0.0, generator=g))
        spread = float(torch.empty(1).uniform_(1.5, 6.0, generator=g))
        frac = [0.0, 0.001, 0.01, 0.05][int(torch.randint(0, 4, (1,), generator=g))]
        n = int(torch.randint(1000, 5000, (1,), generator=g))
        cases.append((f"an unseen population #{i + 1}", n, centre, spread, 1107 + i, frac))
    for what, n, centre, spread, seed, frac in cases:
        name = f"smallest_loss_scale({what}, max_zero_fraction={frac:g})"
        grads = gradient_population(n, centre, spread, seed)
        got = _call("smallest_loss_scale", smallest_loss_scale, grads.clone(), frac)
        want = _smallest_scale(grads, frac)
        if got is not None:
            got = expect_number(name, got)
        if got == want:
            continue
        if got is not None and (got <= 0 or math.frexp(got)[0] != 0.5):
            raise AssertionError(f"{name}: expected a power of two (2^k: scaling by it is exact) or None; got {got!r}")
        if want is None:
            k = round(math.log2(got)) if got else 0
            zero, inf = _fp16_counts(grads, k)
            if inf and zero <= frac:
                raise AssertionError(
                    f"{name}: no overflow check: at S = {got:g} some S·g is inf in fp16 (|S·g| ≥ 65520), and every "
                    f"smaller scale loses more than {frac:g} of the gradients, so no scale works: return None")
        mistakes = {
            "'at most': a fraction equal to max_zero_fraction is allowed (with 0, none may vanish — and that is "
            "possible)": dict(strict=True),
            "subnormals counted as lost (|S·g| below the smallest normal 2^-14): fp16 keeps them down to 2^-24; "
            "only what rounds to 0 is lost": dict(zero_at=2.0 ** -14),
            "no overflow check: some S·g is inf in fp16 (|S·g| ≥ 65520) at that scale": dict(overflow_check=False),
            "searched only S ≥ 1: gradients this large need a scale below 1 (S = 2^k with k < 0)":
                dict(ks=range(0, 151)),
            "searched a fixed range of scales (up to 2^24?): tiny gradients need larger ones":
                dict(ks=range(-150, 25)),
            "that is the largest scale without overflow (where a dynamic scaler drifts to); the task asks for the "
            "smallest that keeps enough gradients": dict(largest=True),
        }
        for message, mistake in mistakes.items():
            alt = _smallest_scale(grads, frac, **mistake)
            if alt != want and got == alt:
                raise AssertionError(f"{name}: {message}")
        if want is not None and got is not None:
            k_got, k_want = round(math.log2(got)), round(math.log2(want))
            zero, inf = _fp16_counts(grads, k_got)
            why = (f"at S = 2^{k_got}, {zero:.4%} of S·g become 0 in fp16 (allowed: {frac:.4%})" if zero > frac else
                   f"at S = 2^{k_got} some S·g become inf" if inf else
                   f"S = 2^{k_got} works, but 2^{k_want} is smaller and works too")
            raise AssertionError(f"{name}: expected S = 2^{k_want}; got 2^{k_got}: {why}")
        raise AssertionError(f"{name}: expected {want!r}; got {got!r}")
    passed("smallest loss scale", len(cases))
