"""Known phenomena on planted heatmaps and on the demo model: found with the right tokens and layers, stated
once, never highlighted, and every claim of the summary checked against the matrix (`claims.py`)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from claims import check_summary
from hypothesis import given, settings
from hypothesis import strategies as st

from mkdocs_layerheat.analysis import analyze
from mkdocs_layerheat.heatmap import Heatmap
from mkdocs_layerheat.narrative import summary_json
from mkdocs_layerheat.render import Renderer

RENDERER = Renderer()


def make(values, metric, tokens=None):
    values = np.asarray(values, dtype=np.float64)
    n_layers, n_tokens = values.shape
    return Heatmap(values=values, tokens=tokens or [f"w{i}" for i in range(n_tokens)],
                   layers=list(range(1, n_layers + 1)), metric=metric, model="models/Tiny-LM")


def read(heatmap: Heatmap, normalize: str = "global"):
    values = heatmap.normalized(normalize)
    findings = analyze(heatmap, values, heatmap.tokens, normalize)
    text = RENDERER.narrative.markdown(heatmap, findings, normalize)
    check_summary(text, values, heatmap.layers, heatmap.tokens, raw=heatmap.values, model=heatmap.model)
    return findings, text, summary_json(heatmap, findings, RENDERER.narrative, normalize)


def attention(rng, n_layers=24, n_tokens=30):
    """Attention received, low and even, with the causal edge: the last positions average few queries."""
    v = rng.uniform(0.01, 0.05, (n_layers, n_tokens))
    v[:, -3:] = rng.uniform(0.2, 0.6, (n_layers, 3))
    return v


def test_first_token_and_delimiter_sinks_with_their_depth_profiles():
    rng = np.random.default_rng(1)
    v = attention(rng)
    v[5:24, 0] = rng.uniform(0.5, 0.8, 19)  # the first token from layer 6 up
    v[3:10, 7] = rng.uniform(0.35, 0.45, 7)  # a second sink at layers 4-10
    tokens = [f"w{i}" for i in range(30)]
    tokens[7] = "␣"
    findings, text, doc = read(make(v, "attention", tokens))
    sinks = [p for p in doc["phenomena"] if p["kind"] == "attention-sink"]
    assert [(p["tokens"], p["layers"]) for p in sinks] == [([0], [6, 24]), ([7], [4, 10])]
    assert "the first token" in text and "a whitespace token" in text
    assert doc["lead"].startswith("`w0` is an attention sink")
    assert "Xiao et al. 2023" in text and "Gu et al. 2024" in text


def test_edge_effect_is_stated_once_and_never_highlighted():
    rng = np.random.default_rng(2)
    findings, text, doc = read(make(attention(rng), "attention"))
    (edge,) = [p for p in doc["phenomena"] if p["kind"] == "edge-effect"]
    assert edge["tokens"] == [27, 28, 29]
    assert text.count("are seen by") == 1
    assert not {h["index"] for h in doc["highlights"]} & {27, 28, 29}


def test_no_edge_effect_for_a_bidirectional_model():
    rng = np.random.default_rng(2)
    heatmap = make(attention(rng), "attention")
    heatmap.provenance["causal"] = False
    findings = analyze(heatmap, heatmap.normalized("global"), heatmap.tokens, "global")
    assert not findings.edge


def test_massive_activation_onset_plateau_decay_and_ratio():
    rng = np.random.default_rng(3)
    v = np.linspace(40, 400, 20)[:, None] * rng.uniform(0.9, 1.1, (20, 16))
    v[7:17, 0] = 20000.0  # onset at layer 8, plateau to 17
    v[17:, 0] = [5000.0, 3000.0, 2500.0]
    findings, text, doc = read(make(v, "hidden-norm"))
    (p,) = [p for p in doc["phenomena"] if p["kind"] == "massive-activation"]
    assert p["tokens"] == [0] and p["layers"][0] == 8
    assert findings.phenomena[0].data["plateau"] == (8, 17)
    assert 100 < p["value"] < 300
    assert "Sun et al. 2024" in text and "x the layer's median" in text
    assert 0 not in {h["index"] for h in doc["highlights"]}


def test_layer_scaling_dominated_by_one_token_is_redone_without_it():
    rng = np.random.default_rng(4)
    v = rng.uniform(50, 150, (12, 20))
    v[2:12, 0] = 16000.0
    v[4, 5] = 400.0  # a real peak among the others
    findings, text, doc = read(make(v, "hidden-norm"), "layer")
    assert findings.rescaled and "and rescales each layer without them" in text
    assert "uniformly low at 0" not in text
    assert [h["index"] for h in doc["highlights"]][:1] == [5]


def test_twin_anomalies_are_reported_together():
    rng = np.random.default_rng(5)
    v = np.clip(np.linspace(0.1, 0.9, 24)[:, None] + rng.normal(0, 0.03, (24, 20)), 0, 1)
    v[:, 3] = v[:, 11] = np.linspace(0.9, 0.1, 24)  # two different tokens share a falling profile
    findings, text, _ = read(make(v, "update"), "none")
    (anomaly,) = findings.profile_anomalies
    assert anomaly.indices == [3, 11]
    assert "`w3` and `w11` share a depth profile unlike the other tokens'" in text


def lens(rng, n_layers=12, n_tokens=10):
    v = rng.uniform(0.0, 0.05, (n_layers, n_tokens))
    v[:, -1] = np.nan  # the last position has no next token
    return v


def test_convergence_names_the_prediction_and_its_layer():
    rng = np.random.default_rng(6)
    v = lens(rng)
    v[2:, 1] = 0.9  # w1 -> w2 from layer 3
    v[9:, 4] = 0.7  # w4 -> w5 from layer 10
    v[8, 6], v[11, 6] = 0.95, 0.4  # w6 -> w7 falls back at the end
    findings, text, doc = read(make(v, "logit-lens"))
    settled = {tuple(p["tokens"]): p["layers"] for p in doc["phenomena"] if p["kind"] == "prediction-converges"}
    assert settled == {(1,): [3, 12], (4,): [10, 12]}
    (drop,) = [p for p in doc["phenomena"] if p["kind"] == "late-drop"]
    assert drop["tokens"] == [6] and drop["layers"] == [9, 12] and drop["value"] == pytest.approx(0.55)
    assert "`w1` → `w2`: at least 0.5 from layer 3 to 12" in [p["sentence"][:44] for p in doc["phenomena"]]
    assert "`w6` → `w7` from 0.95 at layer 9 to 0.40" in text
    assert [t["predicts"] for t in doc["tokens"]] == [f"w{i + 1}" for i in range(9)] + [None]


def test_rank_convergence():
    rng = np.random.default_rng(7)
    v = rng.integers(2, 500, (10, 8)).astype(float)
    v[4:, 2] = 1
    findings, text, doc = read(make(v, "logit-lens-rank"), "none")
    settled = [p for p in doc["phenomena"] if p["kind"] == "prediction-converges"]
    assert [(p["tokens"], p["layers"]) for p in settled] == [([2], [5, 10])]
    assert "reach rank 1" in text


def test_few_settled_predictions_are_named_and_the_lead_says_few():
    rng = np.random.default_rng(9)
    v = lens(rng, 12, 20)
    v[6:, 3] = 0.8  # w3 -> w4 from layer 7, the only one of 19
    findings, text, doc = read(make(v, "logit-lens"))
    assert doc["lead"] == "Few predictions settle: 1 of the 19 reach 0.5 and hold it to the last layer."
    assert "The one that settles: `w3` → `w4` from layer 7." in text


def test_lens_highlights_are_probabilities_and_a_rank_figure_has_none():
    rng = np.random.default_rng(10)
    v = lens(rng, 10, 12) * 0.01  # every probability below 0.0005 ...
    v[4, 5] = 0.03  # ... one at 0.03: the top of its row once each row is scaled, yet no prediction
    v[6, 8] = 0.4  # a real one, that does not settle
    findings, text, doc = read(make(v, "logit-lens"), "layer")
    assert [h["index"] for h in doc["highlights"]] == [8]
    assert "`w8` → `w9` at layer 7 (p = 0.40 against a median of " in text  # the probability, not the scaled 1.0
    ranks = rng.integers(2, 40000, (10, 12)).astype(float)
    findings, text, doc = read(make(ranks, "logit-lens-rank"), "none")
    assert doc["highlights"] == [] and "stand out most" not in text


def test_a_long_texts_first_token_is_a_sink_at_a_thinner_share():
    """110 tokens: the first takes 0.25 of the attention (50x the median) at layers 4-10 and 0.6 from 13 up."""
    rng = np.random.default_rng(11)
    v = attention(rng, 24, 110) * 0.1  # shares of about 0.003
    v[3:10, 0] = 0.25
    v[12:, 0] = 0.6
    findings, text, doc = read(make(v, "attention"))
    (sink,) = [p for p in doc["phenomena"] if p["kind"] == "attention-sink"]
    assert sink["tokens"] == [0] and sink["layers"] == [4, 24] and "layers 4–10 and 13–24" in sink["sentence"]
    assert "layers 4–10 and 13–24" in doc["lead"] or "through most of the depth" in doc["lead"]
    edge = next(p for p in doc["phenomena"] if p["kind"] == "edge-effect")
    assert edge["tokens"] == list(range(99, 110))  # a tenth of the positions


def test_layer_scaling_of_small_differences_is_said_not_read_as_standing_out():
    """Norms within 1.1x of each other: scaled layer by layer they fill the colour range, yet nothing stands out."""
    rng = np.random.default_rng(12)
    v = rng.uniform(100, 110, (12, 16))
    v[:6, 3], v[:6, 9] = 175, 170  # layers 1-6 have two tokens 1.6x the others: a real difference
    findings, text, doc = read(make(v, "hidden-norm"), "layer")
    assert findings.flat == [(7, 12)]
    assert "In layers 7–12 no token reaches 1.5x the layer's median" in text
    assert [(t.index, t.sustained) for t in findings.runs] == [(9, (1, 6))]  # (w3 dominates: set aside)
    assert all(h["layer"] <= 6 for h in doc["highlights"])


def test_a_massive_activations_earlier_phase_and_a_sinks_tails_are_said_or_left_out():
    rng = np.random.default_rng(13)
    v = rng.uniform(80, 120, (16, 12))
    v[1:5, 0] = [700, 800, 900, 750]  # about 7-9x the median at layers 2-5
    v[7:14, 0] = 15000.0  # then massive from layer 8
    findings, text, doc = read(make(v, "hidden-norm"))
    (p,) = findings.of("massive-activation")
    assert p.data["early"][:2] == (2, 5)
    assert re.search(r"`w0` holds \d\.\d–\d\.\dx the layer's median at layers 2–5, then jumps from 97 to 15,000 at layer 8", text)
    a = attention(rng, 20, 30)
    a[4:20, 0] = 0.6  # a sink from layer 5 ...
    a[3, 0] = 0.2  # ... weakening below it: 0.2, about 7x the median, is its tail, not a highlight
    findings, text, doc = read(make(a, "attention"))
    assert (3, 0) in findings.of("attention-sink")[0].cells
    assert all(h["index"] != 0 for h in doc["highlights"])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["attention", "hidden-norm", "mlp-norm"]),
       st.sampled_from(["none", "global", "layer", "token"]))
def test_property_highlights_never_fall_on_phenomenon_cells(seed, metric, normalize):
    rng = np.random.default_rng(seed)
    n_layers, n_tokens = int(rng.integers(6, 20)), int(rng.integers(8, 40))
    v = attention(rng, n_layers, n_tokens) if metric == "attention" else rng.uniform(50, 200, (n_layers, n_tokens))
    for t in rng.choice(n_tokens, 2, replace=False):  # plant a phenomenon on two tokens over a run of layers
        first = int(rng.integers(0, n_layers - 3))
        v[first:, t] = rng.uniform(0.4, 0.9) if metric == "attention" else rng.uniform(3000, 30000)
    for r in rng.integers(0, n_layers, 3):  # and a few real peaks
        v[r, rng.integers(0, n_tokens)] *= 3
    heatmap = make(v, metric)
    findings, _, doc = read(heatmap, normalize)
    explained = {(r, t) for p in findings.phenomena for r, t in p.cells}
    for h in doc["highlights"]:
        assert (heatmap.layers.index(h["layer"]), h["index"]) not in explained


# -- the demo model --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(demo_model):
    from mkdocs_layerheat.extract import extract

    arithmetic = "A and B = 8 + 5 = 13. The correct choice is (D) 13. The final answer is \\boxed{(D)}"
    paris = "The Eiffel Tower is located in the city of Paris. It was built in 1889 for the World's Fair."
    return {**extract(demo_model, arithmetic, ["attention", "hidden-norm"]),
            "logit-lens": extract(demo_model, paris, ["logit-lens"])["logit-lens"]}


def demo_json(heatmap):
    from mkdocs_layerheat.labels import display_labels

    labels = display_labels(heatmap.tokens, heatmap.token_bytes)
    findings = analyze(heatmap, heatmap.normalized("global"), labels, "global")
    return labels, summary_json(heatmap, findings, RENDERER.narrative, "global")


def test_demo_sinks_and_massive_activation_are_the_first_token(demo):
    _, doc = demo_json(demo["attention"])
    sinks = {p["tokens"][0]: p["layers"] for p in doc["phenomena"] if p["kind"] == "attention-sink"}
    assert 0 in sinks and sinks[0][1] == 30 and sinks[0][0] <= 5
    _, doc = demo_json(demo["hidden-norm"])
    (massive,) = [p for p in doc["phenomena"] if p["kind"] == "massive-activation"]
    assert massive["tokens"] == [0] and massive["layers"][0] == 12 and massive["value"] > 100
    assert doc["lead"] and len(doc["lead"].split()) <= 60
    assert "SmolLM2-135M-Instruct" in doc["text"] and ".models" not in doc["text"]


def test_demo_logit_lens_credits_the_right_token(demo):
    heatmap = demo["logit-lens"]
    labels, doc = demo_json(heatmap)
    paris = labels.index("Paris")
    assert doc["tokens"][paris - 1]["predicts"] == "Paris"
    final = heatmap.values[-1]
    for p in doc["phenomena"]:
        if p["kind"] == "prediction-converges":
            (t,) = p["tokens"]
            assert final[t] >= 0.5 and p["sentence"].startswith(f"`{labels[t]}`") and "→" in p["sentence"]
    sentences = [s for s in doc["text"].replace("\n", " ").split(". ") if s]
    assert len(sentences) == len(set(sentences))
    json.dumps(doc)


def test_robust_colour_range_clips_the_massive_token_in_figure_and_words():
    from mkdocs_layerheat import figure

    rng = np.random.default_rng(5)
    v = rng.uniform(50, 150, (12, 20))
    v[4:12, 0] = 16000.0  # a massive activation: it would wash the figure out
    heatmap = make(v, "hidden-norm")
    values = heatmap.normalized("global")
    findings = analyze(heatmap, values, heatmap.tokens, "global", color_range="robust")
    text = RENDERER.narrative.markdown(heatmap, findings, "global")
    check_summary(text, values, heatmap.layers, heatmap.tokens, raw=heatmap.values, model=heatmap.model)
    high = float(np.percentile(values[:, 1:], 98))  # of the cells the summary reads: not the massive ones
    above = int((values > high).sum())
    assert findings.clip["high"] == pytest.approx(high) and findings.clip["tokens"][0] == (0, 8)
    assert f"{above} cells lie above it" in text and "marked ▲ (`w0`: 8, " in text
    (panel,) = figure.single(heatmap, values, heatmap.tokens, "global", clip=(0.0, high)).panels
    assert panel.scale[1] == pytest.approx(high) and panel.scale[0] == pytest.approx(0)
    above, below = panel.beyond  # one ▲ per clipped cell, at (row, token); none below the minimum
    assert len(below) == 0 and panel.bar_title.endswith("(clipped ▲▼)")
    assert sorted(divmod(int(i), 20) for i in above) == sorted((int(r), int(t)) for r, t in zip(*np.nonzero(values > high)))
    (plain,) = figure.single(heatmap, values, heatmap.tokens, "global").panels
    assert not any(map(len, plain.beyond)) and "98th percentile" not in RENDERER.narrative.markdown(
        heatmap, analyze(heatmap, values, heatmap.tokens, "global"), "global")



def test_entropy_that_grows_with_the_position_is_said_as_the_bound_it_is():
    """A query at position t spreads over at most t + 1 tokens: entropy that rises along the text is that bound,
    said once (and first), not a band or a run of late tokens; a flat profile is not."""
    rng = np.random.default_rng(3)
    n = 30
    v = np.log(np.arange(1, n + 1))[None, :] * rng.uniform(0.5, 0.9, (12, n))
    findings, text, doc = read(make(v, "attention-entropy"))
    (bound,) = [p for p in doc["phenomena"] if p["kind"] == "position-bound"]
    assert bound["value"] > 0.9 and doc["lead"].startswith("Entropy grows along the text (ρ = ")
    flat = rng.uniform(1.0, 1.2, (12, n))
    findings, text, doc = read(make(flat, "attention-entropy"))
    assert "position-bound" not in [p["kind"] for p in doc["phenomena"]] and "grows along the text" not in text
