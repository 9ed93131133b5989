"""Safe model loading: local dirs, hub ids, and every bad input named in the foundation issue."""

import json

import pytest
import torch
from conftest import ARCH_CONFIGS, FAMILY_ARCH, tiny_model

from prunekit.errors import PrunekitError
from prunekit.families import FAMILIES, supported_architectures
from prunekit.loading import load_model, resolve_source

pytestmark = pytest.mark.unit


def test_families_complete():
    """Every registered family has a tiny fixture, so every family is tested."""
    assert set(FAMILIES) == set(FAMILY_ARCH)
    assert all(FAMILY_ARCH[f] in FAMILIES[f].architectures for f in FAMILIES)


def test_every_architecture_has_a_tiny_model():
    """Registering an architecture without a tiny model fails here (export/verify run over ARCH_CONFIGS)."""
    assert sorted(ARCH_CONFIGS) == supported_architectures()
    for arch in ARCH_CONFIGS:
        assert tiny_model(arch).config.architectures == [arch]


def test_loads_each_family(tiny_dir, family_name):
    model, fam, _ = load_model(tiny_dir, dtype="float32")
    assert fam.name == family_name
    ref = tiny_model(family_name)
    ids = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits)


def test_missing_path(tmp_path):
    with pytest.raises(PrunekitError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_dir_without_config(tmp_path):
    with pytest.raises(PrunekitError, match="no config.json"):
        load_model(tmp_path)


def test_file_instead_of_dir(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(PrunekitError, match="is a file"):
        load_model(f)


def test_unsupported_architecture_lists_supported(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path)
    with pytest.raises(PrunekitError, match="unsupported architecture") as e:
        load_model(tmp_path)
    for arch in supported_architectures():
        assert arch in str(e.value)


def test_pickle_weights_refused_unless_allowed(tmp_path):
    model = tiny_model("llama")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(PrunekitError, match="pickle"):
        load_model(tmp_path)
    loaded, _, _ = load_model(tmp_path, dtype="float32", allow_pickle=True)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())


def test_no_weights(tmp_path):
    tiny_model("llama").config.save_pretrained(tmp_path)
    with pytest.raises(PrunekitError, match="no weights"):
        load_model(tmp_path)


def test_remote_code_needs_opt_in(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_x.XConfig"}
    cfg["model_type"] = "x-custom"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "configuration_x.py").write_text("raise RuntimeError('remote code ran')\n")
    with pytest.raises(PrunekitError, match="trust-remote-code"):
        load_model(tmp_path)


def test_hub_id_is_recognised_but_local_typos_are_not():
    assert resolve_source("HuggingFaceTB/SmolLM2-135M") == ("HuggingFaceTB/SmolLM2-135M", False)
    with pytest.raises(PrunekitError, match="does not exist"):
        resolve_source("./models/missing")
    with pytest.raises(PrunekitError, match="does not exist"):
        resolve_source("a/b/c")


def test_bad_dtype(tiny_dir):
    with pytest.raises(PrunekitError, match="unknown dtype"):
        load_model(tiny_dir, dtype="float8")
