"""`prunekit compress` end to end: tiny models for mechanics, the default model for the real thing."""
import json

import pytest
import torch

from prunekit.cli import main
from prunekit.compress.iterate import Settings
from prunekit.compress.plan import Constraints
from prunekit.compress.run import Job, run
from prunekit.errors import PrunekitError

from conftest import tiny_model


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory, default_model_dir):
    """A tiny random Llama with the default model's tokenizer (so the real mix can be packed)."""
    from prunekit.checkpoint import save_tokenizer
    from prunekit.loading import load_tokenizer

    out = tmp_path_factory.mktemp("tiny-src")
    tiny_model("llama", vocab_size=49152, intermediate_size=256, num_hidden_layers=4).save_pretrained(out)
    save_tokenizer(load_tokenizer(default_model_dir), out)
    return out


def job(src, out, **kw):
    # The tiny model's embeddings dwarf its decoder, so targets are fractions of the decoder.
    s = Settings(constraints=Constraints(ratio=kw.pop("ratio", 0.2), ratio_of="decoder", align=32,
                                         structures=kw.pop("structures", ("mlp", "heads")),
                                         tolerance=0.06, mode=kw.pop("mode", "uniform")),
                 rounds=kw.pop("rounds", 2), method=kw.pop("method", "hybrid"), quick_eval=0)
    return Job(model=str(src), out=str(out), settings=s, samples=5, seq_len=64, seed=kw.pop("seed", 0),
               dtype="float32", **kw)


def test_tiny_compress_deterministic_and_loadable(tiny_src, tmp_path, data_root):
    from transformers import AutoModelForCausalLM

    m1 = run(job(tiny_src, tmp_path / "a"), log=lambda m: None)
    m2 = run(job(tiny_src, tmp_path / "b"), log=lambda m: None)
    assert m1["plan"] == m2["plan"]
    m3 = run(job(tiny_src, tmp_path / "c", seed=1), log=lambda m: None)
    assert m3["calibration"]["fingerprint"] != m1["calibration"]["fingerprint"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert sum(p.numel() for p in model.parameters()) == m1["params"]["pruned_total"]
    assert m1["params"]["pruned_total"] < m1["params"]["dense_total"]
    assert len(m1["rounds"]) == 2 and m1["layout"] == "uniform"
    assert set(m1["quality"]["heldout_ppl"]["pruned"]) == {"web", "code", "math", "instructions", "german"}
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    on_disk = json.loads((tmp_path / "a" / "prunekit.json").read_text())
    assert on_disk["source_hash"].startswith("sha256:") and on_disk["versions"]["torch"]


def test_tiny_per_layer_and_layers(tiny_src, tmp_path, data_root):
    from prunekit.loading import load_model

    m = run(job(tiny_src, tmp_path / "p", mode="per-layer", ratio=0.3), log=lambda m: None)
    assert m["layout"] == "per-layer"
    model, _, _ = load_model(tmp_path / "p", dtype="float32")
    assert sum(p.numel() for p in model.parameters()) == m["params"]["pruned_total"]
    m = run(job(tiny_src, tmp_path / "l", structures=("layers",), method="block-influence", ratio=0.25,
                rounds=1), log=lambda m: None)
    assert len(m["plan"]["kept_layers"]) == 3


def test_existing_out_refused_before_work(tiny_src, tmp_path):
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(PrunekitError, match="--force"):
        run(job(tiny_src, tmp_path), log=lambda m: None)
    assert (tmp_path / "x").read_text() == "keep me"


@pytest.mark.parametrize("argv,match", [
    (["--ratio", "1.5"], "--ratio"),
    (["--structures", "mlp,experts"], "unknown structure"),
    (["--method", "block-influence"], "block-influence"),
    (["--rounds", "0"], "--rounds"),
    (["--model", "/nonexistent/model"], "does not exist"),
    (["--calib", "/nonexistent/mix.yaml"], "does not exist"),
    (["--domains", "klingon"], "not in the mix"),
])
def test_cli_bad_inputs(tmp_path, argv, match, capsys):
    rc = main(["compress", "--out", str(tmp_path / "o"), *argv])
    assert rc == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


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


def test_compare_runs_variants_on_one_budget(tiny_src, tmp_path, data_root):
    from prunekit.compress.compare import run_compare

    base = Settings(quick_eval=0, constraints=Constraints(ratio=0.2, ratio_of="decoder", align=32,
                                                          tolerance=0.06))
    res = run_compare(str(tiny_src), "default", [0.25], ["ours-oneshot", "ours-c4only", "magnitude"], base,
                      tmp_path, samples=5, seq_len=64, seed=0, log=lambda m: None)
    names = [r["variant"] for r in res["rows"]]
    assert names == ["dense", "ours-oneshot", "ours-c4only", "magnitude"]
    assert all(set(r["ppl"]) == set(res["heldout_tokens"]) for r in res["rows"])
    md = (tmp_path / "compare.md").read_text()
    assert "25% of parameters removed" in md and "magnitude" in md
    with pytest.raises(PrunekitError, match="unknown variant"):
        run_compare(str(tiny_src), "default", [0.2], ["sparsegpt"], base, None)


def test_artifacts_pipeline_builds_then_resumes(tiny_src, tmp_path, data_root):
    from prunekit.pipeline import Pipeline, run_pipeline

    s = job(tiny_src, tmp_path / "unused").settings
    p = Pipeline(model=str(tiny_src), out=str(tmp_path / "artifacts"), name="tiny", settings=s, samples=5,
                 seq_len=64, runtimes=("transformers", "onnxruntime"), threads=2)
    logs: list[str] = []
    summary = run_pipeline(p, log=logs.append)
    art = tmp_path / "artifacts" / "tiny"
    assert summary["passed"] and (art / "verify.json").is_file() and (art / "onnx" / "model.onnx").is_file()
    readme = (art / "README.md").read_text()
    assert "prunekit serve" in readme and "| web |" in readme and "| onnxruntime | yes |" in readme
    assert not any("reusing" in m for m in logs)
    logs.clear()
    run_pipeline(p, log=logs.append)
    assert any("compress: reusing" in m for m in logs) and any("export: reusing" in m for m in logs)
    assert any("verify: already passed" in m for m in logs)
