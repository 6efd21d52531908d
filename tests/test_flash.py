"""course_lib.flash: every implementation against F.scaled_dot_product_attention and autograd,
the online softmax against softmax, the HBM counters against the closed-form formulas, and the
memory claim (O(N²) vs O(N) extra memory) measured."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.flash import (
    FlashAttentionFunction,
    HBMCounter,
    IOCount,
    flash_attention,
    flash_attention_backward,
    flash_attention_forward,
    flash_attention_io,
    flash_attention_v1,
    online_softmax,
    online_softmax_merge,
    peak_memory,
    softmax_stats,
    sram_block_sizes,
    standard_attention,
    standard_attention_backward,
    standard_attention_io,
)

TOL = {torch.float64: dict(atol=1e-10, rtol=1e-8), torch.float32: dict(atol=2e-5, rtol=1e-4),
       torch.float16: dict(atol=2e-3, rtol=2e-3)}


def qkv(B, h, N, Nk, d, dv, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, h, N, d, generator=g).to(dtype), torch.randn(B, h, Nk, d, generator=g).to(dtype),
            torch.randn(B, h, Nk, dv, generator=g).to(dtype))


def ref_lse(q, k, causal, scale):
    s = (q @ k.transpose(-2, -1)) * scale
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    return torch.logsumexp(s, dim=-1)


shapes = st.tuples(
    st.integers(1, 2), st.integers(1, 3),            # batch, heads
    st.integers(1, 40), st.integers(1, 40),          # N, N_k
    st.sampled_from([1, 4, 8, 16]), st.sampled_from([1, 4, 8]),   # d, d_v
    st.integers(1, 17), st.integers(1, 17),          # Br, Bc
)


# ----------------------------------------------------------------------------- block sizes
def test_sram_block_sizes_formula():
    # Bc = ⌈M/4d⌉, Br = min(⌈M/4d⌉, d), worked by hand
    assert sram_block_sizes(65536, 64) == (64, 256)
    assert sram_block_sizes(1000, 64) == (4, 4)       # ⌈1000/256⌉ = 4
    assert sram_block_sizes(1025, 8) == (8, 33)       # ⌈1025/32⌉ = 33
    assert sram_block_sizes(16, 64) == (1, 1)
    with pytest.raises(ValueError, match="M: expected an integer ≥ 1"):
        sram_block_sizes(0, 64)


# ----------------------------------------------------------------------------- online softmax
@given(n=st.integers(1, 60), b=st.integers(1, 70), big=st.sampled_from([1.0, 50.0, 1e4]),
       masked=st.booleans(), seed=st.integers(0, 10**6))
def test_online_softmax_equals_softmax(n, b, big, masked, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, n, generator=g, dtype=torch.float64) * big
    if masked:
        x[:, torch.rand(n, generator=g) < 0.3] = float("-inf")
        x[:, 0] = 0.0                                      # keep one finite entry per row
    p, (m, l) = online_softmax(x, b, return_stats=True)
    torch.testing.assert_close(p, torch.softmax(x, dim=-1), **TOL[torch.float64])
    torch.testing.assert_close(m + torch.log(l), torch.logsumexp(x, dim=-1), **TOL[torch.float64])


@given(n1=st.integers(1, 20), n2=st.integers(1, 20), n3=st.integers(1, 20), seed=st.integers(0, 10**6))
def test_merge_gives_the_statistics_of_the_concatenation(n1, n2, n3, seed):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(4, n, generator=g, dtype=torch.float64) * 30 for n in (n1, n2, n3)]
    a, b, c = (softmax_stats(x) for x in xs)
    want = softmax_stats(torch.cat(xs, dim=-1))
    for got in (online_softmax_merge(online_softmax_merge(a, b), c),       # associative
                online_softmax_merge(a, online_softmax_merge(b, c)),
                online_softmax_merge(c, online_softmax_merge(b, a))):      # commutative
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])


def test_merge_with_an_empty_block_is_the_identity():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    empty = (torch.tensor([float("-inf")]), torch.tensor([0.0]))
    m, l = online_softmax_merge(empty, softmax_stats(x))
    assert torch.equal(m, torch.tensor([3.0])) and torch.allclose(l, softmax_stats(x)[1])
    m, l = online_softmax_merge(empty, empty)
    assert m.item() == float("-inf") and l.item() == 0.0


# ----------------------------------------------------------------------------- forward passes
@given(shape=shapes, causal=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]),
       scale=st.sampled_from([None, 0.3]), seed=st.integers(0, 10**6))
def test_forward_passes_equal_sdpa(shape, causal, dtype, scale, seed):
    B, h, N, Nk, d, dv, br, bc = shape
    q, k, v = qkv(B, h, N, Nk, d, dv, dtype, seed)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    o1 = flash_attention_v1(q, k, v, causal=causal, scale=scale, Br=br, Bc=bc)
    o2, L = flash_attention_forward(q, k, v, causal=causal, scale=scale, Br=br, Bc=bc)
    o0 = standard_attention(q, k, v, causal=causal, scale=scale)
    for got in (o0, o1, o2):
        assert got.shape == want.shape and got.dtype == dtype
        torch.testing.assert_close(got, want, **TOL[dtype])
    lse = ref_lse(q.double(), k.double(), causal, 1 / math.sqrt(d) if scale is None else scale)
    torch.testing.assert_close(L.double(), lse, **TOL[dtype])


@pytest.mark.parametrize("causal", [False, True])
def test_half_precision_within_tolerance(causal):
    q, k, v = qkv(2, 2, 77, 77, 32, 32, torch.float16, seed=3)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
    for fn in (flash_attention_v1, lambda *a, **kw: flash_attention_forward(*a, **kw)[0]):
        got = fn(q, k, v, causal=causal, Br=16, Bc=24)
        assert got.dtype == torch.float16
        torch.testing.assert_close(got.float(), want, **TOL[torch.float16])


def test_algorithm_1_keeps_normalised_statistics():
    q, k, v = qkv(1, 2, 30, 30, 8, 8, seed=5)
    _, l, m = flash_attention_v1(q, k, v, Br=7, Bc=4, return_stats=True)
    s = q @ k.transpose(-2, -1) / math.sqrt(8)
    torch.testing.assert_close(m, s.amax(-1))
    torch.testing.assert_close(l, torch.exp(s - s.amax(-1, keepdim=True)).sum(-1))


def test_block_sizes_from_M_match_explicit_ones():
    q, k, v = qkv(1, 1, 50, 50, 8, 8, seed=6)
    br, bc = sram_block_sizes(200, 8)                     # (7, 7)
    torch.testing.assert_close(flash_attention_v1(q, k, v, M=200), flash_attention_v1(q, k, v, Br=br, Bc=bc))
    with pytest.raises(ValueError, match="either the SRAM size M or the block sizes"):
        flash_attention_v1(q, k, v, M=200, Br=4)


@pytest.mark.parametrize("fn", [flash_attention_v1, flash_attention_forward])
def test_causal_skips_whole_tiles_above_the_diagonal(fn):
    N, d, br, bc = 50, 8, 8, 6
    q, k, v = qkv(1, 1, N, N, d, d, seed=7)
    full, causal = HBMCounter(), HBMCounter()
    fn(q, k, v, Br=br, Bc=bc, hbm=full)
    fn(q, k, v, Br=br, Bc=bc, causal=True, hbm=causal)
    # a tile (rows r0..r1−1, keys c0..c1−1) is computed iff some key c0 ≤ some row r1 − 1
    tiles = [(min(r + br, N) - r, min(c + bc, N) - c) for r in range(0, N, br) for c in range(0, N, bc)
             if c <= min(r + br, N) - 1]
    assert causal.flops == sum(4 * a * b * d for a, b in tiles)
    assert full.flops == 4 * N * N * d
    assert causal.count().reads < full.count().reads


# ----------------------------------------------------------------------------- backward
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("N, Nk, br, bc", [(11, 11, 4, 3), (9, 13, 5, 4), (13, 7, 3, 5)])
def test_gradcheck_float64(causal, N, Nk, br, bc):
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, N, Nk, 4, 3, seed=N))
    assert torch.autograd.gradcheck(lambda q, k, v: flash_attention(q, k, v, causal=causal, Br=br, Bc=bc),
                                    (q, k, v))


@given(shape=shapes, causal=st.booleans(), seed=st.integers(0, 10**6))
@settings(max_examples=30)
def test_backward_equals_autograd_of_sdpa(shape, causal, seed):
    B, h, N, Nk, d, dv, br, bc = shape
    q, k, v = (t.requires_grad_() for t in qkv(B, h, N, Nk, d, dv, seed=seed))
    do = torch.randn(B, h, N, dv, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=0.7).backward(do)
    want = [t.grad for t in (q, k, v)]
    q, k, v = (t.detach() for t in (q, k, v))
    o, L = flash_attention_forward(q, k, v, causal=causal, scale=0.7, Br=br, Bc=bc)
    got = flash_attention_backward(q, k, v, o, L, do, causal=causal, scale=0.7, Br=br, Bc=bc)
    O, P = standard_attention(q, k, v, causal=causal, scale=0.7, return_probs=True)
    std = standard_attention_backward(q, k, v, P, do, scale=0.7)
    for a, b, c in zip(got, std, want):
        torch.testing.assert_close(a, c, **TOL[torch.float64])
        torch.testing.assert_close(b, c, **TOL[torch.float64])


def test_autograd_function_saves_only_o_and_lse():
    q, k, v = (t.requires_grad_() for t in qkv(1, 1, 20, 20, 8, 8, seed=9))
    out = FlashAttentionFunction.apply(q, k, v, False, None, 8, 8)
    saved = out.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [(1, 1, 20, 8)] * 4 + [(1, 1, 20)]   # Q, K, V, O, L: no N×N


# ----------------------------------------------------------------------------- HBM accounting
@given(N=st.integers(1, 70), d=st.sampled_from([1, 2, 8, 16]), M=st.integers(1, 600),
       version=st.sampled_from([1, 2]), backward=st.booleans())
@settings(max_examples=40)
def test_counted_io_equals_the_formula(N, d, M, version, backward):
    q, k, v = qkv(1, 1, N, N, d, d, torch.float32)
    hbm = HBMCounter()
    if version == 1:
        flash_attention_v1(q, k, v, M=M, hbm=hbm)
    else:
        flash_attention_forward(q, k, v, M=M, hbm=hbm)
    if backward:
        o, L = flash_attention_forward(q, k, v, M=M)              # not counted: the forward is above
        flash_attention_backward(q, k, v, o, L, torch.ones_like(o), M=M, hbm=hbm)
    assert hbm.count() == flash_attention_io(N, d, M, version=version, backward=backward)

    std = HBMCounter()
    O, P = standard_attention(q, k, v, hbm=std, return_probs=True)
    assert std.count() == standard_attention_io(N, d)
    standard_attention_backward(q, k, v, P, torch.ones_like(O), hbm=std)
    assert std.count() == standard_attention_io(N, d, backward=True)


def test_standard_io_by_hand():
    # N = 3, d = 2: S and P written once and read once each (4·9), Q K V O once each (4·6)
    assert standard_attention_io(3, 2).total == 4 * 9 + 4 * 6
    hbm = HBMCounter()
    standard_attention(*qkv(1, 1, 3, 3, 2, 2), hbm=hbm)
    assert hbm.table() == {"K": (6, 0), "O": (0, 6), "P": (9, 9), "Q": (6, 0), "S": (9, 9), "V": (6, 0)}


def test_batch_heads_multiply_the_counts():
    q, k, v = qkv(2, 3, 20, 20, 8, 8)
    hbm = HBMCounter()
    flash_attention_v1(q, k, v, M=100, hbm=hbm)
    assert hbm.count() == flash_attention_io(20, 8, 100, batch_heads=6)
    assert IOCount(1, 2, 3) + IOCount(1, 1, 1) == IOCount(2, 3, 4)


def test_theorem_2_scaling():
    d = 64
    # standard: Θ(Nd + N²) — quadrupling when N doubles (for N ≫ d)
    r = standard_attention_io(8192, d).total / standard_attention_io(4096, d).total
    assert 3.8 < r < 4.0
    # flash: Θ(N²d²/M) — ×4 when N doubles, ×1/2 when M doubles, ×4 when d doubles (Bc = M/4d)
    base = flash_attention_io(8192, d, 2**16).total
    assert 3.9 < flash_attention_io(16384, d, 2**16).total / base < 4.1
    assert 0.45 < flash_attention_io(8192, d, 2**17).total / base < 0.55
    assert 3.9 < flash_attention_io(8192, 2 * d, 2**16).total / base < 4.1
    # and N²d²/M predicts the count within a constant factor: reads ≈ 3·Nd·Tc ≈ 12 N²d²/M
    for N, M in [(4096, 2**15), (8192, 2**16), (16384, 2**17)]:
        assert 12 < flash_attention_io(N, d, M).total / (N * N * d * d / M) < 20


# ----------------------------------------------------------------------------- memory
def test_extra_memory_quadratic_vs_linear():
    d = 32
    peaks = {}
    for N in (256, 512):
        q, k, v = qkv(1, 1, N, N, d, d, torch.float32)
        peaks["standard", N] = peak_memory(standard_attention, q, k, v)[1]
        peaks["flash", N] = peak_memory(lambda *a: flash_attention_forward(*a, Br=32, Bc=32), q, k, v)[1]
        peaks["v1", N] = peak_memory(lambda *a: flash_attention_v1(*a, Br=32, Bc=32), q, k, v)[1]
        assert peaks["standard", N] >= 2 * N * N * 4              # S and P, float32
        for name in ("flash", "v1"):
            # O, L (and ℓ, m) are O(N); the tiles a constant number of 32 × 32 blocks
            assert peaks[name, N] <= 3 * N * (d + 2) * 4 + 16 * 32 * 32 * 4
    assert peaks["standard", 512] > 3.5 * peaks["standard", 256]
    assert peaks["flash", 512] < 2 * peaks["flash", 256]


def test_peak_memory_measures_real_allocations():
    def alloc(n):
        a = torch.empty(n, dtype=torch.float32)
        b = torch.empty(2 * n, dtype=torch.float32)
        del a, b
        return torch.empty(n, dtype=torch.float32)

    assert peak_memory(alloc, 1000)[1] == 3000 * 4


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, message", [
    (lambda q, k, v: flash_attention_forward(q, k[..., :3], v), "k: expected the last dimension"),
    (lambda q, k, v: flash_attention_v1(q, k, v[..., :5, :]), "v: expected the sequence dimension"),
    (lambda q, k, v: flash_attention_forward(q.int(), k, v), "q: expected a floating dtype"),
    (lambda q, k, v: flash_attention_forward(q, k.float(), v), "expected one dtype"),
    (lambda q, k, v: flash_attention_forward(q, k, v, Br=0), "Br: expected an integer ≥ 1; got 0"),
    (lambda q, k, v: flash_attention_v1(q, k, v, Bc=2.5), "Bc: expected an integer ≥ 1"),
    (lambda q, k, v: flash_attention_forward(q, k, v, scale=float("nan")), "scale: expected a finite number"),
    (lambda q, k, v: flash_attention_v1(q, k, v, hbm={}), "hbm: expected an HBMCounter"),
    (lambda q, k, v: flash_attention_backward(q, k, v, q, q[..., 0], q[..., :3]), "do: expected shape"),
    (lambda q, k, v: flash_attention_backward(q, k, v, q, q, q), "L: expected shape"),
    (lambda q, k, v: online_softmax(q, 0), "block_size: expected an integer ≥ 1"),
    (lambda q, k, v: online_softmax_merge(q, (q, q)), "a: expected a pair"),
    (lambda q, k, v: flash_attention_io(8, 4, version=3), "version: expected 1"),
    (lambda q, k, v: standard_attention(q, k, "v"), "v: expected a torch.Tensor"),
])
def test_bad_input_raises_value_error(call, message):
    q, k, v = qkv(1, 2, 10, 10, 8, 8)
    with pytest.raises(ValueError, match=message):
        call(q, k, v)
