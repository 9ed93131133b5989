"""Writing HF checkpoints that every stock loader reads, and reading back per-layer ones."""
from __future__ import annotations

import json
from pathlib import Path

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


def load_per_layer(source: str, config, dtype):
    """Build a model whose layers differ in width (config.prunekit_layers) and load its weights."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from prunekit.compress.surgery import resize_to
    from prunekit.families import family_for_config

    fam = family_for_config(config)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    resize_to(model, fam, config.prunekit_layers)
    state = {}
    for f in sorted(Path(source).glob("*.safetensors")):
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied LM head is not stored; anything else missing or extra means a corrupt checkpoint.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        from prunekit.errors import PrunekitError
        raise PrunekitError(f"{source}: weights do not match the per-layer plan (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}); the checkpoint is corrupt.")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.to(torch.device("cpu"))
