"""Quality of one model: WikiText-2 perplexity, held-out perplexity per domain, zero-shot accuracy.

WikiText-2 raw test follows the pruning papers: HF's rows (each line with its "\\n", blank " " lines
as "") joined by "\\n\\n", tokenized once, cut into non-overlapping windows of `seq_len` tokens
(stride = seq_len; a partial last window is dropped). Held-out domains are the calibration mix's
held-out split (disjoint from calibration, checked in compress.data) plus French UD test sentences,
which the default mix does not calibrate on (and Chinese ones when a mix does not hold Chinese out).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from prunekit.compress import build_mix, load_mix, pack_texts

from prunekit.perplexity import nll, per_domain

from .zeroshot import NORM, TASKS, evaluate

# Languages the bench reports beside the mix's domains (French stays out of the default mix: the probe of
# how a cut treats a language it was not calibrated on).
EXTRA_DOMAINS = {
    "french": "multilingual/ud_fr_gsd_test_sentences.jsonl",
    "chinese": "multilingual/ud_zh_gsd_test_sentences.jsonl",
}


def wikitext_windows(root: Path, tok, seq_len: int, limit: int | None) -> torch.Tensor:
    lines = (root / "perplexity/wikitext2_raw_test.txt").read_text().split("\n")[:-1]
    rows = ["" if ln == " " else ln + "\n" for ln in lines]
    ids = tok("\n\n".join(rows), add_special_tokens=False).input_ids
    n = len(ids) // seq_len if limit is None else min(limit, len(ids) // seq_len)
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def heldout_domains(root: Path, tok, seq_len: int, n: int) -> dict[str, torch.Tensor]:
    mix = load_mix("default", seq_len=seq_len)
    mix = dataclasses.replace(mix, domains=tuple(dataclasses.replace(d, eval_samples=n) for d in mix.domains))
    out = dict(build_mix(mix, tok, with_calib=False).heldout)
    for name, rel in EXTRA_DOMAINS.items():
        p = root / rel
        if name not in out and p.is_file():  # a language the mix calibrates on is held out by the mix
            texts = [json.loads(ln)["text"] for ln in p.read_text().splitlines() if ln.strip()]
            out[name] = pack_texts(texts, tok, seq_len, n, " ", name, "held-out")
    return out


def evaluate_model(
    model,
    tok,
    root: Path,
    seq_len: int = 512,
    wikitext_limit: int | None = None,
    domain_samples: int = 8,
    tasks=tuple(TASKS),
    limit: int | None = None,
    batch_size: int = 8,
    log=print,
    domains: dict[str, torch.Tensor] | None = None,
    wikitext_long: int | None = None,
) -> dict:
    """`domains`: held-out windows already built (the method grid builds them once for every model).
    `wikitext_long`: WikiText-2 also in windows of this length (the papers' 2048), over the same token budget
    (`wikitext_limit` windows of seq_len; all of the test set when None), as "wikitext2_long"."""
    t0 = time.time()
    res: dict = {}
    lengths = [("wikitext2", seq_len, wikitext_limit)]
    if wikitext_long:
        long_limit = None if wikitext_limit is None else max(1, wikitext_limit * seq_len // wikitext_long)
        lengths.append(("wikitext2_long", wikitext_long, long_limit))
    for key, length, n_win in lengths:
        win = wikitext_windows(root, tok, length, n_win)
        total, count = nll(model, win, batch_size=max(1, 2048 // length))
        res[key] = {"ppl": math.exp(total / count), "tokens": count, "seq_len": length, "stride": length}
        log(
            f"  wikitext2 ppl {res[key]['ppl']:.2f} over {count} tokens in windows of {length} "
            f"({time.time() - t0:.0f} s)"
        )
    if domains is None:
        domains = heldout_domains(root, tok, seq_len, domain_samples)
    res["domains"] = per_domain(model, domains, batch_size=4)
    log("  held-out ppl " + ", ".join(f"{d} {v:.2f}" for d, v in res["domains"].items()))
    res["zeroshot"] = {}
    for t in tasks:
        docs = TASKS[t](root)
        docs = docs[:limit] if limit else docs
        res["zeroshot"][t] = evaluate(model, tok, docs, batch_size, NORM.get(t, True))
        log(f"  {t}: acc {res['zeroshot'][t]['acc']:.3f} (n={len(docs)}, {time.time() - t0:.0f} s)")
    accs = [r["acc"] for r in res["zeroshot"].values()]
    res["mean_acc"] = sum(accs) / len(accs) if accs else None
    res["seconds"] = round(time.time() - t0, 1)
    return res
