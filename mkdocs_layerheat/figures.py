"""The figures stage: a block -> its spec -> its heatmaps (planned for the whole site) -> analysis -> the figure's
HTML, cached. The MkDocs plugin and the Markdown extension both call it; a bad block becomes an error box and
one `PAGE:LINE: message` warning, and the rest of the site still builds."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from . import plan
from .cache import Cache
from .directives import Block, find_blocks
from .failures import Failure
from .render import Drawn, Renderer
from .spec import HeatmapSpec, SpecError, parse_spec
from .worker import idle_seconds as worker_idle_seconds

ASSET_DIR = "assets/layerheat"  # in the site: BokehJS, the loader and styles (`render.assets`), and below it
DATA_DIR, STATIC_DIR = f"{ASSET_DIR}/data", f"{ASSET_DIR}/figures"  # the data downloads, the static SVGs


def data_path(key: str) -> str:
    """Where in the site the raw matrix of an entry is offered (+ ".csv", ".json")."""
    return f"{DATA_DIR}/{key[:16]}"


def _export(outcome: plan.Outcome, suffix: str) -> str | None:
    """The raw matrix of an entry as CSV or JSON (None if it cannot be read)."""
    from .render import data_csv

    heatmap = outcome.heatmap
    if heatmap is None:
        return None
    return data_csv(heatmap) if suffix == ".csv" else heatmap.to_json()


def settings(options, project_dir: Path, serving: bool = False) -> plan.Settings:
    """What the plan needs from the site's layerheat options (the plugin's config, or the Markdown extension's,
    which have the same names), paths resolved against `project_dir` (the folder of the config file)."""
    return plan.Settings(
        aliases={str(k): str(v) for k, v in options.models.items()},
        base_dir=project_dir,
        model_dirs=tuple(project_dir / folder for folder in options.model_dirs),
        cache_dir=project_dir / options.cache_dir,
        device=options.device,
        dtype=options.dtype,
        device_map=options.device_map,
        max_memory={str(k): str(v) for k, v in (options.max_memory or {}).items()},
        offload_folder=str(project_dir / options.offload_folder) if options.offload_folder else None,
        trust_remote_code=tuple(options.trust_remote_code),
        refresh=options.refresh or os.environ.get("LAYERHEAT_REFRESH", "") not in ("", "0"),
        keep_models=options.keep_models if serving else 0,
        warm_worker=worker_idle_seconds(options.warm_worker),
    )


class Figures:
    """Every figure of one build: the specs parsed once, the heatmaps planned together, one cache."""

    def __init__(self, settings: plan.Settings, renderer: Renderer, docs_dir: Path | None, log: logging.Logger,
                 enabled: bool = True):
        self.settings, self.renderer, self.docs_dir, self.log, self.enabled = settings, renderer, docs_dir, log, enabled
        self.cache = Cache(settings.cache_dir, warn=log.warning)
        self.outcomes: dict[HeatmapSpec, plan.Outcome] = {}
        self.parsed: dict[str, HeatmapSpec | SpecError] = {}
        self.failures: list[Failure] = []
        self.statics: dict[str, Path | str] = {}  # the static SVG of each figure drawn: name -> its file or content

    def parse(self, body: str) -> HeatmapSpec | SpecError:
        """A block's spec (or its error), parsed once per build."""
        if body not in self.parsed:
            try:
                self.parsed[body] = parse_spec(body, self.docs_dir)
            except SpecError as exc:
                self.parsed[body] = exc
        return self.parsed[body]

    def plan(self, pages: Iterable[str]) -> None:
        """Plan the heatmaps of every block of these pages (their Markdown) at once: each model loads once."""
        specs = [side for markdown in pages for block in find_blocks(markdown)
                 if isinstance(spec := self.parse(block.body), HeatmapSpec) for side in spec.sides()
                 if side not in self.outcomes]
        if self.enabled and specs:
            self.outcomes.update(plan.run(specs, self.settings, self.log, self.cache))

    def site_files(self) -> Iterator[tuple[str, Path | str]]:
        """The files the figures add to the site (`cache.place` puts them there): the data downloads of every
        entry, made once and kept in the cache, and the static SVG of every figure drawn; each as (path in the
        site, its file in the cache, or its content when the cache cannot keep it)."""
        for key, outcome in {o.key: o for o in self.outcomes.values() if o.error is None}.items():
            for suffix in (".csv", ".json"):
                content = functools.partial(_export, outcome, suffix)
                source = self.cache.export(key, suffix, content) or content()
                if source is not None:
                    yield data_path(key) + suffix, source
        for name, source in self.statics.items():
            yield f"{STATIC_DIR}/{name}", source

    def html(self, block: Block, page: str, number: int, data_url: Callable[[str], str] | None = None,
             static_url: Callable[[str], str] | None = None) -> str:
        """The figure of `block`, the `number`th of `page` (its path, for messages); `data_url(key)`, where the
        raw matrix of an entry can be downloaded, `static_url(name)` where the static SVG `name` of a figure will
        be (None: no download links, no static figure; the SVGs to write are in `self.statics`)."""
        if not block.terminated:
            return self.error(Failure("unterminated layerheat fence (no closing ``` found)").at(page, block.line))
        spec = self.parse(block.body)
        if isinstance(spec, SpecError):
            return self.error(Failure(str(spec)).at(page, block.line + (spec.line or 0)))
        if not self.enabled:
            return self.renderer.placeholder(spec)
        sides = spec.sides()
        prefixes = [f"in metric '{s.metric}': " for s in sides] if spec.panels else ["", "in 'compare': "]
        outcomes = []
        for side, which in zip(sides, prefixes):
            outcome = self.outcomes.get(side) or plan.run([side], self.settings, self.log, self.cache)[side]
            if outcome.error:
                return self.error(outcome.error.within(which).at(page, block.line))
            outcomes.append(outcome)
        urls = [data_url(o.key) if data_url else None for o in outcomes]
        key = repr(([o.key for o in outcomes], spec, number, urls, static_url and static_url(""),
                    self.renderer.fingerprint))
        key = hashlib.sha256(key.encode()).hexdigest()
        name = f"{key[:20]}.svg"
        url = static_url(name) if static_url else None
        html, svg = self.cache.get_rendered(key), self.cache.rendered(key, ".svg")
        if html is None or svg is None:
            heatmaps = []
            for side, outcome in zip(sides, outcomes):
                heatmap = self._heatmap(side, outcome)
                if isinstance(heatmap, Failure):
                    return self.error(heatmap.at(page, block.line))
                heatmaps.append(heatmap)
            try:
                html, svg = dataclasses.astuple(self._draw(spec, number, heatmaps, urls, url))
            except Exception as exc:  # one figure that cannot be drawn must not take the site down
                self.log.debug("rendering failed", exc_info=True)
                return self.error(Failure(f"cannot render this heatmap: {type(exc).__name__}: {exc}").at(page, block.line))
            svg = self.cache.put_rendered(key, svg, ".svg") or svg
            self.cache.put_rendered(key, html)
        if url:
            self.statics[name] = svg
        return html

    def error(self, failure: Failure) -> str:
        """Report a bad block once, by page and line, and give the error box that replaces it."""
        if failure not in self.failures:  # a block tried twice (a site scanned, then its page) is said once
            self.failures.append(failure)
            self.log.warning(str(failure))
        return self.renderer.error(failure.where, failure.text)

    def _heatmap(self, spec: HeatmapSpec, outcome: plan.Outcome):
        """The values of an outcome; an entry found unusable when read (the cache says so) is computed again."""
        if outcome.heatmap is not None:
            return outcome.heatmap
        outcome = plan.run([spec], dataclasses.replace(self.settings, refresh=True), self.log, self.cache)[spec]
        return outcome.error or outcome.heatmap

    def _draw(self, spec: HeatmapSpec, number: int, heatmaps: list, data_urls: list[str | None],
              static_url: str | None) -> Drawn:
        """One heatmap, the panels of several metrics, or the two of a `compare:` block on one scale with their
        difference."""
        from .analysis import analyze
        from .compare import difference, shared_scale, side_names
        from .labels import display_labels

        labels = [display_labels(heatmap.tokens, heatmap.token_bytes) for heatmap in heatmaps]
        if spec.compare is None:
            sides = []
            for heatmap, label, url in zip(heatmaps, labels, data_urls):
                values = heatmap.normalized(spec.normalize)
                sides.append((heatmap, values, label, analyze(heatmap, values, label, spec.normalize,
                                                              color_range=spec.color_range, palette=spec.palette), url))
            if spec.panels:
                return self.renderer.panels(number, sides, spec, static_url)
            heatmap, values, label, findings, url = sides[0]
            return self.renderer.figure(number, heatmap, values, label, spec, findings, url, static_url)
        a, b = heatmaps
        values = shared_scale(a, b, spec.normalize)
        sides = [(h, v, lab, analyze(h, v, lab), url) for h, v, lab, url in zip(heatmaps, values, labels, data_urls)]
        diff = difference(a, b, *values)
        return self.renderer.comparison(number, sides, diff, side_names(*spec.sides()), spec, static_url)
