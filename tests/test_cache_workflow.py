"""The cache across builds: precompute, hand-over, refresh, prune, corrupt entries, models kept for serve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sites import LAYERHEAT, make_site, mkdocs, run

from mkdocs_layerheat import models, plan
from mkdocs_layerheat.spec import parse_spec

PAGE = """\
# Page

```layerheat
model: tiny
text: 'The quick dog looks back at the lazy fox.'
metric: attention
```

```layerheat
model: tiny
text: 'The model counts tokens.'
metric: hidden-norm
```
"""


def site_of(root: Path, model_path: Path) -> Path:
    return make_site(root, {"index.md": PAGE}, {"tiny": model_path})


@pytest.fixture
def site(tmp_path, llama_model) -> Path:
    model = tmp_path / "model"
    shutil.copytree(llama_model.path, model)
    return site_of(tmp_path / "site", model)


def test_precompute_then_build_is_fully_cached(site):
    result = run(site, LAYERHEAT, "precompute", "-f", "mkdocs.yml")
    assert result.returncode == 0, result.stderr
    assert "2 heatmaps, 0 cached, 2 computed" in result.stderr
    build = mkdocs(site)
    assert build.returncode == 0, build.stderr
    assert "2 heatmaps, 2 cached, 0 computed" in build.stderr


def site_files(site: Path) -> dict[Path, bytes]:
    return {p.relative_to(site / "site"): p.read_bytes() for p in (site / "site").rglob("*") if p.is_file()}


def test_an_unchanged_page_is_taken_whole_from_the_record_of_its_figures(site):
    """A build of an unchanged site looks at no block (the plan runs for none: no model line): the pages, downloads
    and static figures it writes are the first build's, byte for byte, and it still says what the cache held."""
    assert mkdocs(site).returncode == 0
    first = site_files(site)
    build = mkdocs(site)
    assert build.returncode == 0 and "2 heatmaps, 2 cached, 0 computed" in build.stderr, build.stderr
    assert "model tiny" not in build.stderr
    assert site_files(site) == first
    assert sum(1 for name in first if name.suffix == ".svg" and "figures" in name.parts) == 2


def test_a_page_is_drawn_again_when_what_its_figures_came_from_changed(tmp_path, llama_model):
    """The record of a page holds while its Markdown, its text files, its models and the site's options are those
    it was drawn from, and the cache holds its entries as they were."""
    from mkdocs_layerheat.render import template_dir

    model = tmp_path / "model"
    shutil.copytree(llama_model.path, model)
    (tmp_path / "site" / "docs").mkdir(parents=True)
    (tmp_path / "site" / "docs" / "words.txt").write_text("Seven swans swim.")
    page = PAGE + "\n```layerheat\nmodel: tiny\ntext_file: words.txt\nmetric: attention\n```\n"
    site = make_site(tmp_path / "site", {"index.md": page}, {"tiny": model})
    assert mkdocs(site).returncode == 0
    assert "3 heatmaps, 3 cached, 0 computed" in mkdocs(site).stderr

    (site / "docs" / "words.txt").write_text("Nine geese gather.")
    build = mkdocs(site)
    assert "3 heatmaps, 2 cached, 1 computed" in build.stderr, build.stderr
    texts = ["".join(json.loads(f.read_text())["tokens"]) for f in (site / "site" / "assets/layerheat/data").glob("*.json")]
    assert any("geese" in text for text in texts) and not any("swans" in text for text in texts), texts

    (model / "NOTES.md").write_text("a file more: another model as far as any cache key knows")
    assert "3 heatmaps, 0 cached, 3 computed" in mkdocs(site).stderr

    overrides = site / "overrides"
    overrides.mkdir()
    (overrides / "heatmap.html").write_text("<!-- overridden -->" + (template_dir() / "heatmap.html").read_text())
    config = site / "mkdocs.yml"
    config.write_text(config.read_text().replace("models:", "templates: overrides\n      models:"))
    build = mkdocs(site)
    assert "3 heatmaps, 3 cached, 0 computed" in build.stderr and "model tiny" in build.stderr  # planned again
    assert (site / "site" / "index.html").read_text().count("<!-- overridden -->") == 3


def test_a_page_with_a_bad_block_warns_on_every_build(tmp_path, llama_model):
    site = make_site(tmp_path, {"index.md": PAGE + "\n```layerheat\nmodel: tiny\n```\n"}, {"tiny": llama_model.path})
    for _ in range(2):
        build = mkdocs(site)
        assert build.returncode == 0 and build.stderr.count("WARNING") == 1, build.stderr
        assert f"docs/index.md:{PAGE.count(chr(10)) + 2}: missing or empty 'text'" in build.stderr
        assert (site / "site" / "index.html").read_text().count('class="layerheat-item"') == 2


def test_cache_handed_to_a_machine_without_the_model(site, tmp_path):
    assert mkdocs(site).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(site, elsewhere, ignore=shutil.ignore_patterns("site"))
    shutil.rmtree(tmp_path / "model")  # this machine does not have the weights
    build = mkdocs(elsewhere, "--strict")
    assert build.returncode == 0, build.stderr
    assert "2 cached, 0 computed" in build.stderr
    assert (elsewhere / "site" / "index.html").read_text().count('class="layerheat-item"') == 2


def test_refresh_recomputes_everything(site):
    assert mkdocs(site).returncode == 0
    build = mkdocs(site, env={"LAYERHEAT_REFRESH": "1"})
    assert "2 heatmaps, 0 cached, 2 computed" in build.stderr


def test_corrupt_entry_is_reported_once_and_recomputed(site):
    assert mkdocs(site).returncode == 0
    entries = sorted((site / ".cache" / "layerheat").glob("??/*.npz"))
    assert len(entries) == 2
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # truncated
    build = mkdocs(site)
    assert build.returncode == 0
    assert build.stderr.count("is unusable") == 1
    assert "1 cached, 1 computed" in build.stderr
    assert "1 cached, 0 computed" not in mkdocs(site).stderr  # the entry was rewritten
    assert "2 cached, 0 computed" in mkdocs(site).stderr


def test_info_and_prune(site):
    assert mkdocs(site).returncode == 0
    info = run(site, LAYERHEAT, "cache", "info")
    assert "2 heatmaps" in info.stdout and "tiny: 2" in info.stdout
    page = site / "docs" / "index.md"
    page.write_text(PAGE.split("```layerheat\nmodel: tiny\ntext: 'The model")[0])  # drop the second block
    prune = run(site, LAYERHEAT, "cache", "prune")
    assert "removed 1 unused heatmaps, kept 1" in prune.stdout, prune.stderr
    assert "1 heatmaps, 1 cached, 0 computed" in mkdocs(site).stderr
    clear = run(site, LAYERHEAT, "cache", "clear", "--yes")
    assert clear.returncode == 0 and not (site / ".cache" / "layerheat").exists()


def test_models_stay_loaded_between_builds_when_serving(tmp_path, llama_model, monkeypatch):
    loads = []
    real_load = models.load
    monkeypatch.setattr(models, "load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    settings = plan.Settings({"tiny": str(llama_model.path)}, tmp_path, tmp_path / "cache", keep_models=1)
    first = parse_spec("model: tiny\ntext: one text\nmetric: attention")
    edited = parse_spec("model: tiny\ntext: an edited text\nmetric: attention")
    try:
        assert plan.run([first], settings)[first].computed
        outcome = plan.run([first, edited], settings)
        assert outcome[edited].computed and not outcome[first].computed
        assert len(loads) == 1  # the edit reused the loaded model
        settings.keep_models = 0
        other = parse_spec("model: tiny\ntext: a third text\nmetric: attention")
        plan.run([other], settings)
        assert not plan._pool  # freed when no model is to be kept
    finally:
        plan._pool.clear()


def test_unwritable_cache_degrades_to_computing_with_one_warning(site):
    (site / "blocker").write_text("a file where the cache folder should be")
    config = site / "mkdocs.yml"
    config.write_text(config.read_text().replace("models:", "cache_dir: blocker/cache\n      models:"))
    build = mkdocs(site)
    assert build.returncode == 0, build.stderr
    assert build.stderr.count("WARNING") == 1 and "cannot write to the cache" in build.stderr
    assert (site / "site" / "index.html").read_text().count('class="layerheat-item"') == 2


def test_entry_from_another_version_is_detected_when_read_and_recomputed(site):
    import numpy as np

    assert mkdocs(site).returncode == 0
    cache_dir = site / ".cache" / "layerheat"
    entry = sorted(cache_dir.glob("??/*.npz"))[0]
    np.savez(entry.with_suffix(".tmp.npz"), values=np.zeros((1, 1)), meta=np.frombuffer(b'{"format": 0}', np.uint8))
    entry.with_suffix(".tmp.npz").replace(entry)  # a complete archive, but not an entry of this version
    shutil.rmtree(cache_dir / "rendered")  # the figure must be drawn again, so the entry is read
    build = mkdocs(site)
    assert build.returncode == 0 and build.stderr.count("is unusable") == 1, build.stderr
    assert (site / "site" / "index.html").read_text().count('class="layerheat-item"') == 2
    assert "2 heatmaps, 2 cached, 0 computed" in mkdocs(site).stderr


def test_an_entry_does_not_depend_on_the_blocks_computed_with_it(tmp_path, llama_model):
    """A value is a function of its text, model and options: computed alone, in one build with other
    texts and attention metrics, or with those in another order, its bytes are the same."""
    texts = ["The quick dog looks back.", "A lazy fox sleeps all day long in the sun.", "Tokens are counted."]
    target = parse_spec(f"model: tiny\ntext: '{texts[0]}'\nmetric: mlp-norm\n")
    others = [parse_spec(f"model: tiny\ntext: '{t}'\nmetric: {m}\n") for t in texts for m in ("attention", "hidden-norm")]
    runs = {"alone": [target], "with others": others + [target], "reversed": [target] + others[::-1]}
    values = {}
    for name, specs in runs.items():
        settings = plan.Settings(aliases={"tiny": str(llama_model.path)}, base_dir=tmp_path, cache_dir=tmp_path / name)
        values[name] = plan.run(specs, settings)[target].heatmap.values
    assert values["alone"].tobytes() == values["with others"].tobytes() == values["reversed"].tobytes()
