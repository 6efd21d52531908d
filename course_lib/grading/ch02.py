"""Checks for Exercise 2 (multi-head attention).

Tasks, in the order of the exercise notebook:

1. ``split_heads(x, n_heads)`` ``[B, T, D] → [B, h, T, D/h]`` and ``merge_heads(x)``, its inverse;
2. ``mha_forward(x, params, n_heads, context=None, mask=None)`` → ``(output, weights)``, equal to
   ``torch.nn.MultiheadAttention`` given its weights (per-head weights ``[B, h, T, S]``);
3. ``cross_attention(x, cond, cond_lengths, params, n_heads)`` — a padded condition of another length;
4. ``mha_param_count(d_model, n_heads, bias=True)`` — the parameters of multi-head attention, derived
   (building a module during the call fails the check);
5. (transfer) ``head_contributions(x, params, n_heads, context=None)`` → ``[B, h, T, D]``: multi-head
   attention written as a sum over heads, ``Σ_i head_i W^O_i + b_o``; pruning a head silences its term only;
6. (transfer) ``encoder_decoder_param_count(d_model, n_heads, d_ff, n_enc, n_dec)`` — the parameters of
   ``nn.Transformer``'s encoder–decoder stack, derived by hand.

``params`` is a dict with the ``nn.Linear`` convention (``y = x Wᵀ + b``, ``W`` of shape
``[out, in]``): ``w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o`` (biases may be None). Masks are
boolean, ``True`` where a query may attend (the course convention, the opposite of torch's).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.grading import call_student, expect_close, expect_number, expect_tensor, passed
from course_lib.grading.forbid import call_without
from course_lib.mha import from_torch_masks, merge_heads, split_heads

__all__ = [
    "check_split_merge",
    "check_mha_forward",
    "check_cross_attention",
    "check_param_count",
    "torch_mha_with_params",
    "reference_mha",
    "check_head_contributions",
    "check_encoder_decoder_param_count",
    "ENC_DEC_EXAMPLES",
]


# ----------------------------------------------------------------------------- task 1
def _split_mistakes(x, h):
    B, T, D = x.shape
    d = D // h
    return {
        "reshaped [B, T, D] straight to [B, h, T, d_h]: view it as [B, T, h, d_h] first, then transpose(1, 2) "
        "(otherwise tokens and heads get mixed)": x.reshape(B, h, T, d),
        "features split as [B, T, d_h, h] (head index fastest): head i must get the consecutive block "
        "of features i·d_h … (i+1)·d_h − 1": x.reshape(B, T, d, h).permute(0, 3, 1, 2),
    }


def _merge_mistakes(y):
    B, h, T, d = y.shape
    return {
        "heads merged in the wrong order: reshaped [B, h, T, d_h] straight to [B, T, D]; "
        "transpose(1, 2) back to [B, T, h, d_h] before the reshape": y.reshape(B, T, h * d),
        "heads merged in the wrong order: concatenated as [B, T, d_h, h] (head index fastest); "
        "put each head's d_h features in one consecutive block": y.permute(0, 2, 3, 1).reshape(B, T, h * d),
    }


def check_split_merge(split_heads_fn, merge_heads_fn) -> None:
    """Task 1: ``split_heads`` and ``merge_heads``."""
    g = torch.Generator().manual_seed(201)
    cases = [(2, 5, 12, 3), (1, 4, 8, 8), (3, 6, 6, 1), (2, 7, 64, 4), (1, 3, 10, 2)]
    n = 0
    for B, T, D, h in cases:
        x = torch.randn(B, T, D, generator=g)
        what = f"split_heads(x [{B}, {T}, {D}], n_heads={h})"
        got = call_student(split_heads_fn, x.clone(), h, name="split_heads")
        got = expect_tensor(what, got, (B, h, T, D // h), x.dtype)
        expect_close(what, got, split_heads(x, h), mistakes=_split_mistakes(x, h))
        y = torch.randn(B, h, T, D // h, generator=g)
        what = f"merge_heads(x [{B}, {h}, {T}, {D // h}])"
        got = call_student(merge_heads_fn, y.clone(), name="merge_heads")
        got = expect_tensor(what, got, (B, T, D), y.dtype)
        expect_close(what, got, merge_heads(y), mistakes=_merge_mistakes(y))
        back = call_student(merge_heads_fn, call_student(split_heads_fn, x, h, name="split_heads"), name="merge_heads")
        expect_close(f"merge_heads(split_heads(x, {h})) (must give x back)", expect_tensor("merge_heads(split_heads(x))", back, (B, T, D)), x)
        n += 3
    passed("split_merge", n)


# ----------------------------------------------------------------------------- task 2
def torch_mha_with_params(D: int, h: int, *, seed: int, bias: bool = True, dtype=torch.float32):
    """A seeded ``nn.MultiheadAttention`` (non-zero biases) and its weights as a ``params`` dict."""
    torch.manual_seed(seed)
    m = nn.MultiheadAttention(D, h, bias=bias, batch_first=True, dtype=dtype).eval()
    with torch.no_grad():
        if bias:
            m.in_proj_bias.normal_(0, 0.5)
            m.out_proj.bias.normal_(0, 0.5)
    wq, wk, wv = (w.detach().clone() for w in m.in_proj_weight.chunk(3))
    bq, bk, bv = (b.detach().clone() for b in m.in_proj_bias.chunk(3)) if bias else (None, None, None)
    params = dict(w_q=wq, b_q=bq, w_k=wk, b_k=bk, w_v=wv, b_v=bv, w_o=m.out_proj.weight.detach().clone(),
                  b_o=m.out_proj.bias.detach().clone() if bias else None)
    return m, params


def _lin(x, w, b, transpose=True):
    y = x @ (w.T if transpose else w)
    return y if b is None else y + b


def reference_mha(x, params, n_heads, context=None, mask=None, *, scale=None, use_o=True,
                  merge="ok", split="ok", transpose_w=True, invert_mask=False):
    """``(output, weights)``, with switches that reproduce the usual mistakes."""
    c = x if context is None else context
    B, T, D = x.shape
    h, d = n_heads, D // n_heads
    q, k, v = (_lin(inp, params[f"w_{n}"], params[f"b_{n}"], transpose_w) for inp, n in ((x, "q"), (c, "k"), (c, "v")))

    def sp(t):
        return t.reshape(B, h, t.shape[1], d) if split == "no_transpose" else split_heads(t, h)

    q, k, v = sp(q), sp(k), sp(v)
    s = q @ k.transpose(-2, -1) * (1 / math.sqrt(d) if scale is None else scale)
    if mask is not None:
        s = s.masked_fill(mask if invert_mask else ~mask, float("-inf"))
    w = torch.softmax(s, dim=-1).nan_to_num(0.0)
    heads = w @ v
    if merge == "no_transpose":
        cat = heads.reshape(B, T, D)
    elif merge == "head_fastest":
        cat = heads.permute(0, 2, 3, 1).reshape(B, T, D)
    else:
        cat = merge_heads(heads)
    out = _lin(cat, params["w_o"], params["b_o"], transpose_w) if use_o else cat
    return out, w


def _mha_mistakes(x, params, h, context, mask):
    D = x.shape[-1]
    args = (x, params, h, context, mask)
    m = {
        "scores scaled by 1/√D (the model width): each head must use 1/√d_h with d_h = D / n_heads":
            reference_mha(*args, scale=1 / math.sqrt(D)),
        "scores not scaled: divide each head's q·kᵀ by √d_h": reference_mha(*args, scale=1.0),
        "W^O missing: the concatenated heads must go through the output projection (… @ w_o.T + b_o)":
            reference_mha(*args, use_o=False),
        "heads merged in the wrong order: transpose [B, h, T, d_h] back to [B, T, h, d_h] before reshaping to [B, T, D]":
            reference_mha(*args, merge="no_transpose"),
        "heads merged in the wrong order: each head's d_h features must be one consecutive block of the D outputs":
            reference_mha(*args, merge="head_fastest"),
        "heads split in the wrong way: view [B, T, D] as [B, T, h, d_h], then transpose(1, 2)":
            reference_mha(*args, split="no_transpose"),
        "weights used as x @ W: nn.Linear weights are [out, in], so a projection is x @ W.T + b":
            reference_mha(*args, transpose_w=False),
    }
    if mask is not None:
        m["mask inverted: here True means 'may attend' (torch's nn.MultiheadAttention uses the opposite)"] = \
            reference_mha(*args, invert_mask=True)
        m["mask ignored: blocked positions must get score −inf before the softmax"] = reference_mha(x, params, h, context, None)
    return m


def _check_mha_case(fn, fn_name, what, x, params, h, context, mask, want, want_w):
    B, T, D = x.shape
    S = T if context is None else context.shape[1]
    res = call_without(fn, [(F, "scaled_dot_product_attention"), (F, "multi_head_attention_forward")],
                       "calls torch's attention (F.scaled_dot_product_attention or nn.MultiheadAttention): "
                       "the task is to write the forward pass yourself",
                       x, params, h, context=context, mask=mask, name=fn_name)
    if not (isinstance(res, tuple) and len(res) == 2):
        raise AssertionError(f"{fn_name} with {what}: expected a tuple (output, weights); got {type(res).__name__}")
    out, w = res
    if isinstance(w, torch.Tensor) and tuple(w.shape) == (B, T, S) and h > 1:
        raise AssertionError(f"weights with {what}: averaged over heads; return the per-head weights [B, h, T, S]")
    if isinstance(out, torch.Tensor) and context is not None and tuple(out.shape) == (B, S, D) and S != T:
        raise AssertionError(
            f"output with {what}: shape {(B, S, D)} has the condition's length: the queries were taken from the "
            "condition. In cross-attention the queries come from x (the decoder), keys and values from the condition")
    expect_tensor(f"output with {what}", out, (B, T, D), x.dtype)
    expect_tensor(f"weights with {what}", w, (B, h, T, S), x.dtype)
    mistakes = _mha_mistakes(x, params, h, context, mask)
    expect_close(f"weights with {what}", w, want_w, mistakes={k: v[1] for k, v in mistakes.items()})
    expect_close(f"output with {what}", out, want, mistakes={k: v[0] for k, v in mistakes.items()})


def check_mha_forward(mha_forward) -> None:
    """Task 2: ``mha_forward(x, params, n_heads, context=None, mask=None) -> (output, weights)``."""
    g = torch.Generator().manual_seed(202)
    cases = []
    # (what, B, T, S or None, D, h, mask kind, bias, dtype)
    for what, B, T, S, D, h, kind, bias, dtype in [
        ("self-attention, 4 heads", 2, 5, None, 16, 4, None, True, torch.float32),
        ("self-attention, a causal mask", 2, 6, None, 24, 3, "causal", True, torch.float32),
        ("self-attention, 1 head", 1, 4, None, 8, 1, None, True, torch.float32),
        ("self-attention, head_dim 1", 2, 3, None, 6, 6, None, False, torch.float32),
        ("cross-attention, condition of length 7", 2, 4, 7, 16, 2, None, True, torch.float32),
        ("cross-attention, a padded condition", 3, 5, 6, 16, 4, "padding", True, torch.float32),
        ("float64, a random mask", 2, 5, None, 12, 2, "random", True, torch.float64),
    ]:
        ref, params = torch_mha_with_params(D, h, seed=len(cases) + 7, bias=bias, dtype=dtype)
        x = torch.randn(B, T, D, generator=g, dtype=torch.float64).to(dtype)
        context = None if S is None else torch.randn(B, S, D, generator=g, dtype=torch.float64).to(dtype)
        Sk = T if S is None else S
        am = kpm = None
        if kind == "causal":
            am = torch.ones(T, T, dtype=torch.bool).triu(1)           # torch: True = blocked
        elif kind == "padding":
            kpm = torch.zeros(B, Sk, dtype=torch.bool)
            kpm[1, 4:] = True
            kpm[2, 2:] = True
        elif kind == "random":
            am = torch.rand(T, Sk, generator=g) < 0.4
            am[:, 0] = False
        c = x if context is None else context
        with torch.no_grad():
            want, want_w = ref(x, c, c, attn_mask=am, key_padding_mask=kpm, average_attn_weights=False)
        mask = from_torch_masks(am, kpm, n_heads=h)
        _check_mha_case(mha_forward, "mha_forward", what, x, params, h, context, mask, want, want_w)
        cases.append(what)
    passed("mha_forward", len(cases))


# ----------------------------------------------------------------------------- task 3
def check_cross_attention(cross_attention) -> None:
    """Task 3: ``cross_attention(x, cond, cond_lengths, params, n_heads) -> (output, weights)``."""
    g = torch.Generator().manual_seed(203)
    n = 0
    for B, T, S, D, h, lengths in [(2, 5, 9, 16, 4, [9, 6]), (3, 7, 3, 12, 3, [3, 1, 2]),
                                   (1, 1, 6, 8, 2, [4]), (2, 6, 6, 16, 2, [6, 3])]:
        ref, params = torch_mha_with_params(D, h, seed=300 + n)
        x = torch.randn(B, T, D, generator=g)
        cond = torch.randn(B, S, D, generator=g)
        cond_lengths = torch.tensor(lengths)
        kpm = torch.arange(S)[None, :] >= cond_lengths[:, None]            # torch: True = padding
        with torch.no_grad():
            want, want_w = ref(x, cond, cond, key_padding_mask=kpm, average_attn_weights=False)
        what = f"x [{B}, {T}, {D}], cond [{B}, {S}, {D}], cond_lengths {lengths}"
        res = call_student(cross_attention, x, cond, cond_lengths.clone(), params, h, name="cross_attention")
        if not (isinstance(res, tuple) and len(res) == 2):
            raise AssertionError(f"cross_attention with {what}: expected a tuple (output, weights); got {type(res).__name__}")
        out, w = res
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (B, S, D) and S != T:
            raise AssertionError(
                f"output with {what}: shape {(B, S, D)} has the condition's length: the queries were taken from "
                "the condition. Queries come from x (the decoder), keys and values from cond")
        if isinstance(w, torch.Tensor) and tuple(w.shape) == (B, h, S, T) and S != T:
            raise AssertionError(f"weights with {what}: shape [B, h, S, T]: queries and keys swapped; "
                                 "queries come from x, keys from cond, so the weights are [B, h, T, S]")
        expect_tensor(f"output with {what}", out, (B, T, D), x.dtype)
        expect_tensor(f"weights with {what}", w, (B, h, T, S), x.dtype)
        if (w.detach().masked_select(kpm[:, None, None, :].expand_as(w)).abs() > 1e-6).any():
            raise AssertionError(
                f"weights with {what}: padded positions of the condition get attention. Build a mask that is True "
                "for key j < cond_lengths[b], shaped [B, 1, 1, S] so that it broadcasts over heads and queries")
        mask = ~kpm[:, None, None, :]
        mistakes = {
            "scores scaled by 1/√D instead of 1/√d_h": reference_mha(x, params, h, cond, mask, scale=1 / math.sqrt(D)),
            "W^O missing: apply the output projection": reference_mha(x, params, h, cond, mask, use_o=False),
        }
        expect_close(f"weights with {what}", w, want_w, mistakes={k: v[1] for k, v in mistakes.items()})
        expect_close(f"output with {what}", out, want, mistakes={k: v[0] for k, v in mistakes.items()})
        n += 1
    passed("cross_attention", n)


# ----------------------------------------------------------------------------- task 4
def check_param_count(mha_param_count) -> None:
    """Task 4: ``mha_param_count(d_model, n_heads, bias=True)`` equals nn.MultiheadAttention's count."""
    n = 0
    for D in (8, 64, 512, 768):
        for h in (1, 2, 8) if D >= 8 else (1,):
            for bias in (True, False):
                want = sum(p.numel() for p in nn.MultiheadAttention(D, h, bias=bias).parameters())
                got = expect_number(f"mha_param_count({D}, {h}, bias={bias})",
                                    _call_counting(mha_param_count, D, h, bias=bias, name="mha_param_count"))
                n += 1
                if got == want:
                    continue
                d_h = D // h
                b = 1 if bias else 0
                known = [
                    (4 * D * d_h + b * (3 * d_h + D), "counted one head only: the h matrices W_i^Q (D × D/h each) "
                                                      "together make one D × D matrix, and the same for K and V"),
                    (h * (4 * D * D + 4 * D * b), "gave every head full D × D matrices: head i's W_i^Q is D × D/h"),
                    (3 * D * D + 3 * D * b, "W^O missing: the output projection has D × D weights (+ D biases)"),
                ]
                if bias:
                    known += [(4 * D * D, "biases missing: with bias=True each of the four projections has D biases"),
                              (4 * D * D + 3 * D, "the output projection's D biases are missing")]
                else:
                    known += [(4 * D * D + 4 * D, "biases counted although bias=False")]
                mistakes = {}
                for value, message in known:
                    if value != want:
                        mistakes.setdefault(value, message)
                message = mistakes.get(int(got)) if float(got).is_integer() else None
                if message:
                    raise AssertionError(f"mha_param_count({D}, {h}, bias={bias}) = {got:g}: {message}")
                raise AssertionError(f"mha_param_count({D}, {h}, bias={bias}) = {got:g}; expected {want}")
    passed("param_count", n)


# ----------------------------------------------------------------------------- task 5 (transfer)
def _head_contributions(x, params, n_heads, context=None, mask=None, *, o_slice="columns",
                                 bias_per_head=False):
    """``[B, h, T, D]``: head i's output times the columns i·d_h … (i+1)·d_h − 1 of W^O.

    ``sum(dim=1) + b_o`` is the multi-head output. The switches reproduce the usual mistakes.
    """
    B, T, D = x.shape
    h, d = n_heads, D // n_heads
    c = x if context is None else context
    q, k, v = (split_heads(_lin(inp, params[f"w_{n}"], params[f"b_{n}"]), h) for inp, n in ((x, "q"), (c, "k"), (c, "v")))
    s = q @ k.transpose(-2, -1) / math.sqrt(d)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    heads = torch.softmax(s, dim=-1).nan_to_num(0.0) @ v                       # [B, h, T, d_h]
    w_o = params["w_o"]                                                        # [D, D]: out × in
    if o_slice == "columns":
        slices = w_o.view(D, h, d).permute(1, 2, 0)                            # [h, d_h, D]: W^O[:, block i]ᵀ
    elif o_slice == "rows":
        slices = w_o.view(h, d, D)                                             # W^O[block i, :] (no transpose)
    else:                                                                      # "strided": columns i, i + h, …
        slices = w_o.view(D, d, h).permute(2, 1, 0)
    out = torch.einsum("bhtd,hdo->bhto", heads, slices)
    if bias_per_head and params["b_o"] is not None:
        out = out + params["b_o"]
    return out


def check_head_contributions(head_contributions) -> None:
    """Task 5: multi-head attention as a sum over heads, ``out = Σ_i head_i W^O_i + b_o``."""
    g = torch.Generator().manual_seed(205)
    cases = [(2, 5, None, 16, 4), (1, 3, 6, 12, 3)]
    for _ in range(3):                                   # sizes the sheet does not print
        h = int(torch.randint(2, 6, (1,), generator=g))
        d = int(torch.randint(1, 5, (1,), generator=g))
        B, T = (int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(2, 7, (1,), generator=g)))
        S = None if len(cases) % 2 else int(torch.randint(2, 8, (1,), generator=g))
        cases.append((B, T, S, h * d, h))
    for i, (B, T, S, D, h) in enumerate(cases):
        ref, params = torch_mha_with_params(D, h, seed=250 + i, dtype=torch.float64)
        x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
        context = None if S is None else torch.randn(B, S, D, generator=g, dtype=torch.float64)
        what = f"head_contributions(x [{B}, {T}, {D}], n_heads={h}{'' if S is None else f', context of length {S}'})"
        got = call_student(head_contributions, x.clone(), params, h, context, name="head_contributions")
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (B, T, D):
            raise AssertionError(f"{what}: returned [B, T, D], the summed output: return one contribution per head, "
                                 f"[B, h, T, D] = {(B, h, T, D)}")
        got = expect_tensor(what, got, (B, h, T, D), x.dtype)
        c = x if context is None else context
        with torch.no_grad():
            want_out, _ = ref(x, c, c, average_attn_weights=False)
        want = _head_contributions(x, params, h, context)
        args = (x, params, h, context)
        mistakes = {
            "the output bias b_o was added to every head: Σ_i (head_i W^O_i + b_o) counts it h times; a contribution "
            "is head_i W^O_i alone (the bias is added once, to the sum)":
                _head_contributions(*args, bias_per_head=True),
            "sliced the rows of W^O: it is stored [out, in] (nn.Linear), so head i feeds the COLUMNS "
            "i·d_h … (i+1)·d_h − 1, and its contribution is head_i @ w_o[:, block].T":
                _head_contributions(*args, o_slice="rows"),
            "took every h-th column of W^O: merge_heads puts head i's features at the consecutive block "
            "i·d_h … (i+1)·d_h − 1, and those are the columns of W^O it meets":
                _head_contributions(*args, o_slice="strided"),
        }
        expect_close(what, got, want, mistakes=mistakes, atol=1e-10, rtol=1e-8)
        summed = got.sum(1) + params["b_o"]
        expect_close(f"{what}: the sum over heads + b_o vs nn.MultiheadAttention", summed, want_out,
                     atol=1e-10, rtol=1e-8)
        # The point: a contribution belongs to its head. Zeroing head j's slice of W^O (pruning it) changes
        # contribution j only.
        j = i % h
        pruned = dict(params, w_o=params["w_o"].clone())
        pruned["w_o"][:, j * (D // h):(j + 1) * (D // h)] = 0
        got_pruned = expect_tensor(what, call_student(head_contributions, x.clone(), pruned, h, context,
                                                      name="head_contributions"), (B, h, T, D), x.dtype)
        keep = [i for i in range(h) if i != j]
        if not torch.allclose(got_pruned[:, keep], got[:, keep], atol=1e-10) or got_pruned[:, j].abs().max() > 1e-10:
            raise AssertionError(f"{what}: pruning head {j} (zeroing its columns of W^O) must silence contribution {j} "
                                 "and leave the others unchanged; yours do not belong to their heads")
    passed("head_contributions", len(cases))


# ----------------------------------------------------------------------------- task 6 (transfer)
def _torch_param_count(d_model: int, n_heads: int, d_ff: int, n_enc: int, n_dec: int) -> int:
    """The parameters of ``nn.Transformer(d_model, n_heads, n_enc, n_dec, d_ff)``, counted by torch itself
    (on the meta device: nothing is allocated)."""
    with warnings.catch_warnings():                 # torch's note on nested tensors (odd head counts) is noise here
        warnings.simplefilter("ignore")
        model = nn.Transformer(d_model, n_heads, n_enc, n_dec, d_ff, batch_first=True, device="meta")
    return sum(p.numel() for p in model.parameters())


def _enc_dec_count(D, d_ff, n_enc, n_dec, *, mha_bias=True, ffn_bias=True, ffn_mats=2, cross=True,
                   ln_enc=2, ln_dec=3, final_norms=2, ln_params=2):
    mha = 4 * D * D + (4 * D if mha_bias else 0)
    ffn = ffn_mats * D * d_ff + ((d_ff + D) if ffn_bias else 0)
    ln = ln_params * D
    enc = mha + ffn + ln_enc * ln
    dec = (2 if cross else 1) * mha + ffn + ln_dec * ln
    return n_enc * enc + n_dec * dec + final_norms * ln


def _call_counting(fn, *args, name: str, **kwargs):
    """A count is to be derived from the shapes, not read off a model: building any nn.Module fails."""
    return call_without(fn, [(nn.Module, "__init__")],
                        "built a torch module: derive the count by hand from the shapes of the weights; "
                        "do not build the model and count its parameters", *args, name=name, **kwargs)


ENC_DEC_EXAMPLES = {  # what: d_model, n_heads, d_ff, n_enc, n_dec
    "the Transformer base of Vaswani et al.": (512, 8, 2048, 6, 6),
    "the Transformer big": (1024, 16, 4096, 6, 6),
    "a small model": (64, 4, 256, 2, 2),
}


def check_encoder_decoder_param_count(count_fn) -> None:
    """Task 6: the parameters of an encoder–decoder stack, equal to nn.Transformer's count."""
    g = torch.Generator().manual_seed(206)
    cases = list(ENC_DEC_EXAMPLES.values()) + [(32, 2, 32, 3, 1), (48, 3, 100, 1, 4)]
    for _ in range(3):                                   # configurations the sheet does not print
        h = int(torch.randint(1, 9, (1,), generator=g))
        cases.append((h * int(torch.randint(2, 40, (1,), generator=g)), h, int(torch.randint(8, 999, (1,), generator=g)),
                      int(torch.randint(1, 13, (1,), generator=g)), int(torch.randint(1, 13, (1,), generator=g))))
    for D, h, d_ff, n_enc, n_dec in cases:
        name = f"encoder_decoder_param_count(d_model={D}, n_heads={h}, d_ff={d_ff}, n_enc={n_enc}, n_dec={n_dec})"
        got = expect_number(name, _call_counting(count_fn, D, h, d_ff, n_enc, n_dec,
                                                 name="encoder_decoder_param_count"))
        want = _torch_param_count(D, h, d_ff, n_enc, n_dec)
        if got == want:
            continue
        args = (D, d_ff, n_enc, n_dec)
        mistakes = {
            "the decoder's cross-attention is missing: a decoder layer has TWO attention blocks (self and cross)":
                _enc_dec_count(*args, cross=False),
            "the attention biases are missing: each of the four projections has D biases": _enc_dec_count(*args, mha_bias=False),
            "the feed-forward biases are missing: d_ff on the first linear layer, D on the second":
                _enc_dec_count(*args, ffn_bias=False),
            "one feed-forward matrix only: the FFN is D → d_ff → D, two matrices": _enc_dec_count(*args, ffn_mats=1),
            "the LayerNorms are missing: each has a gain and a bias of D numbers": _enc_dec_count(
                *args, ln_enc=0, ln_dec=0, final_norms=0),
            "a decoder layer has three LayerNorms (one per sub-layer: self-attention, cross-attention, FFN), not two":
                _enc_dec_count(*args, ln_dec=2),
            "the final LayerNorms of the encoder and of the decoder stacks are missing (nn.Transformer has both)":
                _enc_dec_count(*args, final_norms=0),
            "a LayerNorm has a gain AND a bias (2·D), not D": _enc_dec_count(*args, ln_params=1),
            "encoder and decoder layers swapped: the encoder has n_enc layers of one attention block, "
            "the decoder n_dec layers of two": _enc_dec_count(D, d_ff, n_dec, n_enc),
        }
        for message, alt in mistakes.items():
            if alt != want and got == alt:
                raise AssertionError(f"{name}: {message}")
        raise AssertionError(f"{name}: expected {want:,}; got {got:,.0f}")
    passed("encoder_decoder_param_count", len(cases))
