"""MkDocs glue: plan every heatmap before pages render, swap each block for its figure, ship BokehJS once."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from mkdocs.config import base
from mkdocs.config import config_options as c
from mkdocs.plugins import BasePlugin, get_plugin_logger
from mkdocs.structure.files import File, Files

from . import plan, worker
from .cache import place
from .catalog import DTYPES
from .directives import Block
from .figures import ASSET_DIR, Figures, Page, settings
from .render import Renderer, assets

log = get_plugin_logger("layerheat")


class LayerheatConfig(base.Config):
    models = c.Type(dict, default={})
    """Aliases: name -> local directory, .gguf file or hub id `owner/name[@revision]`."""
    model_dirs = c.ListOfItems(c.Type(str), default=[])
    """Folders outside the project (relative to mkdocs.yml) whose models pages may name by path."""
    cache_dir = c.Type(str, default=".cache/layerheat")
    """Where computed heatmaps are kept, relative to mkdocs.yml."""
    device = c.Type(str, default="cpu")
    """Torch device for extraction (`auto`, `cpu`, `cuda`, `cuda:1`, `mps`)."""
    dtype = c.Choice(DTYPES, default="float32")
    """Weights and activations: `float32` (exact, the same numbers everywhere), `bfloat16`/`float16`, or `auto`."""
    device_map = c.Optional(c.Choice(("auto",)))
    """`auto`: spread a model larger than one device over all of them (accelerate)."""
    max_memory = c.Type(dict, default={})
    """With `device_map: auto`, the most each device may hold (`{0: 70GiB, 1: 70GiB, cpu: 200GiB}`); the rest
    goes to `offload_folder`."""
    offload_folder = c.Optional(c.Type(str))
    """With `device_map: auto`, the folder (relative to mkdocs.yml) for the weights no device can hold."""
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
    """A folder of Jinja2 templates overriding the plugin's own (`heatmap.html`, `summary.md`, `summary.html`,
    `compare.md`, `compare.html`, `panels.md`, `panels.html`, `sides.html`, `error.html`, `placeholder.html`)."""


class LayerheatPlugin(BasePlugin[LayerheatConfig]):
    serving = False

    def on_startup(self, *, command, dirty) -> None:
        self.serving = command == "serve"  # models then stay loaded between rebuilds

    def on_shutdown(self) -> None:
        """`mkdocs serve` ends: its warm worker goes with it (after a build it stays, for the next build)."""
        stage = getattr(self, "stage", None)
        if self.serving and stage is not None and stage.settings.warm_worker > 0:
            worker.stop(stage.settings.cache_dir)

    def on_config(self, config):
        self.project_dir = Path(config.config_file_path or ".").resolve().parent
        self.stage = Figures(self.settings(config), Renderer(self.config.templates), Path(config.docs_dir), log,
                             self.config.enabled)
        self.figures: dict[str, str] = {}  # placeholder -> HTML, filled per page
        self.nonce = uuid.uuid4().hex[:12]
        if self.config.enabled:  # (a site also built with Zensical lists them already: see builders.md)
            listed = {str(x) for x in config.extra_javascript}
            config.extra_javascript[:0] = [name for name in (f"{ASSET_DIR}/bokeh.min.js", f"{ASSET_DIR}/layerheat.js")
                                           if name not in listed]
            if f"{ASSET_DIR}/layerheat.css" not in config.extra_css:
                config.extra_css.append(f"{ASSET_DIR}/layerheat.css")
        return config

    def settings(self, config) -> plan.Settings:
        """What the plan needs from mkdocs.yml (also used by the `layerheat` command)."""
        return settings(self.config, Path(config.config_file_path or ".").resolve().parent, self.serving)

    def on_files(self, files: Files, config) -> Files:
        if not self.config.enabled:
            return files
        for name, content in assets().items():  # the installed files win over a copy from `layerheat assets`
            if files.get_file_from_path(f"{ASSET_DIR}/{name}") is not None:
                files.remove(files.get_file_from_path(f"{ASSET_DIR}/{name}"))
            files.append(File.generated(config, f"{ASSET_DIR}/{name}", content=content))
        self.stage.plan(self._page(file, file.content_string) for file in files.documentation_pages())
        return files

    def on_page_markdown(self, markdown: str, page, config, files) -> str:
        def placeholder(block: Block, html: str) -> str:  # the HTML goes in after Markdown (on_page_content)
            name = f"LAYERHEAT{self.nonce}X{len(self.figures)}X"
            self.figures[name] = html
            return name

        return self.stage.page(self._page(page.file, markdown), placeholder)

    def _page(self, file: File, markdown: str) -> Page:
        """A page for the stage: named by its path in the project, linking from its file's URL (the home page's
        is `./` where the page's is empty: the same links, and the same record of its figures)."""
        return Page(markdown, os.path.relpath(file.abs_src_path or file.src_uri, self.project_dir), file.url)

    def on_page_content(self, html: str, page, config, files) -> str:
        if f"LAYERHEAT{self.nonce}" not in html:
            return html
        token = rf"LAYERHEAT{self.nonce}X\d+X"
        pattern = re.compile(rf"<p>\s*({token})\s*</p>|({token})")
        return pattern.sub(lambda m: self.figures.pop(m.group(1) or m.group(2), m.group(0)), html)

    def on_post_build(self, config) -> None:
        """The figures' data downloads and static SVGs, linked from the cache into the site."""
        for path, source in self.stage.site_files():
            place(source, Path(config.site_dir) / path)
