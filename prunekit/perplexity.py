"""Perplexity over token windows, shared by compress (held-out check per round and at the end) and bench."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm import tqdm

# The LM head runs on tiles of TOKEN_BLOCK tokens x VOCAB_CHUNK rows: the logits of a batch never exist for the
# whole vocabulary, and a tile's fp32 logits (8 MB) stay in cache through the cast, the log-sum-exp and the
# gather. Whole batches x 16384 rows (268 MB a tile at 4088 tokens) went through memory for each of those (the
# cast and log-sum-exp were 5% of a 0.5B compress in the profile of issue 15's note).
VOCAB_CHUNK = 4096
TOKEN_BLOCK = 512


def head_nll(h: torch.Tensor, targets: torch.Tensor, head: torch.nn.Linear) -> float:
    """Summed cross-entropy of next tokens `targets` (N,) from final hidden states `h` (N, D), the LM head
    applied a vocabulary chunk at a time with an online log-sum-exp. The logits are computed in h's dtype and
    reduced in fp32, as a full-vocabulary cross-entropy would; the head's rows are moved to h's place per
    chunk, so a head kept in host memory in another dtype (offloading) works too."""
    return head_nll_many([h], [targets], head)


def head_nll_many(hs: list[torch.Tensor], targets: list[torch.Tensor], head: torch.nn.Linear) -> float:
    """head_nll over several batches, the vocabulary chunks outermost: each chunk of the head is moved (and
    cast) once for all of them, not once per batch."""
    w, b = head.weight, head.bias
    h0 = hs[0]
    lse = [torch.full((h.shape[0],), float("-inf"), device=h.device) for h in hs]
    picked = [torch.zeros(h.shape[0], device=h.device) for h in hs]
    targets = [t.to(h0.device) for t in targets]
    for v0 in range(0, w.shape[0], VOCAB_CHUNK):
        wc = w[v0 : v0 + VOCAB_CHUNK].to(h0.device, h0.dtype)
        bc = None if b is None else b[v0 : v0 + VOCAB_CHUNK].to(h0.device, h0.dtype)
        for i, (h, t) in enumerate(zip(hs, targets)):
            for a in range(0, h.shape[0], TOKEN_BLOCK):
                z = h[a : a + TOKEN_BLOCK] @ wc.T
                if bc is not None:
                    z = z + bc
                z = z.float()
                lse[i][a : a + TOKEN_BLOCK] = torch.logaddexp(lse[i][a : a + TOKEN_BLOCK], torch.logsumexp(z, dim=-1))
                tb = t[a : a + TOKEN_BLOCK]
                inside = (tb >= v0) & (tb < v0 + wc.shape[0])
                idx = (tb - v0).clamp(0, wc.shape[0] - 1)
                picked[i][a : a + TOKEN_BLOCK] += torch.where(inside, z.gather(1, idx[:, None])[:, 0], 0.0)
    return float(sum((l_ - p).sum() for l_, p in zip(lse, picked)))


def _chunkable(model) -> bool:
    """Whether the logits are the plain LM head of the base model's last hidden state (no softcapping or
    scaling that a chunked head would have to repeat)."""
    cfg = model.config
    return (
        getattr(model, "base_model", None) is not None
        and isinstance(model.get_output_embeddings(), torch.nn.Linear)
        and getattr(cfg, "final_logit_softcapping", None) is None
        and getattr(cfg, "logit_scale", None) is None
    )


def nll(model, seqs: torch.Tensor, batch_size: int = 4, tick: Callable[[], object] | None = None) -> tuple[float, int]:
    """Summed next-token negative log-likelihood over (N, T) sequences, and the token count.

    The LM head runs in vocabulary chunks: full-vocabulary logits of a batch (4 x 512 x 152k in fp32 is
    1.2 GB, and the cross-entropy copied them twice) were the peak of a 0.5B model's compress. A model that
    is offloaded (see prunekit.offload) is run one layer at a time over all sequences. Under torchrun each
    rank scores its share of the sequences and the sums are added up (prunekit.dist)."""
    from .dist import all_sum_floats, world

    rank, n = world()
    tick = tick or (lambda: None)
    if n > 1:
        total, count = _nll(model, seqs[rank::n], batch_size, tick)
        total, count = all_sum_floats(total, count)
        return total, int(count)
    return _nll(model, seqs, batch_size, tick)


def _nll(model, seqs: torch.Tensor, batch_size: int, tick) -> tuple[float, int]:
    from .offload import placement

    place = placement(model)
    if len(seqs) == 0:
        return 0.0, 0
    if place.offload:
        return _layerwise_nll(model, place, seqs, batch_size, tick)
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(seqs), batch_size):
            ids = place.put(seqs[s : s + batch_size])
            tgt = ids[:, 1:]
            if _chunkable(model):
                h = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
                total += head_nll(h.reshape(-1, h.shape[-1]), tgt.reshape(-1), model.get_output_embeddings())
            else:
                logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
                total += float(
                    torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="sum"
                    )
                )
            count += tgt.numel()
            tick()
    return total, count


def _layerwise_nll(model, place, seqs: torch.Tensor, batch_size: int, tick) -> tuple[float, int]:
    """An offloaded model's NLL: all sequences pass each layer while it is at the compute place."""
    from .families import get_module
    from .offload import first_layer_inputs

    layers, norm = get_module(model, place.fam.layers), get_module(model, place.fam.final_norm)
    batches = list(seqs.split(batch_size))
    with torch.no_grad():
        hidden, kwargs = first_layer_inputs(model, layers[0], batches)
        for layer in layers:
            with place.layer(layer):
                outs = (layer(x, **kw) for x, kw in zip(hidden, kwargs))
                hidden = [o[0] if isinstance(o, tuple) else o for o in outs]
            tick()
        hs = [norm(x)[:, :-1].reshape(-1, x.shape[-1]) for x in hidden]
        tgts = [ids[:, 1:].reshape(-1) for ids in batches]
        total = head_nll_many(hs, tgts, model.get_output_embeddings())
        place.release_home(model.get_output_embeddings().weight)
        tick()  # the LM head: as long as several layers at a 152k vocabulary
    return total, sum(t.numel() for t in tgts)


def perplexity(model, seqs: torch.Tensor, batch_size: int = 4, tick: Callable[[], object] | None = None) -> float:
    total, count = nll(model, seqs, batch_size, tick)
    return math.exp(total / max(count, 1))


def per_domain(
    model, heldout: dict[str, torch.Tensor], batch_size: int = 4, desc: str = "held-out perplexity"
) -> dict[str, float]:
    """Perplexity per domain, with a progress bar: a 0.5B model's held-out set takes minutes on a CPU. It counts
    batches, or where the model is offloaded layers and the LM head (all of a domain's sequences pass a layer at
    once)."""
    from .dist import world
    from .families import get_module
    from .offload import placement

    place = placement(model)
    rank, n = world()
    if place.offload:
        steps = sum(len(s[rank::n]) > 0 for s in heldout.values()) * (len(get_module(model, place.fam.layers)) + 1)
    else:
        steps = sum(-(-len(s[rank::n]) // batch_size) for s in heldout.values())
    with tqdm(total=steps, desc=desc, unit="step" if place.offload else "batch", leave=False) as bar:
        return {d: perplexity(model, s, batch_size, bar.update) for d, s in heldout.items()}


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
