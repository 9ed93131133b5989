"""Compress at real shapes: wall time and peak memory per stage, each setting in a fresh process.

The source is a random-weight model in a published shape (bench/shapes.py's SHAPES), stored in bf16 as the
published checkpoints are; memory and time depend on the shapes, not on the values. Each setting (e.g.
--offload off and on) runs `prunekit compress` in its own process, so one run's peak cannot hide in
another's, and the table is read from each manifest's profile.

Every run evaluates the dense model itself (`--no-eval-cache`) unless its setting says `eval-cache=on`: a
figure of a cold run, not one that found an earlier run's evaluation. Before and after each run a fixed
matmul (2048^3 in the compute dtype, on the same threads) measures the machine's speed, since a shared
VM's varies by 2-3x within minutes: the report then tells a slower run from a slower machine.

With --products each run also counts its matrix products per stage (prunekit.timer; a few microseconds per
tensor operation): the report then gives each stage's TFLOP, the rate it ran them at, and the least time the
run's products take at the machine's measured matmul speed, the floor that no overhead saved can go below.

    python -m prunekit.bench.compress_scale --shape qwen2.5-0.5b --settings 'offload=off;offload=on' --threads 2
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from prunekit.artifact import read_manifest, write_json_atomic, write_text_atomic
from prunekit.env import COUNT_PRODUCTS_VAR, child_env, cpu_text
from prunekit.errors import PrunekitError

from .shapes import SHAPES
from .timing import machine, machine_slug

DONE = ".complete"  # written last into a source directory: a killed build is rebuilt, not reused


def source(shape: str, work: Path, tokenizer: str = "default", log=print) -> Path:
    """The random-weight bf16 checkpoint of `shape` (built once, reused)."""
    import torch
    import transformers

    from prunekit.checkpoint import save_model, save_tokenizer
    from prunekit.loading import load_tokenizer

    if shape not in SHAPES:
        raise PrunekitError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}.")
    out = work / f"{shape}-bf16-src"
    if (out / DONE).is_file():
        return out
    cls, base = SHAPES[shape]
    tok = load_tokenizer(tokenizer)
    if len(tok) > base["vocab_size"]:
        raise PrunekitError(
            f"the tokenizer of {tokenizer!r} has {len(tok)} tokens, more than shape {shape}'s "
            f"vocabulary of {base['vocab_size']}; pass a smaller one with --tokenizer."
        )
    config = getattr(transformers, cls)(**base)
    config.architectures = [cls.replace("Config", "ForCausalLM")]
    log(f"compress_scale: building a random {shape} in bf16 at {out}")
    torch.manual_seed(0)
    # Random init of an 8B model takes a minute on a CPU and seconds on a GPU; the values do not matter.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out)
    save_tokenizer(tok, out)
    (out / DONE).write_text("")
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the compress runs are child processes: give them the device's memory
    return out


def parse_settings(text: str) -> list[dict[str, str]]:
    """'offload=off;offload=on,rounds=1' -> [{'offload': 'off'}, {'offload': 'on', 'rounds': '1'}]."""
    out = []
    for part in text.split(";"):
        kv = {}
        for item in filter(None, part.split(",")):
            if "=" not in item:
                raise PrunekitError(f"setting {item!r} is not KEY=VALUE (e.g. offload=on).")
            k, v = item.split("=", 1)
            kv[k.strip().replace("_", "-")] = v.strip()
        out.append(kv)
    return out


def machine_tflops(threads: int) -> float:
    """The median speed of a 2048^3 matmul in the dtype compress computes in on this machine (TFLOP/s)."""
    import torch

    from prunekit.env import compute_dtype

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        a = torch.randn(2048, 2048, device=dev).to(getattr(torch, compute_dtype(dev)))
        times = []
        for _ in range(6):
            if dev == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            a @ a
            if dev == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return round(2 * 2048**3 / sorted(times[1:])[2] / 1e12, 2)
    finally:
        torch.set_num_threads(old)


def run(
    shape: str,
    settings: list[dict[str, str]],
    threads: int,
    ratio: float,
    work: Path,
    log=print,
    on_row=None,
    tokenizer: str = "default",
    products: bool = False,
) -> list[dict]:
    """Each setting's run; `on_row(rows)` after each (a report that grows as the runs finish). With `products`
    each run counts its matrix products per stage."""
    src = source(shape, work / "shapes", tokenizer, log=log)
    rows = []
    for s in settings:
        label = ",".join(f"{k}={v}" for k, v in s.items()) or "defaults"
        # The checkpoints go to the work folder (weights are never committed); the report elsewhere.
        dest = work / "compress-scale" / (shape + "-" + re.sub(r"[^A-Za-z0-9.]+", "-", label))
        s = dict(s)
        nproc = int(s.pop("nproc", "1"))  # data-parallel ranks under torchrun, the threads split between them
        cached = s.pop("eval-cache", "off")
        if cached not in ("on", "off"):
            raise PrunekitError(f"setting eval-cache={cached!r}: use on or off.")
        launch = (
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
            if nproc > 1
            else [sys.executable]
        )
        cmd = launch + [
            "-m",
            "prunekit",
            "compress",
            "--model",
            str(src),
            "--out",
            str(dest),
            "--ratio",
            str(ratio),
            "--threads",
            str(max(1, threads // nproc)),
            "--force",
        ]
        for k, v in s.items():
            cmd += [f"--{k}", v]
        if cached == "off":
            cmd.append("--no-eval-cache")
        log(f"compress_scale: {label}: {' '.join(cmd[1:])}")
        before = machine_tflops(threads)
        t0 = time.time()
        env = child_env(**{COUNT_PRODUCTS_VAR: "1" if products else "0"})
        if subprocess.run(cmd, env=env).returncode != 0:
            raise PrunekitError(
                f"compress failed for setting {label!r} (its output is above); the rows "
                "finished before it are in the report."
            )
        wall = round(time.time() - t0, 1)
        m = read_manifest(dest)
        rows.append(
            {
                "setting": label,
                "wall_s": wall,
                "placement": m.placement,
                "machine_tflops": [before, machine_tflops(threads)],
                "dense_from_cache": bool(m.quality.get("dense_from_cache")),
                "profile": m.profile,
                "heldout_ppl": m.quality["heldout_ppl"],
                "params": m.params,
                "command": " ".join(
                    (["torchrun"] + launch[3:] + ["-m", "prunekit"] if nproc > 1 else ["prunekit"])
                    + cmd[cmd.index("compress") :]
                ),
            }
        )
        if on_row:
            on_row(rows)
    return rows


def stage_of(row: dict, name: str) -> dict | None:
    """A run's profile row of stage `name`, or None where that run had no such stage."""
    return next((x for x in row["profile"]["stages"] if x["stage"] == name), None)


def gpu_mb(stages: list[dict]) -> str:
    """' / N GPU': the largest peak device memory of these stages, where a GPU computed them ('' elsewhere)."""
    peaks = [st["peak_device_mb"] for st in stages if "peak_device_mb" in st]
    return f" / {max(peaks)} GPU" if peaks else ""


def markdown(shape: str, rows: list[dict], threads: int) -> str:
    import torch

    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    stages = list(dict.fromkeys(st["stage"] for r in rows for st in r["profile"]["stages"]))
    lines = [
        f"# compress at the {shape} shape (random weights, stored bf16)",
        "",
        f"Machine: {cpu_text()}{gpu}, {threads} threads. Seconds / peak RSS MB (/ peak GPU MB where one "
        "computes) per stage; each setting in a fresh process.",
        "",
        "| stage | " + " | ".join(r["setting"] for r in rows) + " |",
        "|---|" + "---:|" * len(rows),
    ]
    for name in stages:
        cells = []
        for r in rows:
            st = stage_of(r, name)
            cells.append(f"{st['seconds']:.0f} s / {st['peak_rss_mb']}{gpu_mb([st])}" if st else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| **whole run** | "
        + " | ".join(
            f"**{r['wall_s']:.0f} s / {r['profile']['peak_rss_mb']}{gpu_mb(r['profile']['stages'])}**" for r in rows
        )
        + " |"
    )
    lines.append(
        "| placement | "
        + " | ".join(
            f"{r['placement']['device']} {r['placement']['dtype']}"
            + (f", offload (home {r['placement']['home_dtype']})" if r["placement"]["offload"] else "")
            for r in rows
        )
        + " |"
    )
    lines.append(
        "| dense eval | "
        + " | ".join("from an earlier run's cache" if r.get("dense_from_cache") else "measured" for r in rows)
        + " |"
    )
    lines.append(
        "| machine speed before / after (2048^3 matmul, TFLOP/s) | "
        + " | ".join(" / ".join(map(str, r["machine_tflops"])) if "machine_tflops" in r else "-" for r in rows)
        + " |"
    )
    lines += products_table(rows, stages)
    lines += ["", "Commands:", ""] + [f"- `{r['command']}`" for r in rows]
    return "\n".join(lines) + "\n"


def products_table(rows: list[dict], stages: list[str]) -> list[str]:
    """Where runs counted their products: TFLOP per stage and the rate each stage ran them at, and the least
    time the whole run's products take at the faster of the machine's two measured speeds."""
    counted = [r for r in rows if "tflop" in r["profile"]]
    if not counted:
        return []
    lines = [
        "",
        "Matrix products (mm, addmm, bmm; attention not counted) per stage: TFLOP @ the TFLOP/s the stage "
        "ran them at, its seconds included everything else it did.",
        "",
        "| stage | " + " | ".join(r["setting"] for r in counted) + " |",
        "|---|" + "---:|" * len(counted),
    ]
    for name in stages:
        cells = []
        for r in counted:
            st = stage_of(r, name)
            cells.append(f"{st['tflop']:.2f} @ {st['tflop'] / st['seconds']:.3f}" if st and st["seconds"] > 0 else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **whole run** | " + " | ".join(f"**{r['profile']['tflop']:.1f} TFLOP**" for r in counted) + " |")
    lines.append(
        "| products alone at the machine's faster measured speed | "
        + " | ".join(
            f"{r['profile']['tflop'] / max(r['machine_tflops']):.0f} s of {r['wall_s']:.0f} s" for r in counted
        )
        + " |"
    )
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m prunekit.bench.compress_scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--shape", default="qwen2.5-0.5b", help="a shape of bench/shapes.py")
    ap.add_argument(
        "--settings",
        default="offload=off;offload=on",
        help="';'-separated runs, each ','-separated compress options KEY=VALUE",
    )
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--out", default=None, help="report folder (default: bench/results/<date>-<machine>-compress-<shape>[-<tag>])"
    )
    ap.add_argument("--tag", default="", help="appended to the default report folder's name")
    ap.add_argument(
        "--tokenizer",
        default="default",
        help="the tokenizer the source carries (calibration text is tokenized with it)",
    )
    ap.add_argument("--workdir", default="bench/work", help="sources and checkpoints are built and kept here")
    ap.add_argument(
        "--products",
        action="store_true",
        help="count each stage's matrix products (TFLOP) and report the least time they take at the machine's speed",
    )
    a = ap.parse_args(argv)
    out = Path(
        a.out
        or f"bench/results/{time.strftime('%Y-%m-%d')}-{machine_slug(machine())}-compress-{a.shape}"
        + (f"-{a.tag}" if a.tag else "")
    )

    def write(rows: list[dict]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "compress-scale.json", rows)
        write_text_atomic(out / "compress-scale.md", markdown(a.shape, rows, a.threads))

    try:
        rows = run(
            a.shape,
            parse_settings(a.settings),
            a.threads,
            a.ratio,
            Path(a.workdir),
            on_row=write,
            tokenizer=a.tokenizer,
            products=a.products,
        )
    except PrunekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(a.shape, rows, a.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
