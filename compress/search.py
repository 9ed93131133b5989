"""Per-layer MLP widths chosen by measured loss: the KL divergence of the pruned model's next-token
distribution from the dense model's, on calibration tokens (Týr-the-Pruner's criterion).

Energy or OBS scores compare layers by what a cut does to that layer's own output; they do not see how
much of that error the later layers amplify or wash out, and allocating by them was worse than uniform
widths (docs/results). Here each layer is cut alone to every width of a coarse grid (OBS selection and
refit, as the final cut does), the rest of the network runs on, and the KL to the dense model is
measured. A knapsack over the measured curves picks the widths with the least summed KL that remove at
least as many parameters as uniform widths; both are then cut and refitted layer by layer, as the final
cut does, their KL measured on the same tokens, and the better one is kept.

Memory: the dense distribution is kept as its top-k log-probabilities plus the mass of the rest (a
proper distribution over k + 1 bins), for every `stride`-th position of a few calibration sequences:
the full 49k-vocabulary fp32 logits of every position would not fit.
"""

from __future__ import annotations

import contextlib
import math

import torch
from tqdm import tqdm

from prunekit.families import Family, get_module

from . import plan as P
from .config import CompressConfig
from .stats import LayerRunner, consumer_grams
from .surgery import cut_mlp, keep_after, obs_order, refit

TOPK = 64


def _logits(model, fam: Family, h: torch.Tensor, stride: int) -> torch.Tensor:
    """Final norm and LM head on every `stride`-th position of hidden states (B, T, D): (N, vocab) fp32."""
    h = get_module(model, fam.final_norm)(h[:, ::stride])
    logits = model.get_output_embeddings()(h).float()
    return logits.reshape(-1, logits.shape[-1])


class KLProbe:
    """The dense model's next-token distributions on a few calibration sequences, and the KL of any
    model state (run from a given layer on cached inputs) from them."""

    def __init__(self, model, fam: Family, batches: list, stride: int = 2, k: int = TOPK):
        self.fam, self.stride, self.batches = fam, stride, batches
        self.ref = []
        runner = LayerRunner(model, fam, batches)
        for i in range(len(get_module(model, fam.layers))):
            runner.forward(i)
        with torch.no_grad():
            for h in runner.hidden:
                logp = _logits(model, fam, h, stride).log_softmax(-1)
                top, idx = logp.topk(k, dim=-1)
                rest = torch.log1p(-top.exp().sum(-1).clamp_max(1 - 1e-6))
                self.ref.append((idx, top, rest))

    def kl_model(self, model) -> float:
        """Mean KL(dense || model) of `model` as it is, from its embeddings."""
        fresh = LayerRunner(model, self.fam, self.batches)
        return self.kl(model, fresh.hidden, fresh.kwargs, 0)

    def kl(self, model, hidden: list[torch.Tensor], kwargs: list[dict], start: int) -> float:
        """Mean KL(dense || model) per position, running `model`'s layers start.. on `hidden`."""
        layers = get_module(model, self.fam.layers)
        total, n = 0.0, 0
        with torch.no_grad():
            for h, kw, (idx, top, rest) in zip(hidden, kwargs, self.ref):
                for layer in layers[start:]:
                    o = layer(h, **kw)
                    h = o[0] if isinstance(o, tuple) else o
                logp = _logits(model, self.fam, h, self.stride).log_softmax(-1)
                q = logp.gather(-1, idx)
                q_rest = torch.log1p(-q.exp().sum(-1).clamp_max(1 - 1e-6))
                kl = (top.exp() * (top - q)).sum(-1) + rest.exp() * (rest - q_rest)
                total += float(kl.sum())
                n += kl.numel()
        return total / max(n, 1)


def probe_batches(batches: list, n_seq: int) -> list:
    """About n_seq sequences, an equal share from every domain (batches never mix domains), so that
    the search measures the whole mix and not its first domains."""
    by_dom: dict[str, list] = {}
    for dom, ids in batches:
        by_dom.setdefault(dom, []).append(ids)
    share = -(-n_seq // len(by_dom))
    out = []
    for dom, bs in by_dom.items():
        seqs = torch.cat(bs)[:share]
        out.append((dom, seqs))
    return out


@contextlib.contextmanager
def swapped_mlp(layer, fam: Family, keep: list[int], down_w: torch.Tensor):
    """Layer's MLP cut to `keep` (surgery.cut_mlp) with down_proj weight `down_w`, restored on exit."""
    mlp = getattr(layer, fam.mlp)
    old = {n: getattr(mlp, n) for n in (fam.gate, fam.up, fam.down)}
    width = getattr(mlp, "intermediate_size", None)
    cut_mlp(mlp, fam, keep, None, 0.0)
    getattr(mlp, fam.down).weight.data.copy_(down_w)
    try:
        yield
    finally:
        for n, m in old.items():
            setattr(mlp, n, m)
        if width is not None:
            mlp.intermediate_size = width


def grid(width: int, step: int, extra: int | None) -> list[int]:
    """Candidate widths below `width`: multiples of `step` down to half of `extra` (the uniform width;
    a layer cut to less than half of it was never the knapsack's choice), and `extra` itself."""
    low = step if extra is None else max(step, extra // 2)
    out = set(range(step, width, step)) - set(range(step, low, step))
    if extra is not None and 0 < extra < width:
        out.add(extra)
    return sorted(out, reverse=True)


def allocate(
    curves: dict[int, dict[int, float]],
    cur: P.Shape,
    dense: P.Shape,
    dims: P.Dims,
    c: CompressConfig,
    target: float,
    at_least: int = 0,
) -> P.Shape | None:
    """The widths with the least summed KL that remove at least `at_least` parameters and whose
    removed fraction is nearest `target` (within the tolerance; among those within a quarter of it of
    the nearest, the cheapest). Exact knapsack by dynamic programming over removed channels."""
    base = P.base_params(dense, dims, c.ratio_of)
    have = P.base_params(cur, dims, c.ratio_of)
    step = 0
    for idx, curve in curves.items():
        for w in curve:
            step = math.gcd(step, cur.layers[idx][0] - w)
    step = step or 1
    # best[removed units] = (summed KL, {layer: width})
    best: dict[int, tuple[float, dict]] = {0: (0.0, {})}
    for idx, curve in curves.items():
        w0 = cur.layers[idx][0]
        opts = [(0, 0.0, w0)] + [((w0 - w) // step, kl, w) for w, kl in curve.items()]
        nxt: dict[int, tuple[float, dict]] = {}
        for u, (cost, ch) in best.items():
            for du, kl, w in opts:
                key, val = u + du, cost + kl
                if key not in nxt or val < nxt[key][0]:
                    nxt[key] = (val, {**ch, idx: w})
        best = nxt
    unit = 3 * dims.hidden * step
    cands = []
    for u, (cost, ch) in best.items():
        frac = 1 - (have - u * unit) / base
        if u * unit >= at_least and abs(frac - target) <= c.tolerance:
            cands.append((abs(frac - target), cost, ch))
    if not cands:
        return None
    near = min(x[0] for x in cands)
    _, _, ch = min((x for x in cands if x[0] <= near + c.tolerance / 4), key=lambda x: x[1])
    return P.Shape([None if s is None else (ch.get(i, s[0]), s[1]) for i, s in enumerate(cur.layers)])


def search_step(c: CompressConfig) -> int:
    """The grid step: --search-step rounded down to a width every constraint allows (as plan.width_options)."""
    unit = c.align if c.align % c.tp == 0 else c.align * c.tp
    return unit * max(1, c.search_step // unit)


def kl_shape(
    model,
    fam: Family,
    batches: list,
    probe: KLProbe,
    alive: list[int],
    cur: P.Shape,
    dense: P.Shape,
    dims: P.Dims,
    c: CompressConfig,
    target: float,
    uniform: P.Shape,
    desc: str,
    log=print,
) -> tuple[P.Shape, dict]:
    """Per-layer widths for `target` by measured KL (module docstring), from the model as it is (one
    search, so `cur` is what the probe's reference saw). Returns the shape and a record of the search:
    the curves, and the KL of the search's pick and of uniform widths, each cut and refitted in
    sequence as the final cut does."""
    layers = get_module(model, fam.layers)
    runner = LayerRunner(model, fam, batches)
    sub = LayerRunner(model, fam, probe.batches)
    base_kl = probe.kl(model, sub.hidden, sub.kwargs, 0)
    step = search_step(c)
    curves: dict[int, dict[int, float]] = {}
    orders: dict[int, list[int]] = {}  # channels in the order OBS removes them, per layer
    for pos in tqdm(range(len(layers)), desc=desc, unit="layer", leave=False):
        idx = alive[pos]
        down = getattr(getattr(layers[pos], fam.mlp), fam.down)
        n = down.weight.shape[1]
        widths = grid(n, step, uniform.layers[idx][0])
        if widths:
            gram = consumer_grams(runner, pos, down)
            orders[idx], _ = obs_order(down.weight.data, gram, n - min(widths), c.ridge)
            curves[idx] = {}
            for w in widths:
                keep = keep_after(orders[idx], n, w)
                dw = refit(down.weight.data, gram, torch.tensor(keep), c.ridge)
                with swapped_mlp(layers[pos], fam, keep, dw):
                    curves[idx][w] = probe.kl(model, sub.hidden, sub.kwargs, pos) - base_kl
            del gram
        runner.forward(pos)
        sub.forward(pos)
    removed_uniform = cur.params(dims) - uniform.params(dims)
    pick = allocate(curves, cur, dense, dims, c, target, at_least=removed_uniform)
    kl_uniform = _composed(model, fam, batches, probe, alive, cur, uniform, orders, c)
    kl_pick = _composed(model, fam, batches, probe, alive, cur, pick, orders, c) if pick is not None else None
    chosen = pick if kl_pick is not None and kl_pick < kl_uniform else uniform
    if pick is None:
        log(
            f"{desc}: the width grid cannot remove {target:.1%} within ±{c.tolerance:.1%} without removing "
            f"less than uniform widths do; keeping uniform widths"
        )
    else:
        log(
            f"{desc}: KL to dense {kl_pick:.4f} (searched) vs {kl_uniform:.4f} (uniform); keeping "
            f"{'searched' if chosen is pick else 'uniform'} widths"
        )
    rec = {
        "curves": {str(i): {str(w): sig(v) for w, v in cv.items()} for i, cv in curves.items()},
        "kl_base": sig(base_kl),
        "kl_searched": None if kl_pick is None else sig(kl_pick),
        "kl_uniform": sig(kl_uniform),
        "chosen": "searched" if chosen is pick else "uniform",
        "probe_positions": sum(int(ids[:, :: probe.stride].numel()) for _, ids in probe.batches),
    }
    return chosen, rec


def sig(v: float) -> float:
    """Four significant digits, for the manifest (KL values span 1e-7 on tiny models to 1 on real ones)."""
    return float(f"{v:.4g}")


def _composed(
    model,
    fam: Family,
    batches: list,
    probe: KLProbe,
    alive: list[int],
    cur: P.Shape,
    shape: P.Shape,
    orders: dict[int, list[int]],
    c: CompressConfig,
) -> float:
    """KL to dense of `shape` cut layer by layer, each refit on the already-cut layers' outputs (as the
    final cut does); only the refitted weights of the layer at hand are held, and all is restored."""
    layers = get_module(model, fam.layers)
    runner = LayerRunner(model, fam, batches)
    sub = LayerRunner(model, fam, probe.batches)
    with contextlib.ExitStack() as stack:
        for pos, idx in enumerate(alive):
            w = shape.layers[idx][0]
            if w != cur.layers[idx][0]:
                down = getattr(getattr(layers[pos], fam.mlp), fam.down)
                keep = keep_after(orders[idx], down.weight.shape[1], w)
                gram = consumer_grams(runner, pos, down)
                dw = refit(down.weight.data, gram, torch.tensor(keep), c.ridge)
                stack.enter_context(swapped_mlp(layers[pos], fam, keep, dw))
            runner.forward(pos)
            sub.forward(pos)
        return probe.kl(model, sub.hidden, sub.kwargs, len(layers))
