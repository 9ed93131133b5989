"""compress: iterative structured pruning on a multi-domain calibration mix.

The stage's public entry (the Python API; bench and the orchestrator use only these names):

    compress(CompressConfig(model=..., out=..., ratio=0.2)) -> Manifest   prune and write a checkpoint
    compare(CompareConfig(...)) -> dict; compare_markdown(result)          methods side by side
    pruned_variants(...)                                                   in-memory variants (bench)
    load_mix / build_mix / pack_texts                                      the calibration mix's text
    quantize_calibration(calib, tokenizer, n)                              GPTQ's sequences (export --quantize)

Inside: data (mix), stats (statistics), scores, plan, surgery (cut and refit), iterate (rounds).
"""

from .config import METHODS, VARIANTS, CompareConfig, CompressConfig, check_variants
from .data import build as build_mix
from .data import load_mix, quantize_calibration
from .data import pack as pack_texts
from .run import compress
from .variants import compare, compare_markdown, pruned_variants

# Bumped when a change makes compress produce other weights from the same settings and data (2: the first round
# scores each layer in its cut pass; 3: recovery's held-out guard, its own held-out sequences and one forward a
# step): the artifacts pipeline then cuts again instead of reusing an older cut.
REVISION = 3

__all__ = [
    "REVISION",
    "VARIANTS",
    "METHODS",
    "CompareConfig",
    "CompressConfig",
    "build_mix",
    "check_variants",
    "compare",
    "compare_markdown",
    "compress",
    "load_mix",
    "pack_texts",
    "pruned_variants",
    "quantize_calibration",
]
