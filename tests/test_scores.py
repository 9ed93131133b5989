"""Scorers rank what they should, and every method runs through the rounds on a tiny model."""

import pytest
import torch
from conftest import tiny_model
from prunekit.compress import METHODS, CompressConfig
from prunekit.compress import scores as SC
from prunekit.compress.iterate import prune
from prunekit.compress.stats import DomainStats, LayerStats

from prunekit.families import family_for_config

pytestmark = pytest.mark.unit

D, WIDTH, KV, HD, REP = 8, 6, 2, 2, 2


def weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return SC.LayerWeights(
        r(WIDTH, D),
        r(WIDTH, D),
        r(D, WIDTH),
        r(KV * REP * HD, D),
        r(KV * HD, D),
        r(KV * HD, D),
        r(D, KV * REP * HD),
        n_kv=KV,
        head_dim=HD,
    )


def domain(mlp_x, attn_x, resid=1.0):
    d = DomainStats()
    d.mlp.add(mlp_x)
    d.attn.add(attn_x)
    d.tokens = mlp_x.shape[0]
    d.resid_sq = resid * d.tokens
    return d


def test_magnitude_ranks_zeroed_channel_lowest():
    w = weights()
    w.gate[3] = 0
    w.up[3] = 0
    w.down[:, 3] = 0
    assert SC.magnitude(w, LayerStats({})).mlp.argmin() == 3


def test_activation_scores_rank_dead_channel_lowest():
    x = torch.randn(100, WIDTH)
    x[:, 2] = 0
    st = LayerStats({"a": domain(x, torch.randn(100, KV * REP * HD))})
    for fn in (SC.wanda_sp, SC.flap, SC.hybrid):
        assert fn(weights(), st).mlp.argmin() == 2, fn.__name__


def test_hybrid_is_not_swayed_by_token_count():
    """Repeating one domain's tokens 5x changes pooled scores but not ours (per-domain means)."""
    ramp = torch.arange(1, WIDTH + 1)
    xa, xb = torch.randn(50, WIDTH) * ramp, torch.randn(50, WIDTH).flip(1) * ramp
    att = torch.randn(50, KV * REP * HD)
    once = LayerStats({"a": domain(xa, att), "b": domain(xb, att)})
    many = LayerStats({"a": domain(xa.repeat(5, 1), att.repeat(5, 1)), "b": domain(xb, att)})
    w = weights()
    torch.testing.assert_close(SC.hybrid(w, once).mlp, SC.hybrid(w, many).mlp)
    assert not torch.allclose(SC.wanda_sp(w, once).mlp, SC.wanda_sp(w, many).mlp)


def test_hybrid_normalises_each_domain_by_its_residual_scale():
    """A domain whose residual stream (and activations) are 10x larger weighs the same."""
    xa, xb = torch.randn(50, WIDTH), torch.randn(50, WIDTH)
    att = torch.randn(50, KV * REP * HD)
    base = LayerStats({"a": domain(xa, att), "b": domain(xb, att)})
    loud = LayerStats({"a": domain(xa * 10, att * 10, resid=100.0), "b": domain(xb, att)})
    torch.testing.assert_close(SC.hybrid(weights(), base).mlp, SC.hybrid(weights(), loud).mlp)


def test_taylor_and_group_shapes():
    w, g = weights(0), weights(1)
    s = SC.taylor_from_grads(w, g)
    assert s.mlp.shape == (WIDTH,) and s.heads.shape == (KV,)
    assert SC.per_group(torch.arange(8.0), 2).tolist() == [6.0, 22.0]


def test_methods_list_every_scorer():
    assert sorted(METHODS) == sorted([*SC.SCORERS, "taylor"])


@pytest.mark.parametrize("method", METHODS)
def test_every_method_prunes_a_tiny_model(method):
    model = tiny_model("llama", num_hidden_layers=4)
    fam = family_for_config(model.config)
    calib = {"a": torch.randint(0, 256, (4, 16)), "b": torch.randint(0, 256, (4, 16))}
    structures = ("layers",) if method == "block-influence" else ("mlp", "heads")
    s = CompressConfig(
        method=method,
        rounds=2,
        quick_eval=0,
        ratio=0.25,
        ratio_of="decoder",
        structures=structures,
        align=16,
        tolerance=0.1,
    )
    rec = prune(model, fam, calib, {}, s, log=lambda m: None)
    assert abs(rec["rounds"][-1]["removed_decoder"] - 0.25) <= 0.1
    assert sum(p.numel() for p in model.parameters()) == rec["params"]["pruned_total"]
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=calib["a"]).logits).all()


@pytest.mark.parametrize(
    "over",
    [
        dict(selection="obs"),
        dict(selection="obs", mode="per-layer"),
    ],
)
def test_obs_variants_prune_a_tiny_model(over):
    model = tiny_model("llama", num_hidden_layers=4)
    fam = family_for_config(model.config)
    calib = {"a": torch.randint(0, 256, (4, 16)), "b": torch.randint(0, 256, (4, 16))}
    s = CompressConfig(
        **{
            "rounds": 2,
            "quick_eval": 0,
            "ratio": 0.25,
            "ratio_of": "decoder",
            "structures": ("mlp",),
            "align": 16,
            "tolerance": 0.1,
            **over,
        }
    )
    rec = prune(model, fam, calib, {}, s, log=lambda m: None)
    assert abs(rec["rounds"][-1]["removed_decoder"] - 0.25) <= 0.1
    assert sum(p.numel() for p in model.parameters()) == rec["params"]["pruned_total"]
    # The manifest's plan is what the model holds (obs re-chooses the channels in the cut pass).
    widths = [layer.mlp.down_proj.weight.shape[1] for layer in model.model.layers]
    assert widths == [len(k) for k in rec["plan"]["mlp"]]
