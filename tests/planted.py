"""Synthetic heatmaps with planted structure: the truth the analysis must recover."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LEVELS = {"high": (0.75, 1.0), "medium": (0.42, 0.58), "low": (0.0, 0.15)}
SPIKE = (0.8, 1.0)


@dataclass
class Planted:
    values: np.ndarray  # [layers, tokens]
    bands: list[tuple[int, int, str]]  # (first row, last row, kind)
    peaks: dict[int, int] = field(default_factory=dict)  # token -> the row of its single planted spike
    noisy_row: int | None = None


def block(rng: np.random.Generator, kind: str, n_layers: int, n_tokens: int) -> np.ndarray:
    if kind.startswith("uniform-"):
        return rng.uniform(*LEVELS[kind[8:]], size=(n_layers, n_tokens))
    if kind == "differentiating":  # each token holds a level over the band, the levels well mixed
        n_high = max(2, n_tokens // 3)
        n_mid = max(2, n_tokens // 3)
        levels = ["high"] * n_high + ["medium"] * n_mid + ["low"] * (n_tokens - n_high - n_mid)
        levels = [levels[i] for i in rng.permutation(n_tokens)]
        return np.stack([rng.uniform(*LEVELS[lv], size=n_layers) for lv in levels], axis=1)
    if kind == "sparse":
        return rng.uniform(*LEVELS["low"], size=(n_layers, n_tokens))
    raise ValueError(kind)


def planted(rng: np.random.Generator, kinds: list[str], lengths: list[int], n_tokens: int, noise: float = 0.0,
            noisy_layer: bool = False) -> Planted:
    """Bands of the given kinds and lengths, bottom first; in sparse bands each layer has 1 to n/12 tokens
    spiking, each spiking token at exactly one layer of the whole figure (its planted peak)."""
    values = np.concatenate([block(rng, k, n, n_tokens) for k, n in zip(kinds, lengths)], axis=0)
    bands, row = [], 0
    for k, n in zip(kinds, lengths):
        bands.append((row, row + n - 1, k))
        row += n
    peaks: dict[int, int] = {}
    free = list(rng.permutation(n_tokens))
    for first, last, kind in bands:
        if kind != "sparse":
            continue
        for r in range(first, last + 1):
            k = int(rng.integers(1, max(1, n_tokens // 12) + 1))
            chosen = [free.pop() for _ in range(min(k, len(free)))] or [int(rng.integers(n_tokens))]
            for t in chosen:
                values[r, t] = rng.uniform(*SPIKE)
                if t not in peaks:
                    peaks[int(t)] = r
    # a token reused for a second spike (no free token left) has no single planted peak
    in_sparse = np.zeros(values.shape[0], dtype=bool)
    for first, last, kind in bands:
        in_sparse[first:last + 1] = kind == "sparse"
    peaks = {t: r for t, r in peaks.items() if np.sum((values[:, t] >= SPIKE[0]) & in_sparse) == 1}
    if noise:
        values = values + rng.normal(0.0, noise, values.shape)
    noisy_row = None
    if noisy_layer:
        inner = [r for first, last, _ in bands if last - first >= 4 for r in range(first + 2, last - 1)]
        if inner:
            noisy_row = int(rng.choice(inner))
            values[noisy_row] += rng.normal(0.0, 0.15, values.shape[1])
    values = np.clip(values, 0.0, 1.0)
    return Planted(values, bands, peaks, noisy_row)


def recovered_bands(found: list, truth: list[tuple[int, int, str]], tolerance: int = 1) -> bool:
    """Same kinds in the same order, each boundary within `tolerance` layers (rows)."""
    if [b.kind for b in found] != [k for _, _, k in truth]:
        return False
    return all(abs(b.rows[0] - first) <= tolerance for b, (first, _, _) in zip(found, truth))
