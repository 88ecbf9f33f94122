"""One definition per metric: where it hooks into a block and how one layer reduces to a value per token.

Importable without torch: tensors only appear inside the reducers, which run during extraction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


class MetricError(Exception):
    """The model cannot provide what the metric needs."""


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # short, for the colour bar and tooltips
    definition: str  # one sentence, shown in summaries and docs
    site: str  # "block" (a transformer block's output) or "attention" (its self-attention module's output)
    reduce: Callable[[Any, bool], Any]  # (module output, causal) -> tensor [tokens]


def _hidden_norm(output: Any, causal: bool) -> Any:
    hidden = output[0] if isinstance(output, tuple) else output
    return hidden[0].float().norm(dim=-1)


def _attention_received(output: Any, causal: bool) -> Any:
    weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
    if weights is None:
        raise MetricError("this model's attention does not return its weights (needs the eager implementation)")
    received = weights[0].float().mean(dim=0).sum(dim=0)  # mean over heads, summed over queries -> [T]
    n = received.shape[0]
    if causal:  # key k is seen by the queries k..T-1
        import torch

        seen_by = torch.arange(n, 0, -1, dtype=received.dtype, device=received.device)
    else:
        seen_by = n
    return received / seen_by


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            name="attention",
            label="attention received",
            definition=(
                "attention received: for each token, the attention paid to it by the queries that can see it, "
                "averaged over those queries and over heads"
            ),
            site="attention",
            reduce=_attention_received,
        ),
        Metric(
            name="hidden-norm",
            label="hidden-state norm",
            definition="hidden-state norm: the L2 norm of the token's residual-stream vector at the output of each block",
            site="block",
            reduce=_hidden_norm,
        ),
    )
}
