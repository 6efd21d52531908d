"""The Exercise 2 checks pass the reference answers and name the likely mistake otherwise."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.grading import ch02
from helpers import stub


# ----------------------------------------------------------------------------- answers
def split_ok(x, n_heads):
    B, T, D = x.shape
    return x.view(B, T, n_heads, D // n_heads).transpose(1, 2)


def merge_ok(x):
    B, h, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, h * d)


def mha_ok(x, params, n_heads, context=None, mask=None, *, scale=None, use_o=True, merge="ok",
           split="ok", transpose_w=True, invert_mask=False, ignore_mask=False, average=False, q_from_context=False):
    if q_from_context and context is not None:
        x, context = context, x
    out, w = ch02.reference_mha(x, params, n_heads, context, None if ignore_mask else mask, scale=scale,
                                use_o=use_o, merge=merge, split=split, transpose_w=transpose_w,
                                invert_mask=invert_mask)
    return out, (w.mean(1) if average else w)


def cross_ok(x, cond, cond_lengths, params, n_heads, *, invert=False, no_mask=False, **kw):
    keep = torch.arange(cond.shape[1])[None, :] < cond_lengths[:, None]
    mask = None if no_mask else (~keep if invert else keep)[:, None, None, :]
    return mha_ok(x, params, n_heads, context=cond, mask=mask, **kw)


def count_ok(d_model, n_heads, bias=True):
    return 4 * d_model * d_model + (4 * d_model if bias else 0)


# ----------------------------------------------------------------------------- task 1
def test_split_merge_passes(capsys):
    ch02.check_split_merge(split_ok, merge_ok)
    assert capsys.readouterr().out == "✓ split_merge: all 15 cases passed\n"


@pytest.mark.parametrize(
    "split, merge, message",
    [
        (stub, merge_ok, "split_heads is not implemented yet"),
        (split_ok, stub, "merge_heads is not implemented yet"),
        (lambda x, h: x.reshape(x.shape[0], h, x.shape[1], -1), merge_ok, r"straight to \[B, h, T, d_h\]"),
        (lambda x, h: x.reshape(*x.shape[:2], -1, h).permute(0, 3, 1, 2), merge_ok, r"split as \[B, T, d_h, h\]"),
        (split_ok, lambda y: y.reshape(y.shape[0], y.shape[2], -1), "heads merged in the wrong order: reshaped"),
        (split_ok, lambda y: y.permute(0, 2, 3, 1).reshape(y.shape[0], y.shape[2], -1), "head index fastest"),
        (lambda x, h: x.view(*x.shape[:2], h, -1), merge_ok, "expected shape"),
        (split_ok, lambda y: merge_ok(y) * 2, "wrong values"),
    ],
)
def test_split_merge_names_the_mistake(split, merge, message):
    with pytest.raises(AssertionError, match=message):
        ch02.check_split_merge(split, merge)


# ----------------------------------------------------------------------------- task 2
def test_mha_forward_passes(capsys):
    ch02.check_mha_forward(mha_ok)
    assert capsys.readouterr().out == "✓ mha_forward: all 7 cases passed\n"


def _wrong(**kw):
    return lambda x, params, n_heads, context=None, mask=None: mha_ok(x, params, n_heads, context, mask, **kw)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "mha_forward is not implemented yet"),
        (lambda x, p, h, context=None, mask=None: mha_ok(x, p, h, context, mask, scale=1 / math.sqrt(x.shape[-1])),
         r"scaled by 1/√D \(the model width\)"),
        (_wrong(scale=1.0), "scores not scaled"),
        (_wrong(use_o=False), "W\\^O missing"),
        (_wrong(merge="no_transpose"), "heads merged in the wrong order: transpose"),
        (_wrong(merge="head_fastest"), "heads merged in the wrong order: each head"),
        (_wrong(split="no_transpose"), "heads split in the wrong way"),
        (_wrong(transpose_w=False), r"x @ W\.T \+ b"),
        (_wrong(invert_mask=True), "mask inverted"),
        (_wrong(ignore_mask=True), "mask ignored"),
        (_wrong(average=True), "averaged over heads"),
        (_wrong(q_from_context=True), "queries were taken from the condition"),
        (lambda x, p, h, context=None, mask=None: mha_ok(x, p, h, context, mask)[0], "expected a tuple"),
        (lambda x, p, h, context=None, mask=None: tuple(t.double() for t in mha_ok(x, p, h, context, mask)),
         "expected dtype torch.float32"),
    ],
)
def test_mha_forward_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch02.check_mha_forward(wrong)


# ----------------------------------------------------------------------------- task 3
def test_cross_attention_passes(capsys):
    ch02.check_cross_attention(cross_ok)
    assert capsys.readouterr().out == "✓ cross_attention: all 4 cases passed\n"


def _cwrong(**kw):
    return lambda x, cond, lengths, params, h: cross_ok(x, cond, lengths, params, h, **kw)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "cross_attention is not implemented yet"),
        (_cwrong(q_from_context=True, no_mask=True), "queries were taken from the condition"),
        (lambda x, c, n, p, h: tuple(t.transpose(-2, -1) if t.dim() == 4 else t for t in cross_ok(x, c, n, p, h)),
         "queries and keys swapped|expected shape"),
        (_cwrong(invert=True), "padded positions of the condition get attention"),
        (_cwrong(no_mask=True), "padded positions of the condition get attention"),
        (lambda x, c, n, p, h: cross_ok(x, c, n, p, h, scale=1 / math.sqrt(x.shape[-1])), r"1/√D instead of 1/√d_h"),
        (_cwrong(use_o=False), "W\\^O missing"),
    ],
)
def test_cross_attention_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch02.check_cross_attention(wrong)


# ----------------------------------------------------------------------------- task 4
def test_param_count_passes(capsys):
    ch02.check_param_count(count_ok)
    assert capsys.readouterr().out == "✓ param_count: all 24 cases passed\n"


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "mha_param_count is not implemented yet"),
        (lambda D, h, bias=True: 4 * D * (D // h) + (3 * (D // h) + D if bias else 0), "counted one head only"),
        (lambda D, h, bias=True: h * count_ok(D, h, bias), "full D × D matrices"),
        (lambda D, h, bias=True: 3 * D * D + (3 * D if bias else 0), "W\\^O missing"),
        (lambda D, h, bias=True: 4 * D * D, "biases missing"),
        (lambda D, h, bias=True: 4 * D * D + 4 * D, "biases counted although bias=False"),
        (lambda D, h, bias=True: 4 * D * D + (3 * D if bias else 0), "output projection's D biases"),
        (lambda D, h, bias=True: count_ok(D, h, bias) + 1, "expected"),
        (lambda D, h, bias=True: "many", "expected a number"),
    ],
)
def test_param_count_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch02.check_param_count(wrong)


# ----------------------------------------------------------------------------- task 4: derived, not built
def test_param_count_fails_an_answer_that_builds_the_module():
    counted = lambda d, h, bias=True: sum(p.numel() for p in nn.MultiheadAttention(d, h, bias=bias).parameters())  # noqa: E731
    with pytest.raises(AssertionError, match="mha_param_count: built a torch module"):
        ch02.check_param_count(counted)
    nn.Linear(2, 2)                                   # modules can be built again after the check


# ----------------------------------------------------------------------------- task 2: no torch attention
def test_mha_forward_fails_an_answer_that_calls_torch_attention():
    def via_sdpa(x, params, n_heads, context=None, mask=None):
        out, w = mha_ok(x, params, n_heads, context, mask)
        F.scaled_dot_product_attention(x[:, None], x[:, None], x[:, None])
        return out, w
    with pytest.raises(AssertionError, match="mha_forward: calls torch.s attention"):
        ch02.check_mha_forward(via_sdpa)


# ----------------------------------------------------------------------------- task 5 (transfer)
def contributions_ok(x, params, n_heads, context=None, *, o_slice="columns", bias_per_head=False):
    B, T, D = x.shape
    d = D // n_heads
    c = x if context is None else context
    q, k, v = (split_ok(inp @ params[f"w_{n}"].T + params[f"b_{n}"], n_heads) for inp, n in ((x, "q"), (c, "k"), (c, "v")))
    heads = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1) @ v          # [B, h, T, d]
    outs = []
    for i in range(n_heads):
        block = slice(i * d, (i + 1) * d)
        if o_slice == "columns":
            w_i = params["w_o"][:, block].T                                         # [d, D]
        elif o_slice == "rows":
            w_i = params["w_o"][block, :]
        else:
            w_i = params["w_o"][:, i::n_heads].T
        outs.append(heads[:, i] @ w_i + (params["b_o"] if bias_per_head else 0))
    return torch.stack(outs, dim=1)


def test_head_contributions_passes(capsys):
    ch02.check_head_contributions(contributions_ok)
    assert capsys.readouterr().out == "✓ head_contributions: all 5 cases passed\n"


def contributions_demo_only(x, params, n_heads, context=None):
    """Right for the sheet's demo (D = 16, 4 heads): head width 4 hard-coded."""
    heads_w = params["w_o"].view(params["w_o"].shape[0], -1, 4)                   # [D, D / 4, 4]
    out = contributions_ok(x, params, n_heads, context)
    return out if heads_w.shape[1] == n_heads else out[:, :heads_w.shape[1]]


def contributions_rows_scaled(x, params, n_heads, context=None):
    """Right sum, wrong split: every head gets 1/h of the full output. Passes the sum, not the per-head test."""
    out = contributions_ok(x, params, n_heads, context).sum(1, keepdim=True)
    return out.expand(-1, n_heads, -1, -1) / n_heads


@pytest.mark.parametrize("wrong, message", [
    (stub, "head_contributions is not implemented yet"),
    (lambda *a: contributions_ok(*a, bias_per_head=True), "the output bias b_o was added to every head"),
    (lambda *a: contributions_ok(*a, o_slice="rows"), "sliced the rows of W\\^O"),
    (lambda *a: contributions_ok(*a, o_slice="strided"), "took every h-th column of W\\^O"),
    (lambda *a: contributions_ok(*a).sum(1), "returned \\[B, T, D\\], the summed output"),
    (contributions_rows_scaled, "wrong values"),
    (contributions_demo_only, "head_contributions raised|wrong values|expected shape"),
    (lambda *a: contributions_ok(*a)[:, :1], "expected shape"),
])
def test_head_contributions_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch02.check_head_contributions(wrong)


def test_pruning_a_head_silences_its_term_only():
    """The property the check asserts, on the reference: zeroing head j's columns of W^O changes term j only."""
    _, params = ch02.torch_mha_with_params(12, 3, seed=0, dtype=torch.float64)
    x = torch.randn(2, 4, 12, dtype=torch.float64)
    full = ch02._head_contributions(x, params, 3)
    pruned = dict(params, w_o=params["w_o"].clone())
    pruned["w_o"][:, 4:8] = 0
    out = ch02._head_contributions(x, pruned, 3)
    assert torch.equal(out[:, [0, 2]], full[:, [0, 2]]) and out[:, 1].abs().max() == 0


# ----------------------------------------------------------------------------- task 6 (transfer)
def enc_dec_ok(d_model, n_heads, d_ff, n_enc, n_dec, **kw):
    return ch02._enc_dec_count(d_model, d_ff, n_enc, n_dec, **kw)


def test_encoder_decoder_param_count_passes(capsys):
    ch02.check_encoder_decoder_param_count(enc_dec_ok)
    assert capsys.readouterr().out == "✓ encoder_decoder_param_count: all 8 cases passed\n"


def test_the_formula_is_torchs_count():
    """The mistake model's correct branch is nn.Transformer's own count (built for real here, not on meta)."""
    for D, h, d_ff, n_enc, n_dec in [(16, 2, 40, 2, 3), (24, 4, 8, 1, 1)]:
        model = nn.Transformer(D, h, n_enc, n_dec, d_ff, batch_first=True)
        assert sum(p.numel() for p in model.parameters()) == enc_dec_ok(D, h, d_ff, n_enc, n_dec)


@pytest.mark.parametrize("wrong, message", [
    (stub, "encoder_decoder_param_count is not implemented yet"),
    (lambda *a: enc_dec_ok(*a, cross=False), "the decoder's cross-attention is missing"),
    (lambda *a: enc_dec_ok(*a, mha_bias=False), "the attention biases are missing"),
    (lambda *a: enc_dec_ok(*a, ffn_bias=False), "the feed-forward biases are missing"),
    (lambda *a: enc_dec_ok(*a, ffn_mats=1), "one feed-forward matrix only"),
    (lambda *a: enc_dec_ok(*a, ln_enc=0, ln_dec=0, final_norms=0), "the LayerNorms are missing"),
    (lambda *a: enc_dec_ok(*a, ln_dec=2), "a decoder layer has three LayerNorms"),
    (lambda *a: enc_dec_ok(*a, final_norms=0), "the final LayerNorms"),
    (lambda *a: enc_dec_ok(*a, ln_params=1), "a gain AND a bias"),
    (lambda D, h, f, e, d: enc_dec_ok(D, h, f, d, e), "encoder and decoder layers swapped"),
    (lambda D, h, f, e, d: sum(p.numel() for p in nn.Transformer(D, h, e, d, f, batch_first=True).parameters()), "built a torch module"),
    (lambda D, h, f, e, d: enc_dec_ok(D, h, f, e, d) if D >= 512 or D == 64 else enc_dec_ok(D, h, f, e, d) + 1,
     "expected"),
])
def test_encoder_decoder_param_count_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch02.check_encoder_decoder_param_count(wrong)
