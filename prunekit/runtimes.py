"""The stock runtimes as export's verify and bench's speed runs drive them: greedy decoding loops
with a KV cache (PyTorch, onnxruntime) and the one place that builds a vLLM engine.

Each greedy loop takes a batch of equal-length prompts (token ids), decodes `n` tokens with no stopping on EOS
(so every runtime is compared over the same number of steps) and returns (tokens [B, n], first-step
logits [B, vocab]). bench times the same loops; their step generators (torch_steps, OrtLM.steps, vllm_steps)
let it interleave two models' steps. onnxruntime-genai runs its own loop (genai_greedy) on the folder export --genai
writes.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def torch_steps(model, prompts: list[list[int]], device: str = "cpu"):
    """Greedy decoding one step per next(): the first runs the prompts' prefill, each later one a single-token
    forward with the KV cache; yields (next tokens [B, 1], fp32 logits [B, vocab]). A generator, so that bench
    can interleave the steps of two models (speed_worker.run_paired)."""
    from transformers import DynamicCache

    ids = torch.tensor(prompts, device=device)
    b, t = ids.shape
    cache = DynamicCache(config=model.config)
    mask = torch.ones(b, t, dtype=torch.long, device=device)
    step_ids, pos = ids, torch.arange(t, device=device).expand(b, t)
    for i in itertools.count():
        logits = (
            model(input_ids=step_ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
            .logits[:, -1]
            .float()
        )
        nxt = logits.argmax(-1, keepdim=True)
        yield nxt, logits
        step_ids, pos = nxt, torch.full((b, 1), t + i, device=device)
        mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.long, device=device)], 1)


def torch_greedy(model, prompts: list[list[int]], n: int, device: str = "cpu"):
    out, first = [], None
    for _, (nxt, logits) in zip(range(n), torch_steps(model, prompts, device)):
        if first is None:
            first = logits.clone()
        out.append(nxt)
    return torch.cat(out, 1).tolist(), first.cpu().numpy()


class OrtLM:
    """An ONNX KV-cache graph in onnxruntime, with the session built once. Either cache contract export writes: a
    preallocated buffer written in place (export's default, --onnx-cache inplace: a graph with a cache_position
    input), whose present outputs are bound to the past inputs' memory so that no step copies the cache, or past
    in and a longer present out (--onnx-cache concat, the graph optimum runs)."""

    GROW = 64  # buffer slots added when an in-place cache is full (attention reads the whole buffer: keep it tight)

    def __init__(self, path: str | Path, threads: int | None = None, optimize: bool = True, spin: bool = False):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        # Idle pool threads spin after each run unless told not to: alone in a process that gains a little
        # (lab/ort_spinning.py: 74.0 vs 71.5 tok/s at batch 1 on the 2-core Xeon), but beside a second session (the
        # bench's pairs) it halved both. So off unless the caller runs this session alone (`spin`).
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.past = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.inplace = any(i.name == "cache_position" for i in self.session.get_inputs())

    def empty_cache(self, batch: int) -> dict:
        # Shapes are [batch, kv_heads, past, head_dim]; kv_heads and head_dim are static in the graph.
        return {i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32) for i in self.past}

    def steps(self, prompts: list[list[int]], capacity: int | None = None):
        """As torch_steps: one session run per next(), yielding (next tokens [B, 1], logits [B, vocab]). `capacity`
        (prompt + new tokens, when known) sizes an in-place cache buffer once; without it the buffer grows."""
        if self.inplace:
            yield from self._buffer_steps(prompts, capacity)
            return
        ids = np.asarray(prompts, dtype=np.int64)
        b, t = ids.shape
        past = self.empty_cache(b)
        mask = np.ones((b, t), np.int64)
        step_ids, pos = ids, np.broadcast_to(np.arange(t, dtype=np.int64), (b, t))
        for i in itertools.count():
            res = self.session.run(
                None, {"input_ids": step_ids, "attention_mask": mask, "position_ids": np.ascontiguousarray(pos), **past}
            )
            logits = res[0][:, -1]
            nxt = logits.argmax(-1)[:, None].astype(np.int64)
            yield nxt, logits
            past = {p.name: r for p, r in zip(self.past, res[1:])}
            step_ids, pos = nxt, np.full((b, 1), t + i, np.int64)
            mask = np.concatenate([mask, np.ones((b, 1), np.int64)], 1)

    def _buffer_steps(self, prompts: list[list[int]], capacity: int | None):
        import onnxruntime as ort

        ids = np.asarray(prompts, dtype=np.int64)
        b, t = ids.shape
        cap = t + self.GROW if capacity is None else max(capacity, t)
        binding = self.session.io_binding()
        binding.bind_output("logits")  # bound first: get_outputs()[0]
        bufs: dict[str, np.ndarray] = {}
        mask = np.zeros((b, cap), np.int64)

        def bind(new_cap: int):
            # ortvalue_from_numpy shares the array's memory: onnxruntime writes each step into `bufs` in place.
            for i in self.past:
                old = bufs.get(i.name)
                bufs[i.name] = np.zeros((b, new_cap, i.shape[2]), np.float32)  # [batch, capacity, kv width]
                if old is not None:
                    bufs[i.name][:, : old.shape[1]] = old
                value = ort.OrtValue.ortvalue_from_numpy(bufs[i.name])
                binding.bind_ortvalue_input(i.name, value)
                binding.bind_ortvalue_output(i.name.replace("past_key_values.", "present."), value)

        bind(cap)
        filled, step_ids = 0, ids
        while True:
            new = step_ids.shape[1]
            if filled + new > cap:
                cap = filled + new + self.GROW
                mask = np.concatenate([mask, np.zeros((b, cap - mask.shape[1]), np.int64)], 1)
                bind(cap)
            mask[:, filled : filled + new] = 1
            feeds = {
                "input_ids": step_ids,
                "attention_mask": mask,
                "position_ids": np.tile(np.arange(filled, filled + new, dtype=np.int64), (b, 1)),
                "cache_position": np.full(b, filled, np.int64),
            }
            for name, arr in feeds.items():
                binding.bind_cpu_input(name, arr)
            binding.bind_output("logits")  # unallocated again: its shape changes after the prefill
            self.session.run_with_iobinding(binding)
            logits = binding.get_outputs()[0].numpy()[:, -1]
            nxt = logits.argmax(-1)[:, None].astype(np.int64)
            yield nxt, logits
            filled += new
            step_ids = nxt

    def greedy(self, prompts: list[list[int]], n: int):
        out, first = [], None
        for _, (nxt, logits) in zip(range(n), self.steps(prompts, capacity=len(prompts[0]) + n)):
            if first is None:
                first = logits.copy()
            out.append(nxt)
        return np.concatenate(out, 1).tolist(), first


def vllm_engine(
    model: str,
    dtype: str,
    max_model_len: int,
    trust_remote_code: bool = False,
    kv_cache_gib: float = 1.0,
    enforce_eager: bool = True,
    **kw,
):
    """vLLM's offline engine with the settings these machines need. Call it in a process of its own:
    vLLM spawns workers (the caller needs a __main__ guard) and holds its KV cache for the process's life."""
    from vllm import LLM

    return LLM(
        model=model,
        dtype=dtype,
        max_model_len=max_model_len,
        trust_remote_code=trust_remote_code,
        enforce_eager=enforce_eager,
        # vLLM on CPU fails without an explicit KV cache size (it misreads free memory).
        kv_cache_memory_bytes=int(kv_cache_gib * 2**30),
        seed=0,
        **kw,
    )


def vllm_generate(llm, prompts: list[list[int]], n: int, logprobs: int | None = None):
    """Greedy decoding of n tokens per token-id prompt; never stops at EOS (ignore_eos keeps decoding
    without touching the logits, where min_tokens would mask EOS and change the argmax)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, logprobs=logprobs)
    return llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)


def vllm_steps(llm, prompts: list[list[int]]):
    """As torch_steps for a vLLM engine, yielding (None, None): the first next() steps the engine until every
    prompt has its first token (the prefill), each later one runs one engine step (a token for every running
    request). The steps run when called only with the engine core in this process
    (VLLM_ENABLE_V1_MULTIPROCESSING=0 before the engine is built); a core in its own process runs ahead."""
    import uuid

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    eng = llm.llm_engine
    room = llm.model_config.max_model_len - max(len(p) for p in prompts)
    params = SamplingParams(temperature=0.0, max_tokens=room, ignore_eos=True)
    ids = [f"steps-{uuid.uuid4().hex}-{i}" for i in range(len(prompts))]
    for rid, p in zip(ids, prompts):
        eng.add_request(rid, TokensPrompt(prompt_token_ids=p), params)
    try:
        first = set()
        while len(first) < len(ids):
            first.update(o.request_id for o in eng.step())
        yield None, None
        while True:
            eng.step()
            yield None, None
    finally:
        eng.abort_request(ids)  # a generator closed early leaves no request running in the engine


def genai_model(folder: str | Path, threads: int | None):
    """An onnxruntime-genai model folder (export --genai) loaded for genai's own generator."""
    import json

    import onnxruntime_genai as og

    cfg = og.Config(str(folder))
    if threads:
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(cfg)


def genai_greedy(
    model, prompts: list[list[int]], n: int, stop_at_eos: bool = False
) -> tuple[list[list[int]], np.ndarray]:
    """Greedy tokens and the first-step logits: n tokens each (genai's min_length, which suppresses EOS: what the
    timings need), or with stop_at_eos, up to n, ending at the first EOS."""
    import onnxruntime_genai as og

    length = len(prompts[0]) + n
    params = og.GeneratorParams(model)
    opts = dict(max_length=length, do_sample=False, batch_size=len(prompts))
    params.set_search_options(**opts, **({} if stop_at_eos else {"min_length": length}))
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(prompts, dtype=np.int32))
    first = np.array(gen.get_logits()).reshape(len(prompts), -1)
    out: list[list[int]] = [[] for _ in prompts]
    while not gen.is_done():
        gen.generate_next_token()
        for row, t in zip(out, gen.get_next_tokens()):
            row.append(int(t))
    return out, first
