"""course_lib.positional against PyTorch, the papers' reference code, and the defining properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import positional as P
from lm_properties import assert_left_padding_matches_alone, assert_no_leak

SETTINGS = settings(max_examples=25, deadline=None)


# ----------------------------------------------------------------------------- sinusoidal
def test_sinusoidal_matches_the_formula_written_out():
    d, n = 10, 7
    pe = P.sinusoidal_position_encoding(n, d, dtype=torch.float64)
    for pos in range(n):
        for i in range(d // 2):
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / d)), abs=1e-12)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / d)), abs=1e-12)


def test_sinusoidal_module_equals_function_and_takes_any_length():
    emb = P.SinusoidalPositionalEmbedding(16)
    pos = torch.tensor([[0, 5, 4000], [1, 2, 3]])
    torch.testing.assert_close(emb(pos), P.sinusoidal_position_encoding(pos, 16), atol=2e-4, rtol=0)


@SETTINGS
@given(t=st.integers(0, 500), k=st.integers(-50, 200), half=st.integers(1, 32))
def test_sinusoidal_shift_is_a_rotation_independent_of_t(t, k, half):
    d = 2 * half
    R = P.sinusoidal_shift_matrix(k, d, dtype=torch.float64)
    pe = P.sinusoidal_position_encoding(torch.tensor([t, t + k]), d, dtype=torch.float64)
    torch.testing.assert_close(R @ pe[0], pe[1], atol=1e-9, rtol=0)
    torch.testing.assert_close(R @ R.T, torch.eye(d, dtype=torch.float64), atol=1e-12, rtol=0)  # orthogonal


def test_sinusoidal_dot_product_depends_only_on_offset():
    pe = P.sinusoidal_position_encoding(200, 32, dtype=torch.float64)
    dots = torch.stack([pe[t] @ pe[t + 7] for t in range(150)])
    assert torch.allclose(dots, dots[0], atol=1e-9)


def test_sinusoidal_rejects_odd_width():
    with pytest.raises(ValueError, match="d_model"):
        P.sinusoidal_position_encoding(4, 7)


def test_learned_rejects_positions_past_the_table():
    emb = P.LearnedPositionalEmbedding(8, 4)
    assert emb(torch.arange(8)).shape == (8, 4)
    with pytest.raises(ValueError, match=r"position_ids: expected positions in \[0, 8\)"):
        emb(torch.arange(9))


# ----------------------------------------------------------------------------- relative (Shaw)
def test_relative_matrix_is_the_lecture_matrix():
    want = torch.tensor([[0, 1, 2, 2, 2], [-1, 0, 1, 2, 2], [-2, -1, 0, 1, 2], [-2, -2, -1, 0, 1], [-2, -2, -2, -1, 0]])
    assert torch.equal(P.relative_position_matrix(5, 2), want)


@SETTINGS
@given(n=st.integers(1, 20), k=st.integers(0, 25))
def test_relative_matrix_is_clipped_offset(n, k):
    M = P.relative_position_matrix(n, k)
    for i in range(n):
        for j in range(n):
            assert M[i, j] == max(-k, min(k, j - i))
    assert M.abs().max() <= k


def _naive_shaw(q, k, v, RK, RV, mask):
    d = q.shape[-1]
    scores = (torch.einsum("bhid,bhjd->bhij", q, k) + torch.einsum("bhid,ijd->bhij", q, RK)) / math.sqrt(d)
    scores = scores.masked_fill(~mask, float("-inf"))
    a = scores.softmax(-1)
    return a @ v + torch.einsum("bhij,ijd->bhid", a, RV)


@SETTINGS
@given(T=st.integers(1, 9), S_extra=st.integers(0, 4), kmax=st.integers(0, 5), seed=st.integers(0, 999))
def test_relative_attention_equals_the_materialised_formula(T, S_extra, kmax, seed):
    g = torch.Generator().manual_seed(seed)
    S = T + S_extra
    q = torch.randn(2, 3, T, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 3, S, 8, generator=g, dtype=torch.float64) for _ in range(2))
    emb = P.RelativePositionEmbedding(8, kmax).double()
    qpos, kpos = torch.arange(S_extra, S), torch.arange(S)  # the queries are the last T positions
    RK, RV = emb(qpos, kpos)
    assert RK.shape == (T, S, 8)
    mask = kpos[None, :] <= qpos[:, None]
    got = P.relative_attention(q, k, v, emb.rel_k.weight, emb.rel_v.weight, emb.index(qpos, kpos), mask)
    torch.testing.assert_close(got, _naive_shaw(q, k, v, RK, RV, mask), atol=1e-10, rtol=1e-8)


def test_relative_attention_with_zero_tables_is_plain_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 16, generator=g) for _ in range(3))
    z = torch.zeros(7, 16)
    idx = P.relative_position_matrix(6, 3) + 3
    got = P.relative_attention(q, k, v, z, z, idx, torch.ones(6, 6).tril().bool())
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- RoPE
def _meta_rope(x, positions, base=10000.0):
    """Meta's original LLaMA code: pairs as complex numbers, multiplied by e^{i m θ}."""
    d = x.shape[-1]
    theta = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    freqs = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64), positions.double()[:, None] * theta)
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(xc * freqs).flatten(-2)


@SETTINGS
@given(T=st.integers(1, 12), half=st.integers(1, 16), base=st.sampled_from([100.0, 10000.0, 500000.0]),
       seed=st.integers(0, 999))
def test_rope_interleaved_equals_complex_multiplication(T, half, base, seed):
    d = 2 * half
    x = torch.randn(2, 3, T, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    pos = torch.arange(T) + seed % 7
    cos, sin = P.rope_cos_sin(pos, d, base, layout="interleaved", dtype=torch.float64)
    torch.testing.assert_close(P.apply_rope(x, cos, sin, "interleaved"), _meta_rope(x, pos, base), atol=1e-10, rtol=0)


@SETTINGS
@given(T=st.integers(1, 10), half=st.integers(1, 16), seed=st.integers(0, 999))
def test_rope_layouts_equal_up_to_the_permutation(T, half, seed):
    d = 2 * half
    x = torch.randn(2, T, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    p = P.interleaved_to_half_permutation(d)
    ci, si = P.rope_cos_sin(T, d, layout="interleaved", dtype=torch.float64)
    ch, sh = P.rope_cos_sin(T, d, layout="half", dtype=torch.float64)
    torch.testing.assert_close(P.apply_rope(x, ci, si, "interleaved")[..., p], P.apply_rope(x[..., p], ch, sh, "half"))
    if d > 2 and T > 1:  # without the permutation the two layouts really differ (position 0 is no rotation)
        assert not torch.allclose(P.apply_rope(x, ci, si, "interleaved"), P.apply_rope(x, ch, sh, "half"))


@pytest.mark.parametrize("layout", P.ROPE_LAYOUTS)
def test_rope_elementwise_equals_block_diagonal_matrix(layout):
    d = 12
    x = torch.randn(5, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for m in (0, 1, 7, 1000):
        cos, sin = P.rope_cos_sin(torch.tensor([m]), d, layout=layout, dtype=torch.float64)
        R = P.rope_rotation_matrix(m, d, layout=layout)
        torch.testing.assert_close(P.apply_rope(x, cos, sin, layout), x @ R.T, atol=1e-10, rtol=0)
        torch.testing.assert_close(R @ R.T, torch.eye(d, dtype=torch.float64), atol=1e-12, rtol=0)
    if layout == "interleaved":  # the lecture's block-diagonal form
        R = P.rope_rotation_matrix(3, d)
        assert (R[:2, 2:] == 0).all() and R[0, 1] == -R[1, 0] and R[0, 0] == R[1, 1]


@SETTINGS
@given(m=st.integers(0, 3000), n=st.integers(0, 3000), shift=st.integers(-1000, 3000),
       layout=st.sampled_from(P.ROPE_LAYOUTS), seed=st.integers(0, 999))
def test_rope_score_depends_only_on_m_minus_n(m, n, shift, layout, seed):
    if min(m, n) + shift < 0:
        shift = -min(m, n)
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(32, generator=g, dtype=torch.float64), torch.randn(32, generator=g, dtype=torch.float64)

    def score(a, b):
        cos, sin = P.rope_cos_sin(torch.tensor([a, b]), 32, layout=layout, dtype=torch.float64)
        return P.apply_rope(q, cos[0], sin[0], layout) @ P.apply_rope(k, cos[1], sin[1], layout)

    assert score(m, n).item() == pytest.approx(score(m + shift, n + shift).item(), abs=1e-8)


def test_apply_rotary_pos_emb_table_gather_gqa_and_norms():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g)  # GQA: 2 kv heads
    pos = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]])
    cos_t, sin_t = P.rope_cos_sin(16, 8)
    q1, k1 = P.apply_rotary_pos_emb(q, k, cos_t, sin_t, pos)
    cos, sin = P.rope_cos_sin(pos, 8)
    q2, k2 = P.apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(q1, q2)
    torch.testing.assert_close(k1, k2)
    torch.testing.assert_close(q1.norm(dim=-1), q.norm(dim=-1))  # a rotation keeps norms
    rot = P.RotaryEmbedding(8)
    c3, s3 = rot(q, pos)
    torch.testing.assert_close(c3, cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(s3, sin, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="cos"):
        P.apply_rotary_pos_emb(q, k, cos_t[:, :4], sin_t[:, :4], pos)
    with pytest.raises(ValueError, match="position_ids"):
        P.apply_rotary_pos_emb(q, k, cos_t, sin_t, pos + 20)


def test_rope_long_range_bound_decays():
    b = P.rope_long_range_bound(torch.arange(0, 256), head_dim=128)
    assert b[0].item() == pytest.approx((64 + 1) / 2)  # S_j = j at distance 0
    assert b[:10].mean() > 2 * b[200:].mean()


def test_rope_rejects_bad_arguments():
    with pytest.raises(ValueError, match="head_dim"):
        P.rope_frequencies(7)
    with pytest.raises(ValueError, match="base"):
        P.rope_frequencies(8, base=1.0)
    with pytest.raises(ValueError, match="layout"):
        P.rope_cos_sin(4, 8, layout="pairs")


# ----------------------------------------------------------------------------- ALiBi
def _alibi_reference_slopes(n):
    """get_slopes from the ALiBi authors' code (ofirpress/attention_with_linear_biases)."""
    def get_slopes_power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return get_slopes_power_of_2(closest_power_of_2) + _alibi_reference_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2]


@pytest.mark.parametrize("n", list(range(1, 70)))
def test_alibi_slopes_match_reference_code(n):
    torch.testing.assert_close(P.alibi_slopes(n), torch.tensor(_alibi_reference_slopes(n), dtype=torch.float32))


def test_alibi_slopes_named_cases():
    assert P.alibi_slopes(8).tolist() == [1 / 2**h for h in range(1, 9)]
    torch.testing.assert_close(P.alibi_slopes(16), torch.tensor([2 ** (-h / 2) for h in range(1, 17)]))  # m_h = 2^(−h/2)
    s = P.alibi_slopes(32)
    torch.testing.assert_close(s[1:] / s[:-1], torch.full((31,), 2 ** (-8 / 32)))  # geometric
    twelve = [2.0**-h for h in range(1, 9)] + [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]
    torch.testing.assert_close(P.alibi_slopes(12), torch.tensor(twelve))


def test_alibi_bias_values_and_sdpa():
    slopes = P.alibi_slopes(4)
    bias = P.alibi_bias(slopes, 5)
    assert bias.shape == (4, 5, 5)
    i, j = torch.arange(5)[:, None], torch.arange(5)[None, :]
    for h in range(4):
        torch.testing.assert_close(bias[h], -slopes[h] * (i - j).abs().float())
    # bottom-right aligned decoding: 2 queries at positions 3, 4 against 5 keys
    torch.testing.assert_close(P.alibi_bias(slopes, torch.tensor([3, 4]), torch.arange(5)), bias[:, 3:])
    # inside SDPA: same as torch's with the bias + causal mask as one float mask
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=g) for _ in range(3))
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    from course_lib.attention import scaled_dot_product_attention
    got = scaled_dot_product_attention(q, k, v, bias.masked_fill(~causal, float("-inf")))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.masked_fill(~causal, float("-inf")))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # BLOOM adds m·j only: the softmax ignores the per-row constant −m·i
    scores = torch.randn(4, 5, 5, generator=g)
    bloom = slopes.view(-1, 1, 1) * j.float()
    torch.testing.assert_close((scores + bias).masked_fill(~causal, -math.inf).softmax(-1),
                               (scores + bloom).masked_fill(~causal, -math.inf).softmax(-1))


# ----------------------------------------------------------------------------- interpolation and NTK
def test_position_interpolation_squeezes_positions():
    assert P.interpolation_scale(2048, 8192) == 4.0
    pos = P.interpolate_positions(torch.arange(8192), 2048, 8192)
    assert pos.max() < 2048 and pos[4].item() == 1.0
    # RoPE with scaling s at position s·m is RoPE at m
    c1, s1 = P.rope_cos_sin(torch.tensor([12]), 16, scaling=4.0)
    c2, s2 = P.rope_cos_sin(torch.tensor([3]), 16)
    torch.testing.assert_close((c1, s1), (c2, s2))
    rot = P.RotaryEmbedding(16, scaling=4.0)
    torch.testing.assert_close(rot(torch.zeros(1), torch.tensor([[12]]))[0][0], c2, atol=1e-6, rtol=0)


def test_ntk_scaling_slows_the_slowest_pair_by_s_and_keeps_the_fastest():
    d, s = 64, 8.0
    new = P.rope_frequencies(d, P.ntk_scaled_base(10000.0, s, d)).double()
    old = P.rope_frequencies(d, 10000.0).double()
    assert new[0] == old[0] == 1.0
    assert new[-1].item() == pytest.approx(old[-1].item() / s, rel=1e-5)
    assert (new <= old).all()
    rot = P.RotaryEmbedding(d, scaling=s, scaling_type="ntk")
    assert rot.base == pytest.approx(10000.0 * s ** (d / (d - 2)))


# ----------------------------------------------------------------------------- in course_lib.model
from course_lib.generation import generate  # noqa: E402
from course_lib.model import POS_ENCODINGS, DecoderLM, ModelConfig, count_parameters  # noqa: E402

ALL = ("none", "learned", "sinusoidal", "relative", "rope", "alibi")


def lm(pos_encoding, **kw):
    torch.manual_seed(0)
    kw = {"n_layers": 2, **kw}
    cfg = ModelConfig(vocab_size=37, d_model=32, n_heads=4, max_seq_len=64,
                      pos_encoding=pos_encoding, rel_max_distance=3, **kw)
    m = DecoderLM(cfg).eval()
    with torch.no_grad():  # make positions matter: GPT-2's init (std 0.02) gives nearly uniform attention
        for name, p in m.named_parameters():
            if "rel_" in name or "pos_emb" in name or name.endswith(("q_proj.weight", "k_proj.weight", "o_proj.weight")):
                p.normal_(0, 0.5)
    return m


def test_every_scheme_is_a_config_value():
    assert set(ALL) == set(POS_ENCODINGS)
    with pytest.raises(ValueError, match="pos_encoding"):
        ModelConfig(vocab_size=5, pos_encoding="xpos")
    with pytest.raises(ValueError, match="rope_scaling_type"):
        ModelConfig(vocab_size=5, pos_encoding="rope", rope_scaling_type="yarn")
    with pytest.raises(ValueError, match="head_dim"):
        ModelConfig(vocab_size=5, d_model=12, n_heads=4, pos_encoding="rope")
    with pytest.raises(ValueError, match="rel_max_distance"):
        ModelConfig(vocab_size=5, pos_encoding="relative", rel_max_distance=0)


@pytest.mark.parametrize("pe", ALL)
def test_parameter_count_and_position_sensitivity(pe):
    assert lm(pe).num_parameters() == count_parameters(lm(pe).config)
    m = lm(pe, n_layers=1)
    ids = torch.randint(37, (1, 10), generator=torch.Generator().manual_seed(1))
    # the last token's logits change when two earlier tokens swap places — unless there are no positions
    swapped = ids.clone()
    swapped[0, [6, 8]] = ids[0, [8, 6]]  # 3 and 1 tokens back from the last query (position 9)
    diff = (m(ids)[0, -1] - m(swapped)[0, -1]).abs().max().item()
    if pe == "relative":  # clipped at k = 3: positions 2 and 5 are both "3 or more back", indistinguishable
        far = ids.clone()
        far[0, [2, 5]] = ids[0, [5, 2]]
        assert (m(ids)[0, -1] - m(far)[0, -1]).abs().max().item() < 1e-5
    if pe == "none":
        assert diff < 1e-5  # one layer without positions: the last query sees its prefix as a bag of tokens
    else:
        assert diff > 1e-4


@pytest.mark.parametrize("pe", ALL)
def test_no_leak(pe):
    assert_no_leak(lm(pe), 37, atol=1e-5)


@pytest.mark.parametrize("pe", ALL)
def test_left_padded_batch_equals_each_prompt_alone(pe):
    assert_left_padding_matches_alone(lm(pe), 37, atol=1e-5)


@pytest.mark.parametrize("pe, kw", [("rope", {}), ("alibi", {}), ("relative", {}), ("sinusoidal", {}),
                                    ("rope", {"n_kv_heads": 2}), ("rope", {"rope_scaling": 4.0}),
                                    ("rope", {"rope_scaling": 4.0, "rope_scaling_type": "ntk"}),
                                    ("alibi", {"window": 5}), ("rope", {"window": 5})])
def test_kv_cached_generation_equals_uncached(pe, kw):
    m = lm(pe, **kw)
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(2, 37, (n,), generator=g).tolist() for n in (7, 2, 5)]
    t1, l1 = generate(m, prompts, 12, use_cache=True, return_logits=True)
    t2, l2 = generate(m, prompts, 12, use_cache=False, return_logits=True)
    assert torch.equal(t1, t2)
    torch.testing.assert_close(l1, l2, atol=1e-4, rtol=1e-4)


def test_rope_in_the_model_is_apply_rotary_pos_emb():
    m = lm("rope")
    attn = m.blocks[0].attn
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 4, 5, 8, generator=g)
    pos = torch.arange(3, 8).expand(2, 5)
    cos, sin = P.rope_cos_sin(pos, 8)
    for got, want in zip(attn.apply_positions(q, k, pos), P.apply_rotary_pos_emb(q, k, cos, sin)):
        torch.testing.assert_close(got, want)
    assert lm("alibi").blocks[0].attn.attention_bias(pos, pos).shape == (2, 4, 5, 5)
    assert lm("learned").blocks[0].attn.attention_bias(pos, pos) is None


def test_learned_table_is_not_trained_past_the_training_length():
    """Rows ≥ the training length get no gradient: the reason learned positions cannot extrapolate."""
    m = lm("learned")
    m.train()
    ids = torch.randint(37, (2, 16), generator=torch.Generator().manual_seed(0))
    m(ids).sum().backward()
    grad = m.pos_emb.weight.grad
    assert (grad[:16].abs().sum(-1) > 0).all() and (grad[16:] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", P.ROPE_LAYOUTS)
def test_rope_low_precision_keeps_dtype_and_matches_float32(dtype, layout):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 7, 16, generator=g), torch.randn(2, 2, 7, 16, generator=g)
    cos, sin = P.rope_cos_sin(torch.arange(100, 107), 16, layout=layout)
    q32, k32 = P.apply_rotary_pos_emb(q, k, cos, sin, layout=layout)
    ql, kl = P.apply_rotary_pos_emb(q.to(dtype), k.to(dtype), cos.to(dtype), sin.to(dtype), layout=layout)
    assert ql.dtype == kl.dtype == dtype
    tol = 2e-2 if dtype == torch.float16 else 8e-2
    torch.testing.assert_close(ql.float(), q32, atol=tol, rtol=tol)
    torch.testing.assert_close(kl.float(), k32, atol=tol, rtol=tol)
