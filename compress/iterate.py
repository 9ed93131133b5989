"""The rounds: statistics, scores, plan, cut (with refit), again, until the target is reached."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from prunekit.errors import PrunekitError
from prunekit.families import Family, get_module, head_dim

from . import plan as P
from .quality import per_domain
from .scores import SCORERS, LayerWeights, Scores, taylor_from_grads
from .stats import LayerRunner, make_batches
from .surgery import apply_layer, layer_shapes, remove_layers, sync_config


@dataclass
class Settings:
    method: str = "hybrid"
    constraints: P.Constraints = field(default_factory=lambda: P.Constraints(ratio=0.2))
    rounds: int = 1
    schedule: str = "equal"
    compensate: bool = True
    ridge: float = 1e-4
    batch_size: int = 4
    quick_eval: int = 2          # held-out sequences per domain for the per-round perplexity (0: off)

    def validate(self) -> None:
        self.constraints.validate()
        if self.method not in (*SCORERS, "taylor"):
            raise PrunekitError(f"unknown --method {self.method!r}; choose from "
                                f"{', '.join(sorted([*SCORERS, 'taylor']))}.")
        if self.method == "block-influence" and set(self.constraints.structures) != {"layers"}:
            raise PrunekitError("block-influence scores whole layers only: use --structures layers.")
        if self.ridge < 0:
            raise PrunekitError(f"--ridge must be >= 0, got {self.ridge}.")


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
    return LayerWeights(w(mlp, fam.gate), w(mlp, fam.up), w(mlp, fam.down), w(attn, fam.q),
                        w(attn, fam.k), w(attn, fam.v), w(attn, fam.o),
                        n_kv=getattr(attn, fam.k).weight.shape[0] // hd, head_dim=hd)


def layer_grads(layer, fam: Family, hd: int) -> LayerWeights:
    attn, mlp = getattr(layer, fam.attn), getattr(layer, fam.mlp)
    g = lambda m, n: getattr(m, n).weight.grad.float()  # noqa: E731
    return LayerWeights(g(mlp, fam.gate), g(mlp, fam.up), g(mlp, fam.down), g(attn, fam.q),
                        g(attn, fam.k), g(attn, fam.v), g(attn, fam.o),
                        n_kv=getattr(attn, fam.k).weight.shape[0] // hd, head_dim=hd)


def stat_scores(model, fam: Family, batches, method: str, desc: str) -> list[Scores]:
    """One sequential pass over the current model: statistics and scores of every layer."""
    runner = LayerRunner(model, fam, batches)
    hd = head_dim(model.config)
    layers = get_module(model, fam.layers)
    out = []
    for i in tqdm(range(len(layers)), desc=desc, unit="layer", leave=False):
        st = runner.collect(i)
        out.append(SCORERS[method](layer_weights(layers[i], fam, hd), st))
    return out


def taylor_scores(model, fam: Family, batches, desc: str) -> list[Scores]:
    """First-order Taylor scores from the gradient of the calibration loss (LLM-Pruner)."""
    dtype = model.dtype
    model.float()  # fp32 master weights and gradients; matmuls still run in bf16 under autocast
    try:
        model.zero_grad(set_to_none=True)
        for _, ids in tqdm(batches, desc=desc, unit="batch", leave=False):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            (loss * ids.shape[0] / sum(len(b) for _, b in batches)).backward()
        hd = head_dim(model.config)
        out = [taylor_from_grads(layer_weights(l, fam, hd), layer_grads(l, fam, hd))
               for l in get_module(model, fam.layers)]
    finally:
        model.zero_grad(set_to_none=True)
        model.to(dtype)
    return out


def cut_pass(model, fam: Family, batches, plan: P.Plan, alive: list[int], s: Settings, dims: P.Dims,
             desc: str) -> None:
    """Apply a round's plan layer by layer; each refit sees inputs from the already-cut layers."""
    layers = get_module(model, fam.layers)
    runner = LayerRunner(model, fam, batches) if s.compensate else None
    for pos in tqdm(range(len(layers)), desc=desc, unit="layer", leave=False):
        idx = alive[pos]
        if plan.mlp[idx] is None:
            continue  # removed at the end of the round; its input passes through unchanged
        st = runner.collect(pos, grams=True, advance=False) if runner else None
        apply_layer(layers[pos], fam, dims, plan.mlp[idx], plan.groups[idx],
                    st.gram_mlp if st else None, st.gram_attn if st else None, s.ridge)
        if runner:
            runner.forward(pos)


def compress(model, fam: Family, calib: dict[str, torch.Tensor], heldout: dict[str, torch.Tensor],
             s: Settings, log=print) -> dict:
    """Prune `model` in place to the target; returns the record of the run for the manifest."""
    s.validate()
    c = s.constraints
    dims = P.Dims.of(model.config, fam)
    n_orig = model.config.num_hidden_layers
    alive = list(range(n_orig))
    dense = current_shape(model, fam, n_orig, alive)
    P.check_dense(dense, dims, c)
    # Original indices of what each layer still holds, composed across rounds for the manifest.
    kept_mlp = [list(range(s_[0])) for s_ in dense.layers]
    kept_groups = [list(range(s_[1])) for s_ in dense.layers]
    batches = make_batches(calib, s.batch_size)
    quick = {d: t[: s.quick_eval] for d, t in heldout.items()} if s.quick_eval else {}
    targets = P.schedule(c.ratio, s.rounds, s.schedule)
    rounds = []
    for r, target in enumerate(targets, 1):
        t0 = time.time()
        tag = f"round {r}/{len(targets)}"
        if s.method == "taylor":
            live_scores = taylor_scores(model, fam, batches, f"{tag} gradients")
        else:
            live_scores = stat_scores(model, fam, batches, s.method, f"{tag} statistics")
        scores: list = [None] * n_orig
        for pos, idx in enumerate(alive):
            scores[idx] = live_scores[pos]
        cur = current_shape(model, fam, n_orig, alive)
        final = r == len(targets)
        if c.mode == "uniform":
            shape = P.uniform_shape(cur, dense, dims, c, target, scores, final)
        else:
            shape = P.global_shape(cur, dense, dims, c, target, scores)
        plan = P.select(scores, shape)
        t1 = time.time()
        cut_pass(model, fam, batches, plan, alive, s, dims, f"{tag} cut")
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
        rec = {"round": r, "target": target, "removed_total": 1 - now.params(dims) / dense.params(dims),
               "removed_decoder": 1 - now.decoder_params(dims) / dense.decoder_params(dims),
               "layers_removed": removed, "score_s": round(t1 - t0, 2), "cut_s": round(time.time() - t1, 2)}
        if quick:
            rec["quick_ppl"] = {d: round(v, 3) for d, v in per_domain(model, quick, s.batch_size).items()}
        rounds.append(rec)
        log(f"{tag}: removed {rec['removed_total']:.1%} of all parameters "
            f"({rec['removed_decoder']:.1%} of the decoder) in {rec['score_s'] + rec['cut_s']:.1f} s"
            + (f"; quick held-out ppl {rec['quick_ppl']}" if quick else ""))
    return {"settings": {**asdict(s), "constraints": asdict(c)}, "rounds": rounds,
            "plan": {"kept_layers": alive, "mlp": kept_mlp, "kv_groups": kept_groups},
            "params": {"dense_total": dense.params(dims), "dense_decoder": dense.decoder_params(dims),
                       "pruned_total": now.params(dims), "pruned_decoder": now.decoder_params(dims)}}
