"""export and verify on tiny random checkpoints: every layout, every runtime, and the refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import ARCH_CONFIGS, tiny_checkpoint
from prunekit.export import ExportConfig, VerifyConfig, verify

from prunekit.artifact import check_shipped_code, read_manifest
from prunekit.errors import PrunekitError

# decilm: MLP widths differ, attention the same in every layer; per-layer: query heads differ too.
LAYOUTS = {
    "uniform": dict(widths=[192] * 3),
    "decilm": dict(widths=[64, 256, 128]),
    "per-layer": dict(widths=[64, 256, 128], groups=[1, 2, 1]),
}
# The layout vLLM runs each with: its own class for the stock architecture, DeciLM, or its Transformers backend.
VLLM_CLASS = {"decilm": "DeciLMForCausalLM", "per-layer": "TransformersForCausalLM"}


def export(src, out, **kw):
    from prunekit.export import export as run_export

    return run_export(ExportConfig(model=str(src), out=str(out), tokens=kw.pop("tokens", 8), **kw), log=lambda m: None)


def check(art, runtimes=("transformers", "onnxruntime", "vllm"), **kw) -> dict:
    return verify(VerifyConfig(artifact=str(art), runtimes=runtimes, **kw), log=lambda m: None)


pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A per-layer tiny Llama artifact with ONNX, shared by the fast tests (copy it before changing it)."""
    d = tmp_path_factory.mktemp("art")
    src = tiny_checkpoint(d / "src", "llama", **LAYOUTS["per-layer"])
    export(src, d / "art")
    return d / "art"


# Every architecture in the stock and per-layer layouts; DeciLM for the two families it holds (Mistral
# shares Llama's code on both sides, Qwen3 cannot be held: test_layout_choice).
CASES = [(a, lay) for a in sorted(ARCH_CONFIGS) for lay in ("uniform", "per-layer")] + [
    ("LlamaForCausalLM", "decilm"),
    ("Qwen2ForCausalLM", "decilm"),
]
# vLLM (a server start each, about a minute of the CI run on 2 cores) where its code differs: its own class for
# Llama, Qwen2 and Qwen3 (Mistral runs Llama's), DeciLM for both families, and the Transformers backend that
# every per-layer artifact runs on, for Qwen2 (biases, untied head) and Qwen3 (q/k norm, tied head).
# The rest are checked on transformers and onnxruntime.
NO_VLLM = {("MistralForCausalLM", "uniform"), ("MistralForCausalLM", "per-layer"), ("LlamaForCausalLM", "per-layer")}


@pytest.mark.integration
@pytest.mark.parametrize("arch,layout", CASES)
def test_export_and_verify_every_runtime(tmp_path, arch, layout):
    """Each layout on transformers and onnxruntime, and on vLLM's class for it where that code differs (NO_VLLM)."""
    src = tiny_checkpoint(tmp_path / "src", arch, **LAYOUTS[layout])
    m = export(src, tmp_path / "art")
    assert m.layout == layout
    assert bool(m.shipped_code) == (layout != "uniform")
    cfg = json.loads((tmp_path / "art" / "config.json").read_text())
    assert cfg["head_dim"] == 32
    assert ("per_layer_config" in cfg) == (layout == "per-layer") and "prunekit_layers" not in cfg
    assert ("block_configs" in cfg) == (layout == "decilm")
    if layout == "decilm":
        assert [b["ffn"]["intermediate_size"] for b in cfg["block_configs"]] == LAYOUTS["decilm"]["widths"]
        heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        assert (heads, kv) == (4, 2) and {b["attention"]["n_heads_in_group"] for b in cfg["block_configs"]} == {2}
    assert layout != "uniform" or cfg["architectures"] == [arch]
    runtimes = ("transformers", "onnxruntime") + (() if (arch, layout) in NO_VLLM else ("vllm",))
    report = check(tmp_path / "art", runtimes=runtimes, kv_cache_gib=0.05, threads=2)
    rows = report["runtimes"]
    assert set(rows) == set(runtimes), rows
    for name, row in rows.items():
        assert row["passed"], (name, row)
        assert row["greedy_match"] == "5/5" and row["max_abs_logit_diff"] < 1e-4, (name, row)
    assert "vllm" not in rows or rows["vllm"]["model_class"] == VLLM_CLASS.get(layout, arch)
    saved = json.loads((tmp_path / "art" / "verify.json").read_text())
    assert saved["passed"] and json.loads((tmp_path / "art" / "prunekit.json").read_text())["verify"]["passed"]


def test_artifact_contents_and_hashes(artifact):
    from prunekit.artifact import sha256_file

    m = json.loads((artifact / "prunekit.json").read_text())
    assert m["stage"] == "export" and m["layout"] == "per-layer" and "inputs_hash" not in m
    assert (artifact / "onnx" / "model.onnx").is_file() and (artifact / "onnx" / "model.onnx.data").is_file()
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "modeling_prunekit.py",
        "onnx/model.onnx",
        "reference/logits.safetensors",
    } <= set(m["files"])
    for name, digest in m["files"].items():
        assert sha256_file(artifact / name) == digest, name
    assert m["shipped_code"]["modeling_prunekit.py"] == m["files"]["modeling_prunekit.py"]
    tok = json.loads((artifact / "tokenizer_config.json").read_text())
    assert tok.get("tokenizer_class") in (None, "PreTrainedTokenizerFast")
    assert m["onnx"]["inputs"][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert m["onnx"]["outputs"][:2] == ["logits", "present.0.key"]


def test_transformers_and_onnxruntime_match_reference(artifact):
    report = check(artifact, runtimes=("transformers", "onnxruntime"), threads=2)
    assert report["passed"], report


def test_concat_graph_reads_the_cache_at_kv_heads_and_honours_padding(tmp_path):
    """--onnx-cache concat (the graph optimum runs) attends with the opset-23 Attention op fed the cache inputs as
    they arrive (no repeat of KV heads, no transpose), per-layer KV heads, and a left-padded batch gives
    transformers' logits at every real position, in the prefill and in a decode step on the cache it returned
    (fp32 on both sides)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForCausalLM

    artifact = tmp_path / "art"
    m = export(tiny_checkpoint(tmp_path / "src", "llama", **LAYOUTS["per-layer"]), artifact, onnx_cache="concat")
    assert m.onnx["cache"] == "concat" and m.onnx["opset"] == 23 and "cache_position" not in m.onnx["inputs"]

    graph = onnx.load(str(artifact / "onnx" / "model.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    layers = len(read_manifest(artifact).onnx["outputs"]) // 2
    assert ops.count("Attention") == layers and ops.count("RMSNormalization") == 2 * layers + 1
    past = [n.input[4:6] for n in graph.node if n.op_type == "Attention"]
    assert [list(p) for p in past] == [
        [f"past_key_values.{i}.key", f"past_key_values.{i}.value"] for i in range(layers)
    ]
    assert "Softmax" not in ops  # attention is the one op, not a decomposition of it
    model = AutoModelForCausalLM.from_pretrained(artifact, trust_remote_code=True, dtype=torch.float32).eval()
    sess = ort.InferenceSession(str(artifact / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    past_in = sess.get_inputs()[3:]
    ids = torch.randint(3, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :3] = 0  # the second row is three tokens shorter, padded on the left
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy()}
    feed |= {i.name: np.zeros((2, i.shape[1], 0, i.shape[3]), np.float32) for i in past_in}
    out = sess.run(None, feed)
    nxt = torch.tensor([[5], [7]])
    mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    pos2 = pos[:, -1:] + 1
    step = sess.run(
        None,
        {"input_ids": nxt.numpy(), "attention_mask": mask2.numpy(), "position_ids": pos2.numpy()}
        | {i.name: v for i, v in zip(past_in, out[1:])},
    )[0]
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        ref2 = model(
            input_ids=torch.cat([ids, nxt], 1), attention_mask=mask2, position_ids=torch.cat([pos, pos2], 1)
        ).logits[:, -1]
    real = mask.bool().numpy()
    assert np.isfinite(out[0]).all() and np.isfinite(step).all()
    assert np.abs(out[0][real] - ref.numpy()[real]).max() < 1e-4
    assert np.abs(step[:, -1] - ref2.numpy()).max() < 1e-4


INPLACE_CASES = [("llama", "per-layer", None), ("Qwen2ForCausalLM", "uniform", "int8")]


@pytest.mark.parametrize("arch,layout,quantize", INPLACE_CASES)
def test_inplace_cache_graph_matches_transformers(tmp_path, arch, layout, quantize):
    """export --onnx-cache inplace: each layer writes its step into a preallocated buffer (TensorScatter) and
    attends over it, with per-layer KV head counts (Llama) and biases under int8 MatMulNBits (Qwen2); verify
    passes it through prunekit's runner, and a left-padded batch gives transformers' logits for the last position
    (the graph's only one) in the prefill and in a decode step written into the same buffers (fp32 on both
    sides)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForCausalLM

    src = tiny_checkpoint(tmp_path / "src", arch, **LAYOUTS[layout])
    m = export(src, tmp_path / "art", onnx_cache="inplace", quantize=quantize)
    assert m.onnx["cache"] == "inplace" and m.onnx["opset"] == 24 and "cache_position" in m.onnx["inputs"]
    graph = onnx.load(str(tmp_path / "art" / "onnx" / "model.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    layers = len(m.onnx["outputs"]) // 2
    assert ops.count("TensorScatter") == 2 * layers and ops.count("Attention") == layers
    assert "Transpose" not in ops[ops.index("Attention") - 4 : ops.index("Attention") + 2]  # the cache's own layout
    row = check(tmp_path / "art", runtimes=("onnxruntime",), threads=2)["runtimes"]["onnxruntime"]
    assert row["passed"], row  # int8: by agreement with the unquantized reference, as every quantized graph
    if quantize:
        return  # the padding check below compares with the unquantized model
    assert row["greedy_match"] == "5/5" and row["max_abs_logit_diff"] < 1e-4, row
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "art", trust_remote_code=True, dtype=torch.float32)
    sess = ort.InferenceSession(str(tmp_path / "art" / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    past = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    cap = 9  # room for the 6-token prompt, one decode step and two slots never written
    bufs = {i.name: np.zeros((2, cap, i.shape[2]), np.float32) for i in past}
    binding = sess.io_binding()
    for name, arr in bufs.items():
        value = ort.OrtValue.ortvalue_from_numpy(arr)
        binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output(name.replace("past_key_values.", "present."), value)

    def run(ids, mask, pos, at):
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "cache_position": np.full(2, at)}
        for name, arr in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(arr, dtype=np.int64))
        binding.bind_output("logits")
        sess.run_with_iobinding(binding)
        return binding.get_outputs()[-1].numpy()

    ids = torch.randint(3, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :3] = 0  # the second row is three tokens shorter, padded on the left
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    buf_mask = np.zeros((2, cap), np.int64)
    buf_mask[:, :6] = mask.numpy()
    out = run(ids.numpy(), buf_mask, pos.numpy(), 0)
    assert np.abs(bufs[past[0].name][:, 6:]).max() == 0 and np.abs(bufs[past[0].name][:, :6]).max() > 0
    nxt, pos2 = torch.tensor([[5], [7]]), pos[:, -1:] + 1
    buf_mask[:, 6] = 1
    step = run(nxt.numpy(), buf_mask, pos2.numpy(), 6)
    with torch.no_grad():
        mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        ref2 = model(
            input_ids=torch.cat([ids, nxt], 1), attention_mask=mask2, position_ids=torch.cat([pos, pos2], 1)
        ).logits[:, -1]
    assert out.shape == (2, 1, model.config.vocab_size)  # the last position's logits only
    assert np.abs(out[:, -1] - ref.numpy()[:, -1]).max() < 1e-4
    assert np.abs(step[:, -1] - ref2.numpy()).max() < 1e-4


def test_runner_grows_an_inplace_cache(tmp_path):
    """Without a known length OrtLM starts the buffer at prompt + GROW slots and grows it when full: 80 greedy
    steps through two growths equal transformers' (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    from prunekit.runtimes import OrtLM, torch_greedy

    src = tiny_checkpoint(tmp_path / "src", "llama", **LAYOUTS["uniform"])
    export(src, tmp_path / "art", onnx_cache="inplace")
    lm = OrtLM(tmp_path / "art" / "onnx" / "model.onnx", threads=2)
    assert lm.inplace
    prompts = [[5, 9, 11, 3, 7], [4, 4, 19, 21, 2]]
    steps = lm.steps(prompts)
    got = [next(steps)[0][:, 0].tolist() for _ in range(80)]
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    want, _ = torch_greedy(model, prompts, 80)
    assert [list(r) for r in zip(*got)] == want


def test_onnx_graph_uses_only_standard_domains(artifact, tmp_path):
    import onnx
    from onnx import helper
    from prunekit.export.onnx import check_domains

    ops = check_domains(artifact / "onnx" / "model.onnx")
    assert "MatMul" in ops
    node = helper.make_node("FusedMatMul", ["a", "b"], ["c"], domain="com.microsoft")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2, 2]) for n in "ab"],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [2, 2])],
    )
    bad = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph), bad)
    with pytest.raises(PrunekitError, match="com.microsoft::FusedMatMul"):
        check_domains(bad)


def test_onnx_export_refuses_partial_rotary_and_restores_the_model(tmp_path):
    import torch
    from conftest import tiny_model
    from prunekit.export.onnx import export_onnx

    model = tiny_model("LlamaForCausalLM")
    rotary = model.model.rotary_emb
    full = rotary.forward

    def half(x, position_ids):  # a rotary over half of each head, as partial-rotary families compute it
        cos, sin = full(x, position_ids)
        return cos[..., : cos.shape[-1] // 2], sin[..., : sin.shape[-1] // 2]

    rotary.forward = half
    with pytest.raises(PrunekitError, match="partial rotary"):
        export_onnx(model, tmp_path / "onnx")
    # Every patched forward and fused projection is gone again: the model still runs as transformers wrote it.
    del rotary.forward
    assert not any("forward" in m.__dict__ or hasattr(m, "_prunekit_fused") for m in model.modules())
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.isfinite().all()


def test_refuses_to_overwrite_without_force(artifact, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    src = tiny_checkpoint(tmp_path / "src", "qwen2")
    with pytest.raises(PrunekitError, match="--force"):
        export(src, out, onnx=False)
    assert (out / "keep.txt").read_text() == "mine"
    export(src, out, onnx=False, force=True)
    assert not (out / "keep.txt").exists() and (out / "prunekit.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _corrupt(kind: str, src: Path) -> None:
    if kind == "no-config":
        (src / "config.json").unlink()
    elif kind == "truncated":
        f = src / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif kind == "plan-mismatch":  # the config promises other widths than the tensors have
        cfg = json.loads((src / "config.json").read_text())
        cfg["prunekit_layers"][0]["intermediate_size"] = 128
        (src / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("kind", ["no-config", "truncated", "plan-mismatch"])
def test_corrupt_input_is_refused_and_leaves_nothing(tmp_path, kind):
    src = tiny_checkpoint(tmp_path / "src", "llama", **LAYOUTS["per-layer"])
    _corrupt(kind, src)
    with pytest.raises(PrunekitError) as e:
        export(src, tmp_path / "out", onnx=False)
    assert str(src) in str(e.value) or "config.json" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_tampered_shipped_code_is_detected(artifact, tmp_path):
    from prunekit.cli import main

    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    code = art / "modeling_prunekit.py"
    code.write_text(code.read_text() + "\nimport os  # injected\n")
    m = read_manifest(art)
    with pytest.raises(PrunekitError, match="sha256"):
        check_shipped_code(art, m)
    report = check(art, runtimes=("transformers",))
    assert not report["passed"] and "transformers" not in report["runtimes"]
    assert "modeling_prunekit.py (changed)" in report["runtimes"]["files"]["error"]
    assert main(["verify", str(art), "--runtimes", "transformers"]) == 1
    (art / "extra.py").write_text("print('hi')\n")
    code.write_text((artifact / "modeling_prunekit.py").read_text())
    with pytest.raises(PrunekitError, match="extra.py"):
        check_shipped_code(art, m)


def test_verify_refuses_a_non_artifact(tmp_path):
    from prunekit.cli import main

    src = tiny_checkpoint(tmp_path / "src", "llama")
    assert main(["verify", str(src)]) == 2
    assert main(["verify", str(tmp_path / "missing")]) == 2


def test_heads_cut_where_stock_vllm_would_misread_go_decilm(tmp_path):
    """Qwen2 in vLLM derives head_dim from hidden_size // heads: a uniform head cut needs a layout that states
    it, and DeciLM does (vLLM's DeciLM attention reads config.head_dim)."""
    src = tiny_checkpoint(tmp_path / "src", "qwen2", widths=[256] * 3, groups=[1] * 3)
    m = export(src, tmp_path / "art", onnx=False)
    assert m.layout == "decilm" and "head_dim" in m.reason
    report = check(tmp_path / "art", runtimes=("transformers", "vllm"), threads=2, kv_cache_gib=0.05)
    assert report["passed"], report
    assert report["runtimes"]["vllm"]["model_class"] == "DeciLMForCausalLM"


@pytest.mark.parametrize(
    "arch,shape,prefer,layout,why",
    [
        ("Qwen3ForCausalLM", "decilm", "auto", "per-layer", "q/k norm"),
        ("LlamaForCausalLM", "per-layer", "auto", "per-layer", "query heads differ"),
        ("LlamaForCausalLM", "decilm", "per-layer", "per-layer", "asked for"),
        ("MistralForCausalLM", "decilm", "auto", "decilm", "DeciLM"),
    ],
)
def test_layout_choice(tmp_path, arch, shape, prefer, layout, why):
    """Export picks the layout the plan needs, says why, and `--layout per-layer` overrides DeciLM."""
    src = tiny_checkpoint(tmp_path / "src", arch, **LAYOUTS[shape])
    m = export(src, tmp_path / "art", onnx=False, layout=prefer)
    assert m.layout == layout and why in m.reason, (m.layout, m.reason)
    assert list(m.shipped_code) == [f"modeling_{'decilm' if layout == 'decilm' else 'prunekit'}.py"]


def test_sliding_window_without_layer_types_is_refused(tmp_path):
    """Mistral's window lives in `sliding_window` alone, which Llama layers and vLLM's DeciLM ignore: a
    non-uniform plan would silently lose it, so export refuses and names the fix."""
    from prunekit.export.hf import layout_of
    from transformers import AutoConfig

    from prunekit.families import FAMILIES

    src = tiny_checkpoint(tmp_path / "src", "MistralForCausalLM", **LAYOUTS["decilm"])
    config = AutoConfig.from_pretrained(src)
    config.sliding_window = 64
    with pytest.raises(PrunekitError, match="--mode uniform"):
        layout_of(config, FAMILIES["llama"])
    config.sliding_window = None
    assert layout_of(config, FAMILIES["llama"])[0] == "decilm"


def test_config_without_head_dim_exports(tmp_path):
    """Stock Qwen2 configs carry no head_dim (it is derived): export writes it explicitly instead of failing."""
    import transformers
    from conftest import tiny_tokenizer

    from prunekit.checkpoint import save_model, save_tokenizer

    cfg = transformers.Qwen2Config(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=320,
        max_position_embeddings=128,
    )
    cfg.architectures = ["Qwen2ForCausalLM"]
    assert getattr(cfg, "head_dim", None) is None
    save_model(transformers.Qwen2ForCausalLM(cfg).eval(), tmp_path / "src")
    save_tokenizer(tiny_tokenizer(), tmp_path / "src")
    m = export(tmp_path / "src", tmp_path / "art", onnx=False)
    assert m.layout == "uniform" and json.loads((tmp_path / "art" / "config.json").read_text())["head_dim"] == 32


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
def test_genai_folder_is_built_and_verified(tmp_path, arch, monkeypatch):
    """export --genai writes onnxruntime-genai's own folder for a uniform cut (Qwen2: biases, untied head), to a
    relative --out as a user types it, and verify runs it through genai's generator against the reference."""
    tiny_checkpoint(tmp_path / "src", arch, **LAYOUTS["uniform"])
    monkeypatch.chdir(tmp_path)
    m = export(Path("src"), Path("art"), genai=True)
    assert m.genai["dir"] == "genai" and (tmp_path / "art" / "genai" / "genai_config.json").is_file()
    assert any(f.startswith("genai/") for f in m.files)
    rows = check(tmp_path / "art", runtimes=("onnxruntime", "onnxruntime-genai"), threads=2)["runtimes"]
    assert rows["onnxruntime-genai"]["passed"] and rows["onnxruntime-genai"]["greedy_match"] == "5/5", rows
    assert rows["onnxruntime-genai"]["max_abs_logit_diff"] < 1e-4


def test_genai_refuses_what_its_builder_cannot_hold(tmp_path, artifact):
    rows = check(artifact, runtimes=("onnxruntime-genai",))  # asked for, but exported without --genai
    assert not rows["passed"] and "export with --genai" in rows["runtimes"]["onnxruntime-genai"]["error"]
    src = tiny_checkpoint(tmp_path / "src", "llama", **LAYOUTS["decilm"])
    with pytest.raises(PrunekitError, match="--genai needs the uniform layout"):
        export(src, tmp_path / "art", genai=True)
    assert not (tmp_path / "art").exists()
    with pytest.raises(PrunekitError, match="--genai with --quantize"):
        export(
            tiny_checkpoint(tmp_path / "u", "llama", **LAYOUTS["uniform"]),
            tmp_path / "art",
            genai=True,
            quantize="int8",
        )
