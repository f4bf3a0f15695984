"""Fault injection around a lease backend and a state store: fail, stall, hold or slow them down.

Wrap a backend, hand the wrapper to ``open_host(backend=...)``, and flip the
switches from the test. Every switch is a plain call so scenarios read as
what they do::

    faulty = FaultyBackend(inner)
    faulty.fail("renew")          # renewals raise BackendError from now on
    faulty.stall("acquire")       # acquisitions hang until heal("acquire")
    faulty.heal()                 # everything works again

Storage that is slow or stuck rather than broken (issue 7) has switches of
its own, independent of ``fail``/``stall``/``heal``:

- :meth:`FaultyBackend.hold_all` / :meth:`~FaultyBackend.release_all`: every
  operation (renewals included) hangs before it reaches storage, as with a
  hung NFS server, until released;
- :meth:`FaultyBackend.slow` / :meth:`~FaultyBackend.unslow`: each call of an
  operation takes a random extra time up to ``longest``, either *before* it
  reaches storage (its write lands late) or *after* (the write lands at once,
  the answer comes back late), see :class:`Slowness`;
- :meth:`FaultyBackend.delay_judgements`: :meth:`FaultyBackend.read_delay`,
  handed to a backend that supports the hook (the memory backend's
  ``read_delay``), sleeps a random time between a host record's read and the
  judgement of its liveness;
- :class:`FaultyStateStore`: a state store whose writes (``save_host``,
  ``save_domain``, ``delete_domain``) are slowed the same way;
- :func:`saturate_thread_pool`: every token of anyio's default worker-thread
  limiter borrowed until an event is set, as if lease I/O had filled the pool.

Random delays come from the wrapper's own ``rng`` (seeded by ``seed``), so a
run on a virtual clock repeats them. Turning a slow fault off stops new
delays; delays already drawn run out, and ``settled()`` waits for them.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, TypeVar

import anyio
import anyio.to_thread
import attrs
from anyio.abc import TaskStatus

from ..backends.base import BackendCapabilities, HostAdvert, LeaseBackend
from ..errors import BackendError, InvalidParameterError
from ..model import HostIdentity, HostRecord, HostView, Lease, LeaseOwner, LeaseRecord, LeaseRequest
from ..statestore import DomainState, HostPersisted, StateStore

__all__ = [
    "OPERATIONS",
    "STATE_WRITES",
    "FaultyBackend",
    "FaultyStateStore",
    "ForwardingBackend",
    "Shape",
    "Slowness",
    "saturate_thread_pool",
]

OPERATIONS = ("join", "renew", "leave", "hosts", "acquire", "release", "transfer", "records")
# The state store operations a slow state_dir slows down (reads are left alone).
STATE_WRITES = ("save_host", "save_domain", "delete_domain")

T = TypeVar("T")

# "before": the call waits, then reaches storage (its write lands late);
# "after": it reaches storage at once and its answer comes back late;
# "either": each call tosses a coin.
Shape = Literal["before", "after", "either"]


@attrs.frozen
class Slowness:
    """How much slower each call of an operation is while a slow fault lasts.

    Attributes:
        longest: each call is delayed by a random time in ``[least, longest]``.
        shape: where the delay falls (see :data:`Shape`).
        least: the shortest delay (equal to ``longest`` for a fixed one).
        share: the fraction of calls that are delayed at all (the others are not).
    """

    longest: float
    shape: Shape = "either"
    least: float = 0.0
    share: float = 1.0

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.least <= self.longest:
            raise InvalidParameterError(f"delays must satisfy 0 <= least <= longest, got {self}")
        if self.shape not in ("before", "after", "either"):
            raise InvalidParameterError(f"shape must be before, after or either, got {self.shape!r}")
        if not 0 <= self.share <= 1:
            raise InvalidParameterError(f"share must be in [0, 1], got {self.share}")

    def draw(self, rng: random.Random) -> tuple[float, float]:
        """One call's (delay before storage, delay after storage)."""
        if self.share < 1 and rng.random() >= self.share:
            return (0.0, 0.0)
        delay = rng.uniform(self.least, self.longest)
        before = self.shape == "before" or (self.shape == "either" and rng.random() < 0.5)
        return (delay, 0.0) if before else (0.0, delay)


class _InFlight:
    """Counts delays being slept, so a healed fault can wait until its last one is over."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = anyio.Event()

    async def sleep(self, delay: float) -> None:
        if delay <= 0:
            return
        self.count += 1
        try:
            await anyio.sleep(delay)
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()
                self._idle = anyio.Event()

    async def settled(self) -> None:
        while self.count:
            await self._idle.wait()


class ForwardingBackend:
    """A LeaseBackend that passes every operation to ``inner`` through :meth:`_call`.

    Subclasses change what happens around a call (fail, stall, slow it down,
    cut it off) by overriding ``_call`` alone; ``aclose`` is never gated.
    """

    def __init__(self, inner: LeaseBackend) -> None:
        self.inner = inner

    @property
    def kind(self) -> str:
        return self.inner.kind

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.inner.capabilities

    async def _call(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        return await call()

    async def lockspace_id(self) -> str:
        return await self._call("lockspace_id", self.inner.lockspace_id)

    async def join(self, host: HostIdentity, incarnation: str, advert: HostAdvert) -> HostRecord | None:
        return await self._call("join", lambda: self.inner.join(host, incarnation, advert))

    async def renew(self, advert: HostAdvert) -> HostRecord:
        return await self._call("renew", lambda: self.inner.renew(advert))

    async def leave(self, *, clean: bool) -> None:
        await self._call("leave", lambda: self.inner.leave(clean=clean))

    async def hosts(self) -> list[HostView]:
        return await self._call("hosts", self.inner.hosts)

    async def acquire(self, owner: LeaseOwner, requests: Sequence[LeaseRequest]) -> tuple[Lease, ...]:
        return await self._call("acquire", lambda: self.inner.acquire(owner, requests))

    async def release(self, owner: LeaseOwner, keys: Sequence[str]) -> None:
        await self._call("release", lambda: self.inner.release(owner, keys))

    async def transfer(
        self,
        source: LeaseOwner,
        destination: LeaseOwner,
        destination_incarnation: str,
        leases: Sequence[Lease],
    ) -> tuple[Lease, ...]:
        return await self._call(
            "transfer", lambda: self.inner.transfer(source, destination, destination_incarnation, leases)
        )

    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]:
        return await self._call("records", lambda: self.inner.records(keys))

    async def aclose(self) -> None:
        await self.inner.aclose()


class FaultyBackend(ForwardingBackend):
    """A LeaseBackend that forwards to ``inner`` unless told to fail, stall, hold or slow down."""

    def __init__(self, inner: LeaseBackend, *, seed: int | str = 0) -> None:
        super().__init__(inner)
        self.failing: set[str] = set()
        self._stalled: dict[str, anyio.Event] = {}
        self._parked: dict[str, anyio.Event] = {}
        self._held: anyio.Event | None = None
        self._slow: dict[str, Slowness] = {}
        self._judging: Slowness | None = None
        self._slow_calls = _InFlight()
        self._judgements = _InFlight()
        self.rng = random.Random(f"faulty-backend:{seed}")
        self.calls: dict[str, int] = dict.fromkeys(OPERATIONS, 0)

    def fail(self, *operations: str) -> None:
        """Make these operations raise BackendError until healed."""
        self.failing.update(_checked(operations))

    def stall(self, *operations: str) -> None:
        """Make these operations hang until healed."""
        for op in _checked(operations):
            self._stalled.setdefault(op, anyio.Event())

    def heal(self, *operations: str) -> None:
        """Undo fail/stall for these operations (all when none are named).

        Holds, slow operations and judgement delays have their own switches
        and are left as they are.
        """
        ops = _checked(operations) if operations else OPERATIONS
        for op in ops:
            self.failing.discard(op)
            gate = self._stalled.pop(op, None)
            if gate is not None:
                gate.set()
            self._parked.pop(op, None)

    # -- slow and stuck storage ---------------------------------------------------

    @property
    def held(self) -> bool:
        """True while :meth:`hold_all` is in force."""
        return self._held is not None

    def hold_all(self) -> None:
        """Every operation (``lockspace_id`` too, not ``aclose``) hangs before reaching storage.

        Calls already past storage are not affected. Lasts until :meth:`release_all`.
        """
        if self._held is None:
            self._held = anyio.Event()

    def release_all(self) -> None:
        """End :meth:`hold_all`: held calls go on to storage now."""
        held, self._held = self._held, None
        if held is not None:
            held.set()

    def slow(self, operation: str, longest: float, shape: Shape = "either", *, least: float = 0.0) -> None:
        """Delay each call of ``operation`` by ``least`` to ``longest`` seconds (see :class:`Slowness`)."""
        (op,) = _checked((operation,))
        self._slow[op] = Slowness(longest, shape, least)

    def unslow(self, *operations: str) -> None:
        """Undo :meth:`slow` for these operations (all when none are named)."""
        for op in _checked(operations) if operations else OPERATIONS:
            self._slow.pop(op, None)

    @property
    def slowed(self) -> dict[str, Slowness]:
        """The operations slowed now."""
        return dict(self._slow)

    async def slow_settled(self) -> None:
        """Wait until no call is delayed by :meth:`slow` any more (after :meth:`unslow`)."""
        await self._slow_calls.settled()

    async def judgements_settled(self) -> None:
        """Wait until no :meth:`read_delay` sleeps any more (after turning judgement delays off)."""
        await self._judgements.settled()

    def delay_judgements(self, longest: float | None, *, least: float = 0.0, share: float = 1.0) -> None:
        """Make :meth:`read_delay` sleep ``least`` to ``longest`` seconds (``longest`` None: not at all).

        With ``share`` below 1, only that fraction of the reads is delayed.
        """
        self._judging = None if longest is None else Slowness(longest, "before", least, share)

    async def read_delay(self) -> None:
        """The hook a backend awaits between reading host records and judging their liveness."""
        if self._judging is not None:
            delay, _ = self._judging.draw(self.rng)
            await self._judgements.sleep(delay)

    # -- the wrapped operations ---------------------------------------------------

    async def wait_parked(self, operation: str) -> None:
        """Wait until a call of ``operation`` is held by a stall."""
        await self._parked.setdefault(operation, anyio.Event()).wait()

    async def _wait_held(self) -> None:
        while self._held is not None:
            await self._held.wait()

    async def _call(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        if op == "lockspace_id":  # held like everything, never failed, stalled or slowed
            await self._wait_held()
            return await call()
        self.calls[op] += 1
        slowness = self._slow.get(op)
        before, after = slowness.draw(self.rng) if slowness is not None else (0.0, 0.0)
        await self._slow_calls.sleep(before)
        await self._wait_held()
        gate = self._stalled.get(op)
        if gate is not None:
            self._parked.setdefault(op, anyio.Event()).set()
            await gate.wait()
        if op in self.failing:
            raise BackendError(f"injected fault: {op} fails")
        result = await call()
        await self._slow_calls.sleep(after)
        return result


class FaultyStateStore:
    """A state store that forwards to ``inner``, its writes slowed while :meth:`slow` is in force.

    Reads (``load_host``, ``load_domains``) are never delayed. ``inner`` may
    be replaced (a host that crashed comes back with an empty store).
    """

    def __init__(self, inner: StateStore, *, seed: int | str = 0) -> None:
        self.inner = inner
        self._slow: Slowness | None = None
        self._delays = _InFlight()
        self.rng = random.Random(f"faulty-state-store:{seed}")
        self.writes = 0

    @property
    def slowed(self) -> Slowness | None:
        """How writes are slowed now (None: they are not)."""
        return self._slow

    def slow(self, longest: float, shape: Shape = "either", *, least: float = 0.0) -> None:
        """Delay each write by ``least`` to ``longest`` seconds (see :class:`Slowness`)."""
        self._slow = Slowness(longest, shape, least)

    def heal(self) -> None:
        """Writes take no extra time from now on (those being delayed finish theirs)."""
        self._slow = None

    async def settled(self) -> None:
        """Wait until no write is being delayed any more."""
        await self._delays.settled()

    async def _write(self, call: Callable[[], Awaitable[None]]) -> None:
        self.writes += 1
        before, after = self._slow.draw(self.rng) if self._slow is not None else (0.0, 0.0)
        await self._delays.sleep(before)
        await call()
        await self._delays.sleep(after)

    async def load_host(self) -> HostPersisted | None:
        return await self.inner.load_host()

    async def save_host(self, host: HostPersisted) -> None:
        await self._write(lambda: self.inner.save_host(host))

    async def load_domains(self) -> list[DomainState]:
        return await self.inner.load_domains()

    async def save_domain(self, state: DomainState) -> None:
        await self._write(lambda: self.inner.save_domain(state))

    async def delete_domain(self, uuid: str) -> None:
        await self._write(lambda: self.inner.delete_domain(uuid))


async def saturate_thread_pool(release: anyio.Event, *, task_status: TaskStatus[None]) -> None:
    """Borrow every token of anyio's default worker-thread limiter until ``release`` is set.

    Reports started once all tokens are held (threads already running keep
    theirs until they finish, so that may take a moment). Meanwhile every
    ``anyio.to_thread.run_sync`` that uses the default limiter waits, on
    every host of this event loop: the pool is the process's. Start it in a
    task group (``await tg.start(saturate_thread_pool, event)``); the tokens
    are given back when ``release`` is set or the task is cancelled.

    Once ``release`` is set, the tasks that waited get their tokens one at a
    time, a microsecond apart: threads that finish together would race to
    report back, and a simulation on a virtual clock (which stands still
    while a worker thread runs) would not repeat.
    """
    limiter = anyio.to_thread.current_default_thread_limiter()
    borrowers: list[object] = []
    try:
        for _ in range(int(limiter.total_tokens)):
            borrower = object()
            await limiter.acquire_on_behalf_of(borrower)
            borrowers.append(borrower)
        task_status.started()
        await release.wait()
        while borrowers and limiter.statistics().tasks_waiting:
            limiter.release_on_behalf_of(borrowers.pop())
            await anyio.sleep(_STAGGER)
    finally:
        for borrower in borrowers:
            limiter.release_on_behalf_of(borrower)


_STAGGER = 1e-6  # between two tokens given back to waiting tasks


def _checked(operations: Sequence[str]) -> tuple[str, ...]:
    for op in operations:
        if op not in OPERATIONS:
            raise ValueError(f"unknown backend operation {op!r} (known: {', '.join(OPERATIONS)})")
    return tuple(operations)
