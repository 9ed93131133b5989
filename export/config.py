"""The typed configs of `prunekit export` and `prunekit verify`."""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.config import Config, check, check_positive, opt

# onnxruntime-genai runs only where export --genai wrote its folder; verify skips it elsewhere.
RUNTIMES = ("transformers", "onnxruntime", "onnxruntime-genai", "vllm")
QUANT_SCHEMES = ("int8", "int4")
HF_LAYOUTS = ("auto", "per-layer")  # export --layout (export/hf.py picks the layout under auto)
CACHES = ("concat", "inplace")  # export --onnx-cache (export/onnx.py)


@dataclass(frozen=True)
class ExportConfig(Config):
    model: str = opt(
        "",
        "pruned checkpoint directory (prunekit compress --out), or any supported HF model directory or hub id",
        positional=True,
    )
    out: str = opt("", "artifact directory to create", required=True)
    onnx: bool = opt(True, "skip the ONNX graph", flag="--no-onnx")
    onnx_cache: str = opt(
        "inplace",
        "the ONNX graph's KV cache: inplace (opset 24: a preallocated buffer that each step writes into, bound in "
        "place by prunekit's runner: decode on par with onnxruntime-genai's graph; docs/export.md shows the "
        "contract) or concat (opset 23: past in, a longer present out; what optimum's ORTModelForCausalLM runs)",
        choices=CACHES,
    )
    genai: bool = opt(
        False,
        "also write genai/: an onnxruntime-genai model folder built by its own builder (uniform layout, "
        "unquantized; needs onnxruntime-genai)",
    )
    layout: str = opt(
        "auto",
        "HF checkpoint layout for layers of differing widths: auto (vLLM's native DeciLM "
        "layout where it can hold them, else per-layer) or per-layer (transformers' heterogeneous "
        "config; vLLM runs it through its slower Transformers backend)",
        choices=HF_LAYOUTS,
    )
    quantize: str | None = opt(
        None,
        "quantize the projections after the cut: int8 (W8A8 for vLLM, 8-bit MatMulNBits for onnxruntime) or int4 "
        "(W4A16 per group, 4-bit MatMulNBits); off by default",
        choices=QUANT_SCHEMES,
        type=str,
    )
    quant_method: str = opt(
        "auto", "auto (int8: round-to-nearest, int4: GPTQ), rtn or gptq", choices=("auto", "rtn", "gptq")
    )
    calib: str = opt("default", "calibration mix YAML for GPTQ (default: the packaged mix)")
    quant_samples: int = opt(
        128, "calibration sequences for GPTQ, spread over the mix's domains (at most the mix's: 66 in the default)"
    )
    tokens: int = opt(16, "greedy tokens in the reference that verify checks")
    force: bool = opt(False, "replace a non-empty --out")
    trust_remote_code: bool = opt(False, "run the model's own code (off by default)")
    allow_pickle: bool = opt(False, "accept *.bin/*.pt weights (unsafe: unpickling runs code)")

    def validate(self) -> None:
        check(bool(self.model), "export needs a model: the pruned checkpoint directory (or 'default').")
        check(bool(self.out), "export needs --out: the artifact directory to create.")
        check_positive("tokens", self.tokens, allow_none=False)
        check_positive("quant_samples", self.quant_samples, allow_none=False)

    def method(self) -> str:
        """The quantization method that runs: int4 needs GPTQ's error correction, int8 rounds to nearest."""
        if self.quant_method != "auto":
            return self.quant_method
        return "gptq" if self.quantize == "int4" else "rtn"

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
