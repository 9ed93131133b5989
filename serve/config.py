"""The typed configs of `prunekit serve` and `prunekit load`."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from prunekit.config import DTYPES, Config, check, check_positive, opt

KINDS = ("completion", "chat")


@dataclass(frozen=True)
class ServeConfig(Config):
    artifact: str = opt("", "directory written by prunekit export (and checked by prunekit verify)", positional=True)
    host: str = opt("127.0.0.1", "bind address (127.0.0.1: this machine only)")
    port: int = opt(8000, "port to listen on")
    api_key: str | None = opt(None, "require this bearer token (passed to vLLM through the environment)")
    dtype: str = opt("auto", "auto: bf16 on GPUs and CPUs with native bf16, else float32", choices=DTYPES)
    max_model_len: int = opt(2048, "context length the server accepts")
    kv_cache_gib: float = opt(1.0, "KV cache size in GiB (vLLM on CPU needs it set)")
    tensor_parallel_size: int = opt(
        1,
        "devices vLLM splits the model over; it must divide every layer's query "
        "heads, KV heads and MLP width (compress --tp N makes such shapes)",
    )
    threads_bind: str | None = opt(None, "VLLM_CPU_OMP_THREADS_BIND (default: all cores)")
    enforce_eager: bool = opt(
        True, "let vLLM torch.compile the model (slower start, sometimes faster decode)", flag="--compile"
    )
    allow_unverified: bool = opt(False, "serve an artifact that did not pass verify")
    startup_timeout: float = opt(600.0, "seconds to wait for the server's /health", cli=False)

    def validate(self) -> None:
        check(bool(self.artifact), "serve needs the artifact directory.")
        check(isinstance(self.port, int) and 1 <= self.port <= 65535, f"--port must be in 1..65535, got {self.port}.")
        check(self.kv_cache_gib > 0, f"--kv-cache-gib must be positive, got {self.kv_cache_gib}.")
        check_positive("max_model_len", self.max_model_len, allow_none=False)
        check_positive("tensor_parallel_size", self.tensor_parallel_size, allow_none=False)

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '') else host}:{self.port}"


@dataclass(frozen=True)
class LoadConfig(Config):
    url: str = opt("", "server base URL, e.g. http://127.0.0.1:8000", positional=True)
    model: str | None = opt(None, "model name (default: the server's first model)")
    api_key: str | None = opt(None, "bearer token for the server")
    concurrency: int = opt(4, "concurrent streaming clients")
    requests: int = opt(32, "stop after this many requests")
    duration: float = opt(120.0, "or after this many seconds")
    max_tokens: int = opt(32, "tokens per request")
    kinds: tuple[str, ...] = opt(KINDS, "request kinds to alternate")
    # Every request generates max_tokens (vLLM's ignore_eos) so that models that stop early do not look
    # faster: the same work is asked of each model.
    ignore_eos: bool = opt(
        True, "let requests end at EOS (default: every request generates --max-tokens)", flag="--stop-at-eos"
    )
    json_out: str | None = opt(None, "also write the figures to this file", flag="--json")
    timeout: float = opt(300.0, "seconds per request", cli=False)

    def validate(self) -> None:
        u = urlparse(self.url)
        check(
            u.scheme in ("http", "https") and bool(u.hostname),
            f"{self.url!r} is not a server URL; give one like http://127.0.0.1:8000.",
        )
        check_positive("concurrency", self.concurrency, allow_none=False)
        check_positive("requests", self.requests, allow_none=False)
        check_positive("max_tokens", self.max_tokens, allow_none=False)
        check(self.duration > 0, f"--duration must be positive, got {self.duration}.")
        bad = [k for k in self.kinds if k not in KINDS]
        check(
            not bad and bool(self.kinds), f"--kinds takes {', '.join(KINDS)}; got {', '.join(self.kinds) or 'nothing'}."
        )
