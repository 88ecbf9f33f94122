"""The figure's data, as the page carries it for the loader: labels, marks, tooltip data, the shown values
recovered exactly from the raw ones, stable bytes; the loader's palettes; the CSV export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from figuredata import axis_labels, raw, shown

from mkdocs_layerheat import figure
from mkdocs_layerheat.compare import shared_scale
from mkdocs_layerheat.heatmap import Heatmap
from mkdocs_layerheat.labels import display_labels
from mkdocs_layerheat.render import ASSETS, data_csv


def make(values, tokens, kinds=None, layers=(1, 2)):
    return Heatmap(values=np.asarray(values, dtype=np.float32), tokens=tokens, layers=list(layers), metric="attention",
                   model="m", kinds=kinds or ["text"] * len(tokens))


def panels(fig: figure.Figure) -> list[dict]:
    """The payload as the loader reads it (JSON with "<", ">" and "&" escaped)."""
    return json.loads(fig.payload())["panels"]


def test_axis_marks_template_and_generated_tokens_and_tooltip_has_raw_values():
    heatmap = make([[0.1, 0.2, 0.3, np.nan], [0.4, 0.5, 0.6, 0.7]], ["<|im_start|>", " Hi", " there", "!"],
                   ["template", "text", "generated", "generated"])
    labels = display_labels(heatmap.tokens)
    (d,) = panels(figure.single(heatmap, heatmap.normalized("global"), labels, "global"))
    assert axis_labels(d) == ["⟨<|im_start|>⟩", "Hi", "there*", "!*"]
    assert d["tokens"] == ["<|im_start|>", "Hi", "there", "!"] and d["layers"] == ["1", "2"]
    assert d["kinds"] == {"0": "template", "2": "generated", "3": "generated"} and d["show_raw"] is True
    assert np.array_equal(raw(d), heatmap.values, equal_nan=True)


@pytest.mark.parametrize("mode", ["none", "global", "layer", "token"])
def test_the_shown_values_are_recovered_exactly_from_the_raw_ones(mode):
    rng = np.random.default_rng(3)
    a = make(rng.uniform(0, 50, (6, 9)), [f"t{i}" for i in range(9)], layers=range(6))
    b = make(rng.uniform(0, 80, (6, 9)), [f"t{i}" for i in range(9)], layers=range(6))
    a.values[2, 3] = np.nan
    b.values[4] = 7.0  # a constant row: normalised to 0
    va, vb = shared_scale(a, b, mode)
    delta = make(b.values - a.values, a.tokens, layers=range(6))
    fig = figure.compared([(a, va, a.tokens), (b, vb, b.tokens)], ["(a)", "(b)", "(c)"],
                          (delta, vb - va, a.tokens), mode)
    data = panels(fig)
    for d, values in zip(data, (va, vb, vb - va)):
        assert np.allclose(shown(d), values, atol=1e-6, equal_nan=True)
        # one matrix a panel, not two; but a difference of columns each scaled on its own is no map of b - a
        assert ("values" in d) == (mode == "token" and d is data[2])
        assert ("fit" in d) == (mode != "none" and "values" not in d)
    assert [d.get("linked", False) for d in data] == [False, True, True]
    shuffled = rng.permutation(va.ravel()).reshape(va.shape)  # not a function of the raw values: shipped itself
    (d,) = panels(figure.single(a, shuffled, a.tokens, "global"))
    assert "values" in d and np.allclose(shown(d), shuffled, equal_nan=True)


def test_the_same_figure_gives_the_same_bytes_and_cannot_end_its_script_early():
    heatmap = make([[0.1, 0.2], [0.3, 0.4]], ["</script><b>", "&amp;"])
    first = figure.single(heatmap, heatmap.values, heatmap.tokens, "none").payload()
    assert first == figure.single(heatmap, heatmap.values, heatmap.tokens, "none").payload()
    assert "<" not in first and ">" not in first and "&" not in first
    assert panels(figure.single(heatmap, heatmap.values, heatmap.tokens, "none"))[0]["tokens"] == heatmap.tokens


def test_csv_export_quotes_data_and_leaves_undefined_cells_empty():
    heatmap = make([[1.5, np.nan], [2.0, 3.0]], ['a,"b"', "=cmd"])
    rows = data_csv(heatmap).splitlines()
    assert rows[0] == "position,token,layer,attention"
    assert rows[1] == '0,"a,""b""",1,1.5'
    assert rows[2] == "1,=cmd,1,"


def test_palettes_and_a_symmetric_range_for_signed_values():
    heatmap = make([[-0.5, 0.25], [0.1, 0.2]], ["a", "b"])
    scales = {}
    for name in ("yellow-brown", "cividis", "viridis", "diverging"):
        fig = figure.single(heatmap, heatmap.values, ["a", "b"], "none", name, "Block")
        assert json.loads(fig.payload())["layer_label"] == "Block" and panels(fig)[0]["palette"] == name
        scales[name] = tuple(panels(fig)[0]["scale"])
    assert figure.palette("yellow-brown")[0].lower() == "#ffffe5"  # light yellow at the bottom
    assert figure.palette("cividis")[0] != figure.palette("viridis")[0]
    assert scales["diverging"] == (-0.5, 0.5) and scales["viridis"] == (-0.5, 0.25)
    rgb = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in figure.palette("diverging")]
    assert rgb[0][2] > rgb[0][0] and rgb[-1][0] > rgb[-1][2]  # blue for negative values, red for positive
    assert min(rgb[127]) > 230  # near white around zero


def test_the_loaders_palettes_are_bokehs():
    assert (ASSETS / "palettes.js").read_text() == figure.palettes_js()


def test_colour_index_matches_bokehs_linear_colour_mapper():
    values = np.array([[-1.0, 0.0, 0.25, 0.999, 1.0, 2.0, np.nan]])
    assert figure.colour_index(values, (0.0, 1.0), 256).tolist() == [[0, 0, 64, 255, 255, 255, -1]]


def test_layer_ticks_stay_legible_from_6_to_80_layers():
    for n_layers in (6, 12, 30, 35, 80):
        heatmap = Heatmap(np.zeros((n_layers, 3)), ["a", "b", "c"], list(range(1, n_layers + 1)), "attention", "m")
        (d,) = panels(figure.single(heatmap, heatmap.values, ["a", "b", "c"], "global"))
        ticks = list(range(0, n_layers, d["step"]))
        assert d["layers"][ticks[0]] == "1"  # layer 1 at the bottom, always labelled
        assert len(ticks) == n_layers if n_layers <= 20 else len(ticks) <= 20
        plot_height = figure.figure_height(n_layers) - 160  # the frame, without title, toolbar and token labels
        assert d["height"] == figure.figure_height(n_layers)
        assert plot_height / n_layers * (ticks[1] - ticks[0]) >= 14  # at least 14 px between labels


def test_a_heatmap_adds_at_most_twice_its_raw_values_and_labels_to_its_page():
    rng = np.random.default_rng(0)
    tokens = [f" word{i}" for i in range(25)]
    heatmap = make(rng.uniform(0, 1, (30, 25)), tokens, layers=range(30))
    payload = figure.single(heatmap, heatmap.normalized("global"), display_labels(tokens), "global").payload()
    raw = heatmap.values.size * 4 + sum(len(t.encode()) for t in tokens)
    assert len(payload.encode()) <= 2 * raw
