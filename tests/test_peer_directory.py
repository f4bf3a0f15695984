"""The peer directory: host records cached per renewal for peers' requests and outgoing migrations (issue 11).

The unit tests drive the directory against a fake lockspace whose host
records the test rewrites; the last tests run real hosts (memory lockspace,
ZeroMQ on loopback) where a peer restarts while the source's cache still
names its old incarnation.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import actorlock
from actorlock.actors.peer_directory import PeerDirectory
from actorlock.errors import BackendTimeoutError, PeerError, PeerRefusedError
from actorlock.model import HostRecord, HostState, HostView
from actorlock.testing import host_faults

from .support import guest_process, unique
from .test_migration import DISKS, UUID, host_in_task, peer_config

pytestmark = pytest.mark.anyio

B_OLD = HostRecord("b", 2, "b-1", 7, peer_endpoint="tcp://10.0.0.2:7470", public_key="key-1")
B_NEW = HostRecord("b", 2, "b-2", 1, peer_endpoint="tcp://10.0.0.2:7471", public_key="key-2")
A = HostRecord("a", 1, "a-1", 3, peer_endpoint="tcp://10.0.0.1:7470", public_key="key-a")


class FakeLockspace:
    """Host records the test rewrites, a renewal count it advances, and how often they were read."""

    def __init__(self, *records: HostRecord) -> None:
        self.records = list(records)
        self.dead: set[str] = set()  # incarnations judged dead by this observer
        self.renewals = 0
        self.reads = 0
        self.stall = False

    async def read(self) -> list[HostView]:
        self.reads += 1
        if self.stall:
            await anyio.sleep_forever()
        return [HostView(r, r.incarnation not in self.dead, 0.0) for r in self.records]

    def directory(self, io_timeout: float = 5.0) -> PeerDirectory:
        return PeerDirectory(self.read, lambda: self.renewals, io_timeout=io_timeout)


async def test_outgoing_lookups_read_the_hosts_once_per_renewal() -> None:
    space = FakeLockspace(A, B_OLD)
    peers = space.directory()
    for _ in range(50):
        assert await peers.at_endpoint(B_OLD.peer_endpoint) == B_OLD
    assert space.reads == 1
    space.renewals += 1
    assert await peers.at_endpoint(B_OLD.peer_endpoint) == B_OLD
    assert space.reads == 2


async def test_a_peer_that_restarted_on_a_new_endpoint_and_key_is_found_again() -> None:
    space = FakeLockspace(A, B_OLD)
    peers = space.directory()
    assert await peers.at_endpoint(B_OLD.peer_endpoint) == B_OLD
    space.records = [A, B_NEW]  # same renewal period: the cache still shows the old record
    found = await peers.at_endpoint(B_NEW.peer_endpoint)
    assert found == B_NEW
    assert (found.public_key, found.incarnation) == ("key-2", "b-2")
    assert space.reads == 2
    # The old endpoint is gone from the records read again.
    assert await peers.at_endpoint(B_OLD.peer_endpoint) is None


async def test_an_endpoint_nobody_advertises_is_not_found_after_one_more_read_each_time() -> None:
    space = FakeLockspace(A, B_OLD)
    peers = space.directory()
    assert await peers.at_endpoint("tcp://10.0.0.9:7470") is None
    assert space.reads == 1  # the first read was already fresh: no second one
    assert await peers.at_endpoint("tcp://10.0.0.9:7470") is None
    assert space.reads == 2  # a local caller's miss reads again: a host may have just joined


async def test_a_host_judged_dead_or_gone_is_not_a_destination() -> None:
    space = FakeLockspace(A, B_OLD)
    space.dead.add("b-1")
    assert await space.directory().at_endpoint(B_OLD.peer_endpoint) is None
    space.dead.clear()
    space.records = [A, HostRecord("b", 2, "b-1", 8, HostState.LEFT, peer_endpoint=B_OLD.peer_endpoint)]
    assert await space.directory().at_endpoint(B_OLD.peer_endpoint) is None


async def test_the_cached_incarnation_is_confirmed_without_a_read() -> None:
    space = FakeLockspace(A, B_OLD)
    peers = space.directory()
    await peers.at_endpoint(B_OLD.peer_endpoint)
    assert await peers.confirm("b", 2, "b-1")
    assert space.reads == 1


async def test_a_peer_restarted_on_the_same_endpoint_is_confirmed_by_reading_again() -> None:
    space = FakeLockspace(A, B_OLD)
    peers = space.directory()
    await peers.at_endpoint(B_OLD.peer_endpoint)
    space.records = [A, HostRecord("b", 2, "b-2", 1, peer_endpoint=B_OLD.peer_endpoint, public_key="key-1")]
    assert await peers.confirm("b", 2, "b-2")
    assert space.reads == 2


async def test_a_dead_incarnation_is_refused_and_costs_one_read_per_renewal() -> None:
    space = FakeLockspace(A, B_NEW)
    peers = space.directory()
    await peers.at_endpoint(B_NEW.peer_endpoint)
    for _ in range(20):  # a peer answering from b-1 on every retry of PREPARE
        assert not await peers.confirm("b", 2, "b-1")
    assert space.reads == 2
    assert not await peers.confirm("b", 3, "b-2")  # right incarnation, wrong host id
    assert not await peers.confirm("c", 2, "b-2")  # right record, another name


async def test_an_invalidated_directory_reads_again() -> None:
    space = FakeLockspace(A, B_OLD)
    peers = space.directory()
    await peers.at_endpoint(B_OLD.peer_endpoint)
    peers.invalidate()
    space.records = [A]
    assert await peers.at_endpoint(B_OLD.peer_endpoint) is None
    assert space.reads == 2


async def test_a_read_that_never_returns_fails_after_io_timeout_and_frees_the_directory() -> None:
    space = FakeLockspace(A, B_OLD)
    peers = space.directory(io_timeout=0.05)
    space.stall = True
    with anyio.fail_after(5):
        with pytest.raises(BackendTimeoutError, match="io_timeout"):
            await peers.at_endpoint(B_OLD.peer_endpoint)
        with pytest.raises(BackendTimeoutError):
            await peers.lookup("b")
        space.stall = False
        assert await peers.at_endpoint(B_OLD.peer_endpoint) == B_OLD


# -- real hosts ---------------------------------------------------------------------


def pin_renewals(host: actorlock.Host) -> PeerDirectory:
    """The host's peer directory, kept from re-reading at renewals: its entries stay as cached."""
    peers = host._coordinator.peers
    pinned = host._coordinator.lifeline.renewals
    peers._generation = lambda: pinned
    return peers


def holders(records: list[Any]) -> set[tuple[str, str]]:
    return {(h.owner.host, h.incarnation) for r in records for h in r.holders}


async def migrate(source: actorlock.Domain, target: actorlock.Host, endpoint: str, pid: int) -> None:
    await source.prepare_migration(endpoint)
    incoming = target.domain(UUID, name="vm")
    disks = [actorlock.disk(p) for p in DISKS]
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: incoming.complete_migration(commit=True, resources=disks, pid=pid))
        tg.start_soon(lambda: source.complete_migration(commit=True))


async def test_a_restarted_peer_on_a_new_endpoint_is_found_by_the_next_migration() -> None:
    space = unique()
    with guest_process() as guest, anyio.fail_after(30):
        async with anyio.create_task_group() as tg, host_in_task(tg, peer_config("a", 1, space)) as a:
            vm = a.domain(UUID, name="vm")
            await vm.start([actorlock.disk(p) for p in DISKS], pid=guest.pid)
            async with host_in_task(tg, peer_config("b", 2, space)) as b1:
                old = b1.peer_endpoint
                peers = pin_renewals(a)
                await a._coordinator.migrations.resolve_peer(old)
            async with host_in_task(tg, peer_config("b", 2, space)) as b2:
                assert b2.peer_endpoint != old
                reads = peers.reads
                await migrate(vm, b2, b2.peer_endpoint, guest.pid)
                assert peers.reads == reads + 1  # the miss on the new endpoint
                assert holders(await a.leases()) == {("b", b2.incarnation)}


async def test_an_unknown_peer_is_a_clear_error_and_nothing_changes() -> None:
    space = unique()
    unknown = "tcp://127.0.0.1:9"
    with guest_process() as guest, anyio.fail_after(30):
        async with (
            anyio.create_task_group() as tg,
            host_in_task(tg, peer_config("a", 1, space)) as a,
            host_in_task(tg, peer_config("b", 2, space)) as b,
        ):
            vm = a.domain(UUID, name="vm")
            await vm.start([actorlock.disk(p) for p in DISKS], pid=guest.pid)
            before = holders(await a.leases())
            peers = pin_renewals(a)
            await a._coordinator.migrations.resolve_peer(b.peer_endpoint)  # the cache knows b
            reads = peers.reads
            with pytest.raises(PeerRefusedError) as refused:
                await vm.prepare_migration(unknown)
            assert unknown in str(refused.value)
            assert a.lockspace_id in str(refused.value)
            assert peers.reads == reads + 1, "a miss reads the records again before refusing"
            assert holders(await a.leases()) == before
            assert (await vm.status()).phase == "running"


async def test_a_stale_entry_cannot_route_a_migration_to_a_dead_incarnation() -> None:
    """b1 stops renewing but still answers on its endpoint; b2 takes over host 2 elsewhere.

    The source's cache still sends it to b1, which refuses while it is not
    live; the leases never name b1's incarnation, and the next migration
    finds b2.
    """
    space = unique()
    with guest_process() as guest, anyio.fail_after(30):
        async with (
            anyio.create_task_group() as tg,
            host_in_task(tg, peer_config("a", 1, space)) as a,
            host_in_task(tg, peer_config("b", 2, space)) as b1,
        ):
            vm = a.domain(UUID, name="vm")
            await vm.start([actorlock.disk(p) for p in DISKS], pid=guest.pid)
            before = holders(await a.leases())
            peers = pin_renewals(a)
            await a._coordinator.migrations.resolve_peer(b1.peer_endpoint)
            host_faults.freeze(b1)
            async with host_in_task(tg, peer_config("b", 2, space)) as b2:  # joins once b1 is dead
                assert b2.incarnation != b1.incarnation
                with pytest.raises(PeerError):
                    await vm.prepare_migration(b1.peer_endpoint)
                assert holders(await a.leases()) == before
                assert (await vm.status()).phase == "running"
                # The failed migration dropped the cache: the old endpoint is refused at once.
                with pytest.raises(PeerRefusedError, match="advertises peer endpoint"):
                    await vm.prepare_migration(b1.peer_endpoint)
                await migrate(vm, b2, b2.peer_endpoint, guest.pid)
                assert holders(await a.leases()) == {("b", b2.incarnation)}
                assert peers.reads >= 2
            host_faults.thaw(b1)
