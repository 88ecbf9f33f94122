"""The figure's payload: labels, marks, tooltip data and stable ids, read back from the Bokeh JSON."""

from __future__ import annotations

import json

import numpy as np

from mkdocs_layerheat.heatmap import Heatmap
from mkdocs_layerheat.labels import display_labels
from mkdocs_layerheat.render import _stable_ids, data_csv, figure_item


def walk(node, name):
    if isinstance(node, dict):
        if node.get("name") == name:
            yield node
        for value in node.values():
            yield from walk(value, name)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from walk(value, name)


def make(values, tokens, kinds):
    return Heatmap(values=np.asarray(values, dtype=np.float32), tokens=tokens, layers=[1, 2], metric="attention",
                   model="m", kinds=kinds)


def test_axis_marks_template_and_generated_tokens_and_tooltip_has_raw_values():
    heatmap = make([[0.1, 0.2, 0.3, np.nan], [0.4, 0.5, 0.6, 0.7]], ["<|im_start|>", " Hi", " there", "!"],
                   ["template", "text", "generated", "generated"])
    labels = display_labels(heatmap.tokens)
    item = figure_item(heatmap, heatmap.normalized("global"), labels, "global")
    axis = next(a for a in walk(item["doc"], "LinearAxis") if a["attributes"].get("axis_label") != "Layer")
    overrides = axis["attributes"]["major_label_overrides"]
    marked = dict(overrides["entries"]) if isinstance(overrides, dict) and "entries" in overrides else overrides
    assert [marked[k] for k in sorted(marked, key=int)] == ["⟨<|im_start|>⟩", "Hi", "there*", "!*"]
    args = dict(next(walk(item["doc"], "CustomJSHover"))["attributes"]["args"]["entries"])
    assert args["labels"] == ["<|im_start|>", "Hi", "there", "!"]
    assert args["kinds"] == heatmap.kinds and args["layers"] == ["1", "2"]


def test_stable_ids_make_the_same_figure_byte_identical():
    heatmap = make([[0.1, 0.2], [0.3, 0.4]], ["a", "b"], ["text", "text"])
    first = _stable_ids(json.dumps(figure_item(heatmap, heatmap.values, ["a", "b"], "none")))
    second = _stable_ids(json.dumps(figure_item(heatmap, heatmap.values, ["a", "b"], "none")))
    assert first == second
    assert json.loads(first)["root_id"] == "p1"


def test_csv_export_quotes_data_and_leaves_undefined_cells_empty():
    heatmap = make([[1.5, np.nan], [2.0, 3.0]], ['a,"b"', "=cmd"], ["text", "text"])
    rows = data_csv(heatmap).splitlines()
    assert rows[0] == "position,token,layer,attention"
    assert rows[1] == '0,"a,""b""",1,1.5'
    assert rows[2] == "1,=cmd,1,"


def test_palettes_and_a_symmetric_range_for_signed_values():
    heatmap = make([[-0.5, 0.25], [0.1, 0.2]], ["a", "b"], ["text", "text"])
    mappers = {}
    for palette in ("yellow-brown", "cividis", "viridis", "diverging"):
        item = figure_item(heatmap, heatmap.values, ["a", "b"], "none", palette, "Block")
        mappers[palette] = next(walk(item["doc"], "LinearColorMapper"))["attributes"]
        assert any(a["attributes"].get("axis_label") == "Block" for a in walk(item["doc"], "LinearAxis"))
    assert mappers["yellow-brown"]["palette"][0].lower() == "#ffffe5"  # light yellow at the bottom
    assert mappers["cividis"]["palette"][0] != mappers["viridis"]["palette"][0]
    assert (mappers["diverging"]["low"], mappers["diverging"]["high"]) == (-0.5, 0.5)
    rgb = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in mappers["diverging"]["palette"]]
    assert rgb[0][2] > rgb[0][0] and rgb[-1][0] > rgb[-1][2]  # blue for negative values, red for positive
    assert min(rgb[127]) > 230  # near white around zero
    assert (mappers["viridis"]["low"], mappers["viridis"]["high"]) == (-0.5, 0.25)


def test_layer_ticks_stay_legible_from_6_to_80_layers():
    from mkdocs_layerheat.render import figure_height

    for n_layers in (6, 12, 30, 35, 80):
        heatmap = Heatmap(np.zeros((n_layers, 3)), ["a", "b", "c"], list(range(1, n_layers + 1)), "attention", "m")
        item = figure_item(heatmap, heatmap.values, ["a", "b", "c"], "global")
        axis = next(a for a in walk(item["doc"], "LinearAxis") if a["attributes"].get("axis_label") == "Layer")
        ticks = next(walk(axis, "FixedTicker"))["attributes"]["ticks"]
        overrides = axis["attributes"]["major_label_overrides"]
        labels = dict(overrides["entries"]) if isinstance(overrides, dict) and "entries" in overrides else overrides
        assert ticks[0] == 0 and labels[0] == "1"  # layer 1 at the bottom, always labelled
        assert len(ticks) == n_layers if n_layers <= 20 else len(ticks) <= 20
        plot_height = figure_height(n_layers) - 160  # the frame, without title, toolbar and token labels
        assert plot_height / n_layers * (ticks[1] - ticks[0]) >= 14  # at least 14 px between labels


def test_figures_pass_bokehs_document_validation():
    """Rendering skips Bokeh's validation for speed: the figures it draws must pass it."""
    from bokeh.core.validation.check import check_integrity
    from bokeh.layouts import column
    from bokeh.model import collect_models

    from mkdocs_layerheat.render import _panel

    heatmap = make([[0.1, 0.2], [0.3, np.nan]], ["a", "b"], ["text", "generated"])
    single = _panel(heatmap, heatmap.values, ["a", "b"], (0.0, 1.0), "cividis", "Layer", True)
    panels = [_panel(heatmap, heatmap.values, ["a", "b"], (-1.0, 1.0), "diverging", "Layer", False, f"({p})")
              for p in "abc"]
    for model in (single, column(panels)):
        issues = check_integrity(collect_models(model))
        assert not issues.error and not issues.warning, issues
