"""A virtual trio clock: simulated seconds cost no real time, and runs repeat.

Pass it as ``anyio.run(..., backend="trio", backend_options={"clock":
virtual_clock()})`` (or from an ``anyio_backend`` fixture). Like
``trio.testing.MockClock(autojump_threshold=0)``, time stands still while
any task can run and jumps to the next deadline when all are blocked. Unlike
MockClock it never jumps while a worker thread is running: host coordinators
read their boot id (and guests' process start times) in threads, and a clock
that jumps meanwhile advances by however long the thread took in real time,
so a run would not repeat.

trio is imported here and nowhere else in the kit: actorlock's library code
uses anyio only, and a custom clock is a trio feature.
"""

from __future__ import annotations

import trio
import trio.abc
import trio.testing

from ..backends.ioworker import any_worker_busy

__all__ = ["VirtualClock", "virtual_clock"]


class VirtualClock(trio.abc.Clock):
    """Time that jumps to the next deadline once every task is blocked and no thread runs."""

    def __init__(self) -> None:
        self._now = 0.0

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self._now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        # trio asks this only when no task is runnable.
        if deadline <= self._now:
            return 0.0
        if _threads_busy():
            # Wait (in real time) for the thread to report back; time stands still.
            return 0.001
        if deadline == float("inf"):
            return 3600.0  # nothing will ever wake up: a real deadlock, let it show
        self._now = deadline
        return 0.0


def virtual_clock() -> VirtualClock:
    """A new :class:`VirtualClock`, starting at 0."""
    return VirtualClock()


def _threads_busy() -> bool:
    # Counts every trio.to_thread.run_sync in flight, whatever its limiter, and
    # the backends' batch workers, whose thread may outlive the call that started it.
    if any_worker_busy():
        return True
    try:
        return bool(trio.testing.active_thread_count())
    except RuntimeError:  # pragma: no cover - asked outside a run
        return False
