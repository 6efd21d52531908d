"""course_lib.data (corpus, tokenizer, batches) and course_lib.train (training loop, evaluation)."""

from __future__ import annotations

import pytest
import torch

from course_lib.data import STDLIB_FILES, CharCorpus, CharTokenizer, corpus_fingerprint, load_stdlib_text

TEXT = "def f(x):\n    return x + 1\n\nclass A:\n    pass\n" * 20


# ----------------------------------------------------------------------------- tokenizer
def test_tokenizer_vocab_order_and_roundtrip():
    tok = CharTokenizer.from_text("cab\nba")
    assert tok.itos == ["<pad>", "<unk>", "\n", "a", "b", "c"]      # specials, then code-point order
    assert tok.encode("abc\n") == [3, 4, 5, 2]
    assert tok.decode(tok.encode("abc\n")) == "abc\n"
    assert CharTokenizer.from_text("ba\nc").itos == tok.itos        # order does not depend on the text's order


def test_tokenizer_unknown_and_pad():
    tok = CharTokenizer.from_text("abc")
    assert tok.encode("aZ") == [2, tok.unk_id]
    assert tok.decode([tok.pad_id, 2, tok.unk_id]) == "a\ufffd"
    assert tok.vocab_size == 5
    with pytest.raises(ValueError, match=r"ids: expected ids in \[0, 5\); got 7"):
        tok.decode([7])


def test_tokenizer_min_count_and_state():
    tok = CharTokenizer.from_text("aaab", min_count=2)
    assert tok.itos == ["<pad>", "<unk>", "a"]
    again = CharTokenizer.from_state_dict(tok.state_dict())
    assert again.itos == tok.itos
    with pytest.raises(ValueError, match="min_count: expected a positive int"):
        CharTokenizer.from_text("a", min_count=0)


# ----------------------------------------------------------------------------- corpus
def test_stdlib_corpus_is_deterministic():
    text, files = load_stdlib_text()
    assert files == [f for f in STDLIB_FILES if f in files] and len(files) >= 30
    assert "def " in text and "class " in text and len(text) > 500_000
    assert load_stdlib_text()[0] == text
    assert corpus_fingerprint(text) == corpus_fingerprint(load_stdlib_text()[0])
    assert corpus_fingerprint(text) != corpus_fingerprint(text + " ")


def test_corpus_split_and_batches():
    c = CharCorpus(TEXT, val_fraction=0.25)
    n = len(TEXT)
    assert len(c.train) + len(c.val) == n and len(c.val) == n // 4
    assert c.tokenizer.decode(torch.cat([c.train, c.val])) == TEXT    # contiguous, in order
    g = torch.Generator().manual_seed(0)
    x, y = c.get_batch("train", 4, 16, g)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])                            # targets are inputs shifted by one
    x2, _ = c.get_batch("train", 4, 16, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)                                         # seeded
    with pytest.raises(ValueError, match="split: expected 'train' or 'val'"):
        c.get_batch("test", 1, 4)
    with pytest.raises(ValueError, match="seq_len: expected at most"):
        c.get_batch("val", 1, 10_000)


def test_sequential_batches_cover_the_split():
    c = CharCorpus(TEXT, val_fraction=0.5)
    xs = list(c.sequential_batches("val", 3, 10))
    x = torch.cat([b[0] for b in xs])
    y = torch.cat([b[1] for b in xs])
    n = (len(c.val) - 1) // 10
    assert x.shape == (n, 10) and torch.equal(x.flatten(), c.val[: n * 10]) and torch.equal(y.flatten(), c.val[1: n * 10 + 1])
    assert len(list(c.sequential_batches("val", 3, 10, max_batches=1))) == 1


# ----------------------------------------------------------------------------- training
from course_lib.model import DecoderLM, ModelConfig  # noqa: E402
from course_lib.train import evaluate, load_checkpoint, lr_at, save_checkpoint, train  # noqa: E402


def tiny_model(vocab_size: int) -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=vocab_size, d_model=32, n_layers=1, n_heads=2, max_seq_len=32))


def test_lr_schedule():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1) and lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.1)                 # cosine down to 10%
    assert lr_at(55, 100, 1.0, 10) == pytest.approx(0.55)                 # half-way: the mean of 1 and 0.1


def test_training_lowers_the_loss_and_is_seeded():
    c = CharCorpus(TEXT, val_fraction=0.25)
    m = tiny_model(c.vocab_size)
    before = evaluate(m, c, 16)
    assert before == pytest.approx(torch.log(torch.tensor(float(c.vocab_size))).item(), abs=0.3)  # ≈ uniform at init
    hist = train(m, c, 60, batch_size=8, seq_len=16, lr=1e-2, progress=False)
    after = evaluate(m, c, 16)
    assert len(hist) == 60 and after < before - 1.0 and sum(hist[-5:]) < sum(hist[:5])
    assert evaluate(m, c, 16) == after                                     # evaluation is deterministic
    m2 = tiny_model(c.vocab_size)
    assert train(m2, c, 60, batch_size=8, seq_len=16, lr=1e-2, progress=False) == hist
    with pytest.raises(ValueError, match="seq_len: expected at most the model's max_seq_len = 32; got 64"):
        train(m, c, 1, seq_len=64, progress=False)


def test_checkpoint_roundtrip(tmp_path):
    c = CharCorpus(TEXT, val_fraction=0.25)
    m = tiny_model(c.vocab_size)
    save_checkpoint(tmp_path / "m.pt", m, c.tokenizer, note="x")
    m2, tok, meta = load_checkpoint(tmp_path / "m.pt")
    ids = torch.tensor([c.tokenizer.encode("def f(x):")])
    assert torch.equal(m(ids), m2(ids)) and tok.itos == c.tokenizer.itos and meta == {"note": "x"}
    assert m2.lm_head.weight is m2.tok_emb.weight
    with pytest.raises(ValueError, match="path: no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
