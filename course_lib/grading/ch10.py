"""Checks for Exercise 10 (sparse attention).

Tasks, in the order of the exercise notebook:

1. ``sliding_window_mask(T, window)`` — ``[T, T]`` bool, query i sees keys ``i − window + 1 … i``;
2. ``strided_pattern(n, l)`` → ``(A1, A2)`` — the Sparse Transformer's strided pattern;
3. ``fixed_pattern(n, l, c)`` → ``(A1, A2)`` — the fixed pattern, blocks plus summary columns;
4. ``reachability(masks)`` — which inputs reach which outputs through a stack of layers;
5. ``layers_needed(distance, window)`` — sliding-window layers to see ``distance`` back;
6. (transfer) ``dilation_schedule(distance, window)`` — the dilations of the shortest stack of dilated
   windows that reaches every offset 0 … distance (checked by reachability, and against the lower
   bound W^L > distance);
7. (transfer) ``sink_window_tiles(n, window, sinks, block)`` — the ``b × b`` tiles a block-sparse kernel
   computes for attention sinks plus a sliding window (StreamingLLM), for n too long for an n × n mask.

Each check builds the reference with ``course_lib.sparse`` (whose masks are tested against
their set definitions) and, when the student's answer is wrong, recomputes the known wrong
answers (window of W + 1, mask transposed, not causal, …) to name the mistake.
"""

from __future__ import annotations

import math

import torch

import course_lib.sparse
from course_lib.grading import call_student, expect_number, expect_tensor, passed
from course_lib.grading.forbid import call_without
from course_lib.sparse import (
    block_layout,
    dilated_window_mask,
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
    "check_dilation_schedule",
    "check_sink_window_tiles",
    "SINK_TILE_CASES",
]


_LIBRARY_MESSAGE = ("course_lib.sparse does the work here: it is the reference the check compares you with; "
                    "build it with torch operations")


def _library(*names: str) -> list[tuple[object, str]]:
    """The functions of ``course_lib.sparse`` that an answer must not call (they are its reference)."""
    return [(course_lib.sparse, n) for n in names]


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
        got = call_without(sliding_window_mask_fn, _library("sliding_window_mask", "dilated_window_mask"),
                           _LIBRARY_MESSAGE, T, W, name="sliding_window_mask")
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
        res = call_without(strided_pattern_fn, _library("strided_pattern"), _LIBRARY_MESSAGE, n, l,
                           name="strided_pattern")
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
        res = call_without(fixed_pattern_fn, _library("fixed_pattern"), _LIBRARY_MESSAGE, n, l, c,
                           name="fixed_pattern")
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
        got = call_without(reachability, _library("reachable", "hop_distance"), _LIBRARY_MESSAGE,
                           [m.clone() for m in layers], name="reachability")
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
        got[D, W] = expect_number(name, call_without(layers_needed, _library("layers_needed", "receptive_field"),
                                                   _LIBRARY_MESSAGE, D, W, name="layers_needed"))
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


# ----------------------------------------------------------------------------- task 6 (transfer)
def _min_layers(distance: int, window: int) -> int:
    """Fewest dilated-window layers (``window`` keys each) whose stack reaches every offset 0 … distance:
    each layer multiplies the number of reachable offsets by at most ``window``, and dilations
    1, W, W², … reach every offset below W^L (its base-W digits), so L = min{L : W^L > distance}."""
    L, span = 0, 1
    while span <= distance:
        span *= window
        L += 1
    return L


def check_dilation_schedule(dilation_schedule) -> None:
    """Task 6: the dilations of a stack of dilated windows that reaches every offset ≤ distance in the fewest layers."""
    cases = [(8, 3), (9, 3), (26, 3), (15, 2), (16, 2), (124, 5), (100, 10), (0, 4)]
    g = torch.Generator().manual_seed(1006)
    for _ in range(3):                                        # sizes the sheet does not print
        W = int(torch.randint(2, 7, (1,), generator=g))
        cases.append((int(torch.randint(1, 200, (1,), generator=g)), W))
    for D, W in cases:
        name = f"dilation_schedule(distance={D}, window={W})"
        got = call_student(dilation_schedule, D, W, name="dilation_schedule")
        if isinstance(got, torch.Tensor):
            got = got.tolist()
        if not isinstance(got, (list, tuple)):
            raise AssertionError(f"{name}: expected a list of dilations (one int per layer); got {type(got).__name__}")
        dil = []
        for d in got:
            value = expect_number(f"{name}: a dilation", d)
            if value != int(value) or value < 1:
                raise AssertionError(f"{name}: every dilation must be a positive whole number; got {d!r}")
            dil.append(int(value))
        want = _min_layers(D, W)
        if D == 0:
            if dil:
                raise AssertionError(f"{name}: a position already holds its own information: no layer is needed ([])")
            continue
        if not dil:
            raise AssertionError(f"{name}: an empty stack reaches only distance 0; distance {D} needs layers")
        n = D + 1
        last = reachable([dilated_window_mask(n, W, d) for d in dil])[n - 1]     # what the last position depends on
        missing = [t for t in range(D + 1) if not last[n - 1 - t]]
        if missing:
            reach = sum((W - 1) * d for d in dil)
            if reach < D:
                raise AssertionError(
                    f"{name}: with dilations {dil} the stack reaches at most {reach} positions back, not {D}: "
                    f"L layers with dilations 1, W, W², … reach W^L − 1 back; here L = {want} are needed")
            raise AssertionError(
                f"{name}: with dilations {dil} distance {missing[0]} is never reached (a hole): every offset t must "
                "be a sum of one multiple k_r·δ_r (0 ≤ k_r ≤ W − 1) per layer — with δ_r = W^(r−1) these are the "
                "base-W digits of t")
        if len(dil) > want:
            hint = (" — a plain sliding window (all dilations 1) needs ⌈D / (W − 1)⌉ layers" if set(dil) == {1}
                    else " — each layer can multiply the number of reachable offsets by W: use δ = 1, W, W², …")
            if len(dil) == want + 1 and W ** want == D + 1:
                hint += (" (if you computed ⌈log_W(D + 1)⌉ with math.log: it is inexact, "
                         f"math.log({D + 1}, {W}) = {math.log(D + 1, W)!r}; count with integers)")
            raise AssertionError(f"{name}: {len(dil)} layers reach everything, but {want} are enough{hint}")
    passed("dilation_schedule", len(cases))


# ----------------------------------------------------------------------------- task 7 (transfer)
def _sink_window_tiles(n: int, window: int, sinks: int, block: int, *, lo_row="first", sink_tiles=None,
                       union_overlap=True, partial_last=True, keys_back=None) -> int:
    """Active ``block × block`` tiles of the causal sliding window plus ``sinks`` keys every query sees.

    Query block r (rows rb … ) needs the key blocks ⌊max(0, rb − W + 1)/b⌋ … r of its window, plus the
    ⌈sinks / b⌉ first key blocks, counted once where they overlap.
    """
    keys_back = window - 1 if keys_back is None else keys_back
    s = -(-sinks // block) if sink_tiles is None else sink_tiles
    n_blocks = -(-n // block) if partial_last else n // block
    total = 0
    for r in range(n_blocks):
        row = r * block if lo_row == "first" else min(n, (r + 1) * block) - 1
        lo = max(0, row - keys_back) // block
        total += (r - lo + 1) + (min(s, lo) if union_overlap else min(s, r + 1))
    return total


def _sink_window_mask(n: int, window: int, sinks: int) -> torch.Tensor:
    i, j = _ij(n)
    return sliding_window_mask(n, window) | ((j < sinks) & (j <= i))


SINK_TILE_CASES = [  # n, window, sinks, block
    (64, 16, 4, 8), (100, 17, 1, 8), (50, 8, 0, 8), (130, 33, 9, 16), (40, 5, 12, 4), (256, 65, 4, 64),
]


def check_sink_window_tiles(tiles_fn) -> None:
    """Task 7: the tiles a block-sparse kernel visits for StreamingLLM's pattern (sinks + sliding window)."""
    cases = [(c, True) for c in SINK_TILE_CASES]
    g = torch.Generator().manual_seed(1007)
    for _ in range(3):                                        # sizes the sheet does not print
        b = [4, 8, 16][int(torch.randint(0, 3, (1,), generator=g))]
        n = int(torch.randint(2 * b, 200, (1,), generator=g))
        cases.append(((n, int(torch.randint(2, n, (1,), generator=g)), int(torch.randint(0, 20, (1,), generator=g)),
                       b), True))
    cases += [((1 << 20, 4097, 4, 128), False), ((1_000_003, 2000, 130, 64), False)]   # too long for an n × n mask
    first_failure = None
    for (n, W, s, b), small in cases:
        name = f"sink_window_tiles(n={n}, window={W}, sinks={s}, block={b})"
        try:
            got = call_student(tiles_fn, n, W, s, b, name="sink_window_tiles")
        except AssertionError as exc:
            if not small and ("memory" in str(exc).lower() or "alloc" in str(exc).lower()):
                raise AssertionError(f"{name}: ran out of memory — count the tiles from the block indices, without "
                                     f"building the n × n mask ({n}² booleans)") from None
            raise
        got = expect_number(name, got)
        want = _sink_window_tiles(n, W, s, b)
        if small and want != int(block_layout(_sink_window_mask(n, W, s), b).sum()):   # the mask's real tiles
            raise RuntimeError(f"{name}: the reference count disagrees with block_layout of the mask")
        if got == want:
            continue
        n_blocks = -(-n // b)
        mistakes = {
            "the lowest key of a query block is reached by its FIRST row (rb − W + 1), not its last":
                _sink_window_tiles(n, W, s, b, lo_row="last"),
            "the sink tiles were counted again where the window already covers them: count the union":
                _sink_window_tiles(n, W, s, b, union_overlap=False),
            "the sink keys fill ⌈sinks / b⌉ tiles: a partly filled tile is computed whole":
                _sink_window_tiles(n, W, s, b, sink_tiles=s // b),
            "the sinks were forgotten: every query also attends to the first `sinks` keys":
                _sink_window_tiles(n, W, 0, b),
            "the last, partial query block was forgotten: there are ⌈n / b⌉ query blocks":
                _sink_window_tiles(n, W, s, b, partial_last=False),
            "a window of W + 1 keys (Mistral's convention); here the window holds W keys, i − W + 1 … i":
                _sink_window_tiles(n, W, s, b, keys_back=W),
            "counted non-zeros / b²: a tile is computed whole as soon as one of its entries is kept":
                -(-_nnz_sink_window(n, W, s) // (b * b)),
            "⌈W / b⌉ + 1 window tiles for every query block: near the start the window is cut at key 0 "
            "(and the sinks add tiles)": n_blocks * (-(-W // b) + 1),
        }
        matched = [message for message, alt in mistakes.items() if alt != want and got == alt]
        if len(matched) == 1:
            raise AssertionError(f"{name}: {matched[0]}")
        first_failure = first_failure or (f"{name}: expected {want} tiles; got {got:g}"
                                          + (f" (likely: {matched[0]}; or: {matched[1]})" if matched else ""))
        # several mistakes give this number here: look at the next case to tell them apart
    if first_failure:
        raise AssertionError(first_failure)
    passed("sink_window_tiles", len(cases))


def _nnz_sink_window(n: int, window: int, sinks: int) -> int:
    """Non-zeros of the sinks + window pattern: Σ_i min(i + 1, W) window keys plus Σ_i min(sinks, i − W + 1)
    sink keys outside the window."""
    window_part = n * window - window * (window - 1) // 2 if n >= window else n * (n + 1) // 2
    M = max(0, n - window)                          # rows whose window leaves m = 1 … M keys out at the start
    sink_part = M * (M + 1) // 2 if M <= sinks else sinks * (sinks + 1) // 2 + (M - sinks) * sinks
    return window_part + sink_part
