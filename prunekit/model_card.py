"""The README.md written into an artifact by `prunekit artifacts`: what was pruned, how to serve it,
its held-out quality next to the dense model's, and the verify table."""
from __future__ import annotations

from pathlib import Path

from .artifact import Manifest


def readme(art: Path, a: Manifest, c: Manifest | None, report: dict) -> str:
    p = (c.params if c else None) or {}
    q = ((c.quality if c else None) or {}).get("heldout_ppl", {})
    dense, pruned = q.get("dense", {}), q.get("pruned", {})
    rows = "\n".join(f"| {d} | {dense[d]:.2f} | {pruned[d]:.2f} |" for d in dense if d in pruned)
    vr = "\n".join(f"| {k} | {'yes' if r['loads'] else 'no'} | {r.get('max_abs_logit_diff', float('nan')):.2e} | "
                   f"{r.get('greedy_match', '-')} |" for k, r in report["runtimes"].items())
    code = ", ".join(a.shipped_code or {})
    trc = f" (it ships {code}; prunekit checks its sha256 before passing --trust-remote-code)" if code else ""
    st = (c.settings if c else None) or {}
    r = (c.recovery if c else None) or {}
    between = " in equal shares after each round's cut" if r.get("at") == "rounds" else ""
    rec = (f" Then distilled from the dense model on {r['tokens']:,} calibration-mix tokens{between} ({r['steps']} "
           "steps; the pruned column is after it)." if r else "")
    ratio = 1 - p["pruned_total"] / p["dense_total"] if p.get("dense_total") else float("nan")
    return f"""# {a.name}

{c.source_model if c else '?'} with {ratio:.1%} of its parameters removed by prunekit
({p.get('dense_total', 0):,} -> {p.get('pruned_total', 0):,}); method `{st.get('method', '?')}`,
{st.get('rounds', '?')} calibration rounds on the multi-domain mix.{rec} Layout: **{a.layout}**{trc}.

## Serve

```bash
prunekit serve {art}            # vLLM OpenAI server on 127.0.0.1:8000
prunekit load http://127.0.0.1:8000 --requests 32 --concurrency 4
```

Or any stock runtime: `AutoModelForCausalLM.from_pretrained("{art}")`, `vllm` with `--model {art}`,
onnxruntime with `onnx/model.onnx` (KV cache as inputs/outputs, optimum's names).

## Quality (held-out perplexity, text disjoint from calibration)

| domain | dense | pruned |
|---|---|---|
{rows}

## Verified ({report['prompts']} prompts x {report['new_tokens']} greedy tokens against PyTorch)

| runtime | loads | max abs logit diff | greedy match |
|---|---|---|---|
{vr}
"""
