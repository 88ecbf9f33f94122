"""The `layerheat` command: extract a heatmap to JSON, convert a GGUF model."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .heatmap import NORMALIZATIONS
from .metrics import METRICS


@click.group()
def main() -> None:
    """Token-by-layer heatmaps of language models."""


@main.command()
@click.option("--model", required=True, help="Local directory, .gguf file or hub id owner/name[@revision].")
@click.option("--text", help="The text to run through the model.")
@click.option("--text-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Read the text from a file.")
@click.option("--metric", type=click.Choice(sorted(METRICS)), default="attention", show_default=True)
@click.option("--normalize", type=click.Choice(NORMALIZATIONS), default="none", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--max-tokens", type=int, default=4096, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write JSON here (default: stdout).")
def extract(model, text, text_file, metric, normalize, device, max_tokens, output) -> None:
    """Run MODEL on a text and write the heatmap as JSON (values[layer][token], bottom layer first)."""
    from . import extract as extraction
    from .models import ModelError, load, resolve

    if (text is None) == (text_file is None):
        raise click.UsageError("give exactly one of --text and --text-file")
    if text_file is not None:
        text = text_file.read_text(encoding="utf-8")
    try:
        loaded = load(resolve(model), device, eager_attention=METRICS[metric].site == "attention")
        heatmap = extraction.extract(loaded, text, [metric], max_tokens)[metric]
    except (ModelError, extraction.ExtractionError) as exc:
        raise click.ClickException(str(exc)) from None
    data = heatmap.to_json(normalize)
    if output:
        output.write_text(data + "\n", encoding="utf-8")
    else:
        sys.stdout.write(data + "\n")


@main.command("convert-gguf")
@click.argument("gguf_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Dequantise GGUF_FILE into OUT_DIR (safetensors + tokenizer), loadable with from_pretrained."""
    from .models import convert_gguf as convert

    click.echo(f"converted to {convert(gguf_file, out_dir)}")
