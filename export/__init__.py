"""export: a pruned checkpoint -> a deployable artifact, and its check on every stock runtime.

The stage's public entry (the Python API; the orchestrator, serve's users and bench use only these):

    export(ExportConfig(model=PRUNED, out=ART)) -> Manifest   HF checkpoint (+ per-layer layout), ONNX, reference
    verify(VerifyConfig(artifact=ART)) -> dict                  transformers, onnxruntime, vLLM vs the reference
    format_table(report) -> str                                 the verify table
"""

from .checks import format_table, verify
from .config import QUANT_SCHEMES, RUNTIMES, ExportConfig, VerifyConfig
from .run import export

__all__ = ["QUANT_SCHEMES", "RUNTIMES", "ExportConfig", "VerifyConfig", "export", "format_table", "verify"]
