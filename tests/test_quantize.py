"""Quantization: the integers and scales (prunekit/quantize.py), their MatMulNBits packing, and quantized artifacts
exported and verified on every runtime that runs them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_checkpoint, tiny_mix, tiny_model
from prunekit.export import ExportConfig, VerifyConfig, export, verify

from prunekit.errors import PrunekitError
from prunekit.families import family_for_config
from prunekit.pipeline import export_calibrated
from prunekit.quantize import dequantized, gptq, group_size, quantize, rtn


def _fresh(**kw):
    return tiny_model("llama", hidden_size=128, intermediate_size=256, head_dim=32, **kw)


@pytest.mark.unit
@pytest.mark.parametrize("bits,group", [(8, 0), (4, 64)])
def test_rtn_integers_in_range_scales_in_bf16_error_under_half_a_step(bits, group):
    from prunekit.quantize import Quantized

    w = torch.randn(48, 128)
    q, s = rtn(w, bits, group)
    assert q.min() >= -(2 ** (bits - 1)) and q.max() <= 2 ** (bits - 1) - 1
    assert torch.equal(s, s.to(torch.bfloat16).float())  # vLLM reads the scales in bf16: nothing may change
    r = Quantized(q.to(torch.int8), s, bits, group or 128)
    step = s.repeat_interleave(group or 128, dim=1)
    assert ((dequantized(r) - w).abs() <= step / 2 + 1e-6).all()


@pytest.mark.unit
def test_gptq_lowers_the_output_error_of_rounding():
    """On correlated inputs, GPTQ's output error is well below round-to-nearest's at the same scales' grid."""
    torch.manual_seed(0)
    x = torch.randn(2048, 16) @ torch.randn(16, 128) + 0.1 * torch.randn(2048, 128)
    w = torch.randn(64, 128)
    h = x.T @ x
    errs = {}
    for name, (q, s) in {"rtn": rtn(w, 4, 32), "gptq": gptq(w, h, 4, 32)}.items():
        from prunekit.quantize import Quantized

        wq = dequantized(Quantized(q.to(torch.int8), s, 4, 32))
        errs[name] = ((x @ (w - wq).T) ** 2).mean().item()
    assert errs["gptq"] < 0.5 * errs["rtn"], errs


@pytest.mark.unit
def test_quantize_sets_dequantized_weights_and_int4_group_divides_every_width():
    model = _fresh()
    fam = family_for_config(model.config)
    assert group_size(model, fam, 4) == 128 and group_size(model, fam, 8) == 0
    recs, info = quantize(model, fam, "int4", "rtn")
    assert info["group_size"] == 128 and len(recs) == 3 * 7
    name, r = next(iter(recs.items()))
    mod = dict(model.named_modules())[name]
    assert torch.equal(mod.weight.data, dequantized(r))
    odd = tiny_model("llama", hidden_size=128, intermediate_size=200, head_dim=32)
    with pytest.raises(PrunekitError, match="multiple of 32.*--align"):
        group_size(odd, family_for_config(odd.config), 4)


@pytest.mark.unit
@pytest.mark.parametrize("bits,k,group", [(8, 200, 200), (4, 128, 32)])
def test_matmulnbits_packing_runs_the_same_integers_in_onnxruntime(bits, k, group):
    """One MatMulNBits node from pack() against the dequantized weight in numpy (accuracy level 0: fp32 compute);
    K = 200 pads the last int8 block."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from prunekit.export.quantize_onnx import INT8_BLOCK, pack

    from prunekit.quantize import Quantized

    n = 48
    q, s = rtn(torch.randn(n, k), bits, 0 if group == k else group)
    r = Quantized(q.to(torch.int8), s, bits, group)
    blob, scales, block = pack(r, INT8_BLOCK if bits == 8 else group)
    node = helper.make_node(
        "MatMulNBits", ["a", "b", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=bits, block_size=block
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n])],
        [numpy_helper.from_array(blob, "b"), numpy_helper.from_array(scales, "s")],
    )
    m = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)], ir_version=10
    )
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).standard_normal((3, k)).astype(np.float32)
    want = a @ dequantized(r).numpy().T
    np.testing.assert_allclose(sess.run(None, {"a": a})[0], want, rtol=1e-4, atol=1e-4)
    assert onnx.checker.check_model(m) is None


# int8 in the stock layout, int4 (GPTQ on the tiny mix) in DeciLM's: each on transformers, onnxruntime and vLLM.
CASES = [("llama", "int8", {}), ("qwen2", "int4", dict(widths=[64, 256, 128]))]


@pytest.mark.integration
@pytest.mark.parametrize("family,scheme,shape", CASES)
def test_quantized_artifact_verifies_on_every_runtime(tmp_path, family, scheme, shape):
    src = tiny_checkpoint(tmp_path / "src", family, **shape)
    art = tmp_path / "art"
    cfg = ExportConfig(model=str(src), out=str(art), tokens=8, quantize=scheme, calib=str(tiny_mix(tmp_path / "mix")))
    m = export_calibrated(cfg, log=lambda m: None)  # as `prunekit export` runs it: GPTQ's sequences from the mix
    assert m.quantization["scheme"] == scheme and m.quantization["method"] == ("gptq" if scheme == "int4" else "rtn")
    qc = json.loads((art / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    assert qc["format"] == ("int-quantized" if scheme == "int8" else "pack-quantized")
    assert m.onnx["quantization"]["matmul_nbits"] == 21 and "MatMulNBits" in m.onnx["op_types"]
    assert m.onnx["quantization"]["lm_head"]["bits"] == 8
    report = verify(
        VerifyConfig(artifact=str(art), kv_cache_gib=0.05, threads=2),
        log=lambda m: None,
    )
    for name, row in report["runtimes"].items():
        # random tiny models have flat distributions: a tiny KL, and top-1 flips at near-ties
        assert row["passed"] and row["kl_mean"] < 0.01, (name, row)
    assert report["quantization"] == scheme


@pytest.mark.integration
def test_gptq_without_calibration_is_refused_and_int8_per_layer_too(tmp_path):
    src = tiny_checkpoint(tmp_path / "src", "llama", widths=[64, 256, 128], groups=[1, 2, 1])
    with pytest.raises(PrunekitError, match="per-layer layout.*--quantize int4"):
        export(ExportConfig(model=str(src), out=str(tmp_path / "art"), quantize="int8"), log=lambda m: None)
    with pytest.raises(PrunekitError, match="GPTQ needs calibration"):
        export(ExportConfig(model=str(src), out=str(tmp_path / "art"), quantize="int4"), log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.unit
def test_serve_runs_a_quantized_artifact_in_bf16_and_refuses_float32():
    from prunekit.serve import ServeConfig
    from prunekit.serve.server import server_dtype

    from prunekit.artifact import Manifest

    m = Manifest(stage="export", quantization={"scheme": "int8"})
    assert server_dtype(ServeConfig(artifact="x"), m) == "bfloat16"
    with pytest.raises(PrunekitError, match="bfloat16"):
        server_dtype(ServeConfig(artifact="x", dtype="float32"), m)


@pytest.mark.unit
def test_frontier_report_and_plot_render(tmp_path):
    """The frontier's table and plot from a result of its shape (mechanics only: the figures are made up)."""
    from prunekit.bench.frontier import markdown, plot

    def row(cut, scheme, ppl, b1, vllm):
        return dict(
            cut=cut,
            scheme=scheme,
            wikitext2=ppl,
            heldout_geomean=ppl / 2,
            hf_mb=100,
            onnx_mb=200,
            ort_peak_rss_mb=300,
            ort={"b1": b1, "batch": 4 * b1},
            vllm=vllm,
        )

    pair = {"b1": {"median": 1.5}, "batch": {"median": 1.4}}
    res = {
        "machine": {"cpu": "test cpu"},
        "threads": 2,
        "batch": 8,
        "wikitext_limit": 4,
        "rows": [
            row(0, "none", 30.0, 40.0, None),
            row(20, "int8", 60.0, 90.0, pair),
            row(20, "int4", 80.0, 100.0, {"error": "no native bf16"}),
        ],
    }
    md = markdown(res)
    assert "| 20% cut + int8 | 60.00 (x2.00) |" in md and "x2.25" in md and "no native bf16" in md
    plot(res, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000
