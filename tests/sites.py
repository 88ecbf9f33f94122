"""The one site builder of the tests: a small temporary site (pages, model aliases, plugin options, theme) and real
builds of it (`mkdocs build`, or Zensical's and ProperDocs' `build`)."""

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


def make_site(root: Path, pages: dict[str, str], models: dict[str, str | Path], *, site_name: str = "t",
              config: str = "", extensions: tuple[str, ...] = (), plugins: tuple[str, ...] = (), plugin: bool = True,
              extension: bool = False, **options) -> Path:
    """A site whose mkdocs.yml has these model aliases and other layerheat `options` (JSON-able values).

    `config`: more of mkdocs.yml (site_url, theme, nav); `extensions` and `plugins`: the other Markdown extensions
    and plugins, listed before ours. `plugin`: layerheat as the MkDocs plugin (MkDocs, ProperDocs); `extension`:
    as the Markdown extension, with the assets `layerheat assets` writes into docs/ (what Zensical reads).
    """
    (root / "docs").mkdir(parents=True, exist_ok=True)
    for name, text in pages.items():
        (root / "docs" / name).write_text(text, encoding="utf-8")
    aliases = ", ".join(f"{k}: '{v}'" for k, v in models.items())
    ours = f"  - layerheat:\n      models: {{{aliases}}}\n" + "".join(
        f"      {key}: {json.dumps(value)}\n" for key, value in options.items())
    if extension:
        from click.testing import CliRunner

        from mkdocs_layerheat.cli import main

        result = CliRunner().invoke(main, ["assets", str(root / "docs" / "assets" / "layerheat")])
        assert result.exit_code == 0, result.output
        config += result.output.split("\n", 1)[1]  # the lines it says to add to mkdocs.yml

    def section(name: str, others: tuple[str, ...], with_ours: bool) -> str:
        items = "".join(f"  - {other}\n" for other in others) + (ours if with_ours else "")
        return f"{name}:\n{items}" if items else ""
    (root / "mkdocs.yml").write_text(f"site_name: {site_name}\n{config}" + section("markdown_extensions", extensions, extension)
                                     + section("plugins", plugins, plugin), encoding="utf-8")
    return root


LAYERHEAT = str(Path(sys.executable).parent / "layerheat")  # the command line


def command(*args: str, builder: str = "mkdocs") -> list[str]:
    """`BUILDER build ARGS`: MkDocs from this interpreter, or another builder's command (zensical, properdocs)."""
    if builder == "mkdocs":
        return [sys.executable, "-m", "mkdocs", "build", *args]
    return [str(Path(sys.executable).parent / builder), "build", *args]


def run(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A command run in the site's folder, its output captured (`LAYERHEAT, "cache", "info"`)."""
    return subprocess.run(list(args), capture_output=True, text=True, cwd=root, env={**ENV, **(env or {})})


def mkdocs(root: Path, *args: str, env: dict | None = None, builder: str = "mkdocs") -> subprocess.CompletedProcess:
    """`mkdocs build` of the site (or `BUILDER build`)."""
    return run(root, *command(*args, builder=builder), env=env)


def popen(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(command(*args), cwd=root, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tree(site_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(site_dir)): p.read_bytes() for p in sorted(site_dir.rglob("*")) if p.is_file()}
