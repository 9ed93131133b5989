"""Arguments of `prunekit export` and `prunekit verify`."""
from __future__ import annotations


def add_parsers(sub) -> None:
    s = sub.add_parser("export", help="turn a pruned checkpoint into a deployable artifact (HF + ONNX)")
    s.add_argument("model", help="pruned checkpoint directory (prunekit compress --out), or any supported "
                   "HF model directory / hub id")
    s.add_argument("--out", required=True, help="artifact directory to create")
    s.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX graph")
    s.add_argument("--tokens", type=int, default=16, help="greedy tokens in the reference verify checks")
    s.add_argument("--force", action="store_true", help="replace a non-empty --out")
    s.add_argument("--trust-remote-code", action="store_true", help="run the model's own code (off by default)")
    s.add_argument("--allow-pickle", action="store_true", help="accept *.bin/*.pt weights (unsafe)")
    s.set_defaults(fn=_export)

    s = sub.add_parser("verify", help="run an artifact in transformers, onnxruntime and vLLM; compare to PyTorch")
    s.add_argument("artifact", help="directory written by prunekit export")
    s.add_argument("--runtimes", default="transformers,onnxruntime,vllm", help="comma list to check")
    s.add_argument("--atol", type=float, default=1e-2, help="max |first-step logit difference| allowed (fp32)")
    s.add_argument("--kv-cache-gib", type=float, default=1.0, help="vLLM KV cache size")
    s.add_argument("--threads", type=int, default=None, help="torch / onnxruntime threads")
    s.set_defaults(fn=_verify)


def _export(args) -> None:
    from .run import export
    export(args.model, args.out, force=args.force, onnx=args.onnx, tokens=args.tokens,
           trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)


def _verify(args) -> int:
    from .verify import format_table, verify
    report = verify(args.artifact, runtimes=tuple(r for r in args.runtimes.split(",") if r), atol=args.atol,
                    kv_cache_gib=args.kv_cache_gib, threads=args.threads)
    print(format_table(report))
    return 0 if report["passed"] else 1
