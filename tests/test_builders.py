"""One core for every MkDocs-style builder: the same site built with Zensical (the Markdown extension),
ProperDocs (the plugin) and a bare `markdown.Markdown`, each checked for its figures, summaries, a bad block's
`PAGE:LINE` line and BokehJS served from the site."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from sites import make_site, mkdocs

from mkdocs_layerheat.cli import main
from mkdocs_layerheat.extension import StrictError

PAGE = """# Index

Some text.

```layerheat
model: tiny
text: 'The fox looks back at the dog.'
metric: attention
title: Where the tiny model looks
```

!!! note "Inside an admonition"

    ```layerheat
    model: tiny
    text: 'Hidden states grow.'
    metric: [hidden-norm, update]
    ```

```layerheat
model: tiny
text: 'no metric like this'
metric: atention
```
"""
SECOND = "# Second\n\n```layerheat\nmodel: tiny\ntext: 'A second page.'\nmetric: update\n```\n"


def site(root: Path, model: Path, builder: str) -> Path:
    """Zensical: the Markdown extension and its assets; the others: the plugin."""
    zensical = builder == "zensical"
    return make_site(root, {"index.md": PAGE, "second.md": SECOND}, {"tiny": model},
                     config="site_url: https://example.org/\n" + ("" if zensical else "theme:\n  name: mkdocs\n"),
                     extensions=("admonition", "pymdownx.superfences") if zensical else ("admonition",),
                     plugin=not zensical, extension=zensical)


def build(root: Path, builder: str, *args: str, env=None) -> subprocess.CompletedProcess:
    return mkdocs(root, *args, env=env, builder=builder)


@pytest.fixture(scope="module", params=["zensical", "properdocs"])
def built(request, llama_model, tmp_path_factory):
    root = site(tmp_path_factory.mktemp(request.param), llama_model.path, request.param)
    return request.param, root, build(root, request.param)


def test_every_builder_renders_figures_summaries_and_errors_by_page_and_line(built):
    builder, root, result = built
    assert result.returncode == 0, result.stderr
    log = result.stdout + result.stderr
    assert "layerheat: docs/index.md:23: unknown metric 'atention' (did you mean 'attention'?)" in log
    assert "Traceback" not in log
    html = (root / "site" / "index.html").read_text()
    assert html.count('class="layerheat-item"') == 2 and html.count("layerheat-error") == 1
    assert "Where the tiny model looks" in html and "What is plotted." in html
    assert "layerheat-panels" in html and "Panel by panel." in html  # the list of metrics, in the admonition
    assert 'class="admonition note"' in html.split("layerheat-panels")[0]
    assert (root / "site" / "second" / "index.html").read_text().count('class="layerheat-item"') == 1
    bokeh = root / "site" / "assets" / "layerheat" / "bokeh.min.js"
    assert bokeh.stat().st_size > 100_000 and "cdn.bokeh.org" not in html
    assert re.search(r'<script src="[./]*assets/layerheat/bokeh\.min\.js"', html)


def test_zensical_builds_only_what_changed_and_strict_fails_once_every_block_was_tried(llama_model, tmp_path):
    root = site(tmp_path, llama_model.path, "zensical")
    assert build(root, "zensical").returncode == 0
    assert list((root / ".layerheat" / "cache").glob("*/*.npz"))  # outside .cache/, which --clean deletes
    warm = build(root, "zensical", "--clean")  # every page rendered again, every heatmap from the cache
    assert warm.returncode == 0 and re.search(r"\d+ cached, 0 computed", warm.stdout + warm.stderr)
    strict = build(root, "zensical", "--clean", env={"LAYERHEAT_STRICT": "1"})
    assert strict.returncode == 1
    lines = [line for line in strict.stderr.splitlines() if "strict mode" in line]
    assert lines == ["layerheat: docs/index.md:23: unknown metric 'atention' (did you mean 'attention'?) "
                     "(1 block without a figure, strict mode)"]
    assert "Traceback" not in strict.stderr


def test_zensical_warns_when_the_site_lacks_bokehjs(llama_model, tmp_path):
    root = site(tmp_path, llama_model.path, "zensical")
    shutil.rmtree(root / "docs" / "assets")
    result = build(root, "zensical")
    assert result.returncode == 0
    assert "bokeh.min.js is missing: run `layerheat assets" in result.stderr


def test_a_bare_markdown_renders_a_page_in_process(one_page):
    html = one_page(PAGE, "admonition")
    assert html.count('class="layerheat-item"') == 2 and html.count("layerheat-error") == 1
    assert "<code>docs/index.md:23</code>" in html
    assert "<p><figure" not in html and "<p>\x02" not in html  # each figure stands as a block of its own
    with pytest.raises(StrictError, match="p.md:6: unknown metric 'atention'"):
        one_page("x\n\n```layerheat\nmodel: tiny\ntext: hi\nmetric: atention\n```\n", strict=True, page="p.md")


def test_assets_command_writes_the_files_and_the_configuration_to_add(tmp_path):
    result = CliRunner().invoke(main, ["assets", str(tmp_path / "docs" / "assets" / "layerheat")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "docs" / "assets" / "layerheat").iterdir()) == [
        "bokeh.min.js", "layerheat.css", "layerheat.js"]
    assert "extra_javascript: [assets/layerheat/bokeh.min.js, assets/layerheat/layerheat.js]" in result.output


def test_one_configuration_serves_every_builder_and_ships_bokehjs_once(llama_model, tmp_path):
    """The extension and `layerheat assets` for Zensical, the plugin for MkDocs: under MkDocs the plugin does the
    work (it names pages), and the scripts the configuration lists already are not added twice."""
    root = site(tmp_path, llama_model.path, "zensical")
    config = (root / "mkdocs.yml").read_text()
    (root / "mkdocs.yml").write_text(config + f"plugins:\n  - layerheat:\n      models: {{tiny: '{llama_model.path}'}}\n")
    result = build(root, "mkdocs")
    assert result.returncode == 0, result.stderr
    assert "docs/index.md:23: unknown metric" in result.stderr
    html = (root / "site" / "index.html").read_text()
    assert html.count("bokeh.min.js") == 1 and html.count('class="layerheat-item"') == 2
    assert "assets/layerheat/data/" in html  # the plugin's data downloads


def test_zensical_reads_the_extension_from_zensical_toml(llama_model, tmp_path):
    root = site(tmp_path, llama_model.path, "zensical")
    (root / "mkdocs.yml").unlink()
    (root / "zensical.toml").write_text(
        '[project]\nsite_name = "t"\n'
        'extra_javascript = ["assets/layerheat/bokeh.min.js", "assets/layerheat/layerheat.js"]\n'
        'extra_css = ["assets/layerheat/layerheat.css"]\n\n'
        '[project.markdown_extensions.admonition]\n\n[project.markdown_extensions."pymdownx.superfences"]\n\n'
        f'[project.markdown_extensions.layerheat]\nmodels = {{ tiny = "{llama_model.path}" }}\n')
    result = build(root, "zensical")
    assert result.returncode == 0, result.stderr
    assert "layerheat: docs/index.md:23: unknown metric 'atention'" in result.stderr
    assert (root / "site" / "index.html").read_text().count('class="layerheat-item"') == 2
