"""`layerheat summarize HEATMAP.json [--json]` on files shaped like `layerheat extract`'s output."""

from __future__ import annotations

import json

import numpy as np
from claims import check_summary
from click.testing import CliRunner
from planted import planted

from mkdocs_layerheat.cli import main


def write(tmp_path, values, layers, tokens, **extra):
    data = {"tokens": tokens, "layers": layers,
            "values": [[None if np.isnan(x) else float(x) for x in row] for row in np.asarray(values)], **extra}
    path = tmp_path / "heatmap.json"
    path.write_text(json.dumps(data))
    return path


def run(*args):
    result = CliRunner().invoke(main, ["summarize", *map(str, args)])
    return result


def test_markdown_summary_of_a_minimal_file(tmp_path):
    rng = np.random.default_rng(0)
    p = planted(rng, ["uniform-high", "sparse"], [6, 8], 12, noise=0.01)
    path = write(tmp_path, p.values, list(range(1, 15)), [f"t{i}" for i in range(12)])  # no metric, no model
    result = run(path)
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.index("**What is plotted.**") > 0 and "**Trend by depth.**" in text  # the lead comes first
    assert "Layers 1–6 are uniformly high" in text and "In layers 7–14 most cells are low" in text
    check_summary(text, p.values, list(range(1, 15)), [f"t{i}" for i in range(12)])


def test_json_uses_the_files_layer_labels_and_nulls(tmp_path):
    rng = np.random.default_rng(1)
    p = planted(rng, ["uniform-low", "sparse", "uniform-high"], [4, 6, 4], 10, noise=0.01)
    values = p.values.copy()
    values[:, -1] = np.nan  # a position without values
    layers = list(range(20, 34))  # labels are not row indices
    tokens = ["<s>", " the", " cat"] + [f" w{i}" for i in range(7)]
    path = write(tmp_path, values, layers, tokens, metric="logit-lens", model="tiny", normalize="none")
    result = run(path, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"lead", "phenomena", "highlights", "bands", "tokens", "observations", "text"}
    assert [(b["first_layer"], b["last_layer"], b["kind"]) for b in data["bands"]] == [
        (20, 23, "uniform-low"), (24, 29, "sparse"), (30, 33, "uniform-high")]
    for band in data["bands"]:
        rows = slice(layers.index(band["first_layer"]), layers.index(band["last_layer"]) + 1)
        assert abs(band["mean"] - np.nanmean(values[rows])) < 1e-6
    assert [t["index"] for t in data["tokens"]] == list(range(10))
    assert data["tokens"][1]["token"] == " the" and data["tokens"][1]["label"] == "the"
    assert data["tokens"][-1]["peak_layer"] is None and data["tokens"][-1]["peak_value"] is None
    for t, row in p.peaks.items():
        if t < 9:
            assert data["tokens"][t]["peak_layer"] == layers[row]
            assert abs(data["tokens"][t]["peak_value"] - values[row, t]) < 1e-6
    assert all(t["sustained"] is None or (len(t["sustained"]) == 2 and t["sustained"][0] in layers)
               for t in data["tokens"])
    assert data["observations"] and all(isinstance(s, str) and s.endswith(".") for s in data["observations"])
    assert data["text"] == run(path).output
    assert "14 cells have no value" in data["text"]
    check_summary(data["text"], values, layers, [t["label"] for t in data["tokens"]], model="tiny")


def test_a_normalised_file_claims_no_raw_range(tmp_path):
    v = np.random.default_rng(2).uniform(0, 1, (5, 6))
    path = write(tmp_path, v, [1, 2, 3, 4, 5], list("abcdef"), normalize="global", metric="attention")
    result = run(path)
    assert result.exit_code == 0 and "scaled to 0–1 over the whole figure" in result.output
    assert "raw values" not in result.output


def test_a_file_that_is_not_a_heatmap_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tokens": ["a"], "layers": [1, 2], "values": [[1.0]]}))
    result = run(bad)
    assert result.exit_code != 0 and "not a heatmap JSON" in result.output and "Traceback" not in result.output
    bad.write_text("{not json")
    assert "not a heatmap JSON" in run(bad).output


def test_several_files_of_one_text_are_read_together(tmp_path):
    """A planted sink on the first token, with a massive norm that starts later and a quiet update."""
    from claims_joint import check_joint

    from mkdocs_layerheat.analysis import analyze
    from mkdocs_layerheat.heatmap import Heatmap
    from mkdocs_layerheat.render import Renderer

    rng = np.random.default_rng(8)
    n_layers, n_tokens = 16, 20
    tokens = [f"t{i}" for i in range(n_tokens)]
    attention = rng.uniform(0.01, 0.05, (n_layers, n_tokens))
    attention[2:, 0] = rng.uniform(0.5, 0.8, n_layers - 2)  # a sink from layer 3
    norm = rng.uniform(50, 150, (n_layers, n_tokens))
    norm[5:14, 0] = 15000.0  # massive from layer 6 to 14
    update = rng.uniform(0.1, 0.4, (n_layers, n_tokens))
    update[5:14, 0] = 0.01  # barely changes while massive
    paths = []
    for metric, values in (("attention", attention), ("hidden-norm", norm), ("update", update)):
        path = tmp_path / f"{metric}.json"
        path.write_text(json.dumps({"tokens": tokens, "layers": list(range(1, n_layers + 1)), "metric": metric,
                                    "model": "tiny", "normalize": "none", "values": values.tolist()}))
        paths.append(path)
    result = CliRunner().invoke(main, ["summarize", *map(str, paths)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.startswith("`t0` is both an attention sink in (a), at layers 3–16, and a massive activation in (b), "
                           "from layer 6")
    assert "the sink begins before the jump, at layer 3." in text and "it barely changes there" in text
    assert "(c) update." in text
    assert "Sun et al. 2024" in text and "its state is held" in text
    joint = text.split("\n---\n")[0]
    narrative = Renderer().narrative
    panels = []
    for path in paths:
        h = Heatmap.from_dict(json.loads(path.read_text()))
        f = analyze(h, h.values, tokens, "none")
        panels.append({"metric": h.metric, "values": h.values, "raw": h.values, "layers": h.layers,
                       "labels": tokens, "summary": narrative.markdown(h, f, "none"), "model": "tiny"})
    check_joint(joint.strip() + "\n", panels)
    data = json.loads(CliRunner().invoke(main, ["summarize", "--json", *map(str, paths)]).output)
    assert [k["kind"] for k in data["links"]] == ["sink-and-massive", "update"]
    assert data["lead"] == data["links"][0]["sentence"] and [p["letter"] for p in data["panels"]] == ["a", "b", "c"]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"tokens": tokens[:5], "layers": [1], "values": [[0.1] * 5]}))
    result = CliRunner().invoke(main, ["summarize", str(paths[0]), str(other)])
    assert result.exit_code != 0 and "not the same text" in result.output
