#!/bin/bash
# torch.profiler's table of one round-1 scoring cut (layer 1 of a 4-layer model in the qwen2.5-0.5b shape, random
# bf16 weights, offloaded) with the checkout's compress/: the driver is the one embedded in the A/B script of
# 2026-12-02-epyc-avx512bf16-2c-gram-after-choice (extracted here, not copied).
set -euo pipefail
export PRUNEKIT_DATA=${PRUNEKIT_DATA:-../shared/data}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../../.."  # the checkout
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
awk '/^cat > .*cut_layers.py/{f=1;next} /^PY$/{f=0} f' \
  bench/results/2026-12-02-epyc-avx512bf16-2c-gram-after-choice/ab.sh > "$tmp/cut_layers.py"
PROF_LAYER=1 .venv/bin/python "$tmp/cut_layers.py" on 2>&1 | tr '\r' '\n' | grep -av "it/s\]$\|s/layer\]$\|^ *$"
