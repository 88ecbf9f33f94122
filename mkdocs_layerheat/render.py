"""Heatmap + Findings -> HTML: a Bokeh `json_item` for the figure and Jinja2 templates for everything around it."""

from __future__ import annotations

import csv
import io
import json
import re
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape

from .cache import source_hash
from .catalog import METRICS
from .labels import bytes_text, display_labels, fragment_notes

if TYPE_CHECKING:  # numpy is imported only when a figure is drawn: a warm build never needs it
    import numpy as np

    from .analysis import Findings
    from .compare import Difference
    from .heatmap import Heatmap

ASSETS = Path(__file__).parent / "assets"


def assets() -> dict[str, Path]:
    """The files every page with a figure needs, shipped once per site: BokehJS, our loader and styles."""
    import importlib.util

    bokeh = Path(importlib.util.find_spec("bokeh").origin).parent  # located, not imported: a warm build skips Bokeh
    return {"bokeh.min.js": bokeh / "server" / "static" / "js" / "bokeh.min.js",
            "layerheat.js": ASSETS / "layerheat.js", "layerheat.css": ASSETS / "layerheat.css"}


def template_dir() -> Path:
    """`templates/` inside the installed wheel, or at the repository root in a source checkout."""
    for candidate in (Path(__file__).parent / "templates", Path(__file__).parent.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("mkdocs-layerheat templates not found")


def _marked(label: str, kind: str) -> str:
    """Axis label of a token: special and chat-template tokens in ⟨angle brackets⟩, generated ones starred."""
    return {"special": f"⟨{label}⟩", "template": f"⟨{label}⟩", "generated": f"{label}*"}.get(kind, label)


OVERSHOOT = 0.02  # an intervention's cells above the clean run's value by more than this share of the way: marked


def _axis_labels(heatmap: Heatmap, labels: list[str]) -> list[str]:
    """The x-axis labels: kinds marked (`_marked`); a causal trace's subject starred, as ROME's figures do; an
    activation patching's differing tokens as clean → corrupted."""
    out = [_marked(label, kind) for label, kind in zip(labels, heatmap.kinds)]
    trace = heatmap.extras
    if heatmap.metric == "causal-trace" and "subject" in trace:
        for i in range(*trace["subject"]):
            out[i] += "*"
    for i in trace.get("differs", []) if heatmap.metric == "activation-patching" else []:
        out[i] += "→" + display_labels([trace["corrupt_tokens"][i]])[0]
    return out


TOOLTIP_CELLS = 8000  # a lens figure with more cells carries no top tokens in its tooltip (page weight)
WRITTEN_CELLS = 40  # tokens (and layers) up to which a lens figure writes each cell's top token in the cell


def _top_lines(heatmap: Heatmap, n_cells: int) -> list[str]:
    """A logit lens's tooltip line per cell (row-major): its top tokens with their probabilities."""
    tokens, probs = heatmap.extras.get("top_tokens"), heatmap.extras.get("top_probs")
    if not tokens or n_cells > TOOLTIP_CELLS or len(tokens) * len(tokens[0]) != n_cells:
        return []
    return [", ".join(f"{display_labels([t])[0]} {p:.2f}" for t, p in zip(ts, ps))
            for row_t, row_p in zip(tokens, probs) for ts, ps in zip(row_t, row_p)]


def _write_top_tokens(fig, heatmap: Heatmap, values: np.ndarray, scale: tuple[float, float], palette: str) -> None:
    """Each cell's top-1 token written in it, as nostalgebraist's logit-lens figures do, when the figure has few
    enough tokens and layers for the words to fit; white on dark colours, black on light ones."""
    import numpy as np

    n_layers, n_tokens = values.shape
    if n_tokens > WRITTEN_CELLS or n_layers > WRITTEN_CELLS:
        return
    colours = _palette(palette)
    light = [0.299 * int(c[1:3], 16) + 0.587 * int(c[3:5], 16) + 0.114 * int(c[5:7], 16) > 140 for c in colours]
    span = (scale[1] - scale[0]) or 1.0
    xs, ys, words, inks = [], [], [], []
    for r, row in enumerate(heatmap.extras["top_tokens"]):
        for t, best in enumerate(row):
            if np.isnan(values[r, t]):
                continue
            level = int(np.clip((values[r, t] - scale[0]) / span, 0, 1) * (len(colours) - 1))
            xs.append(t), ys.append(r), words.append(display_labels([best[0]])[0][:8])
            inks.append("#000000" if light[level] else "#ffffff")
    fig.text(x=xs, y=ys, text=words, text_color=inks, text_font_size="7pt", text_align="center",
             text_baseline="middle")


def reference_scale(heatmap: Heatmap, normalize: str) -> tuple[float, float] | None:
    """An intervention shown as computed runs its colours from the corrupted run's value to the clean run's."""
    from .phenomena import reference

    found = reference(heatmap.metric, heatmap.extras) if normalize == "none" else None
    return (min(found[:2]), max(found[:2])) if found and found[0] != found[1] else None


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
        return interp_palette(RdBu11, 256)  # blue (negative) through white to red (positive)
    return interp_palette(YlOrBr9[::-1], 256)  # light yellow (low) to dark brown (high)


# Hover text for a cell of the image: "$x{token}" names the token, "$x{raw}" gives the raw value
# before normalisation, "$y{layer}" the layer label. Cells are looked up from the pointer's data coordinates.
_HOVER_CELL = """
const n = labels.length, i = Math.max(0, Math.min(n - 1, Math.round(special_vars.x)));
const j = Math.max(0, Math.min(layers.length - 1, Math.round(special_vars.y)));
if (format === "token") return labels[i] + " (position " + i + (kinds[i] === "text" ? "" : ", " + kinds[i]) +
                               (notes[i] ? ", " + notes[i] : "") + ")";
if (format === "layer") return String(layers[j]);
if (format === "top") return top.length ? top[top.length === n * layers.length ? j * n + i : 0] : "";
const v = raw[j * n + i];
return Number.isNaN(v) ? "n/a" : v.toFixed(3);
"""


def _label(metric: str) -> str:
    """A metric's short name for colour bars and tooltips."""
    return METRICS[metric].label if metric in METRICS else metric


def _scale(values: np.ndarray, normalize: str, palette: str) -> tuple[float, float]:
    """The colour scale: 0-1 for normalised values, else their range (symmetric around 0 when diverging)."""
    import numpy as np

    if normalize != "none":
        return 0.0, 1.0
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if palette == "diverging":  # white is zero: a symmetric range around it
        low, high = -max(abs(low), abs(high)), max(abs(low), abs(high))
    return low, high


def _panel(heatmap: Heatmap, values: np.ndarray, labels: list[str], scale: tuple[float, float], palette: str,
           layer_label: str, show_raw: bool, title: str | None = None, x_range=None, clipped: bool = False,
           mark_below: bool = True):
    """One heatmap as a Bokeh figure: an image glyph whose values (and the raw values for the tooltip)
    travel as base64 float32 arrays, a few bytes per cell, instead of a JSON object per cell."""
    import numpy as np
    from bokeh.models import (
        BasicTicker,
        ColorBar,
        CustomJSHover,
        FixedTicker,
        HoverTool,
        LinearColorMapper,
        PrintfTickFormatter,
    )
    from bokeh.plotting import figure

    n_layers, n_tokens = values.shape
    mapper = LinearColorMapper(palette=_palette(palette), low=scale[0], high=scale[1], nan_color="#d9d9d9")
    fig = figure(
        x_range=x_range or (-0.5, n_tokens - 0.5),
        y_range=(-0.5, n_layers - 0.5),  # row i of the matrix sits at y = i, labelled with its layer
        height=figure_height(n_layers),
        sizing_mode="stretch_width",
        min_width=max(320, 12 * n_tokens + 160),  # long texts scroll sideways rather than squash
        tools="pan,xwheel_zoom,box_zoom,reset,save",
        toolbar_location="above",
        title=title,
    )
    image = fig.image(image=[values.astype(np.float32)], x=-0.5, y=-0.5, dw=n_tokens, dh=n_layers, color_mapper=mapper)
    metric = _label(heatmap.metric)
    beyond = 0
    if clipped:  # cells beyond the colour scale: ▲ above it, ▼ below it
        # (an intervention marks what lies above its clean run by more than OVERSHOOT of the way, nothing below)
        above = values > scale[1] + (0 if mark_below else OVERSHOOT * (scale[1] - scale[0]))
        below = np.nonzero(values < scale[0]) if mark_below else (np.array([], int), np.array([], int))
        for marker, (rows, cols) in (("triangle", np.nonzero(above)), ("inverted_triangle", below)):
            beyond += len(rows)
            if len(rows):
                fig.scatter(x=cols.tolist(), y=rows.tolist(), marker=marker, size=6, fill_color="white",
                            line_color="black", line_width=0.5)
    kinds = heatmap.kinds
    top = _top_lines(heatmap, n_layers * n_tokens)
    cell = CustomJSHover(
        args={"labels": labels, "kinds": kinds, "layers": [str(layer) for layer in heatmap.layers],
              "notes": fragment_notes(heatmap.token_bytes, n_tokens),
              "raw": heatmap.values.astype(np.float32).ravel(), "top": top},
        code=_HOVER_CELL,
    )
    tooltips = [("token", "$x{token}"), ("layer", "$y{layer}"), (metric, "@image{0.000}")]
    if show_raw:
        tooltips.append(("raw value", "$x{raw}"))
    if top:
        tooltips.append(("lens top 5" if len(top) > 1 else "", "$x{top}"))
        _write_top_tokens(fig, heatmap, values, scale, palette)
    fig.add_tools(HoverTool(renderers=[image], tooltips=tooltips, formatters={"$x": cell, "$y": cell}))
    fig.xaxis.ticker = FixedTicker(ticks=list(range(n_tokens)))
    fig.xaxis.major_label_overrides = dict(enumerate(_axis_labels(heatmap, labels)))
    fig.xaxis.major_label_orientation = np.pi / 2 if max(map(len, labels), default=0) > 2 or n_tokens > 30 else 0
    rows = _layer_ticks(list(range(n_layers)))
    fig.yaxis.ticker = FixedTicker(ticks=rows)
    fig.yaxis.major_label_overrides = {i: str(heatmap.layers[i]) for i in rows}
    fig.yaxis.axis_label = layer_label
    fig.grid.visible = False
    fig.axis.major_tick_line_color = None
    fig.axis.axis_line_color = None
    fig.outline_line_color = None
    marks = "▲▼" if mark_below else "▲"
    bar = ColorBar(color_mapper=mapper, width=12, title=f"{metric} (clipped {marks})" if beyond else metric,
                   ticker=BasicTicker())
    if scale == (0.0, 1.0):
        bar.ticker, bar.formatter = FixedTicker(ticks=[i / 5 for i in range(6)]), PrintfTickFormatter(format="%.1f")
    fig.add_layout(bar, "right")
    return fig


def figure_item(heatmap: Heatmap, values: np.ndarray, labels: list[str], normalize: str,
                palette: str = "yellow-brown", layer_label: str = "Layer",
                clip: tuple[float, float] | None = None, mark_below: bool = True) -> dict:
    """The Bokeh figure as a `json_item`, to embed with `Bokeh.embed.embed_item`; `clip`, a robust colour
    range (the cells beyond it are marked: those below it only if `mark_below`)."""
    scale = clip or _scale(values, normalize, palette)
    return _json_item(_panel(heatmap, values, labels, scale, palette, layer_label, normalize != "none",
                             clipped=clip is not None, mark_below=mark_below))


def compare_item(sides: list[tuple[Heatmap, np.ndarray, list[str]]], titles: list[str],
                 delta: tuple[Heatmap, np.ndarray, list[str]] | None, normalize: str,
                 palette: str = "yellow-brown", layer_label: str = "Layer",
                 clip: tuple[float, float] | None = None) -> dict:
    """Panels (a) and (b) on one colour scale, then (c) their difference on a diverging scale, as one `json_item`.

    Panels of the same length pan and zoom together.
    """
    import numpy as np
    from bokeh.layouts import column

    both = np.concatenate([values.ravel() for _, values, _ in sides])
    scale = clip or _scale(both, normalize, palette)
    same_length = len(sides[0][0].tokens) == len(sides[1][0].tokens)
    panels = []
    for (heatmap, values, labels), title in zip(sides, titles):
        x_range = panels[0].x_range if panels and same_length else None
        panels.append(_panel(heatmap, values, labels, scale, palette, layer_label, normalize != "none", title, x_range,
                             clip is not None))
    if delta is not None:
        heatmap, values, labels = delta
        span = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.0
        span = span if span > 0 else 1.0  # identical: an all-white panel on a nominal scale
        panels.append(_panel(heatmap, values, labels, (-span, span), "diverging", layer_label, normalize != "none",
                             titles[2], panels[0].x_range))
    return _json_item(column(panels, sizing_mode="stretch_width"))


def panels_item(sides: list[tuple[Heatmap, np.ndarray, list[str], tuple[float, float] | None]], titles: list[str],
                normalize: str, palette: str = "yellow-brown", layer_label: str = "Layer") -> dict:
    """Several metrics of one text, one panel each (its own colour scale, or robust `clip`), stacked on one
    token axis that pans and zooms them together, as one `json_item`."""
    from bokeh.layouts import column

    panels = []
    for (heatmap, values, labels, clip), title in zip(sides, titles):
        scale = clip or _scale(values, normalize, palette)
        x_range = panels[0].x_range if panels else None
        panels.append(_panel(heatmap, values, labels, scale, palette, layer_label, normalize != "none", title,
                             x_range, clip is not None))
    return _json_item(column(panels, sizing_mode="stretch_width"))


def _json_item(model) -> dict:
    """`bokeh.embed.json_item`, without Bokeh's document validation (a quarter of the time; the test suite
    checks our figures instead)."""
    from bokeh.embed import json_item
    from bokeh.settings import settings

    settings.perform_document_validation.set_value(False)
    try:
        return json_item(model)
    finally:
        settings.perform_document_validation.unset_value()


_BOKEH_ID = re.compile(r'"(id|root_id)":\s*"(p\d+)"')


def _stable_ids(payload: str) -> str:
    """Number Bokeh's model ids by first appearance: the same figure gives the same bytes in any build."""
    ids: dict[str, str] = {}
    return _BOKEH_ID.sub(lambda m: f'"{m[1]}":"{ids.setdefault(m[2], f"p{len(ids) + 1}")}"', payload)


def _payload(item: dict) -> str:
    """A `json_item` as the text of a <script> element: stable ids, and "</" and friends escaped so it cannot end early."""
    payload = _stable_ids(json.dumps(item, separators=(",", ":")))
    return payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def data_csv(heatmap: Heatmap) -> str:
    """The raw matrix in long form, one row per cell: position, token, layer, value (empty where undefined)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["position", "token", "layer", heatmap.metric])
    for row, layer in enumerate(heatmap.layers):
        for position, token in enumerate(heatmap.tokens):
            if heatmap.token_bytes and heatmap.token_bytes[position]:  # part of a character: its bytes, ⟨E2 80⟩
                token = bytes_text(bytes.fromhex(heatmap.token_bytes[position]))
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

    def summary(self, heatmap: Heatmap, findings: Findings, normalize: str, raw_known: bool = True,
                shared: bool = False, beside: tuple[str, ...] = ()) -> str:
        """The written summary as HTML: the Markdown of `summary.md`, converted, inside `summary.html`."""
        from .narrative import markdown_to_html

        text = self.narrative.markdown(heatmap, findings, normalize, raw_known, shared, beside)
        metric = METRICS.get(heatmap.metric)
        return self.env.get_template("summary.html").render(
            body=markdown_to_html(text), markdown=text, heatmap=heatmap, findings=findings, normalize=normalize,
            definition=metric.definition if metric else heatmap.metric, n_tokens=len(heatmap.tokens),
        )

    def figure(self, number: int, heatmap: Heatmap, values: np.ndarray, labels: list[str], spec, findings,
               data_url: str | None = None) -> str:
        """A numbered, linkable figure: the Bokeh payload, caption, metric definition, data links, summary."""
        clip = (findings.clip["low"], findings.clip["high"]) if findings.clip else None
        traced = None if clip else reference_scale(heatmap, spec.normalize)  # (below the corrupted run: lightest)
        item = figure_item(heatmap, values, labels, spec.normalize, spec.palette, spec.layer_label, clip or traced,
                           mark_below=traced is None)
        metric = METRICS.get(heatmap.metric)
        return self.env.get_template("heatmap.html").render(
            number=number,
            target_id=f"layerheat-{number}",
            spec=spec,
            model=heatmap.model,
            definition=metric.definition if metric else heatmap.metric,
            data_url=data_url,
            payload=_payload(item),
            height=figure_height(len(heatmap.layers)),
            summary=self.summary(heatmap, findings, spec.normalize),
        )

    def comparison(self, number: int, sides: list[tuple[Heatmap, np.ndarray, list[str], Findings, str | None]],
                   diff: Difference, names: tuple[str, str], spec) -> str:
        """A `compare:` figure: panels (a) and (b) on one scale, (c) their difference, and what differs."""
        import numpy as np

        from .heatmap import Heatmap, robust_range
        from .narrative import markdown_to_html

        (a, va, labels_a, _, _), (b, vb, labels_b, _, _) = sides
        titles = [f"(a) {names[0]}", f"(b) {names[1]}", "(c) difference, b − a"]
        clip = robust_range(np.concatenate([va.ravel(), vb.ravel()]), spec.palette == "diverging") \
            if spec.color_range == "robust" else None
        delta = None
        if diff.values is not None:
            raw = Heatmap(b.values - a.values, b.tokens, b.layers, f"Δ {_label(a.metric)}", b.model, kinds=b.kinds)
            delta = (raw, diff.values, [x if x == y else f"{x}→{y}" for x, y in zip(labels_a, labels_b)])
        item = compare_item([(a, va, labels_a), (b, vb, labels_b)], titles, delta, spec.normalize, spec.palette,
                            spec.layer_label, clip)
        metric = METRICS.get(a.metric)
        text = self.narrative.comparison(a, b, diff, (labels_a, labels_b), names, spec.normalize, clip)
        return self.env.get_template("compare.html").render(
            number=number,
            target_id=f"layerheat-{number}",
            spec=spec,
            sides=[{"title": title, "model": h.model, "data_url": url} for title, (h, _, _, _, url) in zip(titles, sides)],
            difference=delta is not None,
            definition=metric.definition if metric else a.metric,
            payload=_payload(item),
            height=sum(figure_height(len(h.layers)) for h, *_ in sides) + (figure_height(len(b.layers)) if delta else 0),
            summary=self.env.get_template("summary.html").render(body=markdown_to_html(text), markdown=text),
            side_summaries=[self.summary(h, findings, spec.normalize, shared=True) for h, _, _, findings, _ in sides],
        )

    def panels(self, number: int, sides: list[tuple[Heatmap, np.ndarray, list[str], Findings, str | None]],
               spec) -> str:
        """A block of several metrics: one panel per metric on one token axis, the summary that reads them
        together, and each panel's own summary."""
        from .narrative import markdown_to_html

        titles = [f"({letter}) {_label(h.metric)}" for letter, (h, *_) in zip("abcdefgh", sides)]
        clips = [(f.clip["low"], f.clip["high"]) if f.clip else None for _, _, _, f, _ in sides]
        item = panels_item([(h, v, lab, clip) for (h, v, lab, _, _), clip in zip(sides, clips)], titles,
                           spec.normalize, spec.palette, spec.layer_label)
        text = self.narrative.joint([(h, f) for h, _, _, f, _ in sides], spec.normalize)
        return self.env.get_template("panels.html").render(
            number=number,
            target_id=f"layerheat-{number}",
            spec=spec,
            model=sides[0][0].model,
            sides=[{"title": title, "metric": h.metric, "data_url": url,
                    "definition": METRICS[h.metric].definition if h.metric in METRICS else h.metric}
                   for title, (h, _, _, _, url) in zip(titles, sides)],
            payload=_payload(item),
            height=sum(figure_height(len(h.layers)) for h, *_ in sides),
            summary=self.env.get_template("summary.html").render(body=markdown_to_html(text), markdown=text),
            side_summaries=[self.summary(h, f, spec.normalize, beside=tuple(x.metric for x, *_ in sides if x is not h))
                            for h, _, _, f, _ in sides],
        )

    def placeholder(self, spec) -> str:
        return self.env.get_template("placeholder.html").render(spec=spec)

    def error(self, where: str, message: str) -> str:
        return self.env.get_template("error.html").render(where=where, message=message)
