"""A small decoder-only language model that later chapters plug their variants into.

    h⁰ = E[x] + P[pos]                                   token + (optional) absolute positions
    hˡ = hˡ⁻¹ + Attn(Norm₁(hˡ⁻¹)),  hˡ ← hˡ + FFN(Norm₂(hˡ))   pre-norm blocks, l = 1 … L
                                                        (Chapter 9: post-norm and sandwich too)
    logits = Norm_f(hᴸ) Eᵀ                                  LM head (tied to E by default)

It is GPT-2-shaped (learned positions, LayerNorm, GELU FFN, biases) and small enough to train on a
laptop CPU. The file reads top to bottom: the configuration, the model, its block, its attention,
then the parts the chapters swap in, the parameter count, and last the validation of a config.

Everything a later chapter varies goes through :class:`ModelConfig`:

* Chapter 4 (this one): ``n_kv_heads`` — multi-head (``n_kv_heads = n_heads``), multi-query
  (``1``) or grouped-query attention (a divisor of ``n_heads``); ``window`` — sliding-window
  attention; the KV cache (``course_lib.kv_cache``; generation is ``course_lib.generation``).
* Chapter 6 adds position schemes at two extension points: :func:`build_absolute_positions`
  (absolute schemes added to the embeddings) and :meth:`CausalSelfAttention.apply_positions` /
  :meth:`CausalSelfAttention.attention_bias` (schemes applied inside attention: RoPE rotates q
  and k *before* k is written into the cache, as LLaMA does; ALiBi adds a bias; Shaw's relative
  scheme has an attention function of its own).
* Chapters 7–9 and 13 add FFN, norm and MoE variants through :func:`build_ffn` and
  :func:`build_norm`, and Gemma-2's soft-capping through the ``"eager"`` attention function.
  Chapter 13 loads real checkpoints (``course_lib.pretrained``), which need four more fields:
  ``qkv_bias`` (Qwen2), ``norm_offset`` and ``scale_embeddings`` (Gemma), ``attn_scale`` (Gemma-2).

**Attention is chosen once.** :data:`ATTENTION_FUNCTIONS` maps ``config.attn_implementation`` to a
module-level function with one signature (as Hugging Face's ``eager_attention_forward``):
``"sdpa"`` — PyTorch's fused ``scaled_dot_product_attention`` with grouped queries, so that GQA/MQA
never copy K/V (the default); ``"repeat_kv"`` — K/V heads copied ``n_rep`` times first, the
textbook version Chapter 4 measures against; ``"eager"`` — scores, soft-cap, mask and softmax
written out (Gemma-2); ``"relative"`` — Shaw et al.'s relative positions. ``forward`` has one path.

**Columns, positions and masks.** A batch of prompts of different lengths is *left*-padded, so
that every sequence ends in the last column and the next token of every sequence goes into the
same new column. ``attention_mask`` ``[B, S]`` has 1 at real tokens and 0 at padding, over *all*
columns seen so far (the cached ones and the new ones), as in Hugging Face. Two different indices
are in play:

* the **column** (time step) of a token in the padded batch, ``0 … S − 1``: causality and the
  sliding window are decided on columns (query column ``i`` sees key column ``j`` iff
  ``j ≤ i`` and, with a window ``W``, ``i − j < W``), and padding by ``attention_mask``;
* the **position id** fed to the position embedding: ``cumsum(attention_mask) − 1`` clamped at
  0, so that a real token's position does not depend on how much padding precedes it. That is
  why a prompt gives the same logits padded in a batch or alone.

Because padding is a prefix, the distance between two real tokens is the same in columns and in
positions; the key positions handed to ``attention_bias`` are derived from that.

``tests/test_model.py`` checks the block against ``course_lib.attention`` and a hand-written
reference, every attention function against the others, and ``count_parameters`` against the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.attention import group_queries, grouped_query_attention, repeat_kv, softcap, ungroup_queries
from course_lib.ffn import FFN_KINDS, GLU_VARIANTS, build_feed_forward, ffn_num_parameters, glu_hidden_dim
from course_lib.masks import causal_mask
from course_lib.moe import MoE
from course_lib.norms import NORM_PLACEMENTS, RMSNorm, residual_block
from course_lib.positional import (
    LearnedPositionalEmbedding,
    RelativePositionEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
    alibi_bias,
    alibi_slopes,
    apply_rotary_pos_emb,
    relative_attention,
)
from course_lib.utils import check_choice, check_int, check_number, check_probability, check_tensor

__all__ = [
    "POS_ENCODINGS",
    "ATTENTION_FUNCTIONS",
    "ModelConfig",
    "DecoderLM",
    "Block",
    "CausalSelfAttention",
    "sdpa_attention",
    "repeat_kv_attention",
    "eager_attention",
    "relative_position_attention",
    "build_absolute_positions",
    "build_norm",
    "build_ffn",
    "positions_from_mask",
    "attention_mask_from_indices",
    "count_parameters",
    "mha_to_gqa",
]

# absolute (added to the embeddings): none, learned, sinusoidal; inside attention: relative, rope, alibi
POS_ENCODINGS = ("none", "learned", "sinusoidal", "relative", "rope", "alibi")
NORMS = ("layernorm", "rmsnorm")
ROPE_SCALINGS = ("linear", "ntk")


# ============================================================================ the configuration
@dataclass
class ModelConfig:
    """Hyper-parameters of :class:`DecoderLM`, validated and resolved once at construction.

    The derived fields (``n_kv_heads``, ``head_dim``, ``d_ff``, ``qkv_bias``, ``norm_eps``,
    ``attn_implementation``, ``attn_scale``) may be given as None; ``__post_init__`` replaces None by the value the
    other fields imply, so that every reader sees one number. To change a field of an existing
    config use :meth:`replace`, which re-derives the fields that were derived before.

    Attributes:
        vocab_size: number of token ids.
        d_model: width of the residual stream.
        n_layers: number of blocks.
        n_heads: query heads.
        n_kv_heads: key/value heads. None → ``n_heads`` (MHA); ``1`` → MQA; a divisor of
            ``n_heads`` → GQA with ``n_rep = n_heads / n_kv_heads`` query heads per K/V head.
        head_dim: width of a head. None → ``d_model / n_heads``; set it when ``n_heads · head_dim``
            differs from ``d_model`` (Gemma-2 9B: 16 heads of 256 in a 3584-wide model).
        max_seq_len: the longest sequence (the size of a learned position table).
        d_ff: hidden width of the FFN; None → ``4 · d_model`` (``"relu"``, ``"gelu"``) or, for a
            GLU variant, ``ffn.glu_hidden_dim(d_model, multiple_of=64)`` ≈ 8/3 · d_model.
        ffn: the FFN kind (Chapter 7, ``course_lib.ffn``): ``"gelu"``, ``"gelu_tanh"`` (GPT-2's
            released weights: GELU's tanh approximation), ``"relu"``, or a GLU variant ``"glu"``,
            ``"bilinear"``, ``"reglu"``, ``"geglu"``, ``"swiglu"`` (LLaMA), ``"geglu_tanh"`` (Gemma).
        pos_encoding: ``"none"``, ``"learned"`` (GPT-2), ``"sinusoidal"`` (Vaswani et al.),
            ``"relative"`` (Shaw et al.'s clipped R^K, R^V), ``"rope"`` (RoFormer, LLaMA),
            ``"alibi"`` (Press et al.); see ``course_lib.positional`` and Chapter 6.
        rope_base: RoPE's base (10 000; LLaMA-3 uses 500 000).
        rope_scaling: RoPE context-extension factor s = L'/L (1: none).
        rope_scaling_type: ``"linear"`` — position interpolation, positions divided by s;
            ``"ntk"`` — NTK-aware scaling, base multiplied by s^(d/(d−2)).
        rel_max_distance: the clipping distance k of ``"relative"`` (offsets clip(j − i, −k, k)).
        window: sliding-window attention: a query sees the last ``window`` keys, itself
            included (None: full causal attention).
        dropout: dropout on embeddings, attention weights and residual branches.
        bias: biases in the linear maps.
        qkv_bias: biases in the q, k, v projections; None → ``bias``. Qwen2 has them (and no other
            bias): ``bias=False, qkv_bias=True``.
        tie_embeddings: the LM head reuses the token embedding matrix.
        norm: ``"layernorm"`` (GPT-2; γ, and β when ``bias``) or ``"rmsnorm"`` (LLaMA: γ only);
            see ``course_lib.norms`` and Chapter 9.
        norm_eps: the ε of every norm; None → 1e-5 for LayerNorm (PyTorch's and GPT-2's), 1e-6
            for RMSNorm.
        norm_offset: RMSNorm scales by ``norm_offset + γ`` (Gemma: 1, with γ stored around 0;
            ``norms.RMSNorm``); 0 → by γ.
        scale_embeddings: multiply the token embeddings by √d_model (Gemma: ``h⁰ = √d · E[x]``).
        norm_placement: ``"pre"`` — ``x + F(Norm(x))`` (GPT-2, LLaMA); ``"post"`` —
            ``Norm(x + F(x))`` (Vaswani et al.); ``"sandwich"`` — ``x + Norm(F(Norm(x)))`` (Gemma-2).
        n_experts: Mixture of Experts (Chapter 8, ``course_lib.moe``): ``0`` — a dense FFN; ``n > 0``
            — every FFN is an ``MoE`` layer of ``n`` experts of kind ``ffn`` and width ``d_ff``.
        top_k: experts per token when ``n_experts > 0`` (Mixtral: 8 experts, top-2).
        moe_alpha: weight α of the load-balancing loss each ``MoE`` layer stores in ``aux_loss``
            (add ``course_lib.moe.moe_aux_loss(model)`` to the training loss).
        attn_softcap: Gemma-2's soft-capping of the attention scores, ``σ · tanh(s / σ)`` before the
            mask and softmax (None: off; Gemma-2 uses 50).
        final_softcap: soft-capping of the output logits (None: off; Gemma-2 uses 30).
        local_global: with a ``window``, apply it only on the even layers 0, 2, 4, … (local
            attention) and let the odd layers see every key (global), as Gemma-2 alternates them.
            False: every layer uses ``window``. Generation then needs a full (static) cache.
        attn_implementation: a key of :data:`ATTENTION_FUNCTIONS`. None → ``"relative"`` for
            Shaw's positions, ``"eager"`` with ``attn_softcap``, else ``"sdpa"``.
        attn_scale: the factor of the scores ``q kᵀ``; None → ``1 / √head_dim``. Gemma-2 scales by
            ``query_pre_attn_scalar^(−1/2) = 1/√256`` whatever its head width (27B: d_h = 128).
    """

    vocab_size: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None
    max_seq_len: int = 256
    d_ff: int | None = None
    ffn: str = "gelu"
    pos_encoding: str = "learned"
    rope_base: float = 10000.0
    rope_scaling: float = 1.0
    rope_scaling_type: str = "linear"
    rel_max_distance: int = 16
    window: int | None = None
    dropout: float = 0.0
    bias: bool = True
    qkv_bias: bool | None = None
    tie_embeddings: bool = True
    norm: str = "layernorm"
    norm_eps: float | None = None
    norm_offset: float = 0.0
    scale_embeddings: bool = False
    norm_placement: str = "pre"
    n_experts: int = 0
    top_k: int = 2
    moe_alpha: float = 0.01
    attn_softcap: float | None = None
    final_softcap: float | None = None
    local_global: bool = False
    attn_implementation: str | None = None
    attn_scale: float | None = None

    def __post_init__(self):
        _validate(self)
        for name, value in _derived(self).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        _validate_resolved(self)

    @property
    def n_rep(self) -> int:
        """Query heads per K/V head: ``n_heads / n_kv_heads`` (1 for MHA, ``n_heads`` for MQA)."""
        return self.n_heads // self.n_kv_heads

    def layer_window(self, layer_idx: int) -> int | None:
        """The window of layer ``layer_idx``: ``window`` on every layer, or with ``local_global``
        on the even (local) layers only — layer 0 is local, as in Gemma-2 — and None on the odd ones."""
        if self.local_global and layer_idx % 2 == 1:
            return None
        return self.window

    def replace(self, **changes) -> "ModelConfig":
        """A copy with ``changes``; a derived field that still has its derived value is derived
        again from the new values (``replace(ffn="swiglu")`` gets the GLU width, not the old 4d)."""
        values = self.to_dict()
        for name, value in _derived(self).items():
            if name not in changes and values[name] == value:
                values[name] = None
        return ModelConfig(**{**values, **changes})

    def to_dict(self) -> dict:
        return asdict(self)


def _derived(config: ModelConfig) -> dict:
    """The values the derived fields take when given as None."""
    glu = config.ffn in GLU_VARIANTS
    if config.pos_encoding == "relative":
        implementation = "relative"
    else:
        implementation = "eager" if config.attn_softcap is not None else "sdpa"
    head_dim = config.head_dim if config.head_dim is not None else config.d_model // config.n_heads
    return {
        "n_kv_heads": config.n_heads,
        "head_dim": config.d_model // config.n_heads,
        "qkv_bias": config.bias,
        "d_ff": glu_hidden_dim(config.d_model, multiple_of=64) if glu else 4 * config.d_model,
        "norm_eps": 1e-6 if config.norm == "rmsnorm" else 1e-5,
        "attn_implementation": implementation,
        "attn_scale": 1.0 / math.sqrt(head_dim),
    }


# ============================================================================ the model
class DecoderLM(nn.Module):
    """Decoder-only language model: embeddings → ``n_layers`` blocks → final norm → LM head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ValueError(f"config: expected a ModelConfig; got {type(config).__name__}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = build_absolute_positions(config)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm_f = build_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():      # GPT-2: residual projections scaled by 1/√(2L)
            if name.endswith(("o_proj.weight", "down_proj.weight")):   # attention, FFN, GLU, experts
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        """Trainable parameters, a tied matrix counted once."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """Logits ``[B, T, vocab_size]`` for ``input_ids`` ``[B, T]``.

        Args:
            position_ids: ``[B, T]``; default from ``attention_mask`` (left padding) or
                ``past … past + T − 1``.
            attention_mask: ``[B, past + T]`` (1 = real token, 0 = padding) over the cached and
                the new columns; None: no padding.
            cache: a ``course_lib.kv_cache`` cache, updated in place (``past`` tokens in it).
        """
        B, T, past = self._check_inputs(input_ids, position_ids, attention_mask, cache)
        if position_ids is None:
            if attention_mask is not None:
                position_ids = positions_from_mask(attention_mask)[:, past:]
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        if self.pos_emb is not None and int(position_ids.max()) >= self.config.max_seq_len:
            raise ValueError(f"position_ids: expected positions < max_seq_len = {self.config.max_seq_len}; "
                             f"got {int(position_ids.max())}")
        x = self.tok_emb(input_ids)
        if self.config.scale_embeddings:                          # Gemma: √d · E[x]
            x = x * torch.tensor(math.sqrt(self.config.d_model), dtype=x.dtype)
        if self.pos_emb is not None:
            x = x + self.pos_emb(position_ids)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, position_ids, attention_mask, cache, i)
        logits = self.lm_head(self.norm_f(x))
        if self.config.final_softcap is not None:                 # Gemma-2: σ · tanh(logits / σ)
            logits = softcap(logits, self.config.final_softcap)
        return logits

    def _check_inputs(self, input_ids, position_ids, attention_mask, cache) -> tuple[int, int, int]:
        """The public edge: every check of a forward pass is here, none inside the layers."""
        check_tensor("input_ids", input_ids, ndim=2)
        if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids: expected an integer dtype; got {input_ids.dtype}")
        B, T = input_ids.shape
        if T == 0:
            raise ValueError("input_ids: expected at least one token; got shape (B, 0)")
        past = cache.get_seq_length(0) if cache is not None else 0
        if attention_mask is not None:
            check_tensor("attention_mask", attention_mask, ndim=2)
            if tuple(attention_mask.shape) != (B, past + T):
                raise ValueError(
                    f"attention_mask: expected shape (B, past + T) = {(B, past + T)} (cached and new columns); "
                    f"got {tuple(attention_mask.shape)}"
                )
        if position_ids is not None and tuple(position_ids.shape) != (B, T):
            raise ValueError(f"position_ids: expected shape (B, T) = {(B, T)}; got {tuple(position_ids.shape)}")
        return B, T, past


class Block(nn.Module):
    """Transformer block: attention, then the FFN, each a residual sub-layer with its norm placed by
    ``config.norm_placement`` (``course_lib.norms.residual_block``):

    pre (default): ``x + attn(norm1(x))``, then ``x + ffn(norm2(x))``;
    post: ``norm1(x + attn(x))``, then ``norm2(x + ffn(x))``;
    sandwich (Gemma-2): ``x + post_norm1(attn(norm1(x)))``, then ``x + post_norm2(ffn(norm2(x)))``.
    """

    def __init__(self, config: ModelConfig, layer_idx: int = 0):
        super().__init__()
        self.placement = config.norm_placement
        self.norm1 = build_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.norm2 = build_norm(config)
        self.ffn = build_ffn(config)
        self.drop = nn.Dropout(config.dropout)
        if self.placement == "sandwich":
            self.post_norm1, self.post_norm2 = build_norm(config), build_norm(config)
        else:
            self.post_norm1 = self.post_norm2 = None

    def forward(self, x, position_ids, attention_mask=None, cache=None, layer_idx: int = 0):
        attn = lambda h: self.drop(self.attn(h, position_ids, attention_mask, cache, layer_idx))  # noqa: E731
        x = residual_block(x, attn, self.norm1, self.placement, self.post_norm1)
        return residual_block(x, lambda h: self.drop(self.ffn(h)), self.norm2, self.placement, self.post_norm2)


# ============================================================================ attention
class CausalSelfAttention(nn.Module):
    """Causal self-attention with ``n_heads`` query heads and ``n_kv_heads`` key/value heads.

    ``q_proj``: ``d_model → n_heads · head_dim``; ``k_proj``, ``v_proj``:
    ``d_model → n_kv_heads · head_dim``; ``o_proj``: ``n_heads · head_dim → d_model``. With a cache
    the new keys and values are written into it and attention runs over everything cached so far.
    The attention itself is ``ATTENTION_FUNCTIONS[config.attn_implementation]``, chosen here once.
    """

    def __init__(self, config: ModelConfig, layer_idx: int = 0):
        super().__init__()
        self.config = config
        self.window = config.layer_window(layer_idx)     # None on Gemma-2's global layers
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.n_rep = config.n_rep
        self.dropout = config.dropout
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(config.d_model, q_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.d_model, kv_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.d_model, kv_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(q_dim, config.d_model, bias=config.bias)
        self.attention_interface = ATTENTION_FUNCTIONS[config.attn_implementation]
        # Chapter 6: the schemes that act inside attention (course_lib.positional)
        self.rotary = (RotaryEmbedding(self.head_dim, config.rope_base, config.rope_scaling,
                                       scaling_type=config.rope_scaling_type)
                       if config.pos_encoding == "rope" else None)
        self.relative = (RelativePositionEmbedding(self.head_dim, config.rel_max_distance)
                         if config.pos_encoding == "relative" else None)
        if config.pos_encoding == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(self.n_heads), persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache=None, layer_idx: int = 0) -> torch.Tensor:
        """x ``[B, T, d_model]``, position_ids ``[B, T]``, attention_mask ``[B, past + T]`` → ``[B, T, d_model]``."""
        B, T, _ = x.shape
        past = cache.get_seq_length(layer_idx) if cache is not None else 0
        q = self._split(self.q_proj(x), self.n_heads)             # [B, h,    T, d]
        k = self._split(self.k_proj(x), self.n_kv_heads)          # [B, h_kv, T, d]
        v = self._split(self.v_proj(x), self.n_kv_heads)
        q, k = self.apply_positions(q, k, position_ids)

        q_idx = torch.arange(past, past + T, device=x.device)     # [T] column of each query
        if cache is None:
            k_idx, ordered = q_idx, True
        else:
            k, v = cache.update(k, v, layer_idx)                  # every key so far: [B, h_kv, S, d]
            k_idx, ordered = cache.key_indices(layer_idx), cache.ordered   # [S] column of each key
        offset = position_ids[:, -1:] - q_idx[-1]                 # key positions: as far back as in columns
        k_positions = (k_idx[None, :] + offset).clamp_min(0)     # [B, S]
        mask, is_causal = self.mask(q_idx, k_idx, ordered, attention_mask, position_ids, k_positions, q.dtype)
        out = self.attention_interface(self, q, k, v, mask, is_causal, position_ids, k_positions)  # [B, h, T, d]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def _split(self, x: torch.Tensor, n: int) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)     # [B, n, T, d]

    def mask(self, q_idx, k_idx, ordered: bool, attention_mask, q_positions, k_positions, dtype):
        """``(mask, is_causal)``: who may attend to whom, for queries at columns ``q_idx`` ``[T]``
        over keys at columns ``k_idx`` ``[S]``.

        Plain causal attention over keys in order needs no mask tensor: ``(None, T > 1)``, with
        ``is_causal`` bottom-right aligned (the T queries are the last T of the S keys; one query
        sees every key). Padding, a window, a rolling cache's unordered slots or a bias (ALiBi) give
        an explicit mask ``[B or 1, 1 or h, T, S]``: boolean, or additive when there is a bias.
        """
        bias = self.attention_bias(q_positions, k_positions)
        if attention_mask is None and self.window is None and ordered and bias is None:
            return None, len(q_idx) > 1
        key_valid = attention_mask.bool()[:, k_idx.clamp_min(0)] if attention_mask is not None else None
        mask = attention_mask_from_indices(q_idx, k_idx, key_valid, self.window)
        if bias is not None:
            mask = torch.where(mask, bias.to(dtype), float("-inf"))
        return mask, False

    # --- extension points (Chapter 6) ---------------------------------------------------------
    def apply_positions(self, q: torch.Tensor, k: torch.Tensor, position_ids: torch.Tensor):
        """Position scheme applied to q ``[B, h, T, d]`` and k ``[B, h_kv, T, d]`` (RoPE in Chapter 6).

        Runs before k is written into the cache, so the cache holds position-encoded keys.
        RoPE rotates both by their positions (HF's half-split layout); every other scheme: the identity.
        """
        if self.rotary is None:
            return q, k
        cos, sin = self.rotary(q, position_ids)                  # [B, T, d]
        return apply_rotary_pos_emb(q, k, cos, sin)

    def attention_bias(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor | None:
        """Additive score bias broadcastable to ``[B, h, T, S]`` (ALiBi in Chapter 6).

        Args: q_positions ``[B, T]`` and k_positions ``[B, S]``, the position ids of the queries
        and of the keys. ALiBi: ``−m_h · |i − j|`` ``[B, h, T, S]``; every other scheme: None
        (Shaw's relative scheme is not a bias — its key term depends on q —, it has its own
        attention function, :func:`relative_position_attention`).
        """
        if self.config.pos_encoding == "alibi":
            return alibi_bias(self.alibi_slopes, q_positions, k_positions)
        return None


# ----------------------------------------------------------------------------- attention functions
# One signature: (module, q [B, h, T, d], k, v [B, h_kv, S, d], mask, is_causal, q_positions [B, T],
# k_positions [B, S]) → [B, h, T, d]. ``mask`` and ``is_causal`` come from CausalSelfAttention.mask.
def _dropout_p(module: nn.Module) -> float:
    return module.dropout if module.training else 0.0


def sdpa_attention(module, q, k, v, mask, is_causal, q_positions=None, k_positions=None):
    """PyTorch's fused attention; GQA/MQA by grouping the queries (``attention.grouped_query_attention``):
    a decoding step reads each K/V head once and copies nothing."""
    return grouped_query_attention(q, k, v, mask, is_causal=is_causal, dropout_p=_dropout_p(module),
                                   scale=module.config.attn_scale)


def repeat_kv_attention(module, q, k, v, mask, is_causal, q_positions=None, k_positions=None):
    """The textbook GQA: copy each K/V head ``n_rep`` times (``repeat_kv``), then fused attention.

    Same outputs as :func:`sdpa_attention`; at a decoding step it writes and reads ``n_rep`` copies
    of the cache, which is why fewer K/V heads do not make it faster (Chapter 4 measures it).
    """
    k, v = repeat_kv(k, module.n_rep), repeat_kv(v, module.n_rep)
    return grouped_query_attention(q, k, v, mask, is_causal=is_causal, dropout_p=_dropout_p(module),
                                   scale=module.config.attn_scale)


def eager_attention(module, q, k, v, mask, is_causal, q_positions=None, k_positions=None):
    """``softmax(mask(cap(s · q kᵀ))) v`` (``s = config.attn_scale``, by default ``1/√d``) written out,
    with Gemma-2's soft-cap ``σ · tanh(s / σ)``
    applied before the mask (so masked keys stay at −inf). Queries grouped as in :func:`sdpa_attention`."""
    B, h, T, d = q.shape
    S = k.shape[2]
    if is_causal:
        mask = causal_mask(T, S, device=q.device)[None, None]
    scores = ungroup_queries(group_queries(q, module.n_kv_heads) @ k.transpose(-2, -1), h) * module.config.attn_scale
    if module.config.attn_softcap is not None:
        scores = softcap(scores, module.config.attn_softcap)        # [B, h, T, S]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = F.dropout(torch.softmax(scores.float(), dim=-1).to(q.dtype), _dropout_p(module), module.training)
    return ungroup_queries(group_queries(weights, module.n_kv_heads) @ v, h)


def relative_position_attention(module, q, k, v, mask, is_causal, q_positions=None, k_positions=None):
    """Shaw et al.'s relative positions (``positional.relative_attention``): the scores get
    ``q_i · a^K_ij`` and the output ``Σ_j α_ij a^V_ij``, which need q and the weights — no fused
    kernel has them; K/V heads repeated for GQA; no attention dropout on this path."""
    if is_causal:
        mask = causal_mask(q.shape[2], k.shape[2], device=q.device)
    k, v = repeat_kv(k, module.n_rep), repeat_kv(v, module.n_rep)
    index = module.relative.index(q_positions, k_positions)[:, None]   # [B, 1, T, S]
    rel = module.relative
    return relative_attention(q, k, v, rel.rel_k.weight, rel.rel_v.weight, index, mask)


ATTENTION_FUNCTIONS = {
    "sdpa": sdpa_attention,
    "repeat_kv": repeat_kv_attention,
    "eager": eager_attention,
    "relative": relative_position_attention,
}


# ============================================================================ the parts chapters swap
def build_absolute_positions(config: ModelConfig) -> nn.Module | None:
    """The absolute position module added to the token embeddings, or None.

    ``"learned"`` → a learned table ``[max_seq_len, d_model]`` (GPT-2;
    ``positional.LearnedPositionalEmbedding``, an ``nn.Embedding``); ``"sinusoidal"`` → the fixed
    sinusoids of Vaswani et al. (no parameters; scaled to the size of the token embeddings at
    initialisation); every other scheme → None (``"none"``: no position information at all — a
    causal model can still infer some from the mask; the relative schemes act inside attention
    instead). The module maps position ids ``[B, T]`` to ``[B, T, d_model]``.
    """
    if config.pos_encoding == "learned":
        return LearnedPositionalEmbedding(config.max_seq_len, config.d_model)
    if config.pos_encoding == "sinusoidal":   # scaled to the RMS of the learned table at init (0.02)
        return SinusoidalPositionalEmbedding(config.d_model, scale=0.02 * math.sqrt(2))
    return None


def build_norm(config: ModelConfig) -> nn.Module:
    """The normalization layer of the blocks and of the output (Chapter 9, ``course_lib.norms``).

    ``"layernorm"`` → ``nn.LayerNorm`` (β only when ``config.bias``); ``"rmsnorm"`` →
    ``nn.RMSNorm`` with no β, as in LLaMA (``course_lib.norms.RMSNorm`` computes the same), or with
    ``config.norm_offset`` (Gemma's ``1 + γ``) ``course_lib.norms.RMSNorm(offset=…)``; all with
    ``config.norm_eps``.
    """
    if config.norm == "rmsnorm" and config.norm_offset:
        return RMSNorm(config.d_model, eps=config.norm_eps, offset=config.norm_offset)
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


def build_ffn(config: ModelConfig) -> nn.Module:
    """The position-wise feed-forward network of kind ``config.ffn`` (Chapter 7, ``course_lib.ffn``).

    ``"gelu"`` (default, GPT-2) or ``"relu"`` → ``FeedForward`` (``up_proj``, ``down_proj``); a GLU
    variant → ``GatedFeedForward`` (``gate_proj``, ``up_proj``, ``down_proj``); both of width
    ``config.d_ff``. With ``config.n_experts > 0`` (Chapter 8): an ``MoE`` layer of ``n_experts``
    such FFNs and a top-``config.top_k`` router.
    """
    if config.n_experts > 0:
        return MoE(config.d_model, config.d_ff, config.n_experts, config.top_k, kind=config.ffn,
                   bias=config.bias, alpha=config.moe_alpha)
    return build_feed_forward(config.ffn, config.d_model, config.d_ff, dropout=0.0, bias=config.bias)


# ----------------------------------------------------------------------------- positions and masks
def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids ``[B, S]`` of a left-padded batch: ``cumsum(mask) − 1``, clamped at 0.

    The first real token of every row gets position 0 however much padding precedes it; the
    padding itself gets 0 (it is never attended to, so its position does not matter).
    """
    check_tensor("attention_mask", attention_mask, ndim=2)
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def attention_mask_from_indices(q_idx: torch.Tensor, k_idx: torch.Tensor,
                                key_valid: torch.Tensor | None = None,
                                window: int | None = None) -> torch.Tensor:
    """Boolean mask ``[B or 1, 1, T, S]`` (True = may attend) from the columns of queries and keys.

    Query column ``i`` may see key column ``j`` iff ``0 ≤ i − j`` (causal), ``i − j < window``
    (sliding window, if any), the key slot is filled (``j ≥ 0``; an empty slot of a rolling
    cache has column −1) and the key is a real token (``key_valid[b, j]``). A query always sees
    its own key, so a padded query has one visible key instead of a fully masked row (its
    output is never used). For ``q_idx = k_idx = 0 … T−1`` this is ``course_lib.masks.causal_mask``
    combined with the padding mask (and ``course_lib.sparse.sliding_window_mask`` for a window).

    Args:
        q_idx: ``[T]`` columns of the queries.
        k_idx: ``[S]`` columns of the keys (any order; −1 = empty slot).
        key_valid: ``[B, S]`` bool, False at padded keys.
        window: the number of keys a query sees, itself included.
    """
    diff = q_idx[:, None] - k_idx[None, :]                     # [T, S] distance back from query to key
    allowed = (diff >= 0) & (k_idx >= 0)[None, :]
    if window is not None:
        allowed &= diff < window
    allowed = allowed[None]                                     # [1, T, S]
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, :]               # [B, T, S]
    allowed = allowed | (diff == 0)[None]                       # no fully masked rows
    return allowed[:, None]                                     # [B, 1, T, S]


# ============================================================================ counting and converting
def count_parameters(config: ModelConfig, active: bool = False) -> int:
    """The parameter count of ``DecoderLM(config)`` by formula (tests compare it with the model).

    Per block: attention ``Q, O: 2·d·h·d_h`` and ``K, V: 2·d·h_kv·d_h`` weights (+ ``h·d_h +
    2·h_kv·d_h`` q/k/v biases with ``qkv_bias``, + ``d`` for O's with ``bias``) — GQA/MQA shrink only K and V; the FFN (``ffn.ffn_num_parameters``:
    ``2·d·d_ff`` + biases, a GLU ``3·d·d_ff``), or an MoE of ``n_experts`` of them + a router
    ``d·n_experts`` (with ``active=True`` only the ``top_k`` experts a token uses are counted);
    two norms (four with ``"sandwich"``) of ``d`` (LayerNorm with β: ``2d``). Plus the embedding
    ``V·d``, learned positions ``max_seq_len·d``, Shaw's tables, the final norm and an untied head ``V·d``.

    The published totals of GPT-2, LLaMA-3-8B, Mistral-7B, Mixtral-8x7B and Gemma-2-9B come out
    exactly (``course_lib.architectures.PUBLISHED``; ``tests/test_architectures.py``).
    """
    d, dh, V = config.d_model, config.head_dim, config.vocab_size
    h, hkv = config.n_heads, config.n_kv_heads
    b = 1 if config.bias else 0
    norm = d * (1 + b) if config.norm == "layernorm" else d          # RMSNorm: γ only
    qb = 1 if config.qkv_bias else 0
    attn = 2 * d * h * dh + 2 * d * hkv * dh + qb * (h * dh + 2 * hkv * dh) + b * d
    ffn = ffn_num_parameters(d, config.d_ff, config.ffn, bias=config.bias)
    if config.n_experts > 0:                            # experts + the router (no bias)
        ffn = (config.top_k if active else config.n_experts) * ffn + d * config.n_experts
    block = attn + ffn + (4 if config.norm_placement == "sandwich" else 2) * norm
    total = V * d + config.n_layers * block + norm
    if config.pos_encoding == "learned":
        total += config.max_seq_len * d
    if config.pos_encoding == "relative":              # R^K and R^V tables, 2k + 1 rows each, per layer
        total += config.n_layers * 2 * (2 * config.rel_max_distance + 1) * dh
    if not config.tie_embeddings:
        total += V * d
    return total


def _pool_heads(w: torch.Tensor, h_from: int, h_to: int) -> torch.Tensor:
    """Rows of a K/V projection ``[h_from·d, ...]`` → ``[h_to·d, ...]``: mean over each group of heads."""
    group = h_from // h_to
    d = w.shape[0] // h_from
    return w.reshape(h_to, group, d, *w.shape[1:]).mean(dim=1).reshape(h_to * d, *w.shape[1:])


def mha_to_gqa(model_or_state, n_kv_heads: int, *, n_heads: int | None = None, kv_heads: int | None = None):
    """Convert K/V projections to ``n_kv_heads`` heads by mean-pooling each group of heads (Chapter 4).

    Ainslie et al. (2023) start GQA "uptraining" this way: the new K/V head ``g`` is the mean of
    the original heads ``g·r … g·r + r − 1`` (``r = heads / n_kv_heads``), the same grouping as
    ``repeat_kv``. The query and output projections are unchanged.

    Args:
        model_or_state: a :class:`DecoderLM` (a new model is returned, the input is not
            modified) or its ``state_dict`` (a new dict is returned; then give ``n_heads``,
            and ``kv_heads`` if the state is already GQA).
        n_kv_heads: the target number of K/V heads; must divide the current number.
    """
    check_int("n_kv_heads", n_kv_heads)
    if isinstance(model_or_state, DecoderLM):
        cfg = model_or_state.config
        current = cfg.n_kv_heads
        state = model_or_state.state_dict()
    elif isinstance(model_or_state, dict):
        if n_heads is None:
            raise ValueError("n_heads: a state_dict does not say how many heads it has; pass n_heads=")
        cfg, state = None, model_or_state
        current = n_heads if kv_heads is None else kv_heads
    else:
        raise ValueError(f"model_or_state: expected a DecoderLM or a state_dict; got {type(model_or_state).__name__}")
    if current % n_kv_heads:
        raise ValueError(f"n_kv_heads: expected a divisor of the current number of K/V heads, {current}; got {n_kv_heads}")
    new_state = {}
    for name, t in state.items():
        if name.endswith(("attn.k_proj.weight", "attn.k_proj.bias", "attn.v_proj.weight", "attn.v_proj.bias")):
            t = _pool_heads(t, current, n_kv_heads)
        new_state[name] = t.clone()
    if cfg is None:
        return new_state
    p = next(model_or_state.parameters())
    new_model = DecoderLM(cfg.replace(n_kv_heads=n_kv_heads)).to(device=p.device, dtype=p.dtype)
    new_model.load_state_dict(new_state)
    return new_model.train(model_or_state.training)


# ============================================================================ validation
def _validate(c: ModelConfig) -> None:
    """Every field's own range, before the derived fields are filled in."""
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "rel_max_distance"):
        check_int(name, getattr(c, name))
    for name in ("n_kv_heads", "head_dim", "d_ff", "window"):
        check_int(name, getattr(c, name), optional=True)
    check_int("n_experts", c.n_experts, 0)
    check_choice("ffn", c.ffn, FFN_KINDS)
    check_choice("pos_encoding", c.pos_encoding, POS_ENCODINGS)
    check_choice("norm", c.norm, NORMS)
    check_choice("norm_placement", c.norm_placement, NORM_PLACEMENTS)
    check_choice("rope_scaling_type", c.rope_scaling_type, ROPE_SCALINGS)
    check_number("rope_base", c.rope_base, above=1)
    check_number("rope_scaling", c.rope_scaling, above=0)
    check_number("norm_eps", c.norm_eps, above=0, optional=True)
    check_number("moe_alpha", c.moe_alpha, at_least=0)
    check_number("attn_softcap", c.attn_softcap, above=0, optional=True)
    check_number("final_softcap", c.final_softcap, above=0, optional=True)
    check_probability("dropout", c.dropout)
    if c.attn_implementation is not None:
        check_choice("attn_implementation", c.attn_implementation, tuple(ATTENTION_FUNCTIONS))
    check_number("norm_offset", c.norm_offset)
    check_number("attn_scale", c.attn_scale, above=0, optional=True)
    if c.norm_offset and c.norm != "rmsnorm":
        raise ValueError(f"norm_offset: only RMSNorm takes an offset (Gemma's 1 + γ); got norm_offset="
                         f"{c.norm_offset!r} with norm={c.norm!r}")
    if c.qkv_bias is not None and not isinstance(c.qkv_bias, bool):
        raise ValueError(f"qkv_bias: expected a bool or None; got {c.qkv_bias!r}")
    for name in ("bias", "tie_embeddings", "local_global", "scale_embeddings"):
        if not isinstance(getattr(c, name), bool):
            raise ValueError(f"{name}: expected a bool; got {getattr(c, name)!r}")
    if c.head_dim is None and c.d_model % c.n_heads:
        raise ValueError(f"n_heads: expected a divisor of d_model = {c.d_model} (or give head_dim); got {c.n_heads}")
    if c.n_kv_heads is not None and c.n_heads % c.n_kv_heads:
        raise ValueError(f"n_kv_heads: expected a divisor of n_heads = {c.n_heads} (each K/V head serves "
                         f"n_heads / n_kv_heads query heads); got {c.n_kv_heads}")
    if c.n_experts and not (isinstance(c.top_k, int) and 1 <= c.top_k <= c.n_experts):
        raise ValueError(f"top_k: expected an int in [1, n_experts = {c.n_experts}]; got {c.top_k!r}")
    if c.rope_scaling_type == "ntk" and c.rope_scaling < 1:
        raise ValueError(f"rope_scaling: expected a factor ≥ 1 for NTK scaling; got {c.rope_scaling!r}")
    if c.pos_encoding == "sinusoidal" and c.d_model % 2:
        raise ValueError(f"d_model: expected an even d_model for sinusoidal positions (sin, cos pairs); got {c.d_model}")
    if c.local_global and c.window is None:
        raise ValueError("local_global: alternates windowed and full layers, so it needs a window; got window=None")


def _validate_resolved(c: ModelConfig) -> None:
    """The constraints between fields, once every derived field has its value."""
    if c.pos_encoding == "rope" and c.head_dim % 2:
        raise ValueError(f"head_dim: expected an even head_dim for RoPE (it rotates pairs); got {c.head_dim}")
    implementation, relative = c.attn_implementation, c.pos_encoding == "relative"
    if relative != (implementation == "relative"):
        raise ValueError(f"attn_implementation: pos_encoding={c.pos_encoding!r} needs "
                         f"{'relative' if relative else 'sdpa, repeat_kv or eager'}; got {implementation!r}")
    if relative and not math.isclose(c.attn_scale, 1.0 / math.sqrt(c.head_dim)):
        raise ValueError(f"attn_scale: the relative attention function scales by 1/√head_dim = "
                         f"{1.0 / math.sqrt(c.head_dim):.6g}; got {c.attn_scale!r}")
    if c.attn_softcap is not None and implementation != "eager":
        raise ValueError(f"attn_softcap: soft-capping needs attn_implementation='eager' (the fused kernel "
                         f"cannot cap the scores); got {implementation!r}")
