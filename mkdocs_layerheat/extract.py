"""Running texts through a loaded model: every requested metric reduced inside forward hooks, layer by layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from .heatmap import Heatmap
from .metrics import METRICS, MetricError
from .models import LoadedModel, first_line


class ExtractionError(Exception):
    """A text that could not be run through the model."""


def tokenize(loaded: LoadedModel, text: str, max_tokens: int) -> tuple[list[int], list[str], list[bool]]:
    """Token ids of `text`, the exact text piece each one stands for, and which are special tokens."""
    tokenizer = loaded.tokenizer
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if len(ids) > max_tokens:
        raise ExtractionError(f"text has {len(ids)} tokens, more than max_tokens={max_tokens}")
    special_ids = set(tokenizer.all_special_ids)
    pieces = [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
    return ids, pieces, [i in special_ids for i in ids]


def extract(loaded: LoadedModel, text: str, metrics: list[str], max_tokens: int = 4096) -> dict[str, Heatmap]:
    """One forward pass of `text`, returning a raw `Heatmap` per requested metric.

    Each hook reduces its module's output to one value per token at once, so no more than one
    layer's attention weights exist at any time.
    """
    import torch

    ids, pieces, special = tokenize(loaded, text, max_tokens)
    rows: dict[str, list[Any]] = {name: [None] * len(loaded.blocks) for name in metrics}
    handles = []
    errors: list[Exception] = []

    def hook_for(name: str, layer: int):
        def hook(module, args, kwargs, output):
            hidden_in = args[0] if args else kwargs.get("hidden_states")
            try:
                rows[name][layer] = METRICS[name].reduce(hidden_in, output, loaded.causal).detach().cpu().numpy()
            except MetricError as exc:
                errors.append(exc)

        return hook

    try:
        for name in metrics:
            sites = loaded.attentions if METRICS[name].site == "attention" else loaded.blocks
            for layer, module in enumerate(sites):
                if module is None:
                    raise ExtractionError(f"metric '{name}': no attention module found in block {layer + 1}")
                handles.append(module.register_forward_hook(hook_for(name, layer), with_kwargs=True))
        device = next(loaded.model.parameters()).device
        with torch.inference_mode():
            loaded.model(input_ids=torch.tensor([ids], device=device), use_cache=False)
    except ExtractionError:
        raise
    except Exception as exc:
        raise ExtractionError(f"forward pass failed: {first_line(exc)}") from exc
    finally:
        for handle in handles:
            handle.remove()
    if errors:
        raise ExtractionError(f"metric cannot be computed: {errors[0]}")

    provenance = {"text": text, "token_ids": ids}
    return {
        name: Heatmap(
            values=np.stack(rows[name]),
            tokens=pieces,
            layers=list(range(1, len(loaded.blocks) + 1)),
            metric=name,
            model=str(loaded.ref),
            special=special,
            provenance=provenance,
        )
        for name in metrics
    }
