"""bench: quality and speed of dense vs pruned models on every stock runtime, side by side.

The stage's public entry (the Python API):

    run_bench(BenchConfig(preset="quick")) -> Path     one run, a report folder (report.md, results.json, plots)
    run_shapes(["qwen2.5-0.5b"], ["20%", "30% per-layer"], ("torch", "vllm"), out, work)   cuts at real shapes
    PRESETS                                            the named settings of --preset (full, quick)

and the measuring pieces that the one-off studies in lab/ reuse, so that they time what bench times:

    prompts(batch, length, vocab, seed)     the bench's deterministic random prompts
    LOADERS[runtime](req, artifact)         an artifact loaded in torch, onnxruntime or vllm (a Loaded)
    op_category(name, dims, vocab, op_type) the category a profiled op counts in (op_profile.CATEGORIES)

bench builds its artifacts through the orchestrator (prunekit.pipeline) and calls the other stages'
public entries only.
"""

from .config import PRESETS, BenchConfig
from .op_profile import op_category
from .run import run_bench
from .shapes import format_shapes, run_shapes
from .speed_worker import LOADERS, Loaded, prompts

__all__ = [
    "LOADERS",
    "PRESETS",
    "BenchConfig",
    "Loaded",
    "format_shapes",
    "op_category",
    "prompts",
    "run_bench",
    "run_shapes",
]
