"""Shared fixtures: tiny random-weight models of every supported family, and the default model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests never reach a hub: everything is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(int(os.environ.get("PRUNEKIT_TEST_THREADS", "2")))

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=128)

# One tiny config per family; test_families_complete fails if a family has no entry here.
FAMILY_CONFIGS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=True)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=False)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(tie_word_embeddings=True)),
}


def tiny_model(family: str, seed: int = 0, **overrides):
    import transformers

    cfg_cls, model_cls, extra = FAMILY_CONFIGS[family]
    cfg = getattr(transformers, cfg_cls)(**{**TINY, **extra, **overrides})
    cfg.architectures = [model_cls]
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).float().eval()
    # Random init leaves the norms at 1 and the biases at 0: perturb them so slicing bugs show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(params=sorted(FAMILY_CONFIGS))
def family_name(request):
    return request.param


@pytest.fixture
def tiny_dir(tmp_path, family_name):
    """A saved tiny checkpoint (safetensors + config) of each family."""
    model = tiny_model(family_name)
    out = tmp_path / f"tiny-{family_name}"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from prunekit.default_model import ensure_default_model
    return ensure_default_model(verbose=False)


@pytest.fixture(scope="session")
def data_root() -> Path:
    from prunekit import env
    root = env.data_root()
    if root is None:
        pytest.skip("no local data folder (../shared/data or $PRUNEKIT_DATA)")
    return root


@pytest.fixture(autouse=True)
def no_stray_files():
    """Tests write under tmp_path only: fail a test that leaves files in the working tree."""
    root = Path(__file__).resolve().parent.parent
    before = {p for p in root.iterdir()}
    yield
    after = {p for p in root.iterdir()}
    assert after <= before, f"test left files in the repo: {sorted(map(str, after - before))}"


def tiny_tokenizer():
    """A byte-level tokenizer (256 bytes + <|endoftext|>) for tiny models: no downloads, vocab < 320."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return tok


def tiny_checkpoint(out: Path, family: str, widths=None, groups=None, seed: int = 0) -> Path:
    """A saved tiny checkpoint with tokenizer, pruned per layer when widths/groups are given.

    head_dim 32 (vLLM's CPU attention has no kernel for 16) and heads * head_dim == hidden_size."""
    from prunekit.checkpoint import save_model, save_tokenizer
    from prunekit.compress import surgery as S
    from prunekit.compress.plan import Dims
    from prunekit.families import family_for_config, get_module

    model = tiny_model(family, seed=seed, vocab_size=320, hidden_size=128, head_dim=32, intermediate_size=256)
    if widths or groups:
        fam = family_for_config(model.config)
        dims = Dims.of(model.config, fam)
        for i, layer in enumerate(get_module(model, fam.layers)):
            S.apply_layer(layer, fam, dims, list(range(widths[i])) if widths else None,
                          list(range(groups[i])) if groups else None)
        S.sync_config(model, fam)
    save_model(model, out)
    save_tokenizer(tiny_tokenizer(), out)
    return out
