"""Artifact directories, the contract between stages: atomic writes, hashes and the typed manifest.

Every stage writes a directory with a `prunekit.json` manifest and reads only directories and
manifests, never another stage's internals. The manifest has one schema (`Manifest`), one format
version, and one reader and writer; an unknown format is refused with a message that says what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PrunekitError
from .proc import pid_alive

MANIFEST = "prunekit.json"
FORMAT = "prunekit/1"
FORMATS = (FORMAT,)  # formats this version reads
STAGES = ("compress", "export")
LAYOUTS = ("uniform", "decilm", "per-layer")


# ---------------------------------------------------------------- hashes and atomic writes


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_dir(path: str | Path, pattern: str = "*") -> str:
    """One hash over the names and contents of the files matching pattern (sorted), e.g. weights."""
    h = hashlib.sha256()
    for p in sorted(Path(path).glob(pattern)):
        if p.is_file():
            h.update(p.name.encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def inputs_hash(inputs: Any) -> str:
    """One hash of a step's inputs (a JSON-able value): a re-run with the same hash reuses the step."""
    blob = json.dumps(inputs, sort_keys=True, default=str, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text through a temporary file and a rename, so that a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def check_out_dir(out: str | Path, force: bool) -> Path:
    """Refuse to clobber a non-empty output directory unless force is given (after clearing what a killed
    run left beside it)."""
    out = Path(out)
    sweep_stale(out)
    if out.exists() and not out.is_dir():
        raise PrunekitError(f"--out {out} exists and is not a directory; choose another path.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise PrunekitError(
            f"--out {out} exists and is not empty; pass --force to replace it, or choose another directory."
        )
    return out


@contextlib.contextmanager
def atomic_dir(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `out`; on success it replaces `out` in one rename.

    On any error the temporary directory is removed and `out` is left as it was, so a reader never
    sees a half-written artifact and nothing already on disk is lost.
    """
    out = check_out_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    held = [_hold(tmp)]  # while held, a sweep by another run leaves the directory alone
    try:
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _normal_permissions(tmp)
        old = None
        if out.exists():
            # Move the old one aside first so that the swap is two renames, not a delete-then-write; it is held
            # too, so that a sweep during the swap does not take it for a killed run's.
            held.append(_hold(out))
            old = out.parent / f".{out.name}.old-{os.getpid()}-{tmp.name[-8:]}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        for fd in held:
            os.close(fd)


def _hold(d: Path) -> int:
    """An exclusive flock on a directory, held until the returned descriptor is closed (or the process dies:
    the kernel releases it then, whatever killed the process)."""
    fd = os.open(d, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _abandoned(d: Path) -> bool:
    """True when no live process holds the directory: its writer was killed (works across PID namespaces,
    e.g. a container writing to a mounted volume, where a pid says nothing)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def sweep_stale(out: Path) -> None:
    """Clear what a killed run left beside `out`: its temporary directory is removed; the previous `out`
    that it had set aside for the final swap is put back when no new one took its place. Directories that a
    live run holds are left alone, and so is anything another run clears at the same moment."""
    if not out.parent.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-(\d+)-\w+")
    for p in sorted(out.parent.iterdir()):
        m = pattern.fullmatch(p.name)
        # The pid covers the instant between a writer creating its directory and locking it.
        if not m or pid_alive(int(m.group(2))) or not _abandoned(p):
            continue
        try:
            if m.group(1) == "old" and not out.exists():
                p.rename(out)  # killed between the two renames: the previous artifact is still whole
            else:
                shutil.rmtree(p)
        except OSError:
            pass  # gone already (another run swept it), or not ours to remove: the run goes on


def _normal_permissions(root: Path) -> None:
    """mkdtemp makes a 0700 directory and some writers make 0600 files; give the artifact the modes a
    plain copy would have (umask applies) so that a server running as another user can read it."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


# ---------------------------------------------------------------- the manifest


@dataclass
class Manifest:
    """prunekit.json. `compress` writes a pruned checkpoint's manifest, `export` an artifact's; the
    fields of the other stage stay None. Keys this version does not know are kept in `extra` and
    written back unchanged, so an older reader never drops what a newer writer recorded."""

    stage: str
    format: str = FORMAT
    name: str | None = None
    layout: str | None = None  # "uniform" (stock classes), "decilm" or "per-layer"
    inputs_hash: str | None = None  # the step's inputs (see inputs_hash): what resume compares
    # compress
    source_model: str | None = None
    source_hash: str | None = None
    calibration: dict | None = None
    settings: dict | None = None
    rounds: list | None = None
    plan: dict | None = None
    params: dict | None = None
    quality: dict | None = None
    recovery: dict | None = None  # distillation after the cut (--recover-tokens)
    timings_s: dict | None = None
    peak_rss_mb: int | None = None
    profile: dict | None = None  # wall time and peak memory per stage (prunekit.timer)
    placement: dict | None = None  # device, compute dtype, offloading and why
    threads: int | None = None
    # export
    family: str | None = None
    architectures: list | None = None
    reason: str | None = None
    shipped_code: dict | None = None  # file name -> sha256 of code loaded with trust_remote_code
    dtype: str | None = None
    onnx: dict | None = None
    genai: dict | None = None  # the onnxruntime-genai folder (export --genai)
    quantization: dict | None = None  # scheme, method, group size (None: not quantized)
    source: dict | None = None  # the pruned checkpoint this was exported from
    reference: dict | None = None  # prompts, prompt ids and greedy tokens verify compares with
    files: dict | None = None  # relative path -> sha256 of every file export wrote
    verify: dict | None = None  # outcome of the last verify
    export_s: float | None = None
    versions: dict | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise PrunekitError(
                f"manifest format {self.format!r} is not one this prunekit reads "
                f"({', '.join(FORMATS)}); upgrade prunekit or rebuild the artifact with this one."
            )
        if self.stage not in STAGES:
            raise PrunekitError(
                f"manifest stage {self.stage!r} is unknown (expected one of {', '.join(STAGES)}); "
                "the manifest is corrupt, rebuild the artifact."
            )
        if self.layout is not None and self.layout not in LAYOUTS:
            raise PrunekitError(f"manifest layout {self.layout!r} is unknown; rebuild the artifact.")

    @classmethod
    def from_dict(cls, raw: Any, where: str = MANIFEST) -> Manifest:
        if not isinstance(raw, dict):
            raise PrunekitError(f"{where} is not a JSON object; the manifest is corrupt, rebuild the artifact.")
        if "format" not in raw or "stage" not in raw:
            raise PrunekitError(
                f"{where} has no format/stage field; it was not written by prunekit. Rebuild the artifact."
            )
        known = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        kw, extra = {}, dict(raw.get("extra") or {})
        for k, v in raw.items():
            if k == "extra":
                continue
            if k not in known:
                extra[k] = v
                continue
            want = _TYPES.get(k)
            if v is not None and want and not isinstance(v, want):
                raise PrunekitError(
                    f"{where}: field {k!r} should be {want.__name__ if isinstance(want, type) else 'a number'}"
                    f", got {type(v).__name__}; the manifest is corrupt, rebuild the artifact."
                )
            kw[k] = v
        return cls(**kw, extra=extra)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out = {k: v for k, v in out.items() if v is not None}
        return {**out, **self.extra}


_TYPES: dict[str, Any] = {
    "stage": str,
    "format": str,
    "name": str,
    "layout": str,
    "inputs_hash": str,
    "source_model": str,
    "source_hash": str,
    "family": str,
    "reason": str,
    "dtype": str,
    "calibration": dict,
    "settings": dict,
    "plan": dict,
    "params": dict,
    "quality": dict,
    "recovery": dict,
    "timings_s": dict,
    "profile": dict,
    "placement": dict,
    "shipped_code": dict,
    "onnx": dict,
    "source": dict,
    "reference": dict,
    "files": dict,
    "verify": dict,
    "versions": dict,
    "rounds": list,
    "architectures": list,
    "peak_rss_mb": (int, float),
    "threads": int,
    "export_s": (int, float),
}


def read_manifest(path: str | Path) -> Manifest | None:
    """The manifest of a directory, or None when it has none (not a prunekit directory)."""
    p = Path(path) / MANIFEST
    if not p.is_file():
        return None
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise PrunekitError(f"{p} is not valid JSON ({e}); the artifact is corrupt, rebuild it.") from e
    return Manifest.from_dict(raw, str(p))


def write_manifest(path: str | Path, manifest: Manifest) -> None:
    write_json_atomic(Path(path) / MANIFEST, manifest.to_dict())


# ---------------------------------------------------------------- artifacts (export's output)


def load_artifact(path: str | Path) -> tuple[Path, Manifest]:
    """An export artifact and its manifest, or an error that says how to make one."""
    art = Path(path)
    if not art.is_dir():
        raise PrunekitError(f"artifact {art} does not exist; create it with `prunekit export PRUNED --out {art}`.")
    m = read_manifest(art)
    if m is None or m.stage != "export":
        raise PrunekitError(
            f"{art} has no export manifest ({MANIFEST}); it is not a prunekit artifact. "
            "Create one with `prunekit export PRUNED --out DIR`."
        )
    return art, m


def changed_files(art: Path, manifest: Manifest, skip: tuple[str, ...] = ()) -> list[str]:
    """Files that differ from the sha256 export recorded (missing or changed); names starting with one of
    `skip` are not read."""
    bad = []
    for name, digest in (manifest.files or {}).items():
        if skip and name.startswith(skip):
            continue
        f = art / name
        if not f.is_file():
            bad.append(f"{name} (missing)")
        elif sha256_file(f) != digest:
            bad.append(f"{name} (changed)")
    return bad


def check_shipped_code(artifact: Path, manifest: Manifest) -> None:
    """Refuse an artifact whose shipped modeling code differs from what export recorded, or that
    carries code export did not write: it would run with trust_remote_code."""
    shipped = manifest.shipped_code or {}
    for name, digest in shipped.items():
        f = artifact / name
        if not f.is_file():
            raise PrunekitError(f"{artifact}: shipped code {name} is missing; re-export the artifact.")
        if sha256_file(f) != digest:
            raise PrunekitError(
                f"{artifact}: {name} does not match the sha256 recorded in prunekit.json "
                "(it was changed after export); refusing to run it with trust_remote_code. "
                "Re-export the artifact."
            )
    extra = [p.name for p in sorted(artifact.glob("*.py")) if p.name not in shipped]
    if extra:
        raise PrunekitError(
            f"{artifact}: code files not recorded in prunekit.json: {', '.join(extra)}; "
            "refusing to load them. Re-export the artifact."
        )


def needs_remote_code(manifest: Manifest) -> bool:
    """Artifacts whose layers differ (decilm, per-layer) load through their shipped, hash-checked code."""
    return bool(manifest.shipped_code)
