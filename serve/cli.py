"""Arguments of `prunekit serve` and `prunekit load`."""
from __future__ import annotations

import json
import sys


def add_parsers(sub) -> None:
    s = sub.add_parser("serve", help="serve a verified artifact with vLLM's OpenAI-compatible server")
    s.add_argument("artifact", help="directory written by prunekit export (and checked by prunekit verify)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=None, help="require this bearer token")
    s.add_argument("--dtype", default="auto", help="auto: bf16 on GPUs and CPUs with native bf16, else float32")
    s.add_argument("--max-model-len", type=int, default=2048)
    s.add_argument("--kv-cache-gib", type=float, default=1.0, help="KV cache size (vLLM on CPU needs it set)")
    s.add_argument("--threads-bind", default=None, help="VLLM_CPU_OMP_THREADS_BIND (default: all cores)")
    s.add_argument("--compile", dest="enforce_eager", action="store_false",
                   help="let vLLM torch.compile the model (slower start, sometimes faster decode)")
    s.add_argument("--allow-unverified", action="store_true", help="serve an artifact that did not pass verify")
    s.add_argument("--smoke", action="store_true", help="start, run the load client, stop; exit 1 on any error")
    _load_args(s)
    s.set_defaults(fn=_serve)

    s = sub.add_parser("load", help="bounded load test of an OpenAI-compatible server")
    s.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8000")
    s.add_argument("--model", default=None, help="model name (default: the server's first model)")
    s.add_argument("--api-key", default=None)
    _load_args(s)
    s.set_defaults(fn=_load)


def _load_args(s) -> None:
    s.add_argument("--concurrency", type=int, default=4)
    s.add_argument("--requests", type=int, default=32, help="stop after this many requests")
    s.add_argument("--duration", type=float, default=120, help="or after this many seconds")
    s.add_argument("--max-tokens", type=int, default=32)
    s.add_argument("--kinds", default="completion,chat", help="request kinds to alternate")
    s.add_argument("--stop-at-eos", dest="ignore_eos", action="store_false",
                   help="let requests end at EOS (default: every request generates --max-tokens, vLLM's ignore_eos)")
    s.add_argument("--json", dest="json_out", default=None, help="also write the figures to this file")


def _options(args, model: str):
    from .load import LoadOptions
    if args.concurrency < 1 or args.requests < 1:
        from prunekit.errors import PrunekitError
        raise PrunekitError("--concurrency and --requests must be at least 1.")
    return LoadOptions(model=model, concurrency=args.concurrency, requests=args.requests, duration=args.duration,
                       max_tokens=args.max_tokens, kinds=tuple(k for k in args.kinds.split(",") if k),
                       api_key=args.api_key, ignore_eos=args.ignore_eos)


def _report(args, result: dict) -> int:
    from .load import format_load
    print(format_load(result))
    for e in result["error_samples"]:
        print(f"  error: {e}", file=sys.stderr)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
    return 1 if result["errors"] or not result["requests"] else 0


def _load(args) -> int:
    from .load import run_load
    from .server import models
    url = args.url.rstrip("/")
    model = args.model or models(url, args.api_key)[0]
    return _report(args, run_load(url, _options(args, model)))


def _serve(args) -> int:
    from .server import ServeOptions, Server, serve_forever
    opt = ServeOptions(host=args.host, port=args.port, api_key=args.api_key, dtype=args.dtype,
                       max_model_len=args.max_model_len, kv_cache_gib=args.kv_cache_gib,
                       threads_bind=args.threads_bind, enforce_eager=args.enforce_eager,
                       allow_unverified=args.allow_unverified)
    if not args.smoke:
        return serve_forever(args.artifact, opt)
    from .load import run_load
    with Server(args.artifact, opt) as srv:
        print(f"serving {srv.name!r} at {srv.url}; running the load client ...", file=sys.stderr)
        return _report(args, run_load(srv.url, _options(args, srv.name)))
