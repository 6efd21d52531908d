"""Checks for Exercise 3 (masks).

Tasks, in the order of the exercise notebook:

1. ``causal_mask(T)`` → ``[T, T]`` and ``padding_mask(lengths, S)`` → ``[B, 1, 1, S]``, boolean,
   True = may attend;
2. ``combine_masks(*masks)`` (logical AND with broadcasting) and
   ``self_attention_mask(lengths, T, *, causal)`` → ``[B, 1, T, T]``: key padding, and the
   causal mask for a decoder;
3. ``to_additive(mask, dtype)`` → 0 where allowed, ``torch.finfo(dtype).min`` where blocked;
4. ``mlm_mask(input_ids, *, mask_token_id, vocab_size, mlm_probability, special_token_ids,
   generator)`` → ``(masked_input_ids, labels)``, checked statistically on many tokens;
5. ``causal_lm_loss(logits, input_ids, attention_mask)`` → GPT's next-token loss;
6. (transfer) ``prefix_lm_mask(prefix_lengths, lengths, T)`` → ``[B, 1, T, T]``: T5's and UniLM's prefix-LM
   mask, bidirectional over each row's own prefix, causal after it, with key padding;
7. (transfer) ``left_padded_inputs(lengths, T)`` → ``(mask [B, 1, T, T], position_ids [B, T])`` for batched
   generation: run through a small decoder with a textbook softmax (NaN on an empty row), the left-padded
   batch must give each row's logits alone;
8. (transfer) ``packed_targets(input_ids, doc_lengths)`` → ``[L]``: next-token targets of a packed row,
   aligned with the logits, with ``-100`` where the next token belongs to another document.

Each check compares with ``course_lib.masks`` on seeded cases and names the likely mistake.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course_lib import masks as ref
from course_lib.grading import expect_close, expect_tensor, passed
from course_lib.grading.forbid import call_without

__all__ = [
    "check_basic_masks",
    "check_combine",
    "check_additive",
    "check_mlm",
    "check_causal_lm_loss",
    "MLM_VOCAB",
    "MLM_SPECIAL",
    "mlm_batch",
    "mlm_statistics",
    "check_prefix_lm_mask",
    "check_left_padded_inputs",
    "TinyDecoder",
    "check_packed_targets",
]


def _call_own(fn, *args, name: str, **kwargs):
    """call_student, failing an answer that is (or calls) course_lib.masks: the sheet asks you to write it."""
    if getattr(fn, "__module__", "").startswith("course_lib."):
        raise AssertionError(f"{name} is {fn.__module__}.{getattr(fn, '__name__', '')} itself: the task is to write "
                             "it yourself (do not import course_lib.masks)")
    library = [(ref, n) for n in dir(ref) if not n.startswith("_") and callable(getattr(ref, n))
               and getattr(getattr(ref, n), "__module__", "") == ref.__name__]
    return call_without(fn, library, "calls course_lib.masks: the task is to write it yourself", *args, name=name,
                        **kwargs)


def _expect_equal(name: str, got: torch.Tensor, want: torch.Tensor, mistakes: dict) -> None:
    """Exact comparison for boolean / integer results, naming a matching mistake."""
    if torch.equal(got.cpu(), want.cpu()):
        return
    for message, alt in mistakes.items():
        if alt is not None and alt.shape == got.shape and torch.equal(got.cpu(), alt.cpu()):
            raise AssertionError(f"{name}: {message}")
    bad = int((got.cpu() != want.cpu()).sum())
    raise AssertionError(f"{name}: {bad} of {want.numel()} entries are wrong")


# ----------------------------------------------------------------------------- task 1
def check_basic_masks(causal_mask, padding_mask) -> None:
    """Task 1: the causal mask ``[T, T]`` and the key padding mask ``[B, 1, 1, S]``."""
    n = 0
    for T in (2, 5, 8, 1):
        got = _call_own(causal_mask, T, name="causal_mask")
        expect_tensor(f"causal_mask({T})", got, (T, T), torch.bool)
        want = ref.causal_mask(T)
        _expect_equal(f"causal_mask({T})", got, want, {
            "mask transposed: row i is the query, column j the key; query i may see keys j ≤ i (lower triangle, tril)":
                want.T if T > 1 else None,
            "off by one on the diagonal: a token may attend to itself (tril(), not tril(-1))":
                torch.ones(T, T, dtype=torch.bool).tril(-1),
            "off by one above the diagonal: each query sees one future key (tril(), not tril(1))":
                torch.ones(T, T, dtype=torch.bool).tril(1) if T > 1 else None,
            "mask inverted: True means 'may attend' (PyTorch's convention), so the past and the diagonal are True":
                ~want,
        })
        n += 1
    cases = [([3, 1, 4], 4), ([5], 5), ([2, 0, 6], 7), ([1, 1], 3)]
    for lengths, S in cases:
        lt = torch.tensor(lengths)
        got = _call_own(padding_mask, lt, S, name="padding_mask")
        want = ref.padding_mask(lt, S)
        B = len(lengths)
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (B, 1, S, 1) and S > 1:
            raise AssertionError(
                f"padding_mask({lengths}, {S}): shape {(B, 1, S, 1)} masks the padded *queries*; the mask must hide "
                f"the padded *keys*: shape (B, 1, 1, S) = {(B, 1, 1, S)}, broadcasting over heads and queries"
            )
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (B, S):
            raise AssertionError(
                f"padding_mask({lengths}, {S}): expected shape (B, 1, 1, S) = {(B, 1, 1, S)} so that it broadcasts "
                f"against [B, H, T, S] scores; got {(B, S)} (add the head and query dimensions: [:, None, None, :])"
            )
        expect_tensor(f"padding_mask({lengths}, {S})", got, (B, 1, 1, S), torch.bool)
        pos = torch.arange(S)
        _expect_equal(f"padding_mask({lengths}, {S})", got, want, {
            "off by one: sequence b has lengths[b] real tokens at positions 0 … lengths[b]−1 (use <, not <=)":
                (pos <= lt[:, None])[:, None, None, :],
            "mask inverted: True marks the real tokens (may attend), False the padding":
                ~want,
            "left padding: the tokens come first and the padding after (right padding)":
                ref.padding_mask(lt, S, side="left"),
        })
        n += 1
    passed("basic masks", n)


# ----------------------------------------------------------------------------- task 2
def check_combine(combine_masks, self_attention_mask) -> None:
    """Task 2: broadcasting AND, and the ``[B, 1, T, T]`` self-attention mask of an encoder or a decoder."""
    g = torch.Generator().manual_seed(303)
    B, H, T = 3, 2, 5
    pad = ref.padding_mask(torch.tensor([5, 3, 2]), T)
    causal = ref.causal_mask(T)
    rand = torch.rand(B, H, T, T, generator=g) > 0.3
    cases = [
        ("[B,1,1,S] and [T,S]", (pad, causal)),
        ("[B,1,1,S] and [1,1,T,S]", (pad, causal[None, None])),
        ("[T,S] and [B,1,1,S] (order reversed)", (causal, pad)),
        ("three masks [B,1,1,S], [T,S], [B,H,T,S]", (pad, causal, rand)),
        ("one mask", (rand,)),
    ]
    n = 0
    for what, ms in cases:
        before = [m.clone() for m in ms]
        got = _call_own(combine_masks, *ms, name="combine_masks")
        want = ref.combine_masks(*ms)
        if isinstance(got, torch.Tensor) and got.shape != want.shape:
            if len(ms) > 2 and got.shape == ref.combine_masks(*ms[:2]).shape and torch.equal(got, ref.combine_masks(*ms[:2])):
                raise AssertionError(f"combine_masks of {what}: only the first two masks are used: AND all of them")
            raise AssertionError(
                f"combine_masks of {what}: expected the broadcast shape {tuple(want.shape)}; got {tuple(got.shape)} "
                "(combine with & and let broadcasting expand the singleton dimensions)"
            )
        expect_tensor(f"combine_masks of {what}", got, tuple(want.shape), torch.bool)
        if any(not torch.equal(m, b) for m, b in zip(ms, before)):
            raise AssertionError(f"combine_masks of {what}: your function modified an input mask in place")
        any_ = ms[0]
        for m in ms[1:]:
            any_ = any_ | m
        _expect_equal(f"combine_masks of {what}", got, want, {
            "combined with OR: a key is visible only if *every* mask allows it (use &)":
                any_.expand(want.shape) if len(ms) > 1 else None,
            "only the last mask is used: AND all of them": ms[-1].expand(want.shape) if len(ms) > 1 else None,
            "only the first two masks are used: AND all of them":
                ref.combine_masks(*ms[:2]).expand(want.shape) if len(ms) > 2 else None,
        })
        n += 1

    for lengths, causal in (([5, 3, 2], False), ([5, 3, 2], True), ([1], True), ([4, 4], False), ([6, 1, 3, 2], True)):
        T = max(lengths) + (1 if len(lengths) == 2 else 0)
        lt = torch.tensor(lengths)
        what = f"self_attention_mask({lengths}, {T}, causal={causal})"
        got = _call_own(self_attention_mask, lt, T, causal=causal, name="self_attention_mask")
        key_pad = ref.padding_mask(lt, T)
        causal_T = ref.causal_mask(T)
        want = ref.combine_masks(key_pad, causal_T if causal else torch.ones(T, T, dtype=torch.bool))
        Bn = len(lengths)
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (Bn, T, T):
            raise AssertionError(
                f"{what}: expected shape (B, 1, T, T) = {(Bn, 1, T, T)}; got {(Bn, T, T)}: "
                "keep the head dimension so that the mask broadcasts over heads"
            )
        if isinstance(got, torch.Tensor) and not causal and tuple(got.shape) == (Bn, 1, 1, T):
            raise AssertionError(
                f"{what}: expected the full shape (B, 1, T, T) = {(Bn, 1, T, T)}; got the key mask {(Bn, 1, 1, T)} "
                "alone: broadcast it over the T queries (combine_masks with a [T, T] mask of True, or .expand)"
            )
        expect_tensor(what, got, (Bn, 1, T, T), torch.bool)
        i = torch.arange(T)[:, None]
        q_real = (i < lt[:, None, None])[:, None].expand(Bn, 1, T, T)     # [B, 1, T, T]: query i is real
        fully = "padded query rows become fully masked (NaN after torch.softmax with −inf); the padding mask hides KEYS only"
        mistakes = {}
        if not causal:
            mistakes["padding applied to the queries instead of the keys: real queries still attend to padded keys "
                     "(use the [B, 1, 1, S] key mask)"] = q_real
        mistakes[f"padding applied to the queries as well as the keys: {fully}"] = q_real & want
        if causal:
            mistakes["the causal part is missing: queries see future keys"] = key_pad.expand(Bn, 1, T, T)
        else:
            mistakes["causal=False must not apply the causal mask (an encoder sees the whole sequence)"] = want & causal_T
        mistakes["the padding part is missing: queries see padded keys"] = (
            causal_T.expand(Bn, 1, T, T) if causal else torch.ones(Bn, 1, T, T, dtype=torch.bool))
        mistakes["mask transposed: rows are queries, columns are keys"] = want.transpose(-2, -1)
        _expect_equal(what, got, want, mistakes)
        n += 1
    passed("combine", n)


# ----------------------------------------------------------------------------- task 3
def check_additive(to_additive) -> None:
    """Task 3: boolean → additive mask with ``torch.finfo(dtype).min``, safe in float16."""
    g = torch.Generator().manual_seed(404)
    cases = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        m = torch.rand(2, 1, 4, 6, generator=g) > 0.4
        cases.append((dtype, m))
    cases.append((torch.float16, ref.causal_mask(5)))
    cases.append((torch.float32, ref.padding_mask([3, 1], 4)))
    for dtype, m in cases:
        what = f"to_additive(mask {tuple(m.shape)}, {dtype})"
        try:
            got = _call_own(to_additive, m.clone(), dtype, name="to_additive")
        except AssertionError as err:
            if "overflow" in str(err):
                raise AssertionError(
                    f"{what}: {err}. A constant like −1e9 does not fit in {dtype} (its most negative finite "
                    f"value is {torch.finfo(dtype).min:g}): use torch.finfo(dtype).min"
                ) from None
            raise
        want = ref.to_additive(m, dtype)
        if isinstance(got, torch.Tensor) and got.shape == m.shape and got.dtype != dtype:
            raise AssertionError(f"{what}: expected dtype {dtype}; got {got.dtype} (create the result in the requested dtype)")
        expect_tensor(what, got, tuple(m.shape), dtype)
        low = torch.finfo(dtype).min
        if torch.isnan(got).any():
            raise AssertionError(f"{what}: NaN in the mask (did you multiply −inf by 0, as in w·b + c·(1 − b)?)")
        if (got[~m] == float("-inf")).any():
            raise AssertionError(
                f"{what}: −inf at the blocked positions. A constant like −1e9 becomes −inf in float16 (its largest "
                f"magnitude is 65504), and a fully masked row then gives NaN; use torch.finfo(dtype).min = {low:g}"
            )
        if torch.equal(got[m], torch.full_like(got[m], low)) and (got[~m] == 0).all() and m.any() and (~m).any():
            raise AssertionError(f"{what}: True/False swapped: True (may attend) must add 0, False (blocked) must add finfo.min")
        if (got[~m] == -1e4).all() and (~m).any():
            raise AssertionError(
                f"{what}: −1e4 is the old GPT constant; it is finite but not safely below every score "
                f"(in float32 a score of −2e4 would rank below a blocked key). Use torch.finfo(dtype).min = {low:g}"
            )
        expect_close(what, got, want, atol=0, rtol=0)
    passed("additive", len(cases))


# ----------------------------------------------------------------------------- task 4
MLM_VOCAB = 1000
MLM_SPECIAL = {"pad": 0, "cls": 1, "sep": 2, "mask": 3}
_Z_MAX = 4.5  # a correct implementation fails one check in ~10⁵ (|z| > 4.5, a few comparisons)


def mlm_batch(B: int = 64, L: int = 256, seed: int = 0) -> torch.Tensor:
    """A padded batch of token ids: [CLS] tokens … [SEP] [PAD] …, ids of ordinary tokens in [4, 1000)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, MLM_VOCAB, (B, L), generator=g)
    lengths = torch.randint(L // 4, L + 1, (B,), generator=g)
    pos = torch.arange(L)
    ids[:, 0] = MLM_SPECIAL["cls"]
    ids[pos[None] == (lengths[:, None] - 1)] = MLM_SPECIAL["sep"]
    ids[pos[None] >= lengths[:, None]] = MLM_SPECIAL["pad"]
    return ids


def mlm_statistics(input_ids, masked, labels, mask_token_id=MLM_SPECIAL["mask"], vocab_size=MLM_VOCAB,
                   special_token_ids=tuple(MLM_SPECIAL.values())):
    """Counts and expected fractions of each outcome: {name: (count, n, p_expected)}.

    ``selected`` is counted among the eligible tokens; the other three among the selected.
    A random replacement equals the original token, or [MASK], with probability 1/V each.
    """
    eligible = ~torch.isin(input_ids, torch.tensor(list(special_token_ids)))
    sel = labels != ref.IGNORE_INDEX
    n_el, n_sel = int(eligible.sum()), int(sel.sum())
    as_mask = int((masked[sel] == mask_token_id).sum())
    same = int((masked[sel] == input_ids[sel]).sum())
    V = vocab_size
    return {
        "selected": (n_sel, n_el, None),
        "[MASK]": (as_mask, n_sel, 0.8 + 0.1 / V),
        "random": (n_sel - as_mask - same, n_sel, 0.1 * (1 - 2 / V)),
        "unchanged": (same, n_sel, 0.1 + 0.1 / V),
    }


def _z(count, n, p):
    return (count / n - p) / math.sqrt(p * (1 - p) / n)


def check_mlm(mlm_mask) -> None:
    """Task 4: BERT's MLM corruption: 15% selected, of those 80% [MASK], 10% random, 10% unchanged."""
    special = tuple(MLM_SPECIAL.values())
    mask_id = MLM_SPECIAL["mask"]
    n = 0
    for seed, p in ((0, 0.15), (1, 0.15), (2, 0.3)):
        ids = mlm_batch(seed=seed)
        before = ids.clone()
        res = _call_own(mlm_mask, ids, mask_token_id=mask_id, vocab_size=MLM_VOCAB, mlm_probability=p,
                           special_token_ids=special, generator=torch.Generator().manual_seed(100 + seed),
                           name="mlm_mask")
        what = f"mlm_mask (seed {seed}, mlm_probability={p})"
        if not (isinstance(res, tuple) and len(res) == 2):
            raise AssertionError(f"{what}: expected a tuple (masked_input_ids, labels); got {type(res).__name__}")
        masked, labels = res
        expect_tensor(f"masked_input_ids of {what}", masked, tuple(ids.shape), ids.dtype)
        expect_tensor(f"labels of {what}", labels, tuple(ids.shape), ids.dtype)
        if not torch.equal(ids, before):
            raise AssertionError(f"{what}: your function modified input_ids in place (work on a copy)")
        if ((masked < 0) | (masked >= MLM_VOCAB)).any():
            raise AssertionError(f"{what}: masked_input_ids has ids outside [0, vocab_size): draw random tokens with "
                                 "torch.randint(vocab_size, …)")
        sel = labels != ref.IGNORE_INDEX
        if not sel.any():
            raise AssertionError(f"{what}: every label is −100: no token was selected")
        special_pos = torch.isin(ids, torch.tensor(special))
        if sel.float().mean() > min(1.0, 2 * p + 0.1):
            raise AssertionError(
                f"{what}: {sel.float().mean():.0%} of the labels are not −100: the loss must count only the selected "
                "tokens (set labels to −100, the ignore_index of F.cross_entropy, everywhere else)"
            )
        if not torch.equal(labels[sel], ids[sel]):
            if torch.equal(labels[sel], masked[sel]):
                raise AssertionError(f"{what}: labels hold the corrupted input; they must hold the ORIGINAL ids")
            raise AssertionError(f"{what}: labels must be −100 at unselected tokens and the original id at selected ones")
        if sel[special_pos].any():
            raise AssertionError(
                f"{what}: special tokens ([CLS], [SEP], [PAD], [MASK]) were selected: they must never be "
                "selected (exclude special_token_ids before drawing)"
            )
        changed = masked != ids
        if (changed & ~sel).any():
            frac = (changed & ~sel).sum().item() / max(1, (~sel).sum().item())
            raise AssertionError(
                f"{what}: {frac:.0%} of the UNSELECTED tokens were changed: the 80/10/10 split applies only to the "
                "selected 15%, not to all tokens (AND each replacement draw with the selection)"
            )
        stats = mlm_statistics(ids, masked, labels, mask_id, MLM_VOCAB, special)
        k, n_el, _ = stats["selected"]
        if abs(_z(k, n_el, p)) > _Z_MAX:
            hint = ""
            if abs(k / n_el - p * 0.8) < 0.01:
                hint = " (did you count only the [MASK]ed tokens as selected? the random and unchanged ones are targets too)"
            raise AssertionError(
                f"{what}: {k / n_el:.4f} of the eligible tokens were selected; expected {p} "
                f"(binomial standard error {math.sqrt(p * (1 - p) / n_el):.4f}){hint}"
            )
        for name, (count, n_s, p_exp) in stats.items():
            if p_exp is None:
                continue
            if abs(_z(count, n_s, p_exp)) > _Z_MAX:
                obs = {kk: v[0] / v[1] for kk, v in stats.items()}
                hint = ""
                if abs(obs["random"] - 0.02) < 0.01:
                    hint = (" — the random 10% must be half of the remaining 20%: draw with probability 0.5 among the "
                            "non-[MASK] selected tokens (or 0.1/0.2), not 0.1")
                elif abs(obs["[MASK]"] - 1.0) < 0.01:
                    hint = " — every selected token became [MASK]: only 80% should; 10% random, 10% unchanged"
                raise AssertionError(
                    f"{what}: among the selected tokens, {name} = {count / n_s:.4f}; expected {p_exp:.4f} "
                    f"(standard error {math.sqrt(p_exp * (1 - p_exp) / n_s):.4f}; observed "
                    f"[MASK] {obs['[MASK]']:.3f}, random {obs['random']:.3f}, unchanged {obs['unchanged']:.3f}){hint}"
                )
        n += 1
    ids = mlm_batch(8, 64, seed=9)
    a = _call_own(mlm_mask, ids, mask_token_id=mask_id, vocab_size=MLM_VOCAB, special_token_ids=special,
                     generator=torch.Generator().manual_seed(7), name="mlm_mask")
    b = _call_own(mlm_mask, ids, mask_token_id=mask_id, vocab_size=MLM_VOCAB, special_token_ids=special,
                     generator=torch.Generator().manual_seed(7), name="mlm_mask")
    if not all(torch.equal(x, y) for x, y in zip(a, b)):
        raise AssertionError("mlm_mask is not reproducible: pass generator=generator to every torch.rand / torch.randint")
    passed("mlm_mask", n + 1)


# ----------------------------------------------------------------------------- task 5
def _mean_of_sequence_means(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """The mean over sequences of each sequence's mean loss (None when no sequence has a target)."""
    per_seq = [ref.causal_lm_loss(logits[b:b + 1], labels[b:b + 1]) for b in range(len(labels))
               if (labels[b, 1:] != -100).any()]
    return torch.stack(per_seq).mean() if per_seq else None


def check_causal_lm_loss(causal_lm_loss) -> None:
    """Task 5: mean next-token cross-entropy over the real tokens (logits[:, t] predicts input_ids[:, t+1])."""
    g = torch.Generator().manual_seed(505)
    cases = []
    for B, L, V, lengths in ((2, 6, 7, None), (3, 8, 11, [8, 5, 2]), (1, 2, 5, None), (4, 5, 3, [5, 5, 1, 3])):
        ids = torch.randint(V, (B, L), generator=g)
        attn = None if lengths is None else ref.padding_mask(lengths, L)[:, 0, 0]
        logits = torch.randn(B, L, V, generator=g, dtype=torch.float64)
        cases.append((ids, logits, attn))
    for ids, logits, attn in cases:
        B, L, V = logits.shape
        what = f"causal_lm_loss (B={B}, L={L}, {'padded' if attn is not None else 'no padding'})"
        got = _call_own(causal_lm_loss, logits, ids, attn, name="causal_lm_loss")
        if isinstance(got, torch.Tensor) and got.numel() != 1:
            raise AssertionError(f"{what}: expected a scalar loss (the mean over targets); got shape {tuple(got.shape)}")
        expect_tensor(what, got, (), logits.dtype)
        labels = ref.causal_lm_labels(ids, attn)
        want = ref.causal_lm_loss(logits, labels)
        ce = lambda lg, lb: F.cross_entropy(lg.reshape(-1, V), lb.reshape(-1), ignore_index=-100)  # noqa: E731
        unmasked = ref.causal_lm_loss(logits, ids)
        expect_close(what, got, want, mistakes={
            "not shifted: position t must predict the NEXT token t+1, not its own input": ce(logits, labels),
            "shifted the wrong way: logits[:, t] predicts input_ids[:, t+1] (drop the LAST logit and the FIRST label)":
                ce(logits[:, 1:], labels[:, :-1]),
            "padding counted as targets: set the labels of padded positions to −100": unmasked if attn is not None else None,
            "summed instead of averaged over the targets": ref.causal_lm_loss(logits, labels, reduction="sum"),
            "averaged per sequence, then over the batch: the loss is the mean over ALL real targets of the batch "
            "(a short sequence must not weigh as much as a long one)": _mean_of_sequence_means(logits, labels),
        })
    passed("causal_lm_loss", len(cases))


# ----------------------------------------------------------------------------- task 6 (transfer)
def _prefix_lm_mask(prefix_lengths: torch.Tensor, lengths: torch.Tensor, T: int) -> torch.Tensor:
    """``[B, 1, T, T]``: key j visible to query i iff j is real and (j ≤ i or j lies in the prefix)."""
    j = torch.arange(T)
    prefix = j[None, :] < prefix_lengths[:, None]                               # [B, T] keys in the prefix
    visible = ref.causal_mask(T)[None] | prefix[:, None, :]                     # [B, T, T]
    return ref.combine_masks(visible[:, None], ref.padding_mask(lengths, T))


def _prefix_mistakes(prefix_lengths, lengths, T) -> dict[str, torch.Tensor]:
    i = torch.arange(T)
    pad = ref.padding_mask(lengths, T)
    causal = ref.causal_mask(T)
    want = _prefix_lm_mask(prefix_lengths, lengths, T)
    rows_in_prefix = (i[None, :] < prefix_lengths[:, None])[:, None, :, None]   # [B, 1, T, 1]
    return {
        "the prefix is ignored — this is the plain causal mask: the prefix keys must be visible to every query "
        "(causal OR prefix, an OR where combine_masks takes the AND)": ref.combine_masks(pad, causal),
        "the prefix is applied to the queries, not the keys: a query inside the prefix now sees the whole target, "
        "the future it must predict; the prefix is a set of KEYS that every query may see":
            ref.combine_masks(pad, causal | rows_in_prefix),
        "one prefix too many (off by one): the prefix has prefix_lengths[b] tokens, keys 0 … prefix_lengths[b] − 1":
            _prefix_lm_mask(prefix_lengths + 1, lengths, T),
        "one prefix too few (off by one): the prefix has prefix_lengths[b] tokens, keys 0 … prefix_lengths[b] − 1":
            _prefix_lm_mask((prefix_lengths - 1).clamp_min(0), lengths, T),
        "the first sequence's prefix length is used for the whole batch: each row has its own":
            _prefix_lm_mask(prefix_lengths[:1].expand_as(prefix_lengths), lengths, T),
        "the padding mask is missing: padded keys must stay hidden from every query":
            _prefix_lm_mask(prefix_lengths, torch.full_like(lengths, T), T),
        "mask transposed: rows are queries, columns are keys": want.transpose(-2, -1),
        "causal AND prefix: a key must be visible if it is in the past OR in the prefix (an OR of the two masks, "
        "where combine_masks takes the AND)":
            ref.combine_masks(pad, causal, (i[None, :] < prefix_lengths[:, None])[:, None, None, :]),
        "the whole prefix-LM mask is bidirectional everywhere: only the prefix is; after it, attention is causal":
            ref.combine_masks(pad, torch.ones(T, T, dtype=torch.bool)),
    }


def check_prefix_lm_mask(prefix_lm_mask) -> None:
    """Task 6: prefix-LM mask (T5, UniLM): bidirectional over each row's prefix, causal after it, key padding."""
    g = torch.Generator().manual_seed(606)
    cases = [(torch.tensor([2, 3]), torch.tensor([5, 4]), 5), (torch.tensor([0, 1, 4]), torch.tensor([6, 6, 4]), 6)]
    for _ in range(5):                                   # batches the sheet does not print
        B, T = int(torch.randint(2, 5, (1,), generator=g)), int(torch.randint(4, 11, (1,), generator=g))
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
        prefix = (torch.rand(B, generator=g) * (lengths + 1)).long().clamp(max=lengths)
        prefix[1] = max(1, int(lengths[1]) - 1)          # rows differ in their prefix
        prefix[0] = max(1, int(prefix[0]))
        cases.append((prefix, lengths, T))
    for prefix, lengths, T in cases:
        name = f"prefix_lm_mask(prefix_lengths={prefix.tolist()}, lengths={lengths.tolist()}, T={T})"
        got = _call_own(prefix_lm_mask, prefix.clone(), lengths.clone(), T, name="prefix_lm_mask")
        got = expect_tensor(name, got, (len(lengths), 1, T, T), torch.bool)
        _expect_equal(name, got, _prefix_lm_mask(prefix, lengths, T), _prefix_mistakes(prefix, lengths, T))
    passed("prefix_lm_mask", len(cases))


# ----------------------------------------------------------------------------- task 7 (transfer)
class TinyDecoder(torch.nn.Module):
    """A two-layer decoder that takes an explicit mask ``[B, 1, T, T]`` and position ids ``[B, T]``.

    Its attention is the textbook one, ``softmax(scores + (−inf where blocked))``: a query row with no
    visible key gives NaN, which the next layer spreads to every query (0 · NaN = NaN).
    """

    def __init__(self, vocab: int = 13, d: int = 16, n_heads: int = 2, max_len: int = 32, seed: int = 0):
        super().__init__()
        self.h = n_heads
        with torch.random.fork_rng(devices=[]):         # seeded weights; the caller's generator is left alone
            torch.manual_seed(seed)
            self.tok, self.pos = torch.nn.Embedding(vocab, d), torch.nn.Embedding(max_len, d)
            self.qkv = torch.nn.ModuleList(torch.nn.Linear(d, 3 * d) for _ in range(2))
            self.out = torch.nn.ModuleList(torch.nn.Linear(d, d) for _ in range(2))
            self.norm = torch.nn.ModuleList(torch.nn.LayerNorm(d) for _ in range(2))
            self.head = torch.nn.Linear(d, vocab)
        self.double()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        x = self.tok(ids) + self.pos(position_ids)
        for qkv, out, norm in zip(self.qkv, self.out, self.norm):
            q, k, v = qkv(norm(x)).view(B, T, 3, self.h, -1).permute(2, 0, 3, 1, 4)
            s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            w = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
            x = x + out((w @ v).transpose(1, 2).reshape(B, T, -1))
        return self.head(x)


def _left_padded_inputs(lengths: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding: keys real and causal, padded queries see themselves (no empty row); positions from 0."""
    real = ref.padding_mask(lengths, T, side="left")                             # [B, 1, 1, T]
    mask = ref.combine_masks(real, ref.causal_mask(T)) | torch.eye(T, dtype=torch.bool)
    position_ids = (torch.arange(T)[None, :] - (T - lengths)[:, None]).clamp_min(0)
    return mask, position_ids


def check_left_padded_inputs(left_padded_inputs) -> None:
    """Task 7: the mask and position ids of a left-padded batch, such that a decoder's logits at the real
    tokens equal those of each sequence run alone — and nothing is NaN."""
    model = TinyDecoder().eval()
    g = torch.Generator().manual_seed(707)
    cases = [torch.tensor([4, 2]), torch.tensor([5, 5, 1])]
    for _ in range(4):                                   # batches the sheet does not print
        B = int(torch.randint(2, 6, (1,), generator=g))
        cases.append(torch.randint(1, 12, (B,), generator=g))
    for lengths in cases:
        B, T = len(lengths), int(lengths.max())
        name = f"left_padded_inputs(lengths={lengths.tolist()}, T={T})"
        res = _call_own(left_padded_inputs, lengths.clone(), T, name="left_padded_inputs")
        if not (isinstance(res, tuple) and len(res) == 2):
            raise AssertionError(f"{name}: expected a tuple (mask, position_ids); got {type(res).__name__}")
        mask = expect_tensor(f"{name}: mask", res[0], (B, 1, T, T), torch.bool)
        pos = expect_tensor(f"{name}: position_ids", res[1], (B, T))
        if pos.is_floating_point() or pos.dtype == torch.bool:
            raise AssertionError(f"{name}: position_ids must be integers (they index an embedding); got {pos.dtype}")
        want_mask, want_pos = _left_padded_inputs(lengths, T)
        real = ref.padding_mask(lengths, T, side="left")[:, 0, 0]                # [B, T] True at real tokens
        # 1. positions of the real tokens: 0, 1, …, length − 1 in every row.
        if not torch.equal(pos[real], want_pos[real]):
            if torch.equal(pos, torch.arange(T).expand(B, T)):
                raise AssertionError(f"{name}: positions not shifted: after left padding the first real token of row b "
                                     "sits at column T − lengths[b], but it must get position 0, as when it runs alone")
            if torch.equal(pos[real], (want_pos + 1)[real]) or torch.equal(pos[real], (want_pos - 1)[real]):
                raise AssertionError(f"{name}: positions off by one: the first real token gets position 0")
            raise AssertionError(f"{name}: wrong position ids at the real tokens: row b's real tokens must get "
                                 f"0 … lengths[b] − 1; got {pos[1].tolist()} for row 1 (lengths {lengths[1].item()})")
        if int(pos.min()) < 0 or int(pos.max()) >= model.pos.num_embeddings:
            raise AssertionError(f"{name}: position ids must index the position table (0 … "
                                 f"{model.pos.num_embeddings - 1}), padded tokens included; got {pos.min()} … {pos.max()}")
        # 2. the mask at the real queries: causal and real keys only.
        rows = real[:, None, :, None].expand(B, 1, T, T)
        if not torch.equal(mask[rows], want_mask[rows]):
            right = ref.combine_masks(ref.padding_mask(lengths, T), ref.causal_mask(T))
            mistakes = {
                "padding on the wrong side: this batch is padded on the LEFT, its real tokens are the last "
                "lengths[b] columns": right,
                "the causal mask is missing: a generating model must not see its future tokens":
                    ref.padding_mask(lengths, T, side="left").expand(B, 1, T, T),
                "the padding mask is missing: real queries attend to the padded keys before them":
                    ref.causal_mask(T).expand(B, 1, T, T),
                "mask transposed: rows are queries, columns are keys": want_mask.transpose(-2, -1),
            }
            eye = torch.eye(T, dtype=torch.bool)
            for message, alt in mistakes.items():
                alt = alt.expand(B, 1, T, T)
                if torch.equal(mask[rows], alt[rows]) or torch.equal(mask[rows], (alt | eye)[rows]):
                    raise AssertionError(f"{name}: {message}")
            raise AssertionError(f"{name}: the mask is wrong at real queries: a real token must see exactly the real "
                                 "tokens up to itself")
        # 3. the point: run the decoder on a padded batch, garbage in the padding, and compare with each row alone.
        ids = torch.randint(1, 13, (B, T), generator=g)
        with torch.no_grad():
            logits = model(ids, mask, pos.long())
            if torch.isnan(logits[real]).any():
                empty = ~mask.any(-1)[:, 0]
                raise AssertionError(
                    f"{name}: NaN logits at real tokens: {int(empty.sum())} query rows of the mask see no key at all "
                    "(the padded queries of a left-padded causal batch), their softmax is 0/0 = NaN, and the next layer "
                    "spreads it to every query (0 · NaN = NaN). Give every row at least one visible key — e.g. let a "
                    "padded query see itself")
            for b in range(B):
                n = int(lengths[b])
                alone = model(ids[b:b + 1, T - n:], ref.causal_mask(n)[None, None], torch.arange(n)[None])[0]
                expect_close(f"{name}: logits of row {b} vs the row run alone", logits[b, T - n:], alone,
                             atol=1e-9, rtol=1e-7)
    passed("left_padded_inputs", len(cases))


# ----------------------------------------------------------------------------- task 8 (transfer)
def _packed_targets(input_ids: torch.Tensor, doc_lengths) -> torch.Tensor:
    """``[L]`` targets aligned with the logits of a packed row: ``input_ids[t + 1]`` when token t + 1 is in
    t's document, ``-100`` at the last token of every document (the row's last token included)."""
    doc = torch.repeat_interleave(torch.arange(len(doc_lengths)), torch.as_tensor(doc_lengths))
    targets = torch.full_like(input_ids, -100)
    same = doc[1:] == doc[:-1]
    targets[:-1] = torch.where(same, input_ids[1:], torch.full_like(input_ids[1:], -100))
    return targets


def check_packed_targets(packed_targets) -> None:
    """Task 8: next-token targets of a packed row, with no target across a document boundary."""
    g = torch.Generator().manual_seed(808)
    cases = [[3, 5, 2], [1, 4], [6]]
    for _ in range(4):                                   # rows the sheet does not print
        n = int(torch.randint(2, 6, (1,), generator=g))
        cases.append(torch.randint(1, 7, (n,), generator=g).tolist())
    for doc_lengths in cases:
        L = sum(doc_lengths)
        ids = torch.randint(0, 50, (L,), generator=g)
        name = f"packed_targets(input_ids [{L}], doc_lengths={doc_lengths})"
        got = _call_own(packed_targets, ids.clone(), list(doc_lengths), name="packed_targets")
        got = expect_tensor(name, got, (L,))
        want = _packed_targets(ids, doc_lengths)
        starts = torch.tensor([0] + list(torch.cumsum(torch.tensor(doc_lengths), 0)[:-1]))
        plain = torch.cat([ids[1:], torch.tensor([-100])])
        first_dropped = plain.clone()
        first_dropped[starts] = -100
        unshifted = ids.clone()
        unshifted[starts[1:]] = -100
        unshifted[0] = -100
        own = ids.masked_fill(want == -100, -100)
        _expect_equal(name, got, want, {
            "the last token of a document is trained to predict the first token of the next: where t + 1 starts "
            "a new document, the target of t must be −100 (the plain causal shift leaks across documents)": plain,
            "the first token of every document was dropped: it is a fine input (it predicts the second token); "
            "what must go is the target of each document's LAST token": first_dropped,
            "these are unshifted labels (−100 at each document's first token; the loss would shift them): this task "
            "asks for targets aligned with the logits, targets[t] = the token that logits[t] predicts": unshifted,
            "not shifted: logits[t] predicts the NEXT token, input_ids[t + 1], not its own input": own,
        })
    passed("packed_targets", len(cases))
