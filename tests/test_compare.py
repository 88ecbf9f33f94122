"""`compare:` blocks: the spec, the shared scale and the difference against loop-form references, the
summary's claims, and real `mkdocs build` runs with two tiny models and two texts."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
from figuredata import payloads, raw, shown
from sites import make_site, mkdocs

from mkdocs_layerheat.compare import IDENTICAL, difference, shared_scale, side_names
from mkdocs_layerheat.heatmap import Heatmap
from mkdocs_layerheat.render import Renderer
from mkdocs_layerheat.spec import HeatmapSpec, SpecError, parse_spec


def heatmap(values, tokens=None, layers=None) -> Heatmap:
    values = np.asarray(values, dtype=np.float32)
    tokens = tokens or [f"t{i}" for i in range(values.shape[1])]
    return Heatmap(values, tokens, layers or list(range(1, values.shape[0] + 1)), "hidden-norm", "m")


# --- the spec -------------------------------------------------------------------------------------

def test_compare_block_has_two_sides_sharing_everything_but_model_or_text():
    spec = parse_spec("model: a\ntext: one\nmetric: hidden-norm\ntitle: T\ncompare:\n  model: b\n")
    first, second = spec.sides()
    assert first == HeatmapSpec(model="a", text="one", metric="hidden-norm", title="T")
    assert second == HeatmapSpec(model="b", text="one", metric="hidden-norm", title="T")
    assert parse_spec("model: a\ntext: one\n").sides() == (parse_spec("model: a\ntext: one\n"),)


def test_compare_text_file_replaces_the_text(tmp_path):
    (tmp_path / "other.txt").write_text("another text")
    spec = parse_spec("model: a\ntext: one\ncompare:\n  text_file: other.txt\n", tmp_path)
    assert spec.compare.text == "another text" and spec.compare.text_file == "other.txt"


@pytest.mark.parametrize("body, message", [
    ("compare: b\n", "'compare' must be a mapping"),
    ("compare: {}\n", "'compare' must be a mapping"),
    ("compare:\n  metric: attention\n", "'compare' cannot set 'metric'"),
    ("compare:\n  modle: b\n", "did you mean 'model'?"),
    ("compare:\n  text: one\n", "the same model and text"),
    ("compare:\n  text: ''\n", "in 'compare': missing or empty 'text'"),
    ("compare:\n  text_file: ../x.txt\n", "in 'compare': 'text_file' '../x.txt' is outside docs_dir"),
])
def test_bad_compare_is_an_error_at_the_compare_key(tmp_path, body, message):
    with pytest.raises(SpecError) as error:
        parse_spec("model: a\ntext: one\n" + body, tmp_path)
    assert message in str(error.value) and error.value.line == 3


# --- the shared scale and the difference, against loops ---------------------------------------------

def test_shared_scale_against_loops():
    rng = np.random.default_rng(0)
    a, b = heatmap(rng.normal(size=(4, 5))), heatmap(3 + rng.normal(size=(4, 7)))
    cells = [float(x) for h in (a, b) for row in h.values for x in row]
    lo, hi = min(cells), max(cells)
    va, vb = shared_scale(a, b, "global")
    for h, v in ((a, va), (b, vb)):
        for i in range(4):
            for j in range(h.values.shape[1]):
                assert v[i, j] == pytest.approx((float(h.values[i, j]) - lo) / (hi - lo), abs=1e-6)
    va, vb = shared_scale(a, b, "layer")
    for i in range(4):
        row = [float(x) for x in a.values[i]] + [float(x) for x in b.values[i]]
        expected = [(x - min(row)) / (max(row) - min(row)) for x in row]
        assert list(va[i]) + list(vb[i]) == pytest.approx(expected, abs=1e-6)
    assert np.array_equal(shared_scale(a, b, "token")[1], b.normalized("token"))
    assert np.array_equal(shared_scale(a, b, "none")[0], a.values)
    deeper = heatmap(rng.normal(size=(6, 5)))  # other layers: global still shared, layer each its own
    va, vd = shared_scale(a, deeper, "global")
    assert np.nanmin(np.concatenate([va.ravel(), vd.ravel()])) == 0 and np.nanmax(np.concatenate([va.ravel(), vd.ravel()])) == 1
    assert np.array_equal(shared_scale(a, deeper, "layer")[1], deeper.normalized("layer"))


def planted(seed: int, band: tuple[int, int], token: int, size: float = 0.6):
    """(a) noise; (b) the same plus a bump over `band` (rows) at `token`, and small noise elsewhere."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 1, size=(12, 8))
    b = a + rng.normal(0, 0.01, size=a.shape)
    b[band[0]:band[1] + 1, token] += size
    return heatmap(a), heatmap(b)


@pytest.mark.parametrize("seed", range(20))
def test_difference_finds_a_planted_band_and_token(seed):
    rng = np.random.default_rng(100 + seed)
    first = int(rng.integers(0, 9))
    band, token = (first, first + int(rng.integers(0, 3))), int(rng.integers(1, 8))
    a, b = planted(seed, band, token)
    va, vb = shared_scale(a, b, "none")
    d = difference(a, b, va, vb)
    assert (d.band[0], d.band[1]) == (band[0] + 1, band[1] + 1)  # layers are 1-based
    assert d.tokens[0].index == token
    assert band[0] + 1 <= d.tokens[0].peak_layer <= band[1] + 1 and d.tokens[0].peak > 0.4


def test_difference_against_loops():
    rng = np.random.default_rng(7)
    a = heatmap(rng.uniform(size=(5, 6)), tokens=["x", "y", "z", "w", "v", "u"])
    b = heatmap(a.values + rng.normal(0, 0.2, size=(5, 6)), tokens=["x", "y", "Z", "w", "v", "u"])
    b.values[:, 0] = a.values[:, 0]  # the first column agrees everywhere
    va, vb = shared_scale(a, b, "global")
    d = difference(a, b, va, vb)
    delta = [[float(vb[i, j]) - float(va[i, j]) for j in range(6)] for i in range(5)]
    flat = [x for row in delta for x in row]
    tiny = IDENTICAL * (max(map(float, np.concatenate([va.ravel(), vb.ravel()]))) - min(map(float, np.concatenate([va.ravel(), vb.ravel()]))))
    assert d.largest == pytest.approx(max(abs(x) for x in flat), abs=1e-6)
    assert d.mean_abs == pytest.approx(sum(abs(x) for x in flat) / 30, abs=1e-6)
    assert d.mean == pytest.approx(sum(flat) / 30, abs=1e-6)
    assert d.higher_share == pytest.approx(sum(x > tiny for x in flat) / 30)
    assert d.lower_share == pytest.approx(sum(x < -tiny for x in flat) / 30)
    assert d.changed == [2] and d.first_position == 1
    per_layer = [sum(abs(x) for x in row) / 6 for row in delta]
    top = max(range(5), key=per_layer.__getitem__)
    assert d.band[0] <= top + 1 <= d.band[1]
    inside = range(d.band[0] - 1, d.band[1])
    assert all(per_layer[i] >= 0.5 * per_layer[top] for i in inside)
    for edge in (d.band[0] - 2, d.band[1]):  # the layers just outside the band fall below half
        assert edge < 0 or edge > 4 or per_layer[edge] < 0.5 * per_layer[top]
    per_token = [sum(abs(delta[i][j]) for i in range(5)) / 5 for j in range(6)]
    ranked = sorted((j for j in range(6) if per_token[j] > d.mean_abs), key=lambda j: -per_token[j])[:3]
    assert [t.index for t in d.tokens] == ranked
    for t in d.tokens:
        column = [delta[i][t.index] for i in range(5)]
        peak = max(range(5), key=lambda i: abs(column[i]))
        assert (t.peak_layer, t.peak) == (peak + 1, pytest.approx(column[peak], abs=1e-6))
        assert t.mean_abs == pytest.approx(per_token[t.index], abs=1e-6)


def test_unaligned_and_identical_pairs():
    a = heatmap([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    longer = heatmap([[1, 2, 3, 4], [3, 4, 5, 6], [9, 9, 9, 9]])
    d = difference(a, longer, *shared_scale(a, longer, "global"))
    assert d.values is None and d.peak_layers == (3, 3)
    ma, mb = a.values.mean(axis=1), longer.values.mean(axis=1)
    assert d.profile_r == pytest.approx(float(np.corrcoef(ma, mb)[0, 1]), abs=1e-6)
    same = difference(a, a, *shared_scale(a, a, "global"))
    assert same.identical and same.largest == 0 and not same.tokens and same.band is None
    other_text = heatmap(a.values, tokens=["p", "q", "r"])  # every token differs: not a pair of one text
    assert difference(a, other_text, *shared_scale(a, other_text, "global")).values is None


def test_side_names_say_what_differs():
    one = HeatmapSpec("base", "The trophy didn't fit in the suitcase because it was too big.")
    assert side_names(one, HeatmapSpec("instruct", one.text)) == ("base", "instruct")
    names = side_names(one, HeatmapSpec("base", one.text.replace("big", "small")))
    assert names == ("“…suitcase because it was too big.”", "“…suitcase because it was too small.”")
    assert side_names(HeatmapSpec("m", "a b"), HeatmapSpec("n", "c d")) == ("m on “a b”", "n on “c d”")


# --- the summary states what the difference holds ----------------------------------------------------

def summary_of(a, b, normalize="none"):
    va, vb = shared_scale(a, b, normalize)
    d = difference(a, b, va, vb)
    text = Renderer().narrative.comparison(a, b, d, (a.tokens, b.tokens), ("a", "b"), normalize)
    return d, text


def test_summary_claims_match_the_difference():
    a, b = planted(3, (4, 6), 5)
    b.tokens[2] = "changed"
    d, text = summary_of(a, b)
    assert "The texts differ at position 2: `t2` → `changed`." in text
    assert f"most at layers {d.band[0]}–{d.band[1]}, by {d.band[2]:.2f} on average" in text
    assert f"the largest difference in one cell is {d.largest:.2f}" in text
    (t,) = d.tokens  # one token stands out: named in apposition (never "is `is`")
    assert f"The token that changes most, `t5`, differs by {t.mean_abs:.2f} on average and by +{t.peak:.2f} at " \
           f"layer {t.peak_layer}." in text
    percents = [int(p) for p in re.findall(r"(\d+)% of the cells and lower in (\d+)%", text)[0]]
    assert percents == [round(100 * d.higher_share), round(100 * d.lower_share)]
    _, same = summary_of(a, a)
    assert "The two are identical: no cell differs." in same


def test_summary_of_unaligned_pair_names_both_peaks():
    a = heatmap([[1, 1], [5, 5], [2, 2]])
    b = heatmap([[1, 1, 1], [2, 2, 2], [6, 6, 6]], tokens=["x", "y", "z"])
    _, text = summary_of(a, b, "global")
    assert "(2 and 3 tokens), so no difference is drawn" in text
    assert "highest at layer 2 in (a) and at layer 3 in (b)" in text
    _, text = summary_of(a, b, "layer")
    assert "depth profiles are not compared" in text and "highest at layer" not in text


def test_token_labels_in_the_summary_are_code_spans():
    a = heatmap([[0, 1], [1, 0]], tokens=["<script>", "x"])
    b = heatmap([[0, 1], [1, 5]], tokens=["`{{ 7*7 }}`", "x"])
    text = Renderer().narrative.comparison(a, b, difference(a, b, *shared_scale(a, b, "none")), (a.tokens, b.tokens), ("<b>", "c"), "none")
    assert "`<script>` → `` `{{ 7*7 }}` ``" in text and "`<b>`" in text


# --- real builds -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_llama(llama_model, tmp_path_factory) -> Path:
    """The tiny Llama with its second layer's attention and MLP weights changed: another model, same tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("other-llama")
    model = AutoModelForCausalLM.from_pretrained(llama_model.path)
    torch.manual_seed(9)
    with torch.no_grad():
        for param in model.model.layers[1].parameters():
            param.add_(0.5 * torch.randn_like(param))
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(llama_model.path).save_pretrained(path)
    return path


PAGE = """\
# Compare

```layerheat
model: base
text: 'The quick dog looks back at the lazy fox.'
metric: hidden-norm
title: Two models
compare:
  model: other
```

```layerheat
model: base
text: 'The quick dog looks back.'
metric: attention
compare:
  text: 'A lazy fox sleeps all day long in the sun.'
```

```layerheat
model: base
text: 'The quick dog.'
compare:
  model: nosuch
```
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory, llama_model, other_llama):
    root = make_site(tmp_path_factory.mktemp("compare-site"), {"index.md": PAGE},
                     {"base": llama_model.path, "other": other_llama})
    result = mkdocs(root)
    assert result.returncode == 0, result.stderr
    return root, result, (root / "site" / "index.html").read_text()


def test_two_models_three_panels_on_one_scale_and_their_difference(built):
    root, _, page = built
    figure = page.split('id="layerheat-1-figure"')[1].split("</figure>")[0]
    (item,) = payloads(figure)
    scales = [tuple(p["scale"]) for p in item["panels"]]
    assert len(scales) == 3 and scales[:2] == [(0.0, 1.0), (0.0, 1.0)]
    shown_a, shown_b, shown_d = (shown(p) for p in item["panels"])
    raw_d = raw(item["panels"][2])
    links = re.findall(r'href="([^"]+)\.json"', figure)
    a, b = (Heatmap.from_dict(json.loads((root / "site" / (link + ".json")).read_text())) for link in links)
    assert a.model != b.model and a.tokens == b.tokens
    lo = min(float(np.nanmin(a.values)), float(np.nanmin(b.values)))
    hi = max(float(np.nanmax(a.values)), float(np.nanmax(b.values)))
    np.testing.assert_allclose(shown_a.reshape(a.values.shape), (a.values - lo) / (hi - lo), atol=1e-6)
    np.testing.assert_allclose(shown_b.reshape(b.values.shape), (b.values - lo) / (hi - lo), atol=1e-6)
    np.testing.assert_allclose(shown_d.reshape(a.values.shape), (b.values - a.values) / (hi - lo), atol=1e-5)
    np.testing.assert_allclose(raw_d.reshape(a.values.shape), b.values - a.values, atol=1e-4)
    span = float(np.abs(shown_d).max())
    assert scales[2] == pytest.approx((-span, span))
    assert not np.allclose(a.values, b.values)
    text = html.unescape(re.sub(r"<[^>]+>", "", figure))
    assert "(a) base against (b) other." in text and "differs from (a) most at layer" in text
    assert "Summaries of (a) and (b)" in text and "scaled to 0–1 over both panels" in text


def test_two_texts_of_other_lengths_are_two_panels_without_difference(built):
    _, _, page = built
    figure = page.split('id="layerheat-2-figure"')[1].split("</figure>")[0]
    (item,) = payloads(figure)
    assert len(item["panels"]) == 2
    assert "so no difference is drawn" in html.unescape(figure)


def test_a_failing_side_is_an_error_box_at_the_block(built):
    _, result, page = built
    assert re.search(r"docs/index\.md:\d+: in 'compare': unknown model 'nosuch'", result.stderr)
    assert page.count('class="layerheat-error') == 1


def test_a_side_far_below_the_shared_scale_says_its_highs_are_relative():
    """(b) reaches a thousandth of (a): on the shared 0-1 scale its "high" cells are pale, and its summary
    says so rather than calling 0.0008 high without a word."""
    from claims import check_summary

    from mkdocs_layerheat.analysis import analyze

    rng = np.random.default_rng(3)
    a = heatmap(rng.uniform(0, 1, (8, 10)))
    b = heatmap(rng.uniform(0, 0.001, (8, 10)))
    va, vb = shared_scale(a, b, "global")
    findings = analyze(b, vb, b.tokens)
    text = Renderer().narrative.markdown(b, findings, "global", shared=True)
    assert "a small part of the scale shared with the other panel" in text
    check_summary(text, vb, b.layers, b.tokens, raw=b.values, model="m")
    text_a = Renderer().narrative.markdown(a, analyze(a, va, a.tokens), "global", shared=True)
    assert "scale shared" not in text_a
