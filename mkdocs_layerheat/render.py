"""Heatmap + Findings -> HTML: a Bokeh `json_item` for the figure and Jinja2 templates for everything around it."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from typing import TYPE_CHECKING

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape

from importlib.metadata import version

from .cache import source_hash
from .metrics import METRICS

if TYPE_CHECKING:  # numpy is imported only when a figure is drawn: a warm build never needs it
    import numpy as np

    from .analysis import Findings
    from .heatmap import Heatmap

ASSETS = Path(__file__).parent / "assets"
_VISIBLE_WHITESPACE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"})


def template_dir() -> Path:
    """`templates/` inside the installed wheel, or at the repository root in a source checkout."""
    for candidate in (Path(__file__).parent / "templates", Path(__file__).parent.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("mkdocs-layerheat templates not found")


def display_labels(tokens: list[str]) -> list[str]:
    """Readable token labels: no leading-space markers; whitespace-only tokens and line breaks made visible."""
    labels = []
    for piece in tokens:
        if not piece.strip():
            labels.append(piece.translate(_VISIBLE_WHITESPACE) or "∅")
        else:
            labels.append(piece.strip().replace("\n", "↵").replace("\t", "⇥"))
    return labels


def _number(value: float) -> str:
    if value is None or value != value:  # None or NaN
        return "n/a"
    return f"{value:.2f}" if 0.01 <= abs(value) < 1000 else f"{value:.3g}"


def _marked(label: str, kind: str) -> str:
    """Axis label of a token: special and chat-template tokens in ⟨angle brackets⟩, generated ones starred."""
    return {"special": f"⟨{label}⟩", "template": f"⟨{label}⟩", "generated": f"{label}*"}.get(kind, label)


def figure_height(n_layers: int) -> int:
    """Pixels reserved for a figure before BokehJS draws it, so the page does not jump."""
    return int(min(900, max(320, 16 * n_layers + 160)))


def _palette(name: str) -> tuple[str, ...]:
    """256 colours, low to high: see `spec.PALETTES`."""
    from bokeh.palettes import Cividis256, RdBu11, Viridis256, YlOrBr9, interp_palette

    if name == "cividis":
        return Cividis256
    if name == "viridis":
        return Viridis256
    if name == "diverging":
        return interp_palette(RdBu11[::-1], 256)  # blue (negative) through white to red (positive)
    return interp_palette(YlOrBr9[::-1], 256)  # light yellow (low) to dark brown (high)


# Hover text for a cell of the image: "$x{token}" names the token, "$x{raw}" gives the raw value
# before normalisation, "$y{layer}" the layer label. Cells are looked up from the pointer's data coordinates.
_HOVER_CELL = """
const n = labels.length, i = Math.max(0, Math.min(n - 1, Math.round(special_vars.x)));
const j = Math.max(0, Math.min(layers.length - 1, Math.round(special_vars.y)));
if (format === "token") return labels[i] + " (position " + i + (kinds[i] === "text" ? "" : ", " + kinds[i]) + ")";
if (format === "layer") return String(layers[j]);
const v = raw[j * n + i];
return Number.isNaN(v) ? "n/a" : v.toFixed(3);
"""


def figure_item(heatmap: Heatmap, values: np.ndarray, labels: list[str], normalize: str,
                palette: str = "yellow-brown", layer_label: str = "Layer") -> dict:
    """The Bokeh figure as a `json_item`, to embed with `Bokeh.embed.embed_item`.

    The matrix is one image glyph: its values (and the raw values for the tooltip) travel as
    base64 float32 arrays, a few bytes per cell, instead of a JSON object per cell.
    """
    import numpy as np
    from bokeh.embed import json_item
    from bokeh.models import (
        BasicTicker, ColorBar, CustomJSHover, FixedTicker, HoverTool, LinearColorMapper, PrintfTickFormatter,
    )
    from bokeh.plotting import figure

    n_layers, n_tokens = values.shape
    low, high = (0.0, 1.0) if normalize != "none" else (float(np.nanmin(values)), float(np.nanmax(values)))
    if palette == "diverging" and normalize == "none":  # white is zero: a symmetric range around it
        low, high = -max(abs(low), abs(high)), max(abs(low), abs(high))
    mapper = LinearColorMapper(palette=_palette(palette), low=low, high=high, nan_color="#d9d9d9")
    fig = figure(
        x_range=(-0.5, n_tokens - 0.5),
        y_range=(-0.5, n_layers - 0.5),  # row i of the matrix sits at y = i, labelled with its layer
        height=figure_height(n_layers),
        sizing_mode="stretch_width",
        min_width=max(320, 12 * n_tokens + 160),  # long texts scroll sideways rather than squash
        tools="pan,xwheel_zoom,box_zoom,reset,save",
        toolbar_location="above",
    )
    image = fig.image(image=[values.astype(np.float32)], x=-0.5, y=-0.5, dw=n_tokens, dh=n_layers, color_mapper=mapper)
    metric = METRICS[heatmap.metric].label if heatmap.metric in METRICS else heatmap.metric
    kinds = heatmap.kinds
    cell = CustomJSHover(
        args={"labels": labels, "kinds": kinds, "layers": [str(layer) for layer in heatmap.layers],
              "raw": heatmap.values.astype(np.float32).ravel()},
        code=_HOVER_CELL,
    )
    tooltips = [("token", "$x{token}"), ("layer", "$y{layer}"), (metric, "@image{0.000}")]
    if normalize != "none":
        tooltips.append(("raw value", "$x{raw}"))
    fig.add_tools(HoverTool(renderers=[image], tooltips=tooltips, formatters={"$x": cell, "$y": cell}))
    fig.xaxis.ticker = FixedTicker(ticks=list(range(n_tokens)))
    fig.xaxis.major_label_overrides = {i: _marked(label, kind) for i, (label, kind) in enumerate(zip(labels, kinds))}
    fig.xaxis.major_label_orientation = np.pi / 2 if max(map(len, labels), default=0) > 2 or n_tokens > 30 else 0
    rows = _layer_ticks(list(range(n_layers)))
    fig.yaxis.ticker = FixedTicker(ticks=rows)
    fig.yaxis.major_label_overrides = {i: str(heatmap.layers[i]) for i in rows}
    fig.yaxis.axis_label = layer_label
    fig.grid.visible = False
    fig.axis.major_tick_line_color = None
    fig.axis.axis_line_color = None
    fig.outline_line_color = None
    bar = ColorBar(color_mapper=mapper, width=12, title=metric, ticker=BasicTicker())
    if normalize != "none":
        bar.ticker, bar.formatter = FixedTicker(ticks=[i / 5 for i in range(6)]), PrintfTickFormatter(format="%.1f")
    fig.add_layout(bar, "right")
    return json_item(fig)


_BOKEH_ID = re.compile(r'"(id|root_id)":\s*"(p\d+)"')


def _stable_ids(payload: str) -> str:
    """Number Bokeh's model ids by first appearance: the same figure gives the same bytes in any build."""
    ids: dict[str, str] = {}
    return _BOKEH_ID.sub(lambda m: f'"{m[1]}":"{ids.setdefault(m[2], f"p{len(ids) + 1}")}"', payload)


def data_csv(heatmap: Heatmap) -> str:
    """The raw matrix in long form, one row per cell: position, token, layer, value (empty where undefined)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["position", "token", "layer", heatmap.metric])
    for row, layer in enumerate(heatmap.layers):
        for position, token in enumerate(heatmap.tokens):
            value = heatmap.values[row, position]
            writer.writerow([position, token, layer, "" if value != value else f"{value:.7g}"])
    return out.getvalue()


def _layer_ticks(layers: list[int]) -> list[int]:
    step = max(1, -(-len(layers) // 20))
    return layers[::step]


class Renderer:
    """HTML for figures, summaries and error boxes, from the package templates (or a user's overrides)."""

    def __init__(self, override_dir: str | Path | None = None):
        loaders = [FileSystemLoader(str(override_dir))] if override_dir else []
        self.env = Environment(
            loader=ChoiceLoader(loaders + [FileSystemLoader(str(template_dir()))]),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["num"] = _number
        sources = [Path(__file__).parent, template_dir()] + ([Path(override_dir)] if override_dir else [])
        # what rendered HTML depends on besides the values and the block: code, templates, BokehJS
        self.fingerprint = source_hash(*sources) + version("bokeh")

    @property
    def narrative(self):
        """The Markdown summary (`summary.md`), rendered from the same templates (a user's overrides first)."""
        from .narrative import Narrative

        if getattr(self, "_narrative", None) is None:
            self._narrative = Narrative(self.env.loader)
        return self._narrative

    def summary(self, heatmap: Heatmap, findings: Findings, normalize: str, raw_known: bool = True) -> str:
        """The written summary as HTML: the Markdown of `summary.md`, converted, inside `summary.html`."""
        from .narrative import markdown_to_html

        text = self.narrative.markdown(heatmap, findings, normalize, raw_known)
        metric = METRICS.get(heatmap.metric)
        return self.env.get_template("summary.html").render(
            body=markdown_to_html(text), markdown=text, heatmap=heatmap, findings=findings, normalize=normalize,
            definition=metric.definition if metric else heatmap.metric, n_tokens=len(heatmap.tokens),
        )

    def figure(self, number: int, heatmap: Heatmap, values: np.ndarray, labels: list[str], spec, findings,
               data_url: str | None = None) -> str:
        """A numbered, linkable figure: the Bokeh payload, caption, metric definition, data links, summary."""
        item = figure_item(heatmap, values, labels, spec.normalize, spec.palette, spec.layer_label)
        metric = METRICS.get(heatmap.metric)
        payload = _stable_ids(json.dumps(item, separators=(",", ":")))
        # inside <script>, "</" would end the element early: escape the characters HTML cares about
        payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        return self.env.get_template("heatmap.html").render(
            number=number,
            target_id=f"layerheat-{number}",
            spec=spec,
            model=heatmap.model,
            definition=metric.definition if metric else heatmap.metric,
            data_url=data_url,
            payload=payload,
            height=figure_height(len(heatmap.layers)),
            summary=self.summary(heatmap, findings, spec.normalize),
        )

    def placeholder(self, spec) -> str:
        return self.env.get_template("placeholder.html").render(spec=spec)

    def error(self, where: str, message: str) -> str:
        return self.env.get_template("error.html").render(where=where, message=message)
