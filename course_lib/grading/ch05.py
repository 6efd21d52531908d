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
   recomputed from ``L`` and ``D = rowsum(dO ∘ O)``.

References come from ``course_lib.flash`` (tested against ``F.scaled_dot_product_attention``
and autograd); when the student's answer is wrong, the check recomputes the known wrong answers
(no rescale by e^(m_old − m_new), normalising inside the loop, the unmasked tail of the last
block, S and P counted once, the wrong block-size formula, …) and names the one it matches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course_lib.flash import (
    flash_attention_backward,
    flash_attention_forward,
    flash_attention_io,
    online_softmax_merge,
    peak_memory,
    softmax_stats,
    standard_attention_io,
)
from course_lib.grading import call_student, expect_close, expect_number, expect_tensor, passed

__all__ = [
    "check_merge",
    "check_tile_kinds",
    "check_flash_forward",
    "check_hbm_accesses",
    "check_backward",
    "reference_tile_kinds",
]


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
        res = _pair(name, call_student(merge_stats, (a[0].clone(), a[1].clone()), (b[0].clone(), b[1].clone()),
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
        got = call_student(causal_tile_kinds, N, Br, Bc, name="causal_tile_kinds")
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
        res = _pair(name, call_student(flash_forward, q.clone(), k.clone(), v.clone(), Br, Bc, causal=causal,
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
    res, peak = peak_memory(lambda: call_student(flash_forward, q, k, v, Br, Bc, causal=False, name="flash_forward"))
    scores_bytes = N * N * q.element_size()
    if peak >= scores_bytes / 2:
        raise AssertionError(
            f"{name}: {peak / 1024:.0f} KiB were alive at once, as much as the N × N scores "
            f"({scores_bytes / 1024:.0f} KiB): the scores (or P) were materialised for all keys at once. "
            f"FlashAttention computes S and P one Br × Bc tile at a time and keeps only O, ℓ and m per row")
    counted = {}
    for causal in (False, True):
        with FlopCounterMode(display=False) as flops:
            call_student(flash_forward, q, k, v, Br, Bc, causal=causal, name="flash_forward")
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
        res = call_student(hbm_accesses, N, d, M, name="hbm_accesses")
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
        res = call_student(backward_from_lse, q.clone(), k.clone(), v.clone(), o.clone(), L.clone(), do.clone(),
                           name="backward_from_lse")
        if not (isinstance(res, (tuple, list)) and len(res) == 3):
            raise AssertionError(f"{name}: expected a tuple (dq, dk, dv); got {type(res).__name__}")
        want = flash_attention_backward(q, k, v, o, L, do)
        scale = 1 / math.sqrt(d)
        S = q @ k.transpose(-2, -1) * scale
        P = torch.exp(S - L[..., None])
        dV = P.transpose(-2, -1) @ do
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
    passed("backward", len(cases))
