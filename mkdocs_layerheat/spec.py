"""`HeatmapSpec`: a layerheat block's YAML body, validated, with defaults filled in."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import yaml

from .heatmap import NORMALIZATIONS
from .metrics import METRICS

DEFAULT_MAX_TOKENS = 4096


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
    text_file: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS


_KEYS = ("model", "text", "text_file", "metric", "normalize", "title", "caption", "max_tokens")


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _key_lines(body: str) -> dict[str, int]:
    """1-based line of each top-level key, for messages that point at the offending key; rejects duplicates."""
    node = yaml.compose(body, Loader=yaml.SafeLoader)
    if not isinstance(node, yaml.MappingNode):
        return {}
    lines: dict[str, int] = {}
    for key, _ in node.value:
        if isinstance(key, yaml.ScalarNode):
            if key.value in lines:
                raise SpecError(f"duplicate key '{key.value}'", key.start_mark.line + 1)
            lines[key.value] = key.start_mark.line + 1
    return lines


def parse_spec(body: str, docs_dir: str | Path | None = None) -> HeatmapSpec:
    """Validate a block body; raise `SpecError` with the first problem found."""
    try:
        data = yaml.safe_load(body)
        lines = _key_lines(body)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"invalid YAML: {problem}", mark.line + 1 if mark else None) from None
    if data is None:
        raise SpecError("empty layerheat block: it needs at least 'model' and 'text'")
    if not isinstance(data, dict):
        raise SpecError(f"the block must be a YAML mapping of keys, not a {type(data).__name__}")

    for key in data:
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
    normalize = string("normalize", "global")
    if normalize not in NORMALIZATIONS:
        raise SpecError(
            f"unknown normalize '{normalize}'{_did_you_mean(normalize, NORMALIZATIONS)}"
            f" (one of: {', '.join(NORMALIZATIONS)})",
            lines.get("normalize"),
        )
    max_tokens = data.get("max_tokens", DEFAULT_MAX_TOKENS)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise SpecError("'max_tokens' must be a positive integer", lines.get("max_tokens"))

    text, text_file = string("text"), string("text_file")
    if text is not None and text_file is not None:
        raise SpecError("give either 'text' or 'text_file', not both", lines.get("text_file"))
    if text_file is not None:
        text = _read_text_file(text_file, docs_dir, lines.get("text_file"))
    if not text or not text.strip():
        raise SpecError("missing or empty 'text' (or 'text_file')", lines.get("text"))

    return HeatmapSpec(
        model=model,
        text=text,
        metric=metric,
        normalize=normalize,
        title=string("title", "") or "",
        caption=string("caption", "") or "",
        text_file=text_file,
        max_tokens=max_tokens,
    )


def _read_text_file(name: str, docs_dir: str | Path | None, line: int | None) -> str:
    if docs_dir is None:
        raise SpecError("'text_file' needs a docs directory to resolve against", line)
    root = Path(docs_dir).resolve()
    path = (root / name).resolve()
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
