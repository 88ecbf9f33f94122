"""Heatmap -> the figure's data: what the page carries for the loader to draw it with BokehJS (`payload`) and
what the static SVG is drawn from (`static.svg`). One `Panel` per matrix; a figure stacks one or more."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .catalog import METRICS, PALETTES
from .labels import display_labels, fragment_notes

if TYPE_CHECKING:
    from .heatmap import Heatmap

OVERSHOOT = 0.02  # an intervention's cells above the clean run's value by more than this share of the way: marked
TOOLTIP_CELLS = 8000  # a lens figure with more cells carries no top tokens in its tooltip (page weight)
WRITTEN_CELLS = 40  # tokens (and layers) up to which a lens figure writes each cell's top token in the cell
NAN_COLOR = "#d9d9d9"


def label(metric: str) -> str:
    """A metric's short name for colour bars and tooltips."""
    return METRICS[metric].label if metric in METRICS else metric


PALETTES_JS = Path(__file__).parent / "assets" / "palettes.js"


def palette(name: str) -> tuple[str, ...]:
    """256 colours, low to high (see `spec.PALETTES`): the loader's, from `assets/palettes.js`."""
    return _palettes()[name]


@cache
def _palettes() -> dict[str, tuple[str, ...]]:
    text = PALETTES_JS.read_text(encoding="utf-8")
    table = json.loads(text[text.index("{"):text.rindex("}") + 1])
    return {name: tuple(f"#{rgb}" for rgb in re.findall(r"[0-9A-Fa-f]{6}", colours)) for name, colours in table.items()}


def bokeh_palette(name: str) -> tuple[str, ...]:
    """A palette made from Bokeh's, as `assets/palettes.js` holds it (`palettes_js`)."""
    from bokeh.palettes import Cividis256, RdBu11, Viridis256, YlOrBr9, interp_palette

    if name == "cividis":
        return Cividis256
    if name == "viridis":
        return Viridis256
    if name == "diverging":
        return interp_palette(RdBu11, 256)  # blue (negative) through white to red (positive)
    return interp_palette(YlOrBr9[::-1], 256)  # light yellow (low) to dark brown (high)


def palettes_js() -> str:
    """`assets/palettes.js`, made from Bokeh's palettes: the loader's and `palette`'s (a test keeps them so)."""
    table = {name: "".join(c[1:7] for c in bokeh_palette(name)) for name in PALETTES}
    return ("/* 256 colours per palette, low to high, as hexadecimal RGB: made by mkdocs_layerheat.figure.palettes_js\n"
            "   from Bokeh's palettes (tests/test_render.py checks that they agree). */\n"
            f"window.layerheatPalettes = {json.dumps(table, indent=1, sort_keys=True)};\n")


def colour_index(values: np.ndarray, scale: tuple[float, float], n: int = 256) -> np.ndarray:
    """Each cell's palette index as BokehJS's LinearColorMapper picks it (-1: no value)."""
    low, high = scale
    with np.errstate(invalid="ignore"):
        at = np.floor((values.astype(np.float64) - low) / ((high - low) or 1.0) * n)
    out = np.clip(np.nan_to_num(at, nan=-1.0), 0, n - 1).astype(int)
    return np.where(np.isnan(values), -1, out)


def figure_height(n_layers: int) -> int:
    """Pixels of one panel, reserved before BokehJS draws it so that the page does not jump."""
    return int(min(900, max(320, 16 * n_layers + 160)))


def value_scale(values: np.ndarray, normalize: str, palette: str) -> tuple[float, float]:
    """The colour scale: 0-1 for normalised values, else their range (symmetric around 0 when diverging)."""
    from .heatmap import quiet

    if normalize != "none":
        return 0.0, 1.0
    low, high = float(quiet(np.nanmin, values)), float(quiet(np.nanmax, values))
    if np.isnan(low):
        return 0.0, 1.0
    if palette == "diverging":  # white is zero: a symmetric range around it
        low, high = -max(abs(low), abs(high)), max(abs(low), abs(high))
    return low, high


def reference_scale(heatmap: Heatmap, normalize: str) -> tuple[float, float] | None:
    """An intervention shown as computed runs its colours from the corrupted run's value to the clean run's."""
    from .phenomena import reference

    found = reference(heatmap.metric, heatmap.extras) if normalize == "none" else None
    return (min(found[:2]), max(found[:2])) if found and found[0] != found[1] else None


def _marked(label: str, kind: str) -> str:
    """Axis label of a token: special and chat-template tokens in ⟨angle brackets⟩, generated ones starred."""
    return {"special": f"⟨{label}⟩", "template": f"⟨{label}⟩", "generated": f"{label}*"}.get(kind, label)


@dataclass
class Panel:
    """One matrix as drawn: `values` shown on the colour `scale`, `heatmap` for the raw values and labels."""

    heatmap: Heatmap
    values: np.ndarray
    labels: list[str]  # display labels of the tokens (`labels.display_labels`)
    scale: tuple[float, float]
    palette: str = "yellow-brown"
    show_raw: bool = False  # the tooltip gives the raw value too (normalised figures)
    title: str | None = None
    clipped: bool = False  # the scale is a robust range or an intervention's: cells beyond it are marked
    mark_below: bool = True  # (an intervention marks only what lies above its clean run)
    linked: bool = False  # pans and zooms with the figure's first panel

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    @property
    def metric(self) -> str:
        return label(self.heatmap.metric)

    @cached_property
    def axis_labels(self) -> list[str]:
        """The x-axis labels: kinds marked (`_marked`); a causal trace's subject starred, as ROME's figures do;
        an activation patching's differing tokens as clean → corrupted."""
        heatmap, trace = self.heatmap, self.heatmap.extras
        out = [_marked(text, kind) for text, kind in zip(self.labels, heatmap.kinds)]
        if heatmap.metric == "causal-trace" and "subject" in trace:
            for i in range(*trace["subject"]):
                out[i] += "*"
        for i in trace.get("differs", []) if heatmap.metric == "activation-patching" else []:
            out[i] += "→" + display_labels([trace["corrupt_tokens"][i]])[0]
        return out

    @cached_property
    def beyond(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices (row-major) of the cells above the colour scale (▲) and below it (▼)."""
        if not self.clipped:
            return np.array([], int), np.array([], int)
        low, high = self.scale
        with np.errstate(invalid="ignore"):
            above = self.values > high + (0 if self.mark_below else OVERSHOOT * (high - low))
            below = self.values < low if self.mark_below else np.zeros_like(above)
        return np.flatnonzero(above), np.flatnonzero(below)

    @property
    def bar_title(self) -> str:
        marks = "▲▼" if self.mark_below else "▲"
        return f"{self.metric} (clipped {marks})" if sum(map(len, self.beyond)) else self.metric

    @property
    def unit(self) -> bool:
        """A 0-1 scale: its colour bar is ticked 0.0, 0.2, ... 1.0."""
        return tuple(self.scale) == (0.0, 1.0)

    @property
    def layer_step(self) -> int:
        """Every how many rows a layer is labelled: at most 20 labels."""
        return max(1, -(-self.shape[0] // 20))

    @property
    def rotated(self) -> bool:
        """Token labels stand upright (rotated 90°) when they are long or many."""
        return max(map(len, self.labels), default=0) > 2 or self.shape[1] > 30

    @cached_property
    def top(self) -> list[str]:
        """A logit lens's tooltip line per cell (row-major): its top tokens with their probabilities."""
        tokens, probs = self.heatmap.extras.get("top_tokens"), self.heatmap.extras.get("top_probs")
        n_cells = self.values.size
        if not tokens or n_cells > TOOLTIP_CELLS or len(tokens) * len(tokens[0]) != n_cells:
            return []
        return [", ".join(f"{display_labels([t])[0]} {p:.2f}" for t, p in zip(ts, ps))
                for row_t, row_p in zip(tokens, probs) for ts, ps in zip(row_t, row_p)]

    @cached_property
    def words(self) -> list[tuple[int, int, str, str]]:
        """(row, token, word, ink): each cell's top-1 token written in it, as nostalgebraist's logit-lens
        figures do, when the figure is small enough for the words to fit; white on dark colours, black on light."""
        n_layers, n_tokens = self.shape
        if not self.top or n_tokens > WRITTEN_CELLS or n_layers > WRITTEN_CELLS:
            return []
        colours = palette(self.palette)
        light = [0.299 * int(c[1:3], 16) + 0.587 * int(c[3:5], 16) + 0.114 * int(c[5:7], 16) > 140 for c in colours]
        levels = colour_index(self.values, self.scale, len(colours))
        return [(r, t, display_labels([best[0]])[0][:8], "#000000" if light[levels[r, t]] else "#ffffff")
                for r, row in enumerate(self.heatmap.extras["top_tokens"]) for t, best in enumerate(row)
                if levels[r, t] >= 0]

    def data(self) -> dict:
        """What the loader draws this panel from: typed arrays as base64, labels, options."""
        heatmap = self.heatmap
        out = {"title": self.title, "shape": list(self.shape), "raw": _f32(heatmap.values), "palette": self.palette,
               "scale": list(self.scale), "metric": self.metric, "bar": self.bar_title, "unit": self.unit,
               "tokens": self.labels, "layers": [str(x) for x in heatmap.layers], "step": self.layer_step,
               "rotated": self.rotated, "height": figure_height(self.shape[0]),
               "width": max(320, 12 * self.shape[1] + 160)}
        out.update(_shown(self.values, heatmap.values))
        sparse = {"marked": [(i, x) for i, (x, y) in enumerate(zip(self.axis_labels, self.labels)) if x != y],
                  "kinds": [(i, k) for i, k in enumerate(heatmap.kinds) if k != "text"],
                  "notes": [(i, n) for i, n in enumerate(fragment_notes(heatmap.token_bytes, self.shape[1])) if n]}
        out.update({name: dict(pairs) for name, pairs in sparse.items() if pairs})
        above, below = self.beyond
        out.update({k: v.tolist() for k, v in (("above", above), ("below", below)) if len(v)})
        for name, value in (("show_raw", self.show_raw), ("linked", self.linked), ("top", self.top)):
            if value:
                out[name] = value
        if self.words:
            out["words"] = [list(w) for w in self.words]
        return out


def _f32(values: np.ndarray) -> str:
    """A matrix as base64 little-endian float32, row-major (NaN kept): 4 bytes a cell before base64."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


def _shown(shown: np.ndarray, raw: np.ndarray) -> dict:
    """How the loader gets the shown values from the raw ones: the same (nothing to say), an affine map per row,
    per column or overall (`fit`: axis, scales, offsets), or else the shown matrix itself (`values`)."""
    shown64, raw64 = shown.astype(np.float64), raw.astype(np.float64)
    if np.array_equal(shown64, raw64, equal_nan=True):
        return {}
    for axis in (None, 1, 0):
        fit = _affine(shown64, raw64, axis)
        if fit is not None:
            return {"fit": {"axis": {None: "all", 1: "row", 0: "column"}[axis], "scale": fit[0], "offset": fit[1]}}
    return {"values": _f32(shown)}


def _affine(shown: np.ndarray, raw: np.ndarray, axis: int | None) -> tuple[list[float], list[float]] | None:
    """Scale and offset per group (row: axis 1, column: axis 0, all: None) with shown = raw * scale + offset
    exactly (to float32), or None."""
    groups = [(shown.ravel(), raw.ravel())] if axis is None else (
        list(zip(shown, raw)) if axis == 1 else list(zip(shown.T, raw.T)))
    scales, offsets = [], []
    for s, r in groups:
        ok = ~np.isnan(r)
        if not np.array_equal(ok, ~np.isnan(s)):
            return None
        a = b = 0.0
        if ok.any():
            lo, hi = int(np.argmin(np.where(ok, r, np.inf))), int(np.argmax(np.where(ok, r, -np.inf)))
            a = (s[hi] - s[lo]) / (r[hi] - r[lo]) if r[hi] > r[lo] else 0.0
            b = s[lo] - a * r[lo]
            if not np.allclose((r[ok] * a + b).astype(np.float32), s[ok], rtol=1e-6, atol=1e-6):
                return None
        scales.append(float(a)), offsets.append(float(b))
    return scales, offsets


@dataclass
class Figure:
    """Panels stacked on one page element; panels with `linked` share the first one's token axis."""

    panels: list[Panel]
    layer_label: str = "Layer"

    @property
    def height(self) -> int:
        return sum(figure_height(p.shape[0]) for p in self.panels)

    def payload(self) -> str:
        """The figure's data as the text of a <script type="application/json"> element: "</" and friends escaped
        so that it cannot end early; the same figure gives the same bytes in any build."""
        data = {"layer_label": self.layer_label, "panels": [p.data() for p in self.panels]}
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def single(heatmap: Heatmap, values: np.ndarray, labels: list[str], normalize: str, palette: str = "yellow-brown",
           layer_label: str = "Layer", clip: tuple[float, float] | None = None, mark_below: bool = True) -> Figure:
    """One heatmap; `clip`, a robust colour range (the cells beyond it are marked: those below it only if
    `mark_below`)."""
    scale = clip or value_scale(values, normalize, palette)
    return Figure([Panel(heatmap, values, labels, scale, palette, normalize != "none", clipped=clip is not None,
                         mark_below=mark_below)], layer_label)


def compared(sides: list[tuple[Heatmap, np.ndarray, list[str]]], titles: list[str],
             delta: tuple[Heatmap, np.ndarray, list[str]] | None, normalize: str, palette: str = "yellow-brown",
             layer_label: str = "Layer", clip: tuple[float, float] | None = None) -> Figure:
    """Panels (a) and (b) on one colour scale, then (c) their difference on a diverging scale. Panels of the
    same length pan and zoom together."""
    scale = clip or value_scale(np.concatenate([values.ravel() for _, values, _ in sides]), normalize, palette)
    same_length = len(sides[0][0].tokens) == len(sides[1][0].tokens)
    panels = [Panel(h, v, lab, scale, palette, normalize != "none", title, clip is not None, linked=i > 0 and same_length)
              for i, ((h, v, lab), title) in enumerate(zip(sides, titles))]
    if delta is not None:
        heatmap, values, labels = delta
        span = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.0
        span = span if span > 0 else 1.0  # identical: an all-white panel on a nominal scale
        panels.append(Panel(heatmap, values, labels, (-span, span), "diverging", normalize != "none", titles[2],
                            linked=True))
    return Figure(panels, layer_label)


def stacked(sides: list[tuple[Heatmap, np.ndarray, list[str], tuple[float, float] | None]], titles: list[str],
            normalize: str, palette: str = "yellow-brown", layer_label: str = "Layer") -> Figure:
    """Several metrics of one text, one panel each (its own colour scale, or robust `clip`), on one token axis
    that pans and zooms them together."""
    return Figure([Panel(h, v, lab, clip or value_scale(v, normalize, palette), palette, normalize != "none", title,
                         clip is not None, linked=i > 0)
                   for i, ((h, v, lab, clip), title) in enumerate(zip(sides, titles))], layer_label)
