"""Checks for Exercise 4 (KV cache, MQA and GQA).

Tasks, in the order of the exercise notebook:

1. ``cache_update(k_cache, v_cache, pos, k, v)`` — write ``k``, ``v`` ``[B, h_kv, T, d]`` into the
   preallocated caches ``[B, h_kv, max_len, d]`` at columns ``pos … pos + T − 1`` (in place) and
   return the new position ``pos + T``;
2. ``repeat_kv(x, n_rep)`` — ``[B, h_kv, T, d] → [B, h_kv·n_rep, T, d]``, each K/V head repeated
   ``n_rep`` times consecutively;
3. ``kv_cache_bytes(n_layers, n_heads, n_kv_heads, head_dim, tokens, batch, bytes_per_elem)``;
4. ``decode_step(attn, x_new, k_cache, v_cache, pos)`` — one cached decoding step of a
   ``course_lib.model.CausalSelfAttention`` layer, equal to the last row of the uncached forward;
5. (transfer) ``min_batch_compute_bound(n_params, n_layers, n_heads, n_kv_heads, head_dim, context,
   bytes_per_elem, ridge)`` — the smallest batch whose decoding step reaches the ridge point, or None;
6. (transfer) ``local_global_cache_bytes(n_layers, n_kv_heads, head_dim, tokens, window, batch,
   bytes_per_elem)`` — Gemma-2's cache with rolling buffers on its local layers.

References: ``torch.repeat_interleave``, ``course_lib.kv_cache.kv_cache_bytes`` and the layer's own
uncached forward; an answer that calls them (or ``KVCache.update``, ``course_lib.attention.repeat_kv``)
is refused (:mod:`course_lib.grading.forbid`). A wrong answer is compared with the known wrong answers (position not advanced,
off-by-one index, ``repeat`` instead of ``repeat_interleave``, factor 2 forgotten, ``n_heads`` for
``n_kv_heads``, empty cache slots attended, …) to name the mistake.
"""

from __future__ import annotations

import math

import torch

from course_lib import attention, kv_cache
from course_lib.grading import call_student, expect_close, expect_number, expect_tensor, passed
from course_lib.grading.forbid import call_without_library
from course_lib.kv_cache import kv_cache_bytes as reference_kv_cache_bytes
from course_lib.model import CausalSelfAttention, ModelConfig

__all__ = ["check_cache_update", "check_repeat_kv", "check_kv_cache_bytes", "check_decode_step",
           "check_min_batch_compute_bound", "check_local_global_cache_bytes", "MIN_BATCH_CASES"]


# The library functions that answer a warm-up outright: calling them scores nothing. (torch's own
# repeat_interleave / expand are the tools Task 2 asks the learner to choose between; decode_step may
# use any attention core — the point is the cache — but not the layer's own cached forward.)
_LIBRARY = {
    "cache_update": [(kv_cache.KVCache, "update")],
    "repeat_kv": [(attention, "repeat_kv")],
    "kv_cache_bytes": [(kv_cache, "kv_cache_bytes")],
    "decode_step": [(CausalSelfAttention, "forward")],
}


def _call(task: str, fn, *args, **kwargs):
    """The student's function, with the library functions of ``task`` forbidden."""
    return call_without_library(fn, _LIBRARY[task], *args, name=task, **kwargs)


# ----------------------------------------------------------------------------- task 1
def _written(cache: torch.Tensor, start: int, new: torch.Tensor) -> torch.Tensor:
    out = cache.clone()
    T = new.shape[2]
    lo, hi = max(start, 0), min(start + T, cache.shape[2])
    if hi > lo:
        out[:, :, lo:hi] = new[:, :, lo - start:hi - start]
    return out


def check_cache_update(cache_update_fn) -> None:
    """Task 1: in-place write at ``pos … pos + T − 1``, return ``pos + T``."""
    cases = [  # B, h_kv, max_len, d, pos, T
        (1, 1, 8, 4, 0, 1), (2, 2, 10, 4, 3, 1), (2, 3, 12, 2, 0, 5), (1, 2, 9, 3, 4, 3),
        (3, 1, 6, 5, 5, 1), (2, 2, 16, 4, 7, 2),
    ]
    g = torch.Generator().manual_seed(40)
    for B, h, L, d, pos, T in cases:
        name = f"cache_update(max_len={L}, pos={pos}, T={T})"
        k_cache, v_cache = torch.randn(2, B, h, L, d, generator=g)
        k, v = torch.randn(2, B, h, T, d, generator=g)
        k0, v0 = k_cache.clone(), v_cache.clone()
        got_pos = _call("cache_update", cache_update_fn, k_cache, v_cache, pos, k, v)
        want_k, want_v = _written(k0, pos, k), _written(v0, pos, v)
        if torch.equal(k_cache, k0) and torch.equal(v_cache, v0):
            raise AssertionError(
                f"{name}: the caches were not modified: write into them in place "
                "(k_cache[:, :, pos:pos + T] = k), do not build a new tensor (torch.cat) or assign a local name"
            )
        if torch.equal(k_cache, _written(k0, pos, v)) and torch.equal(v_cache, _written(v0, pos, k)):
            raise AssertionError(f"{name}: k and v swapped: keys go into k_cache, values into v_cache")
        for shift in (1, -1):
            if torch.equal(k_cache, _written(k0, pos + shift, k)):
                raise AssertionError(
                    f"{name}: cache written at the wrong index (off by one): the T new tokens go to columns "
                    f"pos … pos + T − 1 = {pos} … {pos + T - 1}, not {pos + shift} … {pos + shift + T - 1}"
                )
        if T > 1 and any(torch.equal(k_cache, alt) for alt in (
                _written(k0, pos, k[:, :, -1:]), _written(k0, pos + T - 1, k[:, :, -1:]), _written(k0, pos, k[:, :, :1]))):
            raise AssertionError(f"{name}: only one of the T = {T} new tokens was written; write all of them "
                                 "(a prompt is written in one call)")
        expect_close(f"{name}: k_cache", k_cache, want_k)
        expect_close(f"{name}: v_cache", v_cache, want_v)
        new = expect_number(f"{name}: the returned position", got_pos)
        if new == pos:
            raise AssertionError(f"{name}: positions not advanced: return the next free column, pos + T = {pos + T}")
        if T > 1 and new == pos + 1:
            raise AssertionError(f"{name}: position advanced by one, not by the T = {T} tokens written: return pos + T")
        if new != pos + T:
            raise AssertionError(f"{name}: expected the new position pos + T = {pos + T}; got {new:g}")
    passed("cache_update", len(cases))


# ----------------------------------------------------------------------------- task 2
def check_repeat_kv(repeat_kv_fn) -> None:
    """Task 2: ``torch.repeat_interleave(x, n_rep, dim=1)``."""
    cases = [(1, 2, 3, 4, 2), (2, 2, 5, 3, 4), (1, 4, 2, 2, 2), (2, 1, 4, 3, 8), (1, 3, 3, 2, 1), (2, 3, 1, 4, 3)]
    g = torch.Generator().manual_seed(41)
    for B, hkv, T, d, n_rep in cases:
        name = f"repeat_kv(x of shape {(B, hkv, T, d)}, n_rep={n_rep})"
        x = torch.randn(B, hkv, T, d, generator=g)
        got = _call("repeat_kv", repeat_kv_fn, x.clone(), n_rep)
        want = torch.repeat_interleave(x, n_rep, dim=1)
        if isinstance(got, torch.Tensor) and tuple(got.shape) != tuple(want.shape):
            if tuple(got.shape) == (B, hkv, T * n_rep, d):
                raise AssertionError(f"{name}: repeated along the sequence dimension (2); repeat the heads (dim 1)")
            if tuple(got.shape) == (B, hkv, T, d * n_rep):
                raise AssertionError(f"{name}: repeated along head_dim (3); repeat the heads (dim 1)")
        got = expect_tensor(name, got, tuple(want.shape))
        expect_close(name, got, want, mistakes={
            "heads repeated in the wrong order (repeat vs repeat_interleave): query heads "
            "g·n_rep … g·n_rep + n_rep − 1 share K/V head g, so the copies of a head must be "
            "adjacent (0, 0, 1, 1), not tiled (0, 1, 0, 1)": x.repeat(1, n_rep, 1, 1),
        })
    passed("repeat_kv", len(cases))


# ----------------------------------------------------------------------------- task 3
def check_kv_cache_bytes(kv_cache_bytes_fn) -> None:
    """Task 3: ``2 · n_layers · n_kv_heads · head_dim · tokens · batch · bytes_per_elem``."""
    cases = [  # n_layers, n_heads, n_kv_heads, head_dim, tokens, batch, bytes
        (3, 8, 1, 16, 100, 5, 4),           # MQA, fp32
        (32, 32, 32, 128, 4096, 1, 2),      # LLaMA-2-7B, fp16, 4k tokens
        (32, 32, 8, 128, 8192, 1, 2),       # LLaMA-3-8B
        (32, 32, 8, 128, 4096, 4, 2),       # Mistral-7B's rolling buffer, batch 4
        (6, 12, 3, 64, 1, 5, 1),            # one token, int8
    ]
    for L, h, hkv, d, tokens, batch, nbytes in cases:
        name = (f"kv_cache_bytes(n_layers={L}, n_heads={h}, n_kv_heads={hkv}, head_dim={d}, tokens={tokens}, "
                f"batch={batch}, bytes_per_elem={nbytes})")
        got = expect_number(name, _call("kv_cache_bytes", kv_cache_bytes_fn, L, h, hkv, d, tokens, batch,
                                                nbytes))
        want = reference_kv_cache_bytes(L, hkv, d, tokens, batch, nbytes)
        if got == want:
            continue
        mistakes = {
            "forgot the factor 2 for K and V: the cache stores a key and a value per token": want / 2,
            "used n_heads instead of n_kv_heads: only the K/V heads are cached (MQA/GQA share them)": want / hkv * h,
            "counted elements, not bytes: multiply by bytes_per_elem": want / nbytes,
            "forgot the batch: every sequence of the batch has its own cache": want / batch,
            "forgot n_layers: every layer caches its own keys and values": want / L,
            "factor 2 twice (K and V counted, then doubled again)": want * 2,
            "used n_heads instead of n_kv_heads and forgot the factor 2": want / hkv * h / 2,
        }
        for message, alt in mistakes.items():
            if alt != want and math.isclose(got, alt, rel_tol=1e-9):
                raise AssertionError(f"{name}: {message}")
        raise AssertionError(f"{name}: expected {want} bytes; got {got:g}")
    passed("kv_cache_bytes", len(cases))


# ----------------------------------------------------------------------------- task 4
def _heads(attn: CausalSelfAttention, x: torch.Tensor):
    B, T, _ = x.shape
    q = attn.q_proj(x).view(B, T, attn.n_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    return q, k, v


def _step_variant(attn, q, keys, values, *, tile=False, scale=None, o_proj=True):
    r = attn.n_rep
    if tile:
        keys, values = keys.repeat(1, r, 1, 1), values.repeat(1, r, 1, 1)
    else:
        keys, values = torch.repeat_interleave(keys, r, 1), torch.repeat_interleave(values, r, 1)
    scale = 1 / math.sqrt(attn.head_dim) if scale is None else scale
    w = torch.softmax((q @ keys.transpose(-2, -1)) * scale, dim=-1)
    out = (w @ values).transpose(1, 2).reshape(q.shape[0], 1, -1)
    return attn.o_proj(out) if o_proj else out


@torch.no_grad()
def check_decode_step(decode_step_fn) -> None:
    """Task 4: write the new k, v at ``pos``, attend over columns ``0 … pos``; equals the uncached forward."""
    cases = [  # B, n_heads, n_kv_heads, pos, max_len
        (1, 4, 4, 0, 6), (2, 4, 4, 5, 9), (2, 4, 2, 6, 10), (1, 4, 1, 3, 8), (3, 8, 2, 7, 12),
    ]
    for i, (B, h, hkv, pos, L) in enumerate(cases):
        name = f"decode_step(n_heads={h}, n_kv_heads={hkv}, pos={pos}, max_len={L})"
        torch.manual_seed(400 + i)
        attn = CausalSelfAttention(ModelConfig(vocab_size=8, d_model=32, n_heads=h, n_kv_heads=hkv)).eval()
        x = torch.randn(B, pos + 1, 32)
        want = attn(x, torch.arange(pos + 1).expand(B, pos + 1))[:, -1:]          # uncached forward, last row
        q_all, k_all, v_all = _heads(attn, x)
        k_cache = torch.randn(B, hkv, L, attn.head_dim) * 3                       # empty slots hold garbage
        v_cache = torch.randn(B, hkv, L, attn.head_dim) * 3
        k_cache[:, :, :pos], v_cache[:, :, :pos] = k_all[:, :, :pos], v_all[:, :, :pos]
        garbage_k, garbage_v = k_cache.clone(), v_cache.clone()
        got = _call("decode_step", decode_step_fn, attn, x[:, -1:].clone(), k_cache, v_cache, pos)
        got = expect_tensor(name, got, (B, 1, 32))
        q = q_all[:, :, -1:]
        filled_k = garbage_k.clone()
        filled_k[:, :, pos] = k_all[:, :, pos]
        filled_v = garbage_v.clone()
        filled_v[:, :, pos] = v_all[:, :, pos]
        mistakes = {
            "attended over the whole preallocated cache, empty slots included: use columns 0 … pos only":
                _step_variant(attn, q, filled_k, filled_v),
            "the new token does not see itself: write its k, v at column pos first, then attend over 0 … pos":
                _step_variant(attn, q, k_all[:, :, :pos], v_all[:, :, :pos]) if pos > 0 else None,
            "heads repeated in the wrong order (repeat vs repeat_interleave)":
                _step_variant(attn, q, k_all, v_all, tile=True) if attn.n_rep > 1 and hkv > 1 else None,
            "scores scaled by 1/head_dim instead of 1/√head_dim":
                _step_variant(attn, q, k_all, v_all, scale=1 / attn.head_dim),
            "scores not scaled: divide by √head_dim": _step_variant(attn, q, k_all, v_all, scale=1.0),
            "the output projection o_proj is missing": _step_variant(attn, q, k_all, v_all, o_proj=False),
        }
        if not (torch.allclose(k_cache[:, :, pos], k_all[:, :, pos], atol=1e-5)
                and torch.allclose(v_cache[:, :, pos], v_all[:, :, pos], atol=1e-5)):
            for shift in (1, -1):
                col = pos + shift
                if 0 <= col < L and torch.allclose(k_cache[:, :, col], k_all[:, :, pos], atol=1e-5):
                    raise AssertionError(f"{name}: cache written at the wrong index (off by one): "
                                         f"the new key belongs in column pos = {pos}, not {col}")
            raise AssertionError(f"{name}: the new key and value were not written into the caches at column pos = {pos} "
                                 "(the next step needs them)")
        if not (torch.equal(k_cache[:, :, :pos], garbage_k[:, :, :pos]) and torch.equal(k_cache[:, :, pos + 1:],
                                                                                        garbage_k[:, :, pos + 1:])):
            raise AssertionError(f"{name}: columns other than pos were changed in the cache: write only column pos")
        expect_close(name, got, want, mistakes=mistakes, atol=1e-5, rtol=1e-4)
    passed("decode_step", len(cases))


# ----------------------------------------------------------------------------- task 5 (transfer)
def _step_intensity(batch, n_params, n_layers, n_heads, n_kv_heads, head_dim, context, bytes_per_elem,
                    *, cache_heads=None, attention_flops=True, factor_kv=2, weights_per_sequence=False):
    """FLOP per byte of one decoding step (Chapter 4's model), with optional known mistakes."""
    cache_heads = n_kv_heads if cache_heads is None else cache_heads
    flops = 2 * n_params * batch + (4 * n_layers * n_heads * head_dim * context * batch if attention_flops else 0)
    cache = batch * factor_kv * n_layers * cache_heads * head_dim * context * bytes_per_elem
    weights = bytes_per_elem * n_params * (batch if weights_per_sequence else 1)
    return flops / (weights + cache)


def _min_batch(spec: dict, **mistake) -> int | None:
    """The smallest batch whose decoding step reaches the ridge, or None: intensity grows with the batch
    towards a limit (the weights' cost is shared, the cache's is not), which may lie below the ridge."""
    ridge = spec["ridge"]
    args = {k: spec[k] for k in ("n_params", "n_layers", "n_heads", "n_kv_heads", "head_dim", "context",
                                 "bytes_per_elem")}
    limit = _step_intensity(10 ** 12, **args, **mistake)
    if limit < ridge:
        return None
    lo, hi = 1, 1
    while _step_intensity(hi, **args, **mistake) < ridge:
        hi *= 2
    while lo < hi:                                   # the intensity grows with the batch: bisect
        mid = (lo + hi) // 2
        if _step_intensity(mid, **args, **mistake) >= ridge:
            hi = mid
        else:
            lo = mid + 1
    return lo


MIN_BATCH_CASES = {
    # name: n_params, n_layers, n_heads, n_kv_heads, head_dim, context, bytes_per_elem, ridge
    "LLaMA-3-8B-shaped (GQA 32/8), context 512, A100 (ridge 208)": (8.03e9, 32, 32, 8, 128, 512, 2, 208),
    "LLaMA-3-8B-shaped, context 4096, A100": (8.03e9, 32, 32, 8, 128, 4096, 2, 208),
    "the same with MHA (32 K/V heads), context 512, a CPU (ridge 20)": (8.03e9, 32, 32, 32, 128, 512, 2, 20),
    "MQA (1 K/V head), context 8192, ridge 100": (8.03e9, 32, 32, 1, 128, 8192, 2, 100),
    "a 1B model (16 layers, 32/8 heads of 64), context 2048, fp32, ridge 50": (1.2e9, 16, 32, 8, 64, 2048, 4, 50),
}


def check_min_batch_compute_bound(min_batch_fn) -> None:
    """Task 5: the smallest batch at which a decoding step reaches the ridge point, or None if none does."""
    keys = ("n_params", "n_layers", "n_heads", "n_kv_heads", "head_dim", "context", "bytes_per_elem", "ridge")
    g = torch.Generator().manual_seed(45)
    cases = [(name, dict(zip(keys, values))) for name, values in MIN_BATCH_CASES.items()]
    for i in range(3):                              # configurations the sheet does not print
        L = int(torch.randint(8, 48, (1,), generator=g))
        h = 8 * int(torch.randint(2, 8, (1,), generator=g))
        hkv = [1, 2, 4, 8][int(torch.randint(0, 4, (1,), generator=g))]
        ctx = 256 * int(torch.randint(1, 64, (1,), generator=g))
        cases.append((f"an unseen configuration #{i + 1}", dict(n_params=float(L * 12 * (h * 128) ** 2), n_layers=L,
                                                               n_heads=h, n_kv_heads=hkv, head_dim=128, context=ctx,
                                                               bytes_per_elem=2, ridge=float(100 + 50 * i))))
    for what, spec in cases:
        name = f"min_batch_compute_bound({what})"
        got = call_student(min_batch_fn, *(spec[k] for k in keys), name="min_batch_compute_bound")
        want = _min_batch(spec)
        if got is not None:
            got_f = expect_number(name, got)
            if got_f != int(got_f):
                raise AssertionError(f"{name}: expected a whole batch size (an int) or None; got {got!r}")
            got = int(got_f)
        if got == want:
            continue
        if got is None:
            raise AssertionError(
                f"{name}: expected a batch of {want}; got None — the intensity's limit is above the ridge here. "
                f"Likely causes: the cache counted with n_heads (only the K/V heads are cached), or a search over "
                f"a fixed range of batch sizes instead of solving the inequality")
        mistakes = {
            "the cache counted with n_heads: only the K/V heads are cached": dict(cache_heads=spec["n_heads"]),
            "the attention FLOPs (4 · n_layers · n_heads · head_dim · context per sequence) are missing":
                dict(attention_flops=False),
            "the cache counted once: keys AND values, a factor 2": dict(factor_kv=1),
            "the weights counted once per sequence: they are read once per step and shared by the whole batch":
                dict(weights_per_sequence=True),
        }
        for message, mistake in mistakes.items():
            alt = _min_batch(spec, **mistake)
            if got == alt and alt != want:
                raise AssertionError(f"{name}: {message}")
        if want is None:
            raise AssertionError(
                f"{name}: expected None — no batch gets there: as the batch grows the weights' bytes are shared "
                f"but every sequence brings its own cache, so the intensity rises only towards a limit below the "
                f"ridge; got {got}")
        if got in (want - 1, want + 1):
            raise AssertionError(f"{name}: off by one: the smallest batch with intensity ≥ ridge is {want}; got {got}")
        raise AssertionError(f"{name}: expected {want}; got {got}")
    passed("min_batch_compute_bound", len(cases))


# ----------------------------------------------------------------------------- task 6 (transfer)
def _local_global_bytes(n_layers, n_kv_heads, head_dim, tokens, window, batch, bytes_per_elem, *,
                        n_local=None, held_local=None, held_global=None):
    n_local = (n_layers + 1) // 2 if n_local is None else n_local        # layers 0, 2, 4, … are local
    held_local = min(tokens, window) if held_local is None else held_local
    held_global = tokens if held_global is None else held_global
    per_token = 2 * n_kv_heads * head_dim * batch * bytes_per_elem
    return per_token * (n_local * held_local + (n_layers - n_local) * held_global)


def check_local_global_cache_bytes(cache_bytes_fn) -> None:
    """Task 6: Gemma-2's cache: rolling buffers of ``window`` slots on the local layers (0, 2, 4, …)."""
    cases = [  # n_layers, n_kv_heads, head_dim, tokens, window, batch, bytes_per_elem
        (42, 8, 256, 8192, 4096, 1, 2),     # Gemma-2 9B, as Chapter 13 computes it
        (26, 4, 256, 8192, 4096, 2, 2),     # Gemma-2 2B shaped
        (7, 2, 64, 1000, 256, 3, 4),        # an odd number of layers: one more local layer than global
        (5, 1, 32, 100, 256, 1, 2),         # fewer tokens than the window: the buffers are not full
        (9, 2, 16, 300, 300, 2, 2),         # exactly a window of tokens
        (1, 2, 8, 50, 16, 1, 2),            # a single (local) layer
    ]
    for L, hkv, d, tokens, W, B, nb in cases:
        name = f"local_global_cache_bytes(n_layers={L}, tokens={tokens}, window={W})"
        got = expect_number(name, call_student(cache_bytes_fn, L, hkv, d, tokens, W, B, nb,
                                               name="local_global_cache_bytes"))
        args = (L, hkv, d, tokens, W, B, nb)
        want = _local_global_bytes(*args)
        if got == want:
            continue
        mistakes = {
            "every layer local (that is Mistral): Gemma-2 alternates, the odd layers are global and keep every token":
                _local_global_bytes(*args, n_local=L),
            "every layer global: the local layers only need their last window tokens (a rolling buffer)":
                _local_global_bytes(*args, n_local=0),
            "local layers counted as ⌊n_layers / 2⌋: layer 0 is local, so ⌈n_layers / 2⌉ of them are":
                _local_global_bytes(*args, n_local=L // 2),
            "a local layer holds min(tokens, window) tokens, not always the full window":
                _local_global_bytes(*args, held_local=W),
            "a window of W keys needs W slots, not W + 1": _local_global_bytes(*args, held_local=min(tokens, W + 1)),
            "keys and values: a factor 2 is missing": want / 2,
        }
        for message, alt in mistakes.items():
            if alt != want and got == alt:
                raise AssertionError(f"{name}: {message}")
        raise AssertionError(f"{name}: expected {want:,} bytes; got {got:,.0f}")
    passed("local_global_cache_bytes", len(cases))
