"""The typed configs of `prunekit compress` and `prunekit compare`: defaults and checks in one place."""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.config import DTYPES, Config, check, check_choice, check_positive, comma_list, opt

STRUCTURES = ("mlp", "heads", "layers")
MODES = ("uniform", "per-layer")
SELECTIONS = ("score", "obs")
# The fields the planner reads (plan.py): the deployment constraints.
CONSTRAINTS = ("ratio", "ratio_of", "structures", "mode", "align", "tp", "tolerance")
# "taylor" needs gradients, not statistics (iterate.taylor_scores); the rest are scores.SCORERS.
METHODS = ("block-influence", "flap", "hybrid", "magnitude", "taylor", "wanda-sp")


@dataclass(frozen=True)
class CompressConfig(Config):
    """Everything that decides a compress run. Fields read by the planner (ratio .. tolerance) are the
    deployment constraints; the rest choose the method, the data and the machine."""

    out: str = opt("", "output checkpoint directory", required=True)
    model: str = opt("default", "hub id or local HF directory ('default': the offline SmolLM2-135M-Instruct)")
    calib: str = opt("default", "calibration mix YAML ('default': the packaged 6-domain mix)")
    ratio: float = opt(0.2, "fraction of parameters to remove")
    ratio_of: str = opt("total", "what --ratio is a fraction of (both are reported)", choices=("total", "decoder"))
    method: str = opt("hybrid", "importance score", choices=METHODS)
    structures: tuple[str, ...] = opt(
        ("mlp",),
        "what may be removed: mlp, heads, layers (mlp alone measured "
        "best: removing a KV group cost SmolLM2-135M far more than the same "
        "parameters of MLP)",
    )
    mode: str = opt(
        "uniform",
        "uniform: same shape in every layer (stock checkpoint); per-layer: widths chosen "
        "globally (needs export's per-layer layout)",
        choices=MODES,
    )
    rounds: int = opt(2, "calibration rounds (1: one-shot)")
    selection: str = opt(
        "score",
        "which MLP channels a layer keeps: the highest scores, or obs (greedy Optimal "
        "Brain Surgeon on the refit's gram: the channels whose loss the refit recovers best)",
        choices=SELECTIONS,
    )
    allocation: str = opt(
        "score",
        "per-layer mode: widths by comparing scores across layers, or kl (each layer cut "
        "alone to a grid of widths and the KL of the model's next-token distribution from the "
        "dense one measured; a knapsack picks the widths, kept only if the composed model beats "
        "uniform widths on the same tokens). kl needs --selection obs and --rounds 1; "
        "--method is then unused (OBS orders the channels)",
        choices=("score", "kl"),
    )
    # 4 (one sequence a domain of the default mix) against 8: WikiText-2 64.00 vs 63.86 at 20%, 163.48 vs 164.73 at
    # 40%, the KL-widths compress 254 vs 349 s and 269 vs 348 s (docs/results/compress-levers.md).
    search_samples: int = opt(
        4, "calibration sequences the kl allocation measures on (an equal share per domain, rounded up)"
    )
    search_step: int = opt(
        256, "width grid of the kl allocation (rounded down to a multiple of --align, and of --tp where --align is not)"
    )
    compensate: bool = opt(True, "do not refit down_proj/o_proj after a cut", flag="--no-compensate")
    # measured: 1e-4 -> 35.4, 1e-2 -> 35.0, 1e-1 -> 36.2 geomean held-out ppl at 20% (docs/results)
    ridge: float = opt(1e-2, "refit ridge, times the median gram diagonal")
    recover_tokens: int = opt(
        0,
        "after the cut, train the decoder toward the dense model's next-token "
        "distribution on this many tokens of the calibration mix's pools (0: off; "
        "training, not retraining-free)",
    )
    # Measured at 20% on the default model (docs/results/compress-levers.md): at 196,608 tokens (96 steps) 1.5e-4 ->
    # WikiText-2 58.48, 4e-4 -> 57.11, 1e-3 -> 58.10 (the guard backed it off to 2.5e-4); at 32,768 tokens (16
    # steps) 62.54 vs 67.65 and at 65,536 (32 steps) 60.83 vs 64.26 the other way round. So the default follows the
    # run's length (compress/recover.py auto_lr). Too high for a model, the guard restores the best state and
    # divides it by 4.
    recover_lr: float | None = opt(
        None,
        "peak learning rate of the recovery (AdamW, warm-up then cosine); default: by the run's length, 1.5e-4 up "
        "to 32 steps rising to 4e-4 at 96 (the default 196,608 tokens)",
        type=float,
    )
    recover_batch: int = opt(4, "sequences of the mix's length per recovery step")
    recover_seq_len: int | None = opt(
        None,
        "train the recovery on pieces of this many tokens of each mix-length sequence (a divisor of it; "
        "default: 256 where it divides the mix's length, else whole sequences); a step holds the same tokens",
        type=int,
    )
    align: int = opt(64, "MLP widths are multiples of this (64, 128, 256)")
    tp: int = opt(1, "tensor-parallel size that KV heads, query heads and widths must divide")
    tolerance: float = opt(0.02, "allowed |achieved - target| ratio")
    samples: int | None = opt(None, "total calibration sequences (default: the mix's, 64)", type=int)
    seq_len: int | None = opt(None, "tokens per calibration sequence (default: the mix's, 512)", type=int)
    domains: tuple[str, ...] = opt((), "calibrate on these mix domains only (comma list)", type=comma_list())
    seed: int | None = opt(None, "calibration sampling seed (default: the mix's)", type=int)
    batch_size: int = opt(4, "calibration sequences per forward")
    quick_eval: int = opt(2, "held-out sequences per domain for the per-round perplexity (0: off)", cli=False)
    dtype: str = opt(
        "auto", "compute dtype (auto: bf16 on CPUs with AMX/AVX512-BF16 or a GPU, else fp32)", choices=DTYPES
    )
    device: str = opt(
        "auto", "where the math runs: cpu, cuda, or auto (cuda when torch sees one)", choices=("auto", "cpu", "cuda")
    )
    offload: str = opt(
        "auto",
        "keep the weights in host memory in their stored dtype and move one decoder layer "
        "at a time to the device: on, off, or auto (on when the model in its compute dtype would "
        "take more than half the device's free memory)",
        choices=("auto", "on", "off"),
    )
    threads: int | None = opt(None, "torch threads (default: torch's choice)", type=int)
    eval_cache: bool = opt(
        True,
        "measure the dense model's held-out perplexity again rather than take it from an "
        "earlier run on the same source, held-out text, placement and versions (kept under "
        "$PRUNEKIT_EVAL_CACHE, default $PRUNEKIT_HOME/dense-eval; the new figure replaces it)",
        flag="--no-eval-cache",
    )
    force: bool = opt(False, "replace a non-empty --out")
    trust_remote_code: bool = opt(False, "run the model's own code (off by default)")
    allow_pickle: bool = opt(False, "accept *.bin/*.pt weights (unsafe: unpickling runs code)")

    def validate(self) -> None:
        check(
            isinstance(self.ratio, (int, float)) and 0.0 < self.ratio < 1.0,
            f"--ratio must be in (0, 1), got {self.ratio}.",
        )
        check_choice("ratio_of", self.ratio_of, ("total", "decoder"))
        check_choice("method", self.method, METHODS)
        bad = sorted(set(self.structures) - set(STRUCTURES))
        check(
            not bad and bool(self.structures),
            f"unknown structure(s) {bad or '(none given)'}; choose from {', '.join(STRUCTURES)}.",
        )
        check_choice("mode", self.mode, MODES)
        check(
            not (self.mode == "per-layer" and "layers" in self.structures),
            "per-layer mode chooses widths, not layers; use --structures mlp,heads with --mode per-layer, "
            "or layer removal with --mode uniform.",
        )
        check(
            self.method != "block-influence" or set(self.structures) == {"layers"},
            "block-influence scores whole layers only: use --structures layers.",
        )
        check_positive("rounds", self.rounds, allow_none=False)
        check_choice("selection", self.selection, SELECTIONS)
        check_choice("allocation", self.allocation, ("score", "kl"))
        check(
            self.allocation == "score"
            or (self.mode == "per-layer" and set(self.structures) == {"mlp"} and self.selection == "obs"),
            "--allocation kl searches per-layer MLP widths: use it with --mode per-layer --structures mlp "
            "--selection obs.",
        )
        check(
            self.allocation == "score" or self.rounds == 1,
            "--allocation kl searches once, against the model it starts from: use --rounds 1.",
        )
        check_positive("search_samples", self.search_samples, allow_none=False)
        check_positive("search_step", self.search_step, allow_none=False)
        check(
            self.selection == "score" or self.compensate,
            "--selection obs chooses channels by what the refit recovers: it needs the refit (drop --no-compensate).",
        )
        check(
            isinstance(self.recover_tokens, int) and self.recover_tokens >= 0,
            f"--recover-tokens must be a non-negative integer, got {self.recover_tokens!r}.",
        )
        check(self.recover_lr is None or self.recover_lr > 0, f"--recover-lr must be > 0, got {self.recover_lr}.")
        check_positive("recover_batch", self.recover_batch, allow_none=False)
        check_positive("recover_seq_len", self.recover_seq_len)
        check(self.ridge >= 0, f"--ridge must be >= 0, got {self.ridge}.")
        check_positive("align", self.align, allow_none=False)
        # Kernels tile widths in powers of two; a width that is a multiple of 48 gains nothing over one of 16.
        check(
            self.align & (self.align - 1) == 0,
            f"--align must be a power of two (1, 2, ..., 64, 128, 256), got {self.align}.",
        )
        check_positive("tp", self.tp, allow_none=False)
        check(0.0 < self.tolerance < 1.0, f"--tolerance must be in (0, 1), got {self.tolerance}.")
        check_positive("samples", self.samples)
        check(
            self.seq_len is None or (isinstance(self.seq_len, int) and self.seq_len >= 2),
            f"--seq-len must be at least 2, got {self.seq_len}.",
        )
        check(
            self.seed is None or (isinstance(self.seed, int) and self.seed >= 0),
            f"--seed must be a non-negative integer, got {self.seed!r}.",
        )
        check_positive("batch_size", self.batch_size, allow_none=False)
        check(self.quick_eval >= 0, f"quick_eval must be >= 0, got {self.quick_eval}.")
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        check_choice("offload", self.offload, ("auto", "on", "off"))
        check_positive("threads", self.threads)

    def needs_whole_model(self) -> str | None:
        """The setting that runs the whole model at once (offloading runs one layer at a time), if any."""
        for name, on in (
            ("--method taylor (gradients of the whole model)", self.method == "taylor"),
            ("--allocation kl (the whole model's output distribution)", self.allocation == "kl"),
            ("--recover-tokens (training the whole model)", self.recover_tokens > 0),
        ):
            if on:
                return name
        return None

    def algorithm(self) -> dict:
        """The fields that decide the cut, recorded in the manifest as `settings` in the shape prunekit/1
        has always used: the deployment constraints nested under "constraints"."""
        d = self.to_dict(
            exclude=(
                "out",
                "model",
                "calib",
                "force",
                "threads",
                "trust_remote_code",
                "allow_pickle",
                "device",
                "offload",
                "eval_cache",
            )
        )
        d["constraints"] = {k: d.pop(k) for k in CONSTRAINTS}
        return d


# The recovered variants' budget unless compare --recover-tokens says otherwise (~6 min fp32, 2 cores).
RECOVER_TOKENS = 32768

# name -> (CompressConfig overrides, calibration domains or None for the whole mix). "ours" is the default
# method; the rest change one thing at a time or are the baselines a reviewer asks for.
VARIANTS: dict[str, tuple[dict, tuple[str, ...] | None]] = {
    "ours": ({}, None),
    "ours-oneshot": ({"rounds": 1}, None),
    "ours-c4only": ({}, ("web",)),
    "ours-nocomp": ({"compensate": False}, None),
    "ours-perlayer": ({"mode": "per-layer"}, None),
    "ours-obs": ({"selection": "obs"}, None),
    "ours-obs-oneshot": ({"selection": "obs", "rounds": 1}, None),
    "ours-kl": ({"selection": "obs", "mode": "per-layer", "allocation": "kl", "rounds": 1}, None),
    # Not retraining-free: the cut, then distillation toward the dense model (compare --recover-tokens).
    "ours-recover": ({"recover_tokens": RECOVER_TOKENS}, None),
    "ours-oneshot-recover": ({"rounds": 1, "recover_tokens": RECOVER_TOKENS}, None),
    "ours-kl-recover": (
        {"selection": "obs", "mode": "per-layer", "allocation": "kl", "rounds": 1, "recover_tokens": RECOVER_TOKENS},
        None,
    ),
    "magnitude": ({"method": "magnitude", "rounds": 1, "compensate": False}, None),
    "wanda-sp": ({"method": "wanda-sp", "rounds": 1, "compensate": False}, None),
    "flap": ({"method": "flap", "rounds": 1, "compensate": False}, None),
    "taylor": ({"method": "taylor", "rounds": 1, "compensate": False}, None),
    "block-influence": (
        {"method": "block-influence", "rounds": 1, "compensate": False, "structures": ("layers",)},
        None,
    ),
}


def check_variants(variants) -> None:
    unknown = [v for v in variants if v not in VARIANTS]
    check(not unknown, f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}.")


@dataclass(frozen=True)
class CompareConfig(Config):
    """`prunekit compare`: several variants at several ratios on one model, data and budget."""

    model: str = opt("default", "hub id or local HF directory")
    calib: str = opt("default", "calibration mix YAML")
    ratios: tuple[float, ...] = opt((0.2, 0.4), "fractions of parameters to remove")
    variants: tuple[str, ...] = opt(
        (),
        "comma list of variants (default: all but the *-recover ones, which train; see compress.config.VARIANTS)",
        type=comma_list(),
    )
    rounds: int = opt(2, "rounds of the iterative variants")
    structures: tuple[str, ...] = opt(("mlp",), "what may be removed")
    ratio_of: str = opt("total", "what the ratios are fractions of", choices=("total", "decoder"))
    align: int = opt(64, "MLP widths are multiples of this")
    samples: int | None = opt(None, "total calibration sequences (default: the mix's)", type=int)
    seq_len: int | None = opt(None, "tokens per calibration sequence", type=int)
    seed: int | None = opt(None, "calibration sampling seed", type=int)
    ridge: float = opt(1e-2, "refit ridge, times the median gram diagonal")
    tolerance: float = opt(0.02, "allowed |achieved - target| ratio")
    recover_tokens: int | None = opt(None, "recovery budget of the *-recover variants (default: 32768)", type=int)
    threads: int | None = opt(None, "torch threads", type=int)
    out: str | None = opt(None, "folder for compare.json and compare.md")

    def validate(self) -> None:
        check(
            bool(self.ratios) and all(0 < r < 1 for r in self.ratios),
            f"--ratios must be fractions in (0, 1), got {self.ratios}.",
        )
        check_variants(self.variants)
        self.base()  # the shared settings must be valid for a compress run too
        check_positive("recover_tokens", self.recover_tokens)
        check_positive("threads", self.threads)

    def base(self, ratio: float | None = None) -> CompressConfig:
        return CompressConfig(
            model=self.model,
            calib=self.calib,
            ratio=ratio or self.ratios[0],
            rounds=self.rounds,
            structures=self.structures,
            ratio_of=self.ratio_of,
            align=self.align,
            samples=self.samples,
            seq_len=self.seq_len,
            seed=self.seed,
            ridge=self.ridge,
            tolerance=self.tolerance,
            threads=self.threads,
        )
