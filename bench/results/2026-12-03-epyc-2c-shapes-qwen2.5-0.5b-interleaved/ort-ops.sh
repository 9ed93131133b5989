#!/usr/bin/env bash
# onnxruntime decode step by ONNX op type (its own node profiler), Qwen2.5-0.5B shape, dense and 40%, batch 1 and 8:
# where the "other ops" of prunekit.bench.profile's table go. Run from the repository root after the shapes run
# built the artifacts:  bash bench/results/2026-12-03-epyc-2c-shapes-qwen2.5-0.5b-interleaved/ort-ops.sh
set -euo pipefail
.venv/bin/python - <<'PY'
import collections, json, tempfile
import onnxruntime as ort
from prunekit.runtimes import OrtLM
from prunekit.bench.speed_worker import prompts
from prunekit.bench.profile import classify
N = 17  # tokens per run: 1 prefill + 16 decode steps profiled
for b in (1, 8):
    for label in ("dense", "40pct"):
        art = f"bench/work/shapes/qwen2.5-0.5b-{label}"
        vocab = json.load(open(f"{art}/config.json"))["vocab_size"]
        with tempfile.TemporaryDirectory() as d:
            lm = OrtLM(f"{art}/onnx/model.onnx", threads=2)
            so = ort.SessionOptions(); so.intra_op_num_threads = 2
            so.enable_profiling, so.profile_file_prefix = True, f"{d}/ort"
            lm.session = ort.InferenceSession(f"{art}/onnx/model.onnx", so, providers=["CPUExecutionProvider"])
            lm.greedy(prompts(b, 128, vocab, seed=1), N)
            ev = json.load(open(lm.session.end_profiling()))
        runs = sorted((e for e in ev if e.get("name") == "model_run"), key=lambda e: e["ts"])[1:]  # decode steps
        wall = sum(r["dur"] for r in runs) / len(runs) / 1e3
        by = collections.Counter(); cat = collections.Counter(); count = collections.Counter()
        for e in ev:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and \
                    any(r["ts"] <= e["ts"] <= r["ts"] + r["dur"] for r in runs):
                a = e.get("args", {})
                shapes = [list(x.values())[0] for x in a.get("input_type_shape", []) + a.get("output_type_shape", [])
                          if isinstance(x, dict)]
                c = classify(e["name"], shapes, vocab, a.get("op_name", ""))
                cat[c] += e["dur"] / 1e3 / len(runs)
                if c == "other ops":
                    by[a.get("op_name", "?")] += e["dur"] / 1e3 / len(runs)
                    count[a.get("op_name", "?")] += 1 / len(runs)
        ops = sum(cat.values())
        print(f"batch {b} {label}: run {wall:.1f} ms a decode step, kernels {ops:.1f} ms (" +
              ", ".join(f"{k} {v:.1f}" for k, v in cat.most_common()) + ")")
        print("  other ops by type (ms a step, kernels a step): " +
              ", ".join(f"{k} {v:.2f} ({count[k]:.0f})" for k, v in by.most_common(8)))
PY
