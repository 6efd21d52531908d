"""Chapter 14's three experiment commands: quick runs write what the chapter reads, and the saved
results are internally consistent (the chapter asserts its claims on them)."""

from __future__ import annotations

import json

import pytest

from course_lib.experiments import pretraining as X


@pytest.mark.parametrize("name", sorted(X.RUNS))
def test_quick_command_writes_json_and_png_with_its_command(name, tmp_path):
    results = X.main([name, "--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / f"pretraining_{name}.json").read_text())
    assert (tmp_path / f"pretraining_{name}.png").stat().st_size > 10_000
    assert saved["meta"]["command"] == f"python -m course_lib.experiments.pretraining {name} --quick --out {tmp_path}"
    assert saved["settings"] == X.QUICK[name] and saved.keys() == results.keys()
    assert "logical CPUs" in saved["meta"]["machine"]
    assert len(X.plot_results(name, saved).axes) == 1
    if name == "icl":
        assert len(saved["accuracy"]) == len(saved["ideal"]) == saved["settings"]["n_examples"]
        assert all(0 <= a <= 1 for a in saved["accuracy"])
    elif name in ("bert", "roberta"):
        assert set(saved["variants"]) == {"bert": {"MLM + NSP"}, "roberta": {"MLM only"}}[name]
        assert 0 < saved["unigram_accuracy"] < 1
        assert ("nsp_accuracy" in next(iter(saved["variants"].values()))) == (name == "bert")
    else:
        assert set(saved["accuracy"]) == set(X.METHODS) and saved["n_test"] == 2 * X.QUICK[name]["n_test_per_class"]


def test_load_results_names_the_commands():
    with pytest.raises(ValueError, match="name"):
        X.load_results("nope")


def test_roberta_is_bert_without_nsp():
    """The two saved runs differ only in the NSP objective: same settings, same held-out set."""
    bert, roberta = X.load_results("bert"), X.load_results("roberta")
    assert list(bert["variants"]) == ["MLM + NSP"] and list(roberta["variants"]) == ["MLM only"]
    assert {k: v for k, v in bert["settings"].items() if k != "variants"} == \
           {k: v for k, v in roberta["settings"].items() if k != "variants"}
    for key in ("unigram_accuracy", "n_masked_eval_tokens", "nsp_fraction_true", "vocab_size"):
        assert bert[key] == roberta[key], key
    assert "nsp_accuracy" not in roberta["variants"]["MLM only"]


def test_finetune_means_are_the_means_of_the_saved_seeds():
    ft = X.load_results("finetune")
    assert len(ft["settings"]["seeds"]) >= 3
    for method, by_n in ft["accuracy"].items():
        for n, mean in by_n.items():
            runs = ft["accuracy_per_seed"][method][n]
            assert len(runs) == len(ft["settings"]["seeds"])
            assert abs(sum(runs) / len(runs) - mean) < 1e-3, (method, n)
