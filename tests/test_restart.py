"""libvirtd restart with running guests: re-attach keeps every lease, in time."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import anyio
import pytest

import actorlock
from actorlock import NewFlags, ObjectType, ResourceType
from actorlock.errors import GuestNotRunningError, LeaseLostError, ResourceBusyError
from actorlock.model import LeaseRecord
from actorlock.testing import host_faults

from .support import TIMING, guest_process, host_config, unique

pytestmark = pytest.mark.anyio


async def start_guest(plugin: actorlock.LockManagerPlugin, uuid: str, pid: int, *disks: str) -> None:
    manager = await plugin.new_manager(ObjectType.DOMAIN)
    manager.set_parameter("uuid", uuid)
    manager.set_parameter("pid", pid)
    for path in disks:
        manager.register_resource(ResourceType.DISK, path)
    await manager.acquire_object()
    await manager.free()


async def attach(plugin: actorlock.LockManagerPlugin, uuid: str) -> actorlock.LockManager:
    manager = await plugin.new_manager(ObjectType.DOMAIN, NewFlags.ATTACH)
    manager.set_parameter("uuid", uuid)
    return manager


def tokens(records: Iterable[LeaseRecord]) -> dict[str, list[tuple[str, int]]]:
    return {r.key: [(h.owner.host, h.token) for h in r.holders] for r in records}


async def test_restart_within_lease_timeout_reattaches_with_no_gap(tmp_path: Path) -> None:
    space = unique()
    cfg = host_config("a", 1, lockspace=space, host={"state_dir": str(tmp_path / "state")})
    with guest_process() as guest:
        async with await actorlock.plugin_load("memory", host_config("b", 2, lockspace=space)) as b:
            async with actorlock.plugin_load("memory", cfg) as a:
                await start_guest(a, "u1", guest.pid, "/d/1.img", "/d/2.img")
                before = tokens(await a.host.leases())
            # The coordinator is gone, the guest runs on: nobody may take its disks.
            with pytest.raises(ResourceBusyError):
                await b.host.domain("thief").start([actorlock.disk("/d/1.img")])
            async with await actorlock.plugin_load("memory", cfg) as a2:
                assert a2.host.resumed
                manager = await attach(a2, "u1")
                assert await manager.get_child() == guest.pid
                assert tokens(await a2.host.leases()) == before
                with pytest.raises(ResourceBusyError):
                    await b.host.domain("thief").start([actorlock.disk("/d/2.img")])
                await manager.shutdown()
                assert all(not r.holders for r in await a2.host.leases())


async def test_restart_after_lease_timeout_reports_the_leases_lost(tmp_path: Path) -> None:
    space = unique()
    cfg = host_config("a", 1, lockspace=space, host={"state_dir": str(tmp_path / "state")})
    with guest_process() as guest:
        async with await actorlock.plugin_load("memory", host_config("b", 2, lockspace=space)) as b:
            async with actorlock.plugin_load("memory", cfg) as a:
                await start_guest(a, "u1", guest.pid, "/d/1.img")
            await anyio.sleep(TIMING["lease_timeout"] * 1.2)
            async with await actorlock.plugin_load("memory", cfg) as a2:
                assert not a2.host.resumed
                # Back too late: the guest was powered off before the host rejoined.
                assert guest.wait(timeout=5) is not None
                manager = await attach(a2, "u1")
                with pytest.raises(LeaseLostError, match=r"longer than lease_timeout.*powered off"):
                    await manager.get_child()
                await manager.shutdown()
                status = await b.host.domain("u2").start([actorlock.disk("/d/1.img")])
                assert status.phase == "running"


async def test_attach_to_a_guest_that_died_meanwhile_says_so(tmp_path: Path) -> None:
    space = unique()
    cfg = host_config("a", 1, lockspace=space, host={"state_dir": str(tmp_path / "state")})
    with guest_process() as guest:
        async with actorlock.plugin_load("memory", cfg) as a:
            await start_guest(a, "u1", guest.pid, "/d/1.img")
    async with await actorlock.plugin_load("memory", cfg) as a2:
        manager = await attach(a2, "u1")
        with pytest.raises(GuestNotRunningError):
            await manager.get_child()
        await manager.shutdown()
        assert all(not r.holders for r in await a2.host.leases())


async def test_attach_with_nothing_persisted_is_an_invalid_state(tmp_path: Path) -> None:
    cfg = host_config("a", 1, lockspace=unique(), host={"state_dir": str(tmp_path / "state")})
    async with await actorlock.plugin_load("memory", cfg) as a:
        manager = await attach(a, "never-started")
        with pytest.raises(actorlock.errors.InvalidStateError, match="nothing persisted"):
            await manager.get_child()


@pytest.mark.parametrize("backend", ["memory", "file"])
async def test_a_crashed_host_restarting_without_state_can_start_its_guest_again(
    backend: str, tmp_path: Path
) -> None:
    lockspace = tmp_path / "ls"
    lockspace.mkdir()
    cfg = host_config("a", 1, lockspace=unique(), backend=backend, file={"lockspace_dir": str(lockspace)})
    async with actorlock.open_host(cfg) as a:
        await a.domain("u1").start([actorlock.disk("/d/1.img")])
        host_faults.crash(a)
    # A new incarnation: joining waits until the old one's record went stale for host_dead.
    async with actorlock.open_host(cfg) as a2:
        assert not a2.resumed
        status = await a2.domain("u1").start([actorlock.disk("/d/1.img")])
        assert [(lease.key, lease.token) for lease in status.leases] == [("disk:/d/1.img", 2)]
        record = (await a2.leases())[0]
        assert [(h.owner.host, h.token) for h in record.holders] == [("a", 2)]
