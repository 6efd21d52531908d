"""A small decoder-only language model that later chapters plug their variants into.

    h⁰ = E[x] + P[pos]                                   token + (optional) absolute positions
    hˡ = hˡ⁻¹ + Attn(Norm₁(hˡ⁻¹)),  hˡ ← hˡ + FFN(Norm₂(hˡ))   pre-norm blocks, l = 1 … L
                                                        (Chapter 9: post-norm and sandwich too)
    logits = Norm_f(hᴸ) Eᵀ                                  LM head (tied to E by default)

It is GPT-2-shaped (learned positions, LayerNorm, GELU FFN, biases) and small enough to train on a
laptop CPU. Everything a later chapter varies goes through :class:`ModelConfig`:

* Chapter 4 (this one): ``n_kv_heads`` — multi-head (``n_kv_heads = n_heads``), multi-query
  (``1``) or grouped-query attention (a divisor of ``n_heads``); ``window`` — sliding-window
  attention; the KV cache (``course_lib.kv_cache``).
* Chapter 6 adds position schemes at two extension points: :func:`build_absolute_positions`
  (absolute schemes added to the embeddings) and :meth:`CausalSelfAttention.apply_positions` /
  :meth:`CausalSelfAttention.attention_bias` (schemes applied inside attention: RoPE rotates q
  and k *before* k is written into the cache, as LLaMA does; ALiBi/relative add a bias).
* Chapters 7–9 and 13 add FFN, norm and MoE variants through :func:`build_ffn` and
  :func:`build_norm`.

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

Attention itself is ``torch.nn.functional.scaled_dot_product_attention`` (the fused kernel: a
decoding benchmark should time the model, not a teaching implementation of softmax);
``tests/test_model.py`` checks the block against ``course_lib.attention`` and against a
hand-written reference. The K/V heads are expanded with ``course_lib.kv_cache.repeat_kv`` before
the call, so the code reads the same as LLaMA's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.attention import softcap
from course_lib.ffn import FFN_KINDS, GLU_VARIANTS, build_feed_forward, ffn_num_parameters, glu_hidden_dim
from course_lib.kv_cache import repeat_kv
from course_lib.masks import causal_mask
from course_lib.moe import MoE
from course_lib.norms import NORM_PLACEMENTS, residual_block
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
from course_lib.utils import check_tensor

__all__ = [
    "POS_ENCODINGS",
    "ModelConfig",
    "build_absolute_positions",
    "build_norm",
    "build_ffn",
    "positions_from_mask",
    "attention_mask_from_indices",
    "CausalSelfAttention",
    "Block",
    "DecoderLM",
    "count_parameters",
]

# absolute (added to the embeddings): none, learned, sinusoidal; inside attention: relative, rope, alibi
POS_ENCODINGS = ("none", "learned", "sinusoidal", "relative", "rope", "alibi")
NORMS = ("layernorm", "rmsnorm")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class ModelConfig:
    """Hyper-parameters of :class:`DecoderLM`; ``__post_init__`` validates them.

    Attributes:
        vocab_size: number of token ids.
        d_model: width of the residual stream (``n_heads · head_dim``).
        n_layers: number of blocks.
        n_heads: query heads.
        n_kv_heads: key/value heads. ``None`` → ``n_heads`` (MHA); ``1`` → MQA; a divisor of
            ``n_heads`` → GQA with ``n_heads / n_kv_heads`` query heads per K/V head.
        max_seq_len: the longest sequence (the size of a learned position table).
        d_ff: hidden width of the FFN; ``None`` → ``4 · d_model`` (``"relu"``, ``"gelu"``) or, for a
            GLU variant, ``ffn.glu_hidden_dim(d_model, multiple_of=64)`` ≈ 8/3 · d_model.
        ffn: the FFN kind (Chapter 7, ``course_lib.ffn``): ``"gelu"`` (GPT-2), ``"relu"``, or a GLU
            variant ``"glu"``, ``"bilinear"``, ``"reglu"``, ``"geglu"``, ``"swiglu"`` (LLaMA).
        pos_encoding: ``"none"``, ``"learned"`` (GPT-2), ``"sinusoidal"`` (Vaswani et al.),
            ``"relative"`` (Shaw et al.'s clipped R^K, R^V), ``"rope"`` (RoFormer, LLaMA),
            ``"alibi"`` (Press et al.); see ``course_lib.positional`` and Chapter 6.
        rope_base: RoPE's base (10 000; LLaMA-3 uses 500 000).
        rope_scaling: RoPE context-extension factor s = L'/L (1: none).
        rope_scaling_type: ``"linear"`` — position interpolation, positions divided by s;
            ``"ntk"`` — NTK-aware scaling, base multiplied by s^(d/(d−2)).
        rel_max_distance: the clipping distance k of ``"relative"`` (offsets clip(j − i, −k, k)).
        window: sliding-window attention: a query sees the last ``window`` keys, itself
            included (``None``: full causal attention).
        dropout: dropout on embeddings, attention weights and residual branches.
        bias: biases in the linear maps.
        tie_embeddings: the LM head reuses the token embedding matrix.
        norm: ``"layernorm"`` (GPT-2; γ, and β when ``bias``) or ``"rmsnorm"`` (LLaMA: γ only);
            see ``course_lib.norms`` and Chapter 9.
        norm_placement: ``"pre"`` — ``x + F(Norm(x))`` (GPT-2, LLaMA); ``"post"`` —
            ``Norm(x + F(x))`` (Vaswani et al.); ``"sandwich"`` — ``x + Norm(F(Norm(x)))`` (Gemma-2).
        n_experts: Mixture of Experts (Chapter 8, ``course_lib.moe``): ``0`` — a dense FFN; ``n > 0``
            — every FFN is an ``MoE`` layer of ``n`` experts of kind ``ffn`` and width ``d_ff``.
        top_k: experts per token when ``n_experts > 0`` (Mixtral: 8 experts, top-2).
        moe_alpha: weight α of the load-balancing loss each ``MoE`` layer stores in ``aux_loss``
            (add ``course_lib.moe.moe_aux_loss(model)`` to the training loss).
        attn_softcap: Gemma-2's soft-capping of the attention scores, ``σ · tanh(s / σ)`` before the
            mask and softmax (``None``: off; Gemma-2 uses 50). Not fused: an explicit attention path.
        final_softcap: soft-capping of the output logits (``None``: off; Gemma-2 uses 30).
        local_global: with a ``window``, apply it only on the even layers 0, 2, 4, … (local
            attention) and let the odd layers see every key (global), as Gemma-2 alternates them.
            ``False``: every layer uses ``window``. Generation then needs a full (static) cache.
    """

    vocab_size: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None
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
    tie_embeddings: bool = True
    norm: str = "layernorm"
    norm_placement: str = "pre"
    n_experts: int = 0
    top_k: int = 2
    moe_alpha: float = 0.01
    attn_softcap: float | None = None
    final_softcap: float | None = None
    local_global: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name}: expected a positive int; got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads: expected a divisor of d_model = {self.d_model}; got {self.n_heads}")
        if self.n_kv_heads is not None:
            if not _is_int(self.n_kv_heads) or self.n_kv_heads < 1:
                raise ValueError(f"n_kv_heads: expected None or a positive int; got {self.n_kv_heads!r}")
            if self.n_heads % self.n_kv_heads:
                raise ValueError(
                    f"n_kv_heads: expected a divisor of n_heads = {self.n_heads} (each K/V head serves "
                    f"n_heads / n_kv_heads query heads); got {self.n_kv_heads}"
                )
        if self.d_ff is not None and (not _is_int(self.d_ff) or self.d_ff < 1):
            raise ValueError(f"d_ff: expected None or a positive int; got {self.d_ff!r}")
        if self.ffn not in FFN_KINDS:
            raise ValueError(f"ffn: expected one of {FFN_KINDS}; got {self.ffn!r}")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"pos_encoding: expected one of {POS_ENCODINGS}; got {self.pos_encoding!r}")
        if not (isinstance(self.rope_base, (int, float)) and self.rope_base > 1):
            raise ValueError(f"rope_base: expected a number > 1; got {self.rope_base!r}")
        if not (isinstance(self.rope_scaling, (int, float)) and self.rope_scaling > 0):
            raise ValueError(f"rope_scaling: expected a positive number; got {self.rope_scaling!r}")
        if self.rope_scaling_type not in ("linear", "ntk"):
            raise ValueError(f"rope_scaling_type: expected 'linear' or 'ntk'; got {self.rope_scaling_type!r}")
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise ValueError(f"d_model: expected an even head_dim = d_model / n_heads for RoPE (it rotates pairs); "
                             f"got head_dim {self.head_dim}")
        if self.pos_encoding == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"d_model: expected an even d_model for sinusoidal positions (sin, cos pairs); got {self.d_model}")
        if self.rope_scaling_type == "ntk" and self.rope_scaling < 1:
            raise ValueError(f"rope_scaling: expected a factor ≥ 1 for NTK scaling; got {self.rope_scaling!r}")
        if not _is_int(self.rel_max_distance) or self.rel_max_distance < 1:
            raise ValueError(f"rel_max_distance: expected a positive int; got {self.rel_max_distance!r}")
        if self.window is not None and (not _is_int(self.window) or self.window < 1):
            raise ValueError(f"window: expected None or a positive int; got {self.window!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout: expected a probability in [0, 1); got {self.dropout!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}; got {self.norm!r}")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(f"norm_placement: expected one of {NORM_PLACEMENTS}; got {self.norm_placement!r}")
        if not _is_int(self.n_experts) or self.n_experts < 0:
            raise ValueError(f"n_experts: expected a non-negative int (0: dense FFN); got {self.n_experts!r}")
        if self.n_experts and (not _is_int(self.top_k) or not 1 <= self.top_k <= self.n_experts):
            raise ValueError(f"top_k: expected an int in [1, n_experts = {self.n_experts}]; got {self.top_k!r}")
        if not (isinstance(self.moe_alpha, (int, float)) and self.moe_alpha >= 0):
            raise ValueError(f"moe_alpha: expected a non-negative number; got {self.moe_alpha!r}")
        for name in ("attn_softcap", "final_softcap"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                          and value > 0):
                raise ValueError(f"{name}: expected None or a positive number; got {value!r}")
        if self.attn_softcap is not None and self.pos_encoding == "relative":
            raise ValueError("attn_softcap: not supported with pos_encoding='relative'; expected None")
        if not isinstance(self.local_global, bool):
            raise ValueError(f"local_global: expected a bool; got {self.local_global!r}")
        if self.local_global and self.window is None:
            raise ValueError("local_global: alternates windowed and full layers, so it needs a window; got window=None")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """The number of K/V heads, ``n_kv_heads`` resolved (``None`` → ``n_heads``)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def n_rep(self) -> int:
        """Query heads per K/V head: ``n_heads / kv_heads`` (1 for MHA, n_heads for MQA)."""
        return self.n_heads // self.kv_heads

    @property
    def ffn_dim(self) -> int:
        """The FFN's hidden width, ``d_ff`` resolved: ``None`` → ``4 · d_model``, or for a GLU
        kind 8/3 · d_model rounded up to a multiple of 64 (the same parameter count, Chapter 7)."""
        if self.d_ff is not None:
            return self.d_ff
        return glu_hidden_dim(self.d_model, multiple_of=64) if self.ffn in GLU_VARIANTS else 4 * self.d_model

    def layer_window(self, layer_idx: int) -> int | None:
        """The window of layer ``layer_idx``: ``window`` on every layer, or with ``local_global``
        on the even (local) layers only — layer 0 is local, as in Gemma-2 — and None on the odd ones."""
        if self.local_global and layer_idx % 2 == 1:
            return None
        return self.window

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- extension points
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
    ``nn.RMSNorm`` with ε = 1e-6 and no β, as in LLaMA (``course_lib.norms.RMSNorm`` computes the same).
    """
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=1e-6)
    return nn.LayerNorm(config.d_model, bias=config.bias)


def build_ffn(config: ModelConfig) -> nn.Module:
    """The position-wise feed-forward network of kind ``config.ffn`` (Chapter 7, ``course_lib.ffn``).

    ``"gelu"`` (default, GPT-2) or ``"relu"`` → ``FeedForward`` (``up``, ``down``) of width
    ``config.ffn_dim``; a GLU variant → ``GatedFeedForward`` (``gate_proj``, ``up_proj``,
    ``down_proj``) of width ``config.d_ff``, or 8/3 · d_model rounded up to a multiple of 64.
    With ``config.n_experts > 0`` (Chapter 8): an ``MoE`` layer of ``n_experts`` such FFNs and a
    top-``config.top_k`` router.
    """
    d_ff = config.ffn_dim
    if config.n_experts > 0:
        return MoE(config.d_model, d_ff, config.n_experts, config.top_k, kind=config.ffn, bias=config.bias,
                   alpha=config.moe_alpha)
    return build_feed_forward(config.ffn, config.d_model, d_ff, dropout=0.0, bias=config.bias)


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


# ----------------------------------------------------------------------------- attention
class CausalSelfAttention(nn.Module):
    """Causal self-attention with ``n_heads`` query heads and ``n_kv_heads`` key/value heads.

    ``q_proj``: ``d_model → n_heads · head_dim``; ``k_proj``, ``v_proj``:
    ``d_model → n_kv_heads · head_dim``; ``o_proj``: ``d_model → d_model``. With a cache the new
    keys and values are written into it and attention runs over everything cached so far.
    """

    def __init__(self, config: ModelConfig, layer_idx: int = 0):
        super().__init__()
        self.config = config
        self.window = config.layer_window(layer_idx)     # None on Gemma-2's global layers
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.n_rep = config.n_rep
        kv_dim = self.n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.k_proj = nn.Linear(config.d_model, kv_dim, bias=config.bias)
        self.v_proj = nn.Linear(config.d_model, kv_dim, bias=config.bias)
        self.o_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.dropout = config.dropout
        # Chapter 6: the schemes that act inside attention (course_lib.positional)
        self.rotary = (RotaryEmbedding(self.head_dim, config.rope_base, config.rope_scaling,
                                       scaling_type=config.rope_scaling_type)
                       if config.pos_encoding == "rope" else None)
        self.relative = (RelativePositionEmbedding(self.head_dim, config.rel_max_distance)
                         if config.pos_encoding == "relative" else None)
        if config.pos_encoding == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(self.n_heads), persistent=False)

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
        """Additive score bias broadcastable to ``[B, h, T, S]`` (ALiBi / relative in Chapter 6).

        Args: q_positions ``[B, T]`` and k_positions ``[B, S]``, the position ids of the queries
        and of the keys. ALiBi: ``−m_h · |i − j|`` ``[B, h, T, S]``; every other scheme: None
        (Shaw's relative scheme is not a bias — its key term depends on q — see :meth:`attend`).
        """
        if self.config.pos_encoding == "alibi":
            return alibi_bias(self.alibi_slopes, q_positions, k_positions)
        return None

    def attend(self, q, k, v, mask, is_causal: bool, q_positions, k_positions) -> torch.Tensor:
        """Attention of q ``[B, h, T, d]`` over k, v ``[B, h, S, d]``: PyTorch's fused SDPA.

        ``"relative"`` instead runs ``positional.relative_attention`` (Shaw et al.: the scores get
        ``q_i · a^K_ij`` and the output ``Σ_j α_ij a^V_ij``, which need q and the weights — no fused
        kernel has them; no attention dropout on this path). With ``attn_softcap`` (Gemma-2) the
        scores are computed explicitly: ``softmax(mask(σ · tanh(q kᵀ / √d / σ)))`` — capped before
        the mask, so masked keys stay at −inf.
        """
        if self.config.attn_softcap is not None:
            if mask is None and is_causal:
                mask = causal_mask(q.shape[2], k.shape[2], device=q.device)
            scores = softcap(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), self.config.attn_softcap)
            if mask is not None:
                scores = (scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool
                          else scores + mask)
            weights = F.dropout(torch.softmax(scores.float(), dim=-1).to(q.dtype), self.dropout, self.training)
            return weights @ v
        if self.relative is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                                  dropout_p=self.dropout if self.training else 0.0)
        if mask is None and is_causal:
            mask = causal_mask(q.shape[2], k.shape[2], device=q.device)
        index = self.relative.index(q_positions, k_positions)[:, None]   # [B, 1, T, S]
        return relative_attention(q, k, v, self.relative.rel_k.weight, self.relative.rel_v.weight, index, mask)

    # ------------------------------------------------------------------------------------------
    def _split(self, x: torch.Tensor, n: int) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)     # [B, n, T, d]

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache=None, layer_idx: int = 0) -> torch.Tensor:
        """x ``[B, T, d_model]``, position_ids ``[B, T]``, attention_mask ``[B, past + T]`` → ``[B, T, d_model]``."""
        B, T, _ = x.shape
        past = cache.get_seq_length(layer_idx) if cache is not None else 0
        q = self._split(self.q_proj(x), self.n_heads)             # [B, h,    T, d]
        k = self._split(self.k_proj(x), self.n_kv_heads)          # [B, h_kv, T, d]
        v = self._split(self.v_proj(x), self.n_kv_heads)
        q, k = self.apply_positions(q, k, position_ids)

        q_idx = torch.arange(past, past + T, device=x.device)
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)                  # all keys so far: [B, h_kv, S, d]
            k_idx = cache.key_indices(layer_idx)                  # [S] column of each key
            ordered = cache.ordered
        else:
            k_idx, ordered = q_idx, True
        k, v = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)  # [B, h, S, d]

        # key positions: same distance back as in columns (padding is a prefix)
        offset = position_ids[:, -1:] - q_idx[-1]                 # [B, 1]
        k_positions = (k_idx[None, :] + offset).clamp_min(0)     # [B, S]
        bias = self.attention_bias(position_ids, k_positions)
        window = self.window
        mask, is_causal = None, False
        if attention_mask is None and window is None and ordered and bias is None:
            is_causal = T > 1            # fast paths: plain causal prefill, or one query seeing every key
            if is_causal and k.shape[2] != T:
                mask = attention_mask_from_indices(q_idx, k_idx)
                is_causal = False
        else:
            key_valid = None
            if attention_mask is not None:
                key_valid = attention_mask.bool()[:, k_idx.clamp_min(0)]
            mask = attention_mask_from_indices(q_idx, k_idx, key_valid, window)
            if bias is not None:
                mask = torch.where(mask, bias.to(q.dtype), float("-inf"))
        out = self.attend(q, k, v, mask, is_causal, position_ids, k_positions)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


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
            if name.endswith(("o_proj.weight", "down.weight", "down_proj.weight")):  # FFN, GLU, experts
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
        if position_ids is None:
            if attention_mask is not None:
                position_ids = positions_from_mask(attention_mask)[:, past:]
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        elif tuple(position_ids.shape) != (B, T):
            raise ValueError(f"position_ids: expected shape (B, T) = {(B, T)}; got {tuple(position_ids.shape)}")

        x = self.tok_emb(input_ids)
        if self.pos_emb is not None:
            if int(position_ids.max()) >= self.config.max_seq_len:
                raise ValueError(
                    f"position_ids: expected positions < max_seq_len = {self.config.max_seq_len}; "
                    f"got {int(position_ids.max())}"
                )
            x = x + self.pos_emb(position_ids)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, position_ids, attention_mask, cache, i)
        logits = self.lm_head(self.norm_f(x))
        if self.config.final_softcap is not None:                 # Gemma-2: σ · tanh(logits / σ)
            logits = softcap(logits, self.config.final_softcap)
        return logits


def count_parameters(config: ModelConfig) -> int:
    """The parameter count of ``DecoderLM(config)`` by formula (tests compare it with the model).

    Per block: attention ``d·(d + 2·h_kv·d_h + d)`` weights (+ ``d + 2·h_kv·d_h + d`` biases),
    FFN ``2·d·d_ff`` (+ ``d_ff + d``; a GLU ``3·d·d_ff`` + ``2·d_ff + d``; an MoE ``n_experts`` of them
    + a router ``d·n_experts``), two norms ``2·d`` each (γ, β; RMSNorm: ``d``; four norms with
    ``"sandwich"``). Embeddings ``V·d``, learned positions ``max_seq_len·d``, final norm, an untied
    head ``V·d``. GQA/MQA shrink only the K and V projections: ``2·d·(h − h_kv)·d_h`` weights fewer
    per layer.
    """
    d, dh, hkv, dff, V = config.d_model, config.head_dim, config.kv_heads, config.ffn_dim, config.vocab_size
    b = 1 if config.bias else 0
    norm = d * (1 + b) if config.norm == "layernorm" else d          # RMSNorm: γ only
    attn = d * (d + 2 * hkv * dh + d) + b * (d + 2 * hkv * dh + d)
    ffn = ffn_num_parameters(d, dff, config.ffn, bias=config.bias)
    if config.n_experts > 0:                            # n_experts FFNs + the router (no bias)
        ffn = config.n_experts * ffn + d * config.n_experts
    block = attn + ffn + (4 if config.norm_placement == "sandwich" else 2) * norm
    total = V * d + config.n_layers * block + norm
    if config.pos_encoding == "learned":
        total += config.max_seq_len * d
    if config.pos_encoding == "relative":              # R^K and R^V tables, 2k + 1 rows each, per layer
        total += config.n_layers * 2 * (2 * config.rel_max_distance + 1) * dh
    if not config.tie_embeddings:
        total += V * d
    return total
