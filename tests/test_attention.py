"""course_lib.attention against torch.softmax and F.scaled_dot_product_attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.attention import (
    attention_scores,
    entropy,
    plot_attention,
    softmax_jacobian,
    scaled_dot_product_attention,
    softmax,
)

TOL = {torch.float64: 1e-10, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])


def close(a, b, dtype):
    tol = TOL[dtype]
    torch.testing.assert_close(a.double(), b.double(), atol=tol, rtol=tol)


# --------------------------------------------------------------------------- softmax
@given(
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    data=st.data(),
    dtype=dtypes,
    offset=st.sampled_from([0.0, 50.0, -1e4, 1e4]),
)
def test_softmax_matches_torch(shape, data, dtype, offset):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    g = torch.Generator().manual_seed(len(shape) * 31 + dim)
    # multiples of 1/64 with |x| < 64: exact in every dtype, and x + offset stays exact in fp32/64
    x = (torch.randn(shape, generator=g, dtype=torch.float64).mul(5 * 64).round().div(64).clamp(-63, 63)).to(dtype)
    # stability: a large common offset changes nothing, in any dtype that can hold it
    shifted = (x.double() + offset).to(dtype) if dtype in (torch.float32, torch.float64) else x
    got = softmax(shifted, dim=dim)
    assert got.dtype == dtype and got.shape == x.shape
    assert torch.isfinite(got).all()
    want = torch.softmax(x.float(), dim=dim).to(dtype) if dtype in (torch.float16, torch.bfloat16) else torch.softmax(x, dim=dim)
    close(got, want, dtype)
    close(got.double().sum(dim), torch.ones_like(got.double().sum(dim)), dtype)


def test_softmax_fully_masked_row_is_zero_not_nan():
    x = torch.tensor([[0.0, 1.0, 2.0], [float("-inf")] * 3])
    got = softmax(x)
    assert torch.isnan(torch.softmax(x, -1)[1]).all()  # what torch does
    assert torch.equal(got[1], torch.zeros(3))
    torch.testing.assert_close(got[0], torch.softmax(x[0], -1))


def test_softmax_huge_logits_do_not_overflow():
    x = torch.tensor([[1000.0, 0.0, -1000.0]])
    assert torch.isnan(torch.exp(x) / torch.exp(x).sum()).any()  # the naive formula fails
    torch.testing.assert_close(softmax(x), torch.tensor([[1.0, 0.0, 0.0]]))


def test_softmax_bad_input():
    with pytest.raises(ValueError, match="x: expected a floating dtype; got torch.int64"):
        softmax(torch.arange(3))
    with pytest.raises(ValueError, match=r"dim: expected a dimension of x \(shape \(2, 3\)\); got 2"):
        softmax(torch.zeros(2, 3), dim=2)
    with pytest.raises(ValueError, match="x: expected a torch.Tensor; got list"):
        softmax([1.0, 2.0])


def test_entropy_extremes():
    n = 8
    assert math.isclose(entropy(torch.full((n,), 1 / n)).item(), math.log(n), rel_tol=1e-6)
    assert entropy(F.one_hot(torch.tensor(3), n).float()).item() == 0.0


# --------------------------------------------------------------------------- SDPA
def _mask(kind, g, B, H, T, S, dtype):
    if kind == "none":
        return None
    if kind == "bool_TS":
        m = torch.rand(T, S, generator=g) > 0.3
    elif kind == "bool_B11S":
        m = torch.rand(B, 1, 1, S, generator=g) > 0.3
    elif kind == "bool_full":
        m = torch.rand(B, H, T, S, generator=g) > 0.3
    elif kind == "additive":
        m = torch.where(torch.rand(T, S, generator=g) > 0.3, 0.0, float("-inf")).to(dtype)
        m = m + 0.1 * torch.randn(T, S, generator=g).to(dtype)  # a real-valued bias, like ALiBi
        return m
    else:
        raise AssertionError(kind)
    return m


@given(
    B=st.integers(1, 3), H=st.integers(1, 4), T=st.integers(1, 9), S=st.integers(1, 9),
    d=st.sampled_from([1, 4, 8, 16, 64]), dv=st.sampled_from([1, 5, 8]),
    dtype=dtypes,
    mask_kind=st.sampled_from(["none", "bool_TS", "bool_B11S", "bool_full", "additive"]),
    scale=st.sampled_from([None, 0.5]),
)
def test_sdpa_matches_torch(B, H, T, S, d, dv, dtype, mask_kind, scale):
    g = torch.Generator().manual_seed(B * 1000 + H * 100 + T * 10 + S)
    q = torch.randn(B, H, T, d, generator=g).to(dtype)
    k = torch.randn(B, H, S, d, generator=g).to(dtype)
    v = torch.randn(B, H, S, dv, generator=g).to(dtype)
    mask = _mask(mask_kind, g, B, H, T, S, dtype)
    got, w = scaled_dot_product_attention(q, k, v, mask, scale=scale, return_weights=True)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    assert got.shape == (B, H, T, dv) and got.dtype == dtype
    assert w.shape == (B, H, T, S)
    close(got, want, dtype)
    # weights: rows sum to 1, or to 0 where every key is masked (torch gives output 0 there)
    sums = w.float().sum(-1)
    assert torch.all(((sums - 1).abs() < 2 * TOL[dtype] * S + 1e-6) | (sums == 0))
    assert torch.isfinite(got).all()


@given(T=st.integers(1, 12), S=st.integers(1, 12), dtype=dtypes)
def test_sdpa_causal_matches_torch(T, S, dtype):
    g = torch.Generator().manual_seed(T * 13 + S)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g).to(dtype) for n in (T, S, S))
    got, w = scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    close(got, F.scaled_dot_product_attention(q, k, v, is_causal=True), dtype)
    upper = torch.ones(T, S, dtype=torch.bool).triu(1)
    assert (w[..., upper] == 0).all()  # no query sees a later key


def test_fully_masked_rows_give_zero_output_like_torch():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 8, generator=g) for _ in range(3))
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[2] = False
    got, w = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(got, want)
    assert (got[..., 2, :] == 0).all() and (w[..., 2, :] == 0).all()


def test_sdpa_gradients_match_torch():
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    mask = torch.rand(5, 5, generator=g) > 0.3
    mask[:, 0] = True
    ours = scaled_dot_product_attention(*args, mask)
    grads = torch.autograd.grad(ours.square().sum(), args)
    ref = F.scaled_dot_product_attention(*args, attn_mask=mask)
    ref_grads = torch.autograd.grad(ref.square().sum(), args)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_default_scale_is_inverse_sqrt_d():
    q = torch.ones(1, 1, 64)
    k = torch.ones(1, 1, 64)
    assert attention_scores(q, k).item() == pytest.approx(64 / 8)


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: ((torch.zeros(2, 3, 8), torch.zeros(2, 5, 4), torch.zeros(2, 5, 8)), {}),
         r"k: expected the last dimension \(head_dim\) to equal q's, 8; got k of shape \(2, 5, 4\)"),
        (lambda: ((torch.zeros(2, 3, 8), torch.zeros(2, 5, 8), torch.zeros(2, 4, 8)), {}),
         r"v: expected the sequence dimension \(-2\) to equal k's, 5; got v of shape \(2, 4, 8\)"),
        (lambda: ((torch.zeros(2, 3, 8), torch.zeros(2, 5, 8, dtype=torch.float64), torch.zeros(2, 5, 8)), {}),
         r"q, k, v: expected one dtype; got q torch.float32, k torch.float64"),
        (lambda: ((torch.zeros(2, 3, 8, dtype=torch.int32),) * 3, {}),
         r"q: expected a floating dtype; got torch.int32"),
        (lambda: ((torch.zeros(8),) * 3, {}),
         r"q: expected at least 2 dimensions; got shape \(8,\)"),
        (lambda: ((torch.zeros(2, 3, 8), torch.zeros(3, 5, 8), torch.zeros(3, 5, 8)), {}),
         r"q, k, v: expected the same leading \(batch, heads\) dimensions"),
        (lambda: ((torch.zeros(2, 3, 8), torch.zeros(2, 5, 8), torch.zeros(2, 5, 8)),
                  {"mask": torch.ones(3, 4, dtype=torch.bool)}),
         r"mask: expected a shape that broadcasts to the scores' shape \(2, 3, 5\); got \(3, 4\)"),
        (lambda: ((torch.zeros(2, 3, 8), torch.zeros(2, 5, 8), torch.zeros(2, 5, 8)),
                  {"mask": torch.ones(3, 5, dtype=torch.int64)}),
         r"mask: expected dtype torch.bool \(True = attend\) or a floating additive mask; got torch.int64"),
        (lambda: ((torch.zeros(2, 3, 8), torch.zeros(2, 3, 8), torch.zeros(2, 3, 8)),
                  {"mask": torch.ones(3, 3, dtype=torch.bool), "is_causal": True}),
         r"mask: pass either mask or is_causal=True, not both"),
    ],
)
def test_sdpa_bad_input_names_the_argument(make, pattern):
    args, kwargs = make()
    with pytest.raises(ValueError, match=pattern):
        scaled_dot_product_attention(*args, **kwargs)


def test_plot_attention():
    import matplotlib.pyplot as plt

    w = softmax(torch.randn(3, 4))
    ax = plot_attention(w, ["a", "b", "c"], list("wxyz"), annotate=True, title="t")
    assert ax.get_title() == "t" and len(ax.texts) == 12
    plt.close("all")
    with pytest.raises(ValueError, match=r"weights: expected a 2-D map \[T, S\]; got shape \(1, 3, 4\)"):
        plot_attention(w[None])
    with pytest.raises(ValueError, match="keys: expected 4 labels"):
        plot_attention(w, keys=["a"])


def test_softmax_jacobian_matches_autograd():
    z = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    want = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, -1), z)
    torch.testing.assert_close(softmax_jacobian(softmax(z)), want)
    # batched, and vanishing at a one-hot row: a saturated softmax passes no gradient
    J = softmax_jacobian(torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]]))
    assert J.shape == (2, 3, 3) and (J[0] == 0).all() and J[1].abs().sum() > 0


def test_best_time_times_the_call():
    import time as _time

    from course_lib.utils import best_time

    calls = []
    t = best_time(lambda s: (calls.append(s), _time.sleep(s)), 0.01, repeats=2)
    assert len(calls) == 3 and 0.009 < t < 0.5  # one warm-up + two timed runs


# ----------------------------------------------------------------------------- grouped-query attention
@settings(max_examples=40)
@given(h_kv=st.sampled_from([1, 2, 3]), n_rep=st.sampled_from([1, 2, 4]), T=st.integers(1, 6),
       extra=st.integers(0, 5), masked=st.sampled_from(["none", "shared", "per_head", "causal"]))
def test_grouped_query_attention_equals_sdpa_over_repeated_kv(h_kv, n_rep, T, extra, masked):
    from course_lib.attention import grouped_query_attention, repeat_kv
    from course_lib.masks import causal_mask
    g = torch.Generator().manual_seed(T * 31 + extra)
    B, S, d, h = 2, T + extra, 8, h_kv * n_rep
    q = torch.randn(B, h, T, d, generator=g)
    k, v = torch.randn(2, B, h_kv, S, d, generator=g)
    mask, is_causal = None, masked == "causal"
    if masked == "shared":
        mask = torch.rand(B, 1, T, S, generator=g) > 0.4
        mask[..., -1] = True
    elif masked == "per_head":
        mask = torch.randn(1, h, T, S, generator=g)
    ours = grouped_query_attention(q, k, v, mask, is_causal=is_causal)
    if is_causal:
        mask = causal_mask(T, S)                       # bottom-right aligned, as the KV cache needs
    ref = F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), attn_mask=mask)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_repeat_kv_is_repeat_interleave_and_grouping_copies_nothing():
    from course_lib.attention import group_queries, grouped_query_attention, repeat_kv
    from course_lib.flash import peak_memory
    x = torch.randn(2, 3, 5, 8)
    assert torch.equal(repeat_kv(x, 4), torch.repeat_interleave(x, 4, dim=1)) and repeat_kv(x, 1) is x
    q = torch.randn(2, 8, 1, 16)
    assert group_queries(q, 2).data_ptr() == q.data_ptr()              # a view
    k = v = torch.randn(2, 2, 4096, 16)                                # two K/V heads: 1 MiB each
    kv_bytes = k.nbytes
    _, copied = peak_memory(lambda: F.scaled_dot_product_attention(q, repeat_kv(k, 4), repeat_kv(v, 4)))
    _, grouped = peak_memory(lambda: grouped_query_attention(q, k, v))
    assert copied >= 4 * kv_bytes                  # repeat_kv: n_rep = 4 copies of the K/V heads
    assert grouped < kv_bytes / 8                   # grouped queries: not even a fraction of one copy
