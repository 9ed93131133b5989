"""onnxruntime's decode step by ONNX op type (its own node profiler): where the "other ops" of
prunekit.bench.op_profile's table go. Qwen2.5-0.5B shape, dense and 40%, batch 1 and 8; 16 profiled decode
steps, one process per run. Run from the repository root after the shapes run built the artifacts
(`make bench-speed`, or `prunekit bench --shapes qwen2.5-0.5b --cuts dense,40%`):

    .venv/bin/python lab/ort_ops.py [--work bench/work/shapes]

Figures: bench/results/2026-12-03-epyc-2c-shapes-qwen2.5-0.5b-interleaved/ort-ops.txt (report.md beside it).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile

N = 17  # tokens per run: 1 prefill + 16 decode steps profiled


def by_op_type(art: str, batch: int, threads: int = 2) -> tuple[float, collections.Counter, dict]:
    """(ms a decode step, ms a step per op category, {op type: (ms a step, kernels a step)} of the other ops)."""
    import onnxruntime as ort
    from prunekit.bench import op_category, prompts

    from prunekit.runtimes import OrtLM

    vocab = json.load(open(f"{art}/config.json"))["vocab_size"]
    with tempfile.TemporaryDirectory() as d:
        lm = OrtLM(f"{art}/onnx/model.onnx", threads=threads)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.enable_profiling, so.profile_file_prefix = True, f"{d}/ort"
        lm.session = ort.InferenceSession(f"{art}/onnx/model.onnx", so, providers=["CPUExecutionProvider"])
        lm.greedy(prompts(batch, 128, vocab, seed=1), N)
        ev = json.load(open(lm.session.end_profiling()))
    runs = sorted((e for e in ev if e.get("name") == "model_run"), key=lambda e: e["ts"])[1:]  # decode steps
    wall = sum(r["dur"] for r in runs) / len(runs) / 1e3
    cat: collections.Counter = collections.Counter()
    by: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for e in ev:
        if not (e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")):
            continue
        if not any(r["ts"] <= e["ts"] <= r["ts"] + r["dur"] for r in runs):
            continue
        a = e.get("args", {})
        shapes = [
            list(x.values())[0]
            for x in a.get("input_type_shape", []) + a.get("output_type_shape", [])
            if isinstance(x, dict)
        ]
        c = op_category(e["name"], shapes, vocab, a.get("op_name", ""))
        cat[c] += e["dur"] / 1e3 / len(runs)
        if c == "other ops":
            by[a.get("op_name", "?")] += e["dur"] / 1e3 / len(runs)
            count[a.get("op_name", "?")] += 1 / len(runs)
    return wall, cat, {k: (v, count[k]) for k, v in by.most_common()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python lab/ort_ops.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="bench/work/shapes", help="where the shapes run built its artifacts")
    ap.add_argument("--shape", default="qwen2.5-0.5b")
    a = ap.parse_args(argv)
    for b in (1, 8):
        for label in ("dense", "40pct"):
            wall, cat, other = by_op_type(f"{a.work}/{a.shape}-{label}", b)
            print(
                f"batch {b} {label}: run {wall:.1f} ms a decode step, kernels {sum(cat.values()):.1f} ms ("
                + ", ".join(f"{k} {v:.1f}" for k, v in cat.most_common())
                + ")"
            )
            print(
                "  other ops by type (ms a step, kernels a step): "
                + ", ".join(f"{k} {v:.2f} ({n:.0f})" for k, (v, n) in list(other.items())[:8])
            )


if __name__ == "__main__":
    main()
