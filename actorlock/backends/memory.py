"""In-process lockspace shared by simulated hosts (tests, simulator).

Operations never await between reading and writing the shared state, so on
one event loop each one is atomic without a lock. The one exception is the
simulator's ``read_delay`` fault, which stalls an operation between reading
host records and judging them: an acquisition then re-reads if a lease
record changed meanwhile, as the file backend's record locks would have
made it wait.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence

import attrs

from ..clock import host_clock
from ..errors import InvalidStateError
from ..model import (
    Holder,
    HostIdentity,
    HostRecord,
    HostState,
    HostView,
    Lease,
    LeaseOwner,
    LeaseRecord,
    LeaseRequest,
)
from .base import BackendCapabilities, HostAdvert
from .liveness import LivenessObserver, wait_for_id_free
from .rules import plan_acquire, plan_release, plan_transfer


class MemoryLockspace:
    """The shared state: lease records and host records, by key and by id."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.id = f"memory:{name}:{uuid.uuid4().hex[:12]}"
        self.records: dict[str, LeaseRecord] = {}
        self.hosts: dict[int, HostRecord] = {}


_REGISTRY: dict[str, MemoryLockspace] = {}


def shared_lockspace(name: str) -> MemoryLockspace:
    """The process-wide memory lockspace called ``name`` (created on first use)."""
    space = _REGISTRY.get(name)
    if space is None:
        space = _REGISTRY[name] = MemoryLockspace(name)
    return space


def drop_lockspace(name: str) -> None:
    """Forget a named memory lockspace (tests use this to start clean)."""
    _REGISTRY.pop(name, None)


class MemoryLeaseBackend:
    """One host's handle on a :class:`MemoryLockspace`."""

    kind = "memory"
    capabilities = BackendCapabilities()

    def __init__(
        self,
        space: MemoryLockspace,
        *,
        host_dead: float,
        poll_interval: float = 0.1,
        clock: Callable[[], float] = host_clock,
        read_delay: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``read_delay``, for fault injection, is awaited between reading host records and judging them."""
        self.space = space
        self._observer = LivenessObserver(host_dead, clock)
        self._read_delay = read_delay
        self._poll = poll_interval
        self._host: HostIdentity | None = None
        self._incarnation = ""

    async def lockspace_id(self) -> str:
        return self.space.id

    def _me(self) -> HostRecord:
        if self._host is None:
            raise InvalidStateError("backend has not joined the lockspace")
        return self.space.hosts[self._host.id]

    async def join(self, host: HostIdentity, incarnation: str, advert: HostAdvert) -> HostRecord | None:
        async def read() -> HostRecord | None:
            record = self.space.hosts.get(host.id)
            if self._read_delay is not None:
                await self._read_delay()
            return record

        previous = await wait_for_id_free(read, incarnation, self._observer, self._poll)
        counter = previous.counter + 1 if previous is not None else 1
        self.space.hosts[host.id] = HostRecord(
            name=host.name,
            id=host.id,
            incarnation=incarnation,
            counter=counter,
            boot_id=advert.boot_id,
            renewed_monotonic=advert.renewed_monotonic,
            peer_endpoint=advert.peer_endpoint,
            public_key=advert.public_key,
        )
        self._host, self._incarnation = host, incarnation
        return previous

    async def renew(self, advert: HostAdvert) -> HostRecord:
        me = self._me()
        if me.incarnation != self._incarnation:
            raise InvalidStateError(f"host id {me.id} was taken over by incarnation {me.incarnation}")
        new = advert.renewal_of(me)
        self.space.hosts[me.id] = new
        return new

    async def leave(self, *, clean: bool) -> None:
        if self._host is None:
            return
        me = self.space.hosts.get(self._host.id)
        if clean and me is not None and me.incarnation == self._incarnation:
            self.space.hosts[me.id] = attrs.evolve(me, counter=me.counter + 1, state=HostState.LEFT)
        self._host = None

    async def hosts(self) -> list[HostView]:
        read_at = self._observer.now()
        found = sorted(self.space.hosts.items())
        if self._read_delay is not None:
            await self._read_delay()
        return [self._observer.observe(r, read_at) for _, r in found]

    async def acquire(self, owner: LeaseOwner, requests: Sequence[LeaseRequest]) -> tuple[Lease, ...]:
        self._me()
        read_at = self._observer.now()
        host_records: Mapping[int, HostRecord] = self.space.hosts
        if self._read_delay is not None:
            keys = [r.key for r in requests]
            while True:
                leases_read = [self.space.records.get(k) for k in keys]
                read_at = self._observer.now()
                # Read after the lease records, as the file backend does.
                host_records = dict(self.space.hosts)
                await self._read_delay()
                if [self.space.records.get(k) for k in keys] == leases_read:
                    break
            self._me()
        updated, leases = plan_acquire(
            self.space.records, owner, self._incarnation, requests, self._judge(host_records, read_at)
        )
        self.space.records.update(updated)
        return leases

    def _judge(self, host_records: Mapping[int, HostRecord], read_at: float) -> Callable[[Holder], bool]:
        return lambda h: self._observer.holder_alive(h, host_records.get(h.owner.host_id), read_at)

    async def release(self, owner: LeaseOwner, keys: Sequence[str]) -> None:
        self.space.records.update(plan_release(self.space.records, owner, keys))

    async def transfer(
        self,
        source: LeaseOwner,
        destination: LeaseOwner,
        destination_incarnation: str,
        leases: Sequence[Lease],
    ) -> tuple[Lease, ...]:
        self._me()
        updated, moved = plan_transfer(
            self.space.records, source, self._incarnation, destination, destination_incarnation, leases
        )
        self.space.records.update(updated)
        return moved

    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]:
        if keys is None:
            return [self.space.records[k] for k in sorted(self.space.records)]
        return [self.space.records[k] for k in sorted(set(keys)) if k in self.space.records]

    async def aclose(self) -> None:
        return None


def completes_without_suspending(backend: object) -> bool:
    """Whether every call of ``backend`` finishes without ever suspending.

    True only for a plain :class:`MemoryLeaseBackend` without an injected
    read delay: its operations never await. A wrapper around one (fault
    injection) may add waits, so only the exact class counts.
    """
    return type(backend) is MemoryLeaseBackend and backend._read_delay is None
