"""The rounds: statistics, scores, plan, cut (with refit), again, until the target is reached."""

from __future__ import annotations

import copy
import time
from dataclasses import replace

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
    consumer_inputs,
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


def layer_weights(layer, fam: Family, hd: int) -> LayerWeights:
    attn, mlp = getattr(layer, fam.attn), getattr(layer, fam.mlp)
    w = lambda m, n: getattr(m, n).weight.detach().float()  # noqa: E731
    return LayerWeights(
        w(mlp, fam.gate),
        w(mlp, fam.up),
        w(mlp, fam.down),
        w(attn, fam.q),
        w(attn, fam.k),
        w(attn, fam.v),
        w(attn, fam.o),
        n_kv=getattr(attn, fam.k).weight.shape[0] // hd,
        head_dim=hd,
    )


def layer_grads(layer, fam: Family, hd: int) -> LayerWeights:
    attn, mlp = getattr(layer, fam.attn), getattr(layer, fam.mlp)
    g = lambda m, n: getattr(m, n).weight.grad.float()  # noqa: E731
    return LayerWeights(
        g(mlp, fam.gate),
        g(mlp, fam.up),
        g(mlp, fam.down),
        g(attn, fam.q),
        g(attn, fam.k),
        g(attn, fam.v),
        g(attn, fam.o),
        n_kv=getattr(attn, fam.k).weight.shape[0] // hd,
        head_dim=hd,
    )


def stat_scores(model, fam: Family, batches, method: str, desc: str, ridge: float) -> list[Scores]:
    """One sequential pass over the current model: statistics and scores of every layer."""
    place = placement(model)
    with timed("statistics"):
        runner = LayerRunner(model, fam, batches)
    layers = get_module(model, fam.layers)
    out = []
    for i in tqdm(range(len(layers)), desc=desc, unit="layer", leave=False):
        with place.layer(layers[i]):
            out.append(score_layer(runner, i, layers[i], fam, method, ridge))
    return out


def score_layer(runner: LayerRunner, i: int, layer, fam: Family, method: str, ridge: float) -> Scores:
    """Statistics of layer i on the runner's stream (which advances past it) and the layer's scores."""
    with timed("statistics"):
        st = runner.collect(i, grams=method == "obs")
    return layer_scores(layer, fam, runner.model.config, st, method, ridge)


def layer_scores(layer, fam: Family, config, st, method: str, ridge: float) -> Scores:
    """A layer's scores from its statistics, on the CPU."""
    with timed("scores"):
        w = layer_weights(layer, fam, head_dim(config))
        # obs scores what the refit recovers: with the refit's own ridge.
        sc = SCORERS[method](w, st, ridge) if method == "obs" else SCORERS[method](w, st)
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
                taylor_from_grads(layer_weights(layer, fam, hd), layer_grads(layer, fam, hd))
                for layer in get_module(model, fam.layers)
            ]
        finally:
            model.zero_grad(set_to_none=True)
    return out


SCORE_IN_CUT = True  # tests switch it off: the first round's scores then come from a pass before the cut
ONE_FORWARD_SCORE = True  # tests switch it off: the same scores from a statistics forward of the layer's own


def scores_in_cut(s: CompressConfig) -> bool:
    """Whether a round with no scores carried from the last one scores each layer in its cut pass, on the
    stream it is cut on (every layer before it already cut), instead of in a statistics pass over the model
    before the cut: one forward over the calibration set per layer fewer. It needs plans whose shape is
    known before any score (uniform MLP widths: the width nearest the target), channels chosen by a
    statistics score, and the one-forward cut with the layer's own output as the refit target."""
    # MLP channels only: the layer's statistics here lack its output terms (it is scored before it is cut), so
    # whole-layer scores (layer removal) would read zeros.
    return (
        SCORE_IN_CUT
        and CACHED_CUT
        and s.compensate
        and s.mode == "uniform"
        and set(s.structures) == {"mlp"}
        and s.selection == "score"
        and s.method in SCORERS
        and s.method != "obs"
        and s.refit_target == "local"
    )


def cut_pass(
    model,
    fam: Family,
    batches,
    plan: P.Plan,
    alive: list[int],
    s: CompressConfig,
    dims: P.Dims,
    desc: str,
    dense=None,
    score_next: bool = False,
    score_here: bool = False,
) -> list[Scores] | None:
    """Apply a round's plan layer by layer. With compensation each refit sees the inputs that the
    already-cut layers produce (attention first, then the MLP on the cut attention's output); with a
    dense model given, the refit target is the dense model's output, not the current layer's. With
    `score_here` (scores_in_cut), the plan holds each layer's width only: the channels are chosen in the pass,
    from the layer's statistics on the stream it is cut on, and written into the plan.

    With `score_next`, the pass that carries the stream past each cut layer also takes its statistics and
    scores: the stream at that point is what the next round's statistics pass would see (every layer before
    it cut, removed layers skipped), so the next round needs no pass of its own. Returns those scores, in
    the order of the layers that stay."""
    layers = get_module(model, fam.layers)
    place = placement(model)
    if not s.compensate:
        for pos, idx in enumerate(alive):
            if plan.mlp[idx] is not None:
                with place.layer(layers[pos]):
                    apply_layer(layers[pos], fam, dims, plan.mlp[idx], plan.groups[idx])
        return None
    runner = LayerRunner(model, fam, batches)
    try:
        return _cut_layers(model, fam, runner, batches, plan, alive, s, dims, desc, dense, score_next, score_here)
    finally:
        runner.close()


def _cut_layers(
    model,
    fam: Family,
    runner: LayerRunner,
    batches,
    plan: P.Plan,
    alive: list[int],
    s: CompressConfig,
    dims: P.Dims,
    desc: str,
    dense,
    score_next: bool,
    score_here: bool = False,
) -> list[Scores] | None:
    layers = get_module(model, fam.layers)
    place = placement(model)
    nxt: list[Scores] = []
    ref = LayerRunner(dense, fam, batches) if dense is not None else None
    ref_layers = get_module(dense, fam.layers) if dense is not None else None
    ref_pos = 0  # the next original layer the dense stream has to run
    for pos in tqdm(range(len(layers)), desc=desc, unit="layer", leave=False):
        idx = alive[pos]
        if plan.mlp[idx] is None:
            continue  # removed at the end of the round; its input passes through unchanged
        if ref is not None:
            while ref_pos < idx:
                ref.forward(ref_pos)
                ref_pos += 1
        layer = layers[pos]
        if _cached_cut(layer, fam, plan, idx, s, dims, ref):  # every cut layer, where scores_in_cut holds
            keep = plan.mlp[idx]
            if score_here:  # chosen here, from the layer's statistics on the stream it is cut on
                keep = len(keep) if ONE_FORWARD_SCORE else _keep_by_statistics(runner, pos, layer, fam, s, len(keep))
            plan.mlp[idx], nxt_sc = _cut_layer_cached(layer, fam, runner, pos, keep, s, score_next)
            if score_next:
                nxt.append(nxt_sc)
            continue
        with place.layer(layer):
            _cut_layer(layer, fam, runner, pos, idx, plan, s, dims, ref, ref_layers)
        point("compress:cut")
        with place.layer(layer):
            if score_next:
                nxt.append(score_layer(runner, pos, layer, fam, s.method, s.ridge))
            else:
                runner.forward(pos)
    return nxt if score_next else None


CACHED_CUT = True  # tests switch it off to compare with the two-forward path


def _keep_by_statistics(runner, pos: int, layer, fam: Family, s: CompressConfig, width: int) -> list[int]:
    """The channels _cut_layer_cached keeps when given only `width`, from a statistics forward of the layer's
    own (ONE_FORWARD_SCORE off: the reference its one-forward choice is tested against)."""
    with placement(runner.model).layer(layer):
        with timed("statistics"):
            st = runner.collect(pos, advance=False)
        sc = layer_scores(layer, fam, runner.model.config, st, s.method, s.ridge)
    return P.select([sc], P.Shape([(width, 0)])).mlp[0]


def _cached_cut(layer, fam: Family, plan: P.Plan, idx: int, s: CompressConfig, dims: P.Dims, ref) -> bool:
    """Whether layer idx's cut can run on one forward (stats.mlp_normal_cached): only its MLP is cut (its
    attention output, so the MLP's input, stays), the kept channels are known before the pass (selection by
    score), the refit target is the layer's own output (not the dense model's), and the next round's scores
    need no gram (obs scores do)."""
    return (
        CACHED_CUT
        and s.selection != "obs"
        and s.method != "obs"
        and ref is None
        and cuts_mlp(layer, fam, plan.mlp[idx])
        and not cuts_heads(layer, fam, dims, plan.groups[idx])
    )


def _cut_layer_cached(
    layer, fam: Family, runner, pos: int, keep: list[int] | int, s: CompressConfig, score_next: bool
) -> tuple[list[int], Scores | None]:
    """Cut layer pos's MLP from one forward: the normal equations, the kept inputs and residuals, and with
    score_next the cut layer's statistics; the stream then advances from the cache, not a second forward.
    The output uses the weights as stored (offloaded layers go home, and are rounded to its dtype, first).
    `keep` is the kept channels, or their count (scores_in_cut): the layer is then scored from the same
    forward, which caches all of its MLP inputs and X^T Y for every channel; the top-scoring channels are
    kept, and their gram is built from the cached inputs (not the full gram in the pass: (K/n)^2 of its
    products). Returns the kept channels and, with score_next, the cut layer's scores."""
    place = placement(runner.model)
    mlp = getattr(layer, fam.mlp)
    relative = s.weighting == "relative"
    cache = cols = normal = None
    try:
        with place.layer(layer):
            if isinstance(keep, int):
                n = getattr(mlp, fam.down).in_features
                with timed("cut and refit"):
                    (_, r), cache = mlp_normal_cached(
                        runner, pos, torch.arange(n), relative=relative, with_stats=True, gram=False
                    )
                sc = layer_scores(
                    layer, fam, runner.model.config, summed(cache.stats, layer, fam, place.device), s.method, s.ridge
                )
                keep = P.select([sc], P.Shape([(keep, 0)])).mlp[0]
                cols = torch.tensor(keep, device=r.device)
                with timed("cut and refit"):  # the kept channels' gram only, (K/n)^2 of the full one
                    normal = (cached_gram(runner, pos, cache, cols, relative), r.index_select(0, cols))
                del r
            with timed("cut and refit"):
                # The kept channels first: the forward is the same, and the kept inputs X_K are then the first K
                # columns of down_proj's input (a slice, not a gather of scattered columns: 4% of a compress).
                permute_mlp(mlp, fam, keep)
                first = list(range(len(keep)))
                if cache is None:
                    normal, cache = mlp_normal_cached(
                        runner, pos, torch.tensor(first), relative=relative, with_stats=score_next
                    )
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
        return keep, layer_scores(layer, fam, runner.model.config, stats, s.method, s.ridge)


def _cut_layer(
    layer, fam: Family, runner, pos: int, idx: int, plan: P.Plan, s: CompressConfig, dims: P.Dims, ref, ref_layers
) -> None:
    for kind, keep, cuts in (
        ("heads", plan.groups[idx], cuts_heads(layer, fam, dims, plan.groups[idx])),
        ("mlp", plan.mlp[idx], cuts_mlp(layer, fam, plan.mlp[idx])),
    ):
        if not cuts:
            continue
        parent, name = (fam.attn, fam.o) if kind == "heads" else (fam.mlp, fam.down)
        consumer = getattr(getattr(layer, parent), name)
        target_w, targets = None, None
        if ref is not None:
            ref_consumer = getattr(getattr(ref_layers[idx], parent), name)
            targets, target_w = consumer_inputs(ref, idx, ref_consumer), ref_consumer.weight.data
        relative = s.weighting == "relative"
        gram = cross = normal = None
        if kind == "mlp" and s.selection == "obs":
            # The plan fixed how many channels stay; which ones is decided here, where the refit's
            # gram on the already-cut model's activations is at hand (the full gram: OBS reads all of it).
            gram, cross = consumer_grams(runner, pos, consumer, targets, relative=relative)
            keep = plan.mlp[idx] = obs_keep(consumer.weight.data, gram, len(keep), s.ridge)
        else:  # the kept inputs are known: the refit's system on them alone
            if kind == "mlp":  # kept channels first, as in _cut_layer_cached: the same products in both paths
                permute_mlp(getattr(layer, parent), fam, keep)
                keep = list(range(len(keep)))
                consumer = getattr(getattr(layer, parent), name)
            rows = torch.tensor(keep) if kind == "mlp" else head_rows(keep, dims.n_rep, dims.head_dim)[0]
            normal = consumer_normal(runner, pos, consumer, rows, targets, target_w, relative=relative)
        if kind == "heads":
            cut_heads(
                getattr(layer, parent),
                fam,
                keep,
                dims.n_rep,
                dims.head_dim,
                gram,
                s.ridge,
                cross,
                target_w,
                normal=normal,
            )
        else:
            cut_mlp(getattr(layer, parent), fam, keep, gram, s.ridge, cross, target_w, normal=normal)


def prune(
    model,
    fam: Family,
    calib: dict[str, torch.Tensor],
    heldout: dict[str, torch.Tensor],
    s: CompressConfig,
    log=print,
    after_round=None,
) -> dict:
    """Prune `model` in place to the target; returns the record of the run for the manifest.
    `after_round(model, r)`, when given, runs after round r's cut (recovery between cuts) and returns its
    record for the round's entry (or None)."""
    c = s
    dims = P.Dims.of(model.config, fam)
    n_orig = model.config.num_hidden_layers
    alive = list(range(n_orig))
    dense = current_shape(model, fam, n_orig, alive)
    P.check_dense(dense, dims, c)
    # Original indices of what each layer still holds, composed across rounds for the manifest.
    kept_mlp = [list(range(s_[0])) for s_ in dense.layers]
    kept_groups = [list(range(s_[1])) for s_ in dense.layers]
    batches = make_batches(calib, s.batch_size)
    # The refit's reference: the model as it came in (a copy: the one being pruned changes).
    dense_ref = copy.deepcopy(model) if s.compensate and s.refit_target == "dense" else None
    quick = {d: t[: s.quick_eval] for d, t in heldout.items()} if s.quick_eval else {}
    targets = P.schedule(c.ratio, s.rounds, s.schedule)
    by_kl = c.mode == "per-layer" and s.allocation == "kl"
    # The dense model's distributions, the reference of every round's search.
    probe = KLProbe(model, fam, probe_batches(batches, s.search_samples)) if by_kl else None
    rounds = []
    carried = None  # the scores the last round's cut pass took for this one
    for r, target in enumerate(targets, 1):
        t0 = time.time()
        tag = f"round {r}/{len(targets)}"
        carried_in = carried
        search = None
        if by_kl:  # the channels are chosen by OBS in the cut; the widths by measured KL below
            live_scores = [Scores(None, None) for _ in alive]
        elif carried is not None:  # score_s is then ~0: the last round's cut_s holds these statistics
            live_scores = carried
        elif scores_in_cut(s):  # each layer is scored in the cut pass, on the stream it is cut on
            live_scores = None
        elif s.method == "taylor":
            with timed("statistics"):
                live_scores = taylor_scores(model, fam, batches, f"{tag} gradients")
        else:
            live_scores = stat_scores(model, fam, batches, s.method, f"{tag} statistics", s.ridge)
        point("compress:statistics")
        score_here = live_scores is None
        scores: list = [None] * n_orig
        for pos, idx in enumerate(alive):
            scores[idx] = Scores(None, None) if score_here else live_scores[pos]
        cur = current_shape(model, fam, n_orig, alive)
        final = r == len(targets)
        if c.mode == "uniform":
            shape = P.uniform_shape(cur, dense, dims, c, target, None if score_here else scores, final)
        elif by_kl:
            uniform = P.uniform_shape(cur, dense, dims, c, target, scores, final)
            with timed("scores"):
                shape, search = kl_shape(
                    model, fam, batches, probe, alive, cur, dense, dims, c, target, uniform, f"{tag} width search", log
                )
        else:
            shape = P.global_shape(cur, dense, dims, c, target, scores)
        plan = P.select(scores, shape)  # with score_here, widths only: the cut pass chooses the channels
        t1 = time.time()
        # The next round's statistics ride on this cut pass when nothing changes the model between the two
        # (no recovery) and they come from the forward pass (not gradients or the KL search).
        carry = not final and s.compensate and after_round is None and not by_kl and s.method != "taylor"
        with timed("cut and refit"):
            carried = cut_pass(
                model,
                fam,
                batches,
                plan,
                alive,
                s,
                dims,
                f"{tag} cut",
                dense_ref,
                score_next=carry,
                score_here=score_here,
            )
        removed = [i for i in alive if plan.mlp[i] is None]
        if removed:
            remove_layers(model, fam, [alive.index(i) for i in removed])
        for i in alive:
            if plan.mlp[i] is not None:
                kept_mlp[i] = [kept_mlp[i][k] for k in plan.mlp[i]]
                kept_groups[i] = [kept_groups[i][k] for k in plan.groups[i]]
            else:
                kept_mlp[i] = kept_groups[i] = None
        alive = [i for i in alive if i not in removed]
        sync_config(model, fam)
        now = current_shape(model, fam, n_orig, alive)
        rec = {
            "round": r,
            "target": target,
            "statistics_carried": carried_in is not None,
            "scored_in_cut": score_here,
            "removed_total": 1 - now.params(dims) / dense.params(dims),
            "removed_decoder": 1 - now.decoder_params(dims) / dense.decoder_params(dims),
            "layers_removed": removed,
            "score_s": round(t1 - t0, 2),
            "cut_s": round(time.time() - t1, 2),
        }
        if search:
            # What the search's measure says of the model actually produced (OBS re-selects channels
            # on the cut model's own activations, so this differs a little from kl_searched).
            search["kl_after_cut"] = sig(probe.kl_model(model))
            rec["search"] = search
        # The last round's quick evaluation would repeat, on fewer windows, the held-out evaluation that
        # follows (of the pruned model, or before a recovery at the end): it is left to that one.
        if quick and (not final or after_round is not None):
            with timed("round eval"):
                rec["quick_ppl"] = {d: round(v, 3) for d, v in per_domain(model, quick, s.batch_size).items()}
        if after_round is not None:
            with timed("recovery"):
                rec["recovery"] = after_round(model, r)
            if quick:
                rec["quick_ppl_recovered"] = {d: round(v, 3) for d, v in per_domain(model, quick, s.batch_size).items()}
        rounds.append(rec)
        log(
            f"{tag}: removed {rec['removed_total']:.1%} of all parameters "
            f"({rec['removed_decoder']:.1%} of the decoder) in {rec['score_s'] + rec['cut_s']:.1f} s"
            + (f"; quick held-out ppl {rec['quick_ppl']}" if "quick_ppl" in rec else "")
            + (f", after recovery {rec['quick_ppl_recovered']}" if "quick_ppl_recovered" in rec else "")
        )
    return {
        "settings": s.algorithm(),
        "rounds": rounds,
        "plan": {"kept_layers": alive, "mlp": kept_mlp, "kv_groups": kept_groups},
        "params": {
            "dense_total": dense.params(dims),
            "dense_decoder": dense.decoder_params(dims),
            "pruned_total": now.params(dims),
            "pruned_decoder": now.decoder_params(dims),
        },
    }
