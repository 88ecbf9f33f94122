"""Models larger than memory: `device_map: auto` with a `max_memory` below the model's size sends part of the
weights through accelerate's offload (to `offload_folder` on disk), and every metric comes out the same."""

from __future__ import annotations

import numpy as np

from mkdocs_layerheat import models, refs
from mkdocs_layerheat.catalog import ONE_PASS
from mkdocs_layerheat.extract import extract


def test_offloaded_model_gives_the_in_memory_values(llama_model, loaded_models, tmp_path):
    in_memory = loaded_models["llama"]
    size = sum(p.numel() * p.element_size() for p in in_memory.model.parameters())
    offloaded = models.load(refs.resolve(str(llama_model.path)), device_map="auto",
                            max_memory={"cpu": str(size // 3)}, offload_folder=str(tmp_path / "offload"))
    placed = set(getattr(offloaded.model, "hf_device_map", {}).values())
    assert "disk" in placed, placed  # part of the model really is offloaded
    assert any(p.device.type == "meta" for p in offloaded.model.parameters())  # loaded only while it runs
    text = "The quick brown fox jumps over the lazy dog."
    want, got = extract(in_memory, text, list(ONE_PASS)), extract(offloaded, text, list(ONE_PASS))
    for metric in ONE_PASS:
        assert got[metric].tokens == want[metric].tokens
        np.testing.assert_allclose(got[metric].values, want[metric].values, rtol=1e-5, atol=1e-6, equal_nan=True,
                                   err_msg=metric)

