"""Bad input, as a user would type it, across every command: each exits 2 with a message that names the
problem, prints no traceback, writes nothing, loads no model weights, and does so within seconds."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_checkpoint, tiny_mix, tiny_src

pytestmark = pytest.mark.unit


def _edit_mix(mix: Path, name: str, change) -> str:
    spec = yaml.safe_load(mix.read_text())
    change(spec)
    out = mix.parent / f"{name}.yaml"  # beside the mix: its relative sources still resolve
    out.write_text(yaml.safe_dump(spec))
    return str(out)


def _variant(src: Path, name: str, change) -> str:
    d = src.parent / name
    shutil.copytree(src, d)
    change(d)
    return str(d)


def _truncate(d: Path) -> None:
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _pickle_only(d: Path) -> None:
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")


def _wrong_width(d: Path) -> None:
    """config.json edited to another MLP width than the weights hold."""
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] += 16
    (d / "config.json").write_text(json.dumps(cfg))


def _tamper(d: Path) -> None:
    f = d / "model.safetensors"
    b = bytearray(f.read_bytes())
    b[-8:] = bytes(8)  # same size, other weights: only the recorded hash can tell
    f.write_bytes(bytes(b))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Good and bad inputs on disk, built once; a busy port; and the artifact a served case needs."""
    from prunekit.export import ExportConfig, VerifyConfig, export, verify

    d = tmp_path_factory.mktemp("bad")
    src = tiny_src(d / "src")
    mix = tiny_mix(d / "mix")
    first = next(iter(yaml.safe_load(mix.read_text())["domains"]))
    export(
        ExportConfig(model=str(tiny_checkpoint(d / "ckpt", "llama")), out=str(d / "art"), tokens=2, onnx=False),
        log=lambda m: None,
    )
    shutil.copytree(d / "art", d / "unverified")
    assert verify(VerifyConfig(artifact=str(d / "art"), runtimes=("transformers",)), log=lambda m: None)["passed"]
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    dom = lambda key, value: lambda s: s["domains"][first].__setitem__(key, value)  # noqa: E731
    paths = {
        "SRC": str(src),
        "MIX": str(mix),
        "ART": str(d / "art"),
        "UNVERIFIED": str(d / "unverified"),
        "BUSY": str(busy.getsockname()[1]),
        "TRUNC": _variant(src, "trunc", _truncate),
        "PICKLE": _variant(src, "pickle", _pickle_only),
        "BADCFG": _variant(src, "badcfg", lambda p: (p / "config.json").write_text("{not json")),
        "WIDTH": _variant(src, "width", _wrong_width),
        "TAMPERED": _variant(d / "art", "tampered", _tamper),
        "MISTRAL": str(tiny_src(d / "mistral", "MistralForCausalLM", sliding_window=16)),
        "NEGW": _edit_mix(mix, "negw", dom("weight", -1)),
        "STRW": _edit_mix(mix, "strw", dom("weight", "lots")),
        "NOFILE": _edit_mix(mix, "nofile", dom("source", "nope.jsonl")),
        "TEMPLATE": _edit_mix(mix, "template", dom("template", "{nosuchfield}")),
        "TYPO": _edit_mix(mix, "typo", dom("wieght", 1)),
        "TOTAL0": _edit_mix(mix, "total0", lambda s: s.__setitem__("total_samples", 0)),
        "NODOMAINS": _edit_mix(mix, "nodomains", lambda s: s.pop("domains")),
        "ALLZERO": _edit_mix(mix, "allzero", lambda s: [v.__setitem__("weight", 0) for v in s["domains"].values()]),
    }
    (d / "broken.yaml").write_text("domains: [unclosed")
    paths["BROKEN"] = str(d / "broken.yaml")
    (d / "out-full").mkdir()
    (d / "out-full" / "keep.txt").write_text("mine")
    paths["FULL"] = str(d / "out-full")
    yield d, paths
    busy.close()


C = ["compress", "--model", "SRC", "--calib", "MIX", "--out", "OUT", "--ratio-of", "decoder", "--align", "32"]

# (case, argv, what the message must say); OUT is a path that must not appear.
CASES = [
    ("ratio out of range", C + ["--ratio", "1.5"], "--ratio must be in (0, 1)"),
    ("zero rounds", C + ["--rounds", "0"], "--rounds must be a positive integer"),
    ("alignment not a power of two", C[:-2] + ["--align", "48"], "--align must be a power of two"),
    ("tp that does not divide the KV heads", C + ["--tp", "3"], "--tp 3 does not divide"),
    ("unknown structure", C + ["--structures", "mlp,rows"], "unknown structure(s) ['rows']"),
    ("unknown dtype", C + ["--dtype", "float8"], "invalid choice: 'float8'"),
    ("zero threads", C + ["--threads", "0"], "--threads must be a positive integer"),
    ("tolerance out of range", C + ["--tolerance", "2"], "--tolerance must be in (0, 1)"),
    ("per-layer with layer removal", C + ["--mode", "per-layer", "--structures", "layers"], "per-layer mode chooses"),
    ("unreachable target", C[:-2] + ["--ratio", "0.9"], "the nearest reachable is"),
    (
        "per-layer sliding-window model",
        ["compress", "--model", "MISTRAL", "--calib", "MIX", "--out", "OUT", "--mode", "per-layer"],
        "sliding-window attention",
    ),
    ("model that does not exist", ["compress", "--model", "./no/such/model", "--out", "OUT"], "does not exist"),
    ("pickle weights only", ["compress", "--model", "PICKLE", "--calib", "MIX", "--out", "OUT"], "pickle weights"),
    ("truncated safetensors", ["compress", "--model", "TRUNC", "--calib", "MIX", "--out", "OUT"], "cut short"),
    (
        "config that is not JSON",
        ["compress", "--model", "BADCFG", "--calib", "MIX", "--out", "OUT"],
        "not a valid JSON file",
    ),
    (
        "config that disagrees with the weights",
        ["compress", "--model", "WIDTH", "--calib", "MIX", "--out", "OUT"],
        "mlp.down_proj.weight in model.safetensors has shape [64, 128], but config.json implies [64, 144]",
    ),
    ("export of a config that disagrees", ["export", "WIDTH", "--out", "OUT"], "config.json implies"),
    ("--out exists and is not empty", C[:5] + ["--out", "FULL"], "pass --force"),
    ("mix file missing", ["compress", "--model", "SRC", "--calib", "nope.yaml", "--out", "OUT"], "does not exist"),
    (
        "mix weight negative",
        ["compress", "--model", "SRC", "--calib", "NEGW", "--out", "OUT"],
        "`weight` must be a number >= 0, got -1",
    ),
    ("mix weight not a number", ["mix", "--calib", "STRW", "--model", "SRC"], "`weight` must be a number"),
    ("mix weights all zero", ["mix", "--calib", "ALLZERO", "--model", "SRC"], "no domain has calibration samples"),
    ("mix total_samples 0", ["mix", "--calib", "TOTAL0", "--model", "SRC"], "`total_samples` must be an integer >= 1"),
    ("mix without domains", ["mix", "--calib", "NODOMAINS", "--model", "SRC"], "needs a `domains:` mapping"),
    ("mix not YAML", ["mix", "--calib", "BROKEN", "--model", "SRC"], "is not valid YAML at line 1"),
    ("mix key misspelt", ["mix", "--calib", "TYPO", "--model", "SRC"], "unknown key(s) ['wieght']"),
    ("mix source missing", ["mix", "--calib", "NOFILE", "--model", "SRC"], "nope.jsonl not found"),
    ("mix template field", ["mix", "--calib", "TEMPLATE", "--model", "SRC"], "template field 'nosuchfield'"),
    (
        "compress with a template that misses its records",
        [
            "compress",
            "--model",
            "SRC",
            "--calib",
            "TEMPLATE",
            "--out",
            "OUT",
            "--ratio-of",
            "decoder",
            "--align",
            "32",
            "--ratio",
            "0.17",
        ],
        "template field 'nosuchfield'",
    ),
    ("export of nothing", ["export", "./no/such/ckpt", "--out", "OUT"], "does not exist"),
    ("export of a truncated checkpoint", ["export", "TRUNC", "--out", "OUT"], "cut short"),
    ("export of a data folder", ["export", "MIX_DIR", "--out", "OUT"], "has no config.json"),
    ("verify of a checkpoint", ["verify", "SRC"], "not a prunekit artifact"),
    ("verify with an unknown runtime", ["verify", "ART", "--runtimes", "tensorrt"], "unknown runtime(s)"),
    ("serve on port 99999", ["serve", "ART", "--port", "99999"], "--port must be in 1..65535"),
    ("serve on a busy port", ["serve", "ART", "--port", "BUSY"], "another process uses the port"),
    ("serve an unverified artifact", ["serve", "UNVERIFIED"], "has not been verified"),
    ("serve a tampered artifact", ["serve", "TAMPERED"], "model.safetensors (changed) differ"),
    ("load a URL without scheme", ["load", "127.0.0.1:8000"], "is not a server URL"),
    ("load with 0 clients", ["load", "http://127.0.0.1:9", "--concurrency", "0"], "--concurrency must be a positive"),
    ("load where nothing listens", ["load", "http://127.0.0.1:9", "--requests", "1"], "no OpenAI-compatible server"),
    ("bench an unknown shape", ["bench", "--shapes", "gpt-5"], "unknown shape(s) ['gpt-5']"),
    ("bench a cut over 100%", ["bench", "--shapes", "tiny", "--cuts", "150%"], "cut '150%' is not understood"),
    ("bench an artifact without label", ["bench", "--artifact", "ART"], "use LABEL=DIR"),
    ("bench an unknown runtime", ["bench", "--runtimes", "tensorrt"], "unknown runtime(s)"),
    ("bench pairs without shapes", ["bench", "--paired", "4"], "--paired goes with --shapes"),
    ("bench zero pairs", ["bench", "--shapes", "tiny", "--paired", "0"], "--paired must be a positive integer"),
    ("artifacts ratio out of range", ["artifacts", "--ratio", "2", "--out", "OUT"], "--ratio must be in (0, 1)"),
]


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*")}


@pytest.mark.parametrize("argv,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_before_any_work(inputs, argv, match, tmp_path, monkeypatch, capsys):
    import torch  # noqa: F401  (imported before the clock starts: the limit is for the command's own work)
    import transformers

    from prunekit import checkpoint
    from prunekit.cli import main

    root, paths = inputs
    paths = {**paths, "MIX_DIR": str(Path(paths["MIX"]).parent), "OUT": str(tmp_path / "out")}
    argv = [paths.get(a, a) for a in argv]

    def no_weights(*a, **k):
        raise AssertionError("model weights were loaded for a bad input")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    monkeypatch.setattr(checkpoint, "load_per_layer", no_weights)
    monkeypatch.chdir(tmp_path)
    before = _tree(root)
    t = time.time()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own usage errors exit 2 too
        rc = e.code
    elapsed = time.time() - t
    err = capsys.readouterr().err
    assert rc == 2, err
    assert match in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == [], "a bad input wrote files"
    assert _tree(root) == before, "a bad input changed its inputs"
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_the_table_covers_every_command():
    assert len(CASES) >= 30
    assert {c[1][0] for c in CASES} >= {"compress", "mix", "export", "verify", "serve", "load", "bench"}


def test_truncated_shard_and_index_are_named(tmp_path):
    from prunekit.errors import PrunekitError
    from prunekit.loading import check_local_dir

    src = tiny_src(tmp_path / "src")
    check_local_dir(src, allow_pickle=False)
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-00002.safetensors"}}))
    with pytest.raises(PrunekitError, match="model-00002.safetensors"):
        check_local_dir(src, allow_pickle=False)
    (src / "model.safetensors").write_bytes(b"\x10")
    with pytest.raises(PrunekitError, match="no complete safetensors header"):
        check_local_dir(src, allow_pickle=False)
