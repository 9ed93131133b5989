"""Greedy decoding of token-id prompts in vLLM's offline engine, run as its own process.

`prunekit verify` calls this in a subprocess: vLLM starts workers with spawn (so the caller needs a
__main__ guard), holds its KV cache for the life of the process, and sets global state that a
long-lived test process should not inherit.

    python -m prunekit.export.vllm_run REQUEST.json RESULT.json
REQUEST: {model, dtype, prompts: [[ids]], tokens, trust_remote_code, max_model_len, kv_cache_gib, logprobs}
RESULT:  {tokens: [[ids]], first_logits: [{id: raw logit}], model_class, load_s, generate_s, versions}
"""

from __future__ import annotations

import json
import sys
import time

from prunekit.runtimes import vllm_engine, vllm_generate


def main(request_path: str, result_path: str) -> None:
    with open(request_path) as f:
        req = json.load(f)
    t0 = time.time()
    k = req.get("logprobs", 20)
    llm = vllm_engine(
        req["model"],
        req.get("dtype", "float32"),
        req.get("max_model_len", 512),
        req.get("trust_remote_code", False),
        req.get("kv_cache_gib", 1),
        logprobs_mode=req.get("logprobs_mode", "raw_logits"),
        max_logprobs=k,
    )
    t1 = time.time()
    outs = vllm_generate(llm, req["prompts"], req["tokens"], logprobs=k)
    t2 = time.time()
    import vllm

    result = {
        "tokens": [list(o.outputs[0].token_ids) for o in outs],
        "first_logits": [{str(t): lp.logprob for t, lp in o.outputs[0].logprobs[0].items()} for o in outs],
        # The class vLLM resolved: its own (LlamaForCausalLM, DeciLMForCausalLM) or the generic Transformers backend.
        "model_class": getattr(llm.model_config, "architecture", "?"),
        "load_s": round(t1 - t0, 2),
        "generate_s": round(t2 - t1, 3),
        "versions": {"vllm": getattr(vllm, "__version__", "?")},
    }
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
