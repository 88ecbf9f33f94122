"""Loop-form references for the intervention metrics, written from ROME's `experiments/causal_trace.py` and the
TransformerLens/nnsight patching tutorials, one full forward pass of the plain Hugging Face model per cell.

Independent of the package: modules are found by the architectures' own attribute names, noise is added
and states restored in forward hooks exactly as ROME's `trace_with_patch` does (copy 0 of the batch stays
clean and is the source of every restore), and probabilities come from the model's own logits.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch


def parts(model):
    """(blocks, attention modules, MLP modules, input embedding) by the architectures' attribute names."""
    if hasattr(model, "transformer"):  # GPT-2
        blocks = list(model.transformer.h)
        return blocks, [b.attn for b in blocks], [b.mlp for b in blocks], model.transformer.wte
    if hasattr(model, "gpt_neox"):
        blocks = list(model.gpt_neox.layers)
        return blocks, [b.attention for b in blocks], [b.mlp for b in blocks], model.gpt_neox.embed_in
    blocks = list(model.model.layers)  # Llama, Qwen2, Gemma2
    return blocks, [b.self_attn for b in blocks], [b.mlp for b in blocks], model.model.embed_tokens


def _untuple(x):
    return x[0] if isinstance(x, tuple) else x


def trace_with_patch(model, ids, states_to_patch, answer, span, noise, seed=1):
    """ROME's `trace_with_patch`: `ids` is `[samples + 1, T]`; copies 1.. get `noise * randn(samples, n, D)`
    added to the subject's embeddings; each (token, module) in `states_to_patch` is restored from copy 0.
    Returns the mean over the noisy copies of the answer's probability at the last position."""
    rs = np.random.RandomState(seed)
    patch_spec = defaultdict(list)
    for t, module in states_to_patch:
        patch_spec[module].append(t)
    _, _, _, embedding = parts(model)

    def embed(module, args, x):
        if span is not None:
            b, e = span
            x[1:, b:e] += noise * torch.from_numpy(rs.randn(x.shape[0] - 1, e - b, x.shape[2])).to(x.device)
        return x

    def patch(module, args, x):
        h = _untuple(x)
        for t in patch_spec[module]:
            h[1:, t] = h[0, t]
        return x

    handles = [embedding.register_forward_hook(embed)]
    handles += [m.register_forward_hook(patch) for m in patch_spec]
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    return float(torch.softmax(logits[1:, -1, :].double(), dim=1).mean(dim=0)[answer])


def causal_trace(model, ids, span, answer, samples=10, factor=3.0, seed=1, kind="hidden", window=10, rows=None):
    """ROME's `calculate_hidden_flow`: `[layers, T]` scores (rows are blocks 1..L, or the 1-based `rows`),
    `p_noisy`, `p_clean`. The noise level is `factor` times the std of the input embedding matrix."""
    blocks, attns, mlps, embedding = parts(model)
    level = factor * float(embedding.weight.detach().double().std())
    batch = torch.tensor([ids] * (samples + 1))
    with torch.no_grad():
        p_clean = float(torch.softmax(model(input_ids=batch[:1], use_cache=False).logits[0, -1].double(), -1)[answer])
    p_noisy = trace_with_patch(model, batch, [], answer, span, level, seed)
    n, length = len(blocks), len(ids)
    rows = list(range(1, n + 1)) if rows is None else list(rows)
    table = np.zeros((len(rows), length))
    modules = {"hidden": blocks, "mlp": mlps, "attn": attns}[kind]
    for t in range(length):
        for r, layer in enumerate(row - 1 for row in rows):
            if kind == "hidden":
                spec = [(t, blocks[layer])]
            else:
                spec = [(t, modules[k]) for k in range(max(0, layer - window // 2), min(n, layer - (-window // 2)))]
            table[r, t] = trace_with_patch(model, batch, spec, answer, span, level, seed)
    return table, p_noisy, p_clean


def activation_patching(model, clean, corrupt, rows=None):
    """Patch the clean run's block-l output at token t into the corrupted run: `[layers, T]` of
    (LD_patched - LD_corrupt) / (LD_clean - LD_corrupt), LD = logit(clean answer) - logit(corrupt answer)."""
    blocks, _, _, _ = parts(model)
    clean_t, corrupt_t = torch.tensor([clean]), torch.tensor([corrupt])
    states = {}

    def keep(layer):
        def hook(module, args, x):
            states[layer] = _untuple(x).clone()
        return hook

    handles = [b.register_forward_hook(keep(i)) for i, b in enumerate(blocks)]
    with torch.no_grad():
        clean_logits = model(input_ids=clean_t, use_cache=False).logits[0, -1].double()
    for h in handles:
        h.remove()
    with torch.no_grad():
        corrupt_logits = model(input_ids=corrupt_t, use_cache=False).logits[0, -1].double()
    a, b = int(clean_logits.argmax()), int(corrupt_logits.argmax())
    ld_clean = float(clean_logits[a] - clean_logits[b])
    ld_corrupt = float(corrupt_logits[a] - corrupt_logits[b])
    rows = list(range(1, len(blocks) + 1)) if rows is None else list(rows)
    table = np.zeros((len(rows), len(clean)))
    for r, layer in enumerate(row - 1 for row in rows):
        block = blocks[layer]
        for t in range(len(clean)):
            def patch(module, args, x, layer=layer, t=t):
                _untuple(x)[0, t] = states[layer][0, t]
                return x
            handle = block.register_forward_hook(patch)
            with torch.no_grad():
                logits = model(input_ids=corrupt_t, use_cache=False).logits[0, -1].double()
            handle.remove()
            table[r, t] = (float(logits[a] - logits[b]) - ld_corrupt) / (ld_clean - ld_corrupt)
    return table, a, b, ld_clean, ld_corrupt
