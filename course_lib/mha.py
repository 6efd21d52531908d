"""Chapter 2 — multi-head attention, and the encoder and decoder layers built from it.

    head_i       = Attention(X W_i^Q, C W_i^K, C W_i^V),   W_i^{Q,K,V} ∈ ℝ^{d × d/h}
    MultiHead(X) = Concat(head_1, …, head_h) W^O,          W^O ∈ ℝ^{d × d}

(Vaswani et al., 2017). ``C = X`` for self-attention; for cross-attention ``C`` is the
condition (the encoder's output), ``[batch, cond_len, d_model]``.

Layouts: ``[batch, seq, d_model]`` between blocks, ``[batch, heads, seq, head_dim]`` inside
attention; ``split_heads`` and ``merge_heads`` convert between them.

Weights follow ``torch.nn.Linear`` (``y = x Wᵀ + b``, ``W`` of shape ``[out, in]``), so the
h per-head matrices W_i^Q are the row blocks ``q_proj.weight[i·d_h:(i+1)·d_h]`` of one
``[d_model, d_model]`` matrix: h heads of width d/h cost exactly the parameters of one wide head.

Masks follow the course convention (chapter 1, ``course_lib.attention``): boolean ``True``
where a query **may** attend, broadcastable to ``[batch, heads, T, S]``; or a floating mask
added to the scores. ``torch.nn.MultiheadAttention`` uses the opposite boolean convention
(``True`` = **not** allowed) for ``attn_mask`` and ``key_padding_mask``; ``from_torch_masks``
converts.

Chapter 4 extends this module with ``n_kv_heads`` (MQA/GQA) and a KV cache: the key/value
projections and the attention call are kept in separate methods for that reason.

Everything here is checked against ``torch.nn.MultiheadAttention``,
``torch.nn.TransformerEncoderLayer`` and ``torch.nn.TransformerDecoderLayer`` in
``tests/test_mha.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.attention import scaled_dot_product_attention
from course_lib.ffn import FeedForward
from course_lib.masks import causal_mask
from course_lib.utils import check_floating, check_tensor

__all__ = [
    "split_heads",
    "merge_heads",
    "from_torch_masks",
    "to_torch_attn_mask",
    "MultiHeadAttention",
    "mha_loop_heads",
    "mha_batched",
    "mha_fused_qkv",
    "mha_sdpa",
    "EncoderLayer",
    "DecoderLayer",
]


# ----------------------------------------------------------------------------- heads
def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[B, T, D]`` → ``[B, h, T, D/h]``: the last dimension cut into h consecutive blocks.

    Head i gets the features ``i·d_h … (i+1)·d_h − 1``. The view ``[B, T, h, d_h]`` keeps
    each token's features together; the transpose then puts the heads next to the batch so
    that one batched matmul runs all heads at once.
    """
    check_tensor("x", x, ndim=3)
    if not (isinstance(n_heads, int) and n_heads > 0):
        raise ValueError(f"n_heads: expected a positive int; got {n_heads!r}")
    B, T, D = x.shape
    if D % n_heads:
        raise ValueError(f"n_heads: expected a divisor of the last dimension of x, {D}; got {n_heads}")
    return x.view(B, T, n_heads, D // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, h, T, d_h]`` → ``[B, T, h·d_h]``, the inverse of ``split_heads``.

    The transpose back to ``[B, T, h, d_h]`` must come before the reshape: reshaping
    ``[B, h, T, d_h]`` directly would interleave tokens and heads.
    """
    check_tensor("x", x, ndim=4)
    B, h, T, d_h = x.shape
    return x.transpose(1, 2).reshape(B, T, h * d_h)


# ----------------------------------------------------------------------------- masks
def _torch_to_ours(m: torch.Tensor) -> torch.Tensor:
    """Boolean: True = blocked → True = may attend. Floating (additive) masks are unchanged."""
    if m.dtype == torch.bool:
        return ~m
    if not m.is_floating_point():
        raise ValueError(f"mask: expected dtype torch.bool or a floating additive mask; got {m.dtype}")
    return m


def from_torch_masks(attn_mask: torch.Tensor | None = None,
                     key_padding_mask: torch.Tensor | None = None,
                     *, n_heads: int = 1) -> torch.Tensor | None:
    """Convert ``nn.MultiheadAttention``'s masks into one mask of the course convention.

    torch: ``attn_mask`` ``[T, S]`` or ``[B·h, T, S]`` and ``key_padding_mask`` ``[B, S]``;
    a boolean ``True`` means "this key is **not** allowed" (a padded key, a future token).
    Ours: ``True`` means "may attend", broadcastable to ``[B, h, T, S]``. So boolean masks are
    inverted, ``[B·h, T, S]`` becomes ``[B, h, T, S]`` (torch orders it batch-major) and the
    padding mask becomes ``[B, 1, 1, S]``. Floating masks are added to the scores in both
    conventions and pass through; a boolean mask meeting a floating one becomes 0 / −inf.

    Returns None when both are None.
    """
    masks = []
    if attn_mask is not None:
        check_tensor("attn_mask", attn_mask)
        m = _torch_to_ours(attn_mask)
        if m.dim() == 3:
            if m.shape[0] % n_heads:
                raise ValueError(f"attn_mask: expected a first dimension B·n_heads (n_heads = {n_heads}); "
                                 f"got shape {tuple(attn_mask.shape)}")
            m = m.view(-1, n_heads, *m.shape[1:])
        elif m.dim() != 2:
            raise ValueError(f"attn_mask: expected shape [T, S] or [B·h, T, S]; got {tuple(attn_mask.shape)}")
        masks.append(m)
    if key_padding_mask is not None:
        check_tensor("key_padding_mask", key_padding_mask, ndim=2)
        masks.append(_torch_to_ours(key_padding_mask)[:, None, None, :])
    if not masks:
        return None
    if len(masks) == 1:
        return masks[0]
    a, b = masks
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return a & b
    dtype = a.dtype if a.is_floating_point() else b.dtype

    def additive(m):
        return m.to(dtype) if m.is_floating_point() else torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, float("-inf"))

    return additive(a) + additive(b)


def to_torch_attn_mask(mask: torch.Tensor) -> torch.Tensor:
    """Ours → torch's boolean convention: ``True`` = may attend becomes ``True`` = blocked."""
    check_tensor("mask", mask)
    return ~mask if mask.dtype == torch.bool else mask


# ----------------------------------------------------------------------------- the module
class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj``.

    Args:
        d_model: the model width D (``embed_dim`` in torch).
        n_heads: the number of heads h; each head has width ``head_dim = D / h``.
        bias: biases in the four projections (torch's ``bias``).
        dropout: dropout on the attention weights during training (torch's ``dropout``).
        d_context: the width of the condition for cross-attention (torch's ``kdim = vdim``);
            default ``d_model``.

    ``forward(x, context=None, mask=None, return_weights=False)``: queries come from
    ``x`` ``[B, T, D]``; keys and values from ``context`` ``[B, S, d_context]``, or from ``x``
    (self-attention) when ``context`` is None. Returns ``[B, T, D]`` and, with
    ``return_weights``, the per-head weights ``[B, h, T, S]``.
    """

    def __init__(self, d_model: int, n_heads: int, *, bias: bool = True, dropout: float = 0.0,
                 d_context: int | None = None, device=None, dtype=None):
        super().__init__()
        if not (isinstance(d_model, int) and d_model > 0):
            raise ValueError(f"d_model: expected a positive int; got {d_model!r}")
        if not (isinstance(n_heads, int) and n_heads > 0) or d_model % n_heads:
            raise ValueError(f"n_heads: expected a positive divisor of d_model = {d_model}; got {n_heads!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1); got {dropout!r}")
        d_context = d_model if d_context is None else d_context
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.d_context, self.dropout = d_context, dropout
        kw = dict(bias=bias, device=device, dtype=dtype)
        self.q_proj = nn.Linear(d_model, d_model, **kw)    # the h matrices W_i^Q, stacked by rows
        self.k_proj = nn.Linear(d_context, d_model, **kw)
        self.v_proj = nn.Linear(d_context, d_model, **kw)
        self.o_proj = nn.Linear(d_model, d_model, **kw)    # W^O

    # --- the three steps, separate so that chapter 4 can change the key/value side
    def _check_inputs(self, x, context):
        check_tensor("x", x, ndim=3)
        check_floating("x", x)
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x: expected shape [batch, seq, d_model = {self.d_model}]; got {tuple(x.shape)}")
        if context is not None:
            check_tensor("context", context, ndim=3)
            if context.shape[0] != x.shape[0] or context.shape[-1] != self.d_context:
                raise ValueError(
                    f"context: expected shape [batch = {x.shape[0]}, cond_len, d_context = {self.d_context}]; "
                    f"got {tuple(context.shape)}")

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` → queries ``[B, h, T, d_h]``."""
        return split_heads(self.q_proj(x), self.n_heads)

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, S, d_context]`` → keys and values ``[B, h, S, d_h]``."""
        return split_heads(self.k_proj(context), self.n_heads), split_heads(self.v_proj(context), self.n_heads)

    def attend(self, q, k, v, mask=None, return_weights=False):
        """Scaled dot-product attention of every head at once (scale 1/√d_h), with dropout on the weights."""
        if self.training and self.dropout > 0:
            _, w = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
            w = F.dropout(w, self.dropout)
            out = w @ v
            return (out, w) if return_weights else out
        return scaled_dot_product_attention(q, k, v, mask, return_weights=return_weights)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, return_weights: bool = False):
        self._check_inputs(x, context)
        q = self.project_q(x)                                         # [B, h, T, d_h]
        k, v = self.project_kv(x if context is None else context)     # [B, h, S, d_h]
        res = self.attend(q, k, v, mask, return_weights)
        heads, w = res if return_weights else (res, None)
        out = self.o_proj(merge_heads(heads))                         # [B, T, D]
        return (out, w) if return_weights else out

    # --- fused weights (the layout of torch's in_proj_weight)
    def qkv_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[3D, D]`` = [W^Q; W^K; W^V] stacked by rows, and the ``[3D]`` bias (or None)."""
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        b = None if self.q_proj.bias is None else torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        return w, b

    # --- torch interoperability
    @torch.no_grad()
    def load_from_torch(self, mha: nn.MultiheadAttention) -> "MultiHeadAttention":
        """Copy the weights of ``torch.nn.MultiheadAttention`` into this module; return self."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise ValueError(f"mha: expected torch.nn.MultiheadAttention; got {type(mha).__name__}")
        if (mha.embed_dim, mha.num_heads) != (self.d_model, self.n_heads):
            raise ValueError(f"mha: expected embed_dim = {self.d_model}, num_heads = {self.n_heads}; "
                             f"got {mha.embed_dim}, {mha.num_heads}")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("mha: add_bias_kv and add_zero_attn are not supported")
        if mha.kdim != mha.vdim or mha.kdim != self.d_context:
            raise ValueError(f"mha: expected kdim = vdim = d_context = {self.d_context}; got {mha.kdim}, {mha.vdim}")
        has_bias = mha.in_proj_bias is not None
        if has_bias != (self.q_proj.bias is not None):
            raise ValueError(f"mha: expected bias = {self.q_proj.bias is not None}; got bias = {has_bias}")
        if mha._qkv_same_embed_dim:
            wq, wk, wv = mha.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
        for lin, w in ((self.q_proj, wq), (self.k_proj, wk), (self.v_proj, wv), (self.o_proj, mha.out_proj.weight)):
            lin.weight.copy_(w)
        if has_bias:
            for lin, b in zip((self.q_proj, self.k_proj, self.v_proj), mha.in_proj_bias.chunk(3)):
                lin.bias.copy_(b)
            self.o_proj.bias.copy_(mha.out_proj.bias)
        return self

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> "MultiHeadAttention":
        """A new ``MultiHeadAttention`` with the configuration and weights of ``mha``."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise ValueError(f"mha: expected torch.nn.MultiheadAttention; got {type(mha).__name__}")
        p = mha.out_proj.weight
        new = cls(mha.embed_dim, mha.num_heads, bias=mha.in_proj_bias is not None, dropout=mha.dropout,
                  d_context=mha.kdim, device=p.device, dtype=p.dtype)
        return new.load_from_torch(mha)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}"


# ----------------------------------------------------------------------------- four implementations
def _kv_input(x, context):
    return x if context is None else context


def mha_loop_heads(mha: MultiHeadAttention, x, context=None, mask=None) -> torch.Tensor:
    """Multi-head attention as written in the paper: one head at a time, then concatenate.

    Head i uses the row blocks ``i·d_h:(i+1)·d_h`` of the projection weights, i.e. its own
    ``W_i^Q, W_i^K, W_i^V ∈ ℝ^{D × d_h}``. Returns ``[B, T, D]``.
    """
    mha._check_inputs(x, context)
    c = _kv_input(x, context)
    B, T, S, h, d_h = x.shape[0], x.shape[1], c.shape[1], mha.n_heads, mha.head_dim
    if mask is not None:
        mask = torch.broadcast_to(mask, (B, h, T, S))
    heads = []
    for i in range(h):
        rows = slice(i * d_h, (i + 1) * d_h)

        def proj(lin, inp):
            return F.linear(inp, lin.weight[rows], None if lin.bias is None else lin.bias[rows])

        q_i, k_i, v_i = proj(mha.q_proj, x), proj(mha.k_proj, c), proj(mha.v_proj, c)   # [B, T|S, d_h]
        heads.append(scaled_dot_product_attention(q_i, k_i, v_i, None if mask is None else mask[:, i]))
    return mha.o_proj(torch.cat(heads, dim=-1))


def mha_batched(mha: MultiHeadAttention, x, context=None, mask=None) -> torch.Tensor:
    """All heads at once: project to ``[B, T, D]``, split to ``[B, h, T, d_h]``, one batched attention."""
    return mha(x, context, mask)


def mha_fused_qkv(mha: MultiHeadAttention, x, context=None, mask=None) -> torch.Tensor:
    """One ``[3D, D]`` matmul for Q, K and V (self-attention), or Q plus one ``[2D, D]`` for K, V (cross)."""
    mha._check_inputs(x, context)
    w, b = mha.qkv_weight()
    B, T, D, h, d_h = *x.shape, mha.n_heads, mha.head_dim
    if context is None:
        qkv = F.linear(x, w, b).view(B, T, 3, h, d_h).permute(2, 0, 3, 1, 4)   # [3, B, h, T, d_h]
        q, k, v = qkv.unbind(0)
    else:
        S = context.shape[1]
        q = split_heads(mha.q_proj(x), h)
        kv = F.linear(context, w[D:], None if b is None else b[D:]).view(B, S, 2, h, d_h).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
    return mha.o_proj(merge_heads(scaled_dot_product_attention(q, k, v, mask)))


def mha_sdpa(mha: MultiHeadAttention, x, context=None, mask=None) -> torch.Tensor:
    """The batched layout, with PyTorch's fused kernel ``F.scaled_dot_product_attention``."""
    mha._check_inputs(x, context)
    q = mha.project_q(x)
    k, v = mha.project_kv(_kv_input(x, context))
    return mha.o_proj(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


# ----------------------------------------------------------------------------- layers
def _check_norm_first(norm_first):
    if not isinstance(norm_first, bool):
        raise ValueError(f"norm_first: expected True or False; got {norm_first!r}")


def _torch_activation(layer) -> str:
    code = getattr(layer, "activation_relu_or_gelu", 0)
    if code == 1 or layer.activation is F.relu or isinstance(layer.activation, nn.ReLU):
        return "relu"
    if code == 2 or layer.activation is F.gelu or isinstance(layer.activation, nn.GELU):
        return "gelu"
    raise ValueError(f"layer: expected activation relu or gelu; got {layer.activation!r}")


class EncoderLayer(nn.Module):
    """One Transformer encoder layer: self-attention and a feed-forward network, each in a residual.

    Post-norm (Vaswani et al., 2017; ``norm_first=False``)::

        x = LayerNorm(x + Dropout(SelfAttention(x)))
        x = LayerNorm(x + Dropout(FFN(x)))

    Pre-norm (``norm_first=True``; GPT-2 and most models since, chapter 9)::

        x = x + Dropout(SelfAttention(LayerNorm(x)))
        x = x + Dropout(FFN(LayerNorm(x)))

    The same computation as ``torch.nn.TransformerEncoderLayer(batch_first=True)``; the
    submodules are ``self_attn``, ``ffn`` (``up``/``down`` = torch's ``linear1``/``linear2``),
    ``norm1``, ``norm2``. ``forward(x, mask=None)``: ``[B, T, D]`` → ``[B, T, D]``.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int | None = None, *, dropout: float = 0.1,
                 activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5,
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        _check_norm_first(norm_first)
        kw = dict(device=device, dtype=dtype)
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, bias=bias, dropout=dropout, **kw)
        self.ffn = FeedForward(d_model, d_ff, activation=activation, dropout=dropout, bias=bias, **kw)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **kw)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **kw)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def _sa(self, x, mask):
        return self.dropout1(self.self_attn(x, mask=mask))

    def _ff(self, x):
        return self.dropout2(self.ffn(x))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, T, D]``; ``mask`` (True = may attend) broadcastable to ``[B, h, T, T]``."""
        if self.norm_first:
            x = x + self._sa(self.norm1(x), mask)
            return x + self._ff(self.norm2(x))
        x = self.norm1(x + self._sa(x, mask))
        return self.norm2(x + self._ff(x))

    @torch.no_grad()
    def load_from_torch(self, layer: nn.TransformerEncoderLayer) -> "EncoderLayer":
        """Copy the weights of ``torch.nn.TransformerEncoderLayer`` (same configuration); return self."""
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise ValueError(f"layer: expected torch.nn.TransformerEncoderLayer; got {type(layer).__name__}")
        _load_common(self, layer, ("norm1", "norm2"))
        return self

    @classmethod
    def from_torch(cls, layer: nn.TransformerEncoderLayer) -> "EncoderLayer":
        """A new ``EncoderLayer`` with the configuration and weights of ``layer``."""
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise ValueError(f"layer: expected torch.nn.TransformerEncoderLayer; got {type(layer).__name__}")
        return cls(**_torch_config(layer)).load_from_torch(layer)


class DecoderLayer(nn.Module):
    """One Transformer decoder layer: masked self-attention, cross-attention over the condition, FFN.

    Post-norm (``norm_first=False``)::

        x = LayerNorm(x + Dropout(SelfAttention(x, causal mask)))
        x = LayerNorm(x + Dropout(CrossAttention(x, cond)))     # queries from x, keys/values from cond
        x = LayerNorm(x + Dropout(FFN(x)))

    Pre-norm (``norm_first=True``) normalizes the input of each sublayer instead.

    Shapes: ``x`` ``[batch, seq, D]``, ``cond`` ``[batch, cond_len, D]`` (cond_len may differ
    from seq) → ``[batch, seq, D]``. The same computation as
    ``torch.nn.TransformerDecoderLayer(batch_first=True)``; submodules ``self_attn``,
    ``cross_attn`` (torch's ``multihead_attn``), ``ffn``, ``norm1``…``norm3``.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int | None = None, *, dropout: float = 0.1,
                 activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5,
                 bias: bool = True, d_cond: int | None = None, device=None, dtype=None):
        super().__init__()
        _check_norm_first(norm_first)
        kw = dict(device=device, dtype=dtype)
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, bias=bias, dropout=dropout, **kw)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, bias=bias, dropout=dropout, d_context=d_cond, **kw)
        self.ffn = FeedForward(d_model, d_ff, activation=activation, dropout=dropout, bias=bias, **kw)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **kw) for _ in range(3))
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor | None = None,
                cond_mask: torch.Tensor | None = None, *, causal: bool = True) -> torch.Tensor:
        """Args:
            x: the decoder's sequence ``[B, T, D]``.
            cond: the condition (encoder output) ``[B, S, D]``.
            mask: for self-attention, broadcastable to ``[B, h, T, T]`` (True = may attend);
                combined with the causal mask when ``causal``.
            cond_mask: for cross-attention, broadcastable to ``[B, h, T, S]`` (e.g. the
                condition's padding, ``[B, 1, 1, S]``).
            causal: forbid every position to attend to later positions (default True).
        """
        check_tensor("cond", cond, ndim=3)
        check_tensor("x", x, ndim=3)
        if causal:
            c = causal_mask(x.shape[1], device=x.device)
            if mask is None:
                mask = c
            elif mask.dtype == torch.bool:
                mask = mask & c
            else:
                mask = mask.masked_fill(~c, float("-inf"))
        if self.norm_first:
            x = x + self.dropout1(self.self_attn(self.norm1(x), mask=mask))
            x = x + self.dropout2(self.cross_attn(self.norm2(x), cond, mask=cond_mask))
            return x + self.dropout3(self.ffn(self.norm3(x)))
        x = self.norm1(x + self.dropout1(self.self_attn(x, mask=mask)))
        x = self.norm2(x + self.dropout2(self.cross_attn(x, cond, mask=cond_mask)))
        return self.norm3(x + self.dropout3(self.ffn(x)))

    @torch.no_grad()
    def load_from_torch(self, layer: nn.TransformerDecoderLayer) -> "DecoderLayer":
        """Copy the weights of ``torch.nn.TransformerDecoderLayer`` (same configuration); return self."""
        if not isinstance(layer, nn.TransformerDecoderLayer):
            raise ValueError(f"layer: expected torch.nn.TransformerDecoderLayer; got {type(layer).__name__}")
        _load_common(self, layer, ("norm1", "norm2", "norm3"))
        self.cross_attn.load_from_torch(layer.multihead_attn)
        return self

    @classmethod
    def from_torch(cls, layer: nn.TransformerDecoderLayer) -> "DecoderLayer":
        """A new ``DecoderLayer`` with the configuration and weights of ``layer``."""
        if not isinstance(layer, nn.TransformerDecoderLayer):
            raise ValueError(f"layer: expected torch.nn.TransformerDecoderLayer; got {type(layer).__name__}")
        return cls(**_torch_config(layer), d_cond=layer.multihead_attn.kdim).load_from_torch(layer)


def _torch_config(layer) -> dict:
    p = layer.linear1.weight
    return dict(d_model=layer.linear1.in_features, n_heads=layer.self_attn.num_heads,
                d_ff=layer.linear1.out_features, dropout=layer.dropout.p, activation=_torch_activation(layer),
                norm_first=layer.norm_first, layer_norm_eps=layer.norm1.eps, bias=layer.linear1.bias is not None,
                device=p.device, dtype=p.dtype)


def _load_common(ours, layer, norms) -> None:
    cfg = _torch_config(layer)
    mine = dict(d_model=ours.ffn.d_model, n_heads=ours.self_attn.n_heads, d_ff=ours.ffn.d_ff,
                activation=ours.ffn.activation, norm_first=ours.norm_first)
    theirs = {k: cfg[k] for k in mine}
    if mine != theirs:
        raise ValueError(f"layer: expected the configuration {mine}; got {theirs}")
    ours.self_attn.load_from_torch(layer.self_attn)
    for dst, src in ((ours.ffn.up_proj, layer.linear1), (ours.ffn.down_proj, layer.linear2)):
        dst.load_state_dict(src.state_dict())
    for name in norms:
        getattr(ours, name).load_state_dict(getattr(layer, name).state_dict())
