"""Plans respect the deployment constraints, and impossible targets name the nearest reachable one."""

import pytest
import torch
from prunekit.compress import CompressConfig
from prunekit.compress import plan as P
from prunekit.compress.scores import Scores

from prunekit.errors import PrunekitError

pytestmark = pytest.mark.unit

# SmolLM2-135M's shape: 30 layers, hidden 576, 3 KV groups of 3 query heads, MLP 1536, tied embeddings.
DIMS = P.Dims(hidden=576, vocab=49152, head_dim=64, n_rep=3, tied=True, qkv_bias=False, qk_norm=False)
DENSE = P.Shape([(1536, 3)] * 30)


def scores(comparable=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        Scores(torch.rand(1536, generator=g), torch.rand(3, generator=g), float(torch.rand(1, generator=g)), comparable)
        for _ in range(30)
    ]


def test_dense_param_count_matches_smollm2():
    assert DENSE.params(DIMS) == 134_515_008


@pytest.mark.parametrize("align", [64, 128, 256])
def test_uniform_shape_is_aligned_and_near_target(align):
    c = CompressConfig(ratio=0.2, structures=("mlp", "heads"), align=align, tolerance=0.05)
    shape = P.uniform_shape(DENSE, DENSE, DIMS, c, 0.2, scores(), final=True)
    assert shape.is_uniform()
    w, g = shape.layers[0]
    assert w % align == 0 and 1 <= g <= 3
    assert abs(1 - shape.params(DIMS) / DENSE.params(DIMS) - 0.2) <= 0.05


@pytest.mark.parametrize("final", [True, False])
@pytest.mark.parametrize("target", [0.05, 0.1, 0.2, 0.3, 0.4])
def test_mlp_widths_without_scores_are_the_widths_scores_choose(target, final):
    """The first round chooses MLP widths before any layer is scored (iterate.score_source "cut"): the same width
    as with any scores, since removing more channels never costs less."""
    c = CompressConfig(ratio=0.4, structures=("mlp",), align=64, tolerance=0.02)
    for comparable, seed in ((True, 0), (False, 1)):
        assert P.uniform_shape(DENSE, DENSE, DIMS, c, target, None, final) == P.uniform_shape(
            DENSE, DENSE, DIMS, c, target, scores(comparable, seed), final
        )


def test_ratio_of_decoder_removes_more_of_the_decoder():
    c_tot = CompressConfig(ratio=0.2, structures=("mlp",))
    c_dec = CompressConfig(ratio=0.2, ratio_of="decoder", structures=("mlp",))
    s_tot = P.uniform_shape(DENSE, DENSE, DIMS, c_tot, 0.2, scores(), True)
    s_dec = P.uniform_shape(DENSE, DENSE, DIMS, c_dec, 0.2, scores(), True)
    assert s_dec.layers[0][0] > s_tot.layers[0][0]
    assert abs(1 - s_dec.decoder_params(DIMS) / DENSE.decoder_params(DIMS) - 0.2) <= 0.02


def test_unreachable_target_names_nearest():
    c = CompressConfig(ratio=0.2, structures=("heads",), tolerance=0.01)
    with pytest.raises(PrunekitError, match=r"nearest reachable is \d+\.\d%.*--ratio"):
        P.uniform_shape(DENSE, DENSE, DIMS, c, 0.2, scores(), final=True)


def test_tp_must_divide_heads_and_groups():
    c = CompressConfig(ratio=0.2, tp=2)
    with pytest.raises(PrunekitError, match="--tp 2"):
        P.check_dense(DENSE, DIMS, c)
    dims4 = P.Dims(576, 49152, 64, 2, True, False, False)
    dense4 = P.Shape([(1536, 4)] * 30)
    c = CompressConfig(ratio=0.25, structures=("mlp", "heads"), tp=2, tolerance=0.05)
    shape = P.uniform_shape(dense4, dense4, dims4, c, 0.25, scores4(), True)
    w, g = shape.layers[0]
    assert P.group_options(4, c, dims4, True) == [2, 4] and g in (2, 4)
    # With tp 3 a width must also split three ways: steps of align * tp.
    assert P.width_options(1536, CompressConfig(ratio=0.2, tp=3, align=64), True)[:2] == [192, 384]


def scores4():
    return [Scores(torch.rand(1536), torch.rand(4), 0.5, True) for _ in range(30)]


def test_layer_removal_picks_least_influential():
    sc = scores()
    for i, s in enumerate(sc):
        s.layer = 1.0 if i not in (3, 17, 25) else 0.01
    c = CompressConfig(ratio=0.08, structures=("layers",), tolerance=0.02)
    shape = P.uniform_shape(DENSE, DENSE, DIMS, c, 0.08, sc, final=True)
    assert [i for i, s in enumerate(shape.layers) if s is None] == [3, 17, 25]


def test_global_shape_takes_from_unimportant_layers():
    sc = scores()
    for i in range(10):
        sc[i].mlp = sc[i].mlp * 1e-3  # the first ten layers' channels matter little
    c = CompressConfig(ratio=0.15, structures=("mlp",), mode="per-layer")
    shape = P.global_shape(DENSE, DENSE, DIMS, c, 0.15, sc)
    widths = [s[0] for s in shape.layers]
    assert all(w % 64 == 0 and w >= 64 for w in widths)
    assert sum(widths[:10]) < sum(widths[10:20])
    assert abs(1 - shape.params(DIMS) / DENSE.params(DIMS) - 0.15) <= 0.02


def test_select_keeps_top_units_sorted():
    sc = [Scores(torch.tensor([0.1, 5.0, 3.0, 0.2]), torch.tensor([1.0, 0.0]), 0.0, True)]
    plan = P.select(sc, P.Shape([(2, 1)]))
    assert plan.mlp == [[1, 2]] and plan.groups == [[0]]


def test_schedule_spreads_the_target_in_equal_steps():
    assert P.schedule(0.4, 4) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(PrunekitError):
        P.schedule(0.4, 0)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(ratio=1.2), "--ratio"),
        (dict(ratio=0.2, ratio_of="all"), "--ratio-of"),
        (dict(ratio=0.2, structures=("mlp", "experts")), "unknown structure"),
        (dict(ratio=0.2, mode="per-layer", structures=("layers",)), "per-layer"),
        (dict(ratio=0.2, align=0), "--align"),
    ],
)
def test_bad_constraints(kw, match):
    with pytest.raises(PrunekitError, match=match):
        CompressConfig(**kw).validate()


def test_intermediate_rounds_move_toward_their_target():
    """A non-final round has no tolerance limit but still lands near its own target."""
    c = CompressConfig(ratio=0.2, structures=("mlp",))
    shape = P.uniform_shape(DENSE, DENSE, DIMS, c, 0.1, scores(), final=False)
    assert abs(1 - shape.params(DIMS) / DENSE.params(DIMS) - 0.1) < 0.015
