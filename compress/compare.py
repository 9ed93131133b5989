"""`prunekit compare`: several pruning methods on the same model, data and budget, in one run.

The model is loaded once, the calibration and held-out sequences are built once, the dense model is
evaluated once; each variant prunes a fresh copy and is evaluated on the same held-out text.
"""
from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from prunekit.errors import PrunekitError
from prunekit.loading import load_model, load_tokenizer

from . import data as D
from .iterate import Settings, compress
from .plan import Constraints
from .quality import per_domain, table

# name -> (Settings overrides, calibration domains or None for the whole mix). "ours" is the default
# method; the rest change one thing at a time or are the baselines a reviewer asks for.
VARIANTS: dict[str, tuple[dict, tuple[str, ...] | None]] = {
    "ours": ({}, None),
    "ours-oneshot": ({"rounds": 1}, None),
    "ours-c4only": ({}, ("web",)),
    "ours-nocomp": ({"compensate": False}, None),
    "ours-densefit": ({"refit_target": "dense"}, None),
    "ours-perlayer": ({"mode": "per-layer"}, None),
    "magnitude": ({"method": "magnitude", "rounds": 1, "compensate": False}, None),
    "wanda-sp": ({"method": "wanda-sp", "rounds": 1, "compensate": False}, None),
    "flap": ({"method": "flap", "rounds": 1, "compensate": False}, None),
    "taylor": ({"method": "taylor", "rounds": 1, "compensate": False}, None),
    "block-influence": ({"method": "block-influence", "rounds": 1, "compensate": False,
                         "structures": ("layers",)}, None),
}


def settings_for(base: Settings, overrides: dict) -> Settings:
    """Apply a variant's overrides; keys that are Constraints fields go to the constraints."""
    cfields = set(Constraints.__dataclass_fields__)
    c = replace(base.constraints, **{k: v for k, v in overrides.items() if k in cfields})
    return replace(base, constraints=c, **{k: v for k, v in overrides.items() if k not in cfields})


def run_compare(model_src: str, calib: str, ratios: list[float], variants: list[str], base: Settings,
                out: Path | None, samples: int | None = None, seq_len: int | None = None,
                seed: int | None = None, log=None) -> dict:
    log = log or (lambda m: print(m, file=sys.stderr))
    check_variants(variants)
    mix = D.load_mix(calib, seed=seed, seq_len=seq_len, total_samples=samples)
    dense, fam, source = load_model(model_src)
    tok = load_tokenizer(source)
    data = D.build(mix, tok)
    domains = list(data.heldout)
    results = {"model": source, "mix": mix.name, "fingerprint": data.fingerprint,
               "calib_tokens": sum(v.numel() for v in data.calib.values()),
               "heldout_tokens": {d: int(v.numel()) for d, v in data.heldout.items()},
               "dtype": str(dense.dtype), "threads": torch.get_num_threads(), "rows": []}
    t = time.time()
    dense_ppl = per_domain(dense, data.heldout, base.batch_size)
    results["rows"].append({"variant": "dense", "ratio": 0.0, "ppl": dense_ppl, "seconds": time.time() - t})
    log(f"dense: {fmt(dense_ppl)}")
    for row, model in pruned_variants(dense, fam, mix, data, tok, ratios, variants, base):
        row["ppl"] = per_domain(model, data.heldout, base.batch_size)
        results["rows"].append(row)
        log(f"{row['ratio']:.0%} {row['variant']}: removed {row['removed_total']:.1%} in {row['seconds']:.0f} s: "
            f"{fmt(row['ppl'])}")
        del model
        if out:
            write(results, domains, out)  # after every row, so a long run can be read as it goes
    return results


def check_variants(variants: list[str]) -> None:
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise PrunekitError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}.")


def pruned_variants(dense, fam, mix, data, tok, ratios, variants, base: Settings):
    """Yield (row, pruned model) for every ratio x variant, each pruned from a fresh copy of `dense`
    on the same calibration data (single-domain variants take their domain's share of it)."""
    check_variants(variants)
    for ratio in ratios:
        for name in variants:
            overrides, doms = VARIANTS[name]
            s = settings_for(replace(base, constraints=replace(base.constraints, ratio=ratio)), overrides)
            model = copy.deepcopy(dense)
            t = time.time()
            calib = data.calib if doms is None else D.only_domains(mix, data.calib, doms, tok)
            rec = compress(model, fam, calib, data.heldout, s, log=lambda m: None)
            yield ({"variant": name, "ratio": ratio, "seconds": round(time.time() - t, 1),
                    "removed_total": rec["rounds"][-1]["removed_total"], "settings": rec["settings"]}, model)
            del model, rec  # the caller's `del` cannot free what this suspended frame still holds


def fmt(ppl: dict) -> str:
    return ", ".join(f"{d} {v:.2f}" for d, v in ppl.items()) + f" | geomean {geomean(ppl.values()):.2f}"


def geomean(vals) -> float:
    vals = list(vals)
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def markdown(results: dict, domains: list[str]) -> str:
    lines = []
    ratios = sorted({r["ratio"] for r in results["rows"] if r["ratio"] > 0})
    dense = next(r for r in results["rows"] if r["variant"] == "dense")
    for ratio in ratios:
        rows = {"dense": dense["ppl"]}
        rows.update({f"{r['variant']} ({r['removed_total']:.1%})": r["ppl"]
                     for r in results["rows"] if r["ratio"] == ratio})
        lines += [f"### {ratio:.0%} of parameters removed", "", table(rows, domains), ""]
    return "\n".join(lines)


def write(results: dict, domains: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "compare.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.rename(out / "compare.json")
    (out / "compare.md").write_text(markdown(results, domains) + "\n")


def add_parser(sub) -> None:
    s = sub.add_parser("compare", help="compare pruning methods side by side on held-out perplexity")
    s.add_argument("--model", default="default")
    s.add_argument("--calib", default="default")
    s.add_argument("--ratios", default="0.2,0.4")
    s.add_argument("--variants", default=",".join(VARIANTS))
    s.add_argument("--rounds", type=int, default=Settings.rounds, help="rounds of the iterative variants")
    s.add_argument("--structures", default="mlp")
    s.add_argument("--samples", type=int, default=None)
    s.add_argument("--seq-len", type=int, default=None)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--ridge", type=float, default=Settings.ridge)
    s.add_argument("--tolerance", type=float, default=0.02)
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--out", default=None, help="folder for compare.json and compare.md")
    s.set_defaults(fn=_run)


def _run(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    base = Settings(rounds=args.rounds, ridge=args.ridge, constraints=Constraints(
        ratio=0.2, structures=tuple(args.structures.split(",")), tolerance=args.tolerance))
    ratios = [float(x) for x in args.ratios.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    res = run_compare(args.model, args.calib, ratios, variants, base, Path(args.out) if args.out else None,
                      args.samples, args.seq_len, args.seed)
    print(markdown(res, list(res["heldout_tokens"])))
