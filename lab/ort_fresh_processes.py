"""Fresh processes, one onnxruntime batch-8 decode each (2 timed repeats in-process), two artifacts of the
default model's shape alternating; prints tok/s, minor-fault deltas, steal ticks and memory per process. Run
from the repository root, after `prunekit bench --shapes smollm2-135m --cuts "dense,33% a128" --runtimes
onnxruntime` built bench/work/shapes:

    .venv/bin/python lab/ort_fresh_processes.py [--rounds 12]

Figures: bench/results/2026-12-03-epyc-2c-ort-phases/fresh-processes.txt (report.md beside it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SMAPS = ("Rss", "AnonHugePages", "FilePmdMapped", "Anonymous", "Private_Clean", "Shared_Clean")


def _cpu_ticks() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def one_process(art: str, mode: str, reps: int) -> None:
    """This process: the artifact's b8 decode timed `reps` times, with minor page faults per decode."""
    from prunekit.bench import prompts

    from prunekit.runtimes import OrtLM

    lm = OrtLM(f"{art}/onnx/model.onnx", threads=2)
    vocab = json.load(open(f"{art}/config.json"))["vocab_size"]
    pb = prompts(8, 128, vocab, seed=1)
    lm.greedy(prompts(1, 8, vocab, seed=2), 2)
    out = []
    c0 = _cpu_ticks()
    for _ in range(reps):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        lm.greedy(pb, 1)
        tb1 = time.perf_counter() - t
        f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        lm.greedy(pb, 33)
        tbn = time.perf_counter() - t
        f2 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        out.append((round(8 * 32 / (tbn - tb1), 1), (f2 - f1) - (f1 - f0)))
    d = [b - a for a, b in zip(c0, _cpu_ticks())]
    print("steal", d[7], "of", sum(d), "iowait", d[4], "idle", d[3])
    with open("/proc/self/smaps_rollup") as f:
        print({ln.split(":")[0]: ln.split()[1] for ln in f if ln.split(":")[0] in SMAPS})
    print(mode, art.rstrip("/").split("/")[-1], out, flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python lab/ort_fresh_processes.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="bench/work/shapes")
    ap.add_argument("--artifacts", default="smollm2-135m-dense,smollm2-135m-33pct-a128")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--one", nargs=3, metavar=("ART", "MODE", "REPS"), help=argparse.SUPPRESS)  # the child
    a = ap.parse_args(argv)
    if a.one:
        one_process(a.one[0], a.one[1], int(a.one[2]))
        return
    for _ in range(a.rounds):
        for name in a.artifacts.split(","):
            r = subprocess.run(
                [sys.executable, __file__, "--one", f"{a.work}/{name}", "run", "2"],
                capture_output=True,
                text=True,
            )
            print(" ".join(ln for ln in (r.stdout + r.stderr).splitlines() if "Warn" not in ln), flush=True)


if __name__ == "__main__":
    main()
