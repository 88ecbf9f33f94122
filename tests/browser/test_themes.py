"""Heatmaps in MkDocs' two built-in themes, `mkdocs` (Bootstrap, with its light/dark/auto colour mode) and
`readthedocs` (light only), opened in headless Chromium: drawn, sized, hoverable, and in step with dark mode.

Screenshots go to tests/artifacts/theme-*.png (git-ignored) for a person to look at.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from browserkit import ARTIFACTS, plot_pixels, serve, tooltip, wait_for_figures
from sites import make_site, mkdocs

from mkdocs_layerheat.figure import figure_height

LIGHT, DARK = "#444444", "#d5d7e2"  # the loader's axis text colours (assets/layerheat.js)
TEXT = "A dash — and a parrot 🦜 look back at the fox."  # the tiny tokenizer splits "—" and "🦜" into bytes
THEMES = {
    "mkdocs": "  name: mkdocs\n  color_mode: auto\n  user_color_mode_toggle: true\n",
    "readthedocs": "  name: readthedocs\n",
}
# Both themes take highlight.js from a CDN (and the mkdocs theme's colour-mode script fails without it): the
# tests answer those requests with empty files and leave them out of the page's problems; anything else counts.
HIGHLIGHT_JS = "https://cdnjs.cloudflare.com/ajax/libs/highlight.js/"
HLJS_STUB = "window.hljs = {highlightAll() {}, highlightElement() {}, initHighlightingOnLoad() {}, configure() {}};"
PAGE = f"""# Heatmaps in a theme

Some text before the figure.

```layerheat
model: tiny
text: '{TEXT}'
metric: attention
title: Where the tiny model looks
caption: The caption under the figure.
```

Some text after the figure.
"""


@pytest.fixture(scope="module")
def theme_sites(llama_model, tmp_path_factory):
    """One built site per theme, served on localhost: {theme: url}."""
    sites = {}
    root = tmp_path_factory.mktemp("theme-sites")
    for theme, config in THEMES.items():
        project = make_site(root / theme, {"index.md": PAGE}, {"tiny": llama_model.path},
                            site_name=f"layerheat in {theme}", config=f"theme:\n{config}", plugins=("search",))
        build = mkdocs(project, "--strict", "-q")
        assert build.returncode == 0, build.stderr
        sites[theme] = project / "site"
    with serve(root) as url:
        yield {theme: f"{url}{theme}/site/" for theme in THEMES}


def offline(tab):
    """The theme's highlight.js answered with a stub; returns a function giving the page's other problems."""
    def answer(route):
        script = route.request.url.endswith(".js")
        route.fulfill(status=200, body=HLJS_STUB if script else "", content_type="text/javascript" if script else "text/css")

    tab.route(HIGHLIGHT_JS + "**", answer)
    return lambda: [p for p in getattr(tab, "problems", []) if HIGHLIGHT_JS not in p]


def axis_colours(tab) -> set[str]:
    """The text colours of every axis of the page's figures."""
    return set(tab.evaluate("""() => Bokeh.documents.flatMap(d => [...d.all_models])
        .filter(m => m.properties && 'axis_label_text_color' in m.properties)
        .flatMap(m => [m.axis_label_text_color, m.major_label_text_color])"""))


def cell_point(tab, position: int, row: int) -> tuple[float, float]:
    """Page coordinates of the centre of a cell, from the figure's own scales."""
    return tuple(tab.evaluate("""([i, j]) => { const v = Object.values(Bokeh.index).find(v => v.frame && v.frame.x_scale);
        const r = v.canvas_view.el.getBoundingClientRect();
        return [r.left + v.frame.x_scale.compute(i), r.top + v.frame.y_scale.compute(j)]; }""", [position, row]))


def data_download(tab) -> dict:
    link = tab.locator("figure.layerheat").first.locator("a[href$='.json']").evaluate("a => a.href")
    return json.loads(tab.evaluate("async url => (await fetch(url)).text()", link))


@pytest.mark.parametrize("theme", THEMES)
def test_theme_draws_the_figure_at_its_size_and_the_tooltip_names_the_cell(theme_sites, page, theme):
    problems = offline(page)
    page.goto(theme_sites[theme])
    assert wait_for_figures(page) == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"theme-{theme}.png"), full_page=True)
    data = data_download(page)
    n_layers, n_tokens = len(data["layers"]), len(data["tokens"])
    plot = page.locator(".layerheat-plot").first
    box = plot.bounding_box()
    canvas = plot.locator("canvas").first.bounding_box()
    content = page.locator("[role=main]").first.bounding_box()
    # the whole width of the content column, the height reserved for it, nothing squeezed or spilling over
    assert canvas["height"] == pytest.approx(figure_height(n_layers), abs=1)
    assert canvas["width"] == pytest.approx(box["width"], abs=2) and canvas["width"] >= 12 * n_tokens + 160
    assert content["x"] - 1 <= box["x"] and box["x"] + box["width"] <= content["x"] + content["width"] + 1
    assert len(np.unique(plot_pixels(page).reshape(-1, 3), axis=0)) > 50  # drawn, not a blank box
    # the written summary and the caption are there as text, left-aligned
    assert page.locator("figure.layerheat .layerheat-summary").first.inner_text().strip()
    assert page.locator(".layerheat-caption").first.evaluate("e => getComputedStyle(e).textAlign") in ("left", "start")
    # hover the last byte of "🦜": the tooltip names the token, its position, the character, and the layer
    position = max(i for i, b in enumerate(data["token_bytes"]) if b)
    assert bytes.fromhex(data["token_bytes"][position]) == "🦜".encode()[-1:]
    page.mouse.move(*cell_point(page, position, n_layers - 1))
    fields = tooltip(page)
    assert re.search(rf"\(position {position}, byte 4 of \"🦜\"\)$", fields["token"]), fields["token"]
    assert fields["layer"] == str(data["layers"][-1])
    page.locator(".layerheat-plot").first.screenshot(path=str(ARTIFACTS / f"theme-{theme}-hover.png"))
    assert problems() == []


def test_mkdocs_theme_colour_mode_menu_repaints_the_figure_without_reload(theme_sites, page):
    problems = offline(page)
    page.goto(theme_sites["mkdocs"])
    wait_for_figures(page)
    page.evaluate("window.notReloaded = true")
    assert page.evaluate("document.documentElement.getAttribute('data-bs-theme')") == "light"
    assert axis_colours(page) == {LIGHT}
    page.locator("#theme-menu").click()
    page.locator("button[data-bs-theme-value=dark]").click()
    page.wait_for_function("document.documentElement.getAttribute('data-bs-theme') === 'dark'")
    page.wait_for_function(f"() => Bokeh.documents[0].all_models && [...Bokeh.documents[0].all_models]"
                           f".some(m => m.axis_label_text_color === '{DARK}')")
    assert axis_colours(page) == {DARK}
    assert page.evaluate("window.notReloaded") is True
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.screenshot(path=str(ARTIFACTS / "theme-mkdocs-dark.png"), full_page=True)
    pixels = plot_pixels(page)
    # the figure is transparent over the dark page: its corners are the page's background, not white
    corner = pixels[2, 2]
    assert corner.tolist() == [int(x) for x in re.findall(r"\d+", background)[:3]]
    page.locator("#theme-menu").click()
    page.locator("button[data-bs-theme-value=light]").click()
    page.wait_for_function("document.documentElement.getAttribute('data-bs-theme') === 'light'")
    page.wait_for_timeout(100)
    assert axis_colours(page) == {LIGHT}
    assert problems() == []


def test_mkdocs_theme_auto_mode_follows_the_system_preference_live(theme_sites, browser):
    context = browser.new_context(viewport={"width": 1300, "height": 1000}, color_scheme="dark")
    tab = context.new_page()
    errors = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    offline(tab)
    try:
        tab.goto(theme_sites["mkdocs"])  # color_mode: auto, and nothing stored: the system's preference
        wait_for_figures(tab)
        assert tab.evaluate("document.documentElement.getAttribute('data-bs-theme')") == "dark"
        assert axis_colours(tab) == {DARK}
        tab.emulate_media(color_scheme="light")
        tab.wait_for_function("document.documentElement.getAttribute('data-bs-theme') === 'light'")
        tab.wait_for_timeout(100)
        assert axis_colours(tab) == {LIGHT}
        assert errors == []
    finally:
        context.close()


def test_readthedocs_theme_has_no_dark_mode_and_stays_light(theme_sites, browser):
    context = browser.new_context(viewport={"width": 1300, "height": 1000}, color_scheme="dark")
    tab = context.new_page()
    offline(tab)
    try:
        tab.goto(theme_sites["readthedocs"])
        wait_for_figures(tab)
        assert axis_colours(tab) == {LIGHT}
        assert tab.evaluate("getComputedStyle(document.body).backgroundColor") in ("rgb(252, 252, 252)", "rgb(237, 240, 242)")
    finally:
        context.close()
