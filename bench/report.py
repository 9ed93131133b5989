"""results.json -> report.md and PNG plots in one results folder (written atomically)."""

from __future__ import annotations

import json
from pathlib import Path

from prunekit.artifact import atomic_dir
from prunekit.env import cpu_text
from prunekit.perplexity import geomean

RUNTIME_NAMES = {"torch": "PyTorch (transformers)", "onnxruntime": "onnxruntime", "vllm": "vLLM"}


def _ratio(m: dict) -> float:
    return 1 - m["params"] / m["dense_params"] if m.get("params") and m.get("dense_params") else 0.0


def _mm(s: dict, k: str, fmt: str, scale: float = 1.0) -> str:
    if k not in s:
        return "-"
    v = s[k]
    return f"{v['median'] * scale:{fmt}} ({v['min'] * scale:{fmt}}-{v['max'] * scale:{fmt}})"


def _se(v: float) -> str:
    return "" if v != v else f" ±{v:.3f}"


def _wt(q: dict, key: str) -> str:
    return f"{q[key]['ppl']:.2f}" if key in q else "-"


def quality_tables(res: dict) -> list[str]:
    models = {k: v for k, v in res["models"].items() if "quality" in v}
    if not models:
        return []
    first = next(iter(models.values()))["quality"]
    doms, tasks = list(first["domains"]), list(first["zeroshot"])
    wt, wl = first["wikitext2"], first.get("wikitext2_long")
    long = (
        f"; and, as the pruning papers report it, in windows of {wl['seq_len']}, stride {wl['stride']} "
        f"({wl['tokens']:,} tokens)"
        if wl
        else ""
    )
    limit = res["preset"].get("task_limit")
    out = [
        f"## Quality\n\nPerplexity: WikiText-2 raw test ({wt['tokens']:,} tokens in windows of {wt['seq_len']}, "
        f"stride {wt['stride']}{long}) and held-out text per domain (disjoint from calibration). Zero-shot: "
        "log-likelihood scoring as lm-eval defines acc / acc_norm, with lm-eval's standard error"
        + (f", first {limit} examples per task" if limit else ", full sets")
        + ".\n",
        f"| model | params | removed | WikiText-2 ({wt['seq_len']}) | "
        + (f"WikiText-2 ({wl['seq_len']}) | " if wl else "")
        + " | ".join(doms)
        + " |",
        "|---|---|---|---|" + ("---|" if wl else "") + "---|" * len(doms),
    ]
    for label, m in models.items():
        q = m["quality"]
        out.append(
            f"| {label} | {m['params'] / 1e6:.1f}M | {_ratio(m):.1%} | {_wt(q, 'wikitext2')} | "
            + (f"{_wt(q, 'wikitext2_long')} | " if wl else "")
            + " | ".join(f"{q['domains'][d]:.2f}" for d in doms)
            + " |"
        )
    out += ["", "| model | " + " | ".join(tasks) + " | mean acc |", "|---|" + "---|" * (len(tasks) + 1)]
    for label, m in models.items():
        z = m["quality"]["zeroshot"]
        cells = [
            f"{z[t]['acc']:.3f}{_se(z[t].get('acc_stderr', float('nan')))}"
            + (f" / {z[t]['acc_norm']:.3f}" if "acc_norm" in z[t] else "")
            for t in tasks
        ]
        out.append(f"| {label} | " + " | ".join(cells) + f" | {m['quality']['mean_acc']:.3f} |")
    out.append("\nCells are acc ± its standard error / acc_norm (WinoGrande: acc only); mean acc is over acc.")
    return out + paired_tables(models, tasks)


def paired_tables(models: dict, tasks: list[str]) -> list[str]:
    """Each pruned model's accuracy minus dense's on the same documents (paired), per task and averaged over
    tasks, with standard errors; a difference within two of them is a tie, not a ranking."""
    from .zeroshot import mean_diff, paired_diff, verdict

    dense = models.get("dense")
    if dense is None:
        return []
    rows = []
    for label, m in models.items():
        if label == "dense":
            continue
        diffs = {
            t: paired_diff(dense["quality"]["zeroshot"].get(t, {}), m["quality"]["zeroshot"].get(t, {})) for t in tasks
        }
        if any(d is None for d in diffs.values()):
            continue
        mean = mean_diff(list(diffs.values()))
        cell = lambda d: f"{d['diff']:+.3f} ±{d['stderr']:.3f} {verdict(d)}"  # noqa: E731
        rows.append(f"| {label} | " + " | ".join(cell(diffs[t]) for t in tasks) + f" | **{cell(mean)}** |")
    if not rows:
        return []
    return [
        "",
        "Paired differences to dense (acc of the model minus dense's, document by document; ± one standard "
        "error). *tie*: within two standard errors, so the data do not rank the two.",
        "",
        "| model | " + " | ".join(tasks) + " | mean over tasks |",
        "|---|" + "---|" * (len(tasks) + 1),
        *rows,
    ]


def _ppl(v: float, dense: float) -> str:
    return f"{v:.2f}"


def _ppl_vs_dense(v: float, dense: float) -> str:
    return f"{v:.2f} (x{v / dense:.2f})"


def method_tables(res: dict) -> list[str]:
    rows = res.get("methods") or []
    if not rows:
        return []
    p = res["preset"]
    dense = rows[0]
    doms, tasks = list(dense["quality"]["domains"]), list(dense["quality"]["zeroshot"])
    ev = res.get("method_eval") or {}
    limit = ev.get("task_limit")
    c = p["method_compress"]
    wt = dense["quality"]["wikitext2"]
    out = [
        f"## Methods\n\nEvery method on the same model ({res.get('model', 'default')}) and calibration data "
        f"({c['samples']} x {c['seq_len']} "
        f"tokens of the default mix; iterative variants {c['rounds']} rounds), pruned in-process and scored on "
        f"the quality suite above with its own limits: WikiText-2 {wt['tokens']:,} tokens, "
        f"{ev.get('domain_samples')} held-out windows per domain, zero-shot "
        f"{f'first {limit} examples per task' if limit else 'full sets'}. "
        "Baselines are one-shot without compensation, as published; block-influence removes whole layers, "
        "the others MLP channels. Held-out geomean is over " + ", ".join(doms) + "."
    ]
    for ratio in sorted({r["ratio"] for r in rows if r["ratio"] > 0}):
        out += [
            "",
            f"### {ratio:.0%} of parameters",
            "",
            "| method | removed | WikiText-2 | "
            + " | ".join(doms)
            + " | held-out geomean | "
            + " | ".join(tasks)
            + " | mean acc | prune s |",
            "|---|---|---|" + "---|" * (len(doms) + len(tasks) + 3),
        ]
        for r in [dense] + [x for x in rows if x["ratio"] == ratio]:
            q, dq = r["quality"], dense["quality"]
            removed = 1 - r["params"] / r["dense_params"]
            x = _ppl if r is dense else _ppl_vs_dense
            out.append(
                f"| {r['variant']} | {removed:.1%} | {x(q['wikitext2']['ppl'], dq['wikitext2']['ppl'])} | "
                + " | ".join(x(q["domains"][d], dq["domains"][d]) for d in doms)
                + f" | {x(geomean(q['domains'].values()), geomean(dq['domains'].values()))} | "
                + " | ".join(f"{q['zeroshot'][t]['acc']:.3f}" for t in tasks)
                + f" | {q['mean_acc']:.3f} | {r['seconds']:.0f} |"
            )
    out.append("\nPerplexity cells give the ratio to dense in brackets; zero-shot cells are acc.")
    return out


def speed_tables(res: dict) -> list[str]:
    models = {k: v for k, v in res["models"].items() if "speed" in v}
    if not models:
        return []
    p = res["preset"]
    dense = models.get("dense")
    out = [
        f"## Speed and memory\n\nGreedy decoding, prompt {p['prompt_len']} tokens, {p['new_tokens']} new "
        f"tokens, batch 1 and {p['batch']}; {res['threads']} threads, {res['dtype']}; median (min-max) of "
        f"{p['repeats']} interleaved runs, each in a fresh process. Ideal speedup = bytes of weights read per "
        "token, dense / pruned."
    ]
    for rt in p["runtimes"]:
        out += [
            "",
            f"### {RUNTIME_NAMES.get(rt, rt)}",
            "",
            f"| model | TTFT ms | decode tok/s b1 | decode tok/s b{p['batch']} | speedup b1 | ideal | "
            "peak RSS MB | size MB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, m in models.items():
            s = m["speed"][rt]
            if "decode_tok_s_b1" not in s:
                out.append(f"| {label} | failed: {'; '.join(s['errors'])[:200]} | | | | | | |")
                continue
            sp = ideal = "-"
            if dense and "decode_tok_s_b1" in dense["speed"][rt]:
                sp = f"{s['decode_tok_s_b1']['median'] / dense['speed'][rt]['decode_tok_s_b1']['median']:.2f}x"
                ideal = f"{dense['weight_bytes_per_token'] / m['weight_bytes_per_token']:.2f}x"
            size = m["onnx_mb"] if rt == "onnxruntime" else m["hf_mb"]
            out.append(
                f"| {label} | {_mm(s, 'ttft_s', '.0f', 1e3)} | {_mm(s, 'decode_tok_s_b1', '.1f')} | "
                f"{_mm(s, 'decode_tok_s_batch', '.1f')} | {sp} | {ideal} | {_mm(s, 'peak_rss_mb', '.0f')} | "
                f"{size:.0f} |"
            )
    return out


def plots(res: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    models = res["models"]
    q = {k: v for k, v in models.items() if "quality" in v}
    if q:
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        for mode, marker in (("uniform", "o"), ("per-layer", "s")):
            # decilm and per-layer are both widths searched per layer; only the file layout differs.
            pts = sorted(
                (_ratio(m), m["quality"]["wikitext2"]["ppl"], m["quality"]["mean_acc"], k)
                for k, m in q.items()
                if (m["layout"] == "uniform") == (mode == "uniform") or (mode == "uniform" and k == "dense")
            )
            if pts:
                ax[0].plot([x[0] for x in pts], [x[1] for x in pts], marker=marker, label=f"ours, {mode}")
                ax[1].plot([x[0] for x in pts], [x[2] for x in pts], marker=marker, label=f"ours, {mode}")
        ax[0].set(xlabel="fraction of parameters removed", ylabel="WikiText-2 perplexity", title="Perplexity")
        ax[1].set(xlabel="fraction of parameters removed", ylabel="mean zero-shot acc", title="Zero-shot accuracy")
        for a in ax:
            a.grid(alpha=0.3)
            a.legend()
        fig.tight_layout()
        fig.savefig(out / "quality.png", dpi=110)
        plt.close(fig)
        files.append("quality.png")
    if res.get("methods"):
        rows = res["methods"]
        fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
        # A collapsed method (magnitude: ~1e6) would flatten every other line: clip at 30x dense.
        cap = 30 * rows[0]["quality"]["wikitext2"]["ppl"]
        for name in dict.fromkeys(r["variant"] for r in rows[1:]):
            pts = [(0.0, rows[0])] + sorted(
                ((1 - r["params"] / r["dense_params"], r) for r in rows if r["variant"] == name), key=lambda x: x[0]
            )
            style = "o-" if name.startswith("ours") else "s--"
            ppl = [r["quality"]["wikitext2"]["ppl"] for _, r in pts]
            ax[0].plot(
                [x for x, _ in pts],
                [min(v, cap) for v in ppl],
                style,
                label=name + (" (clipped)" if max(ppl) > cap else ""),
            )
            ax[1].plot([x for x, _ in pts], [r["quality"]["mean_acc"] for _, r in pts], style, label=name)
        ax[0].set(
            xlabel="fraction of parameters removed",
            ylabel="WikiText-2 perplexity (log)",
            yscale="log",
            title=f"Perplexity by method (clipped at {cap:.0f})",
        )
        ax[1].set(xlabel="fraction of parameters removed", ylabel="mean zero-shot acc", title="Accuracy by method")
        for a in ax:
            a.grid(alpha=0.3)
        ax[0].legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        fig.savefig(out / "methods.png", dpi=110)
        plt.close(fig)
        files.append("methods.png")
    s = {k: v for k, v in models.items() if "speed" in v}
    if s and "dense" in s:
        rts = res["preset"]["runtimes"]
        fig, ax = plt.subplots(1, len(rts), figsize=(4.5 * len(rts), 4), squeeze=False)
        d = s["dense"]
        for a, rt in zip(ax[0], rts):
            pts = sorted(
                (_ratio(m), m["speed"][rt]["decode_tok_s_b1"]["median"], m["weight_bytes_per_token"])
                for m in s.values()
                if "decode_tok_s_b1" in m["speed"][rt]
            )
            if not pts or "decode_tok_s_b1" not in d["speed"][rt]:
                continue
            base = d["speed"][rt]["decode_tok_s_b1"]["median"]
            a.plot([x[0] for x in pts], [x[1] for x in pts], "o-", label="measured")
            a.plot(
                [x[0] for x in pts],
                [base * d["weight_bytes_per_token"] / x[2] for x in pts],
                "k--",
                label="ideal (bytes read)",
            )
            a.set(
                title=RUNTIME_NAMES.get(rt, rt), xlabel="fraction of parameters removed", ylabel="decode tok/s, batch 1"
            )
            a.grid(alpha=0.3)
            a.legend()
        fig.tight_layout()
        fig.savefig(out / "speed.png", dpi=110)
        plt.close(fig)
        files.append("speed.png")
    return files


def write_report(res: dict, out: Path) -> None:
    m = res["machine"]
    with atomic_dir(out, force=True) as tmp:
        (tmp / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
        figs = plots(res, tmp)
        lines = [
            f"# prunekit bench: dense vs pruned ({res['preset']['name']} preset)",
            "",
            "Produced by:",
            "",
            "```bash",
            res["command"],
            "```",
            "",
            f"Machine: {cpu_text(m['cpu'], m.get('isa'))}, {m['cores']} cores"
            + (f", GPU {m['gpu']}" if m.get("gpu") else "")
            + f"; {res['threads']} threads, compute dtype {res['dtype']}; {res['date']}; "
            f"{res['seconds'] / 60:.0f} min in all.",
            "",
            "| model | layout | params | weights read per token | artifact |",
            "|---|---|---|---|---|",
        ]
        for label, mm in res["models"].items():
            lines.append(
                f"| {label} | {mm['layout']} | {(mm['params'] or 0) / 1e6:.1f}M | "
                f"{mm['weight_bytes_per_token'] / 2**20:.0f} MB | `{mm['artifact']}` |"
            )
        lines += [""] + quality_tables(res) + [""] + method_tables(res) + [""] + speed_tables(res) + [""]
        lines += [f"![{f}]({f})" for f in figs]
        (tmp / "report.md").write_text("\n".join(lines) + "\n")
