"""Issue 7: a build killed mid-computation, and two builds at once, never leave the cache lying."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from sites import make_site, mkdocs, popen, tree

METRICS = ("attention", "hidden-norm", "logit-lens", "attention-from", "mlp-norm", "logit-lens-rank")
PAGE = "# Page\n\n" + "".join(
    f"```layerheat\nmodel: tiny\ntext: 'Text number {i}: the quick dog looks back at the lazy fox {i} times.'\n"
    f"metric: {metric}\n```\n\n"
    for i, metric in enumerate(METRICS)
)


@pytest.fixture
def site(tmp_path, llama_model) -> Path:
    return make_site(tmp_path / "site", {"index.md": PAGE}, {"tiny": str(llama_model.path)})


def kill_when(site: Path, ready, limit: float = 60.0, sig: int = signal.SIGKILL) -> bool:
    """Start a build, send it `sig` once `ready(cache_dir)` holds; whether that ended it (False: it finished first)."""
    cache = site / ".cache" / "layerheat"
    process = popen(site, "-d", str(site / "killed-site"))
    deadline = time.monotonic() + limit
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if ready(cache):
                process.send_signal(sig)
                process.wait()
                return process.returncode != 0
            time.sleep(0.005)
        return False
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_build_killed_while_computing_leaves_nothing_a_later_build_trusts(site, tmp_path, llama_model):
    # killed while loading the model or computing (the lock is held), then once the first entries are written
    assert kill_when(site, lambda cache: (cache / ".lock").exists())
    assert kill_when(site, lambda cache: any(cache.glob("??/*.npz")) or any(cache.glob("??/*.tmp")))
    build = mkdocs(site)
    assert build.returncode == 0, build.stderr
    assert "Traceback" not in build.stderr
    html = (site / "site" / "index.html").read_text()
    assert html.count('class="layerheat-item"') == len(METRICS), build.stderr
    assert "layerheat-error" not in html
    # the figures equal those of a clean build on a fresh cache
    clean = make_site(tmp_path / "clean", {"index.md": PAGE}, {"tiny": str(llama_model.path)})
    fresh = mkdocs(clean)
    assert fresh.returncode == 0, fresh.stderr
    assert tree(clean / "site") == tree(site / "site")
    assert f"{len(METRICS)} heatmaps, {len(METRICS)} cached, 0 computed" in mkdocs(site).stderr


def test_two_builds_at_once_on_one_cache_agree(site):
    first, second = (popen(site, "-d", str(site / name)) for name in ("site-a", "site-b"))
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert first.returncode == 0, outputs[0][1]
    assert second.returncode == 0, outputs[1][1]
    for _, stderr in outputs:
        assert "Traceback" not in stderr and "WARNING" not in stderr, stderr
    a, b = tree(site / "site-a"), tree(site / "site-b")
    assert a.keys() == b.keys()
    assert [name for name in a if a[name] != b[name]] == []
    assert a["index.html"].decode().count('class="layerheat-item"') == len(METRICS)
    assert f"{len(METRICS)} heatmaps, {len(METRICS)} cached, 0 computed" in mkdocs(site).stderr
