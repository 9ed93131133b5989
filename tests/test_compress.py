"""`prunekit compress` end to end on tiny models and the tiny mix (unit), and the default model (slow)."""

import json

import pytest
import torch
from conftest import tiny_compress_config, tiny_mix, tiny_src
from prunekit.compress import CompareConfig, CompressConfig, compare, compress

from prunekit.cli import main
from prunekit.errors import PrunekitError


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A tiny random Llama (4 layers) with the tiny tokenizer, and the tiny two-domain mix."""
    d = tmp_path_factory.mktemp("tiny-src")
    return tiny_src(d / "model", intermediate_size=256, num_hidden_layers=4), tiny_mix(d / "mix")


def cfg(src, out, **kw):
    return tiny_compress_config(src, out, **{"quick_eval": 0, **kw})


def quiet(m):
    pass


@pytest.mark.unit
def test_tiny_compress_deterministic_and_loadable(src, tmp_path):
    from transformers import AutoModelForCausalLM

    m1 = compress(cfg(src, tmp_path / "a"), log=quiet)
    m2 = compress(cfg(src, tmp_path / "b"), log=quiet)
    assert m1.plan == m2.plan
    assert any(len(k) < 256 for k in m1.plan["mlp"])  # something was cut
    m3 = compress(cfg(src, tmp_path / "c", seed=1), log=quiet)
    assert m3.plan != m1.plan  # other calibration samples, other statistics
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert sum(p.numel() for p in model.parameters()) == m1.params["pruned_total"] < m1.params["dense_total"]
    assert [r["target"] for r in m1.rounds] == pytest.approx([0.1, 0.2]) and m1.layout == "uniform"
    assert set(m1.quality["heldout_ppl"]["pruned"]) == {"prose", "code"}
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    on_disk = json.loads((tmp_path / "a" / "prunekit.json").read_text())
    assert on_disk["format"] == "prunekit/1" and on_disk["source_hash"].startswith("sha256:")
    assert on_disk["settings"]["method"] == "hybrid" and on_disk["settings"]["rounds"] == 2
    assert on_disk["settings"]["constraints"]["structures"] == ["mlp", "heads"]  # prunekit/1's nesting


@pytest.mark.unit
def test_dense_evaluation_is_kept_across_runs_of_the_same_source(src, tmp_path, monkeypatch):
    """A second run on the same source, text and placement takes the dense model's held-out perplexity from
    the first (bit for bit, and says so in the manifest); other weights, --no-eval-cache or a cache file
    that cannot be read make it measure again."""
    import shutil

    from prunekit.compress import run as R

    monkeypatch.setenv("PRUNEKIT_EVAL_CACHE", str(tmp_path / "cache"))
    measured = []
    real = R.per_domain
    monkeypatch.setattr(R, "per_domain", lambda *a, **k: measured.append(1) or real(*a, **k))

    def dense_evals(out, **kw):
        before = len(measured)
        m = compress(cfg(src, tmp_path / out, rounds=1, **kw), log=quiet)
        return m, len(measured) - before - 1  # the pruned model's evaluation is always measured

    first, n1 = dense_evals("a")
    second, n2 = dense_evals("b")
    assert (n1, n2) == (1, 0) and second.quality["dense_from_cache"] and not first.quality["dense_from_cache"]
    assert second.quality["heldout_ppl"]["dense"] == first.quality["heldout_ppl"]["dense"]
    assert second.plan == first.plan  # the cut never reads it
    assert dense_evals("c", eval_cache=False)[1] == 1  # and it keeps what it measured
    assert dense_evals("c2")[1] == 0
    for f in (tmp_path / "cache").glob("*.json"):
        f.write_text("{not json")
    assert dense_evals("d")[1] == 1 and dense_evals("e")[1] == 0  # rewritten by the run that measured
    other = tmp_path / "other-src"
    shutil.copytree(src[0], other)
    from safetensors.torch import load_file, save_file

    w = next(other.glob("*.safetensors"))
    t = load_file(w)
    t = {k: v * 1.01 if "down_proj" in k else v for k, v in t.items()}
    save_file(t, w, metadata={"format": "pt"})
    m = compress(cfg((other, src[1]), tmp_path / "f", rounds=1), log=quiet)
    assert not m.quality["dense_from_cache"]
    assert m.quality["heldout_ppl"]["dense"] != first.quality["heldout_ppl"]["dense"]


@pytest.mark.unit
def test_tiny_per_layer_and_layers(src, tmp_path):
    from prunekit.loading import load_model

    m = compress(cfg(src, tmp_path / "p", mode="per-layer", ratio=0.3), log=quiet)
    assert m.layout == "per-layer"
    model, _, _ = load_model(tmp_path / "p", dtype="float32")
    assert sum(p.numel() for p in model.parameters()) == m.params["pruned_total"]
    m = compress(
        cfg(src, tmp_path / "l", structures=("layers",), method="block-influence", ratio=0.25, rounds=1), log=quiet
    )
    assert len(m.plan["kept_layers"]) == 3


@pytest.mark.unit
def test_tiny_kl_allocation(src, tmp_path):
    """The searched allocation: per-layer widths from measured KL, on the align grid, within the
    target, with the search recorded; and the composed KL it keeps is never above uniform's."""
    m = compress(
        cfg(
            src,
            tmp_path / "k",
            mode="per-layer",
            structures=("mlp",),
            selection="obs",
            allocation="kl",
            search_step=64,
            rounds=1,
            ratio=0.3,
        ),
        log=quiet,
    )
    s = m.rounds[0]["search"]
    assert s["kl_base"] == pytest.approx(0.0, abs=1e-6)  # the probe's reference is the model it starts from
    assert s["kl_uniform"] > 0 and s["kl_after_cut"] > 0 and s["chosen"] in ("searched", "uniform")
    if s["chosen"] == "searched":
        assert s["kl_searched"] < s["kl_uniform"]
    assert len(s["curves"]) == 4 and all(len(c) >= 2 for c in s["curves"].values())
    assert all(len(k) % 32 == 0 for k in m.plan["mlp"])
    assert abs(m.params["pruned_decoder"] / m.params["dense_decoder"] - 0.7) <= 0.06


@pytest.mark.unit
def test_kl_allocation_needs_per_layer_obs_one_round():
    with pytest.raises(PrunekitError, match="--mode per-layer"):
        CompressConfig(out="x", allocation="kl")
    kl = dict(out="x", allocation="kl", mode="per-layer", selection="obs")
    with pytest.raises(PrunekitError, match="--rounds 1"):
        CompressConfig(**kl, rounds=2)


@pytest.mark.unit
def test_per_layer_artifacts_search_widths_by_kl():
    from prunekit.pipeline import ArtifactsConfig

    c = ArtifactsConfig(mode="per-layer").compress_config()
    assert (c.mode, c.allocation, c.selection) == ("per-layer", "kl", "obs")
    assert ArtifactsConfig().compress_config().allocation == "score"  # the stock default is unchanged


@pytest.mark.unit
def test_artifacts_refuses_genai_where_its_builder_cannot_go():
    from prunekit.pipeline import ArtifactsConfig

    ArtifactsConfig(genai=True)  # uniform, unquantized: fine
    with pytest.raises(PrunekitError, match="--genai with --quantize"):
        ArtifactsConfig(genai=True, quantize="int8")
    with pytest.raises(PrunekitError, match="uniform layout"):
        ArtifactsConfig(genai=True, mode="per-layer")


@pytest.mark.unit
def test_compress_step_hash_follows_the_mix_file(src, tmp_path):
    import shutil

    from prunekit.pipeline import compress_hash

    mixdir = tmp_path / "mix"
    shutil.copytree(src[1].parent, mixdir)
    c = cfg(src, "unused", calib=str(mixdir / src[1].name))
    h = compress_hash(c)
    assert compress_hash(c) == h
    text = (mixdir / src[1].name).read_text()
    (mixdir / src[1].name).write_text(text.replace("weight: 1", "weight: 2", 1))
    assert compress_hash(c) != h  # same --calib path, edited mix: compress must rerun


@pytest.mark.unit
def test_existing_out_refused_before_work(src, tmp_path):
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(PrunekitError, match="--force"):
        compress(cfg(src, tmp_path), log=quiet)
    assert (tmp_path / "x").read_text() == "keep me"


@pytest.mark.unit
@pytest.mark.parametrize(
    "argv,match",
    [
        (["--ratio", "1.5"], "--ratio"),
        (["--structures", "mlp,experts"], "unknown structure"),
        (["--method", "block-influence"], "block-influence"),
        (["--rounds", "0"], "--rounds"),
        (["--tolerance", "0"], "--tolerance"),
        (["--align", "-64"], "--align"),
        (["--mode", "per-layer", "--structures", "layers"], "per-layer mode"),
        (["--model", "/nonexistent/model"], "does not exist"),
        (["--calib", "/nonexistent/mix.yaml"], "does not exist"),
    ],
)
def test_cli_bad_inputs(tmp_path, argv, match, capsys):
    rc = main(["compress", "--out", str(tmp_path / "o"), *argv])
    assert rc == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.unit
def test_bad_config_fails_before_any_model_loads(monkeypatch, tmp_path):
    """The config is checked when it is built: a bad value never reaches the loader."""
    import prunekit.compress.run as R
    import prunekit.compress.variants as V

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    for mod in (R, V):
        monkeypatch.setattr(mod, "load_model", boom)
        monkeypatch.setattr(mod.D, "load_mix", boom)
    assert main(["compress", "--out", str(tmp_path / "o"), "--rounds", "0"]) == 2
    assert main(["compare", "--variants", "ours,sparsegpt"]) == 2


@pytest.mark.unit
def test_unknown_domain_is_named(src, tmp_path, capsys):
    model, mix = src
    rc = main(
        ["compress", "--model", str(model), "--calib", str(mix), "--domains", "klingon", "--out", str(tmp_path / "o")]
    )
    assert rc == 2 and "not in the mix" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.unit
def test_compare_runs_variants_on_one_budget(src, tmp_path):
    model, mix = src
    c = CompareConfig(
        model=str(model),
        calib=str(mix),
        ratios=(0.25,),
        variants=("ours-oneshot", "ours-c4only", "magnitude"),
        seed=0,
        ratio_of="decoder",
        align=32,
        tolerance=0.06,
        out=str(tmp_path),
    )
    with pytest.raises(PrunekitError, match="not in the mix"):  # ours-c4only calibrates on the mix's `web`
        compare(c, log=quiet)
    res = compare(c.replace(variants=("ours-oneshot", "magnitude")), log=quiet)
    names = [r["variant"] for r in res["rows"]]
    assert names == ["dense", "ours-oneshot", "magnitude"]
    assert all(set(r["ppl"]) == set(res["heldout_tokens"]) == {"prose", "code"} for r in res["rows"])
    assert all(r["removed_total"] > 0 for r in res["rows"][1:])
    md = (tmp_path / "compare.md").read_text()
    assert "25% of parameters removed" in md and "magnitude" in md
    with pytest.raises(PrunekitError, match="unknown variant"):
        CompareConfig(variants=("sparsegpt",))


@pytest.mark.integration
def test_artifacts_pipeline_builds_then_resumes(src, tmp_path):
    from prunekit.artifact import read_manifest
    from prunekit.pipeline import ArtifactsConfig, run_artifacts

    # The source's own card states a licence (a README only: it changes no input of any step).
    (src[0] / "README.md").write_text("---\nlicense: mit\nlanguage:\n- en\n- de\n---\n# tiny\n")
    a = ArtifactsConfig(
        model=str(src[0]),
        out=str(tmp_path / "artifacts"),
        name="tiny",
        runtimes=("transformers", "onnxruntime"),
        threads=2,
    )
    c = cfg(src, "unused", rounds=1)
    logs: list[str] = []
    summary = run_artifacts(a, c, log=logs.append)
    art = tmp_path / "artifacts" / "tiny"
    assert summary["passed"] and (art / "verify.json").is_file() and (art / "onnx" / "model.onnx").is_file()
    readme = (art / "README.md").read_text()
    assert "prunekit serve" in readme and "| prose |" in readme and "| onnxruntime | yes |" in readme
    # A Hub model card: its metadata from the source's card and config, and the mix's datasets.
    from prunekit.model_card import read_front_matter

    meta = read_front_matter(readme)
    assert meta["license"] == "mit" and meta["language"] == ["en", "de"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"prunekit", "pruned", read_manifest(art).family, "onnx"} <= set(meta["tags"])
    assert "base_model" not in meta  # a local directory with no hub id: none is made up
    assert "Licence: `mit`" in readme and "## How it was made" in readme and "MLP width" in readme
    assert "cache_position" in readme and "--onnx-cache concat" in readme  # the default in-place graph, and optimum's
    assert not any("reusing" in m for m in logs)
    logs.clear()
    run_artifacts(a, c, log=logs.append)
    assert any("compress: reusing" in m for m in logs) and any("export: reusing" in m for m in logs)
    assert any("verify: already passed" in m for m in logs)
    logs.clear()
    # A changed input (here: recovery by distillation) redoes compress, so export too; a recovered
    # artifact exports and verifies as any other.
    summary = run_artifacts(a, c.replace(recover_tokens=64, recover_batch=2), log=logs.append)
    assert not any("reusing" in m for m in logs) and summary["passed"]
    assert read_manifest(tmp_path / "artifacts" / ".work" / "tiny" / "pruned").recovery["steps"] == 1


@pytest.mark.slow
def test_default_model_20_percent(tmp_path, default_model_dir, data_root):
    """The real model: 20% uniform; loads with plain from_pretrained; quality reported per domain."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    rc = main(["compress", "--ratio", "0.2", "--samples", "10", "--seq-len", "128", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "prunekit.json").read_text())
    assert abs(m["rounds"][-1]["removed_total"] - 0.2) <= 0.02
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == m["params"]["pruned_total"]
    dense, pruned = m["quality"]["heldout_ppl"]["dense"], m["quality"]["heldout_ppl"]["pruned"]
    for d in dense:
        assert dense[d] < pruned[d] < 50 * dense[d], (d, dense[d], pruned[d])
    with torch.no_grad():
        out_ids = model.generate(torch.tensor([[1, 504, 3458]]), max_new_tokens=4, do_sample=False)
    assert out_ids.shape[1] == 7
