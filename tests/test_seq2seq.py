"""course_lib.experiments.seq2seq: the reversal task, the model's measurements, the quick command
learning, and the saved checkpoint reproducing its saved results (Chapter 2)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from course_lib.experiments import seq2seq as X

TINY = dataclasses.replace(X.QUICK, seq_len=5, n_eval=16)


def test_batches_reverse_or_copy_and_shift_the_decoder_input():
    g = torch.Generator().manual_seed(0)
    src, tgt_in, tgt = X.make_batch(TINY, 7, g)
    assert src.shape == tgt_in.shape == tgt.shape == (7, 5)
    assert torch.equal(tgt, src.flip(1))
    assert (tgt_in[:, 0] == TINY.bos).all() and torch.equal(tgt_in[:, 1:], tgt[:, :-1])
    assert int(src.max()) < TINY.n_symbols
    src, _, tgt = X.make_batch(dataclasses.replace(TINY, task="copy"), 3, g)
    assert torch.equal(src, tgt)
    assert X.expected_source_position("reverse", 4).tolist() == [3, 2, 1, 0]
    assert X.expected_source_position("copy", 4).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="task"):
        X.make_batch(dataclasses.replace(TINY, task="sort"), 2, g)


def test_cross_attention_maps_are_the_decoder_layers_own_weights():
    torch.manual_seed(0)
    model = X.Seq2Seq(dataclasses.replace(TINY, n_layers=2)).eval()
    src, tgt_in, _ = X.make_batch(model.settings, 3, torch.Generator().manual_seed(1))
    maps = X.cross_attention_maps(model, src, tgt_in)
    assert len(maps) == 2 and maps[0].shape == (3, TINY.n_heads, 5, 5)
    assert torch.allclose(maps[1].sum(-1), torch.ones(3, TINY.n_heads, 5), atol=1e-5)
    # the hook recomputes what the first decoder layer's cross-attention saw (post-norm: norm1's output)
    with torch.no_grad():
        memory = model.encode(src)
        layer = model.decoder[0]
        x = model._embed(tgt_in)
        from course_lib.masks import causal_mask
        x = layer.norm1(x + layer.self_attn(x, mask=causal_mask(5)))
        _, want = layer.cross_attn(x, memory, return_weights=True)
    assert torch.allclose(maps[0], want, atol=1e-6)
    assert all(not layer.cross_attn._forward_hooks for layer in model.decoder), "hooks must be removed"


def test_greedy_decoding_feeds_back_its_own_tokens():
    torch.manual_seed(0)
    model = X.Seq2Seq(TINY).eval()
    src, _, _ = X.make_batch(TINY, 4, torch.Generator().manual_seed(2))
    out = X.greedy_decode(model, src)
    assert out.shape == (4, 5)
    bos = torch.full((4, 1), TINY.bos)
    with torch.no_grad():
        again = model(src, torch.cat([bos, out[:, :-1]], 1)).argmax(-1)
    assert torch.equal(out, again)


def test_quick_command_learns_to_reverse_and_its_json_reproduces(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    res = X.main(["--quick", "--out", str(tmp_path)])
    saved = X.load_results(tmp_path / "seq2seq_reverse.json")
    assert saved["meta"]["command"] == "python -m course_lib.experiments.seq2seq --quick --out " + str(tmp_path)
    assert (tmp_path / "seq2seq_reverse.png").is_file()
    # it learned: chance is 1/8 per token and 8^-6 per sequence, 1/6 for the argmax position
    assert saved["token_accuracy"] > 0.8 and saved["exact_match"] > 0.5
    assert saved["loss"] < 0.5 * saved["chance_loss"]
    assert max(saved["argmax_on_expected"][-1]) > 0.6
    assert saved["train_loss"][-1] < 0.5 * saved["train_loss"][0]
    # the checkpoint holds what the JSON describes
    model, s = X.load_model(tmp_path / "ch02_reverse.pt")
    assert dataclasses.asdict(s) == saved["settings"] == res["settings"]
    again = X.evaluate(model, s)
    for key in ("exact_match", "token_accuracy", "loss"):
        assert again[key] == pytest.approx(saved[key], abs=2e-3), key


def test_saved_checkpoint_reproduces_the_saved_results():
    saved = X.load_results()
    path = X.CHECKPOINT_DIR / saved["checkpoint"]
    assert path.stat().st_size < 1_000_000, "the checkpoint should stay a few hundred KB"
    model, s = X.load_model(path)
    assert dataclasses.asdict(s) == saved["settings"]
    again = X.evaluate(model, s)
    for key in ("exact_match", "token_accuracy", "loss"):
        assert again[key] == pytest.approx(saved[key], abs=2e-3), key
    for got, want in zip(again["argmax_on_expected"], saved["argmax_on_expected"]):
        assert got == pytest.approx(want, abs=2e-3)
    json.dumps(again)


def test_load_model_names_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="path"):
        X.load_model(tmp_path / "nope.pt")
