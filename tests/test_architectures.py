"""Named LLM recipes (course_lib.architectures) and the Gemma-2 parts of course_lib.model."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from course_lib.architectures import (
    PUBLISHED,
    PUBLISHED_TOTALS,
    RECIPES,
    gemma2_config,
    llama3_config,
    make_config,
    published_config,
    recipe_row,
)
from course_lib.attention import softcap, softmax
from course_lib.generation import generate, make_cache
from course_lib.model import DecoderLM, ModelConfig, count_parameters


# ----------------------------------------------------------------------------- softcap
@given(st.floats(0.5, 100.0), st.integers(0, 2**16))
def test_softcap_bounded_and_near_identity(cap, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, generator=g, dtype=torch.float64) * 3 * cap
    y = softcap(x, cap)
    assert torch.allclose(y, cap * torch.tanh(x / cap))
    assert (y.abs() < cap).all() and (y.abs() <= x.abs()).all() and torch.equal(y.sign(), x.sign())
    small = x * 1e-4
    assert torch.allclose(softcap(small, cap), small, rtol=1e-6, atol=0)


def test_softcap_gradient_vanishes_far_beyond_the_cap():
    x = torch.tensor([0.0, 50.0, 500.0], dtype=torch.float64, requires_grad=True)
    softcap(x, 50.0).sum().backward()
    assert x.grad[0] == 1.0
    assert math.isclose(x.grad[1].item(), 1 - math.tanh(1.0) ** 2)
    assert x.grad[2] < 1e-7


def test_softcap_rejects_bad_input():
    with pytest.raises(ValueError, match="cap"):
        softcap(torch.ones(3), 0)
    with pytest.raises(ValueError, match="x"):
        softcap(torch.ones(3, dtype=torch.long), 1.0)


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", list(RECIPES))
def test_toy_recipe_count_matches_built_model(name):
    for over in ({}, {"vocab_size": 37, "n_layers": 3}, {"d_model": 32, "n_heads": 2, "n_kv_heads": 1}):
        cfg = make_config(name, **over)
        assert DecoderLM(cfg).num_parameters() == count_parameters(cfg)


def test_recipes_make_the_published_choices():
    g, l, m, x, e = (RECIPES[n]() for n in ("GPT-2", "LLaMA-3", "Mistral", "Mixtral", "Gemma-2"))
    assert (g.norm, g.pos_encoding, g.ffn, g.bias, g.tie_embeddings) == ("layernorm", "learned", "gelu", True, True)
    assert (l.norm, l.pos_encoding, l.rope_base, l.ffn, l.bias, l.dropout, l.tie_embeddings) == \
        ("rmsnorm", "rope", 500000.0, "swiglu", False, 0.0, False)
    assert l.n_kv_heads < l.n_heads and m.window is not None and not m.local_global
    assert (x.n_experts, x.top_k) == (8, 2)
    assert (e.norm_placement, e.ffn, e.local_global, e.attn_softcap, e.final_softcap) == \
        ("sandwich", "geglu", True, 50.0, 30.0)
    assert recipe_row(e)["soft-cap"] == "attn 50, final 30"
    with pytest.raises(ValueError, match="overrides"):
        llama3_config(n_head=3)
    with pytest.raises(ValueError, match="name"):
        make_config("gpt-5")


def test_published_counts_are_the_released_totals_exactly():
    """One formula, count_parameters, gives the released checkpoints' totals to the parameter."""
    exact = {"gpt2-small": 124_439_808, "llama-3-8b": 8_030_261_248, "mistral-7b": 7_241_732_096,
             "mixtral-8x7b": 46_702_792_704, "gemma-2-9b": 9_241_705_984}
    assert set(exact) == set(PUBLISHED)
    for name, total in exact.items():
        cfg = published_config(name)
        assert count_parameters(cfg) == total == PUBLISHED_TOTALS[name][0], name
    assert 8_324_201_984 + 917_504_000 == exact["gemma-2-9b"]          # Gemma-2 paper, Table 2
    mixtral = published_config("mixtral-8x7b")
    active = count_parameters(mixtral, active=True)
    assert abs(active / PUBLISHED_TOTALS["mixtral-8x7b"][1] - 1) < 0.005    # "12.9B active"
    assert count_parameters(mixtral) - active == 32 * (8 - 2) * 3 * 4096 * 14336   # six idle experts per layer


def test_published_configs_build_on_the_meta_device():
    """The formula is checked against the model itself, built without memory (Gemma-2: head_dim 256)."""
    for name in ("gpt2-small", "gemma-2-9b"):
        with torch.device("meta"):
            model = DecoderLM(published_config(name))
        assert model.num_parameters() == count_parameters(model.config), name
    with pytest.raises(ValueError, match="name: expected one of"):
        published_config("gpt-5")


# ----------------------------------------------------------------------------- Gemma-2 parts of the model
def test_new_fields_validate_and_default_off():
    cfg = ModelConfig(vocab_size=10)
    assert (cfg.attn_softcap, cfg.final_softcap, cfg.local_global) == (None, None, False)
    with pytest.raises(ValueError, match="attn_softcap"):
        ModelConfig(vocab_size=10, attn_softcap=0.0)
    with pytest.raises(ValueError, match="final_softcap"):
        ModelConfig(vocab_size=10, final_softcap=-1)
    with pytest.raises(ValueError, match="local_global"):
        ModelConfig(vocab_size=10, local_global=True)
    with pytest.raises(ValueError, match="attn_softcap"):
        ModelConfig(vocab_size=10, attn_softcap=5.0, pos_encoding="relative")


def test_layer_windows_alternate_layer_zero_local():
    cfg = gemma2_config(n_layers=5, window=8)
    assert [cfg.layer_window(i) for i in range(5)] == [8, None, 8, None, 8]
    model = DecoderLM(cfg)
    assert [b.attn.window for b in model.blocks] == [8, None, 8, None, 8]
    plain = llama3_config(window=8, n_layers=3)
    assert [plain.layer_window(i) for i in range(3)] == [8, 8, 8]


def _copy(cfg_from, cfg_to, seed=0):
    torch.manual_seed(seed)
    a = DecoderLM(cfg_from).eval()
    b = DecoderLM(cfg_to).eval()
    b.load_state_dict(a.state_dict())
    return a, b


def test_huge_caps_change_nothing():
    base = llama3_config(window=6)
    a, b = _copy(base, llama3_config(window=6, attn_softcap=1e9, final_softcap=1e9))
    x = torch.randint(0, base.vocab_size, (2, 20))
    torch.testing.assert_close(b(x), a(x), atol=1e-5, rtol=1e-5)


def test_attention_softcap_matches_a_reference_and_final_softcap_bounds():
    cfg = llama3_config(n_layers=1, attn_softcap=0.5)
    torch.manual_seed(0)
    model = DecoderLM(cfg).eval()
    x = torch.randn(2, 9, cfg.d_model)
    attn = model.blocks[0].attn
    pos = torch.arange(9).expand(2, 9)
    got = attn(x, pos)
    B, T, _ = x.shape
    q = attn._split(attn.q_proj(x), cfg.n_heads)
    k = attn._split(attn.k_proj(x), cfg.n_kv_heads)
    v = attn._split(attn.v_proj(x), cfg.n_kv_heads)
    q, k = attn.apply_positions(q, k, pos)
    k, v = k.repeat_interleave(cfg.n_rep, 1), v.repeat_interleave(cfg.n_rep, 1)
    s = 0.5 * torch.tanh(q @ k.transpose(-1, -2) / math.sqrt(cfg.head_dim) / 0.5)
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    want = attn.o_proj((softmax(s) @ v).transpose(1, 2).reshape(B, T, -1))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # capped after the mask would differ: -inf would become -0.5
    assert not torch.allclose(got, attn.o_proj((softmax(0.5 * torch.tanh(
        (q @ k.transpose(-1, -2) / math.sqrt(cfg.head_dim)).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(),
                                                                        float("-inf")) / 0.5)) @ v)
        .transpose(1, 2).reshape(B, T, -1)), atol=1e-4)

    a, b = _copy(llama3_config(), llama3_config(final_softcap=0.05))
    ids = torch.randint(0, 96, (2, 12))
    torch.testing.assert_close(b(ids), softcap(a(ids), 0.05))
    assert b(ids).abs().max() <= 0.05  # tanh saturates to ±1 in float32


def test_local_global_mixes_windowed_and_full_layers():
    base = llama3_config(n_layers=2, window=4)
    full = llama3_config(n_layers=2)
    mixed = llama3_config(n_layers=2, window=4, local_global=True)
    torch.manual_seed(0)
    m_base, m_full, m_mixed = DecoderLM(base).eval(), DecoderLM(full).eval(), DecoderLM(mixed).eval()
    m_full.load_state_dict(m_base.state_dict())
    m_mixed.load_state_dict(m_base.state_dict())
    x = torch.randint(0, 96, (1, 16))
    out = {n: m(x) for n, m in (("base", m_base), ("full", m_full), ("mixed", m_mixed))}
    # within the window every layer sees everything: all agree on the first 4 positions
    torch.testing.assert_close(out["mixed"][:, :4], out["full"][:, :4])
    assert not torch.allclose(out["mixed"][:, 8:], out["base"][:, 8:], atol=1e-4)
    assert not torch.allclose(out["mixed"][:, 8:], out["full"][:, 8:], atol=1e-4)


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_generates_the_same_with_and_without_cache(name):
    cfg = make_config(name, window=5) if name in ("Mistral", "Gemma-2") else make_config(name)
    torch.manual_seed(1)
    model = DecoderLM(cfg)
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], [2, 7, 1]]
    new, logits = generate(model, prompts, 12, return_logits=True)
    ref, ref_logits = generate(model, prompts, 12, use_cache=False, return_logits=True)
    assert torch.equal(new, ref)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)


def test_rolling_cache_refused_for_local_global():
    model = DecoderLM(gemma2_config(window=4))
    with pytest.raises(ValueError, match="rolling"):
        make_cache(model, 1, 10, "rolling")
