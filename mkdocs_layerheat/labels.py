"""Token labels as a reader sees them: leading-space markers dropped, whitespace made visible, and the bytes of
a token that holds only part of a multi-byte character shown as such (stdlib only)."""

from __future__ import annotations

_VISIBLE_WHITESPACE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"})


def display_labels(tokens: list[str], token_bytes: list[str | None] | None = None) -> list[str]:
    """Readable token labels: no leading-space markers; whitespace-only tokens and line breaks made visible.

    A token that holds only part of a multi-byte character (`Heatmap.token_bytes`) shows its bytes:
    `⟨E2 80⟩` for the first two bytes of "—", `⟨94⟩.` for its last byte followed by a full stop.
    """
    labels = []
    for position, piece in enumerate(tokens):
        if token_bytes and token_bytes[position]:
            piece = bytes_text(bytes.fromhex(token_bytes[position]))
        if not piece.strip():
            labels.append(piece.translate(_VISIBLE_WHITESPACE) or "∅")
        else:
            labels.append(piece.strip().replace("\n", "↵").replace("\t", "⇥"))
    return labels


def bytes_text(data: bytes) -> str:
    """Bytes as text, each run of bytes that are not a whole UTF-8 character shown in hex:
    b" \\xe2\\x80" -> " ⟨E2 80⟩"."""
    out, rest = [], data
    while rest:
        try:
            out.append(rest.decode("utf-8"))
            break
        except UnicodeDecodeError as exc:
            out.append(rest[: exc.start].decode("utf-8"))
            out.append("⟨" + " ".join(f"{b:02X}" for b in rest[exc.start : exc.end]) + "⟩")
            rest = rest[exc.end :]
    return "".join(out).replace("⟩⟨", " ")


def _utf8_length(lead: int) -> int:
    return 1 if lead < 0x80 else 2 if 0xC2 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if 0xF0 <= lead < 0xF5 else 0


def _starts_char(data: bytes, at: int, bad: int) -> bool:
    """Whether a whole UTF-8 character starts at `at` (after the first bad byte at `bad`)."""
    size = _utf8_length(data[at])
    if at == bad or not size or at + size > len(data):
        return False
    try:
        data[at : at + size].decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def fragment_notes(token_bytes: list[str | None], n_tokens: int) -> list[str]:
    """For each token that holds part of a multi-byte character, which character and which of its bytes:
    'bytes 1–2 of "—"'; '' for every other token. A character split over tokens lies in a run of such tokens."""
    notes = [""] * n_tokens
    position = 0
    while position < min(n_tokens, len(token_bytes)):
        if not token_bytes[position]:
            position += 1
            continue
        run, data, owner = [], b"", []  # the run's tokens, their bytes joined, and the token of each byte
        while position < len(token_bytes) and token_bytes[position]:
            chunk = bytes.fromhex(token_bytes[position])
            run.append(position)
            data += chunk
            owner += [position] * len(chunk)
            position += 1
        found: dict[int, list[str]] = {k: [] for k in run}
        at = 0
        while at < len(data):
            size = _utf8_length(data[at])
            try:
                char = data[at : at + size].decode("utf-8") if size and at + size <= len(data) else None
            except UnicodeDecodeError:
                char = None
            if char is None:  # bytes that complete no character (a text cut in the middle of one)
                bad = at
                while at < len(data) and owner[at] == owner[bad] and not _starts_char(data, at, bad):
                    at += 1
                which = "byte" if at - bad == 1 else "bytes"
                found[owner[bad]].append(f"{which} {' '.join(f'{b:02X}' for b in data[bad:at])} of an incomplete character")
                continue
            holders = owner[at : at + size]
            if len(set(holders)) > 1:  # split over tokens: say which bytes each token holds
                for k in dict.fromkeys(holders):
                    first, last = holders.index(k) + 1, size - holders[::-1].index(k)
                    span = f"byte {first}" if first == last else f"bytes {first}–{last}"
                    found[k].append(f'{span} of "{char}"')
            at += size
        for k in run:
            notes[k] = "; ".join(found[k])
    return notes
