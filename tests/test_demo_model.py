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
