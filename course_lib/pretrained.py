"""Real weights in the course's decoder: Hugging Face checkpoints → :class:`~course_lib.model.DecoderLM` (Chapter 13).

Six families load, each verified equal to ``transformers`` (``tests/test_pretrained.py``: logits
on a left-padded batch, greedy tokens with our KV cache, parameter counts):

========  =====================================================================================
GPT-2     fused ``c_attn`` split into q, k, v; ``Conv1D`` weights (``x W``) transposed to ``nn.Linear``
          (``x Wᵀ``); learned positions; GELU's tanh approximation (``gelu_new``); tied head
LLaMA     RMSNorm (ε from the config), RoPE (θ, half-split layout), GQA, SwiGLU, untied head
Mistral   LLaMA + a sliding window on every layer
Mixtral   Mistral's block, experts ``w1, w3, w2`` → ``gate_proj, up_proj, down_proj`` and the
          router; HF's routing (softmax, top-k, renormalise) is ``moe.top_k_gating``
Qwen2     LLaMA + biases on q, k, v only (``qkv_bias``)
Gemma-2   sandwich norms, RMSNorm scaled by ``1 + w`` (``norm_offset``), embeddings × √d
          (``scale_embeddings``), scores × ``query_pre_attn_scalar^(−1/2)`` (``attn_scale``),
          soft-capping, alternating local/global layers (layer 0 local), tanh-GELU GeGLU
========  =====================================================================================

* :func:`config_from_hf` — the :class:`~course_lib.model.ModelConfig` of a Hugging Face config;
  anything it cannot express raises ``ValueError`` naming the field and its value;
* :func:`state_dict_from_hf` — the weights renamed (and split, transposed) into ours; every
  source tensor must be used and every parameter of ours set, else ``ValueError``;
* :func:`from_hf` — a ``transformers`` model, or a local directory with ``config.json`` and
  ``*.safetensors`` (as ``save_pretrained`` writes them), → ``DecoderLM``;
* :func:`from_pretrained` — the same from a Hub id (needs the network, or the local Hugging Face
  cache) or a directory; :func:`hub_reachable` says cheaply whether the Hub can be reached;
* :func:`load_tokenizer` — the checkpoint's own tokenizer (the course's character tokenizer,
  ``course_lib.data.CharTokenizer``, stays the default offline);
* :func:`tiny_hf_model` (small random ``transformers`` models of each family, :data:`TINY_CONFIGS`)
  and :func:`compare_with_hf` (logits, greedy tokens, parameter counts) — the offline proof of
  equality that ``tests/test_pretrained.py`` and Chapter 13 run.

``transformers``, ``safetensors`` and ``huggingface_hub`` are optional (``pip install
course_lib[hf]``): they are imported inside the functions, so ``course_lib`` imports without them.

Two conventions to know when comparing with ``transformers``: our position ids come from the
attention mask (``model.positions_from_mask``), and a Hugging Face model called *directly* numbers
a left-padded row from the first column — pass it ``position_ids`` (its ``generate`` does so
itself). Dropout is set to 0: these are inference models (the configs' dropout is training-time).
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import torch

from course_lib.generation import generate, left_pad
from course_lib.model import DecoderLM, ModelConfig, count_parameters, positions_from_mask

__all__ = [
    "FAMILIES",
    "HubUnavailableError",
    "config_from_hf",
    "state_dict_from_hf",
    "from_hf",
    "from_pretrained",
    "hub_reachable",
    "load_tokenizer",
    "TINY_CONFIGS",
    "tiny_hf_model",
    "compare_with_hf",
]

FAMILIES = ("gpt2", "llama", "mistral", "mixtral", "qwen2", "gemma2")   # HF's model_type
_LLAMA_LIKE = ("llama", "mistral", "mixtral", "qwen2", "gemma2")

# HF activation name → our FFN kind: the standard FFN (GPT-2) and the gated one (the others)
_GPT2_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
             "gelu": "gelu", "relu": "relu"}
_GLU_ACT = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "gelu_pytorch_tanh": "geglu_tanh",
            "gelu_new": "geglu_tanh", "relu": "reglu", "sigmoid": "glu"}

# tensors of a checkpoint that are constants, not weights (old GPT-2 and LLaMA files store them)
_BUFFERS = re.compile(r"(^|\.)attn\.(bias|masked_bias)$|rotary_emb\.inv_freq$")


class HubUnavailableError(OSError):
    """A Hub id was given, but the Hub cannot be reached (offline, or ``HF_HUB_OFFLINE`` is set)."""


def _require(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise ImportError(f"course_lib.pretrained needs {module!r} for Hugging Face checkpoints: "
                          f"pip install 'course_lib[hf]' (transformers, safetensors, huggingface_hub)") from exc


# ============================================================================ the configuration
def _get(cfg, name, default=None):
    return getattr(cfg, name, default) if not isinstance(cfg, dict) else cfg.get(name, default)


def _unsupported(field: str, value, expected: str) -> ValueError:
    return ValueError(f"{field}: {value!r} is not supported by course_lib.pretrained; expected {expected}")


def _rope(cfg) -> dict:
    """RoPE θ and scaling from ``rope_parameters`` (transformers ≥ 5) or ``rope_theta``/``rope_scaling`` (4.x)."""
    params = dict(_get(cfg, "rope_parameters") or {})
    if not params:
        params = dict(_get(cfg, "rope_scaling") or {})
        params.setdefault("rope_theta", _get(cfg, "rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    out = dict(pos_encoding="rope", rope_base=float(params.get("rope_theta", 10000.0)))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise _unsupported("rope_parameters.partial_rotary_factor", params["partial_rotary_factor"], "1.0")
    if rope_type == "default":
        return out
    if rope_type == "linear":           # position interpolation: HF divides the frequencies, we the positions
        return {**out, "rope_scaling": float(params["factor"]), "rope_scaling_type": "linear"}
    raise _unsupported("rope_parameters.rope_type", rope_type, "'default' or 'linear'")


def _windows(cfg, model_type: str) -> dict:
    """``window`` and ``local_global`` from the per-layer ``layer_types`` (or Mistral's one ``sliding_window``)."""
    n = _get(cfg, "num_hidden_layers")
    window = _get(cfg, "sliding_window")
    types = _get(cfg, "layer_types")
    if types is None:                   # Mistral, Mixtral: one window for every layer, if any
        types = ["sliding_attention" if window is not None else "full_attention"] * n
        if model_type == "qwen2" and not _get(cfg, "use_sliding_window", False):
            types = ["full_attention"] * n
        if model_type == "gemma2" and window is not None:       # Gemma-2's default: even layers local
            types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    types = list(types)
    if all(t == "full_attention" for t in types):
        return dict(window=None, local_global=False)
    if window is None:
        raise _unsupported("sliding_window", None, "a window size for the 'sliding_attention' layers")
    if all(t == "sliding_attention" for t in types):
        return dict(window=int(window), local_global=False)
    alternating = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    if types == alternating:            # Gemma-2: layer 0 local, then global, local, …
        return dict(window=int(window), local_global=True)
    raise _unsupported("layer_types", types, "all 'full_attention', all 'sliding_attention', or alternating "
                       "from 'sliding_attention' at layer 0 (Gemma-2)")


def config_from_hf(hf_config) -> ModelConfig:
    """The :class:`ModelConfig` of a Hugging Face config (a ``PretrainedConfig`` or its dict).

    Raises ``ValueError`` naming the config field and value for anything our model cannot express
    (another family, an activation, a RoPE scaling type, a per-layer window pattern, biases on
    some linear maps but not others, …).
    """
    model_type = _get(hf_config, "model_type")
    if model_type not in FAMILIES:
        raise _unsupported("model_type", model_type, f"one of {FAMILIES}")
    if model_type == "gpt2":
        return _gpt2_config(hf_config)
    return _llama_like_config(hf_config, model_type)


def _gpt2_config(c) -> ModelConfig:
    act = _get(c, "activation_function", "gelu_new")
    if act not in _GPT2_ACT:
        raise _unsupported("activation_function", act, f"one of {sorted(_GPT2_ACT)}")
    for field, ok in (("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False)):
        if bool(_get(c, field, False)) != ok:
            raise _unsupported(field, _get(c, field), repr(ok))
    d = _get(c, "n_embd")
    head_dim = d // _get(c, "n_head")
    return ModelConfig(
        vocab_size=_get(c, "vocab_size"), d_model=d, n_layers=_get(c, "n_layer"), n_heads=_get(c, "n_head"),
        max_seq_len=_get(c, "n_positions"), d_ff=_get(c, "n_inner") or 4 * d, ffn=_GPT2_ACT[act],
        pos_encoding="learned", bias=True, tie_embeddings=bool(_get(c, "tie_word_embeddings", True)),
        norm="layernorm", norm_eps=float(_get(c, "layer_norm_epsilon", 1e-5)), dropout=0.0,
        attn_scale=head_dim ** -0.5 if _get(c, "scale_attn_weights", True) else 1.0)


def _llama_like_config(c, model_type: str) -> ModelConfig:
    gemma = model_type == "gemma2"
    act_field = "hidden_activation" if gemma else "hidden_act"
    act = _get(c, act_field) or _get(c, "hidden_act")
    if act not in _GLU_ACT:
        raise _unsupported(act_field, act, f"one of {sorted(_GLU_ACT)}")
    attention_bias, mlp_bias = bool(_get(c, "attention_bias", False)), bool(_get(c, "mlp_bias", False))
    if attention_bias != mlp_bias:      # our `bias` covers every linear map together
        raise _unsupported("attention_bias", attention_bias, f"the same as mlp_bias = {mlp_bias}")
    if _get(c, "use_bidirectional_attention"):
        raise _unsupported("use_bidirectional_attention", True, "False (a causal decoder)")
    d, h = _get(c, "hidden_size"), _get(c, "num_attention_heads")
    head_dim = _get(c, "head_dim") or d // h
    fields = dict(
        vocab_size=_get(c, "vocab_size"), d_model=d, n_layers=_get(c, "num_hidden_layers"), n_heads=h,
        n_kv_heads=_get(c, "num_key_value_heads") or h, head_dim=head_dim,
        max_seq_len=_get(c, "max_position_embeddings"), d_ff=_get(c, "intermediate_size"), ffn=_GLU_ACT[act],
        norm="rmsnorm", norm_eps=float(_get(c, "rms_norm_eps", 1e-6)), bias=attention_bias,
        qkv_bias=True if model_type == "qwen2" else attention_bias, dropout=0.0,
        tie_embeddings=bool(_get(c, "tie_word_embeddings", False)), **_rope(c), **_windows(c, model_type))
    if model_type == "mixtral":
        fields.update(n_experts=_get(c, "num_local_experts"), top_k=_get(c, "num_experts_per_tok"))
    if gemma:
        fields.update(norm_placement="sandwich", norm_offset=1.0, scale_embeddings=True,
                      attn_scale=float(_get(c, "query_pre_attn_scalar")) ** -0.5,
                      attn_softcap=_get(c, "attn_logit_softcapping"),
                      final_softcap=_get(c, "final_logit_softcapping"))
    return ModelConfig(**fields)


# ============================================================================ the weights
def _hf_key(ours: str, model_type: str, config: ModelConfig) -> list[tuple[str, object]]:
    """The source tensors our parameter ``ours`` is made of: ``[(hf_key, transform), …]``, the
    first whose key exists is used (``transform`` maps the tensor to ours). Keys without the
    ``transformer.``/``model.`` prefix (see :func:`_strip`)."""
    T = lambda t: t.t()                                                             # noqa: E731
    same = lambda t: t                                                              # noqa: E731
    if ours == "lm_head.weight":
        return [("lm_head.weight", same)]
    if model_type == "gpt2":
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", ours)
        top = {"tok_emb.weight": "wte.weight", "pos_emb.weight": "wpe.weight",
               "norm_f.weight": "ln_f.weight", "norm_f.bias": "ln_f.bias"}
        if m is None:
            return [(top[ours], same)]
        i, rest = m.groups()
        d = config.d_model
        qkv = re.fullmatch(r"attn\.([qkv])_proj\.(weight|bias)", rest)
        if qkv:                          # c_attn: Conv1D [d, 3d] = [W_q | W_k | W_v], x W + b
            j = "qkv".index(qkv.group(1))
            if qkv.group(2) == "weight":
                return [(f"h.{i}.attn.c_attn.weight", lambda t: t[:, j * d:(j + 1) * d].t())]
            return [(f"h.{i}.attn.c_attn.bias", lambda t: t[j * d:(j + 1) * d])]
        name = {"norm1": "ln_1", "norm2": "ln_2", "attn.o_proj": "attn.c_proj",
                "ffn.up_proj": "mlp.c_fc", "ffn.down_proj": "mlp.c_proj"}
        module, kind = rest.rsplit(".", 1)
        transform = T if kind == "weight" and not module.startswith("norm") else same   # Conv1D stores Wᵀ
        return [(f"h.{i}.{name[module]}.{kind}", transform)]
    # the LLaMA family
    top = {"tok_emb.weight": "embed_tokens.weight", "norm_f.weight": "norm.weight"}
    if ours in top:
        return [(top[ours], same)]
    i, rest = re.fullmatch(r"blocks\.(\d+)\.(.+)", ours).groups()
    p = f"layers.{i}."
    gemma = model_type == "gemma2"
    norms = {"norm1": "input_layernorm", "post_norm1": "post_attention_layernorm",
             "norm2": "pre_feedforward_layernorm" if gemma else "post_attention_layernorm",
             "post_norm2": "post_feedforward_layernorm"}
    module, kind = rest.rsplit(".", 1)
    if module in norms:
        return [(p + norms[module] + "." + kind, same)]
    if module.startswith("attn."):
        return [(p + "self_attn." + module[5:] + "." + kind, same)]
    if module == "ffn.router":           # Mixtral's router: `block_sparse_moe.gate` (files), `mlp.gate` (models)
        return [(p + "block_sparse_moe.gate.weight", same), (p + "mlp.gate.weight", same)]
    m = re.fullmatch(r"ffn\.experts\.(\d+)\.(gate|up|down)_proj", module)
    if m:                                # per-expert w1 (gate), w3 (up), w2 (down), or HF's fused 3-D tensors
        e, which = int(m.group(1)), m.group(2)
        w = {"gate": "w1", "up": "w3", "down": "w2"}[which]
        f = config.d_ff
        fused = {"gate": (p + "mlp.experts.gate_up_proj", lambda t: t[e, :f]),
                 "up": (p + "mlp.experts.gate_up_proj", lambda t: t[e, f:]),
                 "down": (p + "mlp.experts.down_proj", lambda t: t[e])}[which]
        return [(f"{p}block_sparse_moe.experts.{e}.{w}.weight", same), fused]
    if module.startswith("ffn."):
        return [(p + "mlp." + module[4:] + "." + kind, same)]
    raise ValueError(f"state_dict: no Hugging Face tensor is known for our parameter {ours!r}")


def _strip(key: str) -> str:
    for prefix in ("transformer.", "model."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def state_dict_from_hf(hf_state: dict, config: ModelConfig, model_type: str) -> dict[str, torch.Tensor]:
    """Our ``state_dict`` for ``DecoderLM(config)`` from a Hugging Face one (checkpoint or model).

    Every parameter of ours is looked up (:func:`_hf_key`), and every tensor of the source must
    be used by one (the constants in :data:`_BUFFERS` aside): a weight left at its initial value,
    a source weight dropped or a shape that disagrees with the config raises ``ValueError``
    listing them. A tied head must equal the embeddings.
    """
    if model_type not in FAMILIES:
        raise _unsupported("model_type", model_type, f"one of {FAMILIES}")
    src = {_strip(k): v for k, v in hf_state.items()}
    used, out, missing = set(), {}, []
    with torch.device("meta"):                    # names and shapes only: no memory, no initialisation
        shapes = {k: tuple(v.shape) for k, v in DecoderLM(config).state_dict().items()}
    for name in shapes:
        if name == "lm_head.weight" and config.tie_embeddings:
            out[name] = out["tok_emb.weight"]
            if "lm_head.weight" in src:           # a model's state_dict lists the tied head too
                used.add("lm_head.weight")
                if not torch.equal(src["lm_head.weight"], out[name]):
                    raise _unsupported("tie_word_embeddings", True, "lm_head.weight equal to the embeddings")
            continue
        for key, transform in _hf_key(name, model_type, config):
            if key in src:
                out[name] = transform(src[key]).contiguous()
                used.add(key)
                break
        else:
            missing.append(name)
    wrong = [f"{k} {tuple(out[k].shape)} (expected {shapes[k]})" for k in out if tuple(out[k].shape) != shapes[k]]
    if wrong:
        raise ValueError(f"state_dict: tensor shapes do not match the config: {wrong[:4]}")
    unused = sorted(k for k in src if k not in used and not _BUFFERS.search(k))
    if missing or unused:
        raise ValueError(f"state_dict: the weights do not match the config — ours without a source tensor: "
                         f"{missing[:8]}{' …' if len(missing) > 8 else ''}; source tensors not used: "
                         f"{unused[:8]}{' …' if len(unused) > 8 else ''}")
    return out


# ============================================================================ loading
def _read_dir(path: Path) -> tuple[object, dict]:
    """``(hf_config, tensors)`` of a directory written by ``save_pretrained`` (safetensors only)."""
    transformers = _require("transformers")
    safetensors_torch = _require("safetensors.torch")
    if not (path / "config.json").is_file():
        raise ValueError(f"model_or_dir: expected a directory with config.json and *.safetensors; "
                         f"{str(path)!r} has no config.json")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"model_or_dir: expected *.safetensors files in {str(path)!r}; found "
                         f"{sorted(p.name for p in path.iterdir())}")
    tensors = {}
    for f in files:
        tensors.update(safetensors_torch.load_file(str(f)))
    return transformers.AutoConfig.from_pretrained(str(path)), tensors


def from_hf(model_or_dir, dtype: torch.dtype | None = None) -> DecoderLM:
    """A :class:`DecoderLM` equal to a Hugging Face model.

    Args:
        model_or_dir: a ``transformers`` causal LM of a family in :data:`FAMILIES`, or a local
            directory with ``config.json`` and ``*.safetensors`` (as ``save_pretrained`` writes).
        dtype: the dtype of our model; None → that of the weights.
    Returns:
        the model in eval mode. Raises ``ValueError`` for a config it cannot express or weights
        that do not match it.
    """
    if isinstance(model_or_dir, (str, os.PathLike)):
        path = Path(model_or_dir)
        if not path.is_dir():
            raise ValueError(f"model_or_dir: expected a transformers model or a local directory; "
                             f"{str(path)!r} is not a directory (for a Hub id use from_pretrained)")
        hf_config, tensors = _read_dir(path)
    elif hasattr(model_or_dir, "config") and hasattr(model_or_dir, "state_dict"):
        hf_config, tensors = model_or_dir.config, model_or_dir.state_dict()
    else:
        raise ValueError(f"model_or_dir: expected a transformers model or a local directory; "
                         f"got {type(model_or_dir).__name__}")
    config = config_from_hf(hf_config)
    state = state_dict_from_hf(tensors, config, hf_config.model_type)
    if dtype is None:
        dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    model = DecoderLM(config)
    model.load_state_dict(state, strict=True)                    # every shape checked
    return model.to(dtype).eval()


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub can be reached: False when ``HF_HUB_OFFLINE`` is set, else one
    TCP connection to huggingface.co:443 within ``timeout`` seconds (no request is sent)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline_message(what: str, repo_id: str, reason: str) -> str:
    return (f"{what}({repo_id!r}): not a local directory, so it is a Hugging Face Hub id, and {reason}. "
            f"Loading from the Hub needs the network; offline, pass a local directory with config.json "
            f"and *.safetensors (what save_pretrained writes).")


def _download(repo_id: str, cache_dir=None, patterns=None) -> Path:
    hub = _require("huggingface_hub")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        return Path(hub.snapshot_download(repo_id, allow_patterns=patterns, cache_dir=cache_dir,
                                          local_files_only=offline))
    except Exception as exc:            # no network, offline mode without a cached copy, unknown repo
        reason = ("HF_HUB_OFFLINE is set and it is not in the local cache" if offline
                  else f"the download failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        raise HubUnavailableError(_offline_message("from_pretrained", repo_id, reason)) from exc


def from_pretrained(repo_id_or_dir, dtype: torch.dtype | None = None, *, cache_dir=None) -> DecoderLM:
    """:func:`from_hf` of a local directory, or of a Hub id downloaded with ``huggingface_hub``
    (config and safetensors only; the Hugging Face cache is reused, and with ``HF_HUB_OFFLINE`` set
    only the cache is read). Raises :class:`HubUnavailableError` when a Hub id cannot be fetched."""
    path = Path(repo_id_or_dir)
    if not path.is_dir():
        path = _download(str(repo_id_or_dir), cache_dir,
                         ["config.json", "*.safetensors", "*.safetensors.index.json"])
    return from_hf(path, dtype=dtype)


def load_tokenizer(repo_or_dir, *, cache_dir=None):
    """The checkpoint's Hugging Face tokenizer (``AutoTokenizer``) from a local directory or a Hub id.

    Raises :class:`HubUnavailableError` when a Hub id cannot be fetched and ``ValueError`` when a
    directory has no tokenizer files. Offline, the course's ``course_lib.data.CharTokenizer`` is the
    tokenizer to use (with a model whose vocabulary it matches).
    """
    transformers = _require("transformers")
    path = Path(repo_or_dir)
    if not path.is_dir():
        path = _download(str(repo_or_dir), cache_dir,
                         ["tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "*.model", "config.json"])
    names = {p.name for p in path.iterdir()}
    if not names & {"tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model"}:
        raise ValueError(f"repo_or_dir: expected tokenizer files (tokenizer.json, tokenizer_config.json, …) "
                         f"in {str(path)!r}; found {sorted(names)}")
    return transformers.AutoTokenizer.from_pretrained(str(path))


# ============================================================================ the offline proof
# Small models of each family: a window smaller than the prompts (Mistral, Gemma-2), GQA, Gemma-2's
# head_dim ≠ d_model / heads and query_pre_attn_scalar ≠ head_dim, caps small enough to act.
TINY_CONFIGS = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=64, initializer_range=0.2,
                  bos_token_id=1, eos_token_id=2)),
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=128,
                   rope_parameters={"rope_type": "default", "rope_theta": 500000.0})),
    "mistral": ("MistralConfig", "MistralForCausalLM",
                dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, sliding_window=4, max_position_embeddings=128)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(vocab_size=96, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(vocab_size=96, hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
                    attn_logit_softcapping=1.0, final_logit_softcapping=2.0, max_position_embeddings=128,
                    pad_token_id=0, bos_token_id=1, eos_token_id=2)),
}


def tiny_hf_model(family: str, seed: int = 0, noise: float = 0.05, **overrides):
    """A small random ``transformers`` model of ``family`` (a key of :data:`TINY_CONFIGS`), eval mode.

    Seeded; every parameter gets ``noise · N(0, 1)`` added, since HF initialises norms to 1
    (Gemma: 0) and biases to 0, and a mapping that dropped them would go unnoticed. Attention is
    HF's ``"eager"`` path; ``generate`` never stops early (no end-of-sequence token) and pads with 0.
    """
    transformers = _require("transformers")
    if family not in TINY_CONFIGS:
        raise ValueError(f"family: expected one of {list(TINY_CONFIGS)}; got {family!r}")
    cfg_name, model_name, kwargs = TINY_CONFIGS[family]
    kwargs = {**kwargs, **overrides}
    if int(transformers.__version__.split(".")[0]) < 5 and "rope_parameters" in kwargs:   # 4.x: rope_theta
        kwargs["rope_theta"] = kwargs.pop("rope_parameters")["rope_theta"]
    cfg = getattr(transformers, cfg_name)(**kwargs)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


@torch.no_grad()
def compare_with_hf(hf_model, ours: DecoderLM, prompts, max_new_tokens: int = 8) -> dict:
    """Our model against the Hugging Face one on ``prompts`` (token-id lists, left-padded together).

    Returns ``{"max_abs_diff": max |Δ logit| over the real tokens, "same_tokens": greedy
    ``generation.generate`` (our KV cache) == HF ``generate``, "ours_tokens", "hf_tokens",
    "params": (ours by formula, HF's num_parameters())}``. HF gets the position ids of the
    padded rows (``positions_from_mask``), as its ``generate`` computes them.
    """
    device = next(ours.parameters()).device
    ids, mask = left_pad(prompts, device=device)
    theirs = hf_model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
    mine = ours(ids, attention_mask=mask)
    real = mask.bool()
    diff = (mine[real].float() - theirs[real].float()).abs().max().item()
    hf_tokens = hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, pad_token_id=0)[:, ids.shape[1]:]
    our_tokens = generate(ours, prompts, max_new_tokens)
    return {"max_abs_diff": diff, "same_tokens": bool(torch.equal(our_tokens, hf_tokens)),
            "ours_tokens": our_tokens, "hf_tokens": hf_tokens,
            "params": (count_parameters(ours.config), hf_model.num_parameters())}
