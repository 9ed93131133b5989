#!/bin/bash
# Fresh processes, one b8 onnxruntime decode each (2 timed repeats in-process), two artifacts of the default
# model shape alternating; prints tok/s, minor-fault deltas, steal ticks and memory. Run from the repo root,
# after `prunekit bench --shapes smollm2-135m --cuts "dense,33% a128" --runtimes onnxruntime` built bench/work/shapes.
cat > /tmp/prunekit-diag.py <<'EOF'
"""One process: ORT b8 decode of an artifact, timed several times, with minor page faults per decode."""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, ".")
from prunekit.runtimes import OrtLM
from prunekit.bench.speed_worker import prompts

art, mode, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
lm = OrtLM(f"{art}/onnx/model.onnx", threads=2)
vocab = json.load(open(f"{art}/config.json"))["vocab_size"]
gen = lm.greedy
pb = prompts(8, 128, vocab, seed=1)
gen(prompts(1, 8, vocab, seed=2), 2)
def cpu():
    return [int(x) for x in open("/proc/stat").readline().split()[1:]]
out = []
c0 = cpu()
for _ in range(reps):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.perf_counter(); gen(pb, 1); tb1 = time.perf_counter() - t
    f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.perf_counter(); gen(pb, 33); tbn = time.perf_counter() - t
    f2 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out.append((round(8 * 32 / (tbn - tb1), 1), (f2 - f1) - (f1 - f0)))
c1 = cpu(); d = [b - a for a, b in zip(c0, c1)]
print('steal', d[7], 'of', sum(d), 'iowait', d[4], 'idle', d[3])
print({l.split(':')[0]: l.split()[1] for l in open('/proc/self/smaps_rollup') if l.split(':')[0] in ('Rss','AnonHugePages','FilePmdMapped','Anonymous','Private_Clean','Shared_Clean')})
print(mode, art.rstrip('/').split('/')[-1], out, flush=True)
import os
for tid in sorted(os.listdir("/proc/self/task")):
    st = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
    status = dict(l.split(":\t") for l in open(f"/proc/self/task/{tid}/status").read().splitlines() if ":\t" in l)
    ut = int(st[11]) + int(st[12])
    if ut > 50:
        print(f"  tid {tid} cpu {st[36]} ticks {ut} vcs {status['voluntary_ctxt_switches'].strip()} "
              f"nvcs {status['nonvoluntary_ctxt_switches'].strip()} allowed {status['Cpus_allowed_list'].strip()}")
EOF
W=bench/work/shapes; for i in $(seq 1 12); do for a in dense 33pct-a128; do
  .venv/bin/python /tmp/prunekit-diag.py $W/smollm2-135m-$a run 2 2>&1 | grep -v Warn | grep -v tid | tr "\n" " "; echo
done; done
