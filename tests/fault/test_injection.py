"""Issue 7: what a page's author writes is text, never markup, template code or site options."""

from __future__ import annotations

import csv as csvlib
import html as htmllib
import io
import json
import re

import pytest
from samples import NASTY, NASTY_BLOCK
from sites import GOOD, make_site, mkdocs

PAGE = f"""\
# Injection

{NASTY_BLOCK}
```layerheat
model: tiny
text: |
  {NASTY}
metric: hidden-norm
```

```layerheat
model: tiny
text: hello
'<script>alert(1)</script>': 1
```
"""
PAYLOAD = re.compile(r'(<script type="application/json" class="layerheat-item"[^>]*>)(.*?)(</script>)', re.S)


@pytest.fixture(scope="module")
def built(tmp_path_factory, llama_model):
    root = tmp_path_factory.mktemp("inject")
    site = make_site(root / "site", {"index.md": PAGE}, {"tiny": str(llama_model.path)})
    result = mkdocs(site)
    assert result.returncode == 0, result.stderr
    return site, (site / "site" / "index.html").read_text(), result


def test_payload_script_has_no_markup(built):
    _, html, _ = built
    payloads = PAYLOAD.findall(html)
    assert len(payloads) == 2
    for _, body, _ in payloads:
        assert "<" not in body and ">" not in body
        json.loads(body)  # still valid JSON: the escapes are JSON's


def test_no_unescaped_markup_outside_the_payload(built):
    _, html, _ = built
    rest = PAYLOAD.sub("", html)
    assert "<script>alert" not in rest
    assert "<img src=x" not in rest
    assert "onerror=alert(1)>" not in rest.replace("onerror=alert(1)&gt;", "")
    assert "layerheat-error" in rest and "&lt;script&gt;alert(1)&lt;/script&gt;" in rest  # the bad key, escaped


def test_title_and_caption_are_text(built):
    _, html, _ = built
    figure = html[html.index('<figure class="layerheat"'):]
    title = re.search(r'<figcaption class="layerheat-title">(.*?)</figcaption>', figure, re.S)[1]
    caption = re.search(r'<p class="layerheat-caption">(.*?)</p>', figure, re.S)[1]
    for shown in (title, caption):
        assert htmllib.unescape(re.sub(r"<a [^>]*>.*?</a>: ", "", shown)) == NASTY
        assert "{{ 7*7 }}" in shown and "49" not in shown and "{% raw %}" in shown


def test_template_syntax_is_never_evaluated(built):
    site, _, _ = built
    for path in (site / "site").rglob("*.html"):
        text = PAYLOAD.sub("", path.read_text())
        assert "7*7" not in text or "{{ 7*7 }}" in text
    html = (site / "site" / "index.html").read_text()
    rest = PAYLOAD.sub("", html)
    assert rest.count("{{ 7*7 }}") >= 3  # title, aria-label, caption
    assert rest.count("{% raw %}") >= 3


def test_exports_hold_the_text_literally(built):
    site, html, _ = built
    urls = sorted(set(re.findall(r'href="([^"]*assets/layerheat/data/[0-9a-f]+)\.csv"', html)))
    assert len(urls) == 2
    for url in urls:
        base = site / "site" / url.lstrip("./")
        csv = base.with_suffix(".csv").read_text()
        data = json.loads(base.with_suffix(".json").read_text())
        joined = "".join(data["tokens"]) if "tokens" in data else ""
        for piece in ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "{{ 7*7 }}", "{% raw %}"):
            assert piece in joined, (piece, joined)
        rows = [row for row in csvlib.DictReader(io.StringIO(csv)) if row["layer"] == "1"]
        from_csv = "".join(row["token"] for row in sorted(rows, key=lambda r: int(r["position"])))
        assert from_csv == joined


SITE_OPTIONS = {"trust_remote_code": "true", "device": "cuda", "dtype": "float16", "device_map": "auto"}


@pytest.fixture(scope="module")
def options_built(tmp_path_factory, llama_model):
    pages = {
        f"{key}.md": f"# P\n\n{GOOD}\n```layerheat\nmodel: tiny\ntext: hello\n{key}: {value}\n```\n"
        for key, value in SITE_OPTIONS.items()
    }
    site = make_site(tmp_path_factory.mktemp("options") / "site", pages, {"tiny": str(llama_model.path)})
    return site, mkdocs(site)


@pytest.mark.parametrize("key", list(SITE_OPTIONS))
def test_site_options_cannot_be_set_from_a_page(options_built, key):
    site, result = options_built
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if f"docs/{key}.md:" in line]
    assert len(warnings) == 1 and f"docs/{key}.md:12: '{key}' cannot be set in a page" in warnings[0], result.stderr
    html = (site / "site" / key / "index.html").read_text()
    assert html.count("layerheat-error") == 1 and html.count('class="layerheat-item"') == 1


def test_the_page_parses_to_no_injected_element(built):
    """Token by token, the text is split into pieces: parse the page and look at every element it makes."""
    from html.parser import HTMLParser

    _, html, _ = built
    tags: list[tuple[str, dict]] = []
    scripts: list[str] = []  # the text of each script element

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append((tag, dict(attrs)))
            if tag == "script":
                scripts.append("")

        def handle_data(self, data):
            if tags and tags[-1][0] == "script":
                scripts[-1] += data

    Collect().feed(html)
    images = [a for t, a in tags if t == "img"]  # only the figures' own static SVGs
    assert all(a.get("class") == "layerheat-static" and re.fullmatch(r"(\.\./)*assets/layerheat/figures/\w+\.svg", a["src"])
               for a in images), images
    assert not [a for t, a in tags if any(name.startswith("on") for name in a)]
    assert len(scripts) == len([t for t, a in tags if t == "script"])
    inline = [text for text, (_, a) in zip(scripts, [t for t in tags if t[0] == "script"]) if a.get("type") != "application/json"]
    assert not [text for text in inline if "alert" in text or "<" in text], inline
    for code in re.findall(r"<code>(.*?)</code>", PAYLOAD.sub("", html), re.S):
        assert "<" not in code and ">" not in code, code
