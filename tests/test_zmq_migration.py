"""A migration end to end: the real drivers, machines, codec and CURVE zmq between two small hosts.

Each ``ZmqHost`` is the host side of :class:`MigrationDriver` in miniature:
it implements the driver's port (records and transfer over one shared
in-memory lockspace, connections with its own CURVE keys) and serves peers'
requests the way the peer service does, routing them to the migration's
driver. No host coordinator, no domain actor: what runs is the production
driver over real sockets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import anyio.abc
import attrs
import pytest

from actorlock.actors.call_result import CallResult
from actorlock.actors.messages import MigrationSettled
from actorlock.actors.migration import Machine, MigrationDriver
from actorlock.backends.rules import plan_transfer
from actorlock.errors import PeerUnreachableError
from actorlock.model import (
    DomainIdentity,
    Holder,
    HostIdentity,
    Lease,
    LeaseMode,
    LeaseOwner,
    LeaseRecord,
    LockState,
    MigrationRole,
)
from actorlock.protocol import (
    Call,
    CompleteCaller,
    Effect,
    MigrationDestination,
    MigrationRefusedError,
    MigrationSource,
    Outcome,
    Prepare,
    Request,
    Timing,
    lease_owner,
)
from actorlock.transport import codec
from actorlock.transport.zmq import KeyPair, PeerClient, PeerServer, connect, generate_keypair

pytestmark = pytest.mark.anyio

DOMAIN = DomainIdentity("9d1c-vm", "vm9")
TIMING = Timing(retry_interval=0.05, prepare_timeout=1.0, transfer_margin=0.5)
KEYS = ("disk:/img/a", "disk:/img/b")
SOURCE_INCARNATION = "i"


@attrs.define
class SharedLockspace:
    records: dict[str, LeaseRecord]


class ZmqHost:
    """The driver's host (ports.MigrationHost) plus a peer service that routes to drivers."""

    def __init__(self, identity: HostIdentity, lockspace: SharedLockspace, tg: anyio.abc.TaskGroup) -> None:
        self.identity = identity
        self.incarnation = "inc-" + identity.name
        self.lockspace = lockspace
        self.tg = tg
        self.keys = KeyPair(*generate_keypair())
        self.peer_key = ""
        self.peer_endpoint = ""  # where the peer's own service listens (the lockspace says, in a real host)
        self.drivers: dict[str, MigrationDriver] = {}
        self.settled: list[MigrationSettled] = []

    # -- ports.MigrationHost --------------------------------------------------------

    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]:
        wanted = sorted(self.lockspace.records) if keys is None else keys
        return [self.lockspace.records.get(key, LeaseRecord(key)) for key in wanted]

    async def transfer(
        self,
        source: LeaseOwner,
        destination: LeaseOwner,
        destination_incarnation: str,
        leases: Sequence[Lease],
    ) -> tuple[Lease, ...]:
        updated, moved = plan_transfer(
            self.lockspace.records, source, SOURCE_INCARNATION, destination, destination_incarnation, leases
        )
        self.lockspace.records.update(updated)
        return moved

    def peer_connect(self, endpoint: str, server_key: str) -> AbstractAsyncContextManager[PeerClient]:
        return connect(endpoint, server_key=server_key, keys=self.keys)

    async def domain_settled(self, uuid: str, settled: MigrationSettled) -> None:
        self.settled.append(settled)

    def migration_ended(self, driver: object) -> None:
        assert isinstance(driver, MigrationDriver)
        if self.drivers.get(driver.migration_id) is driver:
            del self.drivers[driver.migration_id]

    # -- the peer service in miniature ------------------------------------------------

    async def handle(self, identity: bytes, user_id: str | None, frame: bytes) -> bytes | None:
        assert user_id == self.peer_key, "only the authenticated peer gets here"
        message = codec.decode(frame)
        assert isinstance(message, Request)
        driver = self.drivers.get(message.migration_id)
        if driver is None and isinstance(message, Prepare):
            machine = MigrationDestination(
                migration_id=message.migration_id,
                local=self.identity,
                incarnation=self.incarnation,
                lockspace_kind="memory",
                lockspace_id="shared",
                timing=TIMING,
            )
            driver = await self.start(machine, peer_endpoint=self.peer_endpoint, peer_key=self.peer_key)
        assert driver is not None
        with anyio.move_on_after(message.deadline_remaining or 1.0):
            reply = await driver.request(message)
            return codec.encode(reply) if reply is not None else None
        return None

    async def start(self, machine: Machine, *, peer_endpoint: str, peer_key: str) -> MigrationDriver:
        driver = MigrationDriver(
            self,
            machine,
            peer_endpoint=peer_endpoint,
            peer_key=peer_key,
            domain_uuid=DOMAIN.uuid,
            request_timeout=0.3,
            io_timeout=1.0,
        )
        self.drivers[driver.migration_id] = driver
        await self.tg.start(driver.run)
        return driver


@attrs.frozen
class Pair:
    src: ZmqHost
    dst: ZmqHost
    lockspace: SharedLockspace
    dst_endpoint: str


@asynccontextmanager
async def two_hosts(*, dest_up: bool = True) -> AsyncIterator[Pair]:
    src_id, dst_id = HostIdentity("src", 1), HostIdentity("dst", 2)
    owner = lease_owner(src_id, DOMAIN)
    lockspace = SharedLockspace(
        {k: LeaseRecord(k, 3, (Holder(owner, LeaseMode.EXCLUSIVE, 3, SOURCE_INCARNATION),)) for k in KEYS}
    )
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            src, dst = ZmqHost(src_id, lockspace, tg), ZmqHost(dst_id, lockspace, tg)
            src.peer_key, dst.peer_key = dst.keys.public, src.keys.public
            dst_endpoint = "tcp://127.0.0.1:9"  # nothing listens there
            for host in (src, dst) if dest_up else (src,):
                server = PeerServer("tcp://127.0.0.1:*", keys=host.keys, allowed_clients=[host.peer_key])
                endpoint = await tg.start(server.serve, host.handle)
                if host is dst:
                    dst_endpoint = endpoint
                else:
                    dst.peer_endpoint = endpoint
            yield Pair(src, dst, lockspace, dst_endpoint)
            tg.cancel_scope.cancel()


async def prepare(pair: Pair) -> tuple[MigrationDriver, CallResult]:
    machine = MigrationSource(
        migration_id="m-42",
        local=pair.src.identity,
        peer="dst",
        domain=DOMAIN,
        lockspace_kind="memory",
        lockspace_id="shared",
        lock_state=LockState.of(Lease(k, LeaseMode.EXCLUSIVE, 3) for k in KEYS),
        timing=TIMING,
    )
    driver = await pair.src.start(machine, peer_endpoint=pair.dst_endpoint, peer_key=pair.dst.keys.public)

    def start(m: Machine, now: float) -> list[Effect]:
        assert isinstance(m, MigrationSource)
        return m.start(now=now, deadline_at=now + 5)

    return driver, await driver.call(Call.PREPARE, start)


async def test_migration_commits_over_curve() -> None:
    async with two_hosts() as pair:
        source, prepared = await prepare(pair)
        assert (await prepared.wait()).error is None
        destination = pair.dst.drivers["m-42"]
        assert destination.offered == LockState.of(Lease(k, LeaseMode.EXCLUSIVE, 3) for k in KEYS)
        answers: list[CompleteCaller] = []

        async def commit(driver: MigrationDriver) -> None:
            answers.append(await (await driver.complete(commit=True)).wait())

        async with anyio.create_task_group() as both:
            both.start_soon(commit, destination)
            both.start_soon(commit, source)
        assert [(a.outcome, a.error) for a in answers] == [(Outcome.COMMITTED, None)] * 2
        moved_to = lease_owner(pair.dst.identity, DOMAIN)
        for key in KEYS:
            (holder,) = pair.lockspace.records[key].holders
            assert (holder.owner, holder.incarnation) == (moved_to, pair.dst.incarnation)
            assert holder.token > 3, "the destination's entry has a fresh token"
        assert [(s.role, s.outcome) for s in pair.src.settled] == [(MigrationRole.SOURCE, Outcome.COMMITTED)]
        assert [(s.role, s.outcome) for s in pair.dst.settled] == [
            (MigrationRole.DESTINATION, Outcome.COMMITTED)
        ]


async def test_refusal_travels_back_as_a_coded_error() -> None:
    async with two_hosts() as pair:
        # The source re-acquired disk b since it saved its lock state: the offer is stale.
        (holder,) = pair.lockspace.records["disk:/img/b"].holders
        pair.lockspace.records["disk:/img/b"] = LeaseRecord(
            "disk:/img/b", 4, (attrs.evolve(holder, token=4),)
        )
        _source, prepared = await prepare(pair)
        with pytest.raises(MigrationRefusedError) as refused:
            await prepared.wait()
        assert refused.value.remote_code == "stale-state"
        (still,) = pair.lockspace.records["disk:/img/a"].holders
        assert still.owner == lease_owner(pair.src.identity, DOMAIN), "nothing moved"


async def test_absent_destination_fails_prepare_in_time() -> None:
    async with two_hosts(dest_up=False) as pair:
        t0 = anyio.current_time()
        _source, prepared = await prepare(pair)
        with pytest.raises(PeerUnreachableError):
            await prepared.wait()
        assert anyio.current_time() - t0 < TIMING.prepare_timeout + 0.5
