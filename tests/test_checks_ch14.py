"""The Exercise 14 checks pass the reference answers and name the likely mistake otherwise."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from course_lib import pretraining as P
from course_lib.grading import ch14
from helpers import stub


# Hand-written answers: a check refuses answers that call the library it compares with.
def _mlm(input_ids, *, mask_token_id, vocab_size, special_token_ids, attention_mask=None, generator=None,
         mlm_probability=0.15):
    eligible = ~torch.isin(input_ids, torch.tensor(list(special_token_ids), dtype=input_ids.dtype))
    if attention_mask is not None:
        eligible &= attention_mask.bool()
    selected = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & eligible
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    to_mask = (torch.rand(input_ids.shape, generator=generator) < 0.8) & selected
    to_random = (torch.rand(input_ids.shape, generator=generator) < 0.5) & selected & ~to_mask
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    return torch.where(to_random, random_ids, input_ids.masked_fill(to_mask, mask_token_id)), labels


def _nsp(documents, n_pairs, seed, p_next=0.5):
    rng = random.Random(seed)
    with_next = [d for d, doc in enumerate(documents) if len(doc) >= 2]
    pairs = []
    for _ in range(n_pairs):
        d = rng.choice(with_next)
        i = rng.randrange(len(documents[d]) - 1)
        if rng.random() < p_next:
            pairs.append((documents[d][i], documents[d][i + 1], 1))
        else:
            other = rng.choice([e for e in range(len(documents)) if e != d])
            pairs.append((documents[d][i], rng.choice(documents[other]), 0))
    return pairs


def _prompt(instruction, demos, query):
    return "\n".join([instruction] + [f"{x} => {y}" for x, y in demos] + [f"{query} =>"])


# ----------------------------------------------------------------------------- task 1
def mlm_ok(input_ids, attention_mask, *, mask_token_id, vocab_size, special_token_ids, generator=None):
    return _mlm(input_ids, mask_token_id=mask_token_id, vocab_size=vocab_size,
                    special_token_ids=special_token_ids, attention_mask=attention_mask, generator=generator)


def mlm_all_positions(input_ids, attention_mask, **kw):      # forgets the padding mask
    return mlm_ok(input_ids, None, **{**kw, "special_token_ids": tuple(kw["special_token_ids"])[1:]})


def mlm_rate_of_all(input_ids, attention_mask, *, mask_token_id, vocab_size, special_token_ids, generator=None):
    # padding excluded, but 15% of ALL positions selected: the rate among real tokens is too high
    real = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(special_token_ids))
    p = 0.15 * real.numel() / real.sum().item()
    return _mlm(input_ids, mlm_probability=p, mask_token_id=mask_token_id, vocab_size=vocab_size,
                    special_token_ids=special_token_ids, attention_mask=attention_mask, generator=generator)


def mlm_labels_after(input_ids, attention_mask, **kw):
    masked, labels = mlm_ok(input_ids, attention_mask, **kw)
    return masked, torch.where(labels != -100, masked, labels)


def mlm_all_masked(input_ids, attention_mask, *, mask_token_id, **kw):
    masked, labels = mlm_ok(input_ids, attention_mask, mask_token_id=mask_token_id, **kw)
    return torch.where(labels != -100, torch.full_like(masked, mask_token_id), masked), labels


def test_mlm_passes(capsys):
    ch14.check_mlm_corrupt(mlm_ok)
    assert capsys.readouterr().out == "✓ mlm_corrupt: all 2 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "mlm_corrupt is not implemented yet"),
    (mlm_all_positions, "padding positions selected"),
    (mlm_rate_of_all, "15% of ALL positions"),
    (lambda i, a, **kw: mlm_ok(i, a, **{**kw, "special_token_ids": (0,)}), "special tokens"),
    (mlm_labels_after, "ORIGINAL id"),
    (mlm_all_masked, "became \\[MASK\\]"),
    (lambda i, a, **kw: mlm_ok(i, a, **kw)[0], "expected a pair"),
])
def test_mlm_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch14.check_mlm_corrupt(wrong)


# ----------------------------------------------------------------------------- task 2
def nsp_ok(documents, n_pairs, seed):
    return _nsp(documents, n_pairs, seed)


def nsp_same_document(documents, n_pairs, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n_pairs):
        doc = rng.choice(documents)
        i = rng.randrange(len(doc) - 1)
        if rng.random() < 0.5:
            out.append((doc[i], doc[i + 1], 1))
        else:
            out.append((doc[i], rng.choice(doc), 0))
    return out


def nsp_all_true(documents, n_pairs, seed):
    return _nsp(documents, n_pairs, seed, p_next=0.9)


def nsp_random_positive(documents, n_pairs, seed):
    return [(a, b, 1 - y) for a, b, y in _nsp(documents, n_pairs, seed)]


def test_nsp_passes(capsys):
    ch14.check_nsp_examples(nsp_ok)
    assert capsys.readouterr().out == "✓ nsp_examples: all 2 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "nsp_examples is not implemented yet"),
    (nsp_same_document, "SAME document"),
    (nsp_all_true, "expected 0.5"),
    (nsp_random_positive, "labelled IsNext whose B is not the sentence after A"),
    (lambda d, n, s: nsp_ok(d, n, s)[:-1], "expected 2000 pairs"),
])
def test_nsp_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch14.check_nsp_examples(wrong)


# ----------------------------------------------------------------------------- task 3
def extract_ok(hidden, attention_mask):
    last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(1)
    return hidden[torch.arange(hidden.shape[0]), last]


def test_extract_passes(capsys):
    ch14.check_extract_features(extract_ok)
    assert capsys.readouterr().out == "✓ extract_features: all 6 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "extract_features is not implemented yet"),
    (lambda h, a: h[:, -1], "read the last column"),
    (lambda h, a: h[:, 0], "read the first column"),
    (lambda h, a: h[torch.arange(h.shape[0]), a.sum(1) - 1], "length − 1 for every row"),
    (lambda h, a: (h * a[..., None]).sum(1) / a.sum(1, keepdim=True), "mean over the real tokens"),
    (lambda h, a: extract_ok(h, a).float(), "expected dtype"),
])
def test_extract_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch14.check_extract_features(wrong)


# ----------------------------------------------------------------------------- task 4
def prompt_ok(instruction, pool, query_index, k, seed):
    rest = [ex for i, ex in enumerate(pool) if i != query_index]
    demos = random.Random(seed).sample(rest, k)
    return _prompt(instruction, demos, pool[query_index][0])


def prompt_leaks_example(instruction, pool, query_index, k, seed):
    demos = random.Random(seed).sample(pool, k - 1) if k else []
    return _prompt(instruction, demos + [pool[query_index]] if k else demos, pool[query_index][0])


def prompt_with_answer(instruction, pool, query_index, k, seed):
    return prompt_ok(instruction, pool, query_index, k, seed) + " " + pool[query_index][1]


def test_prompt_passes(capsys):
    ch14.check_k_shot_prompt(prompt_ok)
    assert capsys.readouterr().out == "✓ k_shot_prompt: all 5 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "k_shot_prompt is not implemented yet"),
    (prompt_leaks_example, "answer leaks"),
    (prompt_with_answer, "ends with the answer"),
    (lambda i, p, q, k, s: prompt_ok(i, p, q, max(0, k - 1), s), "demonstrations"),
    (lambda i, p, q, k, s: prompt_ok(i, p, q, k, s).replace(" => ", ": "), "=>"),
    (lambda i, p, q, k, s: prompt_ok("", p, q, k, s), "instruction"),
])
def test_prompt_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch14.check_k_shot_prompt(wrong)


# ----------------------------------------------------------------------------- task 5
def l3_ok(lm_logits, class_logits, input_ids, attention_mask, labels, lam):
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    L1 = F.cross_entropy(lm_logits[:, :-1].reshape(-1, lm_logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    return F.cross_entropy(class_logits, labels) + lam * L1


def l3_padding_counted(lm_logits, class_logits, input_ids, attention_mask, labels, lam):
    L1 = F.cross_entropy(lm_logits[:, :-1].reshape(-1, lm_logits.shape[-1]), input_ids[:, 1:].reshape(-1))
    return F.cross_entropy(class_logits, labels) + lam * L1


def l3_lam_on_l2(lm_logits, class_logits, input_ids, attention_mask, labels, lam):
    L3 = l3_ok(lm_logits, class_logits, input_ids, attention_mask, labels, 1.0)
    L2 = F.cross_entropy(class_logits, labels)
    return (L3 - L2) + lam * L2


def test_l3_passes(capsys):
    ch14.check_l3_loss(l3_ok)
    assert capsys.readouterr().out == "✓ l3_loss: all 3 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "l3_loss is not implemented yet"),
    (l3_padding_counted, "counts the padding"),
    (l3_lam_on_l2, "λ multiplies L2"),
    (lambda lm, c, i, a, y, lam: F.cross_entropy(c, y), "L2 alone"),
    (lambda *args: -l3_ok(*args), "sign"),
    (lambda *args: l3_ok(*args) + 0.01, "wrong values"),
])
def test_l3_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch14.check_l3_loss(wrong)


# ----------------------------------------------------------------------------- task 6
def predictive_ok(table, xs, ys, x_query, n_outputs, *, last_only=False, ignore=False, per_output=False,
                  counts=False, uniform=False, weak=False):
    if uniform:
        return torch.full((n_outputs,), 1.0 / n_outputs)
    if weak and table.shape != (5, 4):                 # right on the sheet's small table only
        return torch.full((n_outputs,), 1.0 / n_outputs)
    pairs = list(zip(xs, ys))
    pairs = [] if ignore else (pairs[-1:] if last_only else pairs)
    consistent = torch.ones(table.shape[0], dtype=torch.bool)
    for x, y in pairs:
        consistent &= table[:, x] == y
    votes = torch.bincount(table[consistent, x_query], minlength=n_outputs).float()
    if per_output:
        votes = (votes > 0).float()
    return votes if counts else votes / votes.sum()


def test_ideal_predictive_passes(capsys):
    ch14.check_ideal_predictive(predictive_ok)
    assert capsys.readouterr().out == "✓ ideal_predictive: all 44 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "ideal_predictive is not implemented yet"),
    (lambda *a: predictive_ok(*a, uniform=True), "the prior is uniform over the FUNCTIONS"),
    (lambda *a: predictive_ok(*a, last_only=True), "only the last example"),
    (lambda *a: predictive_ok(*a, ignore=True), "the examples were ignored"),
    (lambda *a: predictive_ok(*a, per_output=True), "each possible answer counted once"),
    (lambda *a: predictive_ok(*a, counts=True), "counts of consistent functions"),
    (lambda *a: predictive_ok(*a, weak=True), "the prior is uniform over the FUNCTIONS"),
    (lambda *a: predictive_ok(*a)[:-1], "expected shape"),
])
def test_ideal_predictive_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch14.check_ideal_predictive(wrong)


# ----------------------------------------------------------------------------- calling the library scores nothing
from course_lib import masks as M  # noqa: E402


def mlm_by_library(input_ids, attention_mask, *, mask_token_id, vocab_size, special_token_ids, generator=None):
    return M.mlm_mask(input_ids, mask_token_id=mask_token_id, vocab_size=vocab_size,
                      special_token_ids=special_token_ids, generator=generator)


@pytest.mark.parametrize("check, answer", [
    (ch14.check_mlm_corrupt, mlm_by_library),
    (ch14.check_nsp_examples, lambda documents, n_pairs, seed: P.nsp_pairs(documents, n_pairs, seed=seed)),
    (ch14.check_extract_features, lambda hidden, attention_mask: P.gather_extract(hidden, attention_mask)),
    (ch14.check_k_shot_prompt, lambda instruction, pool, query_index, k, seed: P.few_shot_prompt(instruction, pool[:k], pool[query_index][0])),
    (ch14.check_l3_loss, lambda lm, cl, ids, att, y, lam: P.gpt_objectives(lm, cl, ids, y, att, lam=lam)["L3"]),
])
def test_calling_the_library_scores_nothing(check, answer):
    with pytest.raises(AssertionError, match="the library .* does the work here"):
        check(answer)
