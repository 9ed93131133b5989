"""Arguments of `prunekit bench`."""
from __future__ import annotations


def add_parser(sub) -> None:
    s = sub.add_parser("bench", help="quality and speed of dense vs pruned, side by side (make bench)")
    s.add_argument("--profile", choices=("full", "quick"), default="full",
                   help="full: full eval sets, 20/40%% and per-layer, method grid; quick: small limits (~15 min)")
    s.add_argument("--out", default="bench/results", help="results go to OUT/<date>-<machine>/")
    s.add_argument("--workdir", default="bench/work", help="where the compared artifacts are built and reused")
    s.add_argument("--artifact", action="append", default=[], metavar="LABEL=DIR",
                   help="use an existing export artifact for a model label (dense, 20%%, 40%%, '30%% per-layer')")
    s.add_argument("--runtimes", default=None, help="comma list of torch,onnxruntime,vllm (default: all)")
    s.add_argument("--limit", type=int, default=None, help="examples per zero-shot task (default: profile's)")
    s.add_argument("--wikitext-windows", type=int, default=None, help="WikiText-2 windows (default: profile's)")
    s.add_argument("--repeats", type=int, default=None)
    s.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: all cores)")
    s.add_argument("--shapes", default=None, help="instead: random-weight models in real shapes, e.g. "
                   "llama-3.1-8b,qwen2.5-7b (meant for a GPU; see prunekit.bench.shapes)")
    s.add_argument("--model", default="default", help="the dense model to prune and compare (local path or hub id)")
    s.add_argument("--methods", default=None, help="method grid: comma list of `prunekit compare` variants, or "
                   "'none' (default: the profile's; full = ours, ours-oneshot, ours-c4only, ours-nocomp, "
                   "magnitude, wanda-sp, flap, taylor, block-influence at 20%% and 40%%)")
    s.add_argument("--method-limit", type=int, default=None,
                   help="examples per zero-shot task for the method grid (default: --limit)")
    s.add_argument("--method-windows", type=int, default=None,
                   help="WikiText-2 windows for the method grid (default: --wikitext-windows)")
    s.add_argument("--method-domain-samples", type=int, default=None,
                   help="held-out windows per domain for the method grid (default: --domain-samples)")
    s.add_argument("--domain-samples", type=int, default=None, help="held-out windows per domain (default: profile's)")
    s.add_argument("--skip-quality", action="store_true")
    s.add_argument("--skip-speed", action="store_true")
    s.set_defaults(fn=_run)


def _run(args) -> None:
    from prunekit.errors import PrunekitError

    if args.shapes:
        import time
        from pathlib import Path

        from .run import machine, machine_slug
        from .shapes import format_shapes, run_shapes
        out = Path(args.out) / f"{time.strftime('%Y-%m-%d')}-{machine_slug(machine())}-shapes"
        print(format_shapes(run_shapes(args.shapes.split(","), [0.0, 0.2, 0.4], out,
                                       repeats=args.repeats or 3)))
        return

    from .run import run_bench
    given = {}
    for a in args.artifact:
        if "=" not in a:
            raise PrunekitError(f"--artifact {a!r}: use LABEL=DIR, e.g. --artifact 20%=artifacts/NAME.")
        k, v = a.split("=", 1)
        given[k] = v
    over = {k: v for k, v in (("task_limit", args.limit), ("wikitext_limit", args.wikitext_windows),
                              ("repeats", args.repeats), ("domain_samples", args.domain_samples)) if v is not None}
    ev = {k: v for k, v in (("task_limit", args.method_limit), ("wikitext_limit", args.method_windows),
                            ("domain_samples", args.method_domain_samples)) if v is not None}
    if ev:
        over["method_eval"] = ev
    if args.methods is not None:
        over["methods"] = () if args.methods == "none" else tuple(m for m in args.methods.split(",") if m)
        from prunekit.compress.compare import check_variants
        check_variants(list(over["methods"]))
    run_bench(args.profile, args.out, args.workdir, given, args.threads,
              args.runtimes.split(",") if args.runtimes else None, args.skip_quality, args.skip_speed, over,
              model=args.model)
