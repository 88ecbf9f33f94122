"""The chunked attention: the model's own eager attention run on chunks of queries, registered with transformers
as "layerheat", so that attention weights are observed chunk by chunk and the whole `[heads, T, T]` tensor never
exists. The running extraction owns the observers: `observe(module, observer)` attaches one to an attention
module and gives a handle to remove it, as torch's hooks do."""

from __future__ import annotations

from typing import Any

ATTENTION_CHUNK_BYTES = 64 << 20  # at most this much attention weights at once, [batch, heads, chunk, keys] float32
ATTENTION_QUERY_CHUNK = 128  # and at most this many queries per chunk
OBSERVER = "_layerheat_observer"  # the attribute of an attention module that holds its observer while one runs


class Observed:
    """The handle of an observer attached to an attention module (`remove()` it as a torch hook handle)."""

    def __init__(self, module: Any, observer: Any):
        self.module = module
        setattr(module, OBSERVER, observer)

    def remove(self) -> None:
        self.module.__dict__.pop(OBSERVER, None)


def observe(module: Any, observer: Any) -> Observed:
    """Send `module`'s attention weights, chunk by chunk, to `observer.add(weights, first_query, mask)`."""
    return Observed(module, observer)


def chunkable(model: Any, attentions: list[Any]) -> bool:
    """Whether every attention module goes through transformers' attention interface and has an eager function to call."""
    if not getattr(model, "_supports_attention_backend", False) or not model._can_set_attn_implementation():
        return False
    return all(a is not None and _eager_function(a) is not None for a in attentions)


def _eager_function(module: Any) -> Any:
    import sys

    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def register_attention() -> None:
    """Register "layerheat" with transformers: the model's own eager attention, run on chunks of queries.

    Each chunk's weights `[batch, heads, chunk, keys]` go to the module's observer (`observe`), if any, and are
    dropped: the full `[heads, T, T]` tensor never exists.
    The mask is transformers' eager (additive float) mask, as for the eager implementation.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register("layerheat", _chunked_attention)
    AttentionMaskInterface.register("layerheat", eager_mask)


def _chunked_attention(module, query, key, value, attention_mask, *args, **kwargs):
    import torch

    eager = _eager_function(module)
    observer = getattr(module, OBSERVER, None)
    batch, heads, n_queries = query.shape[:3]
    n_keys = key.shape[-2]
    # small chunks even when memory allows more: they stay in the CPU's caches, and under a causal
    # mask each chunk skips the keys after it (half the work on long texts)
    chunk = max(1, min(ATTENTION_QUERY_CHUNK, ATTENTION_CHUNK_BYTES // max(1, batch * heads * n_keys * 4)))
    if n_queries <= chunk:
        out, weights = eager(module, query, key, value, attention_mask, *args, **kwargs)
        if observer is not None:
            observer.add(weights, 0, attention_mask)
        return out, None
    outs = []
    for start in range(0, n_queries, chunk):
        mask, end = attention_mask, n_keys
        if mask is not None and mask.dim() == 4 and mask.shape[-2] == n_queries:
            mask = mask[:, :, start : start + chunk]
            end = _last_visible_key(mask) + 1  # keys that no query of the chunk can see weigh exactly 0
            mask = mask[..., :end]
        out, weights = eager(
            module, query[:, :, start : start + chunk], key[:, :, :end], value[:, :, :end], mask, *args, **kwargs
        )
        if observer is not None:
            observer.add(weights, start, mask)
        del weights
        outs.append(out)
    return torch.cat(outs, dim=1), None


def _last_visible_key(mask: Any) -> int:
    """The last key column that some query row of an (additive or boolean) mask chunk may attend to."""
    import torch

    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    columns = allowed.flatten(0, -2).any(dim=0).nonzero()
    return int(columns[-1]) if len(columns) else mask.shape[-1] - 1
