"""A bounded load client for an OpenAI-compatible server: N concurrent streaming requests.

Reports requests/s, output tokens/s, latency p50/p95, time to first token (streaming) and errors.
Bounded by a request count or a duration, whichever comes first, so it always ends.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from .config import LoadConfig

PROMPTS = (
    "Explain in two sentences why the sky is blue.",
    "Write a Python function that reverses a string.",
    "What is 17 times 23? Show your steps.",
    "List three tips for writing clear documentation.",
    "Translate 'good morning, how are you?' into German.",
)


def one_request(url: str, opt: LoadConfig, kind: str, prompt: str) -> dict:
    """One streaming request; returns latency, time to first token and output tokens."""
    body = {
        "model": opt.model,
        "max_tokens": opt.max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if opt.ignore_eos:
        body["ignore_eos"] = True
    if kind == "chat":
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": prompt}]
    else:
        path, body["prompt"] = "/v1/completions", prompt
    headers = {"Content-Type": "application/json"}
    if opt.api_key:
        headers["Authorization"] = f"Bearer {opt.api_key}"
    req = urllib.request.Request(url + path, json.dumps(body).encode(), headers)
    t0 = time.perf_counter()
    ttft, tokens, chunks = None, None, 0
    with urllib.request.urlopen(req, timeout=opt.timeout) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            ev = json.loads(line[5:])
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
            for c in ev.get("choices", []):
                text = c.get("text") if kind == "completion" else (c.get("delta") or {}).get("content")
                if text:
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
    return {"kind": kind, "latency": time.perf_counter() - t0, "ttft": ttft, "tokens": tokens or chunks}


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run_load(opt: LoadConfig) -> dict:
    """Send opt.requests streaming requests (or for opt.duration seconds) from opt.concurrency clients."""
    url = opt.url.rstrip("/")
    results, errors = [], []
    lock = threading.Lock()
    counter = iter(range(opt.requests))
    deadline = time.perf_counter() + opt.duration

    def worker() -> None:
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            kind = opt.kinds[i % len(opt.kinds)]
            try:
                res = one_request(url, opt, kind, PROMPTS[i % len(PROMPTS)])
                with lock:
                    results.append(res)
            except Exception as e:  # counted and reported, never hidden
                with lock:
                    errors.append(f"{kind}: {type(e).__name__}: {e}"[:300])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(opt.concurrency) as ex:
        for _ in range(opt.concurrency):
            ex.submit(worker)
    wall = time.perf_counter() - t0
    lat = [r["latency"] for r in results]
    ttft = [r["ttft"] for r in results if r["ttft"] is not None]
    toks = sum(r["tokens"] for r in results)
    return {
        "url": url,
        "model": opt.model,
        "concurrency": opt.concurrency,
        "max_tokens": opt.max_tokens,
        "requests": len(results),
        "errors": len(errors),
        "error_samples": errors[:5],
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 3),
        "output_tokens": toks,
        "output_tokens_per_s": round(toks / wall, 2),
        "latency_p50_s": round(pct(lat, 0.5), 3),
        "latency_p95_s": round(pct(lat, 0.95), 3),
        "ttft_p50_s": round(pct(ttft, 0.5), 3),
        "ttft_p95_s": round(pct(ttft, 0.95), 3),
        "mean_latency_s": round(statistics.fmean(lat), 3) if lat else None,
    }


def format_load(r: dict) -> str:
    return (
        f"{r['model']}: {r['requests']} requests ({r['errors']} errors) in {r['wall_s']} s at concurrency "
        f"{r['concurrency']}: {r['requests_per_s']} req/s, {r['output_tokens_per_s']} output tok/s, "
        f"latency p50 {r['latency_p50_s']} s / p95 {r['latency_p95_s']} s, "
        f"TTFT p50 {r['ttft_p50_s']} s / p95 {r['ttft_p95_s']} s"
    )
