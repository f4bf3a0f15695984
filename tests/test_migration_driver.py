"""The migration driver's bookkeeping of callers and of which migration a call is about.

Two in-process hosts with plaintext peer endpoints migrate one domain:
- several callers of one call kind all hear the machine's one answer (a
  duplicate complete_migrate_in is not left waiting for the API's backstop);
- a domain that migrated out and comes back in (no shutdown in between)
  routes the destination's commit to the new incoming migration, not to the
  finished outgoing one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

import actorlock
from actorlock import Resource
from actorlock.errors import InvalidStateError

from .support import guest_process, host_config, unique

pytestmark = pytest.mark.anyio

UUID = "3b0c7a52-0000-4000-8000-0000000000d1"
DISKS = ("/d/root.img", "/d/data.img")
FAST_PEER = {"retry_interval": 0.05, "prepare_timeout": 2.0, "transfer_margin": 0.5, "migration_timeout": 5.0}
# Well below the API's backstop (migration_timeout + request_timeout + 1s): a
# caller left unanswered fails here, not after the backstop.
ANSWER_WITHIN = 4.0


def peer_config(name: str, host_id: int, space: str) -> dict[str, Any]:
    peer = {"endpoint": "tcp://127.0.0.1:*", "plaintext": True, **FAST_PEER}
    return host_config(name, host_id, lockspace=space, peer=peer)


@asynccontextmanager
async def two_hosts() -> AsyncIterator[tuple[actorlock.Host, actorlock.Host]]:
    space = unique()
    async with (
        actorlock.open_host(peer_config("a", 1, space)) as a,
        actorlock.open_host(peer_config("b", 2, space)) as b,
    ):
        yield a, b


def disks() -> list[Resource]:
    return [actorlock.disk(path) for path in DISKS]


async def tokens(host: actorlock.Host) -> dict[str, list[tuple[str, int]]]:
    """Every lease key -> [(holding host, token)]."""
    return {r.key: [(h.owner.host, h.token) for h in r.holders] for r in await host.leases()}


async def all_of(*calls: Any) -> list[BaseException | None]:
    """Run the calls concurrently; each one's exception (or None, or no answer in time), in order."""
    outcomes: list[BaseException | None] = [None] * len(calls)

    async def run(i: int) -> None:
        try:
            with anyio.fail_after(ANSWER_WITHIN):
                await calls[i]()
        except TimeoutError:
            outcomes[i] = TimeoutError(f"no answer within {ANSWER_WITHIN}s")
        except Exception as exc:
            outcomes[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(run, i)
    return outcomes


def assert_all_committed(outcomes: Sequence[BaseException | None]) -> None:
    assert list(outcomes) == [None] * len(outcomes), [repr(o) for o in outcomes]


@pytest.mark.parametrize("side", ["source", "destination"])
async def test_two_concurrent_commits_on_one_side_both_hear_the_committed_outcome(side: str) -> None:
    with guest_process() as src_guest, guest_process() as dst_guest:
        async with two_hosts() as (a, b):
            vm = a.domain(UUID, name="vm")
            await vm.start(disks(), pid=src_guest.pid)
            before = await tokens(a)
            await vm.prepare_migration(b.peer_endpoint)
            incoming = b.domain(UUID, name="vm")

            def commit_source() -> Any:
                return vm.complete_migration(commit=True)

            def commit_destination() -> Any:
                return incoming.complete_migration(commit=True, resources=disks(), pid=dst_guest.pid)

            doubled, other = (
                (commit_source, commit_destination)
                if side == "source"
                else (commit_destination, commit_source)
            )

            async def the_other_side_later() -> None:
                # Both duplicate calls reach the driver and wait there first.
                await anyio.sleep(0.3)
                await other()

            assert_all_committed(await all_of(doubled, doubled, the_other_side_later))
            assert await tokens(a) == {key: [("b", token + 1)] for key, [(_, token)] in before.items()}
            assert (await incoming.status()).phase == "running"
            assert (await vm.status()).phase == "migrated"


async def migrate(
    source: actorlock.Domain, dest: actorlock.Host, incoming: actorlock.Domain, pid: int
) -> None:
    """The usual way: the source's migrate_to block, the destination commits inside it."""
    with anyio.fail_after(ANSWER_WITHIN):
        async with anyio.create_task_group() as tg, source.migrate_to(dest.peer_endpoint):
            tg.start_soon(lambda: incoming.complete_migration(commit=True, resources=disks(), pid=pid))


# The finished outgoing driver lingers 2 * retry_interval + 1s to answer retransmissions.
@pytest.mark.parametrize("gap", [0.0, 1.5], ids=["old-driver-lingering", "old-driver-ended"])
async def test_a_domain_migrates_out_and_back_in_without_a_shutdown_between(gap: float) -> None:
    with guest_process() as first, guest_process() as second, guest_process() as third:
        async with two_hosts() as (a, b):
            on_a = a.domain(UUID, name="vm")
            on_b = b.domain(UUID, name="vm")
            await on_a.start(disks(), pid=first.pid)
            start = await tokens(a)

            await migrate(on_a, b, on_b, second.pid)
            assert (await on_a.status()).phase == "migrated"
            assert (await on_b.status()).phase == "running"

            # Back to a, whose domain actor still remembers its (finished) outgoing migration.
            await anyio.sleep(gap)
            await on_b.prepare_migration(a.peer_endpoint)
            outcomes = await all_of(
                lambda: on_a.complete_migration(commit=True, resources=disks(), pid=third.pid),
                lambda: on_b.complete_migration(commit=True),
            )
            assert_all_committed(outcomes)

            back = await tokens(a)
            assert back == {key: [("a", token + 2)] for key, [(_, token)] in start.items()}
            status = await on_a.status()
            assert status.phase == "running"
            assert status.pid == third.pid
            assert {lease.key: lease.token for lease in status.leases} == {
                key: token for key, [(_, token)] in back.items()
            }
            assert (await on_b.status()).phase == "migrated"

            # And out again: the domain on a is an ordinary running domain.
            await migrate(on_a, b, on_b, second.pid)
            assert await tokens(a) == {key: [("b", token + 3)] for key, [(_, token)] in start.items()}
            await on_b.shutdown()


async def test_a_domain_that_migrated_away_refuses_hotplug() -> None:
    with guest_process() as first, guest_process() as second:
        async with two_hosts() as (a, b):
            on_a = a.domain(UUID, name="vm")
            on_b = b.domain(UUID, name="vm")
            await on_a.start(disks(), pid=first.pid)
            await migrate(on_a, b, on_b, second.pid)
            assert (await on_a.status()).phase == "migrated"
            with pytest.raises(InvalidStateError, match="migrated"):
                await on_a.hotplug(actorlock.disk("/d/extra.img"))
            # Nothing was taken for it on the old host; the new host holds the rest.
            assert not [h for r in await a.leases() for h in r.holders if h.owner.host == "a"]


async def test_migrations_to_one_peer_share_one_connection() -> None:
    other_uuid = "3b0c7a52-0000-4000-8000-0000000000d2"
    with guest_process() as first, guest_process() as second, guest_process() as third:
        async with two_hosts() as (a, b):
            on_a, on_b = a.domain(UUID, name="vm"), b.domain(UUID, name="vm")
            await on_a.start(disks(), pid=first.pid)
            await migrate(on_a, b, on_b, second.pid)
            other_a = a.domain(other_uuid, name="vm2")
            other_b = b.domain(other_uuid, name="vm2")
            await other_a.start([actorlock.disk("/d/other.img")], pid=third.pid)
            with anyio.fail_after(ANSWER_WITHIN):
                async with anyio.create_task_group() as tg, other_a.migrate_to(b.peer_endpoint):
                    tg.start_soon(
                        lambda: other_b.complete_migration(
                            commit=True, resources=[actorlock.disk("/d/other.img")], pid=third.pid
                        )
                    )
            assert (await other_b.status()).phase == "running"
            # Two migrations a -> b, one connection a -> b; b opened one back to a for its commits.
            assert a._coordinator.connections.opened == 1
            assert b._coordinator.connections.opened == 1
