"""Recovery budgets on the bench's method-grid settings (docs/results/compress-recovery.md): one cut by `ours`
per ratio (the default mix, 32 x 256 calibration tokens, 2 rounds), recovered from that same cut by each
budget, each model scored like the bench scores a method-grid row (WikiText-2 windows of 512 tokens and 8
held-out windows of 512 per domain; no zero-shot tasks). Rows go to OUT.json as they come.

Usage: .venv/bin/python lab/recover_budgets.py OUT.json RATIOS TOKENS[,TOKENS...] [WIKITEXT_WINDOWS]
  e.g. lab/recover_budgets.py runs/budgets.json 0.2,0.4 8192,32768,110592 16
"""

import copy
import json
import sys
from pathlib import Path

from prunekit.bench import PRESETS
from prunekit.bench.quality import evaluate_model, heldout_domains
from prunekit.compress import data as D
from prunekit.compress.config import CompressConfig
from prunekit.compress.recover import recover_after_cut, recovery_data
from prunekit.compress.variants import pruned_variants

from prunekit.env import cpu_name, data_root, set_threads
from prunekit.loading import load_model, load_tokenizer
from prunekit.perplexity import geomean

set_threads(2)
out = Path(sys.argv[1])
ratios = [float(r) for r in sys.argv[2].split(",")]
budgets = [int(t) for t in sys.argv[3].split(",")]
windows = int(sys.argv[4]) if len(sys.argv) > 4 else 16
root = data_root()
grid = PRESETS["full"]  # the method grid's calibration budget and scoring, not a copy of them
mix = D.load_mix("default", seq_len=grid.method_compress["seq_len"], total_samples=grid.method_compress["samples"])
dense, fam, src = load_model("default")
tok = load_tokenizer(src)
data = D.build(mix, tok)
domains = heldout_domains(root, tok, grid.seq_len, grid.domain_samples)
base = CompressConfig(model="default", rounds=grid.method_compress["rounds"])
rows: list[dict] = []


def score(name: str, ratio: float, model, extra: dict) -> None:
    q = evaluate_model(
        model, tok, root, grid.seq_len, windows, grid.domain_samples, tasks=(), log=lambda m: None, domains=domains
    )
    row = {
        "model": name,
        "ratio": ratio,
        "wikitext2": q["wikitext2"]["ppl"],
        "domains": q["domains"],
        "geomean": geomean(q["domains"].values()),
        **extra,
    }
    rows.append(row)
    out.write_text(json.dumps({"cpu": cpu_name(), "dtype": str(dense.dtype), "threads": 2, "rows": rows}, indent=1))
    print(
        f"{name} at {ratio:.0%}: wikitext2 {row['wikitext2']:.2f}, geomean {row['geomean']:.2f}, "
        + ", ".join(f"{d} {v:.2f}" for d, v in q["domains"].items())
        + (
            f" | {extra['tokens']} tokens, {extra['seconds']} s, {extra['tokens_per_s']} tokens/s"
            if "tokens" in extra
            else ""
        ),
        flush=True,
    )


score("dense", 0.0, dense, {})
for ratio in ratios:
    for row, cut in pruned_variants(dense, fam, mix, data, tok, [ratio], ["ours"], base):
        score("cut", ratio, cut, {"cut_seconds": row["seconds"]})
        for tokens in budgets:
            m = copy.deepcopy(cut)
            s = base.replace(ratio=ratio, recover_tokens=tokens)
            rec = recover_after_cut(m, dense, fam, recovery_data(mix, tok, s), s)
            score(
                f"recover {tokens}",
                ratio,
                m,
                {k: rec[k] for k in ("tokens", "steps", "seconds", "tokens_per_s", "kl_first", "kl_last")},
            )
            del m
