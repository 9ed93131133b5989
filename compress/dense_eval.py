"""The dense model's held-out perplexity, kept across runs.

Every compress run evaluates the model it starts from on the held-out text: a quarter of a 0.5B run's
matmul work (issue 15's profile), and the same figure each time a sweep, the bench or a CI job cuts the
same model again at another ratio. The figure is kept under $PRUNEKIT_EVAL_CACHE (default
$PRUNEKIT_HOME/dense-eval), keyed by everything that decides it: the source's files, the held-out
tokens, where and in what dtype it computes (summation order too: threads, ranks, offloading), the
library versions and the evaluation code itself. A hub model without a known commit is never cached.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from prunekit.artifact import sha256_file, write_json_atomic
from prunekit.env import cpu_name, eval_cache_dir


def _code() -> list[str]:
    """The code whose change changes the figure: the perplexity and the layer-by-layer path it takes when
    offloading."""
    from prunekit import offload, perplexity

    return [sha256_file(m.__file__) for m in (perplexity, offload)]


def cache_dir() -> Path:
    return eval_cache_dir()


def other_files_hash(source: str) -> str:
    """The files of a local source other than its safetensors (config, tokenizer, pickled weights): the
    safetensors are in the source hash already, so no weight is read twice."""
    h = hashlib.sha256()
    for p in sorted(Path(source).iterdir()):
        if p.is_file() and not p.name.endswith(".safetensors"):
            h.update(p.name.encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def cache_key(
    source_hash: str, source: str, heldout: dict[str, torch.Tensor], place: dict, batch_size: int, ranks: int
) -> str | None:
    """The key of a dense evaluation, or None where nothing safe can be keyed (a hub model at an unknown commit)."""
    import transformers

    if source_hash.endswith("@unknown"):
        return None
    tokens = hashlib.sha256()
    for d, t in heldout.items():
        tokens.update(d.encode())
        tokens.update(str(tuple(t.shape)).encode())
        tokens.update(t.to(torch.int64).contiguous().numpy().tobytes())
    fields = {
        "source": source_hash,
        "other_files": other_files_hash(source) if Path(source).is_dir() else None,
        "heldout": tokens.hexdigest(),
        "placement": {k: place[k] for k in sorted(place) if k != "why"},
        "machine": torch.cuda.get_device_name(0) if place.get("device") == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "ranks": ranks,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "code": _code(),
    }
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def load(key: str | None, domains: list[str]) -> dict | None:
    """The cached record for key ({"ppl": {domain: value}, "seconds": ...}), if it holds every domain asked."""
    if key is None:
        return None
    path = cache_dir() / f"{key}.json"
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, or unreadable: measure again (and rewrite it)
        return None
    ppl = rec.get("ppl") if isinstance(rec, dict) else None
    if not isinstance(ppl, dict) or sorted(ppl) != sorted(domains):
        return None
    return rec


def store(key: str | None, ppl: dict[str, float], seconds: float) -> Path | None:
    """Keep a measured record (written atomically: a reader never sees half of one). A cache that cannot be
    written (read-only home) costs the next run its evaluation, nothing else."""
    if key is None:
        return None
    path = cache_dir() / f"{key}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"ppl": ppl, "seconds": round(seconds, 1)})
    except OSError:
        return None
    return path
