"""The DeciLM / Nemotron-NAS layout (`config.block_configs`) for Llama- and Qwen2-style layers of their own
MLP width (the format also holds KV heads per layer; prunekit writes the same heads in every layer): vLLM runs
it with its own DeciLMForCausalLM, with its native kernels; transformers
runs it with the classes below.

Shipped inside prunekit artifacts of that layout and loaded with trust_remote_code: neither transformers nor
vLLM ships a config class for `model_type: nemotron-nas`. vLLM's DeciLM code reads each block by attribute
(`block.ffn.intermediate_size`, `block.attention.n_heads_in_group`); the query-head count is global there.
Layer i is the stock decoder layer built from a copy of the config with that layer's widths.
Its sha256 is recorded in prunekit.json: `prunekit serve` refuses an artifact whose copy was changed.
"""

import copy

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import LlamaConfig, Qwen2Config
from transformers.models.llama import modeling_llama as llama
from transformers.models.qwen2 import modeling_qwen2 as qwen2


class _Attrs(dict):
    """One block_configs entry: serialises as a dict, reads by attribute as vLLM's DeciLM code does."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def _blocks(raw):
    return [_Attrs({k: _Attrs(v) if isinstance(v, dict) else v for k, v in dict(b).items()}) for b in raw or []]


def _post_init(config):
    # transformers also builds a default config (no blocks) to diff against: blocks are checked by the model.
    config.block_configs = _blocks(getattr(config, "block_configs", None))


@strict(accept_kwargs=True)  # validate() collects validators per class: the override needs it
class DeciLlamaConfig(LlamaConfig):
    model_type = "nemotron-nas"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _post_init(self)

    def validate_architecture(self):
        pass  # head_dim is explicit: the head count need not divide hidden_size


@strict(accept_kwargs=True)  # validate() collects validators per class: the override needs it
class DeciQwen2Config(Qwen2Config):
    model_type = "nemotron-nas"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _post_init(self)

    def validate_architecture(self):
        pass


def _layer_config(config, i):
    block = config.block_configs[i]
    c = copy.copy(config)
    c.intermediate_size = block.ffn.intermediate_size
    c.num_key_value_heads = config.num_attention_heads // block.attention.n_heads_in_group
    return c


def _build_layers(model, layer_cls, config):
    if len(config.block_configs) != config.num_hidden_layers:
        raise ValueError(
            f"block_configs lists {len(config.block_configs)} blocks for {config.num_hidden_layers} layers"
        )
    if any(b.attention.no_op or b.ffn.no_op for b in config.block_configs):
        raise ValueError("no-op blocks are not supported by this code (prunekit removes whole layers instead)")
    model.layers = nn.ModuleList(layer_cls(_layer_config(config, i), i) for i in range(config.num_hidden_layers))


class DeciLlamaModel(llama.LlamaModel):
    config_class = DeciLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        _build_layers(self, llama.LlamaDecoderLayer, config)
        self.post_init()


class DeciLlamaForCausalLM(llama.LlamaForCausalLM):
    config_class = DeciLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = DeciLlamaModel(config)
        self.post_init()


class DeciQwen2Model(qwen2.Qwen2Model):
    config_class = DeciQwen2Config

    def __init__(self, config):
        super().__init__(config)
        _build_layers(self, qwen2.Qwen2DecoderLayer, config)
        self.post_init()


class DeciQwen2ForCausalLM(qwen2.Qwen2ForCausalLM):
    config_class = DeciQwen2Config

    def __init__(self, config):
        super().__init__(config)
        self.model = DeciQwen2Model(config)
        self.post_init()
