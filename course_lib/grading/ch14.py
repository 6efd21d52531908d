"""Checks for Exercise 14 (pre-training, fine-tuning and prompting).

Tasks, in the order of the exercise notebook:

1. ``mlm_corrupt(input_ids, attention_mask, …)`` — BERT's MLM corruption of a *padded* batch;
2. ``nsp_examples(documents, n_pairs, seed)`` — NSP pairs, negatives from another document;
3. ``extract_features(hidden, attention_mask)`` — GPT's state at the extract (last real) token,
   under left *and* right padding (transfer);
4. ``k_shot_prompt(instruction, pool, query_index, k, seed)`` — a k-shot prompt that does not leak
   the answer (transfer);
5. ``l3_loss(…)`` — GPT's fine-tuning objective L3 = L2 + λ·L1 on a padded batch;
6. ``ideal_predictive(table, xs, ys, x_query, n_outputs)`` — the ideal in-context learner's
   posterior predictive over a family of functions it has not seen (transfer).

References: ``course_lib.pretraining`` (``mlm_batch``, ``nsp_pairs``, ``gather_extract``,
``few_shot_prompt``, ``gpt_objectives``). A wrong answer is compared with the known wrong answers
(15% of all positions including padding, negatives from the same document, the last column read
under right padding, the query's example in the prompt, padding counted in L1, …).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course_lib import pretraining as P
from course_lib.grading import call_student, expect_close, expect_number, expect_tensor, passed
from course_lib.grading.forbid import call_without_library
from course_lib import masks as M
from course_lib.masks import IGNORE_INDEX

__all__ = ["MLM_VOCAB", "MLM_SPECIAL", "mlm_padded_batch", "check_mlm_corrupt", "check_nsp_examples",
           "check_extract_features", "check_k_shot_prompt", "check_l3_loss",
           "check_ideal_predictive"]

MLM_VOCAB = 50
MLM_SPECIAL = {"pad": 0, "cls": 47, "sep": 48, "mask": 49}


def mlm_padded_batch(seed: int = 0, B: int = 256, L: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` ``[B, L]``: ``[CLS] … [SEP]`` rows, right-padded to lengths 8 … L."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 47, (B, L), generator=g)
    lengths = torch.randint(8, L + 1, (B,), generator=g)
    att = (torch.arange(L)[None] < lengths[:, None]).long()
    ids[:, 0] = MLM_SPECIAL["cls"]
    ids[torch.arange(B), lengths - 1] = MLM_SPECIAL["sep"]
    return ids.masked_fill(att == 0, MLM_SPECIAL["pad"]), att


# The library functions each task's check compares with: calling them scores nothing.
_LIBRARY = {
    "mlm_corrupt": [(M, "mlm_mask"), (P, "mlm_batch")],
    "nsp_examples": [(P, "nsp_pairs")],
    "extract_features": [(P, "gather_extract"), (P, "extract_index")],
    "k_shot_prompt": [(P, "few_shot_prompt")],
    "l3_loss": [(P, "gpt_objectives")],
}


def _call(task: str, fn, *args, **kwargs):
    """The student's function, with the library functions of ``task`` forbidden."""
    return call_without_library(fn, _LIBRARY[task], *args, name=task, **kwargs)


def _z(observed: float, p: float, n: int) -> float:
    return (observed - p) / math.sqrt(p * (1 - p) / n)


# ----------------------------------------------------------------------------- task 1
def check_mlm_corrupt(mlm_corrupt_fn) -> None:
    """Task 1: 15% of the real, non-special tokens selected; 80/10/10; padding and specials never."""
    special = tuple(MLM_SPECIAL.values())
    n_cases = 0
    for seed in (0, 1):
        ids, att = mlm_padded_batch(seed)
        name = f"mlm_corrupt(batch of shape {tuple(ids.shape)}, seed {seed})"
        out = _call("mlm_corrupt", mlm_corrupt_fn, ids.clone(), att.clone(), mask_token_id=MLM_SPECIAL["mask"],
                           vocab_size=MLM_VOCAB, special_token_ids=special,
                           generator=torch.Generator().manual_seed(seed))
        if not (isinstance(out, tuple) and len(out) == 2):
            raise AssertionError(f"{name}: expected a pair (masked_input_ids, labels); got {type(out).__name__}")
        masked = expect_tensor(f"{name}: masked_input_ids", out[0], tuple(ids.shape), ids.dtype)
        labels = expect_tensor(f"{name}: labels", out[1], tuple(ids.shape), ids.dtype)
        sel = labels != IGNORE_INDEX
        eligible = (att == 1) & ~torch.isin(ids, torch.tensor(special))
        if (sel & (att == 0)).any():
            frac_all = sel.float().mean().item()
            raise AssertionError(
                f"{name}: {int((sel & (att == 0)).sum())} padding positions selected ({frac_all:.3f} of all "
                "positions): select 15% of the real tokens only — pass attention_mask, padding is never a target")
        if (sel & ~eligible).any():
            raise AssertionError(f"{name}: special tokens ([CLS]/[SEP]) selected: exclude special_token_ids")
        if not torch.equal(labels[sel], ids[sel]):
            raise AssertionError(f"{name}: labels must hold the ORIGINAL id at the selected positions "
                                 "(not the [MASK] or random id written into the input)")
        if not torch.equal(masked[~sel], ids[~sel]):
            raise AssertionError(f"{name}: tokens that were not selected changed: only selected tokens are corrupted")
        n, s = int(eligible.sum()), int(sel.sum())
        rate = s / n
        if abs(_z(rate, 0.15, n)) > 5:
            frac_all = s / sel.numel()
            hint = (" — that is about 15% of ALL positions: the padding is excluded but the rate is not "
                    "taken over the real tokens") if abs(frac_all - 0.15) < 0.02 else ""
            raise AssertionError(f"{name}: selected {rate:.3f} of the eligible tokens; expected 0.15{hint}")
        V = MLM_VOCAB
        frac_mask = (masked[sel] == MLM_SPECIAL["mask"]).float().mean().item()
        frac_same = (masked[sel] == ids[sel]).float().mean().item()
        if abs(_z(frac_mask, 0.8 + 0.1 / V, s)) > 5:
            raise AssertionError(f"{name}: {frac_mask:.3f} of the selected tokens became [MASK]; expected 0.8")
        if abs(_z(frac_same, 0.1 + 0.1 / V, s)) > 5:
            raise AssertionError(f"{name}: {frac_same:.3f} of the selected tokens are unchanged; expected 0.1 "
                                 "(80% [MASK], 10% random, 10% unchanged)")
        n_cases += 1
    passed("mlm_corrupt", n_cases)


# ----------------------------------------------------------------------------- task 2
def _documents():
    # a sentence is (document, index): the check can tell where every B came from
    return [[(d, i) for i in range(n)] for d, n in enumerate((6, 9, 4, 12, 7, 5))]


def check_nsp_examples(nsp_examples_fn) -> None:
    """Task 2: ``(A, B, is_next)``; half IsNext (B follows A), half NotNext (B from another document)."""
    docs = _documents()
    n_cases = 0
    for n_pairs, seed in ((2000, 0), (2000, 1)):
        name = f"nsp_examples(6 documents, {n_pairs}, seed={seed})"
        pairs = _call("nsp_examples", nsp_examples_fn, [list(d) for d in docs], n_pairs, seed)
        pairs = list(pairs) if not isinstance(pairs, list) else pairs
        if len(pairs) != n_pairs:
            raise AssertionError(f"{name}: expected {n_pairs} pairs; got {len(pairs)}")
        same_doc_negatives = 0
        for a, b, y in pairs:
            if y not in (0, 1, True, False):
                raise AssertionError(f"{name}: is_next must be 0 or 1; got {y!r}")
            if y == 1 and not (b[0] == a[0] and b[1] == a[1] + 1):
                raise AssertionError(f"{name}: a pair labelled IsNext whose B is not the sentence after A "
                                     f"(A = sentence {a[1]} of document {a[0]}, B = sentence {b[1]} of document {b[0]})")
            if y == 0 and b[0] == a[0]:
                same_doc_negatives += 1
        if same_doc_negatives:
            raise AssertionError(f"{name}: {same_doc_negatives} NotNext pairs take B from the SAME document as A: "
                                 "draw negatives from a different document")
        frac = sum(int(p[2]) for p in pairs) / n_pairs
        if abs(_z(frac, 0.5, n_pairs)) > 5:
            raise AssertionError(f"{name}: {frac:.3f} of the pairs are IsNext; expected 0.5")
        n_cases += 1
    passed("nsp_examples", n_cases)


# ----------------------------------------------------------------------------- task 3
def check_extract_features(extract_features_fn) -> None:
    """Task 3: the state at the last real token, under left and right padding."""
    g = torch.Generator().manual_seed(14)
    cases = []
    shapes = [("left", [5, 2, 7, 7]), ("right", [5, 2, 7, 3]), ("right", [1, 6, 6]), ("left", [4, 4])]
    for _ in range(2):                                      # unseen batches, either side
        lengths = torch.randint(1, 12, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
        shapes.append(("left" if torch.rand(1, generator=g) < 0.5 else "right", lengths))
    for side, lengths in shapes:
        _, att = P.encode_batch([[3] * n for n in lengths], side=side)
        cases.append((side, torch.randn(len(lengths), att.shape[1], 8, generator=g, dtype=torch.float64), att))
    for side, hidden, att in cases:
        name = f"extract_features(hidden {tuple(hidden.shape)}, {side}-padded mask)"
        got = expect_tensor(name, _call("extract_features", extract_features_fn, hidden.clone(), att.clone()),
                            (hidden.shape[0], hidden.shape[2]), hidden.dtype)
        B = hidden.shape[0]
        lengths = att.sum(1)
        expect_close(name, got, P.gather_extract(hidden, att), mistakes={
            "read the last column: with right padding that is a padding token; read the last REAL token":
                hidden[:, -1],
            "read the first column: GPT's head reads the extract token, the last real token":
                hidden[:, 0],
            "read the first real token: GPT's head reads the extract token, the LAST real token":
                hidden[torch.arange(B), att.argmax(1)],
            "index = length: off by one, the last real token of a right-padded row is at length − 1":
                hidden[torch.arange(B), lengths.clamp(max=hidden.shape[1] - 1)],
            "index = length − 1 for every row: right only under right padding; under left padding the last "
            "real token is in the last column": hidden[torch.arange(B), lengths - 1],
            "mean over the real tokens: GPT reads one state, the extract token's":
                (hidden * att[..., None]).sum(1) / lengths[:, None],
        })
    passed("extract_features", len(cases))


# ----------------------------------------------------------------------------- task 4
POOL = [("two", "deux"), ("three", "trois"), ("cat", "chat"), ("dog", "chien"), ("house", "maison"),
        ("water", "eau"), ("bread", "pain"), ("cheese", "fromage"), ("sea otter", "loutre de mer")]


def check_k_shot_prompt(k_shot_prompt_fn) -> None:
    """Task 4: instruction, k demonstrations from the pool (never the query's own), ``query =>``."""
    instruction = "Translate English to French:"
    pool_lines = {f"{x} => {y}" for x, y in POOL}
    n_cases = 0
    for query_index, k, seed in ((7, 0, 0), (7, 1, 0), (2, 3, 1), (0, 5, 2), (8, 8, 3)):
        name = f"k_shot_prompt(pool of {len(POOL)}, query_index={query_index}, k={k}, seed={seed})"
        prompt = _call("k_shot_prompt", k_shot_prompt_fn, instruction, list(POOL), query_index, k, seed)
        if not isinstance(prompt, str):
            raise AssertionError(f"{name}: expected a string; got {type(prompt).__name__}")
        q, answer = POOL[query_index]
        lines = prompt.strip("\n").split("\n")
        if lines[-1].strip() == f"{q} => {answer}" or prompt.rstrip().endswith(answer):
            raise AssertionError(f"{name}: the prompt ends with the answer {answer!r}: it must end with "
                                 f"'{q} =>' and leave the answer to the model")
        if f"{q} => {answer}" in lines:
            raise AssertionError(f"{name}: the query's own example '{q} => {answer}' is among the demonstrations: "
                                 "the answer leaks into the prompt — draw the k examples from the rest of the pool")
        if lines[0] != instruction:
            raise AssertionError(f"{name}: the first line must be the instruction {instruction!r}; got {lines[0]!r}")
        if lines[-1] != f"{q} =>":
            raise AssertionError(f"{name}: the last line must be '{q} =>'; got {lines[-1]!r}")
        demos = lines[1:-1]
        if len(demos) != k:
            raise AssertionError(f"{name}: expected {k} demonstrations between the instruction and the query; "
                                 f"got {len(demos)}")
        bad = [d for d in demos if d not in pool_lines]
        if bad:
            raise AssertionError(f"{name}: {bad[0]!r} is not 'input => output' of a pool example")
        if len(set(demos)) != len(demos):
            raise AssertionError(f"{name}: a demonstration is repeated: draw k distinct examples")
        n_cases += 1
    passed("k_shot_prompt", n_cases)


# ----------------------------------------------------------------------------- task 5
def check_l3_loss(l3_loss_fn) -> None:
    """Task 5: L3 = L2 + λ·L1, L1 over the real next tokens of a left-padded batch."""
    g = torch.Generator().manual_seed(140)
    n_cases = 0
    for lengths, lam in (([6, 3, 5], 0.5), ([4, 4], 0.5), ([7, 2, 5, 1 + 1], 2.0)):
        _, att = P.encode_batch([[1] * n for n in lengths])
        B, T = att.shape
        V, C = 11, 3
        ids = torch.randint(1, V, (B, T), generator=g).masked_fill(att == 0, 0)
        lm_logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
        class_logits = torch.randn(B, C, generator=g, dtype=torch.float64) * 2
        labels = torch.randint(C, (B,), generator=g)
        name = f"l3_loss(batch of {B}, T={T}, lam={lam})"
        got = expect_number(name, _call("l3_loss", l3_loss_fn, lm_logits.clone(), class_logits.clone(), ids.clone(),
                                               att.clone(), labels.clone(), lam))
        ref = P.gpt_objectives(lm_logits, class_logits, ids, labels, att, lam=lam)
        L2 = ref["L2"]
        flat = lm_logits[:, :-1].reshape(-1, V)
        L1_pad = F.cross_entropy(flat, ids[:, 1:].reshape(-1))
        L1_unshifted = F.cross_entropy(lm_logits.reshape(-1, V), ids.masked_fill(att == 0, IGNORE_INDEX).reshape(-1),
                                       ignore_index=IGNORE_INDEX)
        want = ref["L3"].reshape(1)
        expect_close(name, torch.tensor([got], dtype=torch.float64), want, atol=1e-6, rtol=1e-6, mistakes={
            "L1 counts the padding targets: ignore positions where attention_mask is 0":
                (L2 + lam * L1_pad).reshape(1),
            "L1 not shifted: the logits at t predict the token at t + 1":
                (L2 + lam * L1_unshifted).reshape(1),
            "λ multiplies L2: L3 = L2 + λ·L1": (ref["L1"] + lam * L2).reshape(1),
            "L2 alone: add λ·L1, the language-modelling loss": L2.reshape(1),
            "L1 alone: add L2, the task loss": ref["L1"].reshape(1),
            "sign: return the losses to minimise (negated log-likelihoods), L2 + λ·L1": (-ref["L3"]).reshape(1),
        })
        n_cases += 1
    passed("l3_loss", n_cases)


# ----------------------------------------------------------------------------- task 6 (transfer)
def _predictive(table: torch.Tensor, xs, ys, x_query: int, n_outputs: int, *, examples=None,
                per_output: bool = False, normalise: bool = True) -> torch.Tensor:
    """p(y | examples, x_query) under a uniform prior over the rows of ``table`` (and the known mistakes)."""
    pairs = list(zip(xs, ys)) if examples is None else examples
    consistent = torch.ones(table.shape[0], dtype=torch.bool)
    for x, y in pairs:
        consistent &= table[:, x] == y
    votes = torch.bincount(table[consistent, x_query], minlength=n_outputs).double()
    if per_output:
        votes = (votes > 0).double()
    return votes / votes.sum() if normalise else votes


def _icl_case(g: torch.Generator):
    F_, X, Y = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((4, 13), (4, 11), (2, 6)))
    table = torch.randint(Y, (F_, X), generator=g)
    f = int(torch.randint(F_, (1,), generator=g))
    k = int(torch.randint(0, 4, (1,), generator=g))
    xs = torch.randint(X, (k,), generator=g).tolist()
    return table, xs, [int(table[f, x]) for x in xs], int(torch.randint(X, (1,), generator=g)), Y


def check_ideal_predictive(ideal_predictive_fn) -> None:
    """Task 6: the posterior predictive of the ideal in-context learner, on function tables drawn here."""
    g = torch.Generator().manual_seed(146)
    table = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0], [0, 2, 0, 2], [3, 3, 3, 3], [0, 1, 0, 1]])
    cases = [(table, [], [], 1, 4), (table, [0], [0], 1, 4), (table, [0, 2], [0, 0], 3, 4), (table, [2, 0], [0, 0], 3, 4)]
    cases += [_icl_case(g) for _ in range(40)]
    for table, xs, ys, xq, Y in cases:
        name = f"ideal_predictive(table {tuple(table.shape)}, {len(xs)} examples, x_query={xq})"
        got = call_student(ideal_predictive_fn, table.clone(), list(xs), list(ys), xq, Y, name="ideal_predictive")
        if not isinstance(got, torch.Tensor):
            got = torch.as_tensor(got)
        got = expect_tensor(name, got.double(), (Y,))
        total = float(got.sum())
        want = _predictive(table, xs, ys, xq, Y)
        if abs(total - 1) > 1e-6 and torch.allclose(got, _predictive(table, xs, ys, xq, Y, normalise=False)):
            raise AssertionError(f"{name}: these are counts of consistent functions (sum {total:g}); "
                                 f"divide by their total to get a probability")
        expect_close(name, got, want, mistakes={
            "uniform over the outputs: the prior is uniform over the FUNCTIONS of the table, not over the answers":
                torch.full((Y,), 1.0 / Y, dtype=torch.float64),
            "only the last example was used to filter the functions: every example must agree":
                _predictive(table, xs, ys, xq, Y, examples=list(zip(xs, ys))[-1:]),
            "the examples were ignored: the prediction must be conditioned on them":
                _predictive(table, xs, ys, xq, Y, examples=[]),
            "each possible answer counted once: weight each consistent FUNCTION once — "
            "two functions that give the same answer make it twice as likely":
                _predictive(table, xs, ys, xq, Y, per_output=True),
        }, atol=1e-6, rtol=0)
    passed("ideal_predictive", len(cases))
