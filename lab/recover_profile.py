"""Where a recovery step's time goes, on the default model and its cut: the step as it ran before (one sequence
per forward), with the whole step in one forward, compiled (what `prunekit compress --recover-tokens` runs
for 24 steps or more), with fused AdamW, and on pieces of 256 tokens (--recover-seq-len 256). Synthetic token
ids, 2,048 tokens a step, the compute dtype of the machine.

    .venv/bin/python lab/recover_profile.py CUT_CHECKPOINT [--threads 2] [--steps 4] [--ops]

Figures in docs/results/compress-recovery-speed.md.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
from prunekit.compress.recover import adamw, fp32_params, kl_to_teacher, trainable
from torch.profiler import ProfilerActivity, profile

from prunekit.env import cpu_text, set_threads
from prunekit.loading import load_model


def timed_steps(student, teacher, fam, ids, micro: int, steps: int, loss_fn=kl_to_teacher, fused=False) -> dict:
    """Seconds per step of each part (teacher forward, student forward, loss, backward, optimiser)."""
    params = trainable(student, fam)
    for p in student.parameters():
        p.requires_grad_(False)
    parts: dict[str, float] = {}
    autocast = student.dtype == torch.bfloat16
    with fp32_params(student):
        for p in params:
            p.requires_grad_(True)
        opt = adamw(params, 1e-6) if fused else torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.95))
        student.train()
        for step in range(steps + 1):  # the first step warms up (and compiles): not counted
            t = {"teacher": 0.0, "student": 0.0, "loss": 0.0, "backward": 0.0}
            s0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            for mb in ids.split(micro):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        tl = teacher(input_ids=mb, use_cache=False).logits
                    t1 = time.perf_counter()
                    sl = student(input_ids=mb, use_cache=False).logits
                    t2 = time.perf_counter()
                    loss = loss_fn(sl, tl)
                t3 = time.perf_counter()
                (loss * len(mb) / len(ids)).backward()
                t4 = time.perf_counter()
                for k, a, b in (("teacher", t0, t1), ("student", t1, t2), ("loss", t2, t3), ("backward", t3, t4)):
                    t[k] += b - a
            t5 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            t["optimiser"] = time.perf_counter() - t5
            t["step"] = time.perf_counter() - s0
            if step:
                for k, v in t.items():
                    parts[k] = parts.get(k, 0.0) + v / steps
    for p in params:
        p.requires_grad_(False)
    return parts


def op_table(student, teacher, fam, ids, loss_fn) -> str:
    """torch's profiler table of one whole step's forwards and backward (after one unprofiled pass, which
    compiles whatever this context still needs)."""
    params = trainable(student, fam)
    autocast = student.dtype == torch.bfloat16  # read before fp32_params makes the weights fp32
    with fp32_params(student):
        for p in params:
            p.requires_grad_(True)
        for prof_on in (False, True):
            with profile(activities=[ProfilerActivity.CPU]) if prof_on else nullcontext() as prof:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    with torch.no_grad():
                        tl = teacher(input_ids=ids, use_cache=False).logits
                    loss = loss_fn(student(input_ids=ids, use_cache=False).logits, tl)
                loss.backward()
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument(
        "--ops", action="store_true", help="also torch's profiler tables of the whole step, eager and compiled"
    )
    a = ap.parse_args()
    set_threads(a.threads)
    student, fam, _ = load_model(a.checkpoint)
    teacher, _, _ = load_model("default")
    ids = torch.randint(0, student.config.vocab_size, (4, 512), generator=torch.Generator().manual_seed(0))
    print(f"{cpu_text()}, {a.threads} threads, {student.dtype}; 2,048 tokens a step, mean of {a.steps} steps")
    print("| step | teacher fwd | student fwd | loss | backward | optimiser | s/step | tokens/s |\n|---|" + "---|" * 7)
    tables = []
    rows = [
        ("one sequence per forward (before)", 1, False, False, 512),
        ("whole step in one forward", 4, False, False, 512),
        ("compiled layers and loss", 4, True, False, 512),
        ("compiled, fused AdamW", 4, True, True, 512),
        ("compiled, fused AdamW, 8 x 256 (now)", 8, True, True, 256),
    ]
    compiled_loss = None
    for name, micro, compiled, fused, seq_len in rows:
        if compiled and compiled_loss is None:
            for m in (student, teacher):
                for layer in m.model.layers:
                    layer.compile(dynamic=False)
            compiled_loss = torch.compile(kl_to_teacher, dynamic=False)
        loss_fn = compiled_loss if compiled else kl_to_teacher
        t = timed_steps(student, teacher, fam, ids.reshape(-1, seq_len), micro, a.steps, loss_fn, fused)
        print(
            f"| {name} | "
            + " | ".join(f"{t[k]:.2f}" for k in ("teacher", "student", "loss", "backward", "optimiser", "step"))
            + f" | {ids.numel() / t['step']:.0f} |",
            flush=True,
        )
        if a.ops and micro > 1 and (not compiled or seq_len == 256):  # eager, and the compiled step of now
            tables.append((name, op_table(student, teacher, fam, ids.reshape(-1, seq_len), loss_fn)))
    for name, table in tables:
        print(f"\n{name}:\n{table}")


if __name__ == "__main__":
    main()
