"""`python lab/gemm.py`: the MLP matmuls of a decode step alone, per MLP width, through vLLM's CPU
GEMM (oneDNN with pre-packed weights, what vLLM runs for fp32/bf16 linear layers on x86) and through
torch.nn.functional.linear. One weight per layer, as in a model, so the weights stream from memory
rather than sit in cache. It answers "is a width slow because of its kernel or tile choice?" apart from
everything else in a runtime.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch


def _per_call_us(fns: list, repeats: int) -> float:
    for f in fns:
        f()
    t = time.perf_counter()
    for _ in range(repeats):
        for f in fns:
            f()
    return (time.perf_counter() - t) / repeats / len(fns) * 1e6


def sweep(hidden: int, widths: list[int], layers: int, batches: list[int], dtype: torch.dtype, repeats: int) -> list:
    from vllm import _custom_ops as ops

    rows = []
    for w in widths:
        gu = [torch.randn(2 * w, hidden, dtype=dtype) for _ in range(layers)]  # gate and up, fused as vLLM does
        dn = [torch.randn(hidden, w, dtype=dtype) for _ in range(layers)]
        hg = [ops.create_onednn_mm(x.t(), 32) for x in gu]
        hd = [ops.create_onednn_mm(x.t(), 32) for x in dn]
        for m in batches:
            x, y = torch.randn(m, hidden, dtype=dtype), torch.randn(m, w, dtype=dtype)
            onednn = _per_call_us([partial(ops.onednn_mm, h, x, None) for h in hg], repeats) + _per_call_us(
                [partial(ops.onednn_mm, h, y, None) for h in hd], repeats
            )
            linear = _per_call_us([partial(torch.nn.functional.linear, x, a) for a in gu], repeats) + _per_call_us(
                [partial(torch.nn.functional.linear, y, a) for a in dn], repeats
            )
            gb = 3 * w * hidden * gu[0].element_size() / 1e9
            rows.append(
                {
                    "width": w,
                    "batch": m,
                    "onednn_us": round(onednn),
                    "linear_us": round(linear),
                    "onednn_gb_s": round(gb / onednn * 1e6, 1),
                    "linear_gb_s": round(gb / linear * 1e6, 1),
                }
            )
        del gu, dn, hg, hd
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python lab/gemm.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=896, help="hidden size (default: Qwen2.5-0.5B's)")
    ap.add_argument("--widths", default="4864,4096,3840,3584,3392,3328,3264,3072,2560,1792")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = sweep(
        a.hidden,
        [int(w) for w in a.widths.split(",")],
        a.layers,
        [int(b) for b in a.batches.split(",")],
        getattr(torch, a.dtype),
        a.repeats,
    )
    print(
        f"MLP matmuls per layer (gate+up fused, down), hidden {a.hidden}, {a.layers} layers' weights, {a.dtype}, "
        f"{a.threads} threads; microseconds and effective GB/s of weights read"
    )
    print("| width | batch | vLLM oneDNN us | GB/s | torch linear us | GB/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['width']} | {r['batch']} | {r['onednn_us']} | {r['onednn_gb_s']} | {r['linear_us']} | "
            f"{r['linear_gb_s']} |"
        )


if __name__ == "__main__":
    main()
