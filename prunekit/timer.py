"""A run's stage timer: wall time and peak memory per stage of a run (a stage of the work inside one command:
load, statistics, cut and refit, ...), printed at its end and recorded in the manifest.

A stage may be entered many times (statistics once per layer and round): its seconds add up and its peak
is the highest seen. The peak of each stage is its own, not the process's so far: on Linux the kernel's
high-water mark (VmHWM) is reset at each stage's entry (`/proc/self/clear_refs`, value 5); where that is
not possible the figures are the process's peak up to the stage's end, and the record says so.

Code deep inside a run marks its stages with `timed("name")`, which does nothing unless a timer is active
(`with Timer() as prof:` at a command's entry), so library calls from tests and bench cost nothing. The mark
is the process's: while a timer is active, nothing else in the process can read its own peak from it.

With products counted (`Timer(count_products=True)`, or PRUNEKIT_COUNT_PRODUCTS=1 in the environment), each
stage also records the TFLOP of its matrix products (mm, addmm, bmm, baddbmm, as torch's flop counter
counts them, attention's CPU kernel left out): a stage's seconds against its products say whether it is bound
by arithmetic or by everything else, and the sum over stages at the machine's matmul speed is the least time
the run's work can take there. Counting intercepts every tensor operation of the process's main thread (a few
microseconds each), so it is off unless asked for.
"""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from pathlib import Path

from prunekit.env import count_products_asked

_active: list[Timer] = []


def _status_mb(*fields: str) -> list[float | None]:
    """The fields of /proc/self/status in MB, read at one instant (None where absent)."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in fields:
                out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return [out.get(f) for f in fields]


def _read_hwm_mb() -> float | None:
    return _status_mb("VmHWM")[0]


def _reset_hwm() -> bool:
    """Reset the kernel's high-water mark; True only if it took. Some kernels (sandboxed ones, as on a CI
    runner) accept the write and do nothing, so the mark is read back: after a reset it sits at the
    resident size, not above it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    hwm, rss = _status_mb("VmHWM", "VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 8  # 8 MB: RSS may grow between the reads


def _trim() -> None:
    """Hand the allocator's free memory back to the kernel (glibc's malloc_trim). Between stages a run frees
    hundreds of MB in pieces below glibc's mmap threshold (a layer's activations, 7-35 MB each), which glibc
    keeps in its heaps: resident, counted in every later stage's peak, though nothing uses it."""
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


_libc = None


def _peak_mb() -> float:
    hwm = _read_hwm_mb()
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cuda():
    import torch

    return torch.cuda if torch.cuda.is_available() and torch.cuda.is_initialized() else None


def _products_mode(add):
    """A dispatch mode that passes each operation through and reports the FLOP of the matrix products among
    them to `add`. Unlike torch's FlopCounterMode it never decomposes an operation it has no formula for:
    the run computes exactly what it would without it."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    formulas = {k: flop_registry[k] for k in (aten.mm, aten.addmm, aten.bmm, aten.baddbmm) if k in flop_registry}

    class Products(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            f = formulas.get(func._overloadpacket)
            if f is not None:
                add(f(*args, **kwargs, out_val=out))
            return out

    return Products()


class Timer:
    def __init__(self, count_products: bool | None = None) -> None:
        self.count = count_products_asked() if count_products is None else count_products
        self.flop: dict[str, float] = {}  # per stage; "(no stage)" for products outside every stage
        self._mode = None
        self.rows: dict[str, dict] = {}
        self.per_stage = True  # False once a reset of the high-water mark failed
        self.peak_mb = 0.0  # the whole run's peak (the kernel's mark is reset, so it is kept here)
        self._open: list[str] = []
        self._t0 = 0.0

    def __enter__(self) -> Timer:
        _active.append(self)
        if self.count:
            self._mode = _products_mode(self._add_flop)
            self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        _active.remove(self)

    def _add_flop(self, n: float) -> None:
        name = self._open[-1] if self._open else "(no stage)"
        self.flop[name] = self.flop.get(name, 0.0) + n

    @contextmanager
    def stage(self, name: str):
        # A stage inside a stage (statistics inside a cut pass) is counted in the inner one only: the outer
        # one's clock pauses, so that the seconds of all stages add up to the run's. Inside itself, a stage
        # just goes on.
        if self._open and self._open[-1] == name:
            yield
            return
        outer = self._open[-1] if self._open else None
        if outer is not None:
            self._close(outer, pause=True)
        self._open.append(name)
        self._start(name)
        try:
            yield
        finally:
            self._close(name)
            self._open.pop()
            if outer is not None:
                self._start(outer)

    def _start(self, name: str) -> None:
        self.peak_mb = max(self.peak_mb, _peak_mb())
        _trim()
        self.per_stage = self.per_stage and _reset_hwm()
        cuda = _cuda()
        if cuda:
            cuda.reset_peak_memory_stats()
        self._t0 = time.perf_counter()

    def _close(self, name: str, pause: bool = False) -> None:
        dt = time.perf_counter() - self._t0
        peak = _peak_mb()
        self.peak_mb = max(self.peak_mb, peak)
        row = self.rows.setdefault(name, {"stage": name, "seconds": 0.0, "peak_rss_mb": 0.0, "calls": 0})
        row["seconds"] += dt
        row["calls"] += 0 if pause else 1
        row["peak_rss_mb"] = max(row["peak_rss_mb"], peak)
        cuda = _cuda()
        if cuda:
            row["peak_device_mb"] = max(row.get("peak_device_mb", 0.0), cuda.max_memory_allocated() / 2**20)

    def record(self) -> dict:
        """For the manifest: stages in the order first entered, seconds and peaks rounded. A stage still open
        (the save, when the manifest is written inside it) counts up to now."""
        live = {k: dict(v) for k, v in self.rows.items()}
        if self._open:
            name = self._open[-1]
            row = live.setdefault(name, {"stage": name, "seconds": 0.0, "peak_rss_mb": 0.0, "calls": 0})
            row["seconds"] += time.perf_counter() - self._t0
            row["peak_rss_mb"] = max(row["peak_rss_mb"], _peak_mb())
            row["calls"] += 1
        rows = [
            {
                **r,
                "seconds": round(r["seconds"], 1),
                "peak_rss_mb": round(r["peak_rss_mb"]),
                **({"peak_device_mb": round(r["peak_device_mb"])} if "peak_device_mb" in r else {}),
                **({"tflop": round(self.flop.get(r["stage"], 0.0) / 1e12, 3)} if self.count else {}),
            }
            for r in live.values()
        ]
        out = {
            "stages": rows,
            "peak_rss_mb": round(max([self.peak_mb, _peak_mb()])),
            "peak_is_per_stage": self.per_stage,
        }
        if self.count:
            out["tflop"] = round(sum(self.flop.values()) / 1e12, 3)
            out["tflop_outside_stages"] = round(self.flop.get("(no stage)", 0.0) / 1e12, 3)
        return out

    def table(self) -> str:
        rec = self.record()
        dev = any("peak_device_mb" in r for r in rec["stages"])
        fl = self.count
        head = (
            "| stage | seconds | peak RSS MB |"
            + (" peak device MB |" if dev else "")
            + (" TFLOP | TFLOP/s |" if fl else "")
        )
        lines = [head, "|---|---:|---:|" + ("---:|" if dev else "") + ("---:|---:|" if fl else "")]

        def rate(tflop: float, s: float) -> str:
            return f"{tflop / s:.3f}" if s > 0 else "-"

        for r in rec["stages"]:
            lines.append(
                f"| {r['stage']} | {r['seconds']:.1f} | {r['peak_rss_mb']} |"
                + (f" {r.get('peak_device_mb', '-')} |" if dev else "")
                + (f" {r['tflop']:.2f} | {rate(r['tflop'], r['seconds'])} |" if fl else "")
            )
        total = sum(r["seconds"] for r in rec["stages"])
        lines.append(
            f"| total | {total:.1f} | {rec['peak_rss_mb']} |"
            + (" |" if dev else "")
            + (f" {rec['tflop']:.2f} | {rate(rec['tflop'], total)} |" if fl else "")
        )
        if not rec["peak_is_per_stage"]:
            lines.append("(peaks are the process's up to each stage's end: this system cannot reset the mark)")
        return "\n".join(lines)


@contextmanager
def timed(name: str):
    """Mark a stage of the active profile; nothing when none is active."""
    if not _active:
        yield
        return
    with _active[-1].stage(name):
        yield
