"""Chapter 4 — the KV cache: what it holds, what it costs, and three ways to keep it.

An autoregressive model generates one token at a time. Without a cache, step ``l`` runs the
whole prefix of length ``l`` through the model again: ``O(l²·h·d + l·h²·d²)`` work per attention
layer (``h`` heads of width ``d``: the scores and the projections). But the keys and values of the
old tokens do not change — a token only sees its past — so they can be kept: the new token
needs its own projections and one row of scores, ``O(l·h·d + h²·d²)``.

Contents, top to bottom:

* :func:`kv_cache_bytes` — the memory bill ``2 · layers · kv_heads · head_dim · tokens · batch · bytes``;
* caches, all with the interface that ``course_lib.model`` calls
  (``update(k, v, layer_idx) → (k_all, v_all)``, ``get_seq_length``, ``key_indices``, ``nbytes``):
  :class:`KVCache` (preallocated, written in place), :class:`ConcatKVCache` (grown by
  ``torch.cat``, for comparison) and :class:`RollingKVCache` (Mistral's rolling buffer for
  sliding-window attention: token ``i`` lives in slot ``i mod W``).

The caches know nothing of the model (this module sits below it). Generation with a cache —
``generate``, ``make_cache``, the decoding benchmarks — is ``course_lib.generation``, above the
model; ``repeat_kv`` and grouped-query attention live beside attention, in ``course_lib.attention``
(re-exported here, where Chapter 4 introduces them).

Tests: ``tests/test_kv_cache.py`` (cached = uncached generation, tokens and logits; the caches'
bytes against the formula).
"""

from __future__ import annotations

import torch

from course_lib.attention import repeat_kv
from course_lib.utils import check_floating, check_int, check_tensor

__all__ = [
    "repeat_kv",
    "kv_cache_bytes",
    "KVCache",
    "ConcatKVCache",
    "RollingKVCache",
]


# ----------------------------------------------------------------------------- the memory bill
def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, tokens: int, batch: int = 1,
                   bytes_per_elem: int = 2) -> int:
    """Bytes of a KV cache: ``2 · n_layers · n_kv_heads · head_dim · tokens · batch · bytes_per_elem``.

    The 2 counts K and V. Only K/V heads count: MQA divides the bill by ``n_heads``, GQA by
    ``n_heads / n_kv_heads``. ``bytes_per_elem = 2`` for fp16/bf16.
    """
    for name, v in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                    ("batch", batch), ("bytes_per_elem", bytes_per_elem)):
        check_int(name, v)
    check_int("tokens", tokens, 0)
    return 2 * n_layers * n_kv_heads * head_dim * tokens * batch * bytes_per_elem


# ----------------------------------------------------------------------------- caches
class _Cache:
    """What ``course_lib.model`` needs from a cache.

    * ``update(k, v, layer_idx)``: append the new keys/values ``[B, h_kv, T, d]`` of layer
      ``layer_idx``; return the keys/values that the new queries attend over, ``[B, h_kv, S, d]``;
    * ``key_indices(layer_idx)``: ``[S]`` the column (time step) of each returned key, −1 for an
      empty slot — the model builds the causal/window mask from them;
    * ``get_seq_length(layer_idx)``: tokens seen so far;
    * ``ordered``: True when the returned keys are the columns ``0 … S − 1`` in order.
    """

    ordered = True

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int):
        self.n_layers = check_int("n_layers", n_layers)
        self.batch = check_int("batch", batch)
        self.n_kv_heads = check_int("n_kv_heads", n_kv_heads)
        self.head_dim = check_int("head_dim", head_dim)
        self.lengths = [0] * n_layers          # tokens written, per layer

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def _allocate(self, slots: int, dtype: torch.dtype, device) -> None:
        """The buffers ``k``, ``v``: ``[n_layers, batch, n_kv_heads, slots, head_dim]``, taken once."""
        shape = (self.n_layers, self.batch, self.n_kv_heads, slots, self.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def _check(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> int:
        if not (isinstance(layer_idx, int) and 0 <= layer_idx < self.n_layers):
            raise ValueError(f"layer_idx: expected an int in [0, {self.n_layers}); got {layer_idx!r}")
        check_tensor("k", k, ndim=4)
        check_floating("k", k)
        want = (self.batch, self.n_kv_heads, k.shape[2], self.head_dim)
        if tuple(k.shape) != want:
            raise ValueError(f"k: expected shape (batch, n_kv_heads, T, head_dim) = {want}; got {tuple(k.shape)}")
        if v.shape != k.shape:
            raise ValueError(f"v: expected the shape of k {tuple(k.shape)}; got {tuple(v.shape)}")
        return k.shape[2]

    def reset(self) -> None:
        self.lengths = [0] * self.n_layers


class KVCache(_Cache):
    """A preallocated KV cache: ``k``, ``v`` of shape ``[n_layers, batch, n_kv_heads, max_len, head_dim]``.

    ``update`` writes the T new keys/values of a layer at columns ``pos … pos + T − 1``
    (``pos`` = that layer's length), advances the length, and returns a *view* of columns
    ``0 … pos + T − 1``: no allocation and no copy of the old entries per step (compare
    :class:`ConcatKVCache`). The memory is taken once, for ``max_len`` tokens:
    ``nbytes == kv_cache_bytes(n_layers, n_kv_heads, head_dim, max_len, batch, element size)``.
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__(n_layers, batch, n_kv_heads, head_dim)
        self.max_len = check_int("max_len", max_len)
        self._allocate(max_len, dtype, device)
        self._columns = torch.arange(max_len, device=device)

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int):
        T = self._check(k, v, layer_idx)
        pos = self.lengths[layer_idx]
        if pos + T > self.max_len:
            raise ValueError(f"k: the cache holds max_len = {self.max_len} tokens; {pos} cached + {T} new do not fit")
        self.k[layer_idx, :, :, pos:pos + T] = k
        self.v[layer_idx, :, :, pos:pos + T] = v
        self.lengths[layer_idx] = pos + T
        return self.k[layer_idx, :, :, :pos + T], self.v[layer_idx, :, :, :pos + T]

    def key_indices(self, layer_idx: int = 0) -> torch.Tensor:
        return self._columns[: self.lengths[layer_idx]]

    def crop(self, length: int) -> None:
        """Forget every token after the first ``length`` (Hugging Face's ``DynamicCache.crop``):
        the next update writes at column ``length``. Rewinds a cache to a shared prefix."""
        check_int("length", length, 0)
        if length > min(self.lengths):
            raise ValueError(f"length: expected at most the {min(self.lengths)} tokens cached; got {length}")
        self.lengths = [length] * self.n_layers

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


class ConcatKVCache(_Cache):
    """The naive cache: every step builds new tensors ``torch.cat([old, new])``.

    Correct, but step ``t`` copies all ``t`` cached entries (O(t) memory traffic per step,
    O(n²) over a generation) and allocates a new tensor. Kept to measure that cost.
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int, **_ignored):
        super().__init__(n_layers, batch, n_kv_heads, head_dim)
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int):
        T = self._check(k, v, layer_idx)
        if self.k[layer_idx] is None:
            self.k[layer_idx], self.v[layer_idx] = k.clone(), v.clone()
        else:
            self.k[layer_idx] = torch.cat([self.k[layer_idx], k], dim=2)
            self.v[layer_idx] = torch.cat([self.v[layer_idx], v], dim=2)
        self.lengths[layer_idx] += T
        return self.k[layer_idx], self.v[layer_idx]

    def key_indices(self, layer_idx: int = 0) -> torch.Tensor:
        return torch.arange(self.lengths[layer_idx], device=self.k[layer_idx].device)

    def reset(self) -> None:
        super().reset()
        self.k = [None] * self.n_layers
        self.v = [None] * self.n_layers

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v if t is not None)


class RollingKVCache(_Cache):
    """Mistral's rolling buffer for sliding-window attention: ``window`` slots per layer.

    With a window of ``W`` keys (a query sees itself and the ``W − 1`` tokens before it), no
    query ever needs a key more than ``W − 1`` columns back, so the cache keeps ``W`` slots and
    writes token ``i`` into slot ``i mod W``, over the token ``i − W`` that no query needs any
    more. Memory stays ``kv_cache_bytes(..., tokens=W)`` however long the sequence.

    One decoding step (T = 1) writes and then attends over the whole buffer: it holds exactly the
    window. A prompt longer than the free room is attended over ``[old buffer, new keys]``
    (its first queries need keys that its last tokens overwrite), and then its last ``W``
    tokens are written. ``key_indices`` gives each returned key's column (−1: empty slot); the
    slots are not in time order, so the model builds its mask from these columns.
    """

    ordered = False

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, window: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__(n_layers, batch, n_kv_heads, head_dim)
        self.window = check_int("window", window)
        self._allocate(window, dtype, device)
        self.slot_index = torch.full((n_layers, window), -1, dtype=torch.long, device=device)
        self._returned = [self.slot_index[i] for i in range(n_layers)]

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int):
        T = self._check(k, v, layer_idx)
        W, start = self.window, self.lengths[layer_idx]
        columns = torch.arange(start, start + T, device=k.device)
        write_first = T == 1 or start + T <= W          # the buffer then holds every key needed
        if not write_first:
            k_all = torch.cat([self.k[layer_idx], k], dim=2)
            v_all = torch.cat([self.v[layer_idx], v], dim=2)
            idx_all = torch.cat([self.slot_index[layer_idx], columns])
        keep = slice(max(0, T - W), T)                   # only the last W tokens can stay
        slots = columns[keep] % W
        self.k[layer_idx].index_copy_(2, slots, k[:, :, keep])
        self.v[layer_idx].index_copy_(2, slots, v[:, :, keep])
        self.slot_index[layer_idx].index_copy_(0, slots, columns[keep])
        self.lengths[layer_idx] = start + T
        if write_first:
            self._returned[layer_idx] = self.slot_index[layer_idx]
            return self.k[layer_idx], self.v[layer_idx]
        self._returned[layer_idx] = idx_all
        return k_all, v_all

    def key_indices(self, layer_idx: int = 0) -> torch.Tensor:
        return self._returned[layer_idx]

    def reset(self) -> None:
        super().reset()
        self.slot_index.fill_(-1)
        self._returned = [self.slot_index[i] for i in range(self.n_layers)]

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes
