"""Shared helpers for the tests: fast timings, simulated guests, host configs."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from actorlock.timing_presets import fast_timing

# Fast but safe: the one validated preset.
TIMING = fast_timing()


def host_config(
    name: str, host_id: int, *, lockspace: str | None = None, backend: str = "memory", **sections: Any
) -> dict[str, Any]:
    """A config mapping for one simulated host on a memory (or file) lockspace."""
    cfg: dict[str, Any] = {
        "host": {"name": name, "id": host_id},
        "timing": dict(TIMING),
        "locking": {"backend": backend, "kill_grace": 0.05},
    }
    if lockspace is not None:
        cfg["memory"] = {"lockspace": lockspace}
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def unique(prefix: str = "ls") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextmanager
def guest_process() -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in guest (a sleeping process) that is reaped whatever happens."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
