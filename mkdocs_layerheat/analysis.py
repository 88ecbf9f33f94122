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
from dataclasses import dataclass

import numpy as np

from .bands import HIGH, KINDS, LOW, UNIFORM, layer_kinds, settle  # noqa: F401  (KINDS: re-exported)
from .bands import segments as segments_of
from .findings import MIN_RUN, Anomaly, Band, Findings, TokenFinding
from .heatmap import Heatmap, quiet, robust_range
from .heatmap import normalize as rescale
from .labels import display_labels
from .observations import observations
from .phenomena import LENSES, TRACES, Phenomenon, detect, reference, true_runs
from .phenomena import aside as aside_mask

STANDS_OUT = 0.25  # above the layer's median, on the unit scale
DOMINANT_FACTOR, DOMINANT_MARGIN = 3.0, 0.3  # a dominant token's mean: > 3x the median token's and > it + 0.3
MAX_DOMINANT = 3
ANOMALY_FACTOR, ANOMALY_MIN = 3.0, 0.15  # a profile anomaly: distance to the typical profile > 3x the median and > 0.15
TWIN = 0.5  # anomalies whose profiles lie closer than this share of their distance to the typical one share a profile
MAX_ANOMALIES = 3
TREND_RHO, TREND_CHANGE = 0.8, 0.2  # depth trend: rank correlation of layer means with depth, and change
MAX_RUNS = 3  # sustained runs the summary lists by name
FLAT_RATIO = 1.5  # under layer scaling, a cell stands out only at 1.5x its layer's raw median (else: flat)
LENS_FLOOR = 0.1  # a logit-lens highlight is a probability of at least this
MAX_HIGHLIGHTS = 3  # single-layer highlights the summary lists by name (6 for a text of more than 100 tokens)


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


@dataclass
class _Scaled:
    """What every step of `analyze` reads: the analysed values `v` on the unit scale `u`, the tokens `kept` (not
    set aside as dominant), each cell's contrast with its layer's median and whether it stands out."""

    v: np.ndarray
    u: np.ndarray
    valid: np.ndarray
    kept: np.ndarray
    dominant: list[int]
    constant: bool
    scale: tuple[float, float]
    contrast: np.ndarray
    stands: np.ndarray
    flat: np.ndarray  # layers (rows) said to be flat under layer scaling
    median_u: np.ndarray
    layer_means: np.ndarray
    layer_medians: np.ndarray

    @property
    def rest(self) -> np.ndarray:
        return self.v[:, self.kept] if self.kept.any() else self.v


def analyze(heatmap: Heatmap, values: np.ndarray, labels: list[str], normalize: str | None = None,
            raw_known: bool = True, color_range: str = "full", palette: str = "") -> Findings:
    """Findings for `values` (the figure's matrix, `[layers, tokens]`), with `labels` naming the tokens.

    `normalize` is the figure's scaling (None: the values are analysed as given, e.g. a compare block's shared
    scale); `raw_known` whether `heatmap.values` are the metric's raw values (the phenomena need them);
    `color_range` and `palette` the figure's (`robust`: the summary says which cells its colours clip).
    The steps: what the phenomena explain is set aside (`_analysed`); dominant tokens are set aside and the
    others define the unit scale (`_scaled`); bands of layers (`_bands`); each token's peak and sustained run
    (`_token_findings`); tokens whose depth profile is unlike the others' (`_anomalies`)."""
    figure = np.asarray(values, dtype=np.float64)
    n_layers, n_tokens = figure.shape
    layers = [int(x) for x in heatmap.layers]
    labels = [str(x) for x in labels]
    causal = bool(heatmap.provenance.get("causal", True))
    phenomena = detect(heatmap.metric, heatmap.values if raw_known else None, figure.shape, layers, causal,
                       heatmap.extras)
    v, aside_cells, rescaled = _analysed(heatmap, figure, phenomena, normalize, raw_known)
    if not (~np.isnan(v)).any():
        empty = _empty(heatmap, labels, v)
        empty.nan_cells = int(np.isnan(figure).sum())
        empty.phenomena, empty.aside_cells, empty.metric = phenomena, aside_cells, heatmap.metric
        empty.predicts = _predicts(heatmap, labels)
        return empty
    raw = np.asarray(heatmap.values, dtype=np.float64)
    low, high = float(np.nanmin(figure)), float(np.nanmax(figure))
    raw_low, raw_high = (float(np.nanmin(raw)), float(np.nanmax(raw))) if (~np.isnan(raw)).any() else (low, high)
    s = _scaled(heatmap, v, normalize, raw_known)
    bands, groups = _bands(s, layers, normalize)
    min_run = max(MIN_RUN, math.ceil(n_layers / 10))
    tokens = _token_findings(s, heatmap, raw, raw_known, labels, min_run)
    runs = sorted((f for f in tokens if f.sustained and not f.set_aside),
                  key=lambda f: (-f.run_length, -(f.sustained_mean or 0), f.index))
    anomalies = _anomalies(s, heatmap, labels, tokens, {f.index: f.sustained for f in runs[:MAX_RUNS]}, min_run)
    highlights = sorted((f for f in tokens if f.stands_out and not f.set_aside),
                        key=lambda f: (-f.peak_contrast, f.index))
    means_order = np.argsort(-np.nan_to_num(s.layer_means, nan=-np.inf), kind="stable")
    constant = s.constant
    findings = Findings(
        n_layers=n_layers, n_tokens=n_tokens, layers=layers, labels=labels,
        low=low, high=high, raw_low=raw_low, raw_high=raw_high, nan_cells=int(np.isnan(figure).sum()),
        constant=constant, scale_low=s.scale[0], scale_high=s.scale[1],
        layer_means=[float(m) for m in s.layer_means], layer_medians=[float(m) for m in s.layer_medians],
        top_layers=[] if constant else [layers[i] for i in means_order[:min(3, n_layers)]],
        bands=bands, groups=groups, tokens=tokens, highlights=highlights, runs=runs, anomalies=anomalies,
        set_aside=list(s.dominant), min_run=min_run,
        trend=None if constant else _trend(s.layer_means, layers, s.scale[1] - s.scale[0]),
        token_kinds=list(heatmap.kinds), phenomena=phenomena, aside_cells=aside_cells, rescaled=rescaled,
        metric=heatmap.metric, predicts=_predicts(heatmap, labels),
        settling=_settling(phenomena, layers, int((~np.isnan(figure[-1])).sum())) if heatmap.metric in LENSES
        else None,
        onset=next((b for i, b in enumerate(bands) if b.kind not in UNIFORM and i > 0
                    and all(x.kind in UNIFORM for x in bands[:i])), None),
    )
    findings.shown, findings.unshown = _shown(findings, raw if raw_known else None)
    findings.flat = [(layers[a], layers[b]) for a, b in true_runs(s.flat)]
    if color_range == "robust":
        findings.clip = _clip(figure, s.valid & s.kept[None, :] if s.kept.any() else s.valid, palette == "diverging")
    findings.observations = observations(findings, heatmap)
    return findings


def _scaled(heatmap: Heatmap, v: np.ndarray, normalize: str | None, raw_known: bool) -> _Scaled:
    """Dominant tokens set aside; the others define the unit scale (an intervention's: from its corrupted run's
    value to its clean run's), and which cells stand out from their layer's median."""
    n_layers, n_tokens = v.shape
    valid = ~np.isnan(v)
    constant = not np.nanmax(v) > np.nanmin(v)
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
    median_u = quiet(np.nanmedian, u[:, kept], axis=1)  # NaN for a layer without values
    contrast = u - median_u[:, None]
    stands = np.nan_to_num(contrast, nan=-np.inf) >= STANDS_OUT - 1e-12
    stands &= np.nan_to_num(u, nan=-np.inf) >= LOW - 1e-12
    flat = np.zeros(n_layers, dtype=bool)
    if normalize == "layer" and raw_known and not constant:
        differs = _raw_stands(np.asarray(heatmap.values, dtype=np.float64), v, kept)
        flat = ~(differs[:, kept] & valid[:, kept]).any(axis=1) & valid.any(axis=1)
        stands &= differs
    return _Scaled(v, u, valid, kept, dominant, constant, (scale_low, scale_high), contrast, stands, flat, median_u,
                   quiet(np.nanmean, rest, axis=1), quiet(np.nanmedian, rest, axis=1))


def _bands(s: _Scaled, layers: list[int], normalize: str | None) -> tuple[list[Band], list[Band]]:
    """Bands of layers, and the bands of each kind taken together."""
    kept, rest = s.kept, s.rest
    ur, valid_r, stands_r = s.u[:, kept], s.valid[:, kept], s.stands[:, kept]
    kinds = ["uniform-low"] * len(layers) if s.constant else layer_kinds(ur, valid_r, stands_r)
    segments = segments_of(kinds, quiet(np.nanmean, ur, axis=1))
    if s.flat.any():  # layers said to be flat are no band's: the text says what they are
        segments = [[first + a, first + b, kind] for first, last, kind in segments
                    for a, b in true_runs(~s.flat[first:last + 1])]
    if not s.constant:
        segments = settle(segments, ur, valid_r, stands_r)
    kept_idx_all = np.flatnonzero(kept)

    def band(spans: list[tuple[int, int]], kind: str) -> Band:
        rows = np.concatenate([np.arange(a, b + 1) for a, b in spans])
        out_rows, out_cols = np.nonzero(s.stands[rows][:, kept])
        order = np.argsort(-s.contrast[rows[out_rows], kept_idx_all[out_cols]], kind="stable")[:3]
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
            p10=float(p10), p90=float(p90), outliers=int(s.stands[rows][:, kept].sum()),
            outlier_cells=outlier_cells, high_tokens=high_tokens,
            spans=[(layers[a], layers[b]) for a, b in spans],
        )

    bands = [band([(first, last)], kind) for first, last, kind in segments]
    order = list(dict.fromkeys(kind for _, _, kind in segments))
    return bands, [band([(a, b) for a, b, k in segments if k == kind], kind) for kind in order]


def _token_findings(s: _Scaled, heatmap: Heatmap, raw: np.ndarray, raw_known: bool, labels: list[str],
                    min_run: int) -> list[TokenFinding]:
    """Each token's peak (its largest contrast) and sustained run (the longest run of layers where it stands out)."""
    v, valid, layers = s.v, s.valid, [int(x) for x in heatmap.layers]
    n_tokens = v.shape[1]
    has_value = valid.any(axis=0)
    peak_rows = np.argmax(np.where(valid, s.contrast, -np.inf), axis=0)
    cols = np.arange(n_tokens)
    peak_contrast = np.where(has_value, s.contrast[peak_rows, cols], 0.0)
    peak_stands = s.stands[peak_rows, cols] & has_value
    run_len, run_end = _longest_runs(s.stands) if n_tokens > 2 else (np.zeros(n_tokens, int), np.zeros(n_tokens, int))
    tokens: list[TokenFinding] = []
    for t in range(n_tokens):
        finding = TokenFinding(t, labels[t], None, None, None, 0.0, False, None, set_aside=not s.kept[t])
        if has_value[t]:
            r = int(peak_rows[t])
            finding.peak_layer, finding.peak_value = layers[r], float(v[r, t])
            finding.peak_median = float(s.layer_medians[r])
            if heatmap.metric in LENSES and raw_known:
                finding.peak_raw = float(raw[r, t])
                finding.peak_raw_median = float(quiet(np.nanmedian, np.where(np.isnan(v[r]), np.nan, raw[r])[s.kept]))
            finding.peak_contrast, finding.stands_out = float(peak_contrast[t]), bool(peak_stands[t])
        if run_len[t] >= min_run:
            first, last = int(run_end[t] - run_len[t] + 1), int(run_end[t])
            finding.sustained, finding.run_rows = (layers[first], layers[last]), (first, last)
            finding.sustained_mean = float(np.mean(v[first:last + 1, t]))
            finding.sustained_median = float(np.mean(s.layer_medians[first:last + 1]))
        tokens.append(finding)
    return tokens


def _anomalies(s: _Scaled, heatmap: Heatmap, labels: list[str], tokens: list[TokenFinding],
               listed: dict[int, tuple[int, int] | None], min_run: int) -> list[Anomaly]:
    """Dominant tokens, then tokens whose depth profile is unlike the typical one (`listed`: the runs the
    summary lists, by token)."""
    v, valid, kept, layers = s.v, s.valid, s.kept, [int(x) for x in heatmap.layers]
    token_means = quiet(np.nanmean, v, axis=0)
    token_kinds = list(heatmap.kinds)  # Heatmap guarantees one kind per token
    anomalies: list[Anomaly] = []
    for t in s.dominant:
        others = float(np.nanmedian(token_means[kept]))
        top = int(np.sum(np.argmax(np.where(valid, v, -np.inf), axis=1)[valid.any(axis=1)] == t))
        anomalies.append(Anomaly("dominant", [t], labels[t], token_kinds[t] in ("special", "template"),
                                 float(token_means[t]), others, top_layers=top, token_kind=token_kinds[t]))
    kept_idx = np.flatnonzero(kept & valid.any(axis=0))
    # (a trace's columns are read against its two runs: what a restore recovers, not how a profile looks)
    if len(kept_idx) < 6 or v.shape[0] < 3 or s.constant or heatmap.metric in TRACES:
        return anomalies
    profiles = np.nan_to_num(np.where(valid[:, kept_idx], s.u[:, kept_idx], s.median_u[:, None]))
    distance = np.sqrt(np.mean((profiles - np.nan_to_num(s.median_u)[:, None]) ** 2, axis=0))
    typical = float(np.median(distance))
    flagged = [int(j) for j in np.flatnonzero(distance > max(ANOMALY_MIN, ANOMALY_FACTOR * typical))]
    others_means = token_means[kept_idx]
    for group_j in _twins(profiles, flagged, distance):
        if len(anomalies) - len(s.dominant) >= MAX_ANOMALIES:
            break
        group = sorted(int(kept_idx[j]) for j in group_j)
        t = group[0]  # a group is described by its first position
        first, last, direction = _strongest_run(np.nan_to_num(s.contrast[:, t]), valid[:, t], s.stands[:, t])
        if last - first + 1 < min_run and direction == "above" and len(group) == 1 and tokens[t].stands_out:
            continue  # a peak of a layer or two, already a highlight: not a profile
        anomalies.append(Anomaly(
            "profile", group, labels[t], any(token_kinds[i] in ("special", "template") for i in group),
            float(token_means[t]),
            float(np.nanmedian(np.delete(others_means, np.isin(kept_idx, group)))),
            run=(layers[first], layers[last]), direction=direction,
            run_mean=float(np.nanmean(v[first:last + 1, t])),
            run_median=float(np.nanmean(s.layer_medians[first:last + 1])),
            distance=float(distance[group_j[0]]), typical_distance=typical,
            token_kind=token_kinds[t], listed_run=direction == "above" and all(i in listed for i in group)
            and listed.get(t) == (layers[first], layers[last]),
        ))
    return anomalies


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
