"""The core as a Python-Markdown extension (entry point `layerheat` in `markdown.extensions`): any builder that
runs Python-Markdown (Zensical, MkDocs, ProperDocs, a bare `markdown.Markdown`) turns ```layerheat blocks into
figures. The MkDocs plugin adds what only a plugin can do; under Zensical, which makes a new `Markdown` per
page, the stage of a site is kept for the whole process, and on its first block every page of `docs_dir` is
planned at once, so that each model still loads once per build.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from markdown import Extension
from markdown.preprocessors import Preprocessor

from .directives import find_blocks
from .figures import ASSET_DIR, Figures, Page, settings
from .render import Renderer, assets

_STAGES: dict[str, tuple[Figures, dict]] = {}  # one stage per site (project folder and options), per process


class StrictError(Exception):
    """`strict: true`: a block of the site has no figure (raised once every block was tried)."""


class _Prefixed(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"layerheat: {msg}", kwargs


def _logger() -> logging.LoggerAdapter:
    logger = logging.getLogger("mkdocs.plugins.layerheat")  # counted by MkDocs' --strict when MkDocs runs us
    if not logger.hasHandlers():  # Zensical, a bare Markdown: nobody configured logging, say it on stderr
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return _Prefixed(logger, {})


def _zensical() -> dict | None:
    """The configuration Zensical loaded (its folder is `root_dir`), when Zensical is building."""
    try:
        from zensical.config import get_config
    except ImportError:
        return None
    try:
        return get_config()
    except Exception:  # noqa: BLE001 (not built by Zensical: its config was never loaded)
        return None


class LayerheatExtension(Extension):
    def __init__(self, **kwargs):
        self.config = {
            "models": [{}, "Aliases: name -> local directory, .gguf file or hub id `owner/name[@revision]`."],
            "model_dirs": [[], "Folders outside the project whose models pages may name by path."],
            "cache_dir": [".layerheat/cache", "Where computed heatmaps are kept, relative to the config file (not "
                                              "under .cache/, which `zensical build --clean` deletes)."],
            "device": ["cpu", "Torch device for extraction (`auto`, `cpu`, `cuda`, `cuda:1`, `mps`)."],
            "dtype": ["float32", "`float32`, `bfloat16`, `float16` or `auto`."],
            "device_map": ["", "`auto`: spread a model larger than one device over all of them (accelerate)."],
            "max_memory": [{}, "With device_map: auto, the most each device may hold ({0: 70GiB, cpu: 200GiB})."],
            "offload_folder": ["", "With device_map: auto, the folder for the weights no device can hold."],
            "trust_remote_code": [[], "Model aliases allowed to run code from their repository."],
            "enabled": [True, "When false, blocks render as a placeholder and no model is run."],
            "refresh": [False, "Recompute every heatmap even when cached (also: LAYERHEAT_REFRESH=1)."],
            "templates": ["", "A folder of Jinja2 templates overriding the package's own."],
            "strict": [False, "Fail the build, after every block was tried, if one has no figure (also: "
                              "LAYERHEAT_STRICT=1)."],
            "base_dir": ["", "The folder relative paths resolve against (default: the folder of Zensical's config "
                             "file, else the working directory)."],
            "page": ["", "The page's name in messages, when the builder does not tell it (a bare Markdown)."],
        }
        super().__init__(**kwargs)

    def extendMarkdown(self, md) -> None:
        md.registerExtension(self)
        # after whitespace is normalised (30), before any fenced-code preprocessor (25) sees the fence
        md.preprocessors.register(LayerheatPreprocessor(md, self), "layerheat", 28)


def makeExtension(**kwargs) -> LayerheatExtension:
    return LayerheatExtension(**kwargs)


class LayerheatPreprocessor(Preprocessor):
    def __init__(self, md, extension: LayerheatExtension):
        super().__init__(md)
        self.options = extension.getConfigs()

    def run(self, lines: list[str]) -> list[str]:
        text = "\n".join(lines)
        blocks = find_blocks(text)
        if not blocks:
            return lines
        stage, site = self._stage()
        stage.forget()  # `zensical serve` keeps the process: a `text_file` or a model may have changed since
        out = stage.page(Page(text, self._page(site)),
                         lambda block, html: "\n" + block.indent + self.md.htmlStash.store(html) + "\n")
        if site["strict"] and stage.failures:
            _fail(stage, site)
        return out.split("\n")

    def _stage(self) -> tuple[Figures, dict]:
        """The site's stage, made (and, under Zensical, every page of `docs_dir` planned) on its first block."""
        zensical = _zensical()
        base = Path(self.options["base_dir"] or (zensical or {}).get("root_dir") or os.getcwd()).resolve()
        key = hashlib.sha256(repr((str(base), sorted(self.options.items(), key=str))).encode()).hexdigest()
        if key in _STAGES:
            return _STAGES[key]
        docs = Path((zensical or {}).get("docs_dir") or base / "docs")
        docs = docs if docs.is_absolute() else base / docs
        options = SimpleNamespace(**{**self.options, "device_map": self.options["device_map"] or None,
                                     "offload_folder": self.options["offload_folder"] or None,
                                     "keep_models": 0, "warm_worker": 0})
        templates = self.options["templates"]
        stage = Figures(settings(options, base), Renderer(base / templates if templates else None), docs,
                        _logger(), bool(self.options["enabled"]))
        site = {"base": base, "docs": docs, "zensical": zensical is not None,
                "strict": bool(self.options["strict"]) or os.environ.get("LAYERHEAT_STRICT", "") not in ("", "0")}
        _STAGES[key] = stage, site
        if zensical is not None and docs.is_dir():
            pages = {os.path.relpath(p, base): p.read_text(encoding="utf-8", errors="replace")
                     for p in sorted(docs.rglob("*.md"))}
            stage.plan(Page(markdown, name) for name, markdown in pages.items())
            if site["strict"]:  # try every block of the site now: the build fails below, on the first page
                for name, markdown in pages.items():
                    stage.page(Page(markdown, name))
            _check_assets(docs, stage.log)
        return stage, site

    def _page(self, site: dict) -> str:
        """The page's path relative to the project folder, as messages name it: from Zensical's rendering
        context when it is there, else the `page` option."""
        for processor in self.md.preprocessors:
            page = getattr(processor, "page", None)
            if getattr(processor, "name", "") == "rendering_context" and getattr(page, "path", None):
                return os.path.relpath(site["docs"] / page.path, site["base"])
        return self.options["page"] or "(page)"


def _fail(stage: Figures, site: dict) -> None:
    """`strict`: stop the build on its first bad block. Under Zensical, which would wrap an exception in its
    own traceback, with one line on stderr and exit status 1 (every cache write is complete by then)."""
    n = len(stage.failures)
    message = f"layerheat: {stage.failures[0]} ({n} block{'s' if n > 1 else ''} without a figure, strict mode)"
    if not site["zensical"]:
        raise StrictError(message)
    sys.stdout.flush()
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(1)


def _check_assets(docs: Path, log) -> None:
    """Warn once when the site does not ship BokehJS and the loader (`layerheat assets`), or ships stale ones."""
    target = docs / ASSET_DIR
    for name, content in assets().items():
        copy = target / name
        if not copy.is_file():
            log.warning(f"{os.path.relpath(copy)} is missing: run `layerheat assets {os.path.relpath(target)}` and add "
                        f"its files to extra_javascript and extra_css (see the Zensical page of the docs)")
            return
        if copy.read_bytes() != content:
            log.warning(f"{os.path.relpath(copy)} is out of date (another version of Bokeh or of layerheat): run "
                        f"`layerheat assets {os.path.relpath(target)}` again")
            return
