"""A full disk while an entry is written, Ctrl-C in the middle of a build, and an edit under `mkdocs serve` while
a block is computing: the build goes on (or a later one does), and nothing in the cache lies."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from figuredata import payloads
from sites import ENV, make_site, mkdocs, tree
from test_cache_faults import METRICS, PAGE, kill_when

# `mkdocs build` with every write of the cache's files failing as a full disk does, in the write itself
FULL_DISK = """
import errno, os, sys
from mkdocs_layerheat import cache

class Full:
    def __init__(self, fd): self.fd = fd
    def __enter__(self): return self
    def __exit__(self, *exc): os.close(self.fd)
    def write(self, data): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

cache.os.fdopen = lambda fd, mode: Full(fd)
from mkdocs.__main__ import cli
cli(["build"], prog_name="mkdocs")
"""


@pytest.fixture
def site(tmp_path, llama_model) -> Path:
    return make_site(tmp_path / "site", {"index.md": PAGE}, {"tiny": str(llama_model.path)})


def test_a_full_disk_while_writing_an_entry_warns_once_and_the_build_goes_on(site):
    build = subprocess.run([sys.executable, "-c", FULL_DISK], cwd=site, capture_output=True, text=True, env=ENV)
    assert build.returncode == 0, build.stderr
    warnings = [line for line in build.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and "without caching" in warnings[0]
    html = (site / "site" / "index.html").read_text()
    assert html.count('class="layerheat-item"') == len(METRICS) and "layerheat-error" not in html
    cache = site / ".cache" / "layerheat"
    assert not list(cache.rglob("*.tmp")) and not list(cache.glob("??/*.npz"))  # no partial entry, no temp file
    assert mkdocs(site).returncode == 0
    assert len(list(cache.glob("??/*.npz"))) == len(METRICS)  # with room again, the entries are written


def test_ctrl_c_in_the_middle_of_a_build_leaves_nothing_a_later_build_trusts(site, tmp_path, llama_model):
    assert kill_when(site, lambda cache: any(cache.glob("??/*.npz")), sig=signal.SIGINT)
    cache = site / ".cache" / "layerheat"
    assert not list(cache.rglob("*.tmp"))  # the interrupted write removed its temporary file
    build = mkdocs(site)
    assert build.returncode == 0 and "Traceback" not in build.stderr, build.stderr
    clean = make_site(tmp_path / "clean", {"index.md": PAGE}, {"tiny": str(llama_model.path)})
    assert mkdocs(clean).returncode == 0
    assert tree(clean / "site") == tree(site / "site")


def test_an_edit_made_while_a_block_computes_ends_with_the_page_showing_it(site):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page = site / "docs" / "index.md"
    server = subprocess.Popen([sys.executable, "-m", "mkdocs", "serve", "--no-livereload", "-a", f"127.0.0.1:{port}"],
                              cwd=site, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def served() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                return response.read().decode()
        except OSError:
            return ""

    def edited(html: str) -> bool:
        return any("Zanzibar" in "".join(p["tokens"]) for item in payloads(html) for p in item["panels"])

    try:
        while not (site / ".cache" / "layerheat" / ".lock").exists():  # the first build is computing
            assert server.poll() is None, server.stderr.read()
            time.sleep(0.01)
        page.write_text(PAGE.replace("Text number 3:", "Text number 3, Zanzibar:"))  # edited mid-computation
        deadline = time.monotonic() + 180
        while not edited(html := served()):
            assert time.monotonic() < deadline, "the edit never reached the served page"
            time.sleep(0.2)
        assert html.count('class="layerheat-item"') == len(METRICS) and "layerheat-error" not in html
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        server.communicate()

