"""The converted default model is a trained model, not random weights."""

import math

import pytest
import torch

pytestmark = pytest.mark.slow


def test_default_model_is_trained(default_model_dir, data_root):
    from prunekit.loading import load_model, load_tokenizer
    from prunekit.perplexity import perplexity

    model, fam, _ = load_model(default_model_dir)
    assert fam.name == "llama" and model.config.num_hidden_layers == 30
    assert model.config.tie_word_embeddings
    assert next(default_model_dir.glob("*.safetensors")).stat().st_size > 200e6  # bf16 135M
    tok = load_tokenizer(default_model_dir)
    text = (data_root / "perplexity" / "wikitext2_raw_test.txt").read_text()
    ids = tok(text[:6000], add_special_tokens=False)["input_ids"][:512]
    ppl = perplexity(model, torch.tensor([ids]))
    # Random weights over a 49,152-token vocabulary score about 49,152; the trained model about 15-30.
    assert 1 < ppl < 60, ppl
    assert math.isfinite(ppl)


def test_second_call_is_cached(default_model_dir):
    import time

    from prunekit.default_model import ensure_default_model

    t = time.time()
    assert ensure_default_model(verbose=False) == default_model_dir
    assert time.time() - t < 1.0
