"""Recovery's batch (pieces a step) and learning rate, from one cut (a `prunekit compress` checkpoint without
recovery), on the default mix's recovery data, each from the same starting point; WikiText-2 (whole test set,
windows of 512) and every bench held-out domain after each, in one process (docs/results/compress-levers.md).

Usage: .venv/bin/python lab/recover_variants.py CUT TOKENS VARIANT [VARIANT ...]
    VARIANT: kl, optionally /BATCH (pieces a step; default the recovery's, 8 x 256) and @LR (e.g. kl/4, kl@4e-4)

lab/recover-hidden.patch adds the residual-stream matching variants (mse:W, cos:W) that lost.
"""

import copy
import json
import sys
import time

import torch
from prunekit.bench.quality import evaluate_model
from prunekit.compress import data as D
from prunekit.compress.config import CompressConfig
from prunekit.compress.recover import RecoverSettings, recover, recovery_data

from prunekit.env import data_root, set_threads
from prunekit.loading import load_model, load_tokenizer

set_threads(2)
cut_path, tokens = sys.argv[1], int(sys.argv[2])
dense, fam, src = load_model("default")
cut, _, _ = load_model(cut_path)
tok = load_tokenizer(src)
s = CompressConfig(model="default", ratio=0.2, recover_tokens=tokens)
mix = D.load_mix(s.calib, seed=s.seed, seq_len=s.seq_len, total_samples=s.samples)
seqs, heldout, _ = recovery_data(mix, tok, s)
print("recovery data", tuple(seqs.shape), "held-out", tuple(heldout.shape), flush=True)


def quality(model) -> dict:
    with torch.no_grad():
        r = evaluate_model(model, tok, data_root(), domain_samples=8, tasks=(), log=lambda m: None)
    return {"wikitext2": round(r["wikitext2"]["ppl"], 2), **{k: round(v, 2) for k, v in r["domains"].items()}}


rows = {}
for v in sys.argv[3:]:
    kind, _, lr = v.partition("@")
    name, _, b = kind.partition("/")
    if name != "kl":
        sys.exit(f"unknown variant {v!r}: kl[/BATCH][@LR]")
    st = RecoverSettings(
        lr=float(lr) if lr else None, batch=int(b) if b else s.recover_batch * (heldout.shape[1] // seqs.shape[1])
    )
    m = copy.deepcopy(cut)
    t0 = time.time()
    rec = recover(m, dense, fam, seqs, st, heldout=heldout, log=print)
    rows[v] = {"quality": quality(m), "seconds": round(time.time() - t0), "rec_s": rec["seconds"]}
    rows[v]["heldout"] = rec["heldout"]
    print(v, json.dumps(rows[v]), flush=True)
    del m
print(json.dumps(rows, indent=1))
