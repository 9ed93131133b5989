"""`python -m prunekit.guard PARENT_PID CMD...`: run CMD in this process group, and take the whole group
down when PARENT_PID dies.

prunekit starts vLLM and its workers in their own process group so that stopping them reaches every
engine process. A parent killed with SIGKILL gets no chance to stop that group, and vLLM's engine-core
and worker processes would live on, holding cores, gigabytes and the port. This guard, the group's
leader, watches its parent and kills the group (itself included) once the parent is gone. It imports
nothing heavy: it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time


def _watch(parent: int) -> None:
    while os.getppid() == parent:  # re-parented (to init or a subreaper) once the parent has died
        time.sleep(0.5)
    os.killpg(0, signal.SIGKILL)


def main(argv: list[str]) -> int:
    parent, cmd = int(argv[0]), argv[1:]
    if os.getppid() != parent:  # the parent died before the guard started
        return 1
    # The group is stopped with SIGTERM (graceful: vLLM shuts down) and the command gets it directly, as a
    # member of the group. The guard waits for the command instead of dying first. A handler, not SIG_IGN:
    # ignored signals would be inherited by the command through exec.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    threading.Thread(target=_watch, args=(parent,), daemon=True).start()
    rc = subprocess.Popen(cmd).wait()
    _stop_the_rest()
    return 128 - rc if rc < 0 else rc  # killed by a signal: the shell's convention


def _stop_the_rest(grace: float = 10) -> None:
    """The command has exited; stop what it left in the group (an engine process it did not reap), so that
    nothing outlives the guard: SIGTERM, then SIGKILL after `grace` seconds."""
    from prunekit.proc import group_alive

    me = os.getpid()
    rest = [p for p in group_alive(me) if p != me]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in rest:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while rest and time.time() < deadline:
            time.sleep(0.2)
            rest = [p for p in group_alive(me) if p != me]
        if not rest:
            return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
