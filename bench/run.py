"""`prunekit bench`: quality and speed of dense vs pruned, side by side, in one invocation.

Everything is measured in this one run on this one machine: quality in-process (PyTorch, compute
dtype), speed in a fresh process per (repeat, model, runtime), interleaved so that drift of a noisy
machine spreads over all models; medians with min-max are reported.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from prunekit.artifact import check_shipped_code, load_artifact, needs_remote_code, write_json_atomic
from prunekit.env import child_env, compute_dtype, cpu_has_fast_bf16, cpu_isa, cpu_name, data_root, set_threads
from prunekit.errors import PrunekitError
from prunekit.proc import run_group

from .config import RUNTIMES, BenchConfig
from .models import FULL, QUICK, Variant, disk_mb, prepare, stored_params, weight_bytes_per_token


@dataclass
class Profile:
    name: str
    variants: tuple[Variant, ...]
    compress: dict  # rounds, samples, seq_len for the pruned models
    seq_len: int = 512  # perplexity windows
    wikitext_limit: int | None = None
    wikitext_long: int | None = 2048  # WikiText-2 also at the papers' window (main models only); None: not
    domain_samples: int = 8
    task_limit: int | None = None
    prompt_len: int = 128
    new_tokens: int = 64
    batch: int = 8
    repeats: int = 3
    runtimes: tuple[str, ...] = RUNTIMES
    tasks: tuple[str, ...] = field(
        default_factory=lambda: ("piqa", "hellaswag", "arc_easy", "arc_challenge", "boolq", "winogrande", "openbookqa")
    )
    # The method grid (bench/methods.py): compare's variants at these ratios, pruned in-process with
    # the calibration budget of `make compare`. method_eval overrides wikitext_limit, domain_samples
    # and task_limit for the grid (it scores ~19 models: a limited run may want them smaller).
    methods: tuple[str, ...] = ()
    method_ratios: tuple[float, ...] = (0.2, 0.4)
    method_compress: dict = field(default_factory=lambda: {"rounds": 2, "samples": 32, "seq_len": 256})
    method_eval: dict = field(default_factory=dict)


# The grid the compress issue asked for: ours iterative and one-shot, single-domain calibration, no
# compensation, and the published baselines.
GRID = (
    "ours",
    "ours-oneshot",
    "ours-c4only",
    "ours-nocomp",
    "magnitude",
    "wanda-sp",
    "flap",
    "taylor",
    "block-influence",
)


FP32_TASK_LIMIT = 500  # zero-shot documents per task for the main models where the CPU has no native bf16

PROFILES = {
    # The method grid scores ~19 models: its own limit, stated in the report.
    "full": Profile(
        "full", FULL, {"rounds": 2, "samples": 64, "seq_len": 512}, methods=GRID, method_eval={"task_limit": 200}
    ),
    # Small calibration and limits; CI runs it (about 15 min on 2 cores from scratch, mostly the two ONNX
    # exports and two vLLM starts). It asserts nothing about speed.
    "quick": Profile(
        "quick",
        QUICK,
        {"rounds": 1, "samples": 8, "seq_len": 128},
        seq_len=256,
        wikitext_limit=4,
        wikitext_long=512,
        domain_samples=1,
        task_limit=10,
        prompt_len=32,
        new_tokens=16,
        batch=4,
        repeats=1,
        methods=("ours", "wanda-sp"),
        method_ratios=(0.2,),
        method_compress={"rounds": 1, "samples": 8, "seq_len": 128},
    ),
}


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


def speed_once(
    runtime: str,
    art: Path,
    p: Profile,
    threads: int,
    dtype: str,
    timeout: int = 900,
    device: str = "auto",
    pair_with: Path | None = None,
    pairs: int = 0,
) -> dict:
    """One fresh worker process timing `art`; with `pair_with`, that baseline and `art` side by side in the
    process, `pairs` times, their decode steps in turn (speed_worker.run_paired)."""
    art, m = load_artifact(art)
    check_shipped_code(art, m)
    req = {
        "runtime": runtime,
        "artifact": str(art.resolve()),
        "prompt_len": p.prompt_len,
        "new_tokens": p.new_tokens,
        "batch": p.batch,
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
    ok = [s for s in samples if "error" not in s]
    out = {"runs": len(ok), "errors": [s["error"] for s in samples if "error" in s]}
    for k in ("ttft_s", "decode_tok_s_b1", "decode_tok_s_batch", "peak_rss_mb", "gpu_peak_mb", "load_s"):
        vals = [s[k] for s in ok if s.get(k) is not None]
        if vals:
            out[k] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    return out


def profile_for(cfg: BenchConfig) -> Profile:
    """The profile's settings with the config's overrides (a new Profile; the named ones never change)."""
    over = {
        f: v
        for f, v in (
            ("task_limit", cfg.limit),
            ("wikitext_limit", cfg.wikitext_windows),
            ("repeats", cfg.repeats),
            ("domain_samples", cfg.domain_samples),
        )
        if v is not None
    }
    ev = {
        k: v
        for k, v in (
            ("task_limit", cfg.method_limit),
            ("wikitext_limit", cfg.method_windows),
            ("domain_samples", cfg.method_domain_samples),
        )
        if v is not None
    }
    if ev:
        over["method_eval"] = ev
    if cfg.methods is not None:
        over["methods"] = () if cfg.methods == ("none",) else cfg.methods
    if cfg.method_ratios is not None:
        over["method_ratios"] = cfg.method_ratios
    if cfg.models is not None:
        over["variants"] = tuple(v for v in PROFILES[cfg.profile].variants if v.label in cfg.models)
    return replace(PROFILES[cfg.profile], runtimes=cfg.runtimes, **over)


def run_bench(cfg: BenchConfig, log=None) -> Path:
    """Quality and speed of the dense model and its cuts, side by side; returns the report folder.
    With cfg.shapes: speed of random-weight models in real shapes instead (bench/shapes.py)."""
    import torch

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if cfg.shapes:
        from .shapes import CUTS, format_shapes, run_shapes

        out = Path(cfg.out) / f"{time.strftime('%Y-%m-%d')}-{machine_slug(machine())}-shapes-{'-'.join(cfg.shapes)}"
        print(
            format_shapes(
                run_shapes(
                    list(cfg.shapes),
                    list(cfg.cuts or CUTS),
                    cfg.runtimes,
                    out,
                    Path(cfg.workdir) / "shapes",
                    repeats=cfg.repeats or 5,
                    threads=set_threads(cfg.threads or os.cpu_count() or 1),
                    profile=cfg.profile_cut,
                    log=log,
                    paired=cfg.paired or 0,
                )
            )
        )
        return out
    p = profile_for(cfg)
    skip_quality, skip_speed, model = cfg.skip_quality, cfg.skip_speed, cfg.model
    root = data_root()
    if root is None and not skip_quality:
        raise PrunekitError(
            "no local data folder for the quality benchmarks; set $PRUNEKIT_DATA to the folder "
            "that holds perplexity/ and eval/ (../shared/data on these machines)."
        )
    threads = set_threads(cfg.threads or os.cpu_count() or 1)
    from prunekit.offload import resolve_device

    device = resolve_device(cfg.device)  # the PyTorch runs' device, set once here
    dtype = compute_dtype(device.type)
    if cfg.profile == "full" and cfg.limit is None and dtype == "float32" and p.task_limit is None:
        # Full zero-shot sets take about 2.5 h per model on 2 fp32 cores: 500 documents per task instead, enough
        # for a standard error near 0.02 (the report gives each one and the paired differences to dense).
        p = replace(p, task_limit=FP32_TASK_LIMIT)
        log(f"bench: {dtype} compute, zero-shot on the first {FP32_TASK_LIMIT} documents per task (--limit to change)")
    t0 = time.time()
    stamp = time.strftime("%Y-%m-%d")
    mach = machine()
    workdir = Path(cfg.workdir)
    arts = prepare(p.variants, workdir / cfg.profile, {**p.compress, "threads": threads}, cfg.given(), log, model)
    results = {
        "profile": asdict(p),
        "command": shlex.join(["prunekit", *sys.argv[1:]]),
        "model": model,
        "machine": mach,
        "threads": threads,
        "dtype": dtype,
        "device": device.type,
        "date": stamp,
        "models": {},
    }
    partial = workdir / cfg.profile / "results.partial.json"
    partial.parent.mkdir(parents=True, exist_ok=True)

    def checkpoint() -> None:  # a long run can be read (and survives a crash) as it goes
        write_json_atomic(partial, results)

    def method_row(row: dict) -> None:
        results["methods"].append(row)
        checkpoint()

    for label, art in arts.items():
        _, m = load_artifact(art)
        params = (m.source or {}).get("manifest", {}).get("params", {})
        results["models"][label] = {
            "artifact": str(art),
            "layout": m.layout,
            # a dense artifact has no pruning record: its stored tensors are its size
            "params": params.get("pruned_total") or stored_params(art),
            "dense_params": params.get("dense_total"),
            "weight_bytes_per_token": weight_bytes_per_token(art),
            **disk_mb(art),
        }
    if not skip_quality:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .quality import evaluate_model

        for label, art in arts.items():
            log(f"quality: {label}")
            art, m = load_artifact(art)
            check_shipped_code(art, m)
            lm = (
                AutoModelForCausalLM.from_pretrained(
                    art, dtype=getattr(torch, dtype), trust_remote_code=needs_remote_code(m)
                )
                .to(device)
                .eval()
            )
            if results["models"][label]["params"] is None:
                results["models"][label]["params"] = sum(x.numel() for x in lm.parameters())
            tok = AutoTokenizer.from_pretrained(art)
            results["models"][label]["quality"] = evaluate_model(
                lm,
                tok,
                root,
                p.seq_len,
                p.wikitext_limit,
                p.domain_samples,
                p.tasks,
                p.task_limit,
                log=log,
                wikitext_long=p.wikitext_long,
            )
            del lm
            checkpoint()
        if p.methods:
            from .methods import method_grid

            log(f"methods: {', '.join(p.methods)} at {', '.join(f'{r:.0%}' for r in p.method_ratios)}")
            results["methods"] = []
            ev = {
                "wikitext_limit": p.wikitext_limit,
                "domain_samples": p.domain_samples,
                "task_limit": p.task_limit,
                **p.method_eval,
            }
            results["method_eval"] = ev
            method_grid(
                model,
                root,
                p.method_ratios,
                p.methods,
                p.method_compress,
                seq_len=p.seq_len,
                wikitext_limit=ev["wikitext_limit"],
                domain_samples=ev["domain_samples"],
                tasks=p.tasks,
                task_limit=ev["task_limit"],
                log=log,
                on_row=method_row,
            )
    elif p.methods:
        log("methods: skipped with the quality benchmarks (--skip-quality)")
    if not skip_speed:
        samples: dict = {label: {rt: [] for rt in p.runtimes} for label in arts}
        for label in arts:
            results["models"][label]["speed_raw"] = samples[label]  # filled in place, checkpointed as it goes
        for rep in range(p.repeats):
            for label, art in run_order(list(arts.items()), rep):  # interleaved: every model once per repeat
                for rt in p.runtimes:
                    t = time.time()
                    s = speed_once(rt, art, p, threads, dtype, device=device.type)
                    samples[label][rt].append(s)
                    log(
                        f"speed {rep + 1}/{p.repeats} {label:>14} {rt:<12} "
                        + (
                            s["error"]
                            if "error" in s
                            else f"ttft {s['ttft_s'] * 1e3:.0f} ms, "
                            f"b1 {s['decode_tok_s_b1']:.1f} tok/s, b{p.batch} {s['decode_tok_s_batch']:.1f} tok/s, "
                            f"rss {s['peak_rss_mb']:.0f} MB"
                        )
                        + f" ({time.time() - t:.0f} s)"
                    )
            checkpoint()
        for label in arts:
            results["models"][label]["speed"] = {rt: summarize(samples[label][rt]) for rt in p.runtimes}
    results["seconds"] = round(time.time() - t0, 1)
    from .report import write_report

    out = Path(cfg.out) / f"{stamp}-{machine_slug(mach)}{'' if cfg.profile == 'full' else '-' + cfg.profile}"
    write_report(results, out)
    partial.unlink(missing_ok=True)  # the report folder now holds results.json
    log(f"bench: wrote {out}/report.md ({results['seconds']:.0f} s)")
    return out


def machine_slug(m: dict) -> str:
    name = (m.get("gpu") or m["cpu"]).lower()
    for junk in ("(r)", "(tm)", "processor", "cpu", "nvidia", "amd", "intel", "@"):
        name = name.replace(junk, " ")
    words = [w for w in name.replace("-", " ").split() if w.isalnum() and not w.endswith("ghz")][:3]
    isa = [] if m.get("gpu") or not m.get("isa") or m["isa"] in words else [m["isa"]]
    return "-".join(words + isa + [f"{m['cores']}c"])
