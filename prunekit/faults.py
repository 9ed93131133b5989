"""Fault injection for the kill tests (tests/test_kill.py): with PRUNEKIT_KILL_AT=<point> set, the process
SIGKILLs itself when it reaches that point, so a test can prove that a kill there loses nothing. Unset
(always, outside those tests) each point is one dictionary lookup."""

from __future__ import annotations

import os
import signal

from prunekit.env import kill_point

POINTS = ("compress:statistics", "compress:cut", "compress:save", "export:onnx")


def point(name: str) -> None:
    if kill_point() == name:
        os.kill(os.getpid(), signal.SIGKILL)
