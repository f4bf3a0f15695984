"""Fakes of the interfaces in actorlock.actors.ports: a domain actor or a migration driver without a host.

Each fake records what it was asked, and can be told to stall (an
``anyio.Event`` to wait on) or to fail, so a test can put any I/O of the
actor at any point of its timeline.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs

from actorlock.actors.call_result import CallResult
from actorlock.actors.domain import DomainActor
from actorlock.actors.fencing import FenceTarget
from actorlock.actors.mailbox import ActorRef, open_mailbox, run_actor
from actorlock.actors.ports import DomainServices, MigrationHandle, PeerHost
from actorlock.backends.base import BackendCapabilities
from actorlock.config import LockingConfig
from actorlock.events import HostEvent
from actorlock.model import (
    DomainIdentity,
    Holder,
    HostView,
    Lease,
    LeaseOwner,
    LeaseRecord,
    LeaseRequest,
    LockState,
)
from actorlock.statestore import DomainState

HOST = "fake-host"


def owner_for(identity: DomainIdentity) -> LeaseOwner:
    return LeaseOwner(HOST, 1, identity.uuid, identity.name)


class FakeLeases:
    """Lease access that grants every request (tokens count up) unless told otherwise."""

    def __init__(self, *, hotplug: bool = True, migration: bool = True) -> None:
        self.live = True
        self.losses = 0
        self.capabilities = BackendCapabilities(hotplug=hotplug, migration=migration)
        self.backend_kind = "fake"
        self.held: dict[str, tuple[LeaseOwner, Lease]] = {}
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.stall_acquire: anyio.Event | None = None
        self.during_acquire: Any = None  # called while an acquisition is in flight
        self._tokens = itertools.count(1)

    async def acquire(self, owner: LeaseOwner, requests: Sequence[LeaseRequest]) -> tuple[Lease, ...]:
        self.calls.append(("acquire", tuple(r.key for r in requests)))
        if self.during_acquire is not None:
            self.during_acquire()
        if self.stall_acquire is not None:
            await self.stall_acquire.wait()
        leases = tuple(Lease(r.key, r.mode, next(self._tokens)) for r in requests)
        for lease in leases:
            self.held[lease.key] = (owner, lease)
        return leases

    async def release(self, owner: LeaseOwner, keys: Sequence[str]) -> None:
        self.calls.append(("release", tuple(keys)))
        for key in keys:
            if key in self.held and self.held[key][0] == owner:
                del self.held[key]

    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]:
        wanted = keys if keys is not None else sorted(self.held)
        out = []
        for key in wanted:
            entry = self.held.get(key)
            if entry is None:
                out.append(LeaseRecord(key))
            else:
                owner, lease = entry
                out.append(LeaseRecord(key, lease.token, (Holder(owner, lease.mode, lease.token),)))
        return out

    async def transfer(
        self, source: LeaseOwner, destination: LeaseOwner, incarnation: str, leases: Sequence[Lease]
    ) -> tuple[Lease, ...]:
        raise AssertionError("not used by these tests")

    async def hosts(self) -> list[HostView]:
        return []


class FakeStore:
    """A domain store in memory; ``stall`` makes every save wait on it."""

    def __init__(self) -> None:
        self.saved: dict[str, DomainState] = {}
        self.stall: anyio.Event | None = None

    async def save_domain(self, state: DomainState) -> None:
        if self.stall is not None:
            await self.stall.wait()
        self.saved[state.identity.uuid] = state

    async def delete_domain(self, uuid: str) -> None:
        self.saved.pop(uuid, None)


class FakeFences:
    """Remembers every publication: the board's view is the last one per domain."""

    def __init__(self) -> None:
        self.log: list[tuple[str, FenceTarget | None]] = []

    def publish(self, uuid: str, target: FenceTarget | None) -> None:
        self.log.append((uuid, target))

    def current(self, uuid: str) -> FenceTarget | None:
        found = [target for u, target in self.log if u == uuid]
        return found[-1] if found else None

    def unfenceable(self, uuid: str) -> bool:
        return False


@attrs.define
class FakeHandle:
    """A migration as the domain actor sees it; ``complete`` records which handle was called."""

    migration_id: str
    serial: int
    finished: bool = False
    offered: LockState | None = None
    completes: list[bool] = attrs.Factory(list)

    async def complete(self, *, commit: bool) -> CallResult:
        self.completes.append(commit)
        return CallResult.nothing_to_cancel()


class FakeMigrations:
    """Migrations that start handles without any peer; ``resolving`` runs during resolve_peer."""

    def __init__(self) -> None:
        self.started: list[FakeHandle] = []
        self.incoming: FakeHandle | None = None
        self.resolving: Any = None
        self._serials = itertools.count(1)

    def require_peer_service(self) -> None:
        return None

    async def resolve_peer(self, uri: str) -> PeerHost:
        if self.resolving is not None:
            self.resolving()
        return PeerHost("peer", "key", uri)

    async def start_outgoing(
        self, identity: DomainIdentity, lock_state: LockState, peer: PeerHost
    ) -> tuple[MigrationHandle, CallResult]:
        handle = FakeHandle(f"out-{len(self.started)}", next(self._serials))
        self.started.append(handle)
        return handle, CallResult()

    def incoming_for(self, uuid: str, *, finished: bool = False) -> MigrationHandle | None:
        if self.incoming is None or (self.incoming.finished and not finished):
            return None
        return self.incoming

    def new_serial(self) -> int:
        return next(self._serials)


@attrs.define
class FakeHost:
    leases: FakeLeases = attrs.Factory(FakeLeases)
    store: FakeStore = attrs.Factory(FakeStore)
    fences: FakeFences = attrs.Factory(FakeFences)
    migrations: FakeMigrations = attrs.Factory(FakeMigrations)
    events: list[HostEvent] = attrs.Factory(list)
    stopped: list[str] = attrs.Factory(list)
    released: list[str] = attrs.Factory(list)
    io_timeout: float = 5.0
    locking: LockingConfig = attrs.Factory(LockingConfig)

    def services(self) -> DomainServices:
        return DomainServices(
            leases=self.leases,
            store=self.store,
            fences=self.fences,
            migrations=self.migrations,
            emit=self.events.append,
            locking=self.locking,
            io_timeout=self.io_timeout,
            host_name=HOST,
            owner_for=owner_for,
            stopped=lambda uuid, actor: self.stopped.append(uuid),
            release_guest=self.released.append,
        )


@asynccontextmanager
async def running_domain(
    host: FakeHost, identity: DomainIdentity, state: DomainState | None = None
) -> AsyncIterator[tuple[ActorRef[Any], DomainActor]]:
    """A DomainActor on its own task, against ``host``'s fakes; stopped when the block ends."""
    actor = DomainActor(host.services(), identity, state)
    ref, mailbox = open_mailbox(actor.name)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_actor, actor, ref, mailbox)
        yield ref, actor
        tg.cancel_scope.cancel()


class FakePeerClient:
    """Answers each request frame with ``answer(request)`` (encoded), or never when it returns None."""

    def __init__(self, answer: Any) -> None:
        self._answer = answer
        self.requests: list[Any] = []

    async def request(self, frame: bytes) -> bytes:
        from actorlock.transport import codec

        message = codec.decode(frame)
        self.requests.append(message)
        reply = self._answer(message)
        if reply is None:
            await anyio.sleep_forever()
        return codec.encode(reply)
