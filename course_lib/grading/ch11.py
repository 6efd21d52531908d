"""Checks for Exercise 11 (Mixed precision).

Tasks, in the order of the exercise notebook:

1. ``format_properties(exponent_bits, mantissa_bits)`` → ``(max, eps, tiny)`` of an IEEE-like binary
   format (implicit leading bit, bias ``2^(e−1) − 1``, top exponent reserved for inf/NaN);
2. ``update_scale(scale, growth_tracker, found_inf, growth_factor, backoff_factor, growth_interval)``
   → ``(scale, growth_tracker)`` — the dynamic loss-scale rule of ``torch.amp.GradScaler``;
3. ``scaled_sgd_step(params, grads, scale, lr)`` → ``(new_params, stepped)`` — unscale the gradients of
   ``S · loss``, skip the step if any is inf/NaN, else take an SGD step;
4. ``master_update(master, grad, lr)`` → ``(new_master, model_weights)`` — an SGD step on fp32 master
   weights from an fp16 gradient, returning the fp32 master and its fp16 copy.

References come from ``course_lib.precision`` (tested against ``torch.finfo`` and
``torch.amp.GradScaler``); a wrong answer is compared with the known wrong answers (mantissa bits
off by one, growth on every step, no unscale, no skip, the update done in fp16, …).
"""

from __future__ import annotations

import math

import torch

from course_lib.grading import call_student, expect_close, expect_number, expect_tensor, passed
from course_lib.precision import FloatFormat, master_weight_step, update_scale

__all__ = ["check_format_properties", "check_update_scale", "check_scaled_sgd_step", "check_master_update"]


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
        res = _tuple(name, call_student(format_properties, e, m, name="format_properties"), 3)
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


def check_update_scale(update_scale_fn) -> None:
    """Task 2: the scale sequence over scripted overflow patterns equals GradScaler's."""
    patterns = [
        ("10 clean steps, K = 3", [False] * 10, 3),
        ("an overflow in the middle, K = 2", [False, False, False, True, False, False, False], 2),
        ("an overflow after K − 1 clean steps, K = 3", [False, False, True, False, False, False, False], 3),
        ("three overflows in a row, K = 2", [True, True, True, False, False, False], 2),
        ("K = 1 (grow after every clean step)", [False, True, False, False], 1),
    ]
    for what, found, K in patterns:
        name = f"update_scale on {what}"

        def student(s, t, f, gf, bf, k):
            res = _tuple(name, call_student(update_scale_fn, s, t, f, gf, bf, k, name="update_scale"), 2)
            return expect_number(f"{name}: scale", res[0]), expect_number(f"{name}: growth_tracker", res[1])

        want = _scale_trace(lambda s, t, f, gf, bf, k: update_scale(s, t, f, growth_factor=gf, backoff_factor=bf,
                                                                     growth_interval=k), found, 1024.0, 2.0, 0.5, K)
        got = _scale_trace(student, found, 1024.0, 2.0, 0.5, K)
        if [g[0] for g in got] == [w[0] for w in want]:
            if got != want:
                raise AssertionError(f"{name}: the scales are right but growth_tracker is not: expected "
                                     f"{[w[1] for w in want]}; got {[g[1] for g in got]}")
            continue
        wrong = {
            "scale grows on every step instead of after K clean steps": _scale_trace(
                lambda s, t, f, gf, bf, k: (s * bf, 0) if f else (s * gf, t + 1), found, 1024.0, 2.0, 0.5, K),
            "growth_tracker is not reset to 0 on an overflow: growth needs K *consecutive* clean steps": _scale_trace(
                lambda s, t, f, gf, bf, k: (s * bf, t) if f else ((s * gf, 0) if t + 1 == k else (s, t + 1)),
                found, 1024.0, 2.0, 0.5, K),
            "growth_tracker is not reset to 0 after growing: the next growth needs K new clean steps": _scale_trace(
                lambda s, t, f, gf, bf, k: (s * bf, 0) if f else ((s * gf, t + 1) if t + 1 >= k else (s, t + 1)),
                found, 1024.0, 2.0, 0.5, K),
            "off by one: grow when K clean steps are counted (tracker + 1 == K), not after K + 1": _scale_trace(
                lambda s, t, f, gf, bf, k: (s * bf, 0) if f else ((s * gf, 0) if t + 1 > k else (s, t + 1)),
                found, 1024.0, 2.0, 0.5, K),
            "no backoff on overflow: multiply the scale by backoff_factor (0.5)": _scale_trace(
                lambda s, t, f, gf, bf, k: (s, 0) if f else ((s * gf, 0) if t + 1 == k else (s, t + 1)),
                found, 1024.0, 2.0, 0.5, K),
            "growth and backoff swapped": _scale_trace(
                lambda s, t, f, gf, bf, k: (s * gf, 0) if f else ((s * bf, 0) if t + 1 == k else (s, t + 1)),
                found, 1024.0, 2.0, 0.5, K),
        }
        for message, alt in wrong.items():
            if [g[0] for g in got] == [a[0] for a in alt]:
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
        res = _tuple(name, call_student(scaled_sgd_step, [p.clone() for p in params], [q.clone() for q in grads],
                                        S, lr, name="scaled_sgd_step"), 2)
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
        res = _tuple(name, call_student(master_update, master.clone(), grad.clone(), lr, name="master_update"), 2)
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
