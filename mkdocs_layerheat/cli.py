"""The `layerheat` command: extract a heatmap to JSON, convert a GGUF model."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .catalog import AGGREGATES, COLOR_RANGES, DEFAULT_MAX_TOKENS, DTYPES, METRICS, RESTORES
from .heatmap import NORMALIZATIONS


@click.group()
def main() -> None:
    """Token-by-layer heatmaps of language models."""


@main.command()
@click.option("--model", required=True, help="Local directory, .gguf file or hub id owner/name[@revision].")
@click.option("--text", help="The text to run through the model.")
@click.option("--text-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Read the text from a file.")
@click.option("--metric", type=click.Choice(list(METRICS)), default="attention", show_default=True)
@click.option("--normalize", type=click.Choice(NORMALIZATIONS), default="none", show_default=True)
@click.option("--query", type=int, help="attention-from: the query token (negative: from the end; default the last).")
@click.option("--target", help="logit-lens(-rank): a one-token string instead of the next token, e.g. ' Paris'.")
@click.option("--heads", help="Attention metrics: 0-based heads, e.g. '0,3' or '0-3' (default all).")
@click.option("--aggregate", type=click.Choice(AGGREGATES), default="mean", show_default=True, help="How heads combine.")
@click.option("--layers", help="1-based blocks, e.g. '1-12' or '1,5,9' (default all).")
@click.option("--embeddings", is_flag=True, help="Add layer 0, the embedding output (hidden-norm, logit-lens).")
@click.option("--chat", is_flag=True, help="Wrap the text as one user message with the model's chat template.")
@click.option("--generate", type=click.IntRange(min=0), default=0, help="Append a greedy continuation of up to N tokens.")
@click.option("--subject", help="causal-trace: the part of the text whose tokens are noised.")
@click.option("--answer", help="causal-trace, activation-patching: the one-token answer (default: the greedy next token).")
@click.option("--samples", type=click.IntRange(min=1), help="causal-trace: noised copies (default 10).")
@click.option("--noise", type=float, help="causal-trace: noise scale in standard deviations of the embeddings (default 3).")
@click.option("--seed", type=click.IntRange(min=0), help="causal-trace: seed of the noise (default 1).")
@click.option("--restore", type=click.Choice(RESTORES), help="causal-trace: what is restored (default hidden).")
@click.option("--window", type=click.IntRange(min=1),
              help="causal-trace with --restore mlp/attn: layers restored together (10).")
@click.option("--corrupt", help="activation-patching: the corrupted text, of the same token length.")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu, cuda, cuda:1, mps.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
@click.option("--device-map", type=click.Choice(["auto"]), help="auto: spread the model over several devices.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's repository to run its own code.")
@click.option("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write JSON here (default: stdout).")
def extract(
    model, text, text_file, metric, normalize, query, target, heads, aggregate, layers, embeddings, chat, generate,
    subject, answer, samples, noise, seed, restore, window, corrupt,
    device, dtype, device_map, trust_remote_code, max_tokens, output,
) -> None:
    """Run MODEL on a text and write the heatmap as JSON (values[layer][token], bottom layer first)."""
    import yaml

    from . import extract as extraction
    from .models import load
    from .refs import ModelError, resolve
    from .spec import SpecError, parse_spec

    if (text is None) == (text_file is None):
        raise click.UsageError("give exactly one of --text and --text-file")
    if text_file is not None:
        text = text_file.read_text(encoding="utf-8")
    body = {"model": model, "text": text, "metric": metric, "max_tokens": max_tokens}  # validated like a block
    given = {"query": query, "target": target, "heads": heads, "layers": layers, "subject": subject, "answer": answer,
             "samples": samples, "noise": noise, "seed": seed, "restore": restore, "window": window, "corrupt": corrupt}
    body.update((k, v) for k, v in given.items() if v is not None)
    body.update((k, v) for k, v in [("aggregate", aggregate), ("embeddings", embeddings)] if v not in ("mean", False))
    body.update(chat=chat, generate=generate)
    try:
        spec = parse_spec(yaml.safe_dump(body, allow_unicode=True))
    except SpecError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        loaded = load(
            resolve(model), device, eager_attention=True,  # as a build loads it: the same numbers
            dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code,
        )
        heatmap = extraction.extract(
            loaded, spec.text, [spec.request()], spec.max_tokens, chat=spec.chat, generate=spec.generate
        )[spec.request()]
    except (ModelError, extraction.ExtractionError) as exc:
        raise click.ClickException(str(exc)) from None
    data = heatmap.to_json(normalize)
    if output:
        output.write_text(data + "\n", encoding="utf-8")
    else:
        sys.stdout.write(data + "\n")


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default="docs/assets/layerheat")
def assets(folder: Path) -> None:
    """Write BokehJS and the figure loader into FOLDER (default docs/assets/layerheat), for builders that run
    the Markdown extension without the MkDocs plugin (Zensical): run it again after upgrading Bokeh."""
    from .render import assets as files

    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files().items():
        (folder / name).write_bytes(content)
    docs = next((p for p in [folder, *folder.parents] if p.name == "docs"), None)
    prefix = folder.relative_to(docs).as_posix() if docs else folder.as_posix()
    click.echo(f"wrote {', '.join(files())} to {folder}; add to mkdocs.yml (or zensical.toml):\n"
               f"extra_javascript: [{prefix}/bokeh.min.js, {prefix}/layerheat.js]\n"
               f"extra_css: [{prefix}/layerheat.css]")


@main.command("convert-gguf")
@click.argument("gguf_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Dequantise GGUF_FILE into OUT_DIR (safetensors + tokenizer), loadable with from_pretrained."""
    from .models import convert_gguf as convert

    click.echo(f"converted to {convert(gguf_file, out_dir)}")


def _site(config_file: Path):
    """The plan settings and every valid spec of the site that `config_file` describes."""
    from mkdocs.config import load_config
    from mkdocs.structure.files import get_files

    from .directives import specs_in

    config = load_config(str(config_file))
    plugin = config.plugins.get("layerheat")
    if plugin is None:
        raise click.ClickException(f"{config_file} does not enable the layerheat plugin")
    specs = [s for f in get_files(config).documentation_pages() for s in specs_in(f.content_string, config.docs_dir)]
    return plugin.settings(config), specs


_config_option = click.option(
    "-f", "--config-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default="mkdocs.yml",
    show_default=True, help="The site's mkdocs.yml.",
)


@main.command()
@_config_option
@click.option("--device", help="Torch device for this run (overrides mkdocs.yml), e.g. cuda.")
@click.option("--refresh", is_flag=True, help="Recompute even what the cache holds.")
@click.option("--shard", metavar="I/N", help="Compute only shard I of N of the cache misses (a CI matrix job).")
def precompute(config_file: Path, device: str | None, refresh: bool, shard: str | None) -> None:
    """Compute every heatmap of a site into its cache, without building it.

    Run it once where the GPU is, then hand the cache directory over: every other build is fully cached.
    With --shard I/N, N jobs each compute a deterministic share into their own copy of the cache, merged
    afterwards with `layerheat cache merge` (docs/caching.md has a ready CI file).
    """
    import logging

    from . import plan

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings, specs = _site(config_file)
    settings.device = device or settings.device
    settings.refresh = settings.refresh or refresh
    if shard is not None:
        try:
            index, count = (int(x) for x in shard.split("/"))
            specs = plan.shard(specs, settings, index, count)
        except ValueError as exc:
            raise click.BadParameter(str(exc) if "shard" in str(exc) else "give it as I/N, e.g. 2/4",
                                     param_hint="--shard") from None
        click.echo(f"shard {index}/{count}: {len(specs)} heatmaps to compute", err=True)
    bar = _ProgressBar() if sys.stderr.isatty() else None
    token = plan.PROGRESS.set(bar)
    try:
        outcomes = plan.run(specs, settings, logging.getLogger("layerheat"))
    finally:
        plan.PROGRESS.reset(token)
        if bar is not None:
            bar.finish()
    failures = [f"{spec.model} / {spec.metric}: {o.error}" for spec, o in outcomes.items() if o.error]
    for failure in failures:
        click.echo(f"error: {failure}", err=True)
    if failures:
        sys.exit(1)


class _ProgressBar:
    """`precompute`'s bar on a terminal: one step per heatmap, labelled with the model being loaded or run."""

    def __init__(self) -> None:
        self.bar, self.model = None, "heatmaps"

    def __call__(self, event: str, value) -> None:
        if event == "misses":
            self.bar = click.progressbar(length=value, label="heatmaps", file=sys.stderr, show_pos=True)
        elif self.bar is not None and event == "model":
            self.bar.label = f"loading {value}"
            self.bar.render_progress()
            self.model = value
        elif self.bar is not None and event == "done" and value:
            self.bar.label = str(self.model)
            self.bar.update(value)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.render_finish()


@main.group()
def cache() -> None:
    """Inspect and tidy a site's heatmap cache."""


def _cache_dir(config_file: Path) -> Path:
    return _site(config_file)[0].cache_dir


@cache.command()
@_config_option
def info(config_file: Path) -> None:
    """Entries, size and models of the cache."""
    from collections import Counter

    from .cache import Cache

    store = Cache(_cache_dir(config_file), warn=lambda _: None)  # counted below as unreadable
    entries = store.entries()
    per_model = Counter(h.model if (h := store.get(p.stem)) else "(unreadable)" for p in entries)
    size = sum(f.stat().st_size for f in store.directory.rglob("*") if f.is_file()) if store.directory.exists() else 0
    click.echo(f"{store.directory}: {len(entries)} heatmaps, {size / 1024:,.0f} KiB in all")
    for model, count in sorted(per_model.items()):
        click.echo(f"  {model}: {count}")


@cache.command()
@_config_option
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
def merge(config_file: Path, folders: tuple[Path, ...]) -> None:
    """Fold the caches in FOLDERS (the shards of `precompute --shard`) into the site's cache."""
    from .cache import Cache

    store = Cache(_cache_dir(config_file))
    refusals = []
    for folder in folders:
        added, present, refused = store.merge(folder)
        refusals += refused
        click.echo(f"{folder}: {added} heatmaps added, {present} already there"
                   + (f", {len(refused)} refused" if refused else ""))
    for refusal in refusals:
        click.echo(f"refused: {refusal}", err=True)
    if refusals:
        sys.exit(1)


@cache.command()
@_config_option
def prune(config_file: Path) -> None:
    """Remove the entries that no page of the site uses, temporary files left by killed builds, and the rendered
    figures and records of pages (drawn again on the next build)."""
    import shutil

    from .cache import Cache
    from .plan import keys_for

    settings, specs = _site(config_file)
    store = Cache(settings.cache_dir)
    found = keys_for(specs, settings, store)
    used = set(found.keys.values())
    stale = [p for p in store.entries() if p.stem not in used]
    for path in stale:
        path.unlink()
    for drawn in ("rendered", "pages"):
        shutil.rmtree(store.directory / drawn, ignore_errors=True)
    converted = {store.converted_dir(f) for f in found.fingerprints.values()}
    for folder in (store.directory / "converted").glob("*"):
        if folder not in converted:
            shutil.rmtree(folder, ignore_errors=True)
    swept = store.sweep()
    click.echo(f"removed {len(stale)} unused heatmaps, kept {len(store.entries())}"
               + (f"; removed {swept} temporary files left by killed builds" if swept else ""))


@main.group()
def worker() -> None:
    """The warm worker of a site's cache (plugin option `warm_worker`)."""


@worker.command()
@_config_option
def status(config_file: Path) -> None:
    """Whether a worker is running for the site's cache, and its process id."""
    from . import worker as warm

    pid = warm.running(_cache_dir(config_file))
    click.echo(f"worker running, process {pid}" if pid else "no worker running")


@worker.command()
@_config_option
def stop(config_file: Path) -> None:
    """Stop the site's worker now (it also stops by itself after its idle time)."""
    from . import worker as warm

    click.echo("worker stopped" if warm.stop(_cache_dir(config_file)) else "no worker running")


@cache.command()
@_config_option
@click.confirmation_option(prompt="Remove every cached heatmap?")
def clear(config_file: Path) -> None:
    """Remove the whole cache directory."""
    import shutil

    directory = _cache_dir(config_file)
    shutil.rmtree(directory, ignore_errors=True)
    click.echo(f"removed {directory}")


@main.command()
@click.argument("heatmap_files", metavar="HEATMAP.json...", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="Print the lead, phenomena, highlights, bands, tokens and the text as JSON.")
@click.option("--color-range", type=click.Choice(COLOR_RANGES), default="full", show_default=True,
              help="The figure's colour range: `robust` says which cells its colours clip.")
@click.option("--templates", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder whose summary.md (panels.md) overrides the plugin's own.")
def summarize(heatmap_files: tuple[Path, ...], as_json: bool, color_range: str, templates: Path | None) -> None:
    """Print the written summary of a heatmap that `layerheat extract` wrote (Markdown, or JSON with --json).

    HEATMAP.json needs `tokens`, `layers` and `values[layer][token]` (null for a cell without a value);
    `metric`, `model`, `normalize` and `special` are used when present. Several files of one text (other
    metrics) are read together, as the panels of a `metric: [a, b, ...]` block: one summary of what they
    show together, then each one's own.
    """
    import json

    from .analysis import analyze
    from .heatmap import Heatmap
    from .labels import display_labels
    from .narrative import joint_json, summary_json
    from .render import Renderer

    panels, raw_known = [], True
    for path in heatmap_files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            heatmap = Heatmap.from_dict(data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise click.ClickException(f"{path}: not a heatmap JSON ({exc})") from None
        normalize = data.get("normalize") or "none"
        if normalize not in NORMALIZATIONS:
            raise click.ClickException(f"{path}: unknown normalize {normalize!r}")
        if panels and (heatmap.tokens != panels[0][0].tokens or normalize != panels[0][2]):
            raise click.ClickException(f"{path}: not the same text and normalize as {heatmap_files[0]}: "
                                       "heatmaps read together must share both")
        labels = display_labels(heatmap.tokens, heatmap.token_bytes)
        raw_known &= normalize == "none"  # a normalised file no longer holds the raw values
        findings = analyze(heatmap, heatmap.values, labels, normalize, normalize == "none", color_range)
        panels.append((heatmap, findings, normalize))
    narrative = Renderer(templates).narrative
    normalize = panels[0][2]
    if len(panels) > 1:
        pairs = [(h, f) for h, f, _ in panels]
        document = joint_json(pairs, narrative, normalize, raw_known) if as_json else None
        text = None if as_json else narrative.joint(pairs, normalize, raw_known) + "".join(
            f"\n---\n\n**({letter}) {h.metric}.** " + narrative.markdown(h, f, normalize, raw_known)
            for letter, (h, f) in zip("abcdefgh", pairs))
    else:
        heatmap, findings, _ = panels[0]
        document = summary_json(heatmap, findings, narrative, normalize, raw_known) if as_json else None
        text = None if as_json else narrative.markdown(heatmap, findings, normalize, raw_known)
    if as_json:
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    else:
        sys.stdout.write(text)
