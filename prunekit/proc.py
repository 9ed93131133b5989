"""Child processes that leave nothing behind: each runs in its own process group, and the whole group
is stopped when it ends, times out or the caller is interrupted (vLLM starts engine-core and worker
processes that would otherwise outlive a killed parent and hold a core and gigabytes of memory)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def start_group(cmd: list[str], **kw) -> subprocess.Popen:
    """Popen of `cmd` in a new process group led by prunekit.guard, which kills the group if this process
    dies without stopping it (SIGKILL, OOM killer). The group's id is the returned process's pid."""
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "prunekit.guard", str(os.getpid()), *cmd], start_new_session=True, **kw
    )


def run_group(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """subprocess.run in a new process group; the whole group is killed when the call returns."""
    p = start_group(cmd, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except BaseException:  # timeout, Ctrl-C: take the whole group down before re-raising
        kill_group(p.pid)
        p.communicate()
        raise
    finally:
        kill_group(p.pid)  # stragglers of a child that exited
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited: it writes nothing more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


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
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(d.name))
    return alive


def stop_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM the whole process group of `proc` (started with start_new_session); SIGKILL what
    remains after `grace` seconds. Returns when no process of the group is left running."""
    pgid = proc.pid
    if not kill_group(pgid, signal.SIGTERM):
        proc.poll()
        return
    deadline = time.time() + grace
    while time.time() < deadline:
        proc.poll()
        if proc.returncode is not None and not group_alive(pgid):
            return
        time.sleep(0.2)
    kill_group(pgid)
    proc.wait()
