"""`prunekit artifacts` (= `make artifacts`, the CI job): compress -> export -> verify -> summary.

Into OUT/<name>/: the artifact (HF checkpoint, ONNX, prunekit.json, verify.json) and a README of
what was pruned, how to serve it and its measured quality. Each step is skipped when its complete
output is already there for the same inputs (a re-run resumes); anything partial is rebuilt
(every step writes atomically, so "complete" is simply "its manifest exists").
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .artifact import read_manifest
from .errors import PrunekitError


@dataclass
class Pipeline:
    model: str = "default"
    ratio: float = 0.2
    mode: str = "uniform"
    out: str = "artifacts"
    name: str | None = None
    rounds: int = 2
    threads: int | None = None
    runtimes: tuple[str, ...] = ("transformers", "onnxruntime", "vllm")
    kv_cache_gib: float = 1.0
    rebuild: bool = False
    samples: int | None = None      # calibration sequences (default: the mix's)
    seq_len: int | None = None
    settings: object = None         # a compress Settings that replaces ratio/mode/rounds (tests, experts)

    def artifact_name(self) -> str:
        from .loading import resolve_source
        base = Path(resolve_source(self.model)[0]).name if self.model == "default" else self.model.rstrip("/").split("/")[-1]
        return self.name or f"{base}-pruned-{round(self.ratio * 100)}{'-per-layer' if self.mode == 'per-layer' else ''}"


def run_pipeline(p: Pipeline, log=None) -> dict:
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    from prunekit.compress.iterate import Settings
    from prunekit.compress.plan import Constraints
    from prunekit.compress.run import Job, run
    from prunekit.export.run import export
    from prunekit.export.verify import format_table, verify

    name = p.artifact_name()
    root = Path(p.out)
    pruned, art = root / ".work" / name / "pruned", root / name
    timings = {}
    settings = p.settings or Settings(constraints=Constraints(ratio=p.ratio, mode=p.mode), rounds=p.rounds)
    want = {"ratio": p.ratio, "mode": p.mode, "rounds": p.rounds, "samples": p.samples, "seq_len": p.seq_len,
            "settings": repr(p.settings)}

    t = time.time()
    m = read_manifest(pruned) if pruned.is_dir() else {}
    if not p.rebuild and m.get("stage") == "compress" and m.get("pipeline") == want:
        log(f"[1/4] compress: reusing {pruned}")
    else:
        log(f"[1/4] compress {p.model} by {p.ratio:.0%} ({p.mode}) -> {pruned}")
        m = run(Job(model=p.model, out=str(pruned), settings=settings, force=True, threads=p.threads,
                    samples=p.samples, seq_len=p.seq_len), log=log)
        _tag(pruned, want)
    timings["compress"] = round(time.time() - t, 1)

    t = time.time()
    a = read_manifest(art) if art.is_dir() else {}
    same_source = a.get("source", {}).get("manifest", {}).get("source_hash") == m.get("source_hash") and \
        a.get("source", {}).get("path") == str(pruned)
    if not p.rebuild and a.get("stage") == "export" and same_source and not _newer(pruned, art):
        log(f"[2/4] export: reusing {art}")
    else:
        log(f"[2/4] export -> {art}")
        a = export(str(pruned), str(art), force=True, log=log)
    timings["export"] = round(time.time() - t, 1)

    t = time.time()
    v = a.get("verify") or {}
    if v.get("passed") and set(v.get("runtimes", {})) >= set(p.runtimes):
        log("[3/4] verify: already passed")
        report = json.loads((art / "verify.json").read_text())
    else:
        log(f"[3/4] verify on {', '.join(p.runtimes)}")
        report = verify(art, runtimes=p.runtimes, kv_cache_gib=p.kv_cache_gib, threads=p.threads, log=log)
    timings["verify"] = round(time.time() - t, 1)
    log(format_table(report))

    log("[4/4] summary")
    (art / "README.md").write_text(readme(art, read_manifest(art), m, report))
    summary = {"artifact": str(art), "passed": report["passed"], "timings_s": timings}
    (art.parent / f"{name}.summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not report["passed"]:
        raise PrunekitError(f"verify failed for {art}; see {art / 'verify.json'}.")
    log(f"done: {art} ({sum(timings.values()):.0f} s); serve it with: prunekit serve {art}")
    return summary


def _tag(pruned: Path, want: dict) -> None:
    """Record the pipeline inputs in the pruned manifest so a re-run knows whether it can reuse it."""
    from .artifact import write_manifest
    m = read_manifest(pruned)
    m["pipeline"] = want
    write_manifest(pruned, m)


def _newer(pruned: Path, art: Path) -> bool:
    # The manifest is the last file either step writes (sharded checkpoints have no model.safetensors).
    return (pruned / "prunekit.json").stat().st_mtime > (art / "prunekit.json").stat().st_mtime


def readme(art: Path, a: dict, c: dict, report: dict) -> str:
    p = c.get("params", {})
    q = c.get("quality", {}).get("heldout_ppl", {})
    dense, pruned = q.get("dense", {}), q.get("pruned", {})
    rows = "\n".join(f"| {d} | {dense[d]:.2f} | {pruned[d]:.2f} |" for d in dense if d in pruned)
    vr = "\n".join(f"| {k} | {'yes' if r['loads'] else 'no'} | {r.get('max_abs_logit_diff', float('nan')):.2e} | "
                   f"{r.get('greedy_match', '-')} |" for k, r in report["runtimes"].items())
    trc = " (it ships modeling_prunekit.py; prunekit checks its sha256 before passing --trust-remote-code)" \
        if a.get("layout") == "per-layer" else ""
    st = c.get("settings", {})
    ratio = 1 - p["pruned_total"] / p["dense_total"] if p.get("dense_total") else float("nan")
    return f"""# {a.get('name')}

{c.get('source_model', '?')} with {ratio:.1%} of its parameters removed by prunekit
({p.get('dense_total', 0):,} -> {p.get('pruned_total', 0):,}); method `{st.get('method', '?')}`,
{st.get('rounds', '?')} calibration rounds on the multi-domain mix. Layout: **{a.get('layout')}**{trc}.

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
