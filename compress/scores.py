"""Importance scores: pure functions of one layer's statistics and weights.

Every scorer returns a `Scores` for one decoder layer: one value per MLP channel, one per KV group
(a KV head with its query heads), and one for the whole layer where the method defines it. Higher
means more important. `comparable` says whether values can be ranked across layers and structures as
they are (ours: all are "share of the residual stream's energy that removing the unit would
perturb"); the others are normalised by the planner before a global ranking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .stats import DomainStats, LayerStats


@dataclass
class LayerWeights:
    """The weights a scorer may read, in fp32; shapes follow nn.Linear (out, in)."""

    gate: torch.Tensor  # (I, D)
    up: torch.Tensor  # (I, D)
    down: torch.Tensor  # (D, I)
    q: torch.Tensor  # (H*hd, D)
    k: torch.Tensor  # (KV*hd, D)
    v: torch.Tensor  # (KV*hd, D)
    o: torch.Tensor  # (D, H*hd)
    n_kv: int
    head_dim: int

    @property
    def n_rep(self) -> int:
        return self.q.shape[0] // self.head_dim // self.n_kv


@dataclass
class Scores:
    mlp: torch.Tensor | None  # (I,)
    heads: torch.Tensor | None  # (KV,)
    layer: float | None = None
    comparable: bool = False


def per_group(channel_scores: torch.Tensor, n_kv: int) -> torch.Tensor:
    """Sum o_proj-input channel scores into KV groups: (H*hd,) -> (KV,)."""
    return channel_scores.reshape(n_kv, -1).sum(1)


def group_rows(w: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Sum of squares of a projection's output rows, per group of consecutive rows: (n_groups,)."""
    return (w * w).reshape(n_groups, -1).sum(1)


def magnitude(w: LayerWeights, st: LayerStats) -> Scores:
    """Weight norm of each coupled group (no calibration data)."""
    mlp = (w.gate**2).sum(1) + (w.up**2).sum(1) + (w.down**2).sum(0)
    heads = (
        group_rows(w.q, w.n_kv) + group_rows(w.k, w.n_kv) + group_rows(w.v, w.n_kv) + per_group((w.o**2).sum(0), w.n_kv)
    )
    return Scores(mlp.sqrt(), heads.sqrt())


def wanda_sp(w: LayerWeights, st: LayerStats) -> Scores:
    """Wanda-sp (An et al., FLAP paper's structured Wanda): sum_i |W_ij| * ||X_j||_2 of the consumer."""
    p = st.pooled()
    mlp = w.down.abs().sum(0) * p.mlp.sumsq.float().sqrt()
    heads = per_group(w.o.abs().sum(0) * p.attn.sumsq.float().sqrt(), w.n_kv)
    return Scores(mlp, heads)


def flap(w: LayerWeights, st: LayerStats) -> Scores:
    """FLAP's fluctuation metric: Var(X_j) over tokens times ||W_:,j||^2 of the consumer."""
    p = st.pooled()
    mlp = p.mlp.var().float() * (w.down**2).sum(0)
    heads = per_group(p.attn.var().float() * (w.o**2).sum(0), w.n_kv)
    return Scores(mlp, heads)


def block_influence(w: LayerWeights, st: LayerStats) -> Scores:
    """ShortGPT's Block Influence: mean over tokens of 1 - cos(layer input, layer output)."""
    p = st.pooled()
    return Scores(None, None, layer=p.one_minus_cos / max(p.tokens, 1))


def _energy(w: LayerWeights, d: DomainStats) -> Scores:
    """Energy that each unit adds to the residual stream, relative to the stream's own energy."""
    resid = d.resid_sq / max(d.tokens, 1)
    mlp = (w.down**2).sum(0) * d.mlp.mean_sq().float() / resid
    heads = per_group((w.o**2).sum(0) * d.attn.mean_sq().float(), w.n_kv) / resid
    return Scores(mlp, heads, layer=d.delta_sq / max(d.resid_sq, 1e-30), comparable=True)


def hybrid(w: LayerWeights, st: LayerStats) -> Scores:
    """Ours: the energy score per calibration domain, each normalised by that domain's own residual
    energy (so no domain dominates by scale or token count), then averaged across domains."""
    per = [_energy(w, d) for d in st.domains.values() if d.tokens]
    mlp, heads = (torch.stack([getattr(s, k) for s in per]).mean(0) for k in ("mlp", "heads"))
    return Scores(mlp, heads, float(torch.tensor([s.layer for s in per]).mean()), comparable=True)


def taylor_from_grads(w: LayerWeights, g: LayerWeights) -> Scores:
    """LLM-Pruner's element-wise first-order Taylor: sum over a group's weights of |w * dL/dw|."""
    mlp = (w.gate * g.gate).abs().sum(1) + (w.up * g.up).abs().sum(1) + (w.down * g.down).abs().sum(0)
    heads = (
        (w.q * g.q).abs().reshape(w.n_kv, -1).sum(1)
        + (w.k * g.k).abs().reshape(w.n_kv, -1).sum(1)
        + (w.v * g.v).abs().reshape(w.n_kv, -1).sum(1)
        + per_group((w.o * g.o).abs().sum(0), w.n_kv)
    )
    return Scores(mlp, heads)


SCORERS: dict[str, Callable[[LayerWeights, LayerStats], Scores]] = {
    "hybrid": hybrid,
    "magnitude": magnitude,
    "wanda-sp": wanda_sp,
    "flap": flap,
    "block-influence": block_influence,
    # "taylor" needs gradients, not statistics: see iterate.taylor_scores. config.METHODS lists all.
}
