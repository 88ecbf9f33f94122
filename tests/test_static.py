"""The static SVG of a figure (`static.svg`): well-formed, each cell in the colour BokehJS gives it, text escaped,
colour bar ticks on the scale, stacked panels, the same bytes for the same figure."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from mkdocs_layerheat import figure, static
from mkdocs_layerheat.catalog import PALETTES
from mkdocs_layerheat.heatmap import Heatmap, robust_range
from mkdocs_layerheat.labels import display_labels

NS = "{http://www.w3.org/2000/svg}"
NASTY = '<script>&"x"'


def heatmap(values, tokens=None, metric="attention", **kw) -> Heatmap:
    values = np.asarray(values, dtype=np.float32)
    tokens = tokens or [f" t{i}" for i in range(values.shape[1])]
    return Heatmap(values, tokens, list(range(values.shape[0])), metric, "tiny", **kw)


def single(h: Heatmap, normalize="global", **kw) -> figure.Figure:
    return figure.single(h, h.normalized(normalize), display_labels(h.tokens), normalize, **kw)


def random_values(m=9, n=13, seed=0, nan=True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.random((m, n)) * 5 - 1
    v[:, 3] = v[:, 2]  # equal neighbours: runs longer than one cell
    v[m // 2] = 2.0
    if nan:
        v[rng.random((m, n)) < 0.1] = np.nan
        v[0, 0] = np.nan
    return v


def parse(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == f"{NS}svg"
    return root


def cell_groups(root: ET.Element) -> list[ET.Element]:
    """The groups of cell paths, one per panel (the colour bar's groups hold rects)."""
    return [g for g in root.iter(f"{NS}g") if g.get("shape-rendering") == "crispEdges"
            and len(g) and all(child.tag == f"{NS}path" for child in g)]


def read_runs(d: str) -> list[tuple[int, int, int]]:
    """(x, y, length) of each run in a path, read character by character: `M<x> <y>h<len>v1h-<len>z` repeated."""
    runs, i = [], 0

    def number(at: int) -> tuple[int, int]:
        end = at
        while end < len(d) and d[end].isdigit():
            end += 1
        assert end > at, f"a number expected at {at} in {d[at:at + 20]!r}"
        return int(d[at:end]), end

    while i < len(d):
        assert d[i] == "M"
        x, i = number(i + 1)
        assert d[i] == " "
        y, i = number(i + 1)
        assert d[i] == "h"
        length, i = number(i + 1)
        assert d[i:i + 4] == "v1h-"
        back, i = number(i + 4)
        assert back == length and d[i] == "z"
        i += 1
        runs.append((x, y, length))
    return runs


def drawn_colours(group: ET.Element, shape: tuple[int, int]) -> dict[tuple[int, int], str]:
    """(row, token) -> fill of each cell, from one panel's paths; every cell drawn exactly once."""
    m, n = shape
    out: dict[tuple[int, int], str] = {}
    fills = [path.get("fill") for path in group]
    assert len(fills) == len(set(fills)), "one path per colour"
    for path in group:
        for x, y, length in read_runs(path.get("d")):
            assert 0 <= y < m and 0 <= x and x + length <= n and length >= 1
            for t in range(x, x + length):
                row = m - 1 - y  # row 0 at the bottom
                assert (row, t) not in out, f"cell {(row, t)} drawn twice"
                out[(row, t)] = path.get("fill")
    assert len(out) == m * n
    return out


def expected_colours(panel: figure.Panel) -> dict[tuple[int, int], str]:
    colours = figure.palette(panel.palette)
    levels = figure.colour_index(panel.values, panel.scale, 256)
    return {(r, t): figure.NAN_COLOR if levels[r, t] < 0 else colours[levels[r, t]]
            for r in range(panel.shape[0]) for t in range(panel.shape[1])}


def texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(f"{NS}text")]


def bar_ticks(root: ET.Element) -> list[list[str]]:
    return [["".join(t.itertext()) for t in g.iter(f"{NS}text")] for g in root.iter(f"{NS}g")
            if g.get("class") == "bar-ticks"]


@pytest.mark.parametrize("name", PALETTES)
@pytest.mark.parametrize("normalize", ["global", "none"])
def test_each_cell_has_the_colour_bokeh_gives_it(name, normalize):
    fig = single(heatmap(random_values()), normalize, palette=name)
    (group,) = cell_groups(parse(static.svg(fig)))
    assert drawn_colours(group, fig.panels[0].shape) == expected_colours(fig.panels[0])


def test_nan_cells_are_grey_and_runs_are_merged():
    v = np.full((4, 10), 0.5)
    v[1, 2:7] = np.nan
    v[3] = np.linspace(0, 1, 10)
    fig = figure.single(heatmap(v), v, display_labels([f"t{i}" for i in range(10)]), "global")
    (group,) = cell_groups(parse(static.svg(fig)))
    cells = drawn_colours(group, (4, 10))
    assert all(cells[(1, t)] == figure.NAN_COLOR for t in range(2, 7))
    assert cells == expected_colours(fig.panels[0])
    runs = [run for path in group for run in read_runs(path.get("d"))]
    # row 1 (y = 2 from the top): the NaN stretch is one run between two
    assert sorted(run for run in runs if run[1] == 2) == [(0, 2, 2), (2, 2, 5), (7, 2, 3)]
    assert sum(1 for _, y, _ in runs if y in (1, 3)) == 2  # rows 0 and 2, of one value: one run each
    assert sum(1 for _, y, _ in runs if y == 0) == 10  # the gradient row: one run per cell


def test_a_tall_wide_figure_is_exact_too():
    fig = single(heatmap(random_values(30, 500, seed=3)))
    (group,) = cell_groups(parse(static.svg(fig)))
    assert drawn_colours(group, (30, 500)) == expected_colours(fig.panels[0])


def test_text_is_escaped_and_round_trips():
    tokens = ["<s>", " A", NASTY, " é ✓", "\x00\x1b", " ]]>", " 'q'"]
    h = heatmap(random_values(5, len(tokens), nan=False), tokens, kinds=["special"] + ["text"] * 6)
    fig = single(h, layer_label=f"Layer {NASTY}")
    fig.panels[0].title = f"(a) {NASTY} ✓"
    text = static.svg(fig)
    assert "<script>" not in text and "&lt;script&gt;&amp;" in text
    shown = texts(parse(text))
    for label in fig.panels[0].axis_labels:
        if label != "\x00\x1b":  # control characters, which XML cannot hold, are shown as control pictures
            assert label in shown
    assert "␀␛" in shown and NASTY in shown and "⟨<s>⟩" in shown
    assert f"(a) {NASTY} ✓" in shown and f"Layer {NASTY}" in shown
    assert [str(x) for x in range(0, 5)] == [s for s in shown if s.isdigit()][:5]


def test_the_document_stands_alone_and_scales():
    fig = single(heatmap(random_values(30, 25)))
    text = static.svg(fig)
    root = parse(text)
    width, height = int(root.get("width")), int(root.get("height"))
    assert root.get("viewBox") == f"0 0 {width} {height}"
    assert height == fig.height == figure.figure_height(30) and width >= max(320, 12 * 25 + 160)
    assert root.get("font-family") == "sans-serif"
    for banned in ("href", "url(", "<image", "@import", "<script", "<style", "<a "):
        assert banned not in text
    assert text.count("http") == 1  # the namespace only


def test_labels_rotate_when_long_or_many():
    long = static.svg(single(heatmap(random_values(3, 4), [" alpha", " beta", " gamma", " delta"])))
    short = static.svg(single(heatmap(random_values(3, 4), ["a", "b", "c", "d"])))
    assert long.count("rotate(-90)") == 4 + 2 and short.count("rotate(-90)") == 2  # plus the two axis titles


def test_layer_labels_every_step():
    fig = single(heatmap(random_values(45, 6)))
    assert fig.panels[0].layer_step == 3
    shown = texts(parse(static.svg(fig)))
    assert [s for s in shown if s.isdigit()] == [str(x) for x in range(0, 45, 3)]


def test_unit_colour_bar_ticks():
    (ticks,) = bar_ticks(parse(static.svg(single(heatmap(random_values())))))
    assert ticks == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]


@pytest.mark.parametrize("low, high", [(-3.7, 12.2), (0.013, 0.98), (2e-5, 9e-5), (120.0, 4321.0), (-0.2, 0.2)])
def test_colour_bar_ticks_are_round_and_on_the_scale(low, high):
    v = np.linspace(low, high, 24).reshape(4, 6)
    fig = single(heatmap(v, metric="hidden-norm"), "none")
    assert fig.panels[0].scale == pytest.approx((low, high), rel=1e-6)
    (ticks,) = bar_ticks(parse(static.svg(fig)))
    assert 3 <= len(ticks) <= 7
    values = [float(t) for t in ticks]
    lo, hi = map(float, fig.panels[0].scale)
    assert all(lo - 1e-9 * abs(lo) <= x <= hi + 1e-9 * abs(hi) for x in values)
    steps = np.diff(values)
    assert np.allclose(steps, steps[0])
    mantissa = steps[0] / 10 ** np.floor(np.log10(steps[0]))
    assert min(abs(mantissa - k) for k in (1, 2, 5)) < 1e-6


def test_nice_ticks_edge_cases():
    assert static.nice_ticks(0.5, 0.5) == [(0.5, "0.5")]
    assert [x for _, x in static.nice_ticks(-5, -1)] == ["-5", "-4", "-3", "-2", "-1"]
    assert "0" in [x for _, x in static.nice_ticks(-1e-9, 1e-9)]


def test_three_stacked_panels_are_titled_in_order():
    a, b = heatmap(random_values(seed=1, nan=False)), heatmap(random_values(seed=2, nan=False))
    va, vb = a.normalized("global"), b.normalized("global")
    labels = display_labels(a.tokens)
    delta = heatmap(vb - va)
    fig = figure.compared([(a, va, labels), (b, vb, labels)], ["(a) one", "(b) two", "(c) two − one"],
                          (delta, vb - va, labels), "global")
    root = parse(static.svg(fig))
    titles = [t.text for t in root.iter(f"{NS}text") if t.get("font-weight") == "bold"]
    assert titles == ["(a) one", "(b) two", "(c) two − one"]
    groups = cell_groups(root)
    assert len(groups) == 3
    for group, panel in zip(groups, fig.panels):
        assert drawn_colours(group, panel.shape) == expected_colours(panel)
    assert fig.panels[2].palette == "diverging"
    ticks = bar_ticks(root)
    assert ticks[0] == ticks[1] == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"] and "0.0" in ticks[2]
    assert int(root.get("height")) == fig.height == 3 * figure.figure_height(9)


def test_cells_beyond_a_clipped_scale_are_marked():
    v = random_values(nan=False)
    v[2, 5], v[6, 1] = 40.0, -30.0
    h = heatmap(v)
    low, high = robust_range(h.values)
    fig = figure.single(h, h.values, display_labels(h.tokens), "none", clip=(low + 0.5, high))
    above, below = fig.panels[0].beyond
    assert len(above) and len(below)
    root = parse(static.svg(fig))
    marks = [p for p in root.iter(f"{NS}path") if p.get("stroke") == "#000000"]
    assert [p.get("fill") for p in marks] == ["#ffffff", "#ffffff"]
    assert [p.get("d").count("M") for p in marks] == [len(above), len(below)]
    assert fig.panels[0].bar_title in texts(root) and "▲▼" in fig.panels[0].bar_title


def test_a_logit_lens_writes_its_words_in_their_inks():
    m, n = 4, 5
    top = [[[f"w{r}{t}<", "b"] for t in range(n)] for r in range(m)]
    probs = [[[0.6, 0.1] for _ in range(n)] for _ in range(m)]
    h = heatmap(np.random.default_rng(4).random((m, n)), ["a", "b", "c", "d", "e"], "logit-lens",
                extras={"top_tokens": top, "top_probs": probs})
    fig = figure.single(h, h.values, display_labels(h.tokens), "none")
    root = parse(static.svg(fig))
    written = {"".join(t.itertext()): t.get("fill") for t in root.iter(f"{NS}text") if t.get("fill")}
    assert len(fig.panels[0].words) == m * n
    for _, _, word, ink in fig.panels[0].words:
        assert written[word] == ink


def test_the_same_figure_gives_the_same_bytes():
    v = random_values(12, 40, seed=7)
    first = static.svg(single(heatmap(v)))
    assert first == static.svg(single(heatmap(v))) and first == static.svg(single(heatmap(v.copy())))
    assert first != static.svg(single(heatmap(random_values(12, 40, seed=8))))

