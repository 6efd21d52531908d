"""A fast smoke test of course_lib.experiments.extrapolation at tiny sizes (the full run is a command)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from course_lib.data import CharCorpus
from course_lib.experiments import extrapolation as X
from course_lib.model import DecoderLM, ModelConfig

TEXT = "def f(x):\n    return x + 1\n\n" * 400  # a small, repetitive corpus: seconds, not minutes


@pytest.fixture(scope="module")
def corpus():
    return CharCorpus(TEXT)


def tiny(**kw):
    return dataclasses.replace(X.QUICK, train_len=8, factors=(1, 2, 4), steps=6, ft_steps=3, d_model=16,
                               n_layers=1, batch_size=4, eval_tokens=128, **kw)


def test_run_records_every_scheme_length_and_extension(corpus, tmp_path):
    s = tiny(schemes=("none", "learned", "sinusoidal", "relative", "rope", "alibi"))
    res = X.run(s, device="cpu", progress=False, log=lambda *_: None, corpus=corpus)
    assert res["lengths"] == [8, 16, 32]
    for name in s.schemes:
        ev = res["schemes"][name]
        assert set(ev["loss"]) == {"8", "16", "32"}
        assert all(0 < v < 10 for v in ev["loss"].values())
        assert len(ev["per_position"]) == 32 // ev["per_position_bin"]
    for label in X.EXTENSIONS:
        assert set(res["extension"][label]["loss"]) == {"8", "16", "32"}
    assert res["extension"]["scale"] == 4.0
    assert res["meta"]["torch"] == torch.__version__ and res["meta"]["wall_seconds"] > 0
    # the results survive a JSON round trip and plot
    path = tmp_path / "r.json"
    path.write_text(json.dumps(res))
    import matplotlib

    matplotlib.use("Agg")
    fig = X.plot_results(X.load_results(path))
    assert len(fig.axes) == 2
    assert "learned" in X.table(res)


def test_windows_cover_the_same_targets_at_every_length():
    spans = [X.window_starts(1000, 64, 3, n) for n in (8, 16, 64)]
    targets = [sorted(s + 1 + t for s in starts for t in range(n)) for starts, n in zip(spans, (8, 16, 64))]
    assert targets[0] == targets[1] == targets[2] and len(targets[0]) == 3 * 64
    with pytest.raises(ValueError, match="length"):
        X.window_starts(1000, 64, 3, 24)


def test_position_losses_is_the_model_loss(corpus):
    torch.manual_seed(0)
    m = DecoderLM(ModelConfig(vocab_size=corpus.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=64))
    starts = [0, 30, 77, 400, 1000]
    per_pos = X.position_losses(m, corpus.val, 12, starts)
    assert per_pos.shape == (12,)
    w = torch.stack([corpus.val[s:s + 13] for s in starts])
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(m(w[:, :-1]).transpose(1, 2), w[:, 1:], reduction="none").mean(0)
    torch.testing.assert_close(per_pos.float(), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="ids"):
        X.position_losses(m, corpus.val[:10], 12, [0])


def test_command_line_quick_writes_json_and_png(tmp_path, monkeypatch, corpus):
    monkeypatch.setattr(X, "CharCorpus", lambda: corpus)
    monkeypatch.setattr(X, "QUICK", tiny(schemes=("learned", "rope")))
    X.main(["--quick", "--out", str(tmp_path), "--no-progress", "--steps", "4"])
    res = json.loads((tmp_path / "extrapolation.json").read_text())
    assert res["meta"]["command"] == f"python -m course_lib.experiments.extrapolation --quick --out {tmp_path} --no-progress --steps 4"
    assert res["settings"]["steps"] == 4 and res["settings"]["quick"]
    assert (tmp_path / "extrapolation.png").stat().st_size > 1000


def test_saved_results_name_the_machine():
    """Every experiment's JSON says where it ran, in the words of one shared helper."""
    import os
    from course_lib.utils import cpu_name, machine_description

    line = machine_description("cpu")
    assert line.startswith(cpu_name()) and cpu_name()
    assert f"{os.cpu_count()} logical CPUs" in line and line.endswith("device cpu")
