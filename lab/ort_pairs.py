"""onnxruntime decode of artifacts, each paired with a baseline artifact in a fresh process of its own, their decode
steps timed in turn (bench/speed_worker.run_paired): the check of the frontier's six-graphs-in-one-process figures.

    .venv/bin/python lab/ort_pairs.py BASE_ART ART... [--pairs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from prunekit.bench.shapes import pair_speedups
from prunekit.bench.timing import speed_once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    print("| artifact | base b1 tok/s | b1 tok/s | b1 x base (range) | base b8 tok/s | b8 tok/s | b8 x base (range) |")
    print("|---|---|---|---|---|---|---|")
    for art in a.artifacts:
        r = speed_once(
            "onnxruntime", Path(art), a.threads, "float32", prompt_len=64, new_tokens=64, batch=8,
            pair_with=Path(a.base), pairs=a.pairs,
        )  # fmt: skip
        if "error" in r:
            print(f"| {Path(art).name} | error: {r['error'][:200]} |")
            continue
        sp = pair_speedups(r)
        med = {
            (w, k): statistics.median(p[w][k] for p in r["pairs"])
            for w in ("base", "cut")
            for k in ("decode_tok_s_b1", "decode_tok_s_batch")
        }
        cells = []
        for k, s in (("decode_tok_s_b1", "b1"), ("decode_tok_s_batch", "batch")):
            x = sp[s]
            cells.append(
                f"{med['base', k]:.1f} | {med['cut', k]:.1f} | x{x['median']:.2f} ({x['min']:.2f}-{x['max']:.2f})"
            )
        print(f"| {Path(art).name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
