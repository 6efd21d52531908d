"""course_lib.model: the decoder LM is causal, padding-invariant, and MHA/GQA/MQA mean what they say."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.attention import scaled_dot_product_attention
from course_lib.masks import causal_mask, combine_masks, padding_mask
from course_lib.model import (
    CausalSelfAttention,
    DecoderLM,
    ModelConfig,
    attention_mask_from_indices,
    count_parameters,
    positions_from_mask,
)
from course_lib.sparse import sliding_window_mask
from lm_properties import assert_left_padding_matches_alone, assert_no_leak

ATOL = 2e-5


def small(**kw) -> ModelConfig:
    base = dict(vocab_size=37, d_model=32, n_layers=2, n_heads=4, max_seq_len=32)
    base.update(kw)
    return ModelConfig(**base)


def model_for(cfg: ModelConfig, seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    m = DecoderLM(cfg).eval()
    with torch.no_grad():  # non-zero biases, so that they are tested too
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return m


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(vocab_size=0), r"vocab_size: expected an integer ≥ 1; got 0"),
        (dict(d_model=30, n_heads=4), r"n_heads: expected a divisor of d_model = 30 \(or give head_dim\); got 4"),
        (dict(n_kv_heads=3), r"n_kv_heads: expected a divisor of n_heads = 4 .*; got 3"),
        (dict(n_kv_heads=0), r"n_kv_heads: expected None or an integer ≥ 1; got 0"),
        (dict(n_kv_heads=8), r"n_kv_heads: expected a divisor of n_heads = 4"),
        (dict(pos_encoding="rotary"), r"pos_encoding: expected one of .*'learned'.*; got 'rotary'"),
        (dict(window=0), r"window: expected None or an integer ≥ 1; got 0"),
        (dict(dropout=1.0), r"dropout: expected a probability in \[0, 1\); got 1.0"),
        (dict(d_ff=-1), r"d_ff: expected None or an integer ≥ 1; got -1"),
        (dict(n_layers=True), r"n_layers: expected an integer ≥ 1; got True"),
        (dict(head_dim=0), r"head_dim: expected None or an integer ≥ 1; got 0"),
        (dict(norm_eps=0), r"norm_eps: expected None or a number > 0; got 0"),
        (dict(attn_implementation="flash"), r"attn_implementation: expected one of \('sdpa', 'repeat_kv', 'eager', 'relative'\); got 'flash'"),
        (dict(attn_softcap=50.0, attn_implementation="sdpa"), r"attn_softcap: soft-capping needs attn_implementation='eager'"),
        (dict(pos_encoding="relative", attn_implementation="sdpa"), r"attn_implementation: pos_encoding='relative' needs relative; got 'sdpa'"),
        (dict(pos_encoding="rope", head_dim=5, n_heads=4), r"head_dim: expected an even head_dim for RoPE"),
        (dict(norm_offset=1.0), r"norm_offset: only RMSNorm takes an offset .*norm='layernorm'"),
        (dict(attn_scale=0.0), r"attn_scale: expected None or a number > 0; got 0.0"),
        (dict(qkv_bias=1), r"qkv_bias: expected a bool or None; got 1"),
        (dict(scale_embeddings=1), r"scale_embeddings: expected a bool; got 1"),
        (dict(pos_encoding="relative", attn_scale=0.5), r"attn_scale: the relative attention function scales by 1/√head_dim"),
    ],
)
def test_config_validation(kw, message):
    with pytest.raises(ValueError, match=message):
        small(**kw)


def test_config_resolves_its_derived_fields_once():
    cfg = small(n_heads=8, n_kv_heads=2)
    assert (cfg.head_dim, cfg.n_kv_heads, cfg.n_rep, cfg.d_ff) == (4, 2, 4, 128)
    assert small().n_kv_heads == 4 and small().n_rep == 1
    assert (small().norm_eps, small(norm="rmsnorm").norm_eps) == (1e-5, 1e-6)
    assert small(ffn="swiglu").d_ff == 128            # 8/3 · 32 = 85.3, rounded up to a multiple of 64
    assert small().attn_implementation == "sdpa" and small(attn_softcap=5.0).attn_implementation == "eager"
    assert small(pos_encoding="relative").attn_implementation == "relative"
    assert ModelConfig(**small(n_kv_heads=2).to_dict()) == small(n_kv_heads=2)   # a saved config reloads as is


def test_config_replace_derives_again_what_was_derived():
    cfg = small(d_model=48)                                         # 4·d = 192, a GLU's 8/3·d → 128
    assert cfg.replace(ffn="swiglu").d_ff == small(d_model=48, ffn="swiglu").d_ff == 128 != cfg.d_ff
    assert cfg.replace(d_model=64).head_dim == 16 and cfg.replace(n_heads=2).n_kv_heads == 2
    assert small(d_ff=48).replace(ffn="swiglu").d_ff == 48        # an explicit value is kept
    assert cfg.replace(attn_softcap=10.0).attn_implementation == "eager"
    assert dataclasses.replace(cfg, ffn="swiglu").d_ff == cfg.d_ff  # dataclasses.replace keeps values: the trap replace avoids


def test_head_dim_need_not_divide_d_model():
    """Gemma-2's shape: n_heads · head_dim ≠ d_model (here 4 · 12 = 48 in a 32-wide model)."""
    cfg = small(head_dim=12, n_kv_heads=2, pos_encoding="rope")
    m = model_for(cfg)
    attn = m.blocks[0].attn
    assert attn.q_proj.weight.shape == (48, 32) and attn.k_proj.weight.shape == (24, 32)
    assert attn.o_proj.weight.shape == (32, 48)
    assert m.num_parameters() == count_parameters(cfg)
    x = torch.randint(37, (2, 9))
    assert m(x).shape == (2, 9, 37)
    assert_no_leak(m, vocab=37)


def test_qkv_bias_puts_biases_on_q_k_v_only():
    """Qwen2: biases on the q, k, v projections and nowhere else (``bias=False, qkv_bias=True``)."""
    m = DecoderLM(small(bias=False, qkv_bias=True, norm="rmsnorm"))
    with_bias = sorted({n.split(".", 2)[2] for n, _ in m.named_parameters() if n.endswith("bias")})
    assert with_bias == ["attn.k_proj.bias", "attn.q_proj.bias", "attn.v_proj.bias"]
    assert small().qkv_bias is True and small(bias=False).qkv_bias is False      # None → bias
    assert small(bias=False).replace(bias=True).qkv_bias is True                 # derived again


def test_norm_offset_scales_by_one_plus_gamma():
    """Gemma's RMSNorm: ``x / RMS(x) · (1 + γ)``, γ starting at 0, the sum taken in fp32."""
    m = DecoderLM(small(norm="rmsnorm", norm_offset=1.0))
    norm = m.blocks[0].norm1
    assert torch.equal(norm.weight, torch.zeros(32))                              # the scale starts at 1
    with torch.no_grad():
        norm.weight.normal_(0, 0.5)
    x = torch.randn(3, 32, dtype=torch.float64)
    want = x / (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt() * (1 + norm.weight.double())
    torch.testing.assert_close(norm.double()(x), want)
    half = norm.to(torch.bfloat16)                                                # 1 + γ in fp32, not rounded in bf16
    xb = x.to(torch.bfloat16)
    ref = (xb.float() * torch.rsqrt(xb.float().pow(2).mean(-1, keepdim=True) + norm.eps)
           * (1.0 + half.weight.float())).to(torch.bfloat16)
    assert torch.equal(half(xb), ref)


def test_scale_embeddings_multiplies_by_sqrt_d_model():
    """Gemma: ``h⁰ = √d · E[x]``. With one layer and zero weights everywhere but the embeddings
    and an identity head, the logits are the scaled embedding passed through the final norm —
    so compare the residual stream directly through a hook."""
    cfg = small(pos_encoding="none", n_layers=1)
    plain, scaled = model_for(cfg), DecoderLM(cfg.replace(scale_embeddings=True)).eval()
    scaled.load_state_dict(plain.state_dict())
    seen = {}
    for name, m in (("plain", plain), ("scaled", scaled)):
        m.blocks[0].register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0]))
        m(torch.tensor([[1, 2, 3]]))
    torch.testing.assert_close(seen["scaled"], seen["plain"] * 32 ** 0.5)


def test_attn_scale_is_the_factor_of_the_scores():
    """``attn_scale`` replaces 1/√head_dim in every attention function (Gemma-2's 1/√256): a model
    with head_dim 8 and attn_scale 20 equals the default one (1/√8) with W_q, b_q multiplied by 20·√8."""
    ids = torch.randint(37, (2, 9), generator=torch.Generator().manual_seed(1))
    for impl in ("sdpa", "repeat_kv", "eager"):
        base = model_for(small(n_kv_heads=2, attn_implementation=impl))
        assert abs(base.config.attn_scale - 8 ** -0.5) < 1e-15
        scaled = DecoderLM(base.config.replace(attn_scale=20.0)).eval()
        scaled.load_state_dict(base.state_dict())
        ref = DecoderLM(base.config).eval()
        state = base.state_dict()
        for i in range(base.config.n_layers):                                    # fold the factor into W_q, b_q
            for kind in ("weight", "bias"):
                state[f"blocks.{i}.attn.q_proj.{kind}"] = state[f"blocks.{i}.attn.q_proj.{kind}"] * (20.0 * 8 ** 0.5)
        ref.load_state_dict(state)
        torch.testing.assert_close(scaled(ids), ref(ids), atol=ATOL, rtol=1e-4)
        assert (scaled(ids) - base(ids)).abs().max() > 1e-3


def test_norm_eps_reaches_every_norm():
    m = DecoderLM(small(norm="rmsnorm", norm_eps=1e-5))
    norms = [mod for mod in m.modules() if isinstance(mod, torch.nn.RMSNorm)]
    assert len(norms) == 2 * m.config.n_layers + 1 and all(n.eps == 1e-5 for n in norms)


# ----------------------------------------------------------------------------- attention functions
@pytest.mark.parametrize("kw", [
    dict(n_kv_heads=2), dict(n_kv_heads=1), dict(n_kv_heads=4), dict(n_kv_heads=2, window=3),
    dict(n_kv_heads=2, pos_encoding="alibi"), dict(n_kv_heads=1, pos_encoding="rope"),
])
def test_attention_functions_compute_the_same(kw):
    """sdpa (grouped queries), repeat_kv (K/V copied) and eager (written out) agree, with padding,
    windows and ALiBi's per-head bias, with and without a cache."""
    from course_lib.generation import generate
    ids = torch.randint(37, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, :4] = 0
    mask[2, :1] = 0
    outs, tokens = {}, {}
    for impl in ("sdpa", "repeat_kv", "eager"):
        m = model_for(small(attn_implementation=impl, **kw))
        outs[impl] = m(ids, attention_mask=mask)
        tokens[impl] = generate(m, [[1, 2, 3, 4], [5, 6]], 6)
    for impl in ("repeat_kv", "eager"):
        torch.testing.assert_close(outs[impl], outs["sdpa"], atol=ATOL, rtol=1e-4)
        assert torch.equal(tokens[impl], tokens["sdpa"])


# ----------------------------------------------------------------------------- parameter counts
def test_parameter_count_by_hand():
    # V=10, d=8, h=2 (d_h=4), h_kv=1, L=1, max_seq_len=4, d_ff=16, biases, tied head:
    # embeddings 80 + positions 32 + block [q 64 + k 32 + v 32 + o 64, biases 8+4+4+8,
    # ffn 128+128 + 16+8, two LayerNorms 32] + final LayerNorm 16 = 656
    cfg = ModelConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=4, d_ff=16)
    assert DecoderLM(cfg).num_parameters() == 656 == count_parameters(cfg)


@pytest.mark.parametrize("kw", [
    dict(), dict(n_kv_heads=2), dict(n_kv_heads=1), dict(bias=False), dict(tie_embeddings=False),
    dict(pos_encoding="none"), dict(d_ff=48, n_layers=3),
    dict(ffn="swiglu"), dict(ffn="geglu", bias=False, d_ff=40), dict(n_experts=4, top_k=2),
    dict(n_experts=3, top_k=1, ffn="swiglu", bias=False),
    dict(bias=False, qkv_bias=True, norm="rmsnorm"), dict(bias=True, qkv_bias=False),
    dict(norm="rmsnorm", norm_offset=1.0, norm_placement="sandwich", scale_embeddings=True, attn_scale=0.1),
])
def test_parameter_count_formula(kw):
    cfg = small(**kw)
    assert DecoderLM(cfg).num_parameters() == count_parameters(cfg)


def test_gqa_saves_only_kv_parameters():
    mha, mqa = small(), small(n_kv_heads=1)
    d, L, h, dh = mha.d_model, mha.n_layers, mha.n_heads, mha.head_dim
    # K and V each lose (h − 1)·d_h output rows: weights d·(h−1)·d_h and biases (h−1)·d_h
    assert count_parameters(mha) - count_parameters(mqa) == L * 2 * (d + 1) * (h - 1) * dh


def test_tied_head():
    m = DecoderLM(small())
    assert m.lm_head.weight is m.tok_emb.weight
    assert DecoderLM(small(tie_embeddings=False)).lm_head.weight is not DecoderLM(small()).tok_emb.weight


# ----------------------------------------------------------------------------- masks and positions
def test_positions_from_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    want = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]])
    assert torch.equal(positions_from_mask(mask), want)


@given(T=st.integers(1, 12), lens=st.lists(st.integers(1, 12), min_size=1, max_size=3),
       window=st.one_of(st.none(), st.integers(1, 6)))
def test_mask_from_indices_equals_course_masks(T, lens, window):
    lens = [min(n, T) for n in lens]
    idx = torch.arange(T)
    key_valid = padding_mask(lens, T, side="left")[:, 0, 0, :]
    got = attention_mask_from_indices(idx, idx, key_valid, window)
    base = causal_mask(T) if window is None else sliding_window_mask(T, window)
    want = combine_masks(padding_mask(lens, T, side="left"), base)
    real_q = key_valid[:, None, :, None]                 # rows of real queries must agree exactly
    assert torch.equal(got & real_q, want & real_q)
    assert got.any(-1).all()                             # no fully masked row, padded queries included


# ----------------------------------------------------------------------------- attention
def reference_attention(attn: CausalSelfAttention, x: torch.Tensor, window=None) -> torch.Tensor:
    """Loop over query heads with course_lib.attention; head i reads K/V head i // n_rep."""
    B, T, D = x.shape
    h, hkv, dh = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = attn.q_proj(x).view(B, T, h, dh).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, hkv, dh).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, hkv, dh).transpose(1, 2)
    mask = causal_mask(T) if window is None else sliding_window_mask(T, window)
    heads = [scaled_dot_product_attention(q[:, i], k[:, i // (h // hkv)], v[:, i // (h // hkv)], mask)
             for i in range(h)]
    return attn.o_proj(torch.stack(heads, 1).transpose(1, 2).reshape(B, T, D))


@pytest.mark.parametrize("kv", [4, 2, 1])
@pytest.mark.parametrize("window", [None, 3])
def test_attention_matches_reference(kv, window):
    cfg = small(n_kv_heads=kv, window=window)
    torch.manual_seed(1)
    attn = CausalSelfAttention(cfg).eval()
    x = torch.randn(2, 9, cfg.d_model)
    pos = torch.arange(9).expand(2, 9)
    torch.testing.assert_close(attn(x, pos), reference_attention(attn, x, window), atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("kv", [2, 1])
def test_gqa_matches_torch_enable_gqa(kv):
    if "enable_gqa" not in F.scaled_dot_product_attention.__doc__:
        pytest.skip("this torch has no enable_gqa")
    cfg = small(n_kv_heads=kv)
    torch.manual_seed(2)
    attn = CausalSelfAttention(cfg).eval()
    x = torch.randn(3, 7, cfg.d_model)
    B, T, _ = x.shape
    q = attn.q_proj(x).view(B, T, 4, cfg.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, kv, cfg.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, kv, cfg.head_dim).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    want = attn.o_proj(o.transpose(1, 2).reshape(B, T, cfg.d_model))
    torch.testing.assert_close(attn(x, torch.arange(T).expand(B, T)), want, atol=ATOL, rtol=1e-4)


def expand_kv_to_mha(gqa: DecoderLM) -> DecoderLM:
    """An MHA model whose K/V heads are copies of the GQA heads: head i ← K/V head i // n_rep."""
    cfg = dataclasses.replace(gqa.config, n_kv_heads=None)
    mha = DecoderLM(cfg).eval()
    state = gqa.state_dict()
    r, dh = gqa.config.n_rep, cfg.head_dim
    for name, t in list(state.items()):
        if any(s in name for s in ("k_proj", "v_proj")):
            heads = t.reshape(gqa.config.n_kv_heads, dh, *t.shape[1:])
            state[name] = heads.repeat_interleave(r, dim=0).reshape(cfg.n_heads * dh, *t.shape[1:])
    mha.load_state_dict(state)
    return mha


@pytest.mark.parametrize("kv", [1, 2])
def test_gqa_is_mha_with_shared_kv_heads(kv):
    """MQA (kv=1) and GQA (kv=2): query heads of a group share one K/V head, consecutively."""
    gqa = model_for(small(n_kv_heads=kv))
    mha = expand_kv_to_mha(gqa)
    ids = torch.randint(37, (2, 11), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gqa(ids), mha(ids), atol=ATOL, rtol=1e-4)


def test_n_kv_heads_equal_n_heads_is_mha():
    a, b = model_for(small()), model_for(small(n_kv_heads=4))
    ids = torch.randint(37, (2, 8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a(ids), b(ids))


# ----------------------------------------------------------------------------- the model
@pytest.mark.parametrize("kw", [dict(), dict(n_kv_heads=2), dict(n_kv_heads=1), dict(window=3),
                                dict(pos_encoding="none")])
def test_causal_no_leak(kw):
    assert_no_leak(model_for(small(**kw)), 37, atol=ATOL)


def test_window_limits_the_receptive_field():
    """One layer with window 3: the logits at t depend on tokens t−2 … t only."""
    m = model_for(small(n_layers=1, window=3))
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(37, (1, 10), generator=g)
    changed = ids.clone()
    changed[0, 2] = (ids[0, 2] + 1) % 37
    d = (m(ids) - m(changed)).abs().amax(-1)[0]
    assert (d[:2] < 1e-6).all() and (d[2:5] > 1e-4).all() and (d[5:] < 1e-6).all()


def test_large_window_is_full_attention():
    a, b = model_for(small()), model_for(small(window=32))
    ids = torch.randint(37, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a(ids), b(ids), atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("kw", [dict(), dict(n_kv_heads=1), dict(window=4), dict(pos_encoding="none")])
def test_left_padding_gives_the_logits_of_each_prompt_alone(kw):
    assert_left_padding_matches_alone(model_for(small(**kw)), 37, atol=ATOL)


def test_explicit_positions_equal_default():
    m = model_for(small())
    ids = torch.randint(37, (2, 6), generator=torch.Generator().manual_seed(0))
    assert torch.equal(m(ids), m(ids, position_ids=torch.arange(6).expand(2, 6)))
    assert torch.equal(m(ids), m(ids, attention_mask=torch.ones(2, 6, dtype=torch.long)))


def test_model_bad_input():
    m = DecoderLM(small(max_seq_len=8))
    with pytest.raises(ValueError, match=r"input_ids: expected 2 dimensions; got shape \(5,\)"):
        m(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_ids: expected an integer dtype"):
        m(torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"attention_mask: expected shape \(B, past \+ T\) = \(1, 5\)"):
        m(torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"position_ids: expected positions < max_seq_len = 8; got 8"):
        m(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"position_ids: expected shape \(B, T\) = \(1, 5\)"):
        m(torch.zeros(1, 5, dtype=torch.long), position_ids=torch.arange(4)[None])
    with pytest.raises(ValueError, match=r"config: expected a ModelConfig"):
        DecoderLM(dict(vocab_size=3))


def test_backward_and_dropout_train_mode():
    m = DecoderLM(small(dropout=0.1)).train()
    ids = torch.randint(37, (2, 10), generator=torch.Generator().manual_seed(0))
    loss = F.cross_entropy(m(ids)[:, :-1].reshape(-1, 37), ids[:, 1:].reshape(-1))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    m.eval()
    assert torch.equal(m(ids), m(ids))


@settings(max_examples=15)
@given(B=st.integers(1, 3), T=st.integers(1, 10), kv=st.sampled_from([1, 2, 4]))
def test_output_shape(B, T, kv):
    m = model_for(small(n_kv_heads=kv, n_layers=1))
    out = m(torch.randint(37, (B, T)))
    assert out.shape == (B, T, 37) and torch.isfinite(out).all()


def test_residual_projections_get_the_scaled_init_for_every_ffn_kind():
    """GPT-2's 1/√(2L) init reaches the output projection of GLU FFNs and of MoE experts too."""
    for kw in (dict(), dict(ffn="swiglu"), dict(n_experts=2, top_k=1, ffn="swiglu")):
        torch.manual_seed(0)
        cfg = small(n_layers=8, d_model=64, **kw)
        model = DecoderLM(cfg)
        downs = [p for n, p in model.named_parameters() if n.endswith(("down.weight", "down_proj.weight"))]
        assert downs, kw
        want = 0.02 / (2 * cfg.n_layers) ** 0.5
        for p in downs:
            assert abs(p.std().item() - want) < 0.25 * want, (kw, p.std().item(), want)
