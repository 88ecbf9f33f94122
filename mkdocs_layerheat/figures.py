"""The figures stage: a block -> its spec -> its heatmaps (planned for the whole site) -> analysis -> the figure's
HTML, cached; a page unchanged since a build drew it is taken whole from its record (`records.py`). The MkDocs
plugin and the Markdown extension both call it; a bad block becomes an error box and one `PAGE:LINE: message`
warning, and the rest of the site still builds."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from . import plan
from .cache import Cache, library_versions
from .directives import Block, find_blocks, replace_blocks
from .failures import Failure
from .records import Drawing, Page, Records, sha
from .refs import ModelError
from .render import Drawn, Renderer
from .spec import HeatmapSpec, SpecError, parse_spec
from .worker import idle_seconds as worker_idle_seconds

ASSET_DIR = "assets/layerheat"  # in the site: BokehJS, the loader and styles (`render.assets`), and below it
DATA_DIR, STATIC_DIR = f"{ASSET_DIR}/data", f"{ASSET_DIR}/figures"  # the data downloads, the static SVGs


def data_path(key: str) -> str:
    """Where in the site the raw matrix of an entry is offered (+ ".csv", ".json")."""
    return f"{DATA_DIR}/{key[:16]}"


def _relative(path: str, url: str) -> str:
    """A site path as a link from the page at `url` (MkDocs' rule; imported only when pages have URLs)."""
    from mkdocs.utils import get_relative_url

    return get_relative_url(path, url)


def _static_name(rendered: str) -> str:
    """The file name of a rendered figure's static SVG in the site."""
    return f"{rendered[:20]}.svg"


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
    """Every figure of one build: the specs parsed once, the heatmaps planned together, one cache. A page whose
    Markdown, models and options are those of a build before is taken whole from the cache's record of it."""

    def __init__(self, settings: plan.Settings, renderer: Renderer, docs_dir: Path | None, log: logging.Logger,
                 enabled: bool = True):
        self.settings, self.renderer, self.docs_dir, self.log, self.enabled = settings, renderer, docs_dir, log, enabled
        self.cache = Cache(settings.cache_dir, warn=log.warning)
        self.outcomes: dict[HeatmapSpec, plan.Outcome] = {}
        self.parsed: dict[str, HeatmapSpec | SpecError] = {}
        self.failures: list[Failure] = []
        self.statics: dict[str, Path | str] = {}  # the static SVG of each figure drawn: name -> its file or content
        self.downloads: dict[str, Path] = {}  # the data downloads of the pages taken from their records
        options = dataclasses.replace(settings, refresh=False, keep_models=0, warm_worker=0)
        context = sha(repr((options, str(docs_dir), renderer.fingerprint, library_versions())))
        self.records = Records(self.cache, docs_dir, context, self._fingerprint)

    def forget(self) -> None:
        """Look at the text files, models and page records afresh (a server's process lives on between builds)."""
        self.parsed.clear()
        self.records.forget()

    def parse(self, body: str) -> HeatmapSpec | SpecError:
        """A block's spec (or its error), parsed once per build."""
        if body not in self.parsed:
            try:
                self.parsed[body] = parse_spec(body, self.docs_dir)
            except SpecError as exc:
                self.parsed[body] = exc
        return self.parsed[body]

    def plan(self, pages: Iterable[Page]) -> None:
        """Plan the heatmaps of every block of these pages at once (each model loads once), but those of the pages
        unchanged since they were drawn."""
        specs, drawn = [], set()
        for page in pages:
            if (drawings := self._recorded(page)) is not None:
                drawn.update(key for drawing in drawings for key in drawing.entries)
                continue
            specs += [side for block in find_blocks(page.markdown)
                      if isinstance(spec := self.parse(block.body), HeatmapSpec) for side in spec.sides()
                      if side not in self.outcomes]
        if self.enabled and (specs or drawn):
            self.outcomes.update(plan.run(specs, self.settings, self.log, self.cache, drawn=len(drawn)))

    def page(self, page: Page, wrap: Callable[[Block, str], str] = lambda block, html: html) -> str:
        """The page's Markdown with each block swapped for `wrap(block, the HTML of its figure)`."""
        blocks = find_blocks(page.markdown)
        if not blocks:
            return page.markdown
        drawings = self._recorded(page)
        if drawings is not None:
            for drawing in drawings if page.url is not None else ():
                for key in drawing.entries:
                    for suffix in (".csv", ".json"):
                        self.downloads[data_path(key) + suffix] = self.cache.exported(key, suffix)
                self.statics[_static_name(drawing.rendered)] = self.cache.rendered_path(drawing.rendered, ".svg")
        else:
            self.plan([page])  # blocks the site's plan did not hold (another plugin's Markdown, a bare Markdown)
            drawings = [self._drawing(block, page, number) for number, block in enumerate(blocks, start=1)]
            if self.enabled:
                self.records.keep(page, drawings)
        by_line = dict(zip((block.line for block in blocks), (drawing.html for drawing in drawings)))
        return replace_blocks(page.markdown, blocks, lambda block: wrap(block, by_line[block.line]))

    def site_files(self) -> Iterator[tuple[str, Path | str]]:
        """The files the figures add to the site (`cache.place` puts them there): the data downloads of every
        entry, made once and kept in the cache, and the static SVG of every figure drawn; each as (path in the
        site, its file in the cache, or its content when the cache cannot keep it)."""
        for key, outcome in {o.key: o for o in self.outcomes.values() if o.error is None}.items():
            for suffix in (".csv", ".json"):
                if data_path(key) + suffix in self.downloads:
                    continue
                content = functools.partial(_export, outcome, suffix)
                source = self.cache.export(key, suffix, content) or content()
                if source is not None:
                    yield data_path(key) + suffix, source
        yield from self.downloads.items()
        for name, source in self.statics.items():
            yield f"{STATIC_DIR}/{name}", source

    def _recorded(self, page: Page) -> list[Drawing] | None:
        """The drawings of an unchanged page, from its record."""
        return self.records.find(page) if self.enabled and not self.settings.refresh else None

    def _fingerprint(self, model: str) -> str | None:
        try:
            return plan.identify(model, self.settings, self.cache.manifest())[1]
        except ModelError:
            return None

    def _drawing(self, block: Block, page: Page, number: int) -> Drawing:
        """The figure of `block`, the `number`th of `page`, or its error box."""
        if not block.terminated:
            return self._error(Failure("unterminated layerheat fence (no closing ``` found)").at(page.path, block.line))
        spec = self.parse(block.body)
        if isinstance(spec, SpecError):
            return self._error(Failure(str(spec)).at(page.path, block.line + (spec.line or 0)))
        if not self.enabled:
            return Drawing(self.renderer.placeholder(spec))
        sides = spec.sides()
        prefixes = [f"in metric '{s.metric}': " for s in sides] if spec.panels else ["", "in 'compare': "]
        outcomes = []
        for side, which in zip(sides, prefixes):
            outcome = self.outcomes.get(side) or plan.run([side], self.settings, self.log, self.cache)[side]
            if outcome.error:
                return self._error(outcome.error.within(which).at(page.path, block.line))
            outcomes.append(outcome)
        urls = [_relative(data_path(o.key), page.url) if page.url is not None else None for o in outcomes]
        statics = _relative(f"{STATIC_DIR}/", page.url) if page.url is not None else None
        key = repr(([o.key for o in outcomes], spec, number, urls, statics, self.renderer.fingerprint))
        key = hashlib.sha256(key.encode()).hexdigest()
        url = _relative(f"{STATIC_DIR}/{_static_name(key)}", page.url) if page.url is not None else None
        html, svg = self.cache.get_rendered(key), self.cache.rendered(key, ".svg")
        if html is None or svg is None:
            heatmaps = []
            for side, outcome in zip(sides, outcomes):
                heatmap = self._heatmap(side, outcome)
                if isinstance(heatmap, Failure):
                    return self._error(heatmap.at(page.path, block.line))
                heatmaps.append(heatmap)
            try:
                html, svg = dataclasses.astuple(self._draw(spec, number, heatmaps, urls, url))
            except Exception as exc:  # one figure that cannot be drawn must not take the site down
                self.log.debug("rendering failed", exc_info=True)
                return self._error(Failure(f"cannot render this heatmap: {type(exc).__name__}: {exc}")
                                   .at(page.path, block.line))
            svg = self.cache.put_rendered(key, svg, ".svg") or svg
            self.cache.put_rendered(key, html)
        if url:
            self.statics[_static_name(key)] = svg
        return Drawing(html, sides, tuple(o.key for o in outcomes), key if isinstance(svg, Path) else None)

    def _error(self, failure: Failure) -> Drawing:
        return Drawing(self.error(failure))

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
