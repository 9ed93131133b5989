"""The HF checkpoint inside an artifact, in the layout its shapes need.

- uniform: a plain LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM checkpoint with `head_dim`
  written explicitly (after head removal hidden_size // heads no longer gives it). Every runtime loads it
  without custom code.
- decilm: vLLM's DeciLM / Nemotron-NAS layout (`block_configs`: per-layer MLP width; KV heads per layer
  too, though prunekit's plans keep them equal: it removes query heads with their KV head, and the query-head
  count is global here), which vLLM runs with its own model class and native kernels. Used for Llama and Qwen2
  layers whose widths differ, or whose head count a stock config refuses, as long as every layer keeps the
  same attention heads. Ships shipped/modeling_decilm.py (config class and transformers code).
- per-layer: `config.per_layer_config` (transformers' heterogeneous configs, which vLLM 0.32 runs through
  its generic Transformers backend, much slower) plus shipped/modeling_prunekit.py. Needed when query heads
  differ per layer (prunekit removes whole GQA groups, query heads with their KV head, which DeciLM cannot
  express: its query-head count is global) and for Qwen3 (DeciLM attention has no q/k norm).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from prunekit.artifact import sha256_file
from prunekit.checkpoint import save_model, save_tokenizer
from prunekit.errors import PrunekitError
from prunekit.families import Family, head_dim, window_in_config_only

SHIPPED_DIR = Path(__file__).parent / "shipped"
SHIPPED = {"per-layer": SHIPPED_DIR / "modeling_prunekit.py", "decilm": SHIPPED_DIR / "modeling_decilm.py"}
PER_LAYER_KEYS = ("intermediate_size", "num_attention_heads", "num_key_value_heads")


def _stock_refusal(config, fam: Family) -> str:
    heads, hidden = config.num_attention_heads, config.hidden_size
    if fam.name == "llama" and hidden % heads:
        # transformers' LlamaConfig demands hidden_size % heads == 0 even with head_dim explicit.
        return f"stock LlamaConfig refuses {heads} heads with hidden size {hidden}"
    if fam.derived_head_dim and heads * head_dim(config) != hidden:
        return (
            f"vLLM's {fam.shipped} class would derive head_dim {hidden // heads}, not "
            f"{head_dim(config)}, from {heads} heads"
        )
    return ""


def layout_of(config, fam: Family, prefer: str = "auto") -> tuple[str, str]:
    """(layout, reason): the stock layout when it can hold the shapes, else DeciLM where vLLM's own class can
    run them, else the heterogeneous per-layer layout. `prefer="per-layer"` skips DeciLM."""
    layers = getattr(config, "prunekit_layers", None)
    why = "layers differ in width" if layers else _stock_refusal(config, fam)
    if not why:
        return "uniform", ""
    if window_in_config_only(config, fam):
        raise PrunekitError(
            f"{why}, but this model uses sliding-window attention (sliding_window="
            f"{config.sliding_window}) that neither shipped layout can keep; prune it with "
            "--mode uniform and --structures mlp, which export as the stock class."
        )
    if prefer == "per-layer":
        return "per-layer", f"{why}; per-layer layout asked for"
    if not fam.decilm:
        return "per-layer", f"{why}; vLLM's DeciLM layout cannot hold {fam.name} layers (no q/k norm)"
    if layers and len({(s["num_attention_heads"], s["num_key_value_heads"]) for s in layers}) > 1:
        return "per-layer", f"{why}, and query heads differ per layer (DeciLM keeps their count global)"
    return "decilm", f"{why}: DeciLM layout, run by vLLM's own DeciLMForCausalLM"


def _layers(cfg: dict) -> list[dict]:
    layers = cfg.pop("prunekit_layers", None) or [{k: cfg[k] for k in PER_LAYER_KEYS}] * cfg["num_hidden_layers"]
    if len(layers) != cfg["num_hidden_layers"]:
        raise PrunekitError(
            f"config lists {len(layers)} per-layer shapes for {cfg['num_hidden_layers']} layers; "
            "the pruned checkpoint is corrupt, re-run compress."
        )
    return layers


def _auto_map(module: str, stem: str) -> dict:
    return {
        "AutoConfig": f"{module}.{stem}Config",
        "AutoModel": f"{module}.{stem}Model",
        "AutoModelForCausalLM": f"{module}.{stem}ForCausalLM",
    }


def per_layer_config_json(cfg: dict, fam: Family) -> dict:
    """Turn prunekit's own per-layer record into the config that transformers and vLLM read."""
    layers = _layers(cfg)
    width = len(str(len(layers) - 1))  # zero-padded keys sort numerically, as transformers writes them
    cfg["per_layer_config"] = {
        str(i).zfill(width): {k: spec[k] for k in PER_LAYER_KEYS} for i, spec in enumerate(layers)
    }
    cfg["architectures"] = [f"Prunekit{fam.shipped}ForCausalLM"]
    cfg["auto_map"] = _auto_map("modeling_prunekit", f"Prunekit{fam.shipped}")
    return cfg


def decilm_config_json(cfg: dict, fam: Family) -> dict:
    """The same record as vLLM's DeciLM layout: one block per layer, widths given exactly (vLLM rounds only
    `ffn_mult` to 256, never `intermediate_size`), KV heads as query heads per KV head."""
    layers = _layers(cfg)
    heads, kv = layers[0]["num_attention_heads"], layers[0]["num_key_value_heads"]
    cfg.update(
        num_attention_heads=heads,
        num_key_value_heads=kv,
        model_type="nemotron-nas",
        intermediate_size=max(s["intermediate_size"] for s in layers),  # for tools that size buffers
        architectures=["DeciLMForCausalLM"],
        auto_map=_auto_map("modeling_decilm", f"Deci{fam.shipped}"),
    )
    cfg["block_configs"] = [
        {
            "attention": {"no_op": False, "replace_with_linear": False, "n_heads_in_group": heads // kv},
            "ffn": {"no_op": False, "replace_with_linear": False, "intermediate_size": s["intermediate_size"]},
        }
        for s in layers
    ]
    if fam.qkv_bias:
        cfg["qkv_bias"] = True  # vLLM's DeciLM attention: bias on q/k/v only, as Qwen2 has
    return cfg


REWRITE = {"per-layer": per_layer_config_json, "decilm": decilm_config_json}


def compressed_tensors(model, records: dict, info: dict, dtype):
    """Turn the quantized projections into compressed-tensors form in place (int8: W8A8, per-channel weights and
    dynamic per-token activations, the CPU int8 kernel of vLLM; int4: W4A16 packed, per group), with the scales
    chosen by prunekit/quantize.py. Returns the compressor, whose update_config writes quantization_config."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus, apply_quantization_config
    from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme

    preset = "W8A8" if info["bits"] == 8 else "W4A16"
    scheme = preset_name_to_scheme(preset, sorted(records))
    if info["bits"] == 4:
        scheme.weights.group_size = info["group_size"]
    qc = QuantizationConfig(config_groups={"group_0": scheme}, quantization_status=QuantizationStatus.FROZEN)
    model.float()
    apply_quantization_config(model, qc)
    mods = dict(model.named_modules())
    for name, r in records.items():
        mod = mods[name]
        with torch.no_grad():
            mod.weight_scale.data = r.scale.clone().reshape(mod.weight_scale.shape)
            mod.weight_zero_point.data.zero_()
    fmt = "int-quantized" if info["bits"] == 8 else "pack-quantized"
    comp = ModelCompressor.from_pretrained_model(model, quantization_format=fmt)
    comp.compress_model(model)
    model.to(dtype)  # floating tensors only: the integers stay; scales are bf16 values already
    return comp


def write_hf(model, tokenizer, fam: Family, out: Path, prefer: str = "auto", quant=None, dtype=None) -> dict:
    """Write the checkpoint into `out`; returns {layout, reason, shipped_code: {file: sha256}}. `quant`
    (records, info) writes a compressed-tensors checkpoint of the quantized projections."""
    layout, reason = layout_of(model.config, fam, prefer)
    model.config.head_dim = head_dim(model.config)  # explicit, also where the config derives it (Qwen2)
    comp = compressed_tensors(model, *quant, dtype) if quant else None
    save_model(model, out)
    save_tokenizer(tokenizer, out)
    shipped = {}
    if layout in REWRITE:
        p = out / "config.json"
        p.write_text(json.dumps(REWRITE[layout](json.loads(p.read_text()), fam), indent=2) + "\n")
        code = SHIPPED[layout]
        shutil.copyfile(code, out / code.name)
        shipped[code.name] = sha256_file(out / code.name)
    if comp is not None:
        comp.update_config(str(out))  # after the layout's rewrite, which would drop quantization_config
    return {"layout": layout, "reason": reason, "shipped_code": shipped}
