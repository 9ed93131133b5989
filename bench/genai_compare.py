"""Our ONNX graph against onnxruntime-genai's on the same artifact: decode tok/s at batch 1 and 8.

Each artifact (exported with --genai, or a random-weight model in a real shape built here) is timed `--repeats`
times on each runtime, its onnx/model.onnx in our runner and its genai/ folder in genai's own generator, each run
a fresh process alone on the machine, the two runtimes alternating (A B B A ...) so that drift of the machine's
speed hits both alike. Not paired in one process: genai's session spins its threads between runs (no genai
option turns that off), which halves a session beside it. Both fp32 on the CPU with the same threads. Prints a
table (ours / genai, ratio of medians: above 1 means our graph is faster) and writes it with the raw runs to --out.

    python -m prunekit.bench.genai_compare ART... [--shape qwen2.5-0.5b --cuts dense,20%] [--repeats 4]
        [--onnx-cache concat]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from prunekit.export import CACHES

from prunekit.artifact import read_manifest
from prunekit.env import cpu_text

from .shapes import _spread, build, parse_cut
from .timing import machine, speed_once, summarize

RUNTIMES = ("onnxruntime-genai", "onnxruntime")


def compare(arts: dict[str, Path], threads: int, repeats: int, batch: int, prompt_len: int, new_tokens: int, log):
    rows = []
    for label, art in arts.items():
        runs: dict[str, list] = {rt: [] for rt in RUNTIMES}
        for rep in range(repeats):
            for rt in RUNTIMES if rep % 2 == 0 else RUNTIMES[::-1]:
                t = time.time()
                r = speed_once(rt, art, threads, "float32", prompt_len=prompt_len, new_tokens=new_tokens, batch=batch)
                runs[rt].append(r)
                log(
                    f"genai-compare {rep + 1}/{repeats} {label} {rt}: "
                    + (
                        r["error"]
                        if "error" in r
                        else f"b1 {r['decode_tok_s_b1']:.1f}, b{batch} {r['decode_tok_s_batch']:.1f} tok/s"
                    )
                    + f" ({time.time() - t:.0f} s)"
                )
        rows.append(
            {
                "label": label,
                "artifact": str(art),
                "runs": runs,
                "summary": {rt: summarize(runs[rt]) for rt in RUNTIMES},
            }
        )
    return rows


def format_rows(rows: list, m: dict, threads: int, repeats: int, batch: int, prompt_len: int, new_tokens: int) -> str:
    lines = [
        f"Our ONNX graph vs onnxruntime-genai's on the same artifact, {cpu_text(m['cpu'], m.get('isa'))} "
        f"x{m['cores']}, fp32, {threads} threads; prompt {prompt_len}, {new_tokens} new tokens; median (min-max) of "
        f"{repeats} runs each, every run a fresh process, the runtimes alternating.",
        "",
        f"| artifact | genai b1 tok/s | ours b1 tok/s | ours / genai b1 | genai b{batch} tok/s | ours b{batch} tok/s "
        f"| ours / genai b{batch} |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g, o = (r["summary"][rt] for rt in RUNTIMES)
        if not all("decode_tok_s_b1" in x for x in (g, o)):
            errs = "; ".join(e for x in (g, o) for e in x.get("errors", []))
            lines.append(f"| {r['label']} | failed: {errs[:200]} | | | | | |")
            continue
        cells = []
        for k in ("decode_tok_s_b1", "decode_tok_s_batch"):
            cells.append(f"{_spread(g[k], '.1f')} | {_spread(o[k], '.1f')} | {o[k]['median'] / g[k]['median']:.2f}")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m prunekit.bench.genai_compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", nargs="*", help="artifacts exported with --genai")
    ap.add_argument("--shape", help="also build random-weight artifacts of this shape (bench/shapes.py SHAPES)")
    ap.add_argument("--cuts", default="dense,20%", help="uniform cuts of --shape")
    ap.add_argument("--work", default="bench/work/shapes")
    ap.add_argument("--onnx-cache", default="inplace", choices=CACHES, help="our graph of --shape")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", help="write report.md and results.json here")
    a = ap.parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    arts = {Path(p).name: Path(p) for p in a.artifacts}
    for art in arts.values():
        m = read_manifest(art)
        if m is None or not m.genai:
            ap.error(f"{art} has no onnxruntime-genai folder: export it with --genai")
    if a.shape:
        for c in a.cuts.split(","):
            cut = parse_cut(c)
            if cut.per_layer or cut.quant:
                ap.error(f"cut {c!r}: onnxruntime-genai's builder takes uniform, unquantized cuts only")
            arts[f"{a.shape} {cut.label}"] = build(
                a.shape, cut, Path(a.work), True, log, genai=True, onnx_cache=a.onnx_cache
            )
    if not arts:
        ap.error("give artifacts exported with --genai, or --shape")
    m = machine()
    rows = compare(arts, a.threads, a.repeats, a.batch, a.prompt_len, a.new_tokens, log)
    text = format_rows(rows, m, a.threads, a.repeats, a.batch, a.prompt_len, a.new_tokens)
    print(text)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(text)
        (out / "results.json").write_text(json.dumps({"machine": m, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
