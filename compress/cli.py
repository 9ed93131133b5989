"""Arguments of `prunekit compress`."""
from __future__ import annotations

from .iterate import Settings
from .plan import Constraints
from .scores import METHODS


def add_parser(sub) -> None:
    s = sub.add_parser("compress", help="prune a causal LM with the multi-domain iterative method")
    s.add_argument("--model", default="default", help="hub id or local HF directory (default: the offline "
                   "SmolLM2-135M-Instruct)")
    s.add_argument("--calib", default="default", help="calibration mix YAML (default: the 5-domain mix)")
    s.add_argument("--out", required=True, help="output checkpoint directory")
    s.add_argument("--ratio", type=float, default=0.2, help="fraction of parameters to remove")
    s.add_argument("--ratio-of", choices=("total", "decoder"), default="total",
                   help="what --ratio is a fraction of (both are reported)")
    s.add_argument("--method", choices=METHODS, default="hybrid", help="importance score")
    s.add_argument("--structures", default="mlp",
                   help="comma list of what may be removed: mlp, heads, layers (default mlp: removing a "
                        "KV group cost SmolLM2-135M far more than the same parameters of MLP)")
    s.add_argument("--mode", choices=("uniform", "per-layer"), default="uniform",
                   help="uniform: same shape in every layer (stock checkpoint); per-layer: widths chosen "
                        "globally (needs export's per-layer layout)")
    s.add_argument("--rounds", type=int, default=Settings.rounds, help="calibration rounds (1: one-shot)")
    s.add_argument("--schedule", choices=("equal", "geometric"), default="equal")
    s.add_argument("--no-compensate", dest="compensate", action="store_false",
                   help="do not refit down_proj/o_proj after a cut")
    s.add_argument("--refit-target", choices=("local", "dense"), default="local",
                   help="refit to the current layer's own outputs (default: measured better), or to the "
                        "dense model's layer outputs (also aims to undo earlier cuts' error)")
    s.add_argument("--ridge", type=float, default=Settings.ridge, help="refit ridge, times the median gram diagonal")
    s.add_argument("--align", type=int, default=64, help="widths are multiples of this (64, 128, 256)")
    s.add_argument("--tp", type=int, default=1, help="tensor-parallel size that heads and widths must divide")
    s.add_argument("--tolerance", type=float, default=0.02, help="allowed |achieved - target| ratio")
    s.add_argument("--samples", type=int, default=None, help="total calibration sequences (mix default 64)")
    s.add_argument("--seq-len", type=int, default=None, help="tokens per calibration sequence (mix default)")
    s.add_argument("--domains", default="", help="calibrate on these mix domains only (comma list)")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                   help="compute dtype (auto: bf16 on CPUs with AMX/AVX512-BF16, else fp32)")
    s.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    s.add_argument("--force", action="store_true", help="replace a non-empty --out")
    s.add_argument("--trust-remote-code", action="store_true", help="run the model's own code (off by default)")
    s.add_argument("--allow-pickle", action="store_true", help="accept *.bin/*.pt weights (unsafe)")
    s.set_defaults(fn=_run)


def _run(args) -> None:
    from .run import Job, run

    c = Constraints(ratio=args.ratio, ratio_of=args.ratio_of,
                    structures=tuple(x for x in args.structures.split(",") if x), mode=args.mode,
                    align=args.align, tp=args.tp, tolerance=args.tolerance)
    s = Settings(method=args.method, constraints=c, rounds=args.rounds, schedule=args.schedule,
                 compensate=args.compensate, refit_target=args.refit_target, ridge=args.ridge, batch_size=args.batch_size)
    run(Job(model=args.model, out=args.out, calib=args.calib, settings=s, seed=args.seed,
            samples=args.samples, seq_len=args.seq_len,
            domains=tuple(x for x in args.domains.split(",") if x), force=args.force,
            trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
            threads=args.threads, dtype=args.dtype))
