#!/bin/bash
# A/B of the first round's scoring cut per layer at the qwen2.5-0.5b shape (4 layers, random bf16 weights,
# offloaded): old = the full gram summed in the pass (compress/ of b3ba437), new = the kept channels' gram
# built from the cached inputs after the scores choose them (this commit's compress/). Interleaved, 3 repeats.
# The two versions take turns as the checkout's compress/ (the editable install maps prunekit.compress there);
# the checkout's own copy is put back at the end, also on errors.
set -euo pipefail
export PRUNEKIT_DATA=${PRUNEKIT_DATA:-../shared/data}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../../.."  # the checkout
tmp=$(mktemp -d)
git archive b3ba437 compress | tar -x -C "$tmp" && mv "$tmp/compress" "$tmp/old"
cp -r compress "$tmp/new" && cp -r compress "$tmp/mine"
# The driver (set PROF_LAYER=N to print torch.profiler's table for layer N's scoring cut instead of its time).
# It lives in this script: a .py file under bench/ would be packaged and checked as a module of prunekit.bench.
cat > "$tmp/cut_layers.py" <<'PY'
"""Profile one round-1 scoring cut of a layer at the qwen2.5-0.5b shape (4 layers, random bf16 weights)."""
import sys, time
from pathlib import Path
import torch, transformers
from torch.profiler import profile, ProfilerActivity
from prunekit.bench.shapes import SHAPES
from prunekit.checkpoint import save_model, save_tokenizer
from prunekit.loading import load_tokenizer
import prunekit.compress.iterate as I
from prunekit.compress import CompressConfig, compress

torch.set_num_threads(2)
src = Path("/tmp/prof/src4")
if not (src / "done").exists():
    cls, base = SHAPES["qwen2.5-0.5b"]
    config = getattr(transformers, cls)(**{**base, "num_hidden_layers": 4})
    config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(0)
    m = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    src.mkdir(parents=True, exist_ok=True)
    save_model(m, src); save_tokenizer(load_tokenizer("default"), src); (src / "done").write_text("")
orig = I._cut_layer_cached
def wrapped(layer, fam, runner, pos, keep, s, score_next):
    if isinstance(keep, int) and pos == int(__import__("os").environ.get("PROF_LAYER", "1")):
        t = time.time()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as p:
            out = orig(layer, fam, runner, pos, keep, s, score_next)
        print(f"layer 1 scoring cut: {time.time() - t:.2f} s (profiled)")
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=40))
        return out
    t = time.time(); out = orig(layer, fam, runner, pos, keep, s, score_next)
    print(f"layer {pos} cut ({'scoring' if isinstance(keep, int) else 'carried'}): {time.time() - t:.2f} s")
    return out
I._cut_layer_cached = wrapped
compress(CompressConfig(model=str(src), out="/tmp/prof/out", ratio=0.2, offload=sys.argv[1], threads=2, force=True,
                        eval_cache=False), log=lambda m: None)
PY
trap 'rm -rf compress && cp -r "$tmp/mine" compress && rm -rf "$tmp"' EXIT
for r in 1 2 3; do
  for v in old new; do
    rm -rf compress && cp -r "$tmp/$v" compress
    echo "== $v repeat $r"
    PROF_LAYER=${PROF_LAYER:--1} .venv/bin/python "$tmp/cut_layers.py" on 2>&1 | tr '\r' '\n' | grep -ao "layer [0-9] cut ([a-z]*): [0-9.]* s"
  done
done
