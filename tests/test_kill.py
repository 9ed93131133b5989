"""A run killed with SIGKILL at any point loses nothing: no half-written output, no temporary directory
left to pile up, no process left running, no port held; the same command run again succeeds, and
`artifacts` reuses the steps that had completed. The kill points inside compress and export come from
PRUNEKIT_KILL_AT (prunekit/faults.py); verify and serve are killed from outside while vLLM runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import tiny_checkpoint, tiny_mix, tiny_src

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill-src")
    return str(tiny_src(d / "model", intermediate_size=256, num_hidden_layers=4)), str(tiny_mix(d / "mix"))


def prunekit(argv: list[str], kill_at: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PRUNEKIT_KILL_AT": kill_at or ""}
    return subprocess.run(
        [sys.executable, "-m", "prunekit", *argv], env=env, capture_output=True, text=True, timeout=timeout
    )


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        try:
            stat = (p / "stat").read_text()
        except (OSError, ValueError):
            continue
        if p.name.isdigit():
            children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(p.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def running(pids: set[int]) -> set[int]:
    from prunekit.proc import pid_alive

    return {p for p in pids if pid_alive(p)}


def wait_gone(pids: set[int], timeout: float = 20) -> set[int]:
    deadline = time.time() + timeout
    while running(pids) and time.time() < deadline:
        time.sleep(0.2)
    return running(pids)


def compress_argv(src, out: Path) -> list[str]:
    model, mix = src
    return [
        "compress",
        "--model",
        model,
        "--calib",
        mix,
        "--out",
        str(out),
        "--ratio",
        "0.2",
        "--ratio-of",
        "decoder",
        "--align",
        "32",
        "--rounds",
        "2",
        "--dtype",
        "float32",
        "--threads",
        "2",
    ]


def test_compress_killed_at_each_point_then_rerun(src, tmp_path):
    out = tmp_path / "pruned"
    for point in ("compress:statistics", "compress:cut", "compress:save"):
        r = prunekit(compress_argv(src, out), kill_at=point)
        assert r.returncode == -signal.SIGKILL, (point, r.stderr[-2000:])
        assert not out.exists(), point  # never a half-written checkpoint at --out
    assert len(leftovers(tmp_path)) == 1  # the save was under way: its temporary directory, until the next run
    r = prunekit(compress_argv(src, out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "prunekit.json").is_file() and leftovers(tmp_path) == []


def test_export_killed_keeps_the_previous_artifact(tmp_path):
    art = tmp_path / "art"
    argv = ["export", str(tiny_checkpoint(tmp_path / "src", "llama")), "--out", str(art), "--tokens", "4"]
    assert prunekit(argv, kill_at="export:onnx").returncode == -signal.SIGKILL
    assert not art.exists() and len(leftovers(tmp_path)) == 1
    # The artifact to keep needs no ONNX graph of its own (the slowest part of an export): the replacing run
    # below is killed when it starts on its graph.
    assert prunekit([*argv, "--no-onnx"]).returncode == 0 and leftovers(tmp_path) == []
    before = {p.name: p.read_bytes() for p in art.iterdir() if p.is_file()}
    # Killed while replacing it: the artifact that was there is untouched.
    assert prunekit([*argv, "--force"], kill_at="export:onnx").returncode == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in art.iterdir() if p.is_file()} == before


def test_artifacts_killed_in_export_reuses_compress(src, tmp_path):
    model, mix = src
    argv = [
        "artifacts",
        "--model",
        model,
        "--calib",
        mix,
        "--ratio",
        "0.2",
        "--rounds",
        "1",
        "--out",
        str(tmp_path / "out"),
        "--name",
        "tiny",
        "--runtimes",
        "transformers,onnxruntime",
        "--threads",
        "2",
    ]
    r = prunekit(argv, kill_at="export:onnx")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert (tmp_path / "out" / ".work" / "tiny" / "pruned" / "prunekit.json").is_file()
    assert not (tmp_path / "out" / "tiny").exists()
    r = prunekit(argv)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "compress: reusing" in r.stderr and "export ->" in r.stderr
    assert leftovers(tmp_path / "out") == [] and (tmp_path / "out" / "tiny" / "verify.json").is_file()


@pytest.fixture(scope="module")
def verified(tmp_path_factory):
    from prunekit.export import ExportConfig, VerifyConfig, export, verify

    d = tmp_path_factory.mktemp("kill-art")
    export(
        ExportConfig(model=str(tiny_checkpoint(d / "src", "llama")), out=str(d / "art"), tokens=4, onnx=False),
        log=lambda m: None,
    )
    assert verify(VerifyConfig(artifact=str(d / "art"), runtimes=("transformers",)), log=lambda m: None)["passed"]
    return d / "art"


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "prunekit", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> set[int]:
    """SIGKILL `proc` alone once ready() holds; returns the processes it had started."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None and time.time() < deadline, "the command ended or hung before the kill point"
        time.sleep(0.5)
    kids = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return kids


def test_verify_killed_during_vllm_leaves_no_process(verified):
    manifest = (verified / "prunekit.json").read_bytes()
    proc = _start(["verify", str(verified), "--runtimes", "vllm", "--kv-cache-gib", "0.05"])

    def engine_up() -> bool:  # the vLLM worker (not its guard) has started its own children (the engine core)
        for k in descendants(proc.pid):
            try:
                argv = Path(f"/proc/{k}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # exited while we looked
            if argv[1:3] == [b"-m", b"prunekit.export.vllm_run"] and descendants(k):
                return True
        return False

    kids = _kill_when(proc, engine_up)
    assert len(kids) >= 3  # guard, worker, engine
    assert wait_gone(kids) == set(), "vLLM processes outlived the killed verify"
    assert (verified / "prunekit.json").read_bytes() == manifest


def test_serve_killed_frees_the_port(verified):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _start(
        [
            "serve",
            str(verified),
            "--port",
            str(port),
            "--kv-cache-gib",
            "0.05",
            "--max-model-len",
            "128",
            "--dtype",
            "float32",
        ]
    )

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
        except OSError:
            return False

    kids = _kill_when(proc, healthy)
    assert wait_gone(kids) == set(), "the vLLM server outlived the killed `prunekit serve`"
    from prunekit.serve.server import port_free

    from prunekit.errors import PrunekitError

    # Nothing listens any more (binds as a server would: TIME_WAIT is no obstacle). The last holder's exit and
    # the kernel closing its socket are not one instant: once in a full `make test` on an AMX VM the bind
    # failed right after every process was gone, and passed alone. A port still held after 10 s is a leak.
    deadline = time.monotonic() + 10
    while True:
        try:
            port_free("127.0.0.1", port)
            break
        except PrunekitError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_a_killed_swap_puts_the_previous_output_back(tmp_path):
    from prunekit.artifact import check_out_dir

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    old, tmp = tmp_path / f".art.old-{dead}-abcdefgh", tmp_path / f".art.tmp-{dead}-ijklmnop"
    for d in (old, tmp):
        d.mkdir()
        (d / "f").write_text(d.name)
    mine = tmp_path / f".art.tmp-{os.getpid()}-qrstuvwx"  # a live writer's directory is not touched
    mine.mkdir()
    with pytest.raises(Exception, match="pass --force"):
        check_out_dir(tmp_path / "art", force=False)  # killed between the renames: the old one is back
    assert (tmp_path / "art" / "f").read_text() == old.name
    assert not tmp.exists() and mine.exists()
