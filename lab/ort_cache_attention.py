"""Thirty layers' attention at one decode step, three ways, on onnxruntime's CPU provider (fp32, 2 threads):
the concat graph's opset-23 `Attention` with past and present (a new, longer cache each step), opset-24
`TensorScatter` into a preallocated buffer bound in place + `Attention` over the buffer (export --onnx-cache
inplace), and the contrib `GroupQueryAttention` with a shared buffer (onnxruntime-genai's graph). 9 query heads, 3
KV heads, head_dim 64 (the default model's attention). The figures in docs/results/onnx-genai.md:

    .venv/bin/python lab/ort_cache_attention.py BATCH PAST CAPACITY    # e.g. 8 144 160
"""

from __future__ import annotations

import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h

HQ, HK, D, LAYERS = 9, 3, 64, 30
F = T.FLOAT


def vi(name, t, shape):
    return h.make_tensor_value_info(name, t, shape)


def model(nodes, ins, outs, domains=()):
    opsets = [h.make_opsetid("", 24)] + [h.make_opsetid(d, 1) for d in domains]
    return h.make_model(h.make_graph(nodes, "g", ins, outs), opset_imports=opsets, ir_version=10)


def graph(kind: str, b: int, past: int, cap: int):
    """30 attention layers chained through their output; q, k, v as the projections give them [b, 1, heads * D]."""
    ins = [vi("q", F, [b, 1, HQ * D]), vi("k", F, [b, 1, HK * D]), vi("v", F, [b, 1, HK * D])]
    ins += {
        "concat": [vi("mask", T.BOOL, [b, 1, 1, past + 1])],
        "scatter": [vi("mask", T.BOOL, [b, 1, 1, cap]), vi("idx", T.INT64, [b])],
        "gqa": [vi("seqlens", T.INT32, [b]), vi("total", T.INT32, [1])],
    }[kind]
    cache = [b, HK, past, D] if kind == "concat" else [b, cap, HK * D] if kind == "scatter" else [b, HK, cap, D]
    nodes, outs, x = [], [], "q"
    for i in range(LAYERS):
        ins += [vi(f"pk{i}", F, cache), vi(f"pv{i}", F, cache)]
        pk, pv, y, ck, cv = f"pk{i}", f"pv{i}", f"y{i}", f"ck{i}", f"cv{i}"
        if kind == "concat":
            nodes.append(
                h.make_node("Attention", [x, "k", "v", "mask", pk, pv], [y, ck, cv], q_num_heads=HQ, kv_num_heads=HK)
            )
        elif kind == "scatter":
            nodes.append(h.make_node("TensorScatter", [pk, "k", "idx"], [ck], axis=1))
            nodes.append(h.make_node("TensorScatter", [pv, "v", "idx"], [cv], axis=1))
            nodes.append(h.make_node("Attention", [x, ck, cv, "mask"], [y], q_num_heads=HQ, kv_num_heads=HK))
        else:
            nodes.append(
                h.make_node(
                    "GroupQueryAttention", [x, "k", "v", pk, pv, "seqlens", "total"], [y, ck, cv],
                    domain="com.microsoft", num_heads=HQ, kv_num_heads=HK,
                )
            )  # fmt: skip
        outs += [vi(ck, F, None), vi(cv, F, None)]
        x = y
    return model(nodes, ins, [vi(x, F, None), *outs], ("com.microsoft",) if kind == "gqa" else ())


def timed(kind: str, b: int, past: int, cap: int, reps: int = 200) -> tuple[float, np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = 2, 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(graph(kind, b, past, cap).SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((b, 1, w * D), dtype=np.float32) for n, w in (("q", HQ), ("k", HK), ("v", HK))}
    if kind == "concat":
        feeds["mask"] = np.ones((b, 1, 1, past + 1), bool)
    elif kind == "scatter":
        feeds["mask"] = np.arange(cap)[None, None, None] <= past + np.zeros((b, 1, 1, 1), int)
        feeds["idx"] = np.full(b, past, np.int64)
    else:
        feeds["seqlens"], feeds["total"] = np.full(b, past, np.int32), np.array([past + 1], np.int32)
    binding, keep = s.io_binding(), []
    for name, arr in feeds.items():
        binding.bind_cpu_input(name, arr)
    for i in range(LAYERS):
        for kv in "kv":
            hist = np.random.default_rng(i).standard_normal((b, HK, past, D), dtype=np.float32)  # same in all three
            if kind == "concat":
                buf = hist
            elif kind == "scatter":
                buf = np.zeros((b, cap, HK * D), np.float32)
                buf[:, :past] = hist.transpose(0, 2, 1, 3).reshape(b, past, HK * D)
            else:
                buf = np.zeros((b, HK, cap, D), np.float32)
                buf[:, :, :past] = hist
            value = ort.OrtValue.ortvalue_from_numpy(buf)
            keep.append((buf, value))
            binding.bind_ortvalue_input(f"p{kv}{i}", value)
            if kind == "concat":
                binding.bind_output(f"c{kv}{i}")  # a new, longer cache: onnxruntime allocates it
            else:
                binding.bind_ortvalue_output(f"c{kv}{i}", value)  # the same memory: written in place
    binding.bind_output(f"y{LAYERS - 1}")
    for _ in range(10):
        s.run_with_iobinding(binding)
    t = time.perf_counter()
    for _ in range(reps):
        s.run_with_iobinding(binding)
    ms = (time.perf_counter() - t) / reps * 1e3
    return ms, binding.get_outputs()[-1].numpy()


def main() -> None:
    b, past, cap = (int(x) for x in sys.argv[1:4])
    base_ms, base = timed("concat", b, past, cap)
    print(f"batch {b}, past {past}, buffer {cap}; 30 layers, ms a step")
    print(f"  Attention, past -> present (concat graph): {base_ms:.2f}")
    for kind, label in (
        ("scatter", "TensorScatter in place + Attention over the buffer"),
        ("gqa", "GroupQueryAttention, shared buffer"),
    ):
        ms, y = timed(kind, b, past, cap)
        print(f"  {label}: {ms:.2f} (max |output - default's| {np.abs(y - base).max():.1e})")


if __name__ == "__main__":
    main()
