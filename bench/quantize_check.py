"""Is our int4 as good as llm-compressor's GPTQ on the same cut? WikiText-2 perplexity of both, same windows.

Two halves, two environments (llm-compressor 0.14 needs transformers <= 5.17 and compressed-tensors 0.19; ours
pins 5.19 and 0.17):

1. `--prepare` (prunekit's venv): the calibration sequences our export's GPTQ reads (the same mix, count and
   order) and WikiText-2's test windows of 512 tokens, tokenized, into one .npz;
2. the check (.venv-llmc): llm-compressor's `oneshot` with `GPTQModifier` (W4A16, symmetric, our group size,
   the LM head left out as ours leaves it, its own defaults otherwise: static activation ordering, dampening
   0.01) on those sequences, then the perplexity of its model and of our int4 artifact's HF checkpoint, both
   loaded by transformers the same way, on the same windows.

    make quantize-check      # or the two halves by hand:
    .venv/bin/python bench/quantize_check.py --prepare PRUNED --art ART --data q.npz
    .venv-llmc/bin/python bench/quantize_check.py PRUNED --art ART --data q.npz
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

# Run as a script, Python puts bench/ first on the path, where config.py and models.py shadow the modules of
# those names that transformers imports.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def prepare(pruned: str, art: str, out: str, windows: int | None) -> None:
    import numpy as np
    import torch
    from prunekit.bench.quality import wikitext_windows
    from prunekit.compress import quantize_calibration

    from prunekit.env import data_root
    from prunekit.loading import load_tokenizer

    q = json.loads(Path(art, "prunekit.json").read_text())["quantization"]
    tok = load_tokenizer(pruned)
    calib = quantize_calibration("default", tok, q["calibration_sequences"])
    ids = torch.cat(list(calib.values())).numpy()
    win = wikitext_windows(data_root(), tok, 512, windows).numpy()
    np.savez(out, calib=ids, windows=win, group_size=q["group_size"])
    print(f"wrote {out}: {len(ids)} calibration sequences, {len(win)} WikiText-2 windows, group {q['group_size']}")


def perplexity(model, windows, batch: int = 4) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            x = torch.from_numpy(windows[i : i + batch]).long()
            logits = model(x).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
            )
            total, count = total + nll.item(), count + x[:, 1:].numel()
    return math.exp(total / count)


def check(pruned: str, art: str, data: str, out: str, threads: int) -> int:
    import numpy as np
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    d = np.load(data)
    group = int(d["group_size"])
    ds = Dataset.from_dict({"input_ids": d["calib"].tolist(), "attention_mask": np.ones_like(d["calib"]).tolist()})
    model = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float32)
    scheme = {
        "targets": ["Linear"],
        "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": group},
    }
    t = time.time()
    oneshot(
        model=model,
        dataset=ds,
        recipe=GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"]),
        num_calibration_samples=len(ds),
        max_seq_length=d["calib"].shape[1],
        shuffle_calibration_samples=False,
    )
    spent = time.time() - t
    model.save_pretrained(out, save_compressed=True)
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ours = AutoModelForCausalLM.from_pretrained(art, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float32).eval()
    rows = {
        name: perplexity(m, d["windows"])
        for name, m in (("unquantized", base), ("llm-compressor", theirs), ("prunekit", ours))
    }
    gap = rows["prunekit"] / rows["llm-compressor"] - 1
    print(f"| model | WikiText-2 ({len(d['windows'])} windows of 512) |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.3f} |")
    print(f"llm-compressor GPTQ took {spent:.0f} s; prunekit's int4 is {gap:+.2%} against it (target: within +2%)")
    return 0 if gap <= 0.02 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pruned", help="the unquantized checkpoint both quantize (compress --out)")
    ap.add_argument("--art", required=True, help="our artifact exported from it with --quantize int4")
    ap.add_argument("--data", required=True, help="the .npz that --prepare writes")
    ap.add_argument("--prepare", action="store_true", help="write --data (in prunekit's venv)")
    ap.add_argument("--out", default="runs/llmc-int4", help="where llm-compressor's checkpoint goes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, default=None, help="WikiText-2 windows with --prepare (default: all)")
    a = ap.parse_args(argv)
    if a.prepare:
        prepare(a.pruned, a.art, a.data, a.windows)
        return 0
    return check(a.pruned, a.art, a.data, a.out, a.threads)


if __name__ == "__main__":
    sys.exit(main())
