"""Decode speed of cuts on a GPU, eager and compiled, as a fraction of the memory-bandwidth limit.

Random-weight models in published shapes (bench/shapes.py), built in bf16 straight on the device (weights
do not change speed, and an 8B checkpoint need not touch the disk), uniform MLP cuts on compress's width
grid. Two decode paths per model:
- eager: the loop `prunekit bench` times on every device (prunekit.runtimes.torch_greedy, dynamic cache);
- compiled: a static KV cache and the decode step under torch.compile(mode="reduce-overhead"), which
  replays it as one CUDA graph: batch-1 decode of an 8B model in eager mode is bound by kernel launches.
The limit is the rate at which the device could stream what a decode step reads (every weight matrix
once, plus each sequence's KV cache at the mean context), at the device-to-device copy bandwidth measured
at the start of the run (reads and writes counted; a pure read can go a little faster, so a fraction of
the limit slightly above 100% is possible).

    python -m prunekit.bench.gpu_decode --shapes llama-3.1-8b --ratios 0,0.2,0.4 --out DIR
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import statistics
import sys
import time
from pathlib import Path


def copy_bandwidth(dev: str, gib: float) -> float:
    """Bytes per second a copy within the device's memory moves, read and write counted (several times the
    L2 cache on a GPU)."""
    import torch

    x = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=dev)
    y = torch.empty_like(x)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    for _ in range(3):
        y.copy_(x)
    sync()
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    sync()
    return 2 * x.numel() * 10 / (time.perf_counter() - t)


def build(shape: str, ratio: float, dev: str):
    import torch
    import transformers

    from .shapes import SHAPES, Cut, default_align, params, widths_for

    cls, base = SHAPES[shape]
    width = widths_for(base, Cut(f"{ratio:.0%}", ratio, align=default_align()))[0]
    config = getattr(transformers, cls)(**{**base, "intermediate_size": width})
    torch.manual_seed(0)
    with torch.device(dev):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    return model, width, params(base, [width] * base["num_hidden_layers"])


def bytes_per_step(model, batch: int, context: float) -> float:
    """Weights a decode step reads (the untied input embedding is a gather of a few rows) plus the KV cache."""
    c = model.config
    emb = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    w = sum(p.numel() * p.element_size() for p in model.parameters() if p.dim() == 2 and (tied or p is not emb))
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * hd * 2 * context  # bf16 K and V per sequence
    return w + batch * kv


def compiled_greedy(model, batch: int, max_len: int, dev: str):
    """gen(prompts, n): eager prefill into a static cache, then the decode step compiled with CUDA graphs."""
    import torch
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=max_len)

    def step(tok):  # the cache keeps its own position (a device tensor): nothing to copy from the host per step
        return model(input_ids=tok, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)

    cstep = torch.compile(step, mode="reduce-overhead")  # a graph break costs speed, not the figure

    @torch.inference_mode()
    def gen(prompts, n):
        assert len(prompts) == batch
        cache.reset()
        tok = step(torch.tensor(prompts, device=dev))  # the prefill, eager
        out = [tok]
        for _ in range(n - 1):
            torch.compiler.cudagraph_mark_step_begin()
            tok = cstep(tok).clone()  # the graph's output buffer is reused by the next replay
            out.append(tok)
        return torch.cat(out, 1).tolist()

    return gen


def decode_rate(gen, batch: int, prompt_len: int, n: int, vocab: int, repeats: int) -> list[float]:
    """Decode tok/s of `repeats` runs: (n - 1) tokens per sequence beyond the first, over the time beyond a
    prefill-only call with the same prompts."""
    from .speed_worker import prompts, timed

    p = prompts(batch, prompt_len, vocab, seed=batch)
    gen(p, n)
    gen(p, n)  # warm-up: compilation, CUDA-graph recording, allocator growth
    out = []
    for _ in range(repeats):
        t1, tn = timed(gen, p, 1), timed(gen, p, n)
        out.append(batch * (n - 1) / max(tn - t1, 1e-9))
    return out


def run(
    shapes: list[str],
    ratios: list[float],
    prompt_len: int,
    n: int,
    batch: int,
    repeats: int,
    compiled_batches: list[int],
    out: Path,
    dev: str = "cuda",
    log=print,
) -> dict:
    import torch
    import transformers

    from prunekit.runtimes import torch_greedy

    cuda = dev == "cuda"
    bw = copy_bandwidth(dev, 4.0 if cuda else 0.25)
    res = {
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({dev}, smoke test)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "copy_bandwidth_gb_s": bw / 1e9,
        "prompt_len": prompt_len,
        "new_tokens": n,
        "batch": batch,
        "repeats": repeats,
        "rows": [],
    }
    log(f"gpu_decode: {res['device']}, copy bandwidth {bw / 1e9:.0f} GB/s")
    for shape in shapes:
        for ratio in ratios:
            t0 = time.time()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            model, width, nparams = build(shape, ratio, dev)
            row = {"shape": shape, "ratio": ratio, "width": width, "params": nparams, "paths": {}}
            vocab = model.config.vocab_size
            eager = functools.partial(torch_greedy, model, device=dev)
            paths = [("eager", b, eager) for b in dict.fromkeys((1, batch))]
            paths += [("compiled", b, compiled_greedy(model, b, prompt_len + n + 8, dev)) for b in compiled_batches]
            for name, b, gen in paths:
                try:
                    with torch.inference_mode():
                        rates = decode_rate(gen, b, prompt_len, n, vocab, repeats)
                except Exception as e:  # one path failing (e.g. a compile error) must not lose the others
                    row["paths"][f"{name} b{b}"] = {"error": f"{type(e).__name__}: {e}"[:500].replace("|", "/")}
                    log(f"gpu_decode: {shape} {ratio:.0%} {name} b{b}: {type(e).__name__}: {e}"[:300])
                    continue
                limit = b * bw / bytes_per_step(model, b, prompt_len + n / 2)
                med = statistics.median(rates)
                row["paths"][f"{name} b{b}"] = {
                    "tok_s": med,
                    "min": min(rates),
                    "max": max(rates),
                    "limit_tok_s": limit,
                    "of_limit": med / limit,
                }
                log(
                    f"gpu_decode: {shape} {ratio:.0%} {name} b{b}: {med:.1f} tok/s ({min(rates):.1f}-"
                    f"{max(rates):.1f}), {med / limit:.0%} of the bandwidth limit {limit:.0f}"
                )
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0
            row["seconds"] = round(time.time() - t0, 1)
            res["rows"].append(row)
            del model, paths, gen, eager  # the compiled closure holds the model and its cache
            gc.collect()
            torch._dynamo.reset()
            if cuda:
                torch.cuda.empty_cache()
            write(res, out)
    return res


def markdown(res: dict) -> str:
    lines = [
        f"# Decode on {res['device']} (random weights, bf16, torch {res['torch']}, transformers {res['transformers']})",
        "",
        f"Prompt {res['prompt_len']}, {res['new_tokens']} new tokens, greedy; median (min-max) of "
        f"{res['repeats']}. Limit = the tok/s at which the measured copy bandwidth "
        f"({res['copy_bandwidth_gb_s']:.0f} GB/s) streams the weights and KV cache a step reads. Speedup "
        "is against the dense model on the same path; ideal is the ratio of the limits.",
        "",
        "| shape | removed | MLP width | params | path | tok/s | of limit | speedup | ideal | peak GPU MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    dense = {}
    for r in res["rows"]:
        for path, p in r["paths"].items():
            if r["ratio"] == 0 and "tok_s" in p:
                dense[(r["shape"], path)] = p
    for r in res["rows"]:
        for path, p in r["paths"].items():
            head = f"| {r['shape']} | {r['ratio']:.0%} | {r['width']} | {r['params'] / 1e9:.2f}B | {path} |"
            if "error" in p:
                lines.append(head + f" {p['error'][:80]} | | | | |")
                continue
            d = dense.get((r["shape"], path))
            sp = f"{p['tok_s'] / d['tok_s']:.2f}x" if d else "-"
            ideal = f"{p['limit_tok_s'] / d['limit_tok_s']:.2f}x" if d else "-"
            lines.append(
                head + f" {p['tok_s']:.1f} ({p['min']:.1f}-{p['max']:.1f}) | {p['of_limit']:.0%} | {sp} | "
                f"{ideal} | {r['peak_gpu_mb']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def write(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-decode.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "gpu-decode.md").write_text(markdown(res))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunekit.bench.gpu_decode", description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="llama-3.1-8b")
    ap.add_argument("--ratios", default="0,0.2,0.4")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compiled-batches", default="1", help="batch sizes of the compiled path ('' for none)")
    ap.add_argument("--out", default="bench/results/gpu-decode")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu only smoke-tests the script")
    a = ap.parse_args(argv)
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print("error: gpu_decode needs a CUDA device that torch can use.", file=sys.stderr)
        return 2
    res = run(
        a.shapes.split(","),
        [float(r) for r in a.ratios.split(",")],
        a.prompt_len,
        a.new_tokens,
        a.batch,
        a.repeats,
        [int(b) for b in a.compiled_batches.split(",") if b],
        Path(a.out),
        a.device,
    )
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
