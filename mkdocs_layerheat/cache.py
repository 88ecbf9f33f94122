"""Content-addressed storage of heatmaps: one `.npz` per entry (values + JSON metadata), written atomically."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import fields
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy and the Heatmap type load only when an entry is read or written
    from .heatmap import Heatmap

FORMAT = 1
STALE_TEMP_SECONDS = 600  # a temporary file this old was left by a killed write: no write lasts that long


def installed_version(package: str) -> str:
    """A distribution's version ("none" if it is not installed), read from the head of its metadata:
    `importlib.metadata.version` parses all of it, long description included (milliseconds for torch)."""
    try:
        head = (distribution(package).read_text("METADATA") or "").split("\n\n", 1)[0]
    except PackageNotFoundError:
        return "none"
    found = re.search(r"^Version:[ \t]*(\S+)", head, re.M)
    return found.group(1) if found else version(package)


@cache
def library_versions() -> dict[str, str]:
    return {name: installed_version(name) for name in ("mkdocs-layerheat", "transformers", "torch")}


@cache
def source_hash(*paths: Path) -> str:
    """A hash of source files, so that a change of the code (not only of its version) invalidates entries."""
    digest = hashlib.sha256()
    for path in paths:
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file() and file.suffix in (".py", ".html", ".md", ".js", ".css", ".jinja"):
                digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


_PACKAGE = Path(__file__).parent
NUMERIC_SOURCES = [_PACKAGE / name for name in ("catalog.py", "reducers.py", "texts.py", "collector.py", "attention.py",
                                                 "extract.py", "models.py", "interventions.py")]  # what computes values


def cache_key(model_fingerprint: str, text: str, metric: str, options: dict[str, Any] | None = None) -> str:
    """Everything that determines the raw values (normalisation and styling are applied later).

    `options`: the spec's options that change the numbers (heads, layers, chat, generate, dtype...), only
    those that differ from their defaults, so that a block without options keeps its key.
    """
    material = {
        "format": FORMAT,
        "model": model_fingerprint,
        "text": text,
        "metric": metric,
        "code": source_hash(*NUMERIC_SOURCES),
        **library_versions(),
    }
    if options:
        material["options"] = options
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


_log = logging.getLogger("mkdocs.plugins.layerheat")


class Cache:
    """`warn` is told, once per entry, of an entry found unusable (it is then a miss, computed again)."""

    def __init__(self, directory: str | Path, warn: Callable[[str], None] = _log.warning):
        self.directory = Path(directory)
        self._rendered, self._exports = self.directory / "rendered", self.directory / "exports"
        self.warn = warn
        self._unusable: set[Path] = set()  # entries already reported
        self.writable = True  # False once a write failed: later puts are skipped

    def _unusable_entry(self, path: Path, why: str) -> None:
        if path not in self._unusable:
            self._unusable.add(path)
            self.warn(f"cache entry {path.name} is unusable ({why}); recomputing")

    def _file(self, key: str) -> str:
        return os.path.join(self.directory, key[:2], f"{key}.npz")

    def _path(self, key: str) -> Path:
        return Path(self._file(key))

    def lock(self):
        """A file lock over the cache (imported only when something is computed)."""
        from filelock import FileLock

        self.directory.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.directory / ".lock"))

    def manifest(self) -> dict[str, str]:
        """Model reference -> the fingerprint it had when its entries were computed."""
        try:
            return dict(json.loads((self.directory / "manifest.json").read_text(encoding="utf-8"))["models"])
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def save_manifest(self, models: dict[str, str]) -> None:
        try:
            _write_atomic(self.directory / "manifest.json", json.dumps({"models": models}, indent=1).encode())
        except OSError:
            pass  # only a convenience for caches handed to machines without the model

    def converted_dir(self, model_fingerprint: str) -> Path:
        """Where a .gguf model with this fingerprint is kept dequantised."""
        return self.directory / "converted" / hashlib.sha256(model_fingerprint.encode()).hexdigest()[:16]

    def sweep(self, older_than: float = STALE_TEMP_SECONDS) -> int:
        """Remove the temporary files of writes that were killed; younger ones may be another build's, in progress."""
        cutoff, removed = time.time() - older_than, 0
        for pattern in ("*.tmp", "??/*.tmp", "rendered/*.tmp", "exports/*.tmp", "pages/*.tmp"):
            for path in self.directory.glob(pattern):
                try:
                    if path.is_file() and path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except OSError:
                    pass  # gone meanwhile, or not ours to remove
        return removed

    def entries(self) -> list[Path]:
        return sorted(self.directory.glob("??/*.npz"))

    def merge(self, other: str | Path) -> tuple[int, int, list[str]]:
        """Fold the entries and the manifest of another cache (a CI shard's) into this one, under this cache's
        lock: (entries added, entries already here, refusals). An entry is refused when it does not load as one
        (truncated, another format) or when the key it holds is not its file's name, i.e. it is not where its
        content says it belongs; a model fingerprint that differs from this cache's for one reference is kept as
        this cache's and reported."""
        reasons: list[str] = []
        source = Cache(other, warn=reasons.append)
        added, present, refused = 0, 0, []
        with self.lock():
            for path in source.entries():
                key = path.stem
                if source.get(key) is None:
                    refused.append(f"{path}: {reasons[-1] if reasons else 'unreadable'}")
                    continue
                if self.has(key):
                    present += 1
                    continue
                _write_atomic(self._path(key), path.read_bytes())
                added += 1
            ours, theirs = self.manifest(), source.manifest()
            for model, fingerprint in theirs.items():
                if ours.setdefault(model, fingerprint) != fingerprint:
                    refused.append(f"{source.directory / 'manifest.json'}: model {model} has another fingerprint here")
            if theirs:
                self.save_manifest(ours)
        return added, present, refused

    def exported(self, key: str, suffix: str) -> Path:
        """Where the file `export` makes from an entry is kept."""
        return self._exports / f"{key[:16]}{suffix}"

    def export(self, key: str, suffix: str, make) -> Path | None:
        """A file made once by `make() -> str | None` from an entry (the CSV/JSON downloads), or None."""
        path = self.exported(key, suffix)
        if _filled(path):
            return path
        content = make()
        try:
            if content is not None:
                return _write_atomic(path, content.encode("utf-8"), 0o444, durable=False)
        except OSError:
            pass  # an unwritable cache: the caller makes the file in memory
        return None

    def rendered_path(self, key: str, suffix: str = ".html") -> Path:
        """Where a rendered figure (its HTML, or its `.svg`) is kept."""
        return self._rendered / f"{key}{suffix}"

    def get_rendered(self, key: str, suffix: str = ".html") -> str | None:
        """A figure rendered earlier for the same values and rendering options (its HTML, or its `.svg`)."""
        try:
            return self.rendered_path(key, suffix).read_text(encoding="utf-8") or None
        except (OSError, UnicodeDecodeError):
            return None

    def put_rendered(self, key: str, text: str, suffix: str = ".html") -> Path | None:
        """Keep a rendered figure (read-only: a site file linked to it cannot be written through); its path."""
        try:
            return _write_atomic(self.rendered_path(key, suffix), text.encode("utf-8"), 0o444, durable=False)
        except OSError:
            return None  # rendering again next time is the only cost

    def rendered(self, key: str, suffix: str) -> Path | None:
        """The path of a rendered file (the static SVG of a figure), if it is kept."""
        path = self.rendered_path(key, suffix)
        return path if _filled(path) else None

    def page(self, name: str) -> tuple[dict, list[str]] | None:
        """A page's record and the HTML of its figures, as a build drew them (`figures.Figures` writes and checks
        the record), or None. Kept as a line of JSON, then the figures' HTML one after the other (read as one
        string and cut by their lengths: JSON would take longer to read the HTML than the page takes to build)."""
        try:
            head, _, body = (self.directory / "pages" / name).read_bytes().partition(b"\n")
            record, text = json.loads(head), body.decode("utf-8")
            ends = list(itertools.accumulate(record["lengths"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not ends or ends[-1] != len(text):
            return None
        return record, [text[start:end] for start, end in zip([0, *ends], ends)]

    def put_page(self, name: str, record: dict, html: list[str]) -> None:
        head = json.dumps({**record, "lengths": [len(h) for h in html]}, ensure_ascii=False)
        try:
            _write_atomic(self.directory / "pages" / name, (head + "\n" + "".join(html)).encode("utf-8"), durable=False)
        except OSError:
            pass  # drawing the page's figures again next time is the only cost

    def stamp(self, key: str) -> list[int] | None:
        """An entry's size and modification time (None: there is none): while they are the same, nothing wrote it."""
        try:
            stat = os.stat(self._file(key))  # (a string: a Path would take longer to make than the call)
        except OSError:
            return None
        return [stat.st_size, stat.st_mtime_ns]

    def has(self, key: str) -> bool:
        """Whether an entry looks complete (a whole zip archive), without loading it or numpy."""
        path = self._path(key)
        if not path.is_file():
            return False
        if not zipfile.is_zipfile(path):
            self._unusable_entry(path, "truncated or not an entry")
            return False
        return True

    def get(self, key: str) -> Heatmap | None:
        import numpy as np

        from .heatmap import Heatmap

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
            self._unusable_entry(path, str(exc))
            return None

    def put(self, key: str, heatmap: Heatmap) -> None:
        import numpy as np

        if not self.writable:
            return
        path = self._path(key)
        meta: dict[str, Any] = {"format": FORMAT, "key": key}
        meta.update((f.name, getattr(heatmap, f.name)) for f in fields(heatmap) if f.name != "values")
        encoded = np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, values=heatmap.values, meta=encoded)
        _write_atomic(path, buffer.getvalue())
        self._unusable.discard(path)  # repaired: a later fault is news again


def _write_atomic(path: Path, data: bytes, mode: int | None = None, durable: bool = True) -> Path:
    """Write to a temporary file in the same folder, then rename: readers never see a partial file. `durable`:
    on disk before the rename (entries, the manifest). What is made again from them (rendered figures, downloads,
    page records) is not flushed, a few hundred syncs less for a cold build: after a power cut, such a file may
    be empty, and an empty one counts as missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
        return path
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _filled(path: Path) -> bool:
    """Whether a file is there with something in it."""
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def place(source: Path | str, target: Path) -> None:
    """A file of the figures into the site: a cache file hard-linked when both lie on one file system (one
    directory entry instead of a copy: a site of hundreds of figures builds warm in a fraction of the time; the
    cache file is read-only, so the site's copy cannot be written through), else copied; text written."""
    if not isinstance(source, str):
        try:
            return os.link(source, target)  # most often: a new file in a folder made already
        except OSError:
            pass  # the folder is not there yet, a file is, or the site lies on another file system
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)  # never written through: it may be a link to a cache file
    if isinstance(source, str):
        target.write_text(source, encoding="utf-8")
        return
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(source, target)
