"""What several metrics of one text show together (numpy only): the links between the panels of a
`metric: [a, b, ...]` block, or of `layerheat summarize A.json B.json`.

Each link is a fact about one token that two panels support, read from the raw values with the rules of
docs/analysis.md ("Several metrics of one text"):

- `sink-and-massive`: an attention sink (attention panel) that is also a massive activation (a norm panel),
  with which comes first, the sink or the jump of the norm; and, for the hidden-state norm, whether every
  run of the sink begins one layer into a raised phase of the norm (its early phase, or the activation
  from its onset to the end of its plateau): attention at layer l reads the state that block l - 1 wrote;
- `sink-only`: a sink that is no massive activation, with its norm's range over the sink's layers as a
  multiple of the other tokens' median (*raised* when its median over those layers is RAISED x or more);
  `massive-only`: a massive activation that is no sink, with its largest share of the attention at any layer;
- `update`: over the layers of a token's phenomenon (the massive activation's plateau, else the sink's layers)
  after the first (whose update is the change into the phenomenon), its median `update` against the median of
  the other tokens' medians over the same layers: *barely changes* below half of it, *changes more* above
  twice it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .findings import Findings
from .heatmap import Heatmap, quiet
from .phenomena import NORMS, true_runs

QUIET, BUSY = 0.5, 2.0  # a token's update against the other tokens' median: barely changes / changes more
RAISED = 3.0  # a sink's norm at least this many times the other tokens' median: raised, if not massive


@dataclass
class Link:
    kind: str  # sink-and-massive | sink-only | massive-only | update
    token: int
    panels: tuple[int, ...]  # the panels (indices) that show it
    data: dict = field(default_factory=dict)


def _follows(sink, massive) -> bool:
    """Whether each run of the sink begins one layer into a raised phase of the norm: the layer below its
    first lies in the early phase or in the activation (onset to the end of the plateau)."""
    phases = [(massive.data["onset"], massive.data["plateau"][1])]
    if massive.data["early"]:
        phases.append(massive.data["early"][:2])
    return all(any(a <= first - 1 <= b for a, b in phases) for first, _ in sink.data["runs"])


def _rows(heatmap: Heatmap, first: int, last: int) -> np.ndarray:
    """Row indices of `heatmap` whose layer labels lie in [first, last]."""
    return np.array([r for r, layer in enumerate(heatmap.layers) if first <= int(layer) <= last], dtype=int)


def _median_others(raw: np.ndarray, t: int) -> np.ndarray:
    return quiet(np.nanmedian, np.delete(raw, t, axis=1), axis=1)


def links(panels: list[tuple[Heatmap, Findings]]) -> list[Link]:
    """Every link between the panels, token by token in the order of the text."""
    by_metric = {h.metric: i for i, (h, _) in enumerate(panels)}
    attention = by_metric.get("attention")
    norms = [i for i, (h, _) in enumerate(panels) if h.metric in NORMS]
    sinks = {p.tokens[0]: p for p in panels[attention][1].of("attention-sink")} if attention is not None else {}
    massive = {(i, p.tokens[0]): p for i in norms for p in panels[i][1].of("massive-activation")}
    out: list[Link] = []
    for t in sorted(set(sinks) | {t for _, t in massive}):
        sink = sinks.get(t)
        found = [(i, massive[i, t]) for i in norms if (i, t) in massive]
        if sink and found:
            for i, m in found:
                out.append(Link("sink-and-massive", t, (attention, i), {
                    "sink": sink, "massive": m, "onset": m.data["onset"], "ratio": m.value,
                    "order": "before" if sink.layers[0] < m.data["onset"] else
                             "same" if sink.layers[0] == m.data["onset"] else "after",
                    "follows": panels[i][0].metric == "hidden-norm" and _follows(sink, m)}))
        elif sink:
            for i in norms:
                raw = np.asarray(panels[i][0].values, dtype=np.float64)
                rows = _rows(panels[i][0], *sink.layers)
                if len(rows):
                    median = _median_others(raw[rows], t)
                    with np.errstate(all="ignore"):
                        ratio = raw[rows, t] / median
                    out.append(Link("sink-only", t, (attention, i), {
                        "sink": sink, "low": float(np.nanmin(ratio)), "high": float(np.nanmax(ratio)),
                        "raised": bool(np.nanmedian(ratio) >= RAISED)}))
        else:
            for i, m in found:
                if attention is not None:
                    raw = np.asarray(panels[attention][0].values, dtype=np.float64)
                    out.append(Link("massive-only", t, (i, attention), {
                        "massive": m, "share": float(np.nanmax(raw[:, t]))}))
        update = by_metric.get("update")
        if update is not None:
            out.extend(_update(panels[update][0], update, t, found[0][1] if found else None, sink))
    return out


def _update(heatmap: Heatmap, panel: int, t: int, massive, sink) -> list[Link]:
    """The `update` link of token `t`, over its phenomenon's layers after the first."""
    if massive is not None:
        first, last = massive.data["plateau"]
        layers = [x for x in heatmap.layers if first < int(x) <= last]
    else:
        layers = [x for x in heatmap.layers if any(a <= int(x) <= b for a, b in sink.data["runs"])][1:]
    rows = np.array([heatmap.layers.index(x) for x in layers], dtype=int)
    if not len(rows):
        return []
    raw = np.asarray(heatmap.values, dtype=np.float64)[rows]
    mine = float(quiet(np.nanmedian, raw[:, t]))
    others = float(quiet(np.nanmedian, quiet(np.nanmedian, np.delete(raw, t, axis=1), axis=0)))
    level = "quiet" if mine < QUIET * others else "busy" if mine > BUSY * others else "like"
    chosen = np.zeros(len(heatmap.layers), dtype=bool)
    chosen[rows] = True
    runs = [(int(heatmap.layers[a]), int(heatmap.layers[b])) for a, b in true_runs(chosen)]
    return [Link("update", t, (panel,), {"runs": runs, "median": mine, "others": others, "level": level})]
