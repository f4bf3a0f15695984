"""Hotplug and migration on the etcd backend: parity with the file backend, through the seed API."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import actorlock
from actorlock import ResourceType
from actorlock.errors import ResourceBusyError

from .etcd_cluster import EtcdCluster, etcd_cluster_fixture  # noqa: F401  (a fixture)
from .etcd_support import new_prefix
from .support import guest_process
from .test_etcd_lifecycle import etcd_config, holders, new_domain
from .test_migration import FAST_PEER, incoming_vm, owners, start_vm, third_host_refused

pytestmark = pytest.mark.anyio


def peer_etcd_config(name: str, host_id: int, endpoints: list[str], prefix: str) -> dict[str, Any]:
    cfg = etcd_config(name, host_id, endpoints, prefix)
    cfg["peer"] = {"endpoint": "tcp://127.0.0.1:*", "plaintext": True, **FAST_PEER}
    return cfg


async def test_hotplug_takes_and_gives_back_one_lease(etcd_cluster: EtcdCluster) -> None:
    prefix, ends = new_prefix(), etcd_cluster.endpoints
    async with (
        actorlock.plugin_load("etcd", etcd_config("a", 1, ends, prefix)) as a,
        actorlock.plugin_load("etcd", etcd_config("b", 2, ends, prefix)) as b,
    ):
        vm = await new_domain(a, "u1", "/d/root.img")
        await vm.acquire_object()
        status = await vm.acquire_resource(ResourceType.DISK, "/d/data.img")
        assert [lease.key for lease in status.leases] == ["disk:/d/data.img", "disk:/d/root.img"]
        other = await new_domain(b, "u2", "/d/busy.img")
        await other.acquire_object()
        with pytest.raises(ResourceBusyError):
            await vm.acquire_resource(ResourceType.DISK, "/d/busy.img")
        status = await vm.release_resource(ResourceType.DISK, "/d/data.img")
        assert [lease.key for lease in status.leases] == ["disk:/d/root.img"]
        assert holders(await a.host.leases(), "disk:/d/data.img") == []


async def test_migration_moves_every_lease_in_one_txn(etcd_cluster: EtcdCluster) -> None:
    prefix, ends = new_prefix(), etcd_cluster.endpoints
    with guest_process() as src_guest, guest_process() as dst_guest:
        async with (
            actorlock.plugin_load("etcd", peer_etcd_config("a", 1, ends, prefix)) as a,
            actorlock.plugin_load("etcd", peer_etcd_config("b", 2, ends, prefix)) as b,
            actorlock.plugin_load("etcd", etcd_config("c", 3, ends, prefix)) as c,
        ):
            source = await start_vm(a, src_guest.pid)
            before = owners(await a.host.leases())
            await source.prepare_migrate(b.host.peer_endpoint)
            dest = await incoming_vm(b, dst_guest.pid)
            await third_host_refused(c)
            async with anyio.create_task_group() as tg:
                tg.start_soon(dest.complete_migrate_in, 0)
                tg.start_soon(source.complete_migrate_in, 0)
            after = owners(await c.host.leases())
            for key, entries in after.items():
                ((host, token),) = entries
                assert (host, token) == ("b", before[key][0][1] + 1)
            await third_host_refused(c)
            await source.shutdown()
            assert (await dest.inquire()).phase == "running"
            await dest.shutdown()
            assert all(not h for h in owners(await c.host.leases()).values())
