"""The catalogue every stage may import, without torch: what each metric measures and which options apply, the
normalisations, palettes and colour ranges, dtypes and limits. The torch reducers that compute the metrics are
in `reducers.py`; docs/metrics.md gives each definition in full.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

DEFAULT_MAX_TOKENS = 4096  # tokens a text may have (a block's `max_tokens`, `layerheat extract --max-tokens`)
DTYPES = ("auto", "float32", "bfloat16", "float16")
# light yellow to dark brown; two colour-blind-safe sequential maps; blue-white-red for signed values
PALETTES = ("yellow-brown", "cividis", "viridis", "diverging")
COLOR_RANGES = ("full", "robust")
RESTORES = ("hidden", "mlp", "attn")  # causal-trace: what is restored, the block's output or a sublayer's
NORMALIZATIONS = ("none", "global", "layer", "token")


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # short, for the colour bar and tooltips
    definition: str  # one sentence, shown in summaries and docs
    site: str  # "attention" (weights), "block" (block input/output), "sublayer", "lens" or "intervention" (runs again)
    options: frozenset[str] = frozenset()  # metric-specific spec keys that apply (query, target, heads, aggregate)
    embeddings: bool = False  # whether layer 0 (the embedding output) is defined


ATTENTION_OPTIONS = frozenset({"heads", "aggregate"})
AGGREGATES = ("mean", "max")

METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            name="attention",
            label="attention received",
            definition=(
                "attention received: the attention paid to the token, averaged over the queries that can see it "
                "and over heads"
            ),
            site="attention",
            options=ATTENTION_OPTIONS,
        ),
        Metric(
            name="attention-from",
            label="attention from the query",
            definition=(
                "attention from one query: the attention that the query token pays to each token, averaged over heads "
                "(tokens the query cannot see are empty)"
            ),
            site="attention",
            options=ATTENTION_OPTIONS | {"query"},
        ),
        Metric(
            name="attention-entropy",
            label="attention entropy (nats)",
            definition=(
                "attention entropy: the entropy, in nats, of the token's own attention distribution as a query, "
                "averaged over heads (low: the token looks at few tokens; high: it spreads its attention)"
            ),
            site="attention",
            options=ATTENTION_OPTIONS,
        ),
        Metric(
            name="hidden-norm",
            label="hidden-state norm",
            definition="hidden-state norm: the L2 norm of the token's residual-stream vector at the output of each block",
            site="block",
            embeddings=True,
        ),
        Metric(
            name="update",
            label="update",
            definition=(
                "update: 1 − cosine(h[l−1], h[l]) between the token's hidden state before and after block l, "
                "i.e. how much the block turns the token's representation"
            ),
            site="block",
        ),
        Metric(
            name="attn-norm",
            label="attention update norm",
            definition=(
                "attention-sublayer norm: the L2 norm of what the attention sublayer of block l adds to the token's "
                "residual stream"
            ),
            site="sublayer",
        ),
        Metric(
            name="mlp-norm",
            label="MLP update norm",
            definition=(
                "MLP-sublayer norm: the L2 norm of what the MLP sublayer of block l adds to the token's residual stream"
            ),
            site="sublayer",
        ),
        Metric(
            name="logit-lens",
            label="logit-lens probability",
            definition=(
                "logit lens: the probability that the model's final norm and unembedding, applied to the hidden state "
                "after block l, give to the token that comes next (or to the chosen target token)"
            ),
            site="lens",
            options=frozenset({"target"}),
            embeddings=True,
        ),
        Metric(
            name="logit-lens-rank",
            label="logit-lens rank",
            definition=(
                "logit-lens rank: the rank (1 = top) of the next token (or of the chosen target token) among all tokens "
                "under the lens of layer l: the model's final norm and unembedding applied to the hidden state"
            ),
            site="lens",
            options=frozenset({"target"}),
            embeddings=True,
        ),
        Metric(
            name="lens-entropy",
            label="lens entropy (nats)",
            definition=(
                "lens entropy: the entropy, in nats, of the next-token distribution that the model's final norm and "
                "unembedding give when applied to the hidden state after block l (low: the lens is sure of one token)"
            ),
            site="lens",
            embeddings=True,
        ),
        Metric(
            name="lens-kl",
            label="KL to the output (nats)",
            definition=(
                "lens KL divergence: KL(p_final ‖ p_l), in nats, from the model's own next-token distribution to the "
                "one the lens of layer l gives (0: the layer already predicts what the model will)"
            ),
            site="lens",
            embeddings=True,
        ),
        Metric(
            name="causal-trace",
            label="p(answer)",
            definition=(
                "causal trace (Meng et al. 2022): the probability of the answer at the last position when the "
                "subject's token embeddings are corrupted with noise and this token's state at layer l is restored "
                "to its clean value, averaged over the noise samples"
            ),
            site="intervention",
            options=frozenset({"subject", "answer", "samples", "noise", "seed", "restore", "window"}),
        ),
        Metric(
            name="activation-patching",
            label="logit difference restored",
            definition=(
                "patching effect (activation patching): the share of the logit difference between the clean answer "
                "and the corrupted "
                "text's answer that patching this token's block-l output from the clean run into the corrupted run "
                "restores (1: the clean behaviour, 0: no effect)"
            ),
            site="intervention",
            options=frozenset({"corrupt", "answer"}),
        ),
    )
}
ONE_PASS = tuple(name for name, m in METRICS.items() if m.site != "intervention")  # reductions of one forward pass
INTERVENTION_OPTIONS = frozenset({"subject", "answer", "samples", "noise", "seed", "restore", "window", "corrupt"})


@dataclass(frozen=True)
class MetricRequest:
    """One metric with its options: everything that determines a heatmap's rows, given a token sequence."""

    metric: str
    query: int | None = None  # attention-from: the query position (negative: from the end); None: the last token
    target: str | None = None  # lens metrics: a single-token string instead of the next token
    heads: tuple[int, ...] | None = None  # attention metrics: 0-based head indices; None: all heads
    aggregate: str = "mean"  # attention metrics: how heads combine
    layers: tuple[int, ...] | None = None  # 1-based block numbers, ascending; None: all blocks
    embeddings: bool = False  # add layer 0 (the embedding output) where the metric defines it
    subject: str | None = None  # causal-trace: the text whose tokens are corrupted
    answer: str | None = None  # interventions: the one-token answer read at the last position (default: greedy)
    samples: int = 10  # causal-trace: noised copies (ROME's defaults from here on)
    noise: float = 3.0  # causal-trace: the noise's scale, in standard deviations of the input embeddings
    seed: int = 1  # causal-trace: numpy.random.RandomState seed of the noise
    restore: str = "hidden"  # causal-trace: RESTORES
    window: int = 10  # causal-trace: layers of sublayer outputs restored together (restore mlp or attn)
    corrupt: str | None = None  # activation-patching: the corrupted text, of the same token length

    def key_options(self) -> dict[str, Any]:
        """The options that differ from their defaults (the metric name excluded), as plain JSON values."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "metric" and value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out
