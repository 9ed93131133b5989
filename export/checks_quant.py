"""How verify judges a quantized artifact: against the unquantized model it came from (the reference export took
before quantizing), by agreement rather than bit for bit, with a threshold per measure and scheme.

- top-1: the share of prompts whose first-step argmax is the reference's;
- KL: the mean KL(reference || runtime) of the first-step distributions, over the full vocabulary where the
  runtime returns it (transformers, onnxruntime); vLLM returns its top 20 log-probabilities, so there both
  distributions are coarsened to those tokens plus one bucket for the rest (a lower bound of the full KL);
- greedy: the mean share of each prompt's greedy tokens produced before the first difference.

The thresholds guard against a broken conversion (wrong packing, scales or layout give a KL of nats and a top-1
near chance), with room for the machine kind; they are not a quality target. They were set from the default
model's 20% cut (docs/results/quantize.md), where int8 measured top-1 0.81-0.94, KL 0.017-0.034 and greedy 0.35-0.56
on the three runtimes, int4 (GPTQ) top-1 0.63-0.69, KL 0.19-0.20 and greedy 0.07: a 135M model's 4-bit greedy
text leaves the reference within a token or two, so int4's greedy share is reported, not gated.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = {
    "int8": {"top1": 0.75, "kl": 0.1, "greedy": 0.2},
    "int4": {"top1": 0.5, "kl": 0.4, "greedy": 0.0},
}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _kl_full(ref_logits: np.ndarray, logits: np.ndarray) -> list[float]:
    lp, lq = _log_softmax(ref_logits), _log_softmax(logits)
    return list((np.exp(lp) * (lp - lq)).sum(axis=-1))


def _kl_topk(ref_logits: np.ndarray, logprobs: list[dict]) -> list[float]:
    lp = _log_softmax(ref_logits)
    out = []
    for i, d in enumerate(logprobs):
        ids = np.array([int(t) for t in d])
        q = np.exp(np.array([float(v) for v in d.values()]))
        p = np.exp(lp[i, ids])
        p_rest, q_rest = max(1 - p.sum(), 1e-12), max(1 - q.sum(), 1e-12)
        kl = (p * (np.log(np.maximum(p, 1e-30)) - np.log(np.maximum(q, 1e-30)))).sum()
        out.append(float(kl + p_rest * (np.log(p_rest) - np.log(q_rest))))
    return out


def prefix_share(got: list[int], want: list[int]) -> float:
    n = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return n / max(len(want), 1)


def compare_quantized(ref: dict, ref_logits: np.ndarray, tokens, logits, thresholds: dict) -> dict:
    """One runtime's agreement with the unquantized reference; `logits` is [prompts, vocab] or vLLM's
    [{token id: log-probability}] per prompt."""
    if isinstance(logits, np.ndarray):
        kls, top = _kl_full(ref_logits, logits), logits.argmax(axis=-1)
        scope = "full vocabulary"
    else:
        kls = _kl_topk(ref_logits, logits)
        top = np.array([int(max(d, key=d.get)) for d in logits])
        scope = f"top {len(logits[0])} tokens + rest"
    top1 = float((top == ref_logits.argmax(axis=-1)).mean())
    greedy = [prefix_share(g, w) for g, w in zip(tokens, ref["tokens"])]
    row = {
        "loads": True,
        "top1_agreement": round(top1, 4),
        "kl_mean": round(float(np.mean(kls)), 5),
        "kl_max": round(float(np.max(kls)), 5),
        "kl_scope": scope,
        "greedy_prefix": round(float(np.mean(greedy)), 4),
        "greedy_match": f"{sum(g == 1.0 for g in greedy)}/{len(greedy)}",
        "thresholds": thresholds,
    }
    th = thresholds
    row["passed"] = bool(top1 >= th["top1"] and row["kl_mean"] <= th["kl"] and row["greedy_prefix"] >= th["greedy"])
    return row
