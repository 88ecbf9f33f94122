"""Finding ```layerheat fences in Markdown and replacing them, leaving everything else untouched."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mkdocs_layerheat.directives import Block, find_blocks, replace_blocks


def lines_of(markdown: str) -> list[str]:
    """Lines as Markdown (and an editor) count them: separated by \\n, \\r\\n or \\r."""
    return re.split(r"\r\n|\r|\n", markdown)


# --------------------------------------------------------------------------- finding blocks


def test_top_level_fence():
    md = "# Title\n\nSome text.\n\n```layerheat\nmodel: m\ntext: hello\n```\n\nAfter.\n"
    assert find_blocks(md) == [Block(line=5, end=8, indent="", body="model: m\ntext: hello", terminated=True)]


def test_tilde_fence():
    md = "intro\n~~~layerheat\nmodel: m\ntext: t\n~~~\n"
    assert find_blocks(md) == [Block(2, 5, "", "model: m\ntext: t", True)]


def test_spaces_around_info_string_and_longer_fences():
    md = "````  layerheat  \nmodel: m\n```\ntext: t\n`````\nafter\n"
    # a shorter fence inside does not close a longer one; a longer closing fence does
    assert find_blocks(md) == [Block(1, 5, "", "model: m\n```\ntext: t", True)]


def test_closing_fence_indentation():
    # a closing fence may be indented up to three spaces more than the opening one; four is content
    assert find_blocks("```layerheat\nmodel: m\n   ```\nafter\n") == [Block(1, 3, "", "model: m", True)]
    md = "```layerheat\nmodel: m\n    ```\ntext: t\n```\n"
    assert find_blocks(md) == [Block(1, 5, "", "model: m\n    ```\ntext: t", True)]
    md = "  ```layerheat\n  model: m\n     ```\n"
    assert find_blocks(md) == [Block(1, 3, "  ", "model: m", True)]


def test_tilde_fence_is_not_closed_by_backticks():
    md = "~~~layerheat\nmodel: m\n```\n~~~\n"
    assert find_blocks(md) == [Block(1, 4, "", "model: m\n```", True)]


def test_other_fences_are_not_blocks():
    md = "```python\nprint(1)\n```\n\n```yaml\nmodel: m\n```\n\n```layerheat-not\nx\n```\n"
    assert find_blocks(md) == []


def test_closing_fence_with_info_string_does_not_close():
    md = "```layerheat\nmodel: m\n``` python\ntext: t\n```\n"
    assert find_blocks(md) == [Block(1, 5, "", "model: m\n``` python\ntext: t", True)]


def test_inside_admonition():
    md = (
        "!!! note \"A heatmap\"\n"
        "\n"
        "    Look at this:\n"
        "\n"
        "    ```layerheat\n"
        "    model: m\n"
        "    text: |\n"
        "      indented\n"
        "      text\n"
        "    ```\n"
        "\n"
        "Outside.\n"
    )
    assert find_blocks(md) == [Block(5, 10, "    ", "model: m\ntext: |\n  indented\n  text", True)]


def test_inside_list_item_and_nested_tabs():
    md = (
        "- first item\n"
        "\n"
        "    ~~~layerheat\n"
        "    model: m\n"
        "    text: t\n"
        "    ~~~\n"
        "\n"
        "=== \"Tab\"\n"
        "\n"
        "    !!! tip\n"
        "\n"
        "        ```layerheat\n"
        "        model: n\n"
        "        ```\n"
    )
    assert find_blocks(md) == [
        Block(3, 6, "    ", "model: m\ntext: t", True),
        Block(12, 14, "        ", "model: n", True),
    ]


def test_layerheat_fence_inside_longer_fence_is_not_a_block():
    md = (
        "How to write one:\n"
        "\n"
        "````markdown\n"
        "```layerheat\n"
        "model: m\n"
        "text: t\n"
        "```\n"
        "````\n"
        "\n"
        "```layerheat\n"
        "model: real\n"
        "```\n"
    )
    assert find_blocks(md) == [Block(10, 12, "", "model: real", True)]


def test_layerheat_fence_inside_tilde_fence_is_not_a_block():
    md = "~~~\n```layerheat\nmodel: m\n```\n~~~\n"
    assert find_blocks(md) == []


def test_unterminated_fence():
    md = "text\n\n```layerheat\nmodel: m\ntext: t\n"
    assert find_blocks(md) == [Block(3, 5, "", "model: m\ntext: t", terminated=False)]


def test_unterminated_fence_on_last_line():
    md = "text\n```layerheat"
    assert find_blocks(md) == [Block(2, 2, "", "", terminated=False)]


def test_unterminated_other_fence_swallows_the_rest():
    md = "```python\nx = 1\n```layerheat\nmodel: m\n```\n"
    # the python fence is closed by nothing (```layerheat has an info string), then ``` closes it
    assert find_blocks(md) == []


def test_line_numbers_are_one_based_opening_fences():
    md = "\n".join(["line"] * 6 + ["```layerheat", "a: 1", "```"] + ["x"] * 3 + ["~~~layerheat", "b: 2", "~~~", ""])
    blocks = find_blocks(md)
    assert [(b.line, b.end) for b in blocks] == [(7, 9), (13, 15)]
    lines = md.split("\n")
    for b in blocks:
        assert lines[b.line - 1].endswith("layerheat")
        assert set(lines[b.end - 1]) <= {"`", "~"}


def test_line_numbers_with_crlf():
    md = "a\r\nb\r\n```layerheat\r\nmodel: m\r\n```\r\n"
    assert find_blocks(md) == [Block(3, 5, "", "model: m", True)]


def test_line_numbers_count_only_line_breaks():
    """Form feeds and Unicode line separators are characters inside a Markdown line, not line breaks."""
    md = "page\x0cbreak\nsome\u2028text\n```layerheat\nmodel: m\n```\n"
    assert [(b.line, b.end) for b in find_blocks(md)] == [(3, 5)]


def test_empty_page():
    assert find_blocks("") == []


# --------------------------------------------------------------------------- replacing blocks


def test_replace_keeps_everything_else_byte_for_byte():
    before = "# T\n\n  trailing spaces  \n\t\ttabs\n\n"
    middle = "\n\nbetween ~~~ and ``` inline\n\n"
    after = "\n\nend without newline"
    md = before + "```layerheat\nmodel: a\n```" + middle + "    ~~~ layerheat\n    model: b\n    ~~~\n" + after
    blocks = find_blocks(md)
    assert [b.body for b in blocks] == ["model: a", "model: b"]
    out = replace_blocks(md, blocks, lambda b: f"<FIG {b.body}>")
    assert out == before + "<FIG model: a>" + middle + "    <FIG model: b>\n" + after


def test_replace_unterminated_block_to_end_of_page():
    md = "intro\n```layerheat\nmodel: m\n"
    out = replace_blocks(md, find_blocks(md), lambda b: "ERROR")
    assert out == "intro\nERROR\n"


def test_replace_keeps_crlf_around_blocks():
    md = "a\r\n```layerheat\r\nmodel: m\r\n```\r\nb\r\n"
    assert replace_blocks(md, find_blocks(md), lambda b: "X") == "a\r\nX\r\nb\r\n"


def test_replace_with_no_blocks_is_identity():
    md = "```python\nx\n```\n"
    assert replace_blocks(md, [], lambda b: "never") == md


def test_replace_order_independent_of_block_order():
    md = "```layerheat\n1\n```\nmid\n```layerheat\n2\n```\n"
    blocks = find_blocks(md)
    out = replace_blocks(md, list(reversed(blocks)), lambda b: f"[{b.body}]")
    assert out == "[1]\nmid\n[2]\n"


# --------------------------------------------------------------------------- properties

FENCEY = st.text(alphabet=st.sampled_from(list("`~ \t\n\r-!=>#*abcdefghijklmnopqrstuvwxyz:|'\"\x0c\u2028")), max_size=300)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.one_of(FENCEY, st.text(max_size=300)).filter(lambda s: "layerheat" not in s))
@example("```\nnot layerheat\n```")
@example("~~~~\n```\n~~~\n")
def test_no_layerheat_fence_means_unchanged(markdown):
    blocks = find_blocks(markdown)
    assert blocks == [] or all("layerheat" in lines_of(markdown)[b.line - 1] for b in blocks)
    assert replace_blocks(markdown, blocks, lambda b: "REPLACED") == markdown


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=400)
    | st.lists(
        st.sampled_from(["```", "~~~", "layerheat", "\n", " ", "    ", "`", "\r\n", "\r", "\x0c", "\u2028", "x"]),
        max_size=80,
    ).map("".join)
)
@example("```layerheat")
@example("\n```layerheat\n")
@example("```layerheat\n\x0c```")
def test_find_blocks_never_raises(markdown):
    blocks = find_blocks(markdown)
    n = len(lines_of(markdown))
    for b in blocks:
        assert 1 <= b.line <= b.end <= n
        assert lines_of(markdown)[b.line - 1].strip().endswith("layerheat")
    replace_blocks(markdown, blocks, lambda b: "X")


PLAIN_LINE = st.text(alphabet=st.sampled_from(list("abc xyz:-#!*`~")), max_size=20).filter(
    lambda s: not s.lstrip().startswith(("``", "~~"))
)
BODY_LINE = st.text(alphabet=st.sampled_from(list("abc xyz:-'\"")), max_size=20)


@st.composite
def pages(draw):
    """A page of plain lines and layerheat blocks, with the blocks it should contain."""
    parts, expected = [], []
    for _ in range(draw(st.integers(0, 4))):
        parts.extend(draw(st.lists(PLAIN_LINE, max_size=4)))
        indent = draw(st.sampled_from(["", "    ", "  ", "        "]))
        fence = draw(st.sampled_from(["```", "~~~", "````", "~~~~~"]))
        body = draw(st.lists(BODY_LINE, max_size=4))
        expected.append((len(parts) + 1, len(parts) + len(body) + 2, indent, "\n".join(body)))
        parts.append(indent + fence + "layerheat")
        parts.extend(indent + line for line in body)
        parts.append(indent + fence)
    parts.extend(draw(st.lists(PLAIN_LINE, max_size=4)))
    return parts, expected


@settings(max_examples=200, deadline=None)
@given(pages(), st.booleans())
def test_constructed_pages(page, final_newline):
    parts, expected = page
    markdown = "\n".join(parts) + ("\n" if final_newline else "")
    blocks = find_blocks(markdown)
    assert [(b.line, b.end, b.indent, b.body) for b in blocks] == expected
    assert all(b.terminated for b in blocks)

    out = replace_blocks(markdown, blocks, lambda b: f"<figure {b.line}>")
    expected_lines, i = [], 0
    starts = {line: (end, indent) for line, end, indent, _ in expected}
    while i < len(parts):
        if i + 1 in starts:
            end, indent = starts[i + 1]
            expected_lines.append(f"{indent}<figure {i + 1}>")
            i = end
        else:
            expected_lines.append(parts[i])
            i += 1
    assert out == "\n".join(expected_lines) + ("\n" if final_newline else "")


def test_inline_triple_backticks_do_not_open_a_fence():
    md = "```inline``` code\n\n```layerheat\nmodel: m\ntext: t\n```\n"
    assert [b.line for b in find_blocks(md)] == [3]
