"""bench: the zero-shot scorer against a direct computation (the whole quick
run on tiny artifacts is in test_shared_data.py: it needs the data sets)."""
from __future__ import annotations


import pytest
import torch
from torch.nn import functional as F

from conftest import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.unit


@torch.no_grad()
def direct_loglik(model, ctx: list[int], cont: list[int]) -> float:
    ids = torch.tensor([ctx + cont])
    logp = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


def test_batched_loglikelihoods_match_one_by_one():
    from prunekit.bench.zeroshot import encode_pair, loglikelihoods

    model, tok = tiny_model("llama", vocab_size=320), tiny_tokenizer()
    pairs = [encode_pair(tok, c, x) for c, x in (("Question: why?\nAnswer:", " because"), ("A", " b c d e f"),
                                                 ("The cat sat on the ", "mat."), ("x" * 40, " y"),
                                                 ("Is it", "?"), ("Is it", "!"))]
    assert pairs[2][1][0] == tok(" ", add_special_tokens=False).input_ids[0]  # trailing space moved
    assert pairs[4][0] == pairs[5][0] and len(pairs[4][1]) == 1  # one input, two one-token continuations
    got = loglikelihoods(model, pairs, batch_size=3)
    assert got[4] != got[5]
    for (c, x), g in zip(pairs, got):
        assert g == pytest.approx(direct_loglik(model, c, x), abs=1e-4)


def test_loglikelihoods_truncate_and_split_shared_inputs_like_one_by_one():
    from prunekit.bench.zeroshot import loglikelihoods

    model = tiny_model("llama", vocab_size=320)
    # Same input tokens [5, 6, 7], split differently between context and continuation: one forward.
    pairs = [([5, 6], [7, 8]), ([5], [6, 7, 9]), (list(range(10, 50)), [60, 61])]
    got = loglikelihoods(model, pairs, batch_size=2)
    for (c, x), g in zip(pairs[:2], got):
        assert g == pytest.approx(direct_loglik(model, c, x), abs=1e-4)
    # Truncation keeps the last max_len + 1 tokens, as lm-eval does.
    short = loglikelihoods(model, pairs[2:], max_len=8)[0]
    assert short == pytest.approx(direct_loglik(model, pairs[2][0][-7:], pairs[2][1]), abs=1e-4)
    assert short != pytest.approx(got[2], abs=1e-4)


def test_acc_and_acc_norm_follow_lm_eval():
    from prunekit.bench.zeroshot import Doc, evaluate

    model, tok = tiny_model("qwen2", vocab_size=320), tiny_tokenizer()
    docs = [Doc(["Q"] * 2, [" a", " a much longer answer"], 0), Doc(["Q"] * 2, [" b", " bb"], 1)]
    res = evaluate(model, tok, docs)
    from prunekit.bench.zeroshot import encode_pair, loglikelihoods
    ll = loglikelihoods(model, [encode_pair(tok, c, x) for d in docs for c, x in zip(d.contexts, d.continuations)])
    acc = sum(int(max(range(2), key=lambda j: ll[2 * i + j]) == d.gold) for i, d in enumerate(docs)) / 2
    norm = sum(int(max(range(2), key=lambda j: ll[2 * i + j] / len(d.continuations[j].strip())) == d.gold)
               for i, d in enumerate(docs)) / 2
    assert res == {"n": 2, "acc": acc, "acc_norm": norm}
