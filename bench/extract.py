"""Time and peak memory of attention extraction on the demo model, against what other tools do.

    .venv/bin/python bench/extract.py                  # 512, 1024, 2048, 4096 tokens
    .venv/bin/python bench/extract.py --tokens 512 1024 --skip-b-above 2048

Three configurations, each measured in a fresh Python process (so that one's memory cannot hide
in another's peak), at each length:

(a) a plain forward pass with SDPA attention and no weights: the floor (as transformers runs it by
    default, with the logits of every position; (a') the same with the last position's logits only,
    `logits_to_keep=1`, as (c) asks for, since it computes its own);
(b) `output_attentions=True` with eager attention: every layer's `[heads, T, T]` weights returned
    at once, which is what tools that collect attention do;
(c) this package: `extract(..., ["attention"])`, attention received reduced inside the forward
    pass, chunk of queries by chunk of queries.

Columns: the forward pass (c: the extraction, tokenizing included) in seconds, the whole process
in seconds (Python, imports and model load included), and the process's peak resident memory
(`ru_maxrss`, whole process).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".models" / "SmolLM2-135M-Instruct"

PARAGRAPH = (
    "The residual stream of a transformer carries each token's representation from layer to layer. "
    "Attention heads move information between positions, and the MLP layers transform it in place. "
    "Interpretability tools read these quantities to explain what a language model does with a text, "
    "from the first embedding to the final prediction of the next token. "
)

CHILD = r"""
import json, resource, sys, time
start = time.perf_counter()
import torch
config, n, model_dir, text_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
text = open(text_file, encoding="utf-8").read()
torch.set_grad_enabled(False)
if config == "c":
    from mkdocs_layerheat import models
    from mkdocs_layerheat.extract import extract
    loaded = models.load(refs.resolve(model_dir), eager_attention=True)
    t0 = time.perf_counter()
    heatmap = extract(loaded, text, ["attention"], max_tokens=n)["attention"]
    compute = time.perf_counter() - t0
    assert heatmap.values.shape == (30, n), heatmap.values.shape
else:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager" if config == "b" else "sdpa"
    ).eval()
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    assert ids.shape[1] == n, ids.shape
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model(input_ids=ids, output_attentions=config == "b", logits_to_keep=1 if config == "f" else 0)
    if config == "b":
        assert len(out.attentions) == 30 and out.attentions[0].shape[-1] == n
    compute = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
print(json.dumps({"compute": compute, "process": time.perf_counter() - start, "peak": peak}))
"""


def text_of(n: int, tokenizer) -> str:
    """A text of exactly `n` tokens (BOS included, as the tokenizer adds it)."""
    ids = tokenizer(PARAGRAPH * (n // 40 + 2))["input_ids"]
    k = n
    for _ in range(50):
        text = tokenizer.decode(ids[:k], skip_special_tokens=True)
        got = len(tokenizer(text)["input_ids"])
        if got == n:
            return text
        k += n - got
    raise RuntimeError(f"no text of exactly {n} tokens")


def measure(config: str, n: int, text_file: Path, timeout: int) -> dict | None:
    try:
        run = subprocess.run(
            [sys.executable, "-c", CHILD, config, str(n), str(DEMO), str(text_file)],
            capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout} s"}
    if run.returncode != 0:
        return {"error": (run.stderr.strip().splitlines() or ["killed"])[-1][:80]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--skip-b-above", type=int, default=2048,
                        help="do not run (b) above this length (its weights alone: 30 x 9 x T^2 x 4 bytes)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(DEMO)
    tmp = ROOT / ".cache" / "bench"
    tmp.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for n in args.tokens:
        text_file = tmp / f"text-{n}.txt"
        text_file.write_text(text_of(n, tokenizer), encoding="utf-8")
        for config in "afbc":
            if config == "b" and n > args.skip_b_above:
                gib = 30 * 9 * n * n * 4 / 2**30
                results[f"{config}{n}"] = {"error": f"not run: its weights alone take {gib:.0f} GiB"}
            else:
                results[f"{config}{n}"] = measure(config, n, text_file, args.timeout)
            print(f"{n} {config}: {results[f'{config}{n}']}", file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(table(results, args.tokens))


def table(results: dict, lengths: list[int]) -> str:
    def cell(r: dict | None) -> str:
        if r is None or "error" in r:
            return (r or {}).get("error", "failed")
        return f"{r['compute']:.1f} s ({r['process']:.1f} s) / {r['peak'] / 2**30:.2f} GiB"

    def ratio(n: int, base: str) -> str:
        a, c = results.get(f"{base}{n}"), results.get(f"c{n}")
        if not a or not c or "error" in a or "error" in c:
            return ""
        return f"{c['compute'] / a['compute']:.1f}x / {c['peak'] / a['peak']:.2f}x"

    lines = [
        "| tokens | (a) plain forward, SDPA | (a') same, last logits only | (b) output_attentions=True "
        "| (c) layerheat `attention` | (c) / (a) | (c) / (a') |",
        "| ---: | --- | --- | --- | --- | --- | --- |",
    ]
    for n in lengths:
        cells = " | ".join(cell(results.get(f"{k}{n}")) for k in "afbc")
        lines.append(f"| {n} | {cells} | {ratio(n, 'a')} | {ratio(n, 'f')} |")
    lines.append("")
    lines.append("Each cell: forward pass (whole process) / peak RSS of the process; ratios: time / peak RSS.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
