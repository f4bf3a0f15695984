"""Fixtures' helpers for the etcd backend: backends on a live cluster, and fake-time lease expiry.

The conformance checks move a fake clock and expect a host that stopped
renewing to be dead once ``host_dead`` of fake time has passed. On etcd a
takeover also needs the server to have expired the host's lease, which
happens in real time. :class:`FakeTimeExpiry` plays the server's part in
fake time: before each operation of any backend of the lockspace, it
revokes every lease whose host has not renewed (joined or kept it alive)
for ``host_dead`` on the fake clock, exactly what the server would do.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from actorlock.backends.base import BackendCapabilities, HostAdvert, LeaseBackend
from actorlock.backends.etcd import EtcdLeaseBackend
from actorlock.backends.etcd_client import EtcdClient
from actorlock.model import HostIdentity, HostRecord, HostView, Lease, LeaseOwner, LeaseRecord, LeaseRequest

IO_TIMEOUT = 10.0


def new_prefix() -> str:
    return f"/actorlock-test/{uuid.uuid4().hex}"


def etcd_backend(
    endpoints: Sequence[str],
    prefix: str,
    *,
    host_dead: float,
    clock: Callable[[], float] | None = None,
    poll_interval: float = 0.01,
    io_timeout: float = IO_TIMEOUT,
    request_timeout: float = 2.0,
) -> EtcdLeaseBackend:
    client = EtcdClient(endpoints, io_timeout=io_timeout, request_timeout=request_timeout)
    extra = {} if clock is None else {"clock": clock}
    return EtcdLeaseBackend(
        client, prefix, host_dead=host_dead, poll_interval=poll_interval, io_timeout=io_timeout, **extra
    )


class FakeTimeExpiry:
    """Revokes leases whose keep-alives stopped ``host_dead`` ago on a fake clock."""

    def __init__(self, client: EtcdClient, clock: Callable[[], float], host_dead: float) -> None:
        self.client = client
        self.clock = clock
        self.host_dead = host_dead
        self.kept: dict[int, float] = {}  # lease id -> fake time of its last keep-alive

    def kept_alive(self, lease: int) -> None:
        if lease:
            self.kept[lease] = self.clock()

    async def expire_due(self) -> None:
        now = self.clock()
        for lease, last in list(self.kept.items()):
            if now - last >= self.host_dead:
                await self.client.revoke(lease)
                del self.kept[lease]


class ExpiringBackend:
    """An etcd backend whose lockspace expires leases in fake time (see the module doc)."""

    kind = "etcd"
    capabilities = BackendCapabilities()

    def __init__(self, inner: EtcdLeaseBackend, expiry: FakeTimeExpiry) -> None:
        self.inner = inner
        self.expiry = expiry

    async def lockspace_id(self) -> str:
        await self.expiry.expire_due()
        return await self.inner.lockspace_id()

    async def join(self, host: HostIdentity, incarnation: str, advert: HostAdvert) -> HostRecord | None:
        await self.expiry.expire_due()
        previous = await self.inner.join(host, incarnation, advert)
        self.expiry.kept_alive(self.inner.lease_id)
        return previous

    async def renew(self, advert: HostAdvert) -> HostRecord:
        await self.expiry.expire_due()
        record = await self.inner.renew(advert)
        self.expiry.kept_alive(self.inner.lease_id)
        return record

    async def leave(self, *, clean: bool) -> None:
        await self.expiry.expire_due()
        await self.inner.leave(clean=clean)

    async def hosts(self) -> list[HostView]:
        await self.expiry.expire_due()
        return await self.inner.hosts()

    async def acquire(self, owner: LeaseOwner, requests: Sequence[LeaseRequest]) -> tuple[Lease, ...]:
        await self.expiry.expire_due()
        return await self.inner.acquire(owner, requests)

    async def release(self, owner: LeaseOwner, keys: Sequence[str]) -> None:
        await self.expiry.expire_due()
        await self.inner.release(owner, keys)

    async def transfer(
        self,
        source: LeaseOwner,
        destination: LeaseOwner,
        destination_incarnation: str,
        leases: Sequence[Lease],
    ) -> tuple[Lease, ...]:
        await self.expiry.expire_due()
        return await self.inner.transfer(source, destination, destination_incarnation, leases)

    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]:
        await self.expiry.expire_due()
        return await self.inner.records(keys)

    async def aclose(self) -> None:
        await self.inner.aclose()


def conformance_factory(endpoints: Sequence[str]) -> Callable[..., object]:
    """A conformance BackendFactory: each call gets a fresh prefix on the cluster."""

    @asynccontextmanager
    async def make(
        count: int, *, clock: Callable[[], float], host_dead: float
    ) -> AsyncIterator[Sequence[LeaseBackend]]:
        prefix = new_prefix()
        expiry = FakeTimeExpiry(EtcdClient(endpoints, io_timeout=IO_TIMEOUT), clock, host_dead)
        backends = [
            ExpiringBackend(etcd_backend(endpoints, prefix, host_dead=host_dead, clock=clock), expiry)
            for _ in range(count)
        ]
        try:
            yield backends
        finally:
            for backend in backends:
                await backend.aclose()
            await expiry.client.aclose()

    return make
