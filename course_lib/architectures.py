"""Named recipes of modern decoder-only LLMs, assembled from ``course_lib.model`` parts (Chapter 13).

Five recipes, seven years apart at the ends:

* **GPT-2** (2019): LayerNorm before each sub-layer, learned absolute positions, GELU FFN of
  width 4d, biases everywhere, dropout, tied input/output embeddings.
* **LLaMA-3** (2024): RMSNorm, no biases, no dropout, RoPE (base 500 000), SwiGLU, GQA (8 K/V
  heads for 32 query heads), untied head.
* **Mistral 7B** (2023): LLaMA's recipe + sliding-window attention (window 4096 on every layer).
* **Mixtral 8x7B** (2024): Mistral's block with every FFN replaced by 8 SwiGLU experts, top-2.
* **Gemma-2** (2024): RMSNorm before *and after* each sub-layer ("sandwich"), GeGLU, RoPE, GQA,
  local (window 4096) and global layers alternating, soft-capping ``σ · tanh(x / σ)`` of the
  attention scores (σ = 50) and of the final logits (σ = 30), tied embeddings.

``gpt2_config(**overrides)`` … ``gemma2_config(**overrides)`` return *toy-sized*
:class:`~course_lib.model.ModelConfig`\\ s with those recipes (a few hundred thousand parameters).
:data:`PUBLISHED` holds the real hyper-parameters of the published models as ``ModelConfig``
keyword arguments (``published_config(name)`` builds one; Gemma-2's 16 heads of 256 in a
3584-wide model need the explicit ``head_dim``), and ``course_lib.model.count_parameters`` counts
them; :data:`PUBLISHED_TOTALS` are the totals of the released checkpoints, which it reproduces exactly.
"""

from __future__ import annotations

from course_lib.model import ModelConfig

__all__ = [
    "RECIPES",
    "PUBLISHED",
    "PUBLISHED_TOTALS",
    "gpt2_config",
    "llama3_config",
    "mistral_config",
    "mixtral_config",
    "gemma2_config",
    "make_config",
    "published_config",
    "recipe_row",
]

# toy sizes shared by every recipe (a character-level vocabulary by default)
_TOY = dict(vocab_size=96, d_model=64, n_layers=4, n_heads=4, max_seq_len=256)


def _make(defaults: dict, overrides: dict) -> ModelConfig:
    unknown = set(overrides) - set(ModelConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"overrides: expected ModelConfig fields; got unknown {sorted(unknown)}")
    return ModelConfig(**{**_TOY, **defaults, **overrides})


def gpt2_config(**overrides) -> ModelConfig:
    """GPT-2: pre-LayerNorm (with β), learned positions, GELU FFN 4d, biases, dropout 0.1, tied head."""
    return _make(dict(norm="layernorm", norm_placement="pre", pos_encoding="learned", ffn="gelu",
                      bias=True, dropout=0.1, tie_embeddings=True), overrides)


def llama3_config(**overrides) -> ModelConfig:
    """LLaMA-3: pre-RMSNorm, RoPE (base 500 000), SwiGLU, GQA (4 query heads per K/V head, as
    32/8), no biases, no dropout, untied head."""
    return _make(dict(norm="rmsnorm", norm_placement="pre", pos_encoding="rope", rope_base=500000.0,
                      ffn="swiglu", n_kv_heads=1, bias=False, dropout=0.0, tie_embeddings=False), overrides)


def mistral_config(**overrides) -> ModelConfig:
    """Mistral 7B: LLaMA's block (RoPE base 10 000) + a sliding window on every layer."""
    return llama3_config(**{"rope_base": 10000.0, "window": 32, **overrides})


def mixtral_config(**overrides) -> ModelConfig:
    """Mixtral 8x7B: Mistral's block with 8 SwiGLU experts, top-2 routing (RoPE base 10⁶, full attention)."""
    return llama3_config(**{"rope_base": 1e6, "n_experts": 8, "top_k": 2, **overrides})


def gemma2_config(**overrides) -> ModelConfig:
    """Gemma-2: sandwich RMSNorm, RoPE, GeGLU, GQA (2 query heads per K/V head, as 16/8),
    local (windowed) and global layers alternating — layer 0 local —, attention soft-cap 50,
    final soft-cap 30, tied head, no biases."""
    return _make(dict(norm="rmsnorm", norm_placement="sandwich", pos_encoding="rope", rope_base=10000.0,
                      ffn="geglu", n_kv_heads=2, window=32, local_global=True, attn_softcap=50.0,
                      final_softcap=30.0, bias=False, dropout=0.0, tie_embeddings=True), overrides)


RECIPES = {
    "GPT-2": gpt2_config,
    "LLaMA-3": llama3_config,
    "Mistral": mistral_config,
    "Mixtral": mixtral_config,
    "Gemma-2": gemma2_config,
}


def make_config(name: str, **overrides) -> ModelConfig:
    """The toy config of recipe ``name`` (a key of :data:`RECIPES`)."""
    if name not in RECIPES:
        raise ValueError(f"name: expected one of {list(RECIPES)}; got {name!r}")
    return RECIPES[name](**overrides)


def recipe_row(config: ModelConfig) -> dict:
    """One row of the recipe table: the choices a config makes, as short strings."""
    window = "—" if config.window is None else (f"{config.window} (even layers)" if config.local_global
                                                 else f"{config.window} (all layers)")
    caps = [f"attn {config.attn_softcap:g}" if config.attn_softcap else "",
            f"final {config.final_softcap:g}" if config.final_softcap else ""]
    return {
        "norm": f"{config.norm} ({config.norm_placement})",
        "positions": config.pos_encoding + (f" (base {config.rope_base:g})" if config.pos_encoding == "rope" else ""),
        "FFN": config.ffn,
        "heads / kv": f"{config.n_heads} / {config.n_kv_heads}",
        "window": window,
        "MoE": f"{config.n_experts} experts, top-{config.top_k}" if config.n_experts else "—",
        "bias": "yes" if config.bias else ("q, k, v" if config.qkv_bias else "no"),
        "dropout": f"{config.dropout:g}",
        "tied": "yes" if config.tie_embeddings else "no",
        "soft-cap": ", ".join(c for c in caps if c) or "—",
    }


# ----------------------------------------------------------------------------- published models
# Hyper-parameters from the papers / released configs (Radford et al. 2019; Grattafiori et al. 2024,
# Table 3; Jiang et al. 2023, Table 1; Jiang et al. 2024, Table 1; Gemma Team 2024, Tables 1–2), as
# ModelConfig keyword arguments: one schema for toy and published models.
_LLAMA_BLOCK = dict(norm="rmsnorm", pos_encoding="rope", ffn="swiglu", bias=False, tie_embeddings=False)
PUBLISHED = {
    "gpt2-small": dict(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_seq_len=1024,
                       ffn="gelu", norm="layernorm", pos_encoding="learned", bias=True, tie_embeddings=True),
    "llama-3-8b": dict(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
                       max_seq_len=8192, rope_base=500000.0, **_LLAMA_BLOCK),
    "mistral-7b": dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
                       max_seq_len=8192, window=4096, **_LLAMA_BLOCK),
    "mixtral-8x7b": dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
                         max_seq_len=32768, rope_base=1e6, n_experts=8, top_k=2, **_LLAMA_BLOCK),
    "gemma-2-9b": dict(vocab_size=256000, d_model=3584, n_layers=42, n_heads=16, n_kv_heads=8, head_dim=256,
                       d_ff=14336, max_seq_len=8192, ffn="geglu", norm="rmsnorm", norm_placement="sandwich",
                       pos_encoding="rope", bias=False, tie_embeddings=True, window=4096, local_global=True,
                       attn_softcap=50.0, final_softcap=30.0),
}

# (total, active per token or None, where the number comes from)
PUBLISHED_TOTALS = {
    "gpt2-small": (124_439_808, None, "released checkpoint (the paper's table says 117M)"),
    "llama-3-8b": (8_030_261_248, None, "released checkpoint; model card: 8B"),
    "mistral-7b": (7_241_732_096, None, "released checkpoint; paper: 7B, release note: 7.3B"),
    "mixtral-8x7b": (46_702_792_704, 12.9e9, "released checkpoint; paper: 47B total, 13B active; release: 12.9B active"),
    "gemma-2-9b": (8_324_201_984 + 917_504_000, None, "paper Table 2: 8,324,201,984 non-embedding + 917,504,000 embedding"),
}


def published_config(name: str) -> ModelConfig:
    """The ``ModelConfig`` of a published model (a key of :data:`PUBLISHED`): for counting and
    for building it on the ``meta`` device (its weights would take gigabytes)."""
    if name not in PUBLISHED:
        raise ValueError(f"name: expected one of {list(PUBLISHED)}; got {name!r}")
    return ModelConfig(**PUBLISHED[name])
