"""The one module that reads the environment (paths, caches, offline data)."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    """Where prunekit caches converted models and downloads: $PRUNEKIT_HOME or ~/.cache/prunekit."""
    return Path(os.environ.get("PRUNEKIT_HOME", Path.home() / ".cache" / "prunekit")).expanduser()


def eval_cache_dir() -> Path:
    """Where compress keeps the dense model's held-out perplexity: $PRUNEKIT_EVAL_CACHE or $PRUNEKIT_HOME/dense-eval."""
    return Path(os.environ.get("PRUNEKIT_EVAL_CACHE") or home() / "dense-eval").expanduser()


# Set by the compress_scale bench for its child runs: each stage also counts its matrix products (prunekit.timer).
COUNT_PRODUCTS_VAR = "PRUNEKIT_COUNT_PRODUCTS"


def count_products_asked() -> bool:
    return os.environ.get(COUNT_PRODUCTS_VAR, "") == "1"


def kill_point() -> str | None:
    """The fault point at which the kill tests ask the process to SIGKILL itself ($PRUNEKIT_KILL_AT)."""
    return os.environ.get("PRUNEKIT_KILL_AT")


def torchrun_var(name: str, default: int) -> int:
    """One of torchrun's integer variables (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE): known before the
    process group is joined."""
    return int(os.environ.get(name, default))


def quiet_other_ranks() -> None:
    """Under torchrun only rank 0 reports: the other ranks' progress bars are off (tqdm reads this at import)."""
    if torchrun_var("RANK", 0) != 0:
        os.environ.setdefault("TQDM_DISABLE", "1")


def data_root() -> Path | None:
    """The local data folder that the default mix and the benchmarks read, if there is one.

    $PRUNEKIT_DATA wins; otherwise ../shared/data beside the checkout (how these machines lay it out)
    or ./shared/data. None means: fall back to the hub data sets named in the mix.
    """
    env = os.environ.get("PRUNEKIT_DATA")
    if env:
        return Path(env).expanduser()
    for cand in (
        REPO_ROOT.parent / "shared" / "data",
        REPO_ROOT / "shared" / "data",
        Path.cwd() / "shared" / "data",
        Path.cwd().parent / "shared" / "data",
    ):
        if cand.is_dir():
            return cand
    return None


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:  # read once: the compress hooks ask per batch
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), for reports: every figure names its machine."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls run natively (several times faster than fp32). Without them
    torch emulates bf16 and it is about 100x slower than fp32 (seen on AVX2-only EPYC machines)."""
    return cpu_isa() != ""


def cpu_isa() -> str:
    """The CPU's matmul class, for reports and result folders: "amx", "avx512bf16" (both run bf16 natively,
    at different speeds) or "" (fp32 only: bf16 is emulated). The model name alone does not tell them apart
    ("AMD EPYC" is an AVX2-only VM on one day and an AVX512-BF16 one on another)."""
    flags = _cpuinfo()
    return "amx" if "amx_bf16" in flags else "avx512bf16" if "avx512_bf16" in flags else ""


ISA_NAMES = {"amx": "AMX", "avx512bf16": "AVX512-BF16"}


def cpu_text(name: str | None = None, isa: str | None = None) -> str:
    """The CPU as reports name it: model name and matmul class, e.g. "AMD EPYC (AVX512-BF16)"."""
    name, isa = name or cpu_name(), cpu_isa() if isa is None else isa
    return f"{name} ({ISA_NAMES.get(isa, 'no native bf16')})"


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count once, at a command's entry (None: leave torch's choice).
    Library functions never set it themselves. Returns the count in force."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def child_env(**extra: str) -> dict:
    """The environment for a child process (vLLM, workers), with overrides."""
    return {**os.environ, **extra}


def has_var(name: str) -> bool:
    return name in os.environ


def compute_dtype(device: str = "auto") -> str:
    """The dtype for calibration and evaluation on this machine: $PRUNEKIT_DTYPE, else bf16 where the
    CPU runs it natively (or on CUDA, unless device is "cpu"), else fp32."""
    env = os.environ.get("PRUNEKIT_DTYPE")
    if env:
        return env
    try:
        import torch

        if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
            # Pre-Ampere GPUs (V100, T4) have no bf16 units: fp32 there.
            return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    except ImportError:
        pass
    return "bfloat16" if cpu_has_fast_bf16() else "float32"


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (absent ones are left out), for manifests."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
