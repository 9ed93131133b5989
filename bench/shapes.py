"""Speed of cuts at the shapes people deploy, on every stock runtime, without downloading weights.

Random-weight models in the published shapes of real ones (weights do not change speed), cut the way
compress cuts (MLP channels, widths on an alignment grid), exported as real artifacts (HF checkpoint in
the layout export picks, ONNX with KV cache) and timed in a fresh process per run with the same worker as
`prunekit bench`, repeats interleaved; medians and ranges, with the ideal speedup beside each ratio.

    prunekit bench --shapes smollm2-135m,qwen2.5-0.5b --repeats 5 [--cuts '20%,40%,30% per-layer']
Cut labels: "R%" (uniform), "R% per-layer" (widths ramp over depth, same total; DeciLM layout),
"R% per-layer generic" (the same widths in the heterogeneous per-layer layout), any of them with " a64"
(alignment of the widths; default: compress's --align default).
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from prunekit.env import cpu_text
from prunekit.errors import PrunekitError

from .models import weight_bytes_per_token
from .op_profile import format_profile, profile_once
from .timing import machine, run_order, speed_once, summarize

# Public configs of the real models.
SHAPES = {
    "smollm2-135m": (
        "LlamaConfig",
        dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            vocab_size=49152,
            tie_word_embeddings=True,
            head_dim=64,
        ),
    ),
    "qwen2.5-0.5b": (
        "Qwen2Config",
        dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
    ),
    "llama-3.2-1b": (
        "LlamaConfig",
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            tie_word_embeddings=True,
            head_dim=64,
        ),
    ),
    "llama-3.1-8b": (
        "LlamaConfig",
        dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            tie_word_embeddings=False,
        ),
    ),
    "qwen2.5-7b": (
        "Qwen2Config",
        dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            tie_word_embeddings=False,
        ),
    ),
    "tiny": (
        "LlamaConfig",
        dict(
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1024,
        ),
    ),
}
CUTS = ("dense", "20%", "40%", "30%", "30% per-layer", "30% per-layer generic")
CUT_RE = re.compile(r"^(?:dense|(\d{1,2})%( per-layer)?( generic)?( a(\d+))?)( int8| int4)?$")


@dataclass(frozen=True)
class Cut:
    label: str
    ratio: float = 0.0
    per_layer: bool = False
    generic: bool = False  # the heterogeneous per-layer layout instead of DeciLM
    align: int = 0  # 0: compress's default
    # int8 / int4: export --quantize, rounding to nearest (random weights: nothing to calibrate)
    quant: str | None = None


def default_align() -> int:
    from prunekit.compress import CompressConfig

    return CompressConfig.__dataclass_fields__["align"].default


def parse_cut(label: str) -> Cut:
    m = CUT_RE.match(label.strip())
    if not m or (m.group(3) and not m.group(2)):
        raise PrunekitError(
            f"cut {label!r} is not understood; write e.g. 'dense', '20%', '30% per-layer', "
            "'30% per-layer generic', '20% a64', '20% int8', 'dense int4'."
        )
    quant = m.group(6).strip() if m.group(6) else None
    if not m.group(1):
        return Cut(label.strip(), quant=quant)
    return Cut(
        label.strip(),
        int(m.group(1)) / 100,
        bool(m.group(2)),
        bool(m.group(3)),
        int(m.group(5) or default_align()),
        quant,
    )


def params(cfg: dict, widths: list[int]) -> int:
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    attn = h * hd * (2 * cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"])
    emb = v * h * (1 if cfg.get("tie_word_embeddings") else 2)
    return sum(attn + 3 * h * w + 2 * h for w in widths) + emb + h


def widths_for(cfg: dict, cut: Cut) -> list[int]:
    """MLP widths that remove `ratio` of all parameters, on the alignment grid. Per-layer: the same total
    spread as a ramp over depth (half the uniform width at the bottom, up to 1.5x at the top, capped at
    the dense width), a stand-in for a searched plan: speed depends on the widths, not on which channels."""
    L, dense = cfg["num_hidden_layers"], cfg["intermediate_size"]
    if not cut.ratio:
        return [dense] * L
    cut_w = cut.ratio * params(cfg, [dense] * L) / (3 * cfg["hidden_size"] * L)
    mean = dense - cut_w
    a = cut.align
    if not cut.per_layer:
        return [max(a, round(mean / a) * a)] * L
    raw = [min(dense, mean * (0.5 + i / max(1, L - 1))) for i in range(L)]
    scale = mean * L / sum(raw)
    return [max(a, min(dense, round(r * scale / a) * a)) for r in raw]


def build(
    shape: str,
    cut: Cut,
    work: Path,
    onnx: bool,
    log,
    tokenizer: str = "default",
    genai: bool = False,
    onnx_cache: str = "inplace",
) -> Path:
    """The artifact of one shape and cut (reused when a complete one is there); with `genai`, an
    onnxruntime-genai folder beside the graph (uniform cuts); `onnx_cache` as export's --onnx-cache."""
    import torch
    import transformers
    from prunekit.export import ExportConfig, export

    from prunekit.artifact import read_manifest
    from prunekit.checkpoint import resize_layers, save_model, save_tokenizer
    from prunekit.families import family_for_config
    from prunekit.loading import load_tokenizer

    genai = genai and onnx and not cut.per_layer  # the builder holds one width per model
    name = f"{shape}-{cut.label.replace('%', 'pct').replace(' ', '-')}" + ("" if onnx else "-noonnx")
    name += f"-{onnx_cache}" if onnx else ""  # never a cached graph of the other cache contract
    name += "-genai" if genai else ""
    art = work / name
    if read_manifest(art) is not None:
        return art
    cls, base = SHAPES[shape]
    tok = load_tokenizer(tokenizer)  # only encodes export's reference prompts
    if len(tok) > base["vocab_size"]:
        raise PrunekitError(
            f"the tokenizer of {tokenizer!r} has {len(tok)} tokens, more than shape {shape}'s "
            f"vocabulary of {base['vocab_size']}; pass a smaller tokenizer."
        )
    widths = widths_for(base, cut)
    config = getattr(transformers, cls)(**{**base, "intermediate_size": max(widths)})
    config.architectures = [cls.replace("Config", "ForCausalLM")]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    if len(set(widths)) > 1:  # the per-layer record compress writes, and layers built to it
        heads, kv = base["num_attention_heads"], base["num_key_value_heads"]
        model.config.prunekit_layers = [
            {"intermediate_size": w, "num_attention_heads": heads, "num_key_value_heads": kv} for w in widths
        ]
        resize_layers(model, family_for_config(model.config), model.config.prunekit_layers)
    src = work / f".{name}-src"
    shutil.rmtree(src, ignore_errors=True)
    save_model(model, src)
    save_tokenizer(tok, src)
    del model
    log(f"shapes: {name}: widths {sorted(set(widths))}, exporting")
    export(
        ExportConfig(
            model=str(src),
            out=str(art),
            tokens=4,
            onnx=onnx,
            genai=genai,
            onnx_cache=onnx_cache,
            quantize=cut.quant,
            quant_method="rtn" if cut.quant else "auto",
            force=True,
            layout="per-layer" if cut.generic else "auto",
        ),
        log=lambda m: None,
    )
    shutil.rmtree(src)
    return art


def run_shapes(
    shapes: list[str],
    cuts: list[str],
    runtimes: tuple[str, ...],
    out: Path,
    work: Path,
    repeats: int = 5,
    threads: int = 2,
    prompt_len: int = 128,
    new_tokens: int = 32,
    batch: int = 8,
    profile_cut: str | None = None,
    tokenizer: str = "default",
    log=print,
    paired: int = 0,
) -> dict:
    """Build, time and report; `profile_cut` (a cut label) adds the per-token breakdown of dense and that cut
    of the first shape on every runtime (bench/op_profile.py); `paired` adds, per cut and runtime, one process
    that times dense and the cut that many times, their decode steps in turn (the speedup per pair)."""
    from prunekit.artifact import read_manifest
    from prunekit.env import compute_dtype

    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        raise PrunekitError(f"unknown shape {bad}; choose from {', '.join(SHAPES)}.")
    plan = [parse_cut(c) for c in cuts]
    if plan[0].label != "dense":
        plan.insert(0, Cut("dense"))
    if profile_cut and profile_cut not in [c.label for c in plan]:
        raise PrunekitError(f"--profile-cut {profile_cut!r} is not among the cuts {[c.label for c in plan]}.")
    dtype = compute_dtype()
    decode = {"prompt_len": prompt_len, "new_tokens": new_tokens, "batch": batch}  # what each timing decodes
    work.mkdir(parents=True, exist_ok=True)
    res = {
        "machine": machine(),
        "dtype": dtype,
        "threads": threads,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "batch": batch,
        "repeats": repeats,
        "runtimes": list(runtimes),
        "rows": [],
    }
    t0 = time.time()
    arts = {}
    for shape in shapes:
        for cut in plan:
            art = build(shape, cut, work, "onnxruntime" in runtimes, log, tokenizer)
            m = read_manifest(art)
            arts[(shape, cut.label)] = art
            res["rows"].append(
                {
                    "shape": shape,
                    "cut": cut.label,
                    "layout": m.layout,
                    "artifact": str(art),
                    "widths": sorted(set(widths_for(SHAPES[shape][1], cut))),
                    "params": params(SHAPES[shape][1], widths_for(SHAPES[shape][1], cut)),
                    "weight_bytes_per_token": weight_bytes_per_token(art),
                    "samples": {},
                }
            )
    rows = {(r["shape"], r["cut"]): r for r in res["rows"]}
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "shapes.partial.json"  # each repeat as it completes: a long run survives a kill
    order = list(arts.items())
    for rep in range(repeats):
        for key, art in run_order(order, rep):  # interleaved, rotated (see run_order)
            for rt in runtimes:
                s = speed_once(rt, art, threads, dtype, **decode)
                rows[key]["samples"].setdefault(rt, []).append(s)
                log(
                    f"shapes {rep + 1}/{repeats} {key[0]} {key[1]:>22} {rt:<12} "
                    + (
                        s["error"]
                        if "error" in s
                        else f"b1 {s['decode_tok_s_b1']:.1f} tok/s, "
                        f"b{batch} {s['decode_tok_s_batch']:.1f} tok/s"
                        + (f" [{s['model_class']}]" if "model_class" in s else "")
                    )
                )
        partial.write_text(json.dumps(res, indent=2) + "\n")
    for r in res["rows"]:
        r["speed"] = {rt: summarize(v) for rt, v in r["samples"].items()}
    (out / "shapes.json").write_text(json.dumps(res, indent=2) + "\n")  # the timings are safe before profiling
    res["paired"] = paired
    for (shape, label), art in arts.items() if paired else ():
        for rt in (r for r in runtimes if r in PAIRED_RUNTIMES and label != "dense"):
            base = arts[(shape, "dense")]
            pr = pair_speedups(speed_once(rt, art, threads, dtype, **decode, pair_with=base, pairs=paired))
            rows[(shape, label)].setdefault("paired", {})[rt] = pr
            log(
                f"paired {shape} {label:>22} {rt:<12} "
                + (
                    pr["error"]
                    if "error" in pr
                    else ", ".join(f"{k} {v['median']:.2f}x ({v['min']:.2f}-{v['max']:.2f})" for k, v in pr.items())
                )
            )
    if profile_cut:
        res["profile"] = {
            "shape": shapes[0],
            "batch": 1,
            "prompt_len": prompt_len,
            "new_tokens": new_tokens + 1,
            "rows": {},
        }
        for rt in runtimes:
            for label in ("dense", profile_cut):
                r = profile_once(rt, arts[(shapes[0], label)], threads, dtype, prompt_len, new_tokens + 1, 1)
                res["profile"]["rows"].setdefault(rt, {})[label] = r
                log(
                    f"profile {shapes[0]} {label} {rt}: "
                    + (r["error"] if "error" in r else f"{r['wall_ms']:.2f} ms/token")
                )
    for r in res["rows"]:
        r["model_class"] = next((s["model_class"] for s in r["samples"].get("vllm", []) if "model_class" in s), None)
    res["seconds"] = round(time.time() - t0)
    (out / "shapes.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "shapes.md").write_text(format_shapes(res))
    plot_shapes(res, out / "shapes-speedup.png")
    partial.unlink(missing_ok=True)
    return res


PAIRED_RUNTIMES = ("torch", "onnxruntime", "vllm")  # vLLM: both engine cores in the worker (speed_worker.run_paired)


def pair_speedups(result: dict) -> dict:
    """Per batch size, the cut's speedup over dense in each pair: median, range and all of them."""
    if "error" in result:
        return {"error": result["error"]}
    out = {}
    for key, name in (("decode_tok_s_b1", "b1"), ("decode_tok_s_batch", "batch")):
        xs = [q["cut"][key] / q["base"][key] for q in result["pairs"]]
        out[name] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "pairs": xs}
    return out


def speedups(res: dict):
    """(row, runtime, key, measured speedup, ideal speedup) for every cut, runtime and batch."""
    dense = {r["shape"]: r for r in res["rows"] if r["cut"] == "dense"}
    for r in res["rows"]:
        d = dense[r["shape"]]
        ideal = d["weight_bytes_per_token"] / r["weight_bytes_per_token"]
        for rt, s in r["speed"].items():
            for key in ("decode_tok_s_b1", "decode_tok_s_batch"):
                if key in s and key in d["speed"].get(rt, {}):
                    yield r, rt, key, s[key]["median"] / d["speed"][rt][key]["median"], ideal


def _spread(v: dict, fmt: str, unit: str = "") -> str:
    """A median and its range: "12.3 (11.0-13.1)", or with unit "x": "1.23x (1.10-1.31)"."""
    return f"{v['median']:{fmt}}{unit} ({v['min']:{fmt}}-{v['max']:{fmt}})"


def format_shapes(res: dict) -> str:
    m = res["machine"]
    cpu = cpu_text(m["cpu"], m.get("isa"))
    lines = [
        f"Random-weight models in real shapes on {cpu} x{m['cores']}{' + ' + m['gpu'] if m.get('gpu') else ''}"
        f" ({res['dtype']}, {res['threads']} threads): greedy decoding, prompt {res['prompt_len']}, "
        f"{res['new_tokens']} new tokens, batch 1 and {res['batch']}; median (min-max) of {res['repeats']} "
        "interleaved runs, each in a fresh process.",
        "",
        "| shape | cut | layout | widths | params | runtime | b1 tok/s | speedup | "
        f"b{res['batch']} tok/s | speedup | ideal | b1 / b{res['batch']} % of ideal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    sp = {(r["shape"], r["cut"], rt, k): (x, i) for r, rt, k, x, i in speedups(res)}
    for r in res["rows"]:
        for rt, s in r["speed"].items():
            if "decode_tok_s_b1" not in s:
                lines.append(
                    f"| {r['shape']} | {r['cut']} | {r['layout']} | | | {rt} | failed: "
                    f"{'; '.join(s['errors'])[:200]} | | | | | |"
                )
                continue
            no = (float("nan"), float("nan"))  # dense failed on this runtime: nothing to compare with
            b1 = sp.get((r["shape"], r["cut"], rt, "decode_tok_s_b1"), no)
            bb = sp.get((r["shape"], r["cut"], rt, "decode_tok_s_batch"), no)
            w = r["widths"]
            cls = f" [{r['model_class']}]" if rt == "vllm" and r.get("model_class") else ""
            pct = (
                "-"
                if r["cut"] == "dense"
                else " / ".join(f"{(x - 1) / (i - 1) * 100:.0f}" if i > 1 else "-" for x, i in (b1, bb))
            )
            lines.append(
                f"| {r['shape']} | {r['cut']} | {r['layout']} | {w[0] if len(w) == 1 else f'{w[0]}-{w[-1]}'} "
                f"| {r['params'] / 1e6:.0f}M | {rt}{cls} | {_spread(s['decode_tok_s_b1'], '.1f')} | {b1[0]:.2f}x | "
                f"{_spread(s['decode_tok_s_batch'], '.1f')} | {bb[0]:.2f}x | {b1[1]:.2f}x | {pct} |"
            )
    lines += [
        "",
        "Ideal = dense / pruned bytes of weights a decode step reads (every matrix once; the embedding "
        "table only as the tied LM head). % of ideal = (speedup - 1) / (ideal - 1): the share of the "
        "possible gain that the runtime delivers.",
        f"\nTotal {res['seconds']} s.",
    ]
    if res.get("paired"):
        lines += [
            "",
            f"Paired: dense and the cut loaded side by side in one process, {res['paired']} pairs; in a "
            f"pair each decodes the same prompts at batch 1, then at batch {res['batch']}, their "
            f"{res['new_tokens'] - 1} decode steps timed in turn (A B B A ...; prefills not timed); the speedup "
            "of each pair, median (min-max). The machine's speed moves in phases of seconds to minutes, which "
            "steps a fraction of a second apart share and independent runs do not.",
            "",
            f"| shape | cut | runtime | b1 speedup | b{res['batch']} speedup | ideal | "
            f"b1 / b{res['batch']} % of ideal |",
            "|---|---|---|---|---|---|---|",
        ]
        ideal = {(r["shape"], r["cut"]): i for r, _, _, _, i in speedups(res)}
        for r in res["rows"]:
            for rt, pr in r.get("paired", {}).items():
                i = ideal.get((r["shape"], r["cut"]), float("nan"))
                if "error" in pr:
                    lines.append(f"| {r['shape']} | {r['cut']} | {rt} | failed: {pr['error'][:200]} | | | |")
                    continue
                pct = " / ".join(
                    f"{(pr[k]['median'] - 1) / (i - 1) * 100:.0f}" if i > 1 else "-" for k in ("b1", "batch")
                )
                lines.append(
                    f"| {r['shape']} | {r['cut']} | {rt} | {_spread(pr['b1'], '.2f', 'x')} | "
                    f"{_spread(pr['batch'], '.2f', 'x')} | {i:.2f}x | {pct} |"
                )
    if res.get("profile"):
        pr = res["profile"]
        un = {
            (rt, r["cut"]): 1e3 / s["decode_tok_s_b1"]["median"]
            for r in res["rows"]
            if r["shape"] == pr["shape"]
            for rt, s in r["speed"].items()
            if "decode_tok_s_b1" in s
        }
        lines += [
            "",
            f"## Where the time goes: {pr['shape']}",
            "",
            format_profile(
                {**pr, "machine": f"{cpu} x{m['cores']}", "dtype": res["dtype"], "threads": res["threads"]}, un
            ),
        ]
    return "\n".join(lines) + "\n"


def plot_shapes(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r, rt, k, x, i) for r, rt, k, x, i in speedups(res) if r["cut"] != "dense"]
    if not pts:
        return
    keys = ("decode_tok_s_b1", "decode_tok_s_batch")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    markers = dict(zip(sorted({rt for _, rt, *_ in pts}), "osD^"))
    colors = dict(zip(sorted({r["shape"] for r, *_ in pts}), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, key in zip(axes, keys):
        top = max(max(x, i) for _, _, k, x, i in pts) * 1.05
        ax.plot([1, top], [1, top], "k--", lw=0.8, label="ideal")
        for r, rt, k, x, i in pts:
            if k == key:
                c = colors[r["shape"]]
                ax.scatter(
                    i, x, marker=markers[rt], edgecolors=c, alpha=0.8, facecolors="none" if "generic" in r["cut"] else c
                )
        ax.set(
            xlabel="ideal speedup (weight bytes per token)",
            title="batch 1" if key.endswith("b1") else f"batch {res['batch']}",
        )
    axes[0].set_ylabel("measured decode speedup vs dense")
    for rt, mk in markers.items():
        axes[1].scatter([], [], marker=mk, color="gray", label=rt)
    for shape, c in colors.items():
        axes[1].scatter([], [], marker="s", color=c, label=shape)
    axes[1].legend(fontsize=8, loc="upper left")
    cpu = cpu_text(res["machine"]["cpu"], res["machine"].get("isa"))
    fig.suptitle(
        f"Measured vs ideal decode speedup ({cpu}, {res['dtype']}); hollow = per-layer generic layout",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    """The same measurement without the rest of `prunekit bench` (e.g. the GPU machine's prepared script)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m prunekit.bench.shapes", description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="smollm2-135m")
    ap.add_argument("--cuts", default=",".join(CUTS))
    ap.add_argument("--runtimes", default="torch,onnxruntime,vllm")
    ap.add_argument("--out", default="bench/results/shapes")
    ap.add_argument("--work", default="bench/work/shapes")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--profile-cut", default=None, help="also profile dense and this cut of the first shape")
    ap.add_argument(
        "--paired",
        type=int,
        default=0,
        help="also time each cut against dense in one process, their decode steps in turn, N pairs",
    )
    a = ap.parse_args(argv)
    try:
        res = run_shapes(
            a.shapes.split(","),
            a.cuts.split(","),
            tuple(a.runtimes.split(",")),
            Path(a.out),
            Path(a.work),
            a.repeats,
            a.threads,
            a.prompt_len,
            a.new_tokens,
            a.batch,
            a.profile_cut,
            paired=a.paired,
        )
    except PrunekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_shapes(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
