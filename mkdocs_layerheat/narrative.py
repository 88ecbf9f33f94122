"""The written summary: `Findings` -> Markdown (Jinja2 template `summary.md`) -> HTML or JSON.

The same Markdown is printed by `layerheat summarize` and, converted with Python-Markdown, shown under
each figure. Token labels and model names are data: they only ever appear inside code spans built by
`code()`, and the HTML conversion has raw HTML, links and images switched off, so a token such as
`<script>` or one made of backticks renders as those characters, never as markup.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
from jinja2 import BaseLoader, Environment, StrictUndefined, pass_context

from .analysis import Findings
from .compare import IDENTICAL, Difference
from .heatmap import Heatmap
from .metrics import METRICS

TEMPLATE = "summary.md"
COMPARE_TEMPLATE = "compare.md"
PER_BAND = 4  # token highlights listed per band (the strongest), the rest counted
MAX_RUNS = 4  # sustained runs listed


def number(value: float | None) -> str:
    """A value as the summary states it: 2 decimals, or 3 significant digits when very small or large."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    value = float(value)
    if value == 0:
        return "0.00"
    return f"{value:.2f}" if 0.01 <= abs(value) < 1000 else f"{value:.3g}"


def decimals(span: float) -> int:
    """Decimals that resolve about 2% of a scale of width `span` (2 for a 0-1 scale, 0 for thousands)."""
    if not span > 0 or not math.isfinite(span):
        return 2
    return max(0, min(8, math.ceil(-math.log10(0.02 * span))))


@pass_context
def scaled(context, value: float | None) -> str:
    """A value on the figure's scale, with the decimals that scale needs."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{float(value):.{context['decimals']}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


@pass_context
def cell(context, item: tuple[int, int]) -> str:
    """A (token, layer) cell as the text names it: "`x` at layer 12"."""
    return f"{context['tok'](item[0])} at layer {item[1]}"


def percent(share: float) -> str:
    """A share as a whole percentage, never rounded to 0% or 100% unless it is exactly that."""
    p = round(100 * share)
    if 0 < share < 1:
        p = min(99, max(1, p))
    return f"{p}%"


def code(text: Any) -> str:
    """`text` as a Markdown code span that shows it verbatim, whatever backticks it contains."""
    s = str(text).replace("\n", " ").replace("\r", " ") or " "
    fence = "`" * (max((len(m) for m in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s[0] in "` " or s[-1] in "` " else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def join(items: list[str], last: str = "and") -> str:
    items = list(items)
    if len(items) <= 2:
        return f" {last} ".join(items)
    return ", ".join(items[:-1]) + f" {last} " + items[-1]


def layers(first: int, last: int, capital: bool = False) -> str:
    """"layer 3" or "layers 3–7"."""
    word = "Layer" if capital else "layer"
    return f"{word} {first}" if first == last else f"{word}s {first}–{last}"


@pass_context
def signed(context, value: float) -> str:
    """A difference with its sign, on the figure's scale: "+0.12", "−0.05"."""
    text = scaled(context, abs(value))
    return text if not text.strip("0.") else ("+" if value > 0 else "−") + text


def markdown_to_html(text: str) -> str:
    """The summary's Markdown as HTML, with raw HTML, autolinks, links and images disabled."""
    import markdown

    md = markdown.Markdown(output_format="html")
    md.preprocessors.deregister("html_block")
    for name in ("html", "autolink", "automail", "link", "image_link", "reference", "image_reference",
                 "short_reference", "short_image_ref"):
        if name in md.inlinePatterns:
            md.inlinePatterns.deregister(name)
    return md.convert(text)


class Narrative:
    """Renders `summary.md` from a template loader (the package's templates, or a user's overrides first)."""

    def __init__(self, loader: BaseLoader):
        self.env = Environment(loader=loader, autoescape=False, trim_blocks=True, lstrip_blocks=True,
                               keep_trailing_newline=True, undefined=StrictUndefined)
        self.env.filters.update(num=scaled, raw=number, pct=percent, code=code, cell=cell, signed=signed)
        self.env.globals.update(join=join, layers=layers)

    def context(self, heatmap: Heatmap, findings: Findings, normalize: str, raw_known: bool = True,
                shared: bool = False) -> dict:
        """`shared`: the heatmap is one side of a `compare:` block, scaled together with the other."""
        f = findings
        metric = METRICS.get(heatmap.metric)
        span = f.scale_high - f.scale_low

        def tok(index: int) -> str:
            """A token as the text names it: its label, with its position when the label occurs twice."""
            return code(f.labels[index]) + (f" (position {index})" if f.repeated(index) else "")

        def toks(indices: list[int]) -> str:
            return join([tok(i) for i in indices])

        def some(indices: list[int], n: int = 4, others: str = "other tokens") -> str:
            """The first `n` tokens by name, the rest counted."""
            if len(indices) <= n + 1:
                return toks(indices)
            return join([tok(i) for i in indices[:n]] + [f"{len(indices) - n} {others}"])

        def group(indices: list[int]) -> str:
            """Repeats of one piece: the label once, then their positions."""
            if len(indices) == 1:
                return tok(indices[0])
            return f"{code(f.labels[indices[0]])} (positions {join([str(i) for i in indices])})"

        return {
            "f": f,
            "findings": f,
            "heatmap": heatmap,
            "normalize": normalize,
            "raw_known": raw_known,
            "shared": shared,
            "n_tokens": f.n_tokens,
            "metric_name": heatmap.metric,
            "definition": metric.definition if metric else f"value of the metric {code(heatmap.metric)}",
            "attention_metric": heatmap.metric == "attention",
            "low_below": f.scale_low + span / 3,
            "high_above": f.scale_low + 2 * span / 3,
            "per_band": PER_BAND,
            "max_runs": MAX_RUNS,
            "tok": tok,
            "toks": toks,
            "some": some,
            "group": group,
            "decimals": decimals(span if span > 0 else abs(f.high - f.low)),
            "all_nan": bool(np.isnan(f.low)) if isinstance(f.low, float) else False,
        }

    def markdown(self, heatmap: Heatmap, findings: Findings, normalize: str, raw_known: bool = True,
                 shared: bool = False) -> str:
        text = self.env.get_template(TEMPLATE).render(self.context(heatmap, findings, normalize, raw_known, shared))
        return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"

    def comparison(self, a: Heatmap, b: Heatmap, diff: Difference, labels: tuple[list[str], list[str]],
                   names: tuple[str, str], normalize: str) -> str:
        """The summary of a `compare:` block (`compare.md`): what differs between heatmap (a) and (b)."""
        labels_a, labels_b = labels

        def tok(index: int) -> str:
            if labels_a[index] == labels_b[index]:
                return code(labels_b[index])
            return f"{code(labels_a[index])} → {code(labels_b[index])}"

        text = self.env.get_template(COMPARE_TEMPLATE).render(
            a=a, b=b, d=diff, tok=tok, names=[code(n) for n in names],
            decimals=decimals(max(diff.largest, IDENTICAL * diff.scale)),  # resolve the differences themselves
            changed=[tok(i) for i in diff.changed], identical=IDENTICAL, normalize=normalize,
        )
        return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"

    def observations(self, heatmap: Heatmap, findings: Findings, normalize: str, raw_known: bool = True) -> list[str]:
        """Each key observation as one Markdown sentence, most salient first."""
        module = self.env.get_template(TEMPLATE).make_module(self.context(heatmap, findings, normalize, raw_known))
        return [" ".join(str(module.observation(o)).split()) for o in findings.observations]


def _clean(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def summary_json(heatmap: Heatmap, findings: Findings, narrative: Narrative, normalize: str,
                 raw_known: bool = True) -> dict:
    """The `layerheat summarize --json` document: bands, per-token findings, observations and the text."""
    f = findings
    return {
        "bands": [
            {"first_layer": b.first_layer, "last_layer": b.last_layer, "kind": b.kind, "mean": _clean(b.mean)}
            for b in f.bands
        ],
        "tokens": [
            {
                "index": t.index,
                "token": heatmap.tokens[t.index],
                "label": t.token,
                "peak_layer": t.peak_layer,
                "peak_value": _clean(t.peak_value),
                "sustained": list(t.sustained) if t.sustained else None,
            }
            for t in f.tokens
        ],
        "observations": narrative.observations(heatmap, f, normalize, raw_known),
        "text": narrative.markdown(heatmap, f, normalize, raw_known),
    }
