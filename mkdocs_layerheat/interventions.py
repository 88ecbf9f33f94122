"""Causal tracing (Meng et al. 2022, ROME) and activation patching: the model run again with one token's
state restored from another run, for every (layer, token) cell.

Both metrics share one engine. A *base* run (the noised copies, or the corrupted text) records the
input of every block; a *source* run (the clean text) records the states to restore. The run for a
cell then starts at the first block its restore touches, from the base run's own input to that block
(the blocks below compute the same whatever is restored above them), and stops after the last block,
whose output at the last position goes through the model's final norm and unembedding. The cells of
one layer run together, one group of rows per token. A restore that changes nothing (the clean state is
the base run's, as before the first differing token of a causal model) or that cannot reach the last
position (any token but the last, at the last block) takes the base run's value without a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .catalog import MetricRequest
from .models import LoadedModel
from .refs import first_line

CHUNK_TOKENS = 1 << 15  # rows x tokens of one restored run


class InterventionError(Exception):
    """A trace or a patching request that cannot be run (the message names the option)."""


class _Stop(Exception):
    """Raised by the hook on the last block: what follows it (the final norm and the unembedding of every
    position) is computed for the last position only, by `LoadedModel.final_logits`."""


@dataclass
class _Record:
    """One run's states: `inputs[b]` and `outputs[b]` of block b `[B, T, D]`, `sub[b]` the output of the
    restored sublayer of block b (when one is), `last` the last block's output at the last position `[B, D]`,
    and whether the blocks return a tuple (a block that is skipped must return the same)."""

    inputs: list[Any]
    outputs: list[Any]
    sub: list[Any]
    last: Any
    tuples: bool


def _hidden(output: Any) -> Any:
    return output[0] if isinstance(output, tuple) else output


def _sublayers(loaded: LoadedModel, restore: str) -> list[Any]:
    modules = loaded.mlps if restore == "mlp" else loaded.attentions
    if restore != "hidden" and (not modules or any(m is None for m in modules)):
        raise InterventionError(f"restore: {type(loaded.model).__name__} has no {restore} module in every block")
    return modules if restore != "hidden" else []


def _record(loaded: LoadedModel, ids: Any, restore: str, noise: Any = None, span: tuple[int, int] = (0, 0)) -> _Record:
    """A full forward pass of the batch `ids` `[B, T]`, with `noise` `[B, n, D]` added to the input
    embedding's output at the tokens `span`, keeping every block's input and output and the restored
    sublayers' outputs."""
    blocks, n = loaded.blocks, loaded.num_layers
    inputs: list[Any] = [None] * n
    outputs: list[Any] = [None] * n
    sub: list[Any] = [None] * n
    handles = []

    def embed(module, args, output):  # (added in float64, as ROME adds numpy's noise)
        output = output.clone()
        a, b = span
        output[:, a:b] = (output[:, a:b].double() + noise.to(output.device)).to(output.dtype)
        return output

    def keep_input(b):
        def hook(module, args, kwargs):
            inputs[b] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    tuples: list[bool] = []

    def keep_output(b):
        def hook(module, args, output):
            outputs[b] = _hidden(output).detach()
            tuples.append(isinstance(output, tuple))
        return hook

    def keep_sub(b):
        def hook(module, args, output):
            sub[b] = _hidden(output).detach()
        return hook

    try:
        if noise is not None:
            handles.append(loaded.model.get_input_embeddings().register_forward_hook(embed))
        for b, block in enumerate(blocks):
            handles.append(block.register_forward_pre_hook(keep_input(b), with_kwargs=True))
            handles.append(block.register_forward_hook(keep_output(b)))
        for b, module in enumerate(_sublayers(loaded, restore)):
            handles.append(module.register_forward_hook(keep_sub(b)))
        handles.append(blocks[-1].register_forward_hook(_stop))
        _forward(loaded, ids)
    finally:
        for handle in handles:
            handle.remove()
    return _Record(inputs, outputs, sub, outputs[-1][:, -1], any(tuples))


def _stop(module, args, output):
    raise _Stop


def _forward(loaded: LoadedModel, ids: Any) -> None:
    try:
        loaded.model(input_ids=ids.to(loaded.device), use_cache=False)
    except _Stop:
        return
    except Exception as exc:
        raise InterventionError(f"forward pass failed: {first_line(exc)}") from exc
    raise InterventionError("the last block was never reached")


def _restored(loaded: LoadedModel, ids: Any, base: _Record, source: _Record, start: int, blocks: range,
              restore: str, positions: list[int], rows_per: int) -> Any:
    """The last block's output at the last position `[len(positions) * rows_per, D]`, for runs that start at
    block `start` from `base`'s input to it (its `rows_per` rows repeated per position) and restore, at
    each group's position, `source`'s output of the blocks `blocks` (or of their restored sublayer)."""
    import torch

    n_groups = len(positions)
    state = base.inputs[start].repeat(n_groups, 1, 1)
    rows = torch.arange(n_groups * rows_per, device=state.device)
    where = torch.tensor(positions, device=state.device).repeat_interleave(rows_per)
    last: list[Any] = []
    handles = []
    originals = {}

    def enter(module, args, kwargs):
        if args:
            return (state, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": state}

    def put(b):
        def hook(module, args, output):
            h = _hidden(output)
            clean = source.sub[b] if restore != "hidden" else source.outputs[b]
            at = where.to(h.device)  # (with device_map, each block on its own device)
            h[rows.to(h.device), at] = clean[0, where.to(clean.device)].to(h.device, h.dtype)
            return output
        return hook

    def finish(module, args, output):
        last.append(_hidden(output)[:, -1].detach())
        raise _Stop

    def passthrough(*args, **kwargs):  # a block below `start`: its output is replaced at `start` anyway
        h = args[0] if args else kwargs["hidden_states"]
        return (h,) if base.tuples else h

    try:
        for b in range(start):
            block = loaded.blocks[b]
            originals[b] = block.__dict__.get("forward")
            block.forward = passthrough
        handles.append(loaded.blocks[start].register_forward_pre_hook(enter, with_kwargs=True))
        targets = loaded.blocks if restore == "hidden" else _sublayers(loaded, restore)
        for b in blocks:
            handles.append(targets[b].register_forward_hook(put(b)))
        handles.append(loaded.blocks[-1].register_forward_hook(finish))
        _forward(loaded, ids.repeat(n_groups * rows_per, 1))
    finally:
        for handle in handles:
            handle.remove()
        for b, forward in originals.items():
            if forward is None:
                del loaded.blocks[b].forward
            else:
                loaded.blocks[b].forward = forward
    return last[0]


def _window(layer: int, window: int, n: int) -> range:
    """The blocks (0-based) whose sublayer is restored for the row of block `layer` (0-based), as ROME's
    `trace_important_window` takes them: from layer - window // 2 to layer - (-window // 2), clipped."""
    return range(max(0, layer - window // 2), min(n, layer - (-window // 2)))


def _table(loaded: LoadedModel, ids: Any, base: _Record, source: _Record, rows: list[int], restore: str,
           window: int, rows_per: int, score, values: tuple[float, float]) -> np.ndarray:
    """`[len(rows), T]` scores of the restored runs, for the 1-based blocks `rows`; `score(last)` turns
    `[R * rows_per, D]` last-block outputs into `[R]` values (one per group of `rows_per` rows); `values`:
    the base run's and the source run's own."""
    import torch

    n, length = loaded.num_layers, ids.shape[-1]
    base_value, source_value = values
    out = np.full((len(rows), length), base_value, dtype=np.float64)
    per_run = max(1, CHUNK_TOKENS // max(1, rows_per * length))
    for r, layer in enumerate(rows):
        b = layer - 1
        blocks = range(b, b + 1) if restore == "hidden" else _window(b, window, n)
        kept = source.outputs if restore == "hidden" else source.sub
        based = base.outputs if restore == "hidden" else base.sub
        todo = []
        for t in range(length):
            if blocks.start == n - 1 and t != length - 1:  # in the last block only the last position is read
                continue
            if restore == "hidden" and b == n - 1:  # the last position's final state is the source's
                out[r, t] = source_value
            elif not all(torch.equal(kept[k][0, t].expand_as(based[k][:, t]), based[k][:, t]) for k in blocks):
                todo.append(t)  # (an unchanged state leaves the base run's value)
        start = blocks.start
        for i in range(0, len(todo), per_run):
            positions = todo[i : i + per_run]
            last = _restored(loaded, ids, base, source, start, blocks, restore, positions, rows_per)
            out[r, positions] = score(last)
    return out


def _token_span(pieces: list[str], subject: str) -> tuple[int, int]:
    """The tokens that cover the first occurrence of `subject` in the text the pieces spell (ROME's
    `find_token_range`): `(first, one past the last)`."""
    text = "".join(pieces)
    at = text.find(subject)
    if at < 0:
        raise InterventionError(f"subject {subject!r} is not in the text")
    first = end = None
    position = 0
    for i, piece in enumerate(pieces):
        position += len(piece)
        if first is None and position > at:
            first = i
        if end is None and position >= at + len(subject):
            end = i + 1
            break
    return first, end


def _answer_id(loaded: LoadedModel, answer: str | None, logits: Any) -> int:
    """The given one-token answer (a `ModelError` otherwise), or the greedy next token."""
    return int(logits.argmax()) if answer is None else loaded.token_id(answer, "answer")


def _embedding_std(loaded: LoadedModel) -> float:
    """The standard deviation of every entry of the input embedding matrix (ROME takes that of subject
    embeddings over its dataset)."""
    return float(loaded.model.get_input_embeddings().weight.detach().double().std())


def _inference(function):
    """Runs `function` without autograd (its tensors are inference tensors throughout)."""
    import functools

    @functools.wraps(function)
    def run(*args, **kwargs):
        import torch

        with torch.inference_mode():
            return function(*args, **kwargs)

    return run


@_inference
def causal_trace(loaded: LoadedModel, ids: list[int], pieces: list[str], request: MetricRequest,
                 rows: list[int]) -> tuple[np.ndarray, dict[str, Any]]:
    """ROME's causal trace of the sequence `ids`: `[len(rows), T]` probabilities of the answer, and what
    they are read against (`answer`, `p_clean`, `p_noisy`, `subject`)."""
    import torch

    restore = request.restore or "hidden"
    first, end = _token_span(pieces, request.subject)
    clean_ids = torch.tensor([ids])
    source = _record(loaded, clean_ids, restore)
    answer = _answer_id(loaded, request.answer, loaded.final_logits(source.last)[0])
    samples = request.samples
    rs = np.random.RandomState(request.seed)
    noise = torch.from_numpy(request.noise * _embedding_std(loaded) * rs.randn(samples, end - first, _width(loaded)))
    base = _record(loaded, clean_ids.repeat(samples, 1), restore, noise, (first, end))

    def score(last: Any) -> np.ndarray:
        p = loaded.final_logits(last).double().softmax(dim=-1)[:, answer]
        return p.reshape(-1, samples).mean(dim=1).cpu().numpy()

    p_clean = float(loaded.final_logits(source.last).double().softmax(dim=-1)[0, answer])
    p_noisy = float(score(base.last)[0])
    values = _table(loaded, clean_ids, base, source, rows, restore, request.window, samples, score, (p_noisy, p_clean))
    trace = {
        "answer": loaded.tokenizer.decode([answer], clean_up_tokenization_spaces=False),
        "answer_id": answer,
        "p_clean": p_clean,
        "p_noisy": p_noisy,
        "subject": [first, end],
    }
    return values, trace


@_inference
def activation_patching(loaded: LoadedModel, ids: list[int], corrupt: list[int], request: MetricRequest,
                        rows: list[int]) -> tuple[np.ndarray, dict[str, Any]]:
    """Activation patching of the clean run `ids` into the corrupted run `corrupt` (same length): `[len(rows),
    T]` fractions of the logit difference restored, and what they are read against."""
    import torch

    if len(corrupt) != len(ids):
        raise InterventionError(
            f"corrupt: the corrupted text has {len(corrupt)} tokens and the text {len(ids)}: "
            "activation patching needs a minimal pair of the same token length"
        )
    clean_ids, corrupt_ids = torch.tensor([ids]), torch.tensor([corrupt])
    source = _record(loaded, clean_ids, "hidden")
    base = _record(loaded, corrupt_ids, "hidden")
    clean_logits, corrupt_logits = loaded.final_logits(source.last)[0], loaded.final_logits(base.last)[0]
    answer = _answer_id(loaded, request.answer, clean_logits)
    other = int(corrupt_logits.argmax())
    decode = lambda i: loaded.tokenizer.decode([i], clean_up_tokenization_spaces=False)  # noqa: E731
    if other == answer:
        raise InterventionError(
            f"corrupt: both texts lead to {decode(answer)!r}: the logit difference needs a corrupted text whose "
            "answer differs"
        )

    def difference(last: Any) -> Any:
        logits = loaded.final_logits(last).double()
        return logits[:, answer] - logits[:, other]

    ld_clean, ld_corrupt = float(difference(source.last)[0]), float(difference(base.last)[0])

    def score(last: Any) -> np.ndarray:
        return ((difference(last) - ld_corrupt) / (ld_clean - ld_corrupt)).cpu().numpy()

    values = _table(loaded, corrupt_ids, base, source, rows, "hidden", 1, 1, score, (0.0, 1.0))
    trace = {
        "answer": decode(answer),
        "answer_id": answer,
        "corrupt_answer": decode(other),
        "ld_clean": ld_clean,
        "ld_corrupt": ld_corrupt,
        "corrupt_tokens": [decode(i) for i in corrupt],
        "differs": [t for t in range(len(ids)) if ids[t] != corrupt[t]],
    }
    return values, trace


def _width(loaded: LoadedModel) -> int:
    return int(loaded.model.get_input_embeddings().weight.shape[1])
