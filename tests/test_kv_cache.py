"""course_lib.kv_cache and course_lib.generation: repeat_kv against torch, the caches, MHA → GQA,
cached = uncached generation, and the decoding benchmarks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.generation import decode_benchmark, generate, gqa_benchmark, left_pad, make_cache
from course_lib.kv_cache import ConcatKVCache, KVCache, RollingKVCache, kv_cache_bytes, repeat_kv
from course_lib.model import DecoderLM, ModelConfig, mha_to_gqa

ATOL = 2e-5


def model_for(seed=0, **kw) -> DecoderLM:
    base = dict(vocab_size=41, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)
    base.update(kw)
    torch.manual_seed(seed)
    m = DecoderLM(ModelConfig(**base)).eval()
    with torch.no_grad():       # larger weights than the init, so that the logits are far from uniform
        for p in m.parameters():
            p.mul_(3.0)
    return m


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [18]]


# ----------------------------------------------------------------------------- repeat_kv
@given(B=st.integers(1, 3), hkv=st.integers(1, 4), n_rep=st.integers(1, 4), T=st.integers(1, 6), d=st.integers(1, 5))
def test_repeat_kv_is_repeat_interleave(B, hkv, n_rep, T, d):
    x = torch.randn(B, hkv, T, d)
    got = repeat_kv(x, n_rep)
    assert torch.equal(got, torch.repeat_interleave(x, n_rep, dim=1))
    for i in range(hkv * n_rep):                 # query head i reads K/V head i // n_rep
        assert torch.equal(got[:, i], x[:, i // n_rep])


def test_repeat_kv_is_not_tiling():
    x = torch.arange(2.0).view(1, 2, 1, 1)
    assert repeat_kv(x, 2).flatten().tolist() == [0, 0, 1, 1]        # not x.repeat(1, 2, 1, 1): 0, 1, 0, 1
    assert repeat_kv(x, 1) is x


@pytest.mark.parametrize("h, hkv", [(8, 8), (8, 2), (8, 1), (6, 3)])
def test_repeat_kv_attention_equals_torch_enable_gqa(h, hkv):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, h, 5, 8, generator=g)
    k, v = torch.randn(2, 2, hkv, 9, 8, generator=g)
    ours = F.scaled_dot_product_attention(q, repeat_kv(k, h // hkv), repeat_kv(v, h // hkv))
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, enable_gqa=True), atol=1e-6, rtol=1e-5)


def test_repeat_kv_bad_input():
    with pytest.raises(ValueError, match=r"x: expected 4 dimensions; got shape \(2, 3\)"):
        repeat_kv(torch.zeros(2, 3), 2)
    with pytest.raises(ValueError, match=r"n_rep: expected an integer ≥ 1; got 0"):
        repeat_kv(torch.zeros(1, 1, 1, 1), 0)


# ----------------------------------------------------------------------------- memory formula
def test_kv_cache_bytes_published_configs():
    # LLaMA-2-7B: 32 layers × 32 K/V heads × 128 dims × 2 (K, V) × 2 bytes = 512 KiB per token
    assert kv_cache_bytes(32, 32, 128, 1) == 512 * 1024
    assert kv_cache_bytes(32, 32, 128, 4096) == 2 * 1024**3                 # 2 GiB at 4k tokens
    assert kv_cache_bytes(32, 8, 128, 32768) == 4 * 1024**3                 # LLaMA-3-8B (GQA, 8): 4 GiB at 32k
    assert kv_cache_bytes(2, 3, 5, 7, batch=11, bytes_per_elem=4) == 2 * 2 * 3 * 5 * 7 * 11 * 4
    assert kv_cache_bytes(1, 1, 1, 0) == 0
    with pytest.raises(ValueError, match="n_kv_heads: expected an integer ≥ 1; got 0"):
        kv_cache_bytes(1, 0, 1, 1)


# ----------------------------------------------------------------------------- caches
def test_kv_cache_writes_in_place_and_advances():
    c = KVCache(n_layers=2, batch=2, n_kv_heads=3, max_len=10, head_dim=4)
    assert c.nbytes == kv_cache_bytes(2, 3, 4, 10, batch=2, bytes_per_elem=4)
    g = torch.Generator().manual_seed(0)
    ks = [torch.randn(2, 3, t, 4, generator=g) for t in (4, 1, 1)]
    storage = c.k.data_ptr()
    for i, k in enumerate(ks):
        k_all, v_all = c.update(k, -k, layer_idx=1)
        want = torch.cat(ks[: i + 1], dim=2)
        assert torch.equal(k_all, want) and torch.equal(v_all, -want)
        assert k_all.data_ptr() == storage + c.k[1].storage_offset() * 4   # a view of the preallocated buffer
    assert c.get_seq_length(1) == 6 and c.get_seq_length(0) == 0
    assert c.key_indices(1).tolist() == list(range(6))
    assert torch.equal(c.k[1, :, :, 4], ks[1][:, :, 0]) and (c.k[1, :, :, 6:] == 0).all()
    with pytest.raises(ValueError, match=r"holds max_len = 10 tokens; 6 cached \+ 5 new do not fit"):
        c.update(torch.zeros(2, 3, 5, 4), torch.zeros(2, 3, 5, 4), 1)
    with pytest.raises(ValueError, match=r"k: expected shape \(batch, n_kv_heads, T, head_dim\) = \(2, 3, 1, 4\)"):
        c.update(torch.zeros(2, 4, 1, 4), torch.zeros(2, 4, 1, 4), 0)
    with pytest.raises(ValueError, match=r"layer_idx: expected an int in \[0, 2\); got 2"):
        c.update(torch.zeros(2, 3, 1, 4), torch.zeros(2, 3, 1, 4), 2)
    c.reset()
    assert c.get_seq_length(1) == 0


def test_concat_cache_equals_preallocated():
    a = KVCache(1, 1, 2, 8, 3)
    b = ConcatKVCache(1, 1, 2, 3)
    g = torch.Generator().manual_seed(1)
    for t in (3, 1, 2):
        k, v = torch.randn(2, 1, 2, t, 3, generator=g)
        ka, va = a.update(k, v, 0)
        kb, vb = b.update(k, v, 0)
        assert torch.equal(ka, kb) and torch.equal(va, vb)
    assert b.nbytes == kv_cache_bytes(1, 2, 3, 6, bytes_per_elem=4) < a.nbytes


def test_rolling_cache_slots():
    W = 4
    c = RollingKVCache(n_layers=1, batch=1, n_kv_heads=1, window=W, head_dim=1)
    for i in range(10):
        val = torch.full((1, 1, 1, 1), float(i))
        k, _ = c.update(val, val, 0)
        assert int(c.k[0, 0, 0, i % W, 0]) == i                      # position i lives in slot i mod W
        assert sorted(k.flatten().tolist())[-min(i + 1, W):] == [float(j) for j in range(max(0, i - W + 1), i + 1)]
    assert c.key_indices(0).tolist() == [8, 9, 6, 7]
    assert c.nbytes == kv_cache_bytes(1, 1, 1, W, bytes_per_elem=4)   # constant, however long the sequence


def test_rolling_cache_long_prompt():
    """A prompt longer than the window is attended over [old buffer, prompt], then its last W are kept."""
    c = RollingKVCache(1, 1, 1, window=3, head_dim=1)
    first = torch.arange(2.0).view(1, 1, 2, 1)
    c.update(first, first, 0)
    k, _ = c.update(torch.arange(2.0, 7.0).view(1, 1, 5, 1), torch.zeros(1, 1, 5, 1), 0)
    assert c.key_indices(0).tolist() == [0, 1, -1, 2, 3, 4, 5, 6]
    assert k.flatten().tolist()[:2] == [0, 1] and k.flatten().tolist()[3:] == [2, 3, 4, 5, 6]
    assert sorted(c.slot_index[0].tolist()) == [4, 5, 6] and c.get_seq_length() == 7


def test_make_cache():
    m = model_for(n_kv_heads=2)
    c = make_cache(m, batch=3, max_len=9)
    assert isinstance(c, KVCache) and c.k.shape == (2, 3, 2, 9, 8)
    with pytest.raises(ValueError, match="kind: 'rolling' needs a model with a sliding window"):
        make_cache(m, 1, 4, "rolling")
    with pytest.raises(ValueError, match="kind: expected 'static', 'rolling' or 'concat'"):
        make_cache(m, 1, 4, "paged")


# ----------------------------------------------------------------------------- the model with a cache
@pytest.mark.parametrize("kind", ["static", "concat"])
def test_chunked_prefill_equals_one_forward(kind):
    m = model_for(n_kv_heads=2)
    ids, mask = left_pad(PROMPTS)
    full = m(ids, attention_mask=mask)
    cache = make_cache(m, len(PROMPTS), 16, kind)
    a = m(ids[:, :3], attention_mask=mask[:, :3], cache=cache)
    b = m(ids[:, 3:5], attention_mask=mask[:, :5], cache=cache)
    c = m(ids[:, 5:], attention_mask=mask, cache=cache)
    real = mask.bool()
    torch.testing.assert_close(torch.cat([a, b, c], 1)[real], full[real], atol=ATOL, rtol=1e-4)


def test_left_pad():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="prompts: expected every prompt to have at least one token"):
        left_pad([[1], []])


# ----------------------------------------------------------------------------- generation
@pytest.mark.parametrize("kv", [4, 2, 1])
@pytest.mark.parametrize("kind", ["static", "concat"])
def test_cached_generation_equals_uncached_greedy(kv, kind):
    m = model_for(n_kv_heads=kv)
    a, la = generate(m, PROMPTS, 24, cache=kind, return_logits=True)
    b, lb = generate(m, PROMPTS, 24, use_cache=False, return_logits=True)
    assert a.shape == (4, 24) and torch.equal(a, b)
    torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)
    assert len(set(map(tuple, a.tolist()))) > 1                      # not a degenerate constant output


@pytest.mark.parametrize("kv", [4, 1])
def test_cached_generation_equals_uncached_sampled(kv):
    m = model_for(n_kv_heads=kv)
    a = generate(m, PROMPTS, 24, temperature=1.0, top_k=8, generator=torch.Generator().manual_seed(3))
    b = generate(m, PROMPTS, 24, use_cache=False, temperature=1.0, top_k=8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    c = generate(m, PROMPTS, 24, temperature=1.0, top_k=8, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(a, c)                                      # the generator matters


def test_top_k_one_is_greedy():
    m = model_for()
    greedy = generate(m, PROMPTS, 10)
    assert torch.equal(generate(m, PROMPTS, 10, temperature=0.7, top_k=1, generator=torch.Generator()), greedy)


@pytest.mark.parametrize("kind", ["rolling", "static"])
@pytest.mark.parametrize("window", [3, 5])
def test_sliding_window_cache_equals_full_recompute(kind, window):
    m = model_for(window=window, n_kv_heads=2)
    a, la = generate(m, PROMPTS, 20, cache=kind, return_logits=True)
    b, lb = generate(m, PROMPTS, 20, use_cache=False, return_logits=True)
    assert torch.equal(a, b)
    torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)
    no_window = model_for(n_kv_heads=2)                              # same weights, full attention:
    assert not torch.equal(generate(no_window, PROMPTS, 20), a)      # the window changes the output


def test_rolling_cache_memory_is_the_window():
    m = model_for(window=4, pos_encoding="none", max_seq_len=8)
    cache = make_cache(m, 1, 1, "rolling")          # max_len is not used: the buffer holds the window
    for tok in range(1, 13):                             # longer than max_seq_len: no position table
        m(torch.tensor([[tok]]), cache=cache)
    assert cache.get_seq_length() == 12 and cache.nbytes == kv_cache_bytes(2, 4, 8, 4, bytes_per_elem=4)


def test_padded_batch_generates_what_each_prompt_generates_alone():
    m = model_for(n_kv_heads=2)
    batch = generate(m, PROMPTS, 12)
    for i, p in enumerate(PROMPTS):
        assert torch.equal(batch[i], generate(m, [p], 12)[0])


def test_timings_and_bad_arguments():
    m = model_for()
    times = []
    generate(m, PROMPTS[:1], 5, timings=times)
    assert len(times) == 5 and all(t > 0 for t in times)
    with pytest.raises(ValueError, match="max_new_tokens: expected an integer ≥ 1; got 0"):
        generate(m, PROMPTS, 0)
    with pytest.raises(ValueError, match="temperature: expected a number ≥ 0"):
        generate(m, PROMPTS, 2, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k: expected None or an integer ≥ 1"):
        generate(m, PROMPTS, 2, temperature=1.0, top_k=0)


# ----------------------------------------------------------------------------- MHA → GQA
def test_mha_to_gqa_mean_pools_groups():
    m = model_for()
    g = mha_to_gqa(m, 2)
    assert g.config.n_kv_heads == 2 and g is not m and m.config.n_kv_heads == m.config.n_heads
    dh = m.config.head_dim
    w = m.blocks[0].attn.k_proj.weight.view(4, dh, -1)
    torch.testing.assert_close(g.blocks[0].attn.k_proj.weight.view(2, dh, -1), (w[[0, 2]] + w[[1, 3]]) / 2)  # groups (0, 1), (2, 3)
    torch.testing.assert_close(g.blocks[1].attn.v_proj.bias.view(2, dh), m.blocks[1].attn.v_proj.bias.view(2, 2, dh).mean(1))
    assert torch.equal(g.blocks[0].attn.q_proj.weight, m.blocks[0].attn.q_proj.weight)
    mqa = mha_to_gqa(m, 1)
    torch.testing.assert_close(mqa.blocks[0].attn.k_proj.weight, w.mean(0))


def test_mha_to_gqa_identity_and_state_dict():
    m = model_for()
    same = mha_to_gqa(m, 4)
    ids = torch.tensor([PROMPTS[0]])
    assert torch.equal(same(ids), m(ids))
    state = mha_to_gqa(m.state_dict(), 2, n_heads=4)
    assert torch.equal(state["blocks.0.attn.k_proj.weight"], mha_to_gqa(m, 2).state_dict()["blocks.0.attn.k_proj.weight"])
    # a GQA model pooled again: 2 → 1 equals MHA 4 → 1
    torch.testing.assert_close(mha_to_gqa(mha_to_gqa(m, 2), 1).blocks[1].attn.v_proj.weight,
                               mha_to_gqa(m, 1).blocks[1].attn.v_proj.weight)


def test_mha_to_gqa_of_identical_heads_is_exact():
    """If the heads of each group are equal, pooling loses nothing: same logits."""
    m = model_for()
    with torch.no_grad():
        for blk in m.blocks:
            for lin in (blk.attn.k_proj, blk.attn.v_proj):
                w = lin.weight.view(2, 2, 8, -1)
                w[:, 1] = w[:, 0]
                lin.bias.view(2, 2, 8)[:, 1] = lin.bias.view(2, 2, 8)[:, 0]
    ids = torch.tensor([PROMPTS[0]])
    torch.testing.assert_close(mha_to_gqa(m, 2)(ids), m(ids), atol=ATOL, rtol=1e-4)


def test_mha_to_gqa_bad_input():
    m = model_for()
    with pytest.raises(ValueError, match="n_kv_heads: expected a divisor of the current number of K/V heads, 4; got 3"):
        mha_to_gqa(m, 3)
    with pytest.raises(ValueError, match="n_heads: a state_dict does not say"):
        mha_to_gqa(m.state_dict(), 2)
    with pytest.raises(ValueError, match="model_or_state: expected a DecoderLM or a state_dict"):
        mha_to_gqa([1], 2)


# ----------------------------------------------------------------------------- benchmark
@settings(max_examples=1)
@given(st.just(None))
def test_decode_benchmark_runs_small(_):
    r = decode_benchmark(d_model=32, n_layers=1, n_heads=2, prompt_len=8, new_tokens=6)
    assert r["identical"] and r["cached_s"] > 0 and r["uncached_s"] > 0 and r["speedup"] > 0


def test_gqa_benchmark_runs_small_with_identical_tokens():
    r = gqa_benchmark(d_model=32, n_layers=1, n_heads=4, kv_heads=(4, 1), batch=2, context=16, new_tokens=3,
                      repeats=1)
    rows = {(x["kv_heads"], x["implementation"]): x for x in r["rows"]}
    assert set(rows) == {(4, "repeat_kv"), (4, "sdpa"), (1, "repeat_kv"), (1, "sdpa")}
    assert all(x["tokens_identical"] and x["ms_per_step"] > 0 for x in r["rows"])
    assert rows[(4, "sdpa")]["cache_mb"] == 4 * rows[(1, "sdpa")]["cache_mb"]
    assert r["config"]["context"] == 16 and "torch" in r["machine"]


def test_kv_cache_crop_rewinds_to_a_prefix():
    c = KVCache(n_layers=2, batch=1, n_kv_heads=1, max_len=8, head_dim=2)
    for layer in range(2):
        c.update(torch.ones(1, 1, 5, 2), torch.ones(1, 1, 5, 2), layer)
    c.crop(3)
    assert c.get_seq_length(0) == c.get_seq_length(1) == 3
    k, _ = c.update(torch.full((1, 1, 1, 2), 7.0), torch.zeros(1, 1, 1, 2), 0)
    assert k.shape[2] == 4 and torch.equal(k[0, 0, 3], torch.full((2,), 7.0))
    with pytest.raises(ValueError, match="length: expected at most the 3 tokens cached; got 4"):
        c.crop(4)
