"""Draw the course's diagrams into wikigpt_lib/assets/diagrams/ as PNG files.

    python tools/draw_diagrams.py            # all of them
    python tools/draw_diagrams.py attention  # only some, by name

Every figure is drawn with matplotlib from boxes, arrows and text, so a diagram is changed by
editing this file and running it again. The output is deterministic: the same matplotlib gives
the same bytes, so re-running it leaves `git status` clean. Coordinates are in inches from the
bottom-left corner of each figure.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle
from matplotlib.textpath import TextPath
from PIL import Image

OUT_DIR = Path(__file__).resolve().parent.parent / "wikigpt_lib" / "assets" / "diagrams"
DPI = 100

matplotlib.rcParams.update(
    {
        "font.family": "DejaVu Sans",
        "font.size": 10,
        "svg.hashsalt": "wikigpt",  # fixed ids, should anyone save an SVG
    }
)

# One colour per kind of thing, the same in every figure: (fill, edge).
STYLE = {
    "data": ("#f2f2f2", "#6b6b6b"),  # tensors going in and out
    "linear": ("#dbe8f6", "#3b73b9"),  # learned linear maps
    "attn": ("#fde6cf", "#d2700f"),  # attention's own steps
    "norm": ("#ece3f7", "#7652ad"),  # LayerNorm
    "mlp": ("#dcf1e3", "#2e8b57"),  # the MLP
    "embed": ("#fff1c1", "#b08800"),  # embedding tables
    "block": ("#e6ebf1", "#4a5b6d"),  # a whole transformer block
    "loss": ("#fadcdc", "#c0392b"),  # the loss and its gradient
    "new": ("#fde6cf", "#d2700f"),  # KV cache: computed in this call
    "cached": ("#dbe8f6", "#3b73b9"),  # KV cache: read from the cache
    "off": ("#f6f6f6", "#b5b5b5"),  # greyed out: not used, not computed
}
INK = "#222222"  # text
ARROW = "#444444"  # arrows
QUIET = "#666666"  # notes and shapes
MONO = "DejaVu Sans Mono"


# --- drawing helpers ---------------------------------------------------------------------------


def new_figure(width: float, height: float):
    """A white figure whose axes cover it, in inches: (0, 0) bottom left."""
    fig = Figure(figsize=(width, height), facecolor="white")  # no pyplot: no GUI, no state
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def box(
    ax,
    x: float,
    y: float,
    w: float,
    h: float,
    text: str = "",
    style: str | tuple[str, str] = "data",
    size: float = 10,
    weight: str = "normal",
    color: str = INK,
    family: str | None = None,
    lw: float = 1.2,
    rounding: float = 0.06,
):
    """A rounded box centred on (x, y), with centred text; `style` names a STYLE entry or is a
    (fill, edge) pair of colours."""
    fill, edge = STYLE[style] if isinstance(style, str) else style
    patch = FancyBboxPatch(
        (x - w / 2, y - h / 2),
        w,
        h,
        boxstyle=f"round,pad=0,rounding_size={rounding}",
        facecolor=fill,
        edgecolor=edge,
        linewidth=lw,
        zorder=2,
    )
    ax.add_patch(patch)
    if text:
        ax.text(
            x,
            y,
            text,
            ha="center",
            va="center",
            fontsize=size,
            fontweight=weight,
            color=color,
            family=family or matplotlib.rcParams["font.family"],
            zorder=3,
            linespacing=1.25,
        )
    return patch


def arrow(
    ax,
    start: tuple[float, float],
    end: tuple[float, float],
    color: str = ARROW,
    lw: float = 1.3,
    style: str = "-|>",
    connection: str = "arc3",
    dashed: bool = False,
    head: float = 11,
):
    """An arrow from start to end (both in inches), drawn exactly between the two points."""
    patch = FancyArrowPatch(
        start,
        end,
        arrowstyle=style,
        connectionstyle=connection,
        mutation_scale=head,
        color=color,
        linewidth=lw,
        linestyle=(0, (4, 3)) if dashed else "solid",
        shrinkA=0,
        shrinkB=0,
        zorder=1,
    )
    ax.add_patch(patch)
    return patch


def path_arrow(ax, points: Sequence[tuple[float, float]], color: str = ARROW, lw: float = 1.3):
    """A polyline through `points` with an arrowhead on its last segment."""
    xs, ys = zip(*points[:-1], strict=True)
    ax.plot(xs, ys, color=color, lw=lw, solid_capstyle="butt", zorder=1)
    arrow(ax, points[-2], points[-1], color=color, lw=lw)


def plus(ax, x: float, y: float, r: float = 0.14):
    """The residual addition: a circle with a plus sign."""
    ax.add_patch(Circle((x, y), r, facecolor="white", edgecolor=ARROW, linewidth=1.3, zorder=2))
    ax.plot([x - r * 0.6, x + r * 0.6], [y, y], color=ARROW, lw=1.3, zorder=3)
    ax.plot([x, x], [y - r * 0.6, y + r * 0.6], color=ARROW, lw=1.3, zorder=3)


def note(ax, x: float, y: float, text: str, ha: str = "left", size: float = 8.5, **kw):
    """A quiet explanatory note."""
    kw.setdefault("color", QUIET)
    kw.setdefault("va", "center")
    ax.text(x, y, text, ha=ha, fontsize=size, linespacing=1.3, zorder=3, **kw)


def shape(ax, x: float, y: float, text: str, ha: str = "left", size: float = 8.5, **kw):
    """A tensor shape, in monospace."""
    kw.setdefault("color", QUIET)
    ax.text(x, y, text, ha=ha, va="center", fontsize=size, family=MONO, zorder=3, **kw)


def matrix_icon(ax, x: float, y: float, values, cell: float = 0.085, masked=None):
    """A small square matrix with its top-left corner at (x, y); darker = larger value.
    `masked[i][j]` True draws that cell as a hatched, hidden entry."""
    n = len(values)
    for i in range(n):
        for j in range(n):
            x0, y0 = x + j * cell, y - (i + 1) * cell
            if masked is not None and masked[i][j]:
                ax.add_patch(
                    Rectangle(
                        (x0, y0),
                        cell,
                        cell,
                        facecolor="#d9d9d9",
                        edgecolor="white",
                        lw=0.6,
                        hatch="////",
                        zorder=2,
                    )
                )
                continue
            v = max(0.0, min(1.0, values[i][j]))
            shade = matplotlib.colormaps["Oranges"](0.1 + 0.8 * v)
            ax.add_patch(
                Rectangle(
                    (x0, y0), cell, cell, facecolor=shade, edgecolor="white", lw=0.6, zorder=2
                )
            )
    ax.add_patch(
        Rectangle(
            (x, y - n * cell), n * cell, n * cell, fill=False, edgecolor=QUIET, lw=0.8, zorder=3
        )
    )


def save(fig, name: str) -> Path:
    """Write `fig` to wikigpt_lib/assets/diagrams/<name>.png: no timestamp or software tag, and reduced
    to a 128-colour palette (Pillow, which matplotlib itself needs), which looks the same on a
    white diagram and makes the file about three times smaller."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    image = Image.open(buffer).convert("RGB")
    image = image.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    image.save(path, format="PNG", optimize=True)
    return path


# --- 1. attention (notebook 03) ----------------------------------------------------------------


def draw_attention() -> Path:
    """Multi-head causal self-attention, top to bottom, with every tensor's shape."""
    W, H = 8.6, 6.7
    fig, ax = new_figure(W, H)
    X = 4.1  # the main axis
    xq, xk, xv = X - 0.55, X + 0.55, X + 1.75
    wide_x, wide_w = (X - 0.95 + xv + 0.4) / 2, xv + 0.4 - (X - 0.95)  # c_attn and weights @ v
    bh = 0.38  # box height
    left = X - 1.2  # right edge of the notes
    right = xv + 0.7  # left edge of the shapes
    ys = [6.2 - 0.62 * i for i in range(10)]  # ten levels, top to bottom

    note(ax, right, 6.55, "shape", weight="bold", color=INK, size=9)
    # the heads' region
    top, bottom = ys[2] + 0.36, ys[6] - 0.3
    ax.add_patch(
        FancyBboxPatch(
            (X - 1.08, bottom),
            xv + 0.53 - (X - 1.08),
            top - bottom,
            boxstyle="round,pad=0,rounding_size=0.1",
            facecolor="#fbf8f3",
            edgecolor="#e2cdb3",
            lw=1.0,
            zorder=0,
        )
    )
    note(ax, xv + 0.53, bottom - 0.13, "all nh heads at once", ha="right", size=8, style="italic")

    levels = [
        ("x", "data", "(B, T, C)", "one vector of C numbers per position"),
        (
            "c_attn: Linear C → 3C",
            "linear",
            "(B, T, 3C)",
            "queries, keys and values of\nevery head in one matmul",
        ),
        (
            None,
            "attn",
            "(B, nh, T, hs) each",
            "split in three, then view + transpose:\nthe heads become a batch dimension",
        ),
        ("q · kᵀ / √hs", "attn", "(B, nh, T, T)", "how well each query\nmatches each key"),
        (
            "causal mask",
            "attn",
            "(B, nh, T, T)",
            "−∞ above the diagonal:\nno position sees the future",
        ),
        ("softmax", "attn", "(B, nh, T, T)", "weights: each row sums to 1"),
        (
            "weights @ v",
            "attn",
            "(B, nh, T, hs)",
            "each position's weighted\naverage of the values",
        ),
        ("merge heads", "data", "(B, T, C)", "transpose + view:\nthe heads side by side again"),
        ("c_proj: Linear C → C", "linear", "(B, T, C)", "mixes the heads' outputs"),
        ("y", "data", "(B, T, C)", ""),
    ]
    for i, (label, style, shp, text) in enumerate(levels):
        y = ys[i]
        if i == 1 or i == 6:
            box(ax, wide_x, y, wide_w, bh, label, style)
        elif i == 2:
            for xx, name in ((xq, "q"), (xk, "k"), (xv, "v")):
                box(ax, xx, y, 0.8, bh, name, style, size=11, weight="bold")
        elif i in (0, 9):
            box(ax, X, y, 0.8, bh, label, style, size=11, weight="bold")
        else:
            box(ax, X, y, 1.9, bh, label, style)
        shape(ax, right, y, shp)
        if text:
            note(ax, left, y, text, ha="right")

    # arrows
    def down(x, i, j=None):
        j = i + 1 if j is None else j
        arrow(ax, (x, ys[i] - bh / 2), (x, ys[j] + bh / 2))

    down(X, 0)
    for xx in (xq, xk, xv):
        down(xx, 1)
    arrow(ax, (xq, ys[2] - bh / 2), (X - 0.3, ys[3] + bh / 2))
    arrow(ax, (xk, ys[2] - bh / 2), (X + 0.3, ys[3] + bh / 2))
    down(X, 3)
    down(X, 4)
    down(X, 5)
    down(xv, 2, 6)  # v waits for the weights
    for i in (6, 7, 8):
        down(X, i)
    note(ax, X + 0.1, (ys[5] + ys[6]) / 2, "weights", size=8, style="italic")

    # the T x T matrices, T = 5
    T = 5
    scores = [[((i * 7 + j * 3) % 5) / 4 for j in range(T)] for i in range(T)]
    hidden = [[j > i for j in range(T)] for i in range(T)]
    weights = []
    for i in range(T):
        row = [math.exp(2 * scores[i][j]) if j <= i else 0.0 for j in range(T)]
        weights.append([v / sum(row) for v in row])
    icon_x = right + 1.2
    for level, vals, mask in ((3, scores, None), (4, scores, hidden), (5, weights, None)):
        matrix_icon(ax, icon_x, ys[level] + 0.21, vals, masked=mask)

    note(
        ax,
        0.15,
        0.25,
        "B batch, T positions, C = n_embd, nh heads of size hs = C / nh",
        size=8.5,
        color=INK,
    )
    return save(fig, "attention")


# --- 2. the pre-LN block (notebook 04) ---------------------------------------------------------


def draw_block() -> Path:
    """One pre-LayerNorm transformer block: two branches that add into the residual stream."""
    W, H = 8.4, 4.5
    fig, ax = new_figure(W, H)
    S = 1.5  # the residual stream's x
    bh = 0.5
    y_in, y_out = 4.1, 0.4
    rows = [  # (branch y, plus y, norm, sub-layer, its style, note under it, code)
        (3.35, 2.65, "ln_1\nLayerNorm", "attn\ncausal self-attention", "attn",
         "positions exchange information", "x = x + attn(ln_1(x))"),
        (1.85, 1.15, "ln_2\nLayerNorm", "mlp\nLinear C→4C, GELU, Linear 4C→C", "mlp",
         "each position on its own", "x = x + mlp(ln_2(x))"),
    ]  # fmt: skip
    xn, xs, ws = 3.05, 5.0, 2.3  # norm centre, sub-layer centre, sub-layer width
    box(ax, S, y_in, 1.3, 0.38, "x  (B, T, C)", "data", size=9.5)
    box(ax, S, y_out, 1.3, 0.38, "x  (B, T, C)", "data", size=9.5)
    note(ax, S + 0.8, y_in, "from the embeddings or the previous block", size=8.5)
    note(ax, S + 0.8, y_out, "to the next block, or to ln_f after the last one", size=8.5)
    # the stream: a straight line from top to bottom, through the two additions
    stops = [y_in - 0.19, rows[0][1] + 0.14, rows[0][1] - 0.14, rows[1][1] + 0.14]
    stops += [rows[1][1] - 0.14, y_out + 0.19]
    for a, b in zip(stops[::2], stops[1::2], strict=True):
        arrow(ax, (S, a), (S, b))
    ax.text(S - 0.3, (y_in + y_out) / 2, "residual stream", rotation=90, ha="center",
            va="center", fontsize=9, color=QUIET, style="italic")  # fmt: skip
    for y, yp, norm_text, sub_text, style, under, code in rows:
        ax.plot([S, S], [y, y], color=ARROW)
        ax.add_patch(Circle((S, y), 0.035, color=ARROW, zorder=3))  # the fork
        arrow(ax, (S, y), (xn - 0.5, y))
        box(ax, xn, y, 1.0, bh, norm_text, "norm", size=9)
        arrow(ax, (xn + 0.5, y), (xs - ws / 2, y))
        box(ax, xs, y, ws, bh, sub_text, style, size=9)
        note(ax, xs, y - bh / 2 - 0.13, under, ha="center", size=8, style="italic")
        path_arrow(ax, [(xs + ws / 2, y), (xs + ws / 2 + 0.3, y), (xs + ws / 2 + 0.3, yp),
                        (S + 0.14, yp)])  # fmt: skip
        plus(ax, S, yp)
        ax.text(xs + ws / 2 + 0.45, (y + yp) / 2, code, ha="left", va="center",
                fontsize=8.5, family=MONO, color=INK)  # fmt: skip
    return save(fig, "block")


# --- 3. the whole GPT (notebook 04) ------------------------------------------------------------


def draw_gpt() -> Path:
    """Token ids to logits: embeddings, n_layer blocks, ln_f and the tied lm_head."""
    W, H = 8.4, 6.6
    fig, ax = new_figure(W, H)
    X = 4.1
    bw, bh = 2.4, 0.42
    right = 6.55  # shapes
    xt, xp = X - 1.1, X + 1.1  # token and position columns
    note(ax, right, 6.4, "shape", weight="bold", color=INK, size=9)

    y = 6.15
    box(ax, xt, y, 1.6, 0.36, "token ids", "data", size=9.5)
    box(ax, xp, y, 1.6, 0.36, "positions 0 … T−1", "data", size=9.5)
    shape(ax, right, y, "(B, T) and (T,)")
    y_emb = 5.3
    eh = 0.62
    arrow(ax, (xt, y - 0.18), (xt, y_emb + eh / 2))
    arrow(ax, (xp, y - 0.18), (xp, y_emb + eh / 2))
    box(ax, xt, y_emb, 1.9, eh, "wte\ntoken embedding\nV × C", "embed", size=8.5)
    box(ax, xp, y_emb, 1.9, eh, "wpe\nposition embedding\nblock_size × C", "embed", size=8.5)
    shape(ax, right, y_emb, "(B, T, C) and (T, C)")
    y_sum = 4.5
    arrow(ax, (xt, y_emb - eh / 2), (X - 0.14, y_sum), connection="angle,angleA=-90,angleB=0")
    arrow(ax, (xp, y_emb - eh / 2), (X + 0.14, y_sum), connection="angle,angleA=-90,angleB=180")
    plus(ax, X, y_sum)
    shape(ax, right, y_sum, "(B, T, C)")
    note(ax, X + 0.12, y_sum - 0.3, "add, then dropout", size=8, style="italic")

    blocks = [(3.75, "block 1"), (3.15, "block 2"), (2.65, "⋮"), (2.15, "block n_layer")]
    arrow(ax, (X, y_sum - 0.14), (X, blocks[0][0] + bh / 2))
    for i, (yb, label) in enumerate(blocks):
        if label == "⋮":
            ax.text(X, yb, "⋮", ha="center", va="center", fontsize=14, color=INK)
            continue
        box(ax, X, yb, bw, bh, label, "block", size=9.5)
        nxt = blocks[i + 1][0] if i + 1 < len(blocks) else None
        if nxt is not None and blocks[i + 1][1] != "⋮":
            arrow(ax, (X, yb - bh / 2), (X, nxt + bh / 2))
        elif nxt is not None:
            ax.plot([X, X], [yb - bh / 2, nxt + 0.15], color=ARROW, lw=1.3)
    arrow(ax, (X, blocks[2][0] - 0.15), (X, blocks[3][0] + bh / 2))
    shape(ax, right, blocks[2][0], "(B, T, C)")
    # a bracket on the left: the blocks are identical
    bx = X - bw / 2 - 0.12
    top, bottom = blocks[0][0] + bh / 2, blocks[-1][0] - bh / 2
    ax.plot([bx, bx - 0.08, bx - 0.08, bx], [top, top, bottom, bottom], color=QUIET, lw=1)
    note(ax, bx - 0.2, blocks[2][0], "n_layer identical\nblocks (section 5)", ha="right")

    y_lnf, y_head, y_out = 1.45, 0.85, 0.3
    arrow(ax, (X, blocks[-1][0] - bh / 2), (X, y_lnf + bh / 2))
    box(ax, X, y_lnf, bw, bh, "ln_f: final LayerNorm", "norm", size=9.5)
    shape(ax, right, y_lnf, "(B, T, C)")
    arrow(ax, (X, y_lnf - bh / 2), (X, y_head + bh / 2))
    box(ax, X, y_head, bw, bh, "lm_head: Linear C → V", "linear", size=9.5)
    arrow(ax, (X, y_head - bh / 2), (X, y_out + 0.18))
    box(ax, X, y_out, 1.6, 0.36, "logits", "data", size=9.5)
    shape(ax, right, y_out, "(B, T, V)")
    note(ax, X - 0.95, y_out, "at position t: a score for\nevery candidate token t+1", size=8,
         ha="right", style="italic")  # fmt: skip

    # weight tying: lm_head uses wte's matrix
    xl = 0.6
    ax.plot([xt - 0.95, xl, xl, X - bw / 2], [y_emb, y_emb, y_head, y_head], color="#b08800",
            lw=1.4, ls=(0, (4, 3)), zorder=1)  # fmt: skip
    ax.text(xl - 0.14, (y_emb + y_head) / 2, "one matrix, two uses: lm_head.weight is wte.weight",
            rotation=90, ha="center", va="center", fontsize=8.5, color="#8a6a00")  # fmt: skip
    return save(fig, "gpt")


# --- 4. the KV cache (notebook 06) -------------------------------------------------------------


def draw_kv_cache() -> Path:
    """Prefill, then one token per step: what each call computes and what it reads back."""
    W, H = 8.8, 7.0
    fig, ax = new_figure(W, H)
    # notebook 06's prompt and the course model's first greedy tokens (its section 8 prints them)
    words = ["The", "album", "was", "released", "in", "the", "United"]
    GX, CW = 2.55, 0.72  # x of position 0, column width
    cw, ch = 0.64, 0.26  # cell size
    col = [GX + p * CW for p in range(8)]
    # (title, lines under it, first new position, last position, next token)
    panels = [
        (
            "prefill",
            "the prompt's 5 tokens\nrun at once; each query\nattends to itself and\n"
            "earlier keys (the\ncausal mask)",
            0,
            4,
            "the",
        ),
        ("step 1", "only the new token\nruns through\nthe model", 5, 5, "United"),
        ("step 2", "only the new token\nruns through\nthe model", 6, 6, "States"),
    ]
    row_dy = {"input": 0.0, "query": -0.45, "keys": -1.0, "values": -1.34}
    tops = [6.2 - 1.95 * k for k in range(3)]  # y of each panel's input row
    note(ax, GX - 0.42, 6.75, "position", ha="right", size=8.5, color=INK)
    for p in range(7):
        ax.text(col[p], 6.75, str(p), ha="center", va="center", fontsize=8.5, color=INK)
    for k, (title, sub, first, last, nxt) in enumerate(panels):
        top = tops[k]
        if k:
            y_sep = (tops[k - 1] + row_dy["values"] - ch / 2 + top + ch / 2) / 2
            ax.plot([0.15, W - 0.15], [y_sep, y_sep], color="#dddddd", lw=1)
        ax.text(0.15, top, title, fontsize=11, fontweight="bold", color=INK, va="center")
        note(ax, 0.15, top - 0.3, sub, size=8.5, va="top")
        for name, dy in row_dy.items():
            note(ax, GX - 0.42, top + dy, name, ha="right", size=8.5, color=INK)
        for p in range(last + 1):
            new = p >= first
            y = top + row_dy["input"]
            box(ax, col[p], y, cw, ch, words[p], "new" if new else "off", size=8.5,
                color=INK if new else "#9a9a9a", rounding=0.04, lw=1.0)  # fmt: skip
            for name in ("keys", "values"):
                y = top + row_dy[name]
                box(ax, col[p], y, cw, ch, f"{name[0]}{p}", "new" if new else "cached",
                    size=8.5, family=MONO, rounding=0.04, lw=1.0)  # fmt: skip
            if new:
                box(ax, col[p], top + row_dy["query"], cw, ch, f"q{p}", "new", size=8.5,
                    family=MONO, rounding=0.04, lw=1.0)  # fmt: skip
        yq, yk = top + row_dy["query"] - ch / 2, top + row_dy["keys"] + ch / 2
        if first == last:  # one query, attending to every key so far
            for p in range(last + 1):
                ax.plot([col[last], col[p]], [yq, yk], color="#d2700f", lw=0.9, alpha=0.8,
                        zorder=1)  # fmt: skip
            note(ax, col[last] + cw / 2 + 0.12, (yq + yk) / 2,
                 f"q{last} attends to\nk0 … k{last}", size=8)  # fmt: skip
        # the last position's logits give the next token, the input of the next step
        xo = col[last] + cw / 2
        arrow(ax, (xo + 0.05, top), (xo + 0.4, top))
        note(ax, xo + 0.47, top, f"predicts “{nxt}”", size=8.5, color=INK)
        if k + 1 < len(panels):
            end = (col[last + 1] + cw / 2 + 0.02, tops[k + 1] + 0.05)  # the next input's corner
            arrow(ax, (xo + 0.75, top - 0.13), end, connection="arc3,rad=-0.35", dashed=True,
                  color=QUIET, lw=1.0, head=9)  # fmt: skip

    # legend
    ly = 0.42
    box(ax, 0.3, ly, 0.3, 0.2, "", "new", lw=1.0, rounding=0.03)
    note(ax, 0.52, ly, "computed in this call (keys and values appended to the cache)", size=8.5)
    box(ax, 0.3, ly - 0.3, 0.3, 0.2, "", "cached", lw=1.0, rounding=0.03)
    note(ax, 0.52, ly - 0.3, "read back from the cache, not computed again", size=8.5)
    note(ax, 5.55, ly - 0.15, "one layer shown: every layer has its own\nkeys and values, "
         "(B, n_head, length, head_size)", size=8.5)  # fmt: skip
    return save(fig, "kv_cache")


# --- 5. the chat template and its loss mask (notebook 09) --------------------------------------

# (fill, edge, fill of the role's special tokens) per role
ROLE = {
    "system": ("#ece3f7", "#7652ad", "#d3c2ee"),
    "user": ("#dbe8f6", "#3b73b9", "#b9d0ef"),
    "assistant": ("#dcf1e3", "#2e8b57", "#b3e0c2"),
}
# A conversation in notebook 09's template, as the course tokenizer splits it (" Answer" is
# " An" + "sw" + "er"); "␣" marks a token's leading space. (role, tokens) per message.
CONVERSATION = [
    ("system", ["<|system|>", "␣An", "sw", "er", "␣in", "␣one", "␣sentence", "␣.", "<|end|>"]),
    ("user", ["<|user|>", "␣Who", "␣built", "␣the", "␣mill", "␣?", "<|end|>"]),
    ("assistant", ["<|assistant|>", "␣The", "␣council", "␣,", "␣in", "␣176", "3", "␣.", "<|end|>"]),
]


def text_width(text: str, size: float, bold: bool = False) -> float:
    """Width of `text` in inches at font size `size`."""
    prop = FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal")
    return TextPath((0, 0), text, size=size, prop=prop).get_extents().width / 72


def draw_chat_mask() -> Path:
    """One conversation as a row of tokens, inputs over targets, the masked targets grey."""
    W, H = 8.8, 4.7
    fig, ax = new_figure(W, H)
    size, ch, pad, gap = 9.5, 0.3, 0.14, 0.05
    tokens = [(role, t) for role, message in CONVERSATION for t in message]
    trained = [role == "assistant" and i > 0 for role, m in CONVERSATION for i in range(len(m))]
    n = len(tokens) - 1  # inputs are tokens[:-1]; target t is token t+1

    def width(i: int) -> float:
        return text_width(tokens[i][1], size, bold=tokens[i][1].startswith("<|")) + pad

    x0, row_gap, line_gap = 1.55, 0.5, 1.12
    lines, start = [], 0
    for _, message in CONVERSATION:  # one message per line
        lines.append(range(start, min(start + len(message), n)))
        start += len(message)
    centres = {}
    for k, line in enumerate(lines):
        role = CONVERSATION[k][0]
        y_in = H - 0.55 - k * line_gap
        y_tg = y_in - row_gap
        fill, edge, special = ROLE[role]
        ax.text(0.15, (y_in + y_tg) / 2, role, fontsize=10, fontweight="bold", color=edge,
                va="center")  # fmt: skip
        note(ax, x0 - 0.12, y_in, "input", ha="right", size=8.5, color=INK)
        note(ax, x0 - 0.12, y_tg, "target", ha="right", size=8.5, color=INK)
        x = x0
        for t in line:
            w = max(width(t), width(t + 1))
            xc = x + w / 2
            centres[t] = (xc, y_in, y_tg)
            text = tokens[t][1]
            is_special = text.startswith("<|")
            colours = (special if is_special else fill, edge)
            box(ax, xc, y_in, w, ch, text, colours, size=size, lw=1.0, rounding=0.04,
                weight="bold" if is_special else "normal")  # fmt: skip
            target_role = tokens[t + 1][0]
            target = tokens[t + 1][1]
            if trained[t + 1]:
                tf, te, ts = ROLE[target_role]
                colours = (ts if target.startswith("<|") else tf, te)
                box(ax, xc, y_tg, w, ch, target, colours, size=size, lw=1.8, rounding=0.04,
                    weight="bold" if target.startswith("<|") else "normal")  # fmt: skip
            else:
                box(ax, xc, y_tg, w, ch, target, "off", size=size, lw=1.0, rounding=0.04,
                    color="#a8a8a8")  # fmt: skip
            x += w + gap
    # target t is input t+1: a thin line from each target up to that input, within a line
    for t in range(n - 1):
        if t in centres and t + 1 in centres and centres[t][1] == centres[t + 1][1]:
            xa, _, y_tg = centres[t]
            xb, y_in, _ = centres[t + 1]
            ax.plot([xa, xb], [y_tg + ch / 2, y_in - ch / 2], color="#c8c8c8", lw=0.8, zorder=1)

    # legend
    ly = 0.75
    box(ax, 0.35, ly, 0.36, 0.2, "", ROLE["assistant"][:2], lw=1.8, rounding=0.03)
    note(ax, 0.62, ly, "target in the loss: the assistant's text and its <|end|>, which teaches "
         "it to stop", size=8.5, color=INK)  # fmt: skip
    box(ax, 0.35, ly - 0.3, 0.36, 0.2, "", "off", lw=1.0, rounding=0.03)
    note(ax, 0.62, ly - 0.3, "target set to -100: left out of the loss (the model is given "
         "these tokens, never asked for them)", size=8.5, color=INK)  # fmt: skip
    note(ax, 0.62, ly - 0.6, "target at position t = input token t+1 (the grey lines); "
         "␣ is a token's leading space", size=8.5)  # fmt: skip
    return save(fig, "chat_mask")


# --- 6. the training loop (notebook 05) --------------------------------------------------------


def draw_training_loop() -> Path:
    """One optimizer step after another: what each step does, in order."""
    W, H = 8.8, 4.2
    fig, ax = new_figure(W, H)
    bw, bh = 1.85, 0.72
    xs = [1.2, 3.3, 5.4, 7.5]
    y_top, y_bot = 2.6, 1.25
    top = [
        ("learning rate\nlr_schedule(step), set\non every param group", "embed"),
        ("get_batch\nx, y: (B, T) token ids", "data"),
        ("forward\nmodel(x, y) → loss\nunder autocast", "block"),
        ("backward\n(loss / accum).backward()\nfp16: loss scaled first", "loss"),
    ]
    bottom = [  # drawn right to left
        ("clip\nunscale, then the global\ngradient norm to ≤ 1.0", "loss"),
        ("update\noptimizer.step()\nAdamW", "mlp"),
        ("zero_grad()\nstep += 1", "data"),
    ]

    def titled(x: float, y: float, text: str, style: str) -> None:
        """A box whose first line is a bold title."""
        title, body = text.split("\n", 1)
        box(ax, x, y, bw, bh, "", style)
        lines = body.count("\n") + 1
        y_title = y + 0.07 * lines
        ax.text(x, y_title + 0.02, title, ha="center", va="center", fontsize=9,
                fontweight="bold", color=INK, zorder=3)  # fmt: skip
        ax.text(x, y_title - 0.12, body, ha="center", va="top", fontsize=8.5, color=INK,
                linespacing=1.2, zorder=3)  # fmt: skip

    for x, (text, style) in zip(xs, top, strict=True):
        titled(x, y_top, text, style)
    bottom_x = xs[::-1][: len(bottom)]
    for x, (text, style) in zip(bottom_x, bottom, strict=True):
        titled(x, y_bot, text, style)
    # the schedule's shape, small, above its box: linear warmup, then a cosine decay
    cx, cy, cw_, ch_ = xs[0] - 0.55, y_top + bh / 2 + 0.12, 1.1, 0.38
    pts = []
    for i in range(61):
        f = i / 60
        lr = f / 0.1 if f < 0.1 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (f - 0.1) / 0.9))
        pts.append((cx + f * cw_, cy + min(lr, 1.0) * ch_))
    ax.plot(*zip(*pts, strict=True), color="#b08800", lw=1.5)
    ax.plot([cx, cx + cw_], [cy, cy], color=QUIET, lw=0.8)
    note(ax, cx + cw_ + 0.08, cy + 0.12, "warmup,\nthen decay", size=7.5)

    for a, b in zip(xs[:-1], xs[1:], strict=True):
        arrow(ax, (a + bw / 2, y_top), (b - bw / 2, y_top))
    arrow(ax, (xs[3], y_top - bh / 2), (xs[3], y_bot + bh / 2))  # backward -> clip
    for a, b in zip(bottom_x[:-1], bottom_x[1:], strict=True):
        arrow(ax, (a - bw / 2, y_bot), (b + bw / 2, y_bot))
    # zero_grad -> next step's learning rate
    path_arrow(ax, [(xs[1] - bw / 2, y_bot), (xs[0], y_bot), (xs[0], y_top - bh / 2)])
    note(ax, xs[0] - 0.1, (y_top + y_bot) / 2 - 0.05, "next\nstep", ha="right", size=8.5,
         color=INK)  # fmt: skip
    # gradient accumulation: back from backward to get_batch
    arrow(ax, (xs[3] - 0.3, y_top + bh / 2), (xs[1] + 0.3, y_top + bh / 2),
          connection="arc3,rad=0.32", dashed=True, color=QUIET, lw=1.1, head=9)  # fmt: skip
    note(ax, (xs[1] + xs[3]) / 2, y_top + bh / 2 + 0.72, "repeat for each of grad_accum_steps "
         "micro-batches: the gradients add up", ha="center", size=8, style="italic")  # fmt: skip
    # evaluation and checkpoints
    y_ev = 0.35
    arrow(ax, (xs[1], y_bot - bh / 2), (xs[1], y_ev - 0.05), dashed=True, color=QUIET, lw=1.1,
          head=9)  # fmt: skip
    note(ax, xs[1] + 0.15, y_ev + 0.05, "every eval_interval steps: the validation loss, "
         "then a checkpoint\n(the latest, and the best so far if the loss improved)", size=8.5,
         color=INK)  # fmt: skip
    return save(fig, "training_loop")


FIGURES: dict[str, Callable[[], Path]] = {
    "attention": draw_attention,
    "block": draw_block,
    "gpt": draw_gpt,
    "training_loop": draw_training_loop,
    "kv_cache": draw_kv_cache,
    "chat_mask": draw_chat_mask,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", help=f"figures to draw (default: all of {list(FIGURES)})"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(FIGURES))
    if unknown:
        parser.error(f"unknown figure(s) {unknown}; known: {list(FIGURES)}")
    for name in args.names or FIGURES:
        path = FIGURES[name]()
        print(f"{path.relative_to(OUT_DIR.parent.parent)}: {path.stat().st_size / 1024:.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
