"""`prunekit compare`: several pruning methods on the same model, data and budget, in one run.

The model is loaded once, the calibration and held-out sequences are built once, the dense model is
evaluated once; each variant prunes a fresh copy and is evaluated on the same held-out text.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

from prunekit.artifact import write_json_atomic
from prunekit.env import set_threads
from prunekit.loading import load_model, load_tokenizer
from prunekit.perplexity import geomean, per_domain, table

from . import data as D
from .config import VARIANTS, CompareConfig, CompressConfig, check_variants
from .iterate import prune
from .recover import recover_after_cut, recovery_data


def compare(cfg: CompareConfig, log=None) -> dict:
    """Prune one model with every variant at every ratio on the same data and budget; returns the
    held-out perplexity per domain of each (and writes compare.json/.md into cfg.out when given)."""
    log = log or (lambda m: print(m, file=sys.stderr))
    set_threads(cfg.threads)
    # By default the retraining-free ones: a variant that trains (recover_tokens) runs only when named.
    variants = list(cfg.variants or [v for v, (o, _) in VARIANTS.items() if not o.get("recover_tokens")])
    base = cfg.base()
    out = Path(cfg.out) if cfg.out else None
    mix = D.load_mix(cfg.calib, seed=cfg.seed, seq_len=cfg.seq_len, total_samples=cfg.samples)
    dense, fam, source = load_model(cfg.model)
    tok = load_tokenizer(source)
    data = D.build(mix, tok)
    domains = list(data.heldout)
    results = {
        "model": source,
        "mix": mix.name,
        "fingerprint": data.fingerprint,
        "calib_tokens": sum(v.numel() for v in data.calib.values()),
        "heldout_tokens": {d: int(v.numel()) for d, v in data.heldout.items()},
        "dtype": str(dense.dtype),
        "threads": torch.get_num_threads(),
        "rows": [],
    }
    t = time.time()
    dense_ppl = per_domain(dense, data.heldout, base.batch_size)
    results["rows"].append({"variant": "dense", "ratio": 0.0, "ppl": dense_ppl, "seconds": time.time() - t})
    log(f"dense: {fmt(dense_ppl)}")
    for row, model in pruned_variants(dense, fam, mix, data, tok, cfg.ratios, variants, base, cfg.recover_tokens):
        row["ppl"] = per_domain(model, data.heldout, base.batch_size)
        results["rows"].append(row)
        log(
            f"{row['ratio']:.0%} {row['variant']}: removed {row['removed_total']:.1%} in {row['seconds']:.0f} s: "
            f"{fmt(row['ppl'])}"
        )
        del model
        if out:
            write(results, domains, out)  # after every row, so a long run can be read as it goes
    return results


def pruned_variants(
    dense, fam, mix, data, tok, ratios, variants, base: CompressConfig, recover_tokens: int | None = None
):
    """Yield (row, pruned model) for every ratio x variant, each pruned from a fresh copy of `dense`
    on the same calibration data (single-domain variants take their domain's share of it); the
    recovered variants then train toward `dense` on `recover_tokens` (default: RECOVER_TOKENS)."""
    check_variants(variants)
    for ratio in ratios:
        for name in variants:
            overrides, doms = VARIANTS[name]
            s = base.replace(ratio=ratio, **overrides)
            if s.recover_tokens and recover_tokens:
                s = s.replace(recover_tokens=recover_tokens)
            model = copy.deepcopy(dense)
            t = time.time()
            calib = data.calib if doms is None else D.only_domains(mix, data.calib, doms, tok)
            rdata = recovery_data(mix, tok, s, doms or ()) if s.recover_tokens else None
            rec = prune(model, fam, calib, data.heldout, s, log=lambda m: None)
            recovery = recover_after_cut(model, dense, fam, rdata, s) if s.recover_tokens else None
            row = {
                "variant": name,
                "ratio": ratio,
                "seconds": round(time.time() - t, 1),
                "removed_total": rec["rounds"][-1]["removed_total"],
                "settings": rec["settings"],
                "mlp_widths": [len(k) if k is not None else 0 for k in rec["plan"]["mlp"]],
            }
            # The quick held-out perplexity after every round's cut.
            row["rounds"] = [
                {k: r[k] for k in ("round", "removed_total", "quick_ppl") if k in r} for r in rec["rounds"]
            ]
            searches = [
                {k: r["search"][k] for k in ("chosen", "kl_searched", "kl_uniform")}
                for r in rec["rounds"]
                if "search" in r
            ]
            if searches:
                row["search"] = searches
            if recovery:
                row["recovery"] = {
                    k: recovery[k] for k in ("tokens", "steps", "seconds", "tokens_per_s", "kl_first", "kl_last")
                }
            yield row, model
            del model, rec  # the caller's `del` cannot free what this suspended frame still holds


def fmt(ppl: dict) -> str:
    return ", ".join(f"{d} {v:.2f}" for d, v in ppl.items()) + f" | geomean {geomean(ppl.values()):.2f}"


def markdown(results: dict, domains: list[str]) -> str:
    lines = []
    ratios = sorted({r["ratio"] for r in results["rows"] if r["ratio"] > 0})
    dense = next(r for r in results["rows"] if r["variant"] == "dense")
    for ratio in ratios:
        rows = {"dense": dense["ppl"]}
        rows.update(
            {f"{r['variant']} ({r['removed_total']:.1%})": r["ppl"] for r in results["rows"] if r["ratio"] == ratio}
        )
        lines += [f"### {ratio:.0%} of parameters removed", "", table(rows, domains), ""]
    return "\n".join(lines)


def write(results: dict, domains: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "compare.json", results)
    (out / "compare.md").write_text(markdown(results, domains) + "\n")


def compare_markdown(results: dict) -> str:
    """The tables of a compare run, one per ratio."""
    return markdown(results, list(results["heldout_tokens"]))
