"""Screen the recovery's learning rate and batch (docs/results/compress-recovery.md): one cut by `ours` on the
screening mix (32 x 256 tokens), recovered from the same starting point by each LR:BATCH setting.

Usage: .venv/bin/python lab/recover_sweep.py TOKENS RATIO LR:BATCH [LR:BATCH ...]
"""

import copy
import sys

from prunekit.compress import data as D
from prunekit.compress.config import CompressConfig
from prunekit.compress.recover import recover_after_cut, recovery_data
from prunekit.compress.variants import pruned_variants

from prunekit.env import set_threads
from prunekit.loading import load_model, load_tokenizer
from prunekit.perplexity import geomean, per_domain


def show(name: str, ppl: dict, extra: str = "") -> None:
    print(
        f"{name}{extra}",
        {k: round(v, 2) for k, v in ppl.items()},
        "geomean",
        round(geomean(ppl.values()), 2),
        flush=True,
    )


set_threads(2)
tokens, ratio = int(sys.argv[1]), float(sys.argv[2])
settings = [(float(lr), int(batch)) for lr, batch in (a.split(":") for a in sys.argv[3:])]
mix = D.load_mix("docs/results/mixes/screen-6domain.yaml", seq_len=256, total_samples=32)
dense, fam, src = load_model("default")
tok = load_tokenizer(src)
data = D.build(mix, tok)
base = CompressConfig(model="default", ratio=ratio)
show("dense", per_domain(dense, data.heldout, 4))
for _, cut in pruned_variants(dense, fam, mix, data, tok, [ratio], ["ours"], base):
    show("cut", per_domain(cut, data.heldout, 4))
    for lr, batch in settings:
        m = copy.deepcopy(cut)
        s = base.replace(recover_tokens=tokens, recover_lr=lr, recover_batch=batch)
        rec = recover_after_cut(m, dense, fam, recovery_data(mix, tok, s), s)
        show(
            f"lr {lr} batch {batch}",
            per_domain(m, data.heldout, 4),
            f": {rec['tokens']} tokens, {rec['seconds']} s, {rec['tokens_per_s']} tokens/s, "
            f"KL {rec['kl_first']} -> {rec['kl_last']}",
        )
