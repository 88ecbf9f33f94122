"""Content-addressed storage of heatmaps: one `.npz` per entry (values + JSON metadata), written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from .heatmap import Heatmap

FORMAT = 1


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def library_versions() -> dict[str, str]:
    return {name: _version(name) for name in ("mkdocs-layerheat", "transformers", "torch")}


def cache_key(model_fingerprint: str, text: str, metric: str) -> str:
    """Everything that determines the raw values (normalisation and styling are applied later)."""
    material = {"format": FORMAT, "model": model_fingerprint, "text": text, "metric": metric, **library_versions()}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


class Cache:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.problems: list[str] = []  # entries found unusable, for the caller to report

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npz"

    def lock(self) -> FileLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.directory / ".lock"))

    def get(self, key: str) -> Heatmap | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode("utf-8"))
                if meta.pop("format") != FORMAT or meta.pop("key") != key:
                    raise ValueError("written by another version")
                return Heatmap(values=data["values"], **meta)
        except Exception as exc:  # truncated, garbage, wrong version or shape: recompute
            self.problems.append(f"cache entry {path.name} is unusable ({exc}); recomputing")
            return None

    def put(self, key: str, heatmap: Heatmap) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {"format": FORMAT, "key": key}
        meta.update((f.name, getattr(heatmap, f.name)) for f in fields(heatmap) if f.name != "values")
        encoded = np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, values=heatmap.values, meta=encoded)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
