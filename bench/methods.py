"""The method grid of a bench run: every pruning method of `prunekit compare` at each ratio, on the
same model, calibration data and budget, each scored on the same quality suite as the main models
(WikiText-2, held-out domains, zero-shot), with dense as the first row.

Models are pruned in-process from one loaded copy of the dense model and never exported: the grid
answers "which method keeps the most quality", the main models answer "what does deployment gain".
"""

from __future__ import annotations

import time
from pathlib import Path


def method_grid(
    model_src: str,
    root: Path,
    ratios,
    variants,
    compress_kw: dict,
    *,
    seq_len: int,
    wikitext_limit: int | None,
    domain_samples: int,
    tasks,
    task_limit: int | None,
    log,
    on_row=None,
) -> list[dict]:
    from prunekit.compress import CompressConfig, build_mix, check_variants, load_mix, pruned_variants

    from prunekit.loading import load_model, load_tokenizer

    from .quality import evaluate_model, heldout_domains

    check_variants(list(variants))
    mix = load_mix("default", seq_len=compress_kw["seq_len"], total_samples=compress_kw["samples"])
    dense, fam, source = load_model(model_src)
    tok = load_tokenizer(source)
    data = build_mix(mix, tok)
    domains = heldout_domains(root, tok, seq_len, domain_samples)
    base = CompressConfig(model=model_src, rounds=compress_kw["rounds"])  # ratio set per variant
    dense_params = sum(p.numel() for p in dense.parameters())

    def score(model, row: dict) -> dict:
        t = time.time()
        row["params"] = sum(p.numel() for p in model.parameters())
        row["dense_params"] = dense_params
        row["quality"] = evaluate_model(
            model,
            tok,
            root,
            seq_len,
            wikitext_limit,
            domain_samples,
            tasks,
            task_limit,
            log=lambda m: None,
            domains=domains,
        )
        q = row["quality"]
        log(
            f"methods: {row['variant']:>16} at {row['ratio']:.0%}: removed {1 - row['params'] / dense_params:.1%}, "
            f"wikitext {q['wikitext2']['ppl']:.2f}, mean acc {q['mean_acc']:.3f} ({time.time() - t:.0f} s eval)"
        )
        if on_row:
            on_row(row)
        return row

    rows = [score(dense, {"variant": "dense", "ratio": 0.0, "seconds": 0.0, "removed_total": 0.0})]
    for row, model in pruned_variants(dense, fam, mix, data, tok, ratios, list(variants), base):
        rows.append(score(model, row))
        del model
    return rows
