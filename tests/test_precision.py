"""course_lib.precision: the format table against torch.finfo, simulated rounding against
``.to(dtype)``, bit fields against the known encodings, the loss scaler against
``torch.amp.GradScaler`` step by step, master weights, and the ValueErrors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.precision import (
    FORMATS,
    DynamicLossScaler,
    FloatFormat,
    float_fields,
    format_table,
    from_fields,
    get_format,
    master_weight_step,
    round_to_format,
    sequential_sum,
    underflow_fraction,
    update_scale,
)


# ----------------------------------------------------------------------------- formats
@pytest.mark.parametrize("name", ["fp32", "fp16", "bf16"])
def test_format_matches_finfo(name):
    f = FORMATS[name]
    fi = torch.finfo(f.dtype)
    assert f.bits == fi.bits
    assert f.max == fi.max
    assert f.eps == fi.eps
    assert f.tiny == fi.tiny == fi.smallest_normal
    # the smallest subnormal is the next value above 0
    assert torch.nextafter(torch.zeros(1, dtype=torch.float32), torch.ones(1)).item() == FORMATS["fp32"].smallest_subnormal
    sub = torch.tensor(f.smallest_subnormal, dtype=torch.float64).to(f.dtype)
    assert sub.item() == f.smallest_subnormal
    assert torch.tensor(f.smallest_subnormal / 2 * 0.99, dtype=torch.float64).to(f.dtype).item() == 0.0
    assert get_format(f.dtype) is f and get_format(name) is f


def test_format_table_rows():
    rows = {r["format"]: r for r in format_table()}
    assert set(rows) == {"fp32", "tf32", "fp16", "bf16"}
    assert rows["tf32"]["bits"] == 19 and rows["tf32"]["eps"] == FORMATS["fp16"].eps
    assert rows["tf32"]["tiny"] == rows["fp32"]["tiny"] == rows["bf16"]["tiny"]
    assert rows["fp16"]["max"] == 65504.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fields_roundtrip(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2000, generator=g) * torch.exp2(torch.randint(-20, 15, (2000,), generator=g).float())).to(dtype)
    x = torch.cat([x, torch.tensor([0.0, -0.0, math.inf, -math.inf], dtype=dtype),
                   torch.tensor([torch.finfo(dtype).tiny / 4], dtype=dtype)])
    s, e, m = float_fields(x)
    f = get_format(dtype)
    assert int(e.max()) <= 2 ** f.exponent_bits - 1 and int(m.max()) < 2 ** f.mantissa_bits
    back = from_fields(s, e, m, dtype)
    assert torch.equal(back, x.double())


def test_fields_known_encodings():
    s, e, m = float_fields(torch.tensor([1.0, -2.0, 65504.0], dtype=torch.float16))
    assert s.tolist() == [0, 1, 0] and e.tolist() == [15, 16, 30] and m.tolist() == [0, 0, 1023]
    s, e, m = float_fields(torch.tensor([1.0 + 2 ** -7], dtype=torch.bfloat16))
    assert (s.item(), e.item(), m.item()) == (0, 127, 1)
    nan = from_fields(torch.tensor([0]), torch.tensor([255]), torch.tensor([1]), "fp32")
    assert torch.isnan(nan).all()


# ----------------------------------------------------------------------------- rounding
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("src", [torch.float32, torch.float64])
def test_round_to_format_equals_cast(dtype, src):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, generator=g, dtype=torch.float64) * torch.exp2(
        torch.randint(-40, 20, (20000,), generator=g).double())
    # float64 → bfloat16 in torch goes through float32 (two roundings; round_to_format rounds once),
    # so the inputs are kept representable in float32
    x = x.float().to(src)
    f = get_format(dtype)
    # ties: exactly half-way between two neighbours, and the overflow boundary
    ulp1 = f.eps
    ties = torch.tensor([1 + ulp1 / 2, 1 + 3 * ulp1 / 2, f.max, f.max * (1 + f.eps / 4), -f.max * (1 + f.eps),
                         f.smallest_subnormal / 2, 3 * f.smallest_subnormal / 2, math.inf, -math.inf],
                        dtype=torch.float64).to(src)
    x = torch.cat([x, ties])
    got = round_to_format(x, dtype)
    assert got.dtype == src
    assert torch.equal(got, x.to(dtype).to(src))


def tf32_by_bits(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to tf32 on the raw bits: round to nearest even at bit 13, clear the low 13 bits."""
    bits = x.view(torch.int32).long() & 0xFFFFFFFF
    lsb = (bits >> 13) & 1
    bits = ((bits + 0x0FFF + lsb) & ~0x1FFF) & 0xFFFFFFFF
    return torch.where(bits >= 2 ** 31, bits - 2 ** 32, bits).to(torch.int32).view(torch.float32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=64))
def test_tf32_rounding_equals_bit_rounding(values):
    x = torch.tensor(values, dtype=torch.float32)
    assert torch.equal(round_to_format(x, "tf32"), tf32_by_bits(x))


def test_tf32_rounding_on_many_values():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50000, generator=g) * torch.exp2(torch.randint(-140, 127, (50000,), generator=g).float())
    x = x[torch.isfinite(x)]
    assert torch.equal(round_to_format(x, "tf32"), tf32_by_bits(x))


def test_tf32_rounding_has_fp32_range_and_fp16_precision():
    x = torch.tensor([1 + 2 ** -11, 1e30, 1e-30, 1 + 2 ** -10], dtype=torch.float32)
    y = round_to_format(x, "tf32")
    assert y[0].item() == 1.0                            # below half an ulp of 2^-10: lost
    assert math.isfinite(y[1].item()) and y[2].item() != 0
    assert y[3].item() == 1 + 2 ** -10
    assert torch.equal(round_to_format(x, "fp32"), x)


def test_one_plus_half_eps_is_one():
    for name in ["fp16", "bf16", "fp32"]:
        f = FORMATS[name]
        one = torch.tensor(1.0, dtype=f.dtype)
        assert (one + f.eps / 2).item() == 1.0
        assert (one + f.eps).item() == 1.0 + f.eps


def test_sequential_sum_stalls_in_fp16():
    v = torch.full((10000,), 1e-4)
    assert sequential_sum(v, "fp16") == 0.25
    assert abs(sequential_sum(v, "fp32") - 1.0) < 1e-3
    # same as actually adding in torch.float16
    acc = torch.zeros((), dtype=torch.float16)
    inc = torch.tensor(1e-4, dtype=torch.float16)
    for _ in range(3000):
        acc = acc + inc
    assert sequential_sum(v[:3000], "fp16") == acc.item()


def test_underflow_fraction_and_scaling():
    g = torch.Generator().manual_seed(2)
    grads = torch.exp2(torch.empty(10000, dtype=torch.float64).uniform_(-34, -10, generator=g))
    f = FORMATS["fp16"]
    frac = underflow_fraction(grads, "fp16")
    want = ((grads.to(torch.float16)) == 0).double().mean().item()
    assert frac == pytest.approx(want) and frac > 0.1
    assert underflow_fraction(grads, "fp16", scale=2.0 ** 10) < frac
    assert underflow_fraction(grads, "bf16") == 0.0
    assert underflow_fraction(torch.zeros(3), "fp16") == 0.0
    assert f.smallest_subnormal > 0


# ----------------------------------------------------------------------------- loss scaling
GRAD_SEQUENCES = [
    [1, 1, math.inf, 1, 1, 1, math.nan, 1, 1, 1, 1],
    [math.inf, math.inf, math.inf, 1, 1, 1, 1, 1, 1],
    [1] * 7 + [math.nan] + [1] * 3,
]


@pytest.mark.parametrize("seq", GRAD_SEQUENCES)
@pytest.mark.parametrize("interval", [1, 2, 3])
def test_scaler_matches_grad_scaler(seq, interval):
    def run(scaler_cls):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.ones(4))
        opt = torch.optim.SGD([p], lr=0.1)
        scaler = scaler_cls()
        trace = []
        for g in seq:
            opt.zero_grad()
            loss = (p * torch.full((4,), float(g))).sum()
            scaler.scale(loss).backward()
            before = p.detach().clone()
            scaler.step(opt)
            scaler.update()
            trace.append((scaler.get_scale(), not torch.equal(before, p.detach()), p.detach().clone()))
        return trace

    kw = dict(init_scale=2.0 ** 10, growth_factor=2.0, backoff_factor=0.5, growth_interval=interval)
    ours = run(lambda: DynamicLossScaler(**kw))
    ref = run(lambda: torch.amp.GradScaler("cpu", **kw))
    assert [t[:2] for t in ours] == [t[:2] for t in ref]
    for a, b in zip(ours, ref):
        assert torch.equal(a[2], b[2])


def test_update_scale_rule():
    s, t = 8.0, 0
    seq = []
    for found in [False, False, False, True, False, False, False]:
        s, t = update_scale(s, t, found, growth_interval=3)
        seq.append((s, t))
    assert seq == [(8.0, 1), (8.0, 2), (16.0, 0), (8.0, 0), (8.0, 1), (8.0, 2), (16.0, 0)]


def test_scaler_update_without_step_raises():
    with pytest.raises(RuntimeError, match="step"):
        DynamicLossScaler().update()


# ----------------------------------------------------------------------------- master weights
def test_master_weights_keep_small_updates():
    w = torch.ones(8)
    grad = torch.full((8,), 1e-4, dtype=torch.float16)
    lr = 1.0
    w16 = w.to(torch.float16)
    master = w.clone()
    for _ in range(100):
        w16 = w16 - lr * grad                       # the update is below half an ulp of 1 in fp16: lost
        master, model, stepped = master_weight_step(master, grad, lr)
        assert stepped and model.dtype == torch.float16
    assert torch.equal(w16, torch.ones(8, dtype=torch.float16))
    assert master[0].item() == pytest.approx(1 - 100 * grad[0].item(), rel=1e-5)
    assert model[0].item() < 1.0


def test_master_weight_step_unscales_and_skips():
    master = torch.zeros(3)
    new, model, stepped = master_weight_step(master, torch.tensor([1024.0, 2048.0, 0.0], dtype=torch.float16),
                                             0.5, scale=1024.0)
    assert stepped and new.tolist() == [-0.5, -1.0, 0.0]
    new, model, stepped = master_weight_step(master, torch.tensor([math.inf, 1, 1], dtype=torch.float16), 0.5)
    assert not stepped and torch.equal(new, master)


# ----------------------------------------------------------------------------- errors
def test_value_errors():
    with pytest.raises(ValueError, match="fmt"):
        get_format("fp8")
    with pytest.raises(ValueError, match="exponent_bits"):
        FloatFormat("x", 1, 3)
    with pytest.raises(ValueError, match="mantissa_bits"):
        FloatFormat("x", 5, 0)
    with pytest.raises(ValueError, match="x: expected dtype"):
        round_to_format(torch.ones(2, dtype=torch.float16), "fp16")
    with pytest.raises(ValueError, match="x: expected a torch.Tensor"):
        round_to_format([1.0], "fp16")
    with pytest.raises(ValueError, match="x: expected"):
        float_fields(torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="values: expected 1 dimensions"):
        sequential_sum(torch.ones(2, 2), "fp16")
    with pytest.raises(ValueError, match="scale"):
        underflow_fraction(torch.ones(2), "fp16", scale=0)
    with pytest.raises(ValueError, match="init_scale"):
        DynamicLossScaler(init_scale=-1)
    with pytest.raises(ValueError, match="growth_interval"):
        DynamicLossScaler(growth_interval=0)
    with pytest.raises(ValueError, match="backoff_factor"):
        DynamicLossScaler(backoff_factor=1.5)
    with pytest.raises(ValueError, match="grad: expected the shape"):
        master_weight_step(torch.zeros(3), torch.zeros(4), 0.1)
    with pytest.raises(ValueError, match="master: expected dtype"):
        master_weight_step(torch.zeros(3, dtype=torch.float16), torch.zeros(3), 0.1)
