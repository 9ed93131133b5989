"""Recovery by distillation (`--recover-tokens`): after the cut, train the pruned model to match the dense
model's next-token distribution on calibration-pool text (never held-out text).

The architecture does not change: only the decoder layers and the final norm train. The embeddings (tied
to the LM head in most small models) stay as they are: the cut did not touch them, and they are a large
share of a small model's parameters that a few thousand steps would only disturb. Weights are kept in
fp32 while training; the matmuls run in bf16 under autocast only where the CPU has native bf16 (AMX,
AVX512-BF16) or on a GPU, as the rest of prunekit computes.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from prunekit.families import Family, get_module

CURVE_POINTS = 100  # the loss curve in the manifest is averaged down to at most this many points


@dataclass(frozen=True)
class RecoverSettings:
    lr: float = 1.5e-4
    batch: int = 4  # sequences per optimiser step
    micro: int = 1  # sequences per forward (gradients accumulate): bounds the logits' memory
    warmup: float = 0.1  # share of the steps with a linear warm-up; cosine decay to 0 after it
    clip: float = 1.0


@contextmanager
def fp32_params(model):
    """Parameters in fp32 for the duration, then back to their own dtypes. Parameters only: module.float()
    would also round-trip float buffers such as RoPE's inv_freq, which a bf16 model keeps in fp32, and
    leave them in bf16 afterwards."""
    old = [(p, p.dtype) for p in model.parameters()]
    for p, _ in old:
        p.data = p.data.float()
    try:
        yield
    finally:
        for p, dtype in old:
            p.data = p.data.to(dtype)


def trainable(model, fam: Family) -> list[torch.nn.Parameter]:
    layers = get_module(model, fam.layers)
    return [p for m in (layers, get_module(model, fam.final_norm)) for p in m.parameters()]


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher || student), full vocabulary, in fp32."""
    v = student_logits.shape[-1]
    s = F.log_softmax(student_logits.float().reshape(-1, v), dim=-1)
    t = F.log_softmax(teacher_logits.float().reshape(-1, v), dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def schedule(step: int, steps: int, warmup: float) -> float:
    w = max(1, round(steps * warmup))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, steps - w)))


def curve(losses: list[float], points: int = CURVE_POINTS) -> list[float]:
    """Averages of consecutive steps, at most `points` of them (the first and last steps stay visible)."""
    if len(losses) <= points:
        return [round(x, 4) for x in losses]
    edges = [round(i * len(losses) / points) for i in range(points + 1)]
    return [round(sum(losses[a:b]) / (b - a), 4) for a, b in zip(edges, edges[1:])]


def recover(student, teacher, fam: Family, seqs: torch.Tensor, s: RecoverSettings, desc: str = "recover") -> dict:
    """Train `student` in place toward `teacher` on `seqs` (n, seq_len), one pass; returns the record."""
    autocast = student.dtype == torch.bfloat16
    device = next(student.parameters()).device
    params = trainable(student, fam)
    flags = [(p, p.requires_grad) for p in student.parameters()]
    ids = {id(p) for p in params}
    was_training = student.training
    losses: list[float] = []
    t0 = time.time()
    with fp32_params(student):
        for p, _ in flags:
            p.requires_grad_(id(p) in ids)
        opt = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, 0.95), weight_decay=0.0)
        steps = math.ceil(len(seqs) / s.batch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: schedule(i, steps, s.warmup))
        student.train()
        teacher.eval()
        try:
            bar = tqdm(range(steps), desc=desc, unit="step")
            for step in bar:
                batch = seqs[step * s.batch : (step + 1) * s.batch]
                opt.zero_grad(set_to_none=True)
                total = 0.0
                for mb in batch.split(s.micro):
                    mb = mb.to(device)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                        with torch.no_grad():
                            t_logits = teacher(input_ids=mb, use_cache=False).logits
                        loss = kl_to_teacher(student(input_ids=mb, use_cache=False).logits, t_logits)
                    (loss * len(mb) / len(batch)).backward()
                    total += loss.item() * len(mb) / len(batch)
                torch.nn.utils.clip_grad_norm_(params, s.clip)
                opt.step()
                sched.step()
                losses.append(total)
                bar.set_postfix(kl=f"{total:.3f}")
        finally:
            opt.zero_grad(set_to_none=True)
            for p, flag in flags:
                p.requires_grad_(flag)
            student.train(was_training)
    seconds = time.time() - t0
    tokens = int(seqs.numel())
    return {
        "tokens": tokens,
        "sequences": len(seqs),
        "seq_len": int(seqs.shape[1]),
        "steps": steps,
        "batch": s.batch,
        "lr": s.lr,
        "warmup": s.warmup,
        "schedule": "linear warm-up, cosine to 0",
        "loss": "KL(dense || pruned), full vocabulary",
        "trains": "decoder layers and final norm",
        "precision": "bf16 autocast, fp32 weights" if autocast else "fp32",
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
        "kl_first": round(losses[0], 4),
        "kl_last": round(losses[-1], 4),
        "kl_curve": curve(losses),
    }


def recovery_data(mix, tokenizer, s, domains: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict]:
    """The sequences a CompressConfig's recovery trains on (s.recover_tokens, rounded up to whole
    sequences of the mix's length, from its calibration pools) and their description for the record.
    Built before the cut, so that a mix that cannot supply them fails before minutes of work."""
    from .data import recovery_set

    seqs, counts = recovery_set(mix, tokenizer, math.ceil(s.recover_tokens / mix.seq_len), domains)
    return seqs, {
        "mix": mix.name,
        "pool": "calibration (never held-out text)",
        "seed": mix.seed + 1,
        "sequences": counts,
    }


def recover_after_cut(student, teacher, fam: Family, data: tuple[torch.Tensor, dict], s) -> dict:
    """The recovery a CompressConfig asks for, on `data` from recovery_data; returns the manifest record."""
    seqs, meta = data
    rec = recover(student, teacher, fam, seqs, RecoverSettings(lr=s.recover_lr, batch=s.recover_batch))
    rec["data"] = meta
    return rec
