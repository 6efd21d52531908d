"""course_lib.diagrams: every diagram draws for a range of arguments, shows what it claims (labels
and cells read back from the matplotlib artists, counted against an independent computation),
rejects bad arguments by name, and every chapter shows one."""

from __future__ import annotations

import json
import math
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from course_lib import diagrams as D  # noqa: E402
from tests.helpers import ROOT, notebooks  # noqa: E402

FUNCTIONS = [n for n in D.__all__ if n not in ("PALETTE", "A100")]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def texts(fig) -> list[str]:
    """Every string the figure shows: text artists, titles, axis labels, tick labels, suptitle."""
    out = [t.get_text() for t in fig.findobj(Text)]
    return [t for t in out if t]


def joined(fig) -> str:
    return "\n".join(texts(fig))


def cells(fig, color: str) -> int:
    """How many grid cells (pixels of the figure's images) have exactly ``color``."""
    want = np.array(mcolors.to_rgb(color))
    return int(sum(np.all(np.isclose(np.asarray(im.get_array())[..., :3], want), axis=-1).sum()
                   for ax in fig.axes for im in ax.images))


# ----------------------------------------------------------------------------- every function
def test_all_issue_diagrams_exist():
    # the 17 pictures of issue 15, as functions (7 and 8 are two functions each)
    assert len(FUNCTIONS) >= 17
    for name in FUNCTIONS:
        assert callable(getattr(D, name)), name


@pytest.mark.parametrize("name", FUNCTIONS)
def test_defaults_return_a_figure_at_most_book_width_on_an_opaque_panel(name):
    fig = getattr(D, name)()
    assert isinstance(fig, matplotlib.figure.Figure)
    w, h = fig.get_size_inches()
    assert 2 <= w <= 8.0 and 1.5 <= h <= 8.0, (w, h)
    assert mcolors.to_rgba(fig.get_facecolor()) == mcolors.to_rgba(D.PALETTE["panel"])   # readable in dark mode
    assert texts(fig), "a diagram without labels"


def test_palette_is_one_colour_per_concept():
    for key in ("q", "k", "v", "allowed", "blocked", "cache", "norm", "attn", "ffn"):
        mcolors.to_rgba(D.PALETTE[key])
    concepts = [D.PALETTE[k] for k in ("q", "k", "v", "out", "allowed", "blocked", "cache", "new")]
    assert len(set(concepts)) == len(concepts), "two concepts share a colour"


# ----------------------------------------------------------------------------- per diagram
def test_seq2seq_bottleneck_states_and_labels():
    for n_src, n_tgt in [(2, 1), (5, 4), (8, 6)]:
        fig = D.seq2seq_bottleneck(n_src, n_tgt)
        s = texts(fig)
        assert sum(t == f"$h_{n_src}$" for t in s) == 2           # both panels
        assert f"$h_{n_src + 1}$" not in s
        assert sum(t == f"$s_{n_tgt}$" for t in s) == 2
        assert "$c = h_n$" in s
        plt.close(fig)


@pytest.mark.parametrize("kw", [{}, dict(B=2, T=5, S=7, d_k=16, d_v=8), dict(heads="h"), dict(heads=4, mask=False)])
def test_sdpa_shapes(kw):
    fig = D.sdpa(**kw)
    s = joined(fig)
    B, T, S = str(kw.get("B", "B")), str(kw.get("T", "T")), str(kw.get("S", "S"))
    heads = kw.get("heads")
    lead = f"{B}, {heads}, " if heads is not None else f"{B}, "
    assert f"$[{lead}{T}, {S}]$" in s                 # the score matrix
    assert f"$[{lead}{T}, " in s and "$O$" in s and "softmax" in s
    assert ("$+\\, M$" in s) == kw.get("mask", True)


@pytest.mark.parametrize("h", [1, 2, 4, 6, 8, 12, 64])
def test_multi_head_draws_h_heads(h):
    fig = D.multi_head(n_heads=h)
    heads = sorted(int(m.group(1)) for t in texts(fig) if (m := re.match(r"head (\d+):", t)))
    assert heads == (list(range(1, h + 1)) if h <= 6 else [1, 2, 3, h])
    s = joined(fig)
    for label in ("$W^Q$", "$W^K$", "$W^V$", "$W^O$", "concat"):
        assert label in s


def test_multi_head_numeric_head_width():
    fig = D.multi_head(n_heads=8, d_model=512)
    assert "$d_k = 64$" in joined(fig)


@pytest.mark.parametrize("placement", ["post", "pre"])
@pytest.mark.parametrize("n_layers", [1, 6, "N"])
def test_encoder_decoder(placement, n_layers):
    fig = D.encoder_decoder(n_layers, placement)
    s = texts(fig)
    assert s.count(f"$\\times {n_layers}$") == 2
    assert "multi-head\ncross-attention" in s and "masked multi-head\nself-attention" in s
    assert s.count("LayerNorm") == 5                  # one per residual sub-layer: 2 encoder + 3 decoder


@pytest.mark.parametrize("T, length, T_new", [(2, 1, 1), (6, 4, 2), (9, 9, 9), (16, 3, 5)])
def test_masks_cells_count_what_the_masks_allow(T, length, T_new):
    fig = D.masks(T, length, T_new)
    allowed = cells(fig, D.PALETTE["allowed"])
    causal = T * (T + 1) // 2
    padding = T * length
    both = sum(min(i + 1, length) for i in range(T))
    cached = sum(i + (T - T_new) + 1 for i in range(T_new))      # bottom-right aligned
    assert allowed == causal + padding + both + cached
    assert f"KV cache: $T = {T_new}$, $S = {T}$" in texts(fig)


@pytest.mark.parametrize("h, g", [(1, 1), (4, 2), (8, 2), (8, 8), (16, 4), (12, 3)])
def test_head_sharing_groups(h, g):
    fig = D.head_sharing(h, g)
    s = texts(fig)
    assert f"$h = {h}$, $h_{{kv}} = {g}$" in "\n".join(s)
    k_labels = [t for t in s if re.fullmatch(r"\$k_\{\d+\}\$", t)]
    if h <= 8:                                        # room for a label on every K/V head of all three rows
        assert len(k_labels) == h + g + 1
    # one line from every query head to the K/V head it reads; per row, h, g and 1 distinct K/V heads
    assert len(fig.axes[0].lines) == 3 * h
    rows = {}
    for line in fig.axes[0].lines:
        rows.setdefault(round(line.get_ydata()[1], 6), set()).add(round(line.get_xdata()[1], 6))
    assert sorted(len(v) for v in rows.values()) == sorted([h, g, 1])


@pytest.mark.parametrize("P, steps", [(1, 1), (3, 4), (12, 10)])
def test_kv_cache_growth(P, steps):
    s = texts(D.kv_cache_growth(P, steps))
    for r in range(1, steps + 1):
        assert f"attends to {P + r} keys" in s
    assert f"attends to {P + steps + 1} keys" not in s


@pytest.mark.parametrize("W, n", [(1, 3), (4, 10), (5, 16), (12, 4)])
def test_rolling_buffer_slots(W, n):
    fig = D.rolling_buffer(W, n)
    s = texts(fig)
    for i in range(n):
        line = f"{i} mod {W} = {i % W}" + (f", overwrites {i - W}" if i >= W else "")
        assert line in s
    # the last row holds the last min(W, n) tokens, each in slot i mod W
    last = {t for t in range(max(0, n - W), n)}
    assert last <= {int(t) for t in s if t.isdigit()}


def test_memory_hierarchy_numbers_are_chapter_5s():
    # the diagram's numbers must be the ones the chapter cites (its table, from the FlashAttention paper)
    nb = json.loads((ROOT / "notebooks" / "05_flash.ipynb").read_text())
    table = next("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"
                 and "| GPU HBM" in "".join(c["source"]))
    s = joined(D.memory_hierarchy())
    for name, bw, size in D.A100["levels"]:
        assert f"{bw}, {size}" in s
        assert bw in table and size.lstrip("> ") in table
    assert "Dao et al. (2022)" in s


def test_roofline_ridge_and_bounds():
    fig = D.roofline()
    s = joined(fig)
    assert "208 FLOP/byte" in s and "peak 312 TFLOP/s" in s and "1.5 TB/s" in s
    # memory-bound points in the score colour, compute-bound in the value colour
    ax = fig.axes[0]
    dots = [(l.get_xdata()[0], l.get_color()) for l in ax.lines if l.get_marker() == "o"]
    assert len(dots) == 4
    for x, col in dots:
        assert col == (D.PALETTE["score"] if x < 208 else D.PALETTE["v"])
    assert dots[0][0] == pytest.approx(0.25) and dots[1][0] == pytest.approx(1.25)   # mask, softmax: N²-elementwise
    plt.close(fig)
    fig = D.roofline(peak_flops=100e12, bandwidth=1e12, N=256, d=128)
    assert "100 FLOP/byte" in joined(fig)


@pytest.mark.parametrize("Tr, Tc, causal", [(1, 1, False), (4, 4, False), (4, 4, True), (3, 5, True), (8, 2, False)])
def test_flash_tiling_visit_order(Tr, Tc, causal):
    fig = D.flash_tiling(Tr, Tc, (Tr - 1, 0), order="both", causal=causal)
    numbers = sorted(int(t) for t in texts(fig) if t.isdigit())
    # independent count of the tiles a causal kernel computes: key block j starts at j·N/Tc, query
    # block i ends at (i+1)·N/Tr − 1; the tile is needed when the first key is not after the last query
    N = Tr * Tc * 4
    needed = sum(1 for i in range(Tr) for j in range(Tc)
                 if not causal or j * (N // Tc) <= (i + 1) * (N // Tr) - 1)
    assert numbers == sorted(list(range(1, needed + 1)) * 2)
    s = joined(fig)
    assert "outer loop: $K_j, V_j$ (→)" in s and "outer loop: $Q_i$ (↓)" in s


def test_flash_tiling_orders_differ():
    a = D.flash_tiling(3, 3, (1, 2), order="fa1")
    b = D.flash_tiling(3, 3, (1, 2), order="fa2")
    # the highlighted tile (row 1, column 2) is step 3·2 + 1 + 1 = 8 in FA1 (column-major), 1·3 + 2 + 1 = 6 in FA2
    assert "step 8: in SRAM" in joined(a) and "step 6: in SRAM" in joined(b)


@pytest.mark.parametrize("m, n, shift", [(3, 1, 2), (0, 5, 7), (10, 10, 0)])
def test_rope_angle_depends_on_offset_only(m, n, shift):
    fig = D.rope(m, n, theta=0.3, shift=shift)
    angles = [t for t in texts(fig) if re.fullmatch(r"\$-?\d+\.\d\d\$", t)]
    assert len(angles) == 2 and angles[0] == angles[1]          # same angle after the shift
    assert f"$m - n = {m - n}$" in joined(fig)


@pytest.mark.parametrize("n_heads, T", [(1, 2), (8, 6), (12, 12)])
def test_alibi_slopes_and_cells(n_heads, T):
    from course_lib.positional import alibi_slopes

    fig = D.alibi(n_heads, T)
    s = joined(fig)
    shown = sorted({1, min(2, n_heads), n_heads})
    for h in shown:
        exp = math.log2(alibi_slopes(n_heads)[h - 1].item())
        assert f"head {h}: $m_{{{h}}} = 2^{{{exp:.3g}}}$" in s
    assert sum(t == f"{-(T - 1)}" for t in texts(fig)) == len(shown)     # the farthest key, once per head
    blocked = cells(fig, D.PALETTE["blocked"])
    assert blocked == len(shown) * T * (T - 1) // 2


@pytest.mark.parametrize("act, name", [("sigmoid", "GLU"), ("relu", "ReGLU"), ("gelu", "GEGLU"), ("silu", "SwiGLU"),
                                       ("none", "Bilinear")])
def test_ffn_glu_names(act, name):
    s = joined(D.ffn_glu(act, d_model=64, d_ff=172))
    assert f"{name}: $(" in s and "gate $W$: $64 \\times 172$" in s and "up $V$" in s and "down $W_2$" in s


@pytest.mark.parametrize("T, n, k, cf, seed", [(6, 4, 2, 1.0, 0), (10, 8, 1, 0.5, 3), (4, 2, 2, 2.0, 1), (1, 1, 1, 1.0, 0)])
def test_moe_drops_what_overflows_capacity(T, n, k, cf, seed):
    import torch

    from course_lib.moe import top_k_gating

    fig = D.moe(T, n, k, cf, seed)
    s = texts(fig)
    logits = torch.randn(T, n, generator=torch.Generator().manual_seed(seed))
    _, idx, _ = top_k_gating(logits, k)
    C = math.ceil(cf * k * T / n)
    seen, dropped = [0] * n, 0                       # first come, first served in (token, slot) order
    for t in range(T):
        for r in range(k):
            e = int(idx[t, r])
            dropped += seen[e] >= C
            seen[e] += 1
    assert s.count("×") == dropped
    assert f"capacity $C = {C}$" in s
    assert sum(t.startswith("$y_") for t in s) == T


@pytest.mark.parametrize("placements", [("post", "pre", "sandwich"), ("pre",), ("sandwich", "post")])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_norm_placement(placements, norm):
    s = texts(D.norm_placement(placements, norm))
    label = "LayerNorm" if norm == "layernorm" else "RMSNorm"
    assert s.count(label) == sum(2 if p == "sandwich" else 1 for p in placements)
    assert s.count("sub-layer $F$\n(attention or FFN)") == len(placements)


@pytest.mark.parametrize("n, W, dil, stride, c, b", [(16, 4, 2, 4, 1, 4), (8, 1, 1, 2, 2, 3), (32, 8, 3, 6, 2, 8)])
def test_sparse_patterns_counts(n, W, dil, stride, c, b):
    fig = D.sparse_patterns(n, W, dil, (0,), stride, c, b)
    s = joined(fig)
    total = n * (n + 1) // 2
    window = sum(min(i + 1, W) for i in range(n))
    dilated = sum(sum(1 for t in range(W) if t * dil <= i) for i in range(n))
    assert f"{window} of {total} causal pairs" in s
    assert f"{dilated} of {total} causal pairs" in s
    nb = -(-n // b)
    assert re.search(rf"\d+ of {nb * nb} blocks computed", s)


def test_mixed_precision_loop_labels():
    s = joined(D.mixed_precision_loop(init_scale=2.0 ** 10, growth_factor=4.0, backoff_factor=0.25,
                                      growth_interval=100))
    for label in ("fp32 master", "cast to fp16", "scale the loss", "unscale in fp32", "inf or NaN",
                  "$S \\leftarrow 0.25\\, S$", "after 100 clean steps", "$S \\leftarrow 4\\, S$", "$2^{10}$"):
        assert label in s, label


@pytest.mark.parametrize("n, B", [(10, 4), (16, 4), (1, 1), (33, 8), (40, 32)])
def test_triton_grid_masks_the_ragged_edge(n, B):
    fig = D.triton_grid(n, B)
    programs = math.ceil(n / B)
    s = texts(fig)
    hatched = [p for ax in fig.axes for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert len(hatched) == programs * B - n
    assert f"Triton launch grid: {programs} programs × BLOCK = {B} lanes" in s


def test_architectures_highlight_changes():
    fig = D.architectures()
    s = texts(fig)
    for name in ("GPT-2", "LLaMA-3", "Mistral / Mixtral", "Gemma-2"):
        assert name in s
    assert "SwiGLU" in s and "GeGLU" in s and "final LayerNorm" in s
    red = mcolors.to_rgba(D.PALETTE["new"])
    one = D.architectures(("GPT-2",))
    assert not [p for p in one.axes[0].patches if p.get_edgecolor() == red]        # nothing to compare with
    same = D.architectures(("LLaMA-3", "LLaMA-3"))
    assert not [p for p in same.axes[0].patches if p.get_edgecolor() == red]
    assert [p for p in fig.axes[0].patches if p.get_edgecolor() == red]


# ----------------------------------------------------------------------------- bad arguments
BAD = [
    ("seq2seq_bottleneck", dict(n_src=1), "n_src"),
    ("seq2seq_bottleneck", dict(n_tgt=0), "n_tgt"),
    ("sdpa", dict(T=0), "T"),
    ("sdpa", dict(heads=-1), "heads"),
    ("sdpa", dict(mask="yes"), "mask"),
    ("multi_head", dict(n_heads=0), "n_heads"),
    ("multi_head", dict(n_heads=3, d_model=512), "d_model"),
    ("multi_head", dict(n_heads=2.0), "n_heads"),
    ("encoder_decoder", dict(placement="sandwich"), "placement"),
    ("encoder_decoder", dict(n_layers=0), "n_layers"),
    ("masks", dict(T=6, length=7), "length"),
    ("masks", dict(T_new=0), "T_new"),
    ("head_sharing", dict(n_heads=8, n_kv_heads=3), "n_kv_heads"),
    ("head_sharing", dict(n_heads=4, n_kv_heads=8), "n_kv_heads"),
    ("kv_cache_growth", dict(prompt_len=3, steps=4, max_len=5), "max_len"),
    ("kv_cache_growth", dict(steps=0), "steps"),
    ("rolling_buffer", dict(window=0), "window"),
    ("memory_hierarchy", dict(levels=[]), "levels"),
    ("memory_hierarchy", dict(levels=[("SRAM", "19 TB/s")]), "levels"),
    ("roofline", dict(peak_flops=-1.0), "peak_flops"),
    ("roofline", dict(bandwidth=float("inf")), "bandwidth"),
    ("flash_tiling", dict(order="fa3"), "order"),
    ("flash_tiling", dict(n_q_blocks=2, step=(2, 0)), r"step\[0\]"),
    ("flash_tiling", dict(step=3), "step"),
    ("rope", dict(theta=4.0), "theta"),
    ("rope", dict(m=-1), "m"),
    ("alibi", dict(n_heads=8, heads=[9]), "heads"),
    ("alibi", dict(T=1), "T"),
    ("ffn_glu", dict(activation="tanh"), "activation"),
    ("moe", dict(n_experts=4, top_k=5), "top_k"),
    ("moe", dict(capacity_factor=0), "capacity_factor"),
    ("norm_placement", dict(placements=("middle",)), "placements"),
    ("norm_placement", dict(norm="batchnorm"), "norm"),
    ("sparse_patterns", dict(global_idx=(16,)), "global_idx"),
    ("sparse_patterns", dict(stride=2, c=3), "c"),
    ("mixed_precision_loop", dict(backoff_factor=1.5), "backoff_factor"),
    ("mixed_precision_loop", dict(growth_interval=0), "growth_interval"),
    ("triton_grid", dict(block_size=6), "block_size"),
    ("triton_grid", dict(n_elements=0), "n_elements"),
    ("pretraining_objectives", dict(n_tokens=1), "n_tokens"),
    ("pretraining_objectives", dict(masked=()), "masked"),
    ("pretraining_objectives", dict(masked=(6,)), "masked"),
    ("pretraining_objectives", dict(split=6), "split"),
    ("architectures", dict(models=("GPT-3",)), "models"),
]


@pytest.mark.parametrize("name, kwargs, arg", BAD, ids=[f"{n}-{a}" for n, _, a in BAD])
def test_bad_arguments_name_the_argument(name, kwargs, arg):
    with pytest.raises(ValueError, match=rf"^{arg}:"):
        getattr(D, name)(**kwargs)


def test_every_function_has_a_bad_argument_test():
    assert {n for n, _, _ in BAD} == set(FUNCTIONS)


# ----------------------------------------------------------------------------- chapters
@pytest.mark.parametrize("path", notebooks("notebooks"), ids=lambda p: p.name)
def test_every_chapter_draws_a_diagram(path):
    nb = json.loads(path.read_text())
    calls = [c for c in nb["cells"] if c["cell_type"] == "code" and "diagrams." in "".join(c["source"])]
    assert calls, f"{path.name} shows no course_lib.diagrams figure"
    for c in calls:
        assert not c.get("outputs"), "lecture notebooks are stored without outputs"
        for name in re.findall(r"diagrams\.(\w+)\(", "".join(c["source"])):
            assert name in FUNCTIONS, name


def test_pretraining_objectives_hides_what_it_says_and_predicts_the_next_token():
    for n, masked, split in [(6, (1, 4), 3), (10, (0, 9), 1), (3, (2,), 2)]:
        fig = D.pretraining_objectives(n, masked, split)
        s = texts(fig)
        assert s.count("[M]") == len(set(masked))                          # one [MASK] box per hidden position
        assert s.count("[CLS]") == 1 and s.count("[SEP]") == 2 and "IsNext / NotNext" in s
        targets = [t for t in s if t.startswith("$x_{")]
        # GPT row: inputs x_1 … x_n and targets x_2 … x_n; MLM row: n inputs minus the hidden + the hidden targets
        assert len(targets) == n + (n - 1) + n
        assert s.count("A") == split + 2 and s.count("B") == n - split + 1   # segment labels
