"""One site, one configuration, built with Zensical (the Markdown extension, assets from `layerheat assets`) and
with ProperDocs (the plugin), opened in headless Chromium: figures drawn, no console error, no off-site request,
instant navigation and the palette toggle."""

from __future__ import annotations

import numpy as np
import pytest
from browserkit import ARTIFACTS, plot_pixels, serve, wait_for_figures
from sites import make_site, mkdocs

PAGE = "# {title}\n\n```layerheat\nmodel: tiny\ntext: '{text}'\nmetric: {metric}\n```\n"
THEME = """nav: [index.md, second.md]
theme:
  name: material
  font: false  # no Google Fonts: the site works offline
  features: [navigation.instant]
  palette:
    - scheme: default
      toggle: {icon: material/brightness-7, name: Dark mode}
    - scheme: slate
      toggle: {icon: material/brightness-4, name: Light mode}
"""


@pytest.fixture(scope="module", params=["zensical", "properdocs"])
def built_site(request, llama_model, tmp_path_factory):
    """One configuration for both: the Markdown extension (which Zensical reads) and the plugin (ProperDocs)."""
    builder = request.param
    pages = {"index.md": PAGE.format(title="First", text="The fox looks back.", metric="attention"),
             "second.md": PAGE.format(title="Second", text="A second page.", metric="[attention, update]")}
    root = make_site(tmp_path_factory.mktemp(f"{builder}-site"), pages, {"tiny": llama_model.path},
                     site_name=f"layerheat under {builder}", config=THEME, extension=True)
    result = mkdocs(root, *(["-f", "mkdocs.yml"] if builder == "properdocs" else []), builder=builder)
    assert result.returncode == 0, result.stderr
    with serve(root / "site") as url:
        yield builder, url


def axis_colour(tab) -> str:
    return tab.evaluate("""() => [...Bokeh.documents[0].all_models]
        .find(m => m.properties && 'axis_label_text_color' in m.properties).axis_label_text_color""")


def test_figures_draw_offline_follow_instant_navigation_and_the_palette(built_site, page):
    builder, url = built_site
    page.goto(url)
    wait_for_figures(page, 1)
    assert len(np.unique(plot_pixels(page, 0).reshape(-1, 3), axis=0)) > 20
    light = axis_colour(page)
    page.locator("label[for='__palette_1']").click()
    page.wait_for_function("document.body.getAttribute('data-md-color-scheme') === 'slate'")
    page.wait_for_timeout(300)
    assert axis_colour(page) != light
    page.get_by_role("link", name="Second").first.click()
    page.wait_for_url("**/second/")
    wait_for_figures(page, 1)
    assert page.locator(".layerheat-plot").first.locator("canvas").count() >= 1
    page.screenshot(path=str(ARTIFACTS / f"{builder}-second.png"), full_page=True)
    assert page.problems == [], page.problems
