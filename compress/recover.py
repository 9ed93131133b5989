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
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from prunekit.errors import PrunekitError
from prunekit.families import Family, get_module

CURVE_POINTS = 100  # the loss curve in the manifest is averaged down to at most this many points


# Logits held per forward: sequences per forward are as many of a step's as keep one fp32 logits tensor under
# this many elements (1 GB). Bigger forwards run bigger matmuls (faster per token); a huge vocabulary gets fewer.
LOGITS_BUDGET = 2**28


@dataclass(frozen=True)
class RecoverSettings:
    lr: float | None = None  # CompressConfig.recover_lr; None: auto_lr(steps), where the choice is measured
    batch: int = 4  # sequences per optimiser step
    micro: int | None = None  # sequences per forward (gradients accumulate); None: as LOGITS_BUDGET allows
    warmup: float = 0.1  # share of the steps with a linear warm-up; cosine decay to 0 after it
    min_warmup: int = 4  # ...but at least this many steps (or half the run): 10% of a short run is under one step
    clip: float = 1.0
    checks: int = 10  # held-out KL measurements over the run (and one before it)
    rise: float = 0.2  # a held-out KL this much above the starting one means training went wrong...
    backoff: float = 4.0  # ...then the best state comes back and the learning rate is divided by this
    max_backoffs: int = 3
    compile: bool | None = None  # torch.compile each decoder layer and the loss; None: when the run is long enough


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


# Steps from which compiling pays: it costs about 20 s once (2-core Xeon, the default model) and then makes a
# step about twice as fast (docs/results/compress-recovery-speed.md).
COMPILE_FROM_STEPS = 24


class Compiled:
    """torch.compile on every decoder layer of the student and the teacher, and on the loss, for the
    training steps only (`on()`): inductor fuses the norms, rotary, SiLU and the loss's passes over the
    vocabulary, which run one memory pass per operation in eager mode. Layers of one shape share one compiled
    graph. Any failure to compile (no C++ compiler, an unsupported model) falls back to eager, said once."""

    def __init__(self, models, fam: Family, enabled: bool, log):
        self.log, self.failed = log, not enabled
        self.layers, self.impls, self.loss = [], [], kl_to_teacher
        if enabled:
            try:  # what nn.Module.compile does, once per layer: on() switches them on and off
                self.layers = [m for model in models for m in get_module(model, fam.layers)]
                self.impls = [torch.compile(m._call_impl, dynamic=False) for m in self.layers]
                self.loss = torch.compile(kl_to_teacher, dynamic=False)
            except Exception as e:  # noqa: BLE001 (torch.compile refuses some Pythons and builds outright)
                self.fall_back(e)

    @contextmanager
    def on(self):
        if self.failed:
            yield kl_to_teacher
            return
        try:
            for m, impl in zip(self.layers, self.impls):
                m._compiled_call_impl = impl  # nn.Module.compile's own switch
            yield self.loss
        finally:
            for m in self.layers:
                m._compiled_call_impl = None  # eager again

    def fall_back(self, e: BaseException) -> None:
        self.failed = True
        first = (str(e).splitlines() or [""])[0][:200]
        self.log(
            f"recover: torch.compile failed ({type(e).__name__}: {first}); training runs eager (about half the speed)"
        )


def adamw(params, lr: float) -> torch.optim.AdamW:
    """AdamW with its fused kernel (one pass over each parameter: the optimiser took 0.19 s of a 2.7 s step
    on a 2-core Xeon with the multi-tensor one, 0.10 s fused); fused=None would pick the multi-tensor one."""
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0, fused=True)


# The peak learning rate that suits a run depends on its length (20% of the default model, uniform, the guard's
# held-out KL and the held-out perplexities of docs/results/compress-levers.md): at 16 and 32 steps 1.5e-4 beats
# 4e-4 on every held-out column (4e-4 overshoots in the warm-up: the guard kept step 2 of 16, or backed off at
# step 8 of 32), at 96 steps 4e-4 beats 1.5e-4 on every column. Between, log-linear in steps (at 64 steps its
# 2.8e-4 measured within 0.5% of 4e-4 and 1.4% ahead of 1.5e-4).
AUTO_LR = ((32, 1.5e-4), (96, 4e-4))


def auto_lr(steps: int) -> float:
    """The default peak learning rate of a recovery of `steps` optimiser steps (AUTO_LR)."""
    (s0, lr0), (s1, lr1) = AUTO_LR
    if steps <= s0:
        return lr0
    if steps >= s1:
        return lr1
    return lr0 * (lr1 / lr0) ** ((math.log(steps) - math.log(s0)) / (math.log(s1) - math.log(s0)))


def warmup_steps(steps: int, s: RecoverSettings) -> int:
    return max(1, min(max(round(steps * s.warmup), s.min_warmup), steps // 2))


def schedule(step: int, steps: int, warm: int) -> float:
    """The learning rate's factor at `step`: linear warm-up over `warm` steps, then cosine to 0."""
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def curve(losses: list[float], points: int = CURVE_POINTS) -> list[float]:
    """Averages of consecutive steps, at most `points` of them (the first and last steps stay visible)."""
    if len(losses) <= points:
        return [round(x, 4) for x in losses]
    edges = [round(i * len(losses) / points) for i in range(points + 1)]
    return [round(sum(losses[a:b]) / (b - a), 4) for a, b in zip(edges, edges[1:])]


class HeldOut:
    """The teacher's next-token log-probabilities on a few sequences the student never trains on (from the
    calibration pool, not the evaluation text), stored once in bf16; `kl(student)` is the student's KL from
    them, what the guard in `recover` watches."""

    def __init__(self, teacher, seqs: torch.Tensor, autocast: bool, device):
        self.seqs, self.autocast, self.device = seqs, autocast, device
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            self.logp = [
                F.log_softmax(teacher(input_ids=x[None].to(device), use_cache=False).logits.float(), -1).bfloat16()
                for x in seqs
            ]

    def kl(self, student) -> float:
        """The mean KL, in eval mode (what training's mode would add, dropout, is not what the guard judges);
        inf where it is not finite, so that divergence to NaN counts as a rise."""
        total, was_training = 0.0, student.training
        student.eval()
        try:
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                for x, t in zip(self.seqs, self.logp):
                    s = F.log_softmax(student(input_ids=x[None].to(self.device), use_cache=False).logits.float(), -1)
                    total += F.kl_div(s.flatten(0, 1), t.float().flatten(0, 1), log_target=True, reduction="batchmean")
        finally:
            student.train(was_training)
        v = float(total) / len(self.seqs)
        return v if math.isfinite(v) else math.inf


def copy_all(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    """The best state kept, or put back: tensor by tensor, across devices."""
    with torch.no_grad():
        for d, t in zip(dst, src):
            d.copy_(t)


def train_step(student, teacher, batch, micro: int, device, autocast: bool, opt, fast: Compiled) -> float:
    """One optimiser step's forwards and backwards (gradients accumulated over micro-batches); returns the
    step's mean KL. Full batches run compiled (one shape, one graph); a short last batch runs eager."""
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for tries in (0, 1):
        compiled = len(batch) % micro == 0 and not fast.failed
        try:
            with fast.on() if compiled else nullcontext(kl_to_teacher) as loss_fn:
                for mb in batch.split(micro):
                    mb = mb.to(device)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                        with torch.no_grad():
                            t_logits = teacher(input_ids=mb, use_cache=False).logits
                        loss = loss_fn(student(input_ids=mb, use_cache=False).logits, t_logits)
                    (loss * len(mb) / len(batch)).backward()
                    total += loss.item() * len(mb) / len(batch)
            return total
        except Exception as e:  # noqa: BLE001 (compile errors come in many types; eager then runs the step)
            if not compiled or tries:
                raise
            fast.fall_back(e)
            opt.zero_grad(set_to_none=True)
            total = 0.0
    return total


def recover(
    student,
    teacher,
    fam: Family,
    seqs: torch.Tensor,
    s: RecoverSettings,
    heldout: torch.Tensor | None = None,
    desc: str = "recover",
    log=None,
) -> dict:
    """Train `student` in place toward `teacher` on `seqs` (n, seq_len), one pass; returns the record.

    It never leaves the student worse than it found it, as measured on `heldout` sequences (not trained on;
    default: the first quarter of `seqs`, at most 4): their KL is measured before training and `s.checks` times
    during it, the best state is kept, a rise of `s.rise` over the starting KL restores the best state and
    divides the learning rate by `s.backoff` (a rate too high for this model: the default one took a 0.5B
    Qwen2 from 0.39 to 2.45 in one step; the normal wobble of a warm-up peak is under 10%), and the run ends on
    the best state seen, the starting one included: then it says so, and the record's `kept` is False."""
    log = log or (lambda m: print(m, file=sys.stderr))
    if heldout is None:
        n_val = min(4, max(1, len(seqs) // 4))
        heldout, seqs = seqs[:n_val], seqs[n_val:] if len(seqs) > n_val else seqs
    autocast = student.dtype == torch.bfloat16
    device = next(student.parameters()).device
    params = trainable(student, fam)
    flags = [(p, p.requires_grad) for p in student.parameters()]
    ids = {id(p) for p in params}
    was_training = student.training
    micro = s.micro or max(1, min(s.batch, LOGITS_BUDGET // (seqs.shape[1] * student.config.vocab_size)))
    steps = math.ceil(len(seqs) / s.batch)
    lr = s.lr if s.lr is not None else auto_lr(steps)
    warm = warmup_steps(steps, s)
    every = max(1, math.ceil(steps / max(1, s.checks)))
    losses: list[float] = []
    t0 = time.time()
    teacher.eval()
    val = HeldOut(teacher, heldout, autocast, device)
    with fp32_params(student):
        for p, _ in flags:
            p.requires_grad_(id(p) in ids)
        kl0 = val.kl(student)
        # The best state: one copy of the trainable weights, on the host (a GPU keeps its memory for training).
        best = {"kl": kl0, "step": 0, "state": [p.detach().to("cpu", copy=True) for p in params]}
        checks, backoffs, scale, v = [(0, round(kl0, 5))], [], 1.0, kl0
        compile_ = s.compile if s.compile is not None else steps >= COMPILE_FROM_STEPS
        fast = Compiled([student, teacher], fam, compile_, log)
        opt = adamw(params, lr)
        student.train()
        try:
            bar = tqdm(range(steps), desc=desc, unit="step")
            for step in bar:
                for g in opt.param_groups:
                    g["lr"] = lr * scale * schedule(step, steps, warm)
                batch = seqs[step * s.batch : (step + 1) * s.batch]
                total = train_step(student, teacher, batch, micro, device, autocast, opt, fast)
                torch.nn.utils.clip_grad_norm_(params, s.clip)
                opt.step()
                losses.append(total)
                if (step + 1) % every and step + 1 < steps:
                    bar.set_postfix(kl=f"{total:.3f}")
                    continue
                v = val.kl(student)
                checks.append((step + 1, round(v, 5)))
                bar.set_postfix(kl=f"{total:.3f}", heldout=f"{v:.3f}")
                if v < best["kl"]:
                    best.update(kl=v, step=step + 1)
                    copy_all(best["state"], params)
                elif v > kl0 * (1 + s.rise) and len(backoffs) < s.max_backoffs and step + 1 < steps:
                    # Training went the wrong way: back to the best state, on a smaller learning rate.
                    scale /= s.backoff
                    backoffs.append({"step": step + 1, "heldout_kl": round(v, 5), "lr": lr * scale})
                    log(
                        f"{desc}: held-out KL rose to {v:.4f} (from {kl0:.4f}) at step {step + 1}; the best "
                        f"state is back and the learning rate is now {lr * scale:.3g}"
                    )
                    copy_all(params, best["state"])
                    opt = adamw(params, lr * scale)
            if not v <= best["kl"]:  # end on the best state seen (a NaN is not <=)
                copy_all(params, best["state"])
        finally:
            opt.zero_grad(set_to_none=True)
            for p, flag in flags:
                p.requires_grad_(flag)
            student.train(was_training)
    kept = best["step"] > 0
    if not kept:
        log(
            f"{desc}: WARNING: training never beat the pruned model's held-out KL ({kl0:.4f}); the pre-recovery "
            "weights are kept. Try a smaller --recover-lr."
        )
    seconds = time.time() - t0
    tokens = int(seqs.numel())
    return {
        "tokens": tokens,
        "sequences": len(seqs),
        "seq_len": int(seqs.shape[1]),
        "steps": steps,
        "batch": s.batch,
        "micro": micro,
        "compiled": not fast.failed,
        "lr": lr,
        "lr_rule": "given" if s.lr is not None else f"auto for {steps} steps (compress/recover.py AUTO_LR)",
        "warmup_steps": warm,
        "schedule": "linear warm-up, cosine to 0",
        "loss": "KL(dense || pruned), full vocabulary",
        "trains": "decoder layers and final norm",
        "precision": "bf16 autocast, fp32 weights" if autocast else "fp32",
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
        "kl_first": round(losses[0], 4),
        "kl_last": round(losses[-1], 4),
        "kl_curve": curve(losses),
        "heldout": {
            "sequences": len(heldout),
            "kl_before": round(kl0, 5),
            "kl_after": round(best["kl"], 5),
            "best_step": best["step"],
            "checks": checks,
            "backoffs": backoffs,
        },
        "kept": kept,
    }


HELDOUT_SEQUENCES = 4  # sequences of the calibration pool the recovery watches and never trains on
# Tokens a recovery sequence holds unless --recover-seq-len says otherwise, where it divides the mix's length: the
# default mix's 512-token sequences cut in two train 1.35x faster end to end (CPU attention's backward grows with
# the length) for the same quality (docs/results/compress-levers.md).
RECOVER_PIECE = 256


def recovery_data(mix, tokenizer, s, domains: tuple[str, ...] = ()) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The sequences a CompressConfig's recovery trains on (s.recover_tokens, rounded up to whole
    sequences of the mix's length, from its calibration pools), the few it watches its held-out KL on
    (from the same pools, never trained on), and their description for the record. Built before the cut,
    so that a mix that cannot supply them fails before minutes of work."""
    from .data import recovery_set

    piece = s.recover_seq_len or (RECOVER_PIECE if mix.seq_len % RECOVER_PIECE == 0 else mix.seq_len)
    if mix.seq_len % piece:
        raise PrunekitError(
            f"--recover-seq-len {piece} does not divide the mix's sequence length {mix.seq_len}: pick a divisor "
            f"of it (e.g. {max(1, mix.seq_len // 2)}), or leave the flag out ({RECOVER_PIECE} where that divides "
            "it, else whole sequences)."
        )
    n = math.ceil(s.recover_tokens / mix.seq_len)
    seqs, counts = recovery_set(mix, tokenizer, n + HELDOUT_SEQUENCES, domains)
    return (
        seqs[HELDOUT_SEQUENCES:].reshape(-1, piece),  # the held-out KL stays measured on whole sequences
        seqs[:HELDOUT_SEQUENCES],
        {
            "mix": mix.name,
            "pool": "calibration (never held-out text)",
            "seed": mix.seed + 1,
            "sequences": counts,  # drawn per domain, the held-out ones among them
            "heldout_sequences": HELDOUT_SEQUENCES,
        },
    )


def recover_after_cut(
    student, teacher, fam: Family, data: tuple[torch.Tensor, torch.Tensor, dict], s, log=None
) -> dict:
    """The recovery a CompressConfig asks for, on `data` from recovery_data; returns the manifest record."""
    seqs, heldout, meta = data
    # A step holds recover_batch sequences' worth of tokens, whatever the pieces' length.
    settings = RecoverSettings(lr=s.recover_lr, batch=s.recover_batch * (heldout.shape[1] // seqs.shape[1]))
    rec = recover(student, teacher, fam, seqs, settings, heldout=heldout, log=log)
    rec["data"] = meta
    return rec
