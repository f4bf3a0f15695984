"""Simulated hosts on a real 3-member etcd cluster, under real process and network faults.

Each test runs real host coordinators (the simulator's :class:`Cluster`) in
real time against etcd, injects one fault with real processes (SIGKILL,
SIGSTOP, a restart, a cut TCP path), and hands the history to the checker:
no guest may write with a token once another took its disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from actorlock.errors import ActorlockError, ResourceBusyError
from actorlock.testing.cluster import Cluster, GuestState, open_cluster
from actorlock.testing.history import GuestStarted, GuestStopped, LockspaceRegained, StopReason

from .etcd_cluster import EtcdCluster, fault_cluster_fixture  # noqa: F401  (a fixture)
from .etcd_support import new_prefix
from .tcp_gate import gates

pytestmark = pytest.mark.anyio

# Wide enough for an etcd election (500-1000 ms here) inside lease_timeout,
# and host_dead >= (lease_timeout + fence_timeout + scheduling_delay) * 1.01.
TIMING = {
    "renew_interval": 0.1,
    "lease_timeout": 2.0,
    "fence_timeout": 0.3,
    "host_dead": 3.0,
    "io_timeout": 1.0,
}
REQUEST_TIMEOUT = 0.25
# How much later than host_dead etcd may free a dead host's lease: the TTL is
# host_dead rounded up to whole seconds, and the leader looks for expired
# leases every 500 ms, then commits the revocation through raft.
EXPIRY_LAG = 1.0
WAIT = 30.0
HOSTS = ["h1", "h2", "h3"]


def etcd_table(endpoints: Sequence[str], prefix: str) -> dict[str, Any]:
    return {"endpoints": list(endpoints), "prefix": prefix, "request_timeout": REQUEST_TIMEOUT}


async def take_over(cluster: Cluster, host: str, path: str) -> float:
    """Probe ``path`` from ``host`` until it is ours; the time it was."""
    with anyio.fail_after(WAIT):
        for _attempt in range(int(WAIT / 0.05)):
            if await cluster.probe(host, path):
                return cluster.now()
            await anyio.sleep(0.05)
    raise AssertionError(f"{host} never got {path}")


async def restore(etcd: EtcdCluster) -> None:
    """Bring every member back (resumed, restarted) and wait until each serves."""

    def bring_back() -> None:
        for i, proc in enumerate(etcd.procs):
            if proc is None:
                etcd.start_member(i)
            else:
                etcd.resume(i)
        etcd.wait_healthy()

    await anyio.to_thread.run_sync(bring_back)


async def test_killing_the_leader_during_a_burst_never_grants_a_disk_twice(
    fault_cluster: EtcdCluster,
) -> None:
    etcd = fault_cluster
    table = etcd_table(etcd.endpoints, new_prefix())
    started: list[str] = []
    try:
        async with open_cluster(HOSTS, backend="etcd", etcd=table, timing=TIMING) as cluster:

            async def start(index: int, wave: str) -> None:
                disks = [f"/d/{index % 4}.img", f"/d/{(index + 1) % 4}.img"]
                try:
                    await cluster.start_guest(HOSTS[index % 3], f"{wave}-{index}", disks)
                except ActorlockError:
                    return  # busy, or no quorum in time: refused, never granted twice
                started.append(f"{wave}-{index}")

            leader = await anyio.to_thread.run_sync(etcd.leader)
            async with anyio.create_task_group() as tg:
                for i in range(12):
                    tg.start_soon(start, i, "before")
                await anyio.sleep(0.01)
                await anyio.to_thread.run_sync(etcd.kill, leader)
            for guest in cluster.guests():
                if guest.state is GuestState.RUNNING:
                    await cluster.stop_guest(guest.host, guest.uuid)
            # The two members left elect a leader: grants resume.
            with anyio.fail_after(WAIT):
                while not any(s.startswith("after") for s in started):
                    async with anyio.create_task_group() as tg:
                        for i in range(4):
                            tg.start_soon(start, i, f"after{len(started)}")
                    await anyio.sleep(0.1)
            assert cluster.check() == []
    finally:
        await restore(etcd)


async def test_a_stopped_member_is_skipped_and_the_host_keeps_its_leases(fault_cluster: EtcdCluster) -> None:
    etcd = fault_cluster
    leader = await anyio.to_thread.run_sync(etcd.leader)
    follower = next(i for i in range(3) if i != leader)
    # h1 talks to the follower first; the others never use it.
    order = [etcd.endpoints[follower]] + [e for i, e in enumerate(etcd.endpoints) if i != follower]
    prefix = new_prefix()

    def table(host: str) -> dict[str, Any]:
        return etcd_table(order if host == "h1" else etcd.endpoints[::-1], prefix)

    try:
        async with open_cluster(HOSTS, backend="etcd", etcd=table, timing=TIMING) as cluster:
            await cluster.start_guest("h1", "vm1", ["/d/1.img"])
            await anyio.to_thread.run_sync(etcd.pause, follower)
            await anyio.sleep(TIMING["lease_timeout"] + 0.5)
            assert cluster.guest("h1", "vm1").state is GuestState.RUNNING
            assert not await cluster.probe("h2", "/d/1.img")
            await anyio.to_thread.run_sync(etcd.resume, follower)
            # The member comes back with requests it held; they change nothing.
            await anyio.sleep(0.5)
            assert cluster.guest("h1", "vm1").state is GuestState.RUNNING
            assert not cluster.history.of(GuestStopped, host="h1")
            assert cluster.check() == []
    finally:
        await restore(etcd)


async def test_a_restarted_member_rejoins_and_serves_without_a_second_grant(
    fault_cluster: EtcdCluster,
) -> None:
    etcd = fault_cluster
    table = etcd_table(etcd.endpoints, new_prefix())
    try:
        async with open_cluster(HOSTS, backend="etcd", etcd=table, timing=TIMING) as cluster:
            await cluster.start_guest("h1", "vm1", ["/d/1.img"])
            victim = (await anyio.to_thread.run_sync(etcd.leader) + 1) % 3
            await anyio.to_thread.run_sync(etcd.kill, victim)
            assert not await cluster.probe("h2", "/d/1.img")
            await restore(etcd)
            assert not await cluster.probe("h3", "/d/1.img")
            await cluster.stop_guest("h1", "vm1")
            assert await cluster.probe("h2", "/d/1.img")
            assert cluster.guest("h1", "vm1").state is GuestState.STOPPED
            assert cluster.check() == []
    finally:
        await restore(etcd)


async def test_a_host_cut_off_from_every_member_fences_before_its_disk_is_granted(
    fault_cluster: EtcdCluster,
) -> None:
    etcd = fault_cluster
    prefix = new_prefix()
    async with gates(etcd.client_ports) as paths:

        def table(host: str) -> dict[str, Any]:
            endpoints = [g.url for g in paths] if host == "h1" else etcd.endpoints
            return etcd_table(endpoints, prefix)

        async with open_cluster(HOSTS, backend="etcd", etcd=table, timing=TIMING) as cluster:
            await cluster.start_guest("h1", "vm1", ["/d/1.img"])
            assert not await cluster.probe("h2", "/d/1.img")
            for path in paths:
                path.cut()
            cut_at = cluster.now()
            with anyio.fail_after(WAIT):
                while True:
                    try:
                        await cluster.start_guest("h2", "vm2", ["/d/1.img"])
                        break
                    except ResourceBusyError:
                        await anyio.sleep(0.05)
            (fenced,) = cluster.history.of(GuestStopped, host="h1", domain="vm1")
            (granted,) = cluster.history.of(GuestStarted, host="h2", domain="vm2")
            assert fenced.reason is StopReason.FENCED
            assert cut_at < fenced.time < granted.time
            assert granted.time - cut_at >= TIMING["host_dead"] - TIMING["renew_interval"]
            # Healed: h1's lease had expired; it renews again on a new lease of the same
            # incarnation, and the disk stays with h2.
            for path in paths:
                path.heal()
            with anyio.fail_after(WAIT):
                await cluster.wait_for(LockspaceRegained, host="h1")
            assert not await cluster.probe("h1", "/d/1.img")
            assert cluster.check() == []


async def test_a_crashed_host_is_taken_over_only_after_its_lease_expired_and_rejoins(
    fault_cluster: EtcdCluster,
) -> None:
    etcd = fault_cluster
    table = etcd_table(etcd.endpoints, new_prefix())
    async with open_cluster(HOSTS, backend="etcd", etcd=table, timing=TIMING) as cluster:
        await cluster.start_guest("h1", "vm1", ["/d/1.img", "/d/2.img"])
        await cluster.crash_host("h1")
        crashed_at = cluster.now()
        taken_at = await take_over(cluster, "h2", "/d/1.img")
        # The etcd lease (TTL = host_dead) ran out after the last keep-alive, before the crash.
        assert taken_at - crashed_at >= TIMING["host_dead"] - TIMING["renew_interval"]
        # The new incarnation joins once the old one's lease is gone; the old
        # incarnation's entry on the disk nobody took is dead to it at once.
        before = {r.key: r for r in await cluster.api("h2").leases()}["disk:/d/2.img"]
        assert [h.owner.host for h in before.holders] == ["h1"]
        await cluster.rejoin_host("h1")
        guest = await cluster.start_guest("h1", "vm3", ["/d/2.img"])
        assert [lease.token for lease in guest.leases.values()] == [before.token + 1]
        # Rule 5 (a gone host's disk is free after host_dead) gets the time etcd adds:
        # the lease expires after its TTL, noticed on the leader's 500 ms expiry tick.
        assert cluster.check(slack=EXPIRY_LAG) == []
