"""Model references: an alias, a path or a hub id resolved to a `ModelRef`, and its fingerprint (what the cache
keys on). No torch: planning a warm build needs only this."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

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


def first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

