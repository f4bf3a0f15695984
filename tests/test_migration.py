"""Migration between two host coordinators over ZeroMQ, through the seed API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

import actorlock
from actorlock import MigrateFlags, NewFlags, ObjectType, ResourceType
from actorlock.errors import ConfigError, PeerRefusedError, ResourceBusyError
from actorlock.protocol import MigrationCommittedError, MigrationTimeoutError
from actorlock.testing import host_faults
from actorlock.transport.zmq import KeyPair, generate_keypair, save_keypair

from .support import guest_process, host_config, unique

pytestmark = pytest.mark.anyio

UUID = "3b0c7a52-0000-4000-8000-00000000000f"
DISKS = ("/d/root.img", "/d/data.img")
FAST_PEER = {"retry_interval": 0.05, "prepare_timeout": 2.0, "transfer_margin": 0.5, "migration_timeout": 5.0}


def peer_config(name: str, host_id: int, space: str, **peer: Any) -> dict[str, Any]:
    settings = {"endpoint": "tcp://127.0.0.1:*", "plaintext": True, **FAST_PEER, **peer}
    return host_config(name, host_id, lockspace=space, peer=settings)


async def start_vm(plugin: actorlock.LockManagerPlugin, pid: int) -> actorlock.LockManager:
    manager = await plugin.new_manager(ObjectType.DOMAIN)
    manager.set_parameter("uuid", UUID)
    manager.set_parameter("name", "vm")
    manager.set_parameter("pid", pid)
    for path in DISKS:
        manager.register_resource(ResourceType.DISK, path)
    await manager.acquire_object()
    return manager


async def incoming_vm(plugin: actorlock.LockManagerPlugin, pid: int) -> actorlock.LockManager:
    manager = await plugin.new_manager(ObjectType.DOMAIN, NewFlags.MIGRATE)
    manager.set_parameter("uuid", UUID)
    manager.set_parameter("name", "vm")
    manager.set_parameter("pid", pid)
    for path in DISKS:
        manager.register_resource(ResourceType.DISK, path)
    assert await manager.get_child() == pid
    return manager


def owners(records: list[Any]) -> dict[str, list[tuple[str, int]]]:
    return {r.key: [(h.owner.host, h.token) for h in r.holders] for r in records}


async def third_host_refused(plugin: actorlock.LockManagerPlugin) -> None:
    for path in DISKS:
        with pytest.raises(ResourceBusyError):
            await plugin.host.domain("intruder").start([actorlock.disk(path)])


async def test_migration_commits_and_moves_every_lease_atomically() -> None:
    space = unique()
    with guest_process() as src_guest, guest_process() as dst_guest:
        async with (
            await actorlock.plugin_load("memory", peer_config("a", 1, space)) as a,
            await actorlock.plugin_load("memory", peer_config("b", 2, space)) as b,
            await actorlock.plugin_load("memory", host_config("c", 3, lockspace=space)) as c,
        ):
            source = await start_vm(a, src_guest.pid)
            before = owners(await a.host.leases())
            await source.prepare_migrate(b.host.peer_endpoint)
            dest = await incoming_vm(b, dst_guest.pid)
            await third_host_refused(c)
            async with anyio.create_task_group() as tg:
                tg.start_soon(dest.complete_migrate_in, 0)
                tg.start_soon(source.complete_migrate_in, 0)
            after = owners(await a.host.leases())
            for key, holders in after.items():
                ((host, token),) = holders
                assert host == "b"
                assert token == before[key][0][1] + 1
            await third_host_refused(c)
            await source.shutdown()
            await source.free()
            assert owners(await a.host.leases()) == after
            status = await dest.inquire()
            assert status.phase == "running"
            assert status.pid == dst_guest.pid
            await dest.shutdown()
            assert all(not h for h in owners(await a.host.leases()).values())


async def test_both_sides_cancelling_leaves_the_source_owning_everything() -> None:
    space = unique()
    with guest_process() as guest:
        async with (
            await actorlock.plugin_load("memory", peer_config("a", 1, space)) as a,
            await actorlock.plugin_load("memory", peer_config("b", 2, space)) as b,
        ):
            source = await start_vm(a, guest.pid)
            before = owners(await a.host.leases())
            await source.prepare_migrate(b.host.peer_endpoint)
            dest = await incoming_vm(b, guest.pid)
            async with anyio.create_task_group() as tg:
                tg.start_soon(dest.complete_migrate_in, MigrateFlags.CANCEL)
                tg.start_soon(source.complete_migrate_in, MigrateFlags.CANCEL)
            await dest.shutdown()
            assert owners(await a.host.leases()) == before
            assert (await source.inquire()).phase == "running"


async def test_cancel_after_commit_is_refused() -> None:
    space = unique()
    with guest_process() as guest:
        async with (
            await actorlock.plugin_load("memory", peer_config("a", 1, space)) as a,
            await actorlock.plugin_load("memory", peer_config("b", 2, space)) as b,
        ):
            source = await start_vm(a, guest.pid)
            await source.prepare_migrate(b.host.peer_endpoint)
            dest = await incoming_vm(b, guest.pid)
            async with anyio.create_task_group() as tg:
                tg.start_soon(dest.complete_migrate_in, 0)
                tg.start_soon(source.complete_migrate_in, 0)
            with pytest.raises(MigrationCommittedError):
                await source.complete_migrate_in(MigrateFlags.CANCEL)
            assert [h for h, _ in owners(await a.host.leases())["disk:/d/root.img"]] == ["b"]


async def test_an_endpoint_nobody_in_the_lockspace_advertises_is_refused_and_nothing_changes() -> None:
    space = unique()
    with guest_process() as guest:
        async with await actorlock.plugin_load("memory", peer_config("a", 1, space)) as a:
            source = await start_vm(a, guest.pid)
            before = owners(await a.host.leases())
            with pytest.raises(PeerRefusedError, match="advertises peer endpoint"):
                await source.prepare_migrate("tcp://127.0.0.1:9")
            assert owners(await a.host.leases()) == before
            assert (await source.inquire()).phase == "running"


def write_keys(tmp_path: Path, name: str) -> tuple[Path, KeyPair]:
    keys = KeyPair(*generate_keypair())
    path = tmp_path / f"{name}.key"
    save_keypair(path, keys)
    return path, keys


async def test_curve_peers_migrate_when_their_keys_are_allowed(tmp_path: Path) -> None:
    space = unique()
    a_file, a_keys = write_keys(tmp_path, "a")
    b_file, b_keys = write_keys(tmp_path, "b")
    cfg_a = peer_config("a", 1, space, plaintext=False, key_file=str(a_file), allowed_keys=[b_keys.public])
    cfg_b = peer_config("b", 2, space, plaintext=False, key_file=str(b_file), allowed_keys=[a_keys.public])
    with guest_process() as guest:
        async with (
            await actorlock.plugin_load("memory", cfg_a) as a,
            await actorlock.plugin_load("memory", cfg_b) as b,
        ):
            source = await start_vm(a, guest.pid)
            await source.prepare_migrate(b.host.peer_endpoint)
            dest = await incoming_vm(b, guest.pid)
            async with anyio.create_task_group() as tg:
                tg.start_soon(dest.complete_migrate_in, 0)
                tg.start_soon(source.complete_migrate_in, 0)
            assert [h for h, _ in owners(await a.host.leases())["disk:/d/root.img"]] == ["b"]


async def test_a_destination_whose_key_is_not_allowed_is_refused(tmp_path: Path) -> None:
    space = unique()
    a_file, a_keys = write_keys(tmp_path, "a")
    b_file, _ = write_keys(tmp_path, "b")
    _, stranger = write_keys(tmp_path, "stranger")
    cfg_a = peer_config("a", 1, space, plaintext=False, key_file=str(a_file), allowed_keys=[stranger.public])
    cfg_b = peer_config("b", 2, space, plaintext=False, key_file=str(b_file), allowed_keys=[a_keys.public])
    with guest_process() as guest:
        async with (
            await actorlock.plugin_load("memory", cfg_a) as a,
            await actorlock.plugin_load("memory", cfg_b) as b,
        ):
            source = await start_vm(a, guest.pid)
            before = owners(await a.host.leases())
            with pytest.raises(PeerRefusedError, match="not in \\[peer\\] allowed_keys"):
                await source.prepare_migrate(b.host.peer_endpoint)
            assert owners(await a.host.leases()) == before


def test_a_peer_endpoint_without_keys_or_plaintext_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"peer\.key_file"):
        actorlock.load_config({"peer": {"endpoint": "tcp://127.0.0.1:7470"}})


@asynccontextmanager
async def host_in_task(tg: anyio.abc.TaskGroup, cfg: dict[str, Any]) -> AsyncIterator[actorlock.Host]:
    """A host running in its own task, so crashing it leaves the test's task alone."""
    stop = anyio.Event()

    async def run(*, task_status: anyio.abc.TaskStatus[actorlock.Host]) -> None:
        async with actorlock.open_host(cfg) as host:
            task_status.started(host)
            await stop.wait()

    host = await tg.start(run)
    try:
        yield host
    finally:
        stop.set()


SHORT = {**FAST_PEER, "migration_timeout": 1.5}


async def test_destination_crash_after_prepare_makes_the_source_cancel_and_keep_its_leases() -> None:
    space = unique()
    disks = [actorlock.disk(p) for p in DISKS]
    with guest_process() as guest:
        async with (
            anyio.create_task_group() as tg,
            host_in_task(tg, peer_config("a", 1, space, **SHORT)) as a,
            host_in_task(tg, peer_config("b", 2, space, **SHORT)) as b,
        ):
            vm = a.domain(UUID, name="vm")
            await vm.start(disks, pid=guest.pid)
            before = owners(await a.leases())
            await vm.prepare_migration(b.peer_endpoint)
            host_faults.crash(b)
            with anyio.fail_after(10), pytest.raises(MigrationTimeoutError) as caught:
                await vm.complete_migration(commit=True)
            assert "did not commit before the deadline" in str(caught.value)
            assert owners(await a.leases()) == before
            assert (await vm.status()).phase == "running"


async def test_source_crash_after_prepare_makes_the_destination_drop_the_migration() -> None:
    space = unique()
    disks = [actorlock.disk(p) for p in DISKS]
    with guest_process() as guest:
        async with (
            anyio.create_task_group() as tg,
            host_in_task(tg, peer_config("a", 1, space, **SHORT)) as a,
            host_in_task(tg, peer_config("b", 2, space, **SHORT)) as b,
        ):
            vm = a.domain(UUID, name="vm")
            await vm.start(disks, pid=guest.pid)
            before = owners(await b.leases())
            await vm.prepare_migration(b.peer_endpoint)
            host_faults.crash(a)
            incoming = b.domain(UUID, name="vm")
            with anyio.fail_after(10), pytest.raises(MigrationTimeoutError) as caught:
                await incoming.complete_migration(commit=True, resources=disks, pid=guest.pid)
            assert "the source kept the leases" in str(caught.value)
            assert owners(await b.leases()) == before
            assert (await incoming.status()).phase != "running"
            assert b.incoming_migration(UUID) is None


async def test_migrate_to_commits_on_normal_exit_and_cancels_on_an_exception() -> None:
    space = unique()
    disks = [actorlock.disk(p) for p in DISKS]
    with guest_process() as guest:
        async with (
            anyio.create_task_group() as tg,
            host_in_task(tg, peer_config("a", 1, space)) as a,
            host_in_task(tg, peer_config("b", 2, space)) as b,
        ):
            vm = a.domain(UUID, name="vm")
            await vm.start(disks, pid=guest.pid)
            before = owners(await a.leases())
            incoming = b.domain(UUID, name="vm")
            with pytest.raises(RuntimeError, match="qemu migration failed"):
                async with vm.migrate_to(b.peer_endpoint):
                    raise RuntimeError("qemu migration failed")
            assert owners(await a.leases()) == before
            await incoming.complete_migration(commit=False)

            async with anyio.create_task_group() as both, vm.migrate_to(b.peer_endpoint):
                # The guest's own migration runs here; the destination says commit when done.
                both.start_soon(
                    lambda: incoming.complete_migration(commit=True, resources=disks, pid=guest.pid)
                )
            assert {h[0][0] for h in owners(await a.leases()).values()} == {"b"}
            assert (await incoming.status()).phase == "running"
            assert (await vm.status()).phase == "migrated"
