"""The quality of weight quantization by method, on one checkpoint, in one process: WikiText-2 (whole test set,
windows of 512) and the held-out perplexity of every bench domain for the checkpoint as it is and for each scheme
and method of prunekit/quantize.py (weights only, dequantized in fp32: what the runtimes' kernels add on top,
such as vLLM's per-token int8 activations, is not in these figures). Also the dense default model as the baseline.

    .venv/bin/python lab/quant_quality.py CHECKPOINT [--variants int8-rtn,int4-rtn,int4-gptq] [--wikitext-limit N]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from prunekit.bench.quality import evaluate_model
from prunekit.compress import quantize_calibration

from prunekit.env import data_root, set_threads
from prunekit.families import family_for_config
from prunekit.loading import load_model, load_tokenizer
from prunekit.quantize import quantize as quantize_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--variants", default="int8-rtn,int8-gptq,int4-rtn,int4-gptq")
    ap.add_argument("--samples", type=int, default=128, help="GPTQ calibration sequences")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wikitext-limit", type=int, default=None, help="WikiText-2 windows (default: the test set)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    set_threads(a.threads)
    rows = {}
    for name in ["dense", "none", *a.variants.split(",")]:
        model, _, source = load_model("default" if name == "dense" else a.checkpoint, dtype="float32")
        tok = load_tokenizer(source)
        t0 = time.time()
        if name not in ("dense", "none"):
            scheme, method, *order = name.split("-")  # int4-gptq, or int4-gptq-noorder (no activation ordering)
            calib = quantize_calibration("default", tok, a.samples) if method == "gptq" else None
            quantize_weights(model, family_for_config(model.config), scheme, method, calib, actorder=not order)
        tq = time.time() - t0
        with torch.no_grad():
            r = evaluate_model(
                model, tok, data_root(), wikitext_limit=a.wikitext_limit, domain_samples=8, tasks=(), log=lambda m: None
            )
        dom = r["domains"]
        rows[name] = {
            "wikitext2": r["wikitext2"]["ppl"],
            **dom,
            "geomean": math.exp(sum(math.log(v) for v in dom.values()) / len(dom)),
            "quantize_s": round(tq, 1),
        }
        print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in rows[name].items()), flush=True)
    base = rows["none"]
    keys = [k for k in base if k != "quantize_s"]
    print("\n| variant | " + " | ".join(keys) + " | quantize s |\n|---|" + "---|" * (len(keys) + 1))
    for name, row in rows.items():
        cells = [f"{row[k]:.2f}" + ("" if name in ("dense", "none") else f" (x{row[k] / base[k]:.3f})") for k in keys]
        print(f"| {name} | " + " | ".join(cells) + f" | {row['quantize_s']} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
