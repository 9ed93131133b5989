"""Is this machine steady enough to time on? One process, one artifact, batch decode back to back for a while.

    python lab/phases.py --artifact DIR [--runtimes onnxruntime,torch] [--seconds 240]

Loads the artifact once per runtime (PyTorch and/or onnxruntime, 2 threads by default) and times greedy batch
decode in turn, printing one line per round: seconds since start and each runtime's tok/s. Same process, same
session, same inputs: any change in the series is the machine's. On the 2-core cloud VMs of this project the
speed moves in phases of seconds to minutes (onnxruntime's batch-8 decode of one session moved between 115 and
210 tok/s within 5 minutes; bench/results/2026-12-03-epyc-2c-ort-phases), which is why `bench --shapes
--paired N` times each cut against dense inside one process, step by step in turn.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def series(
    artifact: str,
    runtimes: list[str],
    seconds: float,
    threads: int,
    batch: int,
    prompt_len: int,
    new_tokens: int,
    log=print,
) -> dict:
    """{runtime: [tok/s per round]}, and the seconds since start of each round."""
    from prunekit.bench import LOADERS, prompts

    from prunekit.env import compute_dtype

    req = {"threads": threads, "dtype": compute_dtype(), "device": "cpu", "trust_remote_code": False}
    gens = {rt: (m.generate, m.vocab) for rt in runtimes for m in [LOADERS[rt](req, artifact)]}
    for gen, vocab in gens.values():
        gen(prompts(1, 8, vocab, seed=2), 2)  # warm-up
    batches = {rt: prompts(batch, prompt_len, vocab, seed=1) for rt, (_, vocab) in gens.items()}
    out, at, t0 = {rt: [] for rt in runtimes}, [], time.time()
    while time.time() - t0 < seconds:
        at.append(round(time.time() - t0, 1))
        for rt, (gen, _) in gens.items():
            p = batches[rt]
            t = time.perf_counter()
            gen(p, 1)
            t1 = time.perf_counter() - t
            t = time.perf_counter()
            gen(p, new_tokens)
            out[rt].append(batch * (new_tokens - 1) / max(time.perf_counter() - t - t1, 1e-9))
        log(f"{at[-1]:6.1f}s  " + "  ".join(f"{rt} {v[-1]:6.1f} tok/s" for rt, v in out.items()))
    return {"seconds": at, "tok_s": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python lab/phases.py", description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", required=True, help="an export artifact (its onnx/ graph for onnxruntime)")
    ap.add_argument("--runtimes", default="onnxruntime,torch")
    ap.add_argument("--seconds", type=float, default=240)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=17)
    ap.add_argument("--json", default=None, help="also write the series here")
    a = ap.parse_args(argv)
    rts = a.runtimes.split(",")
    bad = [r for r in rts if r not in ("onnxruntime", "torch")]
    if bad:
        print(f"error: unknown runtime(s) {bad}; choose from onnxruntime, torch.", file=sys.stderr)
        return 2
    if not Path(a.artifact, "config.json").is_file():
        print(f"error: {a.artifact} has no config.json; pass an export artifact (prunekit export).", file=sys.stderr)
        return 2
    res = series(a.artifact, rts, a.seconds, a.threads, a.batch, a.prompt_len, a.new_tokens)
    for rt, v in res["tok_s"].items():
        print(f"{rt}: median {statistics.median(v):.1f} tok/s, min {min(v):.1f}, max {max(v):.1f} over {len(v)} rounds")
    if a.json:
        Path(a.json).write_text(json.dumps({**res, "args": vars(a)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
