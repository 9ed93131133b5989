"""One speed measurement in a fresh process: one runtime, one artifact (clean peak memory per run).

    python -m prunekit.bench.speed_worker REQUEST.json RESULT.json
REQUEST: {runtime: torch|onnxruntime|vllm, artifact, prompt_len, new_tokens, batch, threads, dtype, kv_cache_gib,
          [pair_with, pairs]}
RESULT:  {ttft_s, decode_tok_s_b1, decode_tok_s_batch, peak_rss_mb, gpu_peak_mb, load_s, ...}, or with pair_with
         (any runtime): {pairs: [{base: {decode_tok_s_b1, decode_tok_s_batch}, cut: {...}}, ...],
         peak_rss_mb, load_s}

Time to first token = a prefill of prompt_len tokens that returns one token (batch 1). Decode speed =
(new_tokens - 1) further tokens divided by the time beyond the first, at batch 1 and at `batch`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple


class Loaded(NamedTuple):
    """An artifact loaded in one runtime: a greedy loop, its step generator, the vocabulary size, load seconds."""

    generate: Callable  # generate(prompts, n)
    steps: Callable  # steps(prompts): an iterator, one decode step per next() (the first: the prefill)
    vocab: int
    load_s: float


def prompts(batch: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(100, min(vocab, 30000)) for _ in range(length)] for _ in range(batch)]


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def measure(generate, req: dict, vocab: int) -> dict:
    """generate(prompts, n) runs greedy decoding of n tokens; returns the three speed figures."""
    p1 = prompts(1, req["prompt_len"], vocab)
    pb = prompts(req["batch"], req["prompt_len"], vocab, seed=1)
    n = req["new_tokens"]
    generate(prompts(1, 8, vocab, seed=2), 2)  # warm-up: first-call allocations and lazy init
    ttft = min(timed(generate, p1, 1) for _ in range(2))
    t1 = timed(generate, p1, n)
    tb1, tbn = timed(generate, pb, 1), timed(generate, pb, n)
    return {
        "ttft_s": ttft,
        "decode_tok_s_b1": (n - 1) / max(t1 - ttft, 1e-9),
        "decode_tok_s_batch": req["batch"] * (n - 1) / max(tbn - tb1, 1e-9),
    }


def load_torch(req: dict, artifact: str):
    """(generate, vocabulary size, load seconds) of an artifact in PyTorch."""
    import torch
    from transformers import AutoModelForCausalLM

    from prunekit.runtimes import torch_greedy, torch_steps

    torch.set_num_threads(req["threads"])
    dev = req.get("device", "auto")
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev
    t = time.perf_counter()
    model = (
        AutoModelForCausalLM.from_pretrained(
            artifact, dtype=getattr(torch, req["dtype"]), trust_remote_code=req["trust_remote_code"]
        )
        .to(dev)
        .eval()
    )
    load = time.perf_counter() - t

    def gen(p, n):
        torch_greedy(model, p, n, device=dev)

    return Loaded(gen, lambda p: torch_steps(model, p, device=dev), model.config.vocab_size, load)


def load_onnxruntime(req: dict, artifact: str, spin: bool = False):
    """(generate, vocabulary size, load seconds) of an artifact's ONNX graph in onnxruntime; `spin` (a session
    alone in its process) keeps onnxruntime's default of spinning pool threads between runs."""
    from prunekit.runtimes import OrtLM

    t = time.perf_counter()
    lm = OrtLM(f"{artifact}/onnx/model.onnx", threads=req["threads"], spin=spin)
    load = time.perf_counter() - t
    return Loaded(lm.greedy, lm.steps, json.load(open(f"{artifact}/config.json"))["vocab_size"], load)


def run_genai(req: dict) -> dict:
    """An artifact's onnxruntime-genai folder (export --genai) in genai's own generator and cache. Solo only: genai's
    session spins its threads between runs (no option turns that off), which would slow a session paired with it."""
    from prunekit.artifact import read_manifest
    from prunekit.runtimes import genai_greedy, genai_model

    t = time.perf_counter()
    model = genai_model(Path(req["artifact"]) / read_manifest(req["artifact"]).genai["dir"], req["threads"])
    load = time.perf_counter() - t
    vocab = json.load(open(f"{req['artifact']}/config.json"))["vocab_size"]
    out = measure(lambda p, n: genai_greedy(model, p, n), req, vocab)
    out["load_s"] = load
    return out


def run_torch(req: dict) -> dict:
    import torch

    gen, _, vocab, load = load_torch(req, req["artifact"])
    out = measure(gen, req, vocab)
    out["load_s"] = load
    if torch.cuda.is_available() and req.get("device", "auto") != "cpu":
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_onnxruntime(req: dict) -> dict:
    # Alone in this process: onnxruntime's default spinning, as genai's session (run_genai) runs too.
    gen, _, vocab, load = load_onnxruntime(req, req["artifact"], spin=True)
    out = measure(gen, req, vocab)
    out["load_s"] = load
    return out


def interleaved(models: list[Loaded], prompts: list[list[int]], steps: int) -> list[float]:
    """Decode tok/s of each model over the same prompts, their steps interleaved: after both prefills (not
    timed), one decode step of each in turn, the order flipping every step (A B B A A B ...), each model on its
    own KV cache at the same length. Adjacent steps are a fraction of a second apart, so a change of the
    machine's speed hits both models alike."""
    its = [m.steps(prompts) for m in models]
    spent = [0.0] * len(its)
    try:
        for it in its:
            next(it)  # the prefill
        for k in range(steps):
            for j in range(len(its)) if k % 2 == 0 else reversed(range(len(its))):
                t = time.perf_counter()
                next(its[j])
                spent[j] += time.perf_counter() - t
    finally:
        for it in its:
            it.close()  # frees the KV cache (or ends the engine's requests) before the next block
    return [len(prompts) * steps / max(s, 1e-9) for s in spent]


def run_paired(req: dict) -> dict:
    """The baseline (req["pair_with"]) and the artifact loaded side by side in one process; req["pairs"] times,
    their decode at batch 1 and at req["batch"] timed step by step in turn (`interleaved`), new_tokens - 1
    steps each. On these VMs the machine's speed moves in phases of seconds to minutes (onnxruntime's batch-8
    decode of one session moved between 115 and 210 tok/s within 5 minutes,
    bench/results/2026-12-03-epyc-2c-ort-phases); whole timings back to back (a minute a pair at the 0.5B
    shape) still straddled them, single steps in turn do not."""
    if req["runtime"] == "vllm":
        # Both engines' cores in this process, so that a step runs when it is called (vllm_steps).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    loader = LOADERS[req["runtime"]]
    models = [loader(req, a) for a in (req["pair_with"], req["artifact"])]
    vocab = min(m.vocab for m in models)
    p1, pb = prompts(1, req["prompt_len"], vocab), prompts(req["batch"], req["prompt_len"], vocab, seed=1)
    for m in models:
        m.generate(prompts(1, 8, vocab, seed=2), 2)  # warm-up: first-call allocations and lazy init
    pairs = []
    for i in range(req["pairs"]):
        order = models if i % 2 == 0 else models[::-1]  # which model steps first alternates too
        got = {}
        for key, p in (("decode_tok_s_b1", p1), ("decode_tok_s_batch", pb)):
            speeds = interleaved(order, p, req["new_tokens"] - 1)
            for j, s in enumerate(speeds if i % 2 == 0 else speeds[::-1]):
                got.setdefault(j, {})[key] = s
        pairs.append({"base": got[0], "cut": got[1]})
    return {"pairs": pairs, "load_s": sum(m.load_s for m in models)}


def load_vllm(req: dict, artifact: str):
    """(generate, steps, vocabulary size, load seconds) of an artifact in a vLLM engine, and the engine."""
    from prunekit.runtimes import vllm_engine, vllm_generate, vllm_steps

    t = time.perf_counter()
    llm = vllm_engine(
        artifact,
        req["dtype"],
        req["prompt_len"] + req["new_tokens"] + 16,
        req["trust_remote_code"],
        req.get("kv_cache_gib", 1),
        req.get("enforce_eager", True),
    )
    load = time.perf_counter() - t
    vocab = json.load(open(f"{artifact}/config.json"))["vocab_size"]
    return Loaded(lambda p, n: vllm_generate(llm, p, n), lambda p: vllm_steps(llm, p), vocab, load), llm


LOADERS = {"torch": load_torch, "onnxruntime": load_onnxruntime, "vllm": lambda req, a: load_vllm(req, a)[0]}


def run_vllm(req: dict) -> dict:
    m, llm = load_vllm(req, req["artifact"])
    out = measure(m.generate, req, m.vocab)
    out["load_s"] = m.load_s
    out["model_class"] = getattr(llm.model_config, "architecture", "?")  # native class or Transformers backend
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu_peak_mb"] = torch.cuda.max_memory_reserved() / 2**20
    except Exception:
        pass
    return out


def tree_rss_mb(root: int) -> float:
    """Resident memory of a process and all its descendants (vLLM runs an engine core and workers).
    Not getrusage: on Linux ru_maxrss survives exec, so a child would report its parent's peak."""
    procs = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                status = (d / "status").read_text()
            except OSError:
                continue
            fields = dict(ln.split(":", 1) for ln in status.splitlines() if ":" in ln)
            procs[int(d.name)] = (int(fields.get("PPid", "0").strip()), int(fields.get("VmRSS", "0 kB").split()[0]))
    keep, total, grew = {root}, 0, True
    while grew:  # add children of kept processes until nothing changes
        grew = False
        for pid, (ppid, _) in procs.items():
            if ppid in keep and pid not in keep:
                keep.add(pid)
                grew = True
    for pid in keep:
        total += procs.get(pid, (0, 0))[1]
    return total / 1024


class PeakRss:
    """Samples tree_rss_mb every 0.1 s in a thread; .peak is the largest sum seen."""

    def __init__(self):
        self.peak, self._stop = 0.0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(os.getpid()))
            self._stop.wait(0.1)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return self.peak


def main(req_path: str, res_path: str) -> None:
    req = json.load(open(req_path))
    fn = (
        run_paired
        if req.get("pair_with")
        else {"torch": run_torch, "onnxruntime": run_onnxruntime, "onnxruntime-genai": run_genai, "vllm": run_vllm}[
            req["runtime"]
        ]
    )
    rss = PeakRss()
    out = fn(req)
    out["peak_rss_mb"] = rss.stop()
    json.dump(out, open(res_path, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
