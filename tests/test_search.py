"""The KL width search's pure parts: the knapsack over measured curves and the probe's sampling."""

import pytest
import torch
from prunekit.compress import plan as P
from prunekit.compress.config import CompressConfig
from prunekit.compress.search import allocate, grid, probe_batches, search_step

DIMS = P.Dims(hidden=8, vocab=10, head_dim=4, n_rep=1, tied=True, qkv_bias=False, qk_norm=False)


def _cfg(**kw):
    base = dict(
        out="x",
        ratio_of="decoder",
        align=4,
        tolerance=0.02,
        mode="per-layer",
        selection="obs",
        rounds=1,
        allocation="kl",
        structures=("mlp",),
    )
    return CompressConfig(**{**base, **kw})


@pytest.mark.unit
def test_allocate_spends_the_budget_where_kl_is_cheapest():
    dense = P.Shape([(16, 2), (16, 2)])
    # Layer 0 is sensitive, layer 1 is not: the whole cut should go to layer 1.
    curves = {0: {12: 1.0, 8: 3.0, 4: 9.0}, 1: {12: 0.01, 8: 0.02, 4: 0.03}}
    full = dense.decoder_params(DIMS)
    target = 8 * 3 * 8 / full  # eight channels' worth
    shape = allocate(curves, dense, dense, DIMS, _cfg(), target)
    assert shape.layers == [(16, 2), (8, 2)]
    # Equal curves: the cut is split (both cost the same; any split is optimal), the budget exact.
    even = allocate({0: {12: 1.0, 8: 2.0}, 1: {12: 1.0, 8: 2.0}}, dense, dense, DIMS, _cfg(), target)
    assert sum(16 - s[0] for s in even.layers) == 8


@pytest.mark.unit
def test_allocate_returns_none_when_the_grid_cannot_reach_the_target():
    dense = P.Shape([(16, 2), (16, 2)])
    assert allocate({0: {12: 1.0}, 1: {12: 1.0}}, dense, dense, DIMS, _cfg(), 0.6) is None


@pytest.mark.unit
def test_grid_and_probe_batches():
    assert grid(1536, 256, 512) == [1280, 1024, 768, 512, 256]
    assert grid(1536, 256, 1024) == [1280, 1024, 768, 512]
    assert grid(1536, 256, 1088) == [1280, 1088, 1024, 768]
    batches = [
        ("a", torch.zeros(4, 3)),
        ("a", torch.ones(4, 3)),
        ("b", torch.full((2, 3), 2.0)),
        ("c", torch.full((4, 3), 3.0)),
    ]
    got = probe_batches(batches, 8)
    # An equal share (3) from every domain, across a domain's batches; a short domain gives what it has.
    assert [(d, len(x)) for d, x in got] == [("a", 3), ("b", 2), ("c", 3)]
    assert search_step(_cfg(align=64, search_step=256)) == 256
    assert search_step(_cfg(align=64, search_step=200)) == 192
    assert search_step(_cfg(align=64, tp=3, search_step=256)) == 192  # widths must divide by --tp too


@pytest.mark.unit
def test_allocate_removes_at_least_what_uniform_removes():
    dense = P.Shape([(16, 2), (16, 2)])
    curves = {0: {12: 0.0, 8: 0.0, 4: 5.0}, 1: {12: 0.0, 8: 0.0, 4: 5.0}}
    loose = _cfg(tolerance=0.2)
    target = 4 * 3 * 8 / dense.decoder_params(DIMS)  # four channels' worth
    free = allocate(curves, dense, dense, DIMS, loose, target)
    assert sum(16 - s[0] for s in free.layers) == 4
    # Uniform widths would remove eight: the pick may not remove fewer.
    floor = allocate(curves, dense, dense, DIMS, loose, target, at_least=8 * 3 * 8)
    assert sum(16 - s[0] for s in floor.layers) >= 8
