"""The analysis and its written summary, on heatmaps with planted structure.

Expected results come from what was planted (or from the documented definitions, recomputed in
`claims.py`), never from running the analysis itself.
"""

from __future__ import annotations

import html
import re

import numpy as np
import pytest
from claims import check_summary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planted import planted, recovered_bands

from mkdocs_layerheat.analysis import KINDS, analyze
from mkdocs_layerheat.heatmap import Heatmap
from mkdocs_layerheat.render import Renderer
from mkdocs_layerheat.wording import code, markdown_to_html

RENDERER = Renderer()


def make(values, tokens=None, layers=None, metric="update", model="tiny/model", special=None, kinds=None):
    values = np.asarray(values, dtype=np.float64)
    n_layers, n_tokens = values.shape
    return Heatmap(
        values=values,
        tokens=tokens or [f"w{i}" for i in range(n_tokens)],
        layers=layers or list(range(1, n_layers + 1)),
        metric=metric,
        model=model,
        special=special or [],
        kinds=kinds or [],
    )


def summarize(heatmap: Heatmap, normalize: str = "none", check: bool = True):
    """Findings and Markdown for the figure `normalize` gives; the text's claims are checked against the matrix."""
    values = heatmap.normalized(normalize)
    findings = analyze(heatmap, values, heatmap.tokens, normalize)
    text = RENDERER.narrative.markdown(heatmap, findings, normalize)
    if check:
        check_summary(text, values, heatmap.layers, heatmap.tokens, raw=heatmap.values, special=[
            k in ("special", "template") for k in heatmap.kinds], kinds=heatmap.kinds, model=heatmap.model)
    return findings, text


def seed_like(rng: np.random.Generator) -> tuple[Heatmap, dict]:
    """A 35-layer heatmap shaped like the expert's figure: layers 1-15 uniformly high, 16-20 differentiating,
    21-35 sparse with one spike per token; `A` high up to layer 27; `D` medium-high from 23 to 31."""
    tokens = ["A", "and", "B", "=", "8", "+", "5", "=", "13", "\\boxed{", "13", "yin", "yin", "the", "correct",
              "choice", "is", "(", "D", ")", "13", ".", "The", "final", "answer", "is"]
    n_layers, n_tokens = 35, len(tokens)
    v = rng.uniform(0.0, 0.12, size=(n_layers, n_tokens))
    v[:15] = rng.uniform(0.85, 1.0, size=(15, n_tokens))
    levels = np.resize([0.9, 0.5, 0.05], n_tokens)
    rng.shuffle(levels)
    levels[0] = 0.9  # A stays high in the differentiating band ...
    v[15:20] = np.clip(levels + rng.normal(0, 0.03, size=(5, n_tokens)), 0, 1)
    v[15:27, 0] = rng.uniform(0.85, 0.95, size=12)  # ... and up to layer 27
    spikes = {}
    for t in range(1, n_tokens):
        if tokens[t] in ("yin", "D"):
            continue
        layer = 21 + (t * 7) % 15  # layers 21..35
        v[layer - 1, t] = rng.uniform(0.9, 1.0)
        spikes[t] = layer
    d = tokens.index("D")
    v[22:31, d] = rng.uniform(0.65, 0.8, size=9)  # D: medium-high from 23 to 31
    return make(v, tokens=tokens), {"spikes": spikes, "D": d}


# -- planted structure -------------------------------------------------------------------------------------

def test_seed_like_figure_reads_like_the_expert():
    heatmap, truth = seed_like(np.random.default_rng(7))
    findings, text = summarize(heatmap, "global")
    assert [(b.first_layer, b.last_layer, b.kind) for b in findings.bands] == [
        (1, 15, "uniform-high"), (16, 20, "differentiating"), (21, 35, "sparse")]
    # peaks where each token stands out from the others at that layer, not its raw maximum (layers 1-15)
    for t, layer in truth["spikes"].items():
        assert findings.tokens[t].peak_layer == layer, heatmap.tokens[t]
    assert findings.tokens[truth["D"]].sustained == (23, 31)
    assert findings.tokens[0].sustained == (16, 27)  # A: above the others once they drop, up to 27
    assert "Layers 1–15 are uniformly high" in text
    assert "In layers 16–20 the tokens spread out" in text and "`A`" in text
    assert "In layers 21–35 most cells are low" in text
    assert "tokens begin to differ at layer 16" in text
    assert "`D` from layer 23 to 31" in text and "Tokens that stay clearly above the others" in text


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_band_is_recognised(kind):
    rng = np.random.default_rng(3)
    # a frame of low and high bands fixes the 0-1 scale; the band under test sits in the middle
    frame = {"uniform-low": ["uniform-high", kind, "sparse"]}.get(kind, ["uniform-low", kind, "uniform-high"])
    if kind == "uniform-high":
        frame = ["uniform-low", kind, "sparse"]
    p = planted(rng, frame, [6, 8, 6], 30, noise=0.02)
    findings, _ = summarize(make(p.values))
    assert recovered_bands(findings.bands, p.bands, tolerance=0)


def test_a_single_noisy_layer_does_not_split_a_band():
    rng = np.random.default_rng(11)
    p = planted(rng, ["uniform-low", "uniform-high"], [12, 10], 40, noise=0.01)
    values = p.values.copy()
    values[5] = rng.uniform(0.0, 1.0, size=40)  # layer 6: every token at random, a different kind on its own
    findings, text = summarize(make(values))
    assert [(b.first_layer, b.last_layer, b.kind) for b in findings.bands] == [
        (1, 12, "uniform-low"), (13, 22, "uniform-high")]
    # ... and the text, which calls layers 1-12 uniformly low, says that tokens stand out in layer 6
    n = int(np.sum((values[5] - np.median(values[5]) >= 0.25) & (values[5] >= 1 / 3)))
    assert n > 0 and findings.bands[0].outliers == n
    assert "Layers 1–12 are uniformly low" in text and (
        f"apart from {n} cells where a token stands out" in text if n > 3 else "where tokens stand out" in text)


def test_peak_is_where_the_token_stands_out_not_its_raw_maximum():
    v = np.full((12, 10), 0.05)
    v[:4] = 0.95  # every token is highest in layers 1-4
    v[9, 3] = 0.7  # token 3 rises above the others only at layer 10
    findings, text = summarize(make(v))
    assert findings.tokens[3].peak_layer == 10 and findings.tokens[3].stands_out
    assert findings.tokens[3].peak_value == pytest.approx(0.7)
    assert "`w3` at layer 10 (0.70 against a median of 0.050)" in text


def test_sustained_runs_need_a_few_layers():
    v = np.full((20, 12), 0.1)
    v[5:14, 2] = 0.8  # 9 layers
    v[3:5, 7] = 0.9  # 2 layers: too short
    v[15:18, 9] = 0.6  # exactly 3 layers
    findings, text = summarize(make(v))
    assert findings.tokens[2].sustained == (6, 14)
    assert findings.tokens[7].sustained is None
    assert findings.tokens[9].sustained == (16, 18)
    assert "`w2` from layer 6 to 14" in text and "`w9` from layer 16 to 18" in text
    assert "`w7` from" not in text


def test_token_with_a_profile_unlike_any_other_is_an_anomaly():
    rng = np.random.default_rng(5)
    v = np.clip(np.linspace(0.1, 0.9, 24)[:, None] + rng.normal(0, 0.03, (24, 20)), 0, 1)  # all rise with depth
    v[:, 8] = np.linspace(0.9, 0.1, 24)  # one falls
    findings, text = summarize(make(v))
    assert [a.indices for a in findings.profile_anomalies] == [[8]]
    assert "`w8` from layer 1 to 9 (mean 0.76 against a median of 0.24; a depth profile unlike the other tokens')." in text
    assert "the layer mean rises with depth" in text


def test_repeats_of_an_odd_piece_are_reported_together():
    rng = np.random.default_rng(6)
    tokens = [f"w{i}" for i in range(16)] + ["yin", "yin"]
    v = rng.uniform(0, 0.1, (30, 18))
    v[24:31, 16:] = 0.7  # both `yin` medium-high at layers 25-30, like nothing else
    findings, text = summarize(make(v, tokens=tokens))
    (anomaly,) = findings.profile_anomalies
    assert anomaly.indices == [16, 17] and anomaly.run == (25, 30) and anomaly.direction == "above"
    assert "`yin` (positions 16 and 17) share a depth profile unlike the other tokens'" in text


def test_attention_sink_is_set_aside_and_the_rest_still_analysed():
    rng = np.random.default_rng(9)
    p = planted(rng, ["uniform-low", "sparse", "uniform-high"], [8, 10, 6], 25, noise=0.01)
    v = p.values * 0.2  # the other tokens use a fifth of the scale ...
    v[:, 0] = rng.uniform(0.9, 1.0, 24)  # ... the first token takes most of the attention
    tokens = ["<|im_start|>"] + [f"w{i}" for i in range(1, 25)]
    heatmap = make(v, tokens=tokens, special=[True] + [False] * 24)
    findings, text = summarize(heatmap, "global")
    assert findings.set_aside == [0] and findings.dominant[0].special
    assert recovered_bands(findings.bands, p.bands, tolerance=0)
    assert "`<|im_start|>` is left out" in text
    assert "dominates the figure" in text and "a special token" in text
    assert findings.tokens[0].set_aside and 0 not in [h.index for h in findings.highlights]


def test_no_attention_sink_wording_for_other_metrics():
    v = np.full((10, 8), 0.1)
    v[:, 0] = 5.0
    _, text = summarize(make(v, metric="hidden-norm"))
    assert "carries a massive activation" in text and "is an attention sink" not in text


# -- the property: random planted structures are recovered --------------------------------------------------

@st.composite
def structures(draw, noise_max: float = 0.06):
    """A random planted structure: 1-4 bands of 3-11 layers (neighbours of different kinds, the scale spanned
    by a low and a high kind), 8-80 tokens, cell noise, a noisy layer, NaN cells, a random affine scale."""
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=4).filter(
        lambda ks: all(a != b for a, b in zip(ks, ks[1:]))))
    if not any(k in ("uniform-low", "sparse", "differentiating") for k in kinds):
        kinds.append("sparse")
    if not any(k in ("uniform-high", "sparse", "differentiating") for k in kinds):
        kinds.append("uniform-high" if kinds[-1] != "uniform-high" else "sparse")
    return {
        "kinds": kinds,
        "lengths": [draw(st.integers(3, 11)) for _ in kinds],
        "n_tokens": draw(st.integers(8, 80)),
        "noise": draw(st.floats(0, noise_max)),
        "noisy_layer": draw(st.booleans()),
        "holes": draw(st.booleans()),
        "scale": draw(st.sampled_from([None, (1e-3, 0.0), (1.0, -2.0), (250.0, 3.0), (1e4, -5.0)])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def build(params: dict):
    rng = np.random.default_rng(params["seed"])
    p = planted(rng, params["kinds"], params["lengths"], params["n_tokens"], noise=params["noise"],
                noisy_layer=params["noisy_layer"])
    values = p.values.copy()
    if params["holes"]:  # 2% NaN cells, never on a planted spike
        holes = rng.random(values.shape) < 0.02
        for t, r in p.peaks.items():
            holes[r, t] = False
        values[holes] = np.nan
    if params["scale"]:  # raw units: any scale and offset
        values = values * params["scale"][0] + params["scale"][1]
    return p, make(values)


def random_params(rng: np.random.Generator, noise_max: float = 0.06) -> dict:
    """The same distribution as `structures`, drawn with numpy (for the measured rate)."""
    kinds: list[str] = []
    for _ in range(int(rng.integers(1, 5))):
        kinds.append(str(rng.choice([k for k in KINDS if not kinds or k != kinds[-1]])))
    if not any(k in ("uniform-low", "sparse", "differentiating") for k in kinds):
        kinds.append("sparse")
    if not any(k in ("uniform-high", "sparse", "differentiating") for k in kinds):
        kinds.append("uniform-high" if kinds[-1] != "uniform-high" else "sparse")
    scales = [None, (1e-3, 0.0), (1.0, -2.0), (250.0, 3.0), (1e4, -5.0)]
    return {"kinds": kinds, "lengths": [int(rng.integers(3, 12)) for _ in kinds],
            "n_tokens": int(rng.integers(8, 81)), "noise": float(rng.uniform(0, noise_max)),
            "noisy_layer": bool(rng.random() < 0.5), "holes": bool(rng.random() < 0.3),
            "scale": scales[int(rng.integers(len(scales)))], "seed": int(rng.integers(2**32))}


def recovery(all_params) -> tuple[float, float, int, int]:
    """Share of structures whose bands are recovered (kinds in order, boundaries within one layer) and
    share of planted peaks found within one layer."""
    bands_ok = peaks_ok = n_peaks = n = 0
    for params in all_params:
        p, heatmap = build(params)
        findings = analyze(heatmap, heatmap.values, heatmap.tokens)
        n += 1
        bands_ok += recovered_bands(findings.bands, p.bands)
        for t, row in p.peaks.items():
            n_peaks += 1
            peaks_ok += abs(findings.layers.index(findings.tokens[t].peak_layer) - row) <= 1
    return bands_ok / n, (peaks_ok / n_peaks if n_peaks else 1.0), n, n_peaks


BAND_RATE, PEAK_RATE = 0.95, 0.98


def test_recovery_rate_over_a_thousand_planted_structures(record_property):
    rng = np.random.default_rng(2024)
    bands, peaks, n, n_peaks = recovery(random_params(rng) for _ in range(1000))
    record_property("band_recovery", bands)
    record_property("peak_recovery", peaks)
    print(f"recovery over {n} structures: bands {bands:.1%}, peaks {peaks:.1%} of {n_peaks}")
    assert bands >= BAND_RATE and peaks >= PEAK_RATE


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(structures(), min_size=20, max_size=20))
def test_property_planted_structures_are_recovered(batch):
    bands, peaks, _, _ = recovery(batch)
    assert bands >= 0.9 and peaks >= 0.95


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structures(noise_max=0.1), st.sampled_from(["none", "global", "layer", "token"]))
def test_property_every_claim_of_the_summary_holds(params, normalize):
    _, heatmap = build(params)
    summarize(heatmap, normalize)


def test_claims_check_catches_a_false_statement():
    """The claims check itself must be able to fail."""
    heatmap, _ = seed_like(np.random.default_rng(7))
    _, text = summarize(heatmap, "global")
    values = heatmap.normalized("global")
    tampered = [
        text.replace("Layers 1–15 are uniformly high", "Layers 1–15 are uniformly low"),
        re.sub(r"\(mean (\d\.\d\d)\)", lambda m: f"(mean {float(m.group(1)) + 0.05:.2f})", text, count=1),
        text.replace("from layer 23 to 31", "from layer 22 to 31"),
        text + "\n`B` stands out at layer 3.\n",
        text.replace("The 26 tokens", "The 27 tokens"),
    ]
    for bad in tampered:
        assert bad != text
        with pytest.raises(AssertionError):
            check_summary(bad, values, heatmap.layers, heatmap.tokens)


# -- edge cases ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("normalize", ["none", "global", "layer", "token"])
def test_constant_matrix(normalize):
    findings, text = summarize(make(np.full((6, 5), 0.4)), normalize)
    assert findings.constant and not findings.highlights and not findings.anomalies
    assert len(findings.bands) == 1
    assert "Every cell has the same value" in text
    assert "stands out" not in text.replace("No token stands out", "")


def test_one_layer():
    v = np.array([[0.1, 0.1, 0.9, 0.1, 0.1, 0.1]])
    findings, text = summarize(make(v, layers=[7]))
    assert [(b.first_layer, b.last_layer) for b in findings.bands] == [(7, 7)]
    assert findings.tokens[2].peak_layer == 7 and findings.tokens[2].sustained is None
    assert "against layer 7 of" in text


def test_one_token():
    v = np.linspace(0, 1, 9)[:, None]
    findings, text = summarize(make(v, tokens=["solo"]))
    assert findings.n_tokens == 1 and not findings.highlights and not findings.anomalies
    assert "The single token of the text" in text


def test_nan_cells_are_masked():
    rng = np.random.default_rng(2)
    p = planted(rng, ["uniform-high", "sparse"], [8, 10], 20, noise=0.01)
    v = p.values.copy()
    v[:, -1] = np.nan  # e.g. the last position of logit-lens, which has no next token
    v[3, 4] = np.nan
    findings, text = summarize(make(v), "global")
    assert findings.nan_cells == 18 + 1
    assert findings.tokens[-1].peak_layer is None and findings.tokens[-1].peak_value is None
    assert recovered_bands(findings.bands, p.bands, tolerance=0)
    assert "19 cells have no value" in text and "nan" not in text.lower().replace("nats", "")


def test_a_layer_without_values_joins_a_neighbouring_band():
    rng = np.random.default_rng(8)
    p = planted(rng, ["uniform-low", "uniform-high"], [6, 6], 12, noise=0.01)
    v = p.values.copy()
    v[2] = np.nan
    findings, text = summarize(make(v))
    assert [(b.first_layer, b.last_layer, b.kind) for b in findings.bands] == [
        (1, 6, "uniform-low"), (7, 12, "uniform-high")]
    assert "12 cells have no value" in text


def test_all_nan():
    findings, text = summarize(make(np.full((3, 4), np.nan)), check=False)
    assert findings.bands == [] and "No cell has a value" in text


def test_two_thousand_tokens_fast_and_readable():
    rng = np.random.default_rng(1)
    p = planted(rng, ["uniform-high", "differentiating", "sparse"], [10, 6, 14], 2000, noise=0.02)
    heatmap = make(p.values, tokens=[f"w{i % 500}" for i in range(2000)])
    findings = analyze(heatmap, heatmap.values, heatmap.tokens)
    assert recovered_bands(findings.bands, p.bands, tolerance=0)
    text = RENDERER.narrative.markdown(heatmap, findings, "none")
    assert len(text.split()) < 600  # the strongest tokens by name, the rest counted
    (cells,) = [line for line in text.splitlines() if "stand out most from their layer" in line]
    assert cells.count(" at layer ") == 4 and re.search  # (4: the text lists runs of layers too)(r"and \d+ more tokens\.$", cells)
    check_summary(text, heatmap.values, heatmap.layers, heatmap.tokens)


def test_layer_labels_are_used_not_indices():
    v = np.full((6, 8), 0.1)
    v[4, 2] = 0.9
    findings, text = summarize(make(v, layers=[0, 1, 2, 3, 4, 5]))
    assert findings.tokens[2].peak_layer == 4
    assert "`w2` at layer 4 (0.90" in text and "layers 0–5" in text


def test_generated_and_template_tokens_are_counted():
    v = np.random.default_rng(0).uniform(0, 1, (5, 6))
    kinds = ["template", "template", "text", "text", "generated", "generated"]
    _, text = summarize(make(v, kinds=kinds))
    assert "Of these, 2 are chat-template tokens and 2 were generated by the model." in text


# -- escaping ------------------------------------------------------------------------------------------------

NASTY = ["<script>alert(1)</script>", "`", "``x``", "a`b", "*em*", "[x](javascript:alert(1))", "<b>", "&amp;",
         "\\", "_u_", "# h", "<http://e.com>", "|", "1."]


@pytest.mark.parametrize("label", NASTY)
def test_tokens_and_model_render_as_text_never_markup(label):
    rng = np.random.default_rng(4)
    v = rng.uniform(0, 0.1, (8, 10))
    v[2:6, 3] = 0.9  # the nasty token stands out, so the summary names it (highlights, runs, anomalies)
    tokens = [f"w{i}" for i in range(10)]
    tokens[3] = label
    heatmap = make(v, tokens=tokens, model="<img src=x onerror=alert(1)>`")
    findings = analyze(heatmap, heatmap.values, heatmap.tokens)
    page = RENDERER.summary(heatmap, findings, "none")
    assert "<script" not in page and "<b>" not in page and "<img" not in page and "href" not in page
    assert "<em>" not in page and "<h1>" not in page
    shown = [html.unescape(c) for c in re.findall(r"<code>(.*?)</code>", page, re.S)]
    assert shown.count(label) >= 1 and "<img src=x onerror=alert(1)>`" in shown
    assert not set(shown) - set(tokens) - {"<img src=x onerror=alert(1)>`"}


@pytest.mark.parametrize("label", NASTY + ["```", "x`", "`y"])
def test_code_span_shows_any_label_verbatim(label):
    out = markdown_to_html(f"Token {code(label)} here.")
    assert [html.unescape(c) for c in re.findall(r"<code>(.*?)</code>", out)] == [label]


# -- rendering -------------------------------------------------------------------------------------------------

def test_page_summary_has_the_sections(tmp_path):
    heatmap, _ = seed_like(np.random.default_rng(7))
    findings = analyze(heatmap, heatmap.normalized("global"), heatmap.tokens)
    page = RENDERER.summary(heatmap, findings, "global")
    assert page.startswith('<div class="layerheat-summary">')
    for section in ("What is plotted.", "Trend by depth.", "Token highlights.", "Interpretation."):
        assert f"<strong>{section}</strong>" in page


def test_user_template_overrides_the_summary(tmp_path):
    (tmp_path / "summary.md").write_text("Custom: {{ f.bands | length }} bands, first {{ tok(0) }}.\n")
    heatmap, _ = seed_like(np.random.default_rng(7))
    findings = analyze(heatmap, heatmap.normalized("global"), heatmap.tokens)
    page = Renderer(tmp_path).summary(heatmap, findings, "global")
    assert "Custom: 3 bands, first <code>A</code>." in page


def test_observations_are_ranked_sentences():
    heatmap, _ = seed_like(np.random.default_rng(7))
    findings = analyze(heatmap, heatmap.normalized("global"), heatmap.tokens)
    sentences = RENDERER.narrative.sentences(heatmap, findings, "global")["observations"]
    assert 1 <= len(sentences) <= 5 and all(s.endswith(".") and "\n" not in s for s in sentences)
    assert sentences[0].startswith("From the bottom up the layers are uniformly high at layers 1–15")
    scores = [o.score for o in findings.observations]
    assert scores == sorted(scores, reverse=True)


# -- real heatmaps of the demo model ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_heatmaps(demo_model):
    from mkdocs_layerheat.catalog import ONE_PASS
    from mkdocs_layerheat.extract import extract

    text = "A and B = 8 + 5 = 13. The correct choice is (D) 13. The final answer is \\boxed{(D)}"
    # the text inside the chat template, with a few generated tokens: every kind of token
    return extract(demo_model, text, list(ONE_PASS), chat=True, generate=6)


@pytest.mark.parametrize("normalize", ["none", "global", "layer", "token"])
def test_every_claim_holds_on_the_demo_model_for_every_metric(demo_heatmaps, normalize):
    from mkdocs_layerheat.labels import display_labels

    checked = 0
    for _metric, heatmap in demo_heatmaps.items():
        values = heatmap.normalized(normalize)
        labels = display_labels(heatmap.tokens)
        findings = analyze(heatmap, values, labels, normalize)
        text = RENDERER.narrative.markdown(heatmap, findings, normalize)
        checked += check_summary(text, values, heatmap.layers, labels, raw=heatmap.values,
                                 special=[k in ("special", "template") for k in heatmap.kinds],
                                 kinds=heatmap.kinds, model=heatmap.model)
    assert checked > 50 * len(demo_heatmaps)
