"""Chapter 4 — the KV cache, multi-query and grouped-query attention, rolling buffers.

An autoregressive model generates one token at a time. Without a cache, step ``t`` runs the
whole prefix of length ``l`` through the model again: ``O(l²·h·d + l·h²·d²)`` work per step
(``h`` heads of width ``d``: the scores and the projections). But the keys and values of the
old tokens do not change — a token only sees its past — so they can be kept: the new token
needs its own projections and one row of scores, ``O(l·h·d + h·d²)``.

Contents, top to bottom:

* :func:`repeat_kv` — ``[B, h_kv, T, d] → [B, h_kv·n_rep, T, d]``, each K/V head repeated for
  the ``n_rep`` query heads of its group (the name and semantics of LLaMA's code);
* :func:`kv_cache_bytes` — the memory bill ``2 · layers · kv_heads · head_dim · tokens · batch · bytes``;
* caches, all with the interface that ``course_lib.model`` calls
  (``update(k, v, layer_idx) → (k_all, v_all)``, ``get_seq_length``, ``key_indices``, ``nbytes``):
  :class:`KVCache` (preallocated, written in place), :class:`ConcatKVCache` (grown by
  ``torch.cat``, for comparison) and :class:`RollingKVCache` (Mistral's rolling buffer for
  sliding-window attention: token ``i`` lives in slot ``i mod W``);
* :func:`mha_to_gqa` — a multi-head checkpoint turned into a GQA/MQA one by mean-pooling the
  K/V heads of each group (Ainslie et al., 2023);
* :func:`generate` — batched greedy or sampled decoding of prompts of different lengths, with
  or without a cache;
* :func:`decode_benchmark` and ``python -m course_lib.kv_cache --bench`` — cached vs uncached
  decoding speed.

Tests: ``tests/test_kv_cache.py`` (``repeat_kv`` against ``torch.repeat_interleave`` and
``F.scaled_dot_product_attention(enable_gqa=True)``; cached = uncached generation, tokens and logits).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from course_lib.utils import check_floating, check_tensor

__all__ = [
    "repeat_kv",
    "kv_cache_bytes",
    "KVCache",
    "ConcatKVCache",
    "RollingKVCache",
    "make_cache",
    "mha_to_gqa",
    "left_pad",
    "generate",
    "decode_benchmark",
]


def _check_pos_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer ≥ {minimum}; got {value!r}")
    return value


# ----------------------------------------------------------------------------- MQA / GQA
def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[B, h_kv, T, d]`` → ``[B, h_kv·n_rep, T, d]``: K/V head ``g`` serves query heads ``g·n_rep … g·n_rep + n_rep − 1``.

    Each K/V head is repeated ``n_rep`` times *consecutively* (``torch.repeat_interleave`` on the
    head dimension, not ``Tensor.repeat``, which would tile the heads 0, 1, 0, 1, …). ``n_rep = 1``
    (multi-head attention) returns ``x`` itself. The expand + reshape costs one copy; the fused
    kernels (``F.scaled_dot_product_attention(..., enable_gqa=True)``) skip even that.
    """
    check_tensor("x", x, ndim=4)
    _check_pos_int("n_rep", n_rep)
    if n_rep == 1:
        return x
    B, h_kv, T, d = x.shape
    return x[:, :, None, :, :].expand(B, h_kv, n_rep, T, d).reshape(B, h_kv * n_rep, T, d)


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, tokens: int, batch: int = 1,
                   bytes_per_elem: int = 2) -> int:
    """Bytes of a KV cache: ``2 · n_layers · n_kv_heads · head_dim · tokens · batch · bytes_per_elem``.

    The 2 counts K and V. Only K/V heads count: MQA divides the bill by ``n_heads``, GQA by
    ``n_heads / n_kv_heads``. ``bytes_per_elem = 2`` for fp16/bf16.
    """
    for name, v in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                    ("batch", batch), ("bytes_per_elem", bytes_per_elem)):
        _check_pos_int(name, v)
    _check_pos_int("tokens", tokens, 0)
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
        self.n_layers = _check_pos_int("n_layers", n_layers)
        self.batch = _check_pos_int("batch", batch)
        self.n_kv_heads = _check_pos_int("n_kv_heads", n_kv_heads)
        self.head_dim = _check_pos_int("head_dim", head_dim)
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
        self.max_len = _check_pos_int("max_len", max_len)
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
        self.window = _check_pos_int("window", window)
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


def make_cache(model, batch: int, max_len: int, kind: str = "static"):
    """A cache of ``kind`` (``"static"`` → :class:`KVCache`, ``"rolling"`` → :class:`RollingKVCache`
    with the model's window — ``max_len`` is then unused —, ``"concat"`` → :class:`ConcatKVCache`) shaped for ``model``."""
    cfg = model.config
    p = next(model.parameters())
    common = dict(n_layers=cfg.n_layers, batch=batch, n_kv_heads=cfg.kv_heads, head_dim=cfg.head_dim)
    if kind == "static":
        return KVCache(max_len=max_len, dtype=p.dtype, device=p.device, **common)
    if kind == "rolling":
        if cfg.window is None:
            raise ValueError("kind: 'rolling' needs a model with a sliding window (config.window); got window=None")
        if getattr(cfg, "local_global", False):
            raise ValueError("kind: 'rolling' keeps only the last window keys, but local_global models have "
                             "global layers that need every key; expected 'static' or 'concat'")
        return RollingKVCache(window=cfg.window, dtype=p.dtype, device=p.device, **common)
    if kind == "concat":
        return ConcatKVCache(**common)
    raise ValueError(f"kind: expected 'static', 'rolling' or 'concat'; got {kind!r}")


# ----------------------------------------------------------------------------- MHA → GQA
def _pool_heads(w: torch.Tensor, h_from: int, h_to: int) -> torch.Tensor:
    """Rows of a K/V projection ``[h_from·d, ...]`` → ``[h_to·d, ...]``: mean over each group of heads."""
    group = h_from // h_to
    d = w.shape[0] // h_from
    return w.reshape(h_to, group, d, *w.shape[1:]).mean(dim=1).reshape(h_to * d, *w.shape[1:])


def mha_to_gqa(model_or_state, n_kv_heads: int, *, n_heads: int | None = None, kv_heads: int | None = None):
    """Convert K/V projections to ``n_kv_heads`` heads by mean-pooling each group of heads.

    Ainslie et al. (2023) start GQA "uptraining" this way: the new K/V head ``g`` is the mean of
    the original heads ``g·r … g·r + r − 1`` (``r = heads / n_kv_heads``), the same grouping as
    :func:`repeat_kv`. The query and output projections are unchanged.

    Args:
        model_or_state: a ``course_lib.model.DecoderLM`` (a new model is returned, the input is
            not modified) or its ``state_dict`` (a new dict is returned; then give ``n_heads``,
            and ``kv_heads`` if the state is already GQA).
        n_kv_heads: the target number of K/V heads; must divide the current number.
    """
    _check_pos_int("n_kv_heads", n_kv_heads)
    from course_lib.model import DecoderLM  # model.py imports this module

    if isinstance(model_or_state, DecoderLM):
        cfg = model_or_state.config
        current = cfg.kv_heads
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
    new_cfg = dataclasses.replace(cfg, n_kv_heads=n_kv_heads)
    p = next(model_or_state.parameters())
    new_model = DecoderLM(new_cfg).to(device=p.device, dtype=p.dtype)
    new_model.load_state_dict(new_state)
    return new_model.train(model_or_state.training)


# ----------------------------------------------------------------------------- generation
def left_pad(prompts, pad_id: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of token ids of different lengths → ``(input_ids [B, P], attention_mask [B, P])``.

    Left padding puts every prompt's last token in the last column, so the next token of every
    sequence goes into the same column.
    """
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompts: expected a non-empty list of token-id lists; got {type(prompts).__name__}")
    lens = [len(p) for p in prompts]
    if min(lens) < 1:
        raise ValueError(f"prompts: expected every prompt to have at least one token; got lengths {lens}")
    P = max(lens)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, P - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[b, P - len(p):] = 1
    return ids.to(device), mask.to(device)


def _next_token(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> torch.Tensor:
    """``[B, V]`` logits → ``[B]`` token ids: argmax at temperature 0, else a (top-k) sample."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, prompts, max_new_tokens: int, *, use_cache: bool = True, cache: str | None = None,
             temperature: float = 0.0, top_k: int | None = None, generator: torch.Generator | None = None,
             pad_id: int = 0, return_logits: bool = False, timings: list | None = None):
    """Generate ``max_new_tokens`` tokens after each prompt.

    Args:
        model: a ``course_lib.model.DecoderLM``.
        prompts: a list of token-id lists, of different lengths (they are left-padded).
        use_cache: False recomputes the whole sequence every step (the baseline).
        cache: ``"static"`` (default; ``"rolling"`` when every layer has a window) or ``"concat"``.
        temperature: 0 → greedy (argmax); > 0 → sample from ``softmax(logits / temperature)``.
        top_k: sample only among the ``top_k`` most likely tokens.
        generator: a seeded ``torch.Generator`` for reproducible sampling.
        return_logits: also return the logits of every step, ``[B, max_new_tokens, V]``.
        timings: if a list, the wall time of every step (seconds) is appended to it.
    Returns:
        the new tokens ``[B, max_new_tokens]`` (and the logits).
    """
    _check_pos_int("max_new_tokens", max_new_tokens)
    if not (isinstance(temperature, (int, float)) and temperature >= 0):
        raise ValueError(f"temperature: expected a number ≥ 0; got {temperature!r}")
    if top_k is not None:
        _check_pos_int("top_k", top_k)
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    B, P = ids.shape
    total = P + max_new_tokens
    # preallocated: no torch.cat per step
    all_ids = torch.full((B, total), pad_id, dtype=torch.long, device=device)
    all_mask = torch.ones((B, total), dtype=torch.long, device=device)
    all_ids[:, :P], all_mask[:, :P] = ids, mask
    padded = bool((mask == 0).any())
    kv = None
    if use_cache:
        # a rolling buffer only when every layer is windowed (Gemma-2's global layers need every key)
        windowed = model.config.window is not None and not getattr(model.config, "local_global", False)
        kind = cache or ("rolling" if windowed else "static")
        kv = make_cache(model, B, total, kind)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    new_logits = []
    try:
        for t in range(max_new_tokens):
            start = time.perf_counter() if timings is not None else 0.0
            S = P + t
            m = all_mask[:, :S] if padded else None
            if kv is None:
                logits = model(all_ids[:, :S], attention_mask=m)[:, -1]
            else:
                step = all_ids[:, :P] if t == 0 else all_ids[:, S - 1:S]
                logits = model(step, attention_mask=m, cache=kv)[:, -1]
            all_ids[:, S] = _next_token(logits, temperature, top_k, generator)
            if return_logits:
                new_logits.append(logits.float())
            if timings is not None:
                sync()
                timings.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    tokens = all_ids[:, P:]
    if return_logits:
        return tokens, torch.stack(new_logits, dim=1)
    return tokens


# ----------------------------------------------------------------------------- benchmark
def decode_benchmark(d_model: int = 256, n_layers: int = 4, n_heads: int = 4, n_kv_heads: int | None = None,
                     prompt_len: int = 128, new_tokens: int = 256, batch: int = 1, vocab_size: int = 100,
                     seed: int = 0, device=None, repeats: int = 1) -> dict:
    """Time greedy decoding with and without the KV cache on a randomly initialised model.

    Speed does not depend on the weights, so no training is needed; the tokens are compared
    (they must be identical). Returns a dict with the times (best of ``repeats``), tokens/s,
    the speed-up and ``identical``.
    """
    from course_lib.model import DecoderLM, ModelConfig

    device = torch.device(device) if device is not None else torch.device("cpu")
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                      n_kv_heads=n_kv_heads, max_seq_len=prompt_len + new_tokens)
    model = DecoderLM(cfg).to(device).eval()
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(vocab_size, (batch, prompt_len), generator=g).tolist()
    generate(model, prompts, 4, use_cache=True)            # warm-up
    generate(model, prompts, 4, use_cache=False)
    out = {}
    for use_cache in (False, True):
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            toks = generate(model, prompts, new_tokens, use_cache=use_cache)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        key = "cached" if use_cache else "uncached"
        out[f"{key}_s"], out[f"{key}_tokens"] = best, toks
    out["identical"] = bool(torch.equal(out["cached_tokens"], out["uncached_tokens"]))
    out["speedup"] = out["uncached_s"] / out["cached_s"]
    out["cached_tok_per_s"] = batch * new_tokens / out["cached_s"]
    out["uncached_tok_per_s"] = batch * new_tokens / out["uncached_s"]
    out["config"] = dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                         prompt_len=prompt_len, new_tokens=new_tokens, batch=batch,
                         threads=torch.get_num_threads(), device=str(device))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.kv_cache",
        description="Chapter 4: decoding speed with and without the KV cache (greedy, identical tokens).")
    parser.add_argument("--bench", action="store_true", help="run the decoding benchmark")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--prompt", type=int, default=128, help="prompt length")
    parser.add_argument("--new", type=int, default=256, help="new tokens")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default=None, help="default: cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if not args.bench:
        parser.print_help()
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    r = decode_benchmark(args.d_model, args.layers, args.heads, args.kv_heads, args.prompt, args.new,
                         args.batch, device=args.device, repeats=args.repeats)
    c = r["config"]
    print(f"model: d_model={c['d_model']}, layers={c['n_layers']}, heads={c['n_heads']}, "
          f"kv_heads={c['n_kv_heads'] or c['n_heads']}; prompt {c['prompt_len']}, {c['new_tokens']} new tokens, "
          f"batch {c['batch']}; {c['device']}, {c['threads']} threads")
    print(f"without cache: {r['uncached_s']:.2f} s  ({r['uncached_tok_per_s']:.0f} tokens/s)")
    print(f"with cache:    {r['cached_s']:.2f} s  ({r['cached_tok_per_s']:.0f} tokens/s)")
    print(f"speed-up: {r['speedup']:.1f}x   identical tokens: {r['identical']}")
    return 0 if r["identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
