"""The Exercise 4 checks pass the reference answers and name the likely mistake otherwise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_lib.grading import ch04
from helpers import refused_then_passes, stub


# ----------------------------------------------------------------------------- task 1
def update_ok(k_cache, v_cache, pos, k, v, *, shift=0, advance=None, swap=False, last_only=False, copy=False):
    T = k.shape[2]
    if swap:
        k, v = v, k
    if last_only:
        k, v = k[:, :, -1:], v[:, :, -1:]
        at = pos + T - 1
        k_cache[:, :, at:at + 1], v_cache[:, :, at:at + 1] = k, v
        return pos + T
    if copy:
        k_cache = torch.cat([k_cache, k], 2)
        return pos + T
    at = pos + shift
    k_cache[:, :, at:at + T] = k[:, :, : k_cache.shape[2] - at]
    v_cache[:, :, at:at + T] = v[:, :, : v_cache.shape[2] - at]
    return pos + (T if advance is None else advance(T))


def test_cache_update_passes(capsys):
    ch04.check_cache_update(update_ok)
    assert capsys.readouterr().out == "✓ cache_update: all 6 cases passed\n"


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "cache_update is not implemented yet"),
        (lambda *a: update_ok(*a, advance=lambda T: 0), "positions not advanced"),
        (lambda *a: update_ok(*a, advance=lambda T: 1), "position advanced by one"),
        (lambda *a: update_ok(*a, shift=1), r"cache written at the wrong index \(off by one\)"),
        (lambda kc, vc, pos, k, v: update_ok(kc, vc, pos, k, v, shift=-1 if pos else 1), "off by one"),
        (lambda *a: update_ok(*a, swap=True), "k and v swapped"),
        (lambda *a: update_ok(*a, copy=True), "the caches were not modified"),
        (lambda *a: update_ok(*a, last_only=True), "only one of the T = 5 new tokens"),
        (lambda *a: update_ok(*a) and None, "the returned position: expected a number"),
    ],
)
def test_cache_update_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch04.check_cache_update(wrong)


# ----------------------------------------------------------------------------- task 2
def test_repeat_kv_passes(capsys):
    ch04.check_repeat_kv(lambda x, n: x[:, :, None].expand(-1, -1, n, -1, -1).flatten(1, 2))
    assert capsys.readouterr().out == "✓ repeat_kv: all 6 cases passed\n"


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "repeat_kv is not implemented yet"),
        (lambda x, n: x.repeat(1, n, 1, 1), r"heads repeated in the wrong order \(repeat vs repeat_interleave\)"),
        (lambda x, n: torch.repeat_interleave(x, n, dim=2), "repeated along the sequence dimension"),
        (lambda x, n: torch.repeat_interleave(x, n, dim=3), "repeated along head_dim"),
        (lambda x, n: x, "expected shape"),
        (lambda x, n: torch.repeat_interleave(x, n, dim=1) + 1, "wrong values"),
    ],
)
def test_repeat_kv_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch04.check_repeat_kv(wrong)


# ----------------------------------------------------------------------------- task 3
def bytes_ok(L, h, hkv, d, tokens, batch, nbytes):
    return 2 * L * hkv * d * tokens * batch * nbytes


def test_kv_cache_bytes_passes(capsys):
    ch04.check_kv_cache_bytes(bytes_ok)
    assert capsys.readouterr().out == "✓ kv_cache_bytes: all 5 cases passed\n"


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "kv_cache_bytes is not implemented yet"),
        (lambda L, h, hkv, d, t, b, n: L * hkv * d * t * b * n, "forgot the factor 2 for K and V"),
        (lambda L, h, hkv, d, t, b, n: 2 * L * h * d * t * b * n, "used n_heads instead of n_kv_heads"),
        (lambda L, h, hkv, d, t, b, n: 2 * L * hkv * d * t * b, "counted elements, not bytes"),
        (lambda L, h, hkv, d, t, b, n: 2 * L * hkv * d * t * n, "forgot the batch"),
        (lambda L, h, hkv, d, t, b, n: 2 * hkv * d * t * b * n, "forgot n_layers"),
        (lambda L, h, hkv, d, t, b, n: L * h * d * t * b * n, "used n_heads instead of n_kv_heads and forgot the factor 2"),
        (lambda L, h, hkv, d, t, b, n: 3 * L * hkv * d * t * b * n, "expected 192000 bytes"),
        (lambda *a: "2 GiB", "expected a number"),
    ],
)
def test_kv_cache_bytes_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch04.check_kv_cache_bytes(wrong)


# ----------------------------------------------------------------------------- task 4
def decode_ok(attn, x_new, k_cache, v_cache, pos, *, write_at=None, see=None, tile=False, scale=None,
              o_proj=True, write=True, through=None):
    B = x_new.shape[0]
    h, hkv, d = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = attn.q_proj(x_new).view(B, 1, h, d).transpose(1, 2)
    k = attn.k_proj(x_new).view(B, 1, hkv, d).transpose(1, 2)
    v = attn.v_proj(x_new).view(B, 1, hkv, d).transpose(1, 2)
    at = pos if write_at is None else write_at
    if write:
        k_cache[:, :, at:at + 1], v_cache[:, :, at:at + 1] = k, v
        keys, values = k_cache[:, :, : (pos + 1 if through is None else through)], v_cache[:, :, : (pos + 1 if through is None else through)]
    else:
        keys, values = torch.cat([k_cache[:, :, :pos], k], 2), torch.cat([v_cache[:, :, :pos], v], 2)
    if see == "past":
        keys, values = k_cache[:, :, :pos], v_cache[:, :, :pos]
    rep = (lambda t: t.repeat(1, h // hkv, 1, 1)) if tile else (lambda t: torch.repeat_interleave(t, h // hkv, 1))
    out = F.scaled_dot_product_attention(q, rep(keys), rep(values), scale=scale)
    out = out.transpose(1, 2).reshape(B, 1, h * d)
    return attn.o_proj(out) if o_proj else out


def test_decode_step_passes(capsys):
    ch04.check_decode_step(decode_ok)
    assert capsys.readouterr().out == "✓ decode_step: all 5 cases passed\n"


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "decode_step is not implemented yet"),
        (lambda *a: decode_ok(*a, through=a[2].shape[2]), "attended over the whole preallocated cache"),
        (lambda a, x, kc, vc, pos: decode_ok(a, x, kc, vc, pos, write_at=pos + 1, through=pos + 2),
         r"cache written at the wrong index \(off by one\)"),
        (lambda *a: decode_ok(*a, write=False), "the new key and value were not written into the caches"),
        (lambda a, x, kc, vc, pos: decode_ok(a, x, kc, vc, pos, see="past") if pos else decode_ok(a, x, kc, vc, pos),
         "the new token does not see itself"),
        (lambda *a: decode_ok(*a, tile=True), r"heads repeated in the wrong order \(repeat vs repeat_interleave\)"),
        (lambda a, *r: decode_ok(a, *r, scale=1 / a.head_dim), "scaled by 1/head_dim"),
        (lambda a, *r: decode_ok(a, *r, scale=1.0), "scores not scaled"),
        (lambda *a: decode_ok(*a, o_proj=False), "the output projection o_proj is missing"),
        (lambda *a: decode_ok(*a)[:, 0], "expected shape"),
    ],
)
def test_decode_step_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch04.check_decode_step(wrong)


# ----------------------------------------------------------------------------- task 5 (transfer)
def min_batch_ok(n_params, n_layers, n_heads, n_kv_heads, head_dim, context, bytes_per_elem, ridge, *,
                 cache_heads=None, attention=True, kv=2, shared=True, none_as=None, off=0):
    import math
    cache = kv * n_layers * (cache_heads or n_kv_heads) * head_dim * context * bytes_per_elem
    flops = 2 * n_params + (4 * n_layers * n_heads * head_dim * context if attention else 0)
    weights = bytes_per_elem * n_params
    if not shared:                       # weights read once per sequence: no batch ever helps
        return none_as if flops <= ridge * (cache + weights) else 1
    if flops <= ridge * cache:
        return none_as
    return math.ceil(ridge * weights / (flops - ridge * cache)) + off


def test_min_batch_passes(capsys):
    ch04.check_min_batch_compute_bound(min_batch_ok)
    assert capsys.readouterr().out == "✓ min_batch_compute_bound: all 8 cases passed\n"


def searched(*args, **kw):
    """Right formula, but a search over batches 1 … 1000 only: misses the answers in the thousands."""
    from course_lib.grading.ch04 import _step_intensity
    *spec, ridge = args
    for B in range(1, 1001):
        if _step_intensity(B, *spec) >= ridge:
            return B
    return None


@pytest.mark.parametrize("wrong, message", [
    (stub, "min_batch_compute_bound is not implemented yet"),
    (lambda *a: min_batch_ok(*a, cache_heads=a[2]), "the cache counted with n_heads"),
    (lambda *a: min_batch_ok(*a, attention=False), "the attention FLOPs .* are missing"),
    (lambda *a: min_batch_ok(*a, kv=1), "the cache counted once"),
    (lambda *a: min_batch_ok(*a, off=1), "off by one"),
    (lambda *a: min_batch_ok(*a, none_as=10**9), "expected None — no batch gets there"),
    (searched, "expected a batch of 1410; got None"),
    (lambda *a: 2.5, "expected a whole batch size"),
])
def test_min_batch_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch04.check_min_batch_compute_bound(wrong)


# ----------------------------------------------------------------------------- task 6 (transfer)
def local_global_ok(n_layers, n_kv_heads, head_dim, tokens, window, batch, bytes_per_elem, *, n_local=None,
                    held=None, kv=2):
    per_token = kv * n_kv_heads * head_dim * batch * bytes_per_elem
    n_local = (n_layers + 1) // 2 if n_local is None else n_local(n_layers)
    held = min(tokens, window) if held is None else held(tokens, window)
    return per_token * (n_local * held + (n_layers - n_local) * tokens)


def test_local_global_passes(capsys):
    ch04.check_local_global_cache_bytes(local_global_ok)
    assert capsys.readouterr().out == "✓ local_global_cache_bytes: all 6 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "local_global_cache_bytes is not implemented yet"),
    (lambda *a: local_global_ok(*a, n_local=lambda L: L), "every layer local \\(that is Mistral\\)"),
    (lambda *a: local_global_ok(*a, n_local=lambda L: 0), "every layer global"),
    (lambda *a: local_global_ok(*a, n_local=lambda L: L // 2), "layer 0 is local"),
    (lambda *a: local_global_ok(*a, held=lambda t, w: w), "min\\(tokens, window\\)"),
    (lambda *a: local_global_ok(*a, held=lambda t, w: min(t, w + 1)), "W slots, not W \\+ 1"),
    (lambda *a: local_global_ok(*a, kv=1), "a factor 2 is missing"),
])
def test_local_global_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch04.check_local_global_cache_bytes(wrong)


# ----------------------------------------------------------------------------- calling the library scores nothing
from course_lib import kv_cache as KV  # noqa: E402
from course_lib.kv_cache import repeat_kv as library_repeat_kv  # noqa: E402


def update_by_library(k_cache, v_cache, pos, k, v):
    """KVCache.update on a cache whose buffers are the given ones."""
    B, h, L, d = k_cache.shape
    cache = KV.KVCache(1, B, h, L, d)
    cache.k, cache.v, cache.lengths = k_cache[None], v_cache[None], [pos]
    cache.update(k, v, 0)
    return cache.lengths[0]


def repeat_kv_by_library_inside(x, n_rep):
    import course_lib.model as model                     # reached at run time, through another module
    return model.repeat_kv(x, n_rep)


def decode_by_library(attn, x_new, k_cache, v_cache, pos):
    """The layer's own cached forward: a KVCache over the given buffers."""
    B, hkv, L, d = k_cache.shape
    cache = KV.KVCache(1, B, hkv, L, d)
    cache.k, cache.v, cache.lengths = k_cache[None], v_cache[None], [pos]
    return attn(x_new, torch.tensor([[pos]]).expand(B, 1), cache=cache)


@pytest.mark.parametrize("check, answer", [
    (ch04.check_cache_update, update_by_library),
    (ch04.check_repeat_kv, lambda x, n_rep: library_repeat_kv(x, n_rep)),
    (ch04.check_repeat_kv, repeat_kv_by_library_inside),
    (ch04.check_kv_cache_bytes, lambda L, h, hkv, d, tokens, batch, nbytes: KV.kv_cache_bytes(L, hkv, d, tokens, batch, nbytes)),
    (ch04.check_decode_step, decode_by_library),
])
def test_calling_the_library_scores_nothing(check, answer, monkeypatch):
    refused_then_passes(check, answer, ch04, monkeypatch)
