"""Loading a model for extraction (torch and transformers, imported lazily): device and dtype, weights and tokenizer,
its blocks, attention, MLP and unembedding located; GGUF conversion."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .attention import chunkable, register_attention
from .catalog import DTYPES
from .refs import ModelError, ModelRef, first_line


@dataclass
class LoadedModel:
    """A model ready for extraction, with its blocks and their attention and MLP modules located.

    `attention` says how attention weights can be observed: "layerheat" (our chunked attention
    function, which calls the model's own eager attention on chunks of queries), "eager" (the
    weights come back from each attention module) or anything else (they are not available).
    """

    ref: ModelRef
    model: Any
    tokenizer: Any
    causal: bool
    blocks: list[Any]
    attentions: list[Any]
    mlps: list[Any] = field(default_factory=list)
    attention: str = "eager"
    dtype: str = "float32"
    _head: Any = None  # (modules between the last block and the unembedding, unembedding), found on first use

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def num_heads(self) -> int:
        return int(self.model.config.get_text_config().num_attention_heads)

    @property
    def device(self) -> Any:
        return input_device(self.model)

    def lens_head(self) -> tuple[list[Any], Any]:
        """What turns the last block's output into logits: the modules in between (the final norm) and the unembedding."""
        if self._head is None:
            self._head = locate_head(self.model, self.blocks)
        return self._head

    def token_id(self, text: str, key: str) -> int:
        """The id of `text` when it is exactly one token (a block's `target` or `answer`), else a `ModelError`
        that lists its pieces."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = [self.tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
            raise ModelError(
                f"{key} {text!r} is {len(ids)} tokens for this tokenizer ({', '.join(map(repr, pieces))}); "
                "it must be exactly one (mind the leading space)"
            )
        return int(ids[0])

    def final_logits(self, hidden: Any) -> Any:
        """`[N, D]` outputs of the last block -> `[N, V]` logits (float32 at least), through the model's own final
        norm and unembedding (and its final soft-capping, where it has one)."""
        import torch

        chain, unembedding = self.lens_head()
        x = hidden[None]
        for module in [*chain, unembedding]:
            x = module(x.to(_device_of(module, x)))
        logits = x[0].to(torch.promote_types(x.dtype, torch.float32))
        cap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        if cap:
            logits = (logits / cap).tanh() * cap
        return logits


def resolve_device(device: str) -> str:
    """`auto`: CUDA when available, then MPS, else the CPU; other values are passed to torch as they are."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto`: float32 on the CPU; on an accelerator, bfloat16 (float16 on MPS) -- half the memory, a little less exact."""
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype '{dtype}' (one of: {', '.join(DTYPES)})")
    if dtype != "auto":
        return dtype
    kind = str(device).split(":")[0]
    if kind == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float16" if kind == "mps" else "float32"


def load(
    ref: ModelRef,
    device: str = "cpu",
    eager_attention: bool = True,
    converted: Path | None = None,
    dtype: str = "float32",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    max_memory: dict[str, str] | None = None,
    offload_folder: str | None = None,
) -> LoadedModel:
    """Load weights and tokenizer in eval mode, with blocks, attention and MLP modules located.

    `eager_attention`: attention weights will be needed (chunked attention where the model supports the
    attention interface, else the eager implementation); otherwise the model keeps its default (SDPA).
    A .gguf model is dequantised once into `converted` (when given) and loaded from there afterwards.
    `device_map="auto"` spreads a model larger than one device over several through accelerate, each device
    holding at most its `max_memory` (`{"0": "70GiB", "cpu": "200GiB"}`), the rest in `offload_folder`.
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one log line per model is ours to print
    if not logging.getLogger("mkdocs.plugins.layerheat").isEnabledFor(logging.DEBUG):
        hf_logging.set_verbosity_error()  # transformers' notices (kernels, fallbacks) only with -v
    register_attention()
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    kwargs: dict[str, Any] = {}
    location = ref.location
    if ref.kind == "gguf" and converted is not None:
        if not (converted / "config.json").is_file():
            try:
                convert_gguf(ref.location, converted)
            except Exception as exc:
                raise ModelError(f"cannot convert model '{ref}': {first_line(exc)}") from None
        location = str(converted)
    elif ref.kind == "gguf":
        location, kwargs["gguf_file"] = str(Path(ref.location).parent), Path(ref.location).name
    if ref.revision:
        kwargs["revision"] = ref.revision
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    placement: dict[str, Any] = {}
    if device_map:
        placement = {"device_map": device_map, "offload_folder": offload_folder,
                     "max_memory": {_number(k): _number(v) for k, v in (max_memory or {}).items()} or None}
    try:
        config = AutoConfig.from_pretrained(location, **kwargs)
        causal = bool(getattr(config, "is_decoder", False)) or any(
            a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or [])
        )
        auto = AutoModelForCausalLM if causal else AutoModel
        model = auto.from_pretrained(
            location,
            dtype=getattr(torch, dtype),
            attn_implementation="eager" if eager_attention else None,
            **placement,
            **kwargs,
        )
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    except Exception as exc:
        raise ModelError(f"cannot load model '{ref}': {first_line(exc)}") from None
    if not device_map:
        model.to(device)
    model.eval()
    blocks, attentions = locate(model)
    mlps = locate_mlps(blocks, attentions)
    attention = model.config._attn_implementation or "eager"
    if eager_attention and chunkable(model, attentions):
        try:
            model.set_attn_implementation("layerheat")
            attention = "layerheat"
        except (ValueError, KeyError, ImportError, NotImplementedError):
            pass  # keep the eager implementation: the weights come back from each attention module
    return LoadedModel(ref, model, tokenizer, causal, blocks, attentions, mlps, attention, dtype)


def _number(text):
    """A GPU index or a size in bytes, as accelerate wants them (int), from the config's text."""
    return int(text) if str(text).isdigit() else text


def locate(model: Any) -> tuple[list[Any], list[Any]]:
    """The transformer blocks in order, and each block's self-attention module.

    Uses the model's own declaration of what produces `hidden_states` and `attentions`
    (`_can_record_outputs` in transformers 5); falls back to the longest `ModuleList`.
    """
    from torch import nn

    n_layers = model.config.get_text_config().num_hidden_layers
    record = getattr(model, "_can_record_outputs", None) or {}
    blocks = [module for _, module in _matching(model, record.get("hidden_states"))]
    if len(blocks) != n_layers:
        lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
        blocks = list(max(lists, key=len, default=[]))
    attentions = []
    for block in blocks:
        found = _matching(block, record.get("attentions")) or [
            (n, m) for n, m in block.named_modules() if type(m).__name__.endswith("Attention") and "cross" not in n.lower()
        ]
        attentions.append(found[0][1] if found else None)
    return blocks, attentions


_MLP_NAMES = ("mlp", "feed_forward", "feedforward", "ffn", "ff", "moe", "block_sparse_moe")


def locate_mlps(blocks: list[Any], attentions: list[Any]) -> list[Any]:
    """Each block's MLP (feed-forward) module, or None where the block has no single one (BERT splits it in two).

    The shallowest submodule outside the attention whose attribute name or class name says MLP,
    feed-forward, FFN or mixture of experts.
    """
    out = []
    for block, attention in zip(blocks, attentions):
        inside_attention = {id(m) for m in attention.modules()} if attention is not None else set()
        best = None
        for name, module in block.named_modules():
            if not name or id(module) in inside_attention:
                continue
            leaf = name.rsplit(".", 1)[-1].lower()
            cls = type(module).__name__.lower()
            named = leaf in _MLP_NAMES or any(k in cls for k in ("mlp", "feedforward", "moe"))
            if named and (best is None or name.count(".") < best[0].count(".")):
                best = (name, module)
        out.append(best[1] if best else None)
    return out


def locate_head(model: Any, blocks: list[Any]) -> tuple[list[Any], Any]:
    """The modules that turn the last block's output into the unembedding's input (the final norm), and the unembedding.

    Found by watching a two-token forward pass: starting from the last block's output, follow the
    modules that take the previous one's output, until the unembedding (`get_output_embeddings()`)
    is reached. Raises `ModelError` for a model without a language-model head (an encoder).
    """
    import torch

    unembedding = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if unembedding is None:
        raise ModelError(
            f"{type(model).__name__} has no language-model head (no output embedding to next-token logits)"
        )
    inside = {id(m) for b in blocks for m in b.modules()}
    calls: list[tuple[Any, Any, Any]] = []  # (module, input, output), in call order; references keep storage alive
    last: list[Any] = []

    def watch(module, args, output):
        if args and torch.is_tensor(args[0]) and torch.is_tensor(output):
            calls.append((module, args[0], output))

    def watch_last(module, args, kwargs, output):
        last.append(output[0] if isinstance(output, tuple) else output)
        calls.clear()

    handles = [blocks[-1].register_forward_hook(watch_last, with_kwargs=True)]
    handles += [m.register_forward_hook(watch) for m in model.modules() if id(m) not in inside and m is not model]
    device = input_device(model)
    vocab = model.config.get_text_config().vocab_size
    try:
        with torch.inference_mode():
            model(input_ids=torch.tensor([[1 % vocab, 2 % vocab]], device=device), use_cache=False)
    finally:
        for h in handles:
            h.remove()

    def same(a: Any, b: Any) -> bool:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()

    chain: list[Any] = []
    current = last[-1] if last else None
    for _ in range(8):
        if current is None:
            break
        for module, inp, _out in calls:
            if module is unembedding and same(inp, current):
                return chain, unembedding
        step = next(((m, o) for m, i, o in calls if m is not unembedding and same(i, current) and m not in chain), None)
        if step is None:
            break
        chain.append(step[0])
        current = step[1]
    raise ModelError(f"cannot find the path from the last block to the unembedding of {type(model).__name__}")


def _matching(root: Any, spec: Any) -> list[tuple[str, Any]]:
    """Submodules matching a transformers output-recorder spec (a class, a class name or an OutputRecorder)."""
    if spec is None:
        return []
    target = getattr(spec, "target_class", spec)
    class_name = getattr(spec, "class_name", None) or (spec if isinstance(spec, str) else None)
    layer_name = getattr(spec, "layer_name", None)
    found = []
    for name, module in root.named_modules():
        if class_name is not None:
            ok = type(module).__name__.endswith(class_name)
        else:
            ok = isinstance(target, type) and isinstance(module, target)
        if ok and (layer_name is None or name.endswith(layer_name.lstrip("."))):
            found.append((name, module))
    return found


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantise a .gguf file once into a safetensors directory that loads in under a second."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path).resolve(), Path(out_dir)
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    model.hf_quantizer = None  # weights are already dequantised: save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)  # a half-written directory is never mistaken for a model
    return out_dir


def input_device(model: Any) -> Any:
    """Where a model's inputs go: the device of its first parameter; placed by accelerate (`device_map`), the
    device its first module runs on (a module offloaded to the CPU or to disk runs on the CPU)."""
    import torch

    placed = getattr(model, "hf_device_map", None)
    if not placed:
        return next(model.parameters()).device
    first = next(iter(placed.values()))
    return torch.device("cpu" if first in ("cpu", "disk") else first)


def _device_of(module: Any, fallback: Any) -> Any:
    """The device a module runs on: where accelerate runs it when it placed it (its weights may be offloaded),
    else the device of its parameters (a module without any: the tensor's)."""
    import torch

    hook = getattr(module, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    for p in module.parameters():
        return p.device
    return fallback.device
