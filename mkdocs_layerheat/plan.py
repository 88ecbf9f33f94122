"""All heatmaps of a site: cache hits first, then the misses computed model by model, each model loaded once."""

from __future__ import annotations

import dataclasses
import gc
import logging
import re
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cache import Cache, cache_key
from .failures import Failure
from .refs import ModelError, ModelOutsideError, ModelRef, fingerprint, first_line, resolve
from .spec import HeatmapSpec

if TYPE_CHECKING:
    from .heatmap import Heatmap

_log = logging.getLogger("mkdocs.plugins.layerheat")
_pool: OrderedDict[tuple, Any] = OrderedDict()  # loaded models kept between builds (mkdocs serve)
# who hears how the computation goes (`layerheat precompute`'s progress bar): ("misses", n), then per model
# ("model", name) before it loads and ("done", n) as its heatmaps are computed
PROGRESS: ContextVar[Callable[[str, Any], None] | None] = ContextVar("layerheat_progress", default=None)


def _tell(event: str, value: Any) -> None:
    if (listener := PROGRESS.get()) is not None:
        listener(event, value)


@dataclass
class Outcome:
    """A heatmap, or why there is none. A cached one is read on first use: a build whose figures
    are all rendered already never reads (nor imports numpy for) the values."""

    loaded: Heatmap | None = None
    error: Failure | None = None
    computed: bool = False
    key: str | None = None  # the cache key of the values
    cache: Cache | None = field(default=None, repr=False, compare=False)

    @property
    def heatmap(self) -> Heatmap | None:
        if self.loaded is None and self.cache is not None and self.key:
            self.loaded = self.cache.get(self.key)
        return self.loaded


@dataclass
class Settings:
    aliases: dict[str, str]
    base_dir: Path  # model paths resolve against it (the folder of mkdocs.yml)
    cache_dir: Path
    device: str = "cpu"
    dtype: str = "float32"  # auto | float32 | bfloat16 | float16
    device_map: str | None = None  # "auto": spread over the devices through accelerate
    max_memory: dict[str, str] = dataclasses.field(default_factory=dict)  # device ("0", "cpu") -> "20GiB"
    offload_folder: str | None = None  # where accelerate puts the weights that fit on no device
    trust_remote_code: tuple[str, ...] = ()  # model aliases (or references) allowed to run their own code
    refresh: bool = False  # recompute even what the cache holds
    keep_models: int = 0  # models kept loaded after the build (mkdocs serve)
    warm_worker: int = 0  # > 0: misses go to a local worker process that keeps models loaded this many idle seconds
    model_dirs: tuple[Path, ...] = ()  # besides base_dir, folders whose models pages may name by path


@dataclass
class Keys:
    keys: dict[HeatmapSpec, str]  # cache key of every spec whose model is known
    refs: dict[HeatmapSpec, ModelRef]  # where the model can be loaded from, when it is on this machine
    fingerprints: dict[ModelRef, str]
    errors: dict[HeatmapSpec, Failure]


def identify(model: str, settings: Settings, manifest: dict[str, str]) -> tuple[ModelRef | None, str]:
    """Where a block's model is and its fingerprint. A model that is not on this machine (a cache handed over
    from another one) is known by the fingerprint `manifest` (the cache's) recorded for the same reference, and
    has no ref; raises `ModelError` when it is not known either."""
    try:
        ref = resolve(model, settings.aliases, settings.base_dir, [settings.base_dir, *settings.model_dirs])
        return ref, fingerprint(ref, settings.cache_dir / "fingerprints.json")
    except ModelError as exc:
        target = settings.aliases.get(model, model)
        if target not in manifest or isinstance(exc, ModelOutsideError):
            raise
        return None, manifest[target]


def keys_for(specs: list[HeatmapSpec], settings: Settings, cache: Cache | None = None) -> Keys:
    """Cache keys of the specs whose model can be identified, with their refs, and errors for the others.
    `cache`: the build's (by default, the settings' folder)."""
    cache = cache or Cache(settings.cache_dir)
    manifest = cache.manifest()
    found = Keys({}, {}, {}, {})
    models: dict[str, tuple[ModelRef | None, str] | ModelError] = {}  # each model identified once
    by_target: dict[str, str] = {}
    for spec in dict.fromkeys(specs):
        if spec.model not in models:
            try:
                models[spec.model] = identify(spec.model, settings, manifest)
            except ModelError as exc:
                models[spec.model] = exc
        if isinstance(known := models[spec.model], ModelError):
            found.errors[spec] = Failure(str(known))
            continue
        ref, model_fingerprint = known
        if ref is not None:
            found.refs[spec], found.fingerprints[ref] = ref, model_fingerprint
        by_target[settings.aliases.get(spec.model, spec.model)] = model_fingerprint
        found.keys[spec] = cache_key(model_fingerprint, spec.text, spec.metric, _key_options(spec, settings))
    if any(manifest.get(t) != f for t, f in by_target.items()):
        cache.save_manifest({**manifest, **by_target})
    return found


def run(specs: list[HeatmapSpec], settings: Settings, log=_log, cache: Cache | None = None,
        drawn: int = 0) -> dict[HeatmapSpec, Outcome]:
    """An `Outcome` for every spec: from `cache` (the build's; by default, the settings' folder), or computed
    now and stored. `drawn`: the build's heatmaps whose figures need no outcome (their pages are unchanged since
    they were drawn), counted as cached in the log."""
    start = time.perf_counter()
    cache = cache or Cache(settings.cache_dir, warn=log.warning)
    found = keys_for(specs, settings, cache)
    outcomes = {spec: Outcome(error=failure) for spec, failure in found.errors.items()}
    misses: dict[ModelRef, list[HeatmapSpec]] = defaultdict(list)
    cached: dict[object, int] = defaultdict(int)  # per model (ref, or name when not on this machine)
    for spec, key in found.keys.items():
        if not settings.refresh and cache.has(key):
            outcomes[spec] = Outcome(key=key, cache=cache)
            cached[found.refs.get(spec, spec.model)] += 1
        elif spec in found.refs:
            misses[found.refs[spec]].append(spec)
        else:
            absent = f"model '{spec.model}' is not on this machine and the cache has no entry"
            outcomes[spec] = Outcome(error=Failure(absent))
    if misses:
        _tell("misses", sum(len(todo) for todo in misses.values()))
        remote = None
        if settings.warm_worker > 0:  # the worker computes them with the model it keeps loaded
            remote = _remote(misses, found, settings, {ref: cached[ref] for ref in misses if ref in cached}, cache, log)
        if remote is not None:
            outcomes.update(remote)
            for ref in misses:
                cached.pop(ref, None)
        else:
            outcomes.update(compute_misses(misses, found, cache, settings, log, cached))
    for model, count in cached.items():
        log.info(f"model {model}: {count} heatmaps, {count} cached")
    if specs or drawn:
        computed = sum(o.computed for o in outcomes.values())
        failed = sum(o.error is not None for o in outcomes.values())
        log.info(
            f"{len(outcomes) + drawn} heatmaps, {len(outcomes) + drawn - computed - failed} cached, {computed} computed"
            + (f", {failed} failed" if failed else "")
            + f" in {time.perf_counter() - start:.1f} s"
        )
    return outcomes


def shard(specs: list[HeatmapSpec], settings: Settings, index: int, count: int) -> list[HeatmapSpec]:
    """The specs of shard `index` (1-based) of `count`: a deterministic share of the site's cache misses, for a CI
    matrix whose jobs each compute theirs into a cache of their own (merged afterwards, `Cache.merge`).

    The misses (one per cache key) are ordered by model, largest share first, then by key, and cut into `count`
    consecutive runs of (almost) equal length: a model is loaded on one shard, or, when it has more heatmaps than
    a shard holds, on as few consecutive shards as its heatmaps fill. Every job must start from the same cache.
    """
    if not 1 <= index <= count:
        raise ValueError(f"shard {index}/{count}: the shard must lie between 1 and {count}")
    cache = Cache(settings.cache_dir)
    found = keys_for(specs, settings, cache)
    by_key: dict[str, list[HeatmapSpec]] = defaultdict(list)
    for spec, key in found.keys.items():
        if spec in found.refs and (settings.refresh or not cache.has(key)):
            by_key[key].append(spec)
    per_model: dict[str, list[str]] = defaultdict(list)
    for key, same in by_key.items():
        per_model[found.fingerprints[found.refs[same[0]]]].append(key)
    order = [key for _, keys in sorted(per_model.items(), key=lambda item: (-len(item[1]), item[0]))
             for key in sorted(keys)]
    start, end = (len(order) * (index - 1)) // count, (len(order) * index) // count
    return [spec for key in order[start:end] for spec in by_key[key]]


def compute_misses(misses: dict[ModelRef, list[HeatmapSpec]], found: Keys, cache: Cache, settings: Settings,
                   log, cached: dict) -> dict[HeatmapSpec, Outcome]:
    """The misses' outcomes, computed model by model under the cache's lock and stored (in this process or the
    warm worker's); `cached`: per model, how many of its heatmaps the cache held (for its log line)."""
    outcomes: dict[HeatmapSpec, Outcome] = {}
    with _lock(cache, log):
        for ref, todo in misses.items():
            _compute_model(ref, todo, found, cache, settings, outcomes, log, cached.pop(ref, 0))
    return outcomes


# -- the warm worker: the same computation in a process that keeps models loaded (worker.py carries it)


def _remote(misses: dict[ModelRef, list[HeatmapSpec]], found: Keys, settings: Settings, cached: dict, cache: Cache,
            log) -> dict[HeatmapSpec, Outcome] | None:
    """The misses' outcomes from the warm worker, read from the cache it wrote; None when it cannot help."""
    from . import worker

    body = {
        "settings": _settings_json(settings),
        "models": [{"ref": dataclasses.asdict(ref), "fingerprint": found.fingerprints[ref], "cached": cached.get(ref, 0),
                    "specs": [{"spec": _spec_json(spec), "key": found.keys[spec]} for spec in todo]}
                   for ref, todo in misses.items()],
    }
    reply = worker.compute(body, Path(settings.cache_dir).resolve(), settings.warm_worker, f"{__name__}:serve_worker", log)
    if reply is None:
        return None
    for level, message in reply["log"]:
        log.log(level, message)
    computed = set(reply["computed"])
    outcomes = {}
    for spec in (spec for todo in misses.values() for spec in todo):
        key = found.keys[spec]
        failure = reply["results"].get(key, {"message": "the warm worker did not answer for it"})
        outcomes[spec] = (Outcome(error=Failure.from_json(failure)) if failure
                          else Outcome(key=key, cache=cache, computed=key in computed))
    return outcomes


def serve_worker(cache_dir: str, idle: float) -> None:
    """The warm worker's process (started by `worker.compute`): the code `worker.token()` describes loaded now."""
    from . import catalog, extract, interventions, models, reducers, worker  # noqa: F401

    worker.serve(Path(cache_dir), idle, _answer)


def _answer(body: dict) -> dict:
    """A compute request's answer: for each cache key, null (the entry is in the cache) or why there is none."""
    from . import worker

    settings = _settings_from(body["settings"])
    settings = dataclasses.replace(settings, keep_models=max(1, settings.keep_models))
    found, misses, cached = Keys({}, {}, {}, {}), {}, {}
    for model in body["models"]:
        ref = ModelRef(**model["ref"])
        found.fingerprints[ref], cached[ref] = str(model["fingerprint"]), int(model["cached"])
        misses[ref] = []
        for item in model["specs"]:
            spec = _spec_from(item["spec"])
            found.keys[spec], found.refs[spec] = str(item["key"]), ref
            misses[ref].append(spec)
    handler = worker.Collect()
    log = logging.getLogger("layerheat.worker.request")
    log.handlers[:] = [handler]
    log.propagate, log.level = False, logging.DEBUG
    cache = Cache(settings.cache_dir, warn=log.warning)  # an unusable entry: said in the log sent back
    outcomes = compute_misses(misses, found, cache, settings, log, cached)
    return {"status": "ok", "results": {found.keys[spec]: o.error and o.error.to_json() for spec, o in outcomes.items()},
            "computed": [found.keys[spec] for spec, o in outcomes.items() if o.computed],
            "log": handler.records}


_TUPLES = ("heads", "layers")  # spec fields held as tuples, sent as lists


def _spec_json(spec: HeatmapSpec) -> dict:
    if spec.compare is not None or spec.panels:
        raise ValueError("a block's sides are computed, not the block")
    return {f.name: list(v) if isinstance(v := getattr(spec, f.name), tuple) else v
            for f in dataclasses.fields(spec) if f.name not in ("compare", "panels")}


def _spec_from(data: dict) -> HeatmapSpec:
    return HeatmapSpec(**{k: tuple(v) if k in _TUPLES and v is not None else v for k, v in data.items()})


def _settings_json(settings: Settings) -> dict:
    out = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name in ("base_dir", "cache_dir"):
            value = str(Path(value).resolve())
        elif f.name == "model_dirs":
            value = [str(Path(p).resolve()) for p in value]
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _settings_from(data: dict) -> Settings:
    return Settings(**{**data, "base_dir": Path(data["base_dir"]), "cache_dir": Path(data["cache_dir"]),
                       "model_dirs": tuple(Path(p) for p in data["model_dirs"]),
                       "trust_remote_code": tuple(data["trust_remote_code"])})


@contextmanager
def _lock(cache: Cache, log):
    """Hold the cache's lock while computing; a cache that cannot be locked (read-only) is used unlocked."""
    try:
        lock = cache.lock()
        lock.acquire()
    except OSError as exc:
        log.warning(f"cannot write to the cache {cache.directory} ({exc.strerror or exc}); computing without caching")
        cache.writable = False
        yield
        return
    try:
        if removed := cache.sweep():
            log.debug(f"removed {removed} temporary files left in the cache by killed builds")
        yield
    finally:
        lock.release()


def _key_options(spec: HeatmapSpec, settings: Settings) -> dict[str, Any]:
    """The spec's options that change the numbers, and the dtype when it is not the default."""
    options = spec.key_options()
    if settings.dtype != "float32":
        options["dtype"] = settings.dtype if settings.dtype != "auto" else f"auto@{settings.device}"
    return options


def _pool_key(ref: ModelRef, settings: Settings, model_fingerprint: str) -> tuple:
    """What a kept model must match to be used again: its weights, device and dtype."""
    return (ref, settings.device, settings.dtype, settings.device_map, tuple(sorted(settings.max_memory.items())),
            model_fingerprint)


def _acquire(ref: ModelRef, settings: Settings, model_fingerprint: str) -> Any:
    """A loaded model: from the pool kept between builds, or loaded now.

    It is always loaded able to give attention weights (our chunked attention), whatever the metrics
    at hand: the attention kernel changes every later value in its last digits, and a cached value
    must not depend on which other blocks were computed with it.
    """
    from .models import load

    key = _pool_key(ref, settings, model_fingerprint)
    if key in _pool:
        _pool.move_to_end(key)
        return _pool[key]
    converted = Cache(settings.cache_dir).converted_dir(model_fingerprint)
    trust = ref.name in settings.trust_remote_code or settings.aliases.get(ref.name, ref.name) in settings.trust_remote_code
    return load(
        ref, settings.device, eager_attention=True, converted=converted,
        dtype=settings.dtype, device_map=settings.device_map, trust_remote_code=trust,
        max_memory=settings.max_memory, offload_folder=settings.offload_folder,
    )


def _release(ref: ModelRef, settings: Settings, loaded: Any, model_fingerprint: str) -> None:
    """Keep the model for the next build when asked to (LRU), else free it now."""
    _pool[_pool_key(ref, settings, model_fingerprint)] = loaded
    while len(_pool) > settings.keep_models:
        _pool.popitem(last=False)


def _compute_model(ref, specs, found: Keys, cache: Cache, settings: Settings, outcomes, log, cached: int) -> None:
    """Run every missing text of one model (one pass per text for all its metrics), loading the model once."""
    pending = []
    for spec in specs:  # another build may have filled the cache while we waited for the lock
        if not settings.refresh and cache.has(found.keys[spec]):
            outcomes[spec] = Outcome(key=found.keys[spec], cache=cache)
            cached += 1
        else:
            pending.append(spec)
    _tell("done", len(specs) - len(pending))
    if not pending:
        return
    start = time.perf_counter()
    _tell("model", str(ref))
    try:
        loaded = _acquire(ref, settings, found.fingerprints[ref])
    except Exception as exc:  # also a device that does not exist, or one without room for the model
        log.debug(f"loading {ref} failed", exc_info=True)
        if _out_of_memory(exc):
            failure = Failure(f"out of memory loading model '{ref}' on device '{settings.device}'",
                              "choose dtype: bfloat16, another device, or device_map: auto in mkdocs.yml")
        else:
            failure = Failure(str(exc) if isinstance(exc, ModelError) else f"cannot load model '{ref}': {first_line(exc)}")
        for spec in pending:
            outcomes[spec] = Outcome(error=failure)
        return
    loaded_at = time.perf_counter()
    results, shared = _extract(loaded, pending, settings, log)
    if shared:  # a batch failed as a whole: its texts run again one by one, so that only the faulty ones fail
        gc.collect()  # the failed pass's tensors, held by the error's traceback
        for text in dict.fromkeys(spec.text for spec in shared):
            results.update(_extract(loaded, [spec for spec in shared if spec.text == text], settings, log)[0])
    for spec, result in results.items():
        if isinstance(result, Failure):
            outcomes[spec] = Outcome(error=result)
            continue
        outcomes[spec] = Outcome(result, computed=True, key=found.keys[spec])
        try:
            cache.put(found.keys[spec], result)
        except OSError as exc:
            log.warning(f"cannot write to the cache {cache.directory} ({exc.strerror}); computing without caching")
            cache.writable = False
    done = time.perf_counter()
    failed = sum(isinstance(result, Failure) for result in results.values())
    log.info(
        f"model {ref}: {len(pending) + cached} heatmaps, {cached} cached, {len(pending) - failed} computed"
        + (f", {failed} failed" if failed else "")
        + f" (load {loaded_at - start:.1f} s, extraction {done - loaded_at:.1f} s)"
    )
    _release(ref, settings, loaded, found.fingerprints[ref])
    del loaded
    gc.collect()


_OUT_OF_MEMORY = re.compile(r"out of memory|can't allocate memory|not enough memory", re.I)


def _out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError, the CPU allocator's RuntimeError, or either wrapped in our own error."""
    return any(
        isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or _OUT_OF_MEMORY.search(str(e))
        for e in (exc, exc.__cause__) if e is not None
    )


def _extract(loaded, specs: list[HeatmapSpec], settings: Settings, log) -> tuple[dict, list[HeatmapSpec]]:
    """A `Heatmap` or a `Failure` per spec, never an exception; and the specs whose whole batch failed
    (one error shared by several texts), which may succeed on their own."""
    from .extract import ExtractionError, extract_specs

    try:
        results: dict = extract_specs(loaded, specs, on_done=lambda n: _tell("done", n))  # texts batched
    except Exception as exc:  # a model that raises outside the guarded forward pass
        log.debug("extraction failed", exc_info=True)
        results = dict.fromkeys(specs, exc)
    texts: dict[int, set[str]] = defaultdict(set)
    for spec, result in results.items():
        if isinstance(result, Exception):
            texts[id(result)].add(spec.text)
    shared = [spec for spec, result in results.items() if isinstance(result, Exception) and len(texts[id(result)]) > 1]
    for spec, result in results.items():
        if not isinstance(result, Exception):
            continue
        if _out_of_memory(result):
            results[spec] = Failure(
                f"out of memory running this text on device '{settings.device}'",
                f"shorten the text, lower max_tokens (now {spec.max_tokens}), or choose another device "
                "(or device_map: auto) in mkdocs.yml")
        elif isinstance(result, ExtractionError):
            results[spec] = Failure(str(result))
        else:
            results[spec] = Failure(f"extraction failed: {type(result).__name__}: {first_line(result)}")
    return results, shared
