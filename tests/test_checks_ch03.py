"""The Exercise 3 checks pass the reference answers and name the likely mistake otherwise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_lib.grading import ch03
from helpers import stub


# ----------------------------------------------------------------------------- answers
def causal_ok(T, diag=0, transpose=False, invert=False):
    m = torch.ones(T, T, dtype=torch.bool).tril(diag)
    m = m.T if transpose else m
    return ~m if invert else m


def padding_ok(lengths, S, *, le=False, invert=False, queries=False, flat=False, left=False):
    pos = torch.arange(S)
    if left:
        keep = pos[None] >= S - lengths[:, None]
    else:
        keep = pos[None] <= lengths[:, None] if le else pos[None] < lengths[:, None]
    keep = ~keep if invert else keep
    if flat:
        return keep
    return keep[:, None, :, None] if queries else keep[:, None, None, :]


def combine_ok(*masks, how="and", inplace=False):
    out = masks[0] if inplace else masks[0].clone()
    for m in masks[1:]:
        if how == "and":
            out = out & m if not inplace else out.__iand__(m)
        elif how == "or":
            out = out | m
        elif how == "last":
            out = m.expand(torch.broadcast_shapes(out.shape, m.shape))
    return out


def sam_ok(lengths, T, *, causal, pad=padding_ok, causal_fn=causal_ok, squeeze=False, transpose=False,
           ignore_causal=False, always_causal=False, expand=True):
    m = pad(lengths, T)
    if (causal and not ignore_causal) or always_causal:
        m = combine_ok(m, causal_fn(T))
    elif expand:
        m = m.expand(len(lengths), 1, T, T)
    if transpose:
        m = m.transpose(-2, -1)
    return m[:, 0] if squeeze else m


def additive_ok(mask, dtype, *, value=None, swap=False, out_dtype=None, multiplicative=False):
    low = torch.finfo(dtype).min if value is None else value
    if multiplicative:  # the old GPT form w·b + c·(1 − b) with w = 0 and c = −1e9 cast to dtype
        b = mask.to(dtype)
        return torch.zeros_like(b) * b + torch.tensor(-1e9, dtype=dtype) * (1 - b)
    keep = ~mask if swap else mask
    out = torch.zeros(mask.shape, dtype=out_dtype or dtype)
    return out.masked_fill(~keep, low)


def mlm_ok(input_ids, *, mask_token_id, vocab_size, mlm_probability=0.15, special_token_ids=(), generator=None,
           all_tokens=False, p_random=0.5, labels_everywhere=False, keep_specials=False, corrupted_labels=False,
           no_generator=False, all_mask=False, out_of_range=False):
    g = None if no_generator else generator
    special = torch.isin(input_ids, torch.tensor(list(special_token_ids)))
    prob = torch.full(input_ids.shape, mlm_probability)
    if not keep_specials:
        prob[special] = 0.0
    selected = torch.bernoulli(prob, generator=g).bool()
    scope = torch.ones_like(selected) if all_tokens else selected
    to_mask = torch.bernoulli(torch.full(input_ids.shape, 1.0 if all_mask else 0.8), generator=g).bool() & scope
    to_random = torch.bernoulli(torch.full(input_ids.shape, p_random), generator=g).bool() & scope & ~to_mask
    random_ids = torch.randint(vocab_size + (vocab_size if out_of_range else 0), input_ids.shape, generator=g)
    masked = input_ids.clone()
    masked[to_mask] = mask_token_id
    masked[to_random] = random_ids[to_random]
    labels = input_ids.clone()
    if not labels_everywhere:
        labels[~selected] = -100
    if corrupted_labels:
        labels[selected] = masked[selected]
    return masked, labels


def lm_loss_ok(logits, input_ids, attention_mask=None, *, shift=1, ignore_pad=True, reduction="mean"):
    labels = input_ids.clone()
    if attention_mask is not None and ignore_pad:
        labels[~attention_mask.bool()] = -100
    V = logits.shape[-1]
    if shift == 1:
        lg, lb = logits[:, :-1], labels[:, 1:]
    elif shift == 0:
        lg, lb = logits, labels
    else:
        lg, lb = logits[:, 1:], labels[:, :-1]
    return F.cross_entropy(lg.reshape(-1, V), lb.reshape(-1), ignore_index=-100, reduction=reduction)


# ----------------------------------------------------------------------------- task 1
def test_basic_masks_pass(capsys):
    ch03.check_basic_masks(causal_ok, padding_ok)
    ch03.check_basic_masks(causal_ok, padding_ok)
    assert capsys.readouterr().out == "✓ basic masks: all 8 cases passed\n" * 2


@pytest.mark.parametrize(
    "causal, padding, message",
    [
        (stub, padding_ok, "causal_mask is not implemented yet"),
        (causal_ok, stub, "padding_mask is not implemented yet"),
        (lambda T: causal_ok(T, transpose=True), padding_ok, "mask transposed"),
        (lambda T: causal_ok(T, diag=-1), padding_ok, "off by one on the diagonal"),
        (lambda T: causal_ok(T, diag=1), padding_ok, "off by one above the diagonal"),
        (lambda T: causal_ok(T, invert=True), padding_ok, "mask inverted"),
        (lambda T: causal_ok(T).float(), padding_ok, "expected dtype torch.bool"),
        (causal_ok, lambda l, S: padding_ok(l, S, queries=True), "masks the padded \\*queries\\*"),
        (causal_ok, lambda l, S: padding_ok(l, S, flat=True), r"expected shape \(B, 1, 1, S\)"),
        (causal_ok, lambda l, S: padding_ok(l, S, le=True), "off by one: sequence b has lengths"),
        (causal_ok, lambda l, S: padding_ok(l, S, invert=True), "mask inverted: True marks the real tokens"),
        (causal_ok, lambda l, S: padding_ok(l, S, left=True), "left padding"),
    ],
)
def test_basic_masks_name_the_mistake(causal, padding, message):
    with pytest.raises(AssertionError, match=message):
        ch03.check_basic_masks(causal, padding)


# ----------------------------------------------------------------------------- task 2
def test_combine_passes(capsys):
    ch03.check_combine(combine_ok, sam_ok)
    assert capsys.readouterr().out == "✓ combine: all 10 cases passed\n"


def _inplace_combine(*ms):
    full = torch.broadcast_shapes(*(m.shape for m in ms))
    if len(ms) > 1 and ms[-1].shape == full:
        out = ms[-1]
        for m in ms[:-1]:
            out &= m
        return out
    return combine_ok(*ms)


def _queries(l, S):
    return padding_ok(l, S, queries=True)


@pytest.mark.parametrize(
    "combine, sam, message",
    [
        (stub, sam_ok, "combine_masks is not implemented yet"),
        (combine_ok, stub, "self_attention_mask is not implemented yet"),
        (lambda *m: combine_ok(*m, how="or"), sam_ok, "combined with OR"),
        (lambda *m: combine_ok(*m, how="last"), sam_ok, "only the last mask"),
        (lambda *m: combine_ok(*m[:2]), sam_ok, "only the first two masks"),
        (_inplace_combine, sam_ok, "modified an input mask in place"),
        (lambda *m: combine_ok(*m)[0], sam_ok, "expected the broadcast shape"),
        (combine_ok, lambda l, T, causal: sam_ok(l, T, causal=causal, pad=_queries),
         "padding applied to the queries instead of the keys"),
        (combine_ok, lambda l, T, causal: sam_ok(l, T, causal=causal) & _queries(l, T),
         "padding applied to the queries as well as the keys"),
        (combine_ok, lambda l, T, causal: sam_ok(l, T, causal=causal, ignore_causal=True), "the causal part is missing"),
        (combine_ok, lambda l, T, causal: sam_ok(l, T, causal=causal, always_causal=True), "causal=False must not"),
        (combine_ok, lambda l, T, causal: combine_ok(torch.ones(len(l), 1, 1, T, dtype=torch.bool),
                                                     causal_ok(T) if causal else torch.ones(T, T, dtype=torch.bool)),
         "the padding part is missing"),
        (combine_ok, lambda l, T, causal: sam_ok(l, T, causal=causal, transpose=causal), "mask transposed"),
        (combine_ok, lambda l, T, causal: sam_ok(l, T, causal=causal, squeeze=True), "keep the head dimension"),
        (combine_ok, lambda l, T, causal: sam_ok(l, T, causal=causal, expand=False), "broadcast it over the T queries"),
    ],
)
def test_combine_names_the_mistake(combine, sam, message):
    with pytest.raises(AssertionError, match=message):
        ch03.check_combine(combine, sam)


# ----------------------------------------------------------------------------- task 3
def test_additive_passes(capsys):
    ch03.check_additive(additive_ok)
    assert capsys.readouterr().out == "✓ additive: all 6 cases passed\n"


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "to_additive is not implemented yet"),
        (lambda m, dt: additive_ok(m, dt, value=-1e9), "does not fit in torch.float16"),
        (lambda m, dt: (~m).to(dt) * -1e9, "−1e9 becomes −inf in float16"),
        (lambda m, dt: additive_ok(m, dt, value=float("-inf")), "−inf at the blocked positions"),
        (lambda m, dt: additive_ok(m, dt, multiplicative=True), "NaN in the mask"),
        (lambda m, dt: additive_ok(m, dt, swap=True), "True/False swapped"),
        (lambda m, dt: additive_ok(m, dt, value=-1e4), "−1e4 is the old GPT constant"),
        (lambda m, dt: additive_ok(m, dt, out_dtype=torch.float32), "expected dtype torch.float16"),
        (lambda m, dt: additive_ok(m, dt, value=-1000.0), "wrong values|max abs error"),
    ],
)
def test_additive_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch03.check_additive(wrong)


# ----------------------------------------------------------------------------- task 4
def test_mlm_passes_with_the_reference_and_with_an_independent_implementation(capsys):
    from course_lib.masks import mlm_mask

    ch03.check_mlm(mlm_mask)
    ch03.check_mlm(mlm_ok)
    assert capsys.readouterr().out == "✓ mlm_mask: all 4 cases passed\n" * 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(all_tokens=True), "UNSELECTED tokens were changed"),
        (dict(p_random=0.1), "half of the remaining 20%"),
        (dict(all_mask=True), "every selected token became \\[MASK\\]"),
        (dict(labels_everywhere=True), "are not −100"),
        (dict(keep_specials=True), "special tokens"),
        (dict(corrupted_labels=True), "ORIGINAL ids"),
        (dict(no_generator=True), "not reproducible"),
        (dict(out_of_range=True), r"outside \[0, vocab_size\)"),
    ],
)
def test_mlm_names_the_mistake(kwargs, message):
    def wrong(*args, **kw):
        return mlm_ok(*args, **kw, **kwargs)

    with pytest.raises(AssertionError, match=message):
        ch03.check_mlm(wrong)


def test_mlm_stub_and_bad_returns():
    with pytest.raises(AssertionError, match="mlm_mask is not implemented yet"):
        ch03.check_mlm(stub)
    with pytest.raises(AssertionError, match="expected a tuple"):
        ch03.check_mlm(lambda ids, **kw: mlm_ok(ids, **kw)[0])

    def in_place(ids, **kw):
        masked, labels = mlm_ok(ids, **kw)
        ids.copy_(masked)
        return masked, labels

    with pytest.raises(AssertionError, match="modified input_ids in place"):
        ch03.check_mlm(in_place)


def test_mlm_statistics_are_calibrated():
    """Over many seeds the z-scores of the reference implementation look standard normal."""
    from course_lib.masks import mlm_mask

    zs = []
    ids = ch03.mlm_batch(16, 128)
    for seed in range(60):
        masked, labels = mlm_mask(ids, mask_token_id=3, vocab_size=ch03.MLM_VOCAB,
                                  special_token_ids=tuple(ch03.MLM_SPECIAL.values()),
                                  generator=torch.Generator().manual_seed(seed))
        k, n, p = ch03.mlm_statistics(ids, masked, labels)["[MASK]"]
        zs.append((k / n - p) / (p * (1 - p) / n) ** 0.5)
    zs = torch.tensor(zs)
    assert abs(zs.mean()) < 0.5 and 0.6 < zs.std() < 1.4


# ----------------------------------------------------------------------------- task 5
def test_causal_lm_loss_passes(capsys):
    ch03.check_causal_lm_loss(lm_loss_ok)
    assert capsys.readouterr().out == "✓ causal_lm_loss: all 4 cases passed\n"


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "causal_lm_loss is not implemented yet"),
        (lambda lg, ids, a=None: lm_loss_ok(lg, ids, a, shift=0), "not shifted"),
        (lambda lg, ids, a=None: lm_loss_ok(lg, ids, a, shift=-1), "shifted the wrong way"),
        (lambda lg, ids, a=None: lm_loss_ok(lg, ids, a, ignore_pad=False), "padding counted as targets"),
        (lambda lg, ids, a=None: lm_loss_ok(lg, ids, a, reduction="sum"), "summed instead of averaged"),
        (lambda lg, ids, a=None: lm_loss_ok(lg, ids, a, reduction="none"), "expected a scalar loss"),
        (lambda lg, ids, a=None: lm_loss_ok(lg, ids, a).float(), "expected dtype torch.float64"),
    ],
)
def test_causal_lm_loss_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch03.check_causal_lm_loss(wrong)
