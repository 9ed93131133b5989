"""The models a bench run compares: the dense default model and pruned variants, each as an export
artifact (HF checkpoint + ONNX), built on demand and reused when already complete."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prunekit.artifact import read_manifest


@dataclass(frozen=True)
class Variant:
    label: str
    ratio: float          # 0 = dense
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
                total += n * {"F32": 4, "BF16": 2, "F16": 2}.get(sl.get_dtype(), 4)
    return total


def disk_mb(artifact: Path) -> dict:
    hf = sum(p.stat().st_size for p in artifact.glob("*.safetensors"))
    onnx = sum(p.stat().st_size for p in (artifact / "onnx").glob("*")) if (artifact / "onnx").is_dir() else 0
    return {"hf_mb": hf / 2**20, "onnx_mb": onnx / 2**20}


def prepare(variants, workdir: Path, compress_kw: dict, given: dict[str, str], log,
            model: str = "default") -> dict[str, Path]:
    """label -> artifact dir. Given artifacts are used as they are; others are built (or reused)."""
    from prunekit.compress.iterate import Settings
    from prunekit.compress.plan import Constraints
    from prunekit.compress.run import Job, run
    from prunekit.export.run import export

    out = {}
    for v in variants:
        if v.label in given:
            out[v.label] = Path(given[v.label])
            continue
        art = workdir / slug(v.label)
        want = {"model": model, "ratio": v.ratio, "mode": v.mode, **{k: compress_kw[k] for k in sorted(compress_kw)}}
        if read_manifest(art).get("bench") == want if art.is_dir() else False:
            log(f"{v.label}: reusing {art}")
            out[v.label] = art
            continue
        src = model
        if v.ratio > 0:
            pruned = workdir / f".{slug(v.label)}-pruned"
            log(f"{v.label}: compress {model} ({v.mode}) -> {pruned}")
            s = Settings(constraints=Constraints(ratio=v.ratio, mode=v.mode), rounds=compress_kw["rounds"])
            run(Job(model=model, out=str(pruned), settings=s, force=True, samples=compress_kw["samples"],
                    seq_len=compress_kw["seq_len"], threads=compress_kw.get("threads")), log=log)
            src = str(pruned)
        log(f"{v.label}: export -> {art}")
        export(src, str(art), force=True, tokens=4, log=log)
        from prunekit.artifact import write_manifest
        m = read_manifest(art)
        m["bench"] = want
        write_manifest(art, m)
        out[v.label] = art
    return out
