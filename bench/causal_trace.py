"""Time of a causal trace on the demo model: ROME's loop against this package.

    .venv/bin/python bench/causal_trace.py                    # samples 3, restore hidden
    .venv/bin/python bench/causal_trace.py --samples 10 --restore mlp

(a) ROME's `calculate_hidden_flow` as `experiments/causal_trace.py` runs it (tests/trace_reference.py):
    one forward pass of `samples + 1` copies of the text per cell, the model's own logits at every
    position;
(b) this package's `causal-trace`: the cells of one layer batched over tokens, each run starting at
    the first restored block from the noised run's own input to it, stopped after the last block.

Both on the same model, in one process, one after the other; the table gives the seconds, (b)'s share
of (a)'s time, and the largest difference between their cells.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".models" / "SmolLM2-135M-Instruct"
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", default="The Eiffel Tower is located in the city of")
    parser.add_argument("--subject", default="Eiffel Tower")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--restore", choices=("hidden", "mlp", "attn"), default="hidden")
    args = parser.parse_args()

    import numpy as np
    import torch
    import trace_reference as ref
    from transformers import AutoModelForCausalLM

    from mkdocs_layerheat import models, refs
    from mkdocs_layerheat.catalog import MetricRequest
    from mkdocs_layerheat.extract import extract

    torch.manual_seed(0)
    loaded = models.load(refs.resolve(str(DEMO)))
    plain = AutoModelForCausalLM.from_pretrained(DEMO, attn_implementation="eager", dtype=torch.float32).eval()
    request = MetricRequest("causal-trace", subject=args.subject, samples=args.samples, restore=args.restore)
    extract(loaded, args.text, [MetricRequest("causal-trace", subject=args.subject, samples=1, layers=(1,))])  # warm-up

    start = time.perf_counter()
    heatmap = extract(loaded, args.text, [request])[request]
    ours = time.perf_counter() - start

    start = time.perf_counter()
    table, _, _ = ref.causal_trace(plain, heatmap.provenance["token_ids"], tuple(heatmap.extras["subject"]),
                                   heatmap.extras["answer_id"], samples=args.samples, kind=args.restore)
    rome = time.perf_counter() - start

    n_layers, n_tokens = heatmap.values.shape
    print(f"causal trace of {n_tokens} tokens x {n_layers} layers, {args.samples} samples, restore {args.restore}, "
          f"{torch.get_num_threads()} threads")
    print("| method | seconds | share of (a) | max abs difference |")
    print("| --- | --- | --- | --- |")
    print(f"| (a) ROME's loop | {rome:.1f} | 1.00 | |")
    print(f"| (b) mkdocs-layerheat | {ours:.1f} | {ours / rome:.2f} | {np.abs(heatmap.values - table).max():.1e} |")


if __name__ == "__main__":
    main()
