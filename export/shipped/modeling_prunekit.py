"""Decoder layers of their own width: Llama, Qwen2 and Qwen3 with `config.per_layer_config`.

Shipped inside prunekit per-layer artifacts and loaded with trust_remote_code (transformers and vLLM's
Transformers backend). transformers reads `per_layer_config[i]` into a per-layer config, but the stock
models build every layer from the global config; these classes build layer i from its own config
(MLP width, query heads, KV heads). Everything else is the stock implementation.
Its sha256 is recorded in prunekit.json: `prunekit serve` refuses an artifact whose copy was changed.
"""

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import LlamaConfig, Qwen2Config, Qwen3Config
from transformers.models.llama import modeling_llama as llama
from transformers.models.qwen2 import modeling_qwen2 as qwen2
from transformers.models.qwen3 import modeling_qwen3 as qwen3


# head_dim is explicit, so a head count need not divide hidden_size (Llama's stock check demands it);
# the weight shapes are checked per layer when the checkpoint loads.
@strict(accept_kwargs=True)  # validate() collects validators per class: the override needs it
class PrunekitLlamaConfig(LlamaConfig):
    def validate_architecture(self):
        pass


@strict(accept_kwargs=True)  # validate() collects validators per class: the override needs it
class PrunekitQwen2Config(Qwen2Config):
    def validate_architecture(self):
        pass


@strict(accept_kwargs=True)  # validate() collects validators per class: the override needs it
class PrunekitQwen3Config(Qwen3Config):
    def validate_architecture(self):
        pass


class _GlobalAccess:
    """Let the stock constructor read the global (largest) widths; the layers are rebuilt after."""

    def __init__(self, config):
        self.config = config

    def __enter__(self):
        self.config.allow_global_per_layer_attribute_access = True

    def __exit__(self, *exc):
        self.config.allow_global_per_layer_attribute_access = False


def _build_layers(model, layer_cls, config):
    model.layers = nn.ModuleList(layer_cls(config.per_layer_config[i], i) for i in range(config.num_hidden_layers))


class PrunekitLlamaModel(llama.LlamaModel):
    config_class = PrunekitLlamaConfig

    def __init__(self, config):
        with _GlobalAccess(config):
            super().__init__(config)
        _build_layers(self, llama.LlamaDecoderLayer, config)
        self.post_init()


class PrunekitLlamaForCausalLM(llama.LlamaForCausalLM):
    config_class = PrunekitLlamaConfig

    def __init__(self, config):
        with _GlobalAccess(config):
            super().__init__(config)
        self.model = PrunekitLlamaModel(config)
        self.post_init()


class PrunekitQwen2Model(qwen2.Qwen2Model):
    config_class = PrunekitQwen2Config

    def __init__(self, config):
        with _GlobalAccess(config):
            super().__init__(config)
        _build_layers(self, qwen2.Qwen2DecoderLayer, config)
        self.post_init()


class PrunekitQwen2ForCausalLM(qwen2.Qwen2ForCausalLM):
    config_class = PrunekitQwen2Config

    def __init__(self, config):
        with _GlobalAccess(config):
            super().__init__(config)
        self.model = PrunekitQwen2Model(config)
        self.post_init()


class PrunekitQwen3Model(qwen3.Qwen3Model):
    config_class = PrunekitQwen3Config

    def __init__(self, config):
        with _GlobalAccess(config):
            super().__init__(config)
        _build_layers(self, qwen3.Qwen3DecoderLayer, config)
        self.post_init()


class PrunekitQwen3ForCausalLM(qwen3.Qwen3ForCausalLM):
    config_class = PrunekitQwen3Config

    def __init__(self, config):
        with _GlobalAccess(config):
            super().__init__(config)
        self.model = PrunekitQwen3Model(config)
        self.post_init()
