"""Causal tracing and activation patching against loop-form references (tests/trace_reference.py: ROME's
`trace_with_patch` and the tutorials' patching, one forward pass of the plain Hugging Face model per cell),
on tiny random models of five architectures in float64, and their exact ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trace_reference as ref
from samples import MORE_ARCHS
from transformers import AutoModelForCausalLM

from mkdocs_layerheat import models, refs
from mkdocs_layerheat.catalog import MetricRequest
from mkdocs_layerheat.extract import ExtractionError, extract

TEXT = "The lazy fox looks back at the quick dog"
SUBJECT = "lazy fox"
CAUSAL = ("llama", "gpt2", *MORE_ARCHS)


@pytest.fixture(scope="module")
def doubles(tiny_models, more_models):
    """Per architecture: the package's LoadedModel and the plain reference model, both in float64."""
    out = {}
    for arch, tiny in {**{a: tiny_models[a] for a in ("llama", "gpt2")}, **more_models}.items():
        loaded = models.load(refs.resolve(str(tiny.path)))
        loaded.model.to(torch.float64)
        plain = AutoModelForCausalLM.from_pretrained(tiny.path, attn_implementation="eager", dtype=torch.float64)
        out[arch] = (loaded, plain.eval())
    return out


def trace(loaded, text=TEXT, **options):
    request = MetricRequest("causal-trace", subject=options.pop("subject", SUBJECT), **options)
    return extract(loaded, text, [request])[request]


@pytest.mark.parametrize("arch", CAUSAL)
@pytest.mark.parametrize("restore", ["hidden", "mlp", "attn"])
def test_causal_trace_matches_rome_cell_by_cell(doubles, arch, restore):
    loaded, plain = doubles[arch]
    heatmap = trace(loaded, restore=restore, samples=3, window=2)
    ids = heatmap.provenance["token_ids"]
    first, end = heatmap.extras["subject"]
    assert "".join(heatmap.tokens[first:end]).strip() == SUBJECT
    answer = heatmap.extras["answer_id"]
    table, p_noisy, p_clean = ref.causal_trace(plain, ids, (first, end), answer, samples=3, kind=restore, window=2)
    assert heatmap.layers == list(range(1, loaded.num_layers + 1))
    np.testing.assert_allclose(heatmap.values, table, atol=1e-5, rtol=0)
    assert heatmap.extras["p_noisy"] == pytest.approx(p_noisy, abs=1e-9)
    assert heatmap.extras["p_clean"] == pytest.approx(p_clean, abs=1e-9)
    assert np.abs(table - p_noisy).max() > 1e-4  # (restoring changes something: the comparison can fail)


def test_causal_trace_odd_window_is_romes(doubles):
    """ROME restores the layers max(0, l - w//2) .. min(L, l - (-w//2)) - 1: with w = 3, l-1 .. l+1."""
    loaded, plain = doubles["llama"]
    heatmap = trace(loaded, restore="mlp", samples=2, window=3)
    first, end = heatmap.extras["subject"]
    answer = heatmap.extras["answer_id"]
    table, _, _ = ref.causal_trace(plain, heatmap.provenance["token_ids"], (first, end), answer, samples=2,
                                   kind="mlp", window=3)
    np.testing.assert_allclose(heatmap.values, table, atol=1e-5, rtol=0)


def test_causal_trace_noise_is_romes_draw(doubles):
    """The noise is noise x std(embedding matrix) x RandomState(seed).randn(samples, n_subject, hidden): another
    seed or scale gives other numbers, the same ones give the same."""
    loaded, _ = doubles["llama"]
    a, b = trace(loaded, samples=2), trace(loaded, samples=2)
    c, d = trace(loaded, samples=2, seed=7), trace(loaded, samples=2, noise=1.0)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.allclose(a.values, c.values) and not np.allclose(a.values, d.values)


def test_causal_trace_exact_ends(doubles):
    """Tokens before the subject are not noised: restoring them changes nothing (exactly p_noisy); restoring
    the last token at the last block gives exactly p_clean; at the last block no other token reaches the
    output."""
    loaded, _ = doubles["gpt2"]
    heatmap = trace(loaded, subject="quick dog", samples=2)
    first, _ = heatmap.extras["subject"]
    v, p_noisy, p_clean = heatmap.values, heatmap.extras["p_noisy"], heatmap.extras["p_clean"]
    assert first > 2 and (v[:, :first] == np.float32(p_noisy)).all()
    assert v[-1, -1] == np.float32(p_clean) and (v[-1, :-1] == np.float32(p_noisy)).all()


def test_causal_trace_answer_option(doubles):
    loaded, plain = doubles["qwen2"]
    greedy = trace(loaded, samples=2)
    other = " the" if greedy.extras["answer"] != " the" else " dog"
    chosen = trace(loaded, samples=2, answer=other)
    assert chosen.extras["answer"] == other and chosen.extras["p_clean"] != greedy.extras["p_clean"]
    with pytest.raises(ExtractionError, match=r"answer 'The lazy fox' is 5 tokens .*exactly one"):
        trace(loaded, answer="The lazy fox")
    with pytest.raises(ExtractionError, match="subject 'zebra' is not in the text"):
        trace(loaded, subject="zebra")


def test_causal_trace_layers_subset(doubles):
    loaded, _ = doubles["llama"]
    full, some = trace(loaded, samples=2), trace(loaded, samples=2, layers=(1, 3))
    assert some.layers == [1, 3]
    np.testing.assert_array_equal(some.values, full.values[[0, 2]])


CORRUPTS = [TEXT.replace(a, b) for a, b in [("fox", "cat"), ("dog", "cat"), ("the quick", "a quick"), ("The", "A"),
                                            ("lazy", "quick"), ("dog", "fox"), ("back", "down"), ("looks", "jumps")]]


def minimal_pair(plain, tokenizer) -> str:
    """A corrupted text of the same length whose greedy answer differs, for this random model."""
    def answer(text):
        ids = tokenizer(text)["input_ids"]
        with torch.no_grad():
            return len(ids), int(plain(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    n, clean = answer(TEXT)
    return next(c for c in CORRUPTS if answer(c)[0] == n and answer(c)[1] != clean)


@pytest.mark.parametrize("arch", CAUSAL)
def test_activation_patching_matches_the_tutorials(doubles, arch):
    loaded, plain = doubles[arch]
    corrupted = minimal_pair(plain, loaded.tokenizer)
    request = MetricRequest("activation-patching", corrupt=corrupted)
    heatmap = extract(loaded, TEXT, [request])[request]
    ids, corrupt = heatmap.provenance["token_ids"], loaded.tokenizer(corrupted)["input_ids"]
    table, a, b, ld_clean, ld_corrupt = ref.activation_patching(plain, ids, corrupt)
    np.testing.assert_allclose(heatmap.values, table, atol=1e-6, rtol=0)
    assert heatmap.extras["ld_clean"] == pytest.approx(ld_clean, abs=1e-7)
    assert heatmap.extras["ld_corrupt"] == pytest.approx(ld_corrupt, abs=1e-7)
    assert heatmap.extras["differs"] == [t for t, (x, y) in enumerate(zip(ids, corrupt)) if x != y]
    assert "".join(heatmap.extras["corrupt_tokens"]).endswith(corrupted)
    first = heatmap.extras["differs"][0]
    assert (heatmap.values[:, :first] == 0).all()  # exactly: before the first difference nothing differs
    assert heatmap.values[-1, -1] == 1.0  # exactly: the last token's last state is the clean run's


def test_activation_patching_refuses_unequal_lengths_and_equal_answers(doubles):
    loaded, _ = doubles["llama"]
    with pytest.raises(ExtractionError, match="minimal pair of the same token length"):
        request = MetricRequest("activation-patching", corrupt=TEXT + " again and again")
        extract(loaded, TEXT, [request])
    with pytest.raises(ExtractionError, match="both texts lead to"):
        request = MetricRequest("activation-patching", corrupt=TEXT)
        extract(loaded, TEXT, [request])


# --------------------------------------------------------------------------- the written reading, on planted traces

from claims import check_summary  # noqa: E402

from mkdocs_layerheat.analysis import analyze  # noqa: E402
from mkdocs_layerheat.heatmap import Heatmap  # noqa: E402
from mkdocs_layerheat.labels import display_labels  # noqa: E402
from mkdocs_layerheat.narrative import summary_json  # noqa: E402
from mkdocs_layerheat.render import Renderer  # noqa: E402

RENDERER = Renderer()
WORDS = ["The", " Space", " Needle", " is", " located", " in", " the", " city", " of"]


def planted(early=None, late=None, p_noisy=0.02, p_clean=0.6, subject=(1, 3), restore="hidden", seed=0, n_layers=24):
    """A causal trace at p_noisy everywhere (a little noise), with the last subject token recovering `early`
    (first, last layer, value) and the last token `late` (first layer, value) up to the top."""
    rng = np.random.default_rng(seed)
    v = p_noisy + rng.uniform(0, 0.01, (n_layers, len(WORDS)))
    if early:
        a, b, value = early
        v[a - 1:b, subject[1] - 1] = value
    if late:
        a, value = late
        v[a - 1:, -1] = value
    if restore == "hidden":
        v[-1, :] = p_noisy
        v[-1, -1] = p_clean
    trace = {"answer": " Seattle", "answer_id": 7, "p_clean": p_clean, "p_noisy": p_noisy, "subject": list(subject)}
    options = {"subject": "".join(WORDS[slice(*subject)]).strip(), "restore": restore}
    return Heatmap(values=v, tokens=WORDS, layers=list(range(1, n_layers + 1)), metric="causal-trace",
                   model="models/Tiny-LM", provenance={"options": options}, extras=trace)


def read_trace(heatmap: Heatmap):
    labels = display_labels(heatmap.tokens)
    findings = analyze(heatmap, heatmap.values, labels, "none")
    text = RENDERER.narrative.markdown(heatmap, findings, "none")
    check_summary(text, heatmap.values, heatmap.layers, labels, raw=heatmap.values, model=heatmap.model,
                  trace=heatmap.extras, options=heatmap.provenance["options"])
    return findings, text, summary_json(heatmap, findings, RENDERER.narrative, "none")


def test_both_sites_found_with_their_layers():
    findings, text, doc = read_trace(planted(early=(4, 10, 0.5), late=(15, 0.55)))
    kinds = {p["kind"]: p for p in doc["phenomena"]}
    assert kinds["early-site"]["tokens"] == [2] and kinds["early-site"]["layers"] == [4, 10]
    assert kinds["late-site"]["tokens"] == [8] and kinds["late-site"]["layers"] == [15, 24]
    assert doc["lead"].startswith("Both of ROME's sites show: the last subject token at layers 4–10 and the last token from layer 15 on.")
    assert "with a probability of 0.60 on the clean text and 0.020 with the subject noised" in text
    assert not {(h["index"], h["layer"]) for h in doc["highlights"]} & {(2, layer) for layer in range(4, 11)}


def test_only_the_late_site_is_said_absent_early():
    findings, text, doc = read_trace(planted(late=(18, 0.5)))
    assert "there is no early site" in text and "Only the late site shows" in doc["lead"]
    assert [p["kind"] for p in doc["phenomena"]] == ["late-site"]


def test_the_trivial_last_layer_is_no_late_site():
    """Restoring the last token's block output at the last layer is the clean output itself."""
    findings, text, doc = read_trace(planted(early=(3, 8, 0.45)))
    assert [p["kind"] for p in doc["phenomena"]] == ["early-site"]
    assert "recovers half only at the last layer, whose output it then is" in text


def test_a_subject_at_the_first_token_is_warned_about():
    findings, text, doc = read_trace(planted(late=(12, 0.5), subject=(0, 3)))
    assert "The subject includes the first token, `The`" in text
    findings, text, doc = read_trace(planted(late=(12, 0.5)))
    assert "includes the first token" not in text


def test_a_noise_that_takes_little_away_seeks_no_site():
    findings, text, doc = read_trace(planted(late=(12, 0.5), p_noisy=0.4, p_clean=0.6))
    assert doc["phenomena"] == [] and "Sites are sought only where the noise at least halves" in text


def test_a_sublayer_trace_reads_its_late_site_below_the_top():
    """With attention outputs restored over a window, the last layers recover nothing: the late site is the
    highest run of layers that recovers half, said with its end."""
    heatmap = planted(late=(14, 0.5), restore="attn")
    heatmap.values[20:, -1] = 0.03
    findings, text, doc = read_trace(heatmap)
    assert "at layers 14–20" in text and "Geva et al. 2023" in text


# --------------------------------------------------------------------------- the demo model

EIFFEL = "The Eiffel Tower is located in the city of"


@pytest.fixture(scope="module")
def demo_plain():
    from pathlib import Path

    demo = Path(__file__).resolve().parent.parent / ".models" / "SmolLM2-135M-Instruct"
    return AutoModelForCausalLM.from_pretrained(demo, attn_implementation="eager", dtype=torch.float32).eval()


def test_demo_model_recalls_paris_at_the_last_token(demo_model, demo_plain):
    """SmolLM2 puts the Eiffel Tower in Paris (p = 0.70); with the subject noised, restoring the last token's
    upper layers brings it back. Rows checked against ROME's loop on the same model."""
    rows = (4, 16, 24, 28, 30)
    request = MetricRequest("causal-trace", subject="Eiffel Tower", samples=3, layers=rows)
    heatmap = extract(demo_model, EIFFEL, [request])[request]
    trace = heatmap.extras
    assert trace["answer"] == " Paris" and trace["p_clean"] == pytest.approx(0.70, abs=0.01)
    assert trace["subject"] == [1, 4] and trace["p_noisy"] < 0.1
    table, p_noisy, p_clean = ref.causal_trace(demo_plain, heatmap.provenance["token_ids"], (1, 4), trace["answer_id"],
                                               samples=3, rows=rows)
    np.testing.assert_allclose(heatmap.values, table, atol=2e-4, rtol=0)
    assert trace["p_noisy"] == pytest.approx(p_noisy, abs=1e-4)
    recovered = (heatmap.values[:, -1] - trace["p_noisy"]) / (trace["p_clean"] - trace["p_noisy"])
    assert (recovered[2:] > 0.5).all() and recovered[0] < 0.5  # the late site: layers 24-30, not layer 4
    findings, text, doc = read_trace(heatmap)
    assert "late-site" in [p["kind"] for p in doc["phenomena"]] and "`Paris`" in text


def test_demo_model_patching_moves_from_the_country_to_the_last_token(demo_model, demo_plain):
    request = MetricRequest("activation-patching", corrupt="The capital of Italy is", layers=(1, 12, 24, 30))
    heatmap = extract(demo_model, "The capital of France is", [request])[request]
    assert (heatmap.extras["answer"], heatmap.extras["corrupt_answer"]) == (" Paris", " Rome")
    table, *_ = ref.activation_patching(demo_plain, heatmap.provenance["token_ids"],
                                        demo_model.tokenizer("The capital of Italy is")["input_ids"], rows=(1, 12, 24, 30))
    np.testing.assert_allclose(heatmap.values, table, atol=1e-4, rtol=0)
    assert heatmap.values[0, 3] > 0.9 and heatmap.values[-1, -1] == 1.0 and (heatmap.values[:, :3] == 0).all()
    findings, text, doc = read_trace(heatmap)
    assert "The corrupted text differs at `France` → `Italy`" in text
    assert [p["kind"] for p in doc["phenomena"]] == ["early-site", "late-site"]
