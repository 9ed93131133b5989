"""`prunekit bench`: quality and speed of dense vs pruned, side by side, in one invocation.

Everything is measured in this one run on this one machine: quality in-process (PyTorch, compute
dtype), speed in a fresh process per (repeat, model, runtime), interleaved so that drift of a noisy
machine spreads over all models; medians with min-max are reported.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from prunekit.artifact import check_shipped_code, load_artifact, needs_remote_code, write_json_atomic
from prunekit.env import compute_dtype, data_root, set_threads
from prunekit.errors import PrunekitError

from .config import FP32_TASK_LIMIT, PRESETS, BenchConfig, Preset
from .models import disk_mb, prepare, stored_params, weight_bytes_per_token
from .timing import machine, machine_slug, run_order, speed_once, summarize


def preset_for(cfg: BenchConfig) -> Preset:
    """The preset's settings with the config's overrides (a new Preset; the named ones never change)."""
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
        over["variants"] = tuple(v for v in PRESETS[cfg.preset].variants if v.label in cfg.models)
    return replace(PRESETS[cfg.preset], runtimes=cfg.runtimes, **over)


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
                    profile_cut=cfg.profile_cut,
                    log=log,
                    paired=cfg.paired or 0,
                )
            )
        )
        return out
    p = preset_for(cfg)
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
    if cfg.preset == "full" and cfg.limit is None and dtype == "float32" and p.task_limit is None:
        # Full zero-shot sets take about 2.5 h per model on 2 fp32 cores: 500 documents per task instead, enough
        # for a standard error near 0.02 (the report gives each one and the paired differences to dense).
        p = replace(p, task_limit=FP32_TASK_LIMIT)
        log(f"bench: {dtype} compute, zero-shot on the first {FP32_TASK_LIMIT} documents per task (--limit to change)")
    t0 = time.time()
    stamp = time.strftime("%Y-%m-%d")
    mach = machine()
    workdir = Path(cfg.workdir)
    arts = prepare(p.variants, workdir / cfg.preset, {**p.compress, "threads": threads}, cfg.given(), log, model)
    results = {
        "preset": asdict(p),
        "command": shlex.join(["prunekit", *sys.argv[1:]]),
        "model": model,
        "machine": mach,
        "threads": threads,
        "dtype": dtype,
        "device": device.type,
        "date": stamp,
        "models": {},
    }
    partial = workdir / cfg.preset / "results.partial.json"
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
                    s = speed_once(
                        rt,
                        art,
                        threads,
                        dtype,
                        prompt_len=p.prompt_len,
                        new_tokens=p.new_tokens,
                        batch=p.batch,
                        device=device.type,
                    )
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

    out = Path(cfg.out) / f"{stamp}-{machine_slug(mach)}{'' if cfg.preset == 'full' else '-' + cfg.preset}"
    write_report(results, out)
    partial.unlink(missing_ok=True)  # the report folder now holds results.json
    log(f"bench: wrote {out}/report.md ({results['seconds']:.0f} s)")
    return out
