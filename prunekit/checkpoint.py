"""Writing HF checkpoints that every stock loader reads, and reading back per-layer ones (layer shapes
built from the family entry, so loading never depends on the stage that pruned the model)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import PrunekitError
from .families import Family, family_for_config, get_module, head_dim

# transformers 5 writes "TokenizersBackend", which transformers 4.x (and tools pinned to it, such as
# optimum's ONNX exporter) cannot load; PreTrainedTokenizerFast loads in both.
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def save_tokenizer(tokenizer, out: str | Path) -> None:
    tokenizer.save_pretrained(out)
    p = Path(out) / "tokenizer_config.json"
    if p.is_file():
        cfg = json.loads(p.read_text())
        if cfg.get("tokenizer_class") == "TokenizersBackend":
            cfg["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
            p.write_text(json.dumps(cfg, indent=2) + "\n")


def save_model(model, out: str | Path) -> None:
    """safetensors weights, config and generation config (tied embeddings stay tied)."""
    model.save_pretrained(out, safe_serialization=True)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)


def resize_layers(model, fam: Family, per_layer: list[dict]) -> None:
    """Give a freshly built stock model the per-layer shapes of a pruned checkpoint (before loading
    its weights): each layer's MLP and attention projections are rebuilt at the recorded widths,
    from the family entry's module names."""
    from torch import nn

    hd = head_dim(model.config)
    layers = get_module(model, fam.layers)
    if len(per_layer) != len(layers):
        raise PrunekitError(
            f"config lists {len(per_layer)} per-layer shapes for {len(layers)} layers; "
            "the checkpoint is corrupt, re-run compress."
        )

    def linear(old: nn.Linear, n_in: int, n_out: int) -> nn.Linear:
        return nn.Linear(n_in, n_out, bias=old.bias is not None, dtype=old.weight.dtype, device=old.weight.device)

    for layer, spec in zip(layers, per_layer):
        mlp, attn = getattr(layer, fam.mlp), getattr(layer, fam.attn)
        w, q, kv = spec["intermediate_size"], spec["num_attention_heads"] * hd, spec["num_key_value_heads"] * hd
        for name, n_in, n_out in ((fam.gate, None, w), (fam.up, None, w), (fam.down, w, None)):
            old = getattr(mlp, name)
            setattr(mlp, name, linear(old, n_in or old.in_features, n_out or old.out_features))
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = w
        for name, n_in, n_out in ((fam.q, None, q), (fam.k, None, kv), (fam.v, None, kv), (fam.o, q, None)):
            old = getattr(attn, name)
            setattr(attn, name, linear(old, n_in or old.in_features, n_out or old.out_features))


def load_per_layer(source: str, config, dtype):
    """Build a model whose layers differ in width (config.prunekit_layers) and load its weights."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    fam = family_for_config(config)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    resize_layers(model, fam, config.prunekit_layers)
    state = {}
    for f in sorted(Path(source).glob("*.safetensors")):
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied LM head is not stored; anything else missing or extra means a corrupt checkpoint.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise PrunekitError(
            f"{source}: weights do not match the per-layer plan (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); the checkpoint is corrupt."
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.to(torch.device("cpu"))
