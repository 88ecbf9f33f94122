"""Real `mkdocs build` runs of a temporary site with the demo model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from figuredata import payloads

from mkdocs_layerheat.cache import Cache

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".models" / "SmolLM2-135M-Instruct"
TEXT = "A and B = 8 + 5 = 13. The final answer is \\\\boxed{(D)}"

INDEX = f"""\
# Index

Some text before.

```layerheat
model: demo
text: '{TEXT}'
metric: attention
normalize: global
title: Where the model looks
caption: Attention received per token.
```

```layerheat
model: demo
text: 'no metric like this'
metric: atention
```

Some text after.
"""

NESTED = """\
# Nested

!!! note "Inside an admonition"

    ```layerheat
    model: demo
    text_file: texts/sample.txt
    metric: hidden-norm
    normalize: layer
    ```

- a list item

    ```layerheat
    model: nowhere
    text: hello
    ```
"""

PANELS = f"""\
# Panels

```layerheat
model: demo
text: '{TEXT}'
metric: [attention, hidden-norm, update]
color_range: robust
title: Three metrics, one text
```
"""

# A build in-process, then a report of which heavy modules it imported.
PROBE = """
import sys, json, logging
logging.basicConfig(level=logging.INFO)
from mkdocs.commands.build import build
from mkdocs.config import load_config
build(load_config(sys.argv[1]))
print(json.dumps({m: m in sys.modules for m in ("torch", "transformers", "bokeh", "numpy")}))
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if not (DEMO / "config.json").is_file():
        pytest.fail(f"the demo model is missing at {DEMO}: run `make model` (make test does)")
    root = tmp_path_factory.mktemp("site")
    (root / "docs" / "texts").mkdir(parents=True)
    (root / "docs" / "index.md").write_text(INDEX)
    (root / "docs" / "nested.md").write_text(NESTED)
    (root / "docs" / "panels.md").write_text(PANELS)
    (root / "docs" / "texts" / "sample.txt").write_text("Hidden states grow as they travel up the stack.")
    (root / "mkdocs.yml").write_text(
        textwrap.dedent(
            f"""\
            site_name: test
            markdown_extensions: [admonition]
            plugins:
              - layerheat:
                  models:
                    demo: {DEMO}
            """
        )
    )
    return root


def build(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "-f", str(root / "mkdocs.yml"), *args],
        capture_output=True, text=True, cwd=root, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def first_build(site):
    return build(site)


def test_build_succeeds_and_reports_bad_blocks_by_page_and_line(first_build):
    assert first_build.returncode == 0, first_build.stderr
    log = first_build.stderr
    assert "docs/index.md:17: unknown metric 'atention' (did you mean 'attention'?)" in log
    assert "docs/nested.md:14: unknown model 'nowhere'" in log
    assert "Traceback" not in log


def test_page_has_an_offline_interactive_heatmap_with_summary(site, first_build):
    html = (site / "site" / "index.html").read_text()
    items = payloads(html)
    assert len(items) == 1
    assert 'class="layerheat-error' in html  # the bad block is an error box, the good one a figure
    (panel,) = items[0]["panels"]
    tokens = panel["tokens"]
    assert panel["layers"] == [str(i) for i in range(1, 31)]
    assert tokens[:3] == ["A", "and", "B"]  # readable labels: no Ġ markers, no leading spaces
    assert not any("Ġ" in t or "▁" in t for t in tokens)
    assert "What is plotted." in html and "Trend by depth." in html
    assert "Attention received per token." in html
    # BokehJS is shipped once with the site, never from a CDN
    assert (site / "site" / "assets" / "layerheat" / "bokeh.min.js").stat().st_size > 100_000
    assert "assets/layerheat/bokeh.min.js" in html and "cdn.bokeh.org" not in html
    loader = (site / "site" / "assets" / "layerheat" / "layerheat.js").read_text()
    assert "Plotting.show(build(" in loader and "window.layerheatPalettes = " in loader  # with BokehJS's API


def test_summary_states_facts_of_the_matrix(site, first_build):
    """The layers named highest on average are the highest of the cached matrix, recomputed here."""
    cache = Cache(site / ".cache" / "layerheat")
    entries = [cache.get(p.stem) for p in (site / ".cache" / "layerheat").glob("*/*.npz")]
    attention = next(h for h in entries if h is not None and h.metric == "attention")
    raw = attention.values.astype(np.float64)
    text = re.sub(r"<[^>]+>", "", (site / "site" / "index.html").read_text())
    low, high = re.search(r"raw values from ([-\d.,e]+) to ([-\d.,e]+)", text).groups()
    assert float(low.replace(",", "")) == pytest.approx(raw.min(), rel=0.05)
    assert float(high.replace(",", "")) == pytest.approx(raw.max(), rel=0.05)
    sinks = ((raw >= 0.3) & (raw >= 5 * np.median(raw[:, :-3], axis=1, keepdims=True))).sum(axis=0)
    if sinks.max() >= 3:  # the summary names the sink the matrix has
        assert "is an attention sink" in text


def test_nested_blocks_render(site, first_build):
    html = (site / "site" / "nested" / "index.html").read_text()
    assert len(payloads(html)) == 1
    assert "layerheat-error" in html  # the unknown model inside the list item


def test_cached_rebuild_imports_neither_torch_nor_transformers(site, first_build):
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(site / "mkdocs.yml")], capture_output=True, text=True, cwd=site
    )
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout.strip().splitlines()[-1]) == {"torch": False, "transformers": False, "bokeh": False, "numpy": False}, probe.stderr[-3000:]
    assert "0 computed" in probe.stderr


def test_strict_build_fails_listing_every_bad_block(site, first_build):
    result = build(site, "--strict")
    assert result.returncode != 0
    assert "docs/index.md:17:" in result.stderr and "docs/nested.md:14:" in result.stderr


def test_disabled_plugin_renders_placeholders_without_a_model(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(INDEX.split("```layerheat\nmodel: demo\ntext: 'no")[0])
    (tmp_path / "mkdocs.yml").write_text(
        "site_name: t\nplugins:\n  - layerheat:\n      enabled: false\n      models: {demo: /nonexistent}\n"
    )
    result = build(tmp_path, "--strict")
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "site" / "index.html").read_text()
    assert "layerheat-placeholder" in html and not payloads(html)
    assert not (tmp_path / ".cache").exists()


def test_extract_command_writes_the_documented_json(tmp_path):
    out = tmp_path / "heatmap.json"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "layerheat"), "extract", "--model", str(DEMO), "--text", "Paris is big",
         "--metric", "hidden-norm", "--normalize", "token", "-o", str(out)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["metric"] == "hidden-norm" and data["normalize"] == "token"
    assert data["layers"] == list(range(1, 31))
    values = np.array(data["values"])
    assert values.shape == (30, len(data["tokens"]))
    np.testing.assert_allclose(values.max(axis=0), 1.0)  # each token (column) scaled to 0..1
    np.testing.assert_allclose(values.min(axis=0), 0.0)


def test_figures_are_numbered_with_anchors_and_downloadable_data(site, first_build):
    html = (site / "site" / "index.html").read_text()
    assert 'id="layerheat-1-figure"' in html and 'href="#layerheat-1-figure">Figure 1</a>: Where the model looks' in html
    csv_link = re.search(r'href="([^"]+\.csv)" download', html).group(1)
    rows = (site / "site" / csv_link).read_text().splitlines()
    header, first = rows[0].split(","), rows[1].split(",")
    assert header == ["position", "token", "layer", "attention"]
    cache = Cache(site / ".cache" / "layerheat")
    attention = next(h for p in (site / ".cache" / "layerheat").glob("*/*.npz")
                     if (h := cache.get(p.stem)) is not None and h.metric == "attention")
    assert len(rows) == 1 + attention.values.size
    assert first[:3] == ["0", "A", "1"] and float(first[3]) == pytest.approx(attention.values[0, 0], rel=1e-6)
    data = json.loads((site / "site" / csv_link.replace(".csv", ".json")).read_text())
    assert np.allclose(np.array(data["values"], dtype=float), attention.values, rtol=1e-6)


def test_several_metrics_are_panels_of_one_figure_with_one_summary(site, first_build):
    from claims_joint import check_joint

    from mkdocs_layerheat.analysis import analyze
    from mkdocs_layerheat.labels import display_labels
    from mkdocs_layerheat.render import Renderer

    html = (site / "site" / "panels" / "index.html").read_text()
    (item,) = payloads(html)
    figures = item["panels"]
    assert len(figures) == 3
    assert [f.get("linked", False) for f in figures] == [False, True, True]  # one token axis: they pan together
    assert html.count(".csv\" download") == 3  # each panel's data
    text = re.sub(r"<[^>]+>", "", html.split('class="layerheat-summary"')[1].split("</div>")[0])
    assert "Read together." in text and "Panel by panel." in text
    cache = Cache(site / ".cache" / "layerheat")
    entries = {h.metric: h for p in (site / ".cache" / "layerheat").glob("*/*.npz")
               if (h := cache.get(p.stem)) is not None and h.tokens[0] == "A"}
    narrative = Renderer().narrative
    panels = []
    for metric in ("attention", "hidden-norm", "update"):
        h = entries[metric]
        labels = display_labels(h.tokens, h.token_bytes)
        values = h.normalized("global")
        f = analyze(h, values, labels, "global", color_range="robust")
        panels.append({"metric": metric, "values": values, "raw": h.values, "layers": h.layers, "labels": labels,
                       "summary": narrative.markdown(h, f, "global"), "findings": f, "heatmap": h, "model": h.model})
    joint = narrative.joint([(p["heatmap"], p["findings"]) for p in panels], "global")
    assert " ".join(joint.split("\n\n")[0].split()).split("`")[1] in text  # the page shows this summary
    check_joint(joint, panels)
    assert joint.startswith("`A` is both an attention sink in (a)")  # the demo model's first token

