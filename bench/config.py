"""The typed config of `prunekit bench` (what to compare, how much of each eval set, which runtimes) and the
presets its --preset names (`make bench` runs full, CI's `make bench-quick` quick)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prunekit.config import Config, check, check_positive, comma_list, opt

from .models import FULL, QUICK, Variant

RUNTIMES = ("torch", "onnxruntime", "vllm")


@dataclass
class Preset:
    """A named set of bench settings: the models, their calibration, the eval limits, the speed runs."""

    name: str
    variants: tuple[Variant, ...]
    compress: dict  # rounds, samples, seq_len for the pruned models
    seq_len: int = 512  # perplexity windows
    wikitext_limit: int | None = None
    wikitext_long: int | None = 2048  # WikiText-2 also at the papers' window (main models only); None: not
    domain_samples: int = 8
    task_limit: int | None = None
    prompt_len: int = 128
    new_tokens: int = 64
    batch: int = 8
    repeats: int = 3
    runtimes: tuple[str, ...] = RUNTIMES
    tasks: tuple[str, ...] = field(
        default_factory=lambda: ("piqa", "hellaswag", "arc_easy", "arc_challenge", "boolq", "winogrande", "openbookqa")
    )
    # The method grid (bench/methods.py): compare's variants at these ratios, pruned in-process with
    # the calibration budget of `make compare`. method_eval overrides wikitext_limit, domain_samples
    # and task_limit for the grid (it scores ~19 models: a limited run may want them smaller).
    methods: tuple[str, ...] = ()
    method_ratios: tuple[float, ...] = (0.2, 0.4)
    method_compress: dict = field(default_factory=lambda: {"rounds": 2, "samples": 32, "seq_len": 256})
    method_eval: dict = field(default_factory=dict)


# The grid the compress issue asked for: ours iterative and one-shot, single-domain calibration, no
# compensation, and the published baselines.
GRID = (
    "ours",
    "ours-oneshot",
    "ours-c4only",
    "ours-nocomp",
    "magnitude",
    "wanda-sp",
    "flap",
    "taylor",
    "block-influence",
)

FP32_TASK_LIMIT = 500  # zero-shot documents per task for the main models where the CPU has no native bf16

PRESETS = {
    # The method grid scores ~19 models: its own limit, stated in the report.
    "full": Preset(
        "full", FULL, {"rounds": 2, "samples": 64, "seq_len": 512}, methods=GRID, method_eval={"task_limit": 200}
    ),
    # Small calibration and limits; CI runs it (about 15 min on 2 cores from scratch, mostly the two ONNX
    # exports and two vLLM starts). It asserts nothing about speed.
    "quick": Preset(
        "quick",
        QUICK,
        {"rounds": 1, "samples": 8, "seq_len": 128},
        seq_len=256,
        wikitext_limit=4,
        wikitext_long=512,
        domain_samples=1,
        task_limit=10,
        prompt_len=32,
        new_tokens=16,
        batch=4,
        repeats=1,
        methods=("ours", "wanda-sp"),
        method_ratios=(0.2,),
        method_compress={"rounds": 1, "samples": 8, "seq_len": 128},
    ),
}


@dataclass(frozen=True)
class BenchConfig(Config):
    preset: str = opt(
        "full",
        "full: full eval sets, 20/40% and per-layer, method grid; quick: small limits (~15 min)",
        choices=tuple(PRESETS),
    )
    out: str = opt("bench/results", "results go to OUT/<date>-<machine>/")
    workdir: str = opt("bench/work", "where the compared artifacts are built and reused")
    artifact: tuple[str, ...] = opt(
        (),
        "use an existing export artifact for a model label, LABEL=DIR (dense, 20%, "
        "40%, '30% per-layer'); repeat the flag for several",
        metavar="LABEL=DIR",
        append=True,
    )
    models: tuple[str, ...] | None = opt(
        None,
        "main models to compare, by label (default: the preset's: full = "
        "dense, 20%, 40%, '30% per-layer'; quick = dense, 20%), or 'none' for "
        "the method grid alone",
        type=comma_list(),
    )
    runtimes: tuple[str, ...] = opt(RUNTIMES, "runtimes to time")
    limit: int | None = opt(None, "examples per zero-shot task (default: the preset's)", type=int)
    wikitext_windows: int | None = opt(None, "WikiText-2 windows (default: the preset's)", type=int)
    domain_samples: int | None = opt(None, "held-out windows per domain (default: the preset's)", type=int)
    repeats: int | None = opt(None, "speed repeats per model and runtime (default: the preset's)", type=int)
    threads: int | None = opt(None, "threads for every runtime (default: all cores)", type=int)
    device: str = opt(
        "auto",
        "where the PyTorch runs (quality and speed) compute: cpu, cuda, or auto (cuda when torch sees one)",
        choices=("auto", "cpu", "cuda"),
    )
    shapes: tuple[str, ...] = opt(
        (),
        "instead: speed of cuts of random-weight models in real shapes on every "
        "runtime, e.g. smollm2-135m,qwen2.5-0.5b (see prunekit.bench.shapes)",
        type=comma_list(),
    )
    cuts: tuple[str, ...] | None = opt(
        None,
        "with --shapes: the cuts, e.g. '20%,40%,30% per-layer,20% a64' "
        "(default: dense, 20%, 40%, 30%, 30% per-layer, 30% per-layer generic)",
        type=comma_list(),
    )
    profile_cut: str | None = opt(
        None,
        "with --shapes: also break down the per-token time of dense and this cut "
        "of the first shape on every runtime, from each runtime's profiler (e.g. 40%)",
    )
    paired: int | None = opt(
        None,
        "with --shapes: also time each cut against dense in one process, N pairs, their "
        "decode steps in turn (robust to the machine's speed phases)",
        type=int,
    )
    model: str = opt("default", "the dense model to prune and compare (local path or hub id)")
    methods: tuple[str, ...] | None = opt(
        None,
        "method grid: comma list of `prunekit compare` variants, or 'none' "
        "(default: the preset's; full = ours, ours-oneshot, ours-c4only, "
        "ours-nocomp, magnitude, wanda-sp, flap, taylor, block-influence)",
        type=comma_list(),
    )
    method_ratios: tuple[float, ...] | None = opt(
        None, "ratios of the method grid (default: the preset's; full = 0.2,0.4)", type=comma_list(float)
    )
    method_limit: int | None = opt(None, "examples per zero-shot task for the method grid (default: --limit)", type=int)
    method_windows: int | None = opt(
        None, "WikiText-2 windows for the method grid (default: --wikitext-windows)", type=int
    )
    method_domain_samples: int | None = opt(
        None, "held-out windows per domain for the method grid (default: --domain-samples)", type=int
    )
    skip_quality: bool = opt(False, "time only")
    skip_speed: bool = opt(False, "score only")

    def validate(self) -> None:
        from prunekit.compress import check_variants

        check(self.preset in PRESETS, f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}.")
        for a in self.artifact:
            check(
                "=" in a and a.split("=", 1)[0] and a.split("=", 1)[1],
                f"--artifact {a!r}: use LABEL=DIR, e.g. --artifact 20%=artifacts/NAME.",
            )
        bad = [r for r in self.runtimes if r not in RUNTIMES]
        check(not bad and bool(self.runtimes), f"unknown runtime(s) {bad}; choose from {', '.join(RUNTIMES)}.")
        for name in (
            "limit",
            "wikitext_windows",
            "domain_samples",
            "repeats",
            "threads",
            "method_limit",
            "paired",
            "method_windows",
            "method_domain_samples",
        ):
            check_positive(name, getattr(self, name))
        check(
            self.method_ratios is None or all(0 < r < 1 for r in self.method_ratios),
            f"--method-ratios must be fractions in (0, 1), got {self.method_ratios}.",
        )
        if self.models and self.models != ("none",):
            known = {v.label for v in PRESETS[self.preset].variants}
            bad = [m for m in self.models if m not in known]
            check(
                not bad,
                f"unknown model label(s) {bad} for preset {self.preset}; choose from {', '.join(sorted(known))}.",
            )
        if self.methods and self.methods != ("none",):
            check_variants(list(self.methods))
        if self.shapes:
            from .shapes import SHAPES

            bad = [s for s in self.shapes if s not in SHAPES]
            check(not bad, f"unknown shape(s) {bad}; choose from {', '.join(SHAPES)}.")
        if self.cuts:
            from .shapes import parse_cut

            for c in self.cuts:
                parse_cut(c)
        check(self.profile_cut is None or bool(self.shapes), "--profile-cut goes with --shapes.")
        check(self.paired is None or bool(self.shapes), "--paired goes with --shapes.")

    def given(self) -> dict[str, str]:
        return dict(a.split("=", 1) for a in self.artifact)
