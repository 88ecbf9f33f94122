"""`parse_spec`: defaults, and every error with its message and (body-relative, 1-based) line."""

from __future__ import annotations

import pytest

from mkdocs_layerheat.spec import DEFAULT_MAX_TOKENS, HeatmapSpec, SpecError, parse_spec


def error(body: str, docs_dir=None) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(body, docs_dir)
    return info.value


# --------------------------------------------------------------------------- valid specs


def test_minimal_spec_gets_defaults():
    spec = parse_spec("model: tiny\ntext: Hello world\n")
    assert spec == HeatmapSpec(
        model="tiny",
        text="Hello world",
        metric="attention",
        normalize="global",
        title="",
        caption="",
        text_file=None,
        max_tokens=4096,
    )
    assert DEFAULT_MAX_TOKENS == 4096


def test_every_key_given():
    body = (
        "model: ./models/x\n"
        "text: 'A and B = 8 + 5 = 13.'\n"
        "metric: hidden-norm\n"
        "normalize: token\n"
        "title: Norms\n"
        "caption: per token\n"
        "max_tokens: 64\n"
    )
    spec = parse_spec(body)
    assert (spec.model, spec.text, spec.metric, spec.normalize) == ("./models/x", "A and B = 8 + 5 = 13.", "hidden-norm", "token")
    assert (spec.title, spec.caption, spec.max_tokens, spec.text_file) == ("Norms", "per token", 64, None)


@pytest.mark.parametrize("mode", ["none", "global", "layer", "token"])
def test_each_normalization_is_accepted(mode):
    assert parse_spec(f"model: m\ntext: t\nnormalize: {mode}").normalize == mode


def test_block_scalar_text_is_kept_verbatim():
    spec = parse_spec("model: m\ntext: |\n  line one\n  line two\n")
    assert spec.text == "line one\nline two\n"


def test_non_string_scalars_become_strings():
    spec = parse_spec("model: 7\ntext: 13\ntitle: 2.5")
    assert (spec.model, spec.text, spec.title) == ("7", "13", "2.5")


def test_spec_is_hashable():
    a = parse_spec("model: m\ntext: t")
    b = parse_spec("text: t\nmodel: m\n")
    assert a == b and hash(a) == hash(b)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "body, line",
    [
        ("model: m\ntext: t\nmetric: \"attention", 3),  # unterminated quote
        ("model: m\n\ttext: t", 2),  # tab indentation
        ("# a comment\n\nmodel: m\ntext: t\ncaption: [a, b", 5),  # unterminated flow sequence
        ("model: m\n  text: t\n x: y", 2),
    ],
)
def test_invalid_yaml_reports_its_line(body, line):
    exc = error(body)
    assert str(exc).startswith("invalid YAML")
    assert exc.line == line


@pytest.mark.parametrize("body, kind", [("- model: m\n- text: t", "list"), ("just a sentence", "str"), ("42", "int")])
def test_body_must_be_a_mapping(body, kind):
    exc = error(body)
    assert "mapping" in str(exc) and kind in str(exc)
    assert exc.line is None


@pytest.mark.parametrize("body", ["", "\n\n", "# only a comment\n"])
def test_empty_body(body):
    exc = error(body)
    assert "empty" in str(exc)


@pytest.mark.parametrize("body, said, suggestion, line", [
    ("model: m\ntext: t\n\nmetirc: attention\n", "unknown key 'metirc'", "metric", 4),
    ("model: m\ntext: t\ncolour: red", "unknown key 'colour'", None, 3),
    ("model: m\ntextfile: a.txt", "unknown key 'textfile'", "text_file", 2),
    ("model: m\ntext: t\nmetric: atention", "unknown metric 'atention'", "attention", 3),
    ("model: m\nmetric: hidden_norm\ntext: t", "unknown metric 'hidden_norm'", "hidden-norm", 2),
])
def test_an_unknown_key_or_metric_says_its_line_and_the_closest_name(body, said, suggestion, line):
    exc = error(body)
    assert said in str(exc) and exc.line == line
    if suggestion:
        assert f"did you mean '{suggestion}'" in str(exc)
    else:
        assert "did you mean" not in str(exc)


def test_bad_normalize():
    exc = error("model: m\ntext: t\nnormalize: globl")
    assert "unknown normalize 'globl'" in str(exc)
    assert "did you mean 'global'" in str(exc)
    for mode in ("none", "global", "layer", "token"):
        assert mode in str(exc).split("one of:")[1]
    assert exc.line == 3


@pytest.mark.parametrize("body", ["text: hello", "model:\ntext: hello", "model: ''\ntext: hello"])
def test_missing_model(body):
    exc = error(body)
    assert "missing 'model'" in str(exc)


@pytest.mark.parametrize("body, line", [("model: m", None), ("model: m\ntext: ''", 2), ("model: m\ntext: '   \n  '", 2), ("model: m\ntext:", 2)])
def test_missing_or_empty_text(body, line):
    exc = error(body)
    assert "missing or empty 'text'" in str(exc)
    assert exc.line == line


@pytest.mark.parametrize("key, value", [("model", "[a, b]"), ("text", "{a: 1}"), ("title", "true"), ("metric", "{a: 1}")])
def test_non_string_values(key, value):
    other = {"model": "m", "text": "t"}
    other.pop(key, None)
    body = "".join(f"{k}: {v}\n" for k, v in other.items()) + f"{key}: {value}\n"
    exc = error(body)
    assert f"'{key}' must be a string" in str(exc)
    assert exc.line == len(other) + 1


@pytest.mark.parametrize("value", ["0", "-3", "many", "1.5", "true"])
def test_bad_max_tokens(value):
    exc = error(f"model: m\ntext: t\nmax_tokens: {value}")
    assert "'max_tokens' must be a positive integer" in str(exc)
    assert exc.line == 3


# --------------------------------------------------------------------------- text_file


@pytest.fixture
def docs(tmp_path):
    docs = tmp_path / "docs"
    (docs / "texts").mkdir(parents=True)
    (docs / "texts" / "sample.txt").write_text("Résumé: naïve café, 13 tokens.\n", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("outside the docs\n", encoding="utf-8")
    return docs


def test_both_text_and_text_file(docs):
    exc = error("model: m\ntext: t\ntext_file: texts/sample.txt", docs)
    assert "either 'text' or 'text_file'" in str(exc)
    assert exc.line == 3


def test_text_file_resolved_inside_docs_dir(docs):
    spec = parse_spec("model: m\ntext_file: texts/sample.txt", docs)
    assert spec.text == "Résumé: naïve café, 13 tokens.\n"
    assert spec.text_file == "texts/sample.txt"


def test_text_file_with_dot_dot_that_stays_inside(docs):
    spec = parse_spec("model: m\ntext_file: texts/../texts/sample.txt", str(docs))
    assert spec.text.startswith("Résumé")


def test_text_file_relative_to_docs_dir_not_cwd(docs, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "sample.txt").write_text("wrong file", encoding="utf-8")
    assert parse_spec("model: m\ntext_file: texts/sample.txt", docs).text.startswith("Résumé")


@pytest.mark.parametrize("name", ["../secret.txt", "texts/../../secret.txt"])
def test_text_file_outside_docs_dir_relative(docs, name):
    exc = error(f"model: m\ntext_file: '{name}'", docs)
    assert "outside docs_dir" in str(exc)
    assert exc.line == 2


def test_text_file_outside_docs_dir_absolute(docs, tmp_path):
    exc = error(f"model: m\ntext_file: '{tmp_path / 'secret.txt'}'", docs)
    assert "outside docs_dir" in str(exc)
    assert exc.line == 2


def test_text_file_absolute_inside_docs_dir_is_allowed(docs):
    spec = parse_spec(f"model: m\ntext_file: '{docs / 'texts' / 'sample.txt'}'", docs)
    assert spec.text.startswith("Résumé")


def test_text_file_symlink_escaping_docs_dir(docs, tmp_path):
    (docs / "link.txt").symlink_to(tmp_path / "secret.txt")
    exc = error("model: m\ntext_file: link.txt", docs)
    assert "outside docs_dir" in str(exc)


def test_missing_text_file(docs):
    exc = error("model: m\ntitle: x\ntext_file: texts/nope.txt", docs)
    assert "not found" in str(exc) and "nope.txt" in str(exc)
    assert exc.line == 3


def test_text_file_that_is_a_directory(docs):
    exc = error("model: m\ntext_file: texts", docs)
    assert "cannot be read" in str(exc)


def test_non_utf8_text_file(docs):
    (docs / "latin1.txt").write_bytes("café naïve".encode("latin-1"))
    exc = error("model: m\ntext_file: latin1.txt", docs)
    assert "not UTF-8" in str(exc)
    assert exc.line == 2


def test_empty_text_file(docs):
    (docs / "empty.txt").write_text("  \n", encoding="utf-8")
    exc = error("model: m\ntext_file: empty.txt", docs)
    assert "missing or empty" in str(exc)


def test_text_file_without_docs_dir():
    exc = error("model: m\ntext_file: a.txt", None)
    assert "docs directory" in str(exc)
    assert exc.line == 2


def test_duplicate_key_is_an_error_at_its_second_line():
    with pytest.raises(SpecError, match="duplicate key 'model'") as info:
        parse_spec("model: a\ntext: hi\nmodel: b\n")
    assert info.value.line == 3


# --------------------------------------------------------------------------- metric options, chat, generate


def test_new_options_default_to_off():
    spec = parse_spec("model: m\ntext: t")
    assert (spec.query, spec.target, spec.heads, spec.aggregate, spec.layers) == (None, None, None, "mean", None)
    assert (spec.embeddings, spec.chat, spec.generate) == (False, False, 0)
    assert spec.key_options() == {}


def test_every_option_given():
    body = (
        "model: m\ntext: t\nmetric: attention-from\nquery: -2\nheads: [3, 1, 3]\naggregate: max\n"
        "layers: 1-3, 7\nchat: true\ngenerate: 20\n"
    )
    spec = parse_spec(body)
    assert (spec.query, spec.heads, spec.aggregate, spec.layers) == (-2, (1, 3), "max", (1, 2, 3, 7))
    assert (spec.chat, spec.generate) == (True, 20)
    request = spec.request()
    assert (request.metric, request.query, request.heads, request.layers) == ("attention-from", -2, (1, 3), (1, 2, 3, 7))
    assert spec.key_options() == {
        "query": -2, "heads": [1, 3], "aggregate": "max", "layers": [1, 2, 3, 7], "chat": True, "generate": 20
    }


@pytest.mark.parametrize(
    "value, expected",
    [("1-12", tuple(range(1, 13))), ("[2, 4, 6]", (2, 4, 6)), ("5", (5,)), ("'3-4, 1'", (1, 3, 4)), ("[1-2, 9]", (1, 2, 9))],
)
def test_layers_forms(value, expected):
    assert parse_spec(f"model: m\ntext: t\nmetric: hidden-norm\nlayers: {value}").layers == expected


@pytest.mark.parametrize(
    "value, message",
    [
        ("[]", "'layers' is empty"),
        ("0-3", "layer 0 is the embedding output: use 'embeddings: true'"),
        ("5-2", "the range '5-2' is empty"),
        ("first", "'first' is not a number or a range"),
        ("[true]", "'layers' must be layer numbers"),
        ("{a: 1}", "'layers' must be layer numbers"),
    ],
)
def test_bad_layers(value, message):
    exc = error(f"model: m\ntext: t\nlayers: {value}")
    assert message in str(exc)
    assert exc.line == 3


@pytest.mark.parametrize(
    "value, message", [("[]", "'heads' is empty"), ("[-1]", "'heads': -1 is out of range, the first is 0"), ("x", "not a number")]
)
def test_bad_heads(value, message):
    exc = error(f"model: m\ntext: t\nmetric: attention\nheads: {value}")
    assert message in str(exc)
    assert exc.line == 4


def test_heads_zero_based():
    assert parse_spec("model: m\ntext: t\nheads: 0-2").heads == (0, 1, 2)


@pytest.mark.parametrize(
    "body, message",
    [
        ("metric: hidden-norm\nheads: [1]", "'heads' does not apply to metric 'hidden-norm' (it applies to: attention, attention-from, attention-entropy)"),
        ("metric: attention\nquery: 3", "'query' does not apply to metric 'attention' (it applies to: attention-from)"),
        ("metric: update\naggregate: max", "'aggregate' does not apply to metric 'update'"),
        ("metric: attention\ntarget: x", "'target' does not apply to metric 'attention' (it applies to: logit-lens, logit-lens-rank)"),
        ("metric: update\nembeddings: true", "'embeddings' does not apply to metric 'update': it has no layer 0 (it applies to: hidden-norm, logit-lens, logit-lens-rank, lens-entropy, lens-kl)"),
        ("metric: attention\nembeddings: true", "'embeddings' does not apply to metric 'attention'"),
    ],
)
def test_options_that_do_not_apply_to_the_metric(body, message):
    exc = error(f"model: m\ntext: t\n{body}")
    assert message in str(exc)
    assert exc.line == 4


@pytest.mark.parametrize(
    "body, message",
    [
        ("metric: attention\naggregate: maximum", "unknown aggregate 'maximum' (did you mean 'max'?) (one of: mean, max)"),
        ("metric: attention-from\nquery: last", "'query' must be an integer"),
        ("metric: attention-from\nquery: true", "'query' must be an integer"),
        ("metric: logit-lens\ntarget: ''", "'target' must be a non-empty string"),
        ("metric: logit-lens\ntarget: [a]", "'target' must be a non-empty string"),
        ("metric: hidden-norm\nembeddings: yes please", "'embeddings' must be true or false"),
        ("chat: 1", "'chat' must be true or false"),
        ("generate: -1", "'generate' must be a non-negative integer"),
        ("generate: 2.5", "'generate' must be a non-negative integer"),
    ],
)
def test_bad_option_values(body, message):
    exc = error(f"model: m\ntext: t\n{body}")
    assert message in str(exc)
    assert exc.line == 3 + body.count("\n")


def test_target_keeps_its_leading_space():
    assert parse_spec("model: m\ntext: t\nmetric: logit-lens\ntarget: ' Paris'").target == " Paris"


def test_embeddings_where_it_makes_sense():
    for metric in ("hidden-norm", "logit-lens", "logit-lens-rank"):
        assert parse_spec(f"model: m\ntext: t\nmetric: {metric}\nembeddings: true").embeddings


@pytest.mark.parametrize("key", ["trust_remote_code", "device", "dtype", "device_map", "max_memory", "offload_folder"])
def test_site_options_cannot_be_set_in_a_page(key):
    exc = error(f"model: m\ntext: t\n{key}: true")
    assert f"'{key}' cannot be set in a page" in str(exc) and "mkdocs.yml" in str(exc)
    assert exc.line == 3


def test_option_changes_the_spec_identity():
    a = parse_spec("model: m\ntext: t\nmetric: attention\nheads: [1]")
    b = parse_spec("model: m\ntext: t\nmetric: attention\nheads: 1")
    c = parse_spec("model: m\ntext: t\nmetric: attention\nheads: [2]")
    assert a == b and hash(a) == hash(b) and a != c


def test_palette_and_layer_label():
    spec = parse_spec("model: m\ntext: t\npalette: cividis\nlayer_label: Block")
    assert (spec.palette, spec.layer_label) == ("cividis", "Block")
    assert parse_spec("model: m\ntext: t").palette == "yellow-brown"
    with pytest.raises(SpecError, match="unknown palette 'viridus' \\(did you mean 'viridis'\\?\\)") as info:
        parse_spec("model: m\ntext: t\npalette: viridus")
    assert info.value.line == 3


def test_color_range():
    assert parse_spec("model: m\ntext: t").color_range == "full"
    assert parse_spec("model: m\ntext: t\ncolor_range: robust").color_range == "robust"
    with pytest.raises(SpecError, match="unknown color_range 'robst' \\(did you mean 'robust'\\?\\)") as info:
        parse_spec("model: m\ntext: t\ncolor_range: robst")
    assert info.value.line == 3


def test_a_list_of_metrics_is_one_spec_per_panel():
    spec = parse_spec('model: m\ntext: t\nmetric: [attention, hidden-norm, logit-lens]\nheads: [0]\ntarget: " Paris"')
    sides = spec.sides()
    assert [s.metric for s in sides] == ["attention", "hidden-norm", "logit-lens"]
    assert [(s.heads, s.target) for s in sides] == [((0,), None), (None, None), (None, " Paris")]  # where it applies
    assert all(s.text == "t" and not s.panels for s in sides)


@pytest.mark.parametrize("body, message, line", [
    ("metric: [attention]", "a list of 2 to 4", 3),
    ("metric: [attention, attention]", "the same metric twice", 3),
    ("metric: [attention, atention]", "unknown metric 'atention' (did you mean 'attention'?)", 3),
    ("metric: [attention, update]\ntarget: x", "'target' applies to none of the metrics attention, update", 4),
    ("metric: [attention, update]\ncompare: {text: u}", "either a list of metrics or 'compare'", 4),
])
def test_a_list_of_metrics_is_checked(body, message, line):
    with pytest.raises(SpecError) as info:
        parse_spec(f"model: m\ntext: t\n{body}")
    assert message in str(info.value) and info.value.line == line
