"""bench: the zero-shot scorer against a direct computation (the whole quick
run on tiny artifacts is in test_shared_data.py: it needs the data sets)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer
from torch.nn import functional as F

pytestmark = pytest.mark.unit


@torch.no_grad()
def direct_loglik(model, ctx: list[int], cont: list[int]) -> float:
    ids = torch.tensor([ctx + cont])
    logp = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


def test_batched_loglikelihoods_match_one_by_one():
    from prunekit.bench.zeroshot import encode_pair, loglikelihoods

    model, tok = tiny_model("llama", vocab_size=320), tiny_tokenizer()
    pairs = [
        encode_pair(tok, c, x)
        for c, x in (
            ("Question: why?\nAnswer:", " because"),
            ("A", " b c d e f"),
            ("The cat sat on the ", "mat."),
            ("x" * 40, " y"),
            ("Is it", "?"),
            ("Is it", "!"),
        )
    ]
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
    norm = (
        sum(
            int(max(range(2), key=lambda j: ll[2 * i + j] / len(d.continuations[j].strip())) == d.gold)
            for i, d in enumerate(docs)
        )
        / 2
    )
    assert {k: res[k] for k in ("n", "acc", "acc_norm")} == {"n": 2, "acc": acc, "acc_norm": norm}
    assert sum(res["correct"]) / 2 == acc and sum(res["correct_norm"]) / 2 == norm


@pytest.mark.unit
def test_standard_errors_and_paired_differences():
    """lm-eval's standard error of a mean (sample stddev over sqrt n); the paired difference is far tighter
    than the accuracies' own errors when two models agree on most documents, and the report calls a
    difference within two standard errors a tie."""
    import math

    from prunekit.bench.report import quality_tables
    from prunekit.bench.zeroshot import mean_diff, paired_diff, stderr, verdict

    assert stderr([1, 0, 1, 1]) == pytest.approx(0.25) and math.isnan(stderr([1]))
    dense = [1] * 300 + [0] * 200
    pruned = [0] * 30 + [1] * 270 + [0] * 200  # 30 of dense's right answers lost, nothing else changes
    d = paired_diff({"correct": dense}, {"correct": pruned})
    assert d["diff"] == pytest.approx(-0.06) and d["stderr"] < stderr(dense) / 2
    assert verdict(d) == "worse" and verdict({"diff": -0.01, "stderr": 0.02}) == "tie"
    assert paired_diff({"correct": dense}, {"correct": pruned[:10]}) is None  # not the same documents
    m = mean_diff([d, {"diff": 0.0, "stderr": d["stderr"]}])
    assert m["diff"] == pytest.approx(-0.03) and m["stderr"] == pytest.approx(d["stderr"] / 2**0.5)

    def q(correct):
        return {
            "wikitext2": {"ppl": 10.0, "tokens": 100, "seq_len": 512, "stride": 512},
            "domains": {"web": 9.0},
            "zeroshot": {
                "piqa": {
                    "n": len(correct),
                    "acc": sum(correct) / len(correct),
                    "acc_stderr": stderr(correct),
                    "correct": correct,
                }
            },
            "mean_acc": sum(correct) / len(correct),
        }

    res = {
        "preset": {"task_limit": None},
        "models": {
            "dense": {"params": 10, "quality": q(dense)},
            "20%": {"params": 8, "quality": q(pruned)},
            "same": {"params": 9, "quality": q(dense[:-1] + [1])},
        },
    }
    text = "\n".join(quality_tables(res))
    assert "| 20% | -0.060 ±0.011 worse | **-0.060 ±0.011 worse** |" in text
    assert "| same | +0.002 ±0.002 tie |" in text and "0.600 ±0.022" in text


def test_result_folders_name_the_cpu_matmul_class(monkeypatch):
    """Two VMs both called "AMD EPYC" (one AVX2-only, fp32; one AVX512-BF16, bf16) must not share a result
    folder name: their figures differ by several times."""
    from prunekit.bench.timing import machine_slug

    import prunekit.env as env

    epyc = {"cpu": "AMD EPYC", "cores": 2, "gpu": None}
    assert machine_slug({**epyc, "isa": ""}) == "epyc-2c"
    assert machine_slug({**epyc, "isa": "avx512bf16"}) == "epyc-avx512bf16-2c"
    assert machine_slug({**epyc, "isa": "amx", "gpu": "NVIDIA H200"}) == "h200-2c"
    for flags, isa in (
        ("fpu avx2 fma", ""),
        ("avx2 avx512f avx512_bf16", "avx512bf16"),
        ("avx512_bf16 amx_bf16 amx_tile", "amx"),
    ):
        monkeypatch.setattr(env, "_cpuinfo", lambda f=flags: "flags\t\t: " + f)
        assert env.cpu_isa() == isa
    assert env.cpu_text("AMD EPYC", "avx512bf16") == "AMD EPYC (AVX512-BF16)"
    assert env.cpu_text("AMD EPYC", "") == "AMD EPYC (no native bf16)"
