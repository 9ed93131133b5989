#!/usr/bin/env bash
# The machine's fp32 matmul speed at 1 and 2 threads and the clock the VM reports: how close MKL is to the
# cores' peak (two AVX2 FMA units: 32 FLOP a cycle a core). Run from the repository root, nothing else running.
#   bash lab/matmul_peak.sh
# Figures: bench/results/2026-12-03-epyc-2c-compress-qwen2.5-0.5b-products/report.md.
set -euo pipefail
grep -m1 'cpu MHz' /proc/cpuinfo
for t in 1 2; do
  .venv/bin/python - "$t" <<'PY'
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
n = 2048
a, b = torch.randn(n, n), torch.randn(n, n)
for _ in range(2):
    a @ b
t = time.perf_counter()
for _ in range(5):
    a @ b
print(f"{sys.argv[1]} thread(s): {2 * n ** 3 / ((time.perf_counter() - t) / 5) / 1e12:.3f} TFLOP/s (fp32, 2048^3)")
PY
done
