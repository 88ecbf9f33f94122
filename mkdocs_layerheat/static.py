"""A figure as a standalone static SVG document, for print, PDF and readers without JavaScript: the picture the
loader draws with BokehJS, each cell in exactly its colour (`figure.colour_index`), as crisp vector paths."""

from __future__ import annotations

import math
import re
from functools import cache
from xml.sax.saxutils import escape

import numpy as np

from .figure import NAN_COLOR, Figure, Panel, colour_index, figure_height, palette

INK = "#444444"
CELL_W = 14  # pixels per token column at least
CHAR_W = 6.5  # estimated width of a character of 11px sans-serif
LABEL_CHARS = 20  # token labels longer than this are cut with "…"
BAR_W, BAR_GAP = 12, 12
RUN = "M%d %dh%dv1h-%dz"  # one horizontal run of cells of one colour: x, y (top row 0), length, length
_UNWRITABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def _text(text: str) -> str:
    """Text for XML: characters that XML 1.0 cannot hold shown as control pictures (or U+FFFD), then escaped."""
    clean = _UNWRITABLE.sub(lambda c: chr(0x2400 + ord(c[0])) if ord(c[0]) < 0x20 else "␡" if c[0] == "\x7f"
                            else "\ufffd", text)
    return escape(clean)


def _n(x: float) -> str:
    """A coordinate: at most two decimals, no trailing zeros."""
    text = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


@cache
def _colours(name: str) -> tuple[list[str], np.ndarray]:
    """The distinct colours of a palette plus NAN_COLOR (sorted), and the colour of each level (NaN: level -1)."""
    unique, ids = np.unique(np.array([*palette(name), NAN_COLOR]), return_inverse=True)
    return unique.tolist(), ids.ravel()


@cache
def _bar_rects(name: str) -> str:
    """The palette as 256 unit rectangles, high at the top (row 0)."""
    return "".join(f'<rect y="{255 - k}" width="1" height="1" fill="{c}"/>' for k, c in enumerate(palette(name)))


def nice_ticks(low: float, high: float, count: int = 5) -> list[tuple[float, str]]:
    """About `count` round ticks within [low, high] (1, 2 or 5 times a power of ten apart: the step whose number
    of ticks is nearest `count`, the coarser on a tie), with their labels."""
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        return [(low, f"{low:g}")] if math.isfinite(low) else []
    power = 10.0 ** math.floor(math.log10((high - low) / count))

    def spread(step: float) -> range:
        return range(math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9) + 1)

    step = min((k * power for k in (1, 2, 5, 10, 20)), key=lambda s: (abs(len(spread(s)) - count), -s))
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    digits = max(1, math.floor(math.log10(max(abs(low), abs(high)))) + decimals + 1)  # tiny steps: 2e-05
    form = f".{decimals}f" if decimals <= 4 else f".{digits}g"
    return [(k * step, format(k * step + 0.0, form)) for k in spread(step)]


def _ticks(panel: Panel) -> list[tuple[float, str]]:
    """The colour bar's ticks: 0.0, 0.2 ... 1.0 on a 0-1 scale (as the loader's), else `nice_ticks`."""
    if panel.unit:
        return [(k / 5, f"{k / 5:.1f}") for k in range(6)]
    return nice_ticks(*map(float, panel.scale))


def _cells(panel: Panel) -> str:
    """One <path> per colour, in cell units: each row's runs of equal colour merged (row 0 at the bottom)."""
    unique, ids = _colours(panel.palette)
    m, n = panel.shape
    colour = ids[colour_index(panel.values, panel.scale, 256)]  # level -1 (NaN) picks the last id: NAN_COLOR
    start = np.ones((m, n), bool)
    start[:, 1:] = colour[:, 1:] != colour[:, :-1]
    at = np.flatnonzero(start)
    which = colour.ravel()[at]
    order = np.argsort(which, kind="stable")
    at, length, which = at[order], np.diff(np.append(at, m * n))[order], which[order]
    flat = np.stack([at % n, m - 1 - at // n, length, length], 1).ravel().tolist()
    edges = [0, *(np.flatnonzero(np.diff(which)) + 1).tolist(), len(which)]
    return "".join(f'<path fill="{unique[which[a]]}" d="{RUN * (b - a) % tuple(flat[4 * a:4 * b])}"/>'
                   for a, b in zip(edges[:-1], edges[1:]))


def _marks(panel: Panel, left: float, top: float, cw: float, ch: float) -> str:
    """White triangles with a thin black outline in the cells beyond the colour scale: ▲ above, ▼ below."""
    m, n = panel.shape
    out = []
    for cells, (shape, apex) in zip(panel.beyond, (("l3 5.2h-6z", -3), ("l3 -5.2h-6z", 3))):
        if len(cells):
            x = left + (cells % n + 0.5) * cw
            y = top + (m - 0.5 - cells // n) * ch + apex
            points = np.round(np.stack([x, y], 1), 2).ravel().tolist()
            d = ("M%.2f %.2f" + shape) * len(cells) % tuple(points)
            out.append(f'<path fill="#ffffff" stroke="#000000" stroke-width="0.5" d="{d}"/>')
    return "".join(out)


def _panel(panel: Panel, layer_label: str, y0: int, left: float, plot_w: float) -> str:
    """One panel, its top at `y0`: title, cells, marks, words, axes and colour bar."""
    m, n = panel.shape
    labels = [x if len(x) <= LABEL_CHARS else x[:LABEL_CHARS - 1] + "…" for x in panel.axis_labels]
    top = 30 if panel.title else 12
    bottom = 14 + CHAR_W * max(map(len, labels), default=1) if panel.rotated else 24
    plot_h = figure_height(m) - top - bottom
    cw, ch = plot_w / max(n, 1), plot_h / max(m, 1)
    out = [f'<g transform="translate(0,{y0})">']
    if panel.title:
        out.append(f'<text x="{_n(left)}" y="18" font-size="13" font-weight="bold">{_text(panel.title)}</text>')
    out.append(f'<g transform="translate({_n(left)},{top}) scale({_n(cw)},{ch:.4f})" shape-rendering="crispEdges">'
               f"{_cells(panel)}</g>")
    out.append(_marks(panel, left, top, cw, ch))
    if panel.words:
        out.append('<g font-size="7pt" text-anchor="middle">')
        out += [f'<text x="{_n(left + (t + 0.5) * cw)}" y="{_n(top + (m - 0.5 - r) * ch)}" dy=".35em" '
                f'fill="{ink}">{_text(word)}</text>' for r, t, word, ink in panel.words]
        out.append("</g>")
    base = top + plot_h + 6
    if panel.rotated:
        out.append('<g text-anchor="end">')
        out += [f'<text transform="translate({_n(left + (i + 0.5) * cw)},{_n(base)}) rotate(-90)" dy=".35em">'
                f"{_text(x)}</text>" for i, x in enumerate(labels)]
    else:
        out.append('<g text-anchor="middle">')
        out += [f'<text x="{_n(left + (i + 0.5) * cw)}" y="{_n(base + 10)}">{_text(x)}</text>'
                for i, x in enumerate(labels)]
    out.append('</g><g text-anchor="end">')
    out += [f'<text x="{_n(left - 6)}" y="{_n(top + (m - 0.5 - r) * ch)}" dy=".35em">'
            f"{_text(str(panel.heatmap.layers[r]))}</text>" for r in range(0, m, panel.layer_step)]
    middle = _n(top + plot_h / 2)
    out.append(f'</g><text transform="translate(14,{middle}) rotate(-90)" text-anchor="middle" font-size="13" '
               f'font-style="italic">{_text(layer_label)}</text>')
    bx = left + plot_w + BAR_GAP
    out.append(f'<g transform="translate({_n(bx)},{top}) scale({BAR_W},{plot_h / 256:.4f})" '
               f'shape-rendering="crispEdges">{_bar_rects(panel.palette)}</g>')
    low, high = map(float, panel.scale)
    ticks = _ticks(panel)
    out.append(f'<g class="bar-ticks"><path stroke="{INK}" stroke-width="1" d="')
    spot = [top + plot_h * (1 - min(1.0, max(0.0, (v - low) / ((high - low) or 1.0)))) for v, _ in ticks]
    out += [f"M{_n(bx + BAR_W)} {_n(y)}h4" for y in spot]
    out.append('"/>')
    out += [f'<text x="{_n(bx + BAR_W + 6)}" y="{_n(y)}" dy=".35em">{_text(label)}</text>'
            for y, (_, label) in zip(spot, ticks)]
    tx = bx + BAR_W + 18 + CHAR_W * max((len(x) for _, x in ticks), default=1)
    out.append(f'</g><text transform="translate({_n(tx)},{middle}) rotate(-90)" text-anchor="middle" '
               f'font-size="12" font-style="italic">{_text(panel.bar_title)}</text></g>')
    return "".join(out)


def svg(figure: Figure) -> str:
    """The figure as a standalone SVG document (no external references): its panels stacked, each as BokehJS
    draws it, on a light theme; the same figure gives the same bytes."""
    panels = figure.panels
    layer_chars = max((len(str(x)) for p in panels for x in p.heatmap.layers), default=1)
    tick_chars = max((len(x) for p in panels for _, x in _ticks(p)), default=1)
    left = 26 + CHAR_W * layer_chars + 6
    right = BAR_GAP + BAR_W + 18 + CHAR_W * tick_chars + 20
    n_max = max((p.shape[1] for p in panels), default=1)
    width = math.ceil(max(320, 12 * n_max + 160, left + CELL_W * n_max + right))
    height = figure.height
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" fill="{INK}">'
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>']
    y0 = 0
    for panel in panels:
        out.append(_panel(panel, figure.layer_label, y0, left, width - left - right))
        y0 += figure_height(panel.shape[0])
    out.append("</svg>\n")
    return "".join(out)
