"""The typed config of `prunekit bench`: what to compare, how much of each eval set, which runtimes."""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.config import Config, check, check_positive, comma_list, opt

RUNTIMES = ("torch", "onnxruntime", "vllm")
PROFILES = ("full", "quick")


@dataclass(frozen=True)
class BenchConfig(Config):
    profile: str = opt(
        "full",
        "full: full eval sets, 20/40% and per-layer, method grid; quick: small limits (~15 min)",
        choices=PROFILES,
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
        "main models to compare, by label (default: the profile's: full = "
        "dense, 20%, 40%, '30% per-layer'; quick = dense, 20%), or 'none' for "
        "the method grid alone",
        type=comma_list(),
    )
    runtimes: tuple[str, ...] = opt(RUNTIMES, "runtimes to time")
    limit: int | None = opt(None, "examples per zero-shot task (default: the profile's)", type=int)
    wikitext_windows: int | None = opt(None, "WikiText-2 windows (default: the profile's)", type=int)
    domain_samples: int | None = opt(None, "held-out windows per domain (default: the profile's)", type=int)
    repeats: int | None = opt(None, "speed repeats per model and runtime (default: the profile's)", type=int)
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
        "(default: the profile's; full = ours, ours-oneshot, ours-c4only, "
        "ours-nocomp, magnitude, wanda-sp, flap, taylor, block-influence)",
        type=comma_list(),
    )
    method_ratios: tuple[float, ...] | None = opt(
        None, "ratios of the method grid (default: the profile's; full = 0.2,0.4)", type=comma_list(float)
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

        check(self.profile in PROFILES, f"--profile must be one of {', '.join(PROFILES)}, got {self.profile!r}.")
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
            from .models import FULL, QUICK

            known = {v.label for v in (FULL if self.profile == "full" else QUICK)}
            bad = [m for m in self.models if m not in known]
            check(
                not bad,
                f"unknown model label(s) {bad} for profile {self.profile}; choose from {', '.join(sorted(known))}.",
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
