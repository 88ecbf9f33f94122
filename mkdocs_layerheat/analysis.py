"""Findings read from a heatmap's numbers (numpy only): bands of layers, token peaks, sustained runs, anomalies."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .heatmap import Heatmap

HIGH, LOW = 2 / 3, 1 / 3  # thresholds on the 0-1 scale
STANDS_OUT = 1.5  # z-score within a layer for a token to count as standing out
MIN_SUSTAINED = 3  # layers


@dataclass
class Band:
    first_layer: int
    last_layer: int
    kind: str  # uniform-high | uniform-low | differentiating | sparse
    mean: float


@dataclass
class TokenFinding:
    index: int
    token: str
    peak_layer: int  # where the token stands out most from the other tokens of that layer
    peak_value: float
    peak_z: float
    peak_unit: float  # the peak on the 0-1 scale of the analysed tokens
    sustained: tuple[int, int] | None  # longest run of layers clearly above the others

    @property
    def run_length(self) -> int:
        return self.sustained[1] - self.sustained[0] + 1 if self.sustained else 0


@dataclass
class Anomaly:
    index: int
    token: str
    special: bool
    token_mean: float  # the token's mean over layers
    others_median: float  # the median of the other tokens' means


@dataclass
class Findings:
    low: float  # range of the analysed (displayed) values
    high: float
    raw_low: float  # range of the metric's raw values
    raw_high: float
    layer_means: list[float]
    top_layers: list[int]  # highest mean first
    bands: list[Band]
    tokens: list[TokenFinding]
    highlights: list[TokenFinding]  # the tokens that stand out most, strongest first
    anomalies: list[Anomaly] = field(default_factory=list)


def _layer_kind(row: np.ndarray) -> str:
    high, low = np.mean(row >= HIGH), np.mean(row <= LOW)
    if high >= 0.8:
        return "uniform-high"
    if low >= 0.8:
        return "sparse" if np.any(row >= HIGH) or (row.max() - np.median(row)) > LOW else "uniform-low"
    if low >= 0.6 and high <= 0.2:
        return "sparse"
    return "differentiating"


def _smooth(kinds: list[str]) -> list[str]:
    """A single layer whose kind differs from both equal neighbours takes theirs (noise must not split a band)."""
    out = list(kinds)
    for i in range(1, len(kinds) - 1):
        if kinds[i - 1] == kinds[i + 1] != kinds[i]:
            out[i] = kinds[i - 1]
    return out


def _longest_run(mask: np.ndarray) -> tuple[int, int] | None:
    best, start = None, None
    for i, on in enumerate(list(mask) + [False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            if best is None or i - start > best[1] - best[0] + 1:
                best = (start, i - 1)
            start = None
    return best


def _unit(v: np.ndarray) -> np.ndarray:
    lo, hi = np.nanmin(v), np.nanmax(v)
    return np.nan_to_num((v - lo) / (hi - lo) if hi > lo else np.zeros_like(v))


def _dominant(v: np.ndarray) -> list[int]:
    """Tokens whose mean over layers dwarfs the others' (attention sinks and the like), at most 3."""
    means = _unit(v).mean(axis=0)
    typical = np.median(means)
    return [int(t) for t in np.argsort(-means)[:3] if means[t] > max(3 * typical, typical + 0.3)]


def analyze(heatmap: Heatmap, values: np.ndarray, labels: list[str]) -> Findings:
    """Findings for `values` (the figure's matrix, `[layers, tokens]`), with `labels` naming the tokens.

    Tokens that dominate the whole figure are reported as anomalies, then set aside so that
    bands and highlights describe the other tokens on their own scale.
    """
    v = values.astype(np.float64)
    layers = heatmap.layers
    token_means = np.nanmean(v, axis=0)
    dominant = _dominant(v) if v.shape[1] > 3 else []
    anomalies = [
        Anomaly(t, labels[t], heatmap.special[t], float(token_means[t]), float(np.nanmedian(np.delete(token_means, dominant))))
        for t in dominant
    ]
    kept = [t for t in range(v.shape[1]) if t not in dominant]
    rest = v[:, kept]
    unit = _unit(rest)  # 0-1 view for the thresholds
    means = np.nanmean(rest, axis=1)

    kinds = _smooth([_layer_kind(row) for row in unit])
    bands: list[Band] = []
    for i, kind in enumerate(kinds):
        if bands and bands[-1].kind == kind:
            bands[-1].last_layer = layers[i]
        else:
            bands.append(Band(layers[i], layers[i], kind, 0.0))
    for band in bands:
        rows = [i for i, layer in enumerate(layers) if band.first_layer <= layer <= band.last_layer]
        band.mean = float(np.nanmean(rest[rows]))

    spread = unit.std(axis=1, keepdims=True)
    z = (unit - unit.mean(axis=1, keepdims=True)) / np.where(spread > 1e-9, spread, np.inf)
    tokens = []
    for column, t in enumerate(kept):
        peak = int(np.argmax(z[:, column]))
        run = _longest_run(z[:, column] >= 1.0) if len(kept) > 2 else None
        sustained = (layers[run[0]], layers[run[1]]) if run and run[1] - run[0] + 1 >= MIN_SUSTAINED else None
        tokens.append(
            TokenFinding(t, labels[t], layers[peak], float(v[peak, t]), float(z[peak, column]), float(unit[peak, column]), sustained)
        )
    highlights = sorted((f for f in tokens if f.peak_z >= STANDS_OUT and f.peak_unit >= LOW), key=lambda f: -f.peak_z)
    return Findings(
        low=float(np.nanmin(v)),
        high=float(np.nanmax(v)),
        raw_low=float(np.nanmin(heatmap.values)),
        raw_high=float(np.nanmax(heatmap.values)),
        layer_means=[float(m) for m in means],
        top_layers=[layers[i] for i in np.argsort(-means)[:3]],
        bands=bands,
        tokens=tokens,
        highlights=highlights,
        anomalies=anomalies,
    )
