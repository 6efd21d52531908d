"""Checks for Exercise 5 (FlashAttention: tiling and online softmax).

Tasks, in the order of the exercise notebook:

1. ``merge_stats((m1, l1), (m2, l2))`` → ``(m, l)`` — the online-softmax merge of two blocks;
2. ``causal_tile_kinds(N, Br, Bc)`` → ``[T_r, T_c]`` int tensor: 0 = tile skipped (above the
   diagonal), 1 = tile needs the causal mask, 2 = tile fully visible;
3. ``flash_forward(q, k, v, Br, Bc, causal=False)`` → ``(O, L)`` — the FlashAttention-2 forward
   (outer loop over query blocks, unnormalised accumulator, log-sum-exp ``L``);
4. ``hbm_accesses(N, d, M)`` → ``(standard, flash)`` — HBM reads + writes in elements of
   Algorithm 0 and Algorithm 1, by the counting rules of the chapter;
5. ``backward_from_lse(q, k, v, o, L, do)`` → ``(dq, dk, dv)`` — the gradients with ``P``
   recomputed from ``L`` and ``D = rowsum(dO ∘ O)``;
6. (transfer) Flash-Decoding's split-KV: ``chunk_attention(q, k, v)`` → ``(o, lse)`` for one chunk of
   the keys of a decoding query, and ``merge_chunks(o_parts, lse_parts)`` → ``(o, lse)``, the exact
   attention over all chunks from their normalised outputs and log-sum-exps;
7. (transfer) ``flash_forward_window(q, k, v, Br, Bc, window)`` → ``O`` — a FlashAttention-2 forward
   with a causal sliding window that skips every tile outside the band.

References come from ``course_lib.flash`` (tested against ``F.scaled_dot_product_attention``
and autograd); an answer that calls them (or SDPA) is refused (:mod:`course_lib.grading.forbid`); when the student's answer is wrong, the check recomputes the known wrong answers
(no rescale by e^(m_old − m_new), normalising inside the loop, the unmasked tail of the last
block, S and P counted once, the wrong block-size formula, …) and names the one it matches.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F

from course_lib import attention, flash, sparse
from course_lib.flash import (
    flash_attention_backward,
    flash_attention_forward,
    flash_attention_io,
    online_softmax_merge,
    peak_memory,
    softmax_stats,
    standard_attention_io,
)
from course_lib.grading import expect_close, expect_number, expect_tensor, passed
from course_lib.grading.forbid import call_without_library
from course_lib.sparse import sliding_window_mask

__all__ = [
    "check_merge",
    "check_tile_kinds",
    "check_flash_forward",
    "check_hbm_accesses",
    "check_backward",
    "check_split_kv",
    "check_flash_window",
    "reference_tile_kinds",
]


def _attention_cores() -> list[tuple[object, str]]:
    """Whole attention computations an answer must not hand its work to (the sheet's intro says so)."""
    return [(flash, "flash_attention_forward"), (flash, "flash_attention"), (flash, "flash_attention_v1"),
            (flash, "standard_attention"), (F, "scaled_dot_product_attention"),
            (attention, "scaled_dot_product_attention")]


def _library(task: str) -> list[tuple[object, str]]:
    """The library functions that answer ``task`` outright: calling them scores nothing."""
    return {
        "merge_stats": lambda: [(flash, "online_softmax_merge")],
        "causal_tile_kinds": lambda: [(sys.modules[__name__], "reference_tile_kinds")],
        "flash_forward": _attention_cores,
        "hbm_accesses": lambda: [(flash, "standard_attention_io"), (flash, "flash_attention_io"),
                                 (flash, "standard_attention"), (flash, "flash_attention_v1"),
                                 (flash, "flash_attention_forward")],
        "backward_from_lse": lambda: [(flash, "flash_attention_backward"), (flash, "standard_attention_backward")],
        "chunk_attention": _attention_cores,
        "merge_chunks": lambda: [],                 # no library answer: online_softmax_merge merges (m, ℓ) only
        "flash_forward_window": lambda: _attention_cores() + [(sparse, "block_sparse_attention")],
    }[task]()


def _call(fn, *args, name: str, **kwargs):
    """The student's function ``name``, with the library functions of its task forbidden."""
    return call_without_library(fn, _library(name), *args, name=name, **kwargs)


def _pair(name: str, res):
    if not (isinstance(res, (tuple, list)) and len(res) == 2):
        raise AssertionError(f"{name}: expected a pair (tuple of two tensors); got {type(res).__name__}")
    return res


# ----------------------------------------------------------------------------- task 1
def check_merge(merge_stats) -> None:
    """Task 1: ``m = max(m1, m2)``, ``l = e^(m1 − m) l1 + e^(m2 − m) l2``."""
    g = torch.Generator().manual_seed(501)
    cases = []
    for n1, n2, spread in [(5, 7, 1.0), (3, 3, 10.0), (8, 1, 40.0), (16, 16, 3.0)]:
        x1 = torch.randn(6, n1, generator=g, dtype=torch.float64) * spread
        x2 = torch.randn(6, n2, generator=g, dtype=torch.float64) * spread
        cases.append((f"blocks of {n1} and {n2} (scale {spread:g})", softmax_stats(x1), softmax_stats(x2)))
    x = torch.randn(4, 6, generator=g, dtype=torch.float64) * 20
    cases.append(("large logits (max ≈ 60)", softmax_stats(x + 60), softmax_stats(x.flip(-1) + 50)))
    empty = (torch.full((4,), float("-inf"), dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    cases.append(("an empty block first (m = −inf, ℓ = 0)", empty, softmax_stats(x)))
    cases.append(("an empty block second", softmax_stats(x), empty))
    mixed = softmax_stats(torch.cat([x[:2], torch.full((2, 6), float("-inf"), dtype=torch.float64)]))
    cases.append(("rows 2, 3 empty in both blocks (fully masked rows)", mixed, empty))
    for what, a, b in cases:
        name = f"merge_stats with {what}"
        res = _pair(name, _call(merge_stats, (a[0].clone(), a[1].clone()), (b[0].clone(), b[1].clone()),
                                       name="merge_stats"))
        m_want, l_want = online_softmax_merge(a, b)
        m_got = expect_tensor(f"{name}: m", res[0], tuple(m_want.shape))
        l_got = expect_tensor(f"{name}: l", res[1], tuple(l_want.shape))
        if torch.isnan(m_got.double()).any() or torch.isnan(l_got.double()).any():
            raise AssertionError(
                f"{name}: NaN in the result. An empty block has m = −inf and ℓ = 0, and "
                "e^(−inf − (−inf)) is NaN: take m_new = max(m1, m2) first and rescale by e^(m_i − m_new) "
                "(= 0 for the empty block)")
        expect_close(f"{name}: m", m_got, m_want, mistakes={
            "m must be the larger of the two maxima, max(m1, m2)": a[0] + b[0],
        })
        (m1, l1), (m2, l2) = a, b
        m = m_want
        expect_close(f"{name}: l", l_got, l_want, mistakes={
            "missing rescale by e^(m_old − m_new): each ℓ was computed with its own block's maximum; multiply "
            "ℓ1 by e^(m1 − m) and ℓ2 by e^(m2 − m) before adding": l1 + l2,
            "missing rescale by e^(m_old − m_new) for the first block: ℓ1 must be multiplied by e^(m1 − m)":
                l1 + torch.exp(m2 - m) * l2,
            "missing rescale by e^(m_old − m_new) for the second block: ℓ2 must be multiplied by e^(m2 − m)":
                torch.exp(m1 - m) * l1 + l2,
            "rescaled by e^(m_new − m_old) (exponent sign flipped): the factor is e^(m_i − m) ≤ 1":
                torch.exp(m - m1) * l1 + torch.exp(m - m2) * l2,
            "took the maximum of the two sums; the sums add after rescaling": torch.maximum(l1, l2),
        })
    passed("merge", len(cases))


# ----------------------------------------------------------------------------- task 2
def reference_tile_kinds(N: int, Br: int, Bc: int) -> torch.Tensor:
    """``[T_r, T_c]``: 0 tile entirely above the diagonal (skip), 1 crosses it (mask), 2 below it."""
    r0 = torch.arange(0, N, Br)
    c0 = torch.arange(0, N, Bc)
    r1 = torch.clamp(r0 + Br, max=N)
    c1 = torch.clamp(c0 + Bc, max=N)
    skip = c0[None, :] > (r1[:, None] - 1)
    full = (c1[None, :] - 1) <= r0[:, None]
    return torch.where(skip, 0, torch.where(full, 2, 1)).long()


def _kinds_by_index(N, Br, Bc):
    Tr, Tc = -(-N // Br), -(-N // Bc)
    i = torch.arange(Tr)[:, None]
    j = torch.arange(Tc)[None, :]
    return torch.where(j > i, 0, torch.where(j < i, 2, 1)).long()


def check_tile_kinds(causal_tile_kinds) -> None:
    """Task 2: which tiles a causal FlashAttention computes, masks, or skips."""
    cases = [(12, 4, 3), (8, 4, 4), (10, 4, 4), (12, 3, 4), (17, 5, 3), (7, 2, 7), (20, 8, 5), (1, 4, 4), (9, 9, 2)]
    for N, Br, Bc in cases:
        name = f"causal_tile_kinds(N={N}, Br={Br}, Bc={Bc})"
        got = _call(causal_tile_kinds, N, Br, Bc, name="causal_tile_kinds")
        want = reference_tile_kinds(N, Br, Bc)
        Tr, Tc = want.shape
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (Tc, Tr) and Tr != Tc:
            raise AssertionError(f"{name}: shape {(Tc, Tr)} is transposed: rows are the T_r = ⌈N/Br⌉ = {Tr} query "
                                 f"blocks i, columns the T_c = ⌈N/Bc⌉ = {Tc} key blocks j")
        got = expect_tensor(name, got, (Tr, Tc))
        if got.is_floating_point() or got.dtype == torch.bool:
            raise AssertionError(f"{name}: expected an integer tensor (0 skip, 1 mask, 2 full); got {got.dtype}")
        got = got.long().cpu()
        if torch.equal(got, want):
            continue
        r0 = torch.arange(0, N, Br)
        c0 = torch.arange(0, N, Bc)
        r1 = torch.clamp(r0 + Br, max=N)
        c1 = torch.clamp(c0 + Bc, max=N)
        mistakes = {
            "compared block indices (j > i) instead of positions: that is right only when Br = Bc; a tile is "
            "skipped when its first key c0 = j·Bc is after its last query row r1 − 1": _kinds_by_index(N, Br, Bc),
            "tile kinds transposed: entry [i, j] is query block i (rows) and key block j (columns)":
                want.T if Tr == Tc else None,
            "off by one at the skip: a tile whose first key equals its last query row (c0 = r1 − 1) still has "
            "one visible entry; skip only when c0 > r1 − 1":
                torch.where(c0[None, :] >= r1[:, None] - 1, 0, want),
            "off by one at the full tiles: a tile is fully visible when its last key is at most its first query "
            "row, c1 − 1 ≤ r0 (the diagonal entry j = i is visible)":
                torch.where((want == 2) & ((c1[None, :] - 1) == r0[:, None]), 1, want),
            "0 and 2 swapped: 0 is a tile above the diagonal (all keys in the future), 2 a tile below it":
                torch.where(want == 0, 2, torch.where(want == 2, 0, want)),
        }
        for message, alt in mistakes.items():
            if alt is not None and torch.equal(got, alt):
                raise AssertionError(f"{name}: {message}")
        bad = (got != want).nonzero()[0].tolist()
        raise AssertionError(f"{name}: tile (i={bad[0]}, j={bad[1]}) should be {int(want[bad[0], bad[1]])}, "
                             f"got {int(got[bad[0], bad[1]])} ({int((got != want).sum())} tiles wrong)")
    passed("tile_kinds", len(cases))


# ----------------------------------------------------------------------------- task 3
def _wrong_forward(q, k, v, Br, Bc, causal, mistake):
    """The FA-2 loop with one known mistake, to name what a wrong answer did."""
    scale = 1 / math.sqrt(q.shape[-1])
    N, Nk = q.shape[-2], k.shape[-2]
    if mistake == "pad_tail":                                   # zero keys and values, not masked
        pad = (-Nk) % Bc
        k = torch.cat([k, k.new_zeros(*k.shape[:-2], pad, k.shape[-1])], dim=-2)
        v = torch.cat([v, v.new_zeros(*v.shape[:-2], pad, v.shape[-1])], dim=-2)
        Nk = Nk + pad
    O = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    L = torch.empty(q.shape[:-1], dtype=q.dtype)
    for r0 in range(0, N, Br):
        r1 = min(r0 + Br, N)
        m = torch.full((*q.shape[:-2], r1 - r0), float("-inf"), dtype=q.dtype)
        l = torch.zeros_like(m)
        acc = torch.zeros(*q.shape[:-2], r1 - r0, v.shape[-1], dtype=q.dtype)
        for c0 in range(0, Nk, Bc):
            c1 = min(c0 + Bc, Nk)
            if causal and c0 > r1 - 1 and mistake != "no_skip_no_mask":
                continue
            S = q[..., r0:r1, :] @ k[..., c0:c1, :].transpose(-2, -1) * (1.0 if mistake == "no_scale" else scale)
            if causal and mistake not in ("skip_only", "no_skip_no_mask"):
                i = torch.arange(r0, r1)[:, None]
                j = torch.arange(c0, c1)[None, :]
                keep = (j >= i) if mistake == "mask_transposed" else (j <= i)
                S = S.masked_fill(~keep, float("-inf"))
            m_new = torch.maximum(m, S.amax(-1))
            ms = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            P = torch.exp(S - ms[..., None])
            alpha = torch.exp(m - ms)
            if mistake == "no_rescale":
                alpha = torch.ones_like(alpha)
            l_new = alpha * l + P.sum(-1)
            if mistake in ("normalize_inside", "normalize_twice"):
                acc = (alpha[..., None] * acc + P @ v[..., c0:c1, :]) / l_new[..., None]
            else:
                acc = alpha[..., None] * acc + P @ v[..., c0:c1, :]
            m, l = m_new, l_new
        out = acc if mistake == "normalize_inside" else acc / l[..., None]
        O[..., r0:r1, :] = out
        L[..., r0:r1] = m + torch.log(l)
    return O, L


_FORWARD_MESSAGES = {
    "no_rescale": "missing rescale by e^(m_old − m_new): when a new block raises the row maximum, multiply the "
                  "running ℓ and the accumulator by e^(m_old − m_new) before adding the new block",
    "normalize_inside": "normalizing inside the loop: keep the accumulator unnormalised (Σ e^(s − m) v) and divide "
                        "by ℓ once, after the last key block",
    "normalize_twice": "normalizing inside the loop (and again at the end): keep the accumulator unnormalised and "
                       "divide by ℓ once, after the last key block",
    "pad_tail": "forgot to mask the unfilled tail of the last block: the padded keys (zeros) got score 0 and took "
                "part in the softmax; give them −inf (or slice the last block to its real length)",
    "no_scale": "scores not scaled: S = Q Kᵀ / √d",
    "skip_only": "causal: the tiles above the diagonal are skipped but the tiles on the diagonal are not masked "
                 "(set S[r, c] = −inf where key c > query r)",
    "no_skip_no_mask": "causal=True was ignored: the output is that of full attention",
    "mask_transposed": "causal mask transposed: query r may see keys c ≤ r",
}


def check_flash_forward(flash_forward) -> None:
    """Task 3: ``(O, L)`` equal to ``softmax(Q Kᵀ/√d) V`` and ``logsumexp(Q Kᵀ/√d)``."""
    g = torch.Generator().manual_seed(503)
    cases = [
        # (B, h, N, d, Br, Bc, causal, logit scale)
        (1, 1, 16, 8, 4, 4, False, 1.0),
        (2, 3, 37, 16, 8, 16, False, 2.0),        # N not divisible by Br or Bc
        (1, 2, 50, 8, 16, 7, False, 3.0),
        (1, 1, 23, 4, 23, 5, False, 1.0),         # one query block
        (2, 1, 40, 8, 8, 8, False, 6.0),          # large logits: subtract the running max
        (1, 2, 37, 8, 8, 16, True, 2.0),
        (2, 1, 45, 16, 16, 7, True, 1.0),
        (1, 1, 30, 8, 5, 12, True, 3.0),
    ]
    for B, h, N, d, Br, Bc, causal, spread in cases:
        q = torch.randn(B, h, N, d, generator=g) * spread
        k = torch.randn(B, h, N, d, generator=g)
        v = torch.randn(B, h, N, d, generator=g)
        name = f"flash_forward(q [{B},{h},{N},{d}], Br={Br}, Bc={Bc}, causal={causal})"
        res = _pair(name, _call(flash_forward, q.clone(), k.clone(), v.clone(), Br, Bc, causal=causal,
                                       name="flash_forward"))
        O_want = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        _, L_want = flash_attention_forward(q, k, v, causal=causal)
        O_got = expect_tensor(f"{name}: O", res[0], tuple(O_want.shape))
        L_got = expect_tensor(f"{name}: L", res[1], tuple(L_want.shape))
        names = ["no_rescale", "normalize_inside", "normalize_twice", "pad_tail", "no_scale"]
        if causal:
            names += ["skip_only", "no_skip_no_mask", "mask_transposed"]
        wrong = {m: _wrong_forward(q, k, v, Br, Bc, causal, m) for m in names}
        bad = ~torch.isfinite(O_got.detach().double().cpu())
        if bad.any() and (~bad).any():
            # an unguarded wrong mask leaves rows with no visible key: e^(−inf − (−inf)) = NaN there
            for m, (o, _) in wrong.items():
                if torch.allclose(O_got.detach().double().cpu()[~bad], o.double()[~bad], atol=2e-5, rtol=2e-4):
                    raise AssertionError(f"{name}: O: {_FORWARD_MESSAGES[m]} (NaN in the rows that see no key)")
        expect_close(f"{name}: O", O_got, O_want, atol=2e-5, rtol=2e-4,
                     mistakes={_FORWARD_MESSAGES[m]: o for m, (o, _) in wrong.items()})
        _, L_full = flash_attention_forward(q, k, v)
        s = q @ k.transpose(-2, -1) / math.sqrt(d)
        if causal:
            s = s.masked_fill(~torch.ones(N, N, dtype=torch.bool).tril(), float("-inf"))
        m = s.amax(-1)
        lsum = torch.exp(s - m[..., None]).sum(-1)
        expect_close(f"{name}: L", L_got, L_want, atol=2e-5, rtol=2e-4, mistakes={
            "L is the row maximum m only: the log-sum-exp is L = m + log ℓ": m,
            "L is log ℓ only: the log-sum-exp is L = m + log ℓ (ℓ is summed relative to m)": torch.log(lsum),
            "returned ℓ instead of the log-sum-exp L = m + log ℓ": lsum,
            "L computed without the 1/√d scale: it is the log-sum-exp of the scaled scores S = Q Kᵀ/√d":
                wrong["no_scale"][1],
            "L includes the unmasked padded tail of the last block": wrong["pad_tail"][1],
            **({"L ignores the causal mask": L_full} if causal else {}),
        })
    _check_tiled(flash_forward, g)
    passed("flash_forward", len(cases))


def _check_tiled(flash_forward, g) -> None:
    """The point of the task, not only its numbers: no N × N tensor, causal tiles above the diagonal skipped.

    An untiled ``softmax(Q Kᵀ/√d) V`` plus ``logsumexp`` gets the values right; so does a tiled loop
    that computes every tile and masks the ones above the diagonal. What FlashAttention is about is
    measured here instead: the most memory alive at once (``course_lib.flash.peak_memory``) and the
    multiply-adds done (``torch.utils.flop_counter.FlopCounterMode``).
    """
    # Imported here, not at the top: torch.utils.flop_counter imports triton, and nothing in course_lib may
    # import triton before course_lib.triton_kernels has chosen between compiling and interpreting.
    from torch.utils.flop_counter import FlopCounterMode

    N, d, Br, Bc = 256, 8, 32, 32
    q, k, v = (torch.randn(1, 1, N, d, generator=g) for _ in range(3))
    name = f"flash_forward(q [1,1,{N},{d}], Br={Br}, Bc={Bc})"
    res, peak = peak_memory(lambda: _call(flash_forward, q, k, v, Br, Bc, causal=False, name="flash_forward"))
    scores_bytes = N * N * q.element_size()
    if peak >= scores_bytes / 2:
        raise AssertionError(
            f"{name}: {peak / 1024:.0f} KiB were alive at once, as much as the N × N scores "
            f"({scores_bytes / 1024:.0f} KiB): the scores (or P) were materialised for all keys at once. "
            f"FlashAttention computes S and P one Br × Bc tile at a time and keeps only O, ℓ and m per row")
    counted = {}
    for causal in (False, True):
        with FlopCounterMode(display=False) as flops:
            _call(flash_forward, q, k, v, Br, Bc, causal=causal, name="flash_forward")
        counted[causal] = flops.get_total_flops()
    T = N // Br
    visible = T * (T + 1) / 2 / (T * T)             # the fraction of tiles on or below the diagonal
    if counted[False] > 0 and counted[True] > (visible + 0.15) * counted[False]:
        raise AssertionError(
            f"{name}, causal=True: {counted[True] / counted[False]:.0%} of the non-causal multiply-adds; the tiles "
            f"above the diagonal were computed (and masked) instead of skipped. Only {visible:.0%} of the tiles "
            f"hold a visible key: stop the loop over key blocks at the query block's last row")


# ----------------------------------------------------------------------------- task 4
def _flash_total(N, d, Bc):
    Tc = -(-N // Bc)
    return 3 * N * d + 2 * N + Tc * (3 * N * d + 4 * N)


def check_hbm_accesses(hbm_accesses) -> None:
    """Task 4: ``standard = 4Nd + 4N²``; ``flash = 3Nd + 2N + T_c(3Nd + 4N)``, ``T_c = ⌈N/Bc⌉``, ``Bc = ⌈M/4d⌉``."""
    cases = [(1024, 64, 65536), (1000, 64, 50000), (4096, 128, 100_000), (512, 32, 4096), (100, 8, 300),
             (2048, 64, 24_576), (7, 4, 1000)]
    got = {}
    for N, d, M in cases:
        name = f"hbm_accesses(N={N}, d={d}, M={M})"
        res = _call(hbm_accesses, N, d, M, name="hbm_accesses")
        if not (isinstance(res, (tuple, list)) and len(res) == 2):
            raise AssertionError(f"{name}: expected a pair (standard, flash); got {type(res).__name__}")
        got[N, d, M] = (expect_number(f"{name}: standard", res[0]), expect_number(f"{name}: flash", res[1]))
    for N, d, M in cases:
        s_got, f_got = got[N, d, M]
        s_want = standard_attention_io(N, d).total
        name = f"hbm_accesses(N={N}, d={d}, M={M})"
        if s_got != s_want:
            hints = {
                "S and P counted once instead of written and read: each is written to HBM by one step and read "
                "back by the next (2·N² each)": 4 * N * d + 2 * N * N,
                "S and P counted as written only (or read only): each is written and read": 4 * N * d + 2 * N * N,
                "Q, K, V, O counted twice: each is read (or written, O) once": 8 * N * d + 4 * N * N,
                "only S and P counted: Q, K, V are read and O written once too (4Nd)": 4 * N * N,
            }
            for hint, value in hints.items():
                if s_got == value:
                    raise AssertionError(f"{name}: standard = {s_got:g}, expected {s_want}: {hint}")
            raise AssertionError(f"{name}: standard = {s_got:g}, expected {s_want} (4Nd + 4N²)")
        f_want = flash_attention_io(N, d, M).total
        assert f_want == _flash_total(N, d, -(-M // (4 * d)))
        if f_got != f_want:
            Br = min(-(-M // (4 * d)), d)
            Tc = -(-N // -(-M // (4 * d)))
            hints = {
                "used the wrong block size formula: Bc = ⌈M / 4d⌉ (rounded up), and T_c = ⌈N / Bc⌉":
                    [_flash_total(N, d, max(1, M // (4 * d))), _flash_total(N, d, -(-M // d)),
                     _flash_total(N, d, -(-M // (2 * d))), 3 * N * d + 2 * N + (N / (M / (4 * d))) * (3 * N * d + 4 * N)],
                "used the wrong block size formula: the outer loop runs over the T_c = ⌈N/Bc⌉ key blocks, "
                f"Bc = ⌈M/4d⌉; Br = min(⌈M/4d⌉, d) = {Br} sets the inner loop":
                    [_flash_total(N, d, Br)],
                "forgot that O, ℓ, m are initialised in HBM (line 2 writes Nd + 2N once)":
                    [_flash_total(N, d, -(-M // (4 * d))) - (N * d + 2 * N)],
                "forgot ℓ and m: every outer step also reads and writes the 2N statistics":
                    [3 * N * d + Tc * 3 * N * d, 3 * N * d + Tc * 3 * N * d + 2 * N],
                "counted O once per outer step: it is read (line 8) and written (line 12), like ℓ and m":
                    [3 * N * d + 2 * N + Tc * (2 * N * d + 4 * N), 2 * N * d + 2 * N + Tc * (2 * N * d + 4 * N)],
                "K and V are read once in all (line 6, outer loop), not once per query block":
                    [3 * N * d + 2 * N + Tc * (3 * N * d + 4 * N) - 2 * N * d + 2 * N * d * -(-N // Br)],
            }
            for hint, values in hints.items():
                if any(f_got == v for v in values):
                    raise AssertionError(f"{name}: flash = {f_got:g}, expected {f_want}: {hint}")
            raise AssertionError(f"{name}: flash = {f_got:g}, expected {f_want} (3Nd + 2N + T_c(3Nd + 4N))")
    passed("hbm_accesses", len(cases))


# ----------------------------------------------------------------------------- task 5
def check_backward(backward_from_lse) -> None:
    """Task 5: ``P = e^(S − L)``, ``D = rowsum(dO ∘ O)``, ``dS = P ∘ (dP − D)`` and the three gradients."""
    g = torch.Generator().manual_seed(505)
    cases = [(1, 1, 6, 4), (2, 3, 17, 8), (1, 2, 33, 16), (2, 1, 9, 32)]
    for B, h, N, d in cases:
        q, k, v, do = (torch.randn(B, h, N, d, generator=g, dtype=torch.float64) for _ in range(4))
        q = q * 2
        o, L = flash_attention_forward(q, k, v)
        name = f"backward_from_lse(q [{B},{h},{N},{d}])"
        res = _call(backward_from_lse, q.clone(), k.clone(), v.clone(), o.clone(), L.clone(), do.clone(),
                           name="backward_from_lse")
        if not (isinstance(res, (tuple, list)) and len(res) == 3):
            raise AssertionError(f"{name}: expected a tuple (dq, dk, dv); got {type(res).__name__}")
        want = flash_attention_backward(q, k, v, o, L, do)
        scale = 1 / math.sqrt(d)
        S = q @ k.transpose(-2, -1) * scale
        P = torch.exp(S - L[..., None])
        dP = do @ v.transpose(-2, -1)
        D = (do * o).sum(-1, keepdim=True)
        variants = {
            "D = rowsum(dP) instead of D = rowsum(dO ∘ O) (= rowsum(P ∘ dP))": P * (dP - dP.sum(-1, keepdim=True)),
            "dS is missing the − D term: dS = P ∘ (dP − D), D = rowsum(dO ∘ O)": P * dP,
            "dS = dP: the softmax Jacobian is missing, dS = P ∘ (dP − D)": dP,
            "P not recomputed from L: P = exp(S − L) is already normalised (L = m + log ℓ)":
                torch.exp(S - S.amax(-1, keepdim=True)) * (dP - D),
            "S − L broadcast L along the keys: subtract each query's own L, exp(S − L[..., None])":
                torch.exp(S - L[..., None, :]) * (dP - (do * o).sum(-1, keepdim=True)),
            "D without keepdim: rowsum(dO ∘ O) has shape [..., N]; keep it [..., N, 1] so that each "
            "query row subtracts its own D": P * (dP - (do * o).sum(-1)[..., None, :]),
        }
        for i, (gname, ref) in enumerate(zip(("dq", "dk", "dv"), want)):
            got = expect_tensor(f"{name}: {gname}", res[i], tuple(ref.shape))
            mistakes = {}
            if gname == "dv":
                mistakes = {"dV = P dO: it is Pᵀ dO": P @ do,
                            "P not recomputed from L: P = exp(S − L) is already normalised":
                                torch.exp(S - S.amax(-1, keepdim=True)).transpose(-2, -1) @ do,
                            "S − L broadcast L along the keys: subtract each query's own L, exp(S − L[..., None])":
                                torch.exp(S - L[..., None, :]).transpose(-2, -1) @ do}
            else:
                for message, dS in variants.items():
                    mistakes[message] = scale * (dS @ k if gname == "dq" else dS.transpose(-2, -1) @ q)
                dS = P * (dP - D)
                if gname == "dq":
                    mistakes["dQ without the scale: S = Q Kᵀ/√d, so dQ = dS K / √d"] = dS @ k
                    mistakes["dQ = dSᵀ K: it is dS K"] = scale * dS.transpose(-2, -1) @ k
                else:
                    mistakes["dK without the scale: S = Q Kᵀ/√d, so dK = dSᵀ Q / √d"] = dS.transpose(-2, -1) @ q
                    mistakes["dK = dS Q: it is dSᵀ Q"] = scale * dS @ q
            expect_close(f"{name}: {gname}", got, ref, atol=1e-8, rtol=1e-6, mistakes=mistakes)
    _check_uses_saved_statistics(backward_from_lse, g)
    passed("backward", len(cases) + 1)


def _check_uses_saved_statistics(backward_from_lse, g) -> None:
    """The point of the task: P is rebuilt from the saved L, and D from dO ∘ O, not from a new softmax.

    Autograd through ``softmax(S) V``, or ``D = rowsum(P ∘ dP)``, gives the right gradients too, but
    needs the whole N × N row of P: what FlashAttention saved L and O to avoid. The check passes an L
    shifted by a per-row constant and an O with a perturbation: an answer that uses them as the
    formulas say responds exactly as predicted; one that recomputes them does not move.
    """
    B, h, N, d = 1, 2, 11, 8
    q, k, v, do = (torch.randn(B, h, N, d, generator=g, dtype=torch.float64) for _ in range(4))
    o, L = flash_attention_forward(q, k, v)
    L_probe = L + torch.rand(B, h, N, generator=g, dtype=torch.float64)        # a different saved L …
    o_probe = o + 0.5 * torch.randn(B, h, N, d, generator=g, dtype=torch.float64)   # … and a different saved O
    name = "backward_from_lse, given a saved L and O that the check changed on purpose"
    res = _call(backward_from_lse, q.clone(), k.clone(), v.clone(), o_probe.clone(), L_probe.clone(),
                       do.clone(), name="backward_from_lse")
    if not (isinstance(res, (tuple, list)) and len(res) == 3):
        raise AssertionError(f"{name}: expected a tuple (dq, dk, dv); got {type(res).__name__}")
    tau = 1 / math.sqrt(d)
    S = q @ k.transpose(-2, -1) * tau
    dP = do @ v.transpose(-2, -1)

    def grads(P, D):
        dS = P * (dP - D)
        return tau * dS @ k, tau * dS.transpose(-2, -1) @ q, P.transpose(-2, -1) @ do

    P_saved, P_softmax = torch.exp(S - L_probe[..., None]), torch.softmax(S, -1)
    want = grads(P_saved, (do * o_probe).sum(-1, keepdim=True))
    got = [expect_tensor(f"{name}: {n}", t, tuple(w.shape)) for n, t, w in zip(("dq", "dk", "dv"), res, want)]
    close = lambda a, b: all(torch.allclose(x.double(), y, atol=1e-8, rtol=1e-6) for x, y in zip(a, b))
    if close(got, want):
        return
    if close(got, grads(P_softmax, (P_softmax * dP).sum(-1, keepdim=True))) or close(
            got, grads(P_softmax, (do * o_probe).sum(-1, keepdim=True))):
        raise AssertionError(
            f"{name}: your gradients ignore the saved L: P was recomputed with a softmax over the whole row of S "
            "(or by autograd). FlashAttention's backward rebuilds each tile of P from L alone, P = exp(S − L[..., None]) "
            "— that is why the forward saved L")
    if close(got, grads(P_saved, (P_saved * dP).sum(-1, keepdim=True))):
        raise AssertionError(
            f"{name}: D computed as rowsum(P ∘ dP) (or from a recomputed O = P V), which needs a whole row of P; "
            "it equals rowsum(dO ∘ O), two N × d matrices — use the saved O: D = (dO * O).sum(-1, keepdim=True)")
    raise AssertionError(f"{name}: the gradients do not follow the formulas with the given L and O "
                         "(P = exp(S − L[..., None]), D = rowsum(dO ∘ O))")


# ----------------------------------------------------------------------------- task 6 (transfer)
def _scores(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def _chunk_reference(q, k, v):
    """One chunk of keys: the normalised output and the log-sum-exp of the scaled scores."""
    return F.scaled_dot_product_attention(q, k, v), torch.logsumexp(_scores(q, k), dim=-1)


def _cut(n: int, splits: int, g: torch.Generator) -> list[tuple[int, int]]:
    """``splits`` contiguous chunks of ``0 … n − 1`` with random, unequal sizes (each ≥ 1)."""
    inner = torch.randperm(n - 1, generator=g)[: splits - 1] + 1
    edges = [0, *sorted(inner.tolist()), n]
    return list(zip(edges[:-1], edges[1:]))


def _merge_mistakes(o_parts, lse_parts):
    """What the likely wrong merges give, on the partials the check computed."""
    e = torch.exp(lse_parts)[..., None]
    top = lse_parts.argmax(0, keepdim=True)[..., None].expand(1, *o_parts.shape[1:])
    shifted = torch.exp(lse_parts - lse_parts.amax(0, keepdim=True))[..., None]
    return {
        "averaged the chunk outputs: a chunk's output must be weighted by its share of the softmax mass, "
        "e^(lse_c − lse), not 1/S": o_parts.mean(0),
        "weights e^(lse_c) not normalised: divide by their sum e^(lse) (= Σ_c e^(lse_c)), i.e. weight by "
        "e^(lse_c − lse)": (e * o_parts).sum(0),
        "weights e^(lse_c − max_c lse_c) not normalised: after subtracting the largest lse, still divide by "
        "the sum of the weights": (shifted * o_parts).sum(0),
        "took the output of the chunk with the largest lse only: every chunk contributes, weighted by "
        "e^(lse_c − lse)": o_parts.gather(0, top)[0],
    }


def check_split_kv(chunk_attention, merge_chunks) -> None:
    """Task 6: Flash-Decoding — attention of one query over chunks of the keys, then the exact merge."""
    g = torch.Generator().manual_seed(506)
    n_cases = 0
    # 1. one chunk: a normalised output and the log-sum-exp of the scaled scores
    for B, h, n, d, spread in [(2, 3, 7, 8, 2.0), (1, 1, 1, 4, 1.0), (1, 2, 13, 16, 4.0), (2, 1, 5, 32, 1.0),
                               (1, 2, 9, 16, 300.0)]:                 # scores in the hundreds: e^s overflows
        q = torch.randn(B, h, 1, d, generator=g) * spread
        k, v = torch.randn(2, B, h, n, d, generator=g)
        name = f"chunk_attention(q [{B},{h},1,{d}], a chunk of {n} keys)"
        res = _pair(name, _call(chunk_attention, q.clone(), k.clone(), v.clone(), name="chunk_attention"))
        o_want, lse_want = _chunk_reference(q, k, v)
        o_got = expect_tensor(f"{name}: o", res[0], (B, h, 1, d))
        lse_got = expect_tensor(f"{name}: lse", res[1], (B, h, 1))
        s = _scores(q, k)
        m = s.amax(-1)
        ell = torch.exp(s - m[..., None]).sum(-1)
        expect_close(f"{name}: o", o_got, o_want, mistakes={
            "the chunk's output is not normalised: divide Σ e^(s − m) v by ℓ = Σ e^(s − m), so that every chunk "
            "returns an ordinary attention output": torch.exp(s - m[..., None]) @ v,
            "scores not scaled: S = q Kᵀ / √d": F.scaled_dot_product_attention(q, k, v, scale=1.0),
        })
        expect_close(f"{name}: lse", lse_got, lse_want, mistakes={
            "lse is the chunk's maximum score m only: the log-sum-exp is m + log ℓ": m,
            "lse is log ℓ only: the log-sum-exp is m + log ℓ (ℓ is summed relative to m)": torch.log(ell),
            "returned ℓ instead of the log-sum-exp m + log ℓ": ell,
            "lse of the unscaled scores: take the log-sum-exp of S = q Kᵀ / √d": torch.logsumexp(q @ k.transpose(-2, -1), -1),
        })
        n_cases += 1

    # 2. the merge alone, on partials the check computed: only the statistics reach it
    merge_cases = [  # B, h, N, d, splits, logit scale, empty chunks appended
        (1, 2, 40, 8, 4, 1.0, 0), (2, 1, 37, 16, 5, 3.0, 0), (1, 1, 9, 4, 9, 1.0, 0),
        (1, 2, 64, 16, 3, 60.0, 0), (2, 2, 20, 8, 3, 2.0, 2),
    ]
    for B, h, N, d, S, spread, empty in merge_cases:
        q = torch.randn(B, h, 1, d, generator=g) * spread
        k, v = torch.randn(2, B, h, N, d, generator=g)
        chunks = _cut(N, S, g)
        parts = [_chunk_reference(q, k[..., a:b, :], v[..., a:b, :]) for a, b in chunks]
        parts += [(torch.zeros(B, h, 1, d), torch.full((B, h, 1), float("-inf")))] * empty
        o_parts = torch.stack([o for o, _ in parts])
        lse_parts = torch.stack([lse for _, lse in parts])
        sizes = [b - a for a, b in chunks] + [0] * empty
        what = (f"{S} chunks of {sizes} keys" + (" (the last empty: lse = −inf, o = 0)" if empty else "")
                + (f", logits up to {_scores(q, k).abs().max().item():.0f}" if spread > 10 else ""))
        name = f"merge_chunks({what})"
        res = _pair(name, _call(merge_chunks, o_parts.clone(), lse_parts.clone(), name="merge_chunks"))
        o_want, lse_want = _chunk_reference(q, k, v)
        o_got = expect_tensor(f"{name}: o", res[0], (B, h, 1, d))
        lse_got = expect_tensor(f"{name}: lse", res[1], (B, h, 1))
        for part, got in (("o", o_got), ("lse", lse_got)):
            if not torch.isfinite(got.detach().double()).all():
                if empty:
                    raise AssertionError(
                        f"{name}: {part}: NaN or inf. An empty chunk has lse = −inf, and e^(−inf − (−inf)) is NaN: "
                        "subtract the largest lse over the chunks (finite here), or use torch.logsumexp, which "
                        "gives an empty chunk the weight e^(−inf) = 0")
                raise AssertionError(
                    f"{name}: {part}: NaN or inf where the reference is finite: e^(lse_c) overflows for large "
                    "scores. Weight chunk c by e^(lse_c − lse), with lse = log Σ_c e^(lse_c) computed stably "
                    "(subtract the largest lse_c first, or torch.logsumexp)")
        real = slice(0, S)
        expect_close(f"{name}: o", o_got, o_want, mistakes=_merge_mistakes(o_parts[real], lse_parts[real]) if not empty else {})
        expect_close(f"{name}: lse", lse_got, lse_want, mistakes={
            "lse is the largest lse_c: the merged log-sum-exp is log Σ_c e^(lse_c)": lse_parts.amax(0),
            "lse is the sum of the lse_c: the sums Σ e^(s) add, so the merged lse is log Σ_c e^(lse_c)":
                lse_parts[real].sum(0),
        })
        n_cases += 1

    # 3. end to end with the learner's own chunks, and merged as a tree (merges of merges)
    for B, h, N, d, S in [(2, 2, 53, 16, 6), (1, 4, 100, 8, 4)]:
        q = torch.randn(B, h, 1, d, generator=g) * 2
        k, v = torch.randn(2, B, h, N, d, generator=g)
        chunks = _cut(N, S, g)
        name = f"split-KV decoding (N = {N} keys in {S} chunks of {[b - a for a, b in chunks]})"
        parts = [_pair(name, _call(chunk_attention, q, k[..., a:b, :], v[..., a:b, :], name="chunk_attention"))
                 for a, b in chunks]
        o_parts, lse_parts = torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
        o_want, lse_want = _chunk_reference(q, k, v)
        flat = _pair(name, _call(merge_chunks, o_parts, lse_parts, name="merge_chunks"))
        expect_close(f"{name}: o", expect_tensor(f"{name}: o", flat[0], (B, h, 1, d)), o_want)
        half = S // 2
        left = _pair(name, _call(merge_chunks, o_parts[:half], lse_parts[:half], name="merge_chunks"))
        right = _pair(name, _call(merge_chunks, o_parts[half:], lse_parts[half:], name="merge_chunks"))
        tree = _pair(name, _call(merge_chunks, torch.stack([left[0], right[0]]), torch.stack([left[1], right[1]]),
                                        name="merge_chunks"))
        again = f"{name}, merged as two halves and then merged again"
        expect_close(f"{again}: o", expect_tensor(f"{again}: o", tree[0], (B, h, 1, d)), o_want)
        expect_close(f"{again}: lse", expect_tensor(f"{again}: lse", tree[1], (B, h, 1)), lse_want)
        n_cases += 1
    passed("split_kv", n_cases)


# ----------------------------------------------------------------------------- task 7 (transfer)
def _window_tile_flops(N: int, Br: int, Bc: int, window: int, d: int) -> tuple[int, int, int]:
    """Matrix-product FLOPs (Q_i K_jᵀ and P V_j) of the tiles that hold a visible key, of the causal tiles,
    and of all tiles."""
    dist = sliding_window_mask(N, window).long()
    active = causal = every = 0
    for r0 in range(0, N, Br):
        for c0 in range(0, N, Bc):
            flops = 4 * min(Br, N - r0) * min(Bc, N - c0) * d
            every += flops
            causal += flops if c0 <= min(r0 + Br, N) - 1 else 0
            active += flops if dist[r0:r0 + Br, c0:c0 + Bc].any() else 0
    return active, causal, every


def check_flash_window(flash_window) -> None:
    """Task 7: a FlashAttention-2 forward with a causal sliding window of ``window`` keys (itself included),
    equal to SDPA with ``sliding_window_mask``, that skips the tiles outside the band."""
    from torch.utils.flop_counter import FlopCounterMode      # imported here: it imports triton (see _check_tiled)

    g = torch.Generator().manual_seed(507)
    cases = [  # B, h, N, d, Br, Bc, window, logit scale
        (1, 1, 16, 8, 4, 4, 4, 1.0),
        (2, 2, 37, 8, 8, 5, 6, 2.0),          # N divisible by neither block; Br > Bc
        (1, 2, 50, 16, 7, 16, 20, 1.0),       # Br < Bc
        (1, 1, 30, 4, 5, 12, 1, 1.0),         # a window of one key: each query sees itself only
        (1, 1, 23, 8, 8, 8, 40, 3.0),         # a window longer than the text: plain causal attention
        (2, 1, 45, 8, 16, 4, 9, 2.0),         # rows whose first key block holds none of their keys
    ]
    for B, h, N, d, Br, Bc, W, spread in cases:
        q = torch.randn(B, h, N, d, generator=g) * spread
        k, v = torch.randn(2, B, h, N, d, generator=g)
        name = f"flash_forward_window(q [{B},{h},{N},{d}], Br={Br}, Bc={Bc}, window={W})"
        got = _call(flash_window, q.clone(), k.clone(), v.clone(), Br, Bc, W, name="flash_forward_window")
        if isinstance(got, (tuple, list)) and len(got) == 2 and isinstance(got[0], torch.Tensor):
            got = got[0]                                     # (O, L) as in Task 3 is fine: O is graded
        got = expect_tensor(name, got, (B, h, N, d))
        mask = sliding_window_mask(N, W)
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        i, j = torch.arange(N)[:, None], torch.arange(N)[None, :]
        mistakes = {
            "the window is one key too wide (keys i − W … i, W + 1 of them): query i sees the W keys "
            "i − W + 1 … i, itself included": F.scaled_dot_product_attention(q, k, v, attn_mask=sliding_window_mask(N, W + 1)),
            "the window is one key too narrow: query i sees the W keys i − W + 1 … i, itself included":
                F.scaled_dot_product_attention(q, k, v, attn_mask=sliding_window_mask(N, W - 1)) if W > 1 else None,
            "the window was ignored: that is plain causal attention; query i sees only keys i − W + 1 … i":
                F.scaled_dot_product_attention(q, k, v, is_causal=True) if W < N else None,
            "the band is not causal: keys after the query (j > i) must stay masked": F.scaled_dot_product_attention(
                q, k, v, attn_mask=(i - j).abs() < W),
            "scores not scaled: S = Q Kᵀ / √d": F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0),
        }
        bad = ~torch.isfinite(got.detach().double())
        if bad.any():
            raise AssertionError(
                f"{name}: NaN or inf in {int(bad.any(-1).sum())} rows. With a window, a row can see no key at all "
                "in some tile (its keys are all too old or in the future there): its running maximum is still −inf "
                "and e^(−inf − (−inf)) is NaN — shift by 0 where m = −inf, as in Task 1. (Or a tile that holds "
                "visible keys was skipped, and a row saw no key at all.)")
        expect_close(name, got, want, atol=2e-5, rtol=2e-4, mistakes=mistakes)

    # the point of the task: the tiles outside the band are not computed, and no N × N tensor is made
    N, d, Br, Bc, W = 512, 8, 32, 32, 48
    q, k, v = (torch.randn(1, 1, N, d, generator=g) for _ in range(3))
    name = f"flash_forward_window(q [1,1,{N},{d}], Br={Br}, Bc={Bc}, window={W})"
    with FlopCounterMode(display=False) as counter:
        _call(flash_window, q, k, v, Br, Bc, W, name="flash_forward_window")
    counted = counter.get_total_flops()
    active, causal, every = _window_tile_flops(N, Br, Bc, W, d)
    if counted == 0:
        raise AssertionError(f"{name}: no matrix product was counted: compute each tile's scores Q_i K_jᵀ and its "
                             "contribution P V_j with matrix products (@), one Br × Bc tile at a time")
    if counted > 1.25 * active:
        where = ("every tile left of the diagonal was computed" if counted > 0.8 * causal
                 else "tiles beyond the window were computed")
        raise AssertionError(
            f"{name}: {counted:,} FLOPs in matrix products, but the tiles that hold a visible key need only "
            f"{active:,} ({active / every:.0%} of all tiles, {active / causal:.0%} of the causal ones): {where} "
            "(and masked) instead of skipped. For the query block of rows r0 … r1 − 1, only the key blocks that "
            "meet r0 − W + 1 … r1 − 1 hold visible keys: start the inner loop at the first of them")
    _, peak = peak_memory(lambda: _call(flash_window, q, k, v, Br, Bc, W, name="flash_forward_window"))
    if peak >= N * N / 2:                       # half a byte per query-key pair: less than even a bool N × N mask
        raise AssertionError(
            f"{name}: {peak / 1024:.0f} KiB were alive at once, as much as an N × N mask "
            f"({N * N / 1024:.0f} KiB as bool, {N * N * q.element_size() / 1024:.0f} KiB as scores): a full N × N "
            "mask or score matrix was built. Build the window's mask inside each tile, from the tile's row and "
            "column positions")
    passed("flash_forward_window", len(cases) + 1)
