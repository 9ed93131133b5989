"""The quality-vs-speed frontier: dense and each cut (the artifacts defaults: one round, then distillation), each
unquantized, int8 and int4, built as the artifacts pipeline builds them, measured in one run.

Per artifact: WikiText-2 perplexity and the held-out geomean of the bench domains (transformers loading the
artifact's HF checkpoint in fp32: compressed-tensors emulates the quantized weights and, for int8, vLLM's
per-token int8 activations), the weights on disk, and decode tok/s at batch 1 and 8
- on onnxruntime: every graph loaded in one process, their decode steps timed in turn (speed_worker.interleaved),
  against the dense fp32 graph; each graph's peak RSS from a fresh process of its own;
- on vLLM: each artifact paired with dense in one process (speed_worker.run_paired), in bf16 (the dtype vLLM runs
  quantized kernels in; run only where the CPU has native bf16, else those rows say why not).

    python -m prunekit.bench.frontier [--ratios 0.2,0.4] [--schemes none,int8,int4] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

from prunekit.env import cpu_has_fast_bf16, data_root, set_threads

from .shapes import pair_speedups
from .timing import machine, machine_slug, speed_once

SCHEMES = ("none", "int8", "int4")


def log(m: str) -> None:
    print(m, file=sys.stderr, flush=True)


def build(work: Path, ratios: list[float], schemes: list[str], recover_tokens: int, threads: int) -> dict:
    """{(percent, scheme): artifact dir}, each built (or reused) through the artifacts pipeline's steps."""
    from prunekit.compress import CompressConfig
    from prunekit.export import ExportConfig

    from prunekit.pipeline import build_artifact

    arts = {}
    for ratio in [0.0, *ratios]:
        pct = round(ratio * 100)
        ccfg = None
        if ratio:
            pruned = work / f"cut-{pct}" / "pruned"
            ccfg = CompressConfig(
                model="default", ratio=ratio, rounds=1, recover_tokens=recover_tokens, out=str(pruned), threads=threads
            )
        for scheme in schemes:
            art = work / f"{'dense' if not ratio else f'cut-{pct}'}-{scheme}"
            q = None if scheme == "none" else scheme
            ecfg = ExportConfig(model="default" if not ratio else str(pruned), out=str(art), quantize=q)
            build_artifact(art, ecfg, ccfg, runtimes=(), threads=threads, log=log)
            arts[(pct, scheme)] = art
    return arts


def quality(art: Path, wikitext_limit: int | None, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from prunekit.loading import load_tokenizer

    from .quality import evaluate_model

    set_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(art, dtype=torch.float32).eval()
    tok = load_tokenizer(str(art))
    with torch.no_grad():
        # A compressed-tensors checkpoint decompresses on the model's first forward; the perplexity code calls the
        # base model, which would meet the packed integers.
        model(input_ids=torch.tensor([[1, 2]]))
        r = evaluate_model(model, tok, data_root(), wikitext_limit=wikitext_limit, tasks=(), log=lambda m: None)
    dom = r["domains"]
    return {
        "wikitext2": r["wikitext2"]["ppl"],
        "heldout": dom,
        "heldout_geomean": math.exp(sum(math.log(v) for v in dom.values()) / len(dom)),
    }


def size_mb(art: Path) -> dict:
    def mb(paths):
        return round(sum(p.stat().st_size for p in paths) / 2**20, 1)

    return {"hf_mb": mb(art.glob("*.safetensors")), "onnx_mb": mb((art / "onnx").iterdir())}


def ort_interleaved(arts: list[Path], threads: int, reps: int, new_tokens: int, batch: int) -> list[dict]:
    """Median decode tok/s of each graph, all loaded in this process, their steps timed in turn."""
    from .speed_worker import interleaved, load_onnxruntime, prompts

    models = [load_onnxruntime({"threads": threads}, str(a)) for a in arts]
    vocab = min(m.vocab for m in models)
    for m in models:
        m.generate(prompts(1, 8, vocab, seed=2), 2)  # warm-up
    got = [{"b1": [], "batch": []} for _ in arts]
    for r in range(reps):
        order = list(range(len(models)))[:: 1 if r % 2 == 0 else -1]
        for key, ps in (("b1", prompts(1, 64, vocab)), ("batch", prompts(batch, 64, vocab, seed=1))):
            for i, s in zip(order, interleaved([models[i] for i in order], ps, new_tokens - 1)):
                got[i][key].append(s)
    return [{k: statistics.median(v) for k, v in g.items()} for g in got]


def run(a) -> dict:
    mach = machine()
    work = Path(a.work)
    ratios = [float(x) for x in a.ratios.split(",") if x]
    schemes = [s for s in a.schemes.split(",") if s]
    t0 = time.time()
    arts = build(work, ratios, schemes, a.recover_tokens, a.threads)
    rows = {}
    for (pct, scheme), art in arts.items():
        t = time.time()
        rows[(pct, scheme)] = {"cut": pct, "scheme": scheme, "artifact": str(art), **size_mb(art)}
        rows[(pct, scheme)].update(quality(art, a.wikitext_limit, a.threads))
        log(f"quality {pct}% {scheme}: WikiText-2 {rows[(pct, scheme)]['wikitext2']:.2f} ({time.time() - t:.0f} s)")
    keys = list(arts)
    speeds = ort_interleaved([arts[k] for k in keys], a.threads, a.reps, a.new_tokens, a.batch)
    for k, s in zip(keys, speeds):
        rows[k]["ort"] = s
        one = speed_once("onnxruntime", arts[k], a.threads, "float32", prompt_len=64, new_tokens=16, batch=1)
        rows[k]["ort_peak_rss_mb"] = one.get("peak_rss_mb")
    vllm_ok = cpu_has_fast_bf16() or mach.get("gpu")
    for k in keys:
        if k == (0, "none"):
            continue
        if not vllm_ok:
            rows[k]["vllm"] = {"error": "no native bf16 on this CPU: vLLM's quantized kernels run bf16 only"}
            continue
        res = speed_once(
            "vllm",
            arts[k],
            a.threads,
            "bfloat16",
            prompt_len=64,
            new_tokens=a.new_tokens,
            batch=a.batch,
            pair_with=arts[(0, "none")],
            pairs=a.pairs,
        )
        rows[k]["vllm"] = pair_speedups(res)
        if "error" not in res:
            rows[k]["vllm"]["tok_s"] = {
                who: {
                    key: statistics.median(p[who][key] for p in res["pairs"])
                    for key in ("decode_tok_s_b1", "decode_tok_s_batch")
                }
                for who in ("base", "cut")
            }
            rows[k]["vllm"]["peak_rss_mb"] = res.get("peak_rss_mb")
        log(f"vllm {k}: {json.dumps(rows[k]['vllm'])[:200]}")
    return {
        "machine": mach,
        "threads": a.threads,
        "batch": a.batch,
        "new_tokens": a.new_tokens,
        "recover_tokens": a.recover_tokens,
        "wikitext_limit": a.wikitext_limit,
        "rows": list(rows.values()),
        "seconds": round(time.time() - t0),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def markdown(res: dict) -> str:
    rows = res["rows"]
    base = next(r for r in rows if r["cut"] == 0 and r["scheme"] == "none")
    wt = res["wikitext_limit"] or "all"
    out = [
        f"# Quality vs speed: dense and cuts, unquantized, int8, int4 ({res['machine']['cpu']}, "
        f"{res['threads']} threads)",
        "",
        f"WikiText-2 ({wt} windows of 512) and held-out geomean from transformers loading each HF checkpoint in fp32; "
        f"onnxruntime decode (fp32 activations; MatMulNBits with int8 compute for the quantized graphs) timed in turn "
        f"in one process against dense fp32; vLLM paired with dense in bf16. Batch 1 and {res['batch']}.",
        "",
        "| model | WikiText-2 | held-out geomean | HF MB | ONNX MB | ORT peak RSS MB | ORT b1 tok/s | x dense | "
        f"ORT b{res['batch']} tok/s | x dense | vLLM b1 x dense bf16 | vLLM b{res['batch']} x dense bf16 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v = r.get("vllm") or {}
        vb1 = f"x{v['b1']['median']:.2f}" if "b1" in v else (v.get("error", "-")[:60] if v else "(baseline)")
        vbb = f"x{v['batch']['median']:.2f}" if "batch" in v else "-"
        name = ("dense" if r["cut"] == 0 else f"{r['cut']}% cut") + (
            "" if r["scheme"] == "none" else f" + {r['scheme']}"
        )
        out.append(
            f"| {name} | {r['wikitext2']:.2f} (x{r['wikitext2'] / base['wikitext2']:.2f}) | "
            f"{r['heldout_geomean']:.2f} | {r['hf_mb']:.0f} | {r['onnx_mb']:.0f} | "
            f"{r.get('ort_peak_rss_mb') or 0:.0f} | "
            f"{r['ort']['b1']:.1f} | x{r['ort']['b1'] / base['ort']['b1']:.2f} | {r['ort']['batch']:.1f} | "
            f"x{r['ort']['batch'] / base['ort']['batch']:.2f} | {vb1} | {vbb} |"
        )
    return "\n".join(out) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    base = next(r for r in rows if r["cut"] == 0 and r["scheme"] == "none")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"none": "o", "int8": "s", "int4": "^"}
    colors = dict(zip(sorted({r["cut"] for r in rows}), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for r in rows:
        x, y = r["ort"]["b1"] / base["ort"]["b1"], r["wikitext2"]
        ax.scatter(x, y, marker=markers[r["scheme"]], color=colors[r["cut"]], s=60)
        ax.annotate(
            ("dense" if not r["cut"] else f"{r['cut']}%") + ("" if r["scheme"] == "none" else f" {r['scheme']}"),
            (x, y),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    ax.set(
        xlabel="onnxruntime batch-1 decode speedup over dense fp32",
        ylabel="WikiText-2 perplexity (lower is better)",
        title=f"Quality vs speed ({res['machine']['cpu']}, {res['threads']} threads)",
    )
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratios", default="0.2,0.4")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--recover-tokens", type=int, default=196608)
    ap.add_argument("--wikitext-limit", type=int, default=None, help="WikiText-2 windows (default: the test set)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--work", default="bench/work/frontier")
    ap.add_argument("--out", default="bench/results")
    a = ap.parse_args(argv)
    set_threads(a.threads)
    res = run(a)
    out = Path(a.out) / f"{time.strftime('%Y-%m-%d')}-{machine_slug(res['machine'])}-frontier"
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "frontier.md").write_text(markdown(res))
    plot(res, out / "frontier.png")
    print(markdown(res))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
