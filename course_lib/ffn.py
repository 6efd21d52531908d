"""The position-wise feed-forward network of the Transformer (Vaswani et al., 2017).

    FFN(x) = W_down · φ(W_up x + b_up) + b_down,   φ = ReLU (default) or GELU

applied to every position independently: ``[batch, seq, d_model] → [batch, seq, d_model]``
through a hidden width ``d_ff`` (4·d_model in the original model).

This is the minimal module that chapter 2's encoder and decoder layers need; chapter 7
extends this module with GLU variants (SwiGLU, GeGLU …) and their gate/up/down projections.
The names ``up`` and ``down`` are those of modern LLM code (``linear1`` and ``linear2`` in
``torch.nn.TransformerEncoderLayer``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.utils import check_floating, check_tensor

__all__ = ["FeedForward", "ACTIVATIONS"]

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class FeedForward(nn.Module):
    """Linear(d_model → d_ff) → activation → dropout → Linear(d_ff → d_model).

    Args:
        d_model: the width of the residual stream.
        d_ff: the hidden width (default ``4 * d_model``).
        activation: ``"relu"`` (the original Transformer) or ``"gelu"`` (exact erf form,
            as ``torch.nn.functional.gelu``; BERT, GPT-2).
        dropout: dropout on the hidden activations (as torch's Transformer layers do).
        bias: whether the two linear maps have biases.
    """

    def __init__(self, d_model: int, d_ff: int | None = None, activation: str = "relu",
                 dropout: float = 0.0, bias: bool = True, device=None, dtype=None):
        super().__init__()
        d_ff = 4 * d_model if d_ff is None else d_ff
        if not (isinstance(d_model, int) and d_model > 0):
            raise ValueError(f"d_model: expected a positive int; got {d_model!r}")
        if not (isinstance(d_ff, int) and d_ff > 0):
            raise ValueError(f"d_ff: expected a positive int; got {d_ff!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}; got {activation!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1); got {dropout!r}")
        self.d_model, self.d_ff, self.activation = d_model, d_ff, activation
        self.up = nn.Linear(d_model, d_ff, bias=bias, device=device, dtype=dtype)
        self.down = nn.Linear(d_ff, d_model, bias=bias, device=device, dtype=dtype)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[..., d_model]`` → ``[..., d_model]``."""
        check_tensor("x", x, min_dim=1)
        check_floating("x", x)
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x: expected the last dimension to be d_model = {self.d_model}; got shape {tuple(x.shape)}")
        return self.down(self.dropout(ACTIVATIONS[self.activation](self.up(x))))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"
