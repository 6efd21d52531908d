"""Mixed precision: floating-point formats, simulated rounding, loss scaling, master weights.

Chapter 11. Read top to bottom:

1. :class:`FloatFormat` — a binary floating-point format from its bit counts (sign, exponent,
   stored mantissa bits; the leading 1 of a normal number is implicit, so the *precision* is
   ``mantissa_bits + 1``): ``max``, ``eps``, ``tiny`` (smallest normal), ``smallest_subnormal``.
   :data:`FORMATS` holds fp32, tf32, fp16 and bf16; :func:`format_table` tabulates them.
2. :func:`float_fields` — the sign / exponent / mantissa fields of a tensor's bits (fp32, fp16,
   bf16), read by bit manipulation; :func:`from_fields` builds the value back.
3. :func:`round_to_format` — round float32/float64 values to a format (round to nearest, ties to
   even, with subnormals and overflow to ±inf) while keeping the wider dtype: this is how tf32
   (which has no torch dtype) is simulated, and it equals ``.to(torch.float16 / bfloat16)``.
4. :func:`sequential_sum` — add numbers one at a time in a given format (the sum stalls once the
   increment is below half a unit in the last place of the accumulator).
5. :func:`underflow_fraction` — the share of non-zero values that become 0 in a format, before
   and after multiplying by a loss scale ``S`` (Micikevicius et al., 2018).
6. :func:`update_scale` and :class:`DynamicLossScaler` — dynamic loss scaling with the semantics
   of ``torch.amp.GradScaler``: on inf/NaN gradients skip the step and multiply the scale by the
   ``backoff_factor`` (0.5); after ``growth_interval`` (K) consecutive clean steps multiply it by
   the ``growth_factor`` (2).
7. :func:`master_weight_step` — an SGD step on fp32 master weights from (scaled) low-precision
   gradients, returning the new master copy and its low-precision cast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

from course_lib.utils import check_floating, check_tensor

__all__ = [
    "FloatFormat",
    "FORMATS",
    "get_format",
    "format_table",
    "float_fields",
    "from_fields",
    "round_to_format",
    "sequential_sum",
    "underflow_fraction",
    "has_inf_or_nan",
    "update_scale",
    "DynamicLossScaler",
    "master_weight_step",
]


# ----------------------------------------------------------------------------- 1. formats
@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format with 1 sign bit, ``exponent_bits`` and ``mantissa_bits``.

    ``mantissa_bits`` counts the *stored* fraction bits; normal numbers have an implicit leading 1,
    so they carry ``mantissa_bits + 1`` significant bits. With bias ``b = 2^(e−1) − 1`` a normal
    number is ``(−1)^s · 1.f · 2^(E − b)`` for ``E = 1 … 2^e − 2`` (``E = 2^e − 1`` is inf/NaN,
    ``E = 0`` the subnormals ``0.f · 2^(1 − b)``).
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    dtype: torch.dtype | None = None      # the torch dtype, if there is one (tf32 has none)

    def __post_init__(self):
        if not (isinstance(self.exponent_bits, int) and 2 <= self.exponent_bits <= 11):
            raise ValueError(f"exponent_bits: expected an int in [2, 11]; got {self.exponent_bits!r}")
        if not (isinstance(self.mantissa_bits, int) and 1 <= self.mantissa_bits <= 52):
            raise ValueError(f"mantissa_bits: expected an int in [1, 52]; got {self.mantissa_bits!r}")

    @property
    def bits(self) -> int:
        """Total width: sign + exponent + stored mantissa."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def emax(self) -> int:
        """Largest unbiased exponent of a finite number."""
        return self.bias

    @property
    def emin(self) -> int:
        """Smallest unbiased exponent of a normal number."""
        return 1 - self.bias

    @property
    def eps(self) -> float:
        """Gap between 1 and the next representable number: ``2^−mantissa_bits``."""
        return 2.0 ** -self.mantissa_bits

    @property
    def max(self) -> float:
        """Largest finite number: ``(2 − eps) · 2^emax``."""
        return (2.0 - self.eps) * 2.0 ** self.emax

    @property
    def tiny(self) -> float:
        """Smallest positive normal number: ``2^emin``."""
        return 2.0 ** self.emin

    @property
    def smallest_subnormal(self) -> float:
        """Smallest positive number: ``2^(emin − mantissa_bits)``."""
        return 2.0 ** (self.emin - self.mantissa_bits)

    @property
    def decimal_digits(self) -> float:
        """Significant decimal digits, ``log10(2^(mantissa_bits + 1))``."""
        return (self.mantissa_bits + 1) * math.log10(2.0)


FORMATS: dict[str, FloatFormat] = {
    "fp32": FloatFormat("fp32", 8, 23, torch.float32),
    "tf32": FloatFormat("tf32", 8, 10, None),
    "fp16": FloatFormat("fp16", 5, 10, torch.float16),
    "bf16": FloatFormat("bf16", 8, 7, torch.bfloat16),
}

_BY_DTYPE = {f.dtype: f for f in FORMATS.values() if f.dtype is not None}


def get_format(fmt) -> FloatFormat:
    """A :class:`FloatFormat` from itself, its name (``"fp16"``…) or its torch dtype."""
    if isinstance(fmt, FloatFormat):
        return fmt
    if isinstance(fmt, str) and fmt in FORMATS:
        return FORMATS[fmt]
    if isinstance(fmt, torch.dtype) and fmt in _BY_DTYPE:
        return _BY_DTYPE[fmt]
    raise ValueError(f"fmt: expected a FloatFormat, one of {sorted(FORMATS)} or "
                     f"torch.float32/float16/bfloat16; got {fmt!r}")


def format_table(names: Iterable[str] = ("fp32", "tf32", "fp16", "bf16")) -> list[dict]:
    """One row per format: bits, exponent, mantissa, max, tiny, smallest subnormal, eps, digits."""
    rows = []
    for name in names:
        f = get_format(name)
        rows.append({"format": f.name, "bits": f.bits, "exponent": f.exponent_bits, "mantissa": f.mantissa_bits,
                     "max": f.max, "tiny": f.tiny, "smallest_subnormal": f.smallest_subnormal, "eps": f.eps,
                     "digits": round(f.decimal_digits, 2)})
    return rows


# ----------------------------------------------------------------------------- 2. bit fields
_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def float_fields(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sign, biased_exponent, mantissa)`` int64 tensors of ``x``'s bits (fp32, fp16 or bf16)."""
    check_tensor("x", x)
    check_floating("x", x, allowed=tuple(_INT_VIEW))
    f = _BY_DTYPE[x.dtype]
    bits = x.contiguous().view(_INT_VIEW[x.dtype]).long() & ((1 << f.bits) - 1)   # two's complement → unsigned
    mantissa = bits & ((1 << f.mantissa_bits) - 1)
    exponent = (bits >> f.mantissa_bits) & ((1 << f.exponent_bits) - 1)
    sign = bits >> (f.bits - 1)
    return sign, exponent, mantissa


def from_fields(sign: torch.Tensor, exponent: torch.Tensor, mantissa: torch.Tensor, fmt) -> torch.Tensor:
    """The float64 values of the given fields in format ``fmt`` (normals, subnormals, ±inf, NaN)."""
    f = get_format(fmt)
    s, e, m = (torch.as_tensor(t, dtype=torch.float64) for t in (sign, exponent, mantissa))
    frac = m / 2.0 ** f.mantissa_bits
    normal = (1.0 + frac) * torch.exp2(e - f.bias)
    subnormal = frac * 2.0 ** f.emin
    top = 2 ** f.exponent_bits - 1
    special = torch.where(m == 0, torch.full_like(frac, math.inf), torch.full_like(frac, math.nan))
    value = torch.where(e == 0, subnormal, torch.where(e == top, special, normal))
    return torch.where(s == 1, -value, value)


# ----------------------------------------------------------------------------- 3. rounding
def round_to_format(x: torch.Tensor, fmt) -> torch.Tensor:
    """Round ``x`` (float32 or float64) to format ``fmt``; the result keeps ``x``'s dtype.

    Round to nearest, ties to even: with ``x = m · 2^k``, ``1 ≤ |m| < 2``, the spacing of the
    format at ``x`` is ``ulp = 2^(max(k, emin) − mantissa_bits)`` (the ``max`` gives the fixed spacing
    of the subnormals), and ``round(x / ulp) · ulp`` is exact in float64. A result above ``max``
    becomes ±inf. For fp16 and bf16 this equals ``x.to(dtype)``; for tf32 it is what a tensor core
    does to a matmul input.
    """
    check_tensor("x", x)
    check_floating("x", x, allowed=(torch.float32, torch.float64))
    f = get_format(fmt)
    if x.dtype == torch.float32 and f.exponent_bits == 8 and f.mantissa_bits >= 23:
        return x.clone()
    xd = x.double()
    _, k = torch.frexp(xd)                      # xd = m' · 2^k with 0.5 ≤ |m'| < 1
    k = torch.clamp(k - 1, min=f.emin)          # exponent of the leading bit (subnormals: emin)
    ulp = torch.exp2((k - f.mantissa_bits).double())
    y = torch.round(xd / ulp) * ulp             # torch.round: ties to even
    y = torch.where(y.abs() > f.max, torch.copysign(torch.full_like(y, math.inf), xd), y)
    y = torch.where(torch.isfinite(xd), y, xd)  # inf, NaN pass through
    return y.to(x.dtype)


def sequential_sum(values: torch.Tensor, fmt, start: float = 0.0) -> float:
    """``start + v_0 + v_1 + …`` added one at a time, rounding every partial sum to ``fmt``.

    The increment is lost once it is smaller than half the spacing of the accumulator:
    in fp16, adding 1e-4 stalls at 0.25 (spacing 2^−12 ≈ 2.4e-4 there).
    """
    check_tensor("values", values, ndim=1)
    check_floating("values", values)
    f = get_format(fmt)
    vals = round_to_format(values.double(), f).tolist()
    acc = _round_scalar(float(start), f)
    for v in vals:                              # each partial sum rounded as in round_to_format
        acc = _round_scalar(acc + v, f)
    return acc


def _round_scalar(x: float, f: FloatFormat) -> float:
    if not math.isfinite(x) or x == 0.0:
        return x
    _, k = math.frexp(x)
    ulp = 2.0 ** (max(k - 1, f.emin) - f.mantissa_bits)
    y = round(x / ulp) * ulp                    # Python's round: ties to even
    return math.copysign(math.inf, x) if abs(y) > f.max else y


# ----------------------------------------------------------------------------- 5. underflow
def underflow_fraction(values: torch.Tensor, fmt, scale: float = 1.0) -> float:
    """Share of the non-zero ``values`` that round to 0 in ``fmt`` after multiplying by ``scale``."""
    check_tensor("values", values)
    check_floating("values", values, allowed=(torch.float32, torch.float64))
    if not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale: expected a positive finite number; got {scale!r}")
    nz = values[values != 0]
    if nz.numel() == 0:
        return 0.0
    rounded = round_to_format(nz.double() * scale, fmt)
    return (rounded == 0).double().mean().item()


# ----------------------------------------------------------------------------- 6. loss scaling
def has_inf_or_nan(grads: Iterable[torch.Tensor | None]) -> bool:
    """True when any gradient holds an inf or a NaN (``None`` gradients are skipped)."""
    return any(g is not None and not torch.isfinite(g).all() for g in grads)


def update_scale(scale: float, growth_tracker: int, found_inf: bool, *, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000) -> tuple[float, int]:
    """One update of the dynamic loss scale; returns ``(new_scale, new_growth_tracker)``.

    ``growth_tracker`` counts consecutive clean (finite) steps. On an overflow: scale ×
    ``backoff_factor``, tracker 0 (the step itself is skipped by the caller). On a clean step: tracker
    + 1; when it reaches ``growth_interval`` (K): scale × ``growth_factor`` and tracker 0. This is
    ``torch._amp_update_scale_``, the rule of ``torch.amp.GradScaler.update``.
    """
    if found_inf:
        return scale * backoff_factor, 0
    growth_tracker += 1
    if growth_tracker == growth_interval:
        return scale * growth_factor, 0
    return scale, growth_tracker


class DynamicLossScaler:
    """Dynamic loss scaling, step for step the behaviour of ``torch.amp.GradScaler``.

    Usage per iteration::

        scaler.scale(loss).backward()      # gradients are S · ∇loss
        scaler.step(optimizer)             # unscale (× 1/S), skip if inf/NaN, else optimizer.step()
        scaler.update()                    # grow S after K clean steps, halve it on overflow
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        if not (isinstance(init_scale, (int, float)) and init_scale > 0 and math.isfinite(init_scale)):
            raise ValueError(f"init_scale: expected a positive finite number; got {init_scale!r}")
        if not growth_factor > 1.0:
            raise ValueError(f"growth_factor: expected a number > 1; got {growth_factor!r}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"backoff_factor: expected a number in (0, 1); got {backoff_factor!r}")
        if not (isinstance(growth_interval, int) and growth_interval >= 1):
            raise ValueError(f"growth_interval: expected a positive int; got {growth_interval!r}")
        self.scale_value = float(init_scale)
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.growth_tracker = 0
        self.found_inf: bool | None = None      # set by unscale_, consumed by update
        self.history: list[tuple[float, bool]] = []   # (scale used, step taken) per iteration

    def get_scale(self) -> float:
        return self.scale_value

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """``S · loss``."""
        check_tensor("loss", loss)
        return loss * self.scale_value

    def unscale_(self, optimizer: torch.optim.Optimizer) -> bool:
        """Multiply every gradient by ``1/S`` in place (in fp32); return whether any is inf/NaN."""
        if self.found_inf is not None:
            return self.found_inf
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        found = has_inf_or_nan(grads)
        inv = 1.0 / self.scale_value
        for g in grads:
            g.mul_(inv)
        self.found_inf = found
        return found

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Unscale (if not done yet) and call ``optimizer.step()`` unless a gradient overflowed."""
        found = self.unscale_(optimizer)
        self.history.append((self.scale_value, not found))
        if not found:
            optimizer.step()
        return not found

    def update(self) -> None:
        """Apply :func:`update_scale` with the overflow flag of this iteration."""
        if self.found_inf is None:
            raise RuntimeError("update: call step(optimizer) (or unscale_) first in this iteration")
        self.scale_value, self.growth_tracker = update_scale(
            self.scale_value, self.growth_tracker, self.found_inf, growth_factor=self.growth_factor,
            backoff_factor=self.backoff_factor, growth_interval=self.growth_interval)
        self.found_inf = None


# ----------------------------------------------------------------------------- 7. master weights
def master_weight_step(master: torch.Tensor, grad: torch.Tensor, lr: float, *, scale: float = 1.0,
                       dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One SGD step on fp32 master weights from a low-precision gradient scaled by ``scale``.

    Args:
        master: ``[*]`` float32 master weights.
        grad: ``[*]`` gradient of ``scale · loss`` (any float dtype, e.g. fp16).
    Returns:
        ``(new_master, model_weights, stepped)``: ``new_master = master − lr · grad / scale`` in fp32
        (unchanged if the gradient has inf/NaN, then ``stepped`` is False) and its cast to ``dtype``.
    """
    check_tensor("master", master)
    check_floating("master", master, allowed=(torch.float32,))
    check_tensor("grad", grad)
    check_floating("grad", grad)
    if grad.shape != master.shape:
        raise ValueError(f"grad: expected the shape of master, {tuple(master.shape)}; got {tuple(grad.shape)}")
    g = grad.float() / scale
    if has_inf_or_nan([g]):
        return master.clone(), master.to(dtype), False
    new = master - lr * g
    return new, new.to(dtype), True
