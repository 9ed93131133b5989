"""The HF checkpoint inside an artifact: stock classes when widths are uniform, shipped code otherwise.

Uniform: a plain LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM checkpoint with `head_dim`
written explicitly (after head removal hidden_size // heads no longer gives it). Every runtime loads it
without custom code.

Per-layer: `config.per_layer_config` (transformers' heterogeneous configs, read natively by vLLM 0.32's
Transformers backend) plus the small modeling file in shipped/. Chosen over vLLM's DeciLM layout because
DeciLM keeps the query-head count global, and prunekit removes whole GQA groups (query heads with their
KV head), so a DeciLM config cannot express a plan that cuts heads unevenly.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from prunekit.artifact import sha256_file
from prunekit.checkpoint import save_model, save_tokenizer
from prunekit.errors import PrunekitError
from prunekit.families import Family, head_dim

SHIPPED = Path(__file__).parent / "shipped" / "modeling_prunekit.py"
PER_LAYER_KEYS = ("intermediate_size", "num_attention_heads", "num_key_value_heads")


def layout_of(config, fam: Family) -> tuple[str, str]:
    """(layout, reason): per-layer when layers differ, or when a stock config would refuse the shapes."""
    if getattr(config, "prunekit_layers", None):
        return "per-layer", "layers differ in width"
    heads, hidden = config.num_attention_heads, config.hidden_size
    if fam.name == "llama" and hidden % heads:
        # transformers' LlamaConfig demands hidden_size % heads == 0 even with head_dim explicit.
        return "per-layer", f"stock LlamaConfig refuses {heads} heads with hidden size {hidden}"
    if fam.derived_head_dim and heads * head_dim(config) != hidden:
        return "per-layer", (f"vLLM's {fam.shipped} class would derive head_dim {hidden // heads}, not "
                             f"{head_dim(config)}, from {heads} heads")
    return "uniform", ""


def per_layer_config_json(cfg: dict, fam: Family) -> dict:
    """Turn prunekit's own per-layer record into the config that transformers and vLLM read."""
    layers = cfg.pop("prunekit_layers", None) or [{k: cfg[k] for k in PER_LAYER_KEYS}] * cfg["num_hidden_layers"]
    if len(layers) != cfg["num_hidden_layers"]:
        raise PrunekitError(f"config lists {len(layers)} per-layer shapes for {cfg['num_hidden_layers']} layers; "
                            "the pruned checkpoint is corrupt, re-run compress.")
    width = len(str(len(layers) - 1))  # zero-padded keys sort numerically, as transformers writes them
    cfg["per_layer_config"] = {str(i).zfill(width): {k: spec[k] for k in PER_LAYER_KEYS}
                               for i, spec in enumerate(layers)}
    stem = fam.shipped
    cfg["architectures"] = [f"Prunekit{stem}ForCausalLM"]
    cfg["auto_map"] = {"AutoConfig": f"modeling_prunekit.Prunekit{stem}Config",
                       "AutoModel": f"modeling_prunekit.Prunekit{stem}Model",
                       "AutoModelForCausalLM": f"modeling_prunekit.Prunekit{stem}ForCausalLM"}
    return cfg


def write_hf(model, tokenizer, fam: Family, out: Path) -> dict:
    """Write the checkpoint into `out`; returns {layout, reason, shipped_code: {file: sha256}}."""
    layout, reason = layout_of(model.config, fam)
    model.config.head_dim = model.config.head_dim  # written explicitly even where a default exists
    save_model(model, out)
    save_tokenizer(tokenizer, out)
    shipped = {}
    if layout == "per-layer":
        p = out / "config.json"
        p.write_text(json.dumps(per_layer_config_json(json.loads(p.read_text()), fam), indent=2) + "\n")
        shutil.copyfile(SHIPPED, out / SHIPPED.name)
        shipped[SHIPPED.name] = sha256_file(out / SHIPPED.name)
    return {"layout": layout, "reason": reason, "shipped_code": shipped}
