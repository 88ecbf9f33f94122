"""Build time of one 20-heatmap site of the demo model under each builder, cold (empty heatmap cache) and warm.

    .venv/bin/python bench/builders.py [--model .models/SmolLM2-135M-Instruct]

The site (4 pages x 5 blocks, attention and hidden-norm alternating) is written once with a configuration that
every builder reads: the plugin for MkDocs and ProperDocs, the Markdown extension and `layerheat assets` for
Zensical, one cache folder. For each builder: a cold build (cache and output removed), then a warm one (cache
kept; Zensical with --clean, so that it renders every page again rather than serving its own HTML cache).
Prints a Markdown table; ratios are to the same builder's plain build of the pages with the blocks as ordinary
code fences.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SUBJECTS = ["the river", "a small robot", "the old library", "my neighbour", "the night train"]
ENV = {"NO_MKDOCS_2_WARNING": "1", "PATH": f"{BIN}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}


def write_site(root: Path, model: Path, fence: str) -> None:
    docs = root / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for page in range(1, 5):
        blocks = [f"```{fence}\nmodel: demo\ntext: 'On page {page}, {s} waited until {7 + i} and counted {3 * i + page} "
                  f"lanterns.'\nmetric: {'attention' if i % 2 == 0 else 'hidden-norm'}\n```\n"
                  for i, s in enumerate(SUBJECTS)]
        (docs / f"page{page}.md").write_text(f"# Page {page}\n\n" + "\n".join(blocks))
    (docs / "index.md").write_text("# Bench\n")
    subprocess.run([str(BIN / "layerheat"), "assets", str(docs / "assets" / "layerheat")], check=True,
                   capture_output=True)
    options = f"models: {{demo: '{model}'}}\n      cache_dir: .layerheat/cache"
    (root / "mkdocs.yml").write_text(
        "site_name: bench\ntheme: {name: material, font: false}\n"
        "extra_javascript: [assets/layerheat/bokeh.min.js, assets/layerheat/layerheat.js]\n"
        "extra_css: [assets/layerheat/layerheat.css]\n"
        f"markdown_extensions:\n  - layerheat:\n      {options}\nplugins:\n  - layerheat:\n      {options}\n")


def build(root: Path, builder: str, *args: str) -> float:
    start = time.perf_counter()
    config = ("-f", "mkdocs.yml") if builder == "properdocs" else ()  # ProperDocs looks for properdocs.yml first
    result = subprocess.run([str(BIN / builder), "build", *config, *args], cwd=root, capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or "WARNING" in result.stderr:
        sys.exit(f"{builder} build failed:\n{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=ROOT / ".models" / "SmolLM2-135M-Instruct")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        site, plain = Path(tmp) / "site", Path(tmp) / "plain"
        write_site(site, args.model.resolve(), "layerheat")
        write_site(plain, args.model.resolve(), "yaml")
        for builder in ("mkdocs", "properdocs", "zensical"):
            clean = ("--clean",) if builder == "zensical" else ()
            base = statistics.median(build(plain, builder, *clean) for _ in range(args.repeat))
            cold = []
            for _ in range(args.repeat):
                shutil.rmtree(site / ".layerheat", ignore_errors=True)
                shutil.rmtree(site / ".cache", ignore_errors=True)
                shutil.rmtree(site / "site", ignore_errors=True)
                cold.append(build(site, builder, *clean))
            warm = statistics.median(build(site, builder, *clean) for _ in range(args.repeat))
            cold = statistics.median(cold)
            rows.append((builder, base, cold, warm))
    print("| builder | plain build (s) | cold (s) | warm (s) | warm / plain |")
    print("| --- | --- | --- | --- | --- |")
    for builder, base, cold, warm in rows:
        print(f"| {builder} | {base:.2f} | {cold:.2f} | {warm:.2f} | {warm / base:.2f}x |")


if __name__ == "__main__":
    main()
