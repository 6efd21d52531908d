"""course_lib.experiments.gqa_uptraining: the quick command uptrains a pooled MQA model, and the saved
results start from the shipped Chapter 4 checkpoint (Chapter 4)."""

from __future__ import annotations

import pytest

from course_lib.data import CharCorpus
from course_lib.experiments import gqa_uptraining as X
from course_lib.model import mha_to_gqa
from course_lib.train import evaluate, load_checkpoint


def test_quick_command_uptraining_lowers_the_pooled_loss(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    res = X.main(["--quick", "--no-progress", "--out", str(tmp_path)])
    saved = X.load_results(tmp_path / "gqa_uptraining.json")
    assert saved["meta"]["command"].endswith("--quick --no-progress --out " + str(tmp_path))
    assert (tmp_path / "gqa_uptraining.png").is_file()
    run = saved["runs"]["1"]
    assert run["steps"] == [0, 3, 6] and len(run["train_loss"]) == X.QUICK.steps
    pooled, up = run["val_loss"][0], run["val_loss"][-1]
    assert pooled > saved["mha_loss"] + 0.5          # pooling to one K/V head costs a lot ...
    assert up < pooled - 0.3                         # ... and a few uptraining steps win much of it back
    assert run["recovered"] == pytest.approx((pooled - up) / (pooled - saved["mha_loss"]), abs=1e-3)
    assert res["settings"] == saved["settings"]


def test_saved_results_start_from_the_shipped_checkpoint():
    """The saved MHA and 'right after conversion' losses are those of the checkpoint in the repository."""
    saved = X.load_results()
    s = saved["settings"]
    model, _, meta = load_checkpoint(X.CHECKPOINT)
    corpus = CharCorpus(min_count=20)
    assert saved["meta"]["corpus_fingerprint"] == corpus.fingerprint() == meta["corpus_fingerprint"]
    assert evaluate(model, corpus, s["seq_len"], max_batches=s["eval_batches"]) == pytest.approx(saved["mha_loss"], abs=2e-3)
    for hkv in s["kv_heads"]:
        pooled = evaluate(mha_to_gqa(model, hkv), corpus, s["seq_len"], max_batches=s["eval_batches"])
        assert pooled == pytest.approx(saved["runs"][str(hkv)]["val_loss"][0], abs=2e-3), hkv
    assert s["steps"] <= 0.1 * s["original_steps"] and saved["checkpoint_steps"] == s["original_steps"]


def test_bad_kv_heads_are_refused():
    with pytest.raises(ValueError, match="kv_heads"):
        X.run(X.Settings(kv_heads=(3,), steps=1), log=lambda *a: None, progress=False)
