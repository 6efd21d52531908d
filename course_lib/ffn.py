"""The position-wise feed-forward network of the Transformer and its gated (GLU) variants.

Standard FFN (Vaswani et al., 2017), applied to every position independently::

    FFN(x) = φ(x U + b_u) V + b_v            U: d_model × d_ff,  V: d_ff × d_model

with φ = ReLU (the original Transformer) or GELU (BERT, GPT-2) and ``d_ff = 4·d_model``.
In the code, ``up`` is ``U`` and ``down`` is ``V`` (``linear1`` and ``linear2`` in
``torch.nn.TransformerEncoderLayer``).

Gated linear units (Dauphin et al., 2017; Shazeer, 2020, "GLU Variants Improve Transformer")
add a third matrix ``W`` whose output multiplies the activated branch element-wise::

    FFN_GLU(x) = (φ(x W_gate + b_gate) ⊗ (x W_up + b_up)) W_down + b_down

The activation φ names the variant (:data:`GLU_VARIANTS`): sigmoid → GLU, identity →
Bilinear, ReLU → ReGLU, GELU → GEGLU (T5 v1.1; Gemma and Gemma-2 with GELU's tanh approximation,
``"geglu_tanh"``), Swish = SiLU → SwiGLU (LLaMA, Mistral, Mixtral, Qwen2).
The names ``gate_proj``, ``up_proj``, ``down_proj`` are those of LLaMA's ``LlamaMLP``: the
activation is applied to the *gate* branch only.

A GLU layer has three matrices instead of two; to keep the parameter count of a ``4·d``
FFN its hidden width is ``2/3 · 4d = 8/3 · d``, rounded up to a multiple of a hardware-friendly
number (:func:`glu_hidden_dim`, LLaMA's ``multiple_of`` rule: d = 4096 → 11008).

Also here: the activations written out from their formulas (:func:`gelu`, :func:`silu`),
parameter counts and FLOPs per token by formula (:func:`ffn_num_parameters`,
:func:`ffn_flops_per_token`), and one constructor for every kind (:func:`build_feed_forward`).
Every FFN maps ``[..., d_model] → [..., d_model]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.utils import check_choice, check_floating, check_int, check_number, check_probability, check_tensor

__all__ = [
    "ACTIVATIONS",
    "GLU_VARIANTS",
    "FFN_KINDS",
    "gelu",
    "gelu_tanh",
    "silu",
    "FeedForward",
    "GatedFeedForward",
    "glu_hidden_dim",
    "ffn_num_parameters",
    "ffn_flops_per_token",
    "build_feed_forward",
]


# ----------------------------------------------------------------------------- activations
def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU(x) = x·Φ(x), Φ the standard normal CDF (Hendrycks & Gimpel, 2016).

    ``approximate="none"``: Φ(x) = ½(1 + erf(x/√2)) (``F.gelu``'s default);
    ``"tanh"``: ½(1 + tanh(√(2/π)(x + 0.044715 x³))) (GPT-2's ``gelu_new``,
    ``F.gelu(x, approximate="tanh")``).
    """
    check_tensor("x", x)
    check_floating("x", x)
    if approximate == "none":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if approximate == "tanh":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    raise ValueError(f"approximate: expected 'none' or 'tanh'; got {approximate!r}")


def silu(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Swish_β(x) = x·σ(βx) (Ramachandran et al., 2017); β = 1 is SiLU (``F.silu``)."""
    check_tensor("x", x)
    check_floating("x", x)
    return x * torch.sigmoid(beta * x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation, ``F.gelu(x, approximate="tanh")``: GPT-2's ``gelu_new`` and
    Gemma's ``gelu_pytorch_tanh`` (the released weights were trained with it; exact GELU moves
    their logits visibly)."""
    return F.gelu(x, approximate="tanh")


# ReLU and GELU (exact erf form, and the tanh approximation GPT-2 and Gemma use): the activations
# of the standard FFN (used by chapter 2's layers and model.py)
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": gelu_tanh}

# the activation φ on the gate branch of each GLU variant (Shazeer, 2020)
GLU_VARIANTS = {
    "glu": torch.sigmoid,          # Dauphin et al. (2017)
    "bilinear": lambda x: x,       # no non-linearity: the product itself is the only one
    "reglu": F.relu,
    "geglu": F.gelu,               # T5 v1.1
    "swiglu": F.silu,              # LLaMA, Mistral, Mixtral, Qwen2
    "geglu_tanh": gelu_tanh,       # Gemma, Gemma-2: GEGLU with the tanh approximation of GELU
}

# every FFN kind build_feed_forward (and ModelConfig.ffn) accepts
FFN_KINDS = tuple(ACTIVATIONS) + tuple(GLU_VARIANTS)


# ----------------------------------------------------------------------------- standard FFN
class FeedForward(nn.Module):
    """``down_proj(dropout(φ(up_proj(x))))``: Linear(d_model → d_ff) → activation → dropout → Linear(d_ff → d_model).

    Args:
        d_model: the width of the residual stream.
        d_ff: the hidden width (default ``4 * d_model``).
        activation: ``"relu"`` (the original Transformer), ``"gelu"`` (exact erf form,
            as ``torch.nn.functional.gelu``; BERT) or ``"gelu_tanh"`` (its tanh approximation; GPT-2).
        dropout: dropout on the hidden activations (as torch's Transformer layers do).
        bias: whether the two linear maps have biases.

    Submodules: ``up_proj`` (``d_model → d_ff``) and ``down_proj`` (``d_ff → d_model``), the names
    :class:`GatedFeedForward` and LLaMA's ``LlamaMLP`` use (GPT-2 calls them ``c_fc``, ``c_proj``).
    """

    def __init__(self, d_model: int, d_ff: int | None = None, activation: str = "relu",
                 dropout: float = 0.0, bias: bool = True, device=None, dtype=None):
        super().__init__()
        check_int("d_model", d_model)
        d_ff = check_int("d_ff", 4 * d_model if d_ff is None else d_ff)
        check_choice("activation", activation, tuple(ACTIVATIONS))
        check_probability("dropout", dropout)
        self.d_model, self.d_ff, self.activation = d_model, d_ff, activation
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias, device=device, dtype=dtype)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias, device=device, dtype=dtype)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[..., d_model]`` → ``[..., d_model]``."""
        return self.down_proj(self.dropout(ACTIVATIONS[self.activation](self.up_proj(x))))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


# ----------------------------------------------------------------------------- GLU variants
class GatedFeedForward(nn.Module):
    """A GLU-family FFN: ``down_proj(φ(gate_proj(x)) ⊗ up_proj(x))`` (LLaMA's ``LlamaMLP``).

    Args:
        d_model: the width of the residual stream.
        d_ff: the hidden width (default :func:`glu_hidden_dim` ``(d_model)``: 8/3·d_model
            rounded up to a multiple of 256, LLaMA's rule).
        variant: ``"glu"`` (sigmoid), ``"bilinear"`` (identity), ``"reglu"`` (ReLU),
            ``"geglu"`` (GELU), ``"swiglu"`` (SiLU) or ``"geglu_tanh"`` (tanh-approximated GELU,
            Gemma); see :data:`GLU_VARIANTS`.
        dropout: dropout on the gated hidden activations.
        bias: biases in the three linear maps (LLaMA has none).

    Submodules: ``gate_proj`` and ``up_proj`` (``d_model → d_ff``), ``down_proj`` (``d_ff → d_model``).
    """

    def __init__(self, d_model: int, d_ff: int | None = None, variant: str = "swiglu",
                 dropout: float = 0.0, bias: bool = False, device=None, dtype=None):
        super().__init__()
        check_int("d_model", d_model)
        d_ff = check_int("d_ff", glu_hidden_dim(d_model) if d_ff is None else d_ff)
        check_choice("variant", variant, tuple(GLU_VARIANTS))
        check_probability("dropout", dropout)
        self.d_model, self.d_ff, self.variant = d_model, d_ff, variant
        kw = dict(device=device, dtype=dtype)
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias, **kw)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias, **kw)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias, **kw)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[..., d_model]`` → ``[..., d_model]``."""
        hidden = GLU_VARIANTS[self.variant](self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(self.dropout(hidden))

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}"


# ----------------------------------------------------------------------------- sizes and costs
def glu_hidden_dim(d_model: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """The hidden width of a GLU FFN with the parameters of a ``4·d_model`` FFN (LLaMA's rule).

    ``hidden = ⌊2/3 · 4·d_model⌋`` (three matrices instead of two), optionally times
    ``ffn_dim_multiplier`` (LLaMA-2 70B, LLaMA-3), then rounded *up* to a multiple of
    ``multiple_of``: ``multiple_of · ⌈hidden / multiple_of⌉``. LLaMA-7B: d = 4096 → 11008.
    """
    check_int("d_model", d_model)
    check_int("multiple_of", multiple_of)
    hidden = int(2 * (4 * d_model) / 3)
    if ffn_dim_multiplier is not None:
        check_number("ffn_dim_multiplier", ffn_dim_multiplier, above=0)
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def ffn_num_parameters(d_model: int, d_ff: int, kind: str = "gelu", bias: bool = True) -> int:
    """Parameters of one FFN by formula.

    Standard (relu, gelu): ``2·d·d_ff`` weights + ``d_ff + d`` biases;
    GLU variants: ``3·d·d_ff`` weights + ``2·d_ff + d`` biases.
    """
    check_int("d_model", d_model)
    check_int("d_ff", d_ff)
    check_choice("kind", kind, FFN_KINDS)
    b = 1 if bias else 0
    if kind in GLU_VARIANTS:
        return 3 * d_model * d_ff + b * (2 * d_ff + d_model)
    return 2 * d_model * d_ff + b * (d_ff + d_model)


def ffn_flops_per_token(d_model: int, d_ff: int, kind: str = "gelu") -> int:
    """Forward FLOPs of the matrix products per token (a multiply-add = 2 FLOPs).

    Standard: two ``d × d_ff`` products → ``4·d·d_ff``; GLU: three → ``6·d·d_ff``. The
    element-wise activation, product and biases (``O(d_ff)``) are left out.
    """
    check_int("d_model", d_model)
    check_int("d_ff", d_ff)
    check_choice("kind", kind, FFN_KINDS)
    return (6 if kind in GLU_VARIANTS else 4) * d_model * d_ff


def build_feed_forward(kind: str, d_model: int, d_ff: int | None = None, *, dropout: float = 0.0,
                       bias: bool = True, device=None, dtype=None) -> nn.Module:
    """An FFN of any kind in :data:`FFN_KINDS`: :class:`FeedForward` for ``"relu"``/``"gelu"``,
    :class:`GatedFeedForward` for the GLU variants. ``d_ff=None``: ``4·d_model`` (standard) or
    :func:`glu_hidden_dim` (GLU)."""
    check_choice("kind", kind, FFN_KINDS)
    if kind in ACTIVATIONS:
        return FeedForward(d_model, d_ff, activation=kind, dropout=dropout, bias=bias, device=device, dtype=dtype)
    return GatedFeedForward(d_model, d_ff, variant=kind, dropout=dropout, bias=bias, device=device, dtype=dtype)
