"""The orchestrator: compress -> export -> verify with reuse; `prunekit artifacts` (= `make artifacts`,
the CI job) and bench both build their artifacts through `build_artifact`.

Each step records one hash of its inputs in its manifest (`inputs_hash`); a re-run skips a step whose
complete output is there with the same hash, and rebuilds anything else (every step writes
atomically, so "complete" is simply "its manifest exists"). App layer: it calls the stages' public
entries only.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from prunekit.compress import REVISION, CompressConfig, compress, load_mix, quantize_calibration
from prunekit.export import (
    CACHES,
    QUANT_SCHEMES,
    RUNTIMES,
    ExportConfig,
    VerifyConfig,
    check_genai,
    export,
    format_table,
    verify,
)

from .artifact import Manifest, inputs_hash, read_manifest, sha256_file, write_json_atomic, write_text_atomic
from .config import Config, check, check_positive, opt
from .env import set_threads
from .errors import PrunekitError
from .model_card import readme


def mode_settings(mode: str) -> dict:
    """Compress settings that go with a layout. Per-layer widths are searched by measured KL:
    allocating by scores was worse than uniform widths, the KL search better
    (docs/results/compress-quality.md); it costs about 6x the prune time."""
    return {"selection": "obs", "allocation": "kl", "rounds": 1} if mode == "per-layer" else {}


@dataclass(frozen=True)
class ArtifactsConfig(Config):
    model: str = opt("default", "hub id or local HF directory to prune")
    calib: str = opt("default", "calibration mix YAML (default: the packaged 6-domain mix)")
    ratio: float = opt(0.2, "fraction of parameters to remove")
    mode: str = opt(
        "uniform",
        "uniform (stock checkpoint) or per-layer (widths searched by measured KL; "
        "about 6x the prune time; needs shipped code to load)",
        choices=("uniform", "per-layer"),
    )
    # The artifact a user deploys is the cut, then distilled: at 20% on the default model, WikiText-2 x2.43 of dense
    # for the cut alone, x1.89 with these defaults, in about 5 minutes of compress (5.5 for the whole `make
    # artifacts`) on a 2-core AMX Xeon (docs/results/compress-levers.md). One round: followed by recovery, one cut
    # beat two rounds on three seeds at 40% (docs/results/compress-recovery.md), in half the cut's time. The KL
    # widths (--mode per-layer) add about 4 minutes and give up the stock layout: one flag, not the default.
    rounds: int = opt(1, "calibration rounds")
    recover_tokens: int = opt(
        196608,
        "after the cut, distil from the dense model on this many calibration-mix tokens (training; 0: the "
        "retraining-free cut alone; see prunekit compress --help)",
    )
    quantize: str | None = opt(
        None,
        "also quantize after the cut and recovery: int8 (W8A8 / 8-bit MatMulNBits) or int4 (GPTQ, W4A16 / 4-bit "
        "MatMulNBits); see prunekit export --help",
        choices=QUANT_SCHEMES,
        type=str,
    )
    genai: bool = opt(False, "also write an onnxruntime-genai model folder (see prunekit export --help)")
    onnx_cache: str = opt(
        "inplace",
        "the ONNX graph's KV cache: inplace or concat (for optimum; see prunekit export --help)",
        choices=CACHES,
    )
    out: str = opt("artifacts", "artifacts go to OUT/<name>/")
    name: str | None = opt(None, "artifact name (default: <model>-pruned-<percent>[-per-layer][-recovered])")
    runtimes: tuple[str, ...] = opt(RUNTIMES, "runtimes verify checks")
    kv_cache_gib: float = opt(1.0, "vLLM KV cache size in GiB")
    threads: int | None = opt(None, "torch threads (default: torch's choice)", type=int)
    rebuild: bool = opt(False, "redo every step even if its output exists")

    def validate(self) -> None:
        self.compress_config()  # the compress fields are checked as compress checks them
        VerifyConfig(artifact=".", runtimes=self.runtimes, kv_cache_gib=self.kv_cache_gib)
        check(
            self.name is None or ("/" not in self.name and self.name not in ("", ".", "..")),
            f"--name {self.name!r} must be a plain directory name.",
        )
        check_positive("threads", self.threads)
        if self.genai:  # export refuses the same, after minutes of compress: say it before them
            check_genai("uniform" if self.mode == "uniform" else "per-layer", f"--mode {self.mode}", self.quantize)

    def compress_config(self) -> CompressConfig:
        kw = {
            "model": self.model,
            "calib": self.calib,
            "ratio": self.ratio,
            "mode": self.mode,
            "rounds": self.rounds,
            "recover_tokens": self.recover_tokens,
            "threads": self.threads,
        }
        return CompressConfig(**{**kw, **mode_settings(self.mode)})

    def artifact_name(self, compress_cfg: CompressConfig | None = None) -> str:
        """--name, else <model>-pruned-<percent> with the layout and the recovery of the compress settings used."""
        from .loading import resolve_source

        c = compress_cfg or self.compress_config()
        base = (
            Path(resolve_source(self.model)[0]).name
            if self.model == "default"
            else self.model.rstrip("/").split("/")[-1]
        )
        suffix = ("-per-layer" if c.mode == "per-layer" else "") + ("-recovered" if c.recover_tokens else "")
        return self.name or f"{base}-pruned-{round(c.ratio * 100)}{suffix}{self.quant_suffix()}"

    def quant_suffix(self) -> str:
        return f"-{self.quantize}" if self.quantize else ""


def compress_hash(cfg: CompressConfig) -> str:
    """What decides a compress step's output: its settings and the mix's spec (an edited mix file, the
    packaged default included, is a changed input even when --calib names the same path)."""
    # The recovery's settings count only when it runs: artifacts built before they existed stay valid.
    off = ("recover_tokens", "recover_lr", "recover_batch", "recover_seq_len") if not cfg.recover_tokens else ()
    # Where the dense evaluation came from (--no-eval-cache) does not change the output. The revision does:
    # an artifact that older code cut from the same settings is not reused.
    return inputs_hash(
        {
            "step": "compress",
            **cfg.to_dict(exclude=("out", "force", "threads", "eval_cache", *off)),
            "mix": load_mix(cfg.calib).spec(),
            "revision": REVISION,
        }
    )


def export_calibrated(cfg: ExportConfig, log=None, inputs_hash: str | None = None):
    """`prunekit export`: the export stage, handed GPTQ's calibration sequences when its quantization needs them
    (the mix is compress's; export does not read it itself)."""
    calib = None
    if cfg.quantize and cfg.method() == "gptq":
        from .loading import load_config, load_tokenizer

        _, source, _ = load_config(cfg.model, cfg.trust_remote_code)
        calib = quantize_calibration(cfg.calib, load_tokenizer(source, cfg.trust_remote_code), cfg.quant_samples)
    return export(cfg, log=log, inputs_hash=inputs_hash, calib=calib)


def build_artifact(
    art: Path,
    export_cfg: ExportConfig,
    compress_cfg: CompressConfig | None = None,
    runtimes: tuple[str, ...] = (),
    kv_cache_gib: float = 1.0,
    threads: int | None = None,
    rebuild: bool = False,
    log=None,
) -> tuple[Manifest | None, Manifest, dict | None, dict]:
    """compress (when compress_cfg is given; its out is the pruned checkpoint, which export reads),
    export into `art`, verify on `runtimes` (none: skip). Returns (compress manifest, artifact
    manifest, verify report, seconds per step)."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    timings: dict[str, float] = {}
    c = None
    t = time.time()
    if compress_cfg is not None:
        pruned = Path(compress_cfg.out)
        h = compress_hash(compress_cfg)
        c = read_manifest(pruned) if pruned.is_dir() else None
        if not rebuild and c is not None and c.stage == "compress" and c.inputs_hash == h:
            log(f"compress: reusing {pruned}")
        else:
            log(f"compress {compress_cfg.model} by {compress_cfg.ratio:.0%} ({compress_cfg.mode}) -> {pruned}")
            c = compress(compress_cfg.replace(force=True), log=log, inputs_hash=h)
        export_cfg = export_cfg.replace(model=str(pruned))
        # The pruned manifest changes whenever compress ran again: export then runs again too.
        upstream = sha256_file(pruned / "prunekit.json")
    else:
        upstream = export_cfg.model
    timings["compress"] = round(time.time() - t, 1)

    t = time.time()
    h = inputs_hash({"step": "export", "source": upstream, **export_cfg.inputs()})
    a = read_manifest(art) if art.is_dir() else None
    if not rebuild and a is not None and a.stage == "export" and a.inputs_hash == h:
        log(f"export: reusing {art}")
    else:
        log(f"export -> {art}")
        a = export_calibrated(export_cfg.replace(out=str(art), force=True), log=log, inputs_hash=h)
    timings["export"] = round(time.time() - t, 1)

    report = None
    t = time.time()
    if runtimes:
        v = a.verify or {}
        if not rebuild and v.get("passed") and set(v.get("runtimes", {})) >= set(runtimes):
            log("verify: already passed")
            report = json.loads((art / "verify.json").read_text())
        else:
            log(f"verify on {', '.join(runtimes)}")
            report = verify(
                VerifyConfig(artifact=str(art), runtimes=runtimes, kv_cache_gib=kv_cache_gib, threads=threads), log=log
            )
            a = read_manifest(art)
    timings["verify"] = round(time.time() - t, 1)
    return c, a, report, timings


def run_artifacts(cfg: ArtifactsConfig, compress_cfg: CompressConfig | None = None, log=None) -> dict:
    """`prunekit artifacts`: OUT/<name>/ with the artifact, its verify report and a model card.
    `compress_cfg` replaces the compress settings derived from cfg (tests, experts)."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    set_threads(cfg.threads)
    name = cfg.artifact_name(compress_cfg)
    root = Path(cfg.out)
    # The cut is the same with or without quantization: the quantized artifact reuses the unquantized one's.
    cut = name.removesuffix(cfg.quant_suffix()) if cfg.name is None else name
    pruned, art = root / ".work" / cut / "pruned", root / name
    ccfg = (compress_cfg or cfg.compress_config()).replace(out=str(pruned), model=cfg.model)
    c, a, report, timings = build_artifact(
        art,
        ExportConfig(
            model=str(pruned),
            out=str(art),
            quantize=cfg.quantize,
            calib=cfg.calib,
            genai=cfg.genai,
            onnx_cache=cfg.onnx_cache,
        ),
        ccfg,
        cfg.runtimes,
        cfg.kv_cache_gib,
        cfg.threads,
        cfg.rebuild,
        log,
    )
    log(format_table(report))
    write_text_atomic(art / "README.md", readme(art, a, c, report))
    summary = {"artifact": str(art), "passed": report["passed"], "timings_s": timings}
    write_json_atomic(art.parent / f"{name}.summary.json", summary)
    if not report["passed"]:
        raise PrunekitError(f"verify failed for {art}; see {art / 'verify.json'}.")
    log(f"done: {art} ({sum(timings.values()):.0f} s); serve it with: prunekit serve {art}")
    return summary
