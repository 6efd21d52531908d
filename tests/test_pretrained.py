"""course_lib.pretrained: our DecoderLM loaded from a Hugging Face checkpoint computes what transformers computes.

For each family a small random model is built from its transformers config class (seeded; every
parameter perturbed, so that norms are not 1 and biases not 0 — a mapping that dropped them would
show), saved with ``save_pretrained`` and loaded with ``from_hf`` from the directory. Checked:

* logits on a left-padded batch (attention_mask; HF gets the same position ids) — fp32, within
  ``ATOL = 2e-5`` (measured: at most 2.4e-6; the two add the same products in a different order);
* greedy generation with our KV cache (``generation.generate``) gives HF ``generate``'s tokens;
* ``count_parameters(config)`` equals HF's ``num_parameters()``;
* the features of each family matter at this size: switching one off in our config (same weights)
  moves the logits by more than ``5 · ATOL``, so a mapping that ignored it would fail the equality.

Offline, CPU: the whole file takes 9–15 s, most of it importing transformers.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from course_lib.generation import generate, left_pad  # noqa: E402
from course_lib.model import DecoderLM, count_parameters, positions_from_mask  # noqa: E402
from course_lib.pretrained import (  # noqa: E402
    TINY_CONFIGS,
    HubUnavailableError,
    compare_with_hf,
    config_from_hf,
    from_hf,
    from_pretrained,
    load_tokenizer,
    state_dict_from_hf,
    tiny_hf_model,
)

ATOL = 2e-5          # max |Δ logit| allowed in fp32; logits are O(1), measured differences ≤ 2.4e-6
PROMPTS = [[5, 17, 2, 40, 41, 9, 3, 77, 12, 60, 8, 31], [7, 3, 90, 14], [11, 22, 33, 44, 55, 66, 1]]
NEW = 8

# {our field: a value that switches the family's feature off}; the models: pretrained.TINY_CONFIGS
FEATURES = {
    "gpt2": {"ffn": "gelu"},                                    # gelu_new is GELU's tanh approximation
    "llama": {"rope_base": 10000.0},                            # LLaMA-3's θ = 500 000
    "mistral": {"window": None},                                # a window of 4 < the prompts
    "mixtral": {"top_k": 1},
    "gemma2": {"attn_softcap": None, "local_global": False, "norm_offset": 0.0, "final_softcap": None},
    "qwen2": {"qkv_bias": False},
}
FAMILIES = list(FEATURES)


hf_model = tiny_hf_model


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request, tmp_path_factory):
    family = request.param
    hf = hf_model(family)
    path = tmp_path_factory.mktemp(family)
    hf.save_pretrained(path)
    return family, hf, from_hf(path), path


def logits_both(hf, ours):
    ids, mask = left_pad(PROMPTS)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
        mine = ours(ids, attention_mask=mask)
    real = mask.bool()
    return mine[real], theirs[real]


def test_logits_equal_on_a_padded_batch(pair):
    family, hf, ours, _ = pair
    mine, theirs = logits_both(hf, ours)
    err = (mine - theirs).abs().max().item()
    assert err < ATOL, f"{family}: max |Δ logit| = {err:.2e} ≥ {ATOL}"
    assert theirs.std() > 0.05                  # not a degenerate model whose logits are all equal


def test_greedy_generation_with_our_cache_equals_hf_generate(pair):
    family, hf, ours, _ = pair
    ids, mask = left_pad(PROMPTS)
    with torch.no_grad():
        theirs = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)[:, ids.shape[1]:]
    mine = generate(ours, PROMPTS, NEW)
    assert torch.equal(mine, theirs), f"{family}: ours {mine.tolist()} vs HF {theirs.tolist()}"
    assert len(set(mine.flatten().tolist())) > 2    # not a constant sequence


def test_parameter_counts_equal(pair):
    family, hf, ours, _ = pair
    assert count_parameters(ours.config) == ours.num_parameters() == hf.num_parameters()


def test_the_family_feature_matters(pair):
    """Switching a feature of the family off in our config (same weights) moves the logits > 5 · ATOL."""
    family, hf, ours, _ = pair
    ids, mask = left_pad(PROMPTS)
    with torch.no_grad():
        ref = ours(ids, attention_mask=mask)[mask.bool()]
    for field, value in FEATURES[family].items():
        cfg = ours.config.replace(**{field: value})
        other = DecoderLM(cfg).eval()
        other.load_state_dict({k: v for k, v in ours.state_dict().items() if k in other.state_dict()})
        with torch.no_grad():
            got = other(ids, attention_mask=mask)[mask.bool()]
        assert (got - ref).abs().max() > 5 * ATOL, f"{family}: {field}={value!r} changed nothing"


def test_loading_a_model_instance_equals_loading_its_directory(pair):
    """A transformers model (Mixtral: fused 3-D expert tensors) and its save_pretrained files
    (Mixtral: per-expert w1, w2, w3) give the same weights."""
    family, hf, ours, _ = pair
    direct = from_hf(hf)
    for (name, a), (_, b) in zip(direct.state_dict().items(), ours.state_dict().items()):
        assert torch.equal(a, b), f"{family}: {name}"


def test_config_mapping_of_each_family():
    c = config_from_hf(hf_model("gemma2").config)
    assert (c.norm_placement, c.norm_offset, c.scale_embeddings, c.attn_softcap, c.final_softcap) == \
        ("sandwich", 1.0, True, 1.0, 2.0)
    assert c.window == 4 and c.local_global and c.head_dim == 16 and c.d_model == 48
    assert abs(c.attn_scale - 24 ** -0.5) < 1e-12 and c.ffn == "geglu_tanh"
    l = config_from_hf(hf_model("llama").config)
    assert (l.rope_base, l.n_kv_heads, l.norm_eps, l.ffn, l.tie_embeddings) == (500000.0, 2, 1e-5, "swiglu", False)
    q = config_from_hf(hf_model("qwen2").config)
    assert q.qkv_bias and not q.bias and q.tie_embeddings
    g = config_from_hf(hf_model("gpt2").config)
    assert g.ffn == "gelu_tanh" and g.pos_encoding == "learned" and g.bias


@pytest.mark.parametrize("family, override, field", [
    ("llama", dict(hidden_act="relu2"), "hidden_act"),
    ("gpt2", dict(activation_function="quick_gelu"), "activation_function"),
    ("llama", dict(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}), "rope_type"),
    ("llama", dict(attention_bias=True), "attention_bias"),
    ("qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1), "layer_types"),
])
def test_an_unsupported_config_is_a_value_error_naming_the_field(family, override, field):
    cfg_name, _, kwargs = TINY_CONFIGS[family]
    try:
        cfg = getattr(transformers, cfg_name)(**{**kwargs, **override})
    except Exception:                            # transformers itself refuses: test on the dict
        cfg = {**kwargs, **override, "model_type": family}
    with pytest.raises(ValueError, match=field):
        config_from_hf(cfg)


def test_a_config_dict_without_layer_types_gets_each_familys_default():
    gemma = {**TINY_CONFIGS["gemma2"][2], "model_type": "gemma2", "hidden_activation": "gelu_pytorch_tanh"}
    c = config_from_hf(gemma)
    assert c.window == 4 and c.local_global                   # Gemma-2: alternating, layer 0 local
    mistral = config_from_hf({**TINY_CONFIGS["mistral"][2], "model_type": "mistral", "hidden_act": "silu"})
    assert mistral.window == 4 and not mistral.local_global   # Mistral: every layer
    qwen = config_from_hf({**TINY_CONFIGS["qwen2"][2], "model_type": "qwen2", "hidden_act": "silu",
                           "sliding_window": 4, "use_sliding_window": False})
    assert qwen.window is None                                # Qwen2: the window only when switched on


def test_another_family_is_a_value_error():
    with pytest.raises(ValueError, match="model_type: 'bert'"):
        config_from_hf({"model_type": "bert"})


def test_a_dropped_or_missing_weight_is_a_value_error():
    hf = hf_model("llama")
    config = config_from_hf(hf.config)
    state = dict(hf.state_dict())
    extra = {**state, "model.layers.0.self_attn.extra.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match="not used: \\['layers.0.self_attn.extra.weight'\\]"):
        state_dict_from_hf(extra, config, "llama")
    with pytest.raises(ValueError, match=r"shapes do not match the config: \['blocks.0.ffn.gate_proj.weight \(96, 64\) "
                                         r"\(expected \(80, 64\)\)"):
        state_dict_from_hf(state, config.replace(d_ff=80), "llama")
    del state["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match="blocks.1.ffn.up_proj.weight"):
        state_dict_from_hf(state, config, "llama")


def test_a_hub_id_offline_says_it_needs_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="needs the network.*local directory"):
        from_pretrained("openai-community/gpt2", cache_dir=tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(HubUnavailableError, match="download failed .*Network is unreachable.*needs the network"):
        from_pretrained("openai-community/gpt2", cache_dir=tmp_path)


def test_from_pretrained_of_a_local_directory_works_offline(tmp_path, monkeypatch):
    hf = hf_model("qwen2")
    hf.save_pretrained(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = from_pretrained(tmp_path, dtype=torch.float64)
    assert next(ours.parameters()).dtype == torch.float64
    assert torch.equal(ours.lm_head.weight, hf.lm_head.weight.double())


def test_load_tokenizer_from_a_directory(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "the", "model", "loads", "weights"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    fast.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded("the model loads weights")["input_ids"] == [2, 3, 4, 5]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="tokenizer files"):
        load_tokenizer(empty)


def test_without_transformers_the_error_says_what_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)       # as if it were not installed
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ImportError, match=r"pip install 'course_lib\[hf\]'"):
        from_hf(tmp_path)


def test_compare_with_hf_reports_equality_and_a_mismatch():
    """The helper Chapter 13 prints from: equal for the loaded model, unequal with the window off."""
    hf = hf_model("mistral")
    ours = from_hf(hf)
    ok = compare_with_hf(hf, ours, PROMPTS, NEW)
    assert ok["max_abs_diff"] < ATOL and ok["same_tokens"] and ok["params"][0] == ok["params"][1]
    off = DecoderLM(ours.config.replace(window=None)).eval()
    off.load_state_dict(ours.state_dict())
    bad = compare_with_hf(hf, off, PROMPTS, NEW)
    assert bad["max_abs_diff"] > 5 * ATOL and not bad["same_tokens"]


def test_gpt2_in_the_hub_layout_loads(tmp_path):
    """openai-community/gpt2's file: no ``transformer.`` prefix, the causal-mask buffers
    ``h.N.attn.bias`` stored as tensors (constants, not weights: skipped), no lm_head (tied)."""
    from safetensors.torch import save_file

    hf = hf_model("gpt2")
    hf.config.save_pretrained(tmp_path)
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    n = hf.config.n_positions
    for i in range(hf.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.ones(1, 1, n, n).tril()
    save_file(state, str(tmp_path / "model.safetensors"))
    ours = from_hf(tmp_path)
    mine, theirs = logits_both(hf, ours)
    assert (mine - theirs).abs().max() < ATOL


def test_mixtral_router_is_top_k_gating():
    """HF's MixtralTopKRouter (softmax over all experts, top-k, renormalise) = moe.top_k_gating."""
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

    from course_lib.moe import top_k_gating

    cfg = transformers.MixtralConfig(**TINY_CONFIGS["mixtral"][2])
    router = MixtralTopKRouter(cfg)
    torch.manual_seed(0)
    torch.nn.init.normal_(router.weight)
    x = torch.randn(50, cfg.hidden_size)
    logits, weights, indices = router(x)
    ours_w, ours_i, _ = top_k_gating(logits, cfg.num_experts_per_tok)
    assert torch.equal(ours_i, indices)
    torch.testing.assert_close(ours_w, weights, rtol=1e-6, atol=1e-7)
    softmax_of_top = torch.softmax(logits.gather(-1, indices), dim=-1)        # the same, from the top-k logits
    torch.testing.assert_close(softmax_of_top, weights, rtol=1e-6, atol=1e-7)
