"""The seed's single-host and two-host sequences through the lock manager API."""

from __future__ import annotations

from collections.abc import Iterable

import anyio
import pytest

import actorlock
from actorlock import AcquireFlags, NewFlags, ObjectType, ResourceFlags, ResourceType
from actorlock.errors import (
    InvalidParameterError,
    InvalidStateError,
    LeaseRequiredError,
    NotSupportedError,
    ResourceBusyError,
    StaleLockStateError,
)
from actorlock.model import LeaseRecord

from .support import guest_process, host_config, unique

pytestmark = pytest.mark.anyio


async def new_domain(
    plugin: actorlock.LockManagerPlugin, uuid: str, *disks: str, pid: int | None = None
) -> actorlock.LockManager:
    manager = await plugin.new_manager(ObjectType.DOMAIN)
    manager.set_parameter("uuid", uuid)
    manager.set_parameter("name", f"vm-{uuid}")
    manager.set_parameter("id", 7)
    if pid is not None:
        manager.set_parameter("pid", pid)
    for path in disks:
        manager.register_resource(ResourceType.DISK, path)
    return manager


def holders(records: Iterable[LeaseRecord], key: str) -> list[tuple[str, str]]:
    for r in records:
        if r.key == key:
            return [(h.owner.host, h.owner.domain) for h in r.holders]
    return []


async def test_start_then_shutdown_releases_every_lease() -> None:
    space = unique()
    with guest_process() as guest:
        async with await actorlock.plugin_load("memory", host_config("a", 1, lockspace=space)) as plugin:
            manager = await new_domain(plugin, "u1", "/d/1.img", "/d/2.img", pid=guest.pid)
            status = await manager.acquire_object()
            assert status.phase == "running"
            assert [lease.key for lease in status.leases] == ["disk:/d/1.img", "disk:/d/2.img"]
            records = await plugin.host.leases()
            assert holders(records, "disk:/d/1.img") == [("a", "u1")]
            await manager.shutdown()
            await manager.free()
            records = await plugin.host.leases()
            assert all(not r.holders for r in records)
            assert plugin.host.known_domains() == []


async def test_second_host_is_refused_and_nothing_stays_acquired() -> None:
    space = unique()
    async with (
        await actorlock.plugin_load("memory", host_config("a", 1, lockspace=space)) as a,
        await actorlock.plugin_load("memory", host_config("b", 2, lockspace=space)) as b,
    ):
        first = await new_domain(a, "u1", "/d/shared-target.img")
        await first.acquire_object()
        second = await new_domain(b, "u2", "/d/free-1.img", "/d/shared-target.img", "/d/free-2.img")
        with pytest.raises(ResourceBusyError) as caught:
            await second.acquire_object()
        assert caught.value.resource == "disk:/d/shared-target.img"
        assert caught.value.holders == (("a", "u1"),)
        records = await b.host.leases()
        assert holders(records, "disk:/d/free-1.img") == []
        assert holders(records, "disk:/d/free-2.img") == []
        assert (await second.inquire()).leases == ()
        await first.shutdown()
        status = await second.acquire_object()
        assert len(status.leases) == 3


async def test_shared_disks_admit_many_shared_holders_but_no_exclusive_one() -> None:
    space = unique()
    async with (
        await actorlock.plugin_load("memory", host_config("a", 1, lockspace=space)) as a,
        await actorlock.plugin_load("memory", host_config("b", 2, lockspace=space)) as b,
    ):
        one = await new_domain(a, "u1")
        one.register_resource(ResourceType.DISK, "/d/cluster.img", ResourceFlags.SHARED)
        two = await new_domain(b, "u2")
        two.register_resource(ResourceType.DISK, "/d/cluster.img", ResourceFlags.SHARED)
        await one.acquire_object()
        await two.acquire_object()
        assert sorted(holders(await a.host.leases(), "disk:/d/cluster.img")) == [("a", "u1"), ("b", "u2")]
        three = await new_domain(b, "u3", "/d/cluster.img")
        with pytest.raises(ResourceBusyError):
            await three.acquire_object()
        await one.shutdown()
        await two.shutdown()
        await three.acquire_object()
        four = await new_domain(a, "u4")
        four.register_resource(ResourceType.DISK, "/d/cluster.img", ResourceFlags.SHARED)
        with pytest.raises(ResourceBusyError):
            await four.acquire_object()


async def test_readonly_disks_are_never_locked() -> None:
    space = unique()
    async with (
        await actorlock.plugin_load("memory", host_config("a", 1, lockspace=space)) as a,
        await actorlock.plugin_load("memory", host_config("b", 2, lockspace=space)) as b,
    ):
        one = await new_domain(a, "u1")
        one.register_resource(ResourceType.DISK, "/d/base.iso", ResourceFlags.READONLY)
        status = await one.acquire_object()
        assert status.leases == ()
        assert [r.name for r in status.resources] == ["/d/base.iso"]
        two = await new_domain(b, "u2", "/d/base.iso")
        await two.acquire_object()


async def test_register_only_binds_the_guest_and_a_later_acquire_takes_the_leases() -> None:
    space = unique()
    with guest_process() as guest:
        async with await actorlock.plugin_load("memory", host_config("a", 1, lockspace=space)) as a:
            manager = await new_domain(a, "u1", "/d/1.img", pid=guest.pid)
            status = await manager.acquire_object(AcquireFlags.REGISTER_ONLY)
            assert (status.phase, status.pid, status.leases) == ("registered", guest.pid, ())
            assert await a.host.leases() == []
            status = await manager.acquire_object()
            assert status.phase == "running"
            assert [lease.key for lease in status.leases] == ["disk:/d/1.img"]


async def test_hotplug_and_unplug_take_and_give_back_one_lease() -> None:
    space = unique()
    async with (
        await actorlock.plugin_load("memory", host_config("a", 1, lockspace=space)) as a,
        await actorlock.plugin_load("memory", host_config("b", 2, lockspace=space)) as b,
    ):
        vm = await new_domain(a, "u1", "/d/root.img")
        await vm.acquire_object()
        status = await vm.acquire_resource(ResourceType.DISK, "/d/data.img")
        assert [lease.key for lease in status.leases] == ["disk:/d/data.img", "disk:/d/root.img"]
        other = await new_domain(b, "u2", "/d/busy.img")
        await other.acquire_object()
        with pytest.raises(ResourceBusyError):
            await vm.acquire_resource(ResourceType.DISK, "/d/busy.img")
        status = await vm.inquire()
        assert [lease.key for lease in status.leases] == ["disk:/d/data.img", "disk:/d/root.img"]
        status = await vm.release_resource(ResourceType.DISK, "/d/data.img")
        assert [lease.key for lease in status.leases] == ["disk:/d/root.img"]
        assert holders(await a.host.leases(), "disk:/d/data.img") == []
        with pytest.raises(InvalidParameterError):
            await vm.release_resource(ResourceType.DISK, "/d/never-plugged.img")


async def test_pause_saves_state_and_resume_retakes_the_same_leases() -> None:
    space = unique()
    async with await actorlock.plugin_load("memory", host_config("a", 1, lockspace=space)) as a:
        vm = await new_domain(a, "u1", "/d/1.img", "/d/2.img")
        running = await vm.acquire_object()
        state = await vm.release_all(save_state=True)
        assert {(lease.key, lease.token) for lease in state.leases} == {
            (lease.key, lease.token) for lease in running.leases
        }
        assert all(not r.holders for r in await a.host.leases())
        resumed = await vm.acquire_object(state=state.to_string())
        assert resumed.phase == "running"
        assert all(new.token > old.token for new, old in zip(resumed.leases, running.leases, strict=True))


async def test_resume_refuses_a_state_whose_leases_changed_hands() -> None:
    space = unique()
    async with (
        await actorlock.plugin_load("memory", host_config("a", 1, lockspace=space)) as a,
        await actorlock.plugin_load("memory", host_config("b", 2, lockspace=space)) as b,
    ):
        vm = await new_domain(a, "u1", "/d/1.img")
        await vm.acquire_object()
        state = await vm.release_all()
        thief = await new_domain(b, "u2", "/d/1.img")
        await thief.acquire_object()
        await thief.shutdown()
        with pytest.raises(StaleLockStateError):
            await vm.acquire_object(state=state)
        assert holders(await a.host.leases(), "disk:/d/1.img") == []


async def test_nop_plugin_accepts_everything_and_locks_nothing() -> None:
    async with (
        await actorlock.plugin_load("nop", host_config("a", 1)) as a,
        await actorlock.plugin_load("nop", host_config("b", 2)) as b,
    ):
        one = await new_domain(a, "u1", "/d/1.img")
        two = await new_domain(b, "u2", "/d/1.img")
        await one.acquire_object()
        await two.acquire_object()
        await one.acquire_resource(ResourceType.DISK, "/d/2.img")
        assert await a.host.leases() == []


async def test_explicit_leases_are_required_when_disk_leases_are_not_automatic() -> None:
    cfg = host_config("a", 1, lockspace=unique(), locking={"auto_disk_leases": False})
    async with await actorlock.plugin_load("memory", cfg) as a:
        vm = await new_domain(a, "u1", "/d/1.img")
        with pytest.raises(LeaseRequiredError):
            await vm.acquire_object()
        vm.register_resource(ResourceType.LEASE, "vm1-lease", lockspace="cluster", path="/leases", offset=0)
        status = await vm.acquire_object()
        assert [lease.key for lease in status.leases] == ["lease:cluster/vm1-lease"]


async def test_lock_manager_rejects_bad_parameters_and_resources_with_clear_errors() -> None:
    async with await actorlock.plugin_load("memory", host_config("a", 1, lockspace=unique())) as a:
        manager = await a.new_manager(ObjectType.DOMAIN)
        with pytest.raises(InvalidParameterError, match="unknown parameter 'colour'"):
            manager.set_parameter("colour", "red")
        with pytest.raises(InvalidParameterError, match="'pid' must be an integer"):
            manager.set_parameter("pid", "123")
        with pytest.raises(InvalidParameterError, match="'uuid' must be a non-empty string"):
            manager.set_parameter("uuid", "")
        with pytest.raises(InvalidParameterError, match="must be absolute"):
            manager.register_resource(ResourceType.DISK, "relative.img")
        with pytest.raises(InvalidParameterError, match="lockspace"):
            manager.register_resource(ResourceType.LEASE, "key-only")
        with pytest.raises(InvalidParameterError, match="unknown lease parameters"):
            manager.register_resource(ResourceType.LEASE, "k", lockspace="s", colour="red")
        with pytest.raises(InvalidStateError, match="uuid"):
            await manager.acquire_object()
        with pytest.raises(NotSupportedError):
            manager.get_supervisor_path()
        await manager.free()
        with pytest.raises(InvalidStateError, match="freed"):
            manager.set_parameter("uuid", "u1")
    with pytest.raises(InvalidParameterError, match="unknown lock plugin"):
        await actorlock.plugin_load("sync-manager", host_config("a", 1))


async def test_acquiring_twice_is_an_invalid_state_not_a_second_lease() -> None:
    async with await actorlock.plugin_load("memory", host_config("a", 1, lockspace=unique())) as a:
        vm = await new_domain(a, "u1", "/d/1.img")
        await vm.acquire_object()
        with pytest.raises(InvalidStateError, match="already holds"):
            await vm.acquire_object()
        records = await a.host.leases()
        assert [r.token for r in records] == [1]


async def test_new_manager_with_migrate_flag_is_not_supported_yet() -> None:
    async with await actorlock.plugin_load("memory", host_config("a", 1, lockspace=unique())) as a:
        with pytest.raises(NotSupportedError):
            await a.new_manager(ObjectType.DOMAIN, NewFlags.MIGRATE)


async def test_operations_on_different_domains_run_concurrently() -> None:
    space = unique()
    from actorlock.backends.memory import MemoryLeaseBackend, shared_lockspace
    from actorlock.testing.faults import FaultyBackend

    cfg = actorlock.load_config(host_config("a", 1, lockspace=space))
    faulty = FaultyBackend(MemoryLeaseBackend(shared_lockspace(space), host_dead=cfg.timing.host_dead))
    async with actorlock.open_host(cfg, backend=faulty) as host:
        slow, fast = host.domain("slow"), host.domain("fast")
        faulty.stall("acquire")
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow.start, [actorlock.disk("/d/slow.img")])
            with anyio.fail_after(2):
                await faulty.wait_parked("acquire")
            # The slow domain is parked inside the backend; another domain still answers.
            with anyio.fail_after(2):
                status = await fast.status()
            assert status.phase == "undefined"
            faulty.heal("acquire")
        assert (await slow.status()).phase == "running"
