#!/usr/bin/env bash
# The GPU measurements, as one prepared run for a lent GPU machine (nothing in the project needs a GPU).
# That machine has its own torch and no network: it gets transformers as a wheel in .whl/ (the version we
# pin), the calibration data in .gpu/data and the default model's tokenizer in .gpu/tok, each prepared here:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .whl transformers==5.19.0 regex==2026.11.19   # regex: transformers checks its version at import
#   mkdir -p .gpu/tok && cp -r ../shared/data .gpu/data && cp ~/.cache/prunekit/models/SmolLM2-135M-Instruct/{tokenizer*,config.json} .gpu/tok
# and run there from the repository root with OUT set to the folder that comes back, carrying .whl and .gpu
# (both are ignored by git, so they travel only when named):
#   bash bench/gpu_check.sh
# Each part has its own time limit, so one that fails or overruns leaves the others' figures.
# PY, SHAPE and DEVICE let the same script be rehearsed on a CPU (PY=.venv/bin/python SHAPE=tiny DEVICE=cpu).
set -u
OUT=${OUT:-bench/results/gpu} PY=${PY:-python3} SHAPE=${SHAPE:-llama-3.1-8b} DEVICE=${DEVICE:-cuda} THREADS=${THREADS:-16}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PRUNEKIT_DATA=$PWD/.gpu/data HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
# The repository's folders as the installed package lays them out (compress/ is prunekit.compress, ...).
rm -rf /tmp/pk && mkdir -p /tmp/pk && cp -r prunekit /tmp/pk/prunekit
for d in compress export serve bench; do ln -s "$PWD/$d" "/tmp/pk/prunekit/$d"; done
export PYTHONPATH=/tmp/site:/tmp/pk
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
# Fail fast: an import error here would otherwise cost both parts' time limits.
$PY -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' \
  | tee -a "$OUT/machine.txt"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "gpu_check: torch/transformers do not import; see above"; exit 2; }
$PY -c 'import prunekit.compress.run, prunekit.bench.gpu_decode' || { echo "gpu_check: prunekit does not import"; exit 2; }

# Compress an 8B-shaped model by 20% on the GPU (issue 15): wall time and peak device memory per stage.
timeout "${COMPRESS_S:-300}" $PY -m prunekit.bench.compress_scale --shape "$SHAPE" --settings "device=$DEVICE" \
  --threads "$THREADS" --tokenizer .gpu/tok --workdir /tmp/work --out "$OUT/compress" 2>&1 \
  | tr '\r' '\n' | grep -av '/s\]$\|^\s*$' > "$OUT/compress.log"
echo "compress: exit ${PIPESTATUS[0]}"; tail -5 "$OUT/compress.log"
rm -rf /tmp/work

# Decode at the 8B shape, eager and compiled, against the bandwidth limit (issue 14). Each compile of the
# 8B decode step takes most of a minute: the compiled path runs at batch 1 only.
timeout "${DECODE_S:-240}" $PY -m prunekit.bench.gpu_decode --shapes "$SHAPE" --ratios 0,0.2,0.4 \
  --repeats 3 --device "$DEVICE" --out "$OUT/decode" > "$OUT/decode.log" 2>&1
echo "decode: exit $?"; grep -a 'gpu_decode:' "$OUT/decode.log" | tail -12
