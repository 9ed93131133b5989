"""The rounds: statistics, scores, plan, cut (with refit), again, until the target is reached.

Two choices are made once per run, from the config, and every round follows them:
- where the scores come from (score_source): the KL search (per-layer widths by measured KL), the calibration
  loss's gradients (taylor), the layer's own cut pass (the default: uniform MLP widths need no score to pick
  the width), or a statistics pass over the model before each cut; a round after the first reads the scores
  that the last round's cut pass took on its way, where nothing changed the model in between;
- how a layer is cut (one_forward_cut): from one forward that caches what the refit and the next layer need,
  where only the layer's MLP is cut with channels known before the pass, else statistics and refit from
  forwards of their own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch
from tqdm import tqdm

from prunekit.families import Family, get_module, head_dim
from prunekit.faults import point
from prunekit.offload import placement
from prunekit.perplexity import per_domain
from prunekit.timer import timed

from . import plan as P
from .config import CompressConfig
from .recover import fp32_params
from .scores import SCORERS, LayerWeights, Scores, taylor_from_grads
from .search import KLProbe, kl_shape, probe_batches, sig
from .stats import (
    LayerRunner,
    advance_cut,
    cached_gram,
    consumer_grams,
    consumer_normal,
    make_batches,
    mlp_normal_cached,
    summed,
)
from .surgery import (
    apply_layer,
    cut_heads,
    cut_mlp,
    cuts_heads,
    cuts_mlp,
    head_rows,
    layer_shapes,
    obs_keep,
    permute_mlp,
    remove_layers,
    sync_config,
)


def current_shape(model, fam: Family, n_layers_orig: int, alive: list[int]) -> P.Shape:
    """The model's shape in the original layer numbering (removed layers are None)."""
    shapes = layer_shapes(model, fam)
    out: list = [None] * n_layers_orig
    for idx, (w, _h, kv) in zip(alive, shapes):
        out[idx] = (w, kv)
    return P.Shape(out)


def layer_weights(layer, fam: Family, hd: int, grads: bool = False) -> LayerWeights:
    """The layer's projection weights in fp32 (with grads: their gradients, in the same shapes)."""
    attn, mlp = getattr(layer, fam.attn), getattr(layer, fam.mlp)

    def get(module, name):
        w = getattr(module, name).weight
        return (w.grad if grads else w.detach()).float()

    return LayerWeights(
        *(get(mlp, n) for n in (fam.gate, fam.up, fam.down)),
        *(get(attn, n) for n in (fam.q, fam.k, fam.v, fam.o)),
        n_kv=getattr(attn, fam.k).weight.shape[0] // hd,
        head_dim=hd,
    )


def stat_scores(model, fam: Family, batches, method: str, desc: str) -> list[Scores]:
    """One sequential pass over the current model: statistics and scores of every layer."""
    place = placement(model)
    with timed("statistics"):
        runner = LayerRunner(model, fam, batches)
    layers = get_module(model, fam.layers)
    out = []
    for i in tqdm(range(len(layers)), desc=desc, unit="layer", leave=False):
        with place.layer(layers[i]):
            out.append(score_layer(runner, i, layers[i], fam, method))
    return out


def score_layer(runner: LayerRunner, i: int, layer, fam: Family, method: str) -> Scores:
    """Statistics of layer i on the runner's stream (which advances past it) and the layer's scores."""
    with timed("statistics"):
        st = runner.collect(i)
    return layer_scores(layer, fam, runner.model.config, st, method)


def layer_scores(layer, fam: Family, config, st, method: str) -> Scores:
    """A layer's scores from its statistics, on the CPU."""
    with timed("scores"):
        sc = SCORERS[method](layer_weights(layer, fam, head_dim(config)), st)
        # The planner compares scores across layers on the CPU, wherever they were computed.
        return replace(
            sc, mlp=None if sc.mlp is None else sc.mlp.cpu(), heads=None if sc.heads is None else sc.heads.cpu()
        )


def taylor_scores(model, fam: Family, batches, desc: str) -> list[Scores]:
    """First-order Taylor scores from the gradient of the calibration loss (LLM-Pruner)."""
    dtype = model.dtype
    # fp32 weights and gradients; when the model computes in bf16 (a CPU with native bf16), the
    # matmuls stay in bf16 under autocast. Elsewhere autocast to bf16 would be emulated and slow.
    with fp32_params(model):
        try:
            model.zero_grad(set_to_none=True)
            place = placement(model)
            for _, ids in tqdm(batches, desc=desc, unit="batch", leave=False):
                ids = place.put(ids)
                with torch.autocast(place.device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                (loss * ids.shape[0] / sum(len(b) for _, b in batches)).backward()
            hd = head_dim(model.config)
            out = [
                taylor_from_grads(layer_weights(layer, fam, hd), layer_weights(layer, fam, hd, grads=True))
                for layer in get_module(model, fam.layers)
            ]
        finally:
            model.zero_grad(set_to_none=True)
    return out


def score_source(s: CompressConfig) -> str:
    """Where a round's scores come from when none are carried from the last one: "kl" (the widths by measured
    KL, the channels by OBS in the cut), "gradients" (taylor), "cut" (each layer scored in its cut pass, on the
    stream it is cut on, from the forward that caches its MLP inputs: one forward over the calibration set per
    layer fewer than a pass before the cut), or "statistics" (a pass over the model before the cut).
    "cut" needs plans whose shape is known before any score (uniform MLP widths: the width nearest the
    target), channels chosen by a statistics score, and the one-forward cut with the layer's own output as
    the refit target. MLP channels only: the layer's statistics there lack its output terms (it is scored
    before it is cut), so whole-layer scores (layer removal) would read zeros."""
    if s.mode == "per-layer" and s.allocation == "kl":
        return "kl"
    if s.method == "taylor":
        return "gradients"
    if one_forward_cut(s) and s.mode == "uniform" and set(s.structures) == {"mlp"}:
        return "cut"
    return "statistics"


def one_forward_cut(s: CompressConfig) -> bool:
    """Whether a layer whose MLP alone is cut is cut from one forward (stats.mlp_normal_cached): with the refit,
    and channels chosen by score before the pass (OBS chooses from the refit's full gram, in the pass)."""
    return s.compensate and s.selection == "score"


def carries_scores(s: CompressConfig, source: str) -> bool:
    """Whether a round's cut pass also takes the next round's statistics and scores: the stream past each cut
    layer is what the next round's statistics pass would see, when the scores come from the forward pass."""
    return s.compensate and source in ("cut", "statistics")


def cut_pass(
    model,
    fam: Family,
    batches,
    plan: P.Plan,
    alive: list[int],
    s: CompressConfig,
    dims: P.Dims,
    desc: str,
    score_next: bool = False,
    score_here: bool = False,
) -> list[Scores] | None:
    """Apply a round's plan layer by layer. With compensation each refit sees the inputs that the
    already-cut layers produce (attention first, then the MLP on the cut attention's output). With
    `score_here` (score_source "cut"), the plan holds each layer's width only: the channels are chosen in the
    pass, from the layer's statistics on the stream it is cut on, and written into the plan.

    With `score_next`, the pass that carries the stream past each cut layer also takes its statistics and
    scores (carries_scores), so the next round needs no pass of its own. Returns those scores, in the order
    of the layers that stay."""
    layers = get_module(model, fam.layers)
    place = placement(model)
    if not s.compensate:
        for pos, idx in enumerate(alive):
            if plan.mlp[idx] is not None:
                with place.layer(layers[pos]):
                    apply_layer(layers[pos], fam, dims, plan.mlp[idx], plan.groups[idx])
        return None
    runner = LayerRunner(model, fam, batches)
    nxt: list[Scores] = []
    try:
        for pos in tqdm(range(len(layers)), desc=desc, unit="layer", leave=False):
            idx, layer = alive[pos], layers[pos]
            if plan.mlp[idx] is None:
                continue  # removed at the end of the round; its input passes through unchanged
            if (
                one_forward_cut(s)
                and cuts_mlp(layer, fam, plan.mlp[idx])
                and not cuts_heads(layer, fam, dims, plan.groups[idx])
            ):
                keep = len(plan.mlp[idx]) if score_here else plan.mlp[idx]
                plan.mlp[idx], sc = _cut_layer_cached(layer, fam, runner, pos, keep, s, score_next)
                nxt += [sc] if score_next else []
                continue
            with place.layer(layer):
                _cut_layer(layer, fam, runner, pos, idx, plan, s, dims)
            point("compress:cut")
            with place.layer(layer):
                if score_next:
                    nxt.append(score_layer(runner, pos, layer, fam, s.method))
                else:
                    runner.forward(pos)
    finally:
        runner.close()
    return nxt if score_next else None


def _cut_layer_cached(
    layer, fam: Family, runner, pos: int, keep: list[int] | int, s: CompressConfig, score_next: bool
) -> tuple[list[int], Scores | None]:
    """Cut layer pos's MLP from one forward: the normal equations, the kept inputs and residuals, and with
    score_next the cut layer's statistics; the stream then advances from the cache, not a second forward.
    The output uses the weights as stored (offloaded layers go home, and are rounded to its dtype, first).
    `keep` is the kept channels, or their count (score_source "cut"): the layer is then scored from the same
    forward, which caches all of its MLP inputs and X^T Y for every channel; the top-scoring channels are
    kept, and their gram is built from the cached inputs (not the full gram in the pass: (K/n)^2 of its
    products). Returns the kept channels and, with score_next, the cut layer's scores."""
    place = placement(runner.model)
    mlp = getattr(layer, fam.mlp)
    cache = cols = normal = None
    try:
        with place.layer(layer):
            if isinstance(keep, int):
                n = getattr(mlp, fam.down).in_features
                with timed("cut and refit"):
                    (_, r), cache = mlp_normal_cached(runner, pos, torch.arange(n), with_stats=True, gram=False)
                stats = summed(cache.stats, layer, fam, place.device)
                sc = layer_scores(layer, fam, runner.model.config, stats, s.method)
                keep = P.select([sc], P.Shape([(keep, 0)])).mlp[0]
                cols = torch.tensor(keep, device=r.device)
                with timed("cut and refit"):  # the kept channels' gram only, (K/n)^2 of the full one
                    normal = (cached_gram(runner, pos, cache, cols), r.index_select(0, cols))
                del r
            with timed("cut and refit"):
                # The kept channels first: the forward is the same, and the kept inputs X_K are then the first K
                # columns of down_proj's input (a slice, not a gather of scattered columns: 4% of a compress).
                permute_mlp(mlp, fam, keep)
                first = list(range(len(keep)))
                if cache is None:
                    normal, cache = mlp_normal_cached(runner, pos, torch.tensor(first), with_stats=score_next)
                else:  # scored above: the advance reads the kept columns of the cached inputs
                    cache.keep_columns(cols)
                    if not score_next:
                        cache.stats = None  # no output terms to add or sum
                cut_mlp(mlp, fam, first, None, s.ridge, normal=normal)
                del normal  # G_KK and R: not held while the stream advances
        point("compress:cut")
        with timed("statistics" if score_next else "cut and refit"):
            stats = advance_cut(runner, pos, cache)
    finally:
        if cache is not None:
            cache.close()  # a spill file is closed (so deleted) on errors too
    if not score_next:
        return keep, None
    with place.layer(layer):
        return keep, layer_scores(layer, fam, runner.model.config, stats, s.method)


def _cut_layer(layer, fam: Family, runner, pos: int, idx: int, plan: P.Plan, s: CompressConfig, dims: P.Dims) -> None:
    """Cut layer pos's KV groups, then its MLP, each refitted on the inputs the already-cut model gives it."""
    for kind, keep, cuts in (
        ("heads", plan.groups[idx], cuts_heads(layer, fam, dims, plan.groups[idx])),
        ("mlp", plan.mlp[idx], cuts_mlp(layer, fam, plan.mlp[idx])),
    ):
        if not cuts:
            continue
        parent, name = (fam.attn, fam.o) if kind == "heads" else (fam.mlp, fam.down)
        consumer = getattr(getattr(layer, parent), name)
        gram = normal = None
        if kind == "mlp" and s.selection == "obs":
            # The plan fixed how many channels stay; which ones is decided here, where the refit's
            # gram on the already-cut model's activations is at hand (the full gram: OBS reads all of it).
            gram = consumer_grams(runner, pos, consumer)
            keep = plan.mlp[idx] = obs_keep(consumer.weight.data, gram, len(keep), s.ridge)
        else:  # the kept inputs are known: the refit's system on them alone
            if kind == "mlp":  # kept channels first, as in _cut_layer_cached: the same products in both paths
                permute_mlp(getattr(layer, parent), fam, keep)
                keep = list(range(len(keep)))
                consumer = getattr(getattr(layer, parent), name)
            rows = torch.tensor(keep) if kind == "mlp" else head_rows(keep, dims.n_rep, dims.head_dim)[0]
            normal = consumer_normal(runner, pos, consumer, rows)
        module = getattr(layer, parent)
        if kind == "heads":
            cut_heads(module, fam, keep, dims.n_rep, dims.head_dim, gram, s.ridge, normal=normal)
        else:
            cut_mlp(module, fam, keep, gram, s.ridge, normal=normal)


@dataclass
class Pruning:
    """What the rounds share: the model being cut, its dense shape, and what each original layer still holds."""

    model: object
    fam: Family
    s: CompressConfig
    batches: list
    dims: P.Dims = field(init=False)
    n_orig: int = field(init=False)
    alive: list[int] = field(init=False)  # the original indices of the layers that stay
    dense: P.Shape = field(init=False)
    kept_mlp: list = field(init=False)  # original channel indices each layer holds, composed across rounds
    kept_groups: list = field(init=False)
    probe: KLProbe | None = None  # the dense model's distributions (--allocation kl)

    def __post_init__(self):
        self.dims = P.Dims.of(self.model.config, self.fam)
        self.n_orig = self.model.config.num_hidden_layers
        self.alive = list(range(self.n_orig))
        self.dense = self.shape()
        P.check_dense(self.dense, self.dims, self.s)
        self.kept_mlp = [list(range(w)) for w, _ in self.dense.layers]
        self.kept_groups = [list(range(g)) for _, g in self.dense.layers]
        if score_source(self.s) == "kl":
            self.probe = KLProbe(self.model, self.fam, probe_batches(self.batches, self.s.search_samples))

    def shape(self) -> P.Shape:
        return current_shape(self.model, self.fam, self.n_orig, self.alive)

    def scores(self, source: str, tag: str) -> list[Scores] | None:
        """The scores of the layers that stay, in order; None where each layer is scored in its cut pass."""
        if source == "kl":  # the channels are chosen by OBS in the cut; the widths by measured KL
            return [Scores(None, None) for _ in self.alive]
        if source == "cut":
            return None
        if source == "gradients":
            with timed("statistics"):
                return taylor_scores(self.model, self.fam, self.batches, f"{tag} gradients")
        return stat_scores(self.model, self.fam, self.batches, self.s.method, f"{tag} statistics")

    def plan(self, live: list[Scores] | None, target: float, final: bool, tag: str, log) -> tuple[P.Plan, dict]:
        """The round's plan (with live None: widths only, the cut pass chooses the channels) and the record of
        the KL search, where one ran."""
        c, cur = self.s, self.shape()
        scores: list = [None] * self.n_orig
        for pos, idx in enumerate(self.alive):
            scores[idx] = Scores(None, None) if live is None else live[pos]
        search = None
        if c.mode == "uniform":
            shape = P.uniform_shape(cur, self.dense, self.dims, c, target, None if live is None else scores, final)
        elif self.probe is not None:
            uniform = P.uniform_shape(cur, self.dense, self.dims, c, target, scores, final)
            with timed("scores"):
                shape, search = kl_shape(
                    self.model,
                    self.fam,
                    self.batches,
                    self.probe,
                    self.alive,
                    cur,
                    self.dense,
                    self.dims,
                    c,
                    target,
                    uniform,
                    f"{tag} width search",
                    log,
                )
        else:
            shape = P.global_shape(cur, self.dense, self.dims, c, target, scores)
        return P.select(scores, shape), search

    def apply(self, plan: P.Plan) -> list[int]:
        """After the cut: layers the plan removes go, the kept indices compose; returns the removed layers."""
        removed = [i for i in self.alive if plan.mlp[i] is None]
        if removed:
            remove_layers(self.model, self.fam, [self.alive.index(i) for i in removed])
        for i in self.alive:
            if plan.mlp[i] is not None:
                self.kept_mlp[i] = [self.kept_mlp[i][k] for k in plan.mlp[i]]
                self.kept_groups[i] = [self.kept_groups[i][k] for k in plan.groups[i]]
            else:
                self.kept_mlp[i] = self.kept_groups[i] = None
        self.alive = [i for i in self.alive if i not in removed]
        sync_config(self.model, self.fam)
        return removed

    def removed(self) -> dict:
        now, dims = self.shape(), self.dims
        return {
            "removed_total": 1 - now.params(dims) / self.dense.params(dims),
            "removed_decoder": 1 - now.decoder_params(dims) / self.dense.decoder_params(dims),
        }

    def record(self, rounds: list[dict]) -> dict:
        now, dense, dims = self.shape(), self.dense, self.dims
        return {
            "settings": self.s.algorithm(),
            "rounds": rounds,
            "plan": {"kept_layers": self.alive, "mlp": self.kept_mlp, "kv_groups": self.kept_groups},
            "params": {
                "dense_total": dense.params(dims),
                "dense_decoder": dense.decoder_params(dims),
                "pruned_total": now.params(dims),
                "pruned_decoder": now.decoder_params(dims),
            },
        }


def prune(
    model, fam: Family, calib: dict[str, torch.Tensor], heldout: dict[str, torch.Tensor], s: CompressConfig, log=print
) -> dict:
    """Prune `model` in place to the target; returns the record of the run for the manifest. Each round
    scores (or reads the scores its predecessor's cut pass took), plans its share of the target, and cuts
    layer by layer with the refit."""
    run = Pruning(model, fam, s, make_batches(calib, s.batch_size))
    source = score_source(s)
    quick = {d: t[: s.quick_eval] for d, t in heldout.items()} if s.quick_eval else {}
    rounds, carried = [], None  # carried: the scores the last round's cut pass took for this one
    for r, target in enumerate(P.schedule(s.ratio, s.rounds), 1):
        t0, tag, final = time.time(), f"round {r}/{s.rounds}", r == s.rounds
        live = carried if carried is not None else run.scores(source, tag)
        point("compress:statistics")
        plan, search = run.plan(live, target, final, tag, log)
        t1 = time.time()
        with timed("cut and refit"):
            scored = cut_pass(
                model,
                fam,
                run.batches,
                plan,
                run.alive,
                s,
                run.dims,
                f"{tag} cut",
                score_next=not final and carries_scores(s, source),
                score_here=live is None,
            )
        rec = {
            "round": r,
            "target": target,
            "statistics_carried": carried is not None,
            "scored_in_cut": live is None,
            "layers_removed": run.apply(plan),
            **run.removed(),
            "score_s": round(t1 - t0, 2),
            "cut_s": round(time.time() - t1, 2),
        }
        carried = scored
        if search:
            # What the search's measure says of the model actually produced (OBS re-selects channels
            # on the cut model's own activations, so this differs a little from kl_searched).
            rec["search"] = {**search, "kl_after_cut": sig(run.probe.kl_model(model))}
        # The last round's quick evaluation would repeat, on fewer windows, the held-out evaluation that
        # follows: it is left to that one.
        if quick and not final:
            with timed("round eval"):
                rec["quick_ppl"] = {d: round(v, 3) for d, v in per_domain(model, quick, s.batch_size).items()}
        rounds.append(rec)
        log(
            f"{tag}: removed {rec['removed_total']:.1%} of all parameters ({rec['removed_decoder']:.1%} of the "
            f"decoder) in {rec['score_s'] + rec['cut_s']:.1f} s"
            + (f"; quick held-out ppl {rec['quick_ppl']}" if "quick_ppl" in rec else "")
        )
    return run.record(rounds)
