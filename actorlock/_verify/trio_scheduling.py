"""Seeding trio's scheduler: the one place that patches trio's private internals.

Why this exists: ``actorlock sim`` promises that the same seed gives the same
result, event for event. trio shuffles each batch of tasks runnable at the
same instant with a module-level random generator, so a virtual clock alone
does not make a run repeat; trio's own Hypothesis plugin makes that choice
deterministic the same way as here (sort the batch by task creation order,
shuffle with a seeded generator). Both names are private, so this is best
effort: without them a scenario still runs, it just may not repeat.

Worker threads break repeats too: a thread reports back at a moment that
depends on real time, and if tasks are runnable then, the seeded shuffle
sees another batch and the rest of the run diverges (seen as two digests for
one memory-backend seed on a loaded machine). A clock made with
``inline_worker_calls`` therefore has ``anyio.to_thread.run_sync`` run the
function in the event loop's thread, after taking a token of its limiter as
before (a saturated pool still holds callers up). On the memory backend the
only such calls are instant reads (/proc, the boot id), which take no
virtual time in a thread either; never use it where a call may block (the
file backend's lock waits). The wrapper is installed once and passes every
call through unchanged in any other run.

Only this project's verification drivers use it; the public kit
(:mod:`actorlock.testing`) never imports it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import trio.lowlevel

from ..testing.clock import VirtualClock

T = TypeVar("T")

__all__ = ["SeededVirtualClock", "seeded_virtual_clock"]


class SeededVirtualClock(VirtualClock):
    """A :class:`VirtualClock` that also seeds trio's choice among runnable tasks when the run starts."""

    def __init__(self, seed: int, *, inline_worker_calls: bool = False) -> None:
        super().__init__()
        self._seed = seed
        self.inline_worker_calls = inline_worker_calls

    def start_clock(self) -> None:
        seed_trio_scheduler(self._seed)
        if self.inline_worker_calls:
            _install_inline_worker_calls()


def seeded_virtual_clock(seed: int | None = None, *, inline_worker_calls: bool = False) -> VirtualClock:
    """A virtual clock; with ``seed``, trio's scheduling is seeded too (see the module).

    ``inline_worker_calls`` (with a seed): worker-thread calls run in the loop's thread (see the module).
    """
    if seed is None:
        return VirtualClock()
    return SeededVirtualClock(seed, inline_worker_calls=inline_worker_calls)


_thread_run_sync = anyio.to_thread.run_sync


async def _run_sync_in_clock_thread(
    func: Callable[..., T],
    *args: object,
    abandon_on_cancel: bool = False,
    cancellable: bool | None = None,
    limiter: anyio.CapacityLimiter | None = None,
) -> T:
    if not _inlining():
        passed: dict[str, Any] = {"abandon_on_cancel": abandon_on_cancel, "limiter": limiter}
        if cancellable is not None:
            passed["cancellable"] = cancellable
        return await _thread_run_sync(func, *args, **passed)
    async with limiter or anyio.to_thread.current_default_thread_limiter():
        return func(*args)


def _inlining() -> bool:
    try:
        clock = trio.lowlevel.current_clock()
    except RuntimeError:  # not in a trio run
        return False
    return isinstance(clock, SeededVirtualClock) and clock.inline_worker_calls


def _install_inline_worker_calls() -> None:
    anyio.to_thread.run_sync = _run_sync_in_clock_thread


def seed_trio_scheduler(seed: int) -> None:
    """Make trio's choice among simultaneously runnable tasks repeatable (best effort)."""
    try:
        from trio._core import _run
    except ImportError:  # pragma: no cover - trio reorganised
        return
    generator = getattr(_run, "_r", None)
    if isinstance(generator, random.Random) and hasattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING"):
        _run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
        generator.seed(seed)
