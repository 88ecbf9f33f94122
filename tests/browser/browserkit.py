"""Helpers shared by the browser tests: Debian's Chromium, a site served on localhost, figures drawn, tooltips read."""

from __future__ import annotations

import functools
import io
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-gpu", "--no-first-run"]


@contextmanager
def serve(directory: Path):
    """A built site on a free localhost port: yields its base URL."""
    handler = functools.partial(type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                                directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


def wait_for_figures(tab, count: int | None = None) -> int:
    tab.wait_for_load_state("networkidle")
    expected = count if count is not None else tab.locator("script.layerheat-item").count()
    for i in range(expected):  # Playwright's locators see into the shadow DOM where BokehJS draws
        tab.locator(".layerheat-plot").nth(i).locator("canvas").first.wait_for()
    tab.wait_for_timeout(300)
    return expected


def plot_pixels(tab, index: int = 0) -> np.ndarray:
    from PIL import Image

    png = tab.locator(".layerheat-plot").nth(index).screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# The text of the first Bokeh tooltip on the page, looked for inside the shadow roots BokehJS draws in.
TOOLTIP_JS = """() => { const out = []; const walk = n => { if (n.shadowRoot) walk(n.shadowRoot);
    for (const c of n.children || []) walk(c);
    if (n.classList && n.classList.contains('bk-tooltip-content')) out.push(n.innerText); };
  walk(document.body); return out.length ? out[0] : null; }"""


def tooltip(tab) -> dict[str, str]:
    """The tooltip shown now, as {field: value}, waiting for it to appear."""
    text = tab.wait_for_function(TOOLTIP_JS).json_value()
    return dict(line.split(":\t", 1) for line in text.splitlines())
