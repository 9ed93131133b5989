"""Apply a plan: slice tensors, refit the consuming projection, derive the config from the shapes.

The refit keeps the architecture stock: after MLP channels (or heads) are removed, the projection
that consumes them (down_proj, o_proj) is solved again by least squares on the calibration
activations, W' = argmin ||X_K W'^T - X W^T||^2, using only X^T X. No bias, no new module.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.families import Family, get_module, head_dim

from .plan import Dims


def slice_linear(lin: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping rows (dim=0, outputs) or columns (dim=1, inputs) idx of `lin`."""
    idx = idx.to(lin.weight.device)
    w = lin.weight.data.index_select(dim, idx)
    # Built on the meta device: a random init of the new weights would only be overwritten (seconds per model).
    out = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, dtype=w.dtype, device="meta")
    out.weight = nn.Parameter(w, requires_grad=lin.weight.requires_grad)
    if lin.bias is not None:
        # clone: an uncut bias shared with the old layer may live in memory-mapped pages that offloading releases
        b = lin.bias.data.index_select(0, idx) if dim == 0 else lin.bias.data.clone()
        out.bias = nn.Parameter(b, requires_grad=lin.bias.requires_grad)
    return out


def refit(weight: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor, ridge: float) -> torch.Tensor:
    """Least-squares refit of a consumer weight (out, in) onto the kept inputs, in fp64.

    minimise ||X_K A^T - X W^T||^2  =>  A^T = (G_KK + lam I)^-1 G_K: W^T, with G = X^T X: preserve this
    layer's output on its current inputs (the dense model's output instead was measured worse,
    docs/results/retired.md).
    lam is `ridge` times the median of diag(G_KK): the median, not the mean, because a few massive
    activation channels can be 1e5x the rest and a mean-scaled ridge shrinks the refit badly.
    """
    g = gram.double()
    keep = keep.to(g.device)
    gkk = g.index_select(0, keep).index_select(1, keep)
    rhs = g.index_select(0, keep) @ weight.double().T  # (K, out)
    return refit_normal(gkk, rhs, ridge).to(weight.dtype)


# The largest ||H||_F / lam (a bound on H's condition number: its eigenvalues lie between lam and ||H||_F) that
# the refit solves in fp32: fp32's rounding (6e-8) times it stays under 0.06. Layers with massive activations
# exceed it (their grams span many orders of magnitude) and are solved in fp64.
FP32_SOLVE_BOUND = 1e6


def refit_normal(gkk: torch.Tensor, rhs: torch.Tensor, ridge: float) -> torch.Tensor:
    """The refit from its normal equations on the kept inputs, G_KK A^T = R: the weight A (out, K). G_KK (fp64)
    is overwritten (the ridge is added to its diagonal in place: at a 6000-channel MLP a copy is 0.3 GB)."""
    lam = ridge * gkk.diagonal().median().clamp_min(1e-12)
    h = gkk
    h.diagonal().add_(lam)
    # H is a gram plus a ridge: symmetric positive definite, so Cholesky (half LU's work), in fp32 where H is
    # well enough conditioned (half fp64's time on a CPU, far less on most GPUs), else in fp64; LU only if
    # rounding made H indefinite.
    if float(torch.linalg.matrix_norm(h)) <= FP32_SOLVE_BOUND * float(lam):
        chol, info = torch.linalg.cholesky_ex(h.float())
        if int(info) == 0:
            return torch.cholesky_solve(rhs.float(), chol).T.contiguous()
        del chol
    chol, info = torch.linalg.cholesky_ex(h)
    a_t = torch.cholesky_solve(rhs, chol) if int(info) == 0 else torch.linalg.solve(h, rhs)
    return a_t.T.contiguous()


def obs_order(
    weight: torch.Tensor,
    gram: torch.Tensor,
    n_remove: int,
    ridge: float,
    protect: torch.Tensor | None = None,
    steps: int = 128,
) -> tuple[list[int], list[float]]:
    """Greedy Optimal Brain Surgeon over the inputs of a consumer (out, in), as ZipLM / OSSCAR select
    structures: the order in which inputs go, and what each removal costs given a refit.

    With H = G + lam I, removing input j and refitting the rest optimally raises the output error
    ||X W^T - X_K A^T||^2 by ||W[:, j]||^2 / [H^-1]_jj. The cheapest inputs go, and the weights and
    H^-1 are updated as if the refit had run (a block downdate), so each choice sees the compensation
    the earlier ones allow. At most `steps` updates: each removes the ceil(n_remove / steps) cheapest
    at once (one at a time, a 1536-wide MLP took 20 s per layer, bound by rewriting H^-1).
    lam as in `refit`. `protect`: inputs never removed. fp64."""
    g = gram.double()
    n = g.shape[0]
    lam = ridge * g.diagonal().median().clamp_min(1e-12)
    hinv = torch.linalg.inv(g + lam * torch.eye(n, dtype=g.dtype, device=g.device))
    w = weight.double().to(g.device).clone()  # (out, in)
    out = torch.zeros(n, dtype=torch.bool, device=g.device)
    if protect is not None:
        out[protect] = True
    order, costs = [], []
    block = max(1, -(-n_remove // steps))
    while len(order) < n_remove:
        d = hinv.diagonal().clamp_min(1e-30)
        cost = (w * w).sum(0) / d
        cost[out] = float("inf")
        k = min(block, n_remove - len(order))
        c, idx = cost.topk(k, largest=False)
        # Block OBS: remove S at once; compensate the rest with H^-1[S,S]^-1.
        inv_ss = torch.linalg.inv(hinv[idx][:, idx])  # (k, k)
        rows = inv_ss @ hinv[idx, :]  # (k, in)
        w -= w[:, idx] @ rows
        hinv -= hinv[:, idx] @ rows
        w[:, idx] = 0
        hinv[idx, :] = 0
        hinv[:, idx] = 0
        out[idx] = True
        order += idx.tolist()
        costs += c.tolist()
    return order, costs


def obs_keep(
    weight: torch.Tensor, gram: torch.Tensor, n_keep: int, ridge: float, protect: torch.Tensor | None = None
) -> list[int]:
    """The inputs of a consumer to keep so that the least-squares refit loses the least (obs_order)."""
    return keep_after(obs_order(weight, gram, weight.shape[1] - n_keep, ridge, protect)[0], weight.shape[1], n_keep)


def keep_after(order: list[int], n: int, n_keep: int) -> list[int]:
    """The inputs (sorted) that stay when the first n - n_keep of a removal `order` go."""
    gone = set(order[: n - n_keep])
    return [i for i in range(n) if i not in gone]


def refitted(
    consumer: nn.Linear,
    keep: torch.Tensor,
    gram: torch.Tensor | None,
    ridge: float,
    normal: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> nn.Linear:
    """`consumer` with only its inputs `keep`, refitted from the normal equations on them (when given), or from
    the full gram; neither: the kept columns as they are."""
    new = slice_linear(consumer, keep, 1)
    if normal is not None:
        new.weight.data.copy_(refit_normal(*normal, ridge))
    elif gram is not None:
        new.weight.data.copy_(refit(consumer.weight.data, gram, keep, ridge))
    return new


def cut_mlp(
    mlp: nn.Module,
    fam: Family,
    keep: list[int],
    gram: torch.Tensor | None,
    ridge: float,
    normal: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Keep MLP channels `keep`; down_proj refitted from the full gram, or from the normal
    equations on the kept channels (stats.consumer_normal) when given."""
    idx = torch.tensor(keep, dtype=torch.long)
    new_down = refitted(getattr(mlp, fam.down), idx, gram, ridge, normal)
    setattr(mlp, fam.gate, slice_linear(getattr(mlp, fam.gate), idx, 0))
    setattr(mlp, fam.up, slice_linear(getattr(mlp, fam.up), idx, 0))
    setattr(mlp, fam.down, new_down)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(keep)


def permute_mlp(mlp: nn.Module, fam: Family, first: list[int]) -> None:
    """Reorder MLP channels so that `first` come first, in that order, then the rest: the MLP computes the
    same function (up to the order of down_proj's sum)."""
    n = getattr(mlp, fam.down).in_features
    rest = sorted(set(range(n)) - set(first))
    order = torch.tensor(list(first) + rest, dtype=torch.long)
    for name, dim in ((fam.gate, 0), (fam.up, 0), (fam.down, 1)):
        setattr(mlp, name, slice_linear(getattr(mlp, name), order, dim))


def head_rows(keep_groups: list[int], n_rep: int, hd: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(query rows, KV rows) of the kept KV groups: KV head g and its query heads g*n_rep .. (g+1)*n_rep - 1."""
    kv_rows = torch.cat([torch.arange(g * hd, (g + 1) * hd) for g in keep_groups])
    q_rows = torch.cat([torch.arange(g * n_rep * hd, (g + 1) * n_rep * hd) for g in keep_groups])
    return q_rows, kv_rows


def cut_heads(
    attn: nn.Module,
    fam: Family,
    keep_groups: list[int],
    n_rep: int,
    hd: int,
    gram: torch.Tensor | None,
    ridge: float,
    normal: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Keep whole KV groups (head_rows); o_proj refitted as cut_mlp refits down_proj."""
    q_rows, kv_rows = head_rows(keep_groups, n_rep, hd)
    new_o = refitted(getattr(attn, fam.o), q_rows, gram, ridge, normal)
    setattr(attn, fam.q, slice_linear(getattr(attn, fam.q), q_rows, 0))
    setattr(attn, fam.k, slice_linear(getattr(attn, fam.k), kv_rows, 0))
    setattr(attn, fam.v, slice_linear(getattr(attn, fam.v), kv_rows, 0))
    setattr(attn, fam.o, new_o)


def remove_layers(model, fam: Family, remove: list[int]) -> None:
    layers = get_module(model, fam.layers)
    kept = [m for i, m in enumerate(layers) if i not in set(remove)]
    for new_idx, layer in enumerate(kept):
        # The KV cache is indexed by layer_idx: renumber so that generation uses slots 0..L'-1.
        getattr(layer, fam.attn).layer_idx = new_idx
    parent, name = fam.layers.rsplit(".", 1)
    setattr(get_module(model, parent), name, nn.ModuleList(kept))
    cfg = model.config
    for key in fam.per_layer_keys:
        val = getattr(cfg, key, None)
        if isinstance(val, list) and len(val) == len(layers):
            setattr(cfg, key, [v for i, v in enumerate(val) if i not in set(remove)])
    cfg.num_hidden_layers = len(kept)


def layer_shapes(model, fam: Family) -> list[tuple[int, int, int]]:
    """(MLP width, query heads, KV heads) of every layer, read from the tensors themselves."""
    hd = head_dim(model.config)
    out = []
    for layer in get_module(model, fam.layers):
        attn, mlp = getattr(layer, fam.attn), getattr(layer, fam.mlp)
        w = getattr(mlp, fam.gate).weight.shape[0]
        assert getattr(mlp, fam.up).weight.shape[0] == w == getattr(mlp, fam.down).weight.shape[1]
        h = getattr(attn, fam.q).weight.shape[0] // hd
        kv = getattr(attn, fam.k).weight.shape[0] // hd
        assert getattr(attn, fam.v).weight.shape[0] == kv * hd and getattr(attn, fam.o).weight.shape[1] == h * hd
        out.append((w, h, kv))
    return out


def sync_config(model, fam: Family) -> bool:
    """Derive the config from the tensor shapes. Returns True when all layers agree (a stock layout);
    otherwise the per-layer shapes go to `config.prunekit_layers` and the globals hold the maximum."""
    cfg = model.config
    hd = head_dim(cfg)
    shapes = layer_shapes(model, fam)
    cfg.head_dim = hd  # explicit: after head removal hidden_size // heads no longer gives it
    cfg.num_hidden_layers = len(shapes)
    uniform = len(set(shapes)) == 1
    w, h, kv = (max(s[i] for s in shapes) for i in range(3))
    cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads = w, h, kv
    if uniform:
        if hasattr(cfg, "prunekit_layers"):
            del cfg.prunekit_layers
    else:
        cfg.prunekit_layers = [
            {"intermediate_size": a, "num_attention_heads": b, "num_key_value_heads": c} for a, b, c in shapes
        ]
    return uniform


def cuts_mlp(layer, fam: Family, keep: list[int] | None) -> bool:
    return keep is not None and len(keep) < getattr(getattr(layer, fam.mlp), fam.gate).weight.shape[0]


def cuts_heads(layer, fam: Family, dims: Dims, keep: list[int] | None) -> bool:
    return keep is not None and len(keep) < getattr(getattr(layer, fam.attn), fam.k).weight.shape[0] // dims.head_dim


def apply_layer(layer, fam: Family, dims: Dims, keep_mlp: list[int] | None, keep_groups: list[int] | None) -> None:
    """Cut one decoder layer per its plan (indices in the current numbering), without refit."""
    if cuts_mlp(layer, fam, keep_mlp):
        cut_mlp(getattr(layer, fam.mlp), fam, keep_mlp, None, 0.0)
    if cuts_heads(layer, fam, dims, keep_groups):
        cut_heads(getattr(layer, fam.attn), fam, keep_groups, dims.n_rep, dims.head_dim, None, 0.0)
