"""Atomic artifact directories: nothing half-written, nothing lost."""

import json

import pytest

from prunekit.artifact import Manifest, atomic_dir, inputs_hash, read_manifest, sha256_dir, write_manifest
from prunekit.errors import PrunekitError

pytestmark = pytest.mark.unit


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


def test_manifest_roundtrip_keeps_unknown_keys(tmp_path):
    m = Manifest(stage="export", name="x", layout="uniform", files={"a": "0" * 64}, extra={"bench": {"ratio": 0.2}})
    write_manifest(tmp_path, m)
    raw = json.loads((tmp_path / "prunekit.json").read_text())
    assert raw["format"] == "prunekit/1" and raw["bench"] == {"ratio": 0.2} and "extra" not in raw
    back = read_manifest(tmp_path)
    assert back == m and back.extra == {"bench": {"ratio": 0.2}}
    assert read_manifest(tmp_path / "missing") is None
    assert [p.name for p in tmp_path.iterdir()] == ["prunekit.json"]  # the atomic write left no temp file


# A manifest as prunekit/1 wrote it before the typed schema (keys and nesting of the old writers,
# including the pipeline's resume tag), abbreviated to the fields readers use.
OLD_EXPORT = {
    "format": "prunekit/1",
    "stage": "export",
    "name": "tiny",
    "family": "llama",
    "architectures": ["LlamaForCausalLM"],
    "layout": "uniform",
    "reason": "",
    "shipped_code": {},
    "dtype": "float32",
    "onnx": None,
    "source": {"path": "/x/pruned", "manifest": {"params": {"dense_total": 10}}},
    "reference": {"prompts": ["a"], "prompt_ids": [[1]], "tokens": [[2]], "new_tokens": 1},
    "files": {"config.json": "0" * 64},
    "verify": None,
    "versions": {"prunekit": "0.1.0"},
    "export_s": 1.5,
    "bench": {"model": "default", "ratio": 0.2},
}


def test_old_prunekit1_manifest_reads_and_writes_back(tmp_path):
    (tmp_path / "prunekit.json").write_text(json.dumps(OLD_EXPORT, indent=2))
    m = read_manifest(tmp_path)
    assert m.stage == "export" and m.layout == "uniform" and m.verify is None and m.inputs_hash is None
    assert m.extra == {"bench": {"model": "default", "ratio": 0.2}}
    write_manifest(tmp_path, m)
    again = json.loads((tmp_path / "prunekit.json").read_text())
    assert again == {k: v for k, v in OLD_EXPORT.items() if v is not None}


@pytest.mark.parametrize(
    "change,match",
    [
        ({"format": "prunekit/2"}, "upgrade prunekit"),
        ({"stage": "train"}, "stage 'train'"),
        ({"layout": "sparse"}, "layout 'sparse'"),
        ({"files": ["a"]}, "'files' should be dict"),
    ],
)
def test_manifest_refuses_unknown_versions_and_wrong_types(tmp_path, change, match):
    (tmp_path / "prunekit.json").write_text(json.dumps({**OLD_EXPORT, **change}))
    with pytest.raises(PrunekitError, match=match):
        read_manifest(tmp_path)


def test_corrupt_manifest(tmp_path):
    (tmp_path / "prunekit.json").write_text("{bad")
    with pytest.raises(PrunekitError, match="corrupt"):
        read_manifest(tmp_path)
    (tmp_path / "prunekit.json").write_text('{"a": 1}')
    with pytest.raises(PrunekitError, match="not written by prunekit"):
        read_manifest(tmp_path)


def test_inputs_hash_is_stable_and_sensitive():
    a = inputs_hash({"ratio": 0.2, "structures": ("mlp",)})
    assert a == inputs_hash({"structures": ["mlp"], "ratio": 0.2})
    assert a != inputs_hash({"ratio": 0.3, "structures": ("mlp",)})


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


@pytest.mark.unit
def test_model_card_metadata_sources(tmp_path, monkeypatch):
    """base_model and licence: from a hub id's cached card, a Hugging Face cache snapshot's path, the default
    model's known card; a card whose front matter does not parse gives none (and no error)."""
    from prunekit import model_card as M

    snap = tmp_path / "hub" / "models--acme--tiny-lm" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "README.md").write_text("---\nlicense: other\nlicense_name: acme-1\n---\nbody\n")
    assert M.source_card(str(snap)) == {"license": "other", "license_name": "acme-1", "hub_id": "acme/tiny-lm"}
    (snap / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    assert M.source_card(str(snap)) == {"hub_id": "acme/tiny-lm"}
    assert M.read_front_matter("# no front matter\n") == {}
    assert M.read_front_matter("---\ndate: 2020-13-45\n---\n") == {}  # yaml raises ValueError there
    assert M.read_front_matter("\ufeff---\nlicense: mit\n---\n") == {"license": "mit"}
    assert M.source_card(str(tmp_path / "moved" / "away")) == {}  # not a directory, not a hub id
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda repo, f: None)
    assert M.source_card("acme/other") == {"hub_id": "acme/other"}  # not cached: no network, no licence
    monkeypatch.setattr("prunekit.default_model.default_model_dir", lambda: snap)
    assert M.source_card(str(snap))["license"] == "apache-2.0"
