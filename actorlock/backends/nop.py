"""The ``nop`` backend: accepts everything and locks nothing (libvirt's nop driver)."""

from __future__ import annotations

from collections.abc import Sequence

from ..model import HostIdentity, HostRecord, HostView, Lease, LeaseOwner, LeaseRecord, LeaseRequest
from .base import BackendCapabilities, HostAdvert


class NopLeaseBackend:
    kind = "nop"
    capabilities = BackendCapabilities()

    def __init__(self) -> None:
        self._record: HostRecord | None = None

    async def lockspace_id(self) -> str:
        return "nop"

    async def join(self, host: HostIdentity, incarnation: str, advert: HostAdvert) -> HostRecord | None:
        self._record = HostRecord(host.name, host.id, incarnation, 1, boot_id=advert.boot_id)
        return None

    async def renew(self, advert: HostAdvert) -> HostRecord:
        assert self._record is not None
        return self._record

    async def leave(self, *, clean: bool) -> None:
        self._record = None

    async def hosts(self) -> list[HostView]:
        return []

    async def acquire(self, owner: LeaseOwner, requests: Sequence[LeaseRequest]) -> tuple[Lease, ...]:
        return tuple(Lease(r.key, r.mode, 0) for r in requests)

    async def release(self, owner: LeaseOwner, keys: Sequence[str]) -> None:
        return None

    async def transfer(
        self,
        source: LeaseOwner,
        destination: LeaseOwner,
        destination_incarnation: str,
        leases: Sequence[Lease],
    ) -> tuple[Lease, ...]:
        return tuple(leases)

    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]:
        return []

    async def aclose(self) -> None:
        return None
