"""How the summaries write numbers, layers, tokens and lists: "0.42", "3.1×", "layers 4–9", "`Paris`", "a, b and
c"; the Jinja2 filters of `summary.md`, `compare.md` and `panels.md`. Token labels only ever appear inside the
code spans `code()` builds."""

from __future__ import annotations

import math
import re
from typing import Any

from jinja2 import pass_context

from .findings import Findings


def number(value: float | None) -> str:
    """A value as the summary states it: 2 significant figures ("0.48", "0.0031", "170", "25,000")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    value = float(value)
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude < -5:
        return f"{value:.1e}"
    rounded = round(value, 1 - magnitude)
    if rounded and math.floor(math.log10(abs(rounded))) > magnitude:  # 0.0995 -> 0.10, 995 -> 1,000
        magnitude += 1
    if magnitude >= 1:
        return f"{round(rounded, 1 - magnitude):,.0f}"
    return f"{rounded:.{1 - magnitude}f}"


def times(ratio: float) -> str:
    """A ratio to a median: "180x"."""
    return f"{number(ratio)}x"


def decimals(span: float) -> int:
    """Decimals that resolve about 2% of a scale of width `span` (2 for a 0-1 scale, 0 for thousands)."""
    if not span > 0 or not math.isfinite(span):
        return 2
    return max(0, min(8, math.ceil(-math.log10(0.02 * span))))


@pass_context
def scaled(context, value: float | None) -> str:
    """A value on the figure's scale (compare summaries: with the decimals that the differences need)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if context.get("decimals") is None:
        return number(value)
    text = f"{float(value):.{context['decimals']}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


def span(first_last) -> str:
    """A (first, last) run of layers as a list of them names it: "12" or "12–26"."""
    first, last = first_last
    return str(first) if first == last else f"{first}–{last}"


def spans(runs) -> str:
    """Runs of layers as a text names them: "layer 5", "layers 4–10 and 13–30"."""
    runs = list(runs)
    word = "layer" if len(runs) == 1 and runs[0][0] == runs[0][1] else "layers"
    return f"{word} {join([span(r) for r in runs])}"


def model_name(ref: str) -> str:
    """A model as a reader knows it: an alias or a hub id as written (without its revision), a folder's or a
    GGUF file's name rather than its path."""
    name = str(ref).split("@")[0].rstrip("/\\")
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or name.lower().endswith(".gguf"):
        name = re.split(r"[/\\]", name)[-1]
        return name[:-5] if name.lower().endswith(".gguf") else name
    return name


@pass_context
def cells(context, items: list[tuple[int, int]]) -> str:
    """(token, layer) cells as the text names them, each token once: "`x` at layers 12 and 14, `y` at layer 3"."""
    by_token: dict[int, list[int]] = {}
    for token, layer in items:
        by_token.setdefault(token, []).append(layer)
    return join([f"{context['tok'](t)} at {'layer' if len(ls) == 1 else 'layers'} {join([str(x) for x in sorted(ls)])}"
                 for t, ls in by_token.items()])


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


def token_name(f: Findings, index: int) -> str:
    """A token as the text names it: its label, with its position when the label occurs twice."""
    return code(f.labels[index]) + (f" (position {index})" if f.repeated(index) else "")


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
