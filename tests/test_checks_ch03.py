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
    import types

    from course_lib.masks import mlm_mask

    # the reference's own code, as a student's function (the check refuses course_lib.masks.mlm_mask itself)
    copy = types.FunctionType(mlm_mask.__code__, mlm_mask.__globals__, "mlm_mask", mlm_mask.__defaults__)
    copy.__kwdefaults__, copy.__module__ = mlm_mask.__kwdefaults__, "__main__"
    ch03.check_mlm(copy)
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
        (lambda lg, ids, a=None: torch.stack([lm_loss_ok(lg[b:b + 1], ids[b:b + 1], None if a is None else a[b:b + 1])
                                              for b in range(len(ids))]).mean(), "averaged per sequence"),
    ],
)
def test_causal_lm_loss_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch03.check_causal_lm_loss(wrong)


# ----------------------------------------------------------------------------- task 6 (transfer)
def prefix_ok(prefix_lengths, lengths, T, *, on_queries=False, shift=0, first_only=False, pad=True, and_=False):
    i = torch.arange(T)
    if first_only:
        prefix_lengths = prefix_lengths[:1].expand_as(prefix_lengths)
    in_prefix = i[None, :] < (prefix_lengths + shift)[:, None]                 # [B, T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    extra = in_prefix[:, :, None] if on_queries else in_prefix[:, None, :]     # rows or columns
    visible = (causal[None] & extra) if and_ else (causal[None] | extra)
    if pad:
        visible = visible & (i[None, :] < lengths[:, None])[:, None, :]
    return visible[:, None]


def test_prefix_lm_mask_passes(capsys):
    ch03.check_prefix_lm_mask(prefix_ok)
    assert capsys.readouterr().out == "✓ prefix_lm_mask: all 7 cases passed\n"


def prefix_right_on_sheet_only(prefix_lengths, lengths, T):
    """Right on the sheet's printed batch (prefix lengths 2, 3), one shared prefix elsewhere."""
    return prefix_ok(prefix_lengths, lengths, T, first_only=prefix_lengths.tolist() != [2, 3])


@pytest.mark.parametrize("wrong, message", [
    (stub, "prefix_lm_mask is not implemented yet"),
    (lambda p, l, T: prefix_ok(p * 0, l, T), "the prefix is ignored"),
    (lambda p, l, T: prefix_ok(p, l, T, and_=True), "causal AND prefix"),
    (lambda p, l, T: prefix_ok(p, l, T, on_queries=True), "the prefix is applied to the queries"),
    (lambda p, l, T: prefix_ok(p, l, T, shift=1), "one prefix too many"),
    (lambda p, l, T: prefix_ok(p, l, T, shift=-1), "one prefix too few"),
    (lambda p, l, T: prefix_ok(p, l, T, first_only=True), "the first sequence's prefix length"),
    (prefix_right_on_sheet_only, "the first sequence's prefix length|the prefix is ignored"),
    (lambda p, l, T: prefix_ok(p, l, T, pad=False), "the padding mask is missing"),
    (lambda p, l, T: prefix_ok(p, l, T).transpose(-2, -1), "mask transposed"),
    (lambda p, l, T: prefix_ok(p, l, T)[:, 0], "expected shape"),
    (lambda p, l, T: prefix_ok(p, l, T).int(), "expected dtype torch.bool"),
])
def test_prefix_lm_mask_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch03.check_prefix_lm_mask(wrong)


# ----------------------------------------------------------------------------- task 7 (transfer)
def left_ok(lengths, T, *, diag=True, shift=True, side="left", causal=True, pad=True, plus=0):
    j = torch.arange(T)
    start = T - lengths if side == "left" else torch.zeros_like(lengths)
    real = (j[None, :] >= start[:, None]) & (j[None, :] < (start + lengths)[:, None])   # [B, T]
    mask = torch.ones(len(lengths), 1, T, T, dtype=torch.bool)
    if pad:
        mask = mask & real[:, None, None, :]
    if causal:
        mask = mask & torch.ones(T, T, dtype=torch.bool).tril()
    if diag:
        mask = mask | torch.eye(T, dtype=torch.bool)
    pos = (j[None, :] - start[:, None]).clamp_min(0) + plus if shift else j.expand(len(lengths), T).clone()
    return mask, pos


def left_first_row_longest(lengths, T):
    """Right for the sheet's demo, whose first prompt is the longest: positions shifted by lengths[0] − n, not T − n."""
    mask, _ = left_ok(lengths, T)
    start = int(lengths[0]) - lengths
    return mask, (torch.arange(T)[None, :] - start[:, None]).clamp(0, 31)


def test_left_padded_inputs_passes(capsys):
    ch03.check_left_padded_inputs(left_ok)
    assert capsys.readouterr().out == "✓ left_padded_inputs: all 6 cases passed\n"


def test_left_padded_reference_matches_the_models_own_rule():
    """The reference's positions are course_lib.model.positions_from_mask at the real tokens."""
    from course_lib.model import positions_from_mask
    lengths, T = torch.tensor([5, 2, 3]), 5
    _, pos = ch03._left_padded_inputs(lengths, T)
    assert torch.equal(pos, positions_from_mask(ch03.ref.padding_mask(lengths, T, side="left")[:, 0, 0]))


@pytest.mark.parametrize("wrong, message", [
    (stub, "left_padded_inputs is not implemented yet"),
    (lambda l, T: left_ok(l, T, diag=False), "NaN logits at real tokens"),
    (lambda l, T: left_ok(l, T, shift=False), "positions not shifted"),
    (lambda l, T: left_ok(l, T, plus=1), "positions off by one"),
    (lambda l, T: (left_ok(l, T)[0], left_ok(l, T, side="right")[1]), "positions not shifted"),
    (lambda l, T: (left_ok(l, T)[0], left_ok(l, T)[1].flip(-1)), "wrong position ids"),
    (lambda l, T: (left_ok(l, T, side="right")[0], left_ok(l, T)[1]), "padding on the wrong side"),
    (lambda l, T: left_ok(l, T, causal=False), "the causal mask is missing"),
    (lambda l, T: left_ok(l, T, pad=False), "the padding mask is missing"),
    (lambda l, T: (left_ok(l, T)[0], left_ok(l, T)[1] - 1), "positions off by one|position ids must index"),
    (lambda l, T: (left_ok(l, T)[0], left_ok(l, T)[1].float()), "must be integers"),
    (lambda l, T: left_ok(l, T)[0], "expected a tuple"),
    (left_first_row_longest, "positions off by one|wrong position ids"),
])
def test_left_padded_inputs_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch03.check_left_padded_inputs(wrong)


# ----------------------------------------------------------------------------- the sheet's rule: no course_lib.masks
def test_an_answer_that_is_or_calls_the_library_fails():
    from course_lib import masks
    with pytest.raises(AssertionError, match="causal_mask is course_lib.masks.causal_mask itself"):
        ch03.check_basic_masks(masks.causal_mask, padding_ok)
    with pytest.raises(AssertionError, match="padding_mask: calls course_lib.masks"):
        ch03.check_basic_masks(causal_ok, lambda lengths, S: masks.padding_mask(lengths, S))
    with pytest.raises(AssertionError, match="causal_lm_loss: calls course_lib.masks"):
        ch03.check_causal_lm_loss(lambda lg, ids, a=None: masks.causal_lm_loss(lg, masks.causal_lm_labels(ids, a)))
    with pytest.raises(AssertionError, match="prefix_lm_mask: calls course_lib.masks"):
        ch03.check_prefix_lm_mask(lambda p, l, T: ch03._prefix_lm_mask(p, l, T))
    assert masks.causal_mask(2).all(-1)[-1]          # the library is restored after the check


# ----------------------------------------------------------------------------- task 8 (transfer)
def packed_ok(input_ids, doc_lengths):
    ends = torch.cumsum(torch.tensor(doc_lengths), 0) - 1                   # the last token of each document
    targets = torch.cat([input_ids[1:], torch.tensor([-100])])
    targets[ends] = -100
    return targets


def test_packed_targets_passes(capsys):
    ch03.check_packed_targets(packed_ok)
    assert capsys.readouterr().out == "✓ packed_targets: all 7 cases passed\n"


def test_packed_targets_reference_gives_the_separate_documents_loss():
    """The point: with these targets the packed loss is the loss of the documents run one by one."""
    g = torch.Generator().manual_seed(0)
    doc_lengths = [3, 5, 2]
    ids = torch.randint(0, 9, (10,), generator=g)
    logits = torch.randn(10, 9, generator=g, dtype=torch.float64)
    packed = F.cross_entropy(logits, ch03._packed_targets(ids, doc_lengths), ignore_index=-100, reduction="sum")
    separate, start = 0.0, 0
    for n in doc_lengths:
        separate = separate + F.cross_entropy(logits[start:start + n - 1], ids[start + 1:start + n], reduction="sum")
        start += n
    torch.testing.assert_close(packed, separate)


def packed_first_demo_only(input_ids, doc_lengths):
    """Right for the sheet's demo [3, 5, 2] only: boundaries hard-coded after tokens 2 and 7."""
    targets = torch.cat([input_ids[1:], torch.tensor([-100])])
    targets[[i for i in (2, 7) if i < len(targets)]] = -100
    return targets


@pytest.mark.parametrize("wrong, message", [
    (stub, "packed_targets is not implemented yet"),
    (lambda ids, dl: torch.cat([ids[1:], torch.tensor([-100])]), "the last token of a document is trained to predict"),
    (lambda ids, dl: torch.cat([ids[1:], torch.tensor([-100])]).index_fill(
        0, torch.tensor([0] + torch.cumsum(torch.tensor(dl), 0)[:-1].tolist()), -100), "the first token of every document"),
    (lambda ids, dl: ids.clone().index_fill(0, torch.tensor(torch.cumsum(torch.tensor(dl), 0)[:-1].tolist() + [0]), -100),
     "unshifted labels"),
    (lambda ids, dl: ids.masked_fill(packed_ok(ids, dl) == -100, -100), "not shifted"),
    (packed_first_demo_only, "the last token of a document is trained to predict|entries are wrong"),
    (lambda ids, dl: packed_ok(ids, dl)[None], "expected shape"),
    (lambda ids, dl: torch.tensor(packed_ok(ids, dl).tolist()[:-1] + [0]), "entries are wrong"),
])
def test_packed_targets_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch03.check_packed_targets(wrong)
