"""From scores and deployment constraints to a plan: which channels, KV groups and layers to keep.

All constraints are checked here, up front, not at load time: widths are multiples of `align`, KV
groups (and with them query heads) divide by the tensor-parallel size, every layer keeps at least one
unit of each structure, and a target that cannot be met within `tolerance` is an error that names the
nearest reachable one.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import torch

from prunekit.errors import PrunekitError
from prunekit.families import Family, head_dim, window_in_config_only

from .config import CompressConfig


@dataclass(frozen=True)
class Dims:
    """The shape facts of a model that parameter counts depend on."""

    hidden: int
    vocab: int
    head_dim: int
    n_rep: int  # query heads per KV head
    tied: bool
    qkv_bias: bool
    qk_norm: bool

    @classmethod
    def of(cls, config, fam: Family) -> Dims:
        if getattr(config, "mlp_bias", False):
            raise PrunekitError("models with MLP biases are not supported yet.")
        return cls(
            config.hidden_size,
            config.vocab_size,
            head_dim(config),
            config.num_attention_heads // config.num_key_value_heads,
            bool(getattr(config, "tie_word_embeddings", False)),
            fam.qkv_bias or bool(getattr(config, "attention_bias", False)),
            fam.qk_norm,
        )

    def layer_params(self, width: int, groups: int) -> int:
        D, hd = self.hidden, self.head_dim
        q, kv = groups * self.n_rep * hd, groups * hd
        attn = D * q + 2 * D * kv + q * D
        if self.qkv_bias:
            attn += q + 2 * kv
        if self.qk_norm:
            attn += 2 * hd
        return attn + 3 * D * width + 2 * D

    def fixed_params(self) -> int:
        """Embeddings, LM head and final norm: never cut."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden


@dataclass
class Shape:
    """Per layer (MLP width, KV groups kept); None for a removed layer."""

    layers: list[tuple[int, int] | None]

    def params(self, dims: Dims) -> int:
        return dims.fixed_params() + sum(dims.layer_params(*s) for s in self.layers if s is not None)

    def decoder_params(self, dims: Dims) -> int:
        return self.params(dims) - dims.fixed_params()

    def is_uniform(self) -> bool:
        return len({s for s in self.layers if s is not None}) <= 1


@dataclass
class Plan:
    """Kept indices per layer, in the current model's numbering. A removed layer has None."""

    mlp: list[list[int] | None]
    groups: list[list[int] | None]
    shape: Shape = field(default=None)  # type: ignore[assignment]


def base_params(shape: Shape, dims: Dims, ratio_of: str) -> int:
    return shape.params(dims) if ratio_of == "total" else shape.decoder_params(dims)


def check_dense(shape: Shape, dims: Dims, c: CompressConfig) -> None:
    """Constraints the model must meet before any cut (tensor parallelism)."""
    for _w, g in (s for s in shape.layers if s is not None):
        if g % c.tp or (g * dims.n_rep) % c.tp:
            raise PrunekitError(
                f"--tp {c.tp} does not divide the model's {g} KV heads; "
                "choose a tensor-parallel size that divides them."
            )


def width_options(cur: int, c: CompressConfig, prune: bool) -> list[int]:
    if not prune:
        return [cur]
    step = c.align if c.align % c.tp == 0 else c.align * c.tp
    return sorted({cur, *range(step, cur + 1, step)})


def group_options(cur: int, c: CompressConfig, dims: Dims, prune: bool) -> list[int]:
    if not prune:
        return [cur]
    return [g for g in range(1, cur + 1) if g % c.tp == 0 and (g * dims.n_rep) % c.tp == 0]


def structure_params(kind: str, n: int, dims: Dims) -> int:
    """Parameters of one layer's MLP of width n, or attention with n KV groups."""
    return 3 * dims.hidden * n if kind == "mlp" else dims.layer_params(0, n) - 2 * dims.hidden


def _normalised(s: torch.Tensor, comparable: bool, size: int) -> torch.Tensor:
    """Scores of one structure in one layer, made rankable against other layers and structures: as
    they are when the scorer says so, else as a share of the structure's mass spread over its size."""
    s = s.double().clamp_min(0)
    return s if comparable else s / s.sum().clamp_min(1e-30) * size


def _uniform_candidates(cur: Shape, dense: Shape, dims: Dims, c: CompressConfig, layer_order: list[int]) -> list:
    """(removed fraction, width, groups, shape, removed layers) of every uniform shape the constraints allow;
    layers are removed in `layer_order`."""
    base = base_params(dense, dims, c.ratio_of)
    live = [i for i, s in enumerate(cur.layers) if s is not None]
    w0, g0 = cur.layers[live[0]]
    widths = width_options(w0, c, "mlp" in c.structures)
    groups = group_options(g0, c, dims, "heads" in c.structures)
    n_remove = range(0, len(live)) if "layers" in c.structures else [0]
    cands = []
    for w, g, nl in itertools.product(widths, groups, n_remove):
        removed_layers = set(layer_order[:nl])
        shape = Shape([None if (s is None or i in removed_layers) else (w, g) for i, s in enumerate(cur.layers)])
        cands.append((1 - base_params(shape, dims, c.ratio_of) / base, w, g, shape, removed_layers))
    return cands


def _within(cands: list, target: float, c: CompressConfig, final: bool) -> list:
    """The candidates within tolerance of the target (any, before the last round), or an error naming the
    nearest reachable one."""
    tol = c.tolerance if final else 1.0
    ok = [x for x in cands if abs(x[0] - target) <= tol]
    if not ok:
        near = min(cands, key=lambda x: abs(x[0] - target))
        raise PrunekitError(
            f"a {target:.1%} cut of the {c.ratio_of} parameters cannot be met within ±{c.tolerance:.1%} "
            f"under these constraints (structures {','.join(c.structures)}, align {c.align}, tp {c.tp}); "
            f"the nearest reachable is {near[0]:.1%} (MLP width {near[1]}, {near[2]} KV groups, "
            f"{len(near[4])} layers removed). Use --ratio {near[0]:.3f} or loosen --align/--tolerance."
        )
    return ok


def config_shape(config) -> Shape | None:
    """The shape a model's config states (a stock one, or prunekit's per-layer record); None for layouts
    whose shapes the config does not state this way."""
    if getattr(config, "block_configs", None):
        return None
    layers = getattr(config, "prunekit_layers", None)
    if layers:
        return Shape([(int(s["intermediate_size"]), int(s["num_key_value_heads"])) for s in layers])
    return Shape([(config.intermediate_size, config.num_key_value_heads)] * config.num_hidden_layers)


def precheck(config, fam: Family, c: CompressConfig) -> None:
    """What can be known from the model's config alone, before any data is packed or weights loaded:
    the tensor-parallel constraint and whether the final target is reachable (with the nearest one named)."""
    if c.mode == "per-layer" and window_in_config_only(config, fam):
        raise PrunekitError(
            f"--mode per-layer gives layers different shapes, but this model's sliding-window "
            f"attention (sliding_window={config.sliding_window}) is kept only by its stock class, "
            "which needs the same shape in every layer: use --mode uniform."
        )
    dense = config_shape(config)
    if dense is None:
        return
    dims = Dims.of(config, fam)
    check_dense(dense, dims, c)
    live = [i for i, s in enumerate(dense.layers) if s is not None]
    if c.mode == "uniform" or c.allocation == "kl":
        if len({dense.layers[i] for i in live}) == 1:
            _within(_uniform_candidates(dense, dense, dims, c, live), c.ratio, c, final=True)
        return
    # Per-layer widths reach anything between no cut and every layer at its smallest allowed shape.
    floor = Shape(
        [
            (width_options(w, c, "mlp" in c.structures)[0], group_options(g, c, dims, "heads" in c.structures)[0])
            for w, g in (dense.layers[i] for i in live)
        ]
    )
    most = 1 - base_params(floor, dims, c.ratio_of) / base_params(dense, dims, c.ratio_of)
    if c.ratio > most + c.tolerance:
        raise PrunekitError(
            f"a {c.ratio:.1%} cut of the {c.ratio_of} parameters cannot be met with per-layer "
            f"{','.join(c.structures)} cuts (align {c.align}, tp {c.tp}): at most {most:.1%}, "
            f"with every layer at its smallest shape. Use --ratio {most:.3f} or less, or add "
            "structures to --structures."
        )


def uniform_shape(
    cur: Shape, dense: Shape, dims: Dims, c: CompressConfig, target: float, scores: list, final: bool
) -> Shape:
    """The same width and KV-group count in every kept layer, closest to `target` (a removed fraction
    of the dense model's base); among candidates within tolerance, the one whose removed units carry
    the least importance. Without scores (None: MLP widths only, chosen before any layer is scored), the
    one that removes least: the same choice, since removing more channels never costs less (up to exact
    ties, where every further channel scores 0)."""
    live = [i for i, s in enumerate(cur.layers) if s is not None]
    if scores is None:
        assert set(c.structures) == {"mlp"}, "uniform_shape: only MLP widths are chosen without scores"
    elif "layers" in c.structures and any(scores[i].layer is None for i in live):
        raise PrunekitError(
            "this method does not score whole layers; drop 'layers' from --structures "
            "or use --method block-influence or hybrid."
        )
    # Least important first (only read when layers may be removed).
    layer_order = sorted(live, key=lambda i: scores[i].layer) if "layers" in c.structures else live
    ok = _within(_uniform_candidates(cur, dense, dims, c, layer_order), target, c, final)
    best_frac = min(abs(x[0] - target) for x in ok)
    # Prefer the candidates nearest the target (within a quarter of the tolerance), then the cheapest.
    ok = [x for x in ok if abs(x[0] - target) <= best_frac + c.tolerance / 4]
    return min(ok, key=lambda x: x[0] if scores is None else _uniform_cost(x, scores, dims))[3]


def _uniform_cost(cand, scores, dims: Dims) -> float:
    _, w, g, shape, removed_layers = cand
    cost = 0.0
    for i, sc in enumerate(scores):
        if sc is None:
            continue
        if i in removed_layers:
            cost += sc.layer if (sc.comparable or sc.mlp is None) else dims.layer_params(len(sc.mlp), len(sc.heads))
            continue
        for kind, s, keep in (("mlp", sc.mlp, w), ("heads", sc.heads, g)):
            if s is None or keep >= len(s):
                continue
            n = _normalised(s, sc.comparable, structure_params(kind, len(s), dims))
            cost += n.sort().values[: len(s) - keep].sum().item()
    return cost


def select(scores: list, shape: Shape) -> Plan:
    """Keep the highest-scoring units of each layer, as many as the shape says (sorted indices)."""
    mlp, groups = [], []
    for sc, s in zip(scores, shape.layers):
        if s is None:
            mlp.append(None)
            groups.append(None)
            continue
        w, g = s
        mlp.append(sorted(sc.mlp.argsort(descending=True)[:w].tolist()) if sc.mlp is not None else list(range(w)))
        groups.append(
            sorted(sc.heads.argsort(descending=True)[:g].tolist()) if sc.heads is not None else list(range(g))
        )
    return Plan(mlp, groups, shape)


def global_shape(cur: Shape, dense: Shape, dims: Dims, c: CompressConfig, target: float, scores: list) -> Shape:
    """Per-layer widths: remove the units with the least importance per parameter, across all layers,
    until the target is reached."""
    base = base_params(dense, dims, c.ratio_of)
    need = target * base - (base - base_params(cur, dims, c.ratio_of))
    layers = [list(s) if s is not None else None for s in cur.layers]
    heap = []  # (cost per parameter, layer, structure)
    sorted_scores = {}
    for i, sc in enumerate(scores):
        if layers[i] is None:
            continue
        for kind, s in (("mlp", sc.mlp), ("heads", sc.heads)):
            if kind in c.structures and s is not None:
                size = structure_params(kind, len(s), dims)
                sorted_scores[i, kind] = _normalised(s, sc.comparable, size).sort().values
                _push(heap, i, kind, layers[i], sorted_scores[i, kind], dims, c)
    removed = 0.0
    while removed < need and heap:
        _, i, kind, n_units, params = heapq.heappop(heap)
        w, g = layers[i]
        layers[i] = [w - n_units, g] if kind == "mlp" else [w, g - n_units]
        removed += params
        _push(heap, i, kind, layers[i], sorted_scores[i, kind], dims, c)
    shape = Shape([tuple(s) if s is not None else None for s in layers])
    frac = 1 - base_params(shape, dims, c.ratio_of) / base
    if abs(frac - target) > c.tolerance:
        raise PrunekitError(
            f"a {target:.1%} cut of the {c.ratio_of} parameters cannot be met within "
            f"±{c.tolerance:.1%}; the nearest reachable is {frac:.1%}. "
            f"Use --ratio {frac:.3f} or loosen --align/--tolerance."
        )
    return shape


def _push(heap, i, kind, cur, sorted_s, dims: Dims, c: CompressConfig) -> None:
    """Queue the next removable unit of (layer i, structure kind), if the constraints allow one."""
    w, g = cur
    if kind == "mlp":
        opts = width_options(w, c, True)
        lower = [x for x in opts if x < w]
        if not lower:
            return
        n = w - max(lower)
        removed_now = len(sorted_s) - w
        cost = sorted_s[removed_now : removed_now + n].sum().item()
        params = dims.layer_params(w, g) - dims.layer_params(w - n, g)
    else:
        lower = [x for x in group_options(g, c, dims, True) if x < g]
        if not lower:
            return
        n = g - max(lower)
        removed_now = len(sorted_s) - g
        cost = sorted_s[removed_now : removed_now + n].sum().item()
        params = dims.layer_params(w, g) - dims.layer_params(w, g - n)
    heapq.heappush(heap, (cost / params, i, kind, n, params))


def schedule(ratio: float, rounds: int) -> list[float]:
    """Cumulative removed fraction after each round: equal steps."""
    if rounds < 1:
        raise PrunekitError(f"--rounds must be at least 1, got {rounds}.")
    return [ratio * (k + 1) / rounds for k in range(rounds)]
