"""The torch side of the metrics: how one layer's hidden states or attention weights reduce to a row of the
heatmap (the metrics themselves are defined in `catalog.py`).

Tensors only appear inside the reducers, which run during extraction. Every reducer works on a batch: hidden
states are `[batch, tokens, dim]`, attention weights `[batch, heads, queries, keys]`, and `valid`
(`[batch, tokens]`, bool) says which positions are real tokens rather than padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class MetricError(Exception):
    """The model cannot provide what the metric needs."""


@dataclass
class AttentionStats:
    """Per-head statistics of one layer's attention, accumulated over chunks of query rows.

    Never holds the `[heads, queries, keys]` weights: each chunk is reduced as it arrives.
    `queries[q][b]` is the padded position of batch item b's attention-from query for option `q`.
    """

    valid: Any  # [B, T] bool
    causal: bool  # used only when the model passes no attention mask
    received: bool = False
    entropy: bool = False
    queries: dict = field(default_factory=dict)
    sums: Any = None
    counts: Any = None
    rows: dict = field(default_factory=dict)
    chunks: int = 0  # how many chunks of weights arrived
    _entropies: list = field(default_factory=list)

    def add(self, weights: Any, start: int, mask: Any = None) -> None:
        """Reduce the weights `[B, H, C, K]` of the queries `start .. start + C - 1` over the keys `0 .. K - 1`.

        Keys after K (left out of a chunk because none of its queries can see them) count as unseen.
        Which keys a query can see comes from the model's own attention mask for these rows
        (`[B, 1, C, K]`, additive or boolean: causal, padding, sliding window...); without one,
        from causality and padding.
        """
        import torch

        w = weights.detach().float()
        batch, heads, n_queries, n_keys = w.shape
        length = self.valid.shape[1]
        self.chunks += 1
        valid = self.valid.to(w.device)
        q_valid = valid[:, start : start + n_queries]
        visible = q_valid[:, :, None] & valid[:, None, :n_keys]
        if mask is not None and mask.dim() == 4 and mask.shape[-1] == n_keys:
            allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
            visible = visible & allowed[:, 0].to(w.device).expand(batch, n_queries, n_keys)
        elif self.causal:
            q_idx = torch.arange(start, start + n_queries, device=w.device)
            visible = visible & (torch.arange(n_keys, device=w.device)[None, :] <= q_idx[:, None])[None]
        if self.received:
            wide = torch.float32 if w.device.type == "mps" else torch.float64  # MPS has no float64
            if self.sums is None:
                self.sums = torch.zeros(batch, heads, length, dtype=wide, device=w.device)
                self.counts = torch.zeros(batch, length, dtype=wide, device=w.device)
            # a key the mask hides has weight exactly 0: summing the real queries' rows is enough
            if bool(q_valid.all()):
                summed = w.sum(dim=2)
            else:
                summed = torch.matmul(q_valid.to(w.dtype)[:, None, None, :], w)[:, :, 0]
            self.sums[..., :n_keys] += summed.to(wide)
            self.counts[..., :n_keys] += visible.sum(dim=1).to(wide)
        if self.entropy:
            entropy = -torch.special.xlogy(w, w).sum(dim=-1)  # [B, H, C]
            self._entropies.append(entropy.masked_fill(~q_valid[:, None, :], float("nan")))
        for key, positions in self.queries.items():
            rows = self.rows.get(key)
            if rows is None:
                rows = self.rows[key] = torch.full((batch, heads, length), float("nan"), device=w.device)
            for b in range(batch):
                q = int(positions[b])
                if start <= q < start + n_queries:
                    row = w[b, :, q - start].masked_fill(~visible[b, q - start][None, :], float("nan"))
                    rows[b, :, :n_keys] = row

    def per_head(self, metric: str, query: Any = None) -> Any:
        """`[B, H, T]` per-head values of an attention metric."""
        import torch

        if metric == "attention":
            mean = self.sums / self.counts.clamp(min=1)[:, None, :]
            return mean.float().masked_fill((self.counts == 0)[:, None, :], float("nan"))
        if metric == "attention-entropy":
            return torch.cat(self._entropies, dim=-1)
        if metric == "attention-from":
            return self.rows[query]
        raise KeyError(metric)


def combine_heads(per_head: Any, heads: tuple[int, ...] | None, aggregate: str) -> Any:
    """`[B, H, T]` -> `[B, T]`: the selected heads, averaged or maximised."""
    if heads is not None:
        per_head = per_head[:, list(heads)]
    if aggregate == "max":
        return per_head.max(dim=1).values
    return per_head.mean(dim=1)


def hidden_norm(hidden: Any) -> Any:
    return hidden.float().norm(dim=-1)


def update(hidden_in: Any, hidden_out: Any) -> Any:
    """1 - cosine, in float64: near 1 the cosine of float32 vectors would lose every digit of the difference."""
    import torch

    a, b = _wide(hidden_in), _wide(hidden_out)
    return 1 - torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


def _wide(t: Any) -> Any:
    """float64 (moved to the CPU from MPS, which has none)."""
    import torch

    return t.detach().to("cpu", torch.float64) if t.device.type == "mps" else t.detach().double()


def sublayer_updates(hidden_in: Any, hidden_out: Any, attn_out: Any, mlp_out: Any, norm_calls: list) -> tuple[Any, Any]:
    """What the attention and the MLP sublayer of one block add to the residual stream, `[B, T, D]` each.

    Pre-norm blocks (Llama, GPT-2, GPT-NeoX, Gemma...): `h_out = h_in + a + m` with `a` the attention
    module's output and `m` the MLP's (each passed through its own norm first where the block has
    "sandwich" norms, found as the norm whose input is that very tensor). Post-norm blocks (BERT):
    `h_mid = norm1(h_in + a)`, `h_out = norm2(h_mid + m)`, so `a = norm1.input − h_in` and
    `m = norm2.input − h_mid`. Whichever decomposition reproduces `h_out` is used; if none does,
    the metric is undefined for this model.
    """
    import torch

    tolerance = max(1e-4, 8 * torch.finfo(hidden_out.dtype).eps)  # the model added in its own precision
    h_in, h_out = hidden_in.float(), hidden_out.float()
    scale = h_out.abs().max().clamp(min=1e-6)

    def close(x: Any) -> bool:
        return bool(((x - h_out).abs().max() / scale) < tolerance)

    def after_norm(t: Any) -> Any:
        for inp, out in norm_calls:
            if inp is t:
                return out
        return t

    if attn_out is not None and mlp_out is not None:
        a, m = after_norm(attn_out).float(), after_norm(mlp_out).float()
        if close(h_in + a + m):
            return a, m
    if len(norm_calls) >= 2 and close(norm_calls[-1][1].float()):
        (in1, out1), (in2, _) = norm_calls[-2], norm_calls[-1]
        return in1.float() - h_in, in2.float() - out1.float()
    raise MetricError(
        "cannot split this model's block into residual + attention + MLP "
        "(neither h_out = h_in + attention + MLP nor a post-norm block was found)"
    )
