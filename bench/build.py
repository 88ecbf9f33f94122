"""Build speed of a site with 40 heatmaps of the demo model, against the work nobody can avoid.

    .venv/bin/python bench/build.py [--model .models/SmolLM2-135M-Instruct] [--repeat 3] [--worker 600]

Generates 5 pages x 8 blocks (attention and hidden-norm alternating) in a temporary folder and
measures, in one run: a cold build against a floor script (import torch and transformers, load
the model once, one forward pass per text); a warm build against a plain `mkdocs build` of the
same pages with the blocks as ordinary code fences and the plugin off; one block's text edited
then `mkdocs build`; and under `mkdocs serve`, the time from editing one block's text to the
rebuilt page being served. Prints a Markdown table of medians and ratios, and the page weight.

The site is built as a user with `warm_worker: 600` in mkdocs.yml builds it (`--worker 0`: without):
the builds hand their misses to a local worker process that keeps the model loaded. Also printed:
an edit then `mkdocs build` computed in the build's own process (LAYERHEAT_WORKER=0), and the first
edit after the worker has exited (it starts again and loads the model).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBJECTS = ["the river", "a small robot", "the old library", "my neighbour", "the night train", "a red kite",
            "the committee", "our garden"]
FLOOR = """
import sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
with torch.inference_mode():
    for text in sys.argv[2:]:
        model(**tokenizer(text, return_tensors="pt"), use_cache=False)
"""


def texts(page: int) -> list[str]:
    return [
        f"On page {page}, {subject} waited until {7 + i} in the evening, then counted {3 * i + page} lanterns, "
        f"and the answer was {(3 * i + page) * 2}."
        for i, subject in enumerate(SUBJECTS)
    ]


def block(text: str, metric: str, fence: str = "layerheat") -> str:
    return f"```{fence}\nmodel: demo\ntext: '{text}'\nmetric: {metric}\nnormalize: global\n```\n"


def write_site(root: Path, model: Path, plugin: bool, worker: int = 0) -> None:
    docs = root / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for page in range(1, 6):
        body = "\n".join(
            block(t, "attention" if i % 2 == 0 else "hidden-norm", "layerheat" if plugin else "yaml")
            for i, t in enumerate(texts(page))
        )
        (docs / f"page{page}.md").write_text(f"# Page {page}\n\n{body}")
    (docs / "index.md").write_text("# Bench\n")
    plugins = f"\n  - layerheat:\n      models: {{demo: '{model}'}}\n      warm_worker: {worker}\n" if plugin else " []\n"
    (root / "mkdocs.yml").write_text(f"site_name: bench\nplugins:{plugins}")


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**ENV, **(env or {})})
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or "WARNING" in result.stderr:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    return elapsed


def build(root: Path, env: dict | None = None) -> float:
    return timed([sys.executable, "-m", "mkdocs", "build", "-q"], root, env)


def edit(root: Path, n: int) -> str:
    """Change the text of one block; return a word that only the new text contains."""
    page = root / "docs" / "page3.md"
    marker = f"Zanzibar{n}"
    page.write_text(re.sub(r"text: 'On page 3, [^']*'", f"text: 'On page 3, {marker} rode the river home.'",
                           page.read_text(), count=1))
    return marker


def serve_edit(root: Path, repeat: int) -> list[float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mkdocs", "serve", "-a", f"127.0.0.1:{port}"],
                              cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    url = f"http://127.0.0.1:{port}/page3/"

    def page() -> str:
        """The page's heatmap payloads (the rest of a served page changes with every request)."""
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return "".join(re.findall(r'class="layerheat-item"[^>]*>.*?</script>', response.read().decode(), re.S))
        except OSError:
            return ""

    try:
        deadline = time.time() + 300
        while not page():
            if time.time() > deadline:
                sys.exit("mkdocs serve did not come up")
            time.sleep(0.2)
        times = []
        for n in range(repeat + 1):  # the first edit loads the model into the serve process: not counted
            before = page()
            edit(root, 100 + n)
            start = time.perf_counter()
            while page() in (before, ""):
                if time.perf_counter() - start > 120:
                    sys.exit("the edited page was not rebuilt")
                time.sleep(0.05)
            if n:
                times.append(time.perf_counter() - start)
            time.sleep(1.0)
        return times
    finally:
        server.terminate()
        server.wait()


def stop_worker(root: Path) -> None:
    from mkdocs_layerheat import worker

    worker.stop(root / ".cache" / "layerheat")


def page_weight(root: Path) -> tuple[int, int, int, int]:
    """Median bytes of one heatmap's embedded payload, of its raw float32 values, of a page; BokehJS bytes."""
    payloads, raw, pages = [], [], []
    for html_file in sorted((root / "site").glob("page*/index.html")):
        html = html_file.read_text()
        pages.append(len(html.encode()))
        for found in re.findall(r'class="layerheat-item"[^>]*>(.*?)</script>', html, re.S):
            payloads.append(len(found.encode()))
            labels = re.search(r'\["labels",\[(.*?)\]\]', found)
            tokens = labels.group(1).count('","') + 1 if labels else 0
            raw.append(30 * tokens * 4)
    bokeh = (root / "site" / "assets" / "layerheat" / "bokeh.min.js").stat().st_size
    return int(statistics.median(payloads)), int(statistics.median(raw)), int(statistics.median(pages)), bokeh


ENV = {**{k: v for k, v in os.environ.items() if k != "LAYERHEAT_WORKER"}, "NO_MKDOCS_2_WARNING": "1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / ".models" / "SmolLM2-135M-Instruct")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", type=int, default=600, help="the site's warm_worker option (0: no worker)")
    args = parser.parse_args()
    model = args.model.resolve()
    all_texts = [t for page in range(1, 6) for t in texts(page)]
    with tempfile.TemporaryDirectory() as tmp:
        site, plain = Path(tmp, "site"), Path(tmp, "plain")
        write_site(site, model, plugin=True, worker=args.worker)
        write_site(plain, model, plugin=False)
        floor = [timed([sys.executable, "-c", FLOOR, str(model), *all_texts], site) for _ in range(args.repeat)]
        cold = []
        for _ in range(args.repeat):
            subprocess.run(["rm", "-rf", str(site / ".cache")], check=True)
            cold.append(build(site))
        warm = [build(site) for _ in range(args.repeat)]
        plain_times = [build(plain) for _ in range(args.repeat)]
        edits, in_process, restarts = [], [], []
        for n in range(args.repeat):
            edit(site, n)
            edits.append(build(site))
            edit(site, 50 + n)
            in_process.append(build(site, {"LAYERHEAT_WORKER": "0"}))
            if args.worker:
                stop_worker(site)  # as after `warm_worker` idle seconds
                edit(site, 70 + n)
                restarts.append(build(site))
        weight = page_weight(site)
        serve = serve_edit(site, args.repeat)
        stop_worker(site)

    med = statistics.median
    rows = [
        ("cold build (40 heatmaps, empty cache)", med(cold), "floor: load + 40 forward passes", med(floor), 1.3),
        ("warm build (all cached)", med(warm), "plain mkdocs build, plugin off", med(plain_times), 1.5),
        ("edit one block, then mkdocs build", med(edits), "mkdocs-jupyter after editing a notebook", 7.0, 0.5),
        ("mkdocs serve: edit to rebuilt page", med(serve), "target", 2.0, 1.0),
    ]
    print(f"Demo model {model.name}, {len(all_texts)} heatmaps on 5 pages, median of {args.repeat} runs\n")
    print("| measurement | seconds | against | seconds | ratio | target |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for name, value, other, reference, target in rows:
        ratio = value / reference
        print(f"| {name} | {value:.2f} | {other} | {reference:.2f} | {ratio:.2f}x | <= {target}x |")
    payload, raw, page, bokeh = weight
    print(f"\nPage weight: one heatmap adds {payload / 1024:.1f} KiB to its page (its raw float32 values: "
          f"{raw / 1024:.1f} KiB); a page with 8 heatmaps weighs {page / 1024:.0f} KiB; BokehJS "
          f"({bokeh / 1024:.0f} KiB) is served once per site, not in the pages.")
    if args.worker:
        print(f"\nWith `warm_worker: {args.worker}`: the builds hand their misses to a worker process that keeps the "
              f"model loaded. An edit then `mkdocs build` computed in the build's own process instead "
              f"(LAYERHEAT_WORKER=0): {med(in_process):.2f} s; the first edit after the worker has exited "
              f"(it starts again and loads the model): {med(restarts):.2f} s.")
    print(json.dumps({"cold": cold, "floor": floor, "warm": warm, "plain": plain_times, "edit": edits,
                      "edit_in_process": in_process, "edit_worker_restarted": restarts, "serve": serve}))


if __name__ == "__main__":
    main()
