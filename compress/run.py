"""`prunekit compress`: load, calibrate, prune, report quality, and write the checkpoint atomically."""
from __future__ import annotations

import json
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from prunekit import __version__
from prunekit.artifact import atomic_dir, check_out_dir, sha256_dir, write_manifest
from prunekit.checkpoint import save_model, save_tokenizer
from prunekit.loading import load_config, load_model, load_tokenizer

from . import data as D
from .iterate import Settings, compress
from .quality import per_domain, table


@dataclass
class Job:
    model: str
    out: str
    calib: str = "default"
    settings: Settings = None  # type: ignore[assignment]
    seed: int | None = None
    samples: int | None = None      # total calibration sequences (overrides the mix)
    seq_len: int | None = None
    domains: tuple[str, ...] = ()   # restrict the mix's calibration to these domains
    force: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
    threads: int | None = None
    dtype: str = "auto"             # compute dtype; auto: bf16 where the CPU runs it natively, else fp32


def versions() -> dict:
    import transformers
    return {"prunekit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def source_hash(source: str, model) -> str:
    p = Path(source)
    if p.is_dir():
        return "sha256:" + sha256_dir(p, "*.safetensors")
    return f"hub:{source}@{getattr(model.config, '_commit_hash', None) or 'unknown'}"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(job: Job, log=None) -> dict:
    log = log or (lambda m: print(m, file=sys.stderr))
    check_out_dir(job.out, job.force)  # fail before minutes of work, not after
    job.settings.validate()
    if job.threads:
        torch.set_num_threads(job.threads)
    torch.manual_seed(job.seed or 0)
    t0 = time.time()
    mix = D.load_mix(job.calib, seed=job.seed, seq_len=job.seq_len, total_samples=job.samples)
    model, fam, source = load_model(job.model, dtype=job.dtype, trust_remote_code=job.trust_remote_code,
                                    allow_pickle=job.allow_pickle)
    # The loaded config reports the compute dtype; the stored one says how to write the result.
    stored_dtype = getattr(load_config(source, job.trust_remote_code, check_family=False)[0], "dtype", None)
    tok = load_tokenizer(source, job.trust_remote_code)
    data = D.build(mix, tok)
    calib = D.only_domains(mix, data.calib, job.domains, tok) if job.domains else data.calib
    log(f"calibration: {sum(len(v) for v in calib.values())} x {mix.seq_len} tokens from "
        f"{', '.join(calib)}; held-out: {', '.join(data.heldout)}")
    t_data = time.time()
    dense_ppl = per_domain(model, data.heldout, job.settings.batch_size)
    t_eval = time.time()
    record = compress(model, fam, calib, data.heldout, job.settings, log)
    t_cut = time.time()
    pruned_ppl = per_domain(model, data.heldout, job.settings.batch_size)
    real = sum(p.numel() for p in model.parameters())  # parameters() skips the tied head: unique ones
    if real != record["params"]["pruned_total"]:
        raise AssertionError(f"plan says {record['params']['pruned_total']} parameters, model has {real}")
    report = table({"dense": dense_ppl, "pruned": pruned_ppl}, list(data.heldout))
    manifest = {
        "format": "prunekit/1", "stage": "compress", "source_model": source,
        "source_hash": source_hash(source, model),
        "layout": "uniform" if not getattr(model.config, "prunekit_layers", None) else "per-layer",
        "calibration": {"mix": mix.spec(), "fingerprint": data.fingerprint, "domains_used": list(calib),
                        "tokens": sum(v.numel() for v in calib.values())},
        **record,
        "quality": {"heldout_ppl": {"dense": dense_ppl, "pruned": pruned_ppl},
                    "heldout_tokens_per_domain": {d: int(v.numel()) for d, v in data.heldout.items()}},
        "timings_s": {"data": round(t_data - t0, 1), "dense_eval": round(t_eval - t_data, 1),
                      "compress": round(t_cut - t_eval, 1), "pruned_eval": round(time.time() - t_cut, 1)},
        "peak_rss_mb": round(peak_rss_mb()),
        "threads": torch.get_num_threads(), "versions": versions(),
    }
    # Store in the dtype the source was stored in (bf16 for most checkpoints), whatever we computed in.
    store = getattr(torch, str(stored_dtype or "float32").replace("torch.", ""), torch.float32)
    with atomic_dir(job.out, force=job.force) as tmp:
        save_model(model.to(store), tmp)
        save_tokenizer(tok, tmp)
        write_manifest(tmp, manifest)
    p = manifest["params"]
    log(f"parameters: {p['dense_total']:,} -> {p['pruned_total']:,} "
        f"({1 - p['pruned_total'] / p['dense_total']:.1%} of all removed, "
        f"{1 - p['pruned_decoder'] / p['dense_decoder']:.1%} of the decoder)")
    log("held-out perplexity per domain:\n" + report)
    log(f"wrote {job.out} in {time.time() - t0:.0f} s (peak RSS {manifest['peak_rss_mb']} MB)")
    return manifest


def dump(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, default=str)
