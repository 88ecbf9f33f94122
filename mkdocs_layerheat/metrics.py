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
    reduce: Callable[[Any, Any, bool], Any]  # (module input hidden states, module output, causal) -> tensor [tokens]


def _hidden(output: Any) -> Any:
    return (output[0] if isinstance(output, tuple) else output)[0].float()


def _weights(output: Any) -> Any:
    """One layer's attention weights `[heads, queries, keys]` from an attention module's output."""
    weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
    if weights is None:
        raise MetricError("this model's attention does not return its weights (needs the eager implementation)")
    return weights[0].float()


def _hidden_norm(hidden_in: Any, output: Any, causal: bool) -> Any:
    return _hidden(output).norm(dim=-1)


def _update(hidden_in: Any, output: Any, causal: bool) -> Any:
    import torch

    return 1 - torch.nn.functional.cosine_similarity(hidden_in[0].float(), _hidden(output), dim=-1)


def _attention_entropy(hidden_in: Any, output: Any, causal: bool) -> Any:
    import torch

    return -torch.special.xlogy(_weights(output), _weights(output)).sum(dim=-1).mean(dim=0)


def _attention_received(hidden_in: Any, output: Any, causal: bool) -> Any:
    weights = _weights(output)
    received = weights.mean(dim=0).sum(dim=0)  # mean over heads, summed over queries -> [T]
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
        Metric(
            name="update",
            label="update",
            definition=(
                "update: 1 − cosine(h[l−1], h[l]) between the token's hidden state before and after block l, "
                "i.e. how much the block turns the token's representation"
            ),
            site="block",
            reduce=_update,
        ),
        Metric(
            name="attention-entropy",
            label="attention entropy (nats)",
            definition=(
                "attention entropy: the entropy, in nats, of the token's own attention distribution as a query, "
                "averaged over heads (low: the token looks at few tokens; high: it spreads its attention)"
            ),
            site="attention",
            reduce=_attention_entropy,
        ),
    )
}
