"""Model references: resolving, fingerprinting (cheap, no torch) and loading (torch and transformers, lazily)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class ModelError(Exception):
    """A model reference that cannot be resolved or loaded."""


@dataclass(frozen=True)
class ModelRef:
    """Where a model lives: a local directory, a local .gguf file, or a hub repository at a revision."""

    kind: str  # "local", "gguf" or "hub"
    location: str  # absolute path, or hub repo id
    revision: str | None = None
    name: str = ""  # as the author wrote it (alias or reference)

    def __str__(self) -> str:
        return self.name or self.location


def resolve(reference: str, aliases: dict[str, str] | None = None, base_dir: str | Path = ".") -> ModelRef:
    """Turn an alias, a path (relative to `base_dir`) or `owner/name[@revision]` into a `ModelRef`."""
    aliases = aliases or {}
    target = aliases.get(reference, reference)
    path = Path(base_dir, os.path.expanduser(target))
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
    parts = []
    for f in files:
        stat = f.stat()
        stamp = f"{f}|{stat.st_size}|{stat.st_mtime_ns}"
        if stamp not in memo:
            memo[stamp] = _sha256(f)
        parts.append(f"{f.relative_to(root) if f != root else f.name}:{stat.st_size}:{memo[stamp]}")
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


@dataclass
class LoadedModel:
    """A model ready for extraction, with its blocks and their attention modules located."""

    ref: ModelRef
    model: Any
    tokenizer: Any
    causal: bool
    blocks: list[Any]
    attentions: list[Any]


def load(ref: ModelRef, device: str = "cpu", eager_attention: bool = True, converted: Path | None = None) -> LoadedModel:
    """Load weights and tokenizer in float32, in eval mode, with blocks and attention modules located.

    A .gguf model is dequantised once into `converted` (when given) and loaded from there afterwards.
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one log line per model is ours to print
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
    try:
        config = AutoConfig.from_pretrained(location, **kwargs)
        causal = bool(getattr(config, "is_decoder", False)) or any(
            a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or [])
        )
        auto = AutoModelForCausalLM if causal else AutoModel
        model = auto.from_pretrained(
            location, dtype=torch.float32, attn_implementation="eager" if eager_attention else None, **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    except Exception as exc:
        raise ModelError(f"cannot load model '{ref}': {first_line(exc)}") from None
    model.to(device).eval()
    blocks, attentions = locate(model)
    return LoadedModel(ref, model, tokenizer, causal, blocks, attentions)


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
