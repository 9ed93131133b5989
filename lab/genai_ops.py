"""A decode step by ONNX op type for our graph and onnxruntime-genai's graph of the same artifact (export --genai),
each from onnxruntime's node profiler: 16 decode steps after a 128-token prompt, in one process each. The figures
in docs/results/onnx-genai.md ("Where the rest goes"):

    .venv/bin/python lab/genai_ops.py ART [--batch 8]
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

STEPS = 16


def genai_profile(folder: str, batch: int, prefix: str) -> None:
    """Run genai's generator with profiling on; the profile file is written when the process ends."""
    import onnxruntime_genai as og

    cfg = og.Config(folder)
    opts = {"intra_op_num_threads": 2, "enable_profiling": prefix}
    cfg.overlay(json.dumps({"model": {"decoder": {"session_options": opts}}}))
    model = og.Model(cfg)
    rng = random.Random(1)
    prompts = [[rng.randrange(100, 30000) for _ in range(128)] for _ in range(batch)]
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=128 + STEPS + 2, batch_size=batch, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array(prompts, dtype=np.int32))
    for _ in range(STEPS + 1):
        gen.generate_next_token()


def by_op(profile: str) -> tuple[float, collections.Counter]:
    ev = json.load(open(profile))
    runs = sorted((e for e in ev if e.get("name") == "model_run"), key=lambda e: e["ts"])[1:]  # decode steps
    by: collections.Counter = collections.Counter()
    for e in ev:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            if any(r["ts"] <= e["ts"] <= r["ts"] + r["dur"] for r in runs):
                by[e["args"].get("op_name")] += e["dur"] / 1e3 / len(runs)
    return sum(r["dur"] for r in runs) / len(runs) / 1e3, by


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--genai-child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.genai_child:
        genai_profile(str(Path(a.artifact) / "genai"), a.batch, a.genai_child)
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from ort_ops import by_op_type

    wall, cat, other = by_op_type(a.artifact, a.batch)
    print(f"ours: {wall:.1f} ms a decode step; " + ", ".join(f"{k} {v:.1f}" for k, v in cat.most_common()))
    print("  other ops: " + ", ".join(f"{k} {v:.2f}" for k, (v, _) in list(other.items())[:8]))
    with tempfile.TemporaryDirectory() as d:
        prefix = os.path.join(d, "genai")
        cmd = [sys.executable, __file__, a.artifact, "--batch", str(a.batch), "--genai-child", prefix]
        subprocess.run(cmd, check=True)
        wall, by = by_op(sorted(glob.glob(prefix + "*.json"))[-1])
    print(f"genai: {wall:.1f} ms a decode step; " + ", ".join(f"{k} {v:.2f}" for k, v in by.most_common(8)))


if __name__ == "__main__":
    main()
