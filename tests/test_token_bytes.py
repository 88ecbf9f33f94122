"""Tokens that hold only part of a multi-byte character: their exact bytes, from real tokenizers, in labels,
tooltips, exports and the summary.

The independent reference is the text's own UTF-8 encoding: the bytes of all tokens, in order, must be it.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mkdocs_layerheat import models, refs
from mkdocs_layerheat.cache import Cache
from mkdocs_layerheat.extract import extract
from mkdocs_layerheat.figure import single
from mkdocs_layerheat.heatmap import Heatmap
from mkdocs_layerheat.labels import bytes_text, display_labels, fragment_notes
from mkdocs_layerheat.render import data_csv
from mkdocs_layerheat.texts import _bytes_to_unicode, fragment_bytes

DEMO = Path(__file__).resolve().parents[1] / ".models" / "SmolLM2-135M-Instruct"
# a dash, accents, emoji (one the vocabulary has whole, others it splits), CJK rare and common, a math letter
TEXT = "A dash — café, naïve; 🙂 🦜🪼 ☃ 中文 鬱龘 𝔘 Ω≈√ ok"


def token_bytes_of(heatmap: Heatmap) -> list[bytes]:
    """Each token's bytes: the stored ones of a fragment, else its piece encoded."""
    tb = heatmap.token_bytes or [None] * len(heatmap.tokens)
    return [bytes.fromhex(h) if h else piece.encode("utf-8") for piece, h in zip(heatmap.tokens, tb)]


def split_characters(text: str, pieces: list[bytes]) -> dict[int, list[tuple[str, int, int]]]:
    """Reference: for each token, the characters of `text` it holds only part of, with 1-based byte spans."""
    starts, at = [], 0
    for piece in pieces:
        starts.append(at)
        at += len(piece)
    out: dict[int, list[tuple[str, int, int]]] = {}
    offset = 0
    for char in text:
        size = len(char.encode("utf-8"))
        owners = [k for k, s in enumerate(starts) if s < offset + size and s + len(pieces[k]) > offset]
        if len(owners) > 1:
            for k in owners:
                first = max(starts[k], offset) - offset + 1
                last = min(starts[k] + len(pieces[k]), offset + size) - offset
                out.setdefault(k, []).append((char, first, last))
        offset += size
    return out


def expected_note(parts: list[tuple[str, int, int]]) -> str:
    return "; ".join((f"byte {a}" if a == b else f"bytes {a}–{b}") + f' of "{c}"' for c, a, b in parts)


@pytest.fixture(scope="module")
def demo():
    if not (DEMO / "config.json").is_file():
        pytest.fail(f"the demo model is missing at {DEMO}: run `make model` (make test does)")
    return models.load(refs.resolve(str(DEMO)))


def test_byte_level_table_is_transformers_own():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    assert _bytes_to_unicode() == bytes_to_unicode()


def test_demo_model_fragments_carry_their_exact_bytes(demo):
    """SmolLM2's byte-level BPE: the tokens' bytes put together are the text's UTF-8, fragment by fragment."""
    heatmap = extract(demo, TEXT, ["hidden-norm"])["hidden-norm"]
    assert heatmap.token_bytes, "this text splits characters over tokens"
    assert b"".join(token_bytes_of(heatmap)) == TEXT.encode("utf-8")
    for piece, hexed in zip(heatmap.tokens, heatmap.token_bytes):
        if hexed:  # a fragment: invalid UTF-8 alone, and its piece is what decoding shows
            with pytest.raises(UnicodeDecodeError):
                bytes.fromhex(hexed).decode("utf-8")
            assert "\ufffd" in piece
        else:
            assert "\ufffd" not in piece
    # two different fragments no longer look alike
    fragments = [i for i, h in enumerate(heatmap.token_bytes) if h]
    labels = display_labels(heatmap.tokens, heatmap.token_bytes)
    assert len({labels[i] for i in fragments}) > 1
    assert all("\ufffd" not in label for label in labels)
    # the hex shown is the bytes, in order
    for i in fragments:
        shown = labels[i].replace("⟨", "").replace("⟩", "")
        assert bytes.fromhex(shown.split(".")[0].strip()) in token_bytes_of(heatmap)[i]
    # every character split over tokens is named in each of its tokens' notes, with the right byte spans
    reference = split_characters(TEXT, token_bytes_of(heatmap))
    notes = fragment_notes(heatmap.token_bytes, len(heatmap.tokens))
    assert set(reference) == {i for i, note in enumerate(notes) if note}
    for i, parts in reference.items():
        assert notes[i] == expected_note(parts)
    assert any(c == "🦜" for parts in reference.values() for c, _, _ in parts)


def test_demo_model_labels_in_the_figure_tooltip_and_exports(demo):
    heatmap = extract(demo, "🦜 é", ["hidden-norm"])["hidden-norm"]
    pieces = token_bytes_of(heatmap)
    assert b"".join(pieces) == "🦜 é".encode()
    labels = display_labels(heatmap.tokens, heatmap.token_bytes)
    doc = single(heatmap, heatmap.normalized("global"), labels, "global").payload()
    first = labels[0]
    assert first.startswith("⟨F0 9F") and first.endswith("⟩")
    assert json.dumps(first, ensure_ascii=False) in doc  # the axis label and the tooltip's label
    assert 'of \\"🦜\\"' in doc  # the tooltip's note on which character the bytes form
    # CSV: the same notation in the token column; JSON: the bytes themselves
    rows = list(csv.reader(io.StringIO(data_csv(heatmap))))
    assert rows[1][1] == bytes_text(pieces[0])
    data = heatmap.to_dict()
    assert data["token_bytes"] == heatmap.token_bytes
    assert Heatmap.from_dict(json.loads(json.dumps(data))).token_bytes == heatmap.token_bytes


def test_tiny_byte_level_tokenizer_splits_every_non_ascii_character(loaded_models):
    """The tiny Llama's BPE was trained on ASCII only: each byte of "é—🙂" is a token of its own."""
    text = "Heat é—🙂 map"
    heatmap = extract(loaded_models["llama"], text, ["hidden-norm"])["hidden-norm"]
    kinds = heatmap.kinds
    body = [b for b, k in zip(token_bytes_of(heatmap), kinds) if k == "text"]
    assert b"".join(body) == text.encode("utf-8")
    assert sum(1 for h in heatmap.token_bytes if h) == len("é—🙂".encode())
    notes = fragment_notes(heatmap.token_bytes, len(heatmap.tokens))
    assert [n for n in notes if n] == [
        'byte 1 of "é"', 'byte 2 of "é"', 'byte 1 of "—"', 'byte 2 of "—"', 'byte 3 of "—"',
        'byte 1 of "🙂"', 'byte 2 of "🙂"', 'byte 3 of "🙂"', 'byte 4 of "🙂"',
    ]
    labels = display_labels(heatmap.tokens, heatmap.token_bytes)
    assert [labels[i] for i, h in enumerate(heatmap.token_bytes) if h] == [
        "⟨C3⟩", "⟨A9⟩", "⟨E2⟩", "⟨80⟩", "⟨94⟩", "⟨F0⟩", "⟨9F⟩", "⟨99⟩", "⟨82⟩"]


def sentencepiece_byte_fallback():
    """A Llama-2-style tokenizer: SentencePiece-like BPE with `<0xNN>` byte-fallback tokens."""
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers import models as tmodels
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ["▁", "a", "d", "s", "h", "▁d", "as", "▁das", "▁dash"]:
        vocab[piece] = len(vocab)
    merges = [("▁", "d"), ("a", "s"), ("▁d", "as"), ("▁das", "h")]
    tok = Tokenizer(tmodels.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_sentencepiece_byte_fallback_tokens_are_read_from_their_names():
    tokenizer = sentencepiece_byte_fallback()
    text = "a dash — é 🙂"
    ids = tokenizer(text)["input_ids"]
    pieces = [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
    found = fragment_bytes(tokenizer, ids, pieces)
    assert tokenizer.convert_ids_to_tokens(ids)[4] == "<0xE2>"
    assert b"".join(bytes.fromhex(h) for h in found if h) == "—é🙂".encode()
    assert [n for n in fragment_notes(found, len(ids)) if n][:3] == [
        'byte 1 of "—"', 'byte 2 of "—"', 'byte 3 of "—"']


def test_whole_characters_are_not_fragments():
    """A real U+FFFD in the text, and tokenizers whose entries are not bytes, leave token_bytes empty."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(DEMO)
    text = "x \ufffd y"
    ids = tokenizer(text)["input_ids"]
    pieces = [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
    assert "".join(pieces) == text
    assert fragment_bytes(tokenizer, ids, pieces) == [None] * len(ids)

    class Words:  # a vocabulary of words: nothing to read bytes from
        def convert_ids_to_tokens(self, ids):
            return ["[UNK]" for _ in ids]

    assert fragment_bytes(Words(), [5], ["\ufffd"]) == [None]


def test_notes_for_bytes_that_form_no_character():
    """A text cut in the middle of a character (generation stopped, say): the bytes are named as incomplete."""
    notes = fragment_notes([None, "f09f", None, "9c419d"], 4)
    assert notes == ["", "bytes F0 9F of an incomplete character", "",
                     "byte 9C of an incomplete character; byte 9D of an incomplete character"]
    assert bytes_text(bytes.fromhex("9c419d")) == "⟨9C⟩A⟨9D⟩"
    assert bytes_text(bytes.fromhex("20e280")) == " ⟨E2 80⟩"


def make(token_bytes=None):
    return Heatmap(values=np.zeros((2, 3), dtype=np.float32), tokens=["a", " \ufffd", "\ufffd."], layers=[1, 2],
                   metric="attention", model="m", token_bytes=token_bytes or [])


def test_heatmap_keeps_token_bytes_only_when_a_token_is_a_fragment_and_old_data_still_loads(tmp_path):
    assert make([None, None, None]).token_bytes == []
    assert "token_bytes" not in make().to_dict()
    heatmap = make([None, "20e280", "942e"])
    assert Heatmap.from_dict(heatmap.to_dict()).token_bytes == [None, "20e280", "942e"]
    with pytest.raises(ValueError):
        make([None, "20e280"])
    with pytest.raises(ValueError):
        make([None, "zz", None])
    # the cache: a new entry round-trips, an entry written before the field existed loads without it
    cache = Cache(tmp_path)
    cache.put("k" * 64, heatmap)
    assert cache.get("k" * 64).token_bytes == heatmap.token_bytes
    path = next(tmp_path.glob("??/*.npz"))
    with np.load(path) as data:
        values, meta = data["values"], json.loads(bytes(data["meta"]).decode("utf-8"))
    del meta["token_bytes"]
    buffer = io.BytesIO()
    np.savez(buffer, values=values, meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8))
    path.write_bytes(buffer.getvalue())
    assert zipfile.is_zipfile(path)
    old = cache.get("k" * 64)
    assert old is not None and old.token_bytes == [] and old.tokens == heatmap.tokens


def test_summary_names_fragments_by_their_bytes():
    """The written summary gets the labels: fragments appear as their bytes, never as �."""
    from mkdocs_layerheat.analysis import analyze
    from mkdocs_layerheat.narrative import summary_json
    from mkdocs_layerheat.render import Renderer

    values = np.array([[0.1, 0.9, 0.2], [0.1, 0.95, 0.3]], dtype=np.float32)
    heatmap = Heatmap(values=values, tokens=["a", " \ufffd", "\ufffd."], layers=[1, 2], metric="attention",
                      model="m", token_bytes=[None, "20e280", "942e"])
    labels = display_labels(heatmap.tokens, heatmap.token_bytes)
    assert labels == ["a", "⟨E2 80⟩", "⟨94⟩."]
    findings = analyze(heatmap, values, labels)
    document = summary_json(heatmap, findings, Renderer().narrative, "none")
    assert "\ufffd" not in document["text"]
    assert {t["label"] for t in document["tokens"]} <= set(labels)
