"""Speed at production sizes without downloading weights: random-weight models in the shapes of real
ones, dense and pruned per a plan (MLP width cut uniformly to remove a fraction of all parameters,
multiples of 256: what `prunekit compress` does by default), timed with the same greedy loop.

    python -m prunekit.bench.shapes --shapes llama-3.1-8b,qwen2.5-7b --ratios 0,0.2,0.4 --out DIR
Meant for a GPU (bf16); on a CPU use the `tiny` shape. Weights are random, so only speed and memory
mean anything here.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

# Public configs of the real models (hidden, intermediate, layers, heads, kv heads, vocab, tied).
SHAPES = {
    "llama-3.1-8b": ("LlamaConfig", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                         tie_word_embeddings=False)),
    "qwen2.5-7b": ("Qwen2Config", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                       tie_word_embeddings=False)),
    "tiny": ("LlamaConfig", dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=2, vocab_size=1024)),
}


def params(cfg: dict, inter: int) -> int:
    h, L, v = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    attn = h * hd * (2 * cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"])
    emb = v * h * (1 if cfg.get("tie_word_embeddings") else 2)
    return L * (attn + 3 * h * inter + 2 * h) + emb + h


def pruned_width(cfg: dict, ratio: float, align: int = 256) -> int:
    """MLP width that removes `ratio` of all parameters (uniform over layers, rounded to `align`)."""
    dense = params(cfg, cfg["intermediate_size"])
    cut = ratio * dense / (3 * cfg["hidden_size"] * cfg["num_hidden_layers"])
    return max(align, int(round((cfg["intermediate_size"] - cut) / align)) * align)


def measure(model, vocab: int, prompt_len: int, new_tokens: int, batch: int, device: str, repeats: int) -> dict:
    import torch

    from prunekit.runtimes import torch_greedy

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(p, n):
        sync()
        t = time.perf_counter()
        torch_greedy(model, p, n, device=device)
        sync()
        return time.perf_counter() - t

    g = torch.Generator().manual_seed(0)
    p1 = torch.randint(100, vocab, (1, prompt_len), generator=g).tolist()
    pb = torch.randint(100, vocab, (batch, prompt_len), generator=g).tolist()
    timed(p1[:1], 2)
    out = {"ttft_s": [], "decode_tok_s_b1": [], "decode_tok_s_batch": []}
    for _ in range(repeats):
        t1 = timed(p1, 1)
        out["ttft_s"].append(t1)
        out["decode_tok_s_b1"].append((new_tokens - 1) / (timed(p1, new_tokens) - t1))
        tb = timed(pb, 1)
        out["decode_tok_s_batch"].append(batch * (new_tokens - 1) / (timed(pb, new_tokens) - tb))
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in out.items()}


def run_shapes(shapes: list[str], ratios: list[float], out: Path | None, prompt_len: int = 512,
               new_tokens: int = 64, batch: int = 16, repeats: int = 3, log=print) -> dict:
    import torch
    import transformers

    from prunekit.errors import PrunekitError
    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        raise PrunekitError(f"unknown shape {bad}; choose from {', '.join(SHAPES)}.")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    res = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "dtype": str(dtype),
           "torch": torch.__version__, "transformers": transformers.__version__, "prompt_len": prompt_len,
           "new_tokens": new_tokens, "batch": batch, "repeats": repeats, "rows": []}
    for shape in shapes:
        cls, base = SHAPES[shape]
        dense_params = params(base, base["intermediate_size"])
        for ratio in ratios:
            cfg = dict(base, intermediate_size=pruned_width(base, ratio) if ratio else base["intermediate_size"])
            config = getattr(transformers, cls)(**cfg)
            torch.manual_seed(0)
            with torch.device(device):
                model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
            n = sum(p.numel() for p in model.parameters())
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            row = {"shape": shape, "ratio_target": ratio, "intermediate_size": cfg["intermediate_size"],
                   "params": n, "removed": 1 - n / dense_params,
                   **measure(model, cfg["vocab_size"], prompt_len, new_tokens, batch, device, repeats)}
            if device == "cuda":
                row["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            res["rows"].append(row)
            log(f"{shape} {ratio:.0%}: {n / 1e9:.2f}B params, ttft {row['ttft_s']['median'] * 1e3:.1f} ms, "
                f"b1 {row['decode_tok_s_b1']['median']:.1f} tok/s, b{batch} {row['decode_tok_s_batch']['median']:.0f} tok/s"
                + (f", peak {row['gpu_peak_mb']:.0f} MiB" if "gpu_peak_mb" in row else ""))
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "shapes.json").write_text(json.dumps(res, indent=2) + "\n")
        (out / "shapes.md").write_text(format_shapes(res))
    return res


def format_shapes(res: dict) -> str:
    lines = [f"Random-weight models in real shapes on {res['device']} ({res['dtype']}, torch {res['torch']}, "
             f"transformers {res['transformers']}): greedy decoding, prompt {res['prompt_len']}, "
             f"{res['new_tokens']} new tokens; median (min-max) of {res['repeats']}.", "",
             f"| shape | removed | MLP width | params | TTFT ms | decode tok/s b1 | decode tok/s b{res['batch']} | "
             "speedup b1 | ideal | peak GPU MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    dense = {}
    for r in res["rows"]:
        if r["ratio_target"] == 0:
            dense[r["shape"]] = r
        d = dense.get(r["shape"])
        sp = f"{r['decode_tok_s_b1']['median'] / d['decode_tok_s_b1']['median']:.2f}x" if d else "-"
        ideal = f"{d['params'] / r['params']:.2f}x" if d else "-"
        mm = lambda k, s=1.0, f=".1f": f"{r[k]['median'] * s:{f}} ({r[k]['min'] * s:{f}}-{r[k]['max'] * s:{f}})"
        lines.append(f"| {r['shape']} | {r['removed']:.1%} | {r['intermediate_size']} | {r['params'] / 1e9:.2f}B | "
                     f"{mm('ttft_s', 1e3)} | {mm('decode_tok_s_b1')} | {mm('decode_tok_s_batch', f='.0f')} | {sp} | "
                     f"{ideal} | {r.get('gpu_peak_mb', float('nan')):.0f} |")
    lines.append("\nIdeal = dense / pruned parameters (bf16 bytes read per token, embeddings included).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunekit.bench.shapes", description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="llama-3.1-8b,qwen2.5-7b")
    ap.add_argument("--ratios", default="0,0.2,0.4")
    ap.add_argument("--out", default=None)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    res = run_shapes(a.shapes.split(","), [float(x) for x in a.ratios.split(",")], Path(a.out) if a.out else None,
                     a.prompt_len, a.new_tokens, a.batch, a.repeats)
    print(format_shapes(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
