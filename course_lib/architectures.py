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
:data:`PUBLISHED` holds the real hyper-parameters of the published models, and
:func:`published_parameters` counts their parameters by formula (with an explicit ``head_dim``:
Gemma-2's 16 · 256 = 4096 ≠ d_model = 3584, which ``ModelConfig`` cannot express);
:data:`PUBLISHED_TOTALS` are the totals the papers and model cards report.
"""

from __future__ import annotations

from course_lib.ffn import ffn_num_parameters
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
    "published_parameters",
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
        "heads / kv": f"{config.n_heads} / {config.kv_heads}",
        "window": window,
        "MoE": f"{config.n_experts} experts, top-{config.top_k}" if config.n_experts else "—",
        "bias": "yes" if config.bias else "no",
        "dropout": f"{config.dropout:g}",
        "tied": "yes" if config.tie_embeddings else "no",
        "soft-cap": ", ".join(c for c in caps if c) or "—",
    }


# ----------------------------------------------------------------------------- published models
# Hyper-parameters from the papers / released configs (Radford et al. 2019; Grattafiori et al. 2024,
# Table 3; Jiang et al. 2023, Table 1; Jiang et al. 2024, Table 1; Gemma Team 2024, Tables 1–2).
PUBLISHED = {
    "gpt2-small": dict(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, head_dim=64,
                       d_ff=3072, ffn="gelu", norm="layernorm", sandwich=False, bias=True, tie_embeddings=True,
                       max_seq_len=1024, learned_positions=True, n_experts=0, top_k=0),
    "llama-3-8b": dict(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128,
                       d_ff=14336, ffn="swiglu", norm="rmsnorm", sandwich=False, bias=False, tie_embeddings=False,
                       max_seq_len=8192, learned_positions=False, n_experts=0, top_k=0, rope_base=500000.0),
    "mistral-7b": dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128,
                       d_ff=14336, ffn="swiglu", norm="rmsnorm", sandwich=False, bias=False, tie_embeddings=False,
                       max_seq_len=8192, learned_positions=False, n_experts=0, top_k=0, window=4096),
    "mixtral-8x7b": dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128,
                         d_ff=14336, ffn="swiglu", norm="rmsnorm", sandwich=False, bias=False, tie_embeddings=False,
                         max_seq_len=32768, learned_positions=False, n_experts=8, top_k=2),
    "gemma-2-9b": dict(vocab_size=256000, d_model=3584, n_layers=42, n_heads=16, n_kv_heads=8, head_dim=256,
                       d_ff=14336, ffn="geglu", norm="rmsnorm", sandwich=True, bias=False, tie_embeddings=True,
                       max_seq_len=8192, learned_positions=False, n_experts=0, top_k=0, window=4096,
                       attn_softcap=50.0, final_softcap=30.0),
}

# (total, active per token or None, where the number comes from)
PUBLISHED_TOTALS = {
    "gpt2-small": (124_439_808, None, "released checkpoint (the paper's table says 117M)"),
    "llama-3-8b": (8.03e9, None, "model card: 8B (8.03B)"),
    "mistral-7b": (7.24e9, None, "paper: 7B; release: 7.3B; checkpoint 7.24B"),
    "mixtral-8x7b": (46.7e9, 12.9e9, "paper: 47B total, 13B active; release: 46.7B / 12.9B"),
    "gemma-2-9b": (8_324_201_984 + 917_504_000, None, "paper Table 2: 8,324,201,984 non-embedding + 917,504,000 embedding"),
}


def published_parameters(spec: dict, active: bool = False) -> int:
    """Parameters of a published model by formula (``spec`` as in :data:`PUBLISHED`).

    Per layer: Q and O ``2 · d · h · d_h``, K and V ``2 · d · h_kv · d_h`` (+ biases), the FFN
    (``ffn.ffn_num_parameters``; an MoE: ``n_experts`` FFNs + a router ``d · n_experts``, of which
    ``top_k`` FFNs are *active* per token), 2 norms (4 with the sandwich), ``d`` each (LayerNorm
    with β: ``2d``). Plus the embedding ``V · d``, learned positions, the final norm and an untied
    head ``V · d``.
    """
    d, dh, h, hkv, V = spec["d_model"], spec["head_dim"], spec["n_heads"], spec["n_kv_heads"], spec["vocab_size"]
    b = 1 if spec["bias"] else 0
    norm = d * (1 + b) if spec["norm"] == "layernorm" else d
    attn = 2 * d * h * dh + 2 * d * hkv * dh + b * (h * dh + 2 * hkv * dh + d)
    ffn = ffn_num_parameters(d, spec["d_ff"], spec["ffn"], bias=spec["bias"])
    if spec["n_experts"]:
        ffn = (spec["top_k"] if active else spec["n_experts"]) * ffn + d * spec["n_experts"]
    block = attn + ffn + (4 if spec["sandwich"] else 2) * norm
    total = V * d + spec["n_layers"] * block + norm
    if spec["learned_positions"]:
        total += spec["max_seq_len"] * d
    if not spec["tie_embeddings"]:
        total += V * d
    return total
