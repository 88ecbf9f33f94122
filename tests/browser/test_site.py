"""The project's own documentation site, built for real and opened in headless Chromium (Debian's, via Playwright).

Screenshots of every page go to tests/artifacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from browserkit import ARTIFACTS, CHROMIUM, ROOT, plot_pixels, serve, tooltip, wait_for_figures

PAGES = ["", "getting-started/", "reference/", "metrics/", "analysis/", "caching/", "examples/arithmetic/",
         "examples/long-text/", "examples/compare/", "examples/causal-trace/", "troubleshooting/"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> str:
    """The docs site, built into a temporary folder and served on a free localhost port."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: `make test` installs it (make browser)")
    out = tmp_path_factory.mktemp("docs-site")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "-q", "-d", str(out)], cwd=ROOT,
                           capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, build.stderr
    with serve(out) as url:
        yield url, out


@pytest.mark.parametrize("path", PAGES)
def test_every_page_loads_cleanly_and_draws_its_heatmaps(site, page, path):
    url, _ = site
    page.goto(url + path)
    figures = wait_for_figures(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"page-{path.strip('/').replace('/', '-') or 'index'}.png"), full_page=True)
    for i in range(figures):
        box = page.locator(".layerheat-plot").nth(i).bounding_box()
        assert box["width"] >= 320 and box["height"] >= 300
        pixels = plot_pixels(page, i)
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # a drawn heatmap, not a blank box
    assert page.problems == []


def test_hover_shows_the_cell_under_the_pointer(site, page):
    url, _ = site
    page.goto(url + "examples/arithmetic/")
    wait_for_figures(page)
    plot = page.locator(".layerheat-plot").first
    box = plot.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5)
    fields = tooltip(page)
    position = int(re.search(r"\(position (\d+)", fields["token"]).group(1))
    layer = int(fields["layer"])
    # the value shown is the matrix's, read back from the figure's own data download
    link = page.locator("figure.layerheat").first.locator("a[href$='.json']").evaluate("a => a.href")
    data = json.loads(page.evaluate("async url => (await fetch(url)).text()", link))
    raw = np.array([[np.nan if v is None else v for v in row] for row in data["values"]])
    assert fields["token"].startswith(data["tokens"][position].strip() or "␣")
    assert float(fields["raw value"]) == pytest.approx(raw[data["layers"].index(layer), position], abs=6e-4)
    lo, hi = np.nanmin(raw), np.nanmax(raw)
    normalised = (raw[data["layers"].index(layer), position] - lo) / (hi - lo)
    assert float(fields["attention received"]) == pytest.approx(normalised, abs=6e-4)


def axis_colour(tab) -> str:
    return tab.evaluate("""() => [...Bokeh.documents[0].all_models]
        .find(m => m.properties && 'axis_label_text_color' in m.properties).axis_label_text_color""")


def test_palette_toggle_restyles_the_figures_without_reload(site, page):
    url, _ = site
    page.goto(url + "examples/arithmetic/")
    wait_for_figures(page)
    light = axis_colour(page)
    page.locator("label[for='__palette_1']").click()
    page.wait_for_function("document.body.getAttribute('data-md-color-scheme') === 'slate'")
    page.wait_for_timeout(300)
    dark = axis_colour(page)
    assert light != dark
    page.locator(".layerheat-plot").first.screenshot(path=str(ARTIFACTS / "figure-dark.png"))
    assert page.problems == []


def test_instant_navigation_renders_the_next_pages_figures(site, page):
    url, _ = site
    page.goto(url)
    wait_for_figures(page)
    page.get_by_role("link", name="Example: an arithmetic answer").first.click()
    page.wait_for_url("**/examples/arithmetic/")
    count = page.locator("script.layerheat-item").count()
    assert count >= 4
    wait_for_figures(page, count)
    assert len(np.unique(plot_pixels(page, count - 1).reshape(-1, 3), axis=0)) > 50
    assert page.problems == []


def test_a_500_token_text_scrolls_instead_of_squashing(site, page):
    url, _ = site
    page.goto(url + "examples/long-text/")
    wait_for_figures(page)
    data = page.evaluate("() => JSON.parse(document.querySelector('script.layerheat-item').textContent)")
    assert len(data["panels"][0]["tokens"]) >= 400
    width, visible = page.evaluate("() => { const d = document.querySelector('.layerheat-plot');"
                                   " return [d.scrollWidth, d.clientWidth]; }")
    assert width >= 12 * 400 and visible < width  # at least 12 px per token, scrollable
    assert page.problems == []


def test_the_static_figure_is_fetched_only_to_print_and_is_in_the_pdf(site, page):
    """On screen the page fetches no SVG; printed (Chromium's page.pdf), the static figures replace the
    interactive ones: the PDF holds each heatmap's many colours, its title and its colour bar's ticks."""
    import io

    from pypdf import PdfReader

    url, _ = site
    svgs = []
    page.on("request", lambda r: svgs.append(r.url) if r.url.endswith(".svg") else None)
    page.goto(url + "examples/arithmetic/")
    figures = wait_for_figures(page)
    assert svgs == []
    link = page.locator("figure.layerheat").first.locator("a", has_text="SVG")
    assert link.get_attribute("download") is not None
    pdf = PdfReader(io.BytesIO(page.pdf(format="A4")))
    assert len(set(svgs)) == figures >= 4  # fetched to print, each once
    text = "".join(p.extract_text() for p in pdf.pages)
    assert "Figure 1" in text and "0.2" in text and "0.8" in text
    drawn = 0
    for p in pdf.pages:  # a heatmap: a page with many fill colours (the cells')
        fills = set(re.findall(rb"([\d.]+ [\d.]+ [\d.]+) (?:rg|sc|scn)\b", p.get_contents().get_data()))
        drawn += len(fills) > 100
    assert drawn >= figures
    page.emulate_media(media="print")
    assert page.locator(".layerheat-plot").first.is_hidden() and page.locator("img.layerheat-static").first.is_visible()
    assert page.problems == []


def test_without_javascript_the_page_shows_the_static_figure(site, browser):
    url, _ = site
    context = browser.new_context(java_script_enabled=False)
    tab = context.new_page()
    tab.goto(url + "examples/arithmetic/")
    tab.wait_for_load_state("networkidle")
    image = tab.locator("img.layerheat-static").first
    assert image.is_visible() and image.evaluate("i => i.complete && i.naturalWidth >= 320")
    assert tab.locator(".layerheat-plot").first.is_hidden()
    context.close()
