"""Check our zero-shot scorer (bench/zeroshot.py) against lm-eval 0.4.13 itself, choice by choice.

lm-eval runs in its own venv (its dependencies are not ours), in a subprocess, on a task YAML written
here: lm-eval's own arc_easy/arc_challenge config with the field names of the local jsonl our loader
reads, so both sides score the same strings without the hub. Our scorer runs in this process. Prints
acc/acc_norm of both, the docs whose predicted choice differs and the largest per-choice log-likelihood
difference (fp32 batching noise is ~1e-5).

    make lmeval-check    # or: python -m prunekit.bench.lmeval_check --artifact DENSE_HF_DIR --limit 200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prunekit.env import child_env, set_threads

# [hf] brings accelerate and peft, which lm-eval's hf model imports.
INSTALL = (
    'python3 -m venv .venv-lmeval && .venv-lmeval/bin/pip install "lm-eval[hf]==0.4.13" '
    "torch==2.13.0 transformers==5.19.0 (or: make lmeval-check)"
)
FILES = {"arc_easy": "eval/arc/arc_easy_test.jsonl", "arc_challenge": "eval/arc/arc_challenge_test.jsonl"}

# lm-eval's tasks/arc/arc_easy.yaml, with the local file's fields: question.stem (was question),
# question.choices[].text/.label (was choices.text/.label). doc_to_choice renders a list's repr, which
# lm-eval reads back with ast.literal_eval, as it does for "{{choices.text}}".
YAML = """task: {task}_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question.stem}}}}\\nAnswer:"
doc_to_target: "{{{{(question.choices | map(attribute='label') | list).index(answerKey)}}}}"
doc_to_choice: "{{{{question.choices | map(attribute='text') | list}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def run_lmeval(
    python: str, artifact: Path, task: str, path: Path, limit: int, batch_size: int, threads: int, tmp: Path
) -> tuple[str, dict, list[list[float]], list[list[tuple[str, str]]]]:
    """lm-eval's version, its metrics, and per doc (in file order) its choice log-likelihoods and
    (context, continuation) pairs."""
    if not Path(python).is_file():
        sys.exit(f"no lm-eval python at {python}; install lm-eval 0.4.13 in its own venv:\n  {INSTALL}")
    ver = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('lm_eval'))"], capture_output=True, text=True
    )
    if ver.returncode:
        sys.exit(f"{python} has no lm-eval ({ver.stderr.strip().splitlines()[-1]}); install it with:\n  {INSTALL}")
    (tmp / "tasks").mkdir()
    (tmp / "tasks" / f"{task}_local.yaml").write_text(YAML.format(task=task, path=path))
    cmd = [
        python,
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={artifact},dtype=float32",
        "--tasks",
        f"{task}_local",
        "--include_path",
        str(tmp / "tasks"),
        "--limit",
        str(limit),
        "--batch_size",
        str(batch_size),
        "--device",
        "cpu",
        "--log_samples",
        "--output_path",
        str(tmp / "out"),
    ]
    print("$ " + " ".join(cmd), file=sys.stderr)
    # Offline: the task reads a local file and the model is a local folder; nothing should reach the hub.
    env = child_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"lm-eval failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(next((tmp / "out").rglob("results_*.json")).read_text())["results"][f"{task}_local"]
    samples = sorted(
        (json.loads(ln) for ln in next((tmp / "out").rglob("samples_*.jsonl")).read_text().splitlines()),
        key=lambda s: s["doc_id"],
    )
    # filtered_resps holds [str(loglik), str(is_greedy)] per choice.
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    args = [[(a["arg_0"], a["arg_1"]) for a in s["arguments"].values()] for s in samples]
    return ver.stdout.strip(), {"acc": res["acc,none"], "acc_norm": res["acc_norm,none"]}, lls, args


def run_ours(artifact: Path, docs, batch_size: int) -> tuple[dict, list[list[float]]]:
    import torch
    from prunekit.bench.zeroshot import encode_pair, loglikelihoods, metrics
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(artifact)
    model = AutoModelForCausalLM.from_pretrained(artifact, dtype=torch.float32).eval()
    # The same two calls bench's evaluate() makes, kept apart so the per-choice scores can be compared.
    pairs = [encode_pair(tok, c, x) for d in docs for c, x in zip(d.contexts, d.continuations)]
    flat = loglikelihoods(model, pairs, batch_size)
    m = metrics(docs, flat)
    lls, k = [], 0
    for d in docs:
        lls.append(flat[k : k + len(d.continuations)])
        k += len(d.continuations)
    return {"acc": m["acc"], "acc_norm": m["acc_norm"]}, lls


def argmax(xs):
    return max(range(len(xs)), key=xs.__getitem__)


def main(argv=None) -> None:
    from prunekit.env import data_root

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lmeval-python", default=".venv-lmeval/bin/python")
    ap.add_argument("--artifact", type=Path, required=True, help="an HF-format model folder")
    ap.add_argument("--task", choices=sorted(FILES), default="arc_easy")
    ap.add_argument("--limit", type=int, default=200, help="the first N docs of the file")
    ap.add_argument("--data", type=Path, default=data_root())
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="largest per-choice log-likelihood difference")
    a = ap.parse_args(argv)
    if a.data is None:
        sys.exit("no data folder: pass --data or set PRUNEKIT_DATA")

    from prunekit.bench.zeroshot import TASKS

    set_threads(a.threads)
    artifact = a.artifact.resolve()
    docs = TASKS[a.task](a.data)[: a.limit]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        ver, theirs, their_ll, their_args = run_lmeval(
            a.lmeval_python,
            artifact,
            a.task,
            (a.data / FILES[a.task]).resolve(),
            a.limit,
            a.batch_size,
            a.threads,
            Path(tmp),
        )
        t_lm = time.time() - t0
    # Both sides must have scored the same (context, continuation) strings, or the comparison means nothing.
    ours_args = [list(zip(d.contexts, d.continuations)) for d in docs]
    if ours_args != their_args:
        sys.exit("lm-eval and prunekit scored different strings: the task YAML does not match our loader")
    t0 = time.time()
    ours, our_ll = run_ours(artifact, docs, a.batch_size)
    t_ours = time.time() - t0

    def lens(d):  # acc_norm divides by the choice's length without the " " delimiter, as lm-eval does
        return [max(len(x.lstrip(" ")), 1) for x in d.continuations]

    diff_acc = sum(argmax(o) != argmax(t) for o, t in zip(our_ll, their_ll))
    diff_norm = sum(
        argmax([s / n for s, n in zip(o, lens(d))]) != argmax([s / n for s, n in zip(t, lens(d))])
        for o, t, d in zip(our_ll, their_ll, docs)
    )
    max_d = max(abs(x - y) for o, t in zip(our_ll, their_ll) for x, y in zip(o, t))
    print(f"{a.task}, first {len(docs)} docs, {artifact.name}, fp32, batch {a.batch_size}, lm-eval {ver}\n")
    print("| | lm-eval | prunekit |\n|---|---:|---:|")
    print(f"| acc | {theirs['acc']:.4f} | {ours['acc']:.4f} |")
    print(f"| acc_norm | {theirs['acc_norm']:.4f} | {ours['acc_norm']:.4f} |")
    print(f"| docs with a different choice (acc / acc_norm) | {diff_acc} / {diff_norm} of {len(docs)} | |")
    print(f"| max abs Δ log-likelihood per choice | {max_d:.2e} | |")
    print(f"| wall time (s, incl. model load) | {t_lm:.0f} | {t_ours:.0f} |")
    if diff_acc or diff_norm or max_d > a.tolerance or any(abs(theirs[k] - ours[k]) > 1e-9 for k in theirs):
        sys.exit(f"FAIL: prunekit's scorer disagrees with lm-eval (tolerance {a.tolerance})")
    print("\nPASS")


if __name__ == "__main__":
    main()
