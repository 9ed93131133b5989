"""`prunekit` command line (app layer): each command builds its stage's typed config once from the
flags (which come from the config's own fields and defaults) and calls the stage's public entry."""

from __future__ import annotations

import argparse
import sys

from prunekit.bench import BenchConfig, run_bench
from prunekit.compress import CompareConfig, CompressConfig, compare, compare_markdown, compress
from prunekit.export import ExportConfig, VerifyConfig, format_table, verify
from prunekit.serve import LoadConfig, ServeConfig, Server, format_load, models, run_load, serve

from .artifact import write_json_atomic
from .config import add_args, from_args
from .errors import PrunekitError
from .pipeline import ArtifactsConfig, export_calibrated, run_artifacts


def _default_model(args) -> None:
    from .default_model import ensure_default_model

    print(ensure_default_model())


def _mix(args) -> None:
    from prunekit.compress import build_mix, load_mix

    from .loading import load_tokenizer

    mix = load_mix(args.calib, seq_len=args.seq_len, seed=args.seed)
    data = build_mix(mix, load_tokenizer(args.model))
    print(f"mix {mix.name}: seq_len {mix.seq_len}, seed {mix.seed}, fingerprint {data.fingerprint[:16]}")
    print(f"{'domain':<14}{'calib seqs':>11}{'held-out seqs':>15}")
    for dom in mix.domains:
        c, h = data.calib.get(dom.name), data.heldout.get(dom.name)
        print(f"{dom.name:<14}{0 if c is None else len(c):>11}{0 if h is None else len(h):>15}")


def _compare(args) -> None:
    res = compare(from_args(CompareConfig, args))
    print(compare_markdown(res))


def _verify(args) -> int:
    report = verify(from_args(VerifyConfig, args))
    print(format_table(report))
    return 0 if report["passed"] else 1


def _report_load(cfg: LoadConfig, result: dict) -> int:
    print(format_load(result))
    for e in result["error_samples"]:
        print(f"  error: {e}", file=sys.stderr)
    if cfg.json_out:
        write_json_atomic(cfg.json_out, result)
    return 1 if result["errors"] or not result["requests"] else 0


def _load(args) -> int:
    cfg = from_args(LoadConfig, args)
    if not cfg.model:
        cfg = cfg.replace(model=models(cfg.url, cfg.api_key)[0])
    return _report_load(cfg, run_load(cfg))


def _serve(args) -> int:
    cfg = from_args(ServeConfig, args)
    if not args.smoke:
        return serve(cfg)
    load = from_args(LoadConfig, args, url=cfg.url(), model="-", api_key=cfg.api_key)  # checked before start
    with Server(cfg) as srv:
        print(f"serving {srv.name!r} at {srv.url}; running the load client ...", file=sys.stderr)
        return _report_load(load, run_load(load.replace(model=srv.name)))


def _run(entry, cls):
    """A command that builds its config from the flags and calls the stage entry (exit code 0)."""
    return lambda args: entry(from_args(cls, args)) and None


# name, help, the config its flags come from, what runs it
COMMANDS = (
    (
        "artifacts",
        "the CI job: compress -> export -> verify -> summary, resumable",
        ArtifactsConfig,
        _run(run_artifacts, ArtifactsConfig),
    ),
    (
        "compress",
        "prune a causal LM with the multi-domain iterative method",
        CompressConfig,
        _run(compress, CompressConfig),
    ),
    ("compare", "compare pruning methods side by side on held-out perplexity", CompareConfig, _compare),
    (
        "export",
        "turn a pruned checkpoint into a deployable artifact (HF + ONNX)",
        ExportConfig,
        _run(export_calibrated, ExportConfig),
    ),
    ("verify", "run an artifact in transformers, onnxruntime and vLLM; compare to PyTorch", VerifyConfig, _verify),
    ("serve", "serve a verified artifact with vLLM's OpenAI-compatible server", ServeConfig, _serve),
    ("load", "bounded load test of an OpenAI-compatible server", LoadConfig, _load),
    (
        "bench",
        "quality and speed of dense vs pruned, side by side (make bench)",
        BenchConfig,
        _run(run_bench, BenchConfig),
    ),
)


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev off: a retired or renamed flag (--profile, now --preset) must fail, not match a longer one.
    p = argparse.ArgumentParser(prog="prunekit", description=__doc__, allow_abbrev=False)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser(
        "default-model", allow_abbrev=False, help="fetch and convert the offline default model; print its path"
    )
    s.set_defaults(fn=_default_model)

    s = sub.add_parser("mix", allow_abbrev=False, help="build a calibration mix and print what it holds")
    s.add_argument("--calib", default="default", help="mix YAML (default: the packaged 6-domain mix)")
    s.add_argument("--model", default="default", help="model whose tokenizer packs the text")
    s.add_argument("--seq-len", type=int, default=None)
    s.add_argument("--seed", type=int, default=None)
    s.set_defaults(fn=_mix)

    for name, text, cls, fn in COMMANDS:
        s = sub.add_parser(name, allow_abbrev=False, help=text)
        add_args(s, cls)
        if cls is ServeConfig:
            s.add_argument("--smoke", action="store_true", help="start, run the load client, stop; exit 1 on any error")
            add_args(s, LoadConfig, skip=("url", "model", "api_key"))
        s.set_defaults(fn=fn)
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
