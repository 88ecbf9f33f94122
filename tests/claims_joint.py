"""An independent reader of the summary of several metrics of one text (`panels.md`): every link it states
between two panels is re-derived from the raw matrices (sinks and massive activations by `claims.py`'s
own rules), each panel's lead is checked by `claims.check_summary` on that panel, and nothing else may
state a number or a token.
"""

from __future__ import annotations

import re

import numpy as np
from claims import CODE_PARTS, NUM, TOK, Reader, check_summary, close, early_phase, quiet, runs_where

NORMS = ("hidden-norm", "attn-norm", "mlp-norm")


def _runs(rows) -> list[tuple[int, int]]:
    """Runs of consecutive integers among `rows`."""
    rows = sorted(int(r) for r in rows)
    if not rows:
        return []
    return [(a + rows[0], b + rows[0]) for a, b in runs_where(r in set(rows) for r in range(rows[0], rows[-1] + 1))]


def check_joint(text: str, panels: list[dict]) -> int:
    """`panels`: {metric, values (the figure's), raw, layers, labels, summary (its own Markdown)} per panel,
    in order (a), (b), ...
    Asserts every claim; returns how many sentences were checked."""
    letters = "abcdefgh"
    readers = [Reader("", p["values"], p["layers"], p["labels"], p["raw"], metric=p["metric"]) for p in panels]
    labels = panels[0]["labels"]
    problems: list[str] = []
    checked = 0
    consumed = text

    def expect(ok, message):
        nonlocal checked
        checked += 1
        if not ok:
            problems.append(message)

    def panel(letter: str) -> int:
        return letters.index(letter)

    def token(ref: str) -> int:
        m = re.match(CODE_PARTS + r"(?: \(position (\d+)\))?", ref)
        if m.group(3):
            return int(m.group(3))
        return labels.index(m.group(2)) if m.group(2) in labels else -1

    def rows_of(p: int, first: int, last: int) -> np.ndarray:
        return np.array([r for r, x in enumerate(panels[p]["layers"]) if first <= int(x) <= last], dtype=int)

    def layer_runs(p: int, rows) -> str:
        layers = panels[p]["layers"]
        return " and ".join(f"{layers[a]}" if a == b else f"{layers[a]}–{layers[b]}" for a, b in _runs(rows))

    def stated_runs(s: str) -> str:
        return re.sub(r"^layers? ", "", s).replace(", ", " and ")

    def strongest(reader: Reader, t: int):
        runs = reader.massive[t]["runs"]
        first, last = max(runs, key=lambda r: np.nanmax(reader.raw[r[0]:r[1] + 1, t]))
        return first, last, first + int(np.nanargmax(reader.raw[first:last + 1, t]))

    def massive_part(m, t: int, p: int):
        reader = readers[p]
        if t not in reader.massive:
            problems.append(f"{labels[t]} is said to be massive in ({letters[p]}) but is not")
            return None
        first, last, peak = strongest(reader, t)
        expect(close(m.group("ratio"), reader.massive[t]["ratio"][peak]), "massive ratio")
        at = int(m.group("at"))
        if reader.metric == "hidden-norm":
            expect(m.group("how") == "activation" and at == panels[p]["layers"][first], "massive onset")
        else:
            expect(m.group("how") != "activation" and at == panels[p]["layers"][peak], "massive write layer")
        return first

    def sink_part(ref: str, letter: str, runs: str, t: int):
        a = panel(letter)
        expect(panels[a]["metric"] == "attention" and t in readers[a].sinks, f"{ref} is no sink in ({letter})")
        if t in readers[a].sinks:
            rows = readers[a].sinks[t][0]
            expect(stated_runs(runs) == layer_runs(a, rows), f"{ref}: sink layers {runs}")
            return rows
        return None

    massive = (rf"(?:a massive activation in \((?P<mp>[a-h])\), from layer (?P<at>\d+)(?P<how>)|a massive write from the "
               rf"(?P<how2>MLP|attention sublayer) in \((?P<mp2>[a-h])\), at layer (?P<at2>\d+)) \((?P<ratio>{NUM})x the layer's median\)")

    def normal(m):  # one pattern with two spellings of the massive part: fold them into the same groups
        class G:
            def group(self, name):
                if name == "how":
                    return "activation" if m.group("mp") else m.group("how2")
                if name in ("mp", "at"):
                    return m.group(name) or m.group(name + "2")
                return m.group(name)
        return G()

    def both(m):
        g = normal(m)
        t = token(m.group("tok"))
        rows = sink_part(m.group("tok"), m.group("sp"), m.group("runs"), t)
        p = panel(g.group("mp"))
        first = massive_part(g, t, p)
        if rows is None or first is None:
            return
        layers_p, layers_a = panels[p]["layers"], panels[panel(m.group("sp"))]["layers"]
        reader = readers[p]
        early = early_phase(reader.massive[t]["ratio"], first) if reader.metric == "hidden-norm" else None
        _, _, peak = strongest(reader, t)
        end = peak
        while end + 1 < reader.n_layers and reader.raw[end + 1, t] >= 0.5 * reader.raw[peak, t]:
            end += 1
        phases = [(int(layers_p[first]), int(layers_p[end]))] + ([(int(layers_p[early[0]]), int(layers_p[early[1]]))] if early else [])
        starts = [int(layers_a[a]) for a, _ in _runs(rows.tolist())]
        follows = reader.metric == "hidden-norm" and all(any(a <= s - 1 <= b for a, b in phases) for s in starts)
        sink_first, onset = starts[0], int(layers_p[first])
        order = m.group("order")
        if order.startswith((" each run", " the sink begins one layer")):
            expect(follows, "the sink follows the norm")
        elif follows:
            problems.append("the sink follows the norm but the text does not say so")
        elif " the sink begins before the jump" in order:
            expect(sink_first < onset and int(m.group("before")) == sink_first, "sink before the jump")
        elif " both begin" in order:
            expect(int(m.group("same")) == onset == sink_first, "both begin")
        else:
            expect(sink_first > onset and int(m.group("after")) == sink_first, "sink after the jump")
        e = re.search(rf"(?:its norm is already |\(at layers (?P<a2>\d+)(?:–(?P<b2>\d+))?, )(?P<lo>{NUM})–(?P<hi>{NUM})x the median(?: at layers (?P<a>\d+)(?:–(?P<b>\d+))?)?", order)
        if e:
            a, b = e.group("a") or e.group("a2"), e.group("b") or e.group("b2") or e.group("a") or e.group("a2")
            expect(early is not None and (int(a), int(b)) == (int(layers_p[early[0]]), int(layers_p[early[1]])), "early phase")
            ratio = reader.massive[t]["ratio"]
            expect(close(e.group("lo"), min(ratio[early[0]:early[1] + 1])) and close(e.group("hi"), max(ratio[early[0]:early[1] + 1])), "early ratios")
            if "then from layer" in order:
                expect(int(re.search(r"then from layer (\d+)", order).group(1)) == onset, "onset")
        else:
            expect(early is None or " both begin" in order or " the sink begins after" in order, "the early phase is not said")

    def sink_only(m):
        t = token(m.group("tok"))
        rows = sink_part(m.group("tok"), m.group("sp"), m.group("runs"), t)
        p = panel(m.group("np"))
        expect(t not in readers[p].massive, f"{m.group('tok')} is massive in ({m.group('np')})")
        if rows is None:
            return
        a = panel(m.group("sp"))
        layers = [int(panels[a]["layers"][r]) for r in rows]
        r = rows_of(p, min(layers), max(layers))
        raw = readers[p].raw
        median = quiet(np.nanmedian, np.delete(raw[r], t, axis=1), axis=1)
        ratio = raw[r, t] / median
        expect(close(m.group("lo"), np.nanmin(ratio)) and close(m.group("hi"), np.nanmax(ratio)), "sink norm range")
        expect((m.group("but") == "but") == bool(np.nanmedian(ratio) >= 3.0), "raised norm")

    def massive_only(m):
        g = normal(m)
        t = token(m.group("tok"))
        p = panel(g.group("mp"))
        massive_part(g, t, p)
        a = panel(m.group("ap"))
        expect(t not in readers[a].sinks, f"{m.group('tok')} is a sink")
        expect(close(m.group("share"), np.nanmax(readers[a].raw[:, t])), "largest share")

    def update(m):
        t = token(m.group("tok"))
        p = panel(m.group("up"))
        expect(panels[p]["metric"] == "update", "update panel")
        stated = [(int(a), int(b or a)) for a, b in re.findall(r"(\d+)(?:–(\d+))?", m.group("runs"))]
        # the layers: the massive activation's plateau after its first layer, else the sink's layers after its first
        expected = None
        for q, reader in enumerate(readers):
            if panels[q]["metric"] in NORMS and t in reader.massive:
                first, last, peak = strongest(reader, t)
                col, half = reader.raw[:, t], 0.5 * reader.raw[peak, t]
                a = b = peak
                while a > 0 and col[a - 1] >= half:
                    a -= 1
                while b + 1 < len(col) and col[b + 1] >= half:
                    b += 1
                lo, hi = int(panels[q]["layers"][a]), int(panels[q]["layers"][b])
                expected = [x for x in panels[p]["layers"] if lo < int(x) <= hi]
                break
        else:
            for q, reader in enumerate(readers):
                if panels[q]["metric"] == "attention" and t in reader.sinks:
                    sink_layers = {int(panels[q]["layers"][r]) for r in reader.sinks[t][0]}
                    expected = [x for x in panels[p]["layers"] if int(x) in sink_layers][1:]
        expect(expected is not None and [(a, b) for a, b in _runs(expected)] == stated, "update layers")
        rows = [panels[p]["layers"].index(x) for x in expected or []]
        raw = readers[p].raw[rows]
        mine = float(np.nanmedian(raw[:, t]))
        others = float(np.nanmedian(np.nanmedian(np.delete(raw, t, axis=1), axis=0)))
        expect(close(m.group("median"), mine) and close(m.group("others"), others), "update medians")
        level = "barely" if mine < 0.5 * others else "more" if mine > 2 * others else "about"
        expect(level in m.group("level"), f"update level: {level}")

    patterns = [
        (rf"(?P<tok>{TOK}) is both an attention sink in \((?P<sp>[a-h])\), at (?P<runs>layers? [\d–, and]+?), and {massive};"
         rf"(?P<order> (?:each run of the sink|the sink) begins one layer into a rise of its norm(?: \(at layers [^)]*\))?, as attention at a layer reads the state the block below wrote\."
         rf"|(?: its norm is already {NUM}–{NUM}x the median at layers? \d+(?:–\d+)?, and)? the sink begins before the jump, at layer (?P<before>\d+)\."
         rf"| both begin at layer (?P<same>\d+)\.| the sink begins after it, at layer (?P<after>\d+)\.)", both),
        (rf"(?P<tok>{TOK}), an attention sink in \((?P<sp>[a-h])\) at (?P<runs>layers? [\d–, and]+?), is no massive activation in "
         rf"\((?P<np>[a-h])\), (?P<but>but|and) its [a-zA-Z -]+ there is (?P<lo>{NUM})–(?P<hi>{NUM})x the other tokens' median\.", sink_only),
        (rf"(?P<tok>{TOK}) has {massive} but is no attention sink: it takes at most (?P<share>{NUM}) of the attention in "
         rf"\((?P<ap>[a-h])\) at any layer\.", massive_only),
        (rf"Over (?P<runs>layers? [\d–, and]+?), the update of (?P<tok>{TOK}) in \((?P<up>[a-h])\) has a median of (?P<median>{NUM}) "
         rf"against (?P<others>{NUM}) for the other tokens: (?P<level>it barely changes there|it changes more than "
         rf"the other tokens|it changes about as much as the other tokens)\.", update),
    ]
    for pattern, handler in patterns:
        for m in re.finditer(pattern, text):
            handler(m)
            consumed = consumed.replace(m.group(0), " ", 1)

    # each panel's lead is the lead of that panel's own summary, which is checked on its panel
    for m in re.finditer(r"^- \(([a-h])\) [^:]+: (.*)$", text, re.M):
        p = panel(m.group(1))
        own = panels[p]["summary"]
        expect(" ".join(own.split("\n\n")[0].split()) == m.group(2), f"({m.group(1)}): not the lead of its summary")
        check_summary(own, panels[p]["values"], panels[p]["layers"], labels, raw=panels[p]["raw"],
                      metric=panels[p]["metric"])
        consumed = consumed.replace(m.group(0), " ", 1)

    m = re.match(r"In \(a\), (.*)", text)  # no link: the lead is panel (a)'s own
    if m:
        own = " ".join(panels[0]["summary"].split("\n\n")[0].split())
        expect(own[:1].lower() + own[1:] == m.group(1) or own == m.group(1), "(a): not the lead of its summary")
        check_summary(panels[0]["summary"], panels[0]["values"], panels[0]["layers"], labels, raw=panels[0]["raw"],
                      metric=panels[0]["metric"])
        consumed = consumed.replace(m.group(0), " ", 1)
    for pattern in (r"The (\d+) tokens of the text", r"against layers? (\d+)(?:–(\d+))? of", r"in (\d+) panels"):
        m = re.search(pattern, text)
        if m:
            consumed = consumed.replace(m.group(0), " ", 1)
            if pattern.startswith("The"):
                expect(int(m.group(1)) == len(labels), "token count")
            elif "panels" in pattern:
                expect(int(m.group(1)) == len(panels), "panel count")
    m = re.search(rf" of ({TOK}) \(y axis\)", text)
    if m:
        name = re.match(CODE_PARTS, m.group(1)).group(2)
        model = str(panels[0].get("model") or "").split("@")[0].rstrip("/")
        expect(not model or model.endswith(name), f"model {name}")
        consumed = consumed.replace(m.group(1), " ", 1)
    consumed = re.sub(r"\b(?:Sun|Gu) et al\. \d{4}|0–1", " ", consumed)
    for ref in re.finditer(rf"That ((?:{TOK}(?:, | and )?)+) (?:is a sink|are sinks) while", text):
        for name in re.findall(TOK, ref.group(1)):  # each one a sink with a raised norm, as stated above
            expect(re.search(re.escape(name) + r", an attention sink in [^\n]* but its ", text), f"{name}: raised norm")
        consumed = consumed.replace(ref.group(1), " ", 1)
    for m in re.finditer(r"`[^`\n]*`|\d", consumed):
        problems.append(f"unchecked claim {m.group(0)!r} in: ...{consumed[max(0, m.start() - 60):m.end() + 60]}...")
    assert not problems, "the joint summary says what the numbers do not show:\n- " + "\n- ".join(problems) + "\n\n" + text
    return checked
