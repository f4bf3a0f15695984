"""One long-lived I/O thread per store, fed by a queue and answering in batches.

A worker thread per operation (``anyio.to_thread.run_sync``) costs two
thread switches and a pool slot per operation, and every operation pays its
own fsync. Here callers put a :class:`Job` on a queue and wait for its
event; one thread takes everything queued so far as a batch, lets the owner
run it (the file backend: every job's reads and decisions under its locks,
then one write-and-sync pass for the whole batch), and wakes every caller of
the batch with one hop back to the event loop. While a batch runs the next
one queues up, so the batch size grows with the load by itself.

Callers stay in control of time: each waits at most ``io_timeout`` and may be
cancelled, setting ``job.cancel``; the owner's batch function checks it
before committing anything, and a job abandoned before its batch starts is
dropped unrun. A thread stuck in I/O holds up only the jobs behind it, whose
callers time out as they would have on the stuck storage anyway.

The thread exits after ``idle`` seconds without work and a later submit
starts a new one: a store nobody closes leaks no thread for long.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

T = TypeVar("T")
J = TypeVar("J", bound="Job[Any]")

__all__ = ["BatchWorker", "Job", "any_worker_busy"]

# Every worker alive, for any_worker_busy (a virtual clock's question).
_WORKERS: weakref.WeakSet[BatchWorker[Any]] = weakref.WeakSet()


def any_worker_busy() -> bool:
    """Whether some batch worker has a job queued or in hand.

    A simulator's virtual clock must not jump then: the worker's thread may
    have been started by a caller that has since moved on, so the event
    loop's own count of busy threads does not see it.
    """
    return any(worker.busy for worker in list(_WORKERS))


class Job(Generic[T]):
    """One caller's request; the batch function fills in ``value`` or ``error``."""

    __slots__ = ("_done", "cancel", "error", "token", "value")

    def __init__(self) -> None:
        self.cancel = threading.Event()  # set when the caller gave up: commit nothing for it
        self.value: T | None = None
        self.error: BaseException | None = None
        # Created on the event loop thread, set there (anyio events are not thread-safe).
        self._done = anyio.Event()
        self.token = anyio.lowlevel.current_token()

    def fail(self, exc: BaseException) -> None:
        self.error = exc

    def result(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # None is a valid T for jobs returning None


class BatchWorker(Generic[J]):
    """Runs ``run_batch(jobs)`` on its own thread; ``run_batch`` returns the jobs to retry next batch.

    ``run_batch`` must settle (value or error) every job it does not return.
    """

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[J]], Sequence[J]],
        *,
        max_batch: int = 256,
        idle: float = 2.0,
    ) -> None:
        self._name = name
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._idle = idle
        self._queue: queue.SimpleQueue[J] = queue.SimpleQueue()
        self._claim = threading.Lock()  # held by the one thread serving the queue
        self._limiter: anyio.CapacityLimiter | None = None
        self._waiting = 0  # callers in submit, counted on their event loops' threads
        _WORKERS.add(self)

    @property
    def busy(self) -> bool:
        return self._waiting > 0

    async def submit(self, job: J, *, bound: float | None, abandonable: bool = True) -> None:
        """Queue ``job`` and wait until its batch settled it.

        Abandonable: bounded by ``bound`` (TimeoutError) and cancellable;
        either sets ``job.cancel``. Otherwise the wait is shielded and
        unbounded: for commits whose outcome must be known before anyone
        looks at the records again.
        """
        self._waiting += 1
        self._queue.put(job)
        # Queued first, checked second: a thread that is leaving looks at the
        # queue again after giving up its claim (see _loop), so one of the two
        # serves this job.
        start = not self._claim.locked()
        try:
            # Outside the task group, so the timeout is raised as is, not in a group.
            with anyio.fail_after(bound if abandonable else None, shield=not abandonable):
                if not start:
                    await job._done.wait()  # the common case: a thread is serving
                    return
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._drive)
                    await job._done.wait()
                    # The thread keeps serving the queue, abandoned by this caller.
                    tg.cancel_scope.cancel()
        finally:
            job.cancel.set()  # harmless once settled; stops a commit not yet started
            self._waiting -= 1

    async def _drive(self) -> None:
        """Start a worker thread: an anyio one, so code it runs may call back with anyio.from_thread.

        Each caller that finds no thread serving starts one (a cancelled
        caller's thread may never start); the first to claim the worker
        serves, the others return at once.
        """
        if self._limiter is None:
            # Not the default pool: lease traffic must not wait for its slots.
            self._limiter = anyio.CapacityLimiter(1)
        await anyio.to_thread.run_sync(self._serve, abandon_on_cancel=True, limiter=self._limiter)

    # --- the worker thread ---

    def _serve(self) -> None:
        while self._claim.acquire(blocking=False):
            try:
                self._loop()
            finally:
                self._claim.release()
            if self._queue.empty():
                return
            # Queued while we were leaving: serve it, unless a new thread already does.

    def _loop(self) -> None:
        carried: list[J] = []
        while True:
            batch = carried
            if not batch:
                try:
                    batch = [self._queue.get(timeout=self._idle)]
                except queue.Empty:
                    return
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            live = [job for job in batch if not job.cancel.is_set()]  # abandoned unrun: forget it
            try:
                carried = list(self._run_batch(live)) if live else []
            except BaseException as exc:  # a bug in run_batch: fail the batch, keep the thread
                for job in live:
                    if job.error is None:
                        job.fail(exc)
                carried = []
            waiting = {id(job) for job in carried}
            _wake([job for job in live if id(job) not in waiting])


def _wake(jobs: Sequence[Job[Any]]) -> None:
    """Set the events of settled jobs: one hop to each event loop, not one per job."""
    by_loop: dict[int, list[Job[Any]]] = {}
    for job in jobs:
        by_loop.setdefault(id(job.token.native_token), []).append(job)
    for group in by_loop.values():

        def wake(group: list[Job[Any]] = group) -> None:
            for job in group:
                job._done.set()

        # The loop has ended (nobody is waiting any more): nothing to wake.
        with contextlib.suppress(Exception):
            anyio.from_thread.run_sync(wake, token=group[0].token)
