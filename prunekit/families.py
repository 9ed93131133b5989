"""Per-architecture facts as data, one entry per family.

Each entry says where the prunable groups live inside a decoder layer and which config keys a cut
rewrites. Everything else (plans, surgery, export) reads these entries instead of hard-coding names,
so adding a family is adding an entry here plus a tiny fixture in tests/ (a test enforces that).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import PrunekitError


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]  # config.architectures values that map here
    model_type: str  # config.model_type written by the stock class
    layers: str = "model.layers"  # attribute path of the decoder layer list
    attn: str = "self_attn"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    mlp: str = "mlp"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"
    input_norm: str = "input_layernorm"
    post_attn_norm: str = "post_attention_layernorm"
    final_norm: str = "model.norm"  # the norm before the LM head
    qkv_bias: bool = False  # Qwen2 has biases on q/k/v: they are sliced with the heads
    qk_norm: bool = False  # Qwen3 normalises q and k per head (shape head_dim: never sliced)
    # Config keys that hold one value per layer and must follow a layer removal.
    per_layer_keys: tuple[str, ...] = field(default=("layer_types",))
    # Class-name stem in export/shipped/modeling_prunekit.py (per-layer artifacts).
    shipped: str = "Llama"
    # vLLM's own class derives head_dim as hidden_size // heads and ignores config.head_dim (Qwen2),
    # so a stock checkpoint of this family must keep heads * head_dim == hidden_size.
    derived_head_dim: bool = False
    # vLLM's DeciLM / Nemotron-NAS class can hold this family's layers (per-layer widths on native kernels);
    # its attention has no per-head q/k norm, so not Qwen3.
    decilm: bool = True


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", ("LlamaForCausalLM", "MistralForCausalLM"), "llama"),
    "qwen2": Family("qwen2", ("Qwen2ForCausalLM",), "qwen2", qkv_bias=True, shipped="Qwen2", derived_head_dim=True),
    "qwen3": Family("qwen3", ("Qwen3ForCausalLM",), "qwen3", qk_norm=True, shipped="Qwen3", decilm=False),
}


def supported_architectures() -> list[str]:
    return sorted(a for f in FAMILIES.values() for a in f.architectures)


def family_for_config(config) -> Family:
    """The family of an HF config, or an error that lists what is supported."""
    archs = list(getattr(config, "architectures", None) or [])
    for fam in FAMILIES.values():
        if any(a in fam.architectures for a in archs):
            return fam
    # Configs built in code (tests, from_config) may lack `architectures`: fall back to model_type.
    mt = getattr(config, "model_type", None)
    if not archs:
        for fam in FAMILIES.values():
            if mt == fam.model_type:
                return fam
    raise PrunekitError(
        f"unsupported architecture {archs or mt!r}: prunekit supports "
        f"{', '.join(supported_architectures())}. Pick a model of one of these families."
    )


def get_module(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def window_in_config_only(config, fam: Family) -> bool:
    """Mistral states its window in `sliding_window` alone; Llama's layers (which both shipped per-layer
    layouts build on) and vLLM's DeciLM attention only honour windows listed in `layer_types`, as Qwen2
    lists them. Such a model can only be exported in its stock class, so with uniform shapes."""
    return fam.name == "llama" and bool(getattr(config, "sliding_window", None))
