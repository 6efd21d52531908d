"""course_lib.pretraining: GPT's head and objectives, BERT's encoder, MLM/NSP data, prompting, ICL data."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import pretraining as P
from course_lib.masks import IGNORE_INDEX, causal_lm_loss
from course_lib.model import DecoderLM, ModelConfig

V = 40
CLS, SEP, MASK = 37, 38, 39


def tiny_lm(vocab=V, **kw):
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, max_seq_len=64, **kw)).eval()


def tiny_bert():
    torch.manual_seed(0)
    return P.BertForPreTraining(V, d_model=32, n_layers=2, n_heads=4, max_position=64).eval()


# ----------------------------------------------------------------------------- MLM
def test_mlm_batch_rates_and_never_padding_or_special():
    g = torch.Generator().manual_seed(0)
    B, L = 400, 64
    ids = torch.randint(2, 37, (B, L), generator=g)
    lengths = torch.randint(10, L + 1, (B,), generator=g)
    att = (torch.arange(L)[None] < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids = ids.masked_fill(att == 0, 0)
    masked, labels = P.mlm_batch(ids, att, mask_token_id=MASK, vocab_size=V, special_token_ids=(0, CLS, SEP),
                                 generator=g)
    selected = labels != IGNORE_INDEX
    eligible = (att == 1) & (ids != CLS)
    assert not (selected & ~eligible).any(), "selected padding or [CLS]"
    n = int(eligible.sum())
    rate = selected.sum().item() / n
    assert abs(rate - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n)
    s = int(selected.sum())
    frac_mask = (masked[selected] == MASK).float().mean().item()
    frac_same = (masked[selected] == ids[selected]).float().mean().item()
    assert abs(frac_mask - 0.8) < 4 * math.sqrt(0.8 * 0.2 / s)
    # unchanged: 10% kept + the random draws that hit the original id (1/V of 10%)
    assert abs(frac_same - (0.1 + 0.1 / V)) < 4 * math.sqrt(0.1 * 0.9 / s)
    assert torch.equal(masked[~selected], ids[~selected]), "an unselected token changed"
    assert torch.equal(labels[selected], ids[selected])


# ----------------------------------------------------------------------------- NSP
def test_nsp_pairs_half_true_next_and_negatives_from_other_documents():
    docs = [[(d, i) for i in range(5 + d)] for d in range(6)]     # sentence = (document, index)
    pairs = P.nsp_pairs(docs, 4000, seed=1)
    is_next = torch.tensor([p[2] for p in pairs]).float()
    assert abs(is_next.mean().item() - 0.5) < 4 * math.sqrt(0.25 / 4000)
    for a, b, y in pairs:
        if y == 1:
            assert b[0] == a[0] and b[1] == a[1] + 1
        else:
            assert b[0] != a[0], "negative drawn from the same document"
    with pytest.raises(ValueError, match="documents"):
        P.nsp_pairs([[1, 2, 3]], 3)
    with pytest.raises(ValueError, match="p_next"):
        P.nsp_pairs(docs, 3, p_next=1.5)


def test_bert_input_segments_and_truncation():
    ids, seg = P.bert_input([1, 2, 3, 4, 5, 6], [7, 8], cls_id=CLS, sep_id=SEP, max_len=8)
    assert ids == [CLS, 1, 2, 3, SEP, 7, 8, SEP]
    assert seg == [0, 0, 0, 0, 0, 1, 1, 1]
    ids, seg, att, y = P.collate_pairs([([1, 2], [3], 1), ([4], [5, 6, 7], 0)], cls_id=CLS, sep_id=SEP, max_len=10)
    assert ids.shape == seg.shape == att.shape == (2, 10) and y.tolist() == [1, 0]
    assert att.sum(1).tolist() == [6, 7] and (ids[att == 0] == 0).all()


# ----------------------------------------------------------------------------- encoder vs decoder
def test_encoder_is_bidirectional_and_decoder_is_causal():
    bert, lm = tiny_bert(), tiny_lm()
    ids = torch.randint(2, 37, (1, 12), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[0, 9] = (ids[0, 9] + 1 - 2) % 35 + 2
    with torch.no_grad():
        h1, h2 = bert.bert(ids), bert.bert(changed)
        l1, l2 = lm(ids), lm(changed)
    assert (h1[0, :9] - h2[0, :9]).abs().amax() > 1e-4, "a later token does not reach earlier outputs"
    assert torch.allclose(l1[0, :9], l2[0, :9], atol=1e-6), "the decoder leaks the future"


def test_encoder_ignores_padding_keys():
    bert = tiny_bert()
    ids = torch.randint(2, 37, (1, 10), generator=torch.Generator().manual_seed(4))
    padded = torch.cat([ids, torch.full((1, 4), 5)], 1)
    att = torch.cat([torch.ones(1, 10), torch.zeros(1, 4)], 1).long()
    with torch.no_grad():
        alone = bert.bert(ids)
        pad = bert.bert(padded, attention_mask=att)
    assert torch.allclose(alone, pad[:, :10], atol=1e-5)


def test_bert_heads_shapes_and_loss():
    bert = tiny_bert()
    ids, seg, att, y = P.collate_pairs([([3, 4, 5], [6, 7], 1), ([8], [9, 10, 11], 0)], cls_id=CLS, sep_id=SEP, max_len=12)
    mlm, nsp = bert(ids, seg, att)
    assert mlm.shape == (2, 12, V) and nsp.shape == (2, 2)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 2] = ids[0, 2]
    out = P.bert_pretraining_loss(mlm, nsp, labels, y)
    assert torch.allclose(out["mlm"], F.cross_entropy(mlm[0, 2][None], ids[0, 2][None]))
    assert torch.allclose(out["loss"], out["mlm"] + F.cross_entropy(nsp, y))
    assert set(P.bert_pretraining_loss(mlm, None, labels)) == {"mlm", "loss"}
    with pytest.raises(ValueError, match="is_next"):
        P.bert_pretraining_loss(mlm, nsp, labels)
    with pytest.raises(ValueError, match="mlm_labels"):
        P.bert_pretraining_loss(mlm, nsp, labels[:, :3], y)


# ----------------------------------------------------------------------------- GPT
@given(st.lists(st.integers(1, 9), min_size=1, max_size=5), st.sampled_from(["left", "right"]))
@settings(max_examples=25, deadline=None)
def test_extract_index_is_the_last_real_token(lengths, side):
    ids, att = P.encode_batch([[7] * n for n in lengths], side=side)
    idx = P.extract_index(att)
    T = att.shape[1]
    for r, n in enumerate(lengths):
        assert idx[r] == (T - 1 if side == "left" else n - 1)
        assert att[r, idx[r]] == 1


def test_classifier_reads_the_extract_token_under_left_padding():
    lm = tiny_lm()
    clf = P.GPTClassifier(lm, 3).eval()
    a = P.gpt_input([4, 5, 6, 7], start_id=1, extract_id=2)
    b = P.gpt_input([8, 9], start_id=1, extract_id=2)
    ids, att = P.encode_batch([a, b])
    with torch.no_grad():
        lm_logits, cls = clf(ids, att)
        _, alone = clf(torch.tensor([b]))
        hidden = {}
        h = lm.norm_f.register_forward_hook(lambda m, i, o: hidden.setdefault("h", o))
        lm(ids, attention_mask=att)
        h.remove()
    assert lm_logits.shape == (2, ids.shape[1], V) and cls.shape == (2, 3)
    assert torch.allclose(cls[1], alone[0], atol=1e-5), "the padded row does not give the unpadded answer"
    want = clf.classifier(hidden["h"][:, -1])
    assert torch.allclose(cls, want, atol=1e-6)
    assert not torch.allclose(cls, clf.classifier(hidden["h"][:, 0]), atol=1e-3)


def test_gpt_input_and_objectives():
    assert P.gpt_input([5, 6], [7], start_id=1, delim_id=3, extract_id=2) == [1, 5, 6, 3, 7, 2]
    with pytest.raises(ValueError, match="delim_id"):
        P.gpt_input([5], [6], start_id=1, extract_id=2)
    lm = tiny_lm()
    clf = P.GPTClassifier(lm, 2)
    ids, att = P.encode_batch([[1, 5, 6, 7, 2], [1, 8, 2]])
    lm_logits, cls = clf(ids, att)
    y = torch.tensor([0, 1])
    o = P.gpt_objectives(lm_logits, cls, ids, y, att, lam=0.5)
    assert torch.allclose(o["L2"], F.cross_entropy(cls, y))
    assert torch.allclose(o["L1"], causal_lm_loss(lm_logits, ids.masked_fill(att == 0, IGNORE_INDEX)))
    assert torch.allclose(o["L3"], o["L2"] + 0.5 * o["L1"])
    o["L3"].backward()
    assert clf.classifier.weight.grad.abs().sum() > 0 and lm.tok_emb.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="labels"):
        P.gpt_objectives(lm_logits, cls, ids, y[:1], att)
    with pytest.raises(ValueError, match="lam"):
        P.gpt_objectives(lm_logits, cls, ids, y, att, lam=-1.0)


def test_resize_keeps_the_old_model():
    lm = tiny_lm()
    big = P.resize_token_embeddings(lm, V + 3).eval()
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(big(ids)[..., :V], lm(ids), atol=1e-5)
    assert big.config.vocab_size == V + 3
    with pytest.raises(ValueError, match="vocab_size"):
        P.resize_token_embeddings(lm, V - 1)


def test_value_errors_at_the_edges():
    with pytest.raises(ValueError, match="attention_mask"):
        P.extract_index(torch.tensor([[1, 1], [0, 0]]))
    with pytest.raises(ValueError, match="n_classes"):
        P.GPTClassifier(tiny_lm(), 1)
    with pytest.raises(ValueError, match="transformer"):
        P.GPTClassifier(torch.nn.Linear(2, 2), 2)
    with pytest.raises(ValueError, match="n_heads"):
        P.BertEncoder(V, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="side"):
        P.encode_batch([[1]], side="middle")
    with pytest.raises(ValueError, match="names"):
        P.special_ids(10, ["[CLS]", "[CLS]"])
    assert P.special_ids(98, ["[CLS]", "[SEP]"]) == {"[CLS]": 98, "[SEP]": 99}


# ----------------------------------------------------------------------------- data and prompting
def test_module_lines_are_labelled_by_file():
    lines = P.module_lines()
    labels = {y for _, y in lines}
    assert labels == set(range(len(P.CLASSIFICATION_FILES)))
    assert all(16 <= len(s) <= 48 for s, _ in lines)
    from course_lib.data import STDLIB_FILES

    assert not set(P.CLASSIFICATION_FILES) & set(STDLIB_FILES), "classification text inside the pre-training corpus"


def test_few_shot_prompt_never_contains_the_answer():
    zero = P.few_shot_prompt("Translate English to French:", [], "cheese")
    assert zero == "Translate English to French:\ncheese =>"
    few = P.few_shot_prompt("Translate English to French:", [("sea otter", "loutre de mer")], "cheese")
    assert few.splitlines() == ["Translate English to French:", "sea otter => loutre de mer", "cheese =>"]
    assert P.icl_prompt([(1, 2), (3, 4)], 5) == [1, 2, 3, 4, 5]


def test_icl_batch_follows_one_function_per_row_and_the_ideal_learner_improves():
    ids, fn = P.icl_batch(64, 6, torch.Generator().manual_seed(0))
    table = P._function_table()
    assert ids.shape == (64, 12)
    assert torch.equal(ids[:, 1::2], table[fn[:, None], ids[:, 0::2]])
    acc = P.ideal_icl_accuracy(6, n_samples=4000)
    assert acc[0] < 0.3 and acc[-1] > 0.9
    assert all(b >= a - 0.02 for a, b in zip(acc, acc[1:]))
