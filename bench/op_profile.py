"""Where a decode step's time goes, per runtime, from the runtime's own per-op profiler (`bench --shapes
--profile-cut CUT` runs it for a cut of random-weight shapes; this module's command for any artifacts).

    python -m prunekit.bench.op_profile --artifact dense=DIR --artifact 40%=DIR [--runtimes torch,onnxruntime,vllm]

Each (artifact, runtime) runs in a fresh process: greedy generation of 1 and of N tokens from the same
prompt, each profiled (torch.profiler for PyTorch and vLLM, whose workers carry it; onnxruntime's own
node profiler). Decode per token = (N-token run - 1-token run) / (N - 1), for the wall clock and for
every category, so prefill cancels out as it does in the speed figures; --pairs such pairs run in turn and
the one with the median wall time per token is reported whole (all pairs' wall times beside it):
decoder matmuls, LM head, attention, sampling, other ops (norms, rotary, activations, cache copies), and
framework = wall clock minus all op time (Python, dispatch, scheduling, the runtime's executor).
The parts add up to the profiled wall time per token by construction (a difference of two runs may be
slightly negative for a tiny part: it is kept, not clamped). Profiling slows the run; the speed tables give
the unprofiled times. CPU only: op self time on the host; onnxruntime's greedy argmax runs in numpy, so its
sampling is in framework.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

CATEGORIES = ("decoder matmuls", "LM head", "attention", "sampling", "other ops", "framework")
MATMUL = ("mm", "addmm", "matmul", "linear", "bmm", "gemm", "onednn", "MatMul", "Gemm", "FusedMatMul")
ATTENTION = ("attention", "attn", "scaled_dot_product", "sdpa", "paged", "flash", "Softmax")
# (1-token, N-token) pairs per profiled run: the median one is reported (median_pair).
PAIRS = 3
SAMPLING = ("argmax", "topk", "sample", "sort", "multinomial", "ArgMax")


def op_category(name: str, dims, vocab: int, op_type: str = "") -> str:
    """The category of one op from its name (and ONNX op type) and input shapes."""
    low = name.lower()
    shapes = [s for s in dims or [] if isinstance(s, (list, tuple))]
    if any(k.lower() in low for k in SAMPLING):
        return "sampling"
    is_mm = op_type in MATMUL or any(low.split("::")[-1].startswith(k.lower()) for k in MATMUL) or "linear" in low
    if any(k.lower() in low for k in ATTENTION) or op_type in ("Softmax", "Attention", "GroupQueryAttention"):
        return "attention"
    if is_mm:
        if any(len(s) == 4 for s in shapes):
            return "attention"  # scores and weighted values: [batch, heads, q, k] products
        return "LM head" if any(vocab in s for s in shapes) else "decoder matmuls"
    return "other ops"


def trace_ops(path: Path, vocab: int) -> tuple[dict, float]:
    """Self time per category (seconds) of the ops in a Chrome trace written by torch.profiler, and the
    span of the trace. Nested ops: only self time counts (a linear's time is in its mm)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        events = json.load(f)
    events = events.get("traceEvents", events) if isinstance(events, dict) else events
    xs = [e for e in events if e.get("ph") == "X" and "dur" in e and "ts" in e]
    out = dict.fromkeys(CATEGORIES[:-1], 0.0)
    if not xs:
        return out, 0.0
    span = (max(e["ts"] + e["dur"] for e in xs) - min(e["ts"] for e in xs)) / 1e6
    by_thread: dict = {}
    for e in xs:
        by_thread.setdefault((e.get("pid"), e.get("tid")), []).append(e)
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list = []
        selfs = []
        for e in evs:
            while stack and stack[-1]["e"]["ts"] + stack[-1]["e"]["dur"] <= e["ts"]:
                stack.pop()
            rec = {"e": e, "self": e["dur"]}
            if stack:
                stack[-1]["self"] -= e["dur"]
            stack.append(rec)
            selfs.append(rec)
        for r in selfs:
            e = r["e"]
            if e.get("cat") != "cpu_op" or r["self"] <= 0:
                continue  # python functions and annotations are framework time
            out[op_category(e["name"], (e.get("args") or {}).get("Input Dims"), vocab)] += r["self"] / 1e6
    return out, span


def per_token(short: dict, long: dict, wall_short: float, wall_long: float, n: int) -> dict:
    ops = {k: (long[k] - short[k]) / (n - 1) for k in long}
    wall = (wall_long - wall_short) / (n - 1)
    return {
        "wall_ms": wall * 1e3,
        **{k: v * 1e3 for k, v in ops.items()},
        "framework": (wall - sum(ops.values())) * 1e3,
    }


def median_pair(pairs: list[dict]) -> dict:
    """Of several (1-token, N-token) pairs' breakdowns, the one with the median wall time per token, whole (its
    parts still add up), with every pair's wall time beside it. On a shared VM one slow 1-token run can make a
    single difference meaningless (a negative 'other ops'); the median pair is a real measurement that no
    such outlier decides."""
    ranked = sorted(pairs, key=lambda r: r["wall_ms"])
    out = dict(ranked[(len(ranked) - 1) // 2])
    out["pairs_wall_ms"] = [round(r["wall_ms"], 2) for r in pairs]
    return out


def run_torch(req: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from prunekit.runtimes import torch_greedy

    torch.set_num_threads(req["threads"])
    model = AutoModelForCausalLM.from_pretrained(
        req["artifact"], dtype=getattr(torch, req["dtype"]), trust_remote_code=req["trust_remote_code"]
    ).eval()
    vocab, p, n = model.config.vocab_size, req["prompts"], req["new_tokens"]
    torch_greedy(model, p, 2)
    pairs = []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(req.get("pairs", 1)):
            res = {}
            for k in (1, n):
                with torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
                ) as prof:
                    t = time.perf_counter()
                    torch_greedy(model, p, k)
                    res[k] = time.perf_counter() - t
                prof.export_chrome_trace(f"{d}/t{k}.json")
                res[f"ops{k}"] = trace_ops(Path(f"{d}/t{k}.json"), vocab)[0]
            pairs.append(per_token(res["ops1"], res[f"ops{n}"], res[1], res[n], n))
    return median_pair(pairs)


def run_onnxruntime(req: dict) -> dict:
    import onnxruntime as ort

    from prunekit.runtimes import OrtLM

    vocab = json.load(open(f"{req['artifact']}/config.json"))["vocab_size"]
    p, n = req["prompts"], req["new_tokens"]
    with tempfile.TemporaryDirectory() as d:
        lm = OrtLM(f"{req['artifact']}/onnx/model.onnx", threads=req["threads"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = req["threads"]
        so.enable_profiling, so.profile_file_prefix = True, f"{d}/ort"
        lm.session = ort.InferenceSession(f"{req['artifact']}/onnx/model.onnx", so, providers=["CPUExecutionProvider"])
        lm.greedy(p, 2)
        walls = []
        for _ in range(req.get("pairs", 1)):
            for k in (1, n):
                t = time.perf_counter()
                lm.greedy(p, k)
                walls.append(time.perf_counter() - t)
        events = json.load(open(lm.session.end_profiling()))
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]

    def ops_in(win: list) -> dict:
        acc = dict.fromkeys(CATEGORIES[:-1], 0.0)
        for e in nodes:
            if any(r["ts"] <= e["ts"] <= r["ts"] + r["dur"] for r in win):
                a = e.get("args", {})
                # inputs list activations only (not initializers): the LM head shows by its output
                shapes = [
                    list(x.values())[0]
                    for x in a.get("input_type_shape", []) + a.get("output_type_shape", [])
                    if isinstance(x, dict)
                ]
                acc[op_category(e["name"], shapes, vocab, a.get("op_name", ""))] += e["dur"] / 1e6
        return acc

    # runs: 2 warm-up steps, then per pair the 1-token generation (a prefill) and the n steps of the n-token one.
    pairs, at = [], 2
    for i in range(len(walls) // 2):
        short, long = ops_in(runs[at : at + 1]), ops_in(runs[at + 1 : at + 1 + n])
        pairs.append(per_token(short, long, walls[2 * i], walls[2 * i + 1], n))
        at += 1 + n
    return median_pair(pairs)


def run_vllm(req: dict) -> dict:
    from prunekit.runtimes import vllm_engine, vllm_generate

    vocab = json.load(open(f"{req['artifact']}/config.json"))["vocab_size"]
    p, n = req["prompts"], req["new_tokens"]
    d = req["trace_dir"]
    llm = vllm_engine(
        req["artifact"],
        req["dtype"],
        len(p[0]) + n + 16,
        req["trust_remote_code"],
        1,
        profiler_config={
            "profiler": "torch",
            "torch_profiler_dir": d,
            "torch_profiler_use_gzip": False,
            "torch_profiler_with_stack": False,
            "torch_profiler_record_shapes": True,
        },
    )
    vllm_generate(llm, p, 2)
    pairs = []
    for i in range(req.get("pairs", 1)):
        walls, ops = {}, {}
        for k in (1, n):
            before = set(Path(d).rglob("*.json"))
            llm.start_profile(profile_prefix=f"pair{i}-run{k}")
            t = time.perf_counter()
            vllm_generate(llm, p, k)
            walls[k] = time.perf_counter() - t
            llm.stop_profile()
            ops[k] = dict.fromkeys(CATEGORIES[:-1], 0.0)
            for f in _new_traces(Path(d), before):
                for c, v in trace_ops(f, vocab)[0].items():
                    ops[k][c] += v
        pairs.append(per_token(ops[1], ops[n], walls[1], walls[n], n))
    return median_pair(pairs)


def _new_traces(d: Path, before: set, timeout: float = 120.0) -> list[Path]:
    """The traces vLLM's worker wrote since `before`, once complete (it writes them after stop returns)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        new = [f for f in d.rglob("*.json") if f not in before and f.stat().st_size > 0]
        try:
            for f in new:
                json.loads(f.read_text())
            if new:
                return new
        except json.JSONDecodeError:
            pass  # still being written
        time.sleep(0.5)
    raise RuntimeError(f"vLLM wrote no complete profiler trace into {d} within {timeout:.0f} s")


def worker(req_path: str, res_path: str) -> None:
    req = json.load(open(req_path))
    fn = {"torch": run_torch, "onnxruntime": run_onnxruntime, "vllm": run_vllm}[req["runtime"]]
    json.dump(fn(req), open(res_path, "w"))


def profile_once(
    runtime: str,
    art: Path,
    threads: int,
    dtype: str,
    prompt_len: int,
    new_tokens: int,
    batch: int,
    timeout: int = 900,
    pairs: int = PAIRS,
) -> dict:
    from prunekit.artifact import check_shipped_code, load_artifact, needs_remote_code

    from .speed_worker import prompts
    from .timing import run_worker

    art, m = load_artifact(art)
    check_shipped_code(art, m)
    vocab = json.loads((art / "config.json").read_text())["vocab_size"]
    with tempfile.TemporaryDirectory(prefix="prunekit-profile-") as d:
        req = {
            "runtime": runtime,
            "artifact": str(art.resolve()),
            "threads": threads,
            "dtype": dtype,
            "prompts": prompts(batch, prompt_len, vocab),
            "new_tokens": new_tokens,
            "trust_remote_code": needs_remote_code(m),
            "trace_dir": f"{d}/traces",
            "pairs": pairs,
        }
        return run_worker(["prunekit.bench.op_profile", "--worker"], req, threads, timeout)


def format_profile(res: dict, unprofiled: dict | None = None) -> str:
    """The breakdown table; `unprofiled` maps (runtime, label) to the ms/token measured without a profiler."""
    un = unprofiled or {}
    lines = [
        f"Per-token decode time by category (ms), from each runtime's profiler; {res['machine']}, "
        f"{res['dtype']}, {res['threads']} threads, batch {res['batch']}, prompt {res['prompt_len']}, "
        f"{res['new_tokens']} new tokens.",
        "",
        "| runtime | model | unprofiled ms/token | profiled ms/token | " + " | ".join(CATEGORIES) + " |",
        "|---|---|---|---|" + "---|" * len(CATEGORIES),
    ]
    for rt, models in res["rows"].items():
        for label, r in models.items():
            u = f"{un[(rt, label)]:.2f}" if (rt, label) in un else "-"
            if "error" in r:
                lines.append(f"| {rt} | {label} | {u} | failed: {r['error'][:200]} |" + " |" * len(CATEGORIES))
                continue
            walls = r.get("pairs_wall_ms", [])
            spread = f" (pairs: {', '.join(f'{w:.1f}' for w in walls)})" if len(walls) > 1 else ""
            lines.append(
                f"| {rt} | {label} | {u} | {r['wall_ms']:.2f}{spread} | "
                + " | ".join(f"{r[c]:.2f} ({r[c] / r['wall_ms'] * 100:.0f}%)" for c in CATEGORIES)
                + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import argparse

    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
        return 0
    from prunekit.env import compute_dtype, cpu_name

    ap = argparse.ArgumentParser(prog="python -m prunekit.bench.op_profile", description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", action="append", required=True, metavar="LABEL=DIR")
    ap.add_argument("--runtimes", default="torch,onnxruntime,vllm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=33)
    ap.add_argument(
        "--pairs",
        type=int,
        default=PAIRS,
        help="(1-token, N-token) pairs per run; the median pair is reported (one pair on a noisy "
        "machine can give a negative part)",
    )
    ap.add_argument("--out", default=None, help="write profile.json and profile.md here")
    a = ap.parse_args(argv)
    arts = dict(x.split("=", 1) for x in a.artifact)
    dtype = compute_dtype()
    res = {
        "machine": f"{cpu_name()} x{os.cpu_count()}",
        "dtype": dtype,
        "threads": a.threads,
        "batch": a.batch,
        "prompt_len": a.prompt_len,
        "new_tokens": a.new_tokens,
        "rows": {},
    }
    for rt in a.runtimes.split(","):
        for label, art in arts.items():
            r = profile_once(rt, Path(art), a.threads, dtype, a.prompt_len, a.new_tokens, a.batch, pairs=a.pairs)
            res["rows"].setdefault(rt, {})[label] = r
            print(
                f"{rt} {label}: "
                + (
                    r["error"]
                    if "error" in r
                    else ", ".join(f"{k} {v:.2f}" for k, v in r.items() if isinstance(v, float))
                ),
                file=sys.stderr,
                flush=True,
            )
    text = format_profile(res)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        Path(a.out, "profile.json").write_text(json.dumps(res, indent=2) + "\n")
        Path(a.out, "profile.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
