"""Normalization layers of a Transformer: LayerNorm, RMSNorm, pRMSNorm, and where they sit.

For a vector ``x ∈ ℝⁿ`` (the last dimension of a ``[..., n]`` tensor):

    LayerNorm (Ba et al., 2016):   y = (x − μ) / √(σ² + ε) ⊙ γ + β,
                                   μ = (1/n) Σᵢ xᵢ,  σ² = (1/n) Σᵢ (xᵢ − μ)²   (biased variance)
    RMSNorm (Zhang & Sennrich, 2019): y = x / √(RMS(x)² + ε) ⊙ γ,   RMS(x)² = (1/n) Σᵢ xᵢ²
    pRMSNorm:                      the same, RMS estimated from the first k = ⌈p·n⌉ entries only

ε sits *inside* the square root (as in ``torch.nn.LayerNorm`` / ``torch.nn.RMSNorm``). The
statistics of half-precision inputs (fp16, bf16) are computed in fp32 and the result cast back:
the sum of squares of fp16 activations overflows 65 504 long before the activations do.

Where the norm sits in a residual block with sub-layer ``F`` (attention or FFN), see
:func:`residual_block`:

    post-LN (Vaswani et al.):  x ← Norm(x + F(x))
    pre-LN  (GPT-2, LLaMA):    x ← x + F(Norm(x))
    sandwich (Gemma-2):        x ← x + Norm_post(F(Norm_pre(x)))

The experiment helpers of Chapter 9 (``layer_grad_norms``, ``xavier_init_``) train and measure a
whole model, so they live with the training code, ``course_lib.train``, above the model.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from course_lib.utils import check_floating, check_tensor

__all__ = [
    "NORM_PLACEMENTS",
    "layer_norm",
    "rms_norm",
    "LayerNorm",
    "RMSNorm",
    "residual_block",
    "norm_op_counts",
]

NORM_PLACEMENTS = ("pre", "post", "sandwich")

_HALF = (torch.float16, torch.bfloat16)


def _check(x: torch.Tensor, weight, bias, eps: float) -> int:
    check_tensor("x", x, min_dim=1)
    check_floating("x", x)
    n = x.shape[-1]
    if n < 1:
        raise ValueError(f"x: expected a non-empty last dimension; got shape {tuple(x.shape)}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            check_tensor(name, p, ndim=1)
            if p.shape[0] != n:
                raise ValueError(f"{name}: expected shape ({n},) (the last dimension of x); got {tuple(p.shape)}")
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"eps: expected a number ≥ 0; got {eps!r}")
    return n


def _affine(y: torch.Tensor, weight, bias, dtype: torch.dtype) -> torch.Tensor:
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(dtype)


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dimension: ``(x − μ) / √(σ² + ε) · γ + β`` with the *biased* σ².

    Args: x ``[..., n]``; weight γ, bias β ``[n]`` (None: 1 and 0). Returns ``[..., n]`` in x's dtype;
    fp16/bf16 statistics are computed in fp32. Equal to ``F.layer_norm(x, (n,), weight, bias, eps)``.
    """
    _check(x, weight, bias, eps)
    dtype = x.dtype
    x = x.float() if dtype in _HALF else x
    mu = x.mean(-1, keepdim=True)                                  # [..., 1]
    var = ((x - mu) ** 2).mean(-1, keepdim=True)                   # biased: divide by n, not n − 1
    return _affine((x - mu) * torch.rsqrt(var + eps), weight, bias, dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6,
             p: float = 1.0) -> torch.Tensor:
    """RMSNorm over the last dimension: ``x / √(mean(x²) + ε) · γ`` — no mean, no bias.

    Args:
        x: ``[..., n]``; weight γ ``[n]`` (None: 1).
        p: pRMSNorm — estimate the RMS from the first ``k = ⌈p·n⌉`` entries only (``p = 1``: RMSNorm;
            Zhang & Sennrich use p = 6.25 %). Every entry is still divided by that RMS.
    Returns ``[..., n]`` in x's dtype (fp16/bf16 statistics in fp32). With ``p = 1`` equal to
    ``F.rms_norm(x, (n,), weight, eps)``.
    """
    n = _check(x, weight, None, eps)
    if not (isinstance(p, (int, float)) and 0 < p <= 1):
        raise ValueError(f"p: expected a fraction in (0, 1]; got {p!r}")
    k = max(1, math.ceil(p * n))
    dtype = x.dtype
    x = x.float() if dtype in _HALF else x
    ms = (x[..., :k] ** 2).mean(-1, keepdim=True)                  # [..., 1] mean square of the first k
    return _affine(x * torch.rsqrt(ms + eps), weight, None, dtype)


class LayerNorm(nn.Module):
    """``layer_norm`` with learned γ (ones) and β (zeros, omitted with ``bias=False``): ``[..., d] → [..., d]``."""

    def __init__(self, d: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        if not isinstance(d, int) or d < 1:
            raise ValueError(f"d: expected a positive int; got {d!r}")
        self.d, self.eps = d, eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(nn.Module):
    """``rms_norm`` with a learned γ (ones) and no β, as in LLaMA: ``[..., d] → [..., d]``; ``p < 1``: pRMSNorm.

    ``offset``: the scale is ``offset + weight`` (Gemma stores ``w`` and scales by ``1 + w``, with
    ``w`` starting at 0); the sum is taken in fp32, as Gemma's reference code does, so that a
    bf16 ``w`` near 0 keeps its precision. Default 0: the scale is the weight itself.
    """

    def __init__(self, d: int, eps: float = 1e-6, p: float = 1.0, offset: float = 0.0):
        super().__init__()
        if not isinstance(d, int) or d < 1:
            raise ValueError(f"d: expected a positive int; got {d!r}")
        if not isinstance(offset, (int, float)):
            raise ValueError(f"offset: expected a number; got {offset!r}")
        self.d, self.eps, self.p, self.offset = d, eps, p, float(offset)
        self.weight = nn.Parameter(torch.full((d,), 1.0 - self.offset))     # the scale starts at 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight if self.offset == 0 else self.weight.float() + self.offset
        return rms_norm(x, scale, self.eps, self.p)

    def extra_repr(self) -> str:
        return (f"{self.d}, eps={self.eps}" + (f", p={self.p}" if self.p != 1 else "")
                + (f", offset={self.offset:g}" if self.offset else ""))


def residual_block(x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor], norm: Callable,
                   placement: str = "pre", post_norm: Callable | None = None) -> torch.Tensor:
    """One residual sub-layer with its norm placed ``"pre"``, ``"post"`` or ``"sandwich"``.

    pre: ``x + F(Norm(x))``; post: ``Norm(x + F(x))``; sandwich (Gemma-2): ``x + Norm_post(F(Norm(x)))``
    (``post_norm`` required). ``course_lib.model.Block`` applies this to attention, then to the FFN.
    """
    if placement == "pre":
        return x + sublayer(norm(x))
    if placement == "post":
        return norm(x + sublayer(x))
    if placement == "sandwich":
        if post_norm is None:
            raise ValueError("post_norm: expected a norm module for placement='sandwich'; got None")
        return x + post_norm(sublayer(norm(x)))
    raise ValueError(f"placement: expected one of {NORM_PLACEMENTS}; got {placement!r}")


def norm_op_counts(n: int, kind: str = "layernorm", affine: bool = True, p: float = 1.0) -> dict[str, int]:
    """Element-wise operations per vector of ``n`` entries (one add, mul, … = one op; rsqrt = 1 op).

    LayerNorm: mean (n adds, 1 div), centre (n subs), variance (n mul + n add, 1 div), + ε and rsqrt (2),
    scale (n mul), γ (n mul), β (n add). RMSNorm: sum of squares (n mul + n add over ``⌈p·n⌉``
    entries), 1 div, + ε and rsqrt (2), scale (n mul), γ (n mul); no mean, no centring, no β.
    Returns ``{"reductions": passes over the vector before the output can be written, "ops": total}``.
    """
    if kind == "layernorm":
        stats = (n + 1) + n + (2 * n + 1) + 2
        ops = stats + n + (2 * n if affine else 0)
        return {"reductions": 2, "ops": ops}
    if kind == "rmsnorm":
        k = max(1, math.ceil(p * n))
        ops = 2 * k + 1 + 2 + n + (n if affine else 0)
        return {"reductions": 1, "ops": ops}
    raise ValueError(f"kind: expected 'layernorm' or 'rmsnorm'; got {kind!r}")
