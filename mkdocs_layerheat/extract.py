"""Running texts through a loaded model: every requested metric reduced inside forward hooks, layer by layer.

Texts of one model run in batches (padded on the right by default; padding changes no value: padded
positions are masked out of the attention and of every average, and position ids restart at each
text's first token). Inside a forward pass each hook reduces its module's output at once, and the
attention weights are reduced chunk by chunk of queries, so neither the `[heads, T, T]` weights of a
layer nor the hidden states of all layers are ever held.
"""

from __future__ import annotations

import inspect
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import interventions
from .catalog import DEFAULT_MAX_TOKENS, METRICS, MetricRequest
from .heatmap import Heatmap
from .models import ATTENTION_OBSERVERS, LoadedModel, ModelError, first_line
from .reducers import AttentionStats, MetricError, combine_heads, hidden_norm, sublayer_updates, update

LENS_CHUNK_BYTES = 32 << 20  # logits of one chunk of tokens, [chunk, vocab] float32
PREDICTED = ("logit-lens", "logit-lens-rank")  # lens metrics about one token (the next one, or the target)
TOP_K = 5  # the lens's most probable tokens kept per cell of a PREDICTED metric (never the whole vocabulary)
DEFAULT_BATCH_SIZE = 8
DEFAULT_TOKEN_BUDGET = 8192  # batch size x padded length


class ExtractionError(Exception):
    """A text or a metric request that could not be run through the model."""


@dataclass(frozen=True)
class TextInput:
    """What is run through the model: the text, how it is wrapped, how far it is continued."""

    text: str
    chat: bool = False  # wrap as one user message with the tokenizer's chat template
    generate: int = 0  # append a greedy continuation of up to this many tokens
    max_tokens: int = DEFAULT_MAX_TOKENS  # a guard on the final length


@dataclass
class Sequence:
    """A prepared token sequence: ids, the exact text piece of each, and what each token is."""

    ids: list[int]
    pieces: list[str]
    special: list[bool]
    kinds: list[str]  # "text", "special", "template" or "generated"
    provenance: dict[str, Any] = field(default_factory=dict)
    token_bytes: list[str | None] = field(default_factory=list)  # hex bytes of each fragment token, else None


# --------------------------------------------------------------------------- texts


def prepare(loaded: LoadedModel, source: TextInput) -> Sequence:
    """Tokenize (through the chat template when asked), continue greedily when asked, check the length."""
    tokenizer = loaded.tokenizer
    provenance: dict[str, Any] = {"text": source.text}
    if source.chat:
        prompt, span = _chat_prompt(tokenizer, source.text)
        ids, kinds = _tokenize_with_span(tokenizer, prompt, span)
        provenance.update(chat=True, prompt=prompt)
    else:
        ids = list(tokenizer(source.text, add_special_tokens=True)["input_ids"])
        kinds = ["text"] * len(ids)
    total = len(ids) + source.generate
    if total > source.max_tokens:
        what = f"{len(ids)} tokens" + (f" + {source.generate} to generate" if source.generate else "")
        raise ExtractionError(f"text has {what}, more than max_tokens={source.max_tokens}")
    if source.generate:
        generated = _greedy(loaded, ids, source.generate)
        provenance.update(
            generate=source.generate,
            generated_token_ids=generated,
            generated_text=tokenizer.decode(generated, clean_up_tokenization_spaces=False),
        )
        ids = ids + generated
        kinds = kinds + ["generated"] * len(generated)
    special_ids = set(tokenizer.all_special_ids)
    special = [i in special_ids for i in ids]
    kinds = ["special" if s and k == "text" else k for k, s in zip(kinds, special)]
    pieces = [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
    provenance["token_ids"] = ids
    return Sequence(ids, pieces, special, kinds, provenance, fragment_bytes(tokenizer, ids, pieces))


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte-fallback tokens


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character (the table of byte-level BPE vocabularies)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return table


_BYTE_DECODER = {char: byte for byte, char in _bytes_to_unicode().items()}


def _raw_bytes(name: str) -> bytes | None:
    """The bytes a vocabulary entry stands for, when it is a byte-fallback token or a byte-level BPE token."""
    match = _BYTE_FALLBACK.fullmatch(name)
    if match:
        return bytes([int(match[1], 16)])
    if name and all(char in _BYTE_DECODER for char in name):
        return bytes(_BYTE_DECODER[char] for char in name)
    return None


def fragment_bytes(tokenizer: Any, ids: list[int], pieces: list[str]) -> list[str | None]:
    """For each token that is not valid UTF-8 on its own (a part of a multi-byte character), its exact bytes as hex.

    Such a token decodes to U+FFFD, so two different fragments would look alike. The bytes come from the
    vocabulary entry: `<0xE2>` for SentencePiece byte fallback, the byte-level alphabet for GPT-2-style BPE.
    An entry is trusted only when its bytes decode (lossily) to the token's piece; other tokens get None.
    """
    out: list[str | None] = [None] * len(ids)
    candidates = [k for k, piece in enumerate(pieces) if "\ufffd" in piece]
    if not candidates:
        return out
    names = tokenizer.convert_ids_to_tokens([ids[k] for k in candidates])
    for k, name in zip(candidates, names):
        data = _raw_bytes(name) if isinstance(name, str) else None
        if data is None:
            continue
        try:
            data.decode("utf-8")
            continue  # whole characters (a real U+FFFD in the text, say): not a fragment
        except UnicodeDecodeError:
            pass
        if data.decode("utf-8", "replace").strip() == pieces[k].strip():
            out[k] = data.hex()
    return out


def _chat_prompt(tokenizer: Any, text: str) -> tuple[str, tuple[int, int]]:
    """The text as one user message in the chat template (with the assistant prompt), and the text's span in it."""
    if not getattr(tokenizer, "chat_template", None):
        raise ExtractionError("chat: true, but this model's tokenizer has no chat template")

    def render(content: str) -> str:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )

    try:
        sentinel = "\ue000layerheat\ue001"
        framed, prompt = render(sentinel), render(text)
    except Exception as exc:
        raise ExtractionError(f"the chat template failed: {first_line(exc)}") from None
    at = framed.find(sentinel)
    prefix, suffix = framed[:at], framed[at + len(sentinel) :]
    if at >= 0 and prompt == prefix + text + suffix:
        return prompt, (len(prefix), len(prefix) + len(text))
    stripped = text.strip()  # a template that trims or rewrites the message: find it from the end
    at = prompt.rfind(stripped)
    return prompt, ((at, at + len(stripped)) if at >= 0 else (0, 0))


def _tokenize_with_span(tokenizer: Any, prompt: str, span: tuple[int, int]) -> tuple[list[int], list[str]]:
    """Ids of a rendered chat prompt (its special tokens are in the template), each marked text or template."""
    start, end = span
    try:
        enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, ValueError, KeyError):  # a slow tokenizer: no offsets, tokenize the parts
        parts = [(prompt[:start], "template"), (prompt[start:end], "text"), (prompt[end:], "template")]
        ids, kinds = [], []
        for part, kind in parts:
            part_ids = tokenizer(part, add_special_tokens=False)["input_ids"] if part else []
            ids += part_ids
            kinds += [kind] * len(part_ids)
        return ids, kinds
    kinds = ["text" if s < end and e > start and e > s else "template" for s, e in offsets]
    return list(enc["input_ids"]), kinds


def _greedy(loaded: LoadedModel, ids: list[int], n: int) -> list[int]:
    """Up to `n` tokens, each the argmax of the model's next-token logits; stops after an end-of-sequence token."""
    import torch

    model = loaded.model
    if not loaded.causal or getattr(model, "get_output_embeddings", lambda: None)() is None:
        raise ExtractionError("generate needs a causal language model (this one does not predict the next token)")
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    stop = set()
    for source in (getattr(model.generation_config, "eos_token_id", None), loaded.tokenizer.eos_token_id):
        stop.update(source if isinstance(source, (list, tuple)) else [] if source is None else [source])
    new: list[int] = []
    try:
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids], device=loaded.device), use_cache=True)
            while True:
                token = int(out.logits[0, -1].argmax())
                new.append(token)
                if token in stop or len(new) >= n:
                    return new
                past = getattr(out, cache_arg, None)
                out = model(input_ids=torch.tensor([[token]], device=loaded.device), use_cache=True, **{cache_arg: past})
    except Exception as exc:
        raise ExtractionError(f"generation failed: {first_line(exc)}") from exc


# --------------------------------------------------------------------------- public entry points


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
            values = _run(loaded, seqs, requests, padding_side)
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
    rows = _rows(loaded, request)
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
        layers=_rows(loaded, request),
        metric=request.metric,
        model=str(loaded.ref),
        special=list(seq.special),
        kinds=list(seq.kinds),
        provenance=provenance,
        token_bytes=list(seq.token_bytes),
    )


def _rows(loaded: LoadedModel, request: MetricRequest) -> list[int]:
    """The layer numbers of a request's rows, bottom first: 0 for the embeddings, then blocks 1..L."""
    layers = list(request.layers) if request.layers is not None else list(range(1, loaded.num_layers + 1))
    return ([0] if request.embeddings else []) + layers


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
            _target_id(loaded, request.target)


def _target_id(loaded: LoadedModel, target: str) -> int:
    try:
        return loaded.token_id(target, "target")
    except ModelError as exc:
        raise ExtractionError(str(exc)) from None


# --------------------------------------------------------------------------- one batch, one forward pass


class _Collector:
    """The hooks of one forward pass and the rows they fill: `values[request]` is `[rows, batch, tokens]`."""

    def __init__(self, loaded: LoadedModel, seqs: list[Sequence], requests: list[MetricRequest], padding_side: str):
        import torch

        self.loaded = loaded
        self.requests = requests
        batch, length = len(seqs), max(len(s.ids) for s in seqs)
        pad = loaded.tokenizer.pad_token_id  # masked out: any id the embedding has will do
        if pad is None or not 0 <= pad < loaded.model.get_input_embeddings().num_embeddings:
            pad = 0
        self.ids = torch.full((batch, length), pad, dtype=torch.long)
        self.valid = torch.zeros((batch, length), dtype=torch.bool)
        self.offsets = []
        for b, seq in enumerate(seqs):
            offset = length - len(seq.ids) if padding_side == "left" else 0
            self.ids[b, offset : offset + len(seq.ids)] = torch.tensor(seq.ids)
            self.valid[b, offset : offset + len(seq.ids)] = True
            self.offsets.append(offset)
        self.lengths = [len(s.ids) for s in seqs]
        self.values = {r: torch.full((len(_rows(loaded, r)), batch, length), float("nan")) for r in requests}
        self.row = {r: {layer: i for i, layer in enumerate(_rows(loaded, r))} for r in requests}
        self.stats: dict[int, AttentionStats] = {}
        self.sub: dict[int, dict[str, Any]] = defaultdict(lambda: {"norms": []})
        self.check_logits: Any = None
        self.kept_hidden: dict[int, Any] = {}  # lens-kl: the real tokens' hidden states of its layers and the last
        self.top: dict[MetricRequest, dict[int, Any]] = defaultdict(dict)  # PREDICTED: layer -> real tokens' top-k
        self.errors: list[Exception] = []

    # which requests have a row at a layer (0: the embeddings, 1..L: blocks)
    def at(self, layer: int, sites: tuple[str, ...]) -> list[MetricRequest]:
        return [r for r in self.requests if METRICS[r.metric].site in sites and layer in self.row[r]]

    def put(self, request: MetricRequest, layer: int, value: Any) -> None:
        self.values[request][self.row[request][layer]] = value.detach().float().cpu()

    def query_positions(self, request: MetricRequest) -> Any:
        import torch

        q = -1 if request.query is None else request.query
        return torch.tensor([off + (q if q >= 0 else n + q) for off, n in zip(self.offsets, self.lengths)])

    def lens_targets(self, request: MetricRequest) -> Any:
        """Target id per position `[B, T]`, -1 where there is none (the last token, padding)."""
        import torch

        if request.target is not None:
            return torch.where(self.valid, _target_id(self.loaded, request.target), -1)
        nxt = torch.full_like(self.ids, -1)
        has_next = self.valid[:, :-1] & self.valid[:, 1:]
        nxt[:, :-1] = torch.where(has_next, self.ids[:, 1:], -1)
        return nxt

    # ----------------------------------------------------------------- hooks

    def register(self) -> list[Any]:
        loaded = self.loaded
        handles = []
        for index, block in enumerate(loaded.blocks):
            layer = index + 1
            attention = loaded.attentions[index]
            attn_requests = self.at(layer, ("attention",))
            if attn_requests:
                handles.append(attention.register_forward_pre_hook(self._attention_start(layer, attn_requests)))
                handles.append(attention.register_forward_hook(self._attention_end(layer, attn_requests), with_kwargs=True))
                if loaded.attention == "layerheat":
                    ATTENTION_OBSERVERS[id(attention)] = _Observer(self, layer)
            if self.at(layer, ("sublayer",)):
                handles += self._sublayer_hooks(layer, block, attention, loaded.mlps[index] if loaded.mlps else None)
            if self.at(layer, ("block", "sublayer", "lens")) or (index == 0 and self.at(0, ("block", "lens"))) or (
                layer == loaded.num_layers and self.at_any(("lens",))
            ):
                handles.append(block.register_forward_hook(self._block(layer), with_kwargs=True))
        return handles

    def at_any(self, sites: tuple[str, ...]) -> bool:
        return any(METRICS[r.metric].site in sites for r in self.requests)

    def _attention_start(self, layer: int, requests: list[MetricRequest]):
        def hook(module, args):
            froms = {r.query for r in requests if r.metric == "attention-from"}
            self.stats[layer] = AttentionStats(
                valid=self.valid,
                causal=self.loaded.causal,
                received=any(r.metric == "attention" for r in requests),
                entropy=any(r.metric == "attention-entropy" for r in requests),
                queries={q: self.query_positions(MetricRequest("attention-from", query=q)) for q in froms},
            )

        return hook

    def _attention_end(self, layer: int, requests: list[MetricRequest]):
        def hook(module, args, kwargs, output):
            stats = self.stats.pop(layer)
            if self.loaded.attention == "eager":
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if weights is None:
                    self.errors.append(MetricError("this model's attention does not return its weights"))
                    return
                stats.add(weights, 0, kwargs.get("attention_mask"))
            if not stats.chunks:
                self.errors.append(MetricError("the attention weights never arrived (this model needs eager attention)"))
                return
            for request in requests:
                per_head = stats.per_head(request.metric, request.query)
                self.put(request, layer, combine_heads(per_head, request.heads, request.aggregate))

        return hook

    def _sublayer_hooks(self, layer: int, block: Any, attention: Any, mlp: Any) -> list[Any]:
        state = self.sub[layer]

        def start(module, args):
            state.update(attn=None, mlp=None, norms=[])

        def keep(name: str):
            def hook(module, args, output):
                state[name] = output[0] if isinstance(output, tuple) else output

            return hook

        def norm(module, args, output):
            if args and hasattr(args[0], "shape") and not isinstance(output, tuple):
                state["norms"].append((args[0], output))

        handles = [block.register_forward_pre_hook(start)]
        if attention is not None:
            handles.append(attention.register_forward_hook(keep("attn")))
        if mlp is not None:
            handles.append(mlp.register_forward_hook(keep("mlp")))
        inside = {id(m) for part in (attention, mlp) if part is not None for m in part.modules()}
        for module in block.modules():
            if "norm" in type(module).__name__.lower() and id(module) not in inside:
                handles.append(module.register_forward_hook(norm))
        return handles

    def _block(self, layer: int):
        def hook(module, args, kwargs, output):
            try:
                h_in = args[0] if args else kwargs.get("hidden_states")
                h_out = output[0] if isinstance(output, tuple) else output
                if layer == 1:
                    for request in self.at(0, ("block",)):
                        self.put(request, 0, hidden_norm(h_in))
                    self._lens(0, h_in)
                for request in self.at(layer, ("block",)):
                    value = hidden_norm(h_out) if request.metric == "hidden-norm" else update(h_in, h_out)
                    self.put(request, layer, value)
                sub = self.at(layer, ("sublayer",))
                if sub:
                    state = self.sub[layer]
                    a, m = sublayer_updates(h_in, h_out, state["attn"], state["mlp"], state["norms"])
                    state.update(attn=None, mlp=None, norms=[])
                    for request in sub:
                        self.put(request, layer, (a if request.metric == "attn-norm" else m).norm(dim=-1))
                self._lens(layer, h_out)
                if layer == self.loaded.num_layers and self.at_any(("lens",)):
                    self.check_logits = self.loaded.final_logits(h_out[:, -1:].reshape(-1, h_out.shape[-1]))
            except MetricError as exc:
                self.errors.append(exc)

        return hook

    # ----------------------------------------------------------------- logit lens

    def _lens(self, layer: int, hidden: Any) -> None:
        import torch

        requests = self.at(layer, ("lens",))
        valid = self.valid.to(hidden.device)
        if any(r.metric == "lens-kl" for r in self.requests) and (
                layer == self.loaded.num_layers or any(r.metric == "lens-kl" for r in requests)):
            self.kept_hidden[layer] = hidden[valid]  # (the KL needs the last layer's distribution: at the end)
        if layer == self.loaded.num_layers and self.kept_hidden:
            self._lens_kl()
        requests = [r for r in requests if r.metric != "lens-kl"]
        if not requests:
            return
        flat = hidden[valid]  # [N, D], the real tokens only
        targets = {r: self.lens_targets(r).to(hidden.device)[valid] for r in requests if r.metric in PREDICTED}
        out = {r: torch.full((flat.shape[0],), float("nan")) for r in requests}
        vocab = self.loaded.model.get_output_embeddings().weight.shape[0]
        chunk = max(1, LENS_CHUNK_BYTES // (vocab * 4))
        top_ids = torch.empty((flat.shape[0], TOP_K), dtype=torch.long)
        top_p = torch.empty((flat.shape[0], TOP_K))
        for start in range(0, flat.shape[0], chunk):
            logits = self.loaded.final_logits(flat[start : start + chunk])
            log_z = logits.logsumexp(dim=-1)
            best = logits.topk(min(TOP_K, logits.shape[-1]), dim=-1)
            top_ids[start : start + chunk, : best.indices.shape[1]] = best.indices.cpu()
            top_p[start : start + chunk, : best.indices.shape[1]] = (best.values - log_z[:, None]).exp().cpu()
            for request in requests:
                if request.metric == "lens-entropy":
                    logp = logits - log_z[:, None]
                    out[request][start : start + chunk] = -(logp.exp() * logp).sum(dim=-1).cpu()
                    continue
                target = targets[request][start : start + chunk].to(logits.device)
                has = target >= 0
                chosen = logits.gather(1, target.clamp(min=0)[:, None])[:, 0]
                if request.metric == "logit-lens":
                    value = (chosen - log_z).exp()
                else:
                    value = (logits > chosen[:, None]).sum(dim=-1).float() + 1
                out[request][start : start + chunk] = value.masked_fill(~has, float("nan")).cpu()
        for request in requests:
            self._put_flat(request, layer, out[request])
            if request.metric in PREDICTED:
                self.top[request][layer] = (top_ids, top_p)

    def _put_flat(self, request: MetricRequest, layer: int, values: Any) -> None:
        """Values of the real tokens `[N]` into the request's row, NaN at the padding."""
        import torch

        full = torch.full(self.valid.shape, float("nan"))
        full[self.valid] = values
        self.put(request, layer, full)

    def _lens_kl(self) -> None:
        """KL(p_final || p_l) for every kept layer, chunk of positions by chunk: the final distribution is the
        lens of the last block's output, which is the model's own (see `_check_lens`)."""
        import torch

        final = self.kept_hidden[self.loaded.num_layers]
        vocab = self.loaded.model.get_output_embeddings().weight.shape[0]
        chunk = max(1, LENS_CHUNK_BYTES // (vocab * 4))
        requests = [r for r in self.requests if r.metric == "lens-kl"]
        out = {(r, layer): torch.empty(final.shape[0]) for r in requests for layer in self.row[r]}
        for start in range(0, final.shape[0], chunk):
            p_log = self.loaded.final_logits(final[start : start + chunk]).double().log_softmax(dim=-1)
            for (request, layer) in out:
                q_log = self.loaded.final_logits(self.kept_hidden[layer][start : start + chunk]).double().log_softmax(dim=-1)
                out[request, layer][start : start + chunk] = (p_log.exp() * (p_log - q_log)).sum(dim=-1).float().cpu()
        for (request, layer), values in out.items():
            self._put_flat(request, layer, values)
        self.kept_hidden.clear()


class _Observer:
    """Receives one layer's attention weights chunk by chunk from the "layerheat" attention function."""

    def __init__(self, collector: _Collector, layer: int):
        self.collector, self.layer = collector, layer

    def add(self, weights: Any, start: int, mask: Any = None) -> None:
        self.collector.stats[self.layer].add(weights, start, mask)


def _run(loaded: LoadedModel, seqs: list[Sequence], requests: list[MetricRequest], padding_side: str) -> dict:
    """One forward pass of a batch; `{request: [batch] of [rows, tokens] arrays}` (each text's own tokens)."""
    import torch

    collector = _Collector(loaded, seqs, requests, padding_side)
    model = loaded.model
    params = inspect.signature(model.forward).parameters
    device = loaded.device
    kwargs: dict[str, Any] = {
        "input_ids": collector.ids.to(device),
        "attention_mask": collector.valid.long().to(device),
        "use_cache": False,
    }
    if "position_ids" in params:  # each text counts its positions from its own first token
        kwargs["position_ids"] = (collector.valid.long().cumsum(-1) - 1).clamp(min=0).to(device)
    if "logits_to_keep" in params:  # the lens computes its own logits, chunk by chunk
        kwargs["logits_to_keep"] = 1
    handles = []
    try:
        handles = collector.register()
        with torch.inference_mode():
            output = model(**kwargs)
    except ExtractionError:
        raise
    except Exception as exc:
        raise ExtractionError(f"forward pass failed: {first_line(exc)}") from exc
    finally:
        for handle in handles:
            handle.remove()
        for attention in loaded.attentions:
            ATTENTION_OBSERVERS.pop(id(attention), None)
    if collector.errors:
        raise ExtractionError(f"metric cannot be computed: {collector.errors[0]}")
    if collector.check_logits is not None:
        _check_lens(loaded, collector, output)
    out: dict[MetricRequest, list[tuple[np.ndarray, dict]]] = {}
    for request in requests:
        values = collector.values[request].numpy()
        tops = _top_tokens(loaded, collector, request)
        out[request] = [(values[:, b, off : off + n], tops[b] if tops else {})
                        for b, (off, n) in enumerate(zip(collector.offsets, collector.lengths))]
    return out


def _top_tokens(loaded: LoadedModel, collector: _Collector, request: MetricRequest) -> list[dict]:
    """Per text of the batch, a PREDICTED request's `top_tokens` and `top_probs`, `[rows][tokens][TOP_K]`: the
    lens's most probable next tokens at each cell, decoded (a text's real tokens are consecutive in the flat
    order of the batch)."""
    kept = collector.top.get(request)
    if not kept:
        return []
    names: dict[int, str] = {}

    def name(i: int) -> str:
        if i not in names:
            names[i] = loaded.tokenizer.decode([i], clean_up_tokenization_spaces=False)
        return names[i]

    rows = _rows(loaded, request)
    out, start = [], 0
    for n in collector.lengths:
        tokens, probs = [], []
        for layer in rows:
            ids, p = kept[layer]
            tokens.append([[name(int(i)) for i in ids[t]] for t in range(start, start + n)])
            probs.append([[round(float(x), 6) for x in p[t]] for t in range(start, start + n)])
        out.append({"top_tokens": tokens, "top_probs": probs})
        start += n
    return out


def _check_lens(loaded: LoadedModel, collector: _Collector, output: Any) -> None:
    """At the last layer the lens must be the model's own head: compare with the logits it returned."""
    logits = getattr(output, "logits", None)
    if logits is None:
        return
    theirs = logits[:, -1].float().cpu()
    ours = collector.check_logits.cpu()
    scale = theirs.abs().max().clamp(min=1.0)
    tolerance = 1e-4 if loaded.dtype == "float32" else 5e-2
    if ((theirs - ours).abs().max() / scale) > tolerance:
        raise ExtractionError(
            "logit lens: the model's output is more than its final norm and unembedding "
            "(the lens at the last layer does not reproduce the model's logits)"
        )
