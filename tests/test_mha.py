"""course_lib.mha and course_lib.ffn against nn.MultiheadAttention and nn.Transformer{Encoder,Decoder}Layer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib.ffn import FeedForward
from course_lib.mha import (
    DecoderLayer,
    EncoderLayer,
    MultiHeadAttention,
    from_torch_masks,
    merge_heads,
    mha_batched,
    mha_fused_qkv,
    mha_loop_heads,
    mha_sdpa,
    split_heads,
    to_torch_attn_mask,
)

IMPLEMENTATIONS = [mha_loop_heads, mha_batched, mha_fused_qkv, mha_sdpa]
TOL = {torch.float32: 2e-5, torch.float64: 1e-10}


def close(a, b, dtype=torch.float32):
    torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=TOL[dtype])


def torch_mha(D, h, *, bias=True, kdim=None, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    m = nn.MultiheadAttention(D, h, bias=bias, kdim=kdim, vdim=kdim, batch_first=True, dtype=dtype).eval()
    with torch.no_grad():  # torch initialises biases to 0: make them non-zero so they are tested
        if bias:
            m.in_proj_bias.normal_()
            m.out_proj.bias.normal_()
    return m


# --------------------------------------------------------------------------- split / merge
@given(B=st.integers(1, 3), T=st.integers(1, 7), h=st.sampled_from([1, 2, 3, 4]), d_h=st.integers(1, 5))
def test_split_merge_roundtrip_and_layout(B, T, h, d_h):
    x = torch.randn(B, T, h * d_h)
    s = split_heads(x, h)
    assert s.shape == (B, h, T, d_h)
    for i in range(h):  # head i holds features i·d_h … (i+1)·d_h − 1 of every token
        assert torch.equal(s[:, i], x[..., i * d_h:(i + 1) * d_h])
    assert torch.equal(merge_heads(s), x)


def test_split_merge_bad_input():
    with pytest.raises(ValueError, match=r"n_heads: expected a divisor of the last dimension of x, 10; got 3"):
        split_heads(torch.zeros(1, 2, 10), 3)
    with pytest.raises(ValueError, match=r"x: expected 3 dimensions; got shape \(2, 10\)"):
        split_heads(torch.zeros(2, 10), 2)
    with pytest.raises(ValueError, match=r"x: expected 4 dimensions"):
        merge_heads(torch.zeros(2, 3, 4))


# --------------------------------------------------------------------------- against nn.MultiheadAttention
def _torch_masks(kind, g, B, h, T, S):
    am = kpm = None
    if kind in ("attn", "both"):
        am = torch.rand(T, S, generator=g) < 0.3
        am[:, 0] = False  # torch: True = blocked; keep key 0 for every query (no fully masked row)
    if kind in ("attn3d",):
        am = torch.rand(B * h, T, S, generator=g) < 0.3
        am[..., 0] = False
    if kind in ("padding", "both"):
        kpm = torch.zeros(B, S, dtype=torch.bool)
        kpm[-1, max(1, S - 2):] = True  # the last sequence has padded keys
    if kind == "float":
        am = torch.randn(T, S, generator=g)
    return am, kpm


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 6), S=st.integers(1, 6), h=st.sampled_from([1, 2, 4]),
       d_h=st.sampled_from([1, 3, 8]), cross=st.booleans(), bias=st.booleans(),
       mask_kind=st.sampled_from(["none", "attn", "attn3d", "padding", "both", "float"]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_matches_torch_multihead_attention(B, T, S, h, d_h, cross, bias, mask_kind, dtype):
    D = h * d_h
    S = S if cross else T
    g = torch.Generator().manual_seed(B * 100 + T * 10 + S)
    ref = torch_mha(D, h, bias=bias, dtype=dtype)
    ours = MultiHeadAttention.from_torch(ref)
    x = torch.randn(B, T, D, generator=g, dtype=dtype)
    c = torch.randn(B, S, D, generator=g, dtype=dtype) if cross else x
    am, kpm = _torch_masks(mask_kind, g, B, h, T, S)
    if am is not None and am.is_floating_point():
        am = am.to(dtype)
    want, want_w = ref(x, c, c, attn_mask=am, key_padding_mask=kpm, average_attn_weights=False)
    mask = from_torch_masks(am, kpm, n_heads=h)
    got, got_w = ours(x, c if cross else None, mask=mask, return_weights=True)
    assert got.shape == (B, T, D) and got_w.shape == (B, h, T, S)
    close(got, want, dtype)
    close(got_w, want_w, dtype)
    for impl in IMPLEMENTATIONS:  # the four implementations agree with torch too
        close(impl(ours, x, c if cross else None, mask), want, dtype)


def test_cross_attention_condition_of_another_width_kdim():
    ref = torch_mha(8, 2, kdim=5)
    ours = MultiHeadAttention.from_torch(ref)
    x, c = torch.randn(2, 3, 8), torch.randn(2, 6, 5)
    close(ours(x, c), ref(x, c, c)[0])


def test_gradients_match_torch():
    ref = torch_mha(12, 3, dtype=torch.float64)
    ours = MultiHeadAttention.from_torch(ref)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    ref(x, x, x)[0].square().sum().backward()
    ours(x).square().sum().backward()
    wq, wk, wv = ref.in_proj_weight.grad.chunk(3)
    close(ours.q_proj.weight.grad, wq, torch.float64)
    close(ours.v_proj.weight.grad, wv, torch.float64)
    close(ours.o_proj.weight.grad, ref.out_proj.weight.grad, torch.float64)


def test_mask_conversion():
    am = torch.tensor([[False, True], [False, False]])  # torch: query 0 may not see key 1
    assert torch.equal(from_torch_masks(am), torch.tensor([[True, False], [True, True]]))
    assert torch.equal(to_torch_attn_mask(from_torch_masks(am)), am)
    kpm = torch.tensor([[False, True]])
    assert from_torch_masks(key_padding_mask=kpm).shape == (1, 1, 1, 2)
    f = from_torch_masks(torch.zeros(2, 2), kpm)  # floating + boolean → additive
    assert f.dtype == torch.float32 and torch.isinf(f[..., 1]).all() and (f[..., 0] == 0).all()
    assert from_torch_masks() is None
    with pytest.raises(ValueError, match=r"attn_mask: expected a first dimension B·n_heads \(n_heads = 3\)"):
        from_torch_masks(torch.zeros(4, 2, 2, dtype=torch.bool), n_heads=3)


def test_fully_masked_query_gives_zero_where_torch_gives_nan():
    ref = torch_mha(8, 2)
    ours = MultiHeadAttention.from_torch(ref)
    x = torch.randn(1, 3, 8)
    am = torch.zeros(3, 3, dtype=torch.bool)
    am[1] = True  # torch convention: query 1 may see nothing
    want = ref(x, x, x, attn_mask=am)[0]
    assert torch.isnan(want[0, 1]).all()
    got = ours(x, mask=from_torch_masks(am))
    assert torch.isfinite(got).all()
    close(got[0, 1], ours.o_proj.bias)  # zero heads → o_proj(0) = its bias
    close(got[0, [0, 2]], want[0, [0, 2]])


def test_parameter_count_does_not_depend_on_heads():
    D = 64
    counts = {h: sum(p.numel() for p in MultiHeadAttention(D, h).parameters()) for h in (1, 2, 4, 8, 64)}
    assert set(counts.values()) == {4 * D * D + 4 * D}
    assert counts[8] == sum(p.numel() for p in nn.MultiheadAttention(D, 8).parameters())


def test_head_scale_is_sqrt_head_dim():
    m = MultiHeadAttention(16, 4).eval()
    x = torch.randn(1, 3, 16)
    _, w = m(x, return_weights=True)
    q, k = m.project_q(x), m.project_kv(x)[0]
    close(w, torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(4), dim=-1))


def test_mha_bad_input():
    with pytest.raises(ValueError, match=r"n_heads: expected a positive divisor of d_model = 10; got 4"):
        MultiHeadAttention(10, 4)
    m = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"x: expected shape \[batch, seq, d_model = 8\]; got \(2, 3, 6\)"):
        m(torch.zeros(2, 3, 6))
    with pytest.raises(ValueError, match=r"context: expected shape \[batch = 2, cond_len, d_context = 8\]; got \(3, 4, 8\)"):
        m(torch.zeros(2, 3, 8), torch.zeros(3, 4, 8))
    with pytest.raises(ValueError, match=r"mask: expected a shape that broadcasts"):
        m(torch.zeros(2, 3, 8), mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mha: expected embed_dim = 8, num_heads = 2; got 8, 4"):
        m.load_from_torch(nn.MultiheadAttention(8, 4))
    with pytest.raises(ValueError, match="mha: expected torch.nn.MultiheadAttention; got Linear"):
        m.load_from_torch(nn.Linear(2, 2))


def test_attention_dropout_only_in_training():
    m = MultiHeadAttention(8, 2, dropout=0.5)
    x = torch.randn(2, 4, 8)
    torch.manual_seed(0)
    a = m(x)
    m.eval()
    assert not torch.allclose(a, m(x))
    assert torch.equal(m(x), m(x))


# --------------------------------------------------------------------------- feed-forward
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_feedforward_is_linear_act_linear(activation):
    f = FeedForward(6, 10, activation=activation)
    x = torch.randn(2, 3, 6)
    act = F.relu if activation == "relu" else F.gelu
    close(f(x), f.down_proj(act(f.up_proj(x))))
    assert FeedForward(6).d_ff == 24


def test_feedforward_bad_input():
    with pytest.raises(ValueError, match=r"activation: expected one of \('relu', 'gelu', 'gelu_tanh'\); got 'tanh'"):
        FeedForward(4, activation="tanh")
    with pytest.raises(ValueError, match=r"d_ff: expected an integer ≥ 1; got 0"):
        FeedForward(4, d_ff=0)


# --------------------------------------------------------------------------- layers against torch
def _perturb(layer):
    with torch.no_grad():  # LayerNorm starts at weight 1, bias 0: make the test see them
        for name, p in layer.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_matches_torch(norm_first, activation):
    torch.manual_seed(1)
    ref = _perturb(nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, activation=activation,
                                              batch_first=True, norm_first=norm_first)).eval()
    ours = EncoderLayer.from_torch(ref)
    x = torch.randn(3, 5, 16)
    close(ours(x), ref(x))
    kpm = torch.zeros(3, 5, dtype=torch.bool)
    kpm[0, 3:] = True
    want = ref(x, src_key_padding_mask=kpm)
    got = ours(x, mask=from_torch_masks(key_padding_mask=kpm))
    close(got[1:], want[1:])
    close(got[0, :3], want[0, :3])  # torch's fast path may zero padded rows; real tokens must agree
    ours.train(), ref.train()
    close(ours(x), ref(x))  # training mode (no fast path), dropout 0


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_matches_torch(norm_first):
    torch.manual_seed(2)
    ref = _perturb(nn.TransformerDecoderLayer(16, 4, 24, dropout=0.0, batch_first=True,
                                              norm_first=norm_first)).eval()
    ours = DecoderLayer.from_torch(ref)
    B, T, S = 2, 5, 7  # the condition is longer than the sequence
    x, cond = torch.randn(B, T, 16), torch.randn(B, S, 16)
    causal = nn.Transformer.generate_square_subsequent_mask(T)
    mkpm = torch.zeros(B, S, dtype=torch.bool)
    mkpm[1, 4:] = True  # the second condition is padded after 4 tokens
    want = ref(x, cond, tgt_mask=causal, memory_key_padding_mask=mkpm)
    got = ours(x, cond, cond_mask=from_torch_masks(key_padding_mask=mkpm))
    assert got.shape == (B, T, 16)
    close(got, want)
    close(ours(x, cond, causal=False), ref(x, cond))


def test_decoder_layer_is_causal():
    torch.manual_seed(3)
    dec = DecoderLayer(8, 2, 16, dropout=0.0).eval()
    x, cond = torch.randn(1, 6, 8), torch.randn(1, 4, 8)
    y = dec(x, cond)
    x2 = x.clone()
    x2[:, 4:] += 1.0  # change the future
    y2 = dec(x2, cond)
    close(y[:, :4], y2[:, :4])
    assert not torch.allclose(y[:, 4:], y2[:, 4:])


def test_layer_load_checks_configuration():
    with pytest.raises(ValueError, match="layer: expected the configuration"):
        EncoderLayer(16, 4, 24, norm_first=True).load_from_torch(
            nn.TransformerEncoderLayer(16, 4, 24, batch_first=True, norm_first=False))
    with pytest.raises(ValueError, match="norm_first: expected True or False; got 'yes'"):
        EncoderLayer(16, 4, norm_first="yes")
    with pytest.raises(ValueError, match="layer: expected torch.nn.TransformerDecoderLayer; got TransformerEncoderLayer"):
        DecoderLayer.from_torch(nn.TransformerEncoderLayer(16, 4, 24, batch_first=True))
