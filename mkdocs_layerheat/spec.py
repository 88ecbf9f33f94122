"""`HeatmapSpec`: a layerheat block's YAML body, validated, with defaults filled in."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .catalog import (
    AGGREGATES,
    COLOR_RANGES,
    DEFAULT_MAX_TOKENS,
    INTERVENTION_OPTIONS,
    METRICS,
    NORMALIZATIONS,
    PALETTES,
    RESTORES,
    MetricRequest,
)


class SpecError(Exception):
    """A block that cannot be used; `line` is 1-based inside the block body, or None for the whole block."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class HeatmapSpec:
    model: str
    text: str
    metric: str = "attention"
    normalize: str = "global"
    title: str = ""
    caption: str = ""
    palette: str = "yellow-brown"
    color_range: str = "full"  # or "robust": the colours span the 2nd-98th percentile, clipped cells marked
    layer_label: str = "Layer"
    text_file: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    query: int | None = None
    target: str | None = None
    heads: tuple[int, ...] | None = None
    aggregate: str = "mean"
    layers: tuple[int, ...] | None = None
    embeddings: bool = False
    chat: bool = False
    generate: int = 0
    subject: str | None = None
    answer: str | None = None
    samples: int = 10
    noise: float = 3.0
    seed: int = 1
    restore: str = "hidden"
    window: int = 10
    corrupt: str | None = None
    compare: HeatmapSpec | None = None  # the second heatmap of a side-by-side block (another model or text)
    panels: tuple[HeatmapSpec, ...] = ()  # `metric: [a, b, ...]`: the other metrics' panels, on this text

    def sides(self) -> tuple[HeatmapSpec, ...]:
        """The heatmaps this block needs: itself, and the one it is compared with or its other panels."""
        if self.compare is not None:
            return (dataclasses.replace(self, compare=None), self.compare)
        if self.panels:
            return (dataclasses.replace(self, panels=()), *self.panels)
        return (self,)

    def request(self) -> MetricRequest:
        """The metric and its options, as extraction takes them."""
        return MetricRequest(**{f.name: getattr(self, f.name) for f in dataclasses.fields(MetricRequest)})

    def key_options(self) -> dict[str, Any]:
        """Every option besides model, text and metric that changes the numbers, where it differs from its default."""
        out = self.request().key_options()
        if self.chat:
            out["chat"] = True
        if self.generate:
            out["generate"] = self.generate
        return out


_KEYS = (
    "model", "text", "text_file", "metric", "normalize", "title", "caption", "palette", "color_range",
    "layer_label", "max_tokens",
    "query", "target", "heads", "aggregate", "layers", "embeddings", "chat", "generate", "compare",
    *sorted(INTERVENTION_OPTIONS),
)
_COMPARE_KEYS = ("model", "text", "text_file")  # what the second heatmap of a `compare:` block may change
# mkdocs.yml only, never a page
_SITE_KEYS = ("device", "dtype", "device_map", "max_memory", "offload_folder", "trust_remote_code")


def _did_you_mean(word: str, choices) -> str:
    import difflib  # (only for a bad block: a warm build imports no more than it needs)

    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: the same results, faster


_YAML_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
_MARKDOWN_BREAK = re.compile("\r\n|[\r\n]")


def _line(body: str, mark: Any) -> int:
    """The 1-based body line of a YAML mark, as Markdown counts lines (YAML also breaks at U+0085, U+2028, U+2029)."""
    starts = [0] + [m.end() for m in _YAML_BREAK.finditer(body)]
    return len(_MARKDOWN_BREAK.findall(body, 0, starts[min(mark.line, len(starts) - 1)])) + 1


def _document(body: str) -> tuple[Any, Any]:
    """The body's YAML node and its data, parsed once (what `yaml.load` does, keeping the node)."""
    loader = _LOADER(body)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def _key_lines(body: str, node: Any) -> dict[str, int]:
    """1-based line of each top-level key, for messages that point at the offending key; rejects duplicates."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    lines: dict[str, int] = {}
    for key, _ in node.value:
        if isinstance(key, yaml.ScalarNode):
            if key.value in lines:
                raise SpecError(f"duplicate key '{key.value}'", _line(body, key.start_mark))
            lines[key.value] = _line(body, key.start_mark)
    return lines


def parse_spec(body: str, docs_dir: str | Path | None = None) -> HeatmapSpec:
    """Validate a block body; raise `SpecError` with the first problem found."""
    try:
        node, data = _document(body)
        lines = _key_lines(body, node)
    except RecursionError:
        raise SpecError("invalid YAML: nested too deeply") from None
    except (yaml.YAMLError, ValueError) as error:  # ValueError: PyYAML's own, for an escape past U+10FFFF
        exc = error
        if _LOADER is not yaml.SafeLoader:  # the pure-Python parser's error marks are the precise ones
            try:
                yaml.load(body, Loader=yaml.SafeLoader)
            except yaml.YAMLError as precise:
                exc = precise
            except (ValueError, RecursionError):
                pass
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"invalid YAML: {problem}", _line(body, mark) if mark else None) from None
    if data is None:
        raise SpecError("empty layerheat block: it needs at least 'model' and 'text'")
    if not isinstance(data, dict):
        raise SpecError(f"the block must be a YAML mapping of keys, not a {type(data).__name__}")
    if isinstance(data.get("metric"), list):
        return _panels(data, lines, docs_dir)
    spec = _from_data(data, lines, docs_dir)
    if "compare" not in data:
        return spec
    return dataclasses.replace(spec, compare=_compared(data, spec, lines.get("compare"), docs_dir))


MAX_PANELS = 4
_PANEL_OPTIONS = ("query", "target", "heads", "aggregate", "embeddings", *sorted(INTERVENTION_OPTIONS))  # some only


def _panels(data: dict, lines: dict[str, int], docs_dir: str | Path | None) -> HeatmapSpec:
    """`metric: [a, b, ...]`: one spec per metric on the same text, the first holding the others as `panels`.
    A metric option goes to the panels whose metric takes it, and must apply to at least one."""
    metrics, line = data["metric"], lines.get("metric")
    if "compare" in data:
        raise SpecError("give either a list of metrics or 'compare', not both", lines.get("compare"))
    if not 2 <= len(metrics) <= MAX_PANELS or not all(isinstance(m, str) for m in metrics):
        raise SpecError(f"'metric' must be one metric name or a list of 2 to {MAX_PANELS} of them", line)
    if len(set(metrics)) < len(metrics):
        raise SpecError("'metric' lists the same metric twice", line)
    def applies(key: str, metric: str) -> bool:
        info = METRICS.get(metric)
        return info is None or key in info.options or (key == "embeddings" and info.embeddings)

    for key in _PANEL_OPTIONS:
        if key in data and not any(applies(key, m) for m in metrics if m in METRICS):
            raise SpecError(f"'{key}' applies to none of the metrics {', '.join(metrics)}", lines.get(key))
    specs = []
    for metric in metrics:
        keep = {k: v for k, v in data.items() if k not in _PANEL_OPTIONS or applies(k, metric)}
        specs.append(_from_data({**keep, "metric": metric}, lines, docs_dir))
    return dataclasses.replace(specs[0], panels=tuple(specs[1:]))


def _compared(data: dict, spec: HeatmapSpec, line: int | None, docs_dir: str | Path | None) -> HeatmapSpec:
    """The second heatmap of a `compare:` block: the block's own keys, with another model and/or text."""
    other = data["compare"]
    if not isinstance(other, dict) or not other:
        raise SpecError("'compare' must be a mapping with another 'model' and/or 'text' (or 'text_file')", line)
    for key in other:
        if key not in _COMPARE_KEYS:
            raise SpecError(
                f"'compare' cannot set '{key}'{_did_you_mean(key, _COMPARE_KEYS)}: it may change only "
                f"{', '.join(_COMPARE_KEYS)} (both heatmaps share the rest)", line,
            )
    shared = {k: v for k, v in data.items() if k != "compare"}
    if {"text", "text_file"} & set(other):  # a new text replaces the block's, whichever way each is given
        shared.pop("text", None), shared.pop("text_file", None)
    try:
        second = _from_data({**shared, **other}, {}, docs_dir)
    except SpecError as exc:
        raise SpecError(f"in 'compare': {exc}", line) from None
    if (second.model, second.text) == (spec.model, spec.text):
        raise SpecError("'compare' names the same model and text as the block: change the model or the text", line)
    return second


def _from_data(data: dict, lines: dict[str, int], docs_dir: str | Path | None) -> HeatmapSpec:
    """A spec from a block's YAML mapping (`lines`: the line of each key, for messages)."""
    for key in data:
        if key in _SITE_KEYS:
            raise SpecError(
                f"'{key}' cannot be set in a page: it is a plugin option in mkdocs.yml"
                + (" (trust_remote_code: a list of the model aliases allowed to run their own code)"
                   if key == "trust_remote_code" else ""),
                lines.get(str(key)),
            )
        if key not in _KEYS:
            raise SpecError(f"unknown key '{key}'{_did_you_mean(key, _KEYS)}", lines.get(str(key)))

    def string(key: str, default: str | None = None) -> str | None:
        value = data.get(key, default)
        if value is None or value is default:
            return value
        if isinstance(value, (bool, dict, list)):
            raise SpecError(f"'{key}' must be a string", lines.get(key))
        return str(value)

    model = string("model")
    if not model:
        raise SpecError("missing 'model' (an alias from mkdocs.yml, a local directory, a .gguf file or a hub id)")
    metric = string("metric", "attention")
    if metric not in METRICS:
        raise SpecError(f"unknown metric '{metric}'{_did_you_mean(metric, METRICS)}", lines.get("metric"))
    def choice(key: str, default: str, options) -> str:
        value = string(key, default)
        if value not in options:
            raise SpecError(f"unknown {key} '{value}'{_did_you_mean(value, options)} (one of: {', '.join(options)})",
                            lines.get(key))
        return value

    # an intervention's values are probabilities or shares of a logit difference: shown as they are
    normalize = choice("normalize", "none" if METRICS[metric].site == "intervention" else "global", NORMALIZATIONS)
    palette = choice("palette", "yellow-brown", PALETTES)
    color_range = choice("color_range", "full", COLOR_RANGES)
    max_tokens = data.get("max_tokens", DEFAULT_MAX_TOKENS)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise SpecError("'max_tokens' must be a positive integer", lines.get("max_tokens"))

    text, text_file = string("text"), string("text_file")
    if text is not None and text_file is not None:
        raise SpecError("give either 'text' or 'text_file', not both", lines.get("text_file"))
    if text_file is not None:
        text = read_text_file(text_file, docs_dir, lines.get("text_file"))
    if not text or not text.strip():
        raise SpecError("missing or empty 'text' (or 'text_file')", lines.get("text" if text_file is None else "text_file"))

    options = _metric_options(data, lines, metric)
    return HeatmapSpec(
        model=model,
        text=text,
        metric=metric,
        normalize=normalize,
        title=string("title", "") or "",
        caption=string("caption", "") or "",
        palette=palette,
        color_range=color_range,
        layer_label=string("layer_label", "Layer") or "Layer",
        text_file=text_file,
        max_tokens=max_tokens,
        **options,
    )


class _Values:
    """Typed reads of a block's keys, each error naming the key's line."""

    def __init__(self, data: dict, lines: dict[str, int]):
        self.data, self.lines = data, lines

    def flag(self, key: str) -> bool:
        value = self.data.get(key, False)
        if not isinstance(value, bool):
            raise SpecError(f"'{key}' must be true or false", self.lines.get(key))
        return value

    def integer(self, key: str, minimum: int | None = None) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            kind = "an integer" if minimum is None else ("a positive integer" if minimum > 0 else "a non-negative integer")
            raise SpecError(f"'{key}' must be {kind}", self.lines.get(key))
        return value

    def text(self, key: str, what: str) -> str:
        value = self.data[key]
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or str(value) == "":
            raise SpecError(f"'{key}' must be a non-empty string ({what})", self.lines.get(key))
        return str(value)

    def number(self, key: str) -> float:
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise SpecError(f"'{key}' must be a positive number", self.lines.get(key))
        return float(value)


def _metric_options(data: dict, lines: dict[str, int], metric: str) -> dict[str, Any]:
    """query, target, heads, aggregate, layers, embeddings, chat and generate (and an intervention's own):
    validated against the metric."""
    info = METRICS[metric]
    for key in ("query", "target", "heads", "aggregate", *sorted(INTERVENTION_OPTIONS)):
        if key in data and key not in info.options:
            users = [m.name for m in METRICS.values() if key in m.options]
            raise SpecError(
                f"'{key}' does not apply to metric '{metric}' (it applies to: {', '.join(users)})", lines.get(key)
            )
    read = _Values(data, lines)
    out: dict[str, Any] = {}
    if "query" in data:
        out["query"] = read.integer("query")
    if "target" in data:
        out["target"] = read.text("target", 'one token, e.g. " Paris"')
    out.update(_intervention_options(read, metric))
    if "heads" in data:
        out["heads"] = _numbers(data["heads"], "heads", lines.get("heads"), minimum=0)
    if "aggregate" in data:
        aggregate = data["aggregate"]
        if aggregate not in AGGREGATES:
            raise SpecError(
                f"unknown aggregate {aggregate!r}{_did_you_mean(aggregate, AGGREGATES)} (one of: {', '.join(AGGREGATES)})",
                lines.get("aggregate"),
            )
        out["aggregate"] = aggregate
    if "layers" in data:
        out["layers"] = _numbers(data["layers"], "layers", lines.get("layers"), minimum=1)
    if read.flag("embeddings"):
        if not info.embeddings:
            users = [m.name for m in METRICS.values() if m.embeddings]
            raise SpecError(
                f"'embeddings' does not apply to metric '{metric}': it has no layer 0 (it applies to: {', '.join(users)})",
                lines.get("embeddings"),
            )
        out["embeddings"] = True
    out["chat"] = read.flag("chat")
    out["generate"] = read.integer("generate", minimum=0) or 0
    return out


def _intervention_options(read: _Values, metric: str) -> dict[str, Any]:
    """A causal trace's or an activation patching's options (`INTERVENTION_OPTIONS`), and what each needs."""
    data, lines, out = read.data, read.lines, {}
    for key, what in (("subject", "a part of the text, e.g. The Eiffel Tower"), ("answer", 'one token, e.g. " Paris"'),
                      ("corrupt", "a second text of the same token length")):
        if key in data:
            out[key] = read.text(key, what)
    for key in ("samples", "window"):
        if key in data:
            out[key] = read.integer(key, minimum=1)
    if "seed" in data:
        out["seed"] = read.integer("seed", minimum=0)
    if "noise" in data:
        out["noise"] = read.number("noise")
    if "restore" in data:
        if data["restore"] not in RESTORES:
            raise SpecError(f"unknown restore {data['restore']!r}{_did_you_mean(data['restore'], RESTORES)} "
                            f"(one of: {', '.join(RESTORES)})", lines.get("restore"))
        out["restore"] = data["restore"]
    if "window" in out and out.get("restore", "hidden") == "hidden":
        raise SpecError("'window' applies to 'restore: mlp' or 'restore: attn' (a block's output is restored alone)",
                        lines.get("window"))
    if metric == "causal-trace" and "subject" not in out:
        raise SpecError("metric 'causal-trace' needs 'subject': the part of the text whose tokens are corrupted")
    if metric == "activation-patching" and "corrupt" not in out:
        raise SpecError("metric 'activation-patching' needs 'corrupt': a second text of the same token length")
    if METRICS[metric].site == "intervention" and data.get("generate"):
        raise SpecError(f"'generate' does not apply to metric '{metric}': it reads the text's own last token",
                        lines.get("generate"))
    return out


def _numbers(value: Any, key: str, line: int | None, minimum: int) -> tuple[int, ...]:
    """A list of integers, a single one, or a string of ranges like '1-12' or '0, 3, 5-7': sorted, without repeats."""
    what = ("layer numbers (1-based) like 1-12 or [1, 5, 9]" if key == "layers"
            else "head indices (0-based) like [0, 3] or 0-3")
    items = value if isinstance(value, list) else [value]
    numbers: list[int] = []
    for item in items:
        if isinstance(item, bool):
            raise SpecError(f"'{key}' must be {what}", line)
        if isinstance(item, int):
            numbers.append(item)
            continue
        if not isinstance(item, str):
            raise SpecError(f"'{key}' must be {what}", line)
        for part in filter(None, (p.strip() for p in item.split(","))):
            low, dash, high = part.partition("-")
            try:
                a, b = int(low), int(high) if dash else int(low)
            except ValueError:
                raise SpecError(f"'{key}': {part!r} is not a number or a range (must be {what})", line) from None
            if b < a:
                raise SpecError(f"'{key}': the range {part!r} is empty (write the smaller number first)", line)
            if b - a >= 10_000:  # no model has that many; and a page must not make the build allocate without bound
                raise SpecError(f"'{key}': the range {part!r} is too long", line)
            numbers.extend(range(a, b + 1))
    if not numbers:
        raise SpecError(f"'{key}' is empty: leave it out to use all {key}", line)
    low = min(numbers)
    if low < minimum:
        hint = " (layer 0 is the embedding output: use 'embeddings: true')" if key == "layers" else ""
        raise SpecError(f"'{key}': {low} is out of range, the first is {minimum}{hint}", line)
    return tuple(sorted(set(numbers)))


def read_text_file(name: str, docs_dir: str | Path | None, line: int | None) -> str:
    if docs_dir is None:
        raise SpecError("'text_file' needs a docs directory to resolve against", line)
    root = Path(docs_dir).resolve()
    try:
        path = (root / name).resolve()
    except (OSError, ValueError):  # a NUL character, a loop of symlinks
        raise SpecError(f"'text_file' {name!r} is not a usable file name", line) from None
    if not path.is_relative_to(root):
        raise SpecError(f"'text_file' {name!r} is outside docs_dir", line)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"'text_file' {name!r} not found in docs_dir", line) from None
    except UnicodeDecodeError:
        raise SpecError(f"'text_file' {name!r} is not UTF-8 text", line) from None
    except OSError as exc:
        raise SpecError(f"'text_file' {name!r} cannot be read: {exc.strerror}", line) from None
