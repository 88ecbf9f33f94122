"""MkDocs glue: plan every heatmap before pages render, swap each block for its figure, ship BokehJS once."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import re
import uuid
from pathlib import Path

from mkdocs.config import base
from mkdocs.config import config_options as c
from mkdocs.plugins import BasePlugin, get_plugin_logger
from mkdocs.structure.files import File, Files
from mkdocs.utils import get_relative_url

from . import plan
from .cache import Cache
from .directives import Block, find_blocks, replace_blocks
from .render import ASSETS, Renderer
from .worker import idle_seconds as worker_idle_seconds
from .spec import HeatmapSpec, SpecError, parse_spec

log = get_plugin_logger("layerheat")
ASSET_DIR = "assets/layerheat"


class LayerheatConfig(base.Config):
    models = c.Type(dict, default={})
    """Aliases: name -> local directory, .gguf file or hub id `owner/name[@revision]`."""
    model_dirs = c.ListOfItems(c.Type(str), default=[])
    """Folders outside the project (relative to mkdocs.yml) whose models pages may name by path."""
    cache_dir = c.Type(str, default=".cache/layerheat")
    """Where computed heatmaps are kept, relative to mkdocs.yml."""
    device = c.Type(str, default="cpu")
    """Torch device for extraction (`auto`, `cpu`, `cuda`, `cuda:1`, `mps`)."""
    dtype = c.Choice(("auto", "float32", "bfloat16", "float16"), default="float32")
    """Weights and activations: `float32` (exact, the same numbers everywhere), `bfloat16`/`float16`, or `auto`."""
    device_map = c.Optional(c.Choice(("auto",)))
    """`auto`: spread a model larger than one device over all of them (accelerate)."""
    trust_remote_code = c.ListOfItems(c.Type(str), default=[])
    """Model aliases allowed to run code from their repository (never settable from a page)."""
    enabled = c.Type(bool, default=True)
    """When false, blocks render as a placeholder and no model is run."""
    refresh = c.Type(bool, default=False)
    """Recompute every heatmap even when cached (also: environment variable LAYERHEAT_REFRESH=1)."""
    keep_models = c.Type(int, default=1)
    """Under `mkdocs serve`, how many loaded models stay in memory between rebuilds."""
    warm_worker = c.Type(int, default=0)
    """Seconds a local worker process keeps the model loaded after computing for a build (0: no worker); a
    later `mkdocs build` hands it its misses instead of loading the model again (also: LAYERHEAT_WORKER)."""
    templates = c.Optional(c.Dir(exists=True))
    """A folder of Jinja2 templates overriding the plugin's own (`heatmap.html`, `summary.md`, `summary.html`, `compare.md`, `compare.html`, `panels.md`, `panels.html`, `sides.html`, `error.html`, `placeholder.html`)."""


def _export(outcome: plan.Outcome, suffix: str) -> str | None:
    """The raw matrix of a figure as CSV or JSON, for its download links (None if it cannot be read)."""
    from .render import data_csv

    heatmap = outcome.heatmap
    if heatmap is None:
        return None
    return data_csv(heatmap) if suffix == ".csv" else heatmap.to_json()


def _data_uri(key: str) -> str:
    return f"{ASSET_DIR}/data/{key[:16]}"


def _bokeh_js() -> Path:
    bokeh = Path(importlib.util.find_spec("bokeh").origin).parent  # located, not imported: a warm build skips Bokeh
    return bokeh / "server" / "static" / "js" / "bokeh.min.js"


class LayerheatPlugin(BasePlugin[LayerheatConfig]):
    serving = False

    def on_startup(self, *, command, dirty) -> None:
        self.serving = command == "serve"  # models then stay loaded between rebuilds

    def on_config(self, config):
        self.project_dir = Path(config.config_file_path or ".").resolve().parent
        self.renderer = Renderer(self.config.templates)
        self.outcomes: dict[HeatmapSpec, plan.Outcome] = {}
        self.figures: dict[str, str] = {}  # placeholder -> HTML, filled per page
        self.parsed: dict[str, HeatmapSpec | SpecError] = {}
        self.plan_settings = self.settings(config)
        self.nonce = uuid.uuid4().hex[:12]
        if self.config.enabled:
            config.extra_javascript[:0] = [f"{ASSET_DIR}/bokeh.min.js", f"{ASSET_DIR}/layerheat.js"]
            config.extra_css.append(f"{ASSET_DIR}/layerheat.css")
        return config

    def settings(self, config) -> plan.Settings:
        """What the plan needs from mkdocs.yml (also used by the `layerheat` command)."""
        project_dir = Path(config.config_file_path or ".").resolve().parent
        return plan.Settings(
            aliases={str(k): str(v) for k, v in self.config.models.items()},
            base_dir=project_dir,
            model_dirs=tuple(project_dir / folder for folder in self.config.model_dirs),
            cache_dir=project_dir / self.config.cache_dir,
            device=self.config.device,
            dtype=self.config.dtype,
            device_map=self.config.device_map,
            trust_remote_code=tuple(self.config.trust_remote_code),
            refresh=self.config.refresh or os.environ.get("LAYERHEAT_REFRESH", "") not in ("", "0"),
            keep_models=self.config.keep_models if self.serving else 0,
            warm_worker=worker_idle_seconds(self.config.warm_worker),
        )

    def on_files(self, files: Files, config) -> Files:
        if not self.config.enabled:
            return files
        for name, source in (("bokeh.min.js", _bokeh_js()), ("layerheat.js", ASSETS / "layerheat.js"),
                             ("layerheat.css", ASSETS / "layerheat.css")):
            files.append(File.generated(config, f"{ASSET_DIR}/{name}", abs_src_path=str(source)))
        blocks = [block for file in files.documentation_pages() for block in find_blocks(file.content_string)]
        specs = [side for block in blocks if isinstance(spec := self._parse(block.body, config), HeatmapSpec)
                 for side in spec.sides()]
        self.outcomes = plan.run(specs, self.plan_settings, log)
        store = Cache(self.plan_settings.cache_dir)
        exported = {o.key: o for o in self.outcomes.values() if o.error is None}
        for key, outcome in exported.items():  # the "data" links of the figures, made once per entry
            for suffix in (".csv", ".json"):
                content = functools.partial(_export, outcome, suffix)
                path = store.export(key, suffix, content)
                source = {"abs_src_path": str(path)} if path else {"content": content()}
                if path or source["content"] is not None:
                    files.append(File.generated(config, _data_uri(key) + suffix, **source))
        return files

    def _parse(self, body: str, config) -> HeatmapSpec | SpecError:
        """A block's spec (or its error), parsed once per build although both on_files and the page need it."""
        if body not in self.parsed:
            try:
                self.parsed[body] = parse_spec(body, config.docs_dir)
            except SpecError as exc:
                self.parsed[body] = exc
        return self.parsed[body]

    def on_page_markdown(self, markdown: str, page, config, files) -> str:
        blocks = find_blocks(markdown)
        if not blocks:
            return markdown
        page_path = os.path.relpath(page.file.abs_src_path or page.file.src_uri, self.project_dir)
        numbers = {block.line: n for n, block in enumerate(blocks, start=1)}

        def figure(block: Block) -> str:
            placeholder = f"LAYERHEAT{self.nonce}X{len(self.figures)}X"
            self.figures[placeholder] = self._figure_html(block, page_path, numbers[block.line], page, config)
            return placeholder

        return replace_blocks(markdown, blocks, figure)

    def _figure_html(self, block: Block, page_path: str, number: int, page, config) -> str:
        where = f"{page_path}:{block.line}"
        if not block.terminated:
            return self._error(where, "unterminated layerheat fence (no closing ``` found)")
        spec = self._parse(block.body, config)
        if isinstance(spec, SpecError):
            return self._error(f"{page_path}:{block.line + (spec.line or 0)}", str(spec))
        if not self.config.enabled:
            return self.renderer.placeholder(spec)
        outcomes = []
        prefixes = [f"in metric '{side.metric}': " for side in spec.sides()] if spec.panels else ["", "in 'compare': "]
        for side, which in zip(spec.sides(), prefixes):
            outcome = self.outcomes.get(side) or plan.run([side], self.plan_settings, log)[side]
            if outcome.error:
                return self._error(where, which + outcome.error)
            outcomes.append(outcome)
        cache = Cache(self.plan_settings.cache_dir)
        data_urls = [get_relative_url(_data_uri(outcome.key), page.url) for outcome in outcomes]
        key = repr(([o.key for o in outcomes], spec, number, data_urls, self.renderer.fingerprint))
        key = hashlib.sha256(key.encode()).hexdigest()
        html = cache.get_rendered(key)
        if html is None:
            heatmaps = []
            for side, outcome in zip(spec.sides(), outcomes):
                heatmap = self._heatmap(side, outcome)
                if isinstance(heatmap, str):
                    return self._error(where, heatmap)
                heatmaps.append(heatmap)
            try:
                html = self._draw(spec, number, heatmaps, data_urls)
            except Exception as exc:  # one figure that cannot be drawn must not take the site down
                log.debug("rendering failed", exc_info=True)
                return self._error(where, f"cannot render this heatmap: {type(exc).__name__}: {exc}")
            cache.put_rendered(key, html)
        return html

    def _heatmap(self, spec: HeatmapSpec, outcome: plan.Outcome):
        """The values of an outcome; an entry found unusable when read is reported and computed again."""
        if outcome.heatmap is not None:
            return outcome.heatmap
        for problem in outcome.cache.problems:
            log.warning(problem)
        outcome.cache.problems.clear()
        outcome = plan.run([spec], dataclasses.replace(self.plan_settings, refresh=True), log)[spec]
        return outcome.error or outcome.heatmap

    def _draw(self, spec: HeatmapSpec, number: int, heatmaps: list, data_urls: list[str]) -> str:
        """The figure's HTML: one heatmap, the panels of several metrics, or the two of a `compare:` block on one
        scale with their difference."""
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
                return self.renderer.panels(number, sides, spec)
            heatmap, values, label, findings, url = sides[0]
            return self.renderer.figure(number, heatmap, values, label, spec, findings, data_url=url)
        a, b = heatmaps
        values = shared_scale(a, b, spec.normalize)
        sides = [(h, v, lab, analyze(h, v, lab), url) for h, v, lab, url in zip(heatmaps, values, labels, data_urls)]
        diff = difference(a, b, *values)
        return self.renderer.comparison(number, sides, diff, side_names(*spec.sides()), spec)

    def _error(self, where: str, message: str) -> str:
        log.warning(f"{where}: {message}")
        return self.renderer.error(where, message)

    def on_page_content(self, html: str, page, config, files) -> str:
        if f"LAYERHEAT{self.nonce}" not in html:
            return html
        token = rf"LAYERHEAT{self.nonce}X\d+X"
        pattern = re.compile(rf"<p>\s*({token})\s*</p>|({token})")
        return pattern.sub(lambda m: self.figures.pop(m.group(1) or m.group(2), m.group(0)), html)
