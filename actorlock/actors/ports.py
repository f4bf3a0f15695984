"""The narrow interfaces the host hands its children: what a domain actor and a driver may use.

Dependencies point one way: the host builds every part and implements these
protocols; a :class:`~actorlock.actors.domain.DomainActor` and a
:class:`~actorlock.actors.migration.MigrationDriver` see only them, so each
can be built in a test against fakes, and neither imports the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ..backends.base import BackendCapabilities
from ..config import LockingConfig
from ..events import HostEvent
from ..model import DomainIdentity, Lease, LeaseOwner, LeaseRecord, LeaseRequest, LockState
from ..statestore import DomainState
from .call_result import CallResult
from .fencing import FenceTarget

if TYPE_CHECKING:
    from ..transport.zmq import PeerClient
    from .messages import MigrationSettled

__all__ = [
    "DomainServices",
    "DomainStore",
    "EmitEvent",
    "FenceTargets",
    "HostLeases",
    "LeaseAccess",
    "MigrationHandle",
    "MigrationHost",
    "Migrations",
    "PeerHost",
]

EmitEvent = Callable[[HostEvent], None]  # to the host's event sink: history, tests, metrics


class LeaseAccess(Protocol):
    """Lease I/O through the host, which refuses it once its lockspace is lost."""

    @property
    def live(self) -> bool: ...
    @property
    def losses(self) -> int: ...
    @property
    def capabilities(self) -> BackendCapabilities: ...
    @property
    def backend_kind(self) -> str: ...
    async def acquire(self, owner: LeaseOwner, requests: Sequence[LeaseRequest]) -> tuple[Lease, ...]: ...
    async def release(self, owner: LeaseOwner, keys: Sequence[str]) -> None: ...
    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]: ...


class HostLeases(LeaseAccess, Protocol):
    """Lease access plus what migrations need: the commit's transfer (peers: the peer directory)."""

    async def transfer(
        self,
        source: LeaseOwner,
        destination: LeaseOwner,
        destination_incarnation: str,
        leases: Sequence[Lease],
    ) -> tuple[Lease, ...]: ...


class DomainStore(Protocol):
    """Where a domain's state survives a coordinator restart."""

    async def save_domain(self, state: DomainState) -> None: ...
    async def delete_domain(self, uuid: str) -> None: ...


class FenceTargets(Protocol):
    """What a loss must fence, published by each domain actor (the fence board)."""

    def publish(self, uuid: str, target: FenceTarget | None) -> None: ...
    def unfenceable(self, uuid: str) -> bool: ...


@attrs.frozen
class PeerHost:
    """A live host of our lockspace that we may migrate to."""

    name: str
    public_key: str
    endpoint: str


class MigrationHandle(Protocol):
    """One running (or lingering) migration, as a domain actor sees it."""

    @property
    def migration_id(self) -> str: ...
    @property
    def serial(self) -> int: ...  # a later migration of this host has a larger one
    @property
    def finished(self) -> bool: ...
    @property
    def offered(self) -> LockState | None: ...  # what the source offered (destination side)
    async def complete(self, *, commit: bool) -> CallResult: ...


class Migrations(Protocol):
    """The host's migrations, as a domain actor may use them."""

    def require_peer_service(self) -> None: ...
    async def resolve_peer(self, uri: str) -> PeerHost: ...
    async def start_outgoing(
        self, identity: DomainIdentity, lock_state: LockState, peer: PeerHost
    ) -> tuple[MigrationHandle, CallResult]: ...
    def incoming_for(self, uuid: str, *, finished: bool = False) -> MigrationHandle | None: ...


class MigrationHost(Protocol):
    """What a migration driver needs from its host."""

    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]: ...
    async def transfer(
        self,
        source: LeaseOwner,
        destination: LeaseOwner,
        destination_incarnation: str,
        leases: Sequence[Lease],
    ) -> tuple[Lease, ...]: ...
    def peer_connect(self, endpoint: str, server_key: str) -> AbstractAsyncContextManager[PeerClient]: ...
    async def domain_settled(self, uuid: str, settled: MigrationSettled) -> None: ...
    def migration_ended(self, driver: Any) -> None: ...


@attrs.frozen
class DomainServices:
    """Everything a domain actor may use, built once by the host and shared by its domains."""

    leases: LeaseAccess
    store: DomainStore
    fences: FenceTargets
    migrations: Migrations
    emit: EmitEvent
    locking: LockingConfig
    io_timeout: float
    host_name: str
    owner_for: Callable[[DomainIdentity], LeaseOwner]
    stopped: Callable[[str, object], None]  # (uuid, actor): the actor's task ended
    release_guest: Callable[[str], None]  # (uuid): its leases moved away, its supervisor's deadline ends
    # The lease backend / state store completes every call without suspending
    # (in-process memory, no fault injection): no cancellation and no deadline
    # can land inside one, so the actor spends no cancel scope on it.
    immediate_leases: bool = False
    immediate_store: bool = False
