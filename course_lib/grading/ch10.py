"""Checks for Exercise 10 (sparse attention).

Tasks, in the order of the exercise notebook:

1. ``sliding_window_mask(T, window)`` — ``[T, T]`` bool, query i sees keys ``i − window + 1 … i``;
2. ``strided_pattern(n, l)`` → ``(A1, A2)`` — the Sparse Transformer's strided pattern;
3. ``fixed_pattern(n, l, c)`` → ``(A1, A2)`` — the fixed pattern, blocks plus summary columns;
4. ``reachability(masks)`` — which inputs reach which outputs through a stack of layers;
5. ``layers_needed(distance, window)`` — sliding-window layers to see ``distance`` back.

Each check builds the reference with ``course_lib.sparse`` (whose masks are tested against
their set definitions) and, when the student's answer is wrong, recomputes the known wrong
answers (window of W + 1, mask transposed, not causal, …) to name the mistake.
"""

from __future__ import annotations

import torch

from course_lib.grading import call_student, expect_number, expect_tensor, passed
from course_lib.masks import causal_mask
from course_lib.sparse import (
    fixed_pattern,
    layers_needed as reference_layers_needed,
    reachable,
    sliding_window_mask,
    strided_pattern,
)

__all__ = [
    "check_sliding_window",
    "check_strided",
    "check_fixed",
    "check_reachability",
    "check_layers_needed",
]


def _ij(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.arange(n).unsqueeze(1)
    j = torch.arange(n).unsqueeze(0)
    return i, j


def _expect_mask(name: str, got, want: torch.Tensor, mistakes: dict[str, torch.Tensor | None]) -> None:
    got = expect_tensor(name, got, tuple(want.shape))
    if got.dtype != torch.bool:
        raise AssertionError(f"{name}: expected dtype torch.bool (True = may attend); got {got.dtype}")
    if torch.equal(got, want):
        return
    for message, alt in mistakes.items():
        if alt is not None and torch.equal(got, alt):
            raise AssertionError(f"{name}: {message}")
    wrong = (got != want).nonzero()[0].tolist()
    raise AssertionError(
        f"{name}: wrong mask ({int((got != want).sum())} entries differ; first at query {wrong[0]}, key {wrong[1]}: "
        f"expected {bool(want[wrong[0], wrong[1]])})"
    )


def _common_mistakes(want: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "mask transposed: rows are queries, columns are keys (a query sees its past, j ≤ i)": want.T,
        "mask inverted: True means 'may attend'": ~want,
    }


# ----------------------------------------------------------------------------- task 1
def check_sliding_window(sliding_window_mask_fn) -> None:
    """Task 1: query i attends to keys j with ``0 ≤ i − j < window`` (``window`` keys, itself included)."""
    cases = [(8, 3), (10, 4), (7, 1), (6, 6), (5, 9), (13, 5), (1, 2)]
    for T, W in cases:
        name = f"sliding_window_mask(T={T}, window={W})"
        got = call_student(sliding_window_mask_fn, T, W, name="sliding_window_mask")
        want = sliding_window_mask(T, W)
        i, j = _ij(T)
        d = i - j
        mistakes = {
            f"window of W + 1: query i sees keys i − W … i, that is {W + 1} keys; it must see {W} "
            f"(i − W + 1 … i, itself included)": (d >= 0) & (d <= W),
            f"off by one on the diagonal: the query must see itself (keys i − W + 1 … i), "
            f"not i − W … i − 1": (d >= 1) & (d <= W),
            f"window of W − 1: query i must see {W} keys, itself included": (d >= 0) & (d < W - 1),
            "not causal: the window must not reach the future (keys j > i)": d.abs() < W,
            "not causal: a symmetric band; keep only keys j ≤ i": (d.abs() <= W // 2),
            **_common_mistakes(want),
        }
        _expect_mask(name, got, want, mistakes)
    passed("sliding_window", len(cases))


# ----------------------------------------------------------------------------- task 2
def check_strided(strided_pattern_fn) -> None:
    """Task 2: ``A1 = {j : 0 ≤ i − j ≤ l}``, ``A2 = {j ≤ i : (i − j) mod l = 0}``."""
    cases = [(16, 4), (17, 4), (23, 5), (12, 3), (9, 1), (6, 8)]
    for n, l in cases:
        name = f"strided_pattern(n={n}, l={l})"
        res = call_student(strided_pattern_fn, n, l, name="strided_pattern")
        if not (isinstance(res, tuple) and len(res) == 2):
            raise AssertionError(f"{name}: expected a tuple (A1, A2); got {type(res).__name__}")
        a1, a2 = strided_pattern(n, l)
        i, j = _ij(n)
        d = i - j
        causal = d >= 0
        if isinstance(res[0], torch.Tensor) and isinstance(res[1], torch.Tensor) and torch.equal(res[0], a2) \
                and torch.equal(res[1], a1) and not torch.equal(a1, a2):
            raise AssertionError(f"{name}: A1 and A2 swapped: return (A1 = previous l positions, A2 = every l-th)")
        _expect_mask(f"A1 of {name}", res[0], a1, {
            f"A1 holds l = {l} keys (i − l + 1 … i); the paper's A¹_i = {{max(0, i − l), …, i}} has l + 1":
                causal & (d < l),
            f"A1 leaves out the query itself: A¹_i = {{max(0, i − l), …, i}} includes i": (d >= 1) & (d <= l),
            "A1 not causal: keys j > i are the future": d.abs() <= l,
            **_common_mistakes(a1),
        })
        _expect_mask(f"A2 of {name}", res[1], a2, {
            "A2 uses j mod l = l − 1 (the fixed pattern's summary columns); the strided A² is "
            "{j : (i − j) mod l = 0}, every l-th position counted back from i": causal & (j % l == l - 1),
            "A2 uses j mod l = 0; the strided A² is {j : (i − j) mod l = 0}, counted back from i":
                causal & (j % l == 0),
            "A2 not causal: keep only j ≤ i": (d % l == 0),
            "A2 leaves out the query itself: (i − j) mod l = 0 holds for j = i": causal & (d % l == 0) & (d > 0),
            **_common_mistakes(a2),
        })
    passed("strided", len(cases))


# ----------------------------------------------------------------------------- task 3
def check_fixed(fixed_pattern_fn) -> None:
    """Task 3: ``A1 = {j ≤ i : ⌊j/l⌋ = ⌊i/l⌋}``, ``A2 = {j ≤ i : j mod l ∈ {l − c, …, l − 1}}``."""
    cases = [(16, 4, 1), (17, 4, 2), (23, 5, 2), (12, 3, 3), (10, 4, 1), (5, 8, 3)]
    for n, l, c in cases:
        name = f"fixed_pattern(n={n}, l={l}, c={c})"
        res = call_student(fixed_pattern_fn, n, l, c, name="fixed_pattern")
        if not (isinstance(res, tuple) and len(res) == 2):
            raise AssertionError(f"{name}: expected a tuple (A1, A2); got {type(res).__name__}")
        a1, a2 = fixed_pattern(n, l, c)
        i, j = _ij(n)
        causal = j <= i
        same_block = (i // l) == (j // l)
        if isinstance(res[0], torch.Tensor) and isinstance(res[1], torch.Tensor) and torch.equal(res[0], a2) \
                and torch.equal(res[1], a1):
            raise AssertionError(f"{name}: A1 and A2 swapped: return (A1 = own block, A2 = summary columns)")
        _expect_mask(f"A1 of {name}", res[0], a1, {
            "A1 not causal: within the block keep only j ≤ i": same_block,
            "A1 is a sliding window of l keys; the fixed A¹ is the query's whole block "
            "{j : ⌊j/l⌋ = ⌊i/l⌋}, up to i": causal & (i - j < l),
            **_common_mistakes(a1),
        })
        _expect_mask(f"A2 of {name}", res[1], a2, {
            "A2 not causal: a query may read only the summary columns j ≤ i": (j % l >= l - c).expand(n, n),
            f"A2 takes the first c positions of each block (j mod l < c); the summary columns are the "
            f"last c: j mod l ∈ {{l − c, …, l − 1}}": causal & (j % l < c),
            f"A2 has c + 1 summary columns per block (j mod l ≥ l − c − 1); it must have c = {c}":
                causal & (j % l >= l - c - 1) if c < l else None,
            f"A2 has c − 1 summary columns per block (j mod l > l − c); it must have c = {c}":
                causal & (j % l > l - c),
            **_common_mistakes(a2),
        })
    passed("fixed", len(cases))


# ----------------------------------------------------------------------------- task 4
def _reach_variants(layers):
    n = layers[0].shape[0]
    eye = torch.eye(n, dtype=torch.bool)

    def prod(ms, residual=True, reverse=False):
        r = eye.clone()
        for m in (ms[::-1] if reverse else ms):
            m = m | eye if residual else m
            r = (m.float() @ r.float()) > 0
        return r

    return {
        "layers multiplied in the wrong order: layer 1 acts first, so R = M_L ⋯ M_2 M_1 "
        "(the first layer is the rightmost factor)": prod(layers, reverse=True),
        "the residual connection is missing: each layer passes x + Attn(x) on, so add the identity "
        "to every layer's mask": prod(layers, residual=False),
        "R transposed: R[i, j] is True when output i depends on input j": prod(layers).T,
        "only the last layer counted: multiply the masks of all the layers": prod(layers[-1:]),
    }


def check_reachability(reachability) -> None:
    """Task 4: ``R = (M_L ∨ I) ⋯ (M_1 ∨ I) > 0`` as a bool ``[n, n]`` matrix."""
    f1, f2 = fixed_pattern(13, 4, 1)
    s1, s2 = strided_pattern(14, 4)
    g = torch.Generator().manual_seed(404)
    rand = [(torch.rand(9, 9, generator=g) < 0.2) for _ in range(3)]
    cases = [
        ("sliding windows, 3 layers", [sliding_window_mask(20, 3)] * 3),
        ("fixed pattern, A1 then A2", [f1, f2]),
        ("fixed pattern, A2 then A1", [f2, f1]),
        ("strided pattern, A1 then A2", [s1, s2]),
        ("one layer of A2 (no diagonal)", [f2]),
        ("three random masks", rand),
    ]
    for what, layers in cases:
        n = layers[0].shape[0]
        got = call_student(reachability, [m.clone() for m in layers], name="reachability")
        want = reachable(layers)
        mistakes = _reach_variants(layers)
        if isinstance(got, torch.Tensor) and got.dtype != torch.bool and tuple(got.shape) == (n, n):
            raise AssertionError(
                f"reachability with {what}: expected dtype torch.bool; got {got.dtype} "
                "(path counts? compare the product with 0)"
            )
        _expect_mask(f"reachability with {what}", got, want, {k: v for k, v in mistakes.items()})
    passed("reachability", len(cases))


# ----------------------------------------------------------------------------- task 5
def check_layers_needed(layers_needed, mistral_span) -> None:
    """Task 5: ``⌈distance / (window − 1)⌉`` sliding-window layers, and Mistral's W·k."""
    cases = [(8, 5), (9, 5), (1, 2), (0, 4), (100, 11), (4095, 4096), (4096, 4096), (131_072, 4097), (63, 8)]
    got = {}
    for D, W in cases:
        name = f"layers_needed(distance={D}, window={W})"
        got[D, W] = expect_number(name, call_student(layers_needed, D, W, name="layers_needed"))
    wrong = [(D, W) for D, W in cases if got[D, W] != reference_layers_needed(D, W)]
    if wrong:
        D, W = wrong[0]
        head = f"layers_needed(distance={D}, window={W}) = {got[D, W]:g}; expected {reference_layers_needed(D, W)}"
        mistakes = {
            f": one layer looks back window − 1 = {W - 1} positions (the window counts the query itself), "
            f"not {W} — a window of W + 1": lambda D, W: -(-D // W),
            ": round up — a partial step still needs a whole layer": lambda D, W: D // (W - 1),
            ": one layer too many when window − 1 divides the distance": lambda D, W: D // (W - 1) + 1,
        }
        for hint, fn in mistakes.items():
            if all(got[c] == fn(*c) for c in cases if c[0] > 0):
                raise AssertionError(head + hint)
        raise AssertionError(head + " (check with the reachability of sliding-window masks)")
    span = expect_number("MISTRAL_SPAN", mistral_span)
    if span != 32 * 4096:
        hint = ""
        if span == 32 * 4095:
            hint = ": Mistral's window sees i − W … i, so each layer looks back W = 4096, not W − 1"
        elif span == 32 * 4096 + 1:
            hint = ": count the previous tokens, not the query itself"
        raise AssertionError(f"MISTRAL_SPAN = {span:g}; expected W · k with W = 4096, k = 32 layers{hint}")
    passed("layers_needed", len(cases) + 1)
