"""Heatmap + Findings -> HTML: the figure's data (`figure.py`) for the loader to draw, and Jinja2 templates for
everything around it."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape

from .cache import installed_version, source_hash
from .catalog import METRICS
from .labels import bytes_text

if TYPE_CHECKING:  # numpy is imported only when a figure is drawn: a warm build never needs it
    import numpy as np

    from .compare import Difference
    from .figure import Figure
    from .findings import Findings
    from .heatmap import Heatmap


@dataclass(frozen=True)
class Drawn:
    """A figure's HTML, and its static SVG (for print, PDF and readers without JavaScript)."""

    html: str
    svg: str

ASSETS = Path(__file__).parent / "assets"


def assets() -> dict[str, bytes]:
    """The files every page with a figure needs, shipped once per site: BokehJS; our loader (with BokehJS's
    plotting API and the palettes before it, so that a site lists two scripts); our styles."""
    import importlib.util

    bokeh = Path(importlib.util.find_spec("bokeh").origin).parent  # located, not imported: a warm build skips Bokeh
    js = bokeh / "server" / "static" / "js"
    loader = b"\n".join(path.read_bytes() for path in (js / "bokeh-api.min.js", ASSETS / "palettes.js",
                                                         ASSETS / "layerheat.js"))
    return {"bokeh.min.js": (js / "bokeh.min.js").read_bytes(), "layerheat.js": loader,
            "layerheat.css": (ASSETS / "layerheat.css").read_bytes()}


def template_dir() -> Path:
    """`templates/` inside the installed wheel, or at the repository root in a source checkout."""
    for candidate in (Path(__file__).parent / "templates", Path(__file__).parent.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("mkdocs-layerheat templates not found")


def data_csv(heatmap: Heatmap) -> str:
    """The raw matrix in long form, one row per cell: position, token, layer, value (empty where undefined)."""
    tokens = [bytes_text(bytes.fromhex(part)) if part else token  # part of a character: its bytes, ⟨E2 80⟩
              for token, part in zip(heatmap.tokens, heatmap.token_bytes or [""] * len(heatmap.tokens))]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["position", "token", "layer", heatmap.metric])
    writer.writerows([position, token, layer, "" if value != value else f"{value:.7g}"]
                     for layer, row in zip(heatmap.layers, heatmap.values.tolist())  # Python floats: fast to format
                     for position, (token, value) in enumerate(zip(tokens, row)))
    return out.getvalue()


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
        self.fingerprint = source_hash(*sources) + installed_version("bokeh")

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
        from .wording import markdown_to_html

        text = self.narrative.markdown(heatmap, findings, normalize, raw_known, shared, beside)
        metric = METRICS.get(heatmap.metric)
        return self.env.get_template("summary.html").render(
            body=markdown_to_html(text), markdown=text, heatmap=heatmap, findings=findings, normalize=normalize,
            definition=metric.definition if metric else heatmap.metric, n_tokens=len(heatmap.tokens),
        )

    def _page(self, template: str, number: int, spec, figure: Figure, static_url: str | None, **context) -> Drawn:
        """A numbered, linkable figure from its template: the figure's data for the loader, its static SVG."""
        from .static import svg

        html = self.env.get_template(template).render(
            number=number, target_id=f"layerheat-{number}", spec=spec, payload=figure.payload(),
            height=figure.height, static_url=static_url, **context)
        return Drawn(html, svg(figure))

    def figure(self, number: int, heatmap: Heatmap, values: np.ndarray, labels: list[str], spec, findings,
               data_url: str | None = None, static_url: str | None = None) -> Drawn:
        """One heatmap: its figure, caption, metric definition, data links, summary."""
        from . import figure

        clip = (findings.clip["low"], findings.clip["high"]) if findings.clip else None
        traced = None if clip else figure.reference_scale(heatmap, spec.normalize)  # (below the corrupted run: lightest)
        drawn = figure.single(heatmap, values, labels, spec.normalize, spec.palette, spec.layer_label, clip or traced,
                              mark_below=traced is None)
        metric = METRICS.get(heatmap.metric)
        return self._page("heatmap.html", number, spec, drawn, static_url, model=heatmap.model,
                          definition=metric.definition if metric else heatmap.metric, data_url=data_url,
                          summary=self.summary(heatmap, findings, spec.normalize))

    def comparison(self, number: int, sides: list[tuple[Heatmap, np.ndarray, list[str], Findings, str | None]],
                   diff: Difference, names: tuple[str, str], spec, static_url: str | None = None) -> Drawn:
        """A `compare:` figure: panels (a) and (b) on one scale, (c) their difference, and what differs."""
        import numpy as np

        from . import figure
        from .heatmap import Heatmap, robust_range
        from .wording import markdown_to_html

        (a, va, labels_a, _, _), (b, vb, labels_b, _, _) = sides
        titles = [f"(a) {names[0]}", f"(b) {names[1]}", "(c) difference, b − a"]
        clip = robust_range(np.concatenate([va.ravel(), vb.ravel()]), spec.palette == "diverging") \
            if spec.color_range == "robust" else None
        delta = None
        if diff.values is not None:
            raw = Heatmap(b.values - a.values, b.tokens, b.layers, f"Δ {figure.label(a.metric)}", b.model, kinds=b.kinds)
            delta = (raw, diff.values, [x if x == y else f"{x}→{y}" for x, y in zip(labels_a, labels_b)])
        drawn = figure.compared([(a, va, labels_a), (b, vb, labels_b)], titles, delta, spec.normalize, spec.palette,
                                spec.layer_label, clip)
        metric = METRICS.get(a.metric)
        text = self.narrative.comparison(a, b, diff, (labels_a, labels_b), names, spec.normalize, clip)
        return self._page(
            "compare.html", number, spec, drawn, static_url,
            sides=[{"title": title, "model": h.model, "data_url": url} for title, (h, _, _, _, url) in zip(titles, sides)],
            difference=delta is not None,
            definition=metric.definition if metric else a.metric,
            summary=self.env.get_template("summary.html").render(body=markdown_to_html(text), markdown=text),
            side_summaries=[self.summary(h, findings, spec.normalize, shared=True) for h, _, _, findings, _ in sides],
        )

    def panels(self, number: int, sides: list[tuple[Heatmap, np.ndarray, list[str], Findings, str | None]],
               spec, static_url: str | None = None) -> Drawn:
        """A block of several metrics: one panel per metric on one token axis, the summary that reads them
        together, and each panel's own summary."""
        from . import figure
        from .wording import markdown_to_html

        titles = [f"({letter}) {figure.label(h.metric)}" for letter, (h, *_) in zip("abcdefgh", sides)]
        clips = [(f.clip["low"], f.clip["high"]) if f.clip else None for _, _, _, f, _ in sides]
        drawn = figure.stacked([(h, v, lab, clip) for (h, v, lab, _, _), clip in zip(sides, clips)], titles,
                               spec.normalize, spec.palette, spec.layer_label)
        text = self.narrative.joint([(h, f) for h, _, _, f, _ in sides], spec.normalize)
        return self._page(
            "panels.html", number, spec, drawn, static_url,
            model=sides[0][0].model,
            sides=[{"title": title, "metric": h.metric, "data_url": url,
                    "definition": METRICS[h.metric].definition if h.metric in METRICS else h.metric}
                   for title, (h, _, _, _, url) in zip(titles, sides)],
            summary=self.env.get_template("summary.html").render(body=markdown_to_html(text), markdown=text),
            side_summaries=[self.summary(h, f, spec.normalize, beside=tuple(x.metric for x, *_ in sides if x is not h))
                            for h, _, _, f, _ in sides],
        )

    def placeholder(self, spec) -> str:
        return self.env.get_template("placeholder.html").render(spec=spec)

    def error(self, where: str, message: str) -> str:
        return self.env.get_template("error.html").render(where=where, message=message)
