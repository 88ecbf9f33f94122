"""Build speed of a site of heatmaps of the demo model, against the work nobody can avoid.

    .venv/bin/python bench/build.py [--model .models/SmolLM2-135M-Instruct] [--repeat 3] [--worker 600]
                                    [--pages 5 --per-page 8 | --sizes 40,200]

Generates P pages x K blocks (by default 5 x 8 = 40 heatmaps; attention and hidden-norm alternating, every
text distinct) in a temporary folder and measures, in one run: a cold build against a floor script (import
torch and transformers, load the model once, one forward pass per text); a warm build against a plain
`mkdocs build` of the same pages with the blocks as ordinary code fences and the plugin off; one block's
text edited then `mkdocs build`; and under `mkdocs serve`, the time from editing one block's text to the
rebuilt page being served. Prints a Markdown table of medians and ratios, the page weight (each heatmap's
embedded payload against its raw float32 values and token labels, read from the figure's JSON download;
BokehJS shipped once per site, not inlined) and how one more cold build's time splits into imports, model
load, forward passes, figures and MkDocs. `--sizes 40,200` does all of it for each size (40: 5 pages x 8,
200: 10 pages x 20; or `PxK`, e.g. `--sizes 5x8,10x20`) and prints one set of tables per size.

The site is built as a user with `warm_worker: 600` in mkdocs.yml builds it (`--worker 0`: without):
the builds hand their misses to a local worker process that keeps the model loaded. Also printed:
an edit then `mkdocs build` computed in the build's own process (LAYERHEAT_WORKER=0), and the first
edit after the worker has exited (it starts again and loads the model).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBJECTS = ["the river", "a small robot", "the old library", "my neighbour", "the night train", "a red kite",
            "the committee", "our garden"]
ADJECTIVES = ["a quiet", "the tall", "a patient", "the blue", "a tired", "the brave", "a curious", "the last"]
NOUNS = ["ferryman", "lighthouse", "teacher", "orchard", "fox", "clockmaker", "bakery", "sailor", "choir",
         "harbour"]
SIZES = {40: (5, 8), 200: (10, 20)}  # heatmaps -> (pages, blocks per page)
# the floor: what any tool computing these heatmaps pays; each phase timed, as JSON on stdout
FLOOR = """
import json, sys, time
start = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
imported = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
loaded = time.perf_counter()
with torch.inference_mode():
    for text in sys.argv[2:]:
        model(**tokenizer(text, return_tensors="pt"), use_cache=False)
done = time.perf_counter()
print(json.dumps({"imports": imported - start, "load": loaded - imported, "forward": done - loaded}))
"""
# `mkdocs build -q` in this process, with the plugin's stages timed (outermost calls only); a name the code no
# longer has is reported as missing (null), never an error. JSON on the last line of stdout.
PROFILE = r"""
import functools, importlib, inspect, json, time
from collections import defaultdict

totals, counts, depth, missing = defaultdict(float), defaultdict(int), defaultdict(int), []


def wrap(module_name, owner_name, name, group, inside=(), first=None):
    try:
        owner = importlib.import_module(module_name)
        if owner_name:
            owner = getattr(owner, owner_name)
        raw = inspect.getattr_static(owner, name)
    except (ImportError, AttributeError):
        return False
    kind = type(raw) if isinstance(raw, (staticmethod, classmethod)) else None
    original = raw.__func__ if kind else raw
    if not callable(original):
        return False
    pending = [first] if first else []

    @functools.wraps(original)
    def timed(*args, **kwargs):
        if depth[group]:
            return original(*args, **kwargs)
        depth[group] += 1
        start = time.perf_counter()
        try:
            while pending:  # patched on the first call, inside its time: what it imports is imported then
                pending.pop()()
            return original(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - start
            depth[group] -= 1
            totals[group] += elapsed
            counts[group] += 1
            for outer in inside:  # the share of this group's time spent inside another group's
                if depth[outer]:
                    totals[f"{group} in {outer}"] += elapsed

    setattr(owner, name, kind(timed) if kind else timed)
    return True


def need(group, *wrapped):
    if not any(wrapped):
        missing.append(group)


need("build", wrap("mkdocs.commands.build", "", "build", "build"))
need("plan", wrap("mkdocs_layerheat.plan", "", "run", "plan"))
need("render", *[wrap("mkdocs_layerheat.render", "Renderer", method, "render")
                 for method in ("figure", "comparison", "panels")])
need("summary", wrap("mkdocs_layerheat.render", "Renderer", "summary", "summary", inside=("render",)))
need("draw", wrap("mkdocs_layerheat.figures", "Figures", "_draw", "draw", first=lambda: need(
    "analysis", wrap("mkdocs_layerheat.analysis", "", "analyze", "analysis", inside=("render",)))))

from mkdocs.__main__ import cli

try:
    cli(["build", "-q"], prog_name="mkdocs", standalone_mode=False)
finally:
    print(json.dumps({"totals": totals, "counts": counts, "missing": sorted(set(missing))}))
"""


def subjects(k: int) -> list[str]:
    """`k` distinct subjects, always the same: the first 8, then adjective-noun pairs."""
    more = (f"{adjective} {noun}" for noun, adjective in itertools.product(NOUNS, ADJECTIVES))
    return list(itertools.islice(itertools.chain(SUBJECTS, more), k))


def texts(page: int, per_page: int = 8) -> list[str]:
    """The texts of one page's blocks: every text of the site differs (its page and subject)."""
    return [
        f"On page {page}, {subject} waited until {7 + i % 8} in the evening, then counted {3 * i + page} lanterns, "
        f"and the answer was {(3 * i + page) * 2}."
        for i, subject in enumerate(subjects(per_page))
    ]


def block(text: str, metric: str, fence: str = "layerheat") -> str:
    return f"```{fence}\nmodel: demo\ntext: '{text}'\nmetric: {metric}\nnormalize: global\n```\n"


def write_site(root: Path, model: Path, plugin: bool, pages: int, per_page: int, worker: int = 0) -> None:
    docs = root / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for page in range(1, pages + 1):
        body = "\n".join(
            block(t, "attention" if i % 2 == 0 else "hidden-norm", "layerheat" if plugin else "yaml")
            for i, t in enumerate(texts(page, per_page))
        )
        (docs / f"page{page}.md").write_text(f"# Page {page}\n\n{body}")
    (docs / "index.md").write_text("# Bench\n")
    plugins = f"\n  - layerheat:\n      models: {{demo: '{model}'}}\n      warm_worker: {worker}\n" if plugin else " []\n"
    (root / "mkdocs.yml").write_text(f"site_name: bench\nplugins:{plugins}")


def timed_output(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, str]:
    """Seconds the command took, and its standard output; a failure or a warning ends the benchmark."""
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**ENV, **(env or {})})
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or "WARNING" in result.stderr:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    return elapsed, result.stdout


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> float:
    return timed_output(cmd, cwd, env)[0]


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def build(root: Path, env: dict | None = None) -> float:
    return timed([sys.executable, "-m", "mkdocs", "build", "-q"], root, env)


def edited_page(pages: int) -> int:
    """The page whose first block the edits change (page 3 of 5)."""
    return (pages + 1) // 2


def edit(root: Path, page: int, n: int) -> str:
    """Change the text of one block; return a word that only the new text contains."""
    path = root / "docs" / f"page{page}.md"
    marker = f"Zanzibar{n}"
    path.write_text(re.sub(rf"text: 'On page {page}, [^']*'", f"text: 'On page {page}, {marker} rode the river home.'",
                           path.read_text(), count=1))
    return marker


def serve_edit(root: Path, page_number: int, repeat: int) -> list[float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mkdocs", "serve", "-a", f"127.0.0.1:{port}"],
                              cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    url = f"http://127.0.0.1:{port}/page{page_number}/"

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
            edit(root, page_number, 100 + n)
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


PAYLOAD = re.compile(r'<script type="application/json" class="layerheat-item"[^>]*>(.*?)</script>', re.S)
JSON_LINK = re.compile(r'<a\b[^>]*\bhref="([^"]+\.json)"[^>]*\bdownload\b', re.S)
BOKEH_SOURCE = ("Bokeh=", "Copyright (c) Anaconda, Inc., and Bokeh Contributors")  # as BokehJS is minified
MAX_PAGE = 1 << 20  # bytes: a page over it has a library inlined


def raw_size(data: dict) -> int:
    """A heatmap's raw size: its values as float32 cells and its token labels (UTF-8)."""
    tokens = data["tokens"]
    return len(data["layers"]) * len(tokens) * 4 + sum(len(str(t).encode()) for t in tokens)


def page_weight(root: Path) -> dict:
    """Per heatmap: its embedded payload's bytes and its raw size, the tokens and layers read from the figure's
    JSON download (the link next to the payload, in the built site); the pages' bytes; the BokehJS files."""
    site = root / "site"
    payloads, raws, pages, unmatched = [], [], [], 0
    for html_file in sorted(site.glob("page*/index.html")):
        html = html_file.read_text()
        pages.append(len(html.encode()))
        found = list(PAYLOAD.finditer(html))
        for n, match in enumerate(found):  # its link: after it, before the next payload (else before it)
            after = html[match.end():found[n + 1].start() if n + 1 < len(found) else len(html)]
            before = html[found[n - 1].end() if n else 0:match.start()]
            links = JSON_LINK.findall(after) or JSON_LINK.findall(before)[-1:]
            if not links:
                unmatched += 1
                continue
            raw = 0
            for href in links:  # a block of several panels: every matrix it embeds
                target = (html_file.parent / urllib.parse.unquote(urllib.parse.urlsplit(href).path)).resolve()
                raw += raw_size(json.loads(target.read_text(encoding="utf-8")))
            payloads.append(len(match.group(1).encode()))
            raws.append(raw)
    if not payloads:
        sys.exit("no heatmap payload with a JSON download link found in the built pages")
    bokeh = sorted(p for p in (site / "assets" / "layerheat").rglob("bokeh*.js") if p.is_file())
    every_page = sorted(site.rglob("*.html"))
    inlined = [str(p.relative_to(site)) for p in every_page
               if p.stat().st_size >= MAX_PAGE or any(s in p.read_text(errors="replace") for s in BOKEH_SOURCE)]
    ratios = [p / r for p, r in zip(payloads, raws)]
    return {"payload": statistics.median(payloads), "raw": statistics.median(raws), "ratio": statistics.median(ratios),
            "ratio_max": max(ratios), "heatmaps": len(payloads), "unmatched": unmatched,
            "page": statistics.median(pages), "largest_page": max(p.stat().st_size for p in every_page),
            "pages": len(every_page), "bokeh": {str(p.relative_to(site)): p.stat().st_size for p in bokeh},
            "inlined": inlined}


def cost_split(root: Path) -> dict:
    """One more cold build, in a process that times the plugin's stages (see PROFILE)."""
    subprocess.run(["rm", "-rf", str(root / ".cache")], check=True)
    elapsed, stdout = timed_output([sys.executable, "-c", PROFILE], root)
    return {"total": elapsed, **last_json(stdout)}


# as an installed package runs: its bytecode cached (pip compiles a wheel's modules; PYTHONDONTWRITEBYTECODE would
# make every build of a source checkout compile the plugin again, a cost plain MkDocs never pays)
ENV = {**{k: v for k, v in os.environ.items() if k not in ("LAYERHEAT_WORKER", "PYTHONDONTWRITEBYTECODE")},
       "NO_MKDOCS_2_WARNING": "1"}
QUICK_SAMPLES = 15  # warm and plain builds: under a second each, so more samples, taken in turn


def kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def split_table(split: dict, floor: dict, n_heatmaps: int, worker: int) -> list[str]:
    """The cold build's time by part: the floor script's phases, then what the instrumented build measured."""
    t, counts, missing = split["totals"], split["counts"], set(split["missing"])
    total = split["total"]

    def have(*groups: str) -> bool:
        return not missing & set(groups) and all(g in counts for g in groups)

    floor_sum = floor["imports"] + floor["load"] + floor["forward"]
    render = t["render"] - t.get("summary in render", 0.0) - t.get("analysis in render", 0.0) if have("render") else None
    other_draw = None
    if have("draw", "analysis", "render", "summary"):  # _draw's own code: labels, normalizing, comparing
        other_draw = t["draw"] - t["analysis"] - t["render"] - (t["summary"] - t.get("summary in render", 0.0)) \
            + t.get("analysis in render", 0.0)
    where = "the warm worker's start, " if worker else ""
    rows = [
        ("imports (torch + transformers)", floor["imports"]),
        ("model load", floor["load"]),
        (f"forward passes ({n_heatmaps})", floor["forward"]),
        (f"planning and extraction beyond the floor ({where}hooks, reductions, cache writes)",
         t["plan"] - floor_sum if have("plan") else None),
        ("figures: analysis (`analyze`)", t["analysis"] if have("draw", "analysis") else None),
        ("figures: written summaries (`Renderer.summary`)", t["summary"] if have("summary") else None),
        ("figures: rendering (the data for the loader, the static SVG, templates; summaries excluded)", render),
        ("figures: the rest of `Figures._draw`", other_draw),
        ("MkDocs (the rest: start, config, Markdown, theme, files)",
         total - t["plan"] - t["draw"] if have("plan", "draw") else None),
    ]
    lines = [f"Cold build split (one more cold build, {total:.2f} s, its plugin stages timed in process; imports, "
             "load and forward passes from the floor script)\n",
             "| part | seconds | share |", "| --- | ---: | ---: |"]
    for name, seconds in rows:
        lines.append(f"| {name} | n/a | n/a |" if seconds is None else
                     f"| {name} | {seconds:.2f} | {100 * seconds / total:.0f}% |")
    lines.append(f"| cold build | {total:.2f} | 100% |")
    figures = counts.get("draw", 0)
    if render is not None and figures:  # the target: rendering alone, summaries and analysis apart
        both = (1000 * (t["analysis"] + t["summary"]) / figures) if have("analysis", "summary") else None
        lines.append(f"\nPython rendering per figure: {1000 * render / figures:.2f} ms (the rendering row; analysis "
                     "and summary, apart: " + (f"{both:.1f} ms" if both is not None else "n/a")
                     + f"), over {figures} figures drawn.")
    else:
        lines.append("\nPython rendering per figure: n/a")
    return lines


def parse_sizes(text: str | None, pages: int, per_page: int) -> list[tuple[int, int]]:
    """`40,200` or `5x8,10x20` -> [(pages, blocks per page)]; none: the --pages and --per-page."""
    if not text:
        return [(pages, per_page)]
    sizes = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        if "x" in item:
            p, k = (int(x) for x in item.split("x"))
        elif int(item) in SIZES:
            p, k = SIZES[int(item)]
        else:
            k = 8 if int(item) <= 80 else 20
            p = int(item) // k
            if p * k != int(item):
                sys.exit(f"--sizes {item}: not {k} blocks per page; give it as PAGESxBLOCKS, e.g. 10x20")
        if p < 1 or k < 1:
            sys.exit(f"--sizes {item}: at least one page of one block")
        sizes.append((p, k))
    return sizes


def measure(model: Path, pages: int, per_page: int, repeat: int, worker: int) -> None:
    n = pages * per_page
    all_texts = [t for page in range(1, pages + 1) for t in texts(page, per_page)]
    assert len(set(all_texts)) == n, "every text of the site must differ"
    edited = edited_page(pages)
    with tempfile.TemporaryDirectory() as tmp:
        site, plain = Path(tmp, "site"), Path(tmp, "plain")
        write_site(site, model, plugin=True, pages=pages, per_page=per_page, worker=worker)
        write_site(plain, model, plugin=False, pages=pages, per_page=per_page)
        floor, phases, cold = [], [], []
        for _ in range(repeat):  # in turn, as the warm and plain builds below
            elapsed, stdout = timed_output([sys.executable, "-c", FLOOR, str(model), *all_texts], site)
            floor.append(elapsed)
            phases.append(last_json(stdout))
            stop_worker(site)  # the last cold build's: each cold build starts its own
            subprocess.run(["rm", "-rf", str(site / ".cache")], check=True)
            cold.append(build(site))
        stop_worker(site)
        split = cost_split(site)
        build(plain)  # its bytecode and the file cache as warm as the site's
        warm, plain_times = [], []
        for _ in range(max(QUICK_SAMPLES, repeat)):  # in turn, so that a slow spell of the machine hits both
            warm.append(build(site))
            plain_times.append(build(plain))
        edits, in_process, restarts = [], [], []
        for k in range(repeat):
            edit(site, edited, k)
            edits.append(build(site))
            edit(site, edited, 50 + k)
            in_process.append(build(site, {"LAYERHEAT_WORKER": "0"}))
            if worker:
                stop_worker(site)  # as after `warm_worker` idle seconds
                edit(site, edited, 70 + k)
                restarts.append(build(site))
        weight = page_weight(site)
        serve = serve_edit(site, edited, repeat)
        stop_worker(site)

    med = statistics.median
    floor_phases = {key: med(p[key] for p in phases) for key in ("imports", "load", "forward")}
    rows = [
        (f"cold build ({n} heatmaps, empty cache)", med(cold), f"floor: load + {n} forward passes", med(floor), 1.15),
        ("warm build (all cached)", med(warm), "plain mkdocs build, plugin off", med(plain_times), 1.3),
        ("edit one block, then mkdocs build", med(edits), "mkdocs-jupyter after editing a notebook", 7.0, 0.5),
        ("mkdocs serve: edit to rebuilt page", med(serve), "target", 2.0, 1.0),
    ]
    out = [f"## {n} heatmaps\n",
           f"Demo model {model.name}, {n} heatmaps on {pages} page{'s' * (pages != 1)} ({per_page} per page), "
           f"median of {repeat} run{'s' * (repeat != 1)} (warm and plain builds: {len(warm)}, taken in turn)\n",
           "| measurement | seconds | against | seconds | ratio | target |",
           "| --- | ---: | --- | ---: | ---: | ---: |"]
    for name, value, other, reference, target in rows:
        out.append(f"| {name} | {value:.2f} | {other} | {reference:.2f} | {value / reference:.2f}x | <= {target}x |")
    for what, mine, theirs in (("Cold build over floor", cold, floor), ("Warm over plain", warm, plain_times)):
        pairs = sorted(a / b for a, b in zip(mine, theirs))  # each measured next to the other: a slow spell hits both
        out.append(f"\n{what}, pair by pair (taken in turn): median {med(pairs):.2f}x, from {pairs[0]:.2f}x to "
                   f"{pairs[-1]:.2f}x over {len(pairs)} pairs.")
    bokeh = weight["bokeh"]
    pages_ok = not weight["inlined"]
    out += ["", f"Page weight ({weight['heatmaps']} heatmaps, medians)\n",
            "| page weight | size | target |", "| --- | ---: | ---: |",
            f"| one heatmap's payload in its page (`layerheat-item` script) | {kib(weight['payload'])} | |",
            f"| its raw size: float32 values + token labels (UTF-8), from its JSON download | {kib(weight['raw'])} | |",
            f"| payload / raw (the largest: {weight['ratio_max']:.2f}x) | {weight['ratio']:.2f}x | <= 2x |",
            f"| a page with {per_page} heatmaps | {kib(weight['page'])} | |",
            f"| BokehJS, shipped once per site ({', '.join(Path(p).name for p in bokeh) or 'none found'}) | "
            f"{kib(sum(bokeh.values()))} | once |",
            f"| largest of the site's {weight['pages']} pages; BokehJS inlined in none | {kib(weight['largest_page'])}"
            f"; {'none' if pages_ok else 'INLINED in ' + ', '.join(weight['inlined'])} | < 1 MiB, none |"]
    if weight["unmatched"]:
        out.append(f"\n{weight['unmatched']} payloads had no JSON download link next to them: left out.")
    out += [""] + split_table(split, floor_phases, n, worker)
    if worker:
        out.append(f"\nWith `warm_worker: {worker}`: the builds hand their misses to a worker process that keeps the "
                   f"model loaded. An edit then `mkdocs build` computed in the build's own process instead "
                   f"(LAYERHEAT_WORKER=0): {med(in_process):.2f} s; the first edit after the worker has exited "
                   f"(it starts again and loads the model): {med(restarts):.2f} s.")
    out.append(json.dumps({"heatmaps": n, "pages": pages, "per_page": per_page, "cold": cold, "floor": floor,
                           "floor_phases": phases, "warm": warm, "plain": plain_times, "edit": edits,
                           "edit_in_process": in_process, "edit_worker_restarted": restarts, "serve": serve,
                           "split": split, "weight": weight}))
    print("\n".join(out) + "\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / ".models" / "SmolLM2-135M-Instruct")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", type=int, default=600, help="the site's warm_worker option (0: no worker)")
    parser.add_argument("--pages", type=int, default=5, help="pages of the site (default 5)")
    parser.add_argument("--per-page", type=int, default=8, help="heatmap blocks per page (default 8)")
    parser.add_argument("--sizes", help="measure several sites in one run: heatmaps (40: 5x8, 200: 10x20) or "
                                        "PAGESxBLOCKS, comma-separated, e.g. 40,200; overrides --pages/--per-page")
    args = parser.parse_args()
    for pages, per_page in parse_sizes(args.sizes, args.pages, args.per_page):
        measure(args.model.resolve(), pages, per_page, args.repeat, args.worker)


if __name__ == "__main__":
    main()
