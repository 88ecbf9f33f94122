"""Running texts through a loaded model: every requested metric reduced inside forward hooks, layer by layer.

Texts of one model run in batches (padded on the right by default; padding changes no value: padded
positions are masked out of the attention and of every average, and position ids restart at each
text's first token). Inside a forward pass each hook reduces its module's output at once, and the
attention weights are reduced chunk by chunk of queries, so neither the `[heads, T, T]` weights of a
layer nor the hidden states of all layers are ever held.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from . import interventions
from .catalog import DEFAULT_MAX_TOKENS, METRICS, MetricRequest
from .collector import layer_rows, run, target_id
from .heatmap import Heatmap
from .models import LoadedModel
from .refs import ModelError
from .texts import ExtractionError, Sequence, TextInput, prepare

DEFAULT_BATCH_SIZE = 8
DEFAULT_TOKEN_BUDGET = 8192  # batch size x padded length


def extract(
    loaded: LoadedModel,
    text: str,
    metrics: list[Any],
    max_tokens: int = DEFAULT_MAX_TOKENS,
    *,
    chat: bool = False,
    generate: int = 0,
) -> dict[Any, Heatmap]:
    """One forward pass of `text`, returning a raw `Heatmap` per requested metric.

    `metrics` are metric names or `MetricRequest`s (a metric with options); the result is keyed by them.
    Raises `ExtractionError` for the first one that cannot be computed.
    """
    source = TextInput(text, chat, generate, max_tokens)
    requests = [m if isinstance(m, MetricRequest) else MetricRequest(m) for m in metrics]
    results = extract_many(loaded, [(source, r) for r in requests], batch_size=1)
    for result in results:
        if isinstance(result, ExtractionError):
            raise result
    return dict(zip(metrics, results))


def extract_specs(loaded: LoadedModel, specs: list[Any], **batching: Any) -> dict[Any, Heatmap | ExtractionError]:
    """A `Heatmap`, or the `ExtractionError` that prevented it, for every `HeatmapSpec` (all of one model);
    `on_done(n)`, when given, hears of each `n` specs done."""
    specs = list(dict.fromkeys(specs))
    items = [(TextInput(s.text, s.chat, s.generate, s.max_tokens), s.request()) for s in specs]
    if loaded.device.type == "cpu":  # one text per pass: a value never depends on the texts beside it
        batching.setdefault("batch_size", 1)
    results = extract_many(loaded, items, **batching)
    return dict(zip(specs, results))


def extract_many(
    loaded: LoadedModel,
    items: list[tuple[TextInput, MetricRequest]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    padding_side: str = "right",
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    on_done: Callable[[int], None] | None = None,
) -> list[Heatmap | ExtractionError]:
    """A `Heatmap` or an `ExtractionError` per item, in order (`on_done(n)`: n more items are done).

    Each distinct text is prepared once and runs in one forward pass for all of its metrics; texts
    are grouped by length into batches of at most `batch_size` texts and `token_budget` padded tokens.
    """
    done = on_done or (lambda n: None)
    results: list[Heatmap | ExtractionError | None] = [None] * len(items)
    sequences: dict[TextInput, Sequence | ExtractionError] = {}
    todo: dict[TextInput, list[tuple[int, MetricRequest]]] = defaultdict(list)
    for index, (source, request) in enumerate(items):
        if source not in sequences:
            try:
                sequences[source] = prepare(loaded, source)
            except ExtractionError as exc:
                sequences[source] = exc
        seq = sequences[source]
        try:
            if isinstance(seq, ExtractionError):
                raise seq
            _check(loaded, request, seq)
        except ExtractionError as exc:
            results[index] = exc
            done(1)
            continue
        if METRICS[request.metric].site == "intervention":
            results[index] = _intervene(loaded, source, seq, request)
            done(1)
            continue
        todo[source].append((index, request))

    batches: list[list[TextInput]] = []
    for source in sorted(todo, key=lambda s: len(sequences[s].ids)):
        n = len(sequences[source].ids)
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * n <= token_budget:
            batches[-1].append(source)
        else:
            batches.append([source])
    for batch in batches:
        seqs = [sequences[s] for s in batch]
        requests = list(dict.fromkeys(r for s in batch for _, r in todo[s]))
        try:
            values = run(loaded, seqs, requests, padding_side)
        except ExtractionError as exc:
            for source in batch:
                for index, _ in todo[source]:
                    results[index] = exc
            done(sum(len(todo[s]) for s in batch))
            continue
        for b, (source, seq) in enumerate(zip(batch, seqs)):
            for index, request in todo[source]:
                cells, top = values[request][b]
                results[index] = _heatmap(loaded, seq, request, cells)
                results[index].extras.update(top)
        done(sum(len(todo[s]) for s in batch))
    return results  # type: ignore[return-value]


def _intervene(loaded: LoadedModel, source: TextInput, seq: Sequence, request: MetricRequest) -> Heatmap | ExtractionError:
    """A causal trace or an activation patching of one text: runs of their own, not reductions of one pass."""
    rows = layer_rows(loaded, request)
    try:
        if request.metric == "causal-trace":
            values, trace = interventions.causal_trace(loaded, seq.ids, seq.pieces, request, rows)
        else:
            corrupt = prepare(loaded, TextInput(request.corrupt, source.chat, 0, source.max_tokens))
            values, trace = interventions.activation_patching(loaded, seq.ids, corrupt.ids, request, rows)
    except (interventions.InterventionError, ModelError) as exc:
        return ExtractionError(str(exc))
    except ExtractionError as exc:
        return ExtractionError(f"corrupt: {exc}")
    heatmap = _heatmap(loaded, seq, request, values)
    heatmap.extras = trace
    return heatmap


def _heatmap(loaded: LoadedModel, seq: Sequence, request: MetricRequest, values: np.ndarray) -> Heatmap:
    provenance = dict(seq.provenance, dtype=loaded.dtype, causal=loaded.causal)
    if request.key_options():
        provenance["options"] = request.key_options()
    return Heatmap(
        values=values,
        tokens=list(seq.pieces),
        layers=layer_rows(loaded, request),
        metric=request.metric,
        model=str(loaded.ref),
        special=list(seq.special),
        kinds=list(seq.kinds),
        provenance=provenance,
        token_bytes=list(seq.token_bytes),
    )


def _check(loaded: LoadedModel, request: MetricRequest, seq: Sequence) -> None:
    """Everything about a request that can be known before the forward pass, with messages naming the limits."""
    metric = METRICS.get(request.metric)
    if metric is None:
        raise ExtractionError(f"unknown metric '{request.metric}'")
    n_layers = loaded.num_layers
    if request.layers is not None:
        bad = [layer for layer in request.layers if not 1 <= layer <= n_layers]
        if bad:
            raise ExtractionError(f"layers: layer {bad[0]} is out of range: the model has {n_layers} layers (1-{n_layers})")
    if request.embeddings and not metric.embeddings:
        raise ExtractionError(f"embeddings: metric '{metric.name}' has no layer 0")
    if metric.site == "attention":
        if loaded.attention not in ("layerheat", "eager"):
            raise ExtractionError(
                f"metric '{metric.name}' needs the attention weights: load the model with eager attention "
                f"(it uses '{loaded.attention}', which does not return them)"
            )
        if all(a is None for a in loaded.attentions):
            raise ExtractionError(
                f"metric '{metric.name}' needs attention weights, but {type(loaded.model).__name__} has no "
                "attention layers (use hidden-norm, update or logit-lens)"
            )
        if any(a is None for a in loaded.attentions):
            layer = next(i for i, a in enumerate(loaded.attentions) if a is None) + 1
            raise ExtractionError(f"metric '{metric.name}': no attention module found in block {layer}")
        if request.heads is not None:
            n_heads = loaded.num_heads
            bad = [h for h in request.heads if not 0 <= h < n_heads]
            if bad:
                raise ExtractionError(
                    f"heads: head {bad[0]} is out of range: the model has {n_heads} heads per layer (0-{n_heads - 1})"
                )
    if request.query is not None:
        n = len(seq.ids)
        if not -n <= request.query < n:
            raise ExtractionError(f"query: position {request.query} is out of range: the text has {n} tokens")
    if metric.site in ("lens", "intervention"):
        try:
            loaded.lens_head()
        except ModelError as exc:
            raise ExtractionError(
                f"metric '{metric.name}' needs a language model that predicts the next token: {exc}"
                " (an encoder such as BERT has no next-token head)"
            ) from None
        if request.target is not None:
            target_id(loaded, request.target)
