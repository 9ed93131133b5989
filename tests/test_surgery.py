"""Surgery is exact: a pruned model equals the dense model with the same units masked out."""

import copy

import pytest
import torch
from conftest import tiny_model
from prunekit.compress import surgery as S
from prunekit.compress.plan import Dims

from prunekit.families import family_for_config, get_module

pytestmark = pytest.mark.unit

IDS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, use_cache=False).logits


def masked_reference(model, fam, keep_mlp, keep_groups, n_rep, hd):
    """The dense model with removed MLP channels and KV groups zeroed at their consumer."""
    ref = copy.deepcopy(model)
    for layer, km, kg in zip(get_module(ref, fam.layers), keep_mlp, keep_groups):
        down = getattr(getattr(layer, fam.mlp), fam.down).weight.data
        mask = torch.zeros(down.shape[1], dtype=torch.bool)
        mask[km] = True
        down[:, ~mask] = 0
        o = getattr(getattr(layer, fam.attn), fam.o).weight.data
        qmask = torch.zeros(o.shape[1], dtype=torch.bool)
        for g in kg:
            qmask[g * n_rep * hd : (g + 1) * n_rep * hd] = True
        o[:, ~qmask] = 0
    return ref


def test_cut_equals_masking(family_name):
    model = tiny_model(family_name)
    fam = family_for_config(model.config)
    dims = Dims.of(model.config, fam)
    keep_mlp = [[0, 5, 7, 64, 100], [1, 2, 3], list(range(0, 128, 2))]
    keep_groups = [[1], [0], [0, 1]]
    ref = masked_reference(model, fam, keep_mlp, keep_groups, dims.n_rep, dims.head_dim)
    for layer, km, kg in zip(get_module(model, fam.layers), keep_mlp, keep_groups):
        S.apply_layer(layer, fam, dims, km, kg)
    uniform = S.sync_config(model, fam)
    assert not uniform and model.config.prunekit_layers[0] == {
        "intermediate_size": 5,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    }
    torch.testing.assert_close(logits(model), logits(ref), rtol=1e-4, atol=1e-5)


def test_permuted_mlp_computes_the_same_and_cuts_to_the_same_layer(family_name):
    """permute_mlp puts the kept channels first (so the kept inputs are a slice); the model computes the
    same, and cutting to the first K channels then gives the layer that cutting to `keep` gives."""
    model = tiny_model(family_name)
    fam = family_for_config(model.config)
    keep = [100, 3, 64, 7, 0]  # any order: they come first in this order
    before = logits(model)
    cut = copy.deepcopy(model)
    mlp = getattr(get_module(model, fam.layers)[0], fam.mlp)
    S.permute_mlp(mlp, fam, keep)
    assert torch.equal(
        getattr(mlp, fam.gate).weight[:5],
        getattr(getattr(get_module(cut, fam.layers)[0], fam.mlp), fam.gate).weight[keep],
    )
    torch.testing.assert_close(logits(model), before, rtol=1e-5, atol=1e-6)
    S.cut_mlp(mlp, fam, list(range(len(keep))), None, 0.0)
    S.cut_mlp(getattr(get_module(cut, fam.layers)[0], fam.mlp), fam, keep, None, 0.0)
    torch.testing.assert_close(logits(model), logits(cut), rtol=1e-5, atol=1e-6)


def test_uniform_cut_is_stock_checkpoint(tmp_path, family_name):
    from transformers import AutoModelForCausalLM

    model = tiny_model(family_name)
    fam = family_for_config(model.config)
    dims = Dims.of(model.config, fam)
    for layer in get_module(model, fam.layers):
        S.apply_layer(layer, fam, dims, list(range(0, 128, 2)), [1])
    assert S.sync_config(model, fam)
    cfg = model.config
    assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (64, 2, 1, 16)
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    torch.testing.assert_close(logits(loaded), logits(model))
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    if cfg.tie_word_embeddings:
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_layer_removal_equals_skipping(family_name):
    model = tiny_model(family_name)
    fam = family_for_config(model.config)
    ref = copy.deepcopy(model)
    skip = get_module(ref, fam.layers)[1]
    skip.register_forward_hook(
        lambda m, args, kwargs, out: args[0] if args else kwargs["hidden_states"], with_kwargs=True
    )
    S.remove_layers(model, fam, [1])
    assert model.config.num_hidden_layers == 2
    assert [getattr(layer, fam.attn).layer_idx for layer in get_module(model, fam.layers)] == [0, 1]
    if getattr(model.config, "layer_types", None) is not None:
        assert len(model.config.layer_types) == 2
    torch.testing.assert_close(logits(model), logits(ref))
    # Generation with a KV cache works on the renumbered layers.
    out = model.generate(IDS[:1], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 16)


def test_refit_beats_plain_slicing():
    torch.manual_seed(0)
    x = torch.randn(2000, 32) @ torch.randn(32, 32)  # correlated inputs, as real activations are
    w = torch.randn(16, 32)
    keep = torch.arange(0, 32, 2)
    gram = (x.T @ x).double()
    target = x @ w.T
    err_slice = (x[:, keep] @ w[:, keep].T - target).pow(2).mean()
    err_refit = (x[:, keep] @ S.refit(w, gram, keep, 0.0).T - target).pow(2).mean()
    assert err_refit < 0.5 * err_slice
    # Keeping every input, the refit returns the original weight.
    torch.testing.assert_close(S.refit(w, gram, torch.arange(32), 0.0), w, rtol=1e-3, atol=1e-3)


def test_refit_solves_in_fp32_only_where_the_gram_is_well_conditioned():
    """fp32 where ||H||_F / lam is under the bound (the solution then matches fp64's), fp64 where a few massive
    channels make it ill-conditioned (then as accurate as before)."""
    torch.manual_seed(0)
    x = (torch.randn(4000, 64) @ torch.randn(64, 64)).double()
    rhs = x.T @ (x @ torch.randn(64, 16).double())

    def solve(g, ridge=1e-2):
        return S.refit_normal(g.clone(), rhs, ridge)

    def exact(g, ridge=1e-2):  # the same system in fp64 throughout
        h = g.clone()
        h.diagonal().add_(ridge * h.diagonal().median())
        return torch.linalg.solve(h, rhs).T

    gram = x.T @ x
    a = solve(gram)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a.double(), exact(gram), rtol=1e-4, atol=1e-4 * exact(gram).abs().max().item())
    x[:, :2] *= 1e4  # two massive-activation channels: the bound is exceeded
    rhs = x.T @ (x @ torch.randn(64, 16).double())
    gram = x.T @ x
    assert float(torch.linalg.matrix_norm(gram)) > S.FP32_SOLVE_BOUND * 1e-2 * float(gram.diagonal().median())
    a = solve(gram)
    assert a.dtype == torch.float64
    torch.testing.assert_close(a, exact(gram), rtol=1e-8, atol=1e-8 * exact(gram).abs().max().item())


def test_per_layer_checkpoint_roundtrip(tmp_path):
    from prunekit.checkpoint import save_model
    from prunekit.loading import load_model

    model = tiny_model("qwen2")
    fam = family_for_config(model.config)
    dims = Dims.of(model.config, fam)
    for layer, w in zip(get_module(model, fam.layers), (64, 128, 32)):
        S.apply_layer(layer, fam, dims, list(range(w)), [0] if w == 32 else [0, 1])
    S.sync_config(model, fam)
    save_model(model, tmp_path)
    loaded, _, _ = load_model(tmp_path, dtype="float32")
    torch.testing.assert_close(logits(loaded), logits(model))


def test_truncated_per_layer_checkpoint_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from prunekit.checkpoint import save_model
    from prunekit.errors import PrunekitError
    from prunekit.loading import load_model

    model = tiny_model("llama")
    fam = family_for_config(model.config)
    dims = Dims.of(model.config, fam)
    S.apply_layer(get_module(model, fam.layers)[0], fam, dims, list(range(64)), None)
    S.sync_config(model, fam)
    save_model(model, tmp_path)
    f = next(tmp_path.glob("*.safetensors"))
    state = load_file(f)
    state.pop(next(k for k in state if "down_proj" in k))
    save_file(state, f)
    with pytest.raises(PrunekitError, match="corrupt"):
        load_model(tmp_path, dtype="float32")


def test_obs_keep_finds_the_channels_the_refit_recovers_best():
    """Greedy OBS against brute force over every subset, on correlated inputs where channel energy
    alone picks badly."""
    import itertools

    torch.manual_seed(0)
    x = torch.randn(400, 10) @ torch.randn(10, 10)
    w = torch.randn(6, 10)
    g = x.T @ x

    def err(keep):
        k = torch.tensor(keep)
        return float(((x[:, k] @ S.refit(w, g, k, 0.0).T - x @ w.T) ** 2).sum())

    energy = (w * w).sum(0) * g.diagonal()  # the score a per-channel energy criterion ranks by
    total_obs = total_energy = 0.0
    for n_keep in (8, 6, 4):
        got = S.obs_keep(w, g, n_keep, 0.0)
        best = min(err(list(c)) for c in itertools.combinations(range(10), n_keep))
        assert len(got) == n_keep == len(set(got)) and err(got) <= 1.05 * best
        total_obs += err(got)
        total_energy += err(sorted(energy.argsort(descending=True)[:n_keep].tolist()))
    assert total_obs < total_energy
    assert 3 in S.obs_keep(w, g, 4, 0.0, protect=torch.tensor([3]))
