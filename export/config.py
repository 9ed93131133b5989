"""The typed configs of `prunekit export` and `prunekit verify`."""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.config import Config, check, check_positive, opt

RUNTIMES = ("transformers", "onnxruntime", "vllm")
HF_LAYOUTS = ("auto", "per-layer")  # export --layout (export/hf.py picks the layout under auto)


@dataclass(frozen=True)
class ExportConfig(Config):
    model: str = opt(
        "",
        "pruned checkpoint directory (prunekit compress --out), or any supported HF model directory or hub id",
        positional=True,
    )
    out: str = opt("", "artifact directory to create", required=True)
    onnx: bool = opt(True, "skip the ONNX graph", flag="--no-onnx")
    layout: str = opt(
        "auto",
        "HF checkpoint layout for layers of differing widths: auto (vLLM's native DeciLM "
        "layout where it can hold them, else per-layer) or per-layer (transformers' heterogeneous "
        "config; vLLM runs it through its slower Transformers backend)",
        choices=HF_LAYOUTS,
    )
    tokens: int = opt(16, "greedy tokens in the reference that verify checks")
    force: bool = opt(False, "replace a non-empty --out")
    trust_remote_code: bool = opt(False, "run the model's own code (off by default)")
    allow_pickle: bool = opt(False, "accept *.bin/*.pt weights (unsafe: unpickling runs code)")

    def validate(self) -> None:
        check(bool(self.model), "export needs a model: the pruned checkpoint directory (or 'default').")
        check(bool(self.out), "export needs --out: the artifact directory to create.")
        check_positive("tokens", self.tokens, allow_none=False)

    def inputs(self) -> dict:
        """What decides the artifact's content (the orchestrator hashes it for resume)."""
        return self.to_dict(exclude=("model", "out", "force"))


@dataclass(frozen=True)
class VerifyConfig(Config):
    artifact: str = opt("", "directory written by prunekit export", positional=True)
    runtimes: tuple[str, ...] = opt(RUNTIMES, "runtimes to check")
    atol: float = opt(1e-2, "max |first-step logit difference| allowed (fp32)")
    kv_cache_gib: float = opt(1.0, "vLLM KV cache size in GiB")
    threads: int | None = opt(None, "torch / onnxruntime threads (default: torch's choice)", type=int)
    device: str = opt(
        "cpu",
        "where the transformers check runs (fp32 either way): cpu, cuda, or auto",
        choices=("auto", "cpu", "cuda"),
    )

    def validate(self) -> None:
        check(bool(self.artifact), "verify needs the artifact directory.")
        unknown = [r for r in self.runtimes if r not in RUNTIMES]
        check(
            not unknown and bool(self.runtimes),
            f"unknown runtime(s) {unknown or '(none given)'}; choose from {', '.join(RUNTIMES)}.",
        )
        check(self.atol > 0, f"--atol must be positive, got {self.atol}.")
        check(self.kv_cache_gib > 0, f"--kv-cache-gib must be positive, got {self.kv_cache_gib}.")
        check_positive("threads", self.threads)
