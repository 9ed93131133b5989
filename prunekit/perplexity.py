"""Perplexity over token windows, shared by compress (held-out check per round and at the end) and bench."""
from __future__ import annotations

import math

import torch


def nll(model, seqs: torch.Tensor, batch_size: int = 4) -> tuple[float, int]:
    """Summed next-token negative log-likelihood over (N, T) sequences, and the token count."""
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(seqs), batch_size):
            ids = seqs[s:s + batch_size]
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            tgt = ids[:, 1:]
            total += float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="sum"))
            count += tgt.numel()
    return total, count


def perplexity(model, seqs: torch.Tensor, batch_size: int = 4) -> float:
    total, count = nll(model, seqs, batch_size)
    return math.exp(total / max(count, 1))


def per_domain(model, heldout: dict[str, torch.Tensor], batch_size: int = 4) -> dict[str, float]:
    return {d: perplexity(model, s, batch_size) for d, s in heldout.items()}


def geomean(vals) -> float:
    vals = list(vals)
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def table(rows: dict[str, dict[str, float]], domains: list[str]) -> str:
    """Markdown table: one row per model, one column per domain, plus the geometric mean."""
    head = "| model | " + " | ".join(domains) + " | geomean |"
    lines = [head, "|" + "---|" * (len(domains) + 2)]
    for name, ppl in rows.items():
        vals = [ppl[d] for d in domains]
        gm = geomean(vals)
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {gm:.2f} |")
    return "\n".join(lines)
