"""Two heatmaps of a `compare:` block: one colour scale for both, and what differs between them (numpy only).

The difference is drawn cell by cell only where the two matrices line up: the same layers and the
same number of tokens, with at most half of the positions holding a different token (a minimal pair
of texts, or two models sharing a tokenizer). Otherwise only the layer profiles are compared.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .heatmap import Heatmap, normalize, quiet

BAND_SHARE = 0.5  # the layers where the difference concentrates: mean |Δ| at least half of the largest
TOP_TOKENS = 3  # tokens named as changing most
IDENTICAL = 0.01  # no cell differs by more than this share of the scale: "practically identical"


@dataclass
class TokenChange:
    index: int
    mean_abs: float  # mean |Δ| over the layers
    peak_layer: int  # where |Δ| is largest
    peak: float  # Δ there (signed)


@dataclass
class Difference:
    """What differs between heatmap (a) and heatmap (b), on their shared scale. Δ is b − a."""

    values: np.ndarray | None  # Δ per cell, `[layers, tokens]`, when the matrices line up, else None
    layers: list[int]
    scale: float  # the width of the shared scale (1 for normalised values)
    changed: list[int] = field(default_factory=list)  # positions where the two texts hold different tokens
    largest: float = 0.0  # max |Δ|
    mean_abs: float = 0.0  # mean |Δ| over all cells
    mean: float = 0.0  # mean Δ
    higher_share: float = 0.0  # share of cells where b is above a
    lower_share: float = 0.0
    band: tuple[int, int, float] | None = None  # first layer, last layer, mean |Δ| there
    first_position: int = 0  # the first token whose column differs (the ones before agree in every cell)
    tokens: list[TokenChange] = field(default_factory=list)
    peak_layers: tuple[int, int] | None = None  # unaligned: layer of the largest layer mean in (a) and in (b)
    profile_r: float | None = None  # unaligned, same layers: correlation of the two layer-mean profiles

    @property
    def identical(self) -> bool:
        return self.values is not None and self.largest <= IDENTICAL * self.scale


def shared_scale(a: Heatmap, b: Heatmap, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Both matrices normalised together, so one colour means one value in both figures.

    `global` spans the values of both; `layer` spans each layer of both (when they have the same
    layers; otherwise each its own); `token` is per column, the same either way; `none` is raw.
    """
    width = a.values.shape[1]
    if mode == "layer" and a.layers != b.layers:
        return a.normalized(mode), b.normalized(mode)
    if mode in ("global", "layer") and a.layers == b.layers:
        both = normalize(np.concatenate([a.values, b.values], axis=1), mode)
        return both[:, :width], both[:, width:]
    if mode == "global":
        both = normalize(np.concatenate([a.values.ravel(), b.values.ravel()])[None, :], mode)[0]
        return both[: a.values.size].reshape(a.values.shape), both[a.values.size:].reshape(b.values.shape)
    return a.normalized(mode), b.normalized(mode)


def aligned(a: Heatmap, b: Heatmap) -> bool:
    """Whether the matrices line up cell by cell: same layers, same length, at most half the tokens differ."""
    if a.layers != b.layers or len(a.tokens) != len(b.tokens):
        return False
    return sum(x != y for x, y in zip(a.tokens, b.tokens)) <= len(a.tokens) / 2


def difference(a: Heatmap, b: Heatmap, va: np.ndarray, vb: np.ndarray) -> Difference:
    """Where and how much (b) differs from (a), given both on their shared scale (`va`, `vb`)."""
    layers = [int(x) for x in a.layers]
    both = np.concatenate([va.ravel(), vb.ravel()])
    scale = float(quiet(np.nanmax, both) - quiet(np.nanmin, both))
    scale = scale if scale > 0 else 1.0  # constant or empty: any difference is measured against 1
    if not aligned(a, b):
        return _profiles(a, b, va, vb, scale)
    d = vb.astype(np.float64) - va.astype(np.float64)
    out = Difference(values=d.astype(np.float32), layers=layers, scale=scale,
                     changed=[i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y])
    valid = ~np.isnan(d)
    if not valid.any():
        return out
    size = d[valid]
    out.largest = float(np.abs(size).max())
    out.mean_abs, out.mean = float(np.abs(size).mean()), float(size.mean())
    tiny = IDENTICAL * scale
    out.higher_share, out.lower_share = float(np.mean(size > tiny)), float(np.mean(size < -tiny))
    if out.identical:
        return out
    out.first_position = int(np.argmax(np.nan_to_num(np.abs(d), nan=0.0).max(axis=0) > tiny))
    per_layer = np.nan_to_num(quiet(np.nanmean, np.abs(d), axis=1), nan=0.0)
    top = int(np.argmax(per_layer))
    first = last = top  # the run of layers around the largest one that stay above BAND_SHARE of it
    while first > 0 and per_layer[first - 1] >= BAND_SHARE * per_layer[top]:
        first -= 1
    while last < len(layers) - 1 and per_layer[last + 1] >= BAND_SHARE * per_layer[top]:
        last += 1
    out.band = (layers[first], layers[last], float(per_layer[first:last + 1].mean()))
    per_token = np.nan_to_num(quiet(np.nanmean, np.abs(d), axis=0), nan=0.0)
    for index in np.argsort(-per_token, kind="stable")[:TOP_TOKENS]:
        if per_token[index] <= out.mean_abs or per_token[index] <= tiny:
            break
        column = np.nan_to_num(d[:, index], nan=0.0)
        row = int(np.argmax(np.abs(column)))
        out.tokens.append(TokenChange(int(index), float(per_token[index]), layers[row], float(column[row])))
    return out


def _profiles(a: Heatmap, b: Heatmap, va: np.ndarray, vb: np.ndarray, scale: float) -> Difference:
    """Matrices that do not line up: compare where each one's layer means peak, and how their profiles correlate."""
    ma, mb = (np.nan_to_num(quiet(np.nanmean, v, axis=1), nan=-np.inf) for v in (va, vb))
    out = Difference(values=None, layers=[int(x) for x in a.layers], scale=scale)
    out.peak_layers = (int(a.layers[int(np.argmax(ma))]), int(b.layers[int(np.argmax(mb))]))
    finite = np.isfinite(ma) & np.isfinite(mb) if a.layers == b.layers else np.zeros(0, bool)
    if finite.sum() >= 3 and ma[finite].std() > 0 and mb[finite].std() > 0:
        out.profile_r = float(np.corrcoef(ma[finite], mb[finite])[0, 1])
    return out


def side_names(a, b) -> tuple[str, str]:
    """Short names of the two sides (specs) for panel titles and the summary: what differs between them.

    Two texts are quoted around their first difference, so that a minimal pair reads as one.
    """
    flat_a, flat_b = (" ".join(spec.text.split()) for spec in (a, b))
    common = len(os.path.commonprefix([flat_a, flat_b]))
    start = max(0, flat_a.rfind(" ", 0, max(0, common - 25)) + 1) if common > 30 else 0

    def excerpt(flat: str) -> str:
        end = flat.find(" ", max(start + 40, common + 1))
        middle = flat[start:end] if end > 0 else flat[start:]
        return f"“{'…' if start else ''}{middle}{'…' if end > 0 else ''}”"

    names = []
    for spec, flat in ((a, flat_a), (b, flat_b)):
        parts = ([spec.model] if a.model != b.model else []) + ([excerpt(flat)] if a.text != b.text else [])
        names.append(" on ".join(parts))
    return names[0], names[1]
