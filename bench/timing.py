"""How bench times: each measurement in a fresh worker process, repeats interleaved, medians with ranges;
and the machine the timings ran on. A leaf of bench (it imports no other bench module): the entry (run.py),
shapes.py, op_profile.py and compress_scale.py take these from here, and none of them imports another back.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from prunekit.artifact import check_shipped_code, load_artifact, needs_remote_code
from prunekit.env import child_env, cpu_has_fast_bf16, cpu_isa, cpu_name
from prunekit.proc import run_group


def machine() -> dict:
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "gpu": gpu,
        "fast_bf16": cpu_has_fast_bf16(),
        "isa": cpu_isa(),
        "python": platform.python_version(),
        "host": platform.node(),
    }


def machine_slug(m: dict) -> str:
    """The machine's part of a result folder's name: a few words of the GPU or CPU name, the CPU's matmul class
    (two VMs both called "AMD EPYC" can differ by several times), the core count."""
    name = (m.get("gpu") or m["cpu"]).lower()
    for junk in ("(r)", "(tm)", "processor", "cpu", "nvidia", "amd", "intel", "@"):
        name = name.replace(junk, " ")
    words = [w for w in name.replace("-", " ").split() if w.isalnum() and not w.endswith("ghz")][:3]
    isa = [] if m.get("gpu") or not m.get("isa") or m["isa"] in words else [m["isa"]]
    return "-".join(words + isa + [f"{m['cores']}c"])


def speed_once(
    runtime: str,
    art: Path,
    threads: int,
    dtype: str,
    *,
    prompt_len: int,
    new_tokens: int,
    batch: int,
    timeout: int = 900,
    device: str = "auto",
    pair_with: Path | None = None,
    pairs: int = 0,
) -> dict:
    """One fresh worker process (bench/speed_worker.py) timing `art`; with `pair_with`, that baseline and `art`
    side by side in the process, `pairs` times, their decode steps in turn (speed_worker.run_paired)."""
    art, m = load_artifact(art)
    check_shipped_code(art, m)
    req = {
        "runtime": runtime,
        "artifact": str(art.resolve()),
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "batch": batch,
        "threads": threads,
        "dtype": dtype,
        "kv_cache_gib": 1,
        "device": device,
        "trust_remote_code": needs_remote_code(m),
    }
    if pair_with is not None:
        base, bm = load_artifact(pair_with)
        check_shipped_code(base, bm)
        req.update(
            pair_with=str(base.resolve()),
            pairs=pairs,
            trust_remote_code=req["trust_remote_code"] or needs_remote_code(bm),
        )
    return run_worker(["prunekit.bench.speed_worker"], req, threads, timeout)


def run_worker(module: list[str], req: dict, threads: int, timeout: int = 900) -> dict:
    """Run `python -m MODULE... REQ.json RES.json` in a fresh process group pinned to `threads`; the result,
    or {"error": ...} when it fails or times out (a failed run is a result, not a crash of the bench)."""
    with tempfile.TemporaryDirectory(prefix="prunekit-worker-") as d:
        rq, rs = Path(d, "req.json"), Path(d, "res.json")
        rq.write_text(json.dumps(req))
        env = child_env(OMP_NUM_THREADS=str(threads), VLLM_CPU_OMP_THREADS_BIND=f"0-{threads - 1}")
        try:
            proc = run_group(
                [sys.executable, "-m", *module, str(rq), str(rs)],
                timeout,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s"}
        if proc.returncode != 0 or not rs.is_file():
            err = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "Error" in ln][-3:]
            return {"error": f"exit {proc.returncode}: {' | '.join(err)[-600:]}"}
        return json.loads(rs.read_text())


def run_order(items: list, rep: int) -> list:
    """The order of repeat `rep` of interleaved timings: each repeat starts one item later and every other one
    runs backwards, so drift of the machine spreads over every item and none always runs in the same place or
    after the same one. On these VMs a run's speed depended on its position: in vLLM at batch 8 whichever
    artifact ran second was slow (bench/results/2026-11-30-epyc-2c-shapes-qwen2.5-0.5b)."""
    turn = items[rep % len(items) :] + items[: rep % len(items)] if items else []
    return turn[::-1] if rep % 2 else turn


def summarize(samples: list[dict]) -> dict:
    """Median, min and max of each speed figure over a list of worker results; the failed runs' errors."""
    ok = [s for s in samples if "error" not in s]
    out = {"runs": len(ok), "errors": [s["error"] for s in samples if "error" in s]}
    for k in ("ttft_s", "decode_tok_s_b1", "decode_tok_s_batch", "peak_rss_mb", "gpu_peak_mb", "load_s"):
        vals = [s[k] for s in ok if s.get(k) is not None]
        if vals:
            out[k] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    return out
