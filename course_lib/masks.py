"""Chapter 3 — attention masks.

Boolean masks follow PyTorch's convention: ``True`` where a query may attend to a key.
Masks have shape ``[T, S]`` (queries × keys) or anything that broadcasts to
``[batch, heads, T, S]``.
"""

from __future__ import annotations

import torch

__all__ = ["causal_mask"]


def causal_mask(T: int, S: int | None = None, *, device=None) -> torch.Tensor:
    """``[T, S]`` boolean mask, True where key j is not in the future of query i.

    The T queries are the **last** T positions of the S keys (bottom-right aligned), so
    ``mask[i, j] = j <= i + (S - T)``. That is what decoding with a KV cache needs (one new
    query sees every cached key). For ``T == S`` it is the usual lower-triangular mask and
    equals ``F.scaled_dot_product_attention(..., is_causal=True)``; for ``T != S`` torch's
    ``is_causal`` is top-left aligned instead.
    """
    S = T if S is None else S
    if T < 0 or S < T:
        raise ValueError(f"S: expected at least T = {T} keys (queries are the last T positions); got S = {S}")
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)
