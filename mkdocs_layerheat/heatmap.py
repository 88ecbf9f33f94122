"""The `Heatmap`: one token-by-layer matrix and what it was computed from."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .catalog import NORMALIZATIONS  # noqa: F401  (re-exported)

TOKEN_KINDS = ("text", "special", "template", "generated")
# what some metrics carry besides their values (top-level keys of the JSON): what an intervention's cells are read
# against (causal-trace's answer and its token id, clean and noised probabilities, subject tokens [first, one past
# the last]; activation-patching's two answers, two logit differences, the corrupted text's tokens and where they
# differ), and a logit lens's most probable tokens per cell with their probabilities ([rows][tokens][k])
EXTRA_KEYS = ("answer", "answer_id", "p_clean", "p_noisy", "subject", "corrupt_answer", "ld_clean", "ld_corrupt",
              "corrupt_tokens", "differs", "top_tokens", "top_probs")


@dataclass
class Heatmap:
    """Raw metric values `[layers, tokens]` (bottom layer first) plus their labels.

    Values are stored as computed; `normalized()` gives the 0-1 view a figure shows.
    `NaN` marks a cell the metric does not define. `kinds` says what each token is: part of the
    author's `text`, a tokenizer `special` token, a chat-`template` token, or `generated` by the model.
    `token_bytes` holds, for a token that is only part of a multi-byte character (its piece in `tokens`
    is then U+FFFD), the token's exact bytes as hex, and None for every other token; it is empty when no
    token is such a fragment (entries written before it existed load the same way).
    """

    values: np.ndarray
    tokens: list[str]
    layers: list[int]
    metric: str
    model: str
    special: list[bool] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)
    token_bytes: list[str | None] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)  # EXTRA_KEYS: what some metrics carry besides values

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float32)
        if not self.special:
            self.special = [False] * len(self.tokens)
        if not self.kinds:
            self.kinds = ["special" if s else "text" for s in self.special]
        self.token_bytes = list(self.token_bytes or []) if any(self.token_bytes or []) else []
        if self.token_bytes and len(self.token_bytes) != len(self.tokens):
            raise ValueError(f"{len(self.token_bytes)} token_bytes for {len(self.tokens)} tokens")
        for entry in self.token_bytes:
            if entry is not None and not (isinstance(entry, str) and entry and bytes.fromhex(entry)):
                raise ValueError(f"token_bytes entry {entry!r} is not hex")
        expected = (len(self.layers), len(self.tokens))
        if self.values.shape != expected or len(self.special) != len(self.tokens) or len(self.kinds) != len(self.tokens):
            raise ValueError(f"heatmap shape {self.values.shape} does not match {expected} (layers, tokens)")
        unknown = set(self.kinds) - set(TOKEN_KINDS)
        if unknown:
            raise ValueError(f"unknown token kinds {sorted(unknown)} (one of: {', '.join(TOKEN_KINDS)})")

    def normalized(self, mode: str) -> np.ndarray:
        """Values mapped to 0..1 over the whole matrix, per layer (row) or per token (column)."""
        return normalize(self.values, mode)

    def to_dict(self, normalize: str = "none") -> dict[str, Any]:
        """The exchange format of `layerheat extract`: plain JSON types, `null` for NaN."""
        values = self.normalized(normalize)
        return {
            "model": self.model,
            "metric": self.metric,
            "normalize": normalize,
            "tokens": list(self.tokens),
            "special": list(self.special),
            "kinds": list(self.kinds),
            **({"token_bytes": list(self.token_bytes)} if self.token_bytes else {}),
            "layers": list(self.layers),
            "values": [[None if x != x else x for x in row] for row in values.tolist()],  # NaN: null
            "provenance": self.provenance,
            **{k: self.extras[k] for k in EXTRA_KEYS if k in self.extras},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Heatmap:
        values = np.array([[np.nan if x is None else x for x in row] for row in data["values"]], dtype=np.float32)
        return cls(
            values=values.reshape(len(data["layers"]), len(data["tokens"])),
            tokens=list(data["tokens"]),
            layers=[int(x) for x in data["layers"]],
            metric=data.get("metric", "unknown"),
            model=data.get("model", "unknown"),
            special=list(data.get("special") or []),
            kinds=list(data.get("kinds") or []),
            token_bytes=list(data.get("token_bytes") or []),
            provenance=dict(data.get("provenance") or {}),
            extras={k: data[k] for k in EXTRA_KEYS if k in data},
        )

    def to_json(self, normalize: str = "none") -> str:
        return json.dumps(self.to_dict(normalize), ensure_ascii=False)


def normalize(values: np.ndarray, mode: str) -> np.ndarray:
    """`values` (`[layers, tokens]`) mapped to 0..1 over the whole matrix (`global`), per row (`layer`) or
    per column (`token`); `none` returns a copy. NaN stays NaN, a constant stretch maps to 0."""
    if mode == "none":
        return np.array(values, dtype=np.float32)
    axis = {"global": None, "layer": 1, "token": 0}[mode]
    v = np.asarray(values, dtype=np.float64)
    lo = quiet(np.nanmin, v, axis=axis, keepdims=True)  # an all-NaN row or column stays NaN
    span = quiet(np.nanmax, v, axis=axis, keepdims=True) - lo
    with np.errstate(all="ignore"):
        out = np.where(span > 0, (v - lo) / np.where(span > 0, span, 1), 0.0)
    return np.where(np.isnan(v), np.nan, out).astype(np.float32)


def quiet(func, *args, **kwargs):
    """A numpy reduction without the warnings of empty or all-NaN slices (their result is NaN, which is meant)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return func(*args, **kwargs)


ROBUST = 98  # `color_range: robust`: the colours end at this percentile (seaborn's `robust=True` upper bound)


def robust_range(values: np.ndarray, symmetric: bool = False) -> tuple[float, float]:
    """From the minimum to the 98th percentile of `values` (the cells with a value; their full range if those
    coincide); `symmetric`: plus and minus the 98th percentile of their magnitudes."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return 0.0, 1.0
    if symmetric:
        high = float(np.percentile(np.abs(v), ROBUST)) or float(np.abs(v).max()) or 1.0
        return -high, high
    high = float(np.percentile(v, ROBUST))
    return (float(v.min()), high) if high > v.min() else (float(v.min()), float(v.max()))
