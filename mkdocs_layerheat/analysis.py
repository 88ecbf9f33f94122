"""Findings read from a heatmap's numbers (numpy only): bands of layers, token peaks, sustained runs, anomalies.

Everything here works on the matrix the figure shows (`values`, `[layers, tokens]`, `NaN` for a cell
without a value) and is vectorised, so that a figure of thousands of tokens is analysed in a fraction of a second.
The definitions and thresholds are documented in `docs/analysis.md`; the constants below are those.

The unit scale
    Tokens that dominate the whole figure (attention sinks and the like) are set aside first. The other
    tokens' values are mapped to 0-1 (their minimum to their maximum): *low* is the bottom third of
    that range, *high* the top third, *medium* what lies between.
A token stands out at a layer
    when its value is at least `STANDS_OUT` (a quarter of the range) above the median of the layer
    (over the analysed tokens), and is itself at least medium.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .heatmap import Heatmap, quiet, robust_range
from .heatmap import normalize as rescale
from .labels import display_labels
from .phenomena import LENSES, TRACES, Phenomenon, detect, reference, true_runs
from .phenomena import aside as aside_mask

HIGH, LOW = 2 / 3, 1 / 3  # thresholds on the unit scale: top third, bottom third
STANDS_OUT = 0.25  # above the layer's median, on the unit scale
UNIFORM_SHARE = 0.8  # a layer is uniformly high/medium/low when this share of its cells is at that level
MOSTLY_LOW = 0.6  # a sparse layer: at least this share of cells low ...
FEW = 0.25  # ... and at most this share of them standing out
NARROW = 1 / 3  # a layer whose cells (10th to 90th percentile) lie within this much of the scale is uniform
MIN_RUN = 3  # a sustained run lasts at least max(MIN_RUN, a tenth of the layers) layers
DOMINANT_FACTOR, DOMINANT_MARGIN = 3.0, 0.3  # a dominant token's mean: > 3x the median token's and > it + 0.3
MAX_DOMINANT = 3
ANOMALY_FACTOR, ANOMALY_MIN = 3.0, 0.15  # a profile anomaly: distance to the typical profile > 3x the median and > 0.15
TWIN = 0.5  # anomalies whose profiles lie closer than this share of their distance to the typical one share a profile
MAX_ANOMALIES = 3
TREND_RHO, TREND_CHANGE = 0.8, 0.2  # depth trend: rank correlation of layer means with depth, and change
MAX_OBSERVATIONS = 5
MAX_RUNS = 3  # sustained runs the summary lists by name
FLAT_RATIO = 1.5  # under layer scaling, a cell stands out only at 1.5x its layer's raw median (else: flat)
LENS_FLOOR = 0.1  # a logit-lens highlight is a probability of at least this
MAX_HIGHLIGHTS = 3  # single-layer highlights the summary lists by name (6 for a text of more than 100 tokens)

KINDS = ("uniform-high", "uniform-medium", "uniform-low", "differentiating", "sparse")
UNIFORM = ("uniform-high", "uniform-medium", "uniform-low")


@dataclass
class Band:
    """Consecutive layers that behave alike, or (a group) every band of one kind: `spans` lists its runs of
    layers. Values are on the figure's scale; shares are of the band's cells."""

    first_layer: int
    last_layer: int
    kind: str  # uniform-high | uniform-medium | uniform-low | differentiating | sparse
    mean: float
    rows: tuple[int, int]  # row indices [first, last] in the matrix
    share_high: float  # share of the band's cells in the top third of the unit scale
    share_low: float  # ... in the bottom third
    p10: float  # 10th and 90th percentiles of the band's cells: 80% of them lie in between
    p90: float
    outliers: int = 0  # cells where a token stands out (a uniform band says "apart from" them)
    outlier_cells: list[tuple[int, int]] = field(default_factory=list)  # (token, layer) of the first few
    high_tokens: list[int] = field(default_factory=list)  # differentiating: tokens whose mean over the band is high
    spans: list[tuple[int, int]] = field(default_factory=list)  # its runs of layers (one, but for a group)

    @property
    def n_layers(self) -> int:
        return self.rows[1] - self.rows[0] + 1


@dataclass
class TokenFinding:
    index: int
    token: str  # the display label
    peak_layer: int | None  # where the token stands out most from the other tokens of that layer (None: no value)
    peak_value: float | None  # its value there, on the figure's scale
    peak_median: float | None  # the median of that layer over the analysed tokens
    peak_contrast: float  # (value - median) on the unit scale
    stands_out: bool  # the peak clears the stands-out test
    sustained: tuple[int, int] | None  # the longest run of layers where it stands out, if long enough
    sustained_mean: float | None = None  # the token's mean over that run
    sustained_median: float | None = None  # the mean of the layers' medians over that run
    set_aside: bool = False  # a dominant token, analysed apart
    peak_raw: float | None = None  # lens metrics with raw values: the probability at the peak, and the layer's
    peak_raw_median: float | None = None  # raw median over the analysed tokens (a figure scaled by layer hides it)

    run_rows: tuple[int, int] = (0, -1)  # row indices of the sustained run

    @property
    def run_length(self) -> int:
        return self.run_rows[1] - self.run_rows[0] + 1 if self.sustained else 0


@dataclass
class Anomaly:
    kind: str  # "dominant" (set aside before everything else) | "profile" (a depth profile unlike any other)
    indices: list[int]  # the token's positions; a profile anomaly groups repeats of the same piece
    token: str
    special: bool  # a special token of the tokenizer, or a chat-template token
    token_mean: float  # the token's mean over the layers (the first position's, for a group)
    others_median: float  # the median of the other tokens' means
    top_layers: int = 0  # dominant: at how many layers it has the highest value of all tokens
    run: tuple[int, int] | None = None  # profile: the layers where it departs most from the others
    direction: str = ""  # "above" | "below" the layers' medians over that run
    run_mean: float | None = None
    run_median: float | None = None
    distance: float = 0.0  # profile: RMS distance (unit scale) to the typical profile (the layers' medians)
    typical_distance: float = 0.0  # ... and the median of that distance over all tokens
    token_kind: str = "text"  # text | special | template | generated (Heatmap.kinds)
    listed_run: bool = False  # profile: its run is the sustained run the summary already lists


@dataclass
class Observation:
    kind: str  # sink | structure | trend | spike | run | late | anomaly | flat
    score: float
    data: dict


@dataclass
class Findings:
    n_layers: int
    n_tokens: int
    layers: list[int]
    labels: list[str]
    low: float  # range of the figure's (analysed) values
    high: float
    raw_low: float  # range of the metric's raw values
    raw_high: float
    nan_cells: int
    constant: bool  # every cell has the same value
    scale_low: float  # range of the tokens not set aside: the unit scale
    scale_high: float
    layer_means: list[float]  # over the tokens not set aside
    layer_medians: list[float]
    top_layers: list[int]  # highest mean first
    bands: list[Band]
    groups: list[Band]  # the bands of each kind taken together, in the order the kinds first appear
    tokens: list[TokenFinding]
    highlights: list[TokenFinding]  # tokens standing out at their peak, strongest first
    runs: list[TokenFinding]  # tokens with a sustained run, longest first
    shown: list[TokenFinding] = field(default_factory=list)  # the highlights the summary names (see `_shown`)
    unshown: int = 0  # the other highlights, neither named nor described elsewhere: the summary counts them
    anomalies: list[Anomaly] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    set_aside: list[int] = field(default_factory=list)  # token positions analysed apart (dominant)
    min_run: int = MIN_RUN
    trend: dict | None = None  # {"direction", "rho", "first", "last"} when layer means move with depth
    token_kinds: list[str] = field(default_factory=list)  # text | special | template | generated, per token
    phenomena: list[Phenomenon] = field(default_factory=list)  # known phenomena, stated once each
    aside_cells: int = 0  # cells the phenomena explain, left out of everything else
    rescaled: bool = False  # layer/token scaling redone without those cells
    metric: str = ""
    predicts: list[str | None] = field(default_factory=list)  # lens metrics: the predicted token's label
    settling: dict | None = None  # lens metrics: when predictions settle (see `_settling`)
    onset: Band | None = None  # the first band where tokens differ, after uniform ones only
    clip: dict | None = None  # `color_range: robust`: the colour scale and the cells beyond it (see `_clip`)
    flat: list[tuple[int, int]] = field(default_factory=list)  # layers where no raw value is 1.5x the median

    def of(self, kind: str) -> list[Phenomenon]:
        return [p for p in self.phenomena if p.kind == kind]

    @property
    def edge(self) -> list[int]:
        return next((p.tokens for p in self.phenomena if p.kind == "edge-effect"), [])

    def repeated(self, index: int) -> bool:
        """Whether another token has the same label (then a text names it with its position)."""
        return self.labels.count(self.labels[index]) > 1

    @property
    def dominant(self) -> list[Anomaly]:
        return [a for a in self.anomalies if a.kind == "dominant"]

    @property
    def profile_anomalies(self) -> list[Anomaly]:
        return [a for a in self.anomalies if a.kind == "profile"]


def _kind(u: np.ndarray, stands: np.ndarray) -> str | None:
    """The kind of a set of cells (one layer's, or a whole band's): `u` on the unit scale without NaN,
    `stands` whether each cell stands out from its layer. None when there is no cell."""
    n = u.size
    if n == 0:
        return None
    high, low = np.mean(u >= HIGH), np.mean(u <= LOW)
    medium, spike = 1.0 - high - low, float(np.mean(stands))
    if high >= UNIFORM_SHARE:
        return "uniform-high"
    if low >= UNIFORM_SHARE and spike == 0:
        return "uniform-low"
    if low >= MOSTLY_LOW and 0 < spike <= FEW:
        return "sparse"
    if medium >= UNIFORM_SHARE:
        return "uniform-medium"
    p10, p50, p90 = np.percentile(u, [10, 50, 90])
    if p90 - p10 <= NARROW:
        return "uniform-high" if p50 >= HIGH else "uniform-low" if p50 <= LOW else "uniform-medium"
    return "differentiating"


def _holds(kind: str, u: np.ndarray, stands: np.ndarray) -> bool:
    """What a band of `kind` promises about all its cells taken together (checked after smoothing)."""
    if u.size == 0:
        return True
    median = float(np.median(u))
    if kind == "uniform-high":
        return median >= HIGH
    if kind == "uniform-low":
        return median <= LOW
    if kind == "uniform-medium":
        return LOW < median < HIGH
    if kind == "sparse":
        return float(np.mean(u <= LOW)) >= 0.5 and 0 < float(np.mean(stands)) <= FEW
    p10, p90 = np.percentile(u, [10, 90])
    return p90 - p10 > NARROW


def _layer_kinds(u: np.ndarray, valid: np.ndarray, stands: np.ndarray) -> list[str | None]:
    """The kind of each layer (row) of the unit-scale matrix `u`, None for a row without values."""
    return [_kind(u[i][valid[i]], stands[i][valid[i]]) for i in range(len(u))]


def _settle(runs: list[list], u: np.ndarray, valid: np.ndarray, stands: np.ndarray) -> list[list]:
    """Make every band's kind true of all its cells: a band whose cells, taken together, break what its kind
    promises takes the kind of those cells; neighbours of one kind merge. Repeats until nothing changes."""
    runs = [list(r) for r in runs]
    while True:
        changed = False
        for r in runs:
            ok = valid[r[0]:r[1] + 1]
            cells, spikes = u[r[0]:r[1] + 1][ok], stands[r[0]:r[1] + 1][ok]
            if not _holds(r[2], cells, spikes):
                r[2], changed = _kind(cells, spikes) or r[2], True
        merged: list[list] = []
        for r in runs:
            if merged and merged[-1][2] == r[2] and merged[-1][1] + 1 == r[0]:
                merged[-1][1], changed = r[1], True
            else:
                merged.append(r)
        runs = merged
        if not changed:
            return runs


def _segments(kinds: list[str | None], row_means: np.ndarray) -> list[list]:
    """Runs of equal kind as [first_row, last_row, kind], with noise removed.

    A layer whose kind differs from both (equal) neighbours takes theirs; an interior layer that is a band
    on its own between two different bands joins the neighbour whose mean is closer. The first and the
    last layer may stay bands of their own.
    """
    k = list(kinds)
    for i in range(len(k)):  # layers without values take a neighbour's kind
        if k[i] is None:
            k[i] = next((x for x in k[i + 1:] + k[:i][::-1] if x is not None), "uniform-low")
    smoothed = list(k)
    for i in range(1, len(k) - 1):
        if k[i - 1] == k[i + 1] != k[i]:
            smoothed[i] = k[i - 1]
    runs: list[list] = []
    for i, kind in enumerate(smoothed):
        if runs and runs[-1][2] == kind:
            runs[-1][1] = i
        else:
            runs.append([i, i, kind])
    means = np.nan_to_num(row_means)
    while True:
        single = [j for j in range(1, len(runs) - 1) if runs[j][0] == runs[j][1]]
        if not single:
            return runs
        j = single[0]
        row = runs[j][0]
        before = float(np.mean(means[runs[j - 1][0]:runs[j - 1][1] + 1]))
        after = float(np.mean(means[runs[j + 1][0]:runs[j + 1][1] + 1]))
        if abs(means[row] - before) <= abs(means[row] - after):
            runs[j - 1][1] = row
        else:
            runs[j + 1][0] = row
        del runs[j]
        merged: list[list] = []
        for r in runs:
            if merged and merged[-1][2] == r[2] and merged[-1][1] + 1 == r[0]:
                merged[-1][1] = r[1]
            else:
                merged.append(r)
        runs = merged


def _longest_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each column of a boolean `[layers, tokens]` mask: length and last row of its longest run of True."""
    length = np.zeros(mask.shape[1], dtype=np.int64)
    best = np.zeros(mask.shape[1], dtype=np.int64)
    end = np.full(mask.shape[1], -1, dtype=np.int64)
    for i in range(mask.shape[0]):
        length = np.where(mask[i], length + 1, 0)
        better = length > best
        best = np.where(better, length, best)
        end = np.where(better, i, end)
    return best, end


def _dominant(u_all: np.ndarray) -> list[int]:
    """Tokens that dominate the figure (attention sinks and the like), strongest first: the highest token at
    more than half of the layers, with a mean over layers more than 3 times, and 0.3 above, the median
    token's (on the figure's 0-1 scale)."""
    if u_all.shape[1] <= 3:
        return []
    means = np.nan_to_num(quiet(np.nanmean, u_all, axis=0), nan=0.0)
    typical = float(np.median(means))
    has_row = ~np.isnan(u_all).all(axis=1)
    top = np.bincount(np.argmax(np.nan_to_num(u_all, nan=-np.inf), axis=1)[has_row], minlength=u_all.shape[1])
    order = np.argsort(-means, kind="stable")[:MAX_DOMINANT]
    return [int(t) for t in order if means[t] > max(DOMINANT_FACTOR * typical, typical + DOMINANT_MARGIN)
            and top[t] > has_row.sum() / 2]


def _twins(profiles: np.ndarray, flagged: list[int], distance: np.ndarray) -> list[list[int]]:
    """Flagged columns grouped by shared profile: a column joins the first group whose first member lies within
    TWIN times the smaller of their two distances to the typical profile. Strongest first."""
    groups: list[list[int]] = []
    for j in sorted(flagged, key=lambda j: (-distance[j], j)):
        for g in groups:
            d = float(np.sqrt(np.mean((profiles[:, j] - profiles[:, g[0]]) ** 2)))
            if d <= TWIN * min(distance[j], distance[g[0]]):
                g.append(j)
                break
        else:
            groups.append([j])
    return groups


def _strongest_run(dev: np.ndarray, valid: np.ndarray, stands: np.ndarray) -> tuple[int, int, str]:
    """The run of consecutive layers where a token stands out (above), or lies STANDS_OUT or more under the
    layers' medians (below), with the largest total departure `dev` (the token minus the layers' medians);
    else the single layer of largest |dev|."""
    best = (0.0, -1, -1, "")
    for sign, name in ((1, "above"), (-1, "below")):
        on = (stands if sign > 0 else (-dev >= STANDS_OUT - 1e-12)) & valid
        start = None
        for i, flag in enumerate(list(on) + [False]):
            if flag and start is None:
                start = i
            elif not flag and start is not None:
                total = float(np.sum(sign * dev[start:i]))
                if total > best[0]:
                    best = (total, start, i - 1, name)
                start = None
    if best[1] >= 0:
        return best[1], best[2], best[3]
    i = int(np.nanargmax(np.where(valid, np.abs(dev), -np.inf)))
    return i, i, "above" if dev[i] >= 0 else "below"


def _empty(heatmap: Heatmap, labels: list[str], v: np.ndarray) -> Findings:
    n_layers, n_tokens = v.shape
    nan = float("nan")
    return Findings(
        n_layers=n_layers, n_tokens=n_tokens, layers=list(heatmap.layers), labels=list(labels),
        low=nan, high=nan, raw_low=nan, raw_high=nan, nan_cells=int(v.size), constant=False,
        scale_low=nan, scale_high=nan, layer_means=[nan] * n_layers, layer_medians=[nan] * n_layers,
        top_layers=[], bands=[], groups=[], tokens=[
            TokenFinding(t, labels[t], None, None, None, 0.0, False, None) for t in range(n_tokens)
        ], highlights=[], runs=[], token_kinds=list(heatmap.kinds),
    )


def _analysed(heatmap: Heatmap, values: np.ndarray, phenomena: list[Phenomenon], normalize: str | None,
              raw_known: bool) -> tuple[np.ndarray, int, bool]:
    """The matrix the bands and highlights read: the figure's values without the cells the phenomena explain;
    under layer or token scaling, scaled again without them (so that one token cannot wash the others out)."""
    v = np.asarray(values, dtype=np.float64).copy()
    mask = aside_mask(phenomena, v.shape) & ~np.isnan(v)
    if not mask.any():
        return v, 0, False
    v[mask] = np.nan
    rescaled = bool(normalize in ("layer", "token") and raw_known)
    if rescaled:
        raw = np.asarray(heatmap.values, dtype=np.float64).copy()
        raw[mask] = np.nan
        v = np.asarray(rescale(raw, normalize), dtype=np.float64)
    return v, int(mask.sum()), rescaled


def _predicts(heatmap: Heatmap, labels: list[str]) -> list[str | None]:
    """For a lens metric, the label of the token each position's cells are about: the next token, or the target."""
    if heatmap.metric not in LENSES:
        return []
    target = (heatmap.provenance.get("options") or {}).get("target")
    if target is not None:
        return [display_labels([target])[0]] * len(labels)
    return [labels[t + 1] if t + 1 < len(labels) else None for t in range(len(labels))]


def analyze(heatmap: Heatmap, values: np.ndarray, labels: list[str], normalize: str | None = None,
            raw_known: bool = True, color_range: str = "full", palette: str = "") -> Findings:
    """Findings for `values` (the figure's matrix, `[layers, tokens]`), with `labels` naming the tokens.

    `normalize` is the figure's scaling (None: the values are analysed as given, e.g. a compare block's shared
    scale); `raw_known` whether `heatmap.values` are the metric's raw values (the phenomena need them);
    `color_range` and `palette` the figure's (`robust`: the summary says which cells its colours clip)."""
    figure = np.asarray(values, dtype=np.float64)
    n_layers, n_tokens = figure.shape
    layers = [int(x) for x in heatmap.layers]
    labels = [str(x) for x in labels]
    causal = bool(heatmap.provenance.get("causal", True))
    phenomena = detect(heatmap.metric, heatmap.values if raw_known else None, figure.shape, layers, causal,
                       heatmap.extras)
    v, aside_cells, rescaled = _analysed(heatmap, figure, phenomena, normalize, raw_known)
    valid = ~np.isnan(v)
    if not valid.any():
        empty = _empty(heatmap, labels, v)
        empty.nan_cells = int(np.isnan(figure).sum())
        empty.phenomena, empty.aside_cells, empty.metric = phenomena, aside_cells, heatmap.metric
        empty.predicts = _predicts(heatmap, labels)
        return empty
    low, high = float(np.nanmin(figure)), float(np.nanmax(figure))
    raw = np.asarray(heatmap.values, dtype=np.float64)
    raw_low, raw_high = (float(np.nanmin(raw)), float(np.nanmax(raw))) if (~np.isnan(raw)).any() else (low, high)
    constant = not np.nanmax(v) > np.nanmin(v)

    # 1. dominant tokens are set aside; the others define the unit scale
    v_low, v_high = float(np.nanmin(v)), float(np.nanmax(v))
    span_all = v_high - v_low
    u_all = (v - v_low) / span_all if span_all > 0 else np.where(valid, 0.0, np.nan)
    # (not under a lens or a trace: a probability near 1 is a settled prediction, a restore that recovers the
    # answer is the finding itself; stated as such, not as a washed-out scale)
    dominant = [] if constant or heatmap.metric in LENSES + TRACES else _dominant(u_all)
    kept = np.ones(n_tokens, dtype=bool)
    kept[dominant] = False
    kept &= valid.any(axis=0)  # a token whose every cell is explained by a phenomenon takes no part
    rest = v[:, kept] if kept.any() else v
    scale_low, scale_high = float(np.nanmin(rest)), float(np.nanmax(rest))
    found = reference(heatmap.metric, heatmap.extras) if raw_known and normalize == "none" else None
    if found and found[0] != found[1]:  # an intervention's scale: from the corrupted run's value to the clean run's
        scale_low, scale_high = sorted(found[:2])
    span = scale_high - scale_low
    u = (v - scale_low) / span if span > 0 else np.where(valid, 0.0, np.nan)
    ur, valid_r = u[:, kept], valid[:, kept]
    median_u = quiet(np.nanmedian, ur, axis=1)  # NaN for a layer without values
    contrast = u - median_u[:, None]
    stands = np.nan_to_num(contrast, nan=-np.inf) >= STANDS_OUT - 1e-12
    stands &= np.nan_to_num(u, nan=-np.inf) >= LOW - 1e-12
    flat = np.zeros(n_layers, dtype=bool)
    if normalize == "layer" and raw_known and not constant:
        differs = _raw_stands(np.asarray(heatmap.values, dtype=np.float64), v, kept)
        flat = ~(differs[:, kept] & valid[:, kept]).any(axis=1) & valid.any(axis=1)
        stands &= differs
    layer_means = quiet(np.nanmean, rest, axis=1)
    layer_medians = quiet(np.nanmedian, rest, axis=1)

    # 2. bands, and the bands of each kind taken together
    kinds = _layer_kinds(ur, valid_r, stands[:, kept])
    if constant:
        kinds = ["uniform-low"] * n_layers
    segments = _segments(kinds, quiet(np.nanmean, ur, axis=1))
    if flat.any():  # layers said to be flat are no band's: the text says what they are
        segments = [[first + a, first + b, kind] for first, last, kind in segments
                    for a, b in true_runs(~flat[first:last + 1])]
    if not constant:
        segments = _settle(segments, ur, valid_r, stands[:, kept])
    kept_idx_all = np.flatnonzero(kept)

    def band(spans: list[tuple[int, int]], kind: str) -> Band:
        rows = np.concatenate([np.arange(a, b + 1) for a, b in spans])
        out_rows, out_cols = np.nonzero(stands[rows][:, kept])
        order = np.argsort(-contrast[rows[out_rows], kept_idx_all[out_cols]], kind="stable")[:3]
        outlier_cells = [(int(kept_idx_all[out_cols[k]]), layers[int(rows[out_rows[k]])]) for k in order]
        cells_u, cells_v = ur[rows][valid_r[rows]], rest[rows][valid_r[rows]]
        if cells_v.size == 0:
            cells_u = cells_v = np.array([np.nan])
        p10, p90 = quiet(np.nanpercentile, cells_v, [10, 90])
        high_tokens = []
        if kind == "differentiating" and normalize != "layer":  # (a row scaled on its own says no level)
            band_means = quiet(np.nanmean, ur[rows], axis=0)
            order = np.argsort(-np.nan_to_num(band_means, nan=-1), kind="stable")
            high_tokens = [int(kept_idx_all[i]) for i in order if band_means[i] >= HIGH]
        return Band(
            first_layer=layers[spans[0][0]], last_layer=layers[spans[-1][1]], kind=kind,
            mean=float(quiet(np.nanmean, cells_v)), rows=(spans[0][0], spans[-1][1]),
            share_high=float(np.mean(cells_u >= HIGH)), share_low=float(np.mean(cells_u <= LOW)),
            p10=float(p10), p90=float(p90), outliers=int(stands[rows][:, kept].sum()),
            outlier_cells=outlier_cells, high_tokens=high_tokens,
            spans=[(layers[a], layers[b]) for a, b in spans],
        )

    bands = [band([(first, last)], kind) for first, last, kind in segments]
    order = list(dict.fromkeys(kind for _, _, kind in segments))
    groups = [band([(a, b) for a, b, k in segments if k == kind], kind) for kind in order]

    # 3. tokens: peak (largest contrast), sustained run (longest run of layers where the token stands out)
    has_value = valid.any(axis=0)
    peak_rows = np.argmax(np.where(valid, contrast, -np.inf), axis=0)
    cols = np.arange(n_tokens)
    peak_contrast = np.where(has_value, contrast[peak_rows, cols], 0.0)
    peak_stands = stands[peak_rows, cols] & has_value
    min_run = max(MIN_RUN, math.ceil(n_layers / 10))
    run_len, run_end = _longest_runs(stands) if n_tokens > 2 else (np.zeros(n_tokens, int), np.zeros(n_tokens, int))
    tokens: list[TokenFinding] = []
    for t in range(n_tokens):
        finding = TokenFinding(t, labels[t], None, None, None, 0.0, False, None, set_aside=not kept[t])
        if has_value[t]:
            r = int(peak_rows[t])
            finding.peak_layer, finding.peak_value = layers[r], float(v[r, t])
            finding.peak_median = float(layer_medians[r])
            if heatmap.metric in LENSES and raw_known:
                finding.peak_raw = float(raw[r, t])
                finding.peak_raw_median = float(quiet(np.nanmedian, np.where(np.isnan(v[r]), np.nan, raw[r])[kept]))
            finding.peak_contrast, finding.stands_out = float(peak_contrast[t]), bool(peak_stands[t])
        if run_len[t] >= min_run:
            first, last = int(run_end[t] - run_len[t] + 1), int(run_end[t])
            finding.sustained, finding.run_rows = (layers[first], layers[last]), (first, last)
            finding.sustained_mean = float(np.mean(v[first:last + 1, t]))
            finding.sustained_median = float(np.mean(layer_medians[first:last + 1]))
        tokens.append(finding)

    runs = sorted((f for f in tokens if f.sustained and not f.set_aside),
                  key=lambda f: (-f.run_length, -(f.sustained_mean or 0), f.index))
    listed = {f.index: f.sustained for f in runs[:MAX_RUNS]}  # the runs the summary lists

    # 4. anomalies: dominant tokens, then tokens whose depth profile is unlike the typical one
    token_means = quiet(np.nanmean, v, axis=0)
    token_kinds = list(heatmap.kinds)  # Heatmap guarantees one kind per token
    anomalies: list[Anomaly] = []
    for t in dominant:
        others = float(np.nanmedian(token_means[kept]))
        top = int(np.sum(np.argmax(np.where(valid, v, -np.inf), axis=1)[valid.any(axis=1)] == t))
        anomalies.append(Anomaly("dominant", [t], labels[t], token_kinds[t] in ("special", "template"),
                                 float(token_means[t]), others, top_layers=top, token_kind=token_kinds[t]))
    kept_idx = np.flatnonzero(kept & has_value)
    # (a trace's columns are read against its two runs: what a restore recovers, not how a profile looks)
    if len(kept_idx) >= 6 and n_layers >= 3 and not constant and heatmap.metric not in TRACES:
        profiles = np.nan_to_num(np.where(valid[:, kept_idx], u[:, kept_idx], median_u[:, None]))
        typical_profile = np.nan_to_num(median_u)[:, None]
        distance = np.sqrt(np.mean((profiles - typical_profile) ** 2, axis=0))
        typical = float(np.median(distance))
        flagged = [int(j) for j in np.flatnonzero(distance > max(ANOMALY_MIN, ANOMALY_FACTOR * typical))]
        others_means = token_means[kept_idx]
        for group_j in _twins(profiles, flagged, distance):
            if len(anomalies) - len(dominant) >= MAX_ANOMALIES:
                break
            group = sorted(int(kept_idx[j]) for j in group_j)
            t = group[0]  # a group is described by its first position
            first, last, direction = _strongest_run(np.nan_to_num(contrast[:, t]), valid[:, t], stands[:, t])
            if last - first + 1 < min_run and direction == "above" and len(group) == 1 and tokens[t].stands_out:
                continue  # a peak of a layer or two, already a highlight: not a profile
            anomalies.append(Anomaly(
                "profile", group, labels[t], any(token_kinds[i] in ("special", "template") for i in group),
                float(token_means[t]),
                float(np.nanmedian(np.delete(others_means, np.isin(kept_idx, group)))),
                run=(layers[first], layers[last]), direction=direction,
                run_mean=float(np.nanmean(v[first:last + 1, t])),
                run_median=float(np.nanmean(layer_medians[first:last + 1])),
                distance=float(distance[group_j[0]]), typical_distance=typical,
                token_kind=token_kinds[t], listed_run=direction == "above" and all(i in listed for i in group)
                and listed.get(t) == (layers[first], layers[last]),
            ))

    highlights = sorted((f for f in tokens if f.stands_out and not f.set_aside),
                        key=lambda f: (-f.peak_contrast, f.index))

    means_order = np.argsort(-np.nan_to_num(layer_means, nan=-np.inf), kind="stable")
    findings = Findings(
        n_layers=n_layers, n_tokens=n_tokens, layers=layers, labels=labels,
        low=low, high=high, raw_low=raw_low, raw_high=raw_high, nan_cells=int(np.isnan(figure).sum()),
        constant=constant,
        scale_low=scale_low, scale_high=scale_high,
        layer_means=[float(m) for m in layer_means], layer_medians=[float(m) for m in layer_medians],
        top_layers=[] if constant else [layers[i] for i in means_order[:min(3, n_layers)]],
        bands=bands, groups=groups, tokens=tokens, highlights=highlights, runs=runs, anomalies=anomalies,
        set_aside=list(dominant), min_run=min_run, trend=None if constant else _trend(layer_means, layers, span),
        token_kinds=token_kinds, phenomena=phenomena, aside_cells=aside_cells, rescaled=rescaled,
        metric=heatmap.metric, predicts=_predicts(heatmap, labels),
        settling=_settling(phenomena, layers, int((~np.isnan(figure[-1])).sum())) if heatmap.metric in LENSES
        else None,
        onset=next((b for i, b in enumerate(bands) if b.kind not in UNIFORM and i > 0
                    and all(x.kind in UNIFORM for x in bands[:i])), None),
    )
    findings.shown, findings.unshown = _shown(findings, raw if raw_known else None)
    findings.flat = [(layers[a], layers[b]) for a, b in true_runs(flat)]
    if color_range == "robust":
        findings.clip = _clip(figure, valid & kept[None, :] if kept.any() else valid, palette == "diverging")
    findings.observations = _observations(findings, heatmap)
    return findings


def _raw_stands(raw: np.ndarray, analysed: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Under layer scaling, the cells whose raw value is at least FLAT_RATIO x the raw median of their layer
    (over the analysed cells): each layer scaled to 0-1 on its own stretches any difference over the whole
    colour range, so a cell only stands out where the raw values also differ."""
    cells = np.where(np.isnan(analysed), np.nan, raw)
    median = quiet(np.nanmedian, cells[:, kept], axis=1)
    return np.nan_to_num(cells, nan=-np.inf) >= FLAT_RATIO * np.nan_to_num(median, nan=np.inf)[:, None] - 1e-12


def _clip(figure: np.ndarray, read: np.ndarray, symmetric: bool) -> dict:
    """The robust colour scale, from the figure's minimum to the 98th percentile of the cells the summary
    reads (`read`: not explained by a phenomenon, not of a dominant token), so that every such cell keeps its
    colours and what washed them out is clipped; the cells beyond it, and the (at most three) tokens with the
    most cells above it."""
    low, high = robust_range(np.where(read, figure, np.nan), symmetric)
    if not symmetric:
        low = float(np.nanmin(figure))
    above = np.nan_to_num(figure, nan=-np.inf) > high
    below = np.nan_to_num(figure, nan=np.inf) < low
    per_token = above.sum(axis=0)
    top = [int(t) for t in np.argsort(-per_token, kind="stable")[:3] if per_token[t] > 0]
    return {"low": low, "high": high, "above": int(above.sum()), "below": int(below.sum()),
            "tokens": [(t, int(per_token[t])) for t in top], "others": int(above.sum() - per_token[top].sum())}


def _shown(f: Findings, raw: np.ndarray | None) -> tuple[list[TokenFinding], int]:
    """The highlights the summary names, the strongest first, and how many others it counts: the tokens that
    a listed run or (lens metrics) a settling prediction or a late drop already describes are neither. Under
    the logit lens a highlight is a probability of at least LENS_FLOOR (a scaled 0.42 that is a probability
    of 0.02 stands out of nothing); a rank figure has none (its scale runs from the best rank to the worst).
    One fewer is named next to listed runs."""
    if f.metric == "logit-lens-rank":
        return [], 0
    if f.metric in LENSES:  # (the summary of a lens lists no runs)
        described = {p.tokens[0] for p in f.phenomena}
    else:
        described = {t.index for t in f.runs[:MAX_RUNS]}
    rest = [h for h in f.highlights if h.index not in described and (
        f.metric != "logit-lens" or raw is None or raw[f.layers.index(h.peak_layer), h.index] >= LENS_FLOOR)]
    n = MAX_HIGHLIGHTS - (1 if described and f.metric not in LENSES else 0) + (2 if f.n_tokens > 100 else 0)
    return rest[:n], len(rest[n:])


def _settling(phenomena: list[Phenomenon], layers: list[int], n_positions: int) -> dict:
    """When lens predictions settle: how many of the `n_positions` with a final value do, the (lower) median
    layer, the earliest three before it, those that settle only at the last layer, and the late drops."""
    settled = sorted((p for p in phenomena if p.kind == "prediction-converges"),
                     key=lambda p: (layers.index(p.layers[0]), p.tokens[0]))
    rows = [layers.index(p.layers[0]) for p in settled]
    median = layers[rows[(len(rows) - 1) // 2]] if rows else None
    last = layers[-1]
    return {
        "n": n_positions, "converged": settled, "median": median, "never": n_positions - len(settled),
        "early": [p for p, r in zip(settled, rows) if p.layers[0] != last and r < layers.index(median)][:3],
        "late": [p.tokens[0] for p in settled if p.layers[0] == last],
        "drops": sum(p.kind == "late-drop" for p in phenomena),
    }


def _trend(layer_means: np.ndarray, layers: list[int], span: float) -> dict | None:
    """Whether the layer means rise or fall with depth: Spearman's rho and the change first -> last layer."""
    ok = ~np.isnan(layer_means)
    if ok.sum() < 4 or span <= 0:
        return None
    means = layer_means[ok]
    ranks = np.argsort(np.argsort(means, kind="stable"), kind="stable").astype(float)
    depth = np.arange(len(means), dtype=float)
    if ranks.std() == 0:
        return None
    rho = float(np.corrcoef(depth, ranks)[0, 1])
    rows = np.flatnonzero(ok)
    change = (means[-1] - means[0]) / span
    if abs(rho) < TREND_RHO or abs(change) < TREND_CHANGE or np.sign(change) != np.sign(rho):
        return None
    return {"direction": "rises" if rho > 0 else "falls", "rho": rho,
            "first_layer": layers[rows[0]], "last_layer": layers[rows[-1]],
            "first": float(means[0]), "last": float(means[-1])}


def _observations(f: Findings, heatmap: Heatmap) -> list[Observation]:
    """Candidate lead sentences with a salience score; the best `MAX_OBSERVATIONS`, most salient first.
    A known phenomenon comes first; a token reported as an anomaly gets no second observation."""
    out: list[Observation] = []
    for kind in ("attention-sink", "massive-activation", "position-bound"):
        if f.of(kind):
            out.append(Observation(kind, 1.0, {"items": f.of(kind)}))
    traced = f.metric in TRACES and reference(f.metric, heatmap.extras) is not None
    if traced:
        out.append(Observation("sites", 1.0, {}))
    if f.metric in LENSES and not f.constant:
        out.append(Observation("convergence", 1.0, {}))
    for a in f.dominant:
        out.append(Observation("sink", 0.95, {"anomaly": a}))
    if f.constant:
        out.append(Observation("flat", 0.95, {"value": f.low}))
        return out[:MAX_OBSERVATIONS]
    if len(f.bands) >= 2 and not traced:  # (a trace's reading is its sites, not its bands)
        out.append(Observation("structure", 0.9, {"bands": f.bands, "onset": f.onset}))
    if f.trend and not traced:
        out.append(Observation("trend", 0.85, dict(f.trend)))
    anomalous = {i for a in f.anomalies for i in a.indices}
    spikes = [h for h in f.highlights if h.index not in anomalous]
    if spikes:
        top = spikes[0]
        out.append(Observation("spike", 0.5 + 0.4 * min(1.0, top.peak_contrast),
                               {"token": top, "besides": spikes[0] is not f.highlights[0]}))
    if f.runs:
        best = f.runs[0]
        out.append(Observation("run", 0.55 + 0.3 * min(1.0, best.run_length / max(f.n_layers, 1)), {"token": best}))
    for a in f.profile_anomalies:
        out.append(Observation("anomaly", 0.7, {"anomaly": a}))
    if not f.highlights and not f.runs and not f.phenomena:
        out.append(Observation("flat", 0.6, {"value": None}))
    out.sort(key=lambda o: -o.score)
    return out[:MAX_OBSERVATIONS]
