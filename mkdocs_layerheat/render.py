"""Heatmap + Findings -> HTML: a Bokeh `json_item` for the figure and Jinja2 templates for everything around it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape

from importlib.metadata import version

from .analysis import Findings
from .cache import source_hash
from .heatmap import Heatmap
from .metrics import METRICS

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
    if value is None or np.isnan(value):
        return "n/a"
    return f"{value:.2f}" if 0.01 <= abs(value) < 1000 else f"{value:.3g}"


def figure_height(n_layers: int) -> int:
    """Pixels reserved for a figure before BokehJS draws it, so the page does not jump."""
    return int(min(900, max(320, 16 * n_layers + 160)))


def _palette() -> tuple[str, ...]:
    """Light yellow (low) to dark brown (high)."""
    from bokeh.palettes import YlOrBr9, interp_palette

    return interp_palette(YlOrBr9[::-1], 256)


def figure_item(heatmap: Heatmap, values: np.ndarray, labels: list[str], normalize: str, title: str) -> dict:
    """The Bokeh figure as a `json_item`, to embed with `Bokeh.embed.embed_item`."""
    from bokeh.embed import json_item
    from bokeh.models import (
        BasicTicker, ColorBar, ColumnDataSource, FixedTicker, HoverTool, LinearColorMapper, PrintfTickFormatter,
    )
    from bokeh.plotting import figure

    n_layers, n_tokens = values.shape
    xs, ys = np.meshgrid(np.arange(n_tokens), np.arange(n_layers))
    source = ColumnDataSource(  # numpy columns travel as base64 typed arrays, not JSON lists of floats
        {
            "x": xs.ravel().astype(np.int32),
            "layer": np.asarray(heatmap.layers, dtype=np.int32)[ys.ravel()],
            "token": [labels[i] for i in xs.ravel()],
            "value": values.ravel().astype(np.float32),
            "raw": heatmap.values.ravel().astype(np.float32),
        }
    )
    low, high = (0.0, 1.0) if normalize != "none" else (float(np.nanmin(values)), float(np.nanmax(values)))
    mapper = LinearColorMapper(palette=_palette(), low=low, high=high, nan_color="#d9d9d9")
    fig = figure(
        title=title or None,
        x_range=(-0.5, n_tokens - 0.5),
        y_range=(heatmap.layers[0] - 0.5, heatmap.layers[-1] + 0.5),
        height=figure_height(n_layers),
        sizing_mode="stretch_width",
        min_width=320,
        tools="pan,xwheel_zoom,box_zoom,reset,save",
        toolbar_location="above",
    )
    fig.rect(x="x", y="layer", width=1, height=1, source=source, line_color=None,
             fill_color={"field": "value", "transform": mapper})
    metric = METRICS[heatmap.metric].label if heatmap.metric in METRICS else heatmap.metric
    tooltips = [("token", "@token (position @x)"), ("layer", "@layer"), (metric, "@value{0.000}")]
    if normalize != "none":
        tooltips.append(("raw value", "@raw{0.000}"))
    fig.add_tools(HoverTool(tooltips=tooltips))
    fig.xaxis.ticker = FixedTicker(ticks=list(range(n_tokens)))
    fig.xaxis.major_label_overrides = {i: label for i, label in enumerate(labels)}
    fig.xaxis.major_label_orientation = np.pi / 2 if max(map(len, labels), default=0) > 2 or n_tokens > 30 else 0
    fig.yaxis.ticker = FixedTicker(ticks=_layer_ticks(heatmap.layers))
    fig.yaxis.axis_label = "Layer"
    fig.grid.visible = False
    fig.axis.major_tick_line_color = None
    fig.axis.axis_line_color = None
    fig.outline_line_color = None
    bar = ColorBar(color_mapper=mapper, width=12, title=metric, ticker=BasicTicker())
    if normalize != "none":
        bar.ticker, bar.formatter = FixedTicker(ticks=[i / 5 for i in range(6)]), PrintfTickFormatter(format="%.1f")
    fig.add_layout(bar, "right")
    return json_item(fig)


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

    def summary(self, heatmap: Heatmap, findings: Findings, normalize: str) -> str:
        metric = METRICS.get(heatmap.metric)
        return self.env.get_template("summary.html").render(
            heatmap=heatmap,
            findings=findings,
            normalize=normalize,
            definition=metric.definition if metric else heatmap.metric,
            n_tokens=len(heatmap.tokens),
        )

    def figure(self, target_id: str, heatmap: Heatmap, values: np.ndarray, labels: list[str], spec, findings) -> str:
        item = figure_item(heatmap, values, labels, spec.normalize, spec.title)
        payload = json.dumps(item, separators=(",", ":"))
        # inside <script>, "</" would end the element early: escape the characters HTML cares about
        payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        return self.env.get_template("heatmap.html").render(
            target_id=target_id,
            spec=spec,
            payload=payload,
            height=figure_height(len(heatmap.layers)),
            summary=self.summary(heatmap, findings, spec.normalize),
        )

    def placeholder(self, spec) -> str:
        return self.env.get_template("placeholder.html").render(spec=spec)

    def error(self, where: str, message: str) -> str:
        return self.env.get_template("error.html").render(where=where, message=message)
