"""The models a bench run compares: the dense default model and pruned variants, each as an export
artifact (HF checkpoint + ONNX), built on demand and reused when already complete."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Variant:
    label: str
    ratio: float  # 0 = dense
    mode: str = "uniform"


FULL = (Variant("dense", 0.0), Variant("20%", 0.2), Variant("40%", 0.4), Variant("30% per-layer", 0.3, "per-layer"))
QUICK = (Variant("dense", 0.0), Variant("20%", 0.2))


def slug(label: str) -> str:
    return label.replace("%", "pct").replace(" ", "-")


def weight_bytes_per_token(artifact: Path) -> int:
    """Bytes of weights a decode step reads: every matrix once (the tied LM head counts once; the
    embedding table is a gather of one row, so it only counts when it doubles as the LM head)."""
    import json

    from safetensors import safe_open

    cfg = json.loads((artifact / "config.json").read_text())
    total = 0
    for f in sorted(artifact.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                sl = st.get_slice(k)
                shape = sl.get_shape()
                if len(shape) != 2 or ("embed_tokens" in k and not cfg.get("tie_word_embeddings")):
                    continue
                n = shape[0] * shape[1]
                # I8: int8 weights; I32: 4-bit weights packed eight to a word (so 4 bytes per entry is right)
                total += n * {"F32": 4, "BF16": 2, "F16": 2, "I8": 1, "U8": 1}.get(sl.get_dtype(), 4)
    return total


def stored_params(artifact: Path) -> int:
    """Parameters in an artifact's safetensors, from their headers (no weights read): what a model that was
    not pruned by prunekit (dense) has, when no quality run loads it."""
    import math

    from safetensors import safe_open

    total = 0
    for f in sorted(artifact.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return total


def disk_mb(artifact: Path) -> dict:
    hf = sum(p.stat().st_size for p in artifact.glob("*.safetensors"))
    onnx = sum(p.stat().st_size for p in (artifact / "onnx").glob("*")) if (artifact / "onnx").is_dir() else 0
    return {"hf_mb": hf / 2**20, "onnx_mb": onnx / 2**20}


def prepare(
    variants, workdir: Path, compress_kw: dict, given: dict[str, str], log, model: str = "default"
) -> dict[str, Path]:
    """label -> artifact dir. Given artifacts are used as they are; others are built through the
    orchestrator, which reuses any step whose inputs are unchanged."""
    from prunekit.compress import CompressConfig
    from prunekit.export import ExportConfig

    from prunekit.pipeline import build_artifact, mode_settings

    out = {}
    for v in variants:
        if v.label in given:
            out[v.label] = Path(given[v.label])
            continue
        art = workdir / slug(v.label)
        ccfg = None
        if v.ratio > 0:
            kw = {
                "model": model,
                "out": str(workdir / f".{slug(v.label)}-pruned"),
                "ratio": v.ratio,
                "mode": v.mode,
                "rounds": compress_kw["rounds"],
                "samples": compress_kw["samples"],
                "seq_len": compress_kw["seq_len"],
                "threads": compress_kw.get("threads"),
            }
            ccfg = CompressConfig(**{**kw, **mode_settings(v.mode)})
        log(f"{v.label}: {'compress ' + v.mode + ', ' if ccfg else ''}export -> {art}")
        build_artifact(art, ExportConfig(model=model, out=str(art), tokens=4), ccfg, log=log)
        out[v.label] = art
    return out
