"""What a test can see of the embedded model server from outside: its CPU time and its log."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from proxy.local.cancel import STOPPED_MARK

# A prompt the model continues for as long as it is allowed: its end-of-text and end-of-turn
# tokens are banned, so only max_tokens (or a hang-up) ends the generation.
ENDLESS = {"prompt": "Once upon a time", "temperature": 0, "logit_bias": {"1": -100, "106": -100}}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def generating(pid: int, since: float, timeout: float = 120.0) -> None:
    """Return once the server has used a second of CPU since `since`: it is generating
    (idle, it uses next to none; a short prompt is read in a fraction of that)."""
    deadline = time.monotonic() + timeout
    while cpu_seconds(pid) - since < 1.0:
        if time.monotonic() > deadline:
            raise AssertionError(f"the model server (pid {pid}) never started generating")
        await asyncio.sleep(0.05)


def stopped_generations(logs: list[Path]) -> list[int]:
    """Token counts of the generations the server cut short because the client hung up."""
    counts = []
    pattern = re.compile(re.escape(STOPPED_MARK) + r" (\d+) tokens")
    for path in logs:
        counts += [int(n) for n in pattern.findall(path.read_text(errors="replace"))]
    return counts


async def until(check: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Poll `check`, letting the event loop run (an in-process model's output is pumped by it)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        await asyncio.sleep(0.1)
