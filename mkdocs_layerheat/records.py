"""The record of a page as a build drew it: its figures' HTML, and what they came from besides its Markdown (the
fingerprints of its models, its text files, its cache entries as they were written). A later build of the same
page, under the same options, code and libraries, takes the figures from the record: it parses no block, computes
no cache key and reads no entry."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import Cache
from .spec import SpecError, read_text_file

if TYPE_CHECKING:
    from .spec import HeatmapSpec


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Page:
    """A page as the figures stage sees it: its Markdown, its path relative to the project (messages name it), and
    its URL in the site (None, as under Zensical: no download links and no static figure)."""

    markdown: str
    path: str
    url: str | None = None


@dataclasses.dataclass(frozen=True)
class Drawing:
    """A block as drawn: its figure's HTML, the heatmaps it shows and their cache keys, and its key among the
    rendered figures (None: an error box, a placeholder, or a figure the cache could not keep)."""

    html: str
    sides: tuple[HeatmapSpec, ...] = ()
    entries: tuple[str, ...] = ()
    rendered: str | None = None


class Records:
    """The records of one build's pages, each read and checked once. `context`: a hash of everything the figures
    depend on besides their pages (the site's options, the code, templates and libraries); `identify(model)`:
    a model's fingerprint now (None: it is not known)."""

    def __init__(self, cache: Cache, docs_dir: Path | None, context: str, identify: Callable[[str], str | None]):
        self.cache, self.docs_dir, self.context, self.identify = cache, docs_dir, context, identify
        self.fingerprints: dict[str, str | None] = {}  # model -> its fingerprint now
        self.checked: dict[tuple[str, str], list[Drawing] | None] = {}  # (record, Markdown) -> its drawings
        self.listings: dict[str, frozenset[str]] = {}  # folder of the cache -> its files

    def forget(self) -> None:
        """Look at the models, the records and the cache afresh (a server's process lives on between builds)."""
        self.fingerprints.clear()
        self.checked.clear()
        self.listings.clear()

    def find(self, page: Page) -> list[Drawing] | None:
        """The drawings of the page's blocks, when a build drew this Markdown under these options, its models and
        text files are unchanged, and the cache holds its entries as they were, its downloads and static
        figures; else None."""
        seen = self._name(page), sha(page.markdown)
        if seen not in self.checked:
            self.checked[seen] = self._check(self.cache.page(seen[0]), seen[1], page.url is not None)
        return self.checked[seen]

    def keep(self, page: Page, drawings: list[Drawing]) -> None:
        """Record a page whose every block became a figure the cache keeps."""
        sides = [side for drawing in drawings for side in drawing.sides]
        record = {"markdown": sha(page.markdown),
                  "models": {side.model: self.fingerprint(side.model) for side in sides},
                  "text_files": {side.text_file: sha(side.text) for side in sides if side.text_file},
                  "figures": [{"entries": {key: self.cache.stamp(key) for key in d.entries}, "rendered": d.rendered}
                              for d in drawings]}
        stamps = [stamp for figure in record["figures"] for stamp in figure["entries"].values()]
        if all(drawing.rendered for drawing in drawings) and None not in [*record["models"].values(), *stamps]:
            self.cache.put_page(self._name(page), record, [drawing.html for drawing in drawings])

    def fingerprint(self, model: str) -> str | None:
        if model not in self.fingerprints:
            self.fingerprints[model] = self.identify(model)
        return self.fingerprints[model]

    def _name(self, page: Page) -> str:
        return sha(repr((self.context, page.path, page.url)))[:32]

    def _check(self, found: tuple[dict, list[str]] | None, digest: str, linked: bool) -> list[Drawing] | None:
        """A record read from the cache, if it is of the Markdown with this `digest` and still holds (`linked`:
        the page links to its downloads and static figures, which must be there too)."""
        if found is None:
            return None
        record, html = found
        try:
            figures = record["figures"]
            if record["markdown"] != digest or len(figures) != len(html):
                return None
            if any(self.fingerprint(model) != known for model, known in record["models"].items()):
                return None
            if any(self._text_file(name) != known for name, known in record["text_files"].items()):
                return None
            if any(self.cache.stamp(key) != stamp for figure in figures for key, stamp in figure["entries"].items()):
                return None  # an entry written since, or damaged: the plan looks at it again
            if linked and not all(self._kept(self.cache.rendered_path(figure["rendered"], ".svg"))
                                  and all(self._kept(self.cache.exported(key, suffix))
                                          for key in figure["entries"] for suffix in (".csv", ".json"))
                                  for figure in figures):
                return None  # its downloads or static figures are gone (`layerheat cache prune`)
            return [Drawing(text, entries=tuple(figure["entries"]), rendered=figure["rendered"])
                    for text, figure in zip(html, figures)]
        except (KeyError, TypeError, AttributeError):  # a record of another version
            return None

    def _text_file(self, name: str) -> str | None:
        try:
            return sha(read_text_file(name, self.docs_dir, None))
        except SpecError:
            return None

    def _kept(self, path: Path) -> bool:
        """Whether the cache holds a file, by one listing of its folder per build (a file written since is not
        seen: a record then misses, which costs only time)."""
        folder, name = os.path.split(path)
        if folder not in self.listings:
            try:
                self.listings[folder] = frozenset(os.listdir(folder))
            except OSError:
                self.listings[folder] = frozenset()
        return name in self.listings[folder]
