"""Atomic artifact directories: nothing half-written, nothing lost."""
import pytest

from prunekit.artifact import atomic_dir, read_manifest, sha256_dir, write_manifest
from prunekit.errors import PrunekitError


def test_atomic_dir_writes_on_success(tmp_path):
    out = tmp_path / "a"
    with atomic_dir(out) as tmp:
        (tmp / "x.txt").write_text("1")
        assert not out.exists()
    assert (out / "x.txt").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_atomic_dir_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "a"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out, force=True) as tmp:
            (tmp / "x.txt").write_text("new")
            raise RuntimeError("boom")
    assert (out / "keep.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_refuses_non_empty_without_force(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(PrunekitError, match="--force"):
        with atomic_dir(tmp_path):
            pass
    with atomic_dir(tmp_path, force=True) as tmp:
        (tmp / "g").write_text("y")
    assert [p.name for p in tmp_path.iterdir()] == ["g"]


def test_manifest_roundtrip_and_corrupt(tmp_path):
    write_manifest(tmp_path, {"a": 1})
    assert read_manifest(tmp_path) == {"a": 1}
    (tmp_path / "prunekit.json").write_text("{bad")
    with pytest.raises(PrunekitError, match="corrupt"):
        read_manifest(tmp_path)


def test_dir_hash_changes_with_content(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"1")
    h1 = sha256_dir(tmp_path, "*.safetensors")
    (tmp_path / "a.safetensors").write_bytes(b"2")
    assert sha256_dir(tmp_path, "*.safetensors") != h1


def test_atomic_dir_gives_plain_permissions(tmp_path):
    import os
    import stat

    from prunekit.artifact import atomic_dir
    with atomic_dir(tmp_path / "out") as tmp:
        f = tmp / "w.bin"
        f.write_bytes(b"x")
        f.chmod(0o600)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "out" / "w.bin").stat().st_mode) == 0o666 & ~umask
