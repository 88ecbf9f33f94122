"""`extract()` against an independent computation from a plain transformers forward pass.

The reference side never uses the package: it loads the saved weights with the model's own
class, asks transformers for `output_attentions` / `output_hidden_states`, and reduces them
with explicit loops in float64.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import SAMPLE_TEXT
from mkdocs_layerheat import models
from mkdocs_layerheat.extract import ExtractionError, extract

RTOL = 1e-4


def assert_rel_close(actual, expected, rtol=RTOL, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected) / np.maximum(np.abs(expected), 1e-6)
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err.max() < rtol, f"{what}: relative error {err.max():.2e} at {worst}: {actual[worst]} vs {expected[worst]}"


def reference_ids(tiny):
    """Token ids from the raw `tokenizers.Tokenizer` the model's tokenizer was built from."""
    return tiny.raw_tokenizer.encode(SAMPLE_TEXT).ids


def reference_outputs(model, ids, tie_last=False):
    model.config.tie_last_hidden_states = tie_last
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_attentions=True, output_hidden_states=True)
    finally:
        model.config.tie_last_hidden_states = None
    attentions = np.stack([a[0].double().numpy() for a in out.attentions])  # [L, heads, query, key]
    hidden = [h[0].double().numpy() for h in out.hidden_states]  # L + 1 entries of [T, D]
    return attentions, hidden


def reference_attention_received(attentions, causal):
    """Loop form of the definition: per layer and key k, the mean over queries i that can see k of the head-mean."""
    layers, _, T, _ = attentions.shape
    out = np.zeros((layers, T))
    for layer in range(layers):
        for k in range(T):
            queries = range(k, T) if causal else range(T)
            out[layer, k] = sum(attentions[layer, :, i, k].mean() for i in queries) / len(queries)
    return out


def reference_hidden_norm(hidden):
    return np.stack([np.sqrt((h**2).sum(axis=-1)) for h in hidden[1:]])


def final_norm(arch, model):
    return {"llama": lambda: model.model.norm, "gpt2": lambda: model.transformer.ln_f}[arch]()


# --------------------------------------------------------------------------- sanity of the fixtures


def test_tokenizer_round_trip(tiny_model, loaded):
    """`models.load` gives back the tokenizer that was trained, and the heatmap records its ids."""
    ids = reference_ids(tiny_model)
    heatmap = extract(loaded, SAMPLE_TEXT, ["hidden-norm"])["hidden-norm"]
    assert heatmap.provenance["token_ids"] == ids
    assert heatmap.provenance["text"] == SAMPLE_TEXT
    assert len(heatmap.tokens) == len(ids)
    assert heatmap.layers == [1, 2, 3]
    assert heatmap.values.shape == (3, len(ids))
    assert heatmap.values.dtype == np.float32


def test_reference_attention_is_a_valid_softmax(tiny_model, reference_model):
    attentions, _ = reference_outputs(reference_model, reference_ids(tiny_model))
    np.testing.assert_allclose(attentions.sum(axis=-1), 1.0, atol=1e-5)
    upper = np.triu(np.ones(attentions.shape[-2:], dtype=bool), k=1)
    if tiny_model.causal:
        assert np.all(attentions[..., upper] == 0)
    else:
        assert np.all(attentions[..., upper] > 0)
    # the fixtures are meant to have peaked, head-dependent attention (not near-uniform)
    assert np.abs(attentions[:, 0] - attentions[:, 1]).max() > 0.05


def test_loaded_model_kind(tiny_model, loaded):
    assert loaded.causal is tiny_model.causal
    assert not loaded.model.training
    assert next(loaded.model.parameters()).dtype == torch.float32


# --------------------------------------------------------------------------- the metrics


def test_attention_matches_reference(tiny_model, loaded, reference_model):
    ids = reference_ids(tiny_model)
    attentions, _ = reference_outputs(reference_model, ids)
    expected = reference_attention_received(attentions, tiny_model.causal)
    got = extract(loaded, SAMPLE_TEXT, ["attention"])["attention"]
    assert got.metric == "attention"
    assert_rel_close(got.values, expected, what=f"{tiny_model.arch} attention")


def test_hidden_norm_matches_reference(tiny_model, loaded, reference_model):
    ids = reference_ids(tiny_model)
    _, hidden = reference_outputs(reference_model, ids, tie_last=False)
    assert len(hidden) == tiny_model.num_layers + 1  # embeddings, then one entry per block
    expected = reference_hidden_norm(hidden)
    got = extract(loaded, SAMPLE_TEXT, ["hidden-norm"])["hidden-norm"]
    assert got.metric == "hidden-norm"
    assert_rel_close(got.values, expected, what=f"{tiny_model.arch} hidden-norm")


def test_hidden_norm_layer_one_is_first_block_output_not_embeddings(tiny_model, loaded, reference_model):
    _, hidden = reference_outputs(reference_model, reference_ids(tiny_model))
    got = extract(loaded, SAMPLE_TEXT, ["hidden-norm"])["hidden-norm"].values
    embeddings = np.sqrt((hidden[0] ** 2).sum(axis=-1))
    assert not np.allclose(got[0], embeddings, rtol=1e-2)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_last_layer_hidden_norm_is_before_final_norm(arch, tiny_models, loaded_models, reference_models):
    model = reference_models[arch]
    ids = reference_ids(tiny_models[arch])
    _, untied = reference_outputs(model, ids, tie_last=False)
    _, tied = reference_outputs(model, ids, tie_last=True)
    # the reference is what it claims to be: the tied last entry is the untied one passed through the final norm
    with torch.no_grad():
        normed = final_norm(arch, model)(torch.from_numpy(untied[-1]).float()).double().numpy()
    np.testing.assert_allclose(tied[-1], normed, rtol=1e-4, atol=1e-5)

    got = extract(loaded_models[arch], SAMPLE_TEXT, ["hidden-norm"])["hidden-norm"].values[-1]
    assert_rel_close(got, np.linalg.norm(untied[-1], axis=-1), what="last layer, pre-norm")
    assert not np.allclose(got, np.linalg.norm(tied[-1], axis=-1), rtol=1e-2)


def test_causal_query_counting_matters(tiny_model, loaded, reference_model):
    """A causal model divides by the number of queries that can see the key; an encoder by all of them."""
    attentions, _ = reference_outputs(reference_model, reference_ids(tiny_model))
    column_mean = attentions.mean(axis=1).mean(axis=1)  # mean over heads, then over all queries
    got = extract(loaded, SAMPLE_TEXT, ["attention"])["attention"].values
    if tiny_model.causal:
        assert not np.allclose(got, column_mean, rtol=1e-2)
        # the last token is seen by itself only: its value is its self-attention, averaged over heads
        assert_rel_close(got[:, -1], attentions[:, :, -1, -1].mean(axis=1), what="last key")
        # the first token is seen by every query
        assert_rel_close(got[:, 0], column_mean[:, 0], what="first key")
    else:
        assert_rel_close(got, column_mean, what="encoder column mean")


def test_causal_flag_selects_the_query_count(llama_model, loaded_models, reference_models):
    """Same weights, flag flipped: the metric then averages over every query (zeros included)."""
    attentions, _ = reference_outputs(reference_models["llama"], reference_ids(llama_model))
    as_encoder = dataclasses.replace(loaded_models["llama"], causal=False)
    got = extract(as_encoder, SAMPLE_TEXT, ["attention"])["attention"].values
    assert_rel_close(got, reference_attention_received(attentions, causal=False), what="flag off")
    assert not np.allclose(got, reference_attention_received(attentions, causal=True), rtol=1e-2)


def test_locate_finds_one_attention_module_per_block(tiny_model, loaded):
    model = loaded.model
    expected_blocks = {
        "llama": lambda: list(model.model.layers),
        "gpt2": lambda: list(model.transformer.h),
        "bert": lambda: list(model.encoder.layer),
    }[tiny_model.arch]()
    expected_attention = {
        "llama": lambda b: b.self_attn,
        "gpt2": lambda b: b.attn,
        "bert": lambda b: b.attention.self,
    }[tiny_model.arch]
    assert len(loaded.blocks) == tiny_model.num_layers
    assert all(a is b for a, b in zip(loaded.blocks, expected_blocks))
    assert len(loaded.attentions) == len(loaded.blocks)
    for block, attention in zip(loaded.blocks, loaded.attentions):
        assert attention is expected_attention(block)
    assert len({id(a) for a in loaded.attentions}) == len(loaded.attentions)

    blocks, attentions = models.locate(model)
    assert [id(b) for b in blocks] == [id(b) for b in expected_blocks]
    assert [id(a) for a in attentions] == [id(expected_attention(b)) for b in expected_blocks]


def test_both_metrics_in_one_pass_equal_separate_calls(tiny_model, loaded):
    both = extract(loaded, SAMPLE_TEXT, ["attention", "hidden-norm"])
    assert set(both) == {"attention", "hidden-norm"}
    for metric in ("attention", "hidden-norm"):
        alone = extract(loaded, SAMPLE_TEXT, [metric])[metric]
        assert both[metric].metric == metric
        assert both[metric].tokens == alone.tokens
        assert both[metric].layers == alone.layers
        assert both[metric].special == alone.special
        np.testing.assert_allclose(both[metric].values, alone.values, rtol=1e-6, atol=0)
    assert not np.allclose(both["attention"].values, both["hidden-norm"].values)


def test_hooks_are_removed(tiny_model, loaded):
    def hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in loaded.model.modules())

    before = hooks()
    extract(loaded, SAMPLE_TEXT, ["attention", "hidden-norm"])
    assert hooks() == before
    with pytest.raises(ExtractionError):
        extract(loaded, SAMPLE_TEXT, ["attention"], max_tokens=2)
    assert hooks() == before


def test_tokens_and_special_flags(tiny_model, loaded):
    heatmap = extract(loaded, SAMPLE_TEXT, ["attention"])["attention"]
    n = len(heatmap.tokens)
    if tiny_model.arch == "llama":
        assert heatmap.tokens[0] == "<s>"
        assert heatmap.special == [True] + [False] * (n - 1)
    elif tiny_model.arch == "gpt2":
        assert heatmap.special == [False] * n
    else:
        assert (heatmap.tokens[0], heatmap.tokens[-1]) == ("[CLS]", "[SEP]")
        assert heatmap.special == [True] + [False] * (n - 2) + [True]
    if tiny_model.arch in ("llama", "gpt2"):  # byte-level BPE: the pieces are the text, exactly
        text = "".join(t for t, s in zip(heatmap.tokens, heatmap.special) if not s)
        assert text == SAMPLE_TEXT


def test_max_tokens(tiny_model, loaded):
    n = len(reference_ids(tiny_model))
    assert extract(loaded, SAMPLE_TEXT, ["hidden-norm"], max_tokens=n)["hidden-norm"].values.shape[1] == n
    with pytest.raises(ExtractionError, match=f"{n} tokens"):
        extract(loaded, SAMPLE_TEXT, ["hidden-norm"], max_tokens=n - 1)


def test_attention_needs_eager_attention(llama_model, reference_models):
    loaded = models.load(models.resolve(str(llama_model.path)), eager_attention=False)
    with pytest.raises(ExtractionError, match="eager"):
        extract(loaded, SAMPLE_TEXT, ["attention"])
    # hidden-norm does not need the attention weights
    _, hidden = reference_outputs(reference_models["llama"], reference_ids(llama_model))
    got = extract(loaded, SAMPLE_TEXT, ["hidden-norm"])["hidden-norm"].values
    assert_rel_close(got, reference_hidden_norm(hidden), what="sdpa hidden-norm")


def test_resolve_local_model_dir(tiny_model, tmp_path):
    ref = models.resolve(str(tiny_model.path))
    assert (ref.kind, ref.location) == ("local", str(tiny_model.path.resolve()))
    alias = models.resolve("tiny", {"tiny": tiny_model.path.name}, base_dir=tiny_model.path.parent)
    assert (alias.kind, alias.location, str(alias)) == ("local", str(tiny_model.path.resolve()), "tiny")
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelError, match="no config.json"):
        models.resolve(str(tmp_path / "empty"))


# --------------------------------------------------------------------------- update and attention-entropy


def test_update_matches_reference(tiny_model, loaded, reference_model):
    _, hidden = reference_outputs(reference_model, reference_ids(tiny_model), tie_last=False)
    expected = np.array(
        [
            [1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(before, after)]
            for before, after in zip(hidden[:-1], hidden[1:])
        ]
    )
    got = extract(loaded, SAMPLE_TEXT, ["update"])["update"]
    assert got.values.shape == expected.shape
    np.testing.assert_allclose(got.values, expected, rtol=1e-4, atol=1e-6)


def test_attention_entropy_matches_reference(tiny_model, loaded, reference_model):
    attentions, _ = reference_outputs(reference_model, reference_ids(tiny_model))
    layers, heads, T, _ = attentions.shape
    expected = np.zeros((layers, T))
    for layer in range(layers):
        for i in range(T):
            expected[layer, i] = np.mean(
                [-sum(p * np.log(p) for p in attentions[layer, h, i] if p > 0) for h in range(heads)]
            )
    got = extract(loaded, SAMPLE_TEXT, ["attention-entropy"])["attention-entropy"]
    np.testing.assert_allclose(got.values, expected, rtol=1e-4, atol=1e-6)
    if tiny_model.causal:  # the first query sees only itself: a distribution with zero entropy
        np.testing.assert_allclose(got.values[:, 0], 0.0, atol=1e-6)
