"""Zero-shot multiple choice by log-likelihood, as lm-eval 0.4 defines acc and acc_norm.

Each task is a list of Docs (context, choices, gold). A choice's score is the summed log-likelihood of
its continuation tokens given the context; acc takes the argmax, acc_norm the argmax of the score
divided by the continuation's length in characters (lm-eval's acc_norm). Contexts and continuations
are split as lm-eval's _encode_pair does: trailing spaces of the context move to the continuation,
context + continuation is encoded as a whole and the continuation is what follows the context's tokens.
Prompts follow lm-eval's task YAMLs (piqa, hellaswag, arc_easy/arc_challenge, boolq, winogrande
(partial scoring: the options change the context, the continuation is shared), openbookqa).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F


@dataclass
class Doc:
    contexts: list[str]  # one per choice (winogrande) or the same context repeated
    continuations: list[str]  # what is scored, one per choice
    gold: int


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _mc(context: str, choices: list[str], gold: int) -> Doc:
    return Doc([context] * len(choices), [" " + c for c in choices], gold)


def piqa(root: Path) -> list[Doc]:
    labels = (root / "eval/piqa/piqa_valid-labels.lst").read_text().split()
    return [
        _mc(f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], int(g))
        for d, g in zip(_jsonl(root / "eval/piqa/piqa_valid.jsonl"), labels)
    ]


def hellaswag(root: Path) -> list[Doc]:
    return [_mc(d["query"], d["endings"], int(d["label"])) for d in _jsonl(root / "eval/hellaswag/hellaswag_val.jsonl")]


def _arc(path: Path) -> list[Doc]:
    docs = []
    for d in _jsonl(path):
        ch = d["question"]["choices"]
        docs.append(
            _mc(
                f"Question: {d['question']['stem']}\nAnswer:",
                [c["text"] for c in ch],
                [c["label"] for c in ch].index(d["answerKey"]),
            )
        )
    return docs


def arc_easy(root: Path) -> list[Doc]:
    return _arc(root / "eval/arc/arc_easy_test.jsonl")


def arc_challenge(root: Path) -> list[Doc]:
    return _arc(root / "eval/arc/arc_challenge_test.jsonl")


def boolq(root: Path) -> list[Doc]:
    return [
        _mc(
            f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:",
            ["no", "yes"],
            int(str(d["label"]).lower() == "true"),
        )
        for d in _jsonl(root / "eval/boolq/boolq_val_superglue.jsonl")
    ]


def winogrande(root: Path) -> list[Doc]:
    return [
        Doc(list(d["context_options"]), [" " + d["continuation"]] * 2, int(d["gold"]))
        for d in _jsonl(root / "eval/winogrande/winogrande_xl_dev.jsonl")
    ]


def openbookqa(root: Path) -> list[Doc]:
    return [
        _mc(d["query"], d["choices"], int(d["gold"])) for d in _jsonl(root / "eval/openbookqa/openbookqa_test.jsonl")
    ]


TASKS = {
    "piqa": piqa,
    "hellaswag": hellaswag,
    "arc_easy": arc_easy,
    "arc_challenge": arc_challenge,
    "boolq": boolq,
    "winogrande": winogrande,
    "openbookqa": openbookqa,
}
NORM = {"winogrande": False}  # lm-eval reports acc only for winogrande


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    n_sp = len(context) - len(context.rstrip())
    if n_sp:
        context, continuation = context[:-n_sp], context[-n_sp:] + continuation
    whole = tok(context + continuation, add_special_tokens=False).input_ids
    ctx = tok(context, add_special_tokens=False).input_ids
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def loglikelihoods(
    model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 8, max_len: int = 2048
) -> list[float]:
    """Summed log p(continuation | context) for each (context ids, continuation ids), batched by length.

    Two savings that leave every number as it was: requests with the same input tokens share one
    forward (a one-token continuation's input is just its context, so BoolQ's " no"/" yes" cost one
    pass, as in lm-eval), and the LM head and log-softmax run only on the positions that are scored
    (on a 49k vocabulary they cost as much as a third of the model)."""
    out = [0.0] * len(pairs)
    seqs = [(c + x)[-(max_len + 1) :] for c, x in pairs]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, q in enumerate(seqs):
        groups.setdefault(tuple(q[:-1]), []).append(i)
    keys = sorted(groups, key=len, reverse=True)
    for s in range(0, len(keys), batch_size):
        batch = keys[s : s + batch_size]
        width = len(batch[0])
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for r, k in enumerate(batch):
            ids[r, : len(k)] = torch.tensor(k)
            mask[r, : len(k)] = 1
        # Positions len(input) - n .. len(input) - 1 predict a continuation of n tokens.
        first = min(len(k) - max(len(pairs[i][1]) for i in groups[k]) for k in batch)
        keep = torch.arange(max(first, 0), width)
        dev = next(model.parameters()).device
        logits = model(
            input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False, logits_to_keep=keep.to(dev)
        ).logits
        # A model whose forward ignored logits_to_keep would misalign every score silently.
        assert logits.shape[1] == len(keep), f"{type(model).__name__} ignored logits_to_keep"
        logp = F.log_softmax(logits.float(), -1).cpu()
        for r, k in enumerate(batch):
            for i in groups[k]:
                n = min(len(pairs[i][1]), len(k))
                tgt = torch.tensor(seqs[i][-n:])
                lo = len(k) - n - int(keep[0])
                out[i] = float(logp[r, lo : lo + n].gather(-1, tgt[:, None]).sum())
    return out


def evaluate(model, tok, docs: list[Doc], batch_size: int = 8, norm: bool = True) -> dict:
    pairs = [encode_pair(tok, c, x) for d in docs for c, x in zip(d.contexts, d.continuations)]
    return metrics(docs, loglikelihoods(model, pairs, batch_size), norm)


def stderr(xs: list[float]) -> float:
    """Standard error of a mean as lm-eval computes it (mean_stderr: sample stddev, ddof 1, over sqrt n)."""
    n = len(xs)
    if n < 2:
        return float("nan")
    m = sum(xs) / n
    return (sum((x - m) ** 2 for x in xs) / (n - 1)) ** 0.5 / n**0.5


def metrics(docs: list[Doc], ll: list[float], norm: bool = True) -> dict:
    """acc / acc_norm from the flat per-choice log-likelihoods of `docs`, in order, each with its standard
    error, and per document whether it was right ("correct", "correct_norm": 0/1 in doc order) so that two
    models scored on the same documents can be compared pair by pair (paired_diff)."""
    right, right_norm = [], []
    k = 0
    for d in docs:
        scores = ll[k : k + len(d.continuations)]
        k += len(d.continuations)
        right.append(int(max(range(len(scores)), key=scores.__getitem__) == d.gold))
        # lm-eval divides by the length of the choice string, without the " " delimiter we prepend.
        normed = [s / max(len(x.lstrip(" ")), 1) for s, x in zip(scores, d.continuations)]
        right_norm.append(int(max(range(len(normed)), key=normed.__getitem__) == d.gold))
    n = max(len(docs), 1)
    res = {"n": len(docs), "acc": sum(right) / n, "acc_stderr": stderr(right), "correct": right}
    if norm:
        res.update(acc_norm=sum(right_norm) / n, acc_norm_stderr=stderr(right_norm), correct_norm=right_norm)
    return res


def paired_diff(a: dict, b: dict, key: str = "correct") -> dict | None:
    """Accuracy of b minus a on the same documents: the mean of the per-document differences and its standard
    error (the paired test: far tighter than the two accuracies' own errors when the models agree on most
    documents). None when either lacks per-document results or they scored different documents."""
    x, y = a.get(key), b.get(key)
    if not x or not y or len(x) != len(y):
        return None
    d = [float(j - i) for i, j in zip(x, y)]
    return {"n": len(d), "diff": sum(d) / len(d), "stderr": stderr(d)}


def mean_diff(diffs: list[dict]) -> dict:
    """The mean over tasks of paired differences, with its standard error (tasks are independent samples:
    the variances add)."""
    t = len(diffs)
    if not t:
        return {"diff": float("nan"), "stderr": float("nan"), "tasks": 0}
    return {
        "diff": sum(d["diff"] for d in diffs) / t,
        "stderr": sum(d["stderr"] ** 2 for d in diffs) ** 0.5 / t,
        "tasks": t,
    }


def verdict(d: dict) -> str:
    """A difference within two standard errors is a tie: it does not rank the two models."""
    if d["stderr"] != d["stderr"] or abs(d["diff"]) <= 2 * d["stderr"]:
        return "tie"
    return "worse" if d["diff"] < 0 else "better"
