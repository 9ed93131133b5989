"""Artifact directories: atomic writes, file hashes and the prunekit.json manifest."""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import PrunekitError

MANIFEST = "prunekit.json"


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


def check_out_dir(out: str | Path, force: bool) -> Path:
    """Refuse to clobber a non-empty output directory unless force is given."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrunekitError(f"--out {out} exists and is not a directory; choose another path.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise PrunekitError(f"--out {out} exists and is not empty; pass --force to replace it, "
                            "or choose another directory.")
    return out


@contextlib.contextmanager
def atomic_dir(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `out`; on success it replaces `out` in one rename.

    On any error the temporary directory is removed and `out` is left as it was, so a reader never
    sees a half-written artifact and nothing already on disk is lost.
    """
    out = check_out_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _normal_permissions(tmp)
    old = None
    if out.exists():
        # Move the old one aside first so that the swap is two renames, not a delete-then-write.
        old = out.parent / f".{out.name}.old-{tmp.name[-8:]}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _normal_permissions(root: Path) -> None:
    """mkdtemp makes a 0700 directory and some writers make 0600 files; give the artifact the modes a
    plain copy would have (umask applies) so that a server running as another user can read it."""
    import os
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def read_manifest(path: str | Path) -> dict:
    p = Path(path) / MANIFEST
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise PrunekitError(f"{p} is not valid JSON ({e}); the artifact is corrupt, rebuild it.") from e


def write_manifest(path: str | Path, manifest: dict) -> None:
    p = Path(path) / MANIFEST
    p.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
