"""Issue 7 in a real browser: a page whose text, title and caption are attacks opens no dialog, makes no
request it should not, and shows every attack as the characters it is (figure, tooltips, summary)."""

from __future__ import annotations

import json
import re

import pytest
from browserkit import TOOLTIP_JS, serve, wait_for_figures
from samples import NASTY, NASTY_BLOCK
from sites import make_site, mkdocs

from mkdocs_layerheat.labels import display_labels

PAGE = f"""\
# Attacks

{NASTY_BLOCK}
```layerheat
model: tiny
text: '{NASTY} and <b>bold</b> &amp; <iframe src=//example.com>'
metric: hidden-norm
```
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory, llama_model):
    root = make_site(tmp_path_factory.mktemp("attacks"), {"index.md": PAGE}, {"tiny": llama_model.path},
                     config="theme: {name: material, font: false}\n")
    build = mkdocs(root, "-q")
    assert build.returncode == 0 and "WARNING" not in build.stderr, build.stderr
    with serve(root / "site") as url:
        yield url


def test_attacks_stay_text_in_the_browser(site, page):
    dialogs, requests = [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("request", lambda request: requests.append(request.url))
    page.on("response", lambda response: page.problems.append(f"{response.status}: {response.url}")
            if response.status >= 400 else None)
    page.goto(site)
    assert wait_for_figures(page) == 2
    plot, tooltips = page.locator(".layerheat-plot").first, set()
    box = plot.bounding_box()
    for scroll in (0, box["width"]):  # a long text scrolls sideways
        plot.evaluate("(div, left) => { div.scrollLeft = left; }", scroll)
        for x in range(int(box["x"]), int(box["x"] + box["width"]), 4):  # across every column, each with its tooltip
            page.mouse.move(x, box["y"] + box["height"] * 0.5)
            page.wait_for_timeout(10)
            tooltips.add(page.evaluate(TOOLTIP_JS))
    page.mouse.move(0, 0)
    page.wait_for_timeout(300)

    assert dialogs == []
    assert page.problems == []  # no console error, no failed, off-site or refused request
    assert not [url for url in requests if url.rstrip("/").endswith(("/x", "example.com"))]
    assert page.evaluate("() => document.querySelectorAll('img[src=x], iframe, [onerror]').length") == 0
    # each tooltip shows its token as the characters of the text, as the figure's data download has them
    link = page.locator("figure.layerheat").first.locator("a[href$='.json']").evaluate("a => a.href")
    tokens = json.loads(page.evaluate("async url => (await fetch(url)).text()", link))["tokens"]
    labels, shown = display_labels(tokens), set()
    for text in filter(None, tooltips):
        token = text.splitlines()[0].split(":\t", 1)[1]
        label, position, _ = re.fullmatch(r"(.*) \(position (\d+)(, special)?\)", token).groups()
        assert label == labels[int(position)]
        shown.add(label)
    assert {"<", ">", '"', "{", "}", "%"} <= set("".join(shown)), shown
    figure = page.locator("figure.layerheat").first
    for where in (figure.locator(".layerheat-title"), figure.locator(".layerheat-caption")):
        assert NASTY in where.inner_text()
    named = re.findall(r"(\S+) \(position (\d+)\)", figure.locator(".layerheat-summary").inner_text())
    assert named and all(label == labels[int(position)] for label, position in named)  # the summary's tokens, as text
    assert {"<", ">"} & {label for label, _ in named}
