"""Bands of layers: each layer's kind (uniformly high, medium or low; differentiating; sparse) on the unit scale,
and the runs of layers of one kind, settled so that a band is no shorter than its evidence allows."""

from __future__ import annotations

import numpy as np

HIGH, LOW = 2 / 3, 1 / 3  # thresholds on the unit scale: top third, bottom third
UNIFORM_SHARE = 0.8  # a layer is uniformly high/medium/low when this share of its cells is at that level
MOSTLY_LOW = 0.6  # a sparse layer: at least this share of cells low ...
FEW = 0.25  # ... and at most this share of them standing out
NARROW = 1 / 3  # a layer whose cells (10th to 90th percentile) lie within this much of the scale is uniform
KINDS = ("uniform-high", "uniform-medium", "uniform-low", "differentiating", "sparse")
UNIFORM = ("uniform-high", "uniform-medium", "uniform-low")


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


def layer_kinds(u: np.ndarray, valid: np.ndarray, stands: np.ndarray) -> list[str | None]:
    """The kind of each layer (row) of the unit-scale matrix `u`, None for a row without values."""
    return [_kind(u[i][valid[i]], stands[i][valid[i]]) for i in range(len(u))]


def settle(runs: list[list], u: np.ndarray, valid: np.ndarray, stands: np.ndarray) -> list[list]:
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


def segments(kinds: list[str | None], row_means: np.ndarray) -> list[list]:
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
