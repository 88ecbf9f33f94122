"""Issue 7: every kind of bad block is one warning with its line, an error box, and no harm to its neighbours."""

from __future__ import annotations

import os
import re
import shutil

import pytest
from sites import GOOD, make_site, mkdocs

# name -> (bad block body, line of the problem inside the body (0: the fence line), message fragment)
CASES = {
    "yaml": ("model: tiny\ntext: [unclosed\nmetric: attention\n", 3, "invalid YAML"),
    "not-mapping": ("- model: tiny\n- text: hi\n", 0, "must be a YAML mapping"),
    "unknown-key": ("model: tiny\ntext: hello\nmetirc: attention\n", 3, "unknown key 'metirc' (did you mean 'metric'?)"),
    "wrong-type": ("model: tiny\ntext: hello\nchat: maybe\n", 3, "'chat' must be true or false"),
    "negative-generate": ("model: tiny\ntext: hello\ngenerate: -1\n", 3, "'generate' must be a non-negative integer"),
    "layers-out-of-range": ("model: tiny\ntext: hello there\nlayers: 40-50\n", 0, "layer 40 is out of range: the model has 3 layers"),
    "query-past-end": ("model: tiny\ntext: hello there\nmetric: attention-from\nquery: 500\n", 0, "query"),
    "max-tokens-type": ("model: tiny\ntext: hello\nmax_tokens: lots\n", 3, "'max_tokens' must be a positive integer"),
    "layers-zero": ("model: tiny\ntext: hello\nlayers: 0-2\n", 3, "'layers': 0 is out of range, the first is 1"),
    "duplicate-key": ("model: tiny\ntext: hello\ntext: again\n", 3, "duplicate key 'text'"),
    "empty-heads": ("model: tiny\ntext: hello\nmetric: attention\nheads: []\n", 4, "'heads' is empty"),
    "missing-text": ("model: tiny\nmetric: attention\n", 0, "missing or empty 'text'"),
    "empty-text": ("model: tiny\ntext: '   '\n", 2, "missing or empty 'text'"),
    "both-texts": ("model: tiny\ntext: hello\ntext_file: sample.txt\n", 3, "either 'text' or 'text_file'"),
    "text-file-missing": ("model: tiny\ntext_file: nowhere.txt\n", 2, "'nowhere.txt' not found in docs_dir"),
    "text-file-not-utf8": ("model: tiny\ntext_file: latin1.txt\n", 2, "is not UTF-8 text"),
    "text-file-empty": ("model: tiny\nmetric: attention\ntext_file: empty.txt\n", 3, "missing or empty 'text'"),
    "text-file-directory": ("model: tiny\ntext_file: texts\n", 2, "'texts' cannot be read: Is a directory"),
    "text-file-dotdot": ("model: tiny\ntext_file: ../outside.txt\n", 2, "is outside docs_dir"),
    "text-file-absolute": ("model: tiny\ntext_file: {outside}\n", 2, "is outside docs_dir"),
    "text-file-symlink": ("model: tiny\ntext_file: link.txt\n", 2, "is outside docs_dir"),
    "unknown-alias": ("model: nosuch\ntext: hello\n", 0, "unknown model 'nosuch'"),
    "missing-path": ("model: ./no/such/dir\ntext: hello\n", 0, "unknown model './no/such/dir'"),
    "missing-absolute-path": ("model: /no/such/dir\ntext: hello\n", 0, "unknown model '/no/such/dir'"),
    "hub-id-offline": ("model: nobody/nosuch-model\ntext: hello\n", 0, "is not in the local cache and HF_HUB_OFFLINE is set"),
    "not-a-model": ("model: ./docs\ntext: hello\n", 0, "is a directory but not a model (no config.json)"),
    "corrupt-weights": ("model: broken\ntext: hello\n", 0, "cannot load model 'broken'"),
    "too-long": ("model: tiny\ntext: 'one two three four five six seven eight nine ten'\nmax_tokens: 3\n", 0, "more than max_tokens=3"),
    "unterminated": (None, 0, "unterminated layerheat fence"),
}
INTRO = "# Page\n\nSome text.\n\n"


def page(body: str | None) -> tuple[str, int]:
    """A page with a good block, then the bad one (last, so that an unterminated fence swallows nothing)."""
    head = INTRO + GOOD + "\n"
    fence = head.count("\n") + 1
    if body is None:
        return head + "```layerheat\nmodel: tiny\ntext: hello\n", fence
    return head + "```layerheat\n" + body + "```\n\nText after.\n", fence


@pytest.fixture(scope="module")
def built(tmp_path_factory, llama_model):
    root = tmp_path_factory.mktemp("bad")
    broken = root / "broken-model"
    shutil.copytree(llama_model.path, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    outside = root / "outside.txt"
    outside.write_text("a text outside the docs")
    pages, lines = {}, {}
    for name, (body, _, _) in CASES.items():
        pages[f"{name}.md"], lines[name] = page(body.format(outside=outside) if body else body)
    pages["index.md"] = INTRO + GOOD
    site = make_site(root / "site", pages, {"tiny": str(llama_model.path), "broken": str(broken)})
    docs = site / "docs"
    (docs / "sample.txt").write_text("a sample text")
    (docs / "empty.txt").write_text("  \n")
    (docs / "texts").mkdir()
    (docs / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (site / "outside.txt").write_text("outside the docs")
    os.symlink(outside, docs / "link.txt")
    result = mkdocs(site)
    return site, lines, result


def test_build_succeeds_without_traceback(built):
    site, _, result = built
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert (site / "site" / "index.html").read_text().count('class="layerheat-item"') == 1


@pytest.mark.parametrize("name", list(CASES))
def test_bad_block(built, name):
    site, lines, result = built
    _, offset, message = CASES[name]
    warnings = [line for line in result.stderr.splitlines() if f"docs/{name}.md:" in line]
    assert len(warnings) == 1, result.stderr
    fence = lines[name]
    where = re.search(rf"docs/{re.escape(name)}\.md:(\d+): (.*)$", warnings[0])
    assert where, warnings[0]
    assert int(where[1]) == fence + offset, warnings[0]
    assert message in where[2], warnings[0]
    html = (site / "site" / name / "index.html").read_text()
    assert html.count("layerheat-error") == 1
    assert html.count('class="layerheat-item"') == 1  # the good block on the same page
    if name != "unterminated":
        assert "Text after." in html


def test_strict_fails_listing_every_bad_block(built):
    site, _, _ = built
    result = mkdocs(site, "--strict", "-d", str(site / "strict-site"))
    assert result.returncode != 0
    for name in CASES:
        assert f"docs/{name}.md:" in result.stderr, name
