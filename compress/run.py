"""`prunekit compress`: load, calibrate, prune, report quality, and write the checkpoint atomically."""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch

from prunekit import __version__
from prunekit.artifact import Manifest, atomic_dir, check_out_dir, sha256_dir, write_manifest
from prunekit.checkpoint import save_model, save_tokenizer
from prunekit.config import check
from prunekit.dist import env_rank, finish, from_rank0, init_from_env, local_ranks
from prunekit.env import set_threads
from prunekit.families import family_for_config
from prunekit.faults import point
from prunekit.loading import check_local_dir, check_weight_shapes, load_config, load_model, load_tokenizer
from prunekit.offload import decide, place, resolve_device, unplace
from prunekit.perplexity import per_domain, table
from prunekit.timer import Timer, timed

from . import data as D
from . import dense_eval as DE
from . import plan as P
from .config import CompressConfig
from .iterate import prune
from .recover import recover_after_cut, recovery_data


def versions() -> dict:
    import transformers

    return {
        "prunekit": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def source_hash(source: str, model) -> str:
    p = Path(source)
    if p.is_dir():
        return "sha256:" + sha256_dir(p, "*.safetensors")
    return f"hub:{source}@{getattr(model.config, '_commit_hash', None) or 'unknown'}"


def load_teacher(source: str, cfg: CompressConfig):
    # Recovery never offloads (it trains the whole model): the teacher sits where the student computes.
    from prunekit.env import compute_dtype

    device = resolve_device(cfg.device)
    dtype = compute_dtype(device.type) if cfg.dtype == "auto" else cfg.dtype
    return load_model(
        source, dtype=dtype, device=str(device), trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle
    )[0]


def placement_plan(cfg: CompressConfig, config, fam, device: torch.device, log) -> dict:
    """Where the run computes (device, dtype) and whether it offloads, decided from the config alone,
    before the weights load (they load straight into the dtype they will be kept in). Under torchrun rank 0
    decides for all (the ranks must agree; on a CPU they share the host's memory)."""
    from prunekit.env import compute_dtype

    compute = getattr(torch, compute_dtype(device.type) if cfg.dtype == "auto" else cfg.dtype)
    stored = getattr(torch, str(getattr(config, "dtype", None) or "float32").replace("torch.", ""), torch.float32)
    shape = P.config_shape(config)
    n = shape.params(P.Dims.of(config, fam)) if shape is not None else None
    home, why = decide(
        cfg.offload,
        n,
        compute,
        stored,
        device,
        cfg.needs_whole_model(),
        sharing=local_ranks() if device.type == "cpu" else 1,
    )
    rec = from_rank0(
        {
            "device": device.type,
            "dtype": str(compute).replace("torch.", ""),
            "offload": home is not None,
            "why": why,
            **({"home_dtype": str(home).replace("torch.", "")} if home is not None else {}),
        }
    )
    log(
        f"placement: {rec['device']}, {rec['dtype']}, "
        + (
            f"one layer at a time (weights kept in host memory in {rec['home_dtype']})"
            if rec["offload"]
            else "the whole model at once"
        )
        + f" ({rec['why']})"
    )
    return rec


def precheck(cfg: CompressConfig, log):
    """What the config and the weights' headers can tell before anything heavy runs: an unreachable target,
    a tensor-parallel size that does not fit, weights that are missing or cut short, and which artifact
    layout the plan will need. Returns the config as stored, the resolved source (local directory or hub id) and
    the family."""
    config, source, is_local = load_config(cfg.model, cfg.trust_remote_code)
    if is_local:
        check_local_dir(Path(source), cfg.allow_pickle)
        check_weight_shapes(Path(source), config, cfg.trust_remote_code)
    fam = family_for_config(config)
    P.precheck(config, fam, cfg)
    if cfg.mode == "per-layer":
        log(
            "per-layer widths: export will write "
            + (
                "the DeciLM layout (vLLM runs its own DeciLMForCausalLM) when only MLP widths differ, else "
                if fam.decilm
                else ""
            )
            + "the per-layer layout; both ship their modeling code (transformers "
            "loads it with trust_remote_code; verify pins its hash)."
        )
    return config, source, fam


def dense_heldout(
    model, heldout: dict, cfg: CompressConfig, source: str, src_hash: str, where: dict, ranks: int, log
) -> tuple[dict[str, float], bool]:
    """The dense model's held-out perplexity per domain, from the cache of earlier runs where one matches
    (compress.dense_eval), and whether it came from there. Rank 0's cache decides for every rank (they
    evaluate together)."""
    key = DE.cache_key(src_hash, source, heldout, where, cfg.batch_size, ranks)
    # --no-eval-cache measures again, and the figure it measures replaces the kept one.
    rec = from_rank0(DE.load(key, list(heldout)) if cfg.eval_cache else None)
    if rec is not None:
        log(
            f"dense held-out perplexity: from the cache of an earlier run ({DE.cache_dir()}), which measured it in "
            f"{rec.get('seconds', '?')} s (--no-eval-cache measures it again)"
        )
        return rec["ppl"], True
    t = time.time()
    ppl = per_domain(model, heldout, cfg.batch_size)
    if env_rank() == 0:
        DE.store(key, ppl, time.time() - t)
    return ppl, False


def _run(cfg: CompressConfig, log, inputs_hash: str | None, t0: float):
    """Everything but the save, each part in its stage of the profile."""
    with timed("load"):
        mix = D.load_mix(cfg.calib, seed=cfg.seed, seq_len=cfg.seq_len, total_samples=cfg.samples)
        stored_config, source, fam = precheck(cfg, log)
        device = resolve_device(cfg.device)
        ranks = init_from_env(device)  # first: the ranks then agree on the placement
        where = placement_plan(cfg, stored_config, fam, device, log)
        if ranks > 1:
            why = cfg.needs_whole_model()
            check(
                why is None,
                f"under torchrun the ranks share the calibration batches, layer by layer; {why} "
                "needs the whole model at once: run it in one process.",
            )
            log(f"data-parallel: {ranks} ranks share the calibration batches; rank 0 writes the checkpoint")
            where["ranks"] = ranks
        tok = load_tokenizer(source, cfg.trust_remote_code)
    with timed("mix"):
        # The text is packed before the weights load: a template that does not fit its records, or too little
        # text for the samples asked, is an error before the heavy part, not after it.
        data = D.build(mix, tok)
        calib = D.only_domains(mix, data.calib, cfg.domains, tok) if cfg.domains else data.calib
        log(
            f"calibration: {sum(len(v) for v in calib.values())} x {mix.seq_len} tokens from "
            f"{', '.join(calib)}; held-out: {', '.join(data.heldout)}"
        )
        rdata = recovery_data(mix, tok, cfg, cfg.domains) if cfg.recover_tokens else None
    with timed("load"):
        # Weights load on the host in the dtype they will be kept in: the home dtype when offloading.
        model, fam, source = load_model(
            source,
            dtype=where.get("home_dtype", where["dtype"]),
            trust_remote_code=cfg.trust_remote_code,
            allow_pickle=cfg.allow_pickle,
        )
        home = getattr(torch, where["home_dtype"]) if where["offload"] else None
        place(model, fam, torch.device(where["device"]), getattr(torch, where["dtype"]), home)
    t_data = time.time()
    src_hash = source_hash(source, model)
    with timed("dense eval"):
        dense_ppl, dense_cached = dense_heldout(model, data.heldout, cfg, source, src_hash, where, ranks, log)
    t_eval = time.time()
    record = prune(model, fam, calib, data.heldout, cfg, log)
    t_cut = time.time()
    recovery = None
    if cfg.recover_tokens:
        with timed("recovery"):
            before = per_domain(model, data.heldout, cfg.batch_size)
            # The teacher is loaded again rather than kept through the cut: the cut then needs one model's memory.
            recovery = recover_after_cut(model, load_teacher(source, cfg), fam, rdata, cfg, log)
            recovery["heldout_ppl_before"] = before
    if recovery:
        log(
            f"recovery: {recovery['tokens']:,} tokens in {recovery['steps']} steps, {recovery['seconds']:.0f} s "
            f"({recovery['tokens_per_s']:.0f} tokens/s), KL {recovery['kl_first']:.3f} -> {recovery['kl_last']:.3f}"
        )
    t_rec = time.time()
    with timed("pruned eval"):
        pruned_ppl = per_domain(model, data.heldout, cfg.batch_size)
    real = sum(p.numel() for p in model.parameters())  # parameters() skips the tied head: unique ones
    if real != record["params"]["pruned_total"]:
        raise AssertionError(f"plan says {record['params']['pruned_total']} parameters, model has {real}")
    manifest = Manifest(
        stage="compress",
        source_model=source,
        source_hash=src_hash,
        inputs_hash=inputs_hash,
        layout="uniform" if not getattr(model.config, "prunekit_layers", None) else "per-layer",
        calibration={
            "mix": mix.spec(),
            "fingerprint": data.fingerprint,
            "domains_used": list(calib),
            "tokens": sum(v.numel() for v in calib.values()),
        },
        settings=record["settings"],
        rounds=record["rounds"],
        plan=record["plan"],
        params=record["params"],
        recovery=recovery,
        quality={
            "heldout_ppl": {"dense": dense_ppl, "pruned": pruned_ppl},
            "dense_from_cache": dense_cached,
            "heldout_tokens_per_domain": {d: int(v.numel()) for d, v in data.heldout.items()},
        },
        timings_s={
            "data": round(t_data - t0, 1),
            "dense_eval": round(t_eval - t_data, 1),
            "compress": round(t_cut - t_eval, 1),
            "recover": round(t_rec - t_cut, 1),
            "pruned_eval": round(time.time() - t_rec, 1),
        },
        placement=where,
        threads=torch.get_num_threads(),
        versions=versions(),
    )
    return stored_config, manifest, tok, model, dense_ppl, pruned_ppl, list(data.heldout)


def compress(cfg: CompressConfig, log=None, inputs_hash: str | None = None) -> Manifest:
    """Prune cfg.model by cfg.ratio on the calibration mix and write the checkpoint to cfg.out.

    Writes safetensors, config, tokenizer and prunekit.json (plan, parameter counts, held-out
    perplexity of dense and pruned) into a temporary directory that is renamed when complete.
    `inputs_hash` is recorded for the orchestrator's resume. Returns the manifest."""
    log = log or (lambda m: print(m, file=sys.stderr))
    check(bool(cfg.out), "compress needs --out: the directory to write the pruned checkpoint to.")
    writer = env_rank() == 0  # under torchrun only rank 0 writes (and speaks)
    if not writer:
        log = lambda m: None  # noqa: E731
    else:
        check_out_dir(cfg.out, cfg.force)  # fail before minutes of work, not after
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed or 0)
    t0 = time.time()
    with Timer() as prof:
        try:
            stored_config, manifest, tok, model, dense_ppl, pruned_ppl, heldout_domains = _run(
                cfg, log, inputs_hash, t0
            )
        finally:
            finish()  # leave the process group (a no-op outside torchrun)
        if not writer:
            return manifest
        with timed("save"):
            # Store in the dtype the source was stored in (bf16 for most checkpoints), whatever we computed in.
            store = getattr(
                torch, str(getattr(stored_config, "dtype", None) or "float32").replace("torch.", ""), torch.float32
            )
            unplace(model)
            with atomic_dir(cfg.out, force=cfg.force) as tmp:
                save_model(model.to(store), tmp)
                point("compress:save")  # weights written, the rest not yet
                save_tokenizer(tok, tmp)
                manifest.profile = prof.record()
                manifest.peak_rss_mb = manifest.profile["peak_rss_mb"]
                write_manifest(tmp, manifest)
    log("where the time and memory went:\n" + prof.table())
    p = manifest.params
    log(
        f"parameters: {p['dense_total']:,} -> {p['pruned_total']:,} "
        f"({1 - p['pruned_total'] / p['dense_total']:.1%} of all removed, "
        f"{1 - p['pruned_decoder'] / p['dense_decoder']:.1%} of the decoder)"
    )
    log("held-out perplexity per domain:\n" + table({"dense": dense_ppl, "pruned": pruned_ppl}, heldout_domains))
    log(f"wrote {cfg.out} in {time.time() - t0:.0f} s (peak RSS {manifest.peak_rss_mb} MB)")
    return manifest
