"""All heatmaps of a site: cache hits first, then the misses computed model by model, each model loaded once."""

from __future__ import annotations

import gc
import hashlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .cache import Cache, cache_key
from .heatmap import Heatmap
from .metrics import METRICS
from .models import ModelError, ModelRef, fingerprint, resolve
from .spec import HeatmapSpec

_log = logging.getLogger("mkdocs.plugins.layerheat")


@dataclass
class Outcome:
    heatmap: Heatmap | None = None
    error: str | None = None
    computed: bool = False


@dataclass
class Settings:
    aliases: dict[str, str]
    base_dir: Path  # model paths resolve against it (the folder of mkdocs.yml)
    cache_dir: Path
    device: str = "cpu"


def run(specs: list[HeatmapSpec], settings: Settings, log=_log) -> dict[HeatmapSpec, Outcome]:
    """An `Outcome` for every spec: from the cache, or computed now and stored."""
    cache = Cache(settings.cache_dir)
    outcomes: dict[HeatmapSpec, Outcome] = {}
    keys: dict[HeatmapSpec, str] = {}
    misses: dict[ModelRef, list[HeatmapSpec]] = defaultdict(list)
    fingerprints: dict[ModelRef, str] = {}
    for spec in dict.fromkeys(specs):
        try:
            ref = resolve(spec.model, settings.aliases, settings.base_dir)
            if ref not in fingerprints:
                fingerprints[ref] = fingerprint(ref, settings.cache_dir / "fingerprints.json")
        except ModelError as exc:
            outcomes[spec] = Outcome(error=str(exc))
            continue
        keys[spec] = cache_key(fingerprints[ref], spec.text, spec.metric)
        heatmap = cache.get(keys[spec])
        if heatmap is None:
            misses[ref].append(spec)
        else:
            outcomes[spec] = Outcome(heatmap)
    if misses:
        with cache.lock():
            for ref, todo in misses.items():
                _compute_model(ref, todo, keys, cache, settings, outcomes, log, fingerprints[ref])
    for problem in dict.fromkeys(cache.problems):
        log.warning(problem)
    return outcomes


def _compute_model(ref, specs, keys, cache: Cache, settings: Settings, outcomes, log, fingerprint: str) -> None:
    """Load one model, run every missing text through it (one pass per text for all its metrics), free it."""
    from .extract import ExtractionError, extract
    from .models import load

    pending = []
    for spec in specs:  # another build may have filled the cache while we waited for the lock
        heatmap = cache.get(keys[spec])
        if heatmap is not None:
            outcomes[spec] = Outcome(heatmap)
        else:
            pending.append(spec)
    if not pending:
        return
    start = time.perf_counter()
    try:
        eager = any(METRICS[s.metric].site == "attention" for s in pending)
        converted = settings.cache_dir / "converted" / hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
        loaded = load(ref, settings.device, eager_attention=eager, converted=converted)
    except ModelError as exc:
        for spec in pending:
            outcomes[spec] = Outcome(error=str(exc))
        return
    loaded_at = time.perf_counter()
    by_text: dict[tuple[str, int], list[HeatmapSpec]] = defaultdict(list)
    for spec in pending:
        by_text[spec.text, spec.max_tokens].append(spec)
    unwritable = False
    for (text, max_tokens), group in by_text.items():
        metrics = sorted({s.metric for s in group})
        try:
            heatmaps = extract(loaded, text, metrics, max_tokens)
        except ExtractionError as exc:
            for spec in group:
                outcomes[spec] = Outcome(error=str(exc))
            continue
        for spec in group:
            outcomes[spec] = Outcome(heatmaps[spec.metric], computed=True)
            try:
                cache.put(keys[spec], heatmaps[spec.metric])
            except OSError as exc:
                if not unwritable:
                    log.warning(f"cannot write to the cache {cache.directory} ({exc.strerror}); computing without caching")
                unwritable = True
    done = time.perf_counter()
    log.info(
        f"model {ref}: {len(pending)} heatmaps computed "
        f"(load {loaded_at - start:.1f} s, extraction {done - loaded_at:.1f} s)"
    )
    del loaded
    gc.collect()
