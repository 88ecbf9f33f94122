"""A figure's data as the page carries it (`figure.py`), read back the way the loader reads it (layerheat.js)."""

from __future__ import annotations

import base64
import json
import re

import numpy as np

ITEM = re.compile(r'<script type="application/json" class="layerheat-item"[^>]*>(.*?)</script>', re.S)


def payloads(html: str) -> list[dict]:
    """Each figure's data on a page, in order."""
    return [json.loads(found) for found in ITEM.findall(html)]


def floats(text: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(shape)


def raw(panel: dict) -> np.ndarray:
    return floats(panel["raw"], panel["shape"])


def shown(panel: dict) -> np.ndarray:
    """The values the loader colours, decoded in a loop: the raw ones, an affine map of them, or their own."""
    values = raw(panel)
    if "values" in panel:
        return floats(panel["values"], panel["shape"])
    if "fit" not in panel:
        return values
    fit, out = panel["fit"], np.empty_like(values)
    for r in range(values.shape[0]):
        for t in range(values.shape[1]):
            g = {"row": r, "column": t, "all": 0}[fit["axis"]]
            out[r, t] = values[r, t] * fit["scale"][g] + fit["offset"][g]
    return out


def axis_labels(panel: dict) -> list[str]:
    """The token axis: the tokens' labels, marked where `marked` says."""
    return [panel.get("marked", {}).get(str(i), label) for i, label in enumerate(panel["tokens"])]
