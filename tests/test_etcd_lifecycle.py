"""The core lifecycle through ``plugin_load("etcd", config)``, the [etcd] table, and the client's failover."""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
import pytest

import actorlock
from actorlock import ObjectType, ResourceType
from actorlock.backends import HostAdvert, make_backend
from actorlock.cli import main
from actorlock.errors import ConfigError, ResourceBusyError, StaleLockStateError
from actorlock.lockmanager import LockManager, LockManagerPlugin
from actorlock.model import HostIdentity, LeaseMode, LeaseOwner, LeaseRecord, LeaseRequest

from .etcd_cluster import EtcdCluster, etcd_cluster_fixture, free_ports  # noqa: F401  (a fixture)
from .etcd_support import etcd_backend, new_prefix
from .support import guest_process

pytestmark = pytest.mark.anyio

# Renewals go through raft (two fsyncs): wider than tests/support.py's TIMING.
TIMING = {
    "renew_interval": 0.1,
    "lease_timeout": 2.0,
    "fence_timeout": 0.3,
    "host_dead": 3.0,
    "io_timeout": 1.0,
}


def etcd_config(name: str, host_id: int, endpoints: list[str], prefix: str) -> dict[str, Any]:
    return {
        "host": {"name": name, "id": host_id},
        "timing": dict(TIMING),
        "locking": {"kill_grace": 0.05},
        "etcd": {"endpoints": endpoints, "prefix": prefix, "request_timeout": 0.25},
    }


async def new_domain(
    plugin: LockManagerPlugin, uuid: str, *disks: str, pid: int | None = None
) -> LockManager:
    manager = await plugin.new_manager(ObjectType.DOMAIN)
    manager.set_parameter("uuid", uuid)
    if pid is not None:
        manager.set_parameter("pid", pid)
    for path in disks:
        manager.register_resource(ResourceType.DISK, path)
    return manager


def holders(records: list[LeaseRecord], key: str) -> list[tuple[str, str]]:
    return [(h.owner.host, h.owner.domain) for r in records if r.key == key for h in r.holders]


async def test_start_refuse_pause_resume_shutdown_on_etcd(etcd_cluster: EtcdCluster) -> None:
    prefix = new_prefix()
    ends = etcd_cluster.endpoints
    with guest_process() as guest:
        async with (
            actorlock.plugin_load("etcd", etcd_config("a", 1, ends, prefix)) as a,
            actorlock.plugin_load("etcd", etcd_config("b", 2, ends[::-1], prefix)) as b,
        ):
            vm = await new_domain(a, "u1", "/d/1.img", "/d/2.img", pid=guest.pid)
            running = await vm.acquire_object()
            assert [lease.key for lease in running.leases] == ["disk:/d/1.img", "disk:/d/2.img"]
            assert holders(await b.host.leases(), "disk:/d/1.img") == [("a", "u1")]

            other = await new_domain(b, "u2", "/d/3.img", "/d/2.img")
            with pytest.raises(ResourceBusyError) as caught:
                await other.acquire_object()
            assert caught.value.holders == (("a", "u1"),)
            assert holders(await b.host.leases(), "disk:/d/3.img") == []

            state = await vm.release_all(save_state=True)
            assert state is not None
            resumed = await vm.acquire_object(state=state.to_string())
            assert all(n.token > o.token for n, o in zip(resumed.leases, running.leases, strict=True))
            saved = await vm.release_all(save_state=True)
            assert saved is not None
            thief = await new_domain(b, "u3", "/d/1.img")
            await thief.acquire_object()
            await thief.shutdown()
            with pytest.raises(StaleLockStateError):
                await vm.acquire_object(state=saved)

            status = await other.acquire_object()
            assert len(status.leases) == 2
            await other.shutdown()
            assert all(not r.holders for r in await a.host.leases())


async def test_a_dead_endpoint_first_in_the_list_is_skipped(etcd_cluster: EtcdCluster) -> None:
    (closed,) = free_ports(1)
    ends = [f"http://127.0.0.1:{closed}", *etcd_cluster.endpoints]
    async with actorlock.plugin_load("etcd", etcd_config("a", 1, ends, new_prefix())) as a:
        vm = await new_domain(a, "u1", "/d/1.img")
        status = await vm.acquire_object()
        assert [lease.key for lease in status.leases] == ["disk:/d/1.img"]
        await vm.shutdown()


def test_the_etcd_table_is_checked_key_by_key() -> None:
    base = {"locking": {"backend": "etcd"}}
    with pytest.raises(ConfigError) as caught:
        actorlock.load_config({**base, "etcd": {"endpoint": ["http://x:2379"]}})
    assert caught.value.key == "etcd.endpoint"
    for table, key in [
        ({"endpoints": []}, "etcd.endpoints"),
        ({"endpoints": ["x:2379"]}, "etcd.endpoints"),
        ({"endpoints": "http://x:2379"}, "etcd.endpoints"),
        ({"prefix": "relative"}, "etcd.prefix"),
        ({"cert_file": "/c.pem"}, "etcd.key_file"),
        ({"user": "root"}, "etcd.password"),
        ({"request_timeout": 0}, "etcd.request_timeout"),
    ]:
        with pytest.raises(ConfigError) as caught:
            actorlock.load_config({**base, "etcd": table})
        assert caught.value.key == key, table
    config = actorlock.load_config(
        {**base, "etcd": {"endpoints": ["https://e1:2379", "https://e2:2379"], "prefix": "/ls/a"}}
    )
    assert config.etcd.endpoints == ("https://e1:2379", "https://e2:2379")
    # Another backend ignores a bad [etcd] table's values but not its unknown keys.
    assert actorlock.load_config({"etcd": {"endpoints": []}}).locking.backend == "file"


def test_without_httpx_the_etcd_backend_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("actorlock.backends.etcd", "actorlock.backends.etcd_client"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, "httpx", None)
    config = actorlock.load_config({"locking": {"backend": "etcd"}})
    with pytest.raises(ConfigError, match=r"actorlock\[etcd\]") as caught:
        make_backend(config)
    assert caught.value.key == "locking.backend"


async def test_actorlock_leases_reads_an_etcd_lockspace(
    etcd_cluster: EtcdCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = new_prefix()
    ends = etcd_cluster.endpoints
    async with actorlock.plugin_load("etcd", etcd_config("host-a", 1, ends, prefix)) as a:
        vm = await new_domain(a, "u1", "/d/1.img")
        await vm.acquire_object()
        args = ["leases", "--etcd", ends[0], "--etcd", ends[1], "--prefix", prefix, "--observe", "0.3"]
        assert await anyio.to_thread.run_sync(main, args) == 0
        assert await anyio.to_thread.run_sync(main, [*args[:-2], "--observe", "0", "--json"]) == 0
        await vm.shutdown()
    text, _, rest = capsys.readouterr().out.partition("{")
    assert "exclusive  host-a  u1" in text
    assert "renewing" in text
    (lease,) = json.loads("{" + rest)["leases"]
    assert (lease["resource"], lease["holders"][0]["host"]) == ("disk:/d/1.img", "host-a")
    assert main(["leases", "--etcd", ends[0]]) == 2  # no --prefix
    assert main(["leases", "--etcd", ends[0], "--prefix", prefix, "--lockspace", "/tmp"]) == 2


async def test_a_txn_that_lands_again_late_changes_nothing(etcd_cluster: EtcdCluster) -> None:
    """A request the client gave up on may still commit later: compares on revisions make it inert."""
    prefix = new_prefix()
    a = etcd_backend(etcd_cluster.endpoints, prefix, host_dead=8.0)
    b = etcd_backend(etcd_cluster.endpoints, prefix, host_dead=8.0)
    sent: list[dict[str, Any]] = []
    send = a.client.txn

    async def recording(compare: Any = (), success: Any = (), failure: Any = ()) -> Any:
        sent.append({"compare": compare, "success": success, "failure": failure})
        return await send(compare, success, failure)

    a.client.txn = recording  # type: ignore[method-assign,assignment]
    try:
        await a.join(HostIdentity("a", 1), "inc-a", HostAdvert())
        await b.join(HostIdentity("b", 2), "inc-b", HostAdvert())
        owner_a, owner_b = LeaseOwner("a", 1, "vm-a"), LeaseOwner("b", 2, "vm-b")
        sent.clear()
        (first,) = await a.acquire(owner_a, [LeaseRequest("x", LeaseMode.EXCLUSIVE)])
        grant = [body for body in sent if body["compare"]]  # the txn that wrote
        await a.release(owner_a, ["x"])
        (second,) = await b.acquire(owner_b, [LeaseRequest("x", LeaseMode.EXCLUSIVE)])
        before = await b.records(["x"])
        assert grant
        for body in grant:
            answer = await send(**body)  # the late copy
            assert not answer.get("succeeded")
        assert await b.records(["x"]) == before
        assert [h.owner for h in before[0].holders] == [owner_b]
        assert second.token > first.token
    finally:
        await a.aclose()
        await b.aclose()


async def test_renewals_never_wait_behind_lease_traffic(etcd_cluster: EtcdCluster) -> None:
    backend = etcd_backend(etcd_cluster.endpoints, new_prefix(), host_dead=8.0)
    limiter = backend.client._limiter
    borrowers = [object() for _ in range(int(limiter.total_tokens))]
    try:
        await backend.join(HostIdentity("a", 1), "inc-a", HostAdvert())
        for borrower in borrowers:  # every lease-traffic slot taken, as by a burst of acquisitions
            await limiter.acquire_on_behalf_of(borrower)
        renewed = await backend.renew(HostAdvert())
        assert renewed.counter == 2
        assert limiter.available_tokens == 0
    finally:
        for borrower in borrowers:
            if borrower in limiter.statistics().borrowers:
                limiter.release_on_behalf_of(borrower)
        await backend.aclose()
