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
from samples import MORE_ARCHS, SAMPLE_TEXT
from transformers import AutoModelForCausalLM, AutoTokenizer

from mkdocs_layerheat import attention as chunked
from mkdocs_layerheat import models, refs
from mkdocs_layerheat.catalog import ONE_PASS, MetricRequest
from mkdocs_layerheat.extract import (
    ExtractionError,
    TextInput,
    extract,
    extract_many,
    extract_specs,
)

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


def _aggregate(values, aggregate):
    return max(values) if aggregate == "max" else sum(values) / len(values)


def reference_attention_received(attentions, causal, heads=None, aggregate="mean", windows=None):
    """Loop form of the definition: per layer and key k, over heads, of the mean over queries i that can see k.

    `windows[layer]`: a sliding window (query i sees keys i - window + 1 .. i) or None.
    """
    layers, n_heads, T, _ = attentions.shape
    heads = range(n_heads) if heads is None else heads
    windows = windows or [None] * layers
    out = np.zeros((layers, T))
    for layer in range(layers):
        for k in range(T):
            queries = range(k, T if windows[layer] is None else min(T, k + windows[layer])) if causal else range(T)
            per_head = [sum(attentions[layer, h, i, k] for i in queries) / len(queries) for h in heads]
            out[layer, k] = _aggregate(per_head, aggregate)
    return out


def reference_attention_from(attentions, query, causal, heads=None, aggregate="mean", windows=None):
    """Row `query` of each layer's weights, over heads; keys a causal query cannot see are NaN."""
    layers, n_heads, T, _ = attentions.shape
    heads = range(n_heads) if heads is None else heads
    windows = windows or [None] * layers
    q = query if query >= 0 else T + query
    out = np.full((layers, T), np.nan)
    for layer in range(layers):
        for k in range(T):
            if causal and (k > q or (windows[layer] is not None and q - k >= windows[layer])):
                continue
            out[layer, k] = _aggregate([attentions[layer, h, q, k] for h in heads], aggregate)
    return out


def reference_attention_entropy(attentions, heads=None, aggregate="mean"):
    layers, n_heads, T, _ = attentions.shape
    heads = range(n_heads) if heads is None else heads
    out = np.zeros((layers, T))
    for layer in range(layers):
        for i in range(T):
            out[layer, i] = _aggregate(
                [-sum(p * np.log(p) for p in attentions[layer, h, i] if p > 0) for h in heads], aggregate
            )
    return out


def reference_hidden_norm(hidden):
    return np.stack([np.sqrt((h**2).sum(axis=-1)) for h in hidden[1:]])


def final_norm(arch, model):
    return {
        "llama": lambda: model.model.norm,
        "qwen2": lambda: model.model.norm,
        "gemma2": lambda: model.model.norm,
        "gpt2": lambda: model.transformer.ln_f,
        "neox": lambda: model.gpt_neox.final_layer_norm,
    }[arch]()


def lm_head(arch, model):
    return model.embed_out if arch == "neox" and hasattr(model, "embed_out") else model.lm_head


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


def test_queries_that_see_a_key_come_from_the_models_mask(llama_model, loaded_models, reference_models):
    """The count of queries per key follows the attention mask the model applies, not a flag of ours."""
    attentions, _ = reference_outputs(reference_models["llama"], reference_ids(llama_model))
    as_encoder = dataclasses.replace(loaded_models["llama"], causal=False)
    got = extract(as_encoder, SAMPLE_TEXT, ["attention"])["attention"].values
    assert_rel_close(got, reference_attention_received(attentions, causal=True), what="flag off, mask causal")
    assert not np.allclose(got, reference_attention_received(attentions, causal=False), rtol=1e-2)


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
    loaded = models.load(refs.resolve(str(llama_model.path)), eager_attention=False)
    with pytest.raises(ExtractionError, match="eager"):
        extract(loaded, SAMPLE_TEXT, ["attention"])
    # hidden-norm does not need the attention weights
    _, hidden = reference_outputs(reference_models["llama"], reference_ids(llama_model))
    got = extract(loaded, SAMPLE_TEXT, ["hidden-norm"])["hidden-norm"].values
    assert_rel_close(got, reference_hidden_norm(hidden), what="sdpa hidden-norm")


def test_resolve_local_model_dir(tiny_model, tmp_path):
    ref = refs.resolve(str(tiny_model.path))
    assert (ref.kind, ref.location) == ("local", str(tiny_model.path.resolve()))
    alias = refs.resolve("tiny", {"tiny": tiny_model.path.name}, base_dir=tiny_model.path.parent)
    assert (alias.kind, alias.location, str(alias)) == ("local", str(tiny_model.path.resolve()), "tiny")
    (tmp_path / "empty").mkdir()
    with pytest.raises(refs.ModelError, match="no config.json"):
        refs.resolve(str(tmp_path / "empty"))


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


# --------------------------------------------------------------------------- references: sublayers and the lens


def reference_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def reference_sublayers(arch, model, attentions, hidden):
    """Norms of what each block's attention and MLP add to the residual stream, rebuilt from the weights.

    The attention's contribution is its output projection applied to (attention weights @ values), with the
    weights from `output_attentions`; the MLP's is the MLP applied to the residual after the attention. The
    rebuilt block output is checked against transformers' own, so the reference is known to be right.
    BERT is post-norm: the contributions are what is added before each LayerNorm.
    """
    cfg = model.config
    n_heads = cfg.num_attention_heads
    attn_norms, mlp_norms = [], []
    with torch.no_grad():
        for layer in range(len(hidden) - 1):
            h_in = torch.from_numpy(hidden[layer]).float()
            h_out = torch.from_numpy(hidden[layer + 1]).float()
            weights = torch.from_numpy(attentions[layer]).float()  # [heads, T, T]
            T = h_in.shape[0]
            if arch == "gemma2":  # sandwich norms: each sublayer's output is normalised before it is added
                block = model.model.layers[layer]
                values = block.self_attn.v_proj(block.input_layernorm(h_in)).view(T, cfg.num_key_value_heads, -1)
                group = n_heads // cfg.num_key_value_heads
                context = torch.cat([weights[h] @ values[:, h // group] for h in range(n_heads)], dim=-1)
                a = block.post_attention_layernorm(block.self_attn.o_proj(context))
                m = block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(h_in + a)))
                rebuilt = h_in + a + m
            elif arch == "neox":  # parallel residual: both sublayers read the block's input
                block = model.gpt_neox.layers[layer]
                qkv = block.attention.query_key_value(block.input_layernorm(h_in)).view(T, n_heads, -1)
                values = qkv.chunk(3, dim=-1)[2]
                context = torch.cat([weights[h] @ values[:, h] for h in range(n_heads)], dim=-1)
                a = block.attention.dense(context)
                m = block.mlp(block.post_attention_layernorm(h_in))
                rebuilt = h_in + a + m
            elif arch in ("llama", "qwen2"):
                block = model.model.layers[layer]
                values = block.self_attn.v_proj(block.input_layernorm(h_in)).view(T, cfg.num_key_value_heads, -1)
                group = n_heads // cfg.num_key_value_heads
                context = torch.cat([weights[h] @ values[:, h // group] for h in range(n_heads)], dim=-1)
                a = block.self_attn.o_proj(context)
                m = block.mlp(block.post_attention_layernorm(h_in + a))
                rebuilt = h_in + a + m
            elif arch == "gpt2":
                block = model.transformer.h[layer]
                D = h_in.shape[-1]
                values = block.attn.c_attn(block.ln_1(h_in))[:, 2 * D :].reshape(T, n_heads, -1)
                context = torch.cat([weights[h] @ values[:, h] for h in range(n_heads)], dim=-1)
                a = block.attn.c_proj(context)
                m = block.mlp(block.ln_2(h_in + a))
                rebuilt = h_in + a + m
            else:
                block = model.encoder.layer[layer]
                values = block.attention.self.value(h_in).view(T, n_heads, -1)
                context = torch.cat([weights[h] @ values[:, h] for h in range(n_heads)], dim=-1)
                a = block.attention.output.dense(context)
                middle = block.attention.output.LayerNorm(a + h_in)
                m = block.output.dense(block.intermediate(middle))
                rebuilt = block.output.LayerNorm(m + middle)
            np.testing.assert_allclose(rebuilt.numpy(), h_out.numpy(), rtol=1e-4, atol=1e-4)
            attn_norms.append([float(np.linalg.norm(row)) for row in a.double().numpy()])
            mlp_norms.append([float(np.linalg.norm(row)) for row in m.double().numpy()])
    return np.array(attn_norms), np.array(mlp_norms)


def reference_lens(arch, model, ids, hidden, target_id=None):
    """Probability and rank of the next token (or of `target_id`) under final norm + lm_head, for every hidden state.

    Rows are the entries of `hidden` (embeddings first). Also returns, for the rank, the interval of ranks
    that float32 rounding can give (logits within a hair of the target's may fall on either side).
    """
    norm, head = final_norm(arch, model), lm_head(arch, model)
    cap = getattr(model.config, "final_logit_softcapping", None)
    T = len(ids)
    shape = (len(hidden), T)
    probs, ranks, low, high = (np.full(shape, np.nan) for _ in range(4))
    weight = head.weight.detach().double().T
    for layer, h in enumerate(hidden):
        with torch.no_grad():
            x = norm(torch.from_numpy(h).float()).double()
            logits = x @ weight
            if cap:
                logits = torch.tanh(logits / cap) * cap
        logp = torch.log_softmax(logits, dim=-1).numpy()
        logits = logits.numpy()
        for t in range(T):
            target = target_id if target_id is not None else (ids[t + 1] if t + 1 < T else None)
            if target is None:
                continue
            chosen = logits[t, target]
            eps = 1e-5 * max(1.0, np.abs(logits[t]).max())
            probs[layer, t] = np.exp(logp[t, target])
            ranks[layer, t] = 1 + np.sum(logits[t] > chosen)
            low[layer, t] = 1 + np.sum(logits[t] > chosen + eps)
            high[layer, t] = np.sum(logits[t] > chosen - eps)  # the target itself is one of them
    return probs, ranks, low, high


def assert_ranks(got, ranks, low, high, what=""):
    assert np.array_equal(np.isnan(got), np.isnan(ranks)), f"{what}: NaN cells differ"
    ok = ~np.isnan(ranks)
    assert np.all((got[ok] >= low[ok]) & (got[ok] <= high[ok])), f"{what}: rank outside the float32 interval"
    assert np.mean(got[ok] == ranks[ok]) > 0.95, f"{what}: ranks differ from the reference"


def assert_nan_rel_close(actual, expected, rtol=RTOL, what=""):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.array_equal(np.isnan(actual), np.isnan(expected)), f"{what}: NaN cells differ"
    ok = ~np.isnan(expected)
    assert_rel_close(actual[ok], expected[ok], rtol=rtol, what=what)


# --------------------------------------------------------------------------- attention-from, heads, aggregate


@pytest.mark.parametrize("query", [None, 0, 3, -4])
def test_attention_from_matches_reference(tiny_model, loaded, reference_model, query):
    attentions, _ = reference_outputs(reference_model, reference_ids(tiny_model))
    expected = reference_attention_from(attentions, -1 if query is None else query, tiny_model.causal)
    got = extract(loaded, SAMPLE_TEXT, [MetricRequest("attention-from", query=query)])
    heatmap = next(iter(got.values()))
    assert heatmap.metric == "attention-from"
    assert_nan_rel_close(heatmap.values, expected, what=f"{tiny_model.arch} attention-from {query}")
    if tiny_model.causal and query == 3:  # keys after the query are empty, the others sum to one over heads
        assert np.isnan(heatmap.values[:, 4:]).all()
        np.testing.assert_allclose(heatmap.values[:, :4].sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("heads, aggregate", [((1,), "mean"), ((0, 3), "mean"), (None, "max"), ((0, 2, 3), "max")])
def test_attention_metrics_heads_and_aggregate(tiny_model, loaded, reference_model, heads, aggregate):
    attentions, _ = reference_outputs(reference_model, reference_ids(tiny_model))
    causal = tiny_model.causal
    expected = {
        "attention": reference_attention_received(attentions, causal, heads, aggregate),
        "attention-from": reference_attention_from(attentions, -1, causal, heads, aggregate),
        "attention-entropy": reference_attention_entropy(attentions, heads, aggregate),
    }
    requests = {MetricRequest(m, heads=heads, aggregate=aggregate): m for m in expected}
    got = extract(loaded, SAMPLE_TEXT, list(requests))
    for request, metric in requests.items():
        assert_nan_rel_close(got[request].values, expected[metric], what=f"{tiny_model.arch} {metric} {heads} {aggregate}")
    assert got[next(iter(requests))].provenance["options"]["aggregate" if aggregate != "mean" else "heads"]


def test_selected_heads_differ_from_all_heads(llama_model, loaded_models):
    """The fixture's heads differ, so selecting or maximising changes the numbers (the options are not ignored)."""
    loaded = loaded_models["llama"]
    all_heads = extract(loaded, SAMPLE_TEXT, ["attention"])["attention"].values
    one = extract(loaded, SAMPLE_TEXT, [MetricRequest("attention", heads=(1,))])
    top = extract(loaded, SAMPLE_TEXT, [MetricRequest("attention", aggregate="max")])
    assert not np.allclose(next(iter(one.values())).values, all_heads, rtol=1e-2)
    assert np.all(next(iter(top.values())).values >= all_heads - 1e-6)


# --------------------------------------------------------------------------- attn-norm and mlp-norm


def test_sublayer_norms_match_reference(tiny_model, loaded, reference_model):
    ids = reference_ids(tiny_model)
    attentions, hidden = reference_outputs(reference_model, ids, tie_last=False)
    attn_expected, mlp_expected = reference_sublayers(tiny_model.arch, reference_model, attentions, hidden)
    got = extract(loaded, SAMPLE_TEXT, ["attn-norm", "mlp-norm"])
    assert_rel_close(got["attn-norm"].values, attn_expected, what=f"{tiny_model.arch} attn-norm")
    assert_rel_close(got["mlp-norm"].values, mlp_expected, what=f"{tiny_model.arch} mlp-norm")
    assert not np.allclose(got["attn-norm"].values, got["mlp-norm"].values, rtol=1e-2)


def test_sublayer_norms_need_no_attention_weights(llama_model, reference_models):
    """attn-norm works with SDPA: it needs the attention's output, not its weights."""
    loaded = models.load(refs.resolve(str(llama_model.path)), eager_attention=False)
    assert loaded.attention == "sdpa"
    attentions, hidden = reference_outputs(reference_models["llama"], reference_ids(llama_model))
    expected, _ = reference_sublayers("llama", reference_models["llama"], attentions, hidden)
    assert_rel_close(extract(loaded, SAMPLE_TEXT, ["attn-norm"])["attn-norm"].values, expected, what="sdpa attn-norm")


def test_locate_mlps(tiny_model, loaded):
    expected = {
        "llama": lambda b: b.mlp,
        "gpt2": lambda b: b.mlp,
        "bert": lambda b: None,  # BERT's feed-forward is two modules (intermediate, output): the post-norm path
    }[tiny_model.arch]
    assert [id(m) for m in loaded.mlps] == [id(expected(b)) for b in loaded.blocks]


# --------------------------------------------------------------------------- logit lens


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_logit_lens_matches_reference(arch, tiny_models, loaded_models, reference_models):
    model = reference_models[arch]
    ids = reference_ids(tiny_models[arch])
    _, hidden = reference_outputs(model, ids, tie_last=False)
    probs, ranks, low, high = reference_lens(arch, model, ids, hidden)
    requests = [MetricRequest("logit-lens", embeddings=True), MetricRequest("logit-lens-rank", embeddings=True)]
    got = extract(loaded_models[arch], SAMPLE_TEXT, requests)
    lens, rank = got[requests[0]], got[requests[1]]
    assert lens.layers == [0, 1, 2, 3]
    assert_nan_rel_close(lens.values, probs, what=f"{arch} logit-lens")
    assert np.isnan(lens.values[:, -1]).all() and not np.isnan(lens.values[:, :-1]).any()
    assert_ranks(rank.values, ranks, low, high, what=f"{arch} logit-lens-rank")
    # the last layer is the model's own output distribution, from its logits and nothing else
    logits = reference_logits(model, ids)
    own = np.exp(logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True))
    assert_rel_close(lens.values[-1, :-1], [own[t, ids[t + 1]] for t in range(len(ids) - 1)], what=f"{arch} last layer")
    own_rank = [1 + np.sum(logits[t] > logits[t, ids[t + 1]]) for t in range(len(ids) - 1)]
    np.testing.assert_array_equal(rank.values[-1, :-1], own_rank)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_logit_lens_last_layer_is_not_normalised_twice(arch, tiny_models, loaded_models, reference_models):
    """Applying the final norm to transformers' already-normalised last entry gives other numbers."""
    model = reference_models[arch]
    ids = reference_ids(tiny_models[arch])
    _, tied = reference_outputs(model, ids, tie_last=True)
    twice, _, _, _ = reference_lens(arch, model, ids, tied[-1:])
    got = extract(loaded_models[arch], SAMPLE_TEXT, ["logit-lens"])["logit-lens"].values[-1]
    assert not np.allclose(got[:-1], twice[0, :-1], rtol=1e-2)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_logit_lens_target(arch, tiny_models, loaded_models, reference_models):
    model, tiny = reference_models[arch], tiny_models[arch]
    ids = reference_ids(tiny)
    target = " the"
    target_ids = tiny.raw_tokenizer.encode(target, add_special_tokens=False).ids
    assert len(target_ids) == 1
    _, hidden = reference_outputs(model, ids, tie_last=False)
    probs, ranks, low, high = reference_lens(arch, model, ids, hidden[1:], target_id=target_ids[0])
    requests = [MetricRequest("logit-lens", target=target), MetricRequest("logit-lens-rank", target=target, layers=(2, 3))]
    got = extract(loaded_models[arch], SAMPLE_TEXT, requests)
    assert_rel_close(got[requests[0]].values, probs, what=f"{arch} target")  # every position has a value
    assert got[requests[1]].layers == [2, 3]
    assert_ranks(got[requests[1]].values, ranks[1:], low[1:], high[1:], what=f"{arch} target rank")


def test_logit_lens_target_must_be_one_token(llama_model, loaded_models):
    with pytest.raises(ExtractionError, match=r"target 'The lazy fox' is \d+ tokens.*exactly one"):
        extract(loaded_models["llama"], SAMPLE_TEXT, [MetricRequest("logit-lens", target="The lazy fox")])


def reference_distributions(arch, model, hidden):
    """log p_l `[rows, T, V]` in float64: final norm + lm_head (+ soft-capping) applied to every hidden state."""
    norm, head = final_norm(arch, model), lm_head(arch, model)
    cap = getattr(model.config, "final_logit_softcapping", None)
    out = []
    for h in hidden:
        with torch.no_grad():
            logits = norm(torch.from_numpy(h).float()).double() @ head.weight.detach().double().T
            if cap:
                logits = torch.tanh(logits / cap) * cap
        out.append(torch.log_softmax(logits, dim=-1).numpy())
    return np.stack(out)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lens_entropy_and_kl_match_reference(arch, tiny_models, loaded_models, reference_models):
    """Entropy of each lens distribution, and KL(p_final || p_l) from the model's output to it, summed term by
    term over the vocabulary: 0 at the last layer, which is the output."""
    model = reference_models[arch]
    ids = reference_ids(tiny_models[arch])
    _, hidden = reference_outputs(model, ids, tie_last=False)
    logp = reference_distributions(arch, model, hidden)  # [L + 1, T, V]
    entropy = np.zeros(logp.shape[:2])
    kl = np.zeros(logp.shape[:2])
    for layer in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            p, final = np.exp(logp[layer, t]), np.exp(logp[-1, t])
            entropy[layer, t] = -sum(p[v] * logp[layer, t, v] for v in range(len(p)))
            kl[layer, t] = sum(final[v] * (logp[-1, t, v] - logp[layer, t, v]) for v in range(len(p)))
    requests = [MetricRequest("lens-entropy", embeddings=True), MetricRequest("lens-kl", embeddings=True)]
    got = extract(loaded_models[arch], SAMPLE_TEXT, requests)
    assert_rel_close(got[requests[0]].values, entropy, what=f"{arch} lens-entropy")
    np.testing.assert_allclose(got[requests[1]].values, kl, atol=1e-5, rtol=1e-4)
    assert np.abs(got[requests[1]].values[-1]).max() < 1e-5 and kl[:-1].max() > 0.1  # (the test can fail)
    some = extract(loaded_models[arch], SAMPLE_TEXT, [MetricRequest("lens-kl", layers=(1,))])
    np.testing.assert_allclose(next(iter(some.values())).values, kl[1:2], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lens_top_tokens_are_the_full_softmax_top_five(arch, tiny_models, loaded_models, reference_models):
    """Each cell keeps the lens's five most probable tokens, decoded, with their probabilities: those of a full
    softmax over the vocabulary, sorted."""
    model = reference_models[arch]
    ids = reference_ids(tiny_models[arch])
    _, hidden = reference_outputs(model, ids, tie_last=False)
    logp = reference_distributions(arch, model, hidden[1:])
    heatmap = next(iter(extract(loaded_models[arch], SAMPLE_TEXT, ["logit-lens"]).values()))
    tokenizer = loaded_models[arch].tokenizer
    tokens, probs = heatmap.extras["top_tokens"], heatmap.extras["top_probs"]
    assert np.array(probs).shape == (len(hidden) - 1, len(ids), 5)
    for layer in range(len(hidden) - 1):
        for t in range(len(ids)):
            order = np.argsort(-logp[layer, t], kind="stable")[:5]
            np.testing.assert_allclose(probs[layer][t], np.exp(logp[layer, t, order]), rtol=1e-4, atol=1e-6)
            expected = [tokenizer.decode([int(i)], clean_up_tokenization_spaces=False) for i in order]
            all_tied = np.diff(np.exp(logp[layer, t, order])).min() > -1e-6  # (then any order is the top five)
            assert tokens[layer][t] == expected or all_tied


def test_logit_lens_on_an_encoder_is_a_clear_error(bert_model, loaded_models):
    with pytest.raises(ExtractionError, match="predicts the next token.*BertModel has no language-model head.*encoder"):
        extract(loaded_models["bert"], SAMPLE_TEXT, ["logit-lens"])


def test_locate_head_finds_final_norm_and_unembedding(tiny_models, loaded_models, reference_models):
    for arch in ("llama", "gpt2"):
        chain, head = loaded_models[arch].lens_head()
        model = loaded_models[arch].model
        assert [id(m) for m in chain] == [id(final_norm(arch, model))]
        assert head is model.lm_head


# --------------------------------------------------------------------------- layers and embeddings


def test_layers_and_embeddings_select_rows(tiny_model, loaded, reference_model):
    _, hidden = reference_outputs(reference_model, reference_ids(tiny_model), tie_last=False)
    all_rows = np.stack([np.sqrt((h**2).sum(axis=-1)) for h in hidden])  # layer 0 .. L
    request = MetricRequest("hidden-norm", layers=(1, 3), embeddings=True)
    got = next(iter(extract(loaded, SAMPLE_TEXT, [request]).values()))
    assert got.layers == [0, 1, 3]
    assert_rel_close(got.values, all_rows[[0, 1, 3]], what=f"{tiny_model.arch} rows 0, 1, 3")
    update = next(iter(extract(loaded, SAMPLE_TEXT, [MetricRequest("update", layers=(2,))]).values()))
    assert update.layers == [2] and update.values.shape[0] == 1


@pytest.mark.parametrize(
    "request_, message",
    [
        (MetricRequest("hidden-norm", layers=(2, 4)), r"layers: layer 4 is out of range: the model has 3 layers \(1-3\)"),
        (MetricRequest("attention", heads=(0, 4)), r"heads: head 4 is out of range: the model has 4 heads per layer \(0-3\)"),
        (MetricRequest("attention-from", query=200), r"query: position 200 is out of range: the text has \d+ tokens"),
        (MetricRequest("attention-from", query=-200), r"query: position -200 is out of range"),
        (MetricRequest("update", embeddings=True), "embeddings: metric 'update' has no layer 0"),
    ],
)
def test_request_errors_name_the_model_limits(llama_model, loaded_models, request_, message):
    with pytest.raises(ExtractionError, match=message):
        extract(loaded_models["llama"], SAMPLE_TEXT, [request_])


def test_one_bad_request_does_not_fail_the_others(llama_model, loaded_models):
    loaded = loaded_models["llama"]
    source = TextInput(SAMPLE_TEXT)
    results = extract_many(loaded, [(source, MetricRequest("hidden-norm", layers=(9,))), (source, MetricRequest("hidden-norm"))])
    assert isinstance(results[0], ExtractionError) and "layer 9" in str(results[0])
    np.testing.assert_array_equal(results[1].values, extract(loaded, SAMPLE_TEXT, ["hidden-norm"])["hidden-norm"].values)


# --------------------------------------------------------------------------- batching and padding


OTHER_TEXTS = ["A and B = 8 + 5 = 13.", "The residual stream grows as layers add their updates to it. Heatmaps show one row per layer."]


def all_requests(arch):
    requests = [
        MetricRequest("attention"),
        MetricRequest("attention-from"),
        MetricRequest("attention-from", query=2, heads=(0, 1), aggregate="max"),
        MetricRequest("attention-entropy"),
        MetricRequest("hidden-norm", embeddings=True),
        MetricRequest("update"),
        MetricRequest("attn-norm"),
        MetricRequest("mlp-norm", layers=(1, 3)),
    ]
    if arch != "bert":
        requests += [MetricRequest("logit-lens", embeddings=True), MetricRequest("logit-lens-rank"),
                     MetricRequest("logit-lens", target=" the")]
    return requests


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_equals_one_by_one(tiny_model, loaded, padding_side):
    texts = [SAMPLE_TEXT, *OTHER_TEXTS]
    requests = all_requests(tiny_model.arch)
    items = [(TextInput(t), r) for t in texts for r in requests]
    if tiny_model.arch != "bert":
        loaded.lens_head()  # found once per model, with a forward pass of its own
    calls = []
    handle = loaded.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        batched = extract_many(loaded, items, batch_size=8, padding_side=padding_side)
    finally:
        handle.remove()
    assert len(calls) == 1  # one forward pass for the three texts
    lengths = {len(h.tokens) for h in batched}
    assert len(lengths) == 3  # really padded
    for (source, request), got in zip(items, batched):
        alone = extract_many(loaded, [(source, request)], batch_size=1)[0]
        assert got.tokens == alone.tokens and got.layers == alone.layers
        what = f"{tiny_model.arch} {padding_side} {request}"
        if request.metric == "logit-lens-rank":
            np.testing.assert_array_equal(got.values, alone.values, err_msg=what)
        else:
            assert_nan_rel_close(got.values, alone.values, what=what)


def test_batches_respect_size_and_token_budget(llama_model, loaded_models):
    loaded = loaded_models["llama"]
    texts = [SAMPLE_TEXT, *OTHER_TEXTS, "One more text."]
    calls = []
    handle = loaded.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        extract_many(loaded, [(TextInput(t), MetricRequest("hidden-norm")) for t in texts], batch_size=2)
        assert len(calls) == 2
        calls.clear()
        extract_many(loaded, [(TextInput(t), MetricRequest("hidden-norm")) for t in texts], token_budget=30)
        assert len(calls) >= 3
    finally:
        handle.remove()


# --------------------------------------------------------------------------- chunked attention and the eager path


def test_chunked_attention_matches_reference(tiny_model, loaded, reference_model, monkeypatch):
    """With chunks of a few queries the weights never exist whole, and every attention metric is unchanged."""
    assert loaded.attention == "layerheat"
    attentions, _ = reference_outputs(reference_model, reference_ids(tiny_model))
    T = attentions.shape[-1]
    monkeypatch.setattr(chunked, "ATTENTION_CHUNK_BYTES", 4 * 4 * T * 3)  # 3 queries per chunk (by the memory budget)
    seen = []
    original = chunked._eager_function

    def spy(module):
        fn = original(module)

        def wrapped(m, query, *args, **kwargs):
            seen.append(query.shape[2])
            return fn(m, query, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(chunked, "_eager_function", spy)
    got = extract(loaded, SAMPLE_TEXT, ["attention", "attention-entropy", MetricRequest("attention-from", query=5)])
    assert max(seen) == 3 and len(seen) == tiny_model.num_layers * -(-T // 3)
    assert_rel_close(got["attention"].values, reference_attention_received(attentions, tiny_model.causal), what="chunked")
    assert_rel_close(got["attention-entropy"].values, reference_attention_entropy(attentions), what="chunked entropy")
    assert_nan_rel_close(
        got[MetricRequest("attention-from", query=5)].values,
        reference_attention_from(attentions, 5, tiny_model.causal),
        what="chunked from",
    )


def test_eager_attention_path_matches_reference(llama_model, reference_models):
    """Models that do not use transformers' attention interface: weights from each eager attention module."""
    loaded = models.load(refs.resolve(str(llama_model.path)), eager_attention=False)
    loaded.model.set_attn_implementation("eager")
    loaded = dataclasses.replace(loaded, attention="eager")
    attentions, _ = reference_outputs(reference_models["llama"], reference_ids(llama_model))
    got = extract(loaded, SAMPLE_TEXT, ["attention", "attention-entropy"])
    assert_rel_close(got["attention"].values, reference_attention_received(attentions, True), what="eager")
    assert_rel_close(got["attention-entropy"].values, reference_attention_entropy(attentions), what="eager entropy")


# --------------------------------------------------------------------------- chat and generate


def test_chat_wraps_the_text_and_marks_the_template(llama_model, loaded_models, reference_models):
    loaded = loaded_models["llama"]
    prompt = f"<s>[system] Be brief.</s><s>[user] {SAMPLE_TEXT}</s><s>[assistant]"
    ids = llama_model.raw_tokenizer.encode(prompt, add_special_tokens=False).ids
    heatmap = extract(loaded, SAMPLE_TEXT, ["hidden-norm"], chat=True)["hidden-norm"]
    assert heatmap.provenance["token_ids"] == ids
    assert heatmap.provenance["prompt"] == prompt and heatmap.provenance["chat"] is True
    assert "".join(t for t, k in zip(heatmap.tokens, heatmap.kinds) if k == "text").strip() == SAMPLE_TEXT
    assert heatmap.kinds[0] == "template" and heatmap.kinds[-1] == "template"
    assert set(heatmap.kinds) == {"template", "text"}
    assert all(k == "template" for k, s in zip(heatmap.kinds, heatmap.special) if s)
    _, hidden = reference_outputs(reference_models["llama"], ids)
    assert_rel_close(heatmap.values, reference_hidden_norm(hidden), what="chat hidden-norm")


def test_chat_without_a_template_is_an_error(gpt2_model, loaded_models):
    with pytest.raises(ExtractionError, match="no chat template"):
        extract(loaded_models["gpt2"], SAMPLE_TEXT, ["hidden-norm"], chat=True)


def reference_greedy(model, ids, n, stop):
    """Argmax continuation without a cache: a full forward pass per new token."""
    ids = list(ids)
    new = []
    with torch.no_grad():
        for _ in range(n):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            new.append(token)
            ids.append(token)
            if token in stop:
                break
    return new


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_appends_a_greedy_continuation(arch, tiny_models, loaded_models, reference_models):
    tiny, loaded, model = tiny_models[arch], loaded_models[arch], reference_models[arch]
    ids = reference_ids(tiny)
    stop = {model.config.eos_token_id}
    expected = reference_greedy(model, ids, 6, stop)
    heatmap = extract(loaded, SAMPLE_TEXT, ["hidden-norm"], generate=6)["hidden-norm"]
    assert heatmap.provenance["token_ids"] == ids + expected
    assert heatmap.provenance["generated_token_ids"] == expected
    assert heatmap.provenance["generated_text"] == tiny.raw_tokenizer.decode(expected, skip_special_tokens=False)
    assert heatmap.kinds[len(ids):] == ["generated"] * len(expected)
    assert "generated" not in heatmap.kinds[: len(ids)]
    _, hidden = reference_outputs(model, ids + expected)
    assert_rel_close(heatmap.values, reference_hidden_norm(hidden), what=f"{arch} prompt + answer")


def test_generate_counts_against_max_tokens(llama_model, loaded_models):
    n = len(reference_ids(llama_model))
    with pytest.raises(ExtractionError, match=f"{n} tokens \\+ 5 to generate, more than max_tokens={n + 4}"):
        extract(loaded_models["llama"], SAMPLE_TEXT, ["hidden-norm"], max_tokens=n + 4, generate=5)


def test_generate_on_an_encoder_is_an_error(bert_model, loaded_models):
    with pytest.raises(ExtractionError, match="generate needs a causal language model"):
        extract(loaded_models["bert"], SAMPLE_TEXT, ["hidden-norm"], generate=3)


def test_chat_and_generate_together(llama_model, loaded_models):
    heatmap = extract(loaded_models["llama"], SAMPLE_TEXT, ["attention"], chat=True, generate=4)["attention"]
    kinds = heatmap.kinds
    assert kinds[0] == "template" and "text" in kinds
    assert kinds[-1] == "generated" and kinds.index("generated") > max(i for i, k in enumerate(kinds) if k == "text")


# --------------------------------------------------------------------------- specs to heatmaps


def test_extract_specs_uses_every_option(llama_model, loaded_models, reference_models):
    from mkdocs_layerheat.spec import parse_spec

    loaded = loaded_models["llama"]
    specs = [
        parse_spec("model: m\ntext: x\nmetric: attention-from\nquery: 3\nheads: 0-1\naggregate: max\nlayers: 2-3"),
        parse_spec("model: m\ntext: x\nmetric: hidden-norm\nembeddings: true\nlayers: [3]"),
        parse_spec("model: m\ntext: x\nmetric: hidden-norm\nchat: true"),
    ]
    specs = [dataclasses.replace(s, text=SAMPLE_TEXT) for s in specs]
    got = extract_specs(loaded, specs)
    attentions, _ = reference_outputs(reference_models["llama"], reference_ids(llama_model))
    expected = reference_attention_from(attentions, 3, True, heads=(0, 1), aggregate="max")[1:]
    assert_nan_rel_close(got[specs[0]].values, expected, what="spec attention-from")
    assert got[specs[1]].layers == [0, 3]
    assert got[specs[2]].kinds[0] == "template"


# --------------------------------------------------------------------------- more architectures


@pytest.fixture(scope="module", params=MORE_ARCHS)
def more(request, more_models):
    """(tiny model, the package's LoadedModel, an independent eager reference) for GPT-NeoX, Qwen2 and Gemma2."""

    tiny = more_models[request.param]
    reference = AutoModelForCausalLM.from_pretrained(tiny.path, attn_implementation="eager", dtype=torch.float32).eval()
    return tiny, models.load(refs.resolve(str(tiny.path))), reference


def test_more_architectures_match_reference(more):
    tiny, loaded, reference = more
    arch = tiny.arch
    assert loaded.attention == "layerheat" and all(m is not None for m in loaded.mlps)
    ids = AutoTokenizer.from_pretrained(tiny.path)(SAMPLE_TEXT)["input_ids"]  # Qwen2's tokenizer class has its own rules
    attentions, hidden = reference_outputs(reference, ids, tie_last=False)
    got = extract(loaded, SAMPLE_TEXT, list(ONE_PASS))
    assert got["attention"].provenance["token_ids"] == ids
    cfg = reference.config
    windows = [cfg.sliding_window if t == "sliding_attention" else None for t in getattr(cfg, "layer_types", None) or []]
    if arch == "gemma2":  # the window is shorter than the text: it changes which queries see a key
        assert windows[0] == 6 and windows[1] is None and len(ids) > 12
    received = reference_attention_received(attentions, True, windows=windows or None)
    assert_rel_close(got["attention"].values, received, what=f"{arch} attention")
    assert_rel_close(got["attention-entropy"].values, reference_attention_entropy(attentions), what=f"{arch} entropy")
    from_last = reference_attention_from(attentions, -1, True, windows=windows or None)
    assert_nan_rel_close(got["attention-from"].values, from_last, what=f"{arch} from")
    if arch == "gemma2":
        assert not np.allclose(received, reference_attention_received(attentions, True), rtol=1e-2)
    assert_rel_close(got["hidden-norm"].values, reference_hidden_norm(hidden), what=f"{arch} hidden-norm")
    attn_norms, mlp_norms = reference_sublayers(arch, reference, attentions, hidden)
    assert_rel_close(got["attn-norm"].values, attn_norms, what=f"{arch} attn-norm")
    assert_rel_close(got["mlp-norm"].values, mlp_norms, what=f"{arch} mlp-norm")
    probs, ranks, low, high = reference_lens(arch, reference, ids, hidden[1:])
    assert_nan_rel_close(got["logit-lens"].values, probs, what=f"{arch} logit-lens")
    assert_ranks(got["logit-lens-rank"].values, ranks, low, high, what=f"{arch} rank")
    logits = reference_logits(reference, ids)  # the model's own output, soft-capping included
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    own = [np.exp(logp[t, ids[t + 1]]) for t in range(len(ids) - 1)]
    assert_rel_close(got["logit-lens"].values[-1, :-1], own, what=f"{arch} last layer = model output")


def test_more_architectures_batched_equals_one_by_one(more):
    tiny, loaded, _ = more
    items = [(TextInput(t), r) for t in [SAMPLE_TEXT, *OTHER_TEXTS] for r in all_requests(tiny.arch)]
    batched = extract_many(loaded, items, padding_side="left")
    for (source, request), got in zip(items, batched):
        alone = extract_many(loaded, [(source, request)], batch_size=1)[0]
        assert_nan_rel_close(got.values, alone.values, what=f"{tiny.arch} {request}")


# --------------------------------------------------------------------------- the `layerheat extract` command


def test_cli_extract_supports_the_options(llama_model, loaded_models):
    import json

    from click.testing import CliRunner

    from mkdocs_layerheat.cli import main

    runner = CliRunner()
    args = ["extract", "--model", str(llama_model.path), "--text", SAMPLE_TEXT]
    result = runner.invoke(main, args + ["--metric", "attention-from", "--query", "2", "--heads", "0-1", "--aggregate", "max", "--layers", "2-3"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    request = MetricRequest("attention-from", query=2, heads=(0, 1), aggregate="max", layers=(2, 3))
    expected = extract(loaded_models["llama"], SAMPLE_TEXT, [request])[request]
    assert data["layers"] == [2, 3] and data["metric"] == "attention-from"
    got = np.array([[np.nan if v is None else v for v in row] for row in data["values"]])
    np.testing.assert_allclose(got, expected.values, rtol=1e-6)
    result = runner.invoke(main, args + ["--metric", "logit-lens", "--target", " the", "--embeddings", "--chat", "--generate", "3"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["layers"] == [0, 1, 2, 3] and data["kinds"][0] == "template" and data["kinds"][-1] == "generated"
    result = runner.invoke(main, args + ["--metric", "attention", "--heads", "7"])
    assert result.exit_code != 0 and "head 7 is out of range: the model has 4 heads" in result.output
    result = runner.invoke(main, args + ["--metric", "update", "--embeddings"])
    assert result.exit_code == 2 and "'embeddings' does not apply to metric 'update'" in result.output


def test_chunks_with_padding_and_windows_change_nothing(more, monkeypatch):
    """Chunks of 3 queries, left padding, a sliding window (Gemma2): the same numbers as whole, one by one."""
    tiny, loaded, _ = more
    items = [(TextInput(t), r) for t in [SAMPLE_TEXT, *OTHER_TEXTS] for r in all_requests(tiny.arch)[:4]]
    whole = [extract_many(loaded, [item], batch_size=1)[0] for item in items]
    monkeypatch.setattr(chunked, "ATTENTION_QUERY_CHUNK", 3)
    batched = extract_many(loaded, items, padding_side="left")
    for (_source, request), got, expected in zip(items, batched, whole):
        assert_nan_rel_close(got.values, expected.values, what=f"{tiny.arch} chunked {request}")


# --------------------------------------------------------------------------- device, dtype, trust_remote_code


def test_bfloat16_is_close_to_float32(llama_model, loaded_models):
    """A half-precision model gives the same picture, roughly, and its lens still reproduces its own logits."""
    loaded = models.load(refs.resolve(str(llama_model.path)), dtype="bfloat16")
    assert loaded.dtype == "bfloat16" and next(loaded.model.parameters()).dtype == torch.bfloat16
    metrics = ["attention", "hidden-norm", "attn-norm", "logit-lens"]
    half = extract(loaded, SAMPLE_TEXT, metrics)
    full = extract(loaded_models["llama"], SAMPLE_TEXT, metrics)
    for metric in metrics:
        assert half[metric].values.dtype == np.float32 and half[metric].provenance["dtype"] == "bfloat16"
        a, b = half[metric].values, full[metric].values
        ok = ~np.isnan(b)
        assert np.abs(a[ok] - b[ok]).max() <= 0.25 * np.abs(b[ok]).max(), metric  # bfloat16 has 8 bits of mantissa


def test_auto_device_and_dtype_on_a_cpu_machine(llama_model):
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("an accelerator is present")
    assert models.resolve_device("auto") == "cpu" and models.resolve_dtype("auto", "cpu") == "float32"
    assert models.resolve_dtype("auto", "cuda:1") in ("bfloat16", "float16")
    with pytest.raises(refs.ModelError, match="unknown dtype 'float8'"):
        models.resolve_dtype("float8", "cpu")
    loaded = models.load(refs.resolve(str(llama_model.path)), device="auto", dtype="auto")
    assert loaded.dtype == "float32" and loaded.device.type == "cpu"


def test_trust_remote_code_only_for_the_models_mkdocs_yml_allows(llama_model, tmp_path, monkeypatch):
    from mkdocs_layerheat import plan
    from mkdocs_layerheat.spec import parse_spec

    calls = []
    real = models.load

    def spy(ref, *args, **kwargs):
        calls.append((ref.name, kwargs.get("trust_remote_code"), kwargs.get("dtype")))
        return real(ref, *args, **kwargs)

    monkeypatch.setattr(models, "load", spy)
    aliases = {"trusted": str(llama_model.path), "other": str(llama_model.path)}
    settings = plan.Settings(aliases=aliases, base_dir=tmp_path, cache_dir=tmp_path / "cache", trust_remote_code=("trusted",))
    specs = [parse_spec(f"model: {m}\ntext: hello {m}\nmetric: hidden-norm") for m in ("trusted", "other")]
    outcomes = plan.run(specs, settings)
    assert all(o.error is None for o in outcomes.values())
    assert sorted(calls) == [("other", False, "float32"), ("trusted", True, "float32")]


def test_device_map_auto_loads_through_accelerate(llama_model, loaded_models):
    """`device_map: auto` (one CPU here): accelerate places the weights, the numbers do not change."""
    loaded = models.load(refs.resolve(str(llama_model.path)), device_map="auto")
    metrics = ["attention", "attn-norm", "logit-lens"]
    got = extract(loaded, SAMPLE_TEXT, metrics)
    expected = extract(loaded_models["llama"], SAMPLE_TEXT, metrics)
    for metric in metrics:
        assert_nan_rel_close(got[metric].values, expected[metric].values, what=f"device_map {metric}")
