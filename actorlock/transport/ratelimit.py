"""A token bucket for log lines that a remote party can trigger at will.

A peer that is refused reconnects every 100 ms or so, and an attacker may
use a fresh identity per attempt: logging each would let anyone on the
network fill the disk. The limiter lets a burst through, then a trickle,
and counts what it held back so the next line can say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class LogLimiter:
    """At most ``burst`` lines at once, then one per ``interval`` seconds.

    Not thread-safe: each limiter belongs to one thread (the ZAP handler's).
    """

    def __init__(self, burst: int, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._burst = burst
        self._interval = interval
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self.suppressed = 0

    def take(self) -> int | None:
        """None when this line must be dropped, else how many were dropped since the last one."""
        now = self._clock()
        self._tokens = min(float(self._burst), self._tokens + (now - self._at) / self._interval)
        self._at = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return None
        self._tokens -= 1.0
        dropped, self.suppressed = self.suppressed, 0
        return dropped
