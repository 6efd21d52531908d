"""The Exercise 10 checks pass the reference answers and name the likely mistake otherwise."""

from __future__ import annotations

import pytest
import torch

from course_lib.grading import ch10
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
