"""Precompute spread over a CI matrix: `precompute --shard I/N` computes a deterministic share of the misses,
each model on as few shards as possible, and `cache merge` folds the shards' caches into one, refusing entries
that are not what their key says."""

from __future__ import annotations

import shutil

from sites import LAYERHEAT, mkdocs, run
from test_cache_workflow import site_of

from mkdocs_layerheat import plan
from mkdocs_layerheat.spec import parse_spec

TEXTS = ["One fox.", "Two lazy dogs.", "Three quick foxes look back.", "Four.", "The fifth text is here."]


def specs_for(models: dict[str, int]) -> list:
    """Per model alias, that many texts, two metrics each (two specs that differ only in title share a key)."""
    out = []
    for alias, n in models.items():
        for text in TEXTS[:n]:
            for metric in ("attention", "hidden-norm"):
                out.append(parse_spec(f"model: {alias}\ntext: '{text}'\nmetric: {metric}"))
        out.append(parse_spec(f"model: {alias}\ntext: '{TEXTS[0]}'\nmetric: attention\ntitle: again"))
    return out


def test_shards_split_the_misses_once_each_keeping_models_together(tmp_path, llama_model, gpt2_model):
    settings = plan.Settings({"a": str(llama_model.path), "b": str(gpt2_model.path)}, tmp_path, tmp_path / "cache")
    specs = specs_for({"a": 5, "b": 2})  # 10 keys of a, 4 of b
    found = plan.keys_for(specs, settings)
    shards = [plan.shard(specs, settings, i, 3) for i in (1, 2, 3)]
    assert shards == [plan.shard(specs, settings, i, 3) for i in (1, 2, 3)]  # deterministic
    keys = [{found.keys[s] for s in shard} for shard in shards]
    assert sorted(len(k) for k in keys) == [4, 5, 5]  # 14 keys, almost equal shares
    assert set.union(*keys) == set(found.keys.values()) and sum(map(len, keys)) == 14  # each once
    models = [{found.refs[s].name for s in shard} for shard in shards]
    assert [sorted(m) for m in models] == [["a"], ["a"], ["a", "b"]]  # a, the larger, first; b on one shard
    same_key = [s for s in specs if s.title == "again"]
    assert all(any(s in shard for shard in shards) for s in same_key)  # with the spec it shares its key with
    assert set(plan.shard(specs, settings, 1, 1)) == set(specs)


def test_a_matrix_of_shards_then_merge_then_build_is_fully_cached(tmp_path, llama_model):
    site = site_of(tmp_path / "site", llama_model.path)
    jobs = []
    for i in (1, 2):
        job = tmp_path / f"job{i}"
        shutil.copytree(site, job)
        result = run(job, LAYERHEAT, "precompute", "-f", "mkdocs.yml", "--shard", f"{i}/2")
        assert result.returncode == 0, result.stderr
        assert f"shard {i}/2: 1 heatmaps to compute" in result.stderr and "1 computed" in result.stderr
        jobs.append(job / ".cache" / "layerheat")
    merged = run(site, LAYERHEAT, "cache", "merge", "-f", "mkdocs.yml", *map(str, jobs))
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout.count("1 heatmaps added, 0 already there") == 2
    build = mkdocs(site)
    assert build.returncode == 0 and "2 heatmaps, 2 cached, 0 computed" in build.stderr, build.stderr
    again = run(site, LAYERHEAT, "cache", "merge", "-f", "mkdocs.yml", str(jobs[0]))
    assert "0 heatmaps added, 1 already there" in again.stdout


def test_merge_refuses_entries_that_are_not_what_their_key_says(tmp_path, llama_model):
    site = site_of(tmp_path / "site", llama_model.path)
    job = tmp_path / "job"
    shutil.copytree(site, job)
    assert run(job, LAYERHEAT, "precompute", "-f", "mkdocs.yml").returncode == 0
    entries = sorted((job / ".cache" / "layerheat").glob("??/*.npz"))
    assert len(entries) == 2
    moved = entries[0].parent / ("f" * 64 + ".npz")  # an entry under another key
    entries[0].rename(moved)
    entries[1].write_bytes(entries[1].read_bytes()[:100])  # a truncated one
    result = run(site, LAYERHEAT, "cache", "merge", "-f", "mkdocs.yml", str(job / ".cache" / "layerheat"))
    assert result.returncode == 1 and "0 heatmaps added" in result.stdout and "2 refused" in result.stdout
    assert result.stderr.count("refused: ") == 2
    assert not list((site / ".cache" / "layerheat").glob("??/*.npz"))  # nothing that is not what it says
    build = mkdocs(site)
    assert build.returncode == 0 and "2 computed" in build.stderr, build.stderr


def test_precompute_tells_its_progress_per_heatmap_with_the_model(tmp_path, llama_model):
    settings = plan.Settings({"tiny": str(llama_model.path)}, tmp_path, tmp_path / "cache")
    specs = specs_for({"tiny": 2})  # 4 keys, 5 specs
    events = []
    token = plan.PROGRESS.set(lambda event, value: events.append((event, value)))
    try:
        plan.run(specs, settings)
    finally:
        plan.PROGRESS.reset(token)
    assert events[0] == ("misses", 5) and ("model", "tiny") in events
    assert sum(value for event, value in events if event == "done") == 5


def test_precompute_on_a_terminal_draws_a_progress_bar(tmp_path, llama_model):
    import os
    import pty
    import subprocess

    site = site_of(tmp_path / "site", llama_model.path)
    leader, follower = pty.openpty()
    process = subprocess.run([LAYERHEAT, "precompute", "-f", "mkdocs.yml"], cwd=site, stderr=follower,
                             stdout=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "COLUMNS": "100"}, timeout=300)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    text = output.decode("utf-8", "replace")
    assert process.returncode == 0, text
    assert "2/2" in text and "tiny" in text  # the bar, labelled with the model, at its end
