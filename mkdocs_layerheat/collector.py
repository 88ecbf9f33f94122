"""One batch, one forward pass: the hooks that reduce each module's output as it is computed, into rows of
`[layers, tokens]` per requested metric (the attention weights chunk by chunk, the logit lens chunk by chunk of
tokens), so that neither the `[heads, T, T]` weights of a layer nor the hidden states of all layers are held."""

from __future__ import annotations

import inspect
from collections import defaultdict
from typing import Any

import numpy as np

from .attention import observe
from .catalog import METRICS, MetricRequest
from .models import LoadedModel
from .reducers import AttentionStats, MetricError, combine_heads, hidden_norm, sublayer_updates, update
from .refs import ModelError, first_line
from .texts import ExtractionError, Sequence

LENS_CHUNK_BYTES = 32 << 20  # logits of one chunk of tokens, [chunk, vocab] float32
PREDICTED = ("logit-lens", "logit-lens-rank")  # lens metrics about one token (the next one, or the target)
TOP_K = 5  # the lens's most probable tokens kept per cell of a PREDICTED metric (never the whole vocabulary)


def layer_rows(loaded: LoadedModel, request: MetricRequest) -> list[int]:
    """The layer numbers of a request's rows, bottom first: 0 for the embeddings, then blocks 1..L."""
    layers = list(request.layers) if request.layers is not None else list(range(1, loaded.num_layers + 1))
    return ([0] if request.embeddings else []) + layers


def target_id(loaded: LoadedModel, target: str) -> int:
    try:
        return loaded.token_id(target, "target")
    except ModelError as exc:
        raise ExtractionError(str(exc)) from None


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
        self.values = {r: torch.full((len(layer_rows(loaded, r)), batch, length), float("nan")) for r in requests}
        self.row = {r: {layer: i for i, layer in enumerate(layer_rows(loaded, r))} for r in requests}
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
            return torch.where(self.valid, target_id(self.loaded, request.target), -1)
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
                    handles.append(observe(attention, _Observer(self, layer)))
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


def run(loaded: LoadedModel, seqs: list[Sequence], requests: list[MetricRequest], padding_side: str) -> dict:
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

    rows = layer_rows(loaded, request)
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
