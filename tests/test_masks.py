"""course_lib.masks against F.scaled_dot_product_attention, F.cross_entropy, nn.LayerNorm, and properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from course_lib.attention import scaled_dot_product_attention
from course_lib.masks import (
    IGNORE_INDEX,
    BertEmbeddings,
    causal_lm_labels,
    causal_lm_loss,
    causal_mask,
    combine_masks,
    fully_masked_rows,
    mlm_mask,
    padding_mask,
    shift_labels,
    to_additive,
    to_boolean,
)

float_dtypes = st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64])


# ----------------------------------------------------------------------------- causal mask
@given(T=st.integers(0, 9), extra=st.integers(0, 6))
def test_causal_mask_is_bottom_right_aligned(T, extra):
    S = T + extra
    m = causal_mask(T, S)
    assert m.shape == (T, S) and m.dtype == torch.bool
    for i in range(T):
        for j in range(S):
            assert bool(m[i, j]) == (j <= i + S - T)
    big = torch.ones(S, S, dtype=torch.bool).tril()
    assert torch.equal(m, big[S - T:])  # the last T rows of the square mask (GPT-2's crop with a cache)


@given(T=st.integers(1, 9), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_causal_mask_equals_torch_is_causal(T, dtype):
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(2, 3, T, 4, generator=g, dtype=dtype) for _ in range(3))
    ours = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, ref)


def test_causal_mask_rejects_fewer_keys_than_queries():
    with pytest.raises(ValueError, match="S: expected at least T = 4"):
        causal_mask(4, 3)


# ----------------------------------------------------------------------------- padding
@given(lengths=st.lists(st.integers(0, 8), min_size=1, max_size=5), extra=st.integers(0, 3),
       side=st.sampled_from(["right", "left"]))
def test_padding_mask_marks_real_keys(lengths, extra, side):
    S = max(lengths) + extra
    m = padding_mask(torch.tensor(lengths), S, side=side)
    assert m.shape == (len(lengths), 1, 1, S) and m.dtype == torch.bool
    assert m.sum(-1).flatten().tolist() == lengths
    for b, n in enumerate(lengths):
        row = m[b, 0, 0].tolist()
        assert row == ([True] * n + [False] * (S - n) if side == "right" else [False] * (S - n) + [True] * n)


def test_padding_mask_default_length_and_lists():
    assert padding_mask([2, 3]).shape == (2, 1, 1, 3)
    assert torch.equal(padding_mask([2, 3])[:, 0, 0], torch.tensor([[True, True, False], [True, True, True]]))


def test_padding_mask_hides_padded_keys_in_sdpa():
    g = torch.Generator().manual_seed(0)
    B, H, S, d = 3, 2, 6, 4
    lengths = torch.tensor([6, 4, 1])
    q, k, v = (torch.randn(B, H, S, d, generator=g) for _ in range(3))
    m = padding_mask(lengths)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    for b, n in enumerate(lengths.tolist()):  # same as attending over the unpadded sequence
        ref = F.scaled_dot_product_attention(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n])
        torch.testing.assert_close(out[b:b + 1], ref)


@pytest.mark.parametrize(
    "lengths, S, side, message",
    [
        ([[1, 2]], None, "right", "lengths: expected a 1-D tensor"),
        (torch.tensor([1.0, 2.0]), None, "right", "lengths: expected an integer dtype"),
        ([1, -1], None, "right", "lengths: expected non-negative"),
        ([3, 5], 4, "right", r"S: expected at least max\(lengths\) = 5; got S = 4"),
        ([3, 5], None, "middle", "side: expected 'right' or 'left'"),
        ("abc", None, "right", "lengths: expected a 1-D tensor or list of integers"),
    ],
)
def test_padding_mask_bad_input(lengths, S, side, message):
    with pytest.raises(ValueError, match=message):
        padding_mask(lengths, S, side=side)


# ----------------------------------------------------------------------------- combine
@given(B=st.integers(1, 3), T=st.integers(1, 6), extra=st.integers(0, 3), data=st.data())
def test_combine_masks_is_broadcast_and(B, T, extra, data):
    S = T + extra
    lengths = data.draw(st.lists(st.integers(0, S), min_size=B, max_size=B))
    pad, causal = padding_mask(lengths, S), causal_mask(T, S)
    m = combine_masks(pad, None, causal)
    assert m.shape == (B, 1, T, S)
    for b in range(B):
        for i in range(T):
            for j in range(S):
                assert bool(m[b, 0, i, j]) == (j < lengths[b] and j <= i + S - T)
    # combining then attending == attending with the additive sum of the two masks
    g = torch.Generator().manual_seed(B * 100 + T)
    q = torch.randn(B, 2, T, 4, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, 2, S, 4, generator=g, dtype=torch.float64) for _ in range(2))
    ours = scaled_dot_product_attention(q, k, v, m)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    torch.testing.assert_close(ours, ref)


def test_combine_masks_returns_a_new_tensor():
    a = torch.ones(2, 2, dtype=torch.bool)
    out = combine_masks(a)
    out[0, 0] = False
    assert a.all()


@pytest.mark.parametrize(
    "masks, message",
    [
        ((), "masks: expected at least one mask"),
        ((None,), "masks: expected at least one mask"),
        ((torch.ones(2, 3),), r"masks\[0\]: expected dtype torch.bool"),
        ((torch.ones(2, 3, dtype=torch.bool), torch.ones(4, 3, dtype=torch.bool)), "broadcast together"),
        (([True, False],), r"masks\[0\]: expected a torch.Tensor"),
    ],
)
def test_combine_masks_bad_input(masks, message):
    with pytest.raises(ValueError, match=message):
        combine_masks(*masks)


# ----------------------------------------------------------------------------- additive
@given(dtype=float_dtypes, use_inf=st.booleans(), T=st.integers(1, 6), extra=st.integers(0, 3))
def test_to_additive_matches_boolean_in_sdpa(dtype, use_inf, T, extra):
    S = T + extra
    g = torch.Generator().manual_seed(T * 7 + extra)
    bool_mask = torch.rand(T, S, generator=g) > 0.4
    bool_mask[:, -1] = True  # no fully masked rows here
    add = to_additive(bool_mask, dtype, use_inf=use_inf)
    assert add.dtype == dtype and add.shape == bool_mask.shape
    blocked = float("-inf") if use_inf else torch.finfo(dtype).min
    assert (add[bool_mask] == 0).all() and (add[~bool_mask] == blocked).all()
    assert torch.equal(to_boolean(add), bool_mask)
    q = torch.randn(1, 2, T, 8, generator=g).to(dtype)
    k, v = (torch.randn(1, 2, S, 8, generator=g).to(dtype) for _ in range(2))
    a = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=add.float())
    b = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bool_mask)
    torch.testing.assert_close(a, b)
    assert torch.isfinite(scaled_dot_product_attention(q, k, v, add)).all()


def test_minus_1e9_is_minus_inf_in_float16_but_finfo_min_is_finite():
    assert torch.tensor(-1e9).half().item() == float("-inf")
    add = to_additive(torch.tensor([True, False]), torch.float16)
    assert torch.isfinite(add).all() and add[1].item() == -65504.0
    assert (add[1] + add[1]).item() == float("-inf")  # why masks are combined as booleans


def test_fully_masked_row_with_finfo_min_is_uniform_and_with_inf_is_nan():
    m = torch.tensor([[True, False, False], [False, False, False]])
    p_min = torch.softmax(torch.zeros(2, 3) + to_additive(m), dim=-1)
    p_inf = torch.softmax(torch.zeros(2, 3) + to_additive(m, use_inf=True), dim=-1)
    torch.testing.assert_close(p_min[1], torch.full((3,), 1 / 3))
    assert p_inf[1].isnan().all() and torch.equal(p_inf[0], p_min[0])
    assert fully_masked_rows(m).tolist() == [False, True]
    assert fully_masked_rows(to_additive(m, use_inf=True)).tolist() == [False, True]


def test_to_boolean_threshold_for_the_old_minus_1e4_convention():
    add = torch.tensor([0.0, -1e4, -3.0])
    assert to_boolean(add).tolist() == [True, True, True]
    assert to_boolean(add, threshold=-1e3).tolist() == [True, False, True]


@pytest.mark.parametrize(
    "fn, message",
    [
        (lambda: to_additive(torch.ones(2, 2)), "mask: expected dtype torch.bool"),
        (lambda: to_additive(torch.ones(2, 2, dtype=torch.bool), torch.int32), "dtype: expected a floating torch.dtype"),
        (lambda: to_boolean(torch.ones(2, 2, dtype=torch.bool)), "mask: expected a floating additive mask"),
        (lambda: fully_masked_rows(torch.tensor(True)), "mask: expected at least 1 dimensions"),
    ],
)
def test_additive_bad_input(fn, message):
    with pytest.raises(ValueError, match=message):
        fn()


# ----------------------------------------------------------------------------- MLM
V, MASK, CLS, SEP, PAD = 1000, 3, 1, 2, 0
SPECIAL = (PAD, CLS, SEP, MASK)


def _batch(B=64, L=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (B, L), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    lengths = torch.randint(L // 2, L, (B,), generator=g)
    pad = ~padding_mask(lengths, L)[:, 0, 0]
    ids[pad] = PAD
    return ids


def test_mlm_mask_statistics_within_binomial_error():
    ids = _batch()
    masked, labels = mlm_mask(ids, mask_token_id=MASK, vocab_size=V, special_token_ids=SPECIAL,
                              generator=torch.Generator().manual_seed(1))
    eligible = ~torch.isin(ids, torch.tensor(SPECIAL))
    sel = labels != IGNORE_INDEX
    n_el, n_sel = int(eligible.sum()), int(sel.sum())
    z = lambda k, n, p: (k / n - p) / math.sqrt(p * (1 - p) / n)  # noqa: E731
    assert abs(z(n_sel, n_el, 0.15)) < 4
    as_mask = int((masked[sel] == MASK).sum())
    unchanged = int((masked[sel] == ids[sel]).sum())
    rand = n_sel - as_mask - unchanged
    assert abs(z(as_mask, n_sel, 0.8 + 0.1 / V)) < 4
    assert abs(z(unchanged, n_sel, 0.1 + 0.1 / V)) < 4
    assert abs(z(rand, n_sel, 0.1 * (1 - 2 / V))) < 4


@given(seed=st.integers(0, 10_000), p=st.sampled_from([0.0, 0.15, 0.5, 1.0]), with_attention_mask=st.booleans())
def test_mlm_mask_invariants(seed, p, with_attention_mask):
    ids = _batch(4, 33, seed)
    attn = ids != PAD
    ids_before = ids.clone()
    masked, labels = mlm_mask(ids, mask_token_id=MASK, vocab_size=V, mlm_probability=p,
                              special_token_ids=(CLS, SEP, MASK) if with_attention_mask else SPECIAL,
                              attention_mask=attn if with_attention_mask else None,
                              generator=torch.Generator().manual_seed(seed))
    assert torch.equal(ids, ids_before)
    assert masked.shape == ids.shape and labels.shape == ids.shape
    assert masked.dtype == ids.dtype and labels.dtype == ids.dtype
    sel = labels != IGNORE_INDEX
    assert torch.equal(labels[sel], ids[sel])                       # targets are the originals
    assert torch.equal(masked[~sel], ids[~sel])                     # unselected tokens untouched
    assert not sel[torch.isin(ids, torch.tensor(SPECIAL))].any()    # specials and padding never selected
    assert ((masked >= 0) & (masked < V)).all()
    eligible = ~torch.isin(ids, torch.tensor(SPECIAL))
    if p == 0.0:
        assert not sel.any()
    if p == 1.0:
        assert torch.equal(sel, eligible)


def test_mlm_mask_is_reproducible_with_a_generator():
    ids = _batch(2, 50)
    a = mlm_mask(ids, mask_token_id=MASK, vocab_size=V, generator=torch.Generator().manual_seed(5))
    b = mlm_mask(ids, mask_token_id=MASK, vocab_size=V, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_ids=torch.ones(2, 3)), "input_ids: expected an integer dtype"),
        (dict(mlm_probability=1.5), r"mlm_probability: expected a probability in \[0, 1\]"),
        (dict(vocab_size=0), "vocab_size: expected a positive"),
        (dict(mask_token_id=V), "mask_token_id: expected an id in"),
        (dict(attention_mask=torch.ones(2, 4, dtype=torch.bool)), "attention_mask: expected the shape of input_ids"),
    ],
)
def test_mlm_mask_bad_input(kwargs, message):
    args = dict(input_ids=torch.ones(2, 3, dtype=torch.long), mask_token_id=MASK, vocab_size=V) | kwargs
    ids = args.pop("input_ids")
    with pytest.raises(ValueError, match=message):
        mlm_mask(ids, **args)


# ----------------------------------------------------------------------------- causal LM
def test_shift_labels_and_causal_lm_loss_match_cross_entropy():
    g = torch.Generator().manual_seed(3)
    B, L, Vs = 3, 7, 11
    ids = torch.randint(Vs, (B, L), generator=g)
    attn = padding_mask([7, 5, 2], L)[:, 0, 0]
    logits = torch.randn(B, L, Vs, generator=g, dtype=torch.float64)
    labels = causal_lm_labels(ids, attn)
    assert torch.equal(labels[attn], ids[attn]) and (labels[~attn] == IGNORE_INDEX).all()
    shifted = shift_labels(labels)
    assert torch.equal(shifted[:, :-1], labels[:, 1:]) and (shifted[:, -1] == IGNORE_INDEX).all()
    # Hugging Face's formulation: drop the last logit and the first label
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, Vs), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(causal_lm_loss(logits, labels), ref)
    per_pos = causal_lm_loss(logits, labels, reduction="none")
    assert per_pos.shape == (B, L) and (per_pos[:, -1] == 0).all()
    torch.testing.assert_close(per_pos.sum(), causal_lm_loss(logits, labels, reduction="sum"))
    n_targets = int((shifted != IGNORE_INDEX).sum())
    assert n_targets == 6 + 4 + 1
    torch.testing.assert_close(per_pos.sum() / n_targets, ref)


@pytest.mark.parametrize(
    "fn, message",
    [
        (lambda: causal_lm_loss(torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.long)), "logits: expected 3 dimensions"),
        (lambda: causal_lm_loss(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long)), "labels: expected shape"),
        (lambda: causal_lm_loss(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), reduction="avg"),
         "reduction: expected"),
        (lambda: causal_lm_labels(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool)),
         "attention_mask: expected the shape"),
        (lambda: shift_labels(torch.tensor(3)), "labels: expected at least 1 dimensions"),
    ],
)
def test_causal_lm_bad_input(fn, message):
    with pytest.raises(ValueError, match=message):
        fn()


# ----------------------------------------------------------------------------- BERT embeddings
def test_bert_embeddings_is_layernorm_of_the_sum():
    torch.manual_seed(0)
    emb = BertEmbeddings(30, 16, max_position=12)
    ids = torch.randint(30, (2, 11))
    seg = torch.cat([torch.zeros(2, 6, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)], dim=1)
    out = emb(ids, seg)
    ln = nn.LayerNorm(16, eps=1e-12)
    ln.load_state_dict(emb.LayerNorm.state_dict())
    ref = ln(emb.word_embeddings.weight[ids] + emb.token_type_embeddings.weight[seg]
             + emb.position_embeddings.weight[torch.arange(11)])
    torch.testing.assert_close(out, ref)
    assert out.shape == (2, 11, 16)
    torch.testing.assert_close(emb(ids), emb(ids, torch.zeros_like(ids)))   # default segment A
    torch.testing.assert_close(emb(ids, seg, torch.arange(11)[None].expand(2, -1)), out)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda e: e(torch.zeros(13, dtype=torch.long)), "input_ids: expected 2 dimensions"),
        (lambda e: e(torch.zeros(1, 13, dtype=torch.long)), "expected at most max_position = 12 tokens; got 13"),
        (lambda e: e(torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)), "token_type_ids: expected the shape"),
    ],
)
def test_bert_embeddings_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call(BertEmbeddings(30, 8, max_position=12))


# ------------------------------------------------------------------------ packed documents
@given(st.lists(st.integers(1, 6), min_size=1, max_size=5))
def test_document_mask_is_block_diagonal_causal(doc_lengths):
    from course_lib.masks import document_mask, document_position_ids
    T = sum(doc_lengths)
    mask, full = document_mask(doc_lengths), document_mask(doc_lengths, causal=False)
    pos = document_position_ids(doc_lengths)
    doc = [d for d, n in enumerate(doc_lengths) for _ in range(n)]
    want = torch.tensor([[doc[i] == doc[j] and j <= i for j in range(T)] for i in range(T)])
    assert mask.shape == (T, T) and torch.equal(mask, want)
    assert torch.equal(full, torch.tensor([[doc[i] == doc[j] for j in range(T)] for i in range(T)]))
    starts = [sum(doc_lengths[:d]) for d in range(len(doc_lengths))]
    assert pos.tolist() == [i - starts[doc[i]] for i in range(T)]


def test_packed_attention_equals_separate_runs():
    from course_lib.masks import document_mask
    g = torch.Generator().manual_seed(0)
    lengths = [3, 5, 2]
    q, k, v = (torch.randn(1, 2, sum(lengths), 8, generator=g, dtype=torch.float64) for _ in range(3))
    packed = scaled_dot_product_attention(q, k, v, document_mask(lengths))
    start = 0
    for n in lengths:
        sl = slice(start, start + n)
        alone = F.scaled_dot_product_attention(q[..., sl, :], k[..., sl, :], v[..., sl, :], is_causal=True)
        torch.testing.assert_close(packed[..., sl, :], alone)
        start += n


@pytest.mark.parametrize("bad, message", [(torch.tensor([], dtype=torch.long), "at least one document"), ([3, 0], "at least one document"),
                                          ([[1, 2]], "1-D"), ([1.5], "integer")])
def test_document_mask_bad_input(bad, message):
    from course_lib.masks import document_mask, document_position_ids
    for fn in (document_mask, document_position_ids):
        with pytest.raises(ValueError, match=message):
            fn(bad)
