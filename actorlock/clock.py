"""The clock a host measures its own deadlines on.

CLOCK_MONOTONIC stops while the machine is suspended, so a host that wakes
from suspend would believe its lease still valid for as long as it slept.
CLOCK_BOOTTIME counts the suspended time too; it is used wherever the
platform has it. Reading it is a vDSO call (tens of nanoseconds, no system
call on Linux), so it is read directly on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["host_clock"]


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


host_clock: Callable[[], float] = _boottime if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic
