"""Model references: resolving, fingerprinting (cheap, no torch) and loading (torch and transformers, lazily)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog import DTYPES

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class ModelError(Exception):
    """A model reference that cannot be resolved or loaded."""


class ModelOutsideError(ModelError):
    """A model path, written in a page, outside the folders that mkdocs.yml allows."""


@dataclass(frozen=True)
class ModelRef:
    """Where a model lives: a local directory, a local .gguf file, or a hub repository at a revision."""

    kind: str  # "local", "gguf" or "hub"
    location: str  # absolute path, or hub repo id
    revision: str | None = None
    name: str = ""  # as the author wrote it (alias or reference)

    def __str__(self) -> str:
        return self.name or self.location


def resolve(
    reference: str, aliases: dict[str, str] | None = None, base_dir: str | Path = ".", allowed: list[Path] | None = None
) -> ModelRef:
    """Turn an alias, a path (relative to `base_dir`) or `owner/name[@revision]` into a `ModelRef`.

    `allowed`: the folders that a path which is not an alias must lie in, symlinks resolved (None: anywhere).
    """
    aliases = aliases or {}
    target = aliases.get(reference, reference)
    path = Path(base_dir, os.path.expanduser(target))
    local = path.is_file() if path.suffix == ".gguf" else path.is_dir()
    if allowed is not None and reference not in aliases and local:
        if not any(path.resolve().is_relative_to(Path(folder).resolve()) for folder in allowed):
            raise ModelOutsideError(
                f"model path '{reference}' is outside the project folder; "
                "list its folder in the plugin option model_dirs to allow it"
            )
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"model file '{target}' not found")
        return ModelRef("gguf", str(path.resolve()), name=reference)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"'{target}' is a directory but not a model (no config.json)")
        return ModelRef("local", str(path.resolve()), name=reference)
    repo, _, revision = target.partition("@")
    if _HUB_ID.match(repo) and not target.startswith((".", "/")):
        return ModelRef("hub", repo, revision or None, name=reference)
    hint = " (not an alias in mkdocs.yml, not a local path, not a hub id)"
    raise ModelError(f"unknown model '{reference}'{hint}")


def fingerprint(ref: ModelRef, memo_file: Path | None = None) -> str:
    """A string that changes whenever the model's weights, config or tokenizer change."""
    if ref.kind == "hub":
        return f"hub:{ref.location}@{_hub_commit(ref)}"
    root = Path(ref.location)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    memo = _read_memo(memo_file)
    parts, hashed = [], False
    for f in files:
        stat = f.stat()
        stamp = f"{f}|{stat.st_size}|{stat.st_mtime_ns}"
        if stamp not in memo:
            memo[stamp], hashed = _sha256(f), True
        parts.append(f"{f.relative_to(root) if f != root else f.name}:{stat.st_size}:{memo[stamp]}")
    if hashed:
        _write_memo(memo_file, memo)
    return f"{ref.kind}:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_memo(memo_file: Path | None) -> dict[str, str]:
    try:
        return json.loads(memo_file.read_text()) if memo_file else {}
    except (OSError, ValueError):
        return {}


def _write_memo(memo_file: Path | None, memo: dict[str, str]) -> None:
    if not memo_file:
        return
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo, indent=0))
        os.replace(tmp, memo_file)
    except OSError:
        pass  # the memo only saves time


def _hub_commit(ref: ModelRef) -> str:
    """The commit a hub revision points to: from the local Hugging Face cache, else (online) from the hub."""
    revision = ref.revision or "main"
    if _COMMIT.match(revision):
        return revision
    from huggingface_hub import constants

    refs = Path(constants.HF_HUB_CACHE, "models--" + ref.location.replace("/", "--"), "refs", revision)
    if refs.is_file():
        return refs.read_text().strip()
    if constants.HF_HUB_OFFLINE:
        raise ModelError(f"hub model '{ref.location}@{revision}' is not in the local cache and HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(ref.location, revision=revision).sha
    except Exception as exc:  # network, auth, missing repo: all mean the same to the author
        raise ModelError(f"hub model '{ref.location}@{revision}' cannot be resolved: {exc}") from None


ATTENTION_CHUNK_BYTES = 64 << 20  # at most this much attention weights at once, [batch, heads, chunk, keys] float32
ATTENTION_QUERY_CHUNK = 128  # and at most this many queries per chunk
ATTENTION_OBSERVERS: dict[int, Any] = {}  # id(attention module) -> what receives its weights, chunk by chunk


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
    if eager_attention and _chunkable(model, attentions):
        try:
            model.set_attn_implementation("layerheat")
            attention = "layerheat"
        except (ValueError, KeyError, ImportError, NotImplementedError):
            pass  # keep the eager implementation: the weights come back from each attention module
    return LoadedModel(ref, model, tokenizer, causal, blocks, attentions, mlps, attention, dtype)


def _number(text):
    """A GPU index or a size in bytes, as accelerate wants them (int), from the config's text."""
    return int(text) if str(text).isdigit() else text


def first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


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


def _chunkable(model: Any, attentions: list[Any]) -> bool:
    """Whether every attention module goes through transformers' attention interface and has an eager function to call."""
    if not getattr(model, "_supports_attention_backend", False) or not model._can_set_attn_implementation():
        return False
    return all(a is not None and _eager_function(a) is not None for a in attentions)


def _eager_function(module: Any) -> Any:
    import sys

    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def register_attention() -> None:
    """Register "layerheat" with transformers: the model's own eager attention, run on chunks of queries.

    Each chunk's weights `[batch, heads, chunk, keys]` go to the observer registered for that module in
    `ATTENTION_OBSERVERS` (if any) and are dropped: the full `[heads, T, T]` tensor never exists.
    The mask is transformers' eager (additive float) mask, as for the eager implementation.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register("layerheat", _chunked_attention)
    AttentionMaskInterface.register("layerheat", eager_mask)


def _chunked_attention(module, query, key, value, attention_mask, *args, **kwargs):
    import torch

    eager = _eager_function(module)
    observer = ATTENTION_OBSERVERS.get(id(module))
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
