"""An independent reader of the written summary: parse every number and token it states, recompute each
from the matrix with the definitions documented in docs/analysis.md, and fail on any claim that does not hold.

Nothing here imports the analysis: the definitions are re-derived from the documentation.
"""

from __future__ import annotations

import math
import re

import numpy as np

HIGH, LOW, STANDS_OUT = 2 / 3, 1 / 3, 0.25
NUM = r"(?:-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)"
CODE_PARTS = r"(`+) ?(.+?) ?\1(?!`)"  # fence, label (used on its own)
# a code span without capturing groups, for use inside larger patterns (fences of 1 to 4 backticks)
_INSIDE = {1: "[^`\\n]"}  # a single-backtick span holds no backtick; longer fences may hold shorter runs
CODE = "(?:" + "|".join(rf"(?<!`){'`' * n}(?!`) ?{_INSIDE.get(n, '[^' + chr(10) + ']')}+? ?(?<!`){'`' * n}(?!`)"
                        for n in (1, 2, 3, 4)) + ")"
# a token reference: a code span, optionally followed by its position(s)
TOK = rf"(?:{CODE}(?: \((?:position|positions) [\d, and]+\))?(?: → {CODE})?)"
LAYERS = r"(?:Layers?|layers?) (\d+)(?:–(\d+))?"
# a list of runs of layers, "layers 3–21, 24–26 and 29–30", as one group
SPANS = r"(?:Layers?|layers?) (\d+(?:–\d+)?(?:(?:, | and )\d+(?:–\d+)?)*)"


def close(stated: str, true: float, rel: float = 0.0) -> bool:
    """Whether `stated` is `true` written with the digits it shows (rounding), allowing float32 slop."""
    true = float(true)
    if "e" in stated:
        mantissa = stated.split("e")[0]
        digits = len(mantissa.replace("-", "").replace(".", "").lstrip("0")) or 1
        return math.isclose(float(stated), true, rel_tol=0.5 * 10 ** (1 - digits) + 1e-6, abs_tol=1e-300)
    stated = stated.replace(",", "")
    if "." in stated:
        tolerance = 0.5 * 10 ** -len(stated.split(".")[1])
    else:  # "170", "25000": the trailing zeros are not significant
        tolerance = 0.5 * 10 ** (len(stated) - len(stated.rstrip("0"))) if stated.strip("-0") else 0.5
    return abs(float(stated) - true) <= tolerance + 1e-6 * max(1.0, abs(true)) + rel


def quiet(func, *args, **kwargs):
    import warnings

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return func(*args, **kwargs)


METRIC_OF = {"attention received:": "attention", "attention from one query:": "attention-from",
             "attention entropy:": "attention-entropy", "hidden-state norm:": "hidden-norm", "update:": "update",
             "attention-sublayer norm:": "attn-norm", "MLP-sublayer norm:": "mlp-norm", "logit lens:": "logit-lens",
             "logit-lens rank:": "logit-lens-rank", "causal trace": "causal-trace",
             "patching effect": "activation-patching"}
TRACES = ("causal-trace", "activation-patching")
MASSIVE = ("hidden-norm", "attn-norm", "mlp-norm")
LENSES = ("logit-lens", "logit-lens-rank")


def metric_of(text: str) -> str:
    """The metric a summary is about, from the definition it states."""
    m = re.search(r"^Each cell is the (.+)$", text, re.M)
    for prefix, name in METRIC_OF.items():
        if m and m.group(1).startswith(prefix):
            return name
    return "unknown"


def edge_positions(metric: str, n: int, causal: bool) -> list[int]:
    """Attention received at the last positions averages over few queries; entropy at the first sees few keys."""
    if not causal or n < 8 or metric not in ("attention", "attention-entropy"):
        return []
    k = min(n, max(3, math.ceil(0.1 * n)))
    return list(range(n - k, n)) if metric == "attention" else list(range(k))


def sink_cells(raw: np.ndarray, edge: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """token -> (rows, cols) of the cells where it takes >= 0.3 of the attention and >= 5x the layer's median
    (over the tokens off the edge), or >= 1/sqrt(n) and >= 20x, for tokens with at least max(2, a tenth of the
    layers) such layers."""
    n_layers, n = raw.shape
    out = {}
    if n < 4:
        return out
    rows_of: dict[int, list[int]] = {}
    for r in range(n_layers):
        row = [raw[r, t] for t in range(n) if t not in edge and not math.isnan(raw[r, t])]
        median = float(np.median(row)) if row else math.nan
        for t in range(n):
            x = raw[r, t]
            if t not in edge and not math.isnan(x) and (x >= 0.3 and x >= 5 * median
                                                       or x >= n ** -0.5 and x >= 20 * median):
                rows_of.setdefault(t, []).append(r)
    for t, rows in rows_of.items():
        if len(rows) >= max(2, math.ceil(n_layers / 10)):
            out[t] = (np.array(rows), np.full(len(rows), t))
    return out


def sink_tails(raw: np.ndarray, edge: list[int], sinks: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """The cells of each sink token at half the rule (>= 0.15 and >= 2.5x, or >= 0.5/sqrt(n) and >= 10x): its
    tails, which the summary leaves out with it."""
    n_layers, n = raw.shape
    out = []
    for t in sinks:
        rows = []
        for r in range(n_layers):
            row = [raw[r, u] for u in range(n) if u not in edge and not math.isnan(raw[r, u])]
            median = float(np.median(row)) if row else math.nan
            x = raw[r, t]
            if not math.isnan(x) and (x >= 0.15 and x >= 2.5 * median or x >= 0.5 * n ** -0.5 and x >= 10 * median):
                rows.append(r)
        out.append((np.array(rows, dtype=int), np.full(len(rows), t)))
    return out


def runs_where(flags) -> list[tuple[int, int]]:
    """(first, last) of each run of true values."""
    runs, start = [], None
    for i, on in enumerate(list(flags) + [False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs


def early_phase(ratio: list[float], first: int) -> tuple[int, int] | None:
    """A massive activation's earlier phase: the last run of layers at 5x the median or more before its onset
    `first` that does not reach it (one that does is its rise)."""
    runs = [r for r in runs_where(x >= 5 for x in ratio[:first]) if r[1] < first - 1]
    return runs[-1] if runs else None


def massive_cells(raw: np.ndarray, single_layer: bool) -> dict[int, dict]:
    """token -> its longest-lasting facts: rows at >= 10x the layer's median in runs long enough, and the rows
    at >= 5x (its decay), which the summary leaves out."""
    n_layers, n = raw.shape
    out = {}
    if n < 4:
        return out
    median = quiet(np.nanmedian, raw, axis=1)
    need = 1 if single_layer else max(3, math.ceil(n_layers / 10))
    for t in range(n):
        ratio = [raw[r, t] / median[r] if median[r] > 0 and not math.isnan(raw[r, t]) else 0.0 for r in range(n_layers)]
        runs = [r for r in runs_where(x >= 10 for x in ratio) if r[1] - r[0] + 1 >= need]
        if runs:
            rows = np.array([r for r in range(n_layers) if ratio[r] >= 5])
            out[t] = {"runs": runs, "ratio": ratio, "aside": (rows, np.full(len(rows), t))}
    return out


class _Fixed:
    """A match with some numbered groups given (a sentence that leaves them to another one)."""

    def __init__(self, m, given):
        self.m, self.given = m, given

    def group(self, key):
        return self.given[key] if key in self.given else self.m.group(key)


class _Merged:
    """A match whose alternatives name their groups `x`, `x2`, `x3`: `group("x")` is whichever matched."""

    def __init__(self, m):
        self.m = m

    def group(self, key):
        d = self.m.groupdict()
        return d.get(key) or d.get(key + "2") or d.get(key + "3")


class Reader:
    """The facts a reader can recompute from the matrix, and the checks of each kind of sentence."""

    def __init__(self, text: str, values: np.ndarray, layers: list[int], labels: list[str], raw: np.ndarray,
                 special: list[bool] | None = None, kinds: list[str] | None = None, model: str | None = None,
                 metric: str | None = None, causal: bool = True, trace: dict | None = None,
                 options: dict | None = None):
        self.text = text
        self.extras, self.options = trace or {}, {"samples": 10, "noise": 3.0, "seed": 1, "restore": "hidden",
                                                 "window": 10, **(options or {})}
        self.figure = np.asarray(values, dtype=np.float64)
        self.layers = list(layers)
        self.labels = list(labels)
        self.raw = np.asarray(raw, dtype=np.float64)
        self.special = special or [False] * len(labels)
        self.kinds = kinds or ["special" if x else "text" for x in self.special]
        self.model = model
        self.metric = metric or metric_of(text)
        self.n_layers, self.n_tokens = self.figure.shape
        self.problems: list[str] = []
        self.checked = 0
        self.edge = edge_positions(self.metric, self.n_tokens, causal)
        self.sinks = sink_cells(self.raw, self.edge) if self.metric == "attention" else {}
        self.massive = massive_cells(self.raw, self.metric != "hidden-norm") if self.metric in MASSIVE else {}
        aside = np.zeros(self.figure.shape, dtype=bool)
        aside[:, self.edge] = True
        for cells in list(self.sinks.values()) + sink_tails(self.raw, self.edge, self.sinks) + [
                m["aside"] for m in self.massive.values()]:
            aside[cells] = True
        self.sites = self._sites() if self.metric in TRACES else {}
        for _rows, t in self.sites.values():
            aside[:, t] = True  # (a site's token: its column is described by the site)
        aside[:, aside.sum(axis=0) > self.n_layers / 2] = True  # mostly explained: the whole token is left out
        self.aside = aside & ~np.isnan(self.figure)
        self.v = self.figure.copy()
        self.v[self.aside] = np.nan
        self.rescaled = re.search(r"and rescales each (layer|token) without them", text)
        if self.rescaled:
            mode = 1 if self.rescaled.group(1) == "layer" else 0
            r = self.raw.copy()
            r[self.aside] = np.nan
            lo, hi = quiet(np.nanmin, r, axis=mode, keepdims=True), quiet(np.nanmax, r, axis=mode, keepdims=True)
            self.v = np.where(np.isnan(r), np.nan, np.where(hi > lo, (r - lo) / np.where(hi > lo, hi - lo, 1), 0.0))
        self.valid = ~np.isnan(self.v)
        self.set_aside = self._set_aside()
        self.kept = np.array([t not in self.set_aside for t in range(self.n_tokens)]) & self.valid.any(axis=0)
        if not self.kept.any():
            self.kept = self.valid.any(axis=0) | True
        rest = self.v[:, self.kept]
        self.lo, self.hi = float(np.nanmin(rest)), float(np.nanmax(rest))
        if self.metric in TRACES and self.reference() and "Values are shown as computed" in text:
            self.lo, self.hi = sorted(self.reference()[:2])  # an intervention: read on the way from one run to the other
        self.span = self.hi - self.lo
        self.u = (self.v - self.lo) / self.span if self.span > 0 else np.where(self.valid, 0.0, np.nan)
        self.median = quiet(np.nanmedian, rest, axis=1)  # per layer, analysed tokens
        self.contrast = (self.v - self.median[:, None]) / (self.span if self.span > 0 else 1.0)
        c = np.nan_to_num(self.contrast, nan=-np.inf)
        self.stands = (c >= STANDS_OUT - 1e-9) & (np.nan_to_num(self.u, nan=-np.inf) >= LOW - 1e-9)
        self.flat = np.zeros(self.n_layers, dtype=bool)
        if "Each row is scaled" in text and "has the same value" not in text:  # raw 1.5x the median too
            cells = np.where(self.valid, self.raw, np.nan)
            median = quiet(np.nanmedian, cells[:, self.kept], axis=1)
            differs = np.nan_to_num(cells, nan=-np.inf) >= 1.5 * np.nan_to_num(median, nan=np.inf)[:, None] - 1e-12
            self.stands &= differs
            self.flat = ~(differs & self.valid)[:, self.kept].any(axis=1) & self.valid.any(axis=1)
        self.layer_means = quiet(np.nanmean, rest, axis=1)

    # -- helpers --------------------------------------------------------------------------------------
    def fail(self, message: str) -> None:
        self.problems.append(message)

    def expect(self, ok: bool, message: str) -> None:
        self.checked += 1
        if not ok:
            self.fail(message)

    def row(self, layer: str | int) -> int:
        layer = int(layer)
        if layer not in self.layers:
            self.fail(f"layer {layer} is not a layer of the figure")
            return 0
        return self.layers.index(layer)

    def rows(self, first: str, last: str | None) -> tuple[int, int]:
        return self.row(first), self.row(last if last else first)

    def predicted(self, t: int) -> str | None:
        """Under a lens metric, the label a position's cells are about: the next token, or the stated target."""
        target = re.search(r"the cell is about the chosen target token", self.text)
        if target:
            return None  # the target's label is not in the matrix: checked by the tests that set it
        return self.labels[t + 1] if t + 1 < self.n_tokens else None

    def token(self, ref: str) -> list[int]:
        """The positions a token reference names (label, with positions when the label repeats); under a lens
        metric the reference ends with the token predicted there, which must be the next one."""
        m = re.match(CODE_PARTS + r"(?: \((?:position|positions) ([\d, and]+)\))?", ref)
        label = m.group(2)
        arrow = re.match(r" → " + CODE_PARTS + r"$", ref[m.end():])
        if self.metric.startswith("logit-lens"):
            self.expect(bool(arrow) or self.predicted_missing(ref), f"{ref}: a lens token names no prediction")
        positions = [int(x) for x in re.findall(r"\d+", m.group(3))] if m.group(3) else None
        if arrow:
            for p in positions or [i for i, x in enumerate(self.labels) if x == label][:1]:
                want = self.predicted(p)
                self.expect(want is None and "target" in self.text or want == arrow.group(2),
                            f"{ref}: position {p} predicts {want!r}, not {arrow.group(2)!r}")
        same = [i for i, x in enumerate(self.labels) if x == label]
        if not same:
            self.fail(f"the summary names a token {label!r} that is not in the text")
            return []
        if positions is None:
            self.expect(len(same) == 1, f"{label!r} repeats in the text but the summary gives no position")
            return same[:1]
        for p in positions:
            self.expect(p in same, f"position {p} is not the token {label!r}")
        return positions

    def predicted_missing(self, ref: str) -> bool:
        """A lens reference without an arrow is fine only for the last position (no next token)."""
        m = re.match(CODE_PARTS, ref)
        same = [i for i, x in enumerate(self.labels) if x == m.group(2)]
        return bool(same) and same[-1] == self.n_tokens - 1

    def tokens(self, refs: str) -> list[int]:
        return [i for m in re.finditer(TOK, refs) for i in self.token(m.group(0))]

    def spans_of(self, rows) -> list[tuple[int, int]]:
        """Rows as runs of consecutive layers, by their labels."""
        out, start = [], None
        rows = sorted(int(r) for r in rows)
        for i, r in enumerate(rows):
            if start is None:
                start = r
            if i + 1 == len(rows) or rows[i + 1] != r + 1:
                out.append((self.layers[start], self.layers[r]))
                start = None
        return out

    # -- interventions ---------------------------------------------------------------------------------

    def reference(self) -> tuple[float, float, int, int] | None:
        """The corrupted run's value, the clean run's, the first and last corrupted token."""
        t = self.extras
        if self.metric == "causal-trace" and "p_clean" in t:
            return t["p_noisy"], t["p_clean"], t["subject"][0], t["subject"][1] - 1
        if self.metric == "activation-patching" and t.get("differs"):
            return 0.0, 1.0, t["differs"][0], t["differs"][-1]
        return None

    def recovered(self) -> np.ndarray:
        low, high, _, _ = self.reference()
        return (self.raw - low) / (high - low)

    def sought(self) -> bool:
        low, high, _, _ = self.reference()
        return self.metric != "causal-trace" or high - low >= high / 2

    def _sites(self) -> dict[str, tuple[list[int], int]]:
        """ROME's sites by the documented rule: half of what the corruption took, recovered."""
        if self.reference() is None or not self.sought():
            return {}
        rec, out = np.nan_to_num(self.recovered()), {}
        _, high, _, last_subject = self.reference()
        last = self.n_tokens - 1
        if last_subject != last:
            rows = [r for r in range(self.n_layers) if rec[r, last_subject] >= 0.5]
            if rows:
                out["early"] = (rows, last_subject)
        trivial = self.raw[-1, -1] == np.float32(high)  # the last token's last state restored: the clean output
        rows = [r for r in range(self.n_layers - (1 if trivial else 0)) if rec[r, last] >= 0.5]
        if rows:  # the highest run of them (up to the top when it reaches the trivial last layer)
            start = rows[-1]
            while start - 1 in rows:
                start -= 1
            top = rows[-1] + 1 if trivial and rows[-1] == self.n_layers - 2 else rows[-1]
            out["late"] = (list(range(start, top + 1)), last)
        return out

    def _trace_claims(self):
        from mkdocs_layerheat.labels import display_labels  # (how an answer is named, not what it is)

        low, high, first, last_subject = self.reference()
        t, o, last = self.extras, self.options, self.n_tokens - 1
        what = "subject" if self.metric == "causal-trace" else "differing"

        def name(ref: str, expected: str) -> None:
            self.expect(re.match(CODE_PARTS, ref).group(2) == display_labels([expected])[0], f"{ref} names {expected!r}")

        def setup(m):
            self.expect(self.token(m.group("a"))[:1] == [first], "first subject token")
            self.expect(self.token(m.group("b") or m.group("a"))[:1] == [last_subject], "last subject token")
            self.expect(int(m.group("n")) == o["samples"] and close(m.group("noise"), o["noise"])
                        and int(m.group("seed")) == o["seed"], "noise options")
            restored = m.group("what")
            if o["restore"] == "hidden":
                self.expect(restored == "the output of block l", "restored")
            else:
                w = o["window"]
                self.expect(restored == f"the {'MLP' if o['restore'] == 'mlp' else 'attention'} outputs of {w} blocks "
                            f"around l (l − {w // 2} to l + {w - w // 2 - 1}, within the model)", "restored window")
        yield (rf"The subject, (?P<a>{TOK})(?: to (?P<b>{TOK}))? \(marked \*\), is noised in (?P<n>\d+) copies \(noise "
            rf"(?P<noise>{NUM}) times the standard deviation of the input embeddings, seed (?P<seed>\d+)\); restored: "
            r"(?P<what>the output of block l|the (?:MLP|attention) outputs of \d+ blocks around l \(l − \d+ to l \+ \d+, "
            r"within the model\))\.", setup)

        def answer(m):
            name(m.group(1), t["answer"])
            self.expect(close(m.group(2), high) and close(m.group(3), low), "clean and noised probabilities")
        yield (rf"The answer is ({CODE}), with a probability of ({NUM}) on the clean text and ({NUM}) with the subject noised\.",
            answer)

        def differs(m):
            stated = re.findall(rf"({TOK}) → ({CODE})", m.group("items"))
            self.expect([self.token(a)[:1] for a, _ in stated] == [[i] for i in t["differs"][:4]], "differing tokens")
            for (_, b), i in zip(stated, t["differs"]):
                name(b, t["corrupt_tokens"][i])
            self.expect(int(m.group("more") or 0) == max(0, len(t["differs"]) - 4), "more differing tokens")
        yield (rf"The corrupted text differs at (?P<items>(?:{TOK} → {CODE}(?:, )?)+)(?: and (?P<more>\d+) more tokens)?\.",
            differs)

        def answers(m):
            name(m.group(1), t["answer"]), name(m.group(2), t["corrupt_answer"])
            name(m.group(3), t["answer"]), name(m.group(4), t["corrupt_answer"])
            self.expect(close(m.group(5), t["ld_clean"]) and close(m.group(6), t["ld_corrupt"]), "logit differences")
        yield (rf"The answer is ({CODE}) on the clean text and ({CODE}) on the corrupted one; the logit difference \(({CODE}) "
            rf"minus ({CODE})\) is ({NUM}) on the clean run and ({NUM}) on the corrupted one\.", answers)

        def colours(m):
            self.expect(close(m.group(1), low) and close(m.group(2), high), "colour range")
            above = self.raw > max(low, high) + 0.02 * abs(high - low)
            self.expect(int(m.group(3) or 0) == int(above.sum()), "cells above the range")
        yield (rf"; the colours run from the corrupted run's value, ({NUM}), to the clean run's, ({NUM})"
            r"(?: \((\d+) cells? lies? above it by more than 2% of the way, marked ▲\))?\.", colours)
        if re.search(r"the colours run from the corrupted run's value", self.text) is None:
            self.fail("the colour range of the intervention is not said")

        rec = np.nan_to_num(self.recovered())

        spans = self.spans_of

        def stated(text):
            return [(int(a), int(b or a)) for a, b in re.findall(r"(\d+)(?:–(\d+))?", text)]

        def early(m):
            self.expect(self.token(m.group(1))[:1] == [last_subject] and "early" in self.sites, "early site")
            rows, _ = self.sites.get("early", ([], 0))
            self.expect(stated(m.group("spans")) == spans(rows), "early site layers")
            peak = int(np.argmax(np.nan_to_num(self.raw[:, last_subject], nan=-np.inf)))
            self.expect(self.row(m.group("at")) == peak and close(m.group("v"), self.raw[peak, last_subject]), "early peak")
            self.expect(abs(int(m.group("share")) - 100 * rec[peak, last_subject]) < 1, "early share")
        yield (rf"\*Early site\*: restoring the last {what} token, ({TOK}), recovers at least half of what the corruption took "
            rf"at (?P<spans>{SPANS}), most at layer (?P<at>\d+) \((?P<v>{NUM}), (?P<share>\d+)% of the way\)\.", early)

        def no_early(m):
            self.expect(self.token(m.group(1))[:1] == [last_subject] and "early" not in self.sites and self.sought(), "no early site")
            peak = int(np.argmax(np.nan_to_num(self.raw[:, last_subject], nan=-np.inf)))
            self.expect(close(m.group(2), self.raw[peak, last_subject]) and self.row(m.group(3)) == peak, "its best")
        yield (rf"Restoring the last {what} token, ({TOK}), never recovers half of what the corruption took \(at most ({NUM}), "
            r"at layer (\d+)\): there is no early site\.", no_early)

        def strongest(m):
            block = np.nan_to_num(self.raw[:, first:last_subject + 1], nan=-np.inf)
            r, c = np.unravel_index(int(np.argmax(block)), block.shape)
            self.expect(self.token(m.group(1))[:1] == [first + c] and first + c != last_subject, "strongest subject token")
            self.expect(close(m.group(2), block[r, c]) and self.row(m.group(3)) == r, "its value")
        yield (rf"Among the {what} tokens, restoring ({TOK}) recovers most: ({NUM}) at layer (\d+)\.", strongest)

        trivial = self.raw[-1, -1] == np.float32(high)

        def late(m):
            rows, _ = self.sites.get("late", ([], 0))
            self.expect(self.token(m.group(1))[:1] == [last] and bool(rows), "late site")
            if rows:
                a = self.row(m.group("a") or m.group("a2"))
                b = self.n_layers - 1 if m.group("a") else self.row(m.group("b") or m.group("a2"))
                self.expect((a, b) == (rows[0], rows[-1]), "late site layers")
                self.expect(self.row(m.group("at")) == rows[0] and close(m.group("v"), self.raw[rows[0], last]), "late start")
            self.expect(close(m.group("w"), self.raw[-1, last]) and self.row(m.group("top")) == self.n_layers - 1, "late end")
        yield (rf"\*Late site\*: restoring the last token, ({TOK}), recovers at least half (?:from layer (?P<a>\d+) on|at layers? "
            rf"(?P<a2>\d+)(?:–(?P<b>\d+))?) \((?P<v>{NUM}) at layer (?P<at>\d+), (?P<w>{NUM}) at layer (?P<top>\d+)\)\.", late)

        def no_late(m):
            self.expect(self.token(m.group(1))[:1] == [last] and "late" not in self.sites and self.sought(), "no late site")
            self.expect(bool(m.group(2)) == bool(trivial), "why there is no late site")
            below = np.nan_to_num(self.raw[:-1 if trivial else None, last], nan=-np.inf)
            r = int(np.argmax(below))
            self.expect(close(m.group(3), below[r]) and self.row(m.group(4)) == r, "the last token's best")
        yield (rf"Restoring the last token, ({TOK}), (?:(recovers half only at the last layer, whose output it then is) \(below it, "
            rf"at most|never recovers half of what the corruption took \(at most) ({NUM}), at layer (\d+)\): there is no late "
            r"site\.", no_late)

        def weak(m):
            self.expect(not self.sought() and close(m.group(1), low) and close(m.group(2), high), "little taken away")
        yield (rf"The corruption takes little away: the answer keeps ({NUM}) of its ({NUM})", weak)
        yield (r"Sites are sought only where the noise at least halves the answer's probability; here it does not",
            lambda m: self.expect(not self.sought(), "little taken away"))

        yield (rf"The subject includes the first token, ({TOK}):", lambda m: self.expect(first == 0, "first token"))
        if self.metric == "causal-trace" and first == 0:
            self.expect("The subject includes the first token" in self.text, "the first-token warning is missing")
        has = {k for k in ("early", "late") if k in self.sites}
        yield (rf"held at ({TOK}) in the lower and middle layers", lambda m: self.expect(
            has == {"early", "late"} and self.token(m.group(1))[:1] == [last_subject], "both sites"))
        yield (r"Only the upper layers of the last token carry what the corruption took", lambda m: self.expect(
            has == {"late"}, "only the late site"))
        yield (rf"The answer depends on ({TOK}), but no restore at the last token recovers it", lambda m: self.expect(
            has == {"early"} and self.token(m.group(1))[:1] == [last_subject], "only the early site"))
        yield (r"that MLP outputs recover it at the early site", lambda m: self.expect(
            "early" in has and o["restore"] == "mlp", "MLP early site"))
        yield (r"that attention outputs recover it at the late site", lambda m: self.expect(
            "late" in has and o["restore"] == "attn", "attention late site"))
        yield (rf"What follows leaves out ((?:{TOK}(?:, | and )?)+), whose columns? the sites? describes?", lambda m: self.expect(
            sorted(self.tokens(m.group(1))) == sorted(t for _, t in self.sites.values()), "site tokens"))

        def lead(m):
            kind = m.group("kind")
            has = {k for k in ("early", "late") if k in self.sites}
            self.expect(has == {"Both": {"early", "late"}, "late": {"late"}, "early": {"early"}}[kind], f"lead: {kind}")
            if m.group("es"):
                self.expect(stated(m.group("es")) == spans(self.sites["early"][0]), "lead early layers")
            if m.group("ls"):
                rows = self.sites["late"][0]
                late_text = m.group("ls")
                if late_text.startswith("from"):
                    self.expect(self.row(re.search(r"\d+", late_text).group(0)) == rows[0] and rows[-1] == self.n_layers - 1, "lead late layers")
                else:
                    self.expect(stated(late_text) == spans(rows), "lead late layers")
        late_at = r"(?:from layer \d+ on|at layers? \d+(?:–\d+)?)"
        yield (rf"(?:(?P<kind>Both) of ROME's sites show: the last {what} token at (?P<es>{SPANS}) and the last token "
            rf"(?P<ls>{late_at})\.|Only the (?P<kind2>late) site shows: restoring the last token recovers the answer "
            rf"(?P<ls2>{late_at}), restoring the last {what} token never does\.|Only the (?P<kind3>early) site shows: restoring "
            rf"the last {what} token recovers the answer at (?P<es3>{SPANS})\.)",
            lambda m: lead(_Merged(m)))
        yield (rf"No single restore recovers half of what the corruption took at the last token or the last {what} token",
            lambda m: self.expect(not self.sites and self.sought(), "no site"))

    def _set_aside(self) -> list[int]:
        m = re.search(rf"Below, ((?:{TOK}(?:, | and )?)+) (?:is|are) left out", self.text)
        if not m:
            return []
        found = [i for r in re.finditer(TOK, m.group(1)) for i in self._resolve_quiet(r.group(0))]
        return found

    def _resolve_quiet(self, ref: str) -> list[int]:
        m = re.match(CODE_PARTS + r"(?: \((?:position|positions) ([\d, and]+)\))?", ref)
        if m.group(3):
            return [int(x) for x in re.findall(r"\d+", m.group(3))]
        return [i for i, x in enumerate(self.labels) if x == m.group(2)][:1]

    def dominant_rule(self) -> list[int]:
        """Tokens whose mean over layers (whole-figure 0-1 scale) is > 3x and > 0.3 above the median token's."""
        lo, hi = np.nanmin(self.v), np.nanmax(self.v)
        if not hi > lo or self.n_tokens <= 3:
            return []
        means = np.nan_to_num(quiet(np.nanmean, (self.v - lo) / (hi - lo), axis=0))
        typical = np.median(means)
        return [t for t in np.argsort(-means, kind="stable")[:3] if means[t] > max(3 * typical, typical + 0.3)
                and self.top_layers(t) > self.valid.any(axis=1).sum() / 2]

    def top_layers(self, t: int) -> int:
        """At how many layers (with values) token `t` has the highest value of all tokens."""
        rows = self.valid.any(axis=1)
        return int(np.sum(np.argmax(np.where(self.valid, self.v, -np.inf), axis=1)[rows] == t))

    def to_typical(self) -> tuple[np.ndarray, float, np.ndarray]:
        """RMS distance of each analysed token's profile to the typical one (the layers' medians)."""
        idx = np.flatnonzero(self.kept & self.valid.any(axis=0))
        med = np.nan_to_num(quiet(np.nanmedian, self.u[:, self.kept], axis=1))
        prof = np.nan_to_num(np.where(self.valid[:, idx], self.u[:, idx], med[:, None]))
        d = np.sqrt(((prof - med[:, None]) ** 2).mean(axis=0))
        return idx, float(np.median(d)) if d.size else 0.0, d

    def anomalies(self) -> set[int]:
        """The positions the Anomalies section names."""
        if "**Anomalies.**" not in self.text:
            return set()
        section = self.text.split("**Anomalies.**")[-1].split("**Interpretation.**")[0]
        return {i for m in re.finditer(TOK, section) for i in self._resolve_quiet(m.group(0))}

    def peak_row(self, t: int) -> int:
        return int(np.argmax(np.where(self.valid[:, t], self.contrast[:, t], -np.inf)))

    def longest_run(self, t: int) -> tuple[int, int]:
        best, start, out = 0, None, (0, -1)
        for i, on in enumerate(list(self.stands[:, t]) + [False]):
            if on and start is None:
                start = i
            elif not on and start is not None:
                if i - start > best:
                    best, out = i - start, (start, i - 1)
                start = None
        return out

    @property
    def min_run(self) -> int:
        return max(3, math.ceil(self.n_layers / 10))

    # -- the sentences --------------------------------------------------------------------------------
    def check_peak(self, ref: str, layer: str, value: str, median: str, where: tuple[int, int] | None = None) -> int:
        (t,) = self.token(ref)[:1] or [None]
        if t is None:
            return -1
        r = self.row(layer)
        self.expect(close(value, self.v[r, t]), f"{ref} at layer {layer}: value {value} != {self.v[r, t]}")
        self.expect(close(median, self.median[r]), f"{ref} at layer {layer}: median {median} != {self.median[r]}")
        self.expect(r == self.peak_row(t) or self.contrast[r, t] >= np.nanmax(self.contrast[:, t]) - 1e-9,
                    f"{ref}: layer {layer} is not where it stands out most (that is layer {self.layers[self.peak_row(t)]})")
        self.expect(bool(self.stands[r, t]), f"{ref} does not stand out at layer {layer}")
        if where:
            self.expect(where[0] <= r <= where[1], f"{ref}: layer {layer} is outside its band")
        return t

    def check_peak_at(self, ref: str, layer: str) -> int:
        (t,) = self.token(ref)[:1] or [None]
        if t is None:
            return -1
        r = self.row(layer)
        self.expect(self.contrast[r, t] >= np.nanmax(self.contrast[:, t]) - 1e-9 and bool(self.stands[r, t]),
                    f"{ref} does not stand out most at layer {layer}")
        return t

    def check_run(self, ref: str, first: str, last: str, mean: str, median: str, length: str | None = None) -> None:
        ts = self.token(ref)
        if not ts:
            return
        t = ts[0]
        a, b = self.row(first), self.row(last)
        self.expect(bool(self.stands[a:b + 1, t].all()), f"{ref} does not stand out at every layer {first}-{last}")
        self.expect((a == 0 or not self.stands[a - 1, t]) and (b == self.n_layers - 1 or not self.stands[b + 1, t]),
                    f"{ref}: the run {first}-{last} is not maximal")
        self.expect(b - a + 1 >= self.min_run, f"{ref}: run {first}-{last} is shorter than {self.min_run} layers")
        la, lb = self.longest_run(t)
        self.expect(b - a == lb - la, f"{ref}: {first}-{last} is not its longest run")
        self.expect(close(mean, np.mean(self.v[a:b + 1, t])), f"{ref}: run mean {mean}")
        self.expect(close(median, np.mean(self.median[a:b + 1])), f"{ref}: run median {median}")
        if length is not None:
            self.expect(int(length) == b - a + 1, f"{ref}: run length {length}")

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Row runs of a stated list of layer runs ("3–21, 24–26 and 29–30")."""
        return [self.rows(a, b or None) for a, b in re.findall(r"(\d+)(?:–(\d+))?", text)]

    def band_cells(self, spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        rows = np.concatenate([np.arange(a, b + 1) for a, b in spans])
        block_v, block_u = self.v[rows][:, self.kept], self.u[rows][:, self.kept]
        ok = ~np.isnan(block_v)
        return block_v[ok], block_u[ok]

    def band_rows(self, spans: list[tuple[int, int]]) -> np.ndarray:
        return np.concatenate([np.arange(a, b + 1) for a, b in spans])

    def check(self) -> list[str]:
        """Every claim of the text checked: each section of the summary is a sequence of (pattern, check[, flags]),
        each match of a pattern checked against the values; what no pattern consumed must state nothing."""
        consumed = self.text
        for section in (self._claims_plotted, self._claims_set_aside, self._claims_bands, self._claims_highlights,
                        self._claims_observations, self._claims_phenomena, self._claims_settling, self._claims_entropy,
                        self._claims_trace, self._claims_interpretation):
            for pattern, check, *flags in section():
                for m in re.finditer(pattern, self.text, *flags):
                    check(m)
                    consumed = consumed.replace(m.group(0), " ", 1)

        # what remains must state nothing: no number, no token
        rest = re.sub(r"0–1|^\d+\. ", " ", consumed, flags=re.M)
        for m in re.finditer(r"`[^`\n]*`|\d", rest):
            context = rest[max(0, m.start() - 60):m.end() + 60].replace("\n", " ")
            self.fail(f"unchecked claim {m.group(0)!r} in: ...{context}...")
        return self.problems

    def _claims_plotted(self):
        """What is plotted."""
        yield (r"The (\d+) tokens of the text", lambda m: self.expect(int(m.group(1)) == self.n_tokens, "token count"))
        yield (r"against " + LAYERS + r"(?= of)", lambda m: self.expect(
            int(m.group(1)) == self.layers[0] and int(m.group(2) or m.group(1)) == self.layers[-1], "layer range"))
        yield (r"layer (\d+) at the bottom", lambda m: self.expect(int(m.group(1)) == self.layers[0], "bottom layer"))
        yield (rf"raw values from ({NUM}) to ({NUM})", lambda m: self.expect(
            close(m.group(1), np.nanmin(self.raw)) and close(m.group(2), np.nanmax(self.raw)), "raw range"))
        yield (rf"Values are shown as computed, from ({NUM}) to ({NUM})", lambda m: self.expect(
            close(m.group(1), np.nanmin(self.figure)) and close(m.group(2), np.nanmax(self.figure)), "value range"))
        yield (r"(\d+) cells? ha(?:s|ve) no value", lambda m: self.expect(
            int(m.group(1)) == int((~self.valid).sum()), "NaN count"))
        yield (r"Of these, (?:(\d+) (?:is a|are) chat-template tokens?)?(?: and )?(?:(\d+) (?:was|were) generated)?",
            lambda m: self.expect(int(m.group(1) or 0) == self.kinds.count("template")
                                  and int(m.group(2) or 0) == self.kinds.count("generated"), "token kinds"))
        yield (r"^Each cell is the .*$", lambda m: None, re.M)  # the metric's fixed definition
        def model(m):
            name = re.match(CODE_PARTS, m.group(1)).group(2)
            ref = (self.model or "").split("@")[0].rstrip("/")
            self.expect(self.model is None or ref.endswith(name) or ref.endswith(name + ".gguf"), f"model {name!r}")
        yield (rf" of ({CODE})(?= \(y axis|\.)", model)
        yield (r"Tokens are named as current → predicted: [^\n]*", lambda m: None)
        years = {"Xiao": 2023, "Gu": 2024, "Sun": 2024, "Belrose": 2023, "Meng": 2022, "Geva": 2023, "nostalgebraist": 2020}
        yield (r"\b(Xiao|Gu|Sun|Belrose|Meng|Geva|nostalgebraist)(?: et al\.)? (\d{4})", lambda m: self.expect(
            years[m.group(1)] == int(m.group(2)), f"{m.group(1)} {m.group(2)} is not the source"))
        yield (r"`(?:hidden-norm|attention)` (?:figure of the same text|panel shows whether it does)", lambda m: None)
        yield (r"The single token of the text", lambda m: self.expect(self.n_tokens == 1, "single token"))

        def clipped(m):  # `color_range: robust`: the colours end at the 98th percentile of the cells read
            read = self.figure[self.valid & self.kept[None, :]]
            symmetric = m.group("sym") is not None
            high = np.percentile(np.abs(read) if symmetric else read, 98)
            low = -high if symmetric else np.nanmin(self.figure)
            if symmetric and not high:
                high = np.abs(read).max() or 1.0
                low = -high
            elif not high > low:
                high = read.max()
            self.expect((symmetric or close(m.group("lo"), low)) and close(m.group("hi"), high), "robust colour range")
            above = np.nan_to_num(self.figure, nan=-np.inf) > high
            below = np.nan_to_num(self.figure, nan=np.inf) < low
            self.expect(int(m.group("above") or 0) == above.sum(), f"{int(above.sum())} cells above the colours")
            self.expect(int(m.group("below") or 0) == below.sum(), f"{int(below.sum())} cells below the colours")
            per_token = above.sum(axis=0)
            named = re.findall(rf"({TOK}): (\d+)", m.group("tokens") or "")
            for ref, n in named:
                (t,) = self.token(ref)[:1] or [0]
                self.expect(per_token[t] == int(n), f"{ref} has {per_token[t]} cells above the colours, not {n}")
            counts = sorted(per_token[per_token > 0], reverse=True)
            self.expect(sorted((int(n) for _, n in named), reverse=True) == [int(x) for x in counts[:len(named)]]
                        and len(named) == min(3, len(counts)), "the tokens with the most clipped cells")
            self.expect(int(m.group("others") or 0) == above.sum() - sum(int(n) for _, n in named), "other clipped cells")
        yield (rf"The colours (?:run from the lowest value, (?P<lo>{NUM}), to|span plus and minus) the 98th percentile(?P<sym> of the magnitudes)? of the cells described below, (?P<hi>{NUM}) \(`color_range: robust`\):(?: no cell lies outside it)?(?: (?P<above>\d+) cells? lies? above it, drawn in the darkest colour and marked ▲(?: \((?P<tokens>(?:{TOK}: \d+(?:, )?)+?)(?:, other tokens: (?P<others>\d+))?\))?)?;?(?: (?P<below>\d+) cells? lies? below it, drawn in the lightest colour and marked ▼)?\.", clipped)

    def _claims_set_aside(self):
        """Set aside (dominant) tokens."""
        def aside(m):
            self.expect(sorted(self.set_aside) == sorted(self.dominant_rule()), "set-aside tokens are not the dominant ones")
            self.expect(close(m.group("lo"), self.lo) and close(m.group("hi"), self.hi), "range of the other tokens")
        yield (rf"Below, (?:{TOK}(?:, | and )?)+ (?:is|are) left out(?: \(see anomalies\))? and the other tokens are compared on their own range, (?P<lo>{NUM}) to (?P<hi>{NUM})", aside)

        def pale(m):
            self.expect(close(m.group("lo"), self.lo) and close(m.group("hi"), self.hi), "range of the other cells")
            self.expect(self.aside.any() and self.span < 0.25 * (np.nanmax(self.figure) - np.nanmin(self.figure)), "pale")
        yield (rf"The other cells lie between (?P<lo>{NUM}) and (?P<hi>{NUM}), a small part of the figure's scale", pale)

        def pale_shared(m):  # one side of a compare block, on the 0-1 scale shared with the other
            self.expect(close(m.group("lo"), self.lo) and close(m.group("hi"), self.hi), "range of the cells")
            self.expect(self.span < 0.25, "pale on the shared scale")
        yield (rf"The cells lie between (?P<lo>{NUM}) and (?P<hi>{NUM}), a small part of the scale shared with the other panel", pale_shared)

    def _claims_bands(self):
        """Bands."""
        text = self.text
        bands: list[tuple[int, int, str]] = []
        self.bands = bands  # (first row, last row, kind), for the observations

        def flat(m):
            stated = set(int(r) for a, b in self.spans(m.group(1)) for r in range(a, b + 1))
            self.expect(stated == set(np.flatnonzero(self.flat).tolist()), "flat layers")
        yield (SPANS + r" no token reaches 1\.5x the layer's median, the least a token needs to stand out", flat)
        if self.flat.any():
            self.expect("no token reaches 1.5x the layer's median" in text, "flat layers not said")

        def uniform(m):
            spans = self.spans(m.group(1))
            rows = self.band_rows(spans)
            cells_v, cells_u = self.band_cells(spans)
            name = m.group(1)
            bands.extend((a, b, "uniform-" + m.group(2)) for a, b in spans)
            p10, p90 = np.percentile(cells_v, [10, 90])
            self.expect(close(m.group(3) or m.group(5), p10) and close(m.group(5), p90), f"band {name}: percentiles")
            self.expect(close(m.group(6), cells_v.mean()), f"band {name}: mean")
            med = np.median(cells_u)
            level = {"high": med >= HIGH - 1e-9, "low": med <= LOW + 1e-9, "medium": LOW - 1e-9 <= med <= HIGH + 1e-9}
            self.expect(level[m.group(2)], f"band {name} called uniformly {m.group(2)} but its median is {med:.2f}")
            outliers = int(self.stands[rows][:, self.kept].sum())
            named = [(ref, layer) for ref, at in re.findall(rf"({TOK}) at layers? ((?:\d+(?:, | and ))*\d+)", m.group("cells") or "")
                     for layer in re.findall(r"\d+", at)]
            for ref, layer in named:
                for t in self.token(ref):
                    self.expect(bool(self.stands[self.row(layer), t]) and self.row(layer) in rows, f"{ref} does not stand out at layer {layer}")
            stated = int(m.group(7)) if m.group(7) else len(named)
            self.expect(outliers == stated or self.metric == "logit-lens-rank" and not stated,
                        f"band {name}: {outliers} cells stand out, the text says {stated}")
        yield (SPANS + rf" (?:is|are) uniformly (high|low|medium): 80% of (?:its|their) cells lie (?:between ({NUM}) and|at)() ({NUM}) \(mean ({NUM})\)(?:, apart from (?:(\d+) cells? where a token stands out|(?P<cells>(?:{TOK} at layers? (?:\d+(?:, | and ))*\d+(?:, | and )?)+), where (?:a token stands|tokens stand) out))?", uniform)

        def sparse(m):
            spans = self.spans(m.group(1))
            name = m.group(1)
            bands.extend((a, b, "sparse") for a, b in spans)
            cells_v, cells_u = self.band_cells(spans)
            self.expect(close(m.group(3), self.lo + self.span / 3), "low threshold")
            share = np.mean(cells_u <= LOW + 1e-12)
            self.expect(abs(int(m.group(2)) - 100 * share) < 1, f"band {name}: share low {m.group(2)}% != {100 * share:.1f}%")
            for a, b in spans:  # each band of the group is itself sparse
                v, u = self.band_cells([(a, b)])
                self.expect(np.mean(u <= LOW + 1e-12) >= 0.5, f"band {a}-{b} called sparse but only a minority of its cells are low")
                spikes = self.stands[a:b + 1][:, self.kept].mean()
                self.expect(0 < spikes <= 0.25, f"band {a}-{b} called sparse with {spikes:.0%} of cells standing out")
        yield (r"In " + SPANS + rf" most (?:tokens get little attention|cells are low) \((\d+)% of the cells below ({NUM})\) and a few stand out\.", sparse)

        def differentiating(m):
            spans = self.spans(m.group(1))
            rows = self.band_rows(spans)
            name = m.group(1)
            bands.extend((a, b, "differentiating") for a, b in spans)
            cells_v, cells_u = self.band_cells(spans)
            high, low = np.mean(cells_u >= HIGH - 1e-12), np.mean(cells_u <= LOW + 1e-12)
            self.expect(abs(int(m.group(2)) - 100 * high) < 1, f"band {name}: share high")
            self.expect(abs(int(m.group(4) or 0) - 100 * low) < 1 if m.group(4) else 100 * low < 0.5, f"band {name}: share low")
            self.expect(close(m.group(3), self.lo + 2 * self.span / 3) and (not m.group(5) or close(m.group(5), self.lo + self.span / 3)), "thresholds")
            for a, b in spans:
                v, u = self.band_cells([(a, b)])
                spread = np.percentile(u, 90) - np.percentile(u, 10)
                self.expect(spread > 1 / 3 - 1e-9, f"band {a}-{b} called differentiating without spread")
            if m.group("high"):
                means = quiet(np.nanmean, self.u[rows], axis=0)
                for t in self.tokens(m.group("high")):
                    self.expect(means[t] >= HIGH - 1e-9, f"{self.labels[t]} said to stay high in {name}")
                if m.group("more"):
                    n_high = int(np.sum(means[self.kept] >= HIGH - 1e-9))
                    self.expect(int(m.group("more")) == n_high - 4, "count of other high tokens")
        yield (r"In " + SPANS + rf" the tokens spread out: (\d+)% of the cells lie above ({NUM})(?: and (\d+)% below ({NUM}))?\.(?: (?P<high>(?:{TOK}(?:, | and )?)+?)(?:,? and (?P<more>\d+) other tokens)? stays? high(?: on average)?\.)?", differentiating)

        if bands:  # the bands and the flat layers cover every layer once
            bands.sort()
            covered = sorted([r for a, b, _ in bands for r in range(a, b + 1)] + np.flatnonzero(self.flat).tolist())
            self.expect(covered == list(range(self.n_layers)), "bands and flat layers do not cover every layer once")

        def trend(m):
            a, b = self.row(m.group(3)), self.row(m.group(5))
            self.expect(close(m.group(2), self.layer_means[a]) and close(m.group(4), self.layer_means[b]), "trend values")
            means = self.layer_means[~np.isnan(self.layer_means)]
            ranks = np.argsort(np.argsort(means, kind="stable"), kind="stable")
            rho = np.corrcoef(np.arange(len(means)), ranks)[0, 1]
            self.expect(rho >= 0.8 if m.group(1) == "rises" else rho <= -0.8, f"trend {m.group(1)} but rho = {rho:.2f}")
        yield (rf"(?:Overall the|The) layer mean (rises|falls) with depth, from ({NUM}) at layer (\d+) to ({NUM}) at layer (\d+)", trend)

        def trend_lead(m):
            means = self.layer_means[~np.isnan(self.layer_means)]
            ranks = np.argsort(np.argsort(means, kind="stable"), kind="stable")
            rho = np.corrcoef(np.arange(len(means)), ranks)[0, 1]
            self.expect(rho >= 0.8 if m.group(1) == "rises" else rho <= -0.8, f"trend {m.group(1)} but rho = {rho:.2f}")
        yield (r"The layer mean (rises|falls) with depth\.", trend_lead)

    def _claims_highlights(self):
        """Token highlights: the strongest single cells, outside the listed runs (and, under a lens, the predictions the settling sentences describe)."""
        listed_runs: list[int] = []
        self.listed_runs = listed_runs  # for the highlights named after the settling sentences

        def most(m):
            t = self.check_peak_at(m.group(2), m.group(3))
            skip = self.anomalies() if m.group(1).startswith("Apart") else set()
            best = max(self.contrast[self.peak_row(x), x] for x in range(self.n_tokens)
                       if self.kept[x] and x not in skip and self.valid[:, x].any() and self.stands[self.peak_row(x), x])
            self.expect(self.contrast[self.row(m.group(3)), t] >= best - 1e-9, f"{m.group(2)} is not the token that stands out most")
        yield (rf"(Apart from the anomalies|Of all tokens), ({TOK}) stands out most, at layer (\d+)()()\.", most)

        def run_lead(m):
            (t,) = self.token(m.group(1))[:1] or [0]
            a, b = self.longest_run(t)
            best = max((lambda r: r[1] - r[0] + 1)(self.longest_run(x)) for x in range(self.n_tokens)
                       if self.kept[x] and x not in self.anomalies())
            self.expect(int(m.group(2)) == b - a + 1 == best, f"{m.group(1)}: its run is not the longest ({m.group(2)})")
        yield (rf"({TOK}) stays above the others for (\d+) layers\.", run_lead)
        def runs(m):
            odd = re.findall(rf"; ((?:{TOK}(?:, | and )?)+?) (?:has|share|each have) a depth profile unlike the other tokens'", m.group("odd") or "")
            for r in re.finditer(rf"({TOK}) from layer (\d+) to (\d+) \((?:mean )?({NUM}) against (?:a median of )?({NUM})"
                                 rf"(; a depth profile unlike the other tokens')?\)", m.group("items")):
                self.check_run(r.group(1), r.group(2), r.group(3), r.group(4), r.group(5))
                listed_runs.append((self.token(r.group(1)) or [0])[0])
                if r.group(6):
                    odd.append(r.group(1))
            idx, typical, nearest = self.to_typical()
            for t in [t for g in odd for t in self.tokens(g)]:  # listed, and far from the typical profile
                d = nearest[list(idx).index(t)] if t in idx else 0
                self.expect(t in listed_runs and d > max(0.15, 3 * typical), f"{self.labels[t]} said unlike the others")
            n = sum(1 for t in range(self.n_tokens) if self.kept[t]
                    and (lambda r: r[1] - r[0] + 1)(self.longest_run(t)) >= self.min_run)
            more = int(m.group("more")) if m.group("more") else 0
            self.expect(more == n - len(listed_runs), f"{n - len(listed_runs)} more runs, not {more}")
            if m.group("more"):
                self.expect(int(m.group("min")) == self.min_run, "minimum run length")
            longest = sorted(((lambda r: r[1] - r[0] + 1)(self.longest_run(t)) for t in range(self.n_tokens) if self.kept[t]), reverse=True)
            stated = [(lambda r: r[1] - r[0] + 1)(self.longest_run(t)) for t in listed_runs]
            self.expect(sorted(stated, reverse=True) == longest[:len(stated)], "the listed runs are not the longest")
        yield (rf"Tokens that stay clearly above the others over a run of layers: (?P<items>.*?)(?P<odd>(?:; (?:{TOK}(?:, | and )?)+? (?:has|share|each have) a depth profile unlike the other tokens')*)(?:; (?P<more>\d+) more tokens? ha(?:s|ve) such a run of at least (?P<min>\d+) layers)?\.$", runs, re.M)

    def _claims_observations(self):
        """Observations."""
        bands = self.bands
        band_kinds = {(self.layers[a], self.layers[b]): k for a, b, k in bands}
        def structure(m):
            words = {"uniformly high": "uniform-high", "uniformly low": "uniform-low", "uniformly medium": "uniform-medium",
                     "mostly low with a few peaks": "sparse", "spread out": "differentiating"}
            for kind, first, last in re.findall(r"(uniformly high|uniformly low|uniformly medium|mostly low with a few peaks|spread out) at layers? (\d+)(?:–(\d+))?", m.group(0)):
                key = (int(first), int(last or first))
                self.expect(band_kinds.get(key) == words[kind], f"observation names band {key} {kind}")
            if m.group("more"):
                self.expect(int(m.group("more")) == len(bands) - 5, "number of bands")
            if m.group("onset"):
                r = self.row(m.group("onset"))
                first_non_uniform = next(a for a, b, k in bands if not k.startswith("uniform"))
                self.expect(r == first_non_uniform, "tokens begin to differ")
                self.expect(all(k.startswith("uniform") for a, b, k in bands if a < r), "onset after uniform bands only")
        yield (r"From the bottom up the layers are [^\n]*?(?:, and (?P<more>\d+) more bands)?(?:; tokens begin to differ at layer (?P<onset>\d+))?\.(?= |$)", structure, re.M)

        def dominant(m):
            ts = self.token(m.group(1))
            t = ts[0] if ts else 0
            self.expect(t in self.dominant_rule(), f"{m.group(1)} is said to dominate but does not")
            top = self.top_layers(t)
            self.expect(int(m.group("k")) == top and int(m.group("n")) == self.n_layers, "layers where it is highest")
            self.expect(close(m.group("mean"), np.nanmean(self.v[:, t])), "dominant mean")
            others = quiet(np.nanmean, self.v[:, self.kept], axis=0)
            self.expect(close(m.group("median"), np.nanmedian(others)), "median of the other tokens")
            if "special token" in m.group(0) or "chat-template token" in m.group(0):
                self.expect(self.special[t], f"{m.group(1)} called special")
        yield (rf"({TOK})(?:, a (?:special|chat-template) token,)? has the highest value at (?P<k>\d+) of the (?P<n>\d+) layers, with a mean of (?P<mean>{NUM}) against a median of (?P<median>{NUM}) for the other tokens", dominant)
        yield (rf"({TOK}) dominates the figure; the other tokens are described on their own range", lambda m: self.expect(
            all(t in self.dominant_rule() for t in self.token(m.group(1))), f"{m.group(1)} is said to dominate"))

        def profile(m):
            ts = self.tokens(m.group(1))
            idx, typical, nearest = self.to_typical()
            for t in ts:
                d = nearest[list(idx).index(t)] if t in idx else 0
                self.expect(d > max(0.15, 3 * typical), f"{self.labels[t]} said unlike the others (distance {d:.2f}, typical {typical:.2f})")
            t = ts[0] if ts else 0
            if not m.group("dir"):
                return
            first = m.group("at") or m.group("first")
            last = m.group("at") or m.group("last")
            a, b = self.row(first), self.row(last)
            sign = 1 if m.group("dir") == "above" else -1
            dev = sign * self.contrast[a:b + 1, t]
            if a != b and sign > 0:
                self.expect(bool(self.stands[a:b + 1, t].all()), f"{self.labels[t]} does not stand out at every layer {first}-{last}")
            elif a != b:
                self.expect(bool((dev >= STANDS_OUT - 1e-9).all()), f"{self.labels[t]} is not below the others at every layer {first}-{last}")
            else:
                self.expect(bool(dev[0] > 0), f"{self.labels[t]} is not {m.group('dir')} the others at layer {first}")
            if m.group("mean"):
                self.expect(close(m.group("mean"), np.nanmean(self.v[a:b + 1, t])), "anomaly mean")
                self.expect(close(m.group("median"), np.nanmean(self.median[a:b + 1])), "anomaly median")
        tail = r"(?:at layer (?P<at>\d+)|from layer (?P<first>\d+) to (?P<last>\d+))"
        toks = rf"((?:{TOK}(?:, | and )?)+?)"
        yield (rf"{toks} (?:has|share) a depth profile unlike the other tokens': {tail} (?:it stays|they stay) (?P<dir>above|below) the others \(mean (?P<mean>{NUM}) against a median of (?P<median>{NUM})\)", profile)
        yield (rf"{toks} (?:has|share) a depth profile unlike the other tokens'\.(?P<dir>)(?P<at>)(?P<first>)(?P<last>)(?P<mean>)(?P<median>)", profile)

        def nothing_stands_out(m):
            self.expect(not self.stands[:, self.kept].any(), "a token stands out but the summary says none")
        yield (r"No token stands out from the other tokens of its layer[^.]*?at any layer", nothing_stands_out)
        yield (r"No token stands out from the others at any layer", nothing_stands_out)

        def flat(m):
            self.expect(np.nanmin(self.v) == np.nanmax(self.v) and close(m.group(1), np.nanmin(self.v)), "constant")
        yield (rf"Every cell(?: with a value)? has the same value, ({NUM})", flat)

    def _claims_phenomena(self):
        """Known phenomena, re-derived from the raw values with the documented rules."""
        spans_of = self.spans_of

        def stated_spans(text: str) -> list[tuple[int, int]]:
            return [(int(a), int(b or a)) for a, b in re.findall(r"(\d+)(?:–(\d+))?", text)]

        def sink(m):
            (t,) = self.token(m.group("tok"))[:1] or [None]
            if t is None or t not in self.sinks:
                self.fail(f"{m.group('tok')} is called an attention sink but is not one")
                return
            rows = self.sinks[t][0]
            x = self.raw[rows, t]
            self.expect(close(m.group("lo"), x.min()) and close(m.group("hi"), x.max()) and close(m.group("mean"), x.mean()), "sink shares")
            meds = [np.median([self.raw[r, u] for u in range(self.n_tokens) if u not in self.edge]) for r in rows]
            self.expect(close(m.group("med"), np.mean(meds)), "sink median")
            self.expect(stated_spans(m.group("spans")) == spans_of(rows), "sink layers")
            role = m.group("role") or ""
            self.expect(("first" not in role or t == 0) and ("special" not in role or self.special[t]), "sink role")
        yield (rf"(?P<tok>{TOK})(?P<role>, (?:the first|a whitespace|a delimiter|a special) token,)? takes (?P<lo>{NUM})–(?P<hi>{NUM}) of the attention at (?P<spans>(?:layers? )?[\d–, and]+?) \(mean (?P<mean>{NUM}), against a layer median of (?P<med>{NUM})\)\.", sink)

        runs_at = r"(?:layers?) \d+(?:–\d+)?(?:(?: and |, )\d+(?:–\d+)?)*"

        def sink_lead(m):
            for ref in re.finditer(rf"({TOK})(?: at ({runs_at})| through most of the depth)?", m.group(0)):
                (t,) = self.token(ref.group(1))[:1] or [None]
                if t not in self.sinks:
                    self.fail(f"{ref.group(1)} is called an attention sink but is not one")
                    continue
                rows = self.sinks[t][0]
                if ref.group(2):
                    self.expect(stated_spans(ref.group(2)) == spans_of(rows), "sink layers")
                elif "through most" in ref.group(0):
                    self.expect(len(rows) >= 0.6 * self.n_layers, "sink through most of the depth")
        yield (rf"{TOK} is an attention sink(?: through most of the depth| at {runs_at})(?:,? (?:and )?{TOK} at {runs_at})*\.", sink_lead)

        def strongest(t):
            runs = self.massive[t]["runs"]
            first, last = max(runs, key=lambda r: np.nanmax(self.raw[r[0]:r[1] + 1, t]))
            peak = first + int(np.nanargmax(self.raw[first:last + 1, t]))
            return first, last, peak

        def massive(m):
            (t,) = self.token(m.group("tok"))[:1] or [None]
            if t not in self.massive:
                self.fail(f"{m.group('tok')} is said to carry a massive activation but does not")
                return
            first, last, peak = strongest(t)
            ratio = self.massive[t]["ratio"]
            named = m.groupdict()
            if named.get("onset"):  # "jumps from B to V at layer O": the value at the onset
                self.expect(close(named["peak"], self.raw[first, t]), "massive onset value")
            else:
                self.expect(close(named.get("peak") or named.get("peak2"), self.raw[peak, t]), "massive peak")
            at = named.get("pl") or named.get("onset") or named.get("pl2")  # "(R x the median)": at that layer
            self.expect(self.row(at) == peak, "massive peak layer")
            if named.get("pl2"):
                self.expect(self.row(m.group("pl2")) == peak and first == 0, "massive from the first layer")
            self.expect(close(named.get("ratio") or named.get("ratio_at"), ratio[peak]), "massive ratio")
            if m.group("onset"):
                self.expect(self.row(m.group("onset")) == first and close(m.group("before"), self.raw[first - 1, t]), "massive onset")
            if m.group("end"):  # the layers about the peak at half of it or more, without a gap
                end = peak
                while end + 1 < self.n_layers and self.raw[end + 1, t] >= 0.5 * self.raw[peak, t]:
                    end += 1
                self.expect(self.row(m.group("end")) == end, "massive plateau")
            if m.group("lv"):
                self.expect(close(m.group("lv"), self.raw[-1, t]) and self.row(m.group("ll")) == self.n_layers - 1, "last value")
                self.expect(self.raw[-1, t] < self.raw[peak, t], "down to: below the peak")
            if named.get("lv2"):
                self.expect(close(m.group("lv2"), self.raw[-1, t]) and self.row(m.group("ll2")) == self.n_layers - 1, "last value")
                self.expect(self.raw[-1, t] >= self.raw[peak, t] and close(m.group("lr2"), ratio[-1]), "last ratio")
            # an earlier phase: the last run of layers at 5x or more before the onset, apart from it
            early = early_phase(ratio, first) if self.metric == "hidden-norm" else None
            if named.get("ea"):
                a, b = self.rows(m.group("ea"), m.group("eb"))
                self.expect(early == (a, b), f"early phase {early}")
                self.expect(close(m.group("elo"), min(ratio[a:b + 1])) and close(m.group("ehi"), max(ratio[a:b + 1])), "early ratios")
            else:
                self.expect(early is None, "an early phase is not said")
            if m.group("spans"):
                self.expect(stated_spans(m.group("spans")) == [(self.layers[a], self.layers[b]) for a, b in self.massive[t]["runs"]], "writes")
        yield (rf"(?P<tok>{TOK})(?: holds (?P<elo>{NUM})–(?P<ehi>{NUM})x the layer's median at layers? (?P<ea>\d+)(?:–(?P<eb>\d+))?, then)? (?:jumps from (?P<before>{NUM}) to (?P<peak>{NUM}) at layer (?P<onset>\d+)|reaches (?P<peak2>{NUM}) at layer (?P<pl2>\d+))(?: \((?P<ratio_at>{NUM})x the layer's median\)|, peaks at (?P<ratio>{NUM})x the layer's median at layer (?P<pl>\d+)), stays above half of that up to layer (?P<end>\d+)(?: and is down to (?P<lv>{NUM}) at layer (?P<ll>\d+)|; at layer (?P<ll2>\d+) it is (?P<lv2>{NUM}), (?P<lr2>{NUM})x the layer's median)?\.(?P<spans>)", massive)
        yield (rf"The (?:MLP|attention sublayer) writes (?P<peak>{NUM}) into (?P<tok>{TOK}) at layer (?P<pl>\d+), (?P<ratio>{NUM})x the layer's median(?:; it writes at least 10x the median into it at (?P<spans>[^.]+))?\.(?P<onset>)(?P<before>)(?P<end>)(?P<lv>)(?P<ll>)", massive)

        def massive_lead(m):
            ref = m.group("tok") or m.group("into")
            (t,) = self.token(ref)[:1] or [None]
            if t not in self.massive:
                self.fail(f"{ref} is said to carry a massive activation but does not")
                return
            self.expect(bool(m.group("tok")) == (self.metric == "hidden-norm"), "a state or a write")
            first, last, peak = strongest(t)
            self.expect(close(m.group("ratio"), self.massive[t]["ratio"][peak]) and self.row(m.group("at")) == peak, "massive lead")
            if m.group("more"):
                self.expect(int(m.group("more")) == len(self.massive) - 1, "other massive tokens")
        yield (rf"(?:(?P<tok>{TOK}) carries a massive activation|The (?:MLP|attention sublayer) writes a massive update into "
            rf"(?P<into>{TOK})): (?P<ratio>{NUM})x the layer's median at layer (?P<at>\d+)(?:, and (?P<more>\d+) other tokens? at "
            r"least 10x)?\.", massive_lead)

        def edge(m):
            k = int(m.group("k"))
            self.expect(k == int(m.group("k2")) == len(self.edge), "edge size")
            ends = [self.token(m.group("a"))[:1], self.token(m.group("b"))[:1]]
            self.expect(ends == [[self.edge[0]], [self.edge[-1]]], "edge positions")
        yield (rf"The (?:last|first) (?P<k>\d+) positions, (?P<a>{TOK}) to (?P<b>{TOK}), (?:are seen by|can see only themselves and the tokens before them,) (?P<k2>\d+) or fewer", edge)
        yield (r"What follows leaves out the (\d+) cells (?:this phenomenon explains|these phenomena explain)", lambda m: self.expect(int(m.group(1)) == int(self.aside.sum()), f"{int(self.aside.sum())} cells are left out, not {m.group(1)}"))
        yield (r"^- \*[A-Z][a-z ]+\*(?: \([^)]*\))?: ", lambda m: None, re.M)

    def _claims_settling(self):
        """When lens predictions settle."""
        text = self.text
        rank = self.metric == "logit-lens-rank"

        def settled(t) -> int | None:
            col = self.raw[:, t]
            if math.isnan(col[-1]):
                return None
            held = [not math.isnan(x) and (x <= 1 + 1e-6 if rank else x >= 0.5) for x in col]
            if not held[-1]:
                return None
            r = self.n_layers - 1
            while r > 0 and held[r - 1]:
                r -= 1
            return r

        positions = [t for t in range(self.n_tokens) if not math.isnan(self.raw[-1, t])]
        settle = {t: settled(t) for t in positions}
        done = sorted((r, t) for t, r in settle.items() if r is not None)

        def drop(t):
            top = self.n_layers - max(1, self.n_layers // 3)
            seg = np.nan_to_num(self.raw[top:, t], nan=-np.inf)
            p = top + int(np.argmax(seg))
            return p, self.raw[p, t] - self.raw[-1, t]

        drops = [t for t in positions if not rank and self.n_layers >= 3 and drop(t)[1] >= 0.3 - 1e-9]
        lower_median = self.layers[done[(len(done) - 1) // 2][0]] if done else None

        def lens_lead(m):
            self.expect(int(m.group("median")) == lower_median, f"median settling layer {lower_median}")
            third = max(1, self.n_layers // 3)
            row = self.row(m.group("median"))
            where = "late" if row >= self.n_layers - third else "early" if row < min(third, self.n_layers - 1) else "midway"
            self.expect(m.group("when") == where, f"settle {m.group('when')} but {where}")
            self.expect(int(m.group("k")) == len(done) and int(m.group("n")) == len(positions), "settled count")
            self.expect(int(m.group("drops") or 0) == len(drops), "late drops count")
        yield (r"(?P<k>\d+) of the (?P<n>\d+) predictions settle (?P<when>late|early|midway), at layer (?P<median>\d+) in the median \(they reach (?:rank 1|0\.5) there and hold it to the last layer\)(?:, and (?P<drops>\d+) falls? back in the last layers)?\.", lens_lead)
        yield (r"No prediction settles: none of the (\d+) holds (?:rank 1|0\.5) to the last layer", lambda m: self.expect(not done and int(m.group(1)) == len(positions), "nothing settles"))
        yield (r"None of the (\d+) predictions reaches (?:rank 1|0\.5) and holds it to layer (\d+)", lambda m: self.expect(not done and int(m.group(1)) == len(positions), "nothing settles"))
        def settled_count(m):
            self.expect(int(m.group(1)) == len(done) and int(m.group(2)) == len(positions)
                        and self.row(m.group(3)) == self.n_layers - 1, "settled count")
            if m.group("list"):  # every settled prediction, named with its layer
                stated = [(self.token(a)[:1], int(b)) for a, b in re.findall(rf"({TOK}) from layer (\d+)", m.group("list"))]
                self.expect(len(stated) == len(done) <= 4, "every settled prediction named")
                for ts, layer in stated:
                    self.expect(bool(ts) and settle.get(ts[0]) is not None and self.layers[settle[ts[0]]] == layer, "settling layer")
        yield (rf"(\d+) of the (\d+) predictions reach (?:rank 1|0\.5) and hold it to layer (\d+)(?:: (?P<list>(?:{TOK} from layer \d+(?:; )?)+))?", settled_count)

        def few(m):
            self.expect(int(m.group(1)) == len(done) and int(m.group(2)) == len(positions) and 4 * len(done) < len(positions), "few settle")
            self.expect(int(m.group(3) or 0) == len(drops), "late drops count")
        yield (r"Few predictions settle: (\d+) of the (\d+) reach (?:rank 1|0\.5) and hold it to the last layer(?:, and (\d+) falls? back in the last layers)?\.", few)

        def earliest(m):
            stated = [(self.token(a)[:1], int(b)) for a, b in re.findall(rf"({TOK}) from layer (\d+)", m.group(1))]
            for (ts, layer), (r, t) in zip(stated, done):
                self.expect(ts == [t] or settle.get(ts[0] if ts else -1) == r, f"earliest settling: {self.labels[t]}")
                self.expect(ts and settle.get(ts[0]) is not None and self.layers[settle[ts[0]]] == layer, "settling layer")
        yield (rf"The earliest to settle: ((?:{TOK} from layer \d+(?:; )?)+)\.", earliest)
        yield (rf"(?:Those that settle|The one that settles): (?P<list>(?:{TOK} from layer \d+(?:; )?)+)\.", lambda m: settled_count(
            _Fixed(m, {1: str(len(done)), 2: str(len(positions)), 3: str(self.layers[-1])})))

        def last_only(m):
            for t in self.tokens(m.group(1)):
                self.expect(settle.get(t) == self.n_layers - 1, f"{self.labels[t]} does not settle only at the last layer")
            if m.group(2):
                n_last = sum(1 for r, _ in done if r == self.n_layers - 1)
                self.expect(int(m.group(2)) == n_last - len(self.tokens(m.group(1))), "others at the last layer")
        yield (rf"Only at the last layer: ((?:{TOK}(?:, | and )?)+?)(?:,? and (\d+) others)?\.", last_only)

        def late_drop(ref, peak, peak_layer, last, last_layer):
            (t,) = self.token(ref)[:1] or [None]
            if t not in drops:
                self.fail(f"{ref} is said to fall back but does not")
                return
            p, fall = drop(t)
            self.expect(close(peak, self.raw[p, t]) and self.row(peak_layer) == p, "drop peak")
            self.expect(close(last, self.raw[-1, t]) and self.row(last_layer) == self.n_layers - 1, "drop end")
        yield (rf"({TOK}) falls from ({NUM}) at layer (\d+) to ({NUM}) at layer (\d+)\.",  # (a --json sentence)
            lambda m: late_drop(*m.groups()))

        last_layer = re.search(r"Some fall back by layer (\d+), as the logit lens often shows", text)
        yield (r"Some fall back by layer (\d+), as the logit lens often shows", lambda m: None)

        def late_drops(m):
            for r in re.finditer(rf"({TOK}) from ({NUM}) at layer (\d+) to ({NUM})(?=, | and |$)", m.group("items")):
                late_drop(*r.groups(), last_layer.group(1))
            if m.group("more"):
                self.expect(int(m.group("more")) == len(drops) - 3, "more drops")
        yield (rf"(?<=\)): (?P<items>(?:{TOK} from {NUM} at layer \d+ to {NUM}(?:, | and )?)+)"
            r"(?:; (?P<more>\d+) more falls? by 0\.3 or more)?\.$", late_drops, re.M)
        def shown(m):
            named = []
            for p in re.finditer(rf"({TOK}) at layer (\d+) \((p = )?({NUM}) against (?:a median of )?({NUM})\)", m.group("items")):
                if not p.group(3):
                    named.append(self.check_peak(p.group(1), p.group(2), p.group(4), p.group(5)))
                    continue
                (t,) = self.token(p.group(1))[:1] or [0]  # a lens cell by its probability, and the layer's median
                r = self.row(p.group(2))
                median = np.median(self.raw[r][self.valid[r] & self.kept])
                self.expect(self.metric in LENSES and close(p.group(4), self.raw[r, t]) and close(p.group(5), median),
                            f"{p.group(1)}: probability at layer {p.group(2)}")
                self.check_peak_at(p.group(1), p.group(2))
                named.append(t)
            described = set(self.listed_runs) | (set(settle) - {t for t, r in settle.items() if r is None} | set(drops)
                                            if self.metric in LENSES else set())
            self.expect(self.metric != "logit-lens-rank", "a rank figure names no highlight")
            peaking = [t for t in range(self.n_tokens) if self.kept[t] and self.valid[:, t].any()
                       and self.stands[self.peak_row(t), t] and t not in described
                       and (self.metric != "logit-lens" or self.raw[self.peak_row(t), t] >= 0.1 - 1e-9)]
            self.expect(not set(named) & described, "a highlight repeats a token described above")
            strength = {t: self.contrast[self.peak_row(t), t] for t in peaking}
            weakest = min((strength.get(t, np.inf) for t in named), default=np.inf)
            self.expect(all(strength[t] <= weakest + 1e-9 for t in peaking if t not in named),
                        "a stronger highlight is left out")
            more = int(m.group("more")) if m.group("more") else 0
            self.expect(len(peaking) == len(named) + more, f"{len(peaking)} tokens stand out, not {len(named) + more}")
        yield (r"(?:Single cells|The cells) that stand out most from their layer: (?P<items>.*?)(?:, and (?P<more>\d+) more tokens?)?\.$", shown, re.M)

    def _claims_entropy(self):
        """Entropy that grows along the text: Spearman's rho of position and token mean, the edge left out."""
        text = self.text
        if self.metric == "attention-entropy":
            keep = [t for t in range(self.n_tokens) if t not in self.edge and not np.isnan(self.raw[:, t]).all()]
            means = quiet(np.nanmean, self.raw[:, keep], axis=0)

            def ranks(x):
                return np.array([np.mean(np.flatnonzero(np.sort(x) == v)) for v in x])
            rho = float(np.corrcoef(ranks(np.array(keep, float)), ranks(means))[0, 1]) if len(keep) >= 8 else None
            said = re.search(rf"Spearman's ρ between a token's position and its mean entropy is ({NUM})", text)
            self.expect(bool(said) == (rho is not None and rho >= 0.7 and bool(self.edge or self.n_tokens >= 8)),
                        f"entropy along the text (rho {rho})")
            for m in re.finditer(rf"(?:Spearman's ρ between a token's position and its mean entropy is|ρ =) ({NUM})", text):
                self.expect(rho is not None and close(m.group(1), rho), f"rho {m.group(1)} is not {rho}")
            yield (rf"(?:Spearman's ρ between a token's position and its mean entropy is|\(ρ =) {NUM}|at most t \+ 1 tokens", lambda m: None)

    def _claims_trace(self):
        """Interventions: what was corrupted and restored, the two runs' values, ROME's sites."""
        if self.metric in TRACES and self.reference() is not None:
            yield from self._trace_claims()

    def _claims_interpretation(self):
        """Interpretation: what it names must be what the phenomena found."""
        yield (r"A first-token sink is where causal models", lambda m: self.expect(0 in self.sinks, "first-token sink"))
        yield (rf"((?:{TOK}(?:, | and )?)+) (?:is a sink|are sinks) away from the first position", lambda m: self.expect(
            all(t in self.sinks and t != 0 for t in self.tokens(m.group(1))), "sinks away from the first position"))
        yield (rf"act as attention sinks, so ((?:{TOK}(?:, | and )?)+) likely", lambda m: self.expect(
            all(t in self.massive for t in self.tokens(m.group(1))), "massive tokens"))


def check_summary(text: str, values, layers, labels, raw=None, special=None, kinds=None, model=None,
                  metric=None, causal=True, trace=None, options=None) -> int:
    """Assert that every claim of `text` holds for `values`; return how many facts were checked. `trace` and
    `options`: an intervention's reference values and its options (samples, noise, seed, restore, window)."""
    reader = Reader(text, values, layers, labels, values if raw is None else raw, special, kinds, model, metric, causal,
                    trace, options)
    problems = reader.check()
    assert not problems, "the summary says what the numbers do not show:\n- " + "\n- ".join(problems) + "\n\n" + text
    return reader.checked
