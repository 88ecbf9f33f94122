"""`Heatmap` normalisation and serialisation, the on-disk cache, and model fingerprints."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil

import numpy as np
import pytest

from mkdocs_layerheat import cache as cache_module
from mkdocs_layerheat import refs
from mkdocs_layerheat.cache import Cache, cache_key
from mkdocs_layerheat.heatmap import NORMALIZATIONS, Heatmap

NAN = float("nan")


def make_heatmap(values, **kwargs) -> Heatmap:
    values = np.asarray(values, dtype=np.float32)
    layers, tokens = values.shape
    defaults = dict(
        tokens=[f"t{i}" for i in range(tokens)],
        layers=list(range(1, layers + 1)),
        metric="attention",
        model="tiny",
    )
    defaults.update(kwargs)
    return Heatmap(values=values, **defaults)


def reference_minmax(values, mode):
    """Plain-Python min-max scaling of the cells in each group (whole matrix, row or column), NaN kept."""
    v = [[float(x) for x in row] for row in np.asarray(values, dtype=np.float64)]
    rows, cols = len(v), len(v[0])
    if mode == "global":
        groups = [[(r, c) for r in range(rows) for c in range(cols)]]
    elif mode == "layer":
        groups = [[(r, c) for c in range(cols)] for r in range(rows)]
    else:
        groups = [[(r, c) for r in range(rows)] for c in range(cols)]
    out = [[NAN] * cols for _ in range(rows)]
    for group in groups:
        finite = [v[r][c] for r, c in group if not math.isnan(v[r][c])]
        for r, c in group:
            if math.isnan(v[r][c]):
                continue
            lo, hi = min(finite), max(finite)
            out[r][c] = (v[r][c] - lo) / (hi - lo) if hi > lo else 0.0
    return np.array(out)


# --------------------------------------------------------------------------- normalisation

VALUES = [
    [1.0, 2.0, 3.0, 4.0],
    [10.0, NAN, 0.0, 5.0],
    [-2.0, 8.0, 8.0, NAN],
]


@pytest.mark.parametrize("mode", ["global", "layer", "token"])
def test_normalization_matches_reference(mode):
    heatmap = make_heatmap(VALUES)
    got = heatmap.normalized(mode)
    expected = reference_minmax(VALUES, mode)
    assert got.shape == (3, 4)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, equal_nan=True)


def test_normalization_by_hand():
    heatmap = make_heatmap([[0.0, 5.0], [10.0, 20.0]])
    np.testing.assert_allclose(heatmap.normalized("global"), [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(heatmap.normalized("layer"), [[0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(heatmap.normalized("token"), [[0.0, 0.0], [1.0, 1.0]])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("mode", ["global", "layer", "token"])
def test_normalization_random_matrices(mode, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(scale=10 ** rng.uniform(-3, 3), size=(rng.integers(1, 6), rng.integers(1, 9)))
    values[rng.random(values.shape) < 0.15] = np.nan
    got = make_heatmap(values).normalized(mode)
    expected = reference_minmax(values.astype(np.float32), mode)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, equal_nan=True)
    finite = got[~np.isnan(got)]
    assert np.all((finite >= 0) & (finite <= 1))


def test_none_returns_raw_values_as_a_copy():
    heatmap = make_heatmap(VALUES)
    got = heatmap.normalized("none")
    np.testing.assert_array_equal(got, np.array(VALUES, dtype=np.float32))
    got[0, 0] = 99
    assert heatmap.values[0, 0] == 1.0


def test_constant_and_all_nan_groups(recwarn):
    heatmap = make_heatmap([[3.0, 3.0, NAN], [NAN, NAN, NAN]])
    np.testing.assert_array_equal(heatmap.normalized("layer"), [[0.0, 0.0, NAN], [NAN, NAN, NAN]])
    np.testing.assert_array_equal(heatmap.normalized("global"), [[0.0, 0.0, NAN], [NAN, NAN, NAN]])
    np.testing.assert_array_equal(heatmap.normalized("token"), [[0.0, 0.0, NAN], [NAN, NAN, NAN]])
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]  # all-NaN groups are expected


def test_unknown_normalization_raises():
    with pytest.raises(KeyError):
        make_heatmap(VALUES).normalized("minmax")
    assert NORMALIZATIONS == ("none", "global", "layer", "token")


def test_shape_is_checked():
    with pytest.raises(ValueError, match="shape"):
        make_heatmap([[1.0, 2.0]], tokens=["a", "b", "c"])
    with pytest.raises(ValueError):
        make_heatmap([[1.0, 2.0]], special=[True])
    assert make_heatmap([[1.0, 2.0]]).special == [False, False]


# --------------------------------------------------------------------------- serialisation


def test_to_dict_from_dict_round_trip_through_json():
    heatmap = make_heatmap(
        VALUES,
        tokens=["<s>", " café", "\n", "😀"],
        special=[True, False, False, False],
        metric="hidden-norm",
        model="smollm2",
        provenance={"text": " café\n😀", "token_ids": [1, 2, 3, 4]},
    )
    data = json.loads(heatmap.to_json())
    assert data["values"][1][1] is None and data["values"][2][3] is None
    assert data["values"][1][0] == 10.0
    assert (data["normalize"], data["metric"], data["model"]) == ("none", "hidden-norm", "smollm2")
    back = Heatmap.from_dict(data)
    np.testing.assert_array_equal(back.values, heatmap.values)
    assert back.values.dtype == np.float32
    assert (back.tokens, back.layers, back.special) == (heatmap.tokens, heatmap.layers, heatmap.special)
    assert (back.metric, back.model, back.provenance) == (heatmap.metric, heatmap.model, heatmap.provenance)


def test_to_dict_is_exact_for_float32_values():
    values = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    back = Heatmap.from_dict(json.loads(make_heatmap(values).to_json()))
    np.testing.assert_array_equal(back.values, values)


def test_to_dict_normalized_values():
    heatmap = make_heatmap(VALUES)
    data = heatmap.to_dict("layer")
    assert data["normalize"] == "layer"
    got = np.array([[NAN if x is None else x for x in row] for row in data["values"]])
    np.testing.assert_allclose(got, reference_minmax(VALUES, "layer"), rtol=1e-6, equal_nan=True)


def test_from_dict_fills_in_defaults():
    back = Heatmap.from_dict({"tokens": ["a", "b"], "layers": [1], "values": [[0.5, None]]})
    assert (back.metric, back.model, back.special, back.provenance) == ("unknown", "unknown", [False, False], {})
    assert back.values[0, 0] == 0.5 and np.isnan(back.values[0, 1])


# --------------------------------------------------------------------------- cache


@pytest.fixture
def heatmap():
    return make_heatmap(
        VALUES,
        tokens=["<s>", " naïve", "\t", "x"],
        special=[True, False, False, False],
        metric="attention",
        model="tiny",
        provenance={"text": "naïve\tx", "token_ids": [0, 7, 9, 11]},
    )


def assert_same_heatmap(a: Heatmap, b: Heatmap):
    np.testing.assert_array_equal(a.values, b.values)  # NaN == NaN here
    assert a.values.dtype == b.values.dtype == np.float32
    assert (a.tokens, a.layers, a.special) == (b.tokens, b.layers, b.special)
    assert (a.metric, a.model, a.provenance) == (b.metric, b.model, b.provenance)


def test_cache_round_trip(tmp_path, heatmap):
    problems = []
    cache = Cache(tmp_path / "cache", warn=problems.append)
    key = cache_key("local:abc", "naïve\tx", "attention")
    assert cache.get(key) is None
    cache.put(key, heatmap)
    assert_same_heatmap(Cache(tmp_path / "cache").get(key), heatmap)
    assert problems == []
    # one file per entry, nothing temporary left behind
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert [p.name for p in files] == [f"{key}.npz"]


def test_cache_put_overwrites(tmp_path, heatmap):
    cache = Cache(tmp_path)
    key = cache_key("fp", "t", "attention")
    cache.put(key, make_heatmap([[1.0]]))
    cache.put(key, heatmap)
    assert_same_heatmap(cache.get(key), heatmap)


def test_cache_key_is_deterministic_and_hex():
    key = cache_key("local:abc", "some text", "attention")
    assert key == cache_key("local:abc", "some text", "attention")
    assert len(key) == 64 and int(key, 16) >= 0


@pytest.mark.parametrize(
    "other",
    [
        ("local:abd", "some text", "attention"),
        ("local:abc", "some text ", "attention"),
        ("local:abc", "Some text", "attention"),
        ("local:abc", "some text", "hidden-norm"),
    ],
)
def test_cache_key_differs(other):
    assert cache_key("local:abc", "some text", "attention") != cache_key(*other)


def test_cache_key_depends_on_library_versions(monkeypatch):
    before = cache_key("fp", "t", "attention")
    versions = cache_module.library_versions()
    monkeypatch.setattr(cache_module, "library_versions", lambda: {**versions, "transformers": "0.0.0"})
    assert cache_key("fp", "t", "attention") != before


@pytest.mark.parametrize("package", ["mkdocs-layerheat", "transformers", "torch", "bokeh", "numpy", "PyYAML"])
def test_installed_versions_are_those_importlib_metadata_gives(package):
    from importlib.metadata import version

    assert cache_module.installed_version(package) == version(package)


def test_a_package_that_is_not_installed_has_version_none():
    assert cache_module.installed_version("no-such-distribution-anywhere") == "none"


def test_cache_key_field_boundaries_are_unambiguous():
    assert cache_key("a", "bc", "attention") != cache_key("ab", "c", "attention")


def _entry(cache: Cache, key: str):
    paths = list(cache.directory.rglob(f"{key}.npz"))
    assert len(paths) == 1
    return paths[0]


def test_truncated_entry_is_a_miss_with_a_problem(tmp_path, heatmap):
    problems = []
    cache = Cache(tmp_path, warn=problems.append)
    key = cache_key("fp", "t", "attention")
    cache.put(key, heatmap)
    path = _entry(cache, key)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert cache.get(key) is None
    assert len(problems) == 1 and path.name in problems[0]


@pytest.mark.parametrize("content", [b"", b"garbage, not a zip file", b"PK\x03\x04" + b"\x00" * 40])
def test_garbage_entry_is_a_miss_with_a_problem(tmp_path, heatmap, content):
    problems = []
    cache = Cache(tmp_path, warn=problems.append)
    key = cache_key("fp", "t", "attention")
    cache.put(key, heatmap)
    _entry(cache, key).write_bytes(content)
    assert cache.get(key) is None
    assert not cache.has(key)
    assert cache.get(key) is None
    assert len(problems) == 1  # said once, however often it is looked at
    # a fresh put repairs it; a later fault is said again
    cache.put(key, heatmap)
    assert_same_heatmap(cache.get(key), heatmap)
    _entry(cache, key).write_bytes(content)
    assert cache.get(key) is None and len(problems) == 2


def test_entry_stored_under_another_key_is_rejected(tmp_path, heatmap):
    problems = []
    cache = Cache(tmp_path, warn=problems.append)
    key, other = cache_key("fp", "t", "attention"), cache_key("fp", "t", "hidden-norm")
    cache.put(key, heatmap)
    target = tmp_path / other[:2] / f"{other}.npz"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(_entry(cache, key), target)
    assert cache.get(other) is None
    assert len(problems) == 1


def test_npz_with_wrong_contents_is_rejected(tmp_path):
    problems = []
    cache = Cache(tmp_path, warn=problems.append)
    key = cache_key("fp", "t", "attention")
    path = tmp_path / key[:2] / f"{key}.npz"
    path.parent.mkdir(parents=True)
    meta = {"format": 1, "key": key, "tokens": ["a", "b"], "layers": [1], "metric": "m", "model": "x"}
    encoded = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, values=np.zeros((1, 3), dtype=np.float32), meta=encoded)  # 3 values for 2 tokens
    assert cache.get(key) is None
    assert len(problems) == 1


def test_cache_lock(tmp_path):
    cache = Cache(tmp_path / "new")
    with cache.lock():
        assert (tmp_path / "new").is_dir()


# --------------------------------------------------------------------------- fingerprints


@pytest.fixture
def model_dir(tmp_path):
    root = tmp_path / "model"
    root.mkdir()
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    (root / "tokenizer.json").write_text('{"vocab": {}}')
    return root


def test_fingerprint_of_local_dir(model_dir):
    ref = refs.resolve(str(model_dir))
    first = refs.fingerprint(ref)
    assert first.startswith("local:")
    assert refs.fingerprint(ref) == first
    # content-addressed: the same files elsewhere give the same fingerprint
    copy = shutil.copytree(model_dir, model_dir.parent / "elsewhere")
    assert refs.fingerprint(refs.resolve(str(copy))) == first


def _touch_later(path, content: bytes):
    stat = path.stat()
    path.write_bytes(content)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize("use_memo", [False, True])
def test_fingerprint_changes_when_a_file_changes(model_dir, tmp_path, use_memo):
    memo = tmp_path / "memo" / "fingerprints.json" if use_memo else None
    ref = refs.resolve(str(model_dir))
    seen = {refs.fingerprint(ref, memo)}

    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF  # same size, different content
    _touch_later(weights, bytes(data))
    seen.add(refs.fingerprint(ref, memo))
    assert len(seen) == 2

    _touch_later(model_dir / "config.json", b'{"model_type": "llama", "x": 1}')
    seen.add(refs.fingerprint(ref, memo))
    assert len(seen) == 3

    (model_dir / "sub").mkdir()
    (model_dir / "sub" / "extra.bin").write_bytes(b"new file")
    seen.add(refs.fingerprint(ref, memo))
    assert len(seen) == 4

    (model_dir / "sub" / "extra.bin").rename(model_dir / "sub" / "renamed.bin")
    seen.add(refs.fingerprint(ref, memo))
    assert len(seen) == 5


def test_fingerprint_ignores_hidden_files(model_dir):
    ref = refs.resolve(str(model_dir))
    before = refs.fingerprint(ref)
    (model_dir / ".DS_Store").write_bytes(b"junk")
    assert refs.fingerprint(ref) == before


def test_fingerprint_memo_file_is_used(model_dir, tmp_path, monkeypatch):
    memo = tmp_path / "cache" / "fingerprints.json"
    ref = refs.resolve(str(model_dir))
    without = refs.fingerprint(ref)
    with_memo = refs.fingerprint(ref, memo)
    assert with_memo == without

    # the memo records each file's SHA-256 under its path, size and mtime
    recorded = json.loads(memo.read_text())
    expected = {hashlib.sha256(p.read_bytes()).hexdigest() for p in model_dir.iterdir()}
    assert set(recorded.values()) == expected
    assert all(str(model_dir.resolve()) in stamp for stamp in recorded)

    # a second call hashes nothing
    calls = []
    real = refs._sha256
    monkeypatch.setattr(refs, "_sha256", lambda path: calls.append(path) or real(path))
    assert refs.fingerprint(ref, memo) == with_memo
    assert calls == []

    # and what it returns comes from the memo: a doctored memo changes the fingerprint
    memo.write_text(json.dumps({stamp: "0" * 64 for stamp in recorded}))
    assert refs.fingerprint(ref, memo) != with_memo
    assert calls == []

    # a file whose mtime changed is hashed again
    weights = model_dir / "model.safetensors"
    _touch_later(weights, weights.read_bytes())
    refs.fingerprint(ref, memo)
    assert [p.name for p in calls] == ["model.safetensors"]


def test_fingerprint_with_a_broken_memo_file(model_dir, tmp_path):
    memo = tmp_path / "fingerprints.json"
    memo.write_text("{not json")
    ref = refs.resolve(str(model_dir))
    assert refs.fingerprint(ref, memo) == refs.fingerprint(ref)
    json.loads(memo.read_text())  # rewritten


def test_fingerprint_of_gguf_file(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\x00" * 64)
    ref = refs.resolve("m.gguf", base_dir=tmp_path)
    assert (ref.kind, ref.location) == ("gguf", str(gguf.resolve()))
    first = refs.fingerprint(ref)
    assert first.startswith("gguf:")
    _touch_later(gguf, b"GGUF" + b"\x01" * 64)
    assert refs.fingerprint(ref) != first


def test_fingerprint_of_hub_model_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    assert refs.fingerprint(refs.resolve(f"owner/name@{commit}")) == f"hub:owner/name@{commit}"

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    pointers = tmp_path / "models--owner--name" / "refs"
    pointers.mkdir(parents=True)
    (pointers / "main").write_text(commit + "\n")
    assert refs.fingerprint(refs.resolve("owner/name")) == f"hub:owner/name@{commit}"
    with pytest.raises(refs.ModelError, match="not in the local cache"):
        refs.fingerprint(refs.resolve("owner/other"))


def test_every_module_that_computes_values_is_part_of_the_cache_key():
    """A change to the code that computes the numbers (whatever runs torch) invalidates the entries it made."""
    import re
    from pathlib import Path

    from mkdocs_layerheat import cache

    package = Path(cache.__file__).parent
    computing = {p.name for p in package.glob("*.py") if re.search(r"^\s*(import torch|from torch)", p.read_text(), re.M)}
    assert computing and computing <= {p.name for p in cache.NUMERIC_SOURCES}
    assert all(p.is_file() for p in cache.NUMERIC_SOURCES)
