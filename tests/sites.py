"""The one site builder of the tests: a small temporary site (pages, model aliases, plugin options) and real
`mkdocs build` runs of it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

GOOD = """\
```layerheat
model: tiny
text: 'The quick dog looks back at the lazy fox.'
metric: attention
```
"""

ENV = {"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "SOURCE_DATE_EPOCH": "1700000000"}  # MkDocs stamps each page with the build date otherwise


def make_site(root: Path, pages: dict[str, str], models: dict[str, str | Path], **options) -> Path:
    """A site whose mkdocs.yml has these model aliases and other plugin `options` (JSON-able values)."""
    (root / "docs").mkdir(parents=True, exist_ok=True)
    for name, text in pages.items():
        (root / "docs" / name).write_text(text)
    aliases = ", ".join(f"{k}: '{v}'" for k, v in models.items())
    more = "".join(f"      {key}: {json.dumps(value)}\n" for key, value in options.items())
    (root / "mkdocs.yml").write_text(f"site_name: t\nplugins:\n  - layerheat:\n      models: {{{aliases}}}\n{more}")
    return root


LAYERHEAT = str(Path(sys.executable).parent / "layerheat")  # the command line


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mkdocs", "build", *args]


def run(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A command run in the site's folder, its output captured (`LAYERHEAT, "cache", "info"`)."""
    return subprocess.run(list(args), capture_output=True, text=True, cwd=root, env={**ENV, **(env or {})})


def mkdocs(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`mkdocs build` of the site."""
    return run(root, *command(*args), env=env)


def popen(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(command(*args), cwd=root, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tree(site_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(site_dir)): p.read_bytes() for p in sorted(site_dir.rglob("*")) if p.is_file()}
