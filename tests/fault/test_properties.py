"""Issue 7, properties of the YAML validation (the fence scanner's are in tests/test_directives.py):
whatever a block's body is, only `SpecError` escapes, its line lies inside the body, and the plugin's
Markdown hook changes nothing of a page but its blocks."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mkdocs_layerheat import spec as specs
from mkdocs_layerheat.catalog import AGGREGATES, NORMALIZATIONS, ONE_PASS
from mkdocs_layerheat.directives import find_blocks
from mkdocs_layerheat.spec import HeatmapSpec, SpecError, parse_spec

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MARKDOWN_BREAK = re.compile(r"\r\n|\r|\n")

ANY = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
NUMBERS = st.lists(st.integers(-3, 50), max_size=5) | st.integers(-3, 50) | st.from_regex(r"\A[0-9 ,\-]{0,12}\Z")
TEXT_FILES = st.sampled_from(["sample.txt", "../outside.txt", "/etc/hostname", "", ".", "missing.txt", "latin1.txt",
                              "sub", "a\x00b", "x" * 300, "~/x", "sample.txt/"])


def mostly(valid):
    """Mostly values of a key's own kind, so that validation gets past the first check (integers favour 0)."""
    return st.integers(0, 5).flatmap(lambda n: ANY if n == 5 else valid)


VALUES = {
    "model": mostly(st.sampled_from(["m", "tiny", "owner/name@main", "./x"])),
    "text": mostly(st.text(min_size=1, max_size=40)),
    "text_file": mostly(TEXT_FILES),
    "metric": mostly(st.sampled_from(list(ONE_PASS))),
    "normalize": mostly(st.sampled_from(list(NORMALIZATIONS))),
    "palette": mostly(st.sampled_from(list(specs.PALETTES))),
    "title": mostly(st.text(max_size=20)),
    "caption": mostly(st.text(max_size=20)),
    "layer_label": mostly(st.text(max_size=10)),
    "max_tokens": mostly(st.integers(-5, 10**9)),
    "query": mostly(st.integers(-100, 100)),
    "target": mostly(st.text(max_size=5)),
    "heads": mostly(NUMBERS),
    "layers": mostly(NUMBERS),
    "aggregate": mostly(st.sampled_from(list(AGGREGATES))),
    "embeddings": mostly(st.booleans()),
    "chat": mostly(st.booleans()),
    "generate": mostly(st.integers(-3, 10)),
    "compare": mostly(st.fixed_dictionaries({}, optional={
        "model": st.sampled_from(["m", "n"]) | ANY, "text": st.text(max_size=10) | ANY, "metric": ANY})),
}
OTHER_KEYS = st.sampled_from([*specs._SITE_KEYS, "metirc", "txt", "Model"]) | ANY.filter(
    lambda key: not isinstance(key, (list, dict))
)


@st.composite
def mappings(draw) -> dict:
    """The real keys (whatever `spec` accepts now) with random values; sometimes a key that is not allowed."""
    data = {key: draw(VALUES[key]) for key in ("model", "text") if draw(st.integers(0, 7)) < 7}  # mostly both
    for key in draw(st.lists(st.sampled_from([k for k in specs._KEYS if k not in data]), max_size=5, unique=True)):
        data[key] = draw(VALUES.get(key, ANY))
    if draw(st.integers(0, 4)) == 4:
        data[draw(OTHER_KEYS)] = draw(ANY)
    return data


@st.composite
def yaml_bodies(draw) -> str:
    """A mapping dumped as YAML in either style, sometimes damaged by an insertion or a cut."""
    body = yaml.safe_dump(draw(mappings()), allow_unicode=draw(st.booleans()), sort_keys=False,
                          default_flow_style=draw(st.sampled_from([False, None, True])))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(body)))
        damage = draw(st.sampled_from(["", ":", "- ", "\n", "'", '"', "[", "{", "\t", " &a *a", "? ", "\u2028", "\x85",
                                       "\ufeff", "\x00", "!!python/object:os.system"]) | st.text(max_size=4))
        body = body[:at] + damage + body[at + draw(st.integers(0, 5)):]
    return body


BODIES = yaml_bodies() | st.text(max_size=200) | st.lists(
    st.sampled_from(["model: m", "text: hi", "metric: attention", "  - 1", "layers: [", "heads:", "---", "...",
                     "text: |", "  block", "compare:", "  model: n", "%YAML 1.2", "&x a: *x", "\t", ""]),
    max_size=10,
).map("\n".join)


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    root = tmp_path_factory.mktemp("properties")
    docs = root / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "sample.txt").write_text("a sample text")
    (docs / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "outside.txt").write_text("outside")
    return docs


def check(body: str, docs) -> HeatmapSpec | SpecError:
    """`parse_spec`, asserting that only SpecError escapes and that its line is inside the body."""
    try:
        return parse_spec(body, docs)
    except SpecError as exc:
        assert exc.line is None or 1 <= exc.line <= len(MARKDOWN_BREAK.split(body)), (exc.line, str(exc))
        assert str(exc)
        return exc


@FAST
@given(body=BODIES)
@example(body="text_file: \"a\\0b\"\nmodel: m\n")
@example(body="model: m\u2028text: [\n")
@example(body="model: m\ntext: hi\nlayers: 99999999999999999999-99999999999999999999\n")
@example(body="model: m\ntext: hi\ncompare: {text: hi, model: m}\n")
@example(body="model: m\ntext: hi\nmetric: hidden-norm\nlayers: 1-999999999999\n")  # must not allocate
@example(body="model: m\ntext: '\\U00110000'\n")
@example(body='model: m\ntext: "\\U00110000"\n')
@example(body="model: m\ntext: " + "[" * 5000 + "]" * 5000)
@example(body="[" * 100_000)
def test_only_spec_errors_escape_and_their_lines_are_in_the_body(docs, body):
    result = check(body, docs)
    if isinstance(result, HeatmapSpec):
        hash(result)  # a valid spec is a cache and plan key
        assert result.text.strip() and result.model


@FAST
@given(body=st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_random_unicode_bodies(docs, body):
    check(body, docs)


# --------------------------------------------------------------------------- through the page

OUTSIDE_LINE = st.text(st.characters(blacklist_characters="\r\n"), max_size=30).filter(
    lambda line: not line.lstrip(" \t").startswith(("```", "~~~"))
)
BODY_LINE = st.text(st.characters(blacklist_characters="\r\n"), max_size=30).filter(
    lambda line: not line.strip().startswith(("```", "~~~"))
)


@st.composite
def pages(draw):
    """A page of arbitrary lines and layerheat blocks with arbitrary bodies: its parts, its last line break, itself."""
    parts: list[tuple[str, str]] = []  # ("text", line) or ("block", indent)
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        for line in draw(st.lists(OUTSIDE_LINE, max_size=3)):
            parts.append(("text", line)), lines.append(line)
        indent = draw(st.sampled_from(["", "    ", "  "]))
        body = draw(BODIES | st.lists(BODY_LINE, max_size=4).map("\n".join))
        body_lines = [line for line in MARKDOWN_BREAK.split(body) if not line.strip().startswith(("```", "~~~"))]
        parts.append(("block", indent))
        lines += [indent + "````layerheat", *(indent + line for line in body_lines), indent + "````"]
    for line in draw(st.lists(OUTSIDE_LINE, max_size=3)):
        parts.append(("text", line)), lines.append(line)
    ending = draw(st.sampled_from(["", "\n"]))
    return parts, ending, "\n".join(lines) + ending


@pytest.fixture(scope="module")
def plugin(docs):
    from mkdocs.config import load_config

    root = docs.parent
    (root / "mkdocs.yml").write_text("site_name: t\nplugins:\n  - layerheat:\n      enabled: false\n")
    config = load_config(str(root / "mkdocs.yml"))
    plugin = config.plugins["layerheat"]
    plugin.on_config(config)
    page = SimpleNamespace(file=SimpleNamespace(abs_src_path=str(docs / "index.md"), src_uri="index.md", url="./"),
                           url="")
    return lambda markdown: (plugin.on_page_markdown(markdown, page=page, config=config, files=None), plugin)


@FAST
@given(page=pages())
def test_the_markdown_hook_changes_only_the_blocks(plugin, docs, page):
    parts, ending, markdown = page
    blocks = find_blocks(markdown)
    assert len(blocks) == sum(kind == "block" for kind, _ in parts)
    for block in blocks:
        result = check(block.body, docs)
        if isinstance(result, SpecError) and result.line is not None:  # the warning names a line of the body
            assert block.line < block.line + result.line < block.end
    out, hook = plugin(markdown)
    figures = re.findall(rf"LAYERHEAT{hook.nonce}X\d+X", out)
    assert len(figures) == len(blocks) and all(f in hook.figures for f in figures)
    hook.figures.clear()
    expected = "\n".join(line if kind == "text" else line + "\0" for kind, line in parts)
    assert re.sub(rf"LAYERHEAT{hook.nonce}X\d+X", "\0", out) == expected + ending
