"""Issue 7: a block that fails (bad options for its model, a broken or unknown model) never takes down the others;
a model that gives NaN everywhere is a figure without values, in valid JSON, not an error."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from sites import make_site, mkdocs

NAN = "model: nan\ntext: The lazy fox sleeps.\nmetric: hidden-norm\n"
GOOD = [
    NAN,
    "model: tiny\ntext: The quick dog looks back.\nmetric: attention\n",
    "model: tiny\ntext: The quick dog looks back.\nmetric: hidden-norm\n",
    "model: tiny\ntext: The lazy fox sleeps.\nmetric: logit-lens\n",
    "model: bert\ntext: The lazy fox sleeps.\nmetric: attention\n",
]
BAD = {  # body -> message fragment; interleaved with the good blocks, same models where possible
    "model: tiny\ntext: The lazy fox sleeps.\nmetric: attention\nheads: [9]\n": "heads: head 9 is out of range",
    "model: tiny\ntext: The lazy fox sleeps.\nmetric: attention-from\nquery: 999\n": "query: position 999 is out of range",
    "model: tiny\ntext: The lazy fox sleeps.\nmetric: logit-lens\ntarget: ' the quick brown'\n": "it must be exactly one",
    "model: bert\ntext: The lazy fox sleeps.\nmetric: logit-lens\n": "needs a language model that predicts the next token",
    "model: bert\ntext: The lazy fox sleeps.\nmetric: attention\ngenerate: 3\n": "generate needs a causal language model",
    "model: broken\ntext: The lazy fox sleeps.\n": "cannot load model 'broken'",
    "model: nosuch\ntext: hello\n": "unknown model 'nosuch'",
}


def nan_model(source, target):
    """The tiny Llama with a NaN in its first layer's weights: every value downstream is NaN."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = load_file(target / "model.safetensors")
    name = next(n for n in weights if "layers.0" in n and "input_layernorm" in n)
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture(scope="module")
def built(tmp_path_factory, llama_model, bert_model):
    root = tmp_path_factory.mktemp("isolation")
    broken = root / "broken"
    shutil.copytree(llama_model.path, broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:2000])
    nan_model(llama_model.path, root / "nan")
    bodies = [body for pair in zip(list(BAD), GOOD + GOOD) for body in pair]
    page = "# Page\n\n" + "".join(f"```layerheat\n{body}```\n\nParagraph {i}.\n\n" for i, body in enumerate(bodies))
    models = {"tiny": str(llama_model.path), "bert": str(bert_model.path), "broken": str(broken), "nan": str(root / "nan")}
    site = make_site(root / "site", {"index.md": page}, models)
    return site, bodies, mkdocs(site)


def test_every_good_block_renders_and_every_bad_one_is_boxed(built):
    site, bodies, result = built
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    html = (site / "site" / "index.html").read_text()
    good = sum(body in GOOD for body in bodies)
    assert html.count('class="layerheat-item"') == good, result.stderr
    assert html.count("layerheat-error") == len(BAD), result.stderr
    for i in range(len(bodies)):
        assert f"Paragraph {i}." in html


def strict_json(text: str):
    """JSON as a browser's JSON.parse reads it: no NaN or Infinity."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))


def test_all_nan_values_are_a_figure_without_values_in_valid_json(built):
    site, _, result = built
    html = (site / "site" / "index.html").read_text()
    for payload in re.findall(r'<script type="application/json" class="layerheat-item"[^>]*>(.*?)</script>', html, re.S):
        strict_json(payload)
    figure = html[html.index(' hidden-norm of nan for each token'):]
    assert "No cell has a value" in figure[: figure.index("</figure>")]
    url = re.search(r'href="([^"]*data/[0-9a-f]+)\.json"', figure)[1]
    data = strict_json((site / "site" / url).with_suffix(".json").read_text())
    assert data["model"] == "nan"
    assert not any("nan" in line.lower() for line in result.stderr.splitlines() if "WARNING" in line)


@pytest.mark.parametrize("body", list(BAD))
def test_bad_block_warns_once_at_its_fence(built, body):
    site, bodies, result = built
    page = (site / "docs" / "index.md").read_text().splitlines()
    fence = next(n for n, line in enumerate(page, 1) if line == "```layerheat" and page[n].startswith(body.split("\n")[0])
                 and "\n".join(page[n:n + body.count("\n")]) + "\n" == body)
    warnings = [line for line in result.stderr.splitlines() if re.search(rf"docs/index\.md:{fence}: ", line)]
    assert len(warnings) == 1, result.stderr
    assert BAD[body] in warnings[0]
