"""course_lib.norms against torch's own LayerNorm / RMSNorm (hypothesis over shapes, eps, dtypes),
the invariances of each norm, pRMSNorm, the placements in a residual block, and the model with
every norm variant (parameter count, no leak from the future, left padding, KV-cache decoding)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.kv_cache import KVCache
from course_lib.model import DecoderLM, ModelConfig, count_parameters
from lm_properties import assert_left_padding_matches_alone, assert_no_leak
from course_lib.norms import (
    LayerNorm,
    RMSNorm,
    layer_norm,
    norm_op_counts,
    residual_block,
    rms_norm,
)
from course_lib.train import layer_grad_norms, xavier_init_


TOL = {torch.float64: (1e-10, 1e-8), torch.float32: (1e-5, 1e-4),
       torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}

shapes = st.lists(st.integers(1, 5), min_size=0, max_size=2).flatmap(
    lambda lead: st.integers(1, 67).map(lambda n: (*lead, n)))
dtypes = st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16])
epss = st.sampled_from([0.0, 1e-6, 1e-5, 1e-2, 1.0])


def rand(shape, dtype, seed, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)


# ----------------------------------------------------------------------------- against torch
@settings(max_examples=60, deadline=None)
@given(shape=shapes, dtype=dtypes, eps=epss, seed=st.integers(0, 10_000), affine=st.booleans())
def test_layer_norm_equals_torch(shape, dtype, eps, seed, affine):
    if eps == 0.0 and shape[-1] == 1:
        eps = 1e-5                      # a single entry has variance 0: 0/0 in both
    x = rand(shape, dtype, seed, scale=3.0, shift=1.5)
    n = shape[-1]
    w = rand((n,), dtype, seed + 1) if affine else None
    b = rand((n,), dtype, seed + 2) if affine else None
    got = layer_norm(x, w, b, eps)
    want = F.layer_norm(x, (n,), w, b, eps)
    assert got.dtype == dtype and got.shape == x.shape
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, dtype=dtypes, eps=epss, seed=st.integers(0, 10_000), affine=st.booleans())
def test_rms_norm_equals_torch(shape, dtype, eps, seed, affine):
    x = rand(shape, dtype, seed, scale=3.0, shift=1.5)
    n = shape[-1]
    w = rand((n,), dtype, seed + 1) if affine else None
    got = rms_norm(x, w, eps)
    want = F.rms_norm(x, (n,), w, eps)
    assert got.dtype == dtype and got.shape == x.shape
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("bias", [True, False])
def test_modules_equal_torch_modules_with_gradients(bias):
    d = 24
    x = rand((3, 5, d), torch.float64, 0, scale=2.0, shift=-1.0).requires_grad_()
    ours, theirs = LayerNorm(d, eps=1e-5, bias=bias).double(), torch.nn.LayerNorm(d, eps=1e-5, bias=bias).double()
    r_ours, r_theirs = RMSNorm(d, eps=1e-6).double(), torch.nn.RMSNorm(d, eps=1e-6).double()
    with torch.no_grad():
        for m in (ours, theirs, r_ours, r_theirs):
            m.weight.copy_(rand((d,), torch.float64, 1))
        if bias:
            ours.bias.copy_(rand((d,), torch.float64, 2))
            theirs.bias.copy_(ours.bias)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert sum(p.numel() for p in r_ours.parameters()) == d
    for a, b in ((ours, theirs), (r_ours, r_theirs)):
        ya, yb = a(x), b(x)
        torch.testing.assert_close(ya, yb)
        g = rand(ya.shape, torch.float64, 3)
        ga = torch.autograd.grad(ya, [x, a.weight], g)
        gb = torch.autograd.grad(yb, [x, b.weight], g)
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v)


def test_half_precision_statistics_in_fp32():
    """fp16 activations of size ~300: x² overflows 65 504 in fp16; the fp32 statistics do not."""
    x = (torch.randn(4, 64, generator=torch.Generator().manual_seed(0)) * 300).half()
    naive = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6)     # sum of squares in fp16
    assert not torch.isfinite((x * x).sum(-1)).all()
    assert (naive == 0).any() or not torch.isfinite(naive).all()
    y = rms_norm(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    torch.testing.assert_close(y, F.rms_norm(x.float(), (64,), eps=1e-6).half(), atol=2e-3, rtol=2e-3)
    z = layer_norm(x)
    torch.testing.assert_close(z, F.layer_norm(x.float(), (64,)).half(), atol=2e-3, rtol=2e-3)


# ----------------------------------------------------------------------------- the textbook mistakes differ
def test_biased_variance_and_eps_inside_the_root_matter():
    x = rand((4, 8), torch.float64, 5, scale=0.01)
    eps = 1e-4
    want = F.layer_norm(x, (8,), eps=eps)
    mu = x.mean(-1, keepdim=True)
    unbiased = (x - mu) / torch.sqrt(x.var(-1, keepdim=True) + eps)
    outside = (x - mu) / (x.var(-1, unbiased=False, keepdim=True).sqrt() + eps)
    assert not torch.allclose(unbiased, want, atol=1e-3) and not torch.allclose(outside, want, atol=1e-3)
    torch.testing.assert_close(layer_norm(x, eps=eps), want)


# ----------------------------------------------------------------------------- invariances
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 40), scale=st.floats(0.05, 50.0), shift=st.floats(-20, 20))
def test_invariances(seed, n, scale, shift):
    """LayerNorm: invariant to re-centring (x + c) and re-scaling (a·x); RMSNorm: re-scaling only."""
    x = rand((3, n), torch.float64, seed)
    x = x - x.mean(-1, keepdim=True) + 0.7       # a clear non-zero mean, so a shift changes the RMS
    eps = 0.0
    torch.testing.assert_close(layer_norm(scale * x, eps=eps), layer_norm(x, eps=eps))
    torch.testing.assert_close(layer_norm(x + shift, eps=eps), layer_norm(x, eps=eps))
    torch.testing.assert_close(rms_norm(scale * x, eps=eps), rms_norm(x, eps=eps))
    if abs(shift) > 0.1:
        assert not torch.allclose(rms_norm(x + shift, eps=eps), rms_norm(x, eps=eps), atol=1e-3)


def test_rms_norm_equals_layer_norm_on_centred_input():
    x = rand((5, 16), torch.float64, 1)
    x = x - x.mean(-1, keepdim=True)
    torch.testing.assert_close(rms_norm(x, eps=1e-5), layer_norm(x, eps=1e-5))


def test_output_statistics():
    x = rand((6, 50), torch.float64, 2, scale=4.0, shift=3.0)
    y = layer_norm(x, eps=0.0)
    torch.testing.assert_close(y.mean(-1), torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(6, dtype=torch.float64))
    r = rms_norm(x, eps=0.0)
    torch.testing.assert_close(r.pow(2).mean(-1).sqrt(), torch.ones(6, dtype=torch.float64))


# ----------------------------------------------------------------------------- pRMSNorm
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 70), p=st.floats(0.01, 1.0))
def test_partial_rms_norm(seed, n, p):
    x = rand((2, 3, n), torch.float64, seed)
    k = max(1, math.ceil(p * n))
    want = x / x[..., :k].pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    torch.testing.assert_close(rms_norm(x, p=p), want)
    torch.testing.assert_close(RMSNorm(n, p=p).double()(x), want)


def test_partial_rms_with_p_one_is_rms_and_estimates_it():
    x = rand((2000, 256), torch.float64, 7)
    torch.testing.assert_close(rms_norm(x, p=1.0), rms_norm(x))
    ratio = rms_norm(x, p=0.0625).pow(2).mean(-1).sqrt()        # RMS of the output, ≈ 1 on average
    assert abs(ratio.mean().item() - 1) < 0.05 and ratio.std().item() > 0.05


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("call, message", [
    (lambda: layer_norm(torch.ones(3, 4, dtype=torch.long)), r"x: expected a floating dtype; got torch.int64"),
    (lambda: layer_norm(torch.ones(3, 4), torch.ones(5)), r"weight: expected shape \(4,\) .*; got \(5,\)"),
    (lambda: layer_norm(torch.ones(3, 4), None, torch.ones(2, 2)), r"bias: expected 1 dimensions; got shape \(2, 2\)"),
    (lambda: rms_norm(torch.ones(3, 4), eps=-1.0), r"eps: expected a number ≥ 0; got -1.0"),
    (lambda: rms_norm(torch.ones(3, 4), p=0.0), r"p: expected a fraction in \(0, 1\]; got 0.0"),
    (lambda: rms_norm("x"), r"x: expected a torch.Tensor; got str"),
    (lambda: residual_block(torch.ones(2), lambda h: h, lambda h: h, "middle"), r"placement: expected one of"),
    (lambda: residual_block(torch.ones(2), lambda h: h, lambda h: h, "sandwich"), r"post_norm: expected a norm"),
    (lambda: norm_op_counts(8, "batchnorm"), r"kind: expected 'layernorm' or 'rmsnorm'"),
    (lambda: ModelConfig(vocab_size=5, norm="batchnorm"), r"norm: expected one of \('layernorm', 'rmsnorm'\)"),
    (lambda: ModelConfig(vocab_size=5, norm_placement="mid"), r"norm_placement: expected one of"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- placements and cost
def test_residual_block_placements():
    x = rand((2, 3, 8), torch.float64, 9)
    f = lambda h: 2 * h + 1  # noqa: E731
    n = lambda h: layer_norm(h)  # noqa: E731
    m = lambda h: 0.5 * rms_norm(h)  # noqa: E731
    torch.testing.assert_close(residual_block(x, f, n, "pre"), x + f(n(x)))
    torch.testing.assert_close(residual_block(x, f, n, "post"), n(x + f(x)))
    torch.testing.assert_close(residual_block(x, f, n, "sandwich", m), x + m(f(n(x))))
    # post-LN output is normalised; pre-LN keeps the raw residual stream
    assert residual_block(x, f, n, "post").pow(2).mean(-1).allclose(torch.ones(2, 3, dtype=torch.float64))


def test_op_counts():
    for n in (8, 64, 4096):
        ln, rms = norm_op_counts(n), norm_op_counts(n, "rmsnorm")
        assert ln == {"reductions": 2, "ops": 7 * n + 4} and rms == {"reductions": 1, "ops": 4 * n + 3}
        assert norm_op_counts(n, "rmsnorm", p=0.0625)["ops"] == 2 * math.ceil(n / 16) + 2 * n + 3


# ----------------------------------------------------------------------------- the model with every variant
VARIANTS = [dict(norm=n, norm_placement=p) for n in ("layernorm", "rmsnorm") for p in ("pre", "post", "sandwich")]


def small(**kw) -> ModelConfig:
    base = dict(vocab_size=37, d_model=32, n_layers=2, n_heads=4, max_seq_len=32)
    base.update(kw)
    return ModelConfig(**base)


def model_for(cfg, seed=0):
    torch.manual_seed(seed)
    return DecoderLM(cfg).eval()


@pytest.mark.parametrize("kw", VARIANTS + [dict(norm="rmsnorm", bias=False), dict(norm_placement="sandwich", bias=False)])
def test_parameter_count(kw):
    cfg = small(**kw)
    assert DecoderLM(cfg).num_parameters() == count_parameters(cfg)


def test_default_is_unchanged_and_modules_are_torch_norms():
    m = DecoderLM(small())
    assert m.config.norm == "layernorm" and m.config.norm_placement == "pre"
    assert isinstance(m.blocks[0].norm1, torch.nn.LayerNorm) and m.blocks[0].post_norm1 is None
    r = DecoderLM(small(norm="rmsnorm", norm_placement="sandwich"))
    assert isinstance(r.blocks[0].norm1, torch.nn.RMSNorm) and isinstance(r.blocks[0].post_norm2, torch.nn.RMSNorm)


@pytest.mark.parametrize("kw", VARIANTS)
def test_block_matches_hand_written_placement(kw):
    m = model_for(small(**kw))
    blk = m.blocks[0]
    x = rand((2, 6, 32), torch.float32, 11)
    pos = torch.arange(6).expand(2, 6)
    a = lambda h: blk.attn(h, pos)  # noqa: E731
    if kw["norm_placement"] == "pre":
        h = x + a(blk.norm1(x))
        want = h + blk.ffn(blk.norm2(h))
    elif kw["norm_placement"] == "post":
        h = blk.norm1(x + a(x))
        want = blk.norm2(h + blk.ffn(h))
    else:
        h = x + blk.post_norm1(a(blk.norm1(x)))
        want = h + blk.post_norm2(blk.ffn(blk.norm2(h)))
    torch.testing.assert_close(blk(x, pos), want)


@pytest.mark.parametrize("kw", VARIANTS)
def test_variants_no_leak_padding_and_cache(kw):
    m = model_for(small(**kw))
    assert_no_leak(m, 37)
    assert_left_padding_matches_alone(m, 37)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(37, (2, 12), generator=g)
    a = m(ids)
    # KV-cache decoding, one token at a time, equals the full forward pass
    cfg = m.config
    cache = KVCache(cfg.n_layers, 2, cfg.n_kv_heads, 12, cfg.head_dim)
    steps = [m(ids[:, :4], cache=cache)] + [m(ids[:, t:t + 1], cache=cache) for t in range(4, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), a, atol=2e-5, rtol=1e-4)


def test_post_ln_gradients_grow_towards_the_output_pre_ln_do_not():
    """Xiong et al. (2020), at (Xavier) initialisation, averaged over 4 seeds: the W² gradient of
    post-LN is large at the top layers; pre-LN's shrinks towards the output (and is small there)."""
    L = 12
    mean = {"post": torch.zeros(L), "pre": torch.zeros(L)}
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randint(37, (8, 32), generator=g), torch.randint(37, (8, 32), generator=g)
        for placement in ("post", "pre"):
            torch.manual_seed(seed)
            m = xavier_init_(DecoderLM(small(d_model=64, n_layers=L, tie_embeddings=False,
                                             norm_placement=placement))).train()
            mean[placement] += layer_grad_norms(m, x, y)[:, 1] / 4
            assert all(p.grad is None for p in m.parameters())
    post, pre = mean["post"], mean["pre"]
    top_vs_bottom = lambda g: g[-3:].mean() / g[:3].mean()  # noqa: E731
    assert top_vs_bottom(pre) < 0.6                                 # pre-LN: smaller near the output
    assert top_vs_bottom(post) > 2 * top_vs_bottom(pre)             # post-LN: relatively large there
    assert post[-1] > 2 * pre[-1]                                   # and large in absolute terms
    with pytest.raises(ValueError, match="names: block 0 has no parameter 'nope'"):
        layer_grad_norms(m, x, y, names=("nope",))
