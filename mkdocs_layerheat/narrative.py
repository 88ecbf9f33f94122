"""The written summary: `Findings` -> Markdown (Jinja2 template `summary.md`) -> HTML or JSON.

The same Markdown is printed by `layerheat summarize` and, converted with Python-Markdown, shown under
each figure. Token labels and model names are data: they only ever appear inside code spans built by
`code()`, and the HTML conversion has raw HTML, links and images switched off, so a token such as
`<script>` or one made of backticks renders as those characters, never as markup.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields
from typing import Any

import numpy as np
from jinja2 import BaseLoader, Environment, StrictUndefined

from .analysis import MAX_RUNS
from .catalog import METRICS, MetricRequest
from .compare import IDENTICAL, Difference
from .figure import OVERSHOOT
from .findings import Findings
from .heatmap import Heatmap
from .joint import Link, links
from .labels import display_labels
from .phenomena import LENSES, SOURCES, TRACES, Phenomenon, reference, restored_output, sought
from .wording import (
    cells,
    code,
    decimals,
    join,
    layers,
    model_name,
    number,
    percent,
    scaled,
    signed,
    span,
    spans,
    times,
    token_name,
)

NAMES = {"attention-sink": "Attention sinks", "massive-activation": "Massive activations",
         "edge-effect": "Edge effect", "prediction-converges": "Predictions settle", "late-drop": "Late drops",
         "position-bound": "Position bound"}
DELIMITERS = {"␣", "↵", "⇥", "␣␣", "↵↵", ".", ",", ":", ";", "!", "?", "[SEP]", "[CLS]"}
WHITESPACE = {"␣", "↵", "⇥", "␣␣", "↵↵"}
PALE = 0.25  # the other cells span less than this share of the figure's scale: they look pale next to the rest
TEMPLATE = "summary.md"
COMPARE_TEMPLATE = "compare.md"
PANELS_TEMPLATE = "panels.md"
LETTERS = "abcdefgh"


def _trace_context(heatmap: Heatmap, f: Findings) -> dict | None:
    """An intervention's reference values and options, as the summary states them (None: not one, or a file
    without them)."""
    found = reference(heatmap.metric, heatmap.extras)
    if found is None:
        return None
    low, high, subject = found
    raw = np.asarray(heatmap.values, dtype=np.float64)
    options = {**METRIC_DEFAULTS, **(heatmap.provenance.get("options") or {})}
    peak = _best(raw[:, subject[1] - 1], f.layers, skip_last=False)
    trivial = restored_output(raw, high)
    # the subject token whose restore recovers most, when it is not the last one
    block = np.nan_to_num(raw[:, subject[0]:subject[1]], nan=-np.inf)
    best_row, best_col = np.unravel_index(int(np.argmax(block)), block.shape)
    strongest = None
    if subject[0] + best_col != subject[1] - 1 and block[best_row, best_col] > peak["value"]:
        strongest = {"index": int(subject[0] + best_col), "layer": f.layers[best_row],
                     "value": float(block[best_row, best_col])}
    hi = max(low, high)
    t = heatmap.extras
    return {
        **options, "low": low, "high": high, "subject": subject, "sought": sought(heatmap.metric, low, high),
        "answer": display_labels([t.get("answer", "")])[0],
        "corrupt_answer": display_labels([t.get("corrupt_answer", "")])[0],
        "strongest": strongest,
        "ld_clean": t.get("ld_clean"), "ld_corrupt": t.get("ld_corrupt"),
        "differs": [(i, display_labels([(t.get("corrupt_tokens") or heatmap.tokens)[i]])[0]) for i in t.get("differs", [])],
        "peak": peak,
        "last_peak": _best(raw[:, -1], f.layers, skip_last=trivial),
        "beyond": int((raw > hi + OVERSHOOT * abs(high - low)).sum()),
        "trivial_last": trivial,
    }


def _best(column: np.ndarray, layers: list[int], skip_last: bool) -> dict:
    """The highest value of a column and its layer (`skip_last`: below the last layer)."""
    values = np.nan_to_num(np.asarray(column, dtype=np.float64), nan=-np.inf)
    row = int(np.argmax(values[:-1] if skip_last and len(values) > 1 else values))
    return {"value": float(values[row]), "layer": layers[row]}


def _groups(f: Findings) -> list[tuple[str, list[Phenomenon]]]:
    """The phenomena of a non-lens figure by kind, in reading order: sinks, massive activations, the edge."""
    order = ("attention-sink", "massive-activation", "edge-effect", "position-bound")
    return [(kind, f.of(kind)) for kind in order if f.of(kind)]


def _differing_to_the_top(f: Findings) -> bool:
    """Whether tokens keep differing once they begin to: bands that are not uniform hold at least half of the
    layers from the onset up, and at least max(3, a tenth of the layers) of them besides the last layer (a band
    where they differ between uniform ones is an event, and the last block changes every model's tokens)."""
    above = [b for b in f.bands if b.rows[0] >= f.onset.rows[0]]
    differing = [r for b in above if not b.kind.startswith("uniform-") for r in range(b.rows[0], b.rows[1] + 1)]
    enough = len([r for r in differing if r != f.n_layers - 1]) >= max(3, math.ceil(f.n_layers / 10))
    return enough and 2 * len(differing) >= sum(b.n_layers for b in above)


def _see(metric: str, beside: tuple[str, ...]) -> str:
    """Where a reader finds what a sentence points to: the block's own panel, or a figure to add."""
    article = "an" if metric[0] in "aeiou" else "a"
    return (f"the `{metric}` panel shows whether it does" if metric in beside
            else f"{article} `{metric}` figure of the same text would show it")


def _interpretation(f: Findings, tok, restore: str = "hidden", beside: tuple[str, ...] = ()) -> list[str]:
    """The hedged closing reading: what the phenomena found are consistent with, in the literature's words."""
    out = []
    sinks = f.of("attention-sink")
    if sinks:
        first = [p for p in sinks if p.tokens[0] == 0]
        others = [p for p in sinks if p.tokens[0] != 0]
        if first:
            out.append("A first-token sink is where causal models typically park attention that no query needs "
                       f"(Xiao et al. 2023), and such tokens carry massive activations (Sun et al. 2024; "
                       f"{_see('hidden-norm', beside)}).")
        if others:
            out.append(f"{join([tok(p.tokens[0]) for p in others])} "
                       f"{'is a sink' if len(others) == 1 else 'are sinks'} away from the first position, as Gu et al. "
                       f"2024 find on tokens that carry little meaning.")
    massive = f.of("massive-activation")
    if massive:
        names = join([tok(p.tokens[0]) for p in massive[:3]])
        out.append(f"Sun et al. 2024 find that tokens with massive activations act as attention sinks, so {names} "
                   f"likely {'receives' if len(massive) == 1 else 'receive'} much of the attention in these layers; "
                   f"{_see('attention', beside)}.")
    if f.of("prediction-converges") or f.of("late-drop"):
        out.append("The lens reads the lower layers poorly, so a low value there does not mean that the model lacks "
                   "the prediction, only that it is not yet in the output's basis (Belrose et al. 2023)"
                   + ("; the late drops suggest that the last layers spread probability back over alternatives."
                      if f.of("late-drop") else "."))
    out += _trace_interpretation(f, tok, restore)
    if f.onset and not f.phenomena and f.metric not in LENSES + TRACES and _differing_to_the_top(f):
        out.append("Uniform lower layers followed by tokens that differ are consistent with early layers treating "
                   "all tokens alike and later ones specialising.")
    return out


def _trace_interpretation(f: Findings, tok, restore: str) -> list[str]:
    """What ROME's two sites, or one of them, are consistent with."""
    early, late = f.of("early-site"), f.of("late-site")
    if f.metric not in TRACES or not (early or late):
        return []
    if early and late:
        text = (f"The two sites are the pattern Meng et al. 2022 report for factual recall in GPT models: what the "
                f"corruption took is held at {tok(early[0].tokens[0])} in the lower and middle layers, then moved to "
                f"the last token, where the prediction is made")
    elif late:
        text = ("Only the upper layers of the last token carry what the corruption took: the answer is likely "
                "assembled there, from what the last token reads from earlier tokens; the early site that Meng et al. "
                "2022 find at the last subject token of larger models does not show here")
    else:
        text = (f"The answer depends on {tok(early[0].tokens[0])}, but no restore at the last token recovers it: "
                f"what the corruption took likely reaches the last token through several positions at once")
    if restore == "mlp" and early:
        text += "; that MLP outputs recover it at the early site fits their finding that mid-layer MLPs mediate the recall"
    if restore == "attn" and late:
        text += ("; that attention outputs recover it at the late site fits attention moving the recalled attribute "
                 "to the last token (Geva et al. 2023)")
    return [text + "."]


def _joint_interpretation(found: list[Link], tok) -> list[str]:
    """The hedged reading of what the panels show together."""
    out = []
    both = [k for k in found if k.kind == "sink-and-massive"]
    if both:
        out.append("A token that is both a sink and a massive activation is what Sun et al. 2024 report: massive "
                   "activations act as fixed biases, and attention concentrates on the tokens that carry them.")
        if any(k.kind == "update" and k.data["level"] == "quiet" and k.token in {b.token for b in both}
               for k in found):
            out.append("That its update stays small over the same layers fits this reading: its state is held "
                       "rather than computed on.")
    alone = [k for k in found if k.kind == "sink-only"]
    raised = [k for k in alone if k.data["raised"]]
    if raised:
        out.append(f"That {join([tok(k.token) for k in raised])} {'is a sink' if len(raised) == 1 else 'are sinks'} "
                   f"while {'its' if len(raised) == 1 else 'their'} norm is several times the others' is "
                   f"consistent with the same link at a smaller scale.")
    if len(raised) < len(alone):
        out.append("A sink without a raised norm is consistent with Gu et al. 2024, who find that sinks act like "
                   "key biases: what draws the attention need not be the size of the hidden state.")
    return out


METRIC_DEFAULTS = {f.name: f.default for f in fields(MetricRequest)}


def _namers(f: Findings, lens_metric: bool) -> dict:
    """How the summary names tokens: `tok`, `toks`, `some`, `group`, and `named_below` for a band's cells."""

    def tok(index: int) -> str:
        """A token as the text names it (`token_name`); under a lens metric, followed by the token its cells
        are about ("`is` → `Paris`")."""
        name = token_name(f, index)
        if lens_metric and f.predicts and f.predicts[index] is not None:
            name += f" → {code(f.predicts[index])}"
        return name

    def toks(indices: list[int]) -> str:
        return join([tok(i) for i in indices])

    def some(indices: list[int], n: int = 4, others: str = "other tokens") -> str:
        """The first `n` tokens by name, the rest counted."""
        if len(indices) <= n + 1:
            return toks(indices)
        return join([tok(i) for i in indices[:n]] + [f"{len(indices) - n} {others}"])

    def group(indices: list[int]) -> str:
        """Repeats of one piece: the label once, then their positions; different pieces: each by name."""
        if len(indices) == 1 or len({f.labels[i] for i in indices}) > 1:
            return toks(indices)
        return f"{code(f.labels[indices[0]])} (positions {join([str(i) for i in indices])})"

    def named_below(band) -> bool:
        """Whether a cell that stands out in `band` is also a highlight named below (the band counts it)."""
        shown = {(t.index, t.peak_layer) for t in f.shown}
        return any(tuple(c) in shown for c in band.outlier_cells)

    return {"tok": tok, "toks": toks, "some": some, "group": group, "named_below": named_below}


class Narrative:
    """Renders `summary.md` from a template loader (the package's templates, or a user's overrides first)."""

    def __init__(self, loader: BaseLoader):
        self.env = Environment(loader=loader, autoescape=False, trim_blocks=True, lstrip_blocks=True,
                               extensions=["jinja2.ext.do"],
                               keep_trailing_newline=True, undefined=StrictUndefined)
        self.env.filters.update(num=scaled, raw=number, pct=percent, code=code, signed=signed, times=times, span=span)
        self.env.globals.update(join=join, layers=layers, spans=spans, cells=cells)
        self.env.tests["single"] = lambda items: len(items) == 1

    def context(self, heatmap: Heatmap, findings: Findings, normalize: str, raw_known: bool = True,
                shared: bool = False, beside: tuple[str, ...] = ()) -> dict:
        """`shared`: the heatmap is one side of a `compare:` block, scaled together with the other; `beside`: the
        metrics of the other panels of its block."""
        f = findings
        metric = METRICS.get(heatmap.metric)
        span = f.scale_high - f.scale_low
        lens_metric = heatmap.metric in LENSES
        # the width of the colour scale: the robust one, the 0-1 scale shared with the other panel, or the figure's
        scale_width = (f.clip["high"] - f.clip["low"]) if f.clip else (
            1.0 if shared and normalize != "none" else f.high - f.low)

        naming = _namers(f, lens_metric)
        observations = f.observations
        tr = _trace_context(heatmap, f)
        # a second lead sentence only for a phenomenon or an anomaly (the bands and peaks have their sections)
        lead = observations[:1] + [o for o in observations[1:2] if o.kind in (
            "attention-sink", "massive-activation", "convergence", "sink", "anomaly")]
        if heatmap.metric in TRACES and tr:  # a trace leads with its sites
            lead = [o for o in observations if o.kind == "sites"]
        third = max(1, f.n_layers // 3)
        return {
            "f": f,
            "findings": f,
            "heatmap": heatmap,
            "normalize": normalize,
            "raw_known": raw_known,
            "shared": shared,
            "n_tokens": f.n_tokens,
            "metric_name": heatmap.metric,
            "model_name": model_name(heatmap.model),
            "definition": metric.definition if metric else f"value of the metric {code(heatmap.metric)}",
            "attention_metric": heatmap.metric == "attention",
            "lens_metric": lens_metric,
            "rank_metric": heatmap.metric == "logit-lens-rank",
            "target": bool((heatmap.provenance.get("options") or {}).get("target")),
            "lens": f.settling,
            "early_layer": f.layers[min(third, f.n_layers - 1)] if f.layers else 0,
            "late_layer": f.layers[f.n_layers - third] if f.layers else 0,
            "groups": _groups(f),
            "names": NAMES,
            "sources": SOURCES,
            "delimiters": DELIMITERS,
            "whitespace": WHITESPACE,
            "pale": span < PALE * scale_width and (shared or bool(f.aside_cells) and not f.rescaled),
            "interpretation": _interpretation(f, naming["tok"], (tr or {}).get("restore", "hidden"), beside),
            "lead": lead,
            "low_below": f.scale_low + span / 3,
            "high_above": f.scale_low + 2 * span / 3,
            "max_runs": MAX_RUNS,
            "unusual": [a.indices for a in f.profile_anomalies if a.listed_run],  # said with the runs
            **naming,
            "trace_metric": heatmap.metric in TRACES,
            "tr": tr,
            "all_nan": bool(np.isnan(f.low)) if isinstance(f.low, float) else False,
            "decimals": None,  # 2 significant figures (compare summaries resolve their differences instead)
        }

    def markdown(self, heatmap: Heatmap, findings: Findings, normalize: str, raw_known: bool = True,
                 shared: bool = False, beside: tuple[str, ...] = ()) -> str:
        context = self.context(heatmap, findings, normalize, raw_known, shared, beside)
        text = self.env.get_template(TEMPLATE).render(context)
        return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"

    def _module(self, heatmap: Heatmap, findings: Findings, normalize: str, raw_known: bool):
        return self.env.get_template(TEMPLATE).make_module(self.context(heatmap, findings, normalize, raw_known))

    def comparison(self, a: Heatmap, b: Heatmap, diff: Difference, labels: tuple[list[str], list[str]],
                   names: tuple[str, str], normalize: str, clip: tuple[float, float] | None = None) -> str:
        """The summary of a `compare:` block (`compare.md`): what differs between heatmap (a) and (b); `clip`,
        the robust colour range of panels (a) and (b)."""
        labels_a, labels_b = labels

        def tok(index: int) -> str:
            if labels_a[index] == labels_b[index]:
                return code(labels_b[index])
            return f"{code(labels_a[index])} → {code(labels_b[index])}"

        text = self.env.get_template(COMPARE_TEMPLATE).render(
            a=a, b=b, d=diff, tok=tok, names=[code(n) for n in names],
            decimals=decimals(max(diff.largest, IDENTICAL * diff.scale)),  # resolve the differences themselves
            changed=[tok(i) for i in diff.changed], identical=IDENTICAL, normalize=normalize, clip=clip,
        )
        return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"

    def _joint_context(self, panels: list[tuple[Heatmap, Findings]], normalize: str, raw_known: bool) -> dict:
        found = links(panels) if raw_known else []
        first, f0 = panels[0]

        def tok(index: int) -> str:
            return token_name(f0, index)

        rows = []
        for letter, (heatmap, f) in zip(LETTERS, panels):
            label = METRICS[heatmap.metric].label if heatmap.metric in METRICS else heatmap.metric
            rows.append({"letter": letter, "heatmap": heatmap, "findings": f, "label": label,
                         "named": f"({letter}) the {label}",
                         "lead": self.sentences(heatmap, f, normalize, raw_known)["lead"]})
        return dict(
            panels=rows, links=found, tok=tok, normalize=normalize, n_tokens=f0.n_tokens,
            first_layer=min(f.layers[0] for _, f in panels), last_layer=max(f.layers[-1] for _, f in panels),
            model_name=model_name(first.model), interpretation=_joint_interpretation(found, tok),
        )

    def joint(self, panels: list[tuple[Heatmap, Findings]], normalize: str, raw_known: bool = True) -> str:
        """The one summary of several metrics of one text (`panels.md`): the links between the panels first,
        then each panel's lead. Every panel's own summary is `markdown()` of it."""
        context = self._joint_context(panels, normalize, raw_known)
        text = self.env.get_template(PANELS_TEMPLATE).render(context)
        return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"

    def link_sentences(self, panels: list[tuple[Heatmap, Findings]], normalize: str, raw_known: bool = True):
        """(link, its sentence as one line of Markdown) for each link between the panels."""
        context = self._joint_context(panels, normalize, raw_known)
        module = self.env.get_template(PANELS_TEMPLATE).make_module(context)
        return [(k, " ".join(str(module.link(k)).split())) for k in context["links"]]

    def sentences(self, heatmap: Heatmap, findings: Findings, normalize: str, raw_known: bool = True) -> dict:
        """The lead, each ranked observation and each phenomenon's sentence, as one-line Markdown."""
        module = self._module(heatmap, findings, normalize, raw_known)

        def line(x) -> str:
            return " ".join(str(x).split())

        return {
            "lead": line(module.lead_text()),
            "observations": [line(module.observation(o)) for o in findings.observations],
            "phenomena": [line(module.phenomenon(p)) for p in findings.phenomena],
        }


def _clean(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def summary_json(heatmap: Heatmap, findings: Findings, narrative: Narrative, normalize: str,
                 raw_known: bool = True) -> dict:
    """The `layerheat summarize --json` document: the lead, phenomena, highlights, bands, tokens and the text."""
    f = findings
    said = narrative.sentences(heatmap, f, normalize, raw_known)
    shown = [t.index for t in f.shown]
    return {
        "lead": said["lead"],
        "phenomena": [
            {"kind": p.kind, "tokens": list(p.tokens), "layers": list(p.layers), "value": _clean(p.value),
             "sentence": sentence}
            for p, sentence in zip(f.phenomena, said["phenomena"])
        ],
        "highlights": [
            {"index": i, "layer": f.tokens[i].peak_layer, "value": _clean(f.tokens[i].peak_value),
             "median": _clean(f.tokens[i].peak_median)}
            for i in shown
        ],
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
                **({"predicts": f.predicts[t.index]} if f.predicts else {}),
            }
            for t in f.tokens
        ],
        "observations": said["observations"],
        "text": narrative.markdown(heatmap, f, normalize, raw_known),
    }


def joint_json(panels: list[tuple[Heatmap, Findings]], narrative: Narrative, normalize: str,
               raw_known: bool = True) -> dict:
    """`layerheat summarize A.json B.json --json`: the links between the panels, each panel's own document,
    and the joint text."""
    said = narrative.link_sentences(panels, normalize, raw_known)
    return {
        "lead": said[0][1] if said else narrative.sentences(*panels[0], normalize, raw_known)["lead"],
        "links": [{"kind": k.kind, "token": k.token, "panels": [LETTERS[i] for i in k.panels], "sentence": sentence}
                  for k, sentence in said],
        "panels": [{"letter": letter, "metric": h.metric, **summary_json(h, f, narrative, normalize, raw_known)}
                   for letter, (h, f) in zip(LETTERS, panels)],
        "text": narrative.joint(panels, normalize, raw_known),
    }
