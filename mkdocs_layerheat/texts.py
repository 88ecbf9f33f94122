"""A text as the model sees it: tokens (with the exact bytes of those that hold part of a character), the chat
template's tokens marked, and a greedy continuation when asked for."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any

from .catalog import DEFAULT_MAX_TOKENS
from .models import LoadedModel
from .refs import first_line


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
