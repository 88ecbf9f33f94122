"""Finding ```layerheat fences in Markdown (also indented, inside admonitions, tabs and lists) and replacing them."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .spec import HeatmapSpec, SpecError, parse_spec

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*layerheat[ \t]*$")
_ANY_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}(?=[^`]*$)|~{3,})")  # a backtick fence's info has no `
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def _lines(markdown: str) -> list[str]:
    """The lines of a page with their line breaks: split at LF, CRLF and CR only, as Markdown counts lines.

    (`str.splitlines` also splits at form feeds, U+2028 and other characters that are text in Markdown.)
    """
    return _LINE.findall(markdown)


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    end: int  # 1-based line of the closing fence (== last line of the page if unterminated)
    indent: str
    body: str
    terminated: bool = True


def _closes(line: str, indent: str, fence: str) -> bool:
    stripped = line.strip()
    return (
        len(line) - len(line.lstrip()) <= len(indent) + 3
        and stripped.startswith(fence[0] * len(fence))
        and set(stripped) == {fence[0]}
    )


def find_blocks(markdown: str) -> list[Block]:
    """Every layerheat fence of a page, skipping those inside other fenced code blocks."""
    lines = [line.rstrip("\r\n") for line in _lines(markdown)]
    blocks, i = [], 0
    while i < len(lines):
        opening = _ANY_OPEN.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        j = i + 1
        while j < len(lines) and not _closes(lines[j], indent, fence):
            j += 1
        if _OPEN.match(lines[i]):
            body = "\n".join(_dedent(line, indent) for line in lines[i + 1 : j])
            blocks.append(Block(i + 1, min(j, len(lines) - 1) + 1, indent, body, terminated=j < len(lines)))
        i = j + 1
    return blocks


def _dedent(line: str, indent: str) -> str:
    return line[len(indent) :] if line.startswith(indent) else line.lstrip()


def replace_blocks(markdown: str, blocks: list[Block], replacement: Callable[[Block], str]) -> str:
    """Swap each block (fences included) for `replacement(block)`, indented like the fence."""
    lines = _lines(markdown)
    for block in sorted(blocks, key=lambda b: b.line, reverse=True):
        last = lines[block.end - 1]
        newline = last[len(last.rstrip("\r\n")) :]  # the closing line's own line break, if any
        lines[block.line - 1 : block.end] = [block.indent + replacement(block) + newline]
    return "".join(lines)


def specs_in(markdown: str, docs_dir: str | Path) -> list[HeatmapSpec]:
    """The heatmaps a page needs: each valid block's, both of a `compare:` block (bad blocks are reported
    when the page renders, with their line)."""
    specs = []
    for block in find_blocks(markdown):
        try:
            specs.extend(parse_spec(block.body, docs_dir).sides())
        except SpecError:
            pass
    return specs
