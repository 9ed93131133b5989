"""`prunekit export`: a pruned checkpoint -> a deployable artifact (HF checkpoint + ONNX + reference).

The artifact is self-describing: prunekit.json lists every file with its sha256, the layout, what was
pruned, and the reference the runtimes are checked against (greedy tokens and first-step logits of the
pruned model as prunekit loaded it, in fp32, computed before anything was converted).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from prunekit import __version__
from prunekit.artifact import Manifest, atomic_dir, check_out_dir, read_manifest, sha256_file, write_manifest
from prunekit.env import package_versions
from prunekit.errors import PrunekitError
from prunekit.faults import point
from prunekit.loading import load_config, load_model, load_tokenizer
from prunekit.runtimes import torch_greedy

from .config import ExportConfig
from .genai import GENAI_DIR, build_genai, check_genai
from .hf import layout_of, write_hf
from .onnx import check_domains, export_onnx
from .quantize_onnx import QUANT_OPS, rewrite

# Not beside the weights: vLLM loads every top-level *.safetensors as model weights.
REFERENCE = "reference/logits.safetensors"
PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n",
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:",
    "Write a short note thanking a colleague for their help.",
    "Die Hauptstadt von Deutschland ist",
)
# A quantized artifact is checked against the model it came from by agreement, not bit for bit: more prompts,
# across the mix's kinds of text (written for this check, in none of the data sets), make its rates mean something.
QUANT_PROMPTS = (
    "The most important thing to remember when baking bread is",
    "import numpy as np\n\ndef normalize(v):\n",
    "Question: A train travels 60 km in 1.5 hours. What is its average speed?\nAnswer:",
    "List three ways to save energy at home.",
    "La recette traditionnelle de la ratatouille contient",
    "The history of the printing press began",
    "SELECT name, COUNT(*) FROM orders",
    "If x + 3 = 10, then x =",
    "Explain in one sentence why the sky is blue.",
    "Der schnellste Weg zum Bahnhof ist",
    "In the morning, the old fisherman",
)
# Files that verify/serve add later; the file list covers what export wrote.
NOT_HASHED = ("prunekit.json", "verify.json")


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in NOT_HASHED
    }


def load_source(src: str, trust_remote_code: bool, allow_pickle: bool):
    try:
        return load_model(src, dtype="float32", trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    except PrunekitError:
        raise
    except Exception as e:  # safetensors header errors, size mismatches: all mean a bad checkpoint
        raise PrunekitError(
            f"could not load {src}: {type(e).__name__}: {str(e).splitlines()[0][:300]}. "
            "The checkpoint is corrupt or does not match its config; re-run compress."
        ) from e


def reference(model, tok, prompts, n: int) -> tuple[dict, dict]:
    ids = [tok(p).input_ids for p in prompts]
    tokens, logits = [], []
    for p in ids:
        t, first = torch_greedy(model, [p], n)
        tokens.append(t[0])
        logits.append(torch.from_numpy(first[0]))
    return (
        {"prompts": list(prompts), "prompt_ids": ids, "tokens": tokens, "new_tokens": n},
        {"first_logits": torch.stack(logits).contiguous()},
    )


def check_quantizable(model, fam, cfg: ExportConfig) -> None:
    """Refuse what a runtime cannot run before any work: int4 widths that no group divides (quantize's own
    check) and int8 in the per-layer layout, which vLLM runs through its Transformers backend, whose CPU int8
    kernel takes 2-D inputs only (it fails at the first forward)."""
    from prunekit.quantize import SCHEMES, group_size

    group_size(model, fam, SCHEMES[cfg.quantize])
    layout, why = layout_of(model.config, fam, cfg.layout)
    if cfg.quantize == "int8" and layout == "per-layer":
        raise PrunekitError(
            f"--quantize int8 cannot go into the per-layer layout ({why}): vLLM runs that layout through its "
            "Transformers backend, whose CPU int8 kernel fails on it. Use --quantize int4, or a cut whose layers "
            "keep the same heads (the DeciLM layout: compress with --structures mlp)."
        )


def quantize_model(model, fam, cfg: ExportConfig, calib: dict | None, log) -> tuple[dict, dict]:
    """Quantize the projections in place (after the reference is taken); returns (records, info)."""
    from prunekit.quantize import quantize

    t = time.time()
    method = cfg.method()
    records, info = quantize(model, fam, cfg.quantize, method, calib)
    info["seconds"] = round(time.time() - t, 1)
    log(
        f"quantize: {cfg.quantize} ({method}, group {info['group_size']}) of {len(records)} projections "
        f"in {info['seconds']:.0f} s"
    )
    return records, info


def export(
    cfg: ExportConfig, prompts=PROMPTS, log=None, inputs_hash: str | None = None, calib: dict | None = None
) -> Manifest:
    """Turn a pruned checkpoint (or any supported model) into a deployable artifact at cfg.out: HF
    checkpoint in the layout the plan needs, ONNX graph with KV cache, and the fp32 PyTorch reference
    that verify compares every runtime with. Written atomically; returns the manifest. `calib` (domain -> token
    ids) is what GPTQ calibrates on when cfg.quantize needs it."""
    log = log or (lambda m: print(m, file=sys.stderr))
    check_out_dir(cfg.out, cfg.force)
    if cfg.quantize and cfg.method() == "gptq" and not calib:
        raise PrunekitError(
            "GPTQ needs calibration sequences (export(cfg, calib=...)); `prunekit export` and `prunekit artifacts` "
            "build them from --calib."
        )
    t0 = time.time()
    config, source, _ = load_config(cfg.model, cfg.trust_remote_code)
    stored = str(getattr(config, "dtype", None) or "float32").replace("torch.", "")
    model, fam, source = load_source(source, cfg.trust_remote_code, cfg.allow_pickle)
    tok = load_tokenizer(source, cfg.trust_remote_code)
    upstream = read_manifest(source)
    if cfg.genai:
        check_genai(*layout_of(model.config, fam, cfg.layout), cfg.quantize)
    if cfg.quantize:
        check_quantizable(model, fam, cfg)
        prompts = tuple(prompts) + QUANT_PROMPTS
    ref_meta, ref_tensors = reference(model, tok, prompts, cfg.tokens)
    log(f"reference: {len(prompts)} prompts x {cfg.tokens} greedy tokens (fp32, PyTorch)")
    quant = quantize_model(model, fam, cfg, calib, log) if cfg.quantize else None
    with atomic_dir(cfg.out, force=cfg.force) as tmp:
        onnx_info = None
        if cfg.onnx:
            t = time.time()
            onnx_info = export_onnx(model, tmp / "onnx", cfg.onnx_cache)
            if quant:
                onnx_info["quantization"] = rewrite(tmp / onnx_info["file"], model, quant[0])
                onnx_info["op_types"] = check_domains(tmp / onnx_info["file"], allow=QUANT_OPS)
            point("export:onnx")
            log(
                f"onnx: {len(onnx_info['op_types'])} standard op types, opset {onnx_info['opset']} "
                f"({time.time() - t:.0f} s)"
            )
        from safetensors.torch import save_file

        (tmp / REFERENCE).parent.mkdir()
        save_file(ref_tensors, str(tmp / REFERENCE))
        dtype = getattr(torch, stored)
        hf = write_hf(model if quant else model.to(dtype), tok, fam, tmp, cfg.layout, quant, dtype)
        log(f"hf: {hf['layout']} layout{' (' + hf['reason'] + ')' if hf.get('reason') else ''}, {stored}")
        genai = None
        if cfg.genai:
            t = time.time()
            genai = build_genai(tmp, tmp / GENAI_DIR)
            point("export:genai")
            log(f"genai: {GENAI_DIR}/ by {genai['builder']} ({time.time() - t:.0f} s)")
        up = upstream.to_dict() if upstream is not None else {}
        manifest = Manifest(
            stage="export",
            name=Path(cfg.out).name,
            family=fam.name,
            inputs_hash=inputs_hash,
            architectures=list(getattr(model.config, "architectures", []) or []),
            **hf,
            dtype=stored,
            onnx=onnx_info,
            genai=genai,
            quantization=quant[1] if quant else None,
            source={
                "path": source,
                "manifest": {
                    k: up[k]
                    for k in (
                        "source_model",
                        "source_hash",
                        "method",
                        "settings",
                        "params",
                        "quality",
                        "recovery",
                        "layout",
                    )
                    if k in up
                },
            },
            reference=ref_meta,
            files=file_hashes(tmp),
            versions={
                "prunekit": __version__,
                **package_versions("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-genai"),
            },
            export_s=round(time.time() - t0, 1),
        )
        write_manifest(tmp, manifest)
    log(f"wrote {cfg.out} in {time.time() - t0:.0f} s; check it with: prunekit verify {cfg.out}")
    return manifest
