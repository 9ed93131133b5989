"""bench: quality and speed of dense vs pruned models on every stock runtime, side by side.

The stage's public entry (the Python API):

    run_bench(BenchConfig(profile="quick")) -> Path     one run, a report folder (report.md, results.json, plots)
    run_shapes(["qwen2.5-0.5b"], ["20%", "30% per-layer"], ("torch", "vllm"), out, work)   cuts at real shapes

bench builds its artifacts through the orchestrator (prunekit.pipeline) and calls the other stages'
public entries only.
"""

from .config import BenchConfig
from .run import run_bench
from .shapes import format_shapes, run_shapes

__all__ = ["BenchConfig", "format_shapes", "run_bench", "run_shapes"]
