"""Scale: the per-stage profile, the chunked LM head, weights offloaded layer by layer, --device."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_compress_config, tiny_mix, tiny_model, tiny_tokenizer
from prunekit.compress import compress

from prunekit.errors import PrunekitError


@pytest.fixture(scope="module")
def bf16_src(tmp_path_factory):
    """A tiny Qwen2 (q/k/v biases, untied head) stored in bf16 as published checkpoints are, and the tiny mix."""
    from prunekit.checkpoint import save_tokenizer

    d = tmp_path_factory.mktemp("bf16-src")
    m = tiny_model("qwen2", vocab_size=320, intermediate_size=256, num_hidden_layers=4).to(torch.bfloat16)
    m.config.dtype = torch.bfloat16
    m.save_pretrained(d / "model")
    save_tokenizer(tiny_tokenizer(), d / "model")
    return d / "model", tiny_mix(d / "mix")


def figures(m) -> dict:
    """A manifest's quality figures, without where the dense one came from: a second run of the same source
    takes it from the cache of the first (compress.dense_eval), the same figure bit for bit."""
    return {k: v for k, v in m.quality.items() if k != "dense_from_cache"}


def cfg(src, out, **kw):
    return tiny_compress_config(src, out, **kw)


@pytest.mark.unit
def test_head_nll_is_the_full_vocabulary_cross_entropy():
    from prunekit.perplexity import TOKEN_BLOCK, VOCAB_CHUNK, head_nll

    torch.manual_seed(0)
    head = torch.nn.Linear(16, VOCAB_CHUNK * 2 + 5, bias=True)  # three chunks, the last one short
    n = TOKEN_BLOCK + 40  # two token blocks, the last one short
    h, tgt = torch.randn(n, 16), torch.randint(0, head.out_features, (n,))
    tgt[:3] = torch.tensor([0, VOCAB_CHUNK, head.out_features - 1])  # chunk edges
    with torch.no_grad():
        ref = float(torch.nn.functional.cross_entropy(head(h), tgt, reduction="sum"))
        assert head_nll(h, tgt, head) == pytest.approx(ref, rel=1e-5)
        # A head kept in another dtype (offloaded, bf16 at home) is cast per chunk to the hidden states' dtype.
        home = torch.nn.Linear(16, head.out_features).to(torch.bfloat16)
        home.load_state_dict(head.state_dict())
        ref16 = float(
            torch.nn.functional.cross_entropy(h @ home.weight.float().T + home.bias.float(), tgt, reduction="sum")
        )
        assert head_nll(h, tgt, home) == pytest.approx(ref16, rel=1e-5)


class _Bar:
    """Stands in for tqdm in prunekit.perplexity: records each bar's total and how far it got."""

    seen: list = []

    def __init__(self, total, unit, **kw):
        self.total, self.unit, self.n = total, unit, 0
        _Bar.seen.append(self)

    def update(self, k=1):
        self.n += k

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.unit
def test_offloaded_compress_matches_the_whole_model_one(bf16_src, tmp_path, monkeypatch):
    monkeypatch.setattr("prunekit.perplexity.tqdm", _Bar)
    _Bar.seen = []
    off = compress(cfg(bf16_src, tmp_path / "off", offload="off"), log=lambda m: None)
    on = compress(cfg(bf16_src, tmp_path / "on", offload="on"), log=lambda m: None)
    # Every held-out evaluation shows progress, by batch or (offloaded) by layer and LM head, and its bar ends full.
    assert {b.unit for b in _Bar.seen} == {"batch", "step"}
    assert all(b.total > 0 and b.n == b.total for b in _Bar.seen), [(b.n, b.total) for b in _Bar.seen]
    assert on.placement == {
        "device": "cpu",
        "dtype": "float32",
        "offload": True,
        "why": "--offload on",
        "home_dtype": "bfloat16",
    }
    assert off.placement["offload"] is False
    assert on.plan == off.plan
    # Dense: the same bf16 weights upcast, layer by layer or all at once.
    assert on.quality["heldout_ppl"]["dense"] == pytest.approx(off.quality["heldout_ppl"]["dense"], rel=1e-6)
    # Pruned: offloading rounds each finished layer to bf16 (what is written) before the next is calibrated.
    for d, v in off.quality["heldout_ppl"]["pruned"].items():
        assert on.quality["heldout_ppl"]["pruned"][d] == pytest.approx(v, rel=1e-2)
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "off" / "model.safetensors"), load_file(tmp_path / "on" / "model.safetensors")
    assert a.keys() == b.keys() and all(t.dtype == torch.bfloat16 for t in b.values())
    for k in a:  # within a few bf16 steps of each other
        assert (a[k].float() - b[k].float()).abs().max() <= 0.02 * a[k].float().abs().max() + 1e-6, k
    # The profile: every stage once at least; statistics and scores once per layer and round (round 2's taken
    # in round 1's cut pass), plus the statistics runner's start in round 1.
    on_disk = json.loads((tmp_path / "on" / "prunekit.json").read_text())
    stages = {s["stage"]: s for s in on_disk["profile"]["stages"]}
    assert list(stages) == [
        "load",
        "mix",
        "dense eval",
        "statistics",
        "scores",
        "cut and refit",
        "round eval",
        "pruned eval",
        "save",
    ]
    assert stages["scores"]["calls"] == 2 * 4 and stages["statistics"]["calls"] == 2 * 4 + 1
    assert [r["statistics_carried"] for r in on.rounds] == [False, True]
    assert on_disk["peak_rss_mb"] == on_disk["profile"]["peak_rss_mb"] >= max(s["peak_rss_mb"] for s in stages.values())


@pytest.mark.unit
def test_offload_with_fp32_weights_changes_nothing(tmp_path):
    from conftest import tiny_src
    from safetensors.torch import load_file

    src = tiny_src(tmp_path / "m", intermediate_size=256, num_hidden_layers=3), tiny_mix(tmp_path / "mix")
    off = compress(cfg(src, tmp_path / "off", offload="off"), log=lambda m: None)
    on = compress(cfg(src, tmp_path / "on", offload="on"), log=lambda m: None)
    assert on.plan == off.plan and figures(on) == figures(off)
    a, b = load_file(tmp_path / "off" / "model.safetensors"), load_file(tmp_path / "on" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.unit
@pytest.mark.parametrize("setting", [dict(method="taylor"), dict(recover_tokens=256)])
def test_offload_refuses_what_needs_the_whole_model(bf16_src, tmp_path, setting):
    with pytest.raises(PrunekitError, match="--offload on runs one decoder layer at a time"):
        compress(cfg(bf16_src, tmp_path / "x", offload="on", **setting), log=lambda m: None)
    assert not (tmp_path / "x").exists()


@pytest.mark.unit
def test_auto_offloads_when_the_model_would_not_fit(monkeypatch):
    from prunekit import offload as O

    cpu = torch.device("cpu")
    monkeypatch.setattr(O, "free_bytes", lambda device: 10 * 2**30)
    home, why = O.decide("auto", 1_000_000_000, torch.float32, torch.bfloat16, cpu, None)  # 3.7 GiB of 10
    assert home is None and "fits" in why
    home, why = O.decide("auto", 2_000_000_000, torch.float32, torch.bfloat16, cpu, None)  # 7.5 GiB of 10
    assert home == torch.bfloat16 and "one layer at a time" in why
    # Weights stored wider than they compute are kept in the compute dtype (never widened at home).
    assert O.decide("on", 10, torch.bfloat16, torch.float32, cpu, None)[0] == torch.bfloat16
    with pytest.raises(PrunekitError, match="needs it whole"):
        O.decide("auto", 2_000_000_000, torch.float32, torch.bfloat16, cpu, "--method taylor (gradients)")
    assert O.decide("off", 2_000_000_000, torch.float32, torch.bfloat16, cpu, "x")[0] is None


@pytest.mark.unit
def test_device_cuda_without_one_is_a_clear_error(bf16_src, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PrunekitError, match="--device cuda: this machine has no CUDA device"):
        compress(cfg(bf16_src, tmp_path / "x", device="cuda"), log=lambda m: None)
    assert not (tmp_path / "x").exists()


@pytest.mark.unit
def test_stage_peaks_are_each_stages_own():
    from prunekit.timer import Timer, timed

    with Timer() as prof:
        with timed("big"):
            x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
            del x
        with timed("small"):
            with timed("inner"):
                pass
    rec = prof.record()
    rows = {r["stage"]: r for r in rec["stages"]}
    assert list(rows) == ["big", "small", "inner"] and rows["small"]["calls"] == 1
    if rec["peak_is_per_stage"]:  # Linux: the high-water mark is reset at each stage
        assert rows["big"]["peak_rss_mb"] >= rows["small"]["peak_rss_mb"] + 40
    assert rec["peak_rss_mb"] >= rows["big"]["peak_rss_mb"]
    assert "| big |" in prof.table()
    with timed("nothing active"):  # outside a profile: a no-op
        pass


@pytest.mark.unit
def test_stages_count_each_stages_matrix_products():
    """The products profile: exact FLOP of mm, addmm (a linear with bias) and bmm, each in the stage it ran
    in (an inner stage's not in the outer one's), none counted when not asked, and the results unchanged."""
    from prunekit.timer import Timer, timed

    a, b, w, bias = torch.randn(8, 16), torch.randn(16, 4), torch.randn(4, 16), torch.randn(4)
    x = torch.randn(3, 8, 16)
    with Timer(count_products=True) as prof:
        with timed("mm"):
            y = a @ b
            with timed("inner"):
                z = torch.nn.functional.linear(a, w, bias)
                torch.bmm(x, x.transpose(1, 2))
        a.sum()  # outside any stage, not a product: nothing counted
    assert torch.equal(y, torch.mm(a, b)) and torch.equal(z, torch.addmm(bias, a, w.T))
    assert prof.flop == {"mm": 2 * 8 * 16 * 4, "inner": 2 * 8 * 16 * 4 + 2 * 3 * 8 * 16 * 8}
    rec = prof.record()  # in the manifest, TFLOP to the GFLOP
    assert [r["tflop"] for r in rec["stages"]] == [0.0, 0.0] and rec["tflop_outside_stages"] == 0
    assert "TFLOP/s" in prof.table()
    with Timer(count_products=False) as prof:
        with timed("mm"):
            a @ b
    assert "tflop" not in prof.record()["stages"][0] and "TFLOP" not in prof.table()


@pytest.mark.unit
def test_a_reset_that_does_not_take_is_not_called_per_stage(monkeypatch):
    """Some sandboxed kernels accept the write to clear_refs and leave the mark alone (seen on CI): the
    profile must then say its peaks are the process's so far, not each stage's."""
    from prunekit import timer

    if not timer._reset_hwm():
        pytest.skip("this kernel does not reset the high-water mark")
    monkeypatch.setattr(timer, "_status_mb", lambda *f: [{"VmHWM": 1500.0, "VmRSS": 900.0}[k] for k in f])
    assert timer._reset_hwm() is False
    with timer.Timer() as prof:
        with timer.timed("a"):
            pass
    assert prof.record()["peak_is_per_stage"] is False


@pytest.mark.integration
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
# MLP channels only (the default): the first round scores each layer from the rank-summed statistics of its cut
# pass (iterate.score_source "cut"). KV groups: a statistics pass per round, the groups' scores and the attention
# output's normal equations summed over ranks (10% of the decoder is one of the two groups of every layer).
@pytest.mark.parametrize("structures,ratio,tolerance", [("mlp", "0.2", "0.06"), ("heads", "0.1", "0.03")])
def test_two_gloo_ranks_give_the_one_process_plan_and_weights(tmp_path, structures, ratio, tolerance):
    """torchrun with 2 CPU ranks (gloo): each holds half the calibration batches; the summed statistics give
    the same plan and weights as one process, and rank 0 alone writes."""
    import os
    import subprocess
    import sys

    from conftest import tiny_src
    from safetensors.torch import load_file

    src = tiny_src(tmp_path / "m", intermediate_size=256, num_hidden_layers=4), tiny_mix(tmp_path / "mix")
    # One thread, as each rank below: with more, oneDNN may block a product differently (seen on an AMX Xeon:
    # 4e-5 apart), which the refit's solve amplifies; the test is about the summed statistics, not threading.
    threads = torch.get_num_threads()
    try:
        one = compress(
            cfg(
                src,
                tmp_path / "one",
                quick_eval=0,
                threads=1,
                structures=(structures,),
                ratio=float(ratio),
                tolerance=float(tolerance),
            ),
            log=lambda m: None,
        )
    finally:
        torch.set_num_threads(threads)  # compress sets it for the process: give later tests theirs back
    args = [
        "--model",
        str(src[0]),
        "--calib",
        str(src[1]),
        "--out",
        str(tmp_path / "two"),
        "--ratio",
        ratio,
        "--ratio-of",
        "decoder",
        "--align",
        "32",
        "--structures",
        structures,
        "--tolerance",
        tolerance,
        "--rounds",
        "2",
        "--seed",
        "0",
        "--dtype",
        "float32",
        "--threads",
        "1",
    ]

    def torchrun(*cli: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run(
            [*cmd, "-m", "prunekit", "compress", *cli], capture_output=True, text=True, timeout=600, env=env
        )

    r = torchrun(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("wrote ") == 1  # rank 0 only
    two = json.loads((tmp_path / "two" / "prunekit.json").read_text())
    assert two["placement"]["ranks"] == 2 and two["plan"] == one.plan
    if structures == "heads":  # the case is only worth its time if the plan does cut KV groups
        assert all(len(g) == 1 for g in one.plan["kv_groups"]), one.plan["kv_groups"]
    for d, v in one.quality["heldout_ppl"]["pruned"].items():
        assert two["quality"]["heldout_ppl"]["pruned"][d] == pytest.approx(v, rel=1e-5)
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for k in a:
        assert (a[k] - b[k]).abs().max() <= 1e-5 * a[k].abs().max(), k
    if structures == "heads":
        return
    # What needs the whole model is refused before any work, on every rank.
    r = torchrun(*args[:5], str(tmp_path / "three"), *args[6:], "--method", "taylor")
    assert r.returncode != 0 and "needs the whole model at once: run it in one process" in r.stderr
    assert not (tmp_path / "three").exists()


@pytest.mark.unit
@pytest.mark.parametrize(
    "kw",
    [
        dict(structures=("mlp", "heads"), selection="obs", structures_note="heads"),
        dict(
            structures=("layers",),
            ratio=0.5,
            tolerance=0.3,
            rounds=3,
            method="block-influence",
            structures_note="a layer removed in round 1",
        ),
    ],
)
def test_next_rounds_statistics_from_the_cut_pass_equal_a_fresh_pass(tmp_path, monkeypatch, kw):
    """The cut pass scores each cut layer for the next round (saving one pass over the calibration set per
    round); the result is the same, bit for bit, as the statistics pass it replaces."""
    import prunekit.compress.iterate as I
    from conftest import tiny_src
    from safetensors.torch import load_file

    kw = {k: v for k, v in kw.items() if k != "structures_note"}
    src = tiny_src(tmp_path / "m", intermediate_size=256, num_hidden_layers=4), tiny_mix(tmp_path / "mix")
    a = compress(cfg(src, tmp_path / "a", **kw), log=lambda m: None)
    orig = I.cut_pass
    monkeypatch.setattr(I, "cut_pass", lambda *args, score_next=False, **k: orig(*args, score_next=False, **k))
    b = compress(cfg(src, tmp_path / "b", **kw), log=lambda m: None)
    assert a.plan == b.plan and figures(a) == figures(b)
    x, y = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(x[k], y[k]) for k in x)
    calls = {s["stage"]: s["calls"] for s in a.profile["stages"]}
    fresh = {s["stage"]: s["calls"] for s in b.profile["stages"]}
    assert calls["statistics"] < fresh["statistics"]  # one runner start fewer per carried round
    if kw.get("rounds") == 3:
        assert a.rounds[0]["layers_removed"]  # the carried scores crossed a layer removal


@pytest.mark.unit
@pytest.mark.parametrize(
    "kw",
    [
        dict(structures=("mlp",)),
        dict(structures=("mlp",), offload="on", dtype="auto"),
        dict(structures=("mlp", "heads"), rounds=3),
    ],
)
def test_one_forward_cut_equals_the_two_forward_cut(bf16_src, tmp_path, monkeypatch, kw):
    """A layer whose MLP alone is cut advances the stream from what its one forward cached (residual +
    down(X_K)) instead of a second forward: the same plan, quality and weights as with the second forward
    (to rounding: the output is the same sum, its terms from different matmul calls)."""
    import prunekit.compress.iterate as I
    from safetensors.torch import load_file

    # The first round scored in a pass of its own, in both runs.
    monkeypatch.setattr(I, "score_source", lambda s: "statistics")
    one_forward = I.one_forward_cut
    a = compress(cfg(bf16_src, tmp_path / "a", **kw), log=lambda m: None)
    calls = {"n": 0}
    orig = I._cut_layer_cached

    def counted(*args, **k):
        calls["n"] += 1
        return orig(*args, **k)

    monkeypatch.setattr(I, "_cut_layer_cached", counted)
    monkeypatch.setattr(I, "one_forward_cut", lambda s: False)
    b = compress(cfg(bf16_src, tmp_path / "b", **kw), log=lambda m: None)
    assert calls["n"] == 0
    assert a.plan == b.plan
    for d, v in b.quality["heldout_ppl"]["pruned"].items():
        assert a.quality["heldout_ppl"]["pruned"][d] == pytest.approx(v, rel=1e-4)
    x, y = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    for k in x:
        assert (x[k].float() - y[k].float()).abs().max() <= 1e-3 * y[k].float().abs().max(), k
    # And with the decision as made, the one-forward path is the one that runs.
    monkeypatch.setattr(I, "one_forward_cut", one_forward)
    compress(cfg(bf16_src, tmp_path / "c", **kw), log=lambda m: None)
    assert calls["n"] > 0


@pytest.mark.unit
# fp32 on every CPU kind (the offloaded weights stay bf16 at home): in bf16 compute the two routes round the kept
# inputs differently (a gather of the cached ones, a forward of the permuted layer), and a tiny random model's
# near-tied channels then flip in later layers (seen on an AVX512-BF16 EPYC): exact plans are an fp32 claim.
@pytest.mark.parametrize("kw", [dict(structures=("mlp",)), dict(structures=("mlp",), offload="on", dtype="float32")])
def test_first_round_scored_in_its_cut_pass_equals_a_statistics_forward_per_layer(bf16_src, tmp_path, monkeypatch, kw):
    """With no scores carried from an earlier round, each layer is scored in the cut pass on the stream it is
    cut on, from the same forward that caches its MLP inputs for the refit: no statistics pass over the model
    before the cut, and the same plan and weights (to rounding) as a statistics forward of the layer's own
    right before its cut."""
    import prunekit.compress.iterate as I
    from safetensors.torch import load_file

    collects = {"n": 0}
    orig = I.LayerRunner.collect

    def counted(self, *args, **k):
        collects["n"] += 1
        return orig(self, *args, **k)

    monkeypatch.setattr(I.LayerRunner, "collect", counted)
    a = compress(cfg(bf16_src, tmp_path / "a", **kw), log=lambda m: None)
    assert collects["n"] == 0  # no statistics forward at all: round 1 scores in its cut, later rounds carry
    monkeypatch.setattr(I, "_cut_layer_cached", chosen_by_a_statistics_forward(I._cut_layer_cached))
    b = compress(cfg(bf16_src, tmp_path / "b", **kw), log=lambda m: None)
    assert collects["n"] > 0
    assert a.plan == b.plan
    for d, v in b.quality["heldout_ppl"]["pruned"].items():
        assert a.quality["heldout_ppl"]["pruned"][d] == pytest.approx(v, rel=1e-4)
    x, y = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    for k in x:
        # The kept inputs gathered from the cached ones, not a forward of the permuted layer: the same values
        # up to the matmuls' blocking, so a bf16 weight may round one step (2^-8 of its value) the other way.
        assert (x[k].float() - y[k].float()).abs().max() <= 2**-7 * y[k].float().abs().max(), k


def chosen_by_a_statistics_forward(cut_layer_cached):
    """The reference for the one-forward choice: _cut_layer_cached given the channels that a statistics forward
    of the layer's own (right before its cut, on the same stream) scores highest, where it was given a width."""
    import prunekit.compress.iterate as I
    from prunekit.compress import plan as P

    from prunekit.offload import placement

    def cut(layer, fam, runner, pos, keep, s, score_next):
        if isinstance(keep, int):
            with placement(runner.model).layer(layer):
                st = runner.collect(pos, advance=False)
                sc = I.layer_scores(layer, fam, runner.model.config, st, s.method)
            keep = P.select([sc], P.Shape([(keep, 0)])).mlp[0]
        return cut_layer_cached(layer, fam, runner, pos, keep, s, score_next)

    return cut


@pytest.mark.unit
def test_gram_of_the_channels_chosen_after_the_pass():
    """A pass that scores the layer before choosing (no gram in it) caches all of down_proj's inputs;
    cached_gram then builds the chosen channels' gram from them: the same G_KK, within fp32 rounding, as the
    pass would have summed for those channels (in the order given)."""
    from prunekit.compress.stats import LayerRunner, cached_gram, consumer_normal, mlp_normal_cached

    from prunekit.families import family_for_config, get_module

    model = tiny_model("qwen2", vocab_size=320, intermediate_size=256, num_hidden_layers=2)
    fam = family_for_config(model.config)
    ids = torch.randint(0, 320, (2, 3, 24), generator=torch.Generator().manual_seed(2))
    runner = LayerRunner(model, fam, [("a", ids[0]), ("b", ids[1])])
    down = getattr(getattr(get_module(model, fam.layers)[0], fam.mlp), fam.down)
    cols = torch.randperm(256, generator=torch.Generator().manual_seed(3))[:150]
    (g, r), cache = mlp_normal_cached(runner, 0, torch.arange(256), gram=False)
    assert g is None and r.shape == (256, down.out_features) and len(cache.xk) == 2
    gkk = cached_gram(runner, 0, cache, cols)
    ref, r_ref = consumer_normal(runner, 0, down, cols)
    assert gkk.shape == (150, 150) and torch.equal(gkk, gkk.T)
    assert (gkk - ref).abs().max() <= 1e-6 * ref.abs().max()
    assert (r.index_select(0, cols) - r_ref).abs().max() <= 1e-6 * r_ref.abs().max()


@pytest.mark.unit
def test_spill_gives_back_exactly_what_it_took():
    from prunekit.offload import Spill

    sp = Spill()
    ts = [torch.randn(3, 5), torch.randn(2, 7).to(torch.bfloat16), torch.arange(6).view(2, 3), torch.randn(0, 4)]
    for t in ts:
        sp.append(t)
    assert len(sp) == 4
    for i in (2, 0, 3, 1):  # any order
        got = sp[i]
        assert got.dtype == ts[i].dtype and got.shape == ts[i].shape and torch.equal(got, ts[i])
    sp[0] = None
    with pytest.raises(TypeError):
        sp[0]
    # Cleared, the same file takes the next layer's tensors over the old bytes, shorter or longer.
    sp.clear()
    assert len(sp) == 0
    again = [torch.randn(2, 2), torch.randn(40, 9).to(torch.bfloat16)]
    for t in again:
        sp.append(t)
    assert all(torch.equal(sp[i], t) for i, t in enumerate(again))
    sp.close()


@pytest.mark.unit
def test_release_drops_only_pages_of_mapped_weight_files(bf16_src):
    """Weights memory-mapped from safetensors leave the process's memory and read back unchanged; a tensor
    in ordinary memory is never touched (there MADV_DONTNEED would zero it)."""
    from prunekit.loading import load_model
    from prunekit.offload import _weight_file_maps, release

    model, _, _ = load_model(bf16_src[0], dtype="bfloat16")
    w = model.get_input_embeddings().weight
    before = w.detach().clone()
    plain = torch.randn(64, 1024)
    plain_before = plain.clone()
    assert release([plain]) == 0 and torch.equal(plain, plain_before)
    if not any(a <= w.data_ptr() < b for a, b in _weight_file_maps()):
        pytest.skip("this transformers copies bf16 weights on load: nothing is mapped")
    assert release([w.detach()]) > 0
    assert torch.equal(w.detach(), before)  # read again from the file


@pytest.mark.integration
def test_compress_scale_reports_each_setting_from_a_fresh_process(tmp_path):
    """The bench that measures compress at real shapes, on the tiny shape: one row per setting with its
    profile and placement, the report written as the rows finish."""
    from conftest import tiny_tokenizer
    from prunekit.bench.compress_scale import main

    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    out = tmp_path / "out"
    s = "offload=on,rounds=1,samples=8"
    assert (
        main(
            [
                "--shape",
                "tiny",
                "--settings",
                f"{s};offload=off,rounds=1,samples=8;{s},eval-cache=on",
                "--ratio",
                "0.22",
                "--threads",
                "1",
                "--workdir",
                str(tmp_path / "work"),
                "--out",
                str(out),
                "--tokenizer",
                str(tmp_path / "tok"),
                "--products",
            ]
        )
        == 0
    )
    rows = json.loads((out / "compress-scale.json").read_text())
    assert [r["setting"] for r in rows] == [s, "offload=off,rounds=1,samples=8", f"{s},eval-cache=on"]
    assert [r["placement"]["offload"] for r in rows] == [True, False, True]
    assert rows[0]["placement"]["home_dtype"] == "bfloat16" and rows[0]["profile"]["peak_rss_mb"] > 0
    # Cold runs unless asked: the third finds the first's dense evaluation (same placement), the others measure.
    assert [r["dense_from_cache"] for r in rows] == [False, False, True]
    assert all(len(r["machine_tflops"]) == 2 and min(r["machine_tflops"]) > 0 for r in rows)
    md = (out / "compress-scale.md").read_text()
    assert "| cut and refit |" in md and "prunekit compress --model" in md and "--no-eval-cache" in md
    assert "| dense eval | measured | measured | from an earlier run's cache |" in md
    # --products: every run counted its matrix products, the cut's among them, and the report gives the floor.
    prof = rows[0]["profile"]
    cut = next(st for st in prof["stages"] if st["stage"] == "cut and refit")
    assert prof["tflop"] > 0 and cut["tflop"] > 0 and "products alone at the machine's" in md
    assert main(["--shape", "tiny", "--settings", "offload"]) == 2  # not KEY=VALUE: a clear error


@pytest.mark.unit
def test_bf16_products_give_the_fp32_gram_of_bf16_activations():
    """The cut's gram on a bf16 model is built by oneDNN's bf16 math (fast on AMX): with inputs that hold bf16
    values it equals fp32's, to fp32 rounding. On AMX the mode must really be on: a product of inputs that
    are not bf16-exact is then visibly rounded. (On an AVX512-BF16 EPYC without AMX oneDNN kept fp32 math in
    this mode: 6e-7 relative, fp32 rounding; so only AMX is held to it.)"""
    from prunekit.compress.stats import Gram, bf16_products

    from prunekit.env import cpu_isa

    torch.manual_seed(0)
    xs = [torch.randn(300, 700).bfloat16().float() for _ in range(3)]  # bf16-exact, as bf16 activations are
    g64 = sum(x.double().T @ x.double() for x in xs)
    with bf16_products():
        g = Gram()
        for x in xs:
            g.add(x)
        g = g.result()
    assert torch.equal(g, g.T)
    assert (g - g64).abs().max() <= 1e-6 * g64.abs().max()
    y = torch.randn(300, 90)
    with bf16_products():
        rough = xs[0].T @ y
    assert torch.backends.mkldnn.matmul.fp32_precision != "bf16"  # the mode ends with the block
    if cpu_isa() == "amx":
        exact = xs[0].double().T @ y.double()
        assert (rough.double() - exact).abs().max() > 1e-4 * exact.abs().max()


@pytest.mark.unit
def test_normal_equations_of_a_bf16_layer():
    """consumer_normal on a bf16 layer with its kept channels first: G_KK is the fp64 product of the layer's
    own down_proj inputs, and R = X_K^T Y with Y the layer's own bf16 output (within 1e-5), which is the
    exact X W^T to bf16 rounding (within 1e-2)."""
    from prunekit.compress.stats import LayerRunner, consumer_normal

    from prunekit.families import family_for_config, get_module

    model = tiny_model("qwen2", vocab_size=320, intermediate_size=256, num_hidden_layers=2).to(torch.bfloat16)
    fam = family_for_config(model.config)
    ids = torch.randint(0, 320, (2, 3, 24), generator=torch.Generator().manual_seed(1))
    runner = LayerRunner(model, fam, [("a", ids[0]), ("b", ids[1])])
    down = getattr(getattr(get_module(model, fam.layers)[0], fam.mlp), fam.down)
    xs, ys = [], []

    def seen(_m, a, o) -> None:  # returns None: a forward hook's value would replace the output
        xs.append(a[0].reshape(-1, a[0].shape[-1]).double())
        ys.append(o.reshape(-1, o.shape[-1]).double())

    hook = down.register_forward_hook(seen)
    try:
        gkk, r = consumer_normal(runner, 0, down, torch.arange(200))
    finally:
        hook.remove()
    x, y = torch.cat(xs)[:, :200], torch.cat(ys)
    g64, r64 = x.T @ x, x.T @ y
    exact = x.T @ (torch.cat(xs) @ down.weight.double().T)
    assert gkk.shape == (200, 200) and r.shape == (200, down.out_features)
    assert (gkk - g64).abs().max() <= 1e-5 * g64.abs().max()
    assert (r - r64).abs().max() <= 1e-5 * r64.abs().max()
    assert (r - exact).abs().max() <= 1e-2 * exact.abs().max()
