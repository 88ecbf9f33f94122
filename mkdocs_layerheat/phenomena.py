"""Known phenomena of transformer internals, detected in a heatmap's raw values (numpy only).

Each detector applies a fixed, documented rule (docs/analysis.md, "Known phenomena") to the metric's
raw values, never to the figure's scaling: an attention share of 0.3 or a norm 10 times the layer's median
mean the same in every figure. A phenomenon is stated once, by its own sentence; the cells it explains are
left out of the bands and highlights (`aside`), so that they describe the rest of the figure.

- `attention-sink`: a token taking at least `SINK_SHARE` of the attention (Gu et al. 2024's threshold) and
  `SINK_FACTOR` times the layer's median, or, since shares thin out over a long text, at least 1/sqrt(T) of
  it and `SINK_FACTOR_LONG` times the median, at `min_layers` layers or more (Xiao et al. 2023).
- `massive-activation`: a token whose norm is at least `MASSIVE_RATIO` times the layer's median over a run
  of layers (a single layer for a sublayer's write) (Sun et al. 2024).
- `prediction-converges` and `late-drop`: per position, the layer from which the lens keeps the predicted
  token at probability 0.5 or more (rank 1) to the last layer, and a fall of `LATE_DROP` or more over the
  final third of the layers (nostalgebraist 2020; Belrose et al. 2023).
- `edge-effect`: positions whose value averages over few queries (the end of `attention`) or whose query
  sees few keys (the start of `attention-entropy`), in a causal model.
- `position-bound` (`attention-entropy`, causal): a query at position t spreads over at most t + 1 tokens, so
  entropy grows along the text; said when Spearman's rho between the position and the token's mean entropy (the
  edge left out) is at least `POSITION_RHO`.
- `early-site` and `late-site` (`causal-trace`, `activation-patching`): the last corrupted token over the
  layers where restoring it recovers at least `SITE_SHARE` of the way from the corrupted run's value to the
  clean run's, and the last token from the first layer where it does so to the last (Meng et al. 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .heatmap import quiet

SINK_SHARE, SINK_FACTOR = 0.3, 5.0
SINK_FACTOR_LONG = 20.0  # ... or a share of at least 1/sqrt(tokens) at 20x the median (long texts)
MASSIVE_RATIO = 10.0
CONVERGED_P = 0.5
LATE_DROP = 0.3
EDGE_SHARE = 0.1  # the edge: the last (first) max(3, 10% of the tokens) positions, seen by few queries (keys)
SITE_SHARE = 0.5  # a site: restoring recovers at least half of what the corruption took
POSITION_RHO = 0.7  # attention-entropy grows with the position: Spearman's rho of position and token mean, at least
TRACES = ("causal-trace", "activation-patching")

SOURCES = {
    "attention-sink": "Xiao et al. 2023, StreamingLLM; Gu et al. 2024, When Attention Sink Emerges",
    "massive-activation": "Sun et al. 2024, Massive Activations in Large Language Models",
    "prediction-converges": "nostalgebraist 2020, the logit lens; Belrose et al. 2023, the tuned lens",
    "late-drop": "nostalgebraist 2020; Belrose et al. 2023",
    "edge-effect": "",
    "position-bound": "",
    "early-site": "Meng et al. 2022, Locating and Editing Factual Associations in GPT",
    "late-site": "Meng et al. 2022, Locating and Editing Factual Associations in GPT",
}
NORMS = ("hidden-norm", "attn-norm", "mlp-norm")
LENSES = ("logit-lens", "logit-lens-rank")


@dataclass
class Phenomenon:
    kind: str  # attention-sink | massive-activation | prediction-converges | late-drop | edge-effect
    tokens: list[int]
    layers: tuple[int, int]  # layer labels, first and last
    value: float  # sink: mean share; massive: peak ratio to the median; converges: final value; drop: the fall
    data: dict = field(default_factory=dict)
    cells: list[tuple[int, int]] = field(default_factory=list)  # (row, token) cells this phenomenon explains


def edge_count(n_tokens: int) -> int:
    return min(n_tokens, max(3, math.ceil(EDGE_SHARE * n_tokens)))


def edge_positions(metric: str, n_tokens: int, causal: bool) -> list[int]:
    """Positions whose value rests on few queries (attention received: the end) or keys (entropy: the start)."""
    if not causal or n_tokens < 8:
        return []
    k = edge_count(n_tokens)
    if metric == "attention":
        return list(range(n_tokens - k, n_tokens))
    if metric == "attention-entropy":
        return list(range(k))
    return []


def true_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True in a 1-D boolean array, as (first, last) indices."""
    out, start = [], None
    for i, on in enumerate(list(flags) + [False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            out.append((start, i - 1))
            start = None
    return out


def _around(column: np.ndarray, peak: int, floor: float) -> tuple[int, int]:
    """The rows on either side of `peak` whose value stays at `floor` or more, without a gap."""
    first, last = peak, peak
    while first > 0 and column[first - 1] >= floor:
        first -= 1
    while last < len(column) - 1 and column[last + 1] >= floor:
        last += 1
    return first, last


def _row_medians(raw: np.ndarray, skip: list[int]) -> np.ndarray:
    keep = np.ones(raw.shape[1], dtype=bool)
    keep[skip] = False
    return quiet(np.nanmedian, raw[:, keep] if keep.any() else raw, axis=1)  # (a row without values: NaN)


def sinks(raw: np.ndarray, layers: list[int], edge: list[int]) -> list[Phenomenon]:
    """Tokens taking at least SINK_SHARE of the attention and SINK_FACTOR x the layer's median (or 1/sqrt(T)
    and SINK_FACTOR_LONG x), at enough layers."""
    n_layers, n_tokens = raw.shape
    if n_tokens < 4:
        return []
    median = _row_medians(raw, edge)
    x = np.nan_to_num(raw, nan=0.0)
    def sink(scale: float) -> np.ndarray:  # the rule, or at `scale` = 0.5 the rule's half (a sink's tails)
        return ((x >= scale * SINK_SHARE) & (x >= scale * SINK_FACTOR * median[:, None])
                | (x >= scale / math.sqrt(n_tokens)) & (x >= scale * SINK_FACTOR_LONG * median[:, None]))

    on, tails = sink(1.0), sink(0.5)
    on[:, edge] = False
    need = max(2, math.ceil(n_layers / 10))
    out = []
    for t in np.flatnonzero(on.sum(axis=0) >= need):
        rows = np.flatnonzero(on[:, t])
        shares = x[rows, t]
        peak = int(rows[np.argmax(shares)])
        out.append(Phenomenon(
            "attention-sink", [int(t)], (layers[rows[0]], layers[rows[-1]]), float(shares.mean()),
            data={"runs": [(layers[a], layers[b]) for a, b in true_runs(on[:, t])], "count": len(rows),
                  "low": float(shares.min()), "high": float(shares.max()), "peak_layer": layers[peak],
                  "median": float(np.mean(median[rows]))},
            cells=[(int(r), int(t)) for r in np.flatnonzero(tails[:, t])],  # its layers and its tails
        ))
    out.sort(key=lambda p: (-p.data["count"], p.tokens[0]))
    return out


def massive(raw: np.ndarray, layers: list[int], single_layer: bool) -> list[Phenomenon]:
    """Tokens whose value is MASSIVE_RATIO x the layer's median or more over a run of layers (one, for a write)."""
    n_layers, n_tokens = raw.shape
    if n_tokens < 4:
        return []
    median = _row_medians(raw, [])
    with np.errstate(all="ignore"):
        ratio = np.where(median[:, None] > 0, raw / median[:, None], np.nan)
    on = np.nan_to_num(ratio, nan=0.0) >= MASSIVE_RATIO
    need = 1 if single_layer else max(3, math.ceil(n_layers / 10))
    out = []
    for t in range(n_tokens):
        runs = [r for r in true_runs(on[:, t]) if r[1] - r[0] + 1 >= need]
        if not runs:
            continue
        first, last = max(runs, key=lambda r: float(np.nanmax(raw[r[0]:r[1] + 1, t])))
        seg = raw[first:last + 1, t]
        peak = first + int(np.nanargmax(seg))
        plateau = _around(raw[:, t], peak, 0.5 * raw[peak, t])
        data = {
            "onset": layers[first], "onset_value": float(raw[first, t]), "end": layers[last],
            "peak_layer": layers[peak], "peak": float(raw[peak, t]),
            "peak_median": float(median[peak]), "ratio": float(ratio[peak, t]),
            "plateau": (layers[plateau[0]], layers[plateau[1]]),
            "before": float(raw[first - 1, t]) if first > 0 else None,
            "last_value": float(raw[-1, t]), "last_layer": layers[-1], "last_ratio": float(ratio[-1, t]),
            "runs": [(layers[a], layers[b]) for a, b in runs],
            "early": None,  # an earlier phase at half the threshold, apart from the run: (first, last, low, high)
        }
        half = np.nan_to_num(ratio[:, t]) >= MASSIVE_RATIO / 2
        before = [r for r in true_runs(half[:first]) if r[1] < first - 1]  # (one that ends at the onset is its rise)
        if before and not single_layer:
            a, b = before[-1]
            data["early"] = (layers[a], layers[b], float(np.nanmin(ratio[a:b + 1, t])), float(np.nanmax(ratio[a:b + 1, t])))
        cells = [(int(r), t) for r in np.flatnonzero(np.nan_to_num(ratio[:, t]) >= MASSIVE_RATIO / 2)]  # its decay too
        out.append(Phenomenon("massive-activation", [t], (layers[first], layers[last]), data["ratio"], data, cells))
    out.sort(key=lambda p: -p.value)
    return out


def convergence(raw: np.ndarray, layers: list[int], rank: bool) -> list[Phenomenon]:
    """Per position, the layer from which the lens keeps its prediction (p >= 0.5, or rank 1) to the last layer;
    and, for probabilities, falls of LATE_DROP or more within the final third of the layers."""
    n_layers, n_tokens = raw.shape
    out = []
    ok = np.nan_to_num(raw, nan=np.inf if rank else -np.inf)
    held = ok <= 1.0 + 1e-6 if rank else ok >= CONVERGED_P
    top = n_layers - max(1, n_layers // 3)  # first row of the final third
    for t in range(n_tokens):
        if np.isnan(raw[-1, t]):
            continue
        if held[-1, t]:
            r = n_layers - 1
            while r > 0 and held[r - 1, t]:
                r -= 1
            out.append(Phenomenon("prediction-converges", [t], (layers[r], layers[-1]), float(raw[-1, t]),
                                  data={"before": float(raw[r - 1, t]) if r > 0 else None}))
        if not rank and n_layers >= 3:
            seg = np.nan_to_num(raw[top:, t], nan=-np.inf)
            p = top + int(np.argmax(seg))
            drop = float(raw[p, t] - raw[-1, t])
            if drop >= LATE_DROP - 1e-9:
                out.append(Phenomenon("late-drop", [t], (layers[p], layers[-1]), drop,
                                      data={"peak": float(raw[p, t]), "last": float(raw[-1, t])}))
    return out


def reference(metric: str, trace: dict) -> tuple[float, float, tuple[int, int]] | None:
    """What an intervention's cells are read against: the corrupted run's value, the clean run's, and the
    corrupted tokens (`causal-trace`: the subject; `activation-patching`: first to last differing token)."""
    if metric == "causal-trace" and {"p_noisy", "p_clean", "subject"} <= set(trace):
        return float(trace["p_noisy"]), float(trace["p_clean"]), tuple(trace["subject"])
    if metric == "activation-patching" and trace.get("differs"):
        return 0.0, 1.0, (trace["differs"][0], trace["differs"][-1] + 1)
    return None


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties given their mean rank (as Spearman's rho takes them)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for value in np.unique(x):
        same = x == value
        ranks[same] = ranks[same].mean()
    return ranks


def position_bound(raw: np.ndarray, layers: list[int], edge: list[int]) -> list[Phenomenon]:
    """Entropy that grows along the text: the bound ln(t + 1) of a query at position t, not the text."""
    means = quiet(np.nanmean, raw, axis=0)
    keep = [t for t in range(raw.shape[1]) if t not in edge and not np.isnan(means[t])]
    if len(keep) < 8:
        return []
    a, b = _ranks(np.array(keep, dtype=float)), _ranks(means[keep])
    if a.std() == 0 or b.std() == 0:
        return []
    rho = float(np.corrcoef(a, b)[0, 1])
    if rho < POSITION_RHO:
        return []
    return [Phenomenon("position-bound", [], (layers[0], layers[-1]), rho, data={"rho": rho})]


def restored_output(raw: np.ndarray, high: float) -> bool:
    """Whether the last token's last row holds exactly the clean run's value: its restored state is the clean
    output itself (a block's output restored at the last block), which makes that cell no finding."""
    return bool(raw[-1, -1] == np.float32(high))


def sought(metric: str, low: float, high: float) -> bool:
    """Whether the corruption takes enough away for sites to mean something: a causal trace's noise must at
    least halve the answer's probability (activation patching's 0 and 1 are the two answers' own runs)."""
    return metric != "causal-trace" or high - low >= high / 2


def sites(raw: np.ndarray, layers: list[int], low: float, high: float, span: tuple[int, int],
          trivial_last: bool) -> list[Phenomenon]:
    """ROME's early site (the last corrupted token) and late site (the last token), where restoring recovers
    at least SITE_SHARE of `high - low`; none when the corruption takes nothing away. `trivial_last`: the
    last token's last layer is the clean run's by construction (a block's output restored), so a late site
    must begin below it (a cell that holds exactly the clean value is one). The late site is the highest run
    of layers at the last token that recovers half."""
    gap = high - low
    if not gap > 0:
        return []
    recovered = (raw - low) / gap
    n_layers, n_tokens = raw.shape
    last, subject = n_tokens - 1, span[1] - 1
    out = []
    if subject != last:
        runs = true_runs(np.nan_to_num(recovered[:, subject]) >= SITE_SHARE)
        if runs:
            column = np.nan_to_num(raw[:, subject], nan=-np.inf)
            peak = int(np.argmax(column))
            out.append(Phenomenon(
                "early-site", [subject], (layers[runs[0][0]], layers[runs[-1][1]]), float(raw[peak, subject]),
                data={"runs": [(layers[a], layers[b]) for a, b in runs], "peak_layer": layers[peak],
                      "share": float(recovered[peak, subject])},
                cells=[(r, subject) for r in range(n_layers)]))  # (the sentence says the whole column)
    flags = np.nan_to_num(recovered[:, last]) >= SITE_SHARE
    if trivial_last:
        flags[-1] = False  # (it always recovers everything)
    runs = true_runs(flags)
    if runs:
        a, b = runs[-1]
        b = n_layers - 1 if trivial_last and b == n_layers - 2 else b  # a run up to the top is one
        out.append(Phenomenon(
            "late-site", [last], (layers[a], layers[b]), float(raw[a, last]),
            data={"last": float(raw[-1, last]), "share": float(recovered[a, last]), "to_top": b == n_layers - 1},
            cells=[(r, last) for r in range(n_layers)]))
    return out


def detect(metric: str, raw: np.ndarray | None, shape: tuple[int, int], layers: list[int],
           causal: bool = True, trace: dict | None = None) -> list[Phenomenon]:
    """Every phenomenon of `raw` (the metric's values, `[layers, tokens]`), edge effect first. Without the raw
    values (a file that holds scaled ones) only the edge effect, which depends on positions alone, is known."""
    n_layers, n_tokens = shape
    edge = edge_positions(metric, n_tokens, causal)
    found = []
    if edge:
        found.append(Phenomenon("edge-effect", edge, (layers[0], layers[-1]), float(len(edge)),
                                data={"where": "end" if metric == "attention" else "start"},
                                cells=[(r, t) for t in edge for r in range(n_layers)]))
    if raw is None:
        return found
    raw = np.asarray(raw, dtype=np.float64)
    if metric == "attention":
        found += sinks(raw, layers, edge)
    elif metric == "attention-entropy" and causal:
        found += position_bound(raw, layers, edge)
    elif metric in NORMS:
        found += massive(raw, layers, single_layer=metric != "hidden-norm")
    elif metric in LENSES:
        found += convergence(raw, layers, rank=metric == "logit-lens-rank")
    elif metric in TRACES and reference(metric, trace or {}) and sought(metric, *reference(metric, trace)[:2]):
        low, high, span = reference(metric, trace)
        found += sites(raw, layers, low, high, span, trivial_last=restored_output(raw, high))
    return found


def aside(phenomena: list[Phenomenon], shape: tuple[int, int]) -> np.ndarray:
    """The cells the phenomena explain (True), left out of bands and highlights: a token with more than half of
    its layers explained is left out whole, so that its few other cells are not read as a profile of their own."""
    mask = np.zeros(shape, dtype=bool)
    for p in phenomena:
        for r, t in p.cells:
            mask[r, t] = True
    mask[:, mask.sum(axis=0) * 2 > shape[0]] = True
    return mask
