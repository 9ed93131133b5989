"""export: a pruned checkpoint -> a deployable artifact, and its check on every stock runtime.

The stage's public entry (the Python API; the orchestrator, serve's users and bench use only these):

    export(ExportConfig(model=PRUNED, out=ART)) -> Manifest   HF checkpoint (+ per-layer layout), ONNX, reference
    verify(VerifyConfig(artifact=ART)) -> dict                  transformers, onnxruntime, vLLM vs the reference
    format_table(report) -> str                                 the verify table
    check_genai(layout, why, quantize)                           refuse --genai where its builder cannot go
"""

from .checks import format_table, verify
from .config import CACHES, QUANT_SCHEMES, RUNTIMES, ExportConfig, VerifyConfig
from .genai import check_genai
from .run import export

__all__ = [
    "CACHES",
    "QUANT_SCHEMES",
    "RUNTIMES",
    "ExportConfig",
    "VerifyConfig",
    "check_genai",
    "export",
    "format_table",
    "verify",
]
