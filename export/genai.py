"""An onnxruntime-genai model folder (`genai/`) beside our graph, built by onnxruntime-genai's own model builder.

CPU and edge users of ONNX reach for onnxruntime-genai: its builder writes a graph with its contrib ops
(`GroupQueryAttention` with the rotary fused and one shared KV buffer, `SkipSimplifiedLayerNormalization`) and
`genai_config.json`, and its runtime manages the cache. The builder takes one global width per model, so only the
uniform layout gets a folder; per-layer artifacts have our graph (onnx/) only. It builds fp32 from the HF checkpoint
export just wrote; a quantized artifact is refused (the builder quantizes by its own method, not from our integers).
Its graph has no position_ids input, so our runner cannot drive it: verify runs it through the genai generator.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.runtimes import genai_greedy, genai_model

GENAI_DIR = "genai"


def check_genai(layout: str, why: str, quantize: str | None) -> None:
    if quantize:
        raise PrunekitError(
            "--genai with --quantize: onnxruntime-genai's builder quantizes by its own method, not from prunekit's "
            "integers. Export the unquantized artifact with --genai, or the quantized one without it."
        )
    if layout != "uniform":
        raise PrunekitError(
            f"--genai needs the uniform layout, which is all onnxruntime-genai's builder holds; this model goes to "
            f"the {layout} layout ({why}). Drop --genai: onnx/model.onnx runs it on onnxruntime."
        )


def build_genai(hf_dir: Path, out: Path, timeout: int = 1800) -> dict:
    """Run onnxruntime-genai's builder on the HF checkpoint in `hf_dir` into `out` (fp32, CPU)."""
    import importlib.metadata as md

    try:
        version = md.version("onnxruntime-genai")
    except md.PackageNotFoundError as e:
        raise PrunekitError("--genai needs onnxruntime-genai: pip install onnxruntime-genai==0.18.0") from e
    # Absolute paths: the builder runs in its cache folder (it writes scratch files into its working directory).
    hf_dir, out = Path(hf_dir).resolve(), Path(out).resolve()
    with tempfile.TemporaryDirectory(prefix="prunekit-genai-") as cache:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out)]
        cmd += ["-p", "fp32", "-e", "cpu", "-c", cache]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cache)
        except subprocess.TimeoutExpired as e:
            raise PrunekitError(f"onnxruntime-genai's builder ran past {timeout} s; export without --genai.") from e
    if proc.returncode != 0 or not (out / "genai_config.json").is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise PrunekitError(f"onnxruntime-genai's builder failed (exit {proc.returncode}): {' | '.join(tail)}")
    return {"dir": GENAI_DIR, "builder": f"onnxruntime-genai {version}", "precision": "fp32", "provider": "cpu"}


def run_genai(art: Path, manifest, ref: dict, threads: int | None):
    """genai's greedy tokens and first-step logits per prompt. genai stops at EOS (forcing a length would suppress
    EOS instead); when it stopped on the reference's own EOS, the reference's tokens after it, which genai by design
    does not produce, are taken as they are, as optimum-check compares."""
    model = genai_model(art / manifest.genai["dir"], threads)
    tokens, logits = [], []
    for p, want in zip(ref["prompt_ids"], ref["tokens"]):
        t, first = genai_greedy(model, [p], ref["new_tokens"], stop_at_eos=True)
        got = t[0]
        if len(got) < len(want) and got == want[: len(got)]:
            got = list(want)  # stopped at the reference's EOS: equal as far as genai goes
        tokens.append(got)
        logits.append(first[0])
    return tokens, np.stack(logits)
