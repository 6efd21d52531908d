"""The Exercise 13 checks pass the reference answers and name the likely mistake otherwise."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from course_lib.grading import ch13
from course_lib.model import ModelConfig, count_parameters
from helpers import refused_then_passes, stub


# ----------------------------------------------------------------------------- task 1
def softcap_ok(x, cap):
    return cap * torch.tanh(x / cap)


def test_softcap_passes(capsys):
    ch13.check_softcap(softcap_ok)
    assert capsys.readouterr().out == "✓ softcap: all 5 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "softcap is not implemented yet"),
    (lambda x, cap: torch.tanh(x / cap), "tanh without rescaling by σ"),
    (lambda x, cap: cap * torch.tanh(x), "divide by the cap inside tanh"),
    (lambda x, cap: x.clamp(-cap, cap), "hard clipping"),
    (lambda x, cap: softcap_ok(x, cap).float(), "expected dtype"),
    (lambda x, cap: softcap_ok(x, cap).flatten(), "expected shape"),
    (lambda x, cap: softcap_ok(x, cap) + 1e-2, "wrong values"),
])
def test_softcap_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch13.check_softcap(wrong)


# ----------------------------------------------------------------------------- task 2
def capped_ok(scores, mask, cap):
    return softcap_ok(scores, cap).masked_fill(~mask, float("-inf"))


def test_capped_scores_passes(capsys):
    ch13.check_capped_scores(capped_ok)
    assert capsys.readouterr().out == "✓ capped_scores: all 4 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "capped_scores is not implemented yet"),
    (lambda s, m, c: softcap_ok(s.masked_fill(~m, float("-inf")), c), "capped after the mask"),
    (lambda s, m, c: softcap_ok(s, c).masked_fill(m, float("-inf")), "mask inverted"),
    (lambda s, m, c: s.masked_fill(~m, float("-inf")), "not capped"),
    (lambda s, m, c: torch.tanh(s / c).masked_fill(~m, float("-inf")), "tanh without rescaling"),
    (lambda s, m, c: softcap_ok(s, c).masked_fill(~m, 0.0), "masked with 0"),
    (lambda s, m, c: softcap_ok(s, c).masked_fill(~m, -1e9), "filled with a large finite number"),
    (lambda s, m, c: softcap_ok(s, c).masked_fill(~m, torch.finfo(s.dtype).min), "instead of −inf"),
])
def test_capped_scores_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch13.check_capped_scores(wrong)


# ----------------------------------------------------------------------------- task 3
def llama_ok(**changes):
    return ModelConfig(**{**ch13.LLAMA_DESCRIPTION, **changes})


def test_llama_config_passes(capsys):
    ch13.check_llama_config(llama_ok())
    assert capsys.readouterr().out == f"✓ llama_config: all {len(ch13.LLAMA_DESCRIPTION)} cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (None, "llama_cfg is not implemented yet"),
    (dict(vocab_size=96), "expected a course_lib.model.ModelConfig"),
    (llama_ok(n_kv_heads=None), "kv heads counted as query heads"),
    (llama_ok(n_kv_heads=8), "kv heads counted as query heads"),
    (llama_ok(norm="layernorm"), "RMSNorm"),
    (llama_ok(rope_base=10000.0), "500 000"),
    (llama_ok(ffn="geglu"), "SwiGLU"),
    (llama_ok(bias=True), "no biases"),
    (llama_ok(tie_embeddings=True), "tie_embeddings=False"),
    (llama_ok(pos_encoding="learned"), "rope"),
    (llama_ok(n_layers=3), "n_layers: expected 4"),
])
def test_llama_config_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch13.check_llama_config(wrong)


# ----------------------------------------------------------------------------- task 4
def published_parameters(spec):
    """The reference answer, counted by hand from the spec as the task describes (the check refuses
    course_lib.model.count_parameters, which it compares with)."""
    d, dh, h, hkv, V = spec["d_model"], spec["head_dim"], spec["n_heads"], spec["n_kv_heads"], spec["vocab_size"]
    b = int(spec["bias"])
    norm = d * (2 if spec["norm"] == "layernorm" and spec["bias"] else 1)
    attn = 2 * d * h * dh + 2 * d * hkv * dh + b * (h * dh + 2 * hkv * dh + d)
    glu = spec["ffn"] in ("swiglu", "geglu")
    ffn = (3 if glu else 2) * d * spec["d_ff"] + b * ((2 if glu else 1) * spec["d_ff"] + d)
    block = attn + ffn + (4 if spec["norm_placement"] == "sandwich" else 2) * norm
    total = V * d + spec["n_layers"] * block + norm
    total += spec["max_seq_len"] * d if spec["pos_encoding"] == "learned" else 0
    return total + (0 if spec["tie_embeddings"] else V * d)


def count_wrong(**changes):
    return lambda spec: published_parameters({**spec, **{k: (v(spec) if callable(v) else v)
                                                        for k, v in changes.items()}})


def test_count_params_passes(capsys):
    ch13.check_count_params(published_parameters)
    assert capsys.readouterr().out == "✓ count_params: all 6 cases passed\n"


def _glu_two(spec):
    n = published_parameters(spec)
    return n - spec["n_layers"] * spec["d_ff"] * spec["d_model"] if spec["ffn"] in ("swiglu", "geglu") else n


@pytest.mark.parametrize("wrong, message", [
    (stub, "count_params is not implemented yet"),
    (count_wrong(n_kv_heads=lambda s: s["n_heads"]), "kv heads counted as query heads"),
    (count_wrong(tie_embeddings=True), "untied head counted once"),
    (count_wrong(norm_placement="pre"), "sandwich norms forgotten"),
    (count_wrong(head_dim=lambda s: s["d_model"] // s["n_heads"]), "head_dim taken as d_model / n_heads"),
    (_glu_two, "GLU FFN counted as two matrices"),
    (lambda s: published_parameters(s) + 1, "off by \\+1"),
    (lambda s: "many", "expected a number"),
])
def test_count_params_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch13.check_count_params(wrong)


def test_count_params_names_forgotten_positions_and_norms():
    with pytest.raises(AssertionError, match="learned positions forgotten"):
        ch13.check_count_params(lambda s: published_parameters(s) - (s["max_seq_len"] * s["d_model"]
                                                                     if s["pos_encoding"] == "learned" else 0))
    norms = lambda s: (s["n_layers"] * (4 if s["norm_placement"] == "sandwich" else 2) + 1) * s["d_model"] * (  # noqa: E731
        2 if s["norm"] == "layernorm" else 1)
    with pytest.raises(AssertionError, match="norms forgotten"):
        ch13.check_count_params(lambda s: published_parameters(s) - norms(s))


# ----------------------------------------------------------------------------- task 5
def test_local_layers_passes(capsys):
    ch13.check_local_layers(lambda n: list(range(0, n, 2)))
    assert capsys.readouterr().out == "✓ local_layers: all 6 cases passed\n"
    ch13.check_local_layers(lambda n: torch.arange(0, n, 2))


@pytest.mark.parametrize("wrong, message", [
    (stub, "local_layers is not implemented yet"),
    (lambda n: list(range(1, n, 2)), "off by one: layer 0 is local"),
    (lambda n: list(range(n)), "every layer local is Mistral"),
    (lambda n: list(range(0, n, 3)), "expected \\[0"),
    (lambda n: 3, "expected a list of layer indices"),
])
def test_local_layers_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch13.check_local_layers(wrong)


def test_config_is_a_dataclass():      # the description is the fields of a real config
    assert set(ch13.LLAMA_DESCRIPTION) <= {f.name for f in dataclasses.fields(ModelConfig)}


# ----------------------------------------------------------------------------- task 6 (transfer)
def qwen2_ok(hf, **changes):
    """A learner's translation of a Qwen2 config.json, field by field (not course_lib.pretrained)."""
    fields = dict(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], n_kv_heads=hf["num_key_value_heads"], d_ff=hf["intermediate_size"],
        max_seq_len=hf["max_position_embeddings"], ffn="swiglu", pos_encoding="rope", rope_base=hf["rope_theta"],
        norm="rmsnorm", norm_eps=hf["rms_norm_eps"], norm_placement="pre", bias=False, qkv_bias=True,
        tie_embeddings=hf["tie_word_embeddings"], dropout=0.0,
        window=hf["sliding_window"] if hf["use_sliding_window"] else None)
    fields.update(changes)
    return ModelConfig(**{k: v for k, v in fields.items() if v is not ...})


def test_qwen2_config_passes(capsys):
    ch13.check_qwen2_config(qwen2_ok)
    assert capsys.readouterr().out == "✓ qwen2_config: all 5 cases passed\n"


@pytest.mark.parametrize("name", list(ch13.QWEN2_CONFIGS))
def test_qwen2_totals_are_those_of_the_built_models(name):
    """The check's published totals = the parameters of the model built (on the meta device) from the config."""
    from course_lib.model import DecoderLM

    cfg = qwen2_ok(ch13.QWEN2_CONFIGS[name], max_seq_len=256)
    with torch.device("meta"):
        built = DecoderLM(cfg).num_parameters()
    assert built == count_parameters(cfg) == ch13.QWEN2_TOTALS[name]


@pytest.mark.parametrize("wrong, message", [
    (stub, "qwen2_config is not implemented yet"),
    (lambda hf: dataclasses.asdict(qwen2_ok(hf)), "expected a course_lib.model.ModelConfig; got dict"),
    (lambda hf: qwen2_ok(hf, qkv_bias=False), "qkv_bias: .*its only ones"),
    (lambda hf: qwen2_ok(hf, qkv_bias=..., bias=True), "bias: .*on q, k, v only"),
    (lambda hf: qwen2_ok(hf, window=hf["sliding_window"]), "use_sliding_window is false"),
    (lambda hf: qwen2_ok(hf, tie_embeddings=False), "the small Qwen2 models tie the head"),   # right for 7B only
    (lambda hf: qwen2_ok(hf, rope_base=10000.0), "rope_theta is RoPE's base"),
    (lambda hf: qwen2_ok(hf, n_kv_heads=...), "num_key_value_heads → n_kv_heads"),
    (lambda hf: qwen2_ok(hf, ffn="gelu"), "SwiGLU"),
    (lambda hf: qwen2_ok(hf, norm_eps=...), "rms_norm_eps → norm_eps"),
    (lambda hf: qwen2_ok(hf, max_seq_len=32768), "max_position_embeddings → max_seq_len"),
    (lambda hf: qwen2_ok(hf, norm="layernorm"), "RMSNorm"),
    (lambda hf: qwen2_ok(hf, d_ff=...), "intermediate_size"),
    (lambda hf: qwen2_ok(ch13.QWEN2_CONFIGS["Qwen2-7B"]), "expected 151936; got 152064"),      # the demo's answer only
])
def test_qwen2_config_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch13.check_qwen2_config(wrong)


# ----------------------------------------------------------------------------- task 7 (transfer)
def context_ok(config, memory_bytes, batch, bytes_per_elem, *, heads=None, head_dim=None, kv=2, weights=True,
               per_batch=True, layers=True, up=False, cap=True):
    import math
    per_token = kv * (config.n_layers if layers else 1) * (heads or config.n_kv_heads) \
        * (head_dim or config.head_dim) * bytes_per_elem * (batch if per_batch else 1)
    free = memory_bytes - (count_parameters(config) * bytes_per_elem if weights else 0)
    tokens = max(0, (math.ceil if up else math.floor)(free / per_token))
    return min(tokens, config.max_seq_len) if cap else tokens


def test_max_context_passes(capsys):
    ch13.check_max_context(context_ok)
    assert capsys.readouterr().out == "✓ max_context: all 7 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "max_context is not implemented yet"),
    (lambda c, m, b, n: context_ok(c, m, b, n, heads=c.n_heads), "the cache counted with n_heads"),
    (lambda c, m, b, n: context_ok(c, m, b, n, head_dim=c.d_model // c.n_heads),
     "head width taken as d_model / n_heads"),
    (lambda c, m, b, n: context_ok(c, m, b, n, kv=1), "a factor 2 is missing"),
    (lambda c, m, b, n: context_ok(c, m, b, n, weights=False), "the weights were not subtracted"),
    (lambda c, m, b, n: context_ok(c, m, b, n, per_batch=False), "the batch was ignored"),
    (lambda c, m, b, n: context_ok(c, m, b, n, layers=False), "n_layers forgotten"),
    (lambda c, m, b, n: context_ok(c, m, b, n, up=True), "rounded up"),
    (lambda c, m, b, n: context_ok(c, m, b, n, cap=False), "not capped"),
    (lambda c, m, b, n: min(c.max_seq_len, (m - count_parameters(c) * n) // (2 * c.n_layers * c.n_kv_heads
                                                                              * c.head_dim * n * b)),
     "the weights alone do not fit: no context fits, return 0"),
    (lambda c, m, b, n: context_ok(c, m, b, n) + 0.5, "expected a whole number of tokens"),
    (lambda c, m, b, n: context_ok(c, m, b, n) + 7, "expected 4,629 tokens; got 4,636"),
])
def test_max_context_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch13.check_max_context(wrong)


# ----------------------------------------------------------------------------- calling the library scores nothing
from course_lib import attention as A  # noqa: E402
from course_lib.architectures import gemma2_config  # noqa: E402
from course_lib.pretrained import config_from_hf  # noqa: E402


def params_by_building(spec):
    from course_lib.model import DecoderLM
    with torch.device("meta"):
        return sum(p.numel() for p in DecoderLM(ModelConfig(**spec)).parameters())


@pytest.mark.parametrize("check, answer", [
    (ch13.check_softcap, A.softcap),
    (ch13.check_capped_scores, lambda s, m, c: A.softcap(s, c).masked_fill(~m, float("-inf"))),
    (ch13.check_count_params, lambda spec: count_parameters(ModelConfig(**spec))),
    (ch13.check_count_params, params_by_building),
    (ch13.check_local_layers, lambda n: [i for i in range(n) if gemma2_config(n_layers=n).layer_window(i) is not None]),
    (ch13.check_qwen2_config, config_from_hf),
])
def test_calling_the_library_scores_nothing(check, answer, monkeypatch):
    refused_then_passes(check, answer, ch13, monkeypatch)

