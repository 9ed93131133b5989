"""`prunekit` command line: thin entry points over the stage modules."""
from __future__ import annotations

import argparse
import sys

from .errors import PrunekitError


def _cmd_default_model(args) -> None:
    from .default_model import ensure_default_model
    print(ensure_default_model())


def _cmd_mix(args) -> None:
    from prunekit.compress.data import build, load_mix
    from .loading import load_tokenizer

    mix = load_mix(args.calib, seq_len=args.seq_len, seed=args.seed)
    data = build(mix, load_tokenizer(args.model))
    print(f"mix {mix.name}: seq_len {mix.seq_len}, seed {mix.seed}, fingerprint {data.fingerprint[:16]}")
    print(f"{'domain':<14}{'calib seqs':>11}{'held-out seqs':>15}")
    for dom in mix.domains:
        c, h = data.calib.get(dom.name), data.heldout.get(dom.name)
        print(f"{dom.name:<14}{0 if c is None else len(c):>11}{0 if h is None else len(h):>15}")


def _cmd_artifacts(args) -> None:
    from .pipeline import Pipeline, run_pipeline
    run_pipeline(Pipeline(model=args.model, ratio=args.ratio, mode=args.mode, out=args.out, name=args.name,
                          rounds=args.rounds, threads=args.threads, kv_cache_gib=args.kv_cache_gib,
                          runtimes=tuple(r for r in args.runtimes.split(",") if r), rebuild=args.rebuild))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prunekit", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("default-model", help="fetch and convert the offline default model; print its path")
    s.set_defaults(fn=_cmd_default_model)

    s = sub.add_parser("mix", help="build a calibration mix and print what it holds")
    s.add_argument("--calib", default="default", help="mix YAML (default: the packaged 5-domain mix)")
    s.add_argument("--model", default="default", help="model whose tokenizer packs the text")
    s.add_argument("--seq-len", type=int, default=None)
    s.add_argument("--seed", type=int, default=None)
    s.set_defaults(fn=_cmd_mix)

    s = sub.add_parser("artifacts", help="the CI job: compress -> export -> verify -> summary, resumable")
    s.add_argument("--model", default="default")
    s.add_argument("--ratio", type=float, default=0.2)
    s.add_argument("--mode", choices=("uniform", "per-layer"), default="uniform")
    s.add_argument("--rounds", type=int, default=2)
    s.add_argument("--out", default="artifacts", help="artifacts go to OUT/<name>/")
    s.add_argument("--name", default=None, help="artifact name (default: <model>-pruned-<percent>)")
    s.add_argument("--runtimes", default="transformers,onnxruntime,vllm")
    s.add_argument("--kv-cache-gib", type=float, default=1.0)
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--rebuild", action="store_true", help="redo every step even if its output exists")
    s.set_defaults(fn=_cmd_artifacts)

    from prunekit.compress.cli import add_parser as add_compress
    add_compress(sub)
    from prunekit.compress.compare import add_parser as add_compare
    add_compare(sub)
    from prunekit.export.cli import add_parsers as add_export
    add_export(sub)
    from prunekit.serve.cli import add_parsers as add_serve
    add_serve(sub)
    from prunekit.bench.cli import add_parser as add_bench
    add_bench(sub)

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.fn(args)  # a command may return a non-zero exit code (e.g. verify failed)
    except PrunekitError as e:
        print(f"prunekit {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prunekit {args.cmd}: interrupted", file=sys.stderr)
        return 130
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
