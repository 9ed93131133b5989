"""Child processes that leave nothing behind: each runs in its own process group, and the whole group
is killed when it ends, times out or the caller is interrupted (vLLM starts engine-core and worker
processes that would otherwise outlive a killed parent and hold a core and gigabytes of memory)."""
from __future__ import annotations

import os
import signal
import subprocess


def run_group(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    p = subprocess.Popen(cmd, start_new_session=True, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except BaseException:  # timeout, Ctrl-C: take the whole group down before re-raising
        _kill(p.pid)
        p.communicate()
        raise
    finally:
        _kill(p.pid)  # stragglers of a child that exited
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _kill(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
