"""Schematic diagrams for every chapter, drawn with matplotlib (no image files).

Each function draws one picture a teacher would draw on the board, returns the
:class:`matplotlib.figure.Figure`, and takes the sizes a reader may want to change (number of
heads, window, block size …). The chapters call them before the formula they explain::

    from course_lib import diagrams
    diagrams.multi_head(n_heads=4);

Conventions, shared by all diagrams:

* one palette, :data:`PALETTE`: queries, keys, values, masks, caches and the parts of a block have
  the same colour in every chapter;
* labels in the course's notation (``book/notation.md``): ``T`` queries, ``S`` keys, ``h`` heads,
  ``h_kv`` key/value heads, ``d_k`` head width, ``d_model`` model width, ``d_ff`` FFN width;
* an opaque white panel behind each figure, so it reads the same in the book's light and dark
  themes;
* sizes at most 8 inches wide: the book's text column.

Mask grids are drawn from the same functions the chapters use (``course_lib.masks``,
``course_lib.sparse``, ``course_lib.moe``, ``course_lib.positional``), so a diagram cannot
disagree with the code. The numbers on the memory-hierarchy and roofline diagrams are the
NVIDIA A100 figures quoted by FlashAttention (Dao et al., 2022), the same as in Chapter 5.

Invalid arguments raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyBboxPatch, Polygon, Rectangle

from course_lib.masks import causal_mask, combine_masks, padding_mask
from course_lib.moe import capacity_keep_mask, expert_capacity, top_k_gating
from course_lib.positional import alibi_slopes
from course_lib.sparse import (block_layout, dilated_window_mask, fixed_pattern, global_tokens_mask,
                               sliding_window_mask, strided_pattern, union)

__all__ = [
    "PALETTE",
    "A100",
    "seq2seq_bottleneck",
    "sdpa",
    "multi_head",
    "encoder_decoder",
    "masks",
    "head_sharing",
    "kv_cache_growth",
    "rolling_buffer",
    "memory_hierarchy",
    "roofline",
    "flash_tiling",
    "rope",
    "alibi",
    "ffn_glu",
    "moe",
    "norm_placement",
    "sparse_patterns",
    "mixed_precision_loop",
    "triton_grid",
    "architectures",
    "pretraining_objectives",
]

# ----------------------------------------------------------------------------- palette
#: One colour per concept, used by every diagram of the course.
PALETTE = {
    "q": "#4C72B0",          # queries
    "k": "#DD8452",          # keys
    "v": "#55A868",          # values
    "out": "#8172B3",        # attention output, concatenated heads
    "score": "#C44E52",      # scores / attention weights
    "allowed": "#F2C45A",    # mask: may attend
    "allowed2": "#55A868",   # mask: a second pattern (strided A², global tokens)
    "blocked": "#5B5B5B",    # mask: may not attend
    "cache": "#9A7FC9",      # KV cache slots
    "new": "#D62728",        # the newest token / the current step / a difference
    "norm": "#E6D36B",       # LayerNorm / RMSNorm
    "attn": "#F4A582",       # attention sub-layer
    "ffn": "#7FBCE0",        # feed-forward sub-layer
    "embed": "#C7C7C7",      # embeddings, linear maps
    "sram": "#55A868",
    "hbm": "#4C72B0",
    "dram": "#8C8C8C",
    "panel": "#FFFFFF",      # figure background (opaque, for dark themes)
    "text": "#1A1A1A",
    "edge": "#333333",
    "muted": "#7F7F7F",
}

#: NVIDIA A100 numbers as quoted by Dao et al. (2022), FlashAttention, Fig. 1 and §1; Chapter 5.
A100 = {
    "levels": [("SRAM", "19 TB/s", "20 MB"), ("HBM", "1.5 TB/s", "40 GB"), ("DRAM", "12.8 GB/s", "> 1 TB")],
    "peak_flops": 312e12,      # fp16 tensor cores, FLOP/s
    "hbm_bandwidth": 1.5e12,   # bytes/s
}

_FONT = 10


# ----------------------------------------------------------------------------- checks
def _int(name: str, value, lo: int = 1, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f"≥ {lo}"
        raise ValueError(f"{name}: expected an int {rng}; got {value!r}")
    return value


def _number(name: str, value, ok, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name}: expected {expected}; got {value!r}")
    return float(value)


def _size(name: str, value) -> str:
    """A size shown on a diagram: a symbol (str) or a positive int."""
    if isinstance(value, str) and value:
        return value
    _int(name, value, 1)
    return str(value)


def _choice(name: str, value, options: Sequence):
    if value not in options:
        raise ValueError(f"{name}: expected one of {list(options)}; got {value!r}")
    return value


# ----------------------------------------------------------------------------- drawing helpers
def _tint(color: str, amount: float = 0.55) -> tuple:
    """``color`` mixed with white: a light fill on which dark text stays legible."""
    r, g, b = mcolors.to_rgb(color)
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


def _canvas(width: float, height: float):
    """A figure whose data coordinates are inches: (0, 0) bottom left, (width, height) top right."""
    fig = plt.figure(figsize=(width, height))
    fig.patch.set_facecolor(PALETTE["panel"])
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_autoscale_on(False)          # images (grids) must not move the limits
    ax.axis("off")
    return fig, ax


def _fit_height(fig, ax, height: float) -> None:
    """Crop or extend an inch canvas (see :func:`_canvas`) to ``height`` inches, keeping its scale."""
    fig.set_size_inches(fig.get_size_inches()[0], height)
    ax.set_ylim(0, height)


def _box(ax, x, y, w, h, text="", color="embed", *, fontsize=_FONT, tint=0.55, edge=None, lw=1.0,
         weight="normal", text_color=None):
    """A box centred at (x, y), w × h inches, filled with a light tint of ``PALETTE[color]``."""
    fill = _tint(PALETTE.get(color, color), tint)
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.05",
                                facecolor=fill, edgecolor=PALETTE.get(edge, edge) if edge else PALETTE["edge"],
                                lw=lw, zorder=2))
    if text:
        ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, color=text_color or PALETTE["text"],
                weight=weight, zorder=3)


def _arrow(ax, start, end, *, color="edge", lw=1.1, style="-|>", ls="-", text=None, fontsize=_FONT - 1,
           text_offset=(0.0, 0.0)):
    ax.annotate("", xy=end, xytext=start, zorder=1,
                arrowprops=dict(arrowstyle=style, color=PALETTE.get(color, color), lw=lw, ls=ls,
                                shrinkA=0, shrinkB=0, mutation_scale=10))
    if text:
        mx, my = (start[0] + end[0]) / 2 + text_offset[0], (start[1] + end[1]) / 2 + text_offset[1]
        ax.text(mx, my, text, fontsize=fontsize, ha="center", va="center", color=PALETTE["text"], zorder=3)


def _line(ax, xs, ys, color="edge", lw=1.1, ls="-"):
    ax.plot(xs, ys, color=PALETTE.get(color, color), lw=lw, ls=ls, zorder=1, solid_capstyle="butt")


def _plus(ax, x, y, r=0.09):
    ax.add_patch(Circle((x, y), r, facecolor=PALETTE["panel"], edgecolor=PALETTE["edge"], lw=1.0, zorder=2))
    ax.text(x, y, "+", ha="center", va="center", fontsize=_FONT, zorder=3, color=PALETTE["text"])


def _title(ax, x, y, text, fontsize=_FONT + 1, ha="center"):
    ax.text(x, y, text, ha=ha, va="center", fontsize=fontsize, weight="bold", color=PALETTE["text"])


def _grid(ax, x0, y0, cell, values, colors, *, row_labels=None, col_labels=None, texts=None,
          fontsize=_FONT - 2, edge="#FFFFFF"):
    """Draw a 2-D grid of cells with its top-left corner at (x0, y0), row 0 at the top.

    ``values[i][j]`` indexes ``colors``. The cells are one image (fast for large grids, and the
    test reads the colours back from it) with thin ``edge`` lines between them.
    """
    n_rows, n_cols = len(values), len(values[0]) if len(values) else 0
    rgb = [[mcolors.to_rgb(colors[v]) for v in row] for row in values]
    x1, y1 = x0 + n_cols * cell, y0 - n_rows * cell
    ax.imshow(rgb, extent=(x0, x1, y1, y0), interpolation="nearest", aspect="auto", zorder=2)
    ax.vlines([x0 + j * cell for j in range(n_cols + 1)], y1, y0, colors=edge, lw=0.6, zorder=2.5)
    ax.hlines([y0 - i * cell for i in range(n_rows + 1)], x0, x1, colors=edge, lw=0.6, zorder=2.5)
    if texts is not None:
        for i in range(n_rows):
            for j in range(n_cols):
                if texts[i][j] == "":
                    continue
                r, g, b = rgb[i][j]
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(x0 + (j + 0.5) * cell, y0 - (i + 0.5) * cell, texts[i][j], ha="center", va="center",
                        fontsize=fontsize, color="white" if dark else PALETTE["text"], zorder=3)
    if row_labels is not None:
        for i, lab in enumerate(row_labels):
            ax.text(x0 - 0.05, y0 - (i + 0.5) * cell, lab, ha="right", va="center", fontsize=fontsize,
                    color=PALETTE["text"])
    if col_labels is not None:
        for j, lab in enumerate(col_labels):
            ax.text(x0 + (j + 0.5) * cell, y0 + 0.05, lab, ha="center", va="bottom", fontsize=fontsize,
                    color=PALETTE["text"])


def _mask_grid(ax, x0, y0, cell, mask, *, labels=True, fontsize=_FONT - 2):
    """A boolean ``[T, S]`` mask as a grid: rows are queries i, columns keys j."""
    rows = [[1 if bool(v) else 0 for v in row] for row in mask.tolist()]
    T, S = len(rows), len(rows[0])
    _grid(ax, x0, y0, cell, rows, [PALETTE["blocked"], PALETTE["allowed"]],
          row_labels=[str(i) for i in range(T)] if labels else None,
          col_labels=[str(j) for j in range(S)] if labels else None, fontsize=fontsize)


# ----------------------------------------------------------------------------- block drawing
_NORM_TEXT = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm"}
_BOX_H, _GAP = 0.34, 0.16


def _sublayer(ax, x, y, w, label, color, placement, norm="LayerNorm", *, highlight=(), fontsize=_FONT - 1,
              box_h=_BOX_H, gap=_GAP):
    """One residual sub-layer drawn from y upward in the given norm placement; returns its top y.

    ``placement``: ``"post"`` (sub-layer, add, norm), ``"pre"`` (norm, sub-layer, add) or
    ``"sandwich"`` (norm, sub-layer, norm, add). ``highlight``: the parts drawn with a red edge
    (``"norm"``, ``"sublayer"``, ``"norm2"``).
    """
    parts = {"post": ["sublayer", "add", "norm"], "pre": ["norm", "sublayer", "add"],
             "sandwich": ["norm", "sublayer", "norm2", "add"]}[placement]
    y_in = y
    _line(ax, [x, x], [y, y + gap])
    cur = y + gap
    for part in parts:
        if part == "add":
            cy = cur + 0.09
            _plus(ax, x, cy)
            # the residual path: from the sub-layer's input around the right side into the ⊕
            xr = x + w / 2 + 0.14
            _line(ax, [x, xr, xr], [y_in + gap * 0.5, y_in + gap * 0.5, cy])
            _arrow(ax, (xr, cy), (x + 0.09, cy))
            cur = cy + 0.09
        else:
            text = label if part == "sublayer" else norm
            col = color if part == "sublayer" else "norm"
            h = box_h if part == "sublayer" else box_h * 0.78
            red = part in highlight
            _box(ax, x, cur + h / 2, w, h, text, col, fontsize=fontsize, edge="new" if red else None,
                 lw=2.2 if red else 1.0)
            cur += h
        _arrow(ax, (x, cur), (x, cur + gap))
        cur += gap
    return cur


def _shape(*dims) -> str:
    return "$[" + ", ".join(dims) + "]$"


def _sym(s: str) -> str:
    """A size for mathtext: ``d_model`` -> ``d_{model}``, ``8`` -> ``8``."""
    return s.replace("d_model", "d_{\\mathrm{model}}").replace("d_ff", "d_{\\mathrm{ff}}").replace("h_kv", "h_{kv}")


# ============================================================================= Chapter 1
def seq2seq_bottleneck(n_src: int = 5, n_tgt: int = 4) -> Figure:
    """A recurrent encoder–decoder squeezes the source into one vector ``c``; attention reads all states.

    Left: the encoder states ``h_1 … h_n``, of which only the last, ``c = h_n``, reaches the decoder.
    Right: every decoder state ``s_t`` reads all encoder states with weights ``α_{t,j}``.
    """
    _int("n_src", n_src, 2, 8)
    _int("n_tgt", n_tgt, 1, 6)
    W, H = 8.0, 3.55
    fig, ax = _canvas(W, H)
    for panel, x0 in (("rnn", 0.15), ("attention", 4.15)):
        step = min(0.55, 3.6 / (n_src + n_tgt + 0.8))
        ys, yt = 1.2, 2.35
        enc_x = [x0 + 0.25 + i * step for i in range(n_src)]
        dec_x = [enc_x[-1] + step * 1.2 + i * step for i in range(n_tgt)]
        for i, xe in enumerate(enc_x):
            _box(ax, xe, ys, 0.36, 0.34, f"$h_{i + 1}$", "k", fontsize=_FONT)
            _arrow(ax, (xe, ys - 0.52), (xe, ys - 0.17))
            ax.text(xe, ys - 0.64, f"$x_{i + 1}$", ha="center", va="center", fontsize=_FONT - 1)
            if i:
                _arrow(ax, (enc_x[i - 1] + 0.18, ys), (xe - 0.18, ys))
        for t, xd in enumerate(dec_x):
            _box(ax, xd, yt, 0.36, 0.34, f"$s_{t + 1}$", "q", fontsize=_FONT)
            _arrow(ax, (xd, yt + 0.17), (xd, yt + 0.5))
            ax.text(xd, yt + 0.62, f"$y_{t + 1}$", ha="center", va="center", fontsize=_FONT - 1)
            if t:
                _arrow(ax, (dec_x[t - 1] + 0.18, yt), (xd - 0.18, yt))
        if panel == "rnn":
            _arrow(ax, (enc_x[-1] + 0.18, ys + 0.1), (dec_x[0] - 0.12, yt - 0.17), color="new", lw=2.2)
            ax.text((enc_x[-1] + dec_x[0]) / 2 + 0.15, (ys + yt) / 2 - 0.05, "$c = h_n$",
                    fontsize=_FONT, color=PALETTE["new"], ha="left", va="center")
            _title(ax, x0 + 1.85, H - 0.2, "recurrent encoder–decoder: one vector $c$")
            ax.text(x0 + 1.85, 0.18, "the bottleneck: all of $x_1 \\dots x_n$ must fit in $c$",
                    ha="center", fontsize=_FONT - 1, color=PALETTE["text"])
        else:
            t_sel = min(1, n_tgt - 1)
            for xe in enc_x:
                _arrow(ax, (xe, ys + 0.17), (dec_x[t_sel] - 0.05, yt - 0.17), color="v", lw=1.0)
            ax.text(enc_x[len(enc_x) // 2] - 0.05, (ys + yt) / 2 + 0.08, "$\\alpha_{t,j}$", fontsize=_FONT,
                    color=PALETTE["v"], ha="right", va="center")
            _title(ax, x0 + 1.85, H - 0.2, "attention: every $s_t$ reads all $h_j$")
            ax.text(x0 + 1.85, 0.18, f"$s_{{{t_sel + 1}}}$ reads $\\sum_j \\alpha_{{{t_sel + 1},j}}\\, h_j$",
                    ha="center", fontsize=_FONT - 1, color=PALETTE["text"])
        ax.text(enc_x[0] - 0.25, ys, "encoder", rotation=90, ha="center", va="center", fontsize=_FONT - 1)
        ax.text(dec_x[0] - 0.27, yt, "decoder", rotation=90, ha="center", va="center", fontsize=_FONT - 1)
    _line(ax, [4.0, 4.0], [0.1, H - 0.1], color="muted", lw=0.6, ls=":")
    return fig


def sdpa(B="B", T="T", S="S", d_k="d_k", d_v="d_v", *, heads=None, mask: bool = True) -> Figure:
    """Scaled dot-product attention as a data flow, with the shape of every tensor.

    ``B, T, S, d_k, d_v`` (and ``heads``: None for one head, else a symbol or an int) are shown
    as given: symbols, or numbers the reader picks. ``mask`` adds the additive mask ``M``.
    """
    dims = {k: _sym(_size(k, v)) for k, v in dict(B=B, T=T, S=S, d_k=d_k, d_v=d_v).items()}
    lead = [dims["B"]] + ([_sym(_size("heads", heads))] if heads is not None else [])
    if not isinstance(mask, bool):
        raise ValueError(f"mask: expected a bool; got {mask!r}")
    W, H = 8.0, 2.9
    fig, ax = _canvas(W, H)
    yq, yk, yv = 2.25, 1.45, 0.55
    for y, name, col, rows, width in ((yq, "Q", "q", "T", "d_k"), (yk, "K", "k", "S", "d_k"),
                                      (yv, "V", "v", "S", "d_v")):
        _box(ax, 0.45, y, 0.5, 0.36, f"${name}$", col, fontsize=_FONT + 1)
        ax.text(0.45, y - 0.3, _shape(*lead, dims[rows], dims[width]), ha="center", va="center", fontsize=_FONT - 1)
    steps = [("$Q K^\\top$", "score"), ("$\\div \\sqrt{d_k}$", "score")]
    if mask:
        steps.append(("$+\\, M$", "blocked"))
    steps += [("softmax\nover $S$", "score"), ("$P\\, V$", "out")]
    xs = [1.65 + i * (5.0 / (len(steps) - 1 + 0.9)) for i in range(len(steps))]
    ymid = (yq + yk) / 2
    _arrow(ax, (0.7, yq), (xs[0] - 0.4, ymid + 0.08))
    _arrow(ax, (0.7, yk), (xs[0] - 0.4, ymid - 0.08))
    for i, (label, col) in enumerate(steps):
        last = i == len(steps) - 1
        y = (ymid + yv) / 2 if last else ymid
        _box(ax, xs[i], y, 0.8, 0.46, label, col, fontsize=_FONT)
        if not last:
            ax.text(xs[i], y - 0.36, _shape(*lead, dims["T"], dims["S"]), ha="center", va="center",
                    fontsize=_FONT - 1)
        if i:
            _arrow(ax, (xs[i - 1] + 0.4, ymid), (xs[i] - 0.4, y + 0.1 if last else y))
    _arrow(ax, (0.7, yv), (xs[-1] - 0.4, (ymid + yv) / 2 - 0.1))
    if mask:
        ax.text(xs[2], ymid + 0.42, "$M$: 0 allowed, $-\\infty$ blocked", ha="center", va="center",
                fontsize=_FONT - 1)
    yo = (ymid + yv) / 2
    _arrow(ax, (xs[-1] + 0.4, yo), (xs[-1] + 0.75, yo))
    _box(ax, xs[-1] + 1.05, yo, 0.5, 0.36, "$O$", "out", fontsize=_FONT + 1)
    ax.text(xs[-1] + 1.05, yo - 0.3, _shape(*lead, dims["T"], dims["d_v"]), ha="center", va="center",
            fontsize=_FONT - 1)
    ax.text(xs[len(steps) // 2], yv - 0.35,
            "$O = \\mathrm{softmax}(Q K^\\top / \\sqrt{d_k} + M)\\, V$: row $i$ of $O$ averages the rows of $V$",
            ha="center", va="center", fontsize=_FONT - 1)
    _title(ax, W / 2, H - 0.15, "scaled dot-product attention")
    return fig


# ============================================================================= Chapter 2
def multi_head(n_heads: int = 4, d_model="d_model", T="T", B="B") -> Figure:
    """Multi-head attention: project, split into h heads, attend per head, concatenate, ``W^O``.

    ``d_model`` may be a symbol or an int (then it must be divisible by ``n_heads``, and the head
    width ``d_k = d_model / h`` is shown as a number).
    """
    h = _int("n_heads", n_heads, 1, 64)
    dm = _size("d_model", d_model)
    if isinstance(d_model, int) and d_model % h:
        raise ValueError(f"d_model: expected a multiple of n_heads = {h}; got {d_model}")
    dk = str(d_model // h) if isinstance(d_model, int) else "d_k"
    dmS, Ts, Bs = _sym(dm), _sym(_size("T", T)), _sym(_size("B", B))
    W, H = 8.0, 3.7
    fig, ax = _canvas(W, H)
    ymid = 1.75
    _box(ax, 0.45, ymid, 0.55, 0.4, "$X$", "embed", fontsize=_FONT + 1)
    ax.text(0.45, ymid - 0.35, _shape(Bs, Ts, dmS), ha="center", fontsize=_FONT - 1, va="center")
    proj = [("$W^Q$", "q", ymid + 0.75), ("$W^K$", "k", ymid), ("$W^V$", "v", ymid - 0.75)]
    for label, col, y in proj:
        _arrow(ax, (0.75, ymid), (1.3, y))
        _box(ax, 1.6, y, 0.6, 0.38, label, col, fontsize=_FONT)
    ax.text(1.6, ymid - 1.22, f"each ${dmS} \\times {dmS}$", ha="center", fontsize=_FONT - 1)
    xs = 2.75
    _box(ax, xs, ymid, 0.75, 1.9, "split\ninto\n$h$ heads", "embed", fontsize=_FONT - 1)
    for _, _, y in proj:
        _arrow(ax, (1.9, y), (xs - 0.375, y))
    ax.text(xs, ymid - 1.12, _shape(Bs, "h", Ts, _sym(dk)), ha="center", fontsize=_FONT - 1)
    shown = list(range(h)) if h <= 6 else [0, 1, 2, None, h - 1]
    span = 2.7
    hh = min(0.42, span / len(shown) - 0.08)
    ys = [ymid + span / 2 - (i + 0.5) * span / len(shown) for i in range(len(shown))]
    xh, hw = 4.35, 0.98
    for i, y in zip(shown, ys):
        if i is None:
            ax.text(xh, y, "$\\vdots$", ha="center", va="center", fontsize=_FONT + 1)
            continue
        _box(ax, xh, y, 2 * hw, hh, f"head {i + 1}: Attention($Q_{{{i + 1}}}, K_{{{i + 1}}}, V_{{{i + 1}}}$)", "attn",
             fontsize=_FONT - 1)
        _arrow(ax, (xs + 0.375, ymid + (y - ymid) * 0.3), (xh - hw, y), lw=0.8)
    width = f"$d_k = {_sym(dk)}$" if dk != "d_k" else "$d_k = d_{\\mathrm{model}} / h$"
    ax.text(xh, ys[0] + hh / 2 + 0.14, f"$h = {h}$ heads of width {width}", ha="center", fontsize=_FONT - 1)
    xc = 5.9
    _box(ax, xc, ymid, 0.7, 1.9, "concat", "out", fontsize=_FONT - 1)
    for y in ys:
        _arrow(ax, (xh + hw, y), (xc - 0.35, ymid + (y - ymid) * 0.5), lw=0.8)
    ax.text(xc, ymid - 1.12, _shape(Bs, Ts, "h\\,d_v"), ha="center", fontsize=_FONT - 1)
    _arrow(ax, (xc + 0.35, ymid), (6.7, ymid))
    _box(ax, 7.0, ymid, 0.6, 0.4, "$W^O$", "out", fontsize=_FONT)
    ax.text(7.0, ymid + 0.4, f"$h\\,d_v \\times {dmS}$", ha="center", fontsize=_FONT - 1)
    _arrow(ax, (7.3, ymid), (7.6, ymid))
    ax.text(7.62, ymid - 0.35, _shape(Bs, Ts, dmS), ha="right", fontsize=_FONT - 1)
    _title(ax, W / 2, H - 0.13, "multi-head attention: split, attend per head, concatenate, $W^O$")
    return fig


def encoder_decoder(n_layers=6, placement: str = "post") -> Figure:
    """The Transformer: encoder block (self-attention, FFN), decoder block (masked self-attention,
    cross-attention, FFN), each repeated ``n_layers`` times, and how they connect.

    ``placement``: ``"post"`` (the original paper) or ``"pre"`` (GPT-2 and later).
    """
    N = _size("n_layers", n_layers)
    _choice("placement", placement, ("post", "pre"))
    W, H = 7.0, 7.0
    fig, ax = _canvas(W, H)
    w = 2.0
    xe, xd = 1.95, 5.05
    # encoder
    _box(ax, xe, 0.3, 1.5, 0.32, "source tokens", "embed", fontsize=_FONT - 1)
    _arrow(ax, (xe, 0.46), (xe, 0.68))
    _box(ax, xe, 0.88, w, 0.4, "embedding + positions", "embed", fontsize=_FONT - 1)
    y0 = 1.2
    y = _sublayer(ax, xe, y0, w, "multi-head self-attention", "attn", placement)
    y_enc_top = _sublayer(ax, xe, y, w, "feed-forward", "ffn", placement)
    ax.add_patch(Rectangle((xe - w / 2 - 0.25, y0 + 0.05), w + 0.5, y_enc_top - y0 - 0.15, fill=False,
                           ec=PALETTE["muted"], lw=1.0, ls="--"))
    ax.text(xe - w / 2 - 0.35, (y0 + y_enc_top) / 2, f"$\\times {N}$", ha="right", va="center", fontsize=_FONT + 1)
    ax.text(xe - w / 2 - 0.25, y_enc_top + 0.05, "encoder", ha="left", va="bottom", fontsize=_FONT, weight="bold")
    # decoder
    _box(ax, xd, 0.3, 1.9, 0.32, "target tokens (shifted right)", "embed", fontsize=_FONT - 1)
    _arrow(ax, (xd, 0.46), (xd, 0.68))
    _box(ax, xd, 0.88, w, 0.4, "embedding + positions", "embed", fontsize=_FONT - 1)
    y = _sublayer(ax, xd, y0, w, "masked multi-head\nself-attention", "attn", placement)
    y_cross = y
    y = _sublayer(ax, xd, y, w, "multi-head\ncross-attention", "attn", placement, highlight=("sublayer",))
    y_dec_top = _sublayer(ax, xd, y, w, "feed-forward", "ffn", placement)
    ax.add_patch(Rectangle((xd - w / 2 - 0.25, y0 + 0.05), w + 0.5, y_dec_top - y0 - 0.15, fill=False,
                           ec=PALETTE["muted"], lw=1.0, ls="--"))
    ax.text(xd + w / 2 + 0.35, (y0 + y_dec_top) / 2, f"$\\times {N}$", ha="left", va="center", fontsize=_FONT + 1)
    _box(ax, xd, y_dec_top + 0.2, 1.3, 0.3, "linear", "embed", fontsize=_FONT - 1)
    _arrow(ax, (xd, y_dec_top + 0.35), (xd, y_dec_top + 0.5))
    _box(ax, xd, y_dec_top + 0.65, 1.3, 0.3, "softmax", "embed", fontsize=_FONT - 1)
    ax.text(xd, y_dec_top + 0.92, "next-token probabilities", ha="center", va="center", fontsize=_FONT - 1)
    ax.text(xd - w / 2 - 0.05, y_dec_top + 0.32, "decoder", ha="right", va="center", fontsize=_FONT, weight="bold")
    # encoder output -> K, V of the cross-attention
    cross_y = y_cross + _GAP + (_BOX_H * 0.78 + _GAP if placement == "pre" else 0) + _BOX_H / 2
    _line(ax, [xe, xe], [y_enc_top - 0.1, y_enc_top + 0.05], color="k", lw=1.6)
    xm = (xe + xd) / 2 + 0.05
    _line(ax, [xe, xm, xm], [y_enc_top + 0.05, y_enc_top + 0.05, cross_y], color="k", lw=1.6)
    _arrow(ax, (xm, cross_y), (xd - w / 2, cross_y), color="k", lw=1.6)
    ax.text((xe + xm) / 2 + 0.25, y_enc_top + 0.12, "$K, V$ from the encoder", ha="center",
            va="bottom", fontsize=_FONT - 1, color=PALETTE["text"])
    ax.text(xd - 0.06, cross_y - _BOX_H / 2 - _GAP / 2, "$Q$", ha="right", va="center",
            fontsize=_FONT - 1, color=PALETTE["q"])
    H = y_dec_top + 1.45
    _fit_height(fig, ax, H)
    _title(ax, W / 2, H - 0.15, f"encoder–decoder Transformer ({placement}-norm)")
    return fig


# ============================================================================= Chapter 3
def masks(T: int = 6, length: int = 4, T_new: int = 2) -> Figure:
    """Causal, padding and combined masks as grids (rows: queries i, columns: keys j), and the
    causal mask of ``T_new`` new queries over ``T`` cached keys, aligned bottom-right.

    Drawn from ``course_lib.masks``: ``causal_mask``, ``padding_mask``, ``combine_masks``.
    """
    import torch


    _int("T", T, 2, 16)
    _int("length", length, 1, T)
    _int("T_new", T_new, 1, T)
    causal = causal_mask(T)
    pad = padding_mask(torch.tensor([length]), T)[0, 0].expand(T, T)     # [B, 1, 1, S] -> [T, S]
    both = combine_masks(pad, causal)
    cached = causal_mask(T_new, T)
    W, H = 8.0, 2.9
    fig, ax = _canvas(W, H)
    cell = min(0.28, 1.55 / T)
    panels = [("causal", causal, "$j \\leq i$"), (f"padding (length {length})", pad, f"$j < {length}$"),
              ("causal + padding", both, "both"),
              (f"KV cache: $T = {T_new}$, $S = {T}$", cached, "$j \\leq i + S - T$")]
    for p, (title, m, rule) in enumerate(panels):
        x0 = 0.35 + p * 1.98
        top = H - 0.55
        _mask_grid(ax, x0, top, cell, m, fontsize=_FONT - 3 if T > 8 else _FONT - 2)
        ax.text(x0 + T * cell / 2, H - 0.15, title, ha="center", va="center", fontsize=_FONT - 1, weight="bold")
        rows = m.shape[0]
        ax.text(x0 + T * cell / 2, top - rows * cell - 0.18, rule, ha="center", va="center", fontsize=_FONT - 1)
        if rows < T:
            ax.text(x0 + T * cell / 2, top - rows * cell - 0.42, f"new queries: positions {T - rows}–{T - 1}",
                    ha="center", va="center", fontsize=_FONT - 2)
    ax.add_patch(Rectangle((0.35, 0.12), 0.16, 0.16, color=PALETTE["allowed"]))
    ax.text(0.56, 0.2, "may attend (True)", va="center", fontsize=_FONT - 1)
    ax.add_patch(Rectangle((2.2, 0.12), 0.16, 0.16, color=PALETTE["blocked"]))
    ax.text(2.41, 0.2, "blocked (False, $-\\infty$)", va="center", fontsize=_FONT - 1)
    ax.text(4.5, 0.2, "rows: query $i$, columns: key $j$", va="center", fontsize=_FONT - 1)
    return fig


# ============================================================================= Chapter 4
def head_sharing(n_heads: int = 8, n_kv_heads: int = 2) -> Figure:
    """MHA vs GQA vs MQA: which query heads share which key/value head.

    Three rows: multi-head (``h_kv = h``), grouped-query (``h_kv = n_kv_heads``), multi-query
    (``h_kv = 1``). ``n_heads`` must be a multiple of ``n_kv_heads``.
    """
    h = _int("n_heads", n_heads, 1, 16)
    g = _int("n_kv_heads", n_kv_heads, 1, h)
    if h % g:
        raise ValueError(f"n_kv_heads: expected a divisor of n_heads = {h}; got {g}")
    W, H = 8.0, 3.8
    fig, ax = _canvas(W, H)
    rows = [("multi-head (MHA)", h), ("grouped-query (GQA)", g), ("multi-query (MQA)", 1)]
    step = min(0.6, 4.6 / h)
    x0 = 2.0
    for r, (name, hkv) in enumerate(rows):
        yq = H - 0.55 - r * 1.15
        yk = yq - 0.62
        ax.text(0.1, yq - 0.3, f"{name}\n$h = {h}$, $h_{{kv}} = {hkv}$", ha="left", va="center", fontsize=_FONT - 1)
        group = h // hkv
        for i in range(h):
            _box(ax, x0 + i * step, yq, step * 0.78, 0.26, f"$q_{{{i + 1}}}$" if step > 0.35 else "", "q",
                 fontsize=_FONT - 2)
        for j in range(hkv):
            xs = [x0 + i * step for i in range(j * group, (j + 1) * group)]
            xc = sum(xs) / len(xs)
            wk = (len(xs) - 1) * step + step * 0.78
            half = wk / 2
            for xx, col in ((xc - half, "k"), (xc, "v")):
                ax.add_patch(Rectangle((xx, yk - 0.13), half, 0.26, facecolor=_tint(PALETTE[col]), ec=PALETTE["edge"],
                                       lw=1.0, zorder=2))
                if half >= 0.2:
                    ax.text(xx + half / 2, yk, f"${col}_{{{j + 1}}}$", ha="center", va="center", fontsize=_FONT - 2,
                            zorder=3)
            for x in xs:
                _line(ax, [x, x if hkv == h else xc], [yq - 0.13, yk + 0.13], lw=0.8)
        ax.text(x0 + (h - 0.5) * step + 0.1, yk, f"K/V cache: {hkv}/{h}" if hkv != h else "K/V cache: full",
                ha="left", va="center", fontsize=_FONT - 1)
    _title(ax, W / 2, H - 0.13, "query heads (top) and the key/value heads they read (bottom)")
    return fig


def kv_cache_growth(prompt_len: int = 3, steps: int = 4, max_len: int | None = None) -> Figure:
    """The KV cache grows by one key and one value per decoding step.

    Row 0 is the prefill of a ``prompt_len``-token prompt; each next row is one decoding step,
    whose single query ``q_t`` attends to every cached key. ``max_len``: slots preallocated.
    """
    P = _int("prompt_len", prompt_len, 1, 12)
    n = _int("steps", steps, 1, 10)
    L = P + n if max_len is None else _int("max_len", max_len, P + n, 24)
    W, H = 8.0, 0.75 + 0.42 * (n + 1)
    fig, ax = _canvas(W, H)
    cell = min(0.45, 4.0 / L)
    x0 = 2.1
    for r in range(n + 1):
        y = H - 0.55 - r * 0.42
        filled = P + r
        label = f"prefill: {P} tokens" if r == 0 else f"step {r}: query $q_{{{P + r}}}$"
        ax.text(x0 - 0.12, y - 0.14, label, ha="right", va="center", fontsize=_FONT - 1)
        for j in range(L):
            if j < filled:
                new = r == 0 or j == filled - 1
                col = _tint(PALETTE["new"] if new else PALETTE["cache"], 0.45)
            else:
                col = "#FFFFFF"
            ax.add_patch(Rectangle((x0 + j * cell, y - 0.28), cell, 0.28, facecolor=col, ec=PALETTE["edge"], lw=0.6))
            if j < filled and cell >= 0.26:
                ax.text(x0 + (j + 0.5) * cell, y - 0.14, str(j + 1), ha="center", va="center", fontsize=_FONT - 2)
        ax.text(x0 + L * cell + 0.12, y - 0.14, f"attends to {filled} keys" if r else f"writes $K, V$ of tokens 1–{P}",
                ha="left", va="center", fontsize=_FONT - 1)
    ax.text(x0 + L * cell / 2, H - 0.15, f"cache slots 1 … {L} (one $k$ and one $v$ per token and layer)",
            ha="center", va="center", fontsize=_FONT - 1, weight="bold")
    return fig


def rolling_buffer(window: int = 4, n_tokens: int = 10) -> Figure:
    """Mistral's rolling buffer: token i is written into slot ``i mod W``, over token ``i − W``.

    One row per token (0-based positions as in ``course_lib.kv_cache.RollingKVCache``); the slot
    just written is highlighted, and the cache never holds more than ``window`` tokens.
    """
    Wn = _int("window", window, 1, 12)
    n = _int("n_tokens", n_tokens, 1, 16)
    Wd, H = 8.0, 0.85 + 0.3 * n
    fig, ax = _canvas(Wd, H)
    cell = min(0.5, 3.8 / Wn)
    x0 = 2.2
    slots = [None] * Wn
    for j in range(Wn):
        ax.text(x0 + (j + 0.5) * cell, H - 0.35, f"slot {j}", ha="center", va="center", fontsize=_FONT - 2)
    for i in range(n):
        slots[i % Wn] = i
        y = H - 0.5 - i * 0.3
        ax.text(x0 - 0.12, y - 0.13, f"token $i = {i}$", ha="right", va="center", fontsize=_FONT - 1)
        for j in range(Wn):
            cur = j == i % Wn
            fc = _tint(PALETTE["new"], 0.45) if cur else (_tint(PALETTE["cache"], 0.45) if slots[j] is not None
                                                          else "white")
            ax.add_patch(Rectangle((x0 + j * cell, y - 0.26), cell, 0.26, facecolor=fc, ec=PALETTE["edge"], lw=0.6))
            if slots[j] is not None:
                ax.text(x0 + (j + 0.5) * cell, y - 0.13, str(slots[j]), ha="center", va="center", fontsize=_FONT - 2)
        overwritten = f", overwrites {i - Wn}" if i >= Wn else ""
        ax.text(x0 + Wn * cell + 0.12, y - 0.13, f"{i} mod {Wn} = {i % Wn}{overwritten}", ha="left",
                va="center", fontsize=_FONT - 2)
    _title(ax, Wd / 2, H - 0.13, f"rolling buffer: $W = {Wn}$ slots, token $i$ goes to slot $i \\,\\mathrm{{mod}}\\, W$")
    return fig


# ============================================================================= Chapter 5
def memory_hierarchy(levels: Sequence[tuple[str, str, str]] | None = None) -> Figure:
    """The GPU memory hierarchy as a pyramid: fast and small at the top, slow and large below.

    ``levels``: ``[(name, bandwidth, size), …]`` from the top; default the A100 numbers quoted
    by FlashAttention (Dao et al., 2022) — :data:`A100`.
    """
    levels = A100["levels"] if levels is None else list(levels)
    if not levels or not all(isinstance(lv, (tuple, list)) and len(lv) == 3 for lv in levels):
        raise ValueError(f"levels: expected a non-empty list of (name, bandwidth, size); got {levels!r}")
    W, H = 6.5, 3.0
    fig, ax = _canvas(W, H)
    n = len(levels)
    top, bottom, cx, half = H - 0.45, 0.45, 1.7, 1.45
    cols = ["sram", "hbm", "dram"] + ["muted"] * max(0, n - 3)
    where = {"SRAM": "on chip", "HBM": "GPU memory", "DRAM": "CPU memory"}
    for i, (name, bw, size) in enumerate(levels):
        y1, y2 = top - i * (top - bottom) / n, top - (i + 1) * (top - bottom) / n
        w1, w2 = half * (top - y1) / (top - bottom), half * (top - y2) / (top - bottom)
        ax.add_patch(Polygon([(cx - w2, y2), (cx + w2, y2), (cx + w1, y1), (cx - w1, y1)], closed=True,
                             facecolor=_tint(PALETTE[cols[i]], 0.45), ec=PALETTE["edge"], lw=1.0))
        ym = (y1 + y2) / 2
        ax.text(cx, ym - (0.08 if i == 0 else 0), name, ha="center", va="center", fontsize=_FONT, weight="bold")
        ax.text(3.45, ym, f"{name}" + (f" ({where[name]})" if name in where else ""), ha="left", va="center",
                fontsize=_FONT, weight="bold")
        ax.text(3.45, ym - 0.22, f"{bw}, {size}", ha="left", va="center", fontsize=_FONT)
        _line(ax, [cx + (w1 + w2) / 2 + 0.05, 3.38], [ym, ym], color="muted", lw=0.6, ls=":")
    ax.annotate("", xy=(0.15, top), xytext=(0.15, bottom), arrowprops=dict(arrowstyle="-|>", color=PALETTE["edge"]))
    ax.text(0.27, (top + bottom) / 2, "faster, smaller", rotation=90, ha="center", va="center", fontsize=_FONT - 1)
    ax.text(W / 2, 0.15, "bandwidth, size: NVIDIA A100 as quoted by Dao et al. (2022)" if levels == A100["levels"]
            else "bandwidth, size", ha="center", va="center", fontsize=_FONT - 1)
    _title(ax, W / 2, H - 0.15, "memory hierarchy of a GPU")
    return fig


def roofline(peak_flops: float = A100["peak_flops"], bandwidth: float = A100["hbm_bandwidth"], N: int = 1024,
             d: int = 64) -> Figure:
    """The roofline: attainable FLOP/s = min(peak, intensity × bandwidth), with the pieces of
    attention (one head, sequence length ``N``, head width ``d``, fp16) placed by their intensity.

    Defaults: the A100's 312 TFLOP/s and 1.5 TB/s (Dao et al., 2022), ridge ≈ 208 FLOP/byte. The
    intensities are FLOPs over bytes moved, counted as in Chapter 5.
    """
    _number("peak_flops", peak_flops, lambda x: x > 0, "a positive number of FLOP/s")
    _number("bandwidth", bandwidth, lambda x: x > 0, "a positive number of bytes/s")
    _int("N", N, 1)
    _int("d", d, 1)
    ridge = peak_flops / bandwidth
    fp16 = 2
    ops = {  # name: (FLOPs, elements moved), as in Chapter 5
        "mask / dropout": (N * N, 2 * N * N),
        "softmax": (5 * N * N, 2 * N * N),
        f"$QK^\\top$ ($d = {d}$)": (2 * N * N * d, 2 * N * d + N * N),
        "FFN matmul\n4096×1024×4096": (2 * 4096 * 1024 * 4096, 2 * 4096 * 1024 + 4096 * 4096),
    }
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    fig.patch.set_facecolor(PALETTE["panel"])
    ax.set_facecolor(PALETTE["panel"])
    lo, hi = 0.1, max(1e4, ridge * 20)
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.loglog(xs, [min(peak_flops, x * bandwidth) / 1e12 for x in xs], color=PALETTE["edge"], lw=2)
    ax.axvline(ridge, color=PALETTE["muted"], ls=":", lw=1)
    ax.text(ridge * 1.15, peak_flops / 1e12 * 0.012, f"ridge\n{ridge:.0f} FLOP/byte", fontsize=_FONT - 1,
            va="bottom")
    ax.text(lo * 1.5, peak_flops / 1e12 * 1.35, f"peak {peak_flops / 1e12:g} TFLOP/s", fontsize=_FONT - 1)
    ax.text(lo * 1.5, peak_flops / 1e12 * 0.3, f"sloped roof: {bandwidth / 1e12:g} TB/s (HBM) × intensity",
            fontsize=_FONT - 1)
    for i, (name, (flops, elems)) in enumerate(ops.items()):
        x = flops / (elems * fp16)
        y = min(peak_flops, x * bandwidth) / 1e12
        col = PALETTE["score"] if x < ridge else PALETTE["v"]
        ax.plot([x], [y], "o", color=col, ms=7, zorder=3)
        ax.annotate(f"{name}: {x:.3g}", (x, y), xytext=(6, -14 - 10 * (i % 2)), textcoords="offset points",
                    fontsize=_FONT - 1, color=PALETTE["text"])
    ax.set_xlabel("arithmetic intensity (FLOP per byte of HBM traffic)", fontsize=_FONT)
    ax.set_ylabel("attainable TFLOP/s", fontsize=_FONT)
    ax.set_ylim(lo * bandwidth / 1e12 * 0.5, peak_flops / 1e12 * 4)
    ax.set_xlim(lo, hi)
    ax.tick_params(labelsize=_FONT - 1)
    ax.set_title(f"roofline (N = {N}, fp16): left of the ridge memory-bound", fontsize=_FONT + 1)
    fig.tight_layout()
    return fig


def flash_tiling(n_q_blocks: int = 4, n_kv_blocks: int = 4, step: tuple[int, int] = (2, 1), *,
                 order: str = "both", causal: bool = False) -> Figure:
    """FlashAttention's tiling of the score matrix ``S = Q Kᵀ`` into ``B_r × B_c`` tiles.

    The number in a tile is the order in which it is computed: FlashAttention (Algorithm 1) runs
    the outer loop over key/value blocks ``j`` and the inner loop over query blocks ``i``;
    FlashAttention-2 swaps them. ``step = (i, j)`` (0-based) is highlighted with the blocks it
    loads into SRAM. ``causal`` darkens the tiles above the diagonal, which are skipped.
    """
    Tr = _int("n_q_blocks", n_q_blocks, 1, 8)
    Tc = _int("n_kv_blocks", n_kv_blocks, 1, 8)
    _choice("order", order, ("fa1", "fa2", "both"))
    if not isinstance(causal, bool):
        raise ValueError(f"causal: expected a bool; got {causal!r}")
    if not (isinstance(step, (tuple, list)) and len(step) == 2):
        raise ValueError(f"step: expected a pair (i, j); got {step!r}")
    si, sj = _int("step[0]", step[0], 0, Tr - 1), _int("step[1]", step[1], 0, Tc - 1)
    orders = ["fa1", "fa2"] if order == "both" else [order]
    W, H = (8.0 if len(orders) == 2 else 4.4), 3.0
    fig, ax = _canvas(W, H)
    pw = W / len(orders)
    cell = min(0.36, (1.9 if len(orders) == 2 else 2.3) / max(Tr, Tc))

    def skipped(i, j):
        # causal: key block j starts after the last query of block i (blocks of N/T_r and N/T_c)
        return causal and j * Tr >= (i + 1) * Tc

    for p, o in enumerate(orders):
        x0 = p * pw + 0.55
        top = H - 0.7
        seq = ([(i, j) for j in range(Tc) for i in range(Tr)] if o == "fa1"
               else [(i, j) for i in range(Tr) for j in range(Tc)])
        rank = {t: r + 1 for r, t in enumerate(t for t in seq if not skipped(*t))}
        for j in range(Tc):
            ax.add_patch(Rectangle((x0 + j * cell, top + 0.08), cell, 0.22,
                                   facecolor=_tint(PALETTE["k"], 0.15 if j == sj else 0.6), ec=PALETTE["edge"], lw=0.6))
            ax.text(x0 + (j + 0.5) * cell, top + 0.19, f"$K_{{{j + 1}}}$", ha="center", va="center", fontsize=_FONT - 2)
        for i in range(Tr):
            ax.add_patch(Rectangle((x0 - 0.36, top - (i + 1) * cell), 0.3, cell,
                                   facecolor=_tint(PALETTE["q"], 0.15 if i == si else 0.6), ec=PALETTE["edge"], lw=0.6))
            ax.text(x0 - 0.21, top - (i + 0.5) * cell, f"$Q_{{{i + 1}}}$", ha="center", va="center",
                    fontsize=_FONT - 2)
        for i in range(Tr):
            for j in range(Tc):
                sk = (i, j) not in rank
                cur = (i, j) == (si, sj)
                fc = PALETTE["blocked"] if sk else (_tint(PALETTE["new"], 0.3) if cur else _tint(PALETTE["score"], 0.85))
                ax.add_patch(Rectangle((x0 + j * cell, top - (i + 1) * cell), cell, cell, facecolor=fc,
                                       ec=PALETTE["new"] if cur else PALETTE["edge"], lw=2.0 if cur else 0.6,
                                       zorder=3 if cur else 2))
                if not sk:
                    ax.text(x0 + (j + 0.5) * cell, top - (i + 0.5) * cell, str(rank[(i, j)]), ha="center",
                            va="center", fontsize=_FONT - 2, zorder=4)
        xr = x0 + Tc * cell + 0.12
        if o == "fa1":
            title, loops = "FlashAttention (Alg. 1)", ["outer loop: $K_j, V_j$ (→)", "inner loop: $Q_i$ (↓)"]
        else:
            title, loops = "FlashAttention-2", ["outer loop: $Q_i$ (↓)", "inner loop: $K_j, V_j$ (→)"]
        ax.text(x0 + Tc * cell / 2 - 0.15, H - 0.2, title, ha="center", va="center", fontsize=_FONT, weight="bold")
        ax.text(xr, top - 0.1, loops[0], ha="left", va="top", fontsize=_FONT - 1)
        ax.text(xr, top - 0.38, loops[1], ha="left", va="top", fontsize=_FONT - 1)
        if (si, sj) in rank:
            ax.text(xr, top - 0.75, f"step {rank[(si, sj)]}: in SRAM\n$Q_{{{si + 1}}}, K_{{{sj + 1}}}, V_{{{sj + 1}}}$,"
                    f" tile $S_{{{si + 1}{sj + 1}}}$", ha="left", va="top", fontsize=_FONT - 1, color=PALETTE["new"])
        stays = ("$O_i, \\ell_i, m_i$ stay on chip" if o == "fa2"
                 else "$O_i, \\ell_i, m_i$ read/written\nin HBM each step")
        ax.text(xr, top - 1.3, stays, ha="left", va="top", fontsize=_FONT - 1)
        ax.text(x0 + Tc * cell / 2, top - Tr * cell - 0.2, "$S_{ij} = Q_i K_j^\\top$, a $B_r \\times B_c$ tile",
                ha="center", va="center", fontsize=_FONT - 1)
        if causal:
            ax.text(x0 + Tc * cell / 2, top - Tr * cell - 0.45, "dark: skipped (causal)", ha="center", va="center",
                    fontsize=_FONT - 1)
    return fig


# ============================================================================= Chapter 6
def rope(m: int = 3, n: int = 1, theta: float = 0.4, shift: int = 2) -> Figure:
    """RoPE rotates each 2-D pair of q by ``mθ`` and of k by ``nθ``: their angle, and so
    ``q·k``, depends only on ``m − n``. Right panel: both positions shifted by ``shift``.
    """
    _int("m", m, 0, 100)
    _int("n", n, 0, 100)
    _int("shift", shift, 0, 100)
    _number("theta", theta, lambda x: 0 < x < math.pi, "a number in (0, π)")
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.2))
    fig.patch.set_facecolor(PALETTE["panel"])
    phi_q, phi_k = 0.15, -0.45   # the directions of the pair of q and of k before rotation
    for ax, s in zip(axes, (0, shift)):
        ax.set_facecolor(PALETTE["panel"])
        mm, nn = m + s, n + s
        t = [i / 100 * 2 * math.pi for i in range(101)]
        ax.plot([math.cos(a) for a in t], [math.sin(a) for a in t], color=PALETTE["muted"], lw=0.6, ls=":")
        for phi, pos, col in ((phi_q, mm, "q"), (phi_k, nn, "k")):
            a0, a1 = phi, phi + pos * theta
            ax.annotate("", xy=(0.55 * math.cos(a0), 0.55 * math.sin(a0)), xytext=(0, 0),
                        arrowprops=dict(arrowstyle="-|>", color=_tint(PALETTE[col], 0.5), lw=1.2, ls="--"))
            ax.annotate("", xy=(math.cos(a1), math.sin(a1)), xytext=(0, 0),
                        arrowprops=dict(arrowstyle="-|>", color=PALETTE[col], lw=2.0))
            ax.text(1.17 * math.cos(a1), 1.17 * math.sin(a1), f"$R_{{{pos}}}\\,\\mathbf{{{col}}}$",
                    ha="center", va="center", fontsize=_FONT, color=PALETTE[col])
        a_q, a_k = phi_q + mm * theta, phi_k + nn * theta
        arc = [a_k + (a_q - a_k) * i / 40 for i in range(41)]
        ax.plot([0.35 * math.cos(a) for a in arc], [0.35 * math.sin(a) for a in arc], color=PALETTE["new"], lw=1.6)
        mid = (a_q + a_k) / 2
        ax.text(0.52 * math.cos(mid), 0.52 * math.sin(mid), f"${(a_q - a_k):.2f}$", ha="center", va="center",
                fontsize=_FONT - 1, color=PALETTE["new"])
        ax.set_title(f"$m = {mm}$, $n = {nn}$: angle $(m-n)\\theta$ + const", fontsize=_FONT)
        ax.set_xlim(-1.45, 1.45)
        ax.set_ylim(-1.45, 1.45)
        ax.set_aspect("equal")
        ax.axis("off")
    fig.suptitle(f"RoPE: $\\mathbf{{q}}_m \\cdot \\mathbf{{k}}_n$ depends on $m - n = {m - n}$ only"
                 f" ($\\theta = {theta:g}$; dashed: before rotation)", fontsize=_FONT + 1)
    fig.tight_layout()
    return fig


def alibi(n_heads: int = 8, T: int = 6, heads: Sequence[int] | None = None) -> Figure:
    """ALiBi's bias ``−m_h (i − j)`` added to the scores of head h, for a few heads (1-based).

    The slopes ``m_h`` are :func:`course_lib.positional.alibi_slopes`; the cells show ``−(i − j)``,
    the colour the bias (darker: more negative); the future (``j > i``) is masked.
    """

    nh = _int("n_heads", n_heads, 1, 64)
    _int("T", T, 2, 12)
    heads = sorted({1, min(2, nh), nh}) if heads is None else list(heads)
    if not heads or len(heads) > 4 or any(isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= nh
                                          for x in heads):
        raise ValueError(f"heads: expected 1 to 4 head numbers in [1, {nh}]; got {heads!r}")
    slopes = alibi_slopes(nh).tolist()
    W, H = 8.0, 3.0
    fig, ax = _canvas(W, H)
    cell = min(0.3, 1.7 / T)
    cmap = plt.get_cmap("Oranges")
    vmax = max(slopes) * (T - 1)          # the largest |bias| on the figure
    for p, hd in enumerate(heads):
        x0 = (W - len(heads) * 1.95) / 2 + 0.15 + p * 1.95
        top = H - 0.62
        mh = slopes[hd - 1]
        colors, texts = [], []
        for i in range(T):
            row_t = []
            for j in range(T):
                if j > i:
                    colors.append(PALETTE["blocked"])
                    row_t.append("")
                else:
                    colors.append(mcolors.to_hex(cmap(0.08 + 0.8 * mh * (i - j) / vmax)))
                    row_t.append(str(-(i - j)))
            texts.append(row_t)
        grid = [[i * T + j for j in range(T)] for i in range(T)]
        _grid(ax, x0, top, cell, grid, colors, texts=texts, fontsize=_FONT - 2)
        ax.text(x0 + T * cell / 2, H - 0.25, f"head {hd}: $m_{{{hd}}} = 2^{{{math.log2(mh):.3g}}}$", ha="center",
                va="center", fontsize=_FONT, weight="bold")
    ax.text(W / 2, 0.2, "bias $= m_h \\times$ cell $= -m_h\\,(i - j)$, added to $\\mathbf{q}_i \\cdot \\mathbf{k}_j/\\sqrt{d_k}$;"
            " rows: query $i$, columns: key $j$", ha="center", va="center", fontsize=_FONT - 1)
    return fig


# ============================================================================= Chapter 7
_GLU_NAMES = {"sigmoid": "GLU", "relu": "ReGLU", "gelu": "GEGLU", "silu": "SwiGLU", "none": "Bilinear"}


def ffn_glu(activation: str = "silu", d_model="d_model", d_ff="d_ff") -> Figure:
    """The position-wise FFN (up, activation, down) beside the GLU family (gate, up, down).

    ``activation``: ``sigmoid`` (GLU), ``relu`` (ReGLU), ``gelu`` (GEGLU), ``silu`` (SwiGLU) or
    ``none`` (Bilinear). ``d_model``, ``d_ff``: symbols or ints.
    """
    _choice("activation", activation, list(_GLU_NAMES))
    dm, dff = _sym(_size("d_model", d_model)), _sym(_size("d_ff", d_ff))
    act = {"sigmoid": "\\sigma", "relu": "\\mathrm{ReLU}", "gelu": "\\mathrm{GELU}", "silu": "\\mathrm{SiLU}",
           "none": "\\mathrm{id}"}[activation]
    W, H = 8.0, 3.5
    fig, ax = _canvas(W, H)
    xl = 1.7
    _box(ax, xl, 0.35, 0.9, 0.32, f"$x$  $[\\dots, {dm}]$", "embed", fontsize=_FONT - 1)
    _arrow(ax, (xl, 0.51), (xl, 0.8))
    _box(ax, xl, 1.0, 1.6, 0.38, f"up $W_1$: ${dm} \\times {dff}$", "ffn", fontsize=_FONT - 1)
    _arrow(ax, (xl, 1.19), (xl, 1.45))
    _box(ax, xl, 1.65, 1.6, 0.38, f"$\\phi$ (ReLU, GELU)  $[\\dots, {dff}]$", "attn", fontsize=_FONT - 1)
    _arrow(ax, (xl, 1.84), (xl, 2.1))
    _box(ax, xl, 2.3, 1.6, 0.38, f"down $W_2$: ${dff} \\times {dm}$", "ffn", fontsize=_FONT - 1)
    _arrow(ax, (xl, 2.49), (xl, 2.75))
    ax.text(xl, 2.9, "$\\phi(x W_1 + b_1)\\, W_2 + b_2$", ha="center", va="center", fontsize=_FONT)
    _title(ax, xl, H - 0.17, "FFN: two matrices")
    xr = 5.4
    _box(ax, xr, 0.35, 0.9, 0.32, f"$x$  $[\\dots, {dm}]$", "embed", fontsize=_FONT - 1)
    xg, xu = xr - 1.05, xr + 1.05
    _line(ax, [xr, xr], [0.51, 0.68])
    _line(ax, [xg, xu], [0.68, 0.68])
    for xx in (xg, xu):
        _arrow(ax, (xx, 0.68), (xx, 0.81))
    _box(ax, xg, 1.0, 1.6, 0.38, f"gate $W$: ${dm} \\times {dff}$", "ffn", fontsize=_FONT - 1)
    _box(ax, xu, 1.0, 1.6, 0.38, f"up $V$: ${dm} \\times {dff}$", "ffn", fontsize=_FONT - 1)
    _arrow(ax, (xg, 1.19), (xg, 1.45))
    _box(ax, xg, 1.65, 1.1, 0.38, f"${act}$", "attn", fontsize=_FONT)
    ym = 2.05
    ax.add_patch(Circle((xr, ym), 0.13, facecolor="white", ec=PALETTE["edge"], zorder=2))
    ax.text(xr, ym, "$\\odot$", ha="center", va="center", fontsize=_FONT + 1, zorder=3)
    _line(ax, [xg, xg], [1.84, ym])
    _arrow(ax, (xg, ym), (xr - 0.13, ym))
    _line(ax, [xu, xu], [1.19, ym])
    _arrow(ax, (xu, ym), (xr + 0.13, ym))
    _arrow(ax, (xr, ym + 0.13), (xr, 2.3))
    _box(ax, xr, 2.5, 1.6, 0.38, f"down $W_2$: ${dff} \\times {dm}$", "ffn", fontsize=_FONT - 1)
    _arrow(ax, (xr, 2.69), (xr, 2.8))
    ax.text(xr, 2.95, f"{_GLU_NAMES[activation]}: $({act}(x W) \\odot x V)\\, W_2$", ha="center", va="center",
            fontsize=_FONT)
    _title(ax, xr, H - 0.17, "GLU family: three matrices (gate, up, down)")
    _line(ax, [3.35, 3.35], [0.15, H - 0.1], color="muted", lw=0.6, ls=":")
    return fig


# ============================================================================= Chapter 8
def moe(n_tokens: int = 6, n_experts: int = 4, top_k: int = 2, capacity_factor: float = 1.0, seed: int = 0) -> Figure:
    """A Mixture-of-Experts layer on ``n_tokens`` tokens: the router's top-k choice, the dispatch to
    experts with ``C = ⌈capacity_factor · k · T / n⌉`` slots each (assignments past C are dropped),
    and the weighted combination.

    The routing is real: random router logits (``seed``) through ``course_lib.moe.top_k_gating``,
    ``expert_capacity`` and ``capacity_keep_mask``.
    """
    import torch


    T = _int("n_tokens", n_tokens, 1, 10)
    n = _int("n_experts", n_experts, 1, 8)
    k = _int("top_k", top_k, 1, n)
    cf = _number("capacity_factor", capacity_factor, lambda x: x > 0, "a positive number")
    _int("seed", seed, 0)
    logits = torch.randn(T, n, generator=torch.Generator().manual_seed(seed))
    weights, indices, _ = top_k_gating(logits, k)
    C = expert_capacity(T, n, cf, k)
    keep = capacity_keep_mask(indices, n, C)
    W, H = 8.0, max(3.3, 0.9 + 0.42 * max(T, n))
    fig, ax = _canvas(W, H)
    top, bot = H - 0.7, 0.45
    ty = [top - (t + 0.5) * (top - bot) / T for t in range(T)]
    ey = [top - (e + 0.5) * (top - bot) / n for e in range(n)]
    xt, xe = 0.45, 4.0
    cell = 0.24
    slot = {e: 0 for e in range(n)}
    for t in range(T):
        _box(ax, xt, ty[t], 0.45, 0.3, f"$x_{{{t + 1}}}$", "embed", fontsize=_FONT - 1)
        _arrow(ax, (xt + 0.23, ty[t]), (0.97, ty[t]), lw=0.8)
    ax.text(xt, top + 0.2, "tokens", ha="center", fontsize=_FONT - 1)
    _box(ax, 1.35, (top + bot) / 2, 0.75, top - bot, "router\nsoftmax\n$(x W_r)$\ntop-$k$", "q", fontsize=_FONT - 1)
    for e in range(n):
        _box(ax, xe, ey[e], 0.75, 0.36, f"expert {e + 1}", "ffn", fontsize=_FONT - 1)
        for c in range(C):
            ax.add_patch(Rectangle((xe + 0.45 + c * cell, ey[e] - cell / 2), cell, cell, facecolor="white",
                                   ec=PALETTE["edge"], lw=0.6))
    ax.text(xe + 0.45 + C * cell / 2, top + 0.2, f"capacity $C = {C}$", ha="center", fontsize=_FONT - 1)
    terms = {t: [] for t in range(T)}
    for t in range(T):
        for r in range(k):
            e, w, ok = int(indices[t, r]), float(weights[t, r]), bool(keep[t, r])
            _line(ax, [1.73, xe - 0.38], [ty[t] + (r - (k - 1) / 2) * 0.06, ey[e]],
                  color="v" if ok else "new", lw=0.9, ls="-" if ok else "--")
            xs = xe + 0.45 + slot[e] * cell + cell / 2
            ax.text(xs, ey[e], str(t + 1) if ok else "×", ha="center", va="center", zorder=3,
                    fontsize=_FONT - 2 if ok else _FONT, color=PALETTE["text"] if ok else PALETTE["new"])
            slot[e] += 1
            terms[t].append((w, e, ok))
    xo = 5.85
    for t in range(T):
        kept = [f"{w:.2f}\\,E_{{{e + 1}}}" for w, e, ok in terms[t] if ok]
        dropped = sum(1 for _, _, ok in terms[t] if not ok)
        txt = f"$y_{{{t + 1}}} = x_{{{t + 1}}} + " + (" + ".join(kept) if kept else "0") + "$"
        if dropped:
            txt += f"  ({dropped} dropped)"
        ax.text(xo, ty[t], txt, ha="left", va="center", fontsize=_FONT - 1,
                color=PALETTE["new"] if dropped else PALETTE["text"])
    ax.text(xo, top + 0.2, "weighted sum (+ residual)", ha="left", fontsize=_FONT - 1)
    ax.text(W / 2, 0.15, f"solid: dispatched; dashed, ×: over capacity, dropped (capacity factor {cf:g})",
            ha="center", fontsize=_FONT - 1)
    _title(ax, W / 2, H - 0.15, f"Mixture of Experts: $T = {T}$ tokens, $n = {n}$ experts, top-{k}")
    return fig


# ============================================================================= Chapter 9
def norm_placement(placements: Sequence[str] = ("post", "pre", "sandwich"), norm: str = "layernorm") -> Figure:
    """Where the norm sits in a residual sub-layer: Post-LN (original Transformer), Pre-LN (GPT-2,
    LLaMA) and the sandwich of Gemma-2 (a norm before and after the sub-layer)."""
    placements = list(placements)
    if not placements or len(placements) > 3:
        raise ValueError(f"placements: expected 1 to 3 of 'post', 'pre', 'sandwich'; got {placements!r}")
    for p in placements:
        _choice("placements", p, ("post", "pre", "sandwich"))
    _choice("norm", norm, list(_NORM_TEXT))
    names = {"post": "Post-LN (Transformer, BERT)", "pre": "Pre-LN (GPT-2, LLaMA)", "sandwich": "sandwich (Gemma-2)"}
    formulas = {"post": "$x \\leftarrow \\mathrm{N}(x + F(x))$", "pre": "$x \\leftarrow x + F(\\mathrm{N}(x))$",
                "sandwich": "$x \\leftarrow x + \\mathrm{N}(F(\\mathrm{N}(x)))$"}
    W, H = 8.0, 3.6
    fig, ax = _canvas(W, H)
    pw = W / len(placements)
    for p, pl in enumerate(placements):
        x = pw * (p + 0.5) - 0.1
        ax.text(x, 0.15, "$x$", ha="center", va="center", fontsize=_FONT)
        y = _sublayer(ax, x, 0.27, 1.5, "sub-layer $F$\n(attention or FFN)", "attn", pl, _NORM_TEXT[norm],
                      highlight=("norm2",) if pl == "sandwich" else (), box_h=0.46, gap=0.2)
        ax.text(x, y + 0.08, "to the next sub-layer", ha="center", va="center", fontsize=_FONT - 2)
        ax.text(x, H - 0.5, formulas[pl], ha="center", va="center", fontsize=_FONT)
        _title(ax, x, H - 0.17, names[pl], fontsize=_FONT)
    return fig


# ============================================================================= Chapter 10
def sparse_patterns(n: int = 16, window: int = 4, dilation: int = 2, global_idx: Sequence[int] = (0,),
                    stride: int = 4, c: int = 1, block_size: int = 4) -> Figure:
    """Sparse attention patterns on an ``n × n`` causal grid, drawn from ``course_lib.sparse``:
    sliding window, dilated window, window + global tokens, strided and fixed (the Sparse
    Transformer's two heads A¹, A² in two colours), and the block layout of the strided pattern.
    """

    _int("n", n, 4, 32)
    _int("window", window, 1, n)
    _int("dilation", dilation, 1, n)
    _int("stride", stride, 1, n)
    _int("c", c, 1, stride)
    _int("block_size", block_size, 1, n)
    gidx = list(global_idx)
    if any(isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < n for g in gidx):
        raise ValueError(f"global_idx: expected positions in [0, {n}); got {global_idx!r}")
    sw = sliding_window_mask(n, window)
    dil = dilated_window_mask(n, window, dilation)
    glob = global_tokens_mask(n, gidx)
    a1, a2 = strided_pattern(n, stride)
    f1, f2 = fixed_pattern(n, stride, c)

    def two(m1, m2):  # 0 not attended, 1 first pattern, 2 second pattern only
        return (m1.long() + (m2 & ~m1).long() * 2).tolist()

    panels = [
        (f"sliding window $W = {window}$", sw.long().tolist()),
        (f"dilated $W = {window}$, $\\delta = {dilation}$", dil.long().tolist()),
        (f"window + global {gidx}", two(sw, glob)),
        (f"strided $\\ell = {stride}$: $A^1, A^2$", two(a1, a2)),
        (f"fixed $\\ell = {stride}$, $c = {c}$: $A^1, A^2$", two(f1, f2)),
    ]
    W, H = 8.0, 5.9
    fig, ax = _canvas(W, H)
    cell = 2.05 / n
    cols = [PALETTE["blocked"], PALETTE["allowed"], PALETTE["allowed2"]]
    for p, (title, vals) in enumerate(panels):
        x0, top = 0.35 + (p % 3) * 2.6, H - 0.45 - (p // 3) * 2.7
        _grid(ax, x0, top, cell, vals, cols)
        kept = sum(v > 0 for row in vals for v in row)
        ax.text(x0 + n * cell / 2, top + 0.17, title, ha="center", va="center", fontsize=_FONT - 1, weight="bold")
        ax.text(x0 + n * cell / 2, top - n * cell - 0.14, f"{kept} of {n * (n + 1) // 2} causal pairs",
                ha="center", va="center", fontsize=_FONT - 2)
    merged = union(a1, a2)
    layout = block_layout(merged, block_size)
    x0, top = 0.35 + 2 * 2.6, H - 0.45 - 2.7
    _grid(ax, x0, top, cell, merged.long().tolist(), cols[:2])
    for bi in range(layout.shape[0]):
        for bj in range(layout.shape[1]):
            w_ = min(block_size, n - bj * block_size) * cell
            h_ = min(block_size, n - bi * block_size) * cell
            on = bool(layout[bi, bj])
            ax.add_patch(Rectangle((x0 + bj * block_size * cell, top - bi * block_size * cell - h_), w_, h_,
                                   facecolor="none", ec=PALETTE["new"] if on else "none", lw=2.0, zorder=3))
    ax.text(x0 + n * cell / 2, top + 0.17, f"block layout, $b = {block_size}$ (strided)", ha="center", va="center",
            fontsize=_FONT - 1, weight="bold")
    ax.text(x0 + n * cell / 2, top - n * cell - 0.14, f"{int(layout.sum())} of {layout.numel()} blocks computed",
            ha="center", va="center", fontsize=_FONT - 2)
    legend = [(PALETTE["allowed"], "window / $A^1$"), (PALETTE["allowed2"], "global / $A^2$"),
              (PALETTE["blocked"], "not attended"), ("none", "computed block")]
    for i, (col, lab) in enumerate(legend):
        ax.add_patch(Rectangle((0.35 + i * 1.95, 0.1), 0.15, 0.15, facecolor=col,
                               ec=PALETTE["new"] if col == "none" else col, lw=2.0 if col == "none" else 0))
        ax.text(0.55 + i * 1.95, 0.175, lab, va="center", fontsize=_FONT - 1)
    return fig


# ============================================================================= Chapter 11
def mixed_precision_loop(init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                         growth_interval: int = 2000) -> Figure:
    """One step of mixed-precision training with dynamic loss scaling (Micikevicius et al., 2018;
    defaults: those of ``torch.amp.GradScaler``): fp32 master weights, an fp16 copy for the
    forward and backward passes, the loss multiplied by S, the gradients unscaled in fp32 and
    checked for inf/NaN, then either the update or a skipped step with a smaller S.
    """
    _number("init_scale", init_scale, lambda x: x > 0, "a positive number")
    _number("growth_factor", growth_factor, lambda x: x > 1, "a number > 1")
    _number("backoff_factor", backoff_factor, lambda x: 0 < x < 1, "a number in (0, 1)")
    _int("growth_interval", growth_interval, 1)
    W, H = 8.0, 3.9
    fig, ax = _canvas(W, H)
    bw, bh = 1.75, 0.62
    boxes = {  # name: (centre, text, colour)
        "master": ((1.1, 3.0), "fp32 master\nweights $w$", "v"),
        "cast": ((3.1, 3.0), "cast to fp16\n$w_{16}$", "q"),
        "fwd": ((5.1, 3.0), "forward in fp16\nloss $\\mathcal{L}$", "q"),
        "scale": ((7.0, 3.0), "scale the loss\n$S \\cdot \\mathcal{L}$", "k"),
        "bwd": ((7.0, 1.8), "backward in fp16\ngrads $S\\, g_{16}$", "q"),
        "unscale": ((5.1, 1.8), "unscale in fp32\n$g = (S\\, g_{16}) / S$", "v"),
        "check": ((3.1, 1.8), "inf or NaN\nin $g$?", "score"),
        "update": ((1.1, 1.8), "optimizer step\non fp32 $w$", "v"),
        "skip": ((3.1, 0.55), f"skip the step\n$S \\leftarrow {backoff_factor:g}\\, S$", "new"),
    }
    for key, ((x, y), lab, col) in boxes.items():
        _box(ax, x, y, bw if key not in ("scale", "bwd") else 1.5, bh, lab, col, fontsize=_FONT - 1)
    h = bw / 2
    _arrow(ax, (1.1 + h, 3.0), (3.1 - h, 3.0))
    _arrow(ax, (3.1 + h, 3.0), (5.1 - h, 3.0))
    _arrow(ax, (5.1 + h, 3.0), (7.0 - 0.75, 3.0))
    _arrow(ax, (7.0, 3.0 - bh / 2), (7.0, 1.8 + bh / 2))
    _arrow(ax, (7.0 - 0.75, 1.8), (5.1 + h, 1.8))
    _arrow(ax, (5.1 - h, 1.8), (3.1 + h, 1.8))
    _arrow(ax, (3.1 - h, 1.8), (1.1 + h, 1.8), text="no", text_offset=(0, 0.12))
    _arrow(ax, (3.1, 1.8 - bh / 2), (3.1, 0.55 + bh / 2), text="yes", text_offset=(0.15, 0))
    _arrow(ax, (1.1, 1.8 + bh / 2), (1.1, 3.0 - bh / 2))
    ax.text(1.1, 1.8 - bh / 2 - 0.2, f"after {growth_interval} clean steps:\n$S \\leftarrow {growth_factor:g}\\, S$",
            ha="center", va="top", fontsize=_FONT - 1)
    _line(ax, [3.1 + h, 6.2], [0.55, 0.55], ls="--")
    ax.text(6.25, 0.55, "next batch,\nsame $w$", ha="left", va="center", fontsize=_FONT - 1)
    _title(ax, W / 2, H - 0.17,
           f"mixed-precision training step, dynamic loss scale $S$ (start $2^{{{math.log2(init_scale):g}}}$)")
    return fig


# ============================================================================= Chapter 12
def triton_grid(n_elements: int = 10, block_size: int = 4) -> Figure:
    """Triton's launch grid for a 1-D kernel: ``⌈n / BLOCK⌉`` programs, each owning ``BLOCK``
    consecutive elements; lanes past the end of the tensor are switched off by the mask.
    ``block_size`` must be a power of two, as ``tl.arange`` requires.
    """
    n = _int("n_elements", n_elements, 1, 40)
    B = _int("block_size", block_size, 1, 32)
    if B & (B - 1):
        raise ValueError(f"block_size: expected a power of two (tl.arange needs one); got {B}")
    programs = -(-n // B)
    lanes = programs * B
    W, H = 8.0, 2.45
    fig, ax = _canvas(W, H)
    cell = min(0.42, 6.6 / lanes)
    x0 = (W - lanes * cell) / 2 + 0.3
    y = 1.25
    for p in range(programs):
        xs = x0 + p * B * cell
        ax.add_patch(Rectangle((xs, y + 0.42), B * cell, 0.3, facecolor=_tint(PALETTE["q"], 0.5 if p % 2 else 0.3),
                               ec=PALETTE["edge"], lw=0.8))
        ax.text(xs + B * cell / 2, y + 0.57, f"pid {p}" if B * cell > 0.45 else str(p), ha="center", va="center",
                fontsize=_FONT - 1)
    for i in range(lanes):
        masked = i >= n
        ax.add_patch(Rectangle((x0 + i * cell, y), cell, 0.36, facecolor=_tint(PALETTE["blocked"], 0.6) if masked
                               else _tint(PALETTE["v"], 0.45), ec=PALETTE["edge"], lw=0.6,
                               hatch="//" if masked else None))
        if cell >= 0.22:
            ax.text(x0 + (i + 0.5) * cell, y + 0.18, str(i), ha="center", va="center", fontsize=_FONT - 2,
                    color=PALETTE["text"], bbox=dict(facecolor="white", edgecolor="none", pad=0.5) if masked else None)
    ax.text(x0 - 0.1, y + 0.18, "offsets", ha="right", va="center", fontsize=_FONT - 1)
    ax.text(x0 - 0.1, y + 0.57, "programs", ha="right", va="center", fontsize=_FONT - 1)
    ax.annotate("", xy=(x0 + n * cell, y - 0.1), xytext=(x0, y - 0.1),
                arrowprops=dict(arrowstyle="<->", color=PALETTE["edge"], lw=0.8))
    ax.text(x0 + n * cell / 2, y - 0.22, f"the tensor: $n = {n}$ elements", ha="center", va="top", fontsize=_FONT - 1)
    if lanes > n:
        ax.text(x0 + (n + lanes) / 2 * cell, y - 0.22, f"{lanes - n} masked", ha="center", va="top",
                fontsize=_FONT - 1, color=PALETTE["new"])
    code = (f"grid = (triton.cdiv(n, BLOCK),) = ({programs},)     BLOCK = {B}\n"
            "pid = tl.program_id(0);  offsets = pid * BLOCK + tl.arange(0, BLOCK)\n"
            "mask = offsets < n;  x = tl.load(x_ptr + offsets, mask=mask)")
    ax.text(W / 2, 0.5, code, ha="center", va="center", fontsize=_FONT - 1, family="monospace")
    _title(ax, W / 2, H - 0.17, f"Triton launch grid: {programs} programs × BLOCK = {B} lanes")
    return fig


# ============================================================================= Chapter 13
_MODELS = {
    "GPT-2": dict(embed="tokens + learned positions", norm="LayerNorm", placement="pre",
                  attn="MHA ($h_{kv} = h$)", ffn="GELU FFN, $4\\,d_{\\mathrm{model}}$", extra="bias, tied head"),
    "LLaMA-3": dict(embed="tokens (RoPE in attention)", norm="RMSNorm", placement="pre",
                    attn="GQA + RoPE", ffn="SwiGLU", extra="no bias, untied head"),
    "Mistral / Mixtral": dict(embed="tokens (RoPE in attention)", norm="RMSNorm", placement="pre",
                              attn="GQA + RoPE\nMistral: sliding window", ffn="SwiGLU\nMixtral: 8 experts, top-2",
                              extra="no bias, untied head"),
    "Gemma-2": dict(embed="tokens (RoPE in attention)", norm="RMSNorm", placement="sandwich",
                    attn="GQA + RoPE, soft-cap\nlocal / global layers", ffn="GeGLU",
                    extra="no bias, tied head,\nlogit soft-cap"),
}


def architectures(models: Sequence[str] = ("GPT-2", "LLaMA-3", "Mistral / Mixtral", "Gemma-2")) -> Figure:
    """The decoder blocks of GPT-2, LLaMA-3, Mistral/Mixtral and Gemma-2 side by side (the recipes of
    ``course_lib.architectures``); every part that differs from the column to its left is drawn with
    a red edge, so each column shows what that model changed.
    """
    models = list(models)
    if not models or len(models) > 4:
        raise ValueError(f"models: expected 1 to 4 of {list(_MODELS)}; got {models!r}")
    for m in models:
        _choice("models", m, list(_MODELS))
    W, H = 8.0, 6.0
    fig, ax = _canvas(W, H)
    pw = W / len(models)
    w = min(1.6, pw - 0.4)
    red = dict(edge="new", lw=2.2)
    tops = []
    for p, name in enumerate(models):
        spec = _MODELS[name]
        ref = _MODELS[models[p - 1]] if p else spec
        diff = {k for k in spec if spec[k] != ref[k]}
        x = pw * (p + 0.5) - 0.12
        y0 = 0.55
        _box(ax, x, y0, w, 0.42, spec["embed"], "embed", fontsize=_FONT - 2, **(red if "embed" in diff else {}))
        norms = (("norm",) if "norm" in diff else ()) + (("norm2",) if "placement" in diff else ())
        y = _sublayer(ax, x, y0 + 0.21, w, spec["attn"], "attn", spec["placement"], spec["norm"],
                      highlight=(("sublayer",) if "attn" in diff else ()) + norms, fontsize=_FONT - 2,
                      box_h=0.44, gap=0.13)
        y = _sublayer(ax, x, y, w, spec["ffn"], "ffn", spec["placement"], spec["norm"],
                      highlight=(("sublayer",) if "ffn" in diff else ()) + norms, fontsize=_FONT - 2,
                      box_h=0.44, gap=0.13)
        _box(ax, x, y + 0.15, w, 0.3, f"final {spec['norm']}", "norm", fontsize=_FONT - 2,
             **(red if "norm" in diff else {}))
        ax.text(x, y + 0.55, spec["extra"], ha="center", va="center", fontsize=_FONT - 2,
                color=PALETTE["new"] if "extra" in diff else PALETTE["text"])
        tops.append((x, name))
        H = max(H, y + 1.2)
    _fit_height(fig, ax, H)
    for x, name in tops:
        _title(ax, x, H - 0.2, name, fontsize=_FONT)
    ax.text(W / 2, 0.12, "red edge: what the model changed against the column to its left", ha="center",
            va="center", fontsize=_FONT - 1, color=PALETTE["new"])
    return fig


# ----------------------------------------------------------------------------- Chapter 14
def pretraining_objectives(n_tokens: int = 6, masked: Sequence[int] = (1, 4), split: int = 3) -> Figure:
    """The three self-supervised objectives of Chapter 14, on one sentence of ``n_tokens`` tokens.

    GPT's language modelling (L1): position ``t`` sees tokens ``1 … t`` and predicts ``x_{t+1}``.
    BERT's masked language modelling: the positions in ``masked`` (0-based) are hidden behind
    ``[MASK]`` and predicted from both sides. BERT's next-sentence prediction: ``[CLS] A [SEP] B [SEP]``
    with segment A = tokens ``1 … split``, and the ``[CLS]`` output says IsNext / NotNext.
    """
    n = _int("n_tokens", n_tokens, 2, 10)
    if not isinstance(masked, (list, tuple)) or not masked:
        raise ValueError(f"masked: expected a non-empty list of positions in [0, {n}); got {masked!r}")
    hidden = sorted({_int("masked", m, 0, n - 1) for m in masked})
    a = _int("split", split, 1, n - 1)
    W, H = 8.0, 5.4
    fig, ax = _canvas(W, H)
    x0, step, bw, bh = 2.25, min(0.62, 5.2 / (n + 3)), 0.5, 0.34
    bw = min(bw, step - 0.08)

    # 1. GPT: causal language modelling
    y = H - 1.05
    _title(ax, 0.95, y + 0.55, "GPT: language\nmodelling (L1)", fontsize=_FONT)
    for t in range(n):
        x = x0 + t * step
        _box(ax, x, y, bw, bh, f"$x_{{{t + 1}}}$", "embed", fontsize=_FONT - 1)
        if t < n - 1:
            _box(ax, x, y + 0.62, bw, bh, f"$x_{{{t + 2}}}$", "q", fontsize=_FONT - 1)
            _arrow(ax, (x, y + bh / 2), (x, y + 0.62 - bh / 2))
    ax.text(x0 + n * step, y + 0.3, "position $t$ sees $x_1 … x_t$\nand predicts $x_{t+1}$",
            ha="left", va="center", fontsize=_FONT - 1)

    # 2. BERT: masked language modelling
    y = H - 2.75
    _title(ax, 0.95, y + 0.55, "BERT: masked\nlanguage model", fontsize=_FONT)
    for t in range(n):
        x = x0 + t * step
        if t in hidden:
            _box(ax, x, y, bw, bh, "[M]", "blocked", fontsize=_FONT - 2, tint=0.35)
            _box(ax, x, y + 0.62, bw, bh, f"$x_{{{t + 1}}}$", "q", fontsize=_FONT - 1)
            _arrow(ax, (x, y + bh / 2), (x, y + 0.62 - bh / 2))
        else:
            _box(ax, x, y, bw, bh, f"$x_{{{t + 1}}}$", "embed", fontsize=_FONT - 1)
    ax.text(x0 + n * step, y + 0.3, f"{len(hidden)} of {n} hidden, predicted\nfrom both sides (BERT:\n"
            "15% of tokens; 80% [M],\n10% random, 10% kept)", ha="left", va="center", fontsize=_FONT - 1)

    # 3. BERT: next-sentence prediction
    y = 0.75
    _title(ax, 0.95, y + 0.55, "BERT: next-\nsentence prediction", fontsize=_FONT)
    seq = ["[CLS]"] + [f"$a_{{{i + 1}}}$" for i in range(a)] + ["[SEP]"] + \
          [f"$b_{{{i + 1}}}$" for i in range(n - a)] + ["[SEP]"]
    seg = ["A"] * (a + 2) + ["B"] * (n - a + 1)
    step3 = min(step, 5.5 / len(seq))
    bw3 = min(bw, step3 - 0.06)
    for t, (tok, sg) in enumerate(zip(seq, seg)):
        x = x0 + t * step3
        color = "k" if sg == "A" else "v"
        _box(ax, x, y, bw3, bh, tok, color, fontsize=_FONT - 3 if tok.startswith("[") else _FONT - 1)
        ax.text(x, y - 0.32, sg, ha="center", va="center", fontsize=_FONT - 2, color=PALETTE["muted"])
    _box(ax, x0 + 0.35, y + 0.7, 1.25, bh, "IsNext / NotNext", "score", fontsize=_FONT - 2)
    _arrow(ax, (x0, y + bh / 2), (x0, y + 0.7 - bh / 2))
    ax.text(x0 + 1.1, y + 0.7, "from the [CLS] output; B is the true next sentence half of the time",
            ha="left", va="center", fontsize=_FONT - 1)
    return fig
