"""The server under load: `python -m prunekit.bench.soak ARTIFACT` (`make bench-serve`).

Starts `prunekit serve` on the artifact and runs, against the live server:
1. N concurrent streaming clients for M minutes (default 64 x 5), sampling the resident memory of the
   server's whole process group (API server, engine core, workers) every few seconds;
2. malformed requests: bad JSON, an unknown model, a prompt longer than the context, max_tokens 0 and -1,
   each of which must get a 4xx;
3. clients that drop the connection mid-stream;
then checks that the server still answers /health and a normal request. Prints a report and writes
soak.json and soak.md under --out; exits 1 when any request failed, a malformed one got no 4xx, the
server was unhealthy after, or its memory in the last minute was more than 10% above the first minute's.
A benchmark, not a test: it measures and reports; nothing in `make test` runs it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from prunekit.serve import LoadConfig, ServeConfig, Server, format_load, run_load

from prunekit.artifact import write_json_atomic
from prunekit.proc import group_alive


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every live process in the group, in MB (shared pages count in each process)."""
    total = 0
    for pid in group_alive(pgid):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total * 4096 / 1e6


def sample_memory(pgid: int, stop: threading.Event, every: float, out: list) -> None:
    t0 = time.time()
    while not stop.wait(every):
        out.append((round(time.time() - t0, 1), round(group_rss_mb(pgid), 1)))


def per_minute(samples: list[tuple[float, float]], every: float) -> list[dict]:
    """Mean and max per whole minute; a last minute with under half its samples (the load's final
    seconds) is left out rather than let one sample decide the verdict."""
    mins: dict[int, list[float]] = {}
    for t, mb in samples:
        mins.setdefault(int(t // 60), []).append(mb)
    full = [(m, v) for m, v in sorted(mins.items()) if len(v) >= 30 / every]
    return [{"minute": m + 1, "rss_mb_mean": round(sum(v) / len(v), 1), "rss_mb_max": max(v)} for m, v in full]


def post(url: str, body: bytes, timeout: float = 60) -> int:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:  # no answer at all (reset, timeout): not a 4xx, and reported as such
        return 0


def malformed(url: str, model: str, max_len: int) -> dict:
    """Status code of each malformed request (each should be a 4xx, never a 5xx or a hang)."""
    ok = {"model": model, "prompt": "hello", "max_tokens": 4}
    long_prompt = "word " * (max_len * 2)
    cases = {
        "bad JSON": b'{"model": "x", "prompt": ',
        "unknown model": json.dumps({**ok, "model": "no-such-model"}).encode(),
        "prompt longer than the context": json.dumps({**ok, "prompt": long_prompt}).encode(),
        "max_tokens 0": json.dumps({**ok, "max_tokens": 0}).encode(),
        "max_tokens -1": json.dumps({**ok, "max_tokens": -1}).encode(),
    }
    return {name: post(url + "/v1/completions", body) for name, body in cases.items()}


def disconnect_mid_stream(url: str, model: str, clients: int) -> int:
    """`clients` streaming requests closed after their first chunk; returns how many got a first chunk."""
    host, port = url.split("//")[1].split(":")
    got = []

    def one() -> None:
        c = http.client.HTTPConnection(host, int(port), timeout=120)
        try:
            _stream_then_drop(c, model, got)
        except OSError:
            pass  # not counted: the report shows how many clients got a first chunk
        finally:
            c.close()

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(got)


def _stream_then_drop(c: http.client.HTTPConnection, model: str, got: list) -> None:
    c.request(
        "POST",
        "/v1/completions",
        json.dumps(
            {"model": model, "prompt": "Count to one hundred:", "max_tokens": 256, "stream": True, "ignore_eos": True}
        ),
        {"Content-Type": "application/json"},
    )
    r = c.getresponse()
    if r.status == 200 and r.readline():
        got.append(1)  # list.append is atomic; += on a shared int is not
    if c.sock is not None:
        c.sock.shutdown(socket.SHUT_RDWR)  # drop it, as a client that goes away does


def healthy(url: str, model: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=30) as r:
            if r.status != 200:
                return False
    except OSError:
        return False
    return post(url + "/v1/completions", json.dumps({"model": model, "prompt": "hi", "max_tokens": 4}).encode()) == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def soak(
    artifact: str,
    clients: int = 64,
    minutes: float = 5,
    max_tokens: int = 32,
    dtype: str = "auto",
    kv_cache_gib: float = 1.0,
    max_model_len: int = 2048,
    every: float = 5.0,
    log=print,
) -> dict:
    cfg = ServeConfig(
        artifact=artifact, port=free_port(), dtype=dtype, kv_cache_gib=kv_cache_gib, max_model_len=max_model_len
    )
    load = LoadConfig(
        url=cfg.url(), model="-", concurrency=clients, requests=10**9, duration=minutes * 60, max_tokens=max_tokens
    )
    res: dict = {"artifact": artifact, "clients": clients, "minutes": minutes, "max_tokens": max_tokens, "dtype": dtype}
    with Server(cfg) as srv:
        log(f"serving {srv.name} at {srv.url}; {clients} clients for {minutes:g} min ...")
        samples: list = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample_memory, args=(srv.proc.pid, stop, every, samples), daemon=True)
        sampler.start()
        res["load"] = run_load(load.replace(model=srv.name))
        stop.set()
        sampler.join()
        log(format_load(res["load"]))
        res["memory"] = per_minute(samples, every)
        res["malformed"] = malformed(srv.url, srv.name, max_model_len)
        res["disconnected"] = {"clients": 16, "got_first_chunk": disconnect_mid_stream(srv.url, srv.name, 16)}
        time.sleep(2)
        res["healthy_after"] = healthy(srv.url, srv.name)
    mem = res["memory"]
    res["memory_growth"] = round(mem[-1]["rss_mb_mean"] / mem[0]["rss_mb_mean"] - 1, 4) if len(mem) > 1 else None
    res["passed"] = (
        res["load"]["errors"] == 0
        and res["load"]["requests"] > 0
        and res["healthy_after"]
        and all(400 <= c < 500 for c in res["malformed"].values())
        and (res["memory_growth"] is None or res["memory_growth"] <= 0.10)
    )
    return res


def format_soak(r: dict) -> str:
    ld = r["load"]
    lines = [
        f"# Server under load: {r['artifact']}",
        "",
        f"{r['clients']} concurrent streaming clients for {r['minutes']:g} min, {r['max_tokens']} tokens each "
        f"(dtype {r['dtype']}).",
        "",
        "| requests | errors | req/s | output tok/s | latency p50 / p95 (s) | TTFT p50 / p95 (s) |",
        "|---|---|---|---|---|---|",
        f"| {ld['requests']} | {ld['errors']} | {ld['requests_per_s']} | {ld['output_tokens_per_s']} | "
        f"{ld['latency_p50_s']} / {ld['latency_p95_s']} | {ld['ttft_p50_s']} / {ld['ttft_p95_s']} |",
        "",
        "Resident memory of the server's process group per minute (MB, mean / max of the samples):",
        "",
        "| minute | " + " | ".join(str(m["minute"]) for m in r["memory"]) + " |",
        "|---|" + "---|" * len(r["memory"]),
        "| RSS | " + " | ".join(f"{m['rss_mb_mean']:.0f} / {m['rss_mb_max']:.0f}" for m in r["memory"]) + " |",
        "",
        f"Last minute vs first: {r['memory_growth']:+.1%}." if r["memory_growth"] is not None else "",
        "",
        "| malformed request | status |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in r["malformed"].items()]
    d = r["disconnected"]
    lines += [
        "",
        f"{d['clients']} clients dropped mid-stream ({d['got_first_chunk']} had a first chunk); the server "
        f"{'answered /health and a request after' if r['healthy_after'] else 'was NOT healthy after'}.",
        "",
        f"**{'passed' if r['passed'] else 'FAILED'}**",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunekit.bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"))
    ap.add_argument("--kv-cache-gib", type=float, default=1.0)
    ap.add_argument("--out", default=None, help="write soak.json and soak.md here")
    a = ap.parse_args(argv)
    if a.clients < 1 or a.minutes <= 0 or a.max_tokens < 1:
        ap.error("--clients, --minutes and --max-tokens must be positive")
    r = soak(
        a.artifact,
        a.clients,
        a.minutes,
        a.max_tokens,
        a.dtype,
        a.kv_cache_gib,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    text = format_soak(r)
    print(text)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(a.out) / "soak.json", r)
        (Path(a.out) / "soak.md").write_text(text)
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
