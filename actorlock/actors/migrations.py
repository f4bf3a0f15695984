"""This host's migrations: the outgoing ones its domains start, the incoming ones peers start.

The registry builds each migration's sans-I/O machine (host identity,
incarnation, lockspace, protocol timing: nothing a domain actor assembles),
runs its :class:`MigrationDriver` in the host's task group, and is the
driver's host (:class:`~actorlock.actors.ports.MigrationHost`).
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import TYPE_CHECKING

from anyio.abc import TaskGroup

from ..config import PeerConfig
from ..errors import LockspaceLostError, NotSupportedError, PeerRefusedError
from ..model import DomainIdentity, Lease, LeaseOwner, LeaseRecord, LockState, MigrationRole
from ..protocol import (
    Call,
    Effect,
    MigrationDestination,
    MigrationSource,
    Outcome,
    Prepare,
    PrepareReply,
    Timing,
)
from .call_result import CallResult
from .lifeline import Membership
from .messages import MigrationSettled
from .migration import Confirm, Machine, MigrationDriver
from .peer_directory import PeerDirectory
from .peer_limits import admit_incoming
from .ports import HostLeases, PeerHost

if TYPE_CHECKING:
    from ..transport.zmq import PeerClient

__all__ = ["MigrationRegistry"]

Connect = Callable[[str, str], AbstractAsyncContextManager["PeerClient"]]
Settle = Callable[[str, MigrationSettled], Awaitable[None]]


class MigrationRegistry:
    """Every migration of this host, by id; lingering ones stay to answer late calls."""

    def __init__(
        self,
        peer: PeerConfig,
        membership: Membership,
        leases: HostLeases,
        task_group: TaskGroup,
        *,
        settle: Settle,
        connect: Connect,
        peers: PeerDirectory,
        io_timeout: float,
    ) -> None:
        self._peer = peer
        self._membership = membership
        self._leases = leases
        self._tg = task_group
        self._settle = settle
        self._connect = connect
        self._peers = peers
        self._io_timeout = io_timeout
        self._migrations: dict[str, MigrationDriver] = {}

    def get(self, migration_id: str) -> MigrationDriver | None:
        return self._migrations.get(migration_id)

    # -- for domain actors (ports.Migrations) -------------------------------------

    def require_peer_service(self) -> None:
        if not self._membership.peer_endpoint:
            raise NotSupportedError(
                f"host {self._membership.identity.name} has no peer endpoint configured ([peer] endpoint): "
                "migration needs one on both hosts"
            )
        if not self._leases.capabilities.migration:
            raise NotSupportedError(f"the {self._leases.backend_kind} backend does not support migration")

    async def resolve_peer(self, uri: str) -> PeerHost:
        """The live host advertising peer endpoint ``uri`` in our lockspace, if we may migrate to it.

        Answered from the peer directory (host records read once per
        renewal, again on a miss): no listing of the hosts folder per
        migration. A stale answer is caught later: the destination's reply
        names its incarnation, which the driver confirms before any transfer.
        """
        self.require_peer_service()
        me = self._membership
        record = await self._peers.at_endpoint(uri)
        if record is None:
            raise PeerRefusedError(
                f"no live host in lockspace {me.lockspace_id} advertises peer endpoint {uri}: "
                "it is down, or uses another lockspace or backend"
            )
        if record.id == me.identity.id:
            raise PeerRefusedError(f"{uri} is this host ({me.identity.name}): nothing to migrate to")
        if not self._peer.plaintext and record.public_key not in self._peer.allowed_keys:
            raise PeerRefusedError(
                f"host {record.name} at {uri} has public key {record.public_key!r}, "
                "which is not in [peer] allowed_keys"
            )
        return PeerHost(record.name, record.public_key, uri)

    async def start_outgoing(
        self, identity: DomainIdentity, lock_state: LockState, peer: PeerHost
    ) -> tuple[MigrationDriver, CallResult]:
        me = self._membership
        machine = MigrationSource(
            migration_id=uuidlib.uuid4().hex,
            local=me.identity,
            peer=peer.name,
            domain=identity,
            lockspace_kind=self._leases.backend_kind,
            lockspace_id=me.lockspace_id,
            lock_state=lock_state,
            timing=self._timing(),
        )
        driver = self._driver(
            machine, peer.endpoint, peer.public_key, identity.uuid, confirm=partial(self._confirm, peer.name)
        )
        await self._start(driver)
        deadline = self._peer.migration_timeout

        def prepare(m: Machine, now: float) -> list[Effect]:
            assert isinstance(m, MigrationSource)
            return m.start(now=now, deadline_at=now + deadline)

        return driver, await driver.call(Call.PREPARE, prepare)

    def incoming_for(self, uuid: str, *, finished: bool = False) -> MigrationDriver | None:
        """The newest incoming migration of domain ``uuid`` still running (or, with
        ``finished``, still lingering to answer with its outcome)."""
        found = [
            d
            for d in self._migrations.values()
            if d.role is MigrationRole.DESTINATION
            and d.domain_uuid == uuid
            and (finished or not d.machine.finished)
        ]
        return found[-1] if found else None

    def incoming(self) -> list[str]:
        """The ids of every incoming migration whose driver still runs (lingering included)."""
        return [d.migration_id for d in self._migrations.values() if d.role is MigrationRole.DESTINATION]

    # -- for the peer service -----------------------------------------------------

    async def start_incoming(self, message: Prepare, peer_key: str) -> MigrationDriver:
        """The driver for a PREPARE, started unless the caps on pending migrations refuse it."""
        me = self._membership
        if not self._leases.live:
            # Our lease may have run out, so others may judge this incarnation dead (and a new
            # one may have joined): a PREPARE reply naming it must never lead to a transfer.
            raise LockspaceLostError(f"host {me.identity.name} has no valid lockspace membership")
        record = await self._peers.lookup(message.sender)
        peer_endpoint = record.peer_endpoint if record is not None else ""
        existing = self._migrations.get(message.migration_id)
        if existing is not None:
            return existing  # a retransmission that overtook the first PREPARE's setup
        # No await from this check until _start registers the driver, so that
        # concurrent PREPAREs cannot all pass under the caps.
        admit_incoming(message, self._migrations.values(), self._peer)
        machine = MigrationDestination(
            migration_id=message.migration_id,
            local=me.identity,
            incarnation=me.incarnation,
            lockspace_kind=self._leases.backend_kind,
            lockspace_id=me.lockspace_id,
            timing=self._timing(),
        )
        driver = self._driver(machine, peer_endpoint, peer_key, message.domain.uuid, peer_name=message.sender)
        await self._start(driver)
        return driver

    # -- for drivers (ports.MigrationHost) ------------------------------------------

    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]:
        return await self._leases.records(keys)

    async def transfer(
        self,
        source: LeaseOwner,
        destination: LeaseOwner,
        destination_incarnation: str,
        leases: Sequence[Lease],
    ) -> tuple[Lease, ...]:
        return await self._leases.transfer(source, destination, destination_incarnation, leases)

    def peer_connect(self, endpoint: str, server_key: str) -> AbstractAsyncContextManager[PeerClient]:
        return self._connect(endpoint, server_key)

    async def domain_settled(self, uuid: str, settled: MigrationSettled) -> None:
        if settled.role is MigrationRole.SOURCE and settled.outcome is not Outcome.COMMITTED:
            # Perhaps nobody answered at the cached endpoint: the next migration reads again.
            self._peers.invalidate()
        await self._settle(uuid, settled)

    def migration_ended(self, driver: MigrationDriver) -> None:
        if self._migrations.get(driver.migration_id) is driver:
            del self._migrations[driver.migration_id]

    # -- internals ------------------------------------------------------------------

    def _timing(self) -> Timing:
        peer = self._peer
        return Timing(
            retry_interval=peer.retry_interval,
            prepare_timeout=peer.prepare_timeout,
            transfer_margin=peer.transfer_margin,
            # An incoming migration nobody confirms ends by then, whatever PREPARE claims.
            max_pending=peer.prepare_timeout + peer.migration_timeout,
        )

    async def _confirm(self, name: str, reply: PrepareReply) -> None:
        """Refuse a PREPARE reply from an incarnation of ``name`` the lockspace does not show alive."""
        if not await self._peers.confirm(name, reply.host_id, reply.incarnation):
            raise PeerRefusedError(
                f"host {name} answered as host {reply.host_id}, incarnation {reply.incarnation}, "
                "which the lockspace does not show alive"
            )

    def _driver(
        self,
        machine: Machine,
        endpoint: str,
        key: str,
        uuid: str,
        *,
        peer_name: str = "",
        confirm: Confirm | None = None,
    ) -> MigrationDriver:
        return MigrationDriver(
            self,
            machine,
            peer_endpoint=endpoint,
            peer_key=key,
            domain_uuid=uuid,
            request_timeout=self._peer.request_timeout,
            io_timeout=self._io_timeout,
            peer_name=peer_name,
            confirm=confirm,
        )

    async def _start(self, driver: MigrationDriver) -> None:
        """Run ``driver`` in this host's task group until its migration ends."""
        self._migrations[driver.migration_id] = driver
        try:
            await self._tg.start(driver.run, name=f"migration {driver.migration_id}")
        except BaseException:
            self._migrations.pop(driver.migration_id, None)
            raise
