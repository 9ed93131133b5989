"""WikiText-2 (the whole test set in windows of 512, as `prunekit bench --preset full` reports it) and the held-out
perplexity of every bench domain (French included) of compress checkpoints, next to the dense default model, in
one process: the quality columns of docs/results/compress-levers.md.

    .venv/bin/python lab/quality.py runs/a runs/b ... [--threads 2] [--out table.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from prunekit.bench.quality import evaluate_model

from prunekit.env import data_root, set_threads
from prunekit.loading import load_model, load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=8, help="held-out windows per domain")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    set_threads(a.threads)
    rows = {}
    for name in ["default", *a.checkpoints]:
        model, _, source = load_model(name)
        tok = load_tokenizer(source)
        t0 = time.time()
        with torch.no_grad():
            r = evaluate_model(model, tok, data_root(), domain_samples=a.samples, tasks=(), log=lambda m: None)
        dom = r["domains"]
        rows[name] = {
            "wikitext2": r["wikitext2"]["ppl"],
            **dom,
            "geomean": math.exp(sum(math.log(v) for v in dom.values()) / len(dom)),
        }
        print(
            f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in rows[name].items()) + f" ({time.time() - t0:.0f} s)",
            flush=True,
        )
    dense = rows["default"]
    print("\n| checkpoint | " + " | ".join(dense) + " |\n|---|" + "---|" * len(dense))
    for name, row in rows.items():
        cells = [f"{v:.2f}" if name == "default" else f"{v:.2f} (x{v / dense[k]:.2f})" for k, v in row.items()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
