"""Greedy decoding of token-id prompts in vLLM's offline engine, run as its own process.

`prunekit verify` and `bench` call this in a subprocess: vLLM starts workers with spawn (so the
caller needs a __main__ guard), holds its KV cache for the life of the process, and sets global
state that a long-lived test or bench process should not inherit.

    python -m prunekit.export.vllm_run REQUEST.json RESULT.json
REQUEST: {model, dtype, prompts: [[ids]], tokens, trust_remote_code, max_model_len, kv_cache_gib, logprobs}
RESULT:  {tokens: [[ids]], first_logits: [{id: raw logit}], load_s, generate_s, versions}
"""
from __future__ import annotations

import json
import sys
import time


def main(request_path: str, result_path: str) -> None:
    req = json.loads(open(request_path).read())
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.time()
    llm = LLM(model=req["model"], dtype=req.get("dtype", "float32"), max_model_len=req.get("max_model_len", 512),
              trust_remote_code=req.get("trust_remote_code", False), enforce_eager=req.get("enforce_eager", True),
              # vLLM on CPU fails without an explicit KV cache size (it misreads free memory).
              kv_cache_memory_bytes=int(req.get("kv_cache_gib", 1) * 2**30),
              logprobs_mode="raw_logits", max_logprobs=req.get("logprobs", 20), seed=0)
    t1 = time.time()
    # ignore_eos keeps decoding without touching the logits (min_tokens would mask EOS and change argmax).
    params = SamplingParams(temperature=0.0, max_tokens=req["tokens"], ignore_eos=True, logprobs=req.get("logprobs", 20))
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in req["prompts"]], params, use_tqdm=False)
    t2 = time.time()
    import vllm
    result = {
        "tokens": [list(o.outputs[0].token_ids) for o in outs],
        "first_logits": [{str(t): lp.logprob for t, lp in o.outputs[0].logprobs[0].items()} for o in outs],
        "load_s": round(t1 - t0, 2), "generate_s": round(t2 - t1, 3),
        "versions": {"vllm": getattr(vllm, "__version__", "?")},
    }
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
