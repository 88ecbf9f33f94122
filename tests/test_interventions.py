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

from mkdocs_layerheat import models
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
        loaded = models.load(models.resolve(str(tiny.path)))
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
    first, end = heatmap.trace["subject"]
    assert "".join(heatmap.tokens[first:end]).strip() == SUBJECT
    answer = heatmap.trace["answer_id"]
    table, p_noisy, p_clean = ref.causal_trace(plain, ids, (first, end), answer, samples=3, kind=restore, window=2)
    assert heatmap.layers == list(range(1, loaded.num_layers + 1))
    np.testing.assert_allclose(heatmap.values, table, atol=1e-5, rtol=0)
    assert heatmap.trace["p_noisy"] == pytest.approx(p_noisy, abs=1e-9)
    assert heatmap.trace["p_clean"] == pytest.approx(p_clean, abs=1e-9)
    assert np.abs(table - p_noisy).max() > 1e-4  # (restoring changes something: the comparison can fail)


def test_causal_trace_odd_window_is_romes(doubles):
    """ROME restores the layers max(0, l - w//2) .. min(L, l - (-w//2)) - 1: with w = 3, l-1 .. l+1."""
    loaded, plain = doubles["llama"]
    heatmap = trace(loaded, restore="mlp", samples=2, window=3)
    first, end = heatmap.trace["subject"]
    answer = heatmap.trace["answer_id"]
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
    first, _ = heatmap.trace["subject"]
    v, p_noisy, p_clean = heatmap.values, heatmap.trace["p_noisy"], heatmap.trace["p_clean"]
    assert first > 2 and (v[:, :first] == np.float32(p_noisy)).all()
    assert v[-1, -1] == np.float32(p_clean) and (v[-1, :-1] == np.float32(p_noisy)).all()


def test_causal_trace_answer_option(doubles):
    loaded, plain = doubles["qwen2"]
    greedy = trace(loaded, samples=2)
    other = " the" if greedy.trace["answer"] != " the" else " dog"
    chosen = trace(loaded, samples=2, answer=other)
    assert chosen.trace["answer"] == other and chosen.trace["p_clean"] != greedy.trace["p_clean"]
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
    assert heatmap.trace["ld_clean"] == pytest.approx(ld_clean, abs=1e-7)
    assert heatmap.trace["ld_corrupt"] == pytest.approx(ld_corrupt, abs=1e-7)
    assert heatmap.trace["differs"] == [t for t, (x, y) in enumerate(zip(ids, corrupt)) if x != y]
    assert "".join(heatmap.trace["corrupt_tokens"]).endswith(corrupted)
    first = heatmap.trace["differs"][0]
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
