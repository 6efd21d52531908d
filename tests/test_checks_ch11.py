"""The Exercise 11 checks pass the reference answers and name the likely mistake otherwise.

Each wrong answer below is written the way a student would write it (not taken from the
grading module), so the checks are shown to recognise the mistake itself.
"""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.grading import ch11
from helpers import refused_then_passes, stub


# ----------------------------------------------------------------------------- task 1
def props(e, m, *, mant_off=0, bias_off=0, top_exp=False, no_mantissa=False, subnormal_tiny=False):
    mm = m + mant_off
    bias = 2 ** (e - 1) - 1 + bias_off
    emax = bias + (1 if top_exp else 0)
    mx = (2.0 if no_mantissa else 2.0 - 2.0 ** -mm) * (2.0 ** emax if emax < 1024 else math.inf)
    eps = 2.0 ** -mm
    tiny = 2.0 ** (1 - bias - (mm if subnormal_tiny else 0))
    if no_mantissa:
        mx = 2.0 ** emax
    return mx, eps, tiny


def test_format_properties_passes(capsys):
    ch11.check_format_properties(props)
    assert capsys.readouterr().out == "✓ format properties: all 7 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "format_properties is not implemented yet"),
    (lambda e, m: props(e, m, mant_off=1), "max: mantissa bits off by one \\(implicit leading bit\\)"),
    (lambda e, m: (props(e, m)[0], 2.0 ** -(m + 1), props(e, m)[2]), "eps: mantissa bits off by one"),
    (lambda e, m: props(e, m, top_exp=True), "all-ones exponent is reserved"),
    (lambda e, m: props(e, m, no_mantissa=True), "forgot the mantissa"),
    (lambda e, m: props(e, m, subnormal_tiny=True), "smallest subnormal"),
    (lambda e, m: (props(e, m)[0], props(e, m)[1], 2.0 ** -(2 ** (e - 1) - 1)), "tiny: bias off by one"),
    (lambda e, m: props(e, m)[:2], "expected a tuple of 3 values"),
])
def test_format_properties_mistakes(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch11.check_format_properties(wrong)


# ----------------------------------------------------------------------------- task 2
def upd_ok(scale, tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    if found_inf:
        return scale * backoff_factor, 0
    tracker += 1
    if tracker == growth_interval:
        return scale * growth_factor, 0
    return scale, tracker


def upd_every_step(scale, tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    if found_inf:
        return scale * backoff_factor, 0
    return scale * growth_factor, tracker + 1


def upd_no_reset_on_inf(scale, tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    if found_inf:
        return scale * backoff_factor, tracker
    tracker += 1
    if tracker == growth_interval:
        return scale * growth_factor, 0
    return scale, tracker


def upd_no_reset_after_growth(scale, tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    if found_inf:
        return scale * backoff_factor, 0
    tracker += 1
    if tracker >= growth_interval:
        return scale * growth_factor, tracker
    return scale, tracker


def upd_off_by_one(scale, tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    if found_inf:
        return scale * backoff_factor, 0
    if tracker == growth_interval:
        return scale * growth_factor, 0
    return scale, tracker + 1


def upd_no_backoff(scale, tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    if found_inf:
        return scale, 0
    return upd_ok(scale, tracker, False, growth_factor, backoff_factor, growth_interval)


def upd_bad_tracker(scale, tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    # right scales, but the tracker counts in tens (it must count clean steps)
    if found_inf:
        return scale * backoff_factor, 0
    tracker += 10
    if tracker == 10 * growth_interval:
        return scale * growth_factor, 0
    return scale, tracker


def test_update_scale_passes(capsys):
    ch11.check_update_scale(upd_ok)
    assert capsys.readouterr().out == "✓ update scale: all 6 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "update_scale is not implemented yet"),
    (upd_every_step, "scale grows on every step instead of after K clean steps"),
    (upd_no_reset_on_inf, "not reset to 0 on an overflow"),
    (upd_no_reset_after_growth, "not reset to 0 after growing"),
    (upd_off_by_one, "off by one"),
    (upd_no_backoff, "no backoff on overflow"),
    (upd_bad_tracker, "the scales are right but growth_tracker is not"),
])
def test_update_scale_mistakes(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch11.check_update_scale(wrong)


# ----------------------------------------------------------------------------- task 3
def sgd_ok(params, grads, scale, lr, *, unscale=True, skip=True, factor=None):
    grads = [g / scale if unscale else g for g in grads] if factor is None else [g * factor for g in grads]
    found = any(not torch.isfinite(g).all() for g in grads)
    if found and skip:
        return params, False
    return [p - lr * g for p, g in zip(params, grads)], True


def test_scaled_sgd_passes(capsys):
    ch11.check_scaled_sgd_step(sgd_ok)
    assert capsys.readouterr().out == "✓ scaled SGD step: all 5 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "scaled_sgd_step is not implemented yet"),
    (lambda p, g, s, lr: sgd_ok(p, g, s, lr, unscale=False), "forgot to unscale gradients before the optimizer step"),
    (lambda p, g, s, lr: sgd_ok(p, g, s, lr, skip=False), "did not skip the step on overflow"),
    (lambda p, g, s, lr: (sgd_ok(p, g, s, lr, skip=False)[0], sgd_ok(p, g, s, lr)[1]),
     "did not skip the step on overflow"),
    (lambda p, g, s, lr: sgd_ok(p, g, s, lr, factor=s), "multiplied by S instead of dividing"),
    (lambda p, g, s, lr: ([q + lr * x / s for q, x in zip(p, g)], True), "gradient ascent|did not skip"),
])
def test_scaled_sgd_mistakes(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch11.check_scaled_sgd_step(wrong)


def test_scaled_sgd_ascent_named():
    def ascent(p, g, s, lr):
        new, stepped = sgd_ok(p, g, s, lr)
        return ([q + lr * x / s for q, x in zip(p, g)] if stepped else new), stepped
    with pytest.raises(AssertionError, match="gradient ascent"):
        ch11.check_scaled_sgd_step(ascent)


# ----------------------------------------------------------------------------- task 4
def master_ok(master, grad, lr):
    new = master - lr * grad.float()
    return new, new.half()


def test_master_update_passes(capsys):
    ch11.check_master_update(master_ok)
    assert capsys.readouterr().out == "✓ master update: all 3 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "master_update is not implemented yet"),
    (lambda m, g, lr: ((m.half() - lr * g).float(), m.half() - lr * g), "the update was done in fp16 and lost"),
    (lambda m, g, lr: (master_ok(m, g, lr)[1], master_ok(m, g, lr)[1]), "master weights stay in float32"),
    (lambda m, g, lr: (master_ok(m, g, lr)[0], master_ok(m, g, lr)[0]), "the model's copy is float16"),
    (lambda m, g, lr: (master_ok(m, g, lr)[0], m.half()), "cast the \\*new\\* master"),
    (lambda m, g, lr: master_ok(m, -g, lr), "gradient ascent"),
])
def test_master_update_mistakes(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch11.check_master_update(wrong)


# ----------------------------------------------------------------------------- task 2: factors not hard-coded
def upd_hard_coded(scale, tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    return upd_ok(scale, tracker, found_inf, 2.0, 0.5, growth_interval)


def test_update_scale_uses_the_factors_given():
    with pytest.raises(AssertionError, match="hard-coded as 2 and 0.5"):
        ch11.check_update_scale(upd_hard_coded)


# ----------------------------------------------------------------------------- task 5 (transfer)
def thresholds_ok(e, m, *, zero="half_subnormal", inf="tie"):
    bias = 2 ** (e - 1) - 1
    emin, emax = 1 - bias, bias
    top = (2 - 2.0 ** -m) * 2.0 ** emax
    zero_max = {"half_subnormal": 2.0 ** (emin - m - 1), "subnormal": 2.0 ** (emin - m), "tiny": 2.0 ** emin}[zero]
    inf_min = {"tie": top + 2.0 ** (emax - m - 1), "max": top, "next_binade": 2.0 ** (emax + 1)}[inf]
    return zero_max, inf_min


def test_flush_thresholds_passes(capsys):
    ch11.check_flush_thresholds(thresholds_ok)
    assert capsys.readouterr().out == "✓ flush thresholds: all 7 cases passed\n"


@pytest.mark.parametrize("e, m, dtype", [(5, 10, torch.float16), (8, 7, torch.bfloat16), (5, 2, torch.float8_e5m2)])
def test_the_thresholds_are_what_torch_casts(e, m, dtype):
    """The check's reference, verified by torch's own casts (float32 probes: a float64 cast rounds twice)."""
    zero_max, inf_min = thresholds_ok(e, m)
    up = torch.nextafter(torch.tensor(zero_max), torch.tensor(math.inf))
    down = torch.nextafter(torch.tensor(inf_min), torch.tensor(0.0))
    got = torch.stack([torch.tensor(zero_max), up, torch.tensor(inf_min), down]).to(dtype).float()
    assert got[0] == 0 and got[1] > 0 and torch.isinf(got[2]) and torch.isfinite(got[3])


@pytest.mark.parametrize("wrong, message", [
    (stub, "flush_thresholds is not implemented yet"),
    (lambda e, m: thresholds_ok(e, m, zero="tiny"), "zero_max: subnormals forgotten"),
    (lambda e, m: thresholds_ok(e, m, zero="subnormal"), "zero_max: the smallest subnormal itself is representable"),
    (lambda e, m: thresholds_ok(e, m, inf="max"), "inf_min: max itself is finite"),
    (lambda e, m: thresholds_ok(e, m, inf="next_binade"), "inf_min: 2\\^\\(emax \\+ 1\\) = max \\+ ulp\\(max\\) is one rounding step"),
    (lambda e, m: (thresholds_ok(e, m)[0] * 3, thresholds_ok(e, m)[1]), "zero_max: expected .*which rounds to"),
    (lambda e, m: thresholds_ok(e, m)[0], "expected a tuple of 2 values"),
    # right for the formats the sheet prints (fp16, bf16), a table lookup elsewhere
    (lambda e, m: {(5, 10): (2.0 ** -25, 65520.0), (8, 7): thresholds_ok(8, 7)}.get((e, m), (0.0, math.inf)),
     "fp8 e5m2"),
])
def test_flush_thresholds_mistakes(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch11.check_flush_thresholds(wrong)


# ----------------------------------------------------------------------------- task 6 (transfer)
def scale_by_sorting(grads, max_zero_fraction, *, zero_max=2.0 ** -25, overflow=True, strict=False):
    """The closed form: the magnitude that must survive is the (⌊f·n⌋ + 1)-th smallest."""
    mags = grads.abs().double().sort().values
    n_lost = math.floor(max_zero_fraction * len(mags))
    if strict:                                   # fewer than f·n may vanish, not at most
        n_lost = math.ceil(max_zero_fraction * len(mags)) - 1
        if n_lost < 0:
            return None
    k = math.floor(math.log2(zero_max / mags[n_lost].item())) + 1
    if overflow and 2.0 ** k * mags[-1].item() >= 65520.0:
        return None
    return 2.0 ** k


def scale_by_search(grads, max_zero_fraction, *, ks=range(-200, 200), largest=False):
    """A search over powers of two with torch's cast, as a learner would write it."""
    found = []
    for k in ks:
        half = (grads * 2.0 ** k).half()
        zero, inf = (half == 0).float().mean().item(), torch.isinf(half).any().item()
        if zero <= max_zero_fraction:
            if not largest:
                return None if inf else 2.0 ** k
            if not inf:
                found.append(k)
    return 2.0 ** max(found) if found else None


def test_smallest_loss_scale_passes(capsys):
    ch11.check_smallest_loss_scale(scale_by_sorting)
    assert capsys.readouterr().out == "✓ smallest loss scale: all 8 cases passed\n"


def test_smallest_loss_scale_search_passes_too(capsys):
    ch11.check_smallest_loss_scale(scale_by_search)
    assert capsys.readouterr().out == "✓ smallest loss scale: all 8 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "smallest_loss_scale is not implemented yet"),
    (lambda g, f: scale_by_sorting(g, f, zero_max=2.0 ** -14), "subnormals counted as lost"),
    (lambda g, f: scale_by_sorting(g, f, zero_max=2.0 ** -14 - 2.0 ** -40), "subnormals counted as lost"),
    (lambda g, f: scale_by_sorting(g, f, overflow=False), "no overflow check"),
    (lambda g, f: scale_by_search(g, f, ks=range(0, 64)), "searched only S ≥ 1"),
    (lambda g, f: scale_by_search(g, f, ks=range(0, 25)), "searched only S ≥ 1|searched a fixed range"),
    (lambda g, f: scale_by_search(g, f, ks=range(-64, 25)), "searched a fixed range"),
    (lambda g, f: scale_by_search(g, f, largest=True), "the largest scale without overflow"),
    (lambda g, f: scale_by_sorting(g, f, strict=True), "'at most'"),
    (lambda g, f: 3000.0, "expected a power of two"),
    (lambda g, f: 2048.0, "expected S = 2\\^19; got 2\\^11: at S = 2\\^11, .* become 0"),   # the demo's answer only
])
def test_smallest_loss_scale_mistakes(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch11.check_smallest_loss_scale(wrong)


# ----------------------------------------------------------------------------- calling the library scores nothing
from course_lib import precision as P  # noqa: E402


def props_by_library(e, m):
    f = P.FloatFormat("format", e, m)
    return f.max, f.eps, f.tiny


def update_by_torch(scale, tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    """GradScaler's own kernel."""
    s, t = torch.tensor([float(scale)]), torch.tensor([int(tracker)], dtype=torch.int32)
    torch._amp_update_scale_(s, t, torch.tensor([float(found_inf)]), growth_factor, backoff_factor, growth_interval)
    return s.item(), int(t.item())


def sgd_by_library(params, grads, scale, lr):
    if P.has_inf_or_nan(grads):
        return params, False
    return [P.master_weight_step(p, g, lr, scale=scale)[0] for p, g in zip(params, grads)], True


def scale_by_library(grads, max_zero_fraction):
    fp16 = P.get_format("fp16")
    for k in range(-60, 60):
        if P.underflow_fraction(grads.double(), fp16, 2.0 ** k) <= max_zero_fraction:
            return None if torch.isinf((grads * 2.0 ** k).half()).any() else 2.0 ** k
    return None


def thresholds_by_library(e, m):
    f = P.FloatFormat("format", e, m)
    return f.smallest_subnormal / 2, f.max + 2.0 ** (f.emax - m) / 2


@pytest.mark.parametrize("check, answer", [
    (ch11.check_format_properties, props_by_library),
    (ch11.check_update_scale, lambda s, t, f, gf, bf, k: P.update_scale(s, t, f, growth_factor=gf, backoff_factor=bf,
                                                                        growth_interval=k)),
    (ch11.check_update_scale, update_by_torch),
    (ch11.check_scaled_sgd_step, sgd_by_library),
    (ch11.check_master_update, lambda master, grad, lr: P.master_weight_step(master, grad, lr)[:2]),
    (ch11.check_flush_thresholds, thresholds_by_library),
    (ch11.check_smallest_loss_scale, scale_by_library),
])
def test_calling_the_library_scores_nothing(check, answer, monkeypatch):
    refused_then_passes(check, answer, ch11, monkeypatch)


def test_torch_finfo_is_refused_for_a_format():
    with pytest.raises(AssertionError, match=r"the library \(.*torch\.finfo\) does the work here"):
        ch11.check_format_properties(lambda e, m: (torch.finfo(torch.float32).max, torch.finfo(torch.float32).eps,
                                                   torch.finfo(torch.float32).tiny))
