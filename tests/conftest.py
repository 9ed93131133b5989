"""Shared fixtures: tiny random-weight models of every supported architecture, a tiny tokenizer and
calibration mix kept in the repo (unit tests need no real model and no shared data), and the default
model for the slow tier.

Tiers (every test has exactly one; `make test-fast` runs unit):
  unit         seconds; tiny models, the tiny tokenizer and mix, no vLLM, no ONNX export
  integration  tiny exported artifacts on the three runtimes (ONNX export, vLLM), the shared data sets
  slow         the real default model
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

# Tests never reach a hub: everything is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(int(os.environ.get("PRUNEKIT_TEST_THREADS", "2")))

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=256,
    max_position_embeddings=128,
)

# One tiny config per supported architecture name; test_every_architecture_has_a_tiny_model fails if
# a registered architecture has no entry here (and export/verify run over all of them).
ARCH_CONFIGS = {
    "LlamaForCausalLM": ("LlamaConfig", dict(tie_word_embeddings=True)),
    "MistralForCausalLM": ("MistralConfig", dict(tie_word_embeddings=False, sliding_window=None)),
    "Qwen2ForCausalLM": ("Qwen2Config", dict(tie_word_embeddings=False)),
    "Qwen3ForCausalLM": ("Qwen3Config", dict(tie_word_embeddings=True)),
}
# The first architecture of each family stands for it where a test is about the family.
FAMILY_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def pytest_collection_modifyitems(items):
    tiers = {"unit", "integration", "slow"}
    for item in items:
        marks = tiers & {m.name for m in item.iter_markers()}
        if len(marks) != 1:
            raise pytest.UsageError(
                f"{item.nodeid} needs exactly one tier marker of {sorted(tiers)}, has {sorted(marks)}"
            )


def tiny_model(arch: str, seed: int = 0, **overrides):
    """A tiny random model of an architecture name (or a family name: its first architecture)."""
    import transformers

    model_cls = FAMILY_ARCH.get(arch, arch)
    cfg_cls, extra = ARCH_CONFIGS[model_cls]
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


@pytest.fixture(params=sorted(FAMILY_ARCH))
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
        # CI lays out ../shared/data: a missing folder there is a broken setup, not a reason to skip.
        if os.environ.get("CI") == "true":
            pytest.fail("no local data folder (../shared/data or $PRUNEKIT_DATA) in CI")
        pytest.skip("no local data folder (../shared/data or $PRUNEKIT_DATA)")
    return root


@pytest.fixture(autouse=True, scope="session")
def eval_cache(tmp_path_factory) -> Path:
    """Tests never read or fill the user's cache of dense evaluations (compress.dense_eval): a folder of the
    session's own, which the CLI processes that tests start inherit."""
    path = tmp_path_factory.mktemp("dense-eval")
    old = os.environ.get("PRUNEKIT_EVAL_CACHE")
    os.environ["PRUNEKIT_EVAL_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("PRUNEKIT_EVAL_CACHE", None)
    else:
        os.environ["PRUNEKIT_EVAL_CACHE"] = old


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
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tok


def tiny_checkpoint(out: Path, family: str, widths=None, groups=None, seed: int = 0) -> Path:
    """A saved tiny checkpoint with tokenizer, pruned per layer when widths/groups are given;
    `family` is a family or an architecture name (see ARCH_CONFIGS);
    head_dim 32 (vLLM's CPU attention has no kernel for 16) and heads * head_dim == hidden_size."""
    from prunekit.compress import surgery as S
    from prunekit.compress.plan import Dims

    from prunekit.checkpoint import save_model, save_tokenizer
    from prunekit.families import family_for_config, get_module

    model = tiny_model(family, seed=seed, vocab_size=320, hidden_size=128, head_dim=32, intermediate_size=256)
    if widths or groups:
        fam = family_for_config(model.config)
        dims = Dims.of(model.config, fam)
        for i, layer in enumerate(get_module(model, fam.layers)):
            S.apply_layer(
                layer, fam, dims, list(range(widths[i])) if widths else None, list(range(groups[i])) if groups else None
            )
        S.sync_config(model, fam)
    save_model(model, out)
    save_tokenizer(tiny_tokenizer(), out)
    return out


# ---------------------------------------------------------------- a tiny calibration mix

WORDS = {
    "prose": "the a river city winter light old house road market song child morning letter garden "
    "window story stone bridge quiet long green small across under between after before".split(),
    "code": "def return if else for in range while import class self None True False print len "
    "x y i n value result items key + - * = == ( ) : [ ] ,".split(),
}


def tiny_mix(root: Path, records: int = 120, seq_len: int = 32, total: int = 8) -> Path:
    """A two-domain mix YAML over generated text files (deterministic; no shared data needed)."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    domains = {}
    for name, words in WORDS.items():
        with open(root / f"{name}.jsonl", "w") as f:
            for i in range(records):
                text = " ".join(rng.choice(words) for _ in range(rng.randint(12, 30)))
                f.write(json.dumps({"text": f"{i}: {text}"}) + "\n")
        domains[name] = {"source": f"{name}.jsonl", "template": "{text}", "weight": 1}
    spec = {
        "name": "tiny",
        "seq_len": seq_len,
        "seed": 0,
        "total_samples": total,
        "eval_samples": 2,
        "domains": domains,
    }
    (root / "mix.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root / "mix.yaml"


def tiny_src(out: Path, arch: str = "llama", **overrides) -> Path:
    """A tiny random checkpoint with the tiny tokenizer, ready for compress."""
    from prunekit.checkpoint import save_tokenizer

    model = tiny_model(arch, vocab_size=320, **overrides)
    model.save_pretrained(out)
    save_tokenizer(tiny_tokenizer(), out)
    return out


def tiny_compress_config(src: tuple[Path, Path], out, **kw):
    """A compress config for a tiny model and mix (`src`: their paths). The tiny model's embeddings dwarf its
    decoder, so targets are fractions of the decoder."""
    from prunekit.compress import CompressConfig

    model, mix = src
    base = dict(
        model=str(model),
        calib=str(mix),
        out=str(out),
        ratio=0.2,
        ratio_of="decoder",
        align=32,
        structures=("mlp", "heads"),
        tolerance=0.06,
        rounds=2,
        quick_eval=2,
        seed=0,
        dtype="float32",
    )
    return CompressConfig(**{**base, **kw})
