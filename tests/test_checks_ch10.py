"""The Exercise 10 checks pass the reference answers and name the likely mistake otherwise."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib import sparse
from course_lib.grading import ch10
from course_lib.sparse import reachable
from helpers import stub


def ij(n):
    return torch.arange(n).unsqueeze(1), torch.arange(n).unsqueeze(0)


# ----------------------------------------------------------------------------- task 1
def window_ok(T, window, *, lo=0, hi=None, causal=True, transpose=False):
    i, j = ij(T)
    d = i - j
    hi = window - 1 if hi is None else hi
    m = (d >= lo) & (d <= hi) if causal else d.abs() < window
    return m.T if transpose else m


def test_sliding_window_passes(capsys):
    ch10.check_sliding_window(window_ok)
    assert capsys.readouterr().out == "✓ sliding_window: all 7 cases passed\n"


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "sliding_window_mask is not implemented yet"),
        (lambda T, W: window_ok(T, W, hi=W), "window of W \\+ 1"),
        (lambda T, W: window_ok(T, W, lo=1, hi=W), "off by one on the diagonal"),
        (lambda T, W: window_ok(T, W, hi=W - 2), "window of W − 1"),
        (lambda T, W: window_ok(T, W, causal=False), "not causal"),
        (lambda T, W: window_ok(T, W, transpose=True), "mask transposed"),
        (lambda T, W: ~window_ok(T, W), "mask inverted"),
        (lambda T, W: window_ok(T, W).int(), "expected dtype torch.bool"),
        (lambda T, W: window_ok(T + 1, W), "expected shape"),
    ],
)
def test_sliding_window_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch10.check_sliding_window(wrong)


# ----------------------------------------------------------------------------- task 2
def strided_ok(n, l, *, a1_keys=None, a2="paper", causal=True, transpose=False, swap=False):
    i, j = ij(n)
    d = i - j
    c = d >= 0 if causal else torch.ones(n, n, dtype=torch.bool)
    a1 = c & (d.abs() <= (l if a1_keys is None else a1_keys - 1))
    a2m = {"paper": d % l == 0, "last": j % l == l - 1, "first": j % l == 0}[a2] & c
    if transpose:
        a1, a2m = a1.T, a2m.T
    return (a2m, a1) if swap else (a1, a2m)


def test_strided_passes(capsys):
    ch10.check_strided(strided_ok)
    assert capsys.readouterr().out == "✓ strided: all 6 cases passed\n"


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "strided_pattern is not implemented yet"),
        (lambda n, l: strided_ok(n, l, a1_keys=l), "A1 holds l = 4 keys"),
        (lambda n, l: strided_ok(n, l, a2="last"), "j mod l = l − 1"),
        (lambda n, l: strided_ok(n, l, a2="first"), "A2 uses j mod l = 0"),
        (lambda n, l: strided_ok(n, l, causal=False), "A1 not causal"),
        (lambda n, l: (strided_ok(n, l)[0], strided_ok(n, l, causal=False)[1]), "A2 not causal"),
        (lambda n, l: strided_ok(n, l, transpose=True), "mask transposed"),
        (lambda n, l: strided_ok(n, l, swap=True), "A1 and A2 swapped"),
        (lambda n, l: strided_ok(n, l)[0], "expected a tuple"),
    ],
)
def test_strided_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch10.check_strided(wrong)


# ----------------------------------------------------------------------------- task 3
def fixed_ok(n, l, c, *, causal=True, first=False, extra=0, window_a1=False, transpose=False, swap=False):
    i, j = ij(n)
    cm = (j <= i) if causal else torch.ones(n, n, dtype=torch.bool)
    a1 = cm & ((i - j < l) & (j <= i) if window_a1 else (i // l) == (j // l))
    a2 = cm & ((j % l < c) if first else (j % l >= l - c - extra)).expand(n, n)
    if transpose:
        a1, a2 = a1.T, a2.T
    return (a2, a1) if swap else (a1, a2)


def test_fixed_passes(capsys):
    ch10.check_fixed(fixed_ok)
    assert capsys.readouterr().out == "✓ fixed: all 6 cases passed\n"


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "fixed_pattern is not implemented yet"),
        (lambda n, l, c: fixed_ok(n, l, c, causal=False), "A1 not causal"),
        (lambda n, l, c: (fixed_ok(n, l, c)[0], fixed_ok(n, l, c, causal=False)[1]), "A2 not causal"),
        (lambda n, l, c: fixed_ok(n, l, c, first=True), "first c positions"),
        (lambda n, l, c: fixed_ok(n, l, c, extra=1), "c \\+ 1 summary columns"),
        (lambda n, l, c: fixed_ok(n, l, c, extra=-1), "c − 1 summary columns"),
        (lambda n, l, c: fixed_ok(n, l, c, window_a1=True), "sliding window of l keys"),
        (lambda n, l, c: fixed_ok(n, l, c, transpose=True), "mask transposed"),
        (lambda n, l, c: fixed_ok(n, l, c, swap=True), "A1 and A2 swapped"),
    ],
)
def test_fixed_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch10.check_fixed(wrong)


# ----------------------------------------------------------------------------- task 4
def reach_ok(masks, *, residual=True, reverse=False, transpose=False, last_only=False, as_float=False):
    n = masks[0].shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    r = eye.float()
    seq = masks[-1:] if last_only else (masks[::-1] if reverse else masks)
    for m in seq:
        m = (m | eye) if residual else m
        r = m.float() @ r
    if as_float:
        return r
    r = r > 0
    return r.T if transpose else r


def test_reachability_passes(capsys):
    ch10.check_reachability(reach_ok)
    assert capsys.readouterr().out == "✓ reachability: all 6 cases passed\n"


@pytest.mark.parametrize(
    "wrong, message",
    [
        (stub, "reachability is not implemented yet"),
        (lambda ms: reach_ok(ms, reverse=True), "wrong order"),
        (lambda ms: reach_ok(ms, residual=False), "residual connection is missing"),
        (lambda ms: reach_ok(ms, transpose=True), "R transposed"),
        (lambda ms: reach_ok(ms, last_only=True), "only the last layer"),
        (lambda ms: reach_ok(ms, as_float=True), "path counts"),
    ],
)
def test_reachability_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch10.check_reachability(wrong)


# ----------------------------------------------------------------------------- task 5
def needed_ok(D, W):
    return 0 if D == 0 else -(-D // (W - 1))


def test_layers_needed_passes(capsys):
    ch10.check_layers_needed(needed_ok, 131_072)
    assert capsys.readouterr().out == "✓ layers_needed: all 10 cases passed\n"


@pytest.mark.parametrize(
    "wrong, span, message",
    [
        (stub, 131_072, "layers_needed is not implemented yet"),
        (lambda D, W: -(-D // W), 131_072, "a window of W \\+ 1"),
        (lambda D, W: D // (W - 1), 131_072, "round up"),
        (lambda D, W: D // (W - 1) + 1, 131_072, "one layer too many"),
        (lambda D, W: D, 131_072, "expected"),
        (lambda D, W: float("nan"), 131_072, "expected a finite number"),
        (needed_ok, 32 * 4095, "looks back W = 4096"),
        (needed_ok, 32 * 4096 + 1, "not the query itself"),
        (needed_ok, 4096, "MISTRAL_SPAN = 4096"),
    ],
)
def test_layers_needed_names_the_mistake(wrong, span, message):
    with pytest.raises(AssertionError, match=message):
        ch10.check_layers_needed(wrong, span)


# ----------------------------------------------------------------------------- task 6 (transfer)
def schedule(distance, window, *, base=None, start=1, count=None):
    """Dilations start, start·base, start·base², … for the fewest layers with window^L > distance."""
    base = window if base is None else base
    L, span = 0, 1
    while span <= distance:
        span, L = span * window, L + 1
    L = L if count is None else count(distance, window)
    return [start * base ** r for r in range(L)]


def schedule_float_log(distance, window):
    """The right dilations, with the layer count from math.log (inexact at exact powers)."""
    L = math.ceil(math.log(distance + 1, window)) if distance else 0
    return [window ** r for r in range(L)]


def schedule_demo_only(distance, window):
    """Right for the sheet's demo (distance 26, window 3): three layers, whatever the input."""
    return [1, 3, 9]


def test_dilation_schedule_passes(capsys):
    ch10.check_dilation_schedule(schedule)
    ch10.check_dilation_schedule(lambda D, W: schedule(D, W)[::-1])          # the order does not matter
    ch10.check_dilation_schedule(lambda D, W: torch.tensor(schedule(D, W), dtype=torch.long))
    assert capsys.readouterr().out == "✓ dilation_schedule: all 11 cases passed\n" * 3


@pytest.mark.parametrize("wrong, message", [
    (stub, "dilation_schedule is not implemented yet"),
    (lambda D, W: [1] * (-(-D // (W - 1))), "a plain sliding window"),
    (lambda D, W: schedule(D, W, base=2, count=lambda D, W: max(1, D).bit_length()) if W > 2 else schedule(D, W),
     "each layer can multiply the number of reachable offsets by W"),
    (lambda D, W: schedule(D, W, base=W + 1), "is never reached \\(a hole\\)"),
    (lambda D, W: schedule(D, W, start=W), "is never reached \\(a hole\\)"),
    (lambda D, W: schedule(D, W, count=lambda D, W: math.ceil(math.log(D, W)) if D > 1 else 1),
     "reaches at most \\d+ positions back"),
    (schedule_float_log, "math.log is inexact|inexact"),
    (schedule_demo_only, "3 layers reach everything, but 2 are enough|reaches at most"),
    (lambda D, W: [0.5] * 3, "positive whole number"),
    (lambda D, W: 3, "expected a list of dilations"),
    (lambda D, W: schedule(D, W) or [1], "no layer is needed"),
])
def test_dilation_schedule_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch10.check_dilation_schedule(wrong)


# ----------------------------------------------------------------------------- task 7 (transfer)
def tiles(n, window, sinks, block, *, first_row=True, overlap_once=True, sink_ceil=True, last_block=True, back=None):
    back = window - 1 if back is None else back
    s = math.ceil(sinks / block) if sink_ceil else sinks // block
    count = 0
    for r in range(math.ceil(n / block) if last_block else n // block):
        row = r * block if first_row else min(n, (r + 1) * block) - 1
        lo = max(0, row - back) // block
        count += r - lo + 1 + (min(s, lo) if overlap_once else min(s, r + 1))
    return count


def tiles_closed_form(n, window, sinks, block):
    """The same as a sum of minima: min(r + 1, 1 + ⌈(W − 1)/b⌉) window tiles, plus uncovered sink tiles."""
    s, inner = -(-sinks // block), 1 + -(-(window - 1) // block)
    return sum(min(r + 1, inner) + min(s, r + 1 - min(r + 1, inner)) for r in range(-(-n // block)))


def tiles_with_the_mask(n, window, sinks, block):
    """Right by construction for small n, but builds the n × n mask: hopeless at n = 2²⁰."""
    from course_lib.sparse import block_layout, sliding_window_mask
    i, j = torch.arange(n)[:, None], torch.arange(n)[None]
    return int(block_layout(sliding_window_mask(n, window) | ((j < sinks) & (j <= i)), block).sum())


def test_sink_window_tiles_passes(capsys):
    ch10.check_sink_window_tiles(tiles)
    ch10.check_sink_window_tiles(tiles_closed_form)
    assert capsys.readouterr().out == "✓ sink_window_tiles: all 11 cases passed\n" * 2


@pytest.mark.parametrize("wrong, message", [
    (stub, "sink_window_tiles is not implemented yet"),
    (lambda *a: tiles(*a, first_row=False), "FIRST row"),
    (lambda *a: tiles(*a, overlap_once=False), "counted again where the window already covers them"),
    (lambda *a: tiles(*a, sink_ceil=False), "a partly filled tile is computed whole"),
    (lambda n, W, s, b: tiles(n, W, 0, b), "the sinks were forgotten"),
    (lambda *a: tiles(*a, last_block=False), "the last, partial query block"),
    (lambda *a: tiles(*a, back=a[1]), "W \\+ 1 keys"),
    (lambda n, W, s, b: math.ceil(ch10._nnz_sink_window(n, W, s) / b ** 2), "counted non-zeros / b²"),
    (lambda n, W, s, b: math.ceil(n / b) * (math.ceil(W / b) + 1), "window is cut at key 0"),
    (tiles_with_the_mask, "ran out of memory"),
    (lambda *a: None, "expected a number"),
    (lambda *a: tiles(*a) + (a[0] == 100), "n=100, window=17, sinks=1, block=8\\): expected \\d+ tiles; got"),
])
def test_sink_window_tiles_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch10.check_sink_window_tiles(wrong)


# ----------------------------------------------------------------------------- the warm-ups call the library
@pytest.mark.parametrize("check, wrong", [
    (ch10.check_sliding_window, sparse.sliding_window_mask),
    (ch10.check_strided, lambda n, l: sparse.strided_pattern(n, l)),
    (ch10.check_fixed, lambda n, l, c: sparse.fixed_pattern(n, l, c)),
    (ch10.check_reachability, lambda masks: reachable(masks)),
    (lambda fn: ch10.check_layers_needed(fn, 32 * 4096), lambda D, W: sparse.layers_needed(D, W)),
])
def test_calling_course_lib_sparse_fails(check, wrong):
    with pytest.raises(AssertionError, match="course_lib.sparse does the work here"):
        check(wrong)
