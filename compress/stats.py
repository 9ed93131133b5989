"""Activation statistics, collected layer by layer with forward hooks.

The decoder is run one layer at a time on cached hidden states (the llm-compressor "sequential"
pipeline): memory is the weights plus one layer's activations plus the residual stream of the
calibration set, and a layer can be cut and refitted before its output feeds the next layer, so
every layer is calibrated on the already-pruned model's activations.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prunekit.families import Family, get_module


class _Stop(Exception):
    pass


@dataclass
class Moments:
    """Per-channel first and second moments of one activation, summed over tokens (fp32/fp64)."""
    n: int = 0
    sum: torch.Tensor | None = None
    sumsq: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        s, q = x.sum(0).double(), (x * x).sum(0).double()
        self.sum = s if self.sum is None else self.sum + s
        self.sumsq = q if self.sumsq is None else self.sumsq + q
        self.n += x.shape[0]

    def mean_sq(self) -> torch.Tensor:
        return self.sumsq / max(self.n, 1)

    def var(self) -> torch.Tensor:
        m = self.sum / max(self.n, 1)
        return (self.mean_sq() - m * m).clamp_min(0)

    def __iadd__(self, other: "Moments") -> "Moments":
        if other.n:
            self.sum = other.sum.clone() if self.sum is None else self.sum + other.sum
            self.sumsq = other.sumsq.clone() if self.sumsq is None else self.sumsq + other.sumsq
            self.n += other.n
        return self


@dataclass
class DomainStats:
    """What one domain's tokens say about one decoder layer."""
    mlp: Moments = field(default_factory=Moments)    # input of down_proj (I channels)
    attn: Moments = field(default_factory=Moments)   # input of o_proj (H * head_dim channels)
    tokens: int = 0
    resid_sq: float = 0.0        # sum over tokens of ||h_in||^2: the scale a perturbation is judged against
    delta_sq: float = 0.0        # sum over tokens of ||h_out - h_in||^2
    one_minus_cos: float = 0.0   # sum over tokens of 1 - cos(h_in, h_out) (ShortGPT's Block Influence)
    mlp_gram: torch.Tensor | None = None  # X^T X of the down_proj input (fp64), when asked for


@dataclass
class LayerStats:
    domains: dict[str, DomainStats]

    def pooled(self) -> DomainStats:
        out = DomainStats()
        for d in self.domains.values():
            out.mlp += d.mlp
            out.attn += d.attn
            out.tokens += d.tokens
            out.resid_sq += d.resid_sq
            out.delta_sq += d.delta_sq
            out.one_minus_cos += d.one_minus_cos
        return out


class LayerRunner:
    """Holds the residual stream of the calibration set and runs it through one layer at a time."""

    def __init__(self, model, fam: Family, batches: list[tuple[str, torch.Tensor]]):
        self.model, self.fam = model, fam
        self.domains = [d for d, _ in batches]
        self.hidden: list[torch.Tensor] = []
        self.kwargs: list[dict] = []
        layers = self.layers
        first = layers[0]

        def catch(_mod, args, kwargs):
            self.hidden.append(args[0] if args else kwargs.pop("hidden_states"))
            self.kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
            raise _Stop

        h = first.register_forward_pre_hook(catch, with_kwargs=True)
        try:
            with torch.no_grad():
                for _, ids in batches:
                    try:
                        model(input_ids=ids, use_cache=False)
                    except _Stop:
                        pass
        finally:
            h.remove()

    @property
    def layers(self):
        return get_module(self.model, self.fam.layers)

    def forward(self, i: int, advance: bool = True) -> list[torch.Tensor]:
        """Run layer i on every batch; with advance, its outputs become the next layer's inputs."""
        layer = self.layers[i]
        outs = []
        with torch.no_grad():
            for h, kw in zip(self.hidden, self.kwargs):
                o = layer(h, **kw)
                outs.append(o[0] if isinstance(o, tuple) else o)
        if advance:
            self.hidden = outs
        return outs

    def collect(self, i: int, advance: bool = True, grams: bool = False) -> LayerStats:
        """Statistics of layer i on the current residual stream, per domain (with grams: also the
        down_proj input's X^T X per domain)."""
        layer = self.layers[i]
        attn, mlp = getattr(layer, self.fam.attn), getattr(layer, self.fam.mlp)
        stats = LayerStats({d: DomainStats() for d in dict.fromkeys(self.domains)})
        cur = {"dom": None}

        def hook(kind):
            def fn(_mod, args):
                ds = stats.domains[cur["dom"]]
                getattr(ds, kind).add(args[0])
                if grams and kind == "mlp":
                    x = args[0].reshape(-1, args[0].shape[-1]).float()
                    g = (x.T @ x).double()
                    ds.mlp_gram = g if ds.mlp_gram is None else ds.mlp_gram + g
            return fn

        hs = [getattr(mlp, self.fam.down).register_forward_pre_hook(hook("mlp")),
              getattr(attn, self.fam.o).register_forward_pre_hook(hook("attn"))]
        outs = []
        try:
            with torch.no_grad():
                for dom, h, kw in zip(self.domains, self.hidden, self.kwargs):
                    cur["dom"] = dom
                    o = layer(h, **kw)
                    o = o[0] if isinstance(o, tuple) else o
                    hin, hout = h.float(), o.float()
                    ds = stats.domains[dom]
                    ds.tokens += hin.shape[0] * hin.shape[1]
                    ds.resid_sq += float((hin * hin).sum())
                    ds.delta_sq += float(((hout - hin) ** 2).sum())
                    ds.one_minus_cos += float((1 - torch.nn.functional.cosine_similarity(hin, hout, dim=-1)).sum())
                    outs.append(o)
        finally:
            for h in hs:
                h.remove()
        if advance:
            self.hidden = outs
        return stats


def consumer_inputs(runner: "LayerRunner", i: int, consumer) -> list[torch.Tensor]:
    """The input of `consumer` (a Linear inside layer i) for every batch, flattened to (tokens, in)."""
    caught = []
    h = consumer.register_forward_pre_hook(lambda _m, args: caught.append(args[0].reshape(-1, args[0].shape[-1]).float()))
    try:
        runner.forward(i, advance=False)
    finally:
        h.remove()
    return caught


def token_weights(h: torch.Tensor) -> torch.Tensor:
    """Per-token weights 1 / ||h_t||^2 of a layer input (B, T, D), scaled to mean 1: an error on a token
    then counts relative to that token's own residual stream. A few tokens carry residuals 100x the
    rest (massive activations); unweighted, they decide the least-squares fit."""
    n = h.float().pow(2).sum(-1).reshape(-1).clamp_min(1e-12)
    w = 1.0 / n
    return w / w.mean()


def consumer_grams(runner: "LayerRunner", i: int, consumer, targets: list[torch.Tensor] | None = None,
                   relative: bool = False):
    """G = X^T X of `consumer`'s input over all batches, and C = X^T X_target when targets (the same
    consumer's inputs in the dense model, batch by batch) are given. fp64 accumulators. With
    `relative`, each token's row is weighted by token_weights of the layer's input."""
    acc = {"g": None, "c": None, "b": 0}

    def fn(_m, args):
        x = args[0].reshape(-1, args[0].shape[-1]).float()
        if relative:
            x = x * token_weights(runner.hidden[acc["b"]]).sqrt()[:, None]
        g = (x.T @ x).double()
        acc["g"] = g if acc["g"] is None else acc["g"] + g
        if targets is not None:
            c = (x.T @ targets[acc["b"]]).double()
            acc["c"] = c if acc["c"] is None else acc["c"] + c
        acc["b"] += 1

    h = consumer.register_forward_pre_hook(fn)
    try:
        runner.forward(i, advance=False)
    finally:
        h.remove()
    return acc["g"], acc["c"]


def make_batches(calib: dict[str, torch.Tensor], batch_size: int) -> list[tuple[str, torch.Tensor]]:
    """Split each domain's sequences into batches; a batch never mixes domains (stats are per domain)."""
    out = []
    for dom, seqs in calib.items():
        for s in range(0, len(seqs), batch_size):
            out.append((dom, seqs[s:s + batch_size]))
    return out
