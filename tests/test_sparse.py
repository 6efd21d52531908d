"""course_lib.sparse: masks from their set definitions, reachability against brute-force
paths, and block-sparse attention against dense masked attention (course_lib and torch)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from course_lib.attention import scaled_dot_product_attention
from course_lib.masks import causal_mask
from course_lib.sparse import (
    block_layout,
    block_sparse_attention,
    dilated_window_mask,
    fixed_pattern,
    global_tokens_mask,
    head_masks,
    hop_distance,
    layer_schedule,
    layers_needed,
    nnz,
    reachable,
    receptive_field,
    score_matrix_bytes,
    sliding_window_mask,
    strided_pattern,
    union,
)


def from_sets(T, S, rule):
    """A [T, S] mask built entry by entry from a set-membership rule (the definition)."""
    return torch.tensor([[bool(rule(i, j)) for j in range(S)] for i in range(T)], dtype=torch.bool).reshape(T, S)


def paths_brute_force(layers, n):
    """R[i, j]: some path j → … → i exists, one step per layer (staying in place allowed)."""
    reach = [{j} for j in range(n)]  # reach[i] = inputs that reached position i so far
    for m in layers:
        m = m | torch.eye(n, dtype=torch.bool)
        reach = [set().union(*(reach[t] for t in range(n) if m[i, t])) for i in range(n)]
    return from_sets(n, n, lambda i, j: j in reach[i])


# --------------------------------------------------------------------------- cost
def test_score_matrix_bytes():
    assert score_matrix_bytes(1024, torch.float16) == 2 * 1024**2
    assert score_matrix_bytes(131072, torch.float32) == 64 * 2**30  # 64 GiB for one head of one layer
    assert score_matrix_bytes(4096, 2, heads=32, layers=32, batch=1) == 32 * 32 * 2 * 4096**2
    x = torch.empty(4096, 4096, dtype=torch.float32)
    assert x.untyped_storage().nbytes() == score_matrix_bytes(4096, torch.float32)


def test_nnz_counts():
    assert nnz(causal_mask(10)) == 55
    with pytest.raises(ValueError, match="mask: expected dtype torch.bool; got torch.int64"):
        nnz(torch.ones(2, 2, dtype=torch.long))


# --------------------------------------------------------------------------- windows
@given(T=st.integers(1, 12), extra=st.integers(0, 6), window=st.integers(1, 20))
def test_sliding_window_matches_its_definition(T, extra, window):
    S = T + extra
    want = from_sets(T, S, lambda i, j: 0 <= (i + S - T) - j < window)
    got = sliding_window_mask(T, window, S)
    assert torch.equal(got, want)
    assert (got.sum(1) <= window).all() and (got.sum(1) >= 1).all()


def test_sliding_window_off_by_one_and_limits():
    m = sliding_window_mask(6, 3)
    assert m[5].tolist() == [False, False, False, True, True, True]  # keys 3, 4, 5: itself and 2 before
    assert torch.equal(sliding_window_mask(6, 1), torch.eye(6, dtype=torch.bool))
    assert torch.equal(sliding_window_mask(6, 6), causal_mask(6))
    assert torch.equal(sliding_window_mask(6, 100), causal_mask(6))
    assert torch.equal(sliding_window_mask(2, 100, 5), causal_mask(2, 5))
    assert not (sliding_window_mask(6, 3) & ~causal_mask(6)).any()  # never the future


@given(T=st.integers(1, 14), window=st.integers(1, 5), dilation=st.integers(1, 4))
def test_dilated_window_matches_its_definition(T, window, dilation):
    want = from_sets(T, T, lambda i, j: (i - j) in {m * dilation for m in range(window)})
    assert torch.equal(dilated_window_mask(T, window, dilation), want)
    if dilation == 1:
        assert torch.equal(dilated_window_mask(T, window, 1), sliding_window_mask(T, window))


def test_global_tokens():
    g = global_tokens_mask(6, [0, 3], causal=False)
    want = from_sets(6, 6, lambda i, j: i in (0, 3) or j in (0, 3))
    assert torch.equal(g, want)
    assert torch.equal(global_tokens_mask(6, [0, 3]), want & causal_mask(6))
    # bidirectional local band + one global token: every pair within two hops (through it)
    band = sliding_window_mask(20, 2) | sliding_window_mask(20, 2).T
    assert hop_distance(union(band, global_tokens_mask(20, [7], causal=False))).max().item() == 2
    # causally, an early global token only sees its prefix: it relays nothing from later tokens
    assert hop_distance(union(sliding_window_mask(20, 2), global_tokens_mask(20, [0])))[causal_mask(20)].max().item() == 18
    with pytest.raises(ValueError, match=r"global_idx: expected positions in \[0, 6\); got \[6\]"):
        global_tokens_mask(6, [6])


# --------------------------------------------------------------------------- factorized patterns
@pytest.mark.parametrize("n, l", [(16, 4), (17, 4), (23, 5), (30, 7), (9, 1), (5, 8)])
def test_strided_pattern_matches_the_paper(n, l):
    a1, a2 = strided_pattern(n, l)
    assert torch.equal(a1, from_sets(n, n, lambda i, j: max(0, i - l) <= j <= i))
    assert torch.equal(a2, from_sets(n, n, lambda i, j: j <= i and (i - j) % l == 0))
    assert torch.equal(a1, sliding_window_mask(n, l + 1))


@pytest.mark.parametrize("n, l, c", [(16, 4, 1), (17, 4, 2), (23, 5, 5), (30, 7, 3), (6, 8, 2)])
def test_fixed_pattern_matches_the_paper(n, l, c):
    a1, a2 = fixed_pattern(n, l, c)
    assert torch.equal(a1, from_sets(n, n, lambda i, j: j <= i and j // l == i // l))
    assert torch.equal(a2, from_sets(n, n, lambda i, j: j <= i and j % l in range(l - c, l)))


@pytest.mark.parametrize("n, l", [(16, 4), (17, 4), (26, 5), (40, 6), (33, 8)])
def test_two_hops_connect_every_pair(n, l):
    full = causal_mask(n)
    s1, s2 = strided_pattern(n, l)
    f1, f2 = fixed_pattern(n, l, 1)
    for layers in ([s1, s2], [s2, s1], [f1, f2]):
        assert torch.equal(reachable(layers), full)
        assert torch.equal(reachable(layers), paths_brute_force(layers, n))
    assert not torch.equal(reachable([f2, f1]), full)  # the order matters for the fixed pattern
    for a1, a2 in ((s1, s2), (f1, f2)):
        d = hop_distance(union(a1, a2))
        assert d[full].max().item() <= 2 and (d[~full] == -1).all()
        assert not torch.equal(reachable([a1]), full) and not torch.equal(reachable([a2]), full)


@given(n=st.integers(2, 14), w1=st.integers(1, 4), w2=st.integers(1, 4), dil=st.integers(1, 3))
def test_reachable_equals_brute_force_paths(n, w1, w2, dil):
    layers = [sliding_window_mask(n, w1), dilated_window_mask(n, w2, dil), sliding_window_mask(n, w2)]
    assert torch.equal(reachable(layers), paths_brute_force(layers, n))
    no_res = reachable(layers, residual=False)
    assert not (no_res & ~reachable(layers)).any()


def test_layer_schedule_and_head_masks():
    a1, a2 = strided_pattern(12, 3)
    inter = layer_schedule([a1, a2], 3, "interleaved")
    assert [len(x) for x in inter] == [1, 1, 1] and torch.equal(inter[2][0], a1) and torch.equal(inter[1][0], a2)
    merged = layer_schedule([a1, a2], 2, "merged")
    assert torch.equal(merged[0][0], a1 | a2)
    heads = layer_schedule([a1, a2], 2, "heads")
    assert torch.equal(reachable(heads), reachable(merged))
    hm = head_masks([a1, a2], 4)
    assert hm.shape == (4, 12, 12) and torch.equal(hm[2], a1) and torch.equal(hm[3], a2)
    with pytest.raises(ValueError, match="mode: expected one of"):
        layer_schedule([a1], 2, "mixed")


@pytest.mark.parametrize("window, layers", [(2, 1), (5, 3), (9, 5), (17, 4)])
def test_receptive_field_by_reachability(window, layers):
    n = receptive_field(window, layers) + 5
    r = reachable([sliding_window_mask(n, window)] * layers)
    assert r[-1].sum().item() == receptive_field(window, layers)
    assert receptive_field(4096 + 1, 32) - 1 == 131_072  # Mistral: keys i−W … i, 32 layers
    d = hop_distance(sliding_window_mask(n, window))
    assert layers_needed(n - 1, window) == d[n - 1, 0].item()


def test_layers_needed():
    assert layers_needed(0, 1) == 0
    assert layers_needed(8, 5) == 2 and layers_needed(9, 5) == 3
    with pytest.raises(ValueError, match="window: a window of 1"):
        layers_needed(3, 1)


# --------------------------------------------------------------------------- block-sparse attention
@st.composite
def block_cases(draw):
    T = draw(st.integers(1, 40))
    S = draw(st.integers(1, 40))
    b = draw(st.integers(1, 16))
    kind = draw(st.sampled_from(["random", "window", "blocky", "empty_rows", "causal"]))
    seed = draw(st.integers(0, 10_000))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return T, S, b, kind, seed, dtype


def make_mask(T, S, kind, g):
    if kind == "random":
        return torch.rand(T, S, generator=g) < 0.3
    if kind == "window":
        S = max(S, T)
        return sliding_window_mask(T, int(torch.randint(1, S + 1, (), generator=g)), S)
    if kind == "blocky":
        coarse = torch.rand(T // 5 + 1, S // 5 + 1, generator=g) < 0.4
        return coarse.repeat_interleave(5, 0).repeat_interleave(5, 1)[:T, :S] & (torch.rand(T, S, generator=g) < 0.7)
    if kind == "empty_rows":
        m = torch.rand(T, S, generator=g) < 0.5
        m[::2] = False
        return m
    return causal_mask(T, max(S, T))


@given(block_cases())
def test_block_sparse_equals_dense_masked_attention(case):
    T, S, b, kind, seed, dtype = case
    g = torch.Generator().manual_seed(seed)
    mask = make_mask(T, S, kind, g)
    S = mask.shape[1]
    q = torch.randn(2, 3, T, 8, generator=g, dtype=dtype)
    k = torch.randn(2, 3, S, 8, generator=g, dtype=dtype)
    v = torch.randn(2, 3, S, 5, generator=g, dtype=dtype)
    got = block_sparse_attention(q, k, v, mask, b)
    want = scaled_dot_product_attention(q, k, v, mask)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert got.shape == want.shape and got.dtype == dtype
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    if mask.any(dim=1).all():  # torch's SDPA gives NaN rows when a row is fully masked
        torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_block_sparse_low_precision(dtype):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 37, 16, generator=g).to(dtype) for _ in range(3))
    mask = sliding_window_mask(37, 9)
    got = block_sparse_attention(q, k, v, mask, 8)
    assert got.dtype == dtype
    want = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_block_sparse_all_masked_and_scale():
    q = torch.randn(1, 1, 10, 4)
    assert torch.equal(block_sparse_attention(q, q, q, torch.zeros(10, 10, dtype=torch.bool), 4), torch.zeros(1, 1, 10, 4))
    m = causal_mask(10)
    torch.testing.assert_close(block_sparse_attention(q, q, q, m, 3, scale=0.5),
                               scaled_dot_product_attention(q, q, q, m, scale=0.5))


def test_block_layout():
    layout = block_layout(sliding_window_mask(10, 3), 4)
    assert layout.tolist() == [[True, False, False], [True, True, False], [False, True, True]]
    for T, S, b in itertools.product((1, 7, 16), (3, 16, 17), (1, 4, 5)):
        m = torch.rand(T, S) < 0.2
        lay = block_layout(m, b)
        assert lay.shape == (math.ceil(T / b), math.ceil(S / b))
        assert lay.sum() <= m.sum()


# --------------------------------------------------------------------------- bad input
def test_bad_input():
    with pytest.raises(ValueError, match="window: expected an integer ≥ 1; got 0"):
        sliding_window_mask(4, 0)
    with pytest.raises(ValueError, match="S: expected at least T = 4 keys"):
        sliding_window_mask(4, 2, 3)
    with pytest.raises(ValueError, match="dilation: expected an integer ≥ 1; got 0"):
        dilated_window_mask(4, 2, 0)
    with pytest.raises(ValueError, match="l: expected an integer ≥ 1; got 0"):
        strided_pattern(8, 0)
    with pytest.raises(ValueError, match="c: expected 1 ≤ c ≤ l = 4 summary positions per block; got 5"):
        fixed_pattern(8, 4, 5)
    with pytest.raises(ValueError, match=r"masks: expected one shape \(3, 3\); got \(4, 4\)"):
        union(causal_mask(3), causal_mask(4))
    q = torch.randn(1, 1, 6, 4)
    with pytest.raises(ValueError, match=r"mask: expected shape \(T, S\) = \(6, 6\); got \(6, 5\)"):
        block_sparse_attention(q, q, q, torch.ones(6, 5, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="mask: expected dtype torch.bool"):
        block_sparse_attention(q, q, q, torch.ones(6, 6), 2)
    with pytest.raises(ValueError, match="block_size: expected an integer ≥ 1; got 0"):
        block_sparse_attention(q, q, q, causal_mask(6), 0)
    with pytest.raises(ValueError, match="layers: expected square self-attention masks"):
        reachable([torch.ones(3, 4, dtype=torch.bool)])
    with pytest.raises(ValueError, match="n: expected an integer ≥ 0; got -1"):
        score_matrix_bytes(-1)
