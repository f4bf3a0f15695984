"""Fault injection around any lease backend: fail or stall chosen operations.

Wrap a backend, hand the wrapper to ``open_host(backend=...)``, and flip the
switches from the test. Every switch is a plain attribute so scenarios read
as what they do::

    faulty = FaultyBackend(inner)
    faulty.fail("renew")          # renewals raise BackendError from now on
    faulty.stall("acquire")       # acquisitions hang until heal("acquire")
    faulty.heal()                 # everything works again
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from ..backends.base import BackendCapabilities, HostAdvert, LeaseBackend
from ..errors import BackendError
from ..model import HostIdentity, HostRecord, HostView, Lease, LeaseOwner, LeaseRecord, LeaseRequest

OPERATIONS = ("join", "renew", "leave", "hosts", "acquire", "release", "transfer", "records")


class FaultyBackend:
    """A LeaseBackend that forwards to ``inner`` unless told to fail or stall."""

    def __init__(self, inner: LeaseBackend) -> None:
        self.inner = inner
        self.failing: set[str] = set()
        self._stalled: dict[str, anyio.Event] = {}
        self._parked: dict[str, anyio.Event] = {}
        self.calls: dict[str, int] = dict.fromkeys(OPERATIONS, 0)

    @property
    def kind(self) -> str:
        return self.inner.kind

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.inner.capabilities

    def fail(self, *operations: str) -> None:
        """Make these operations raise BackendError until healed."""
        self.failing.update(_checked(operations))

    def stall(self, *operations: str) -> None:
        """Make these operations hang until healed."""
        for op in _checked(operations):
            self._stalled.setdefault(op, anyio.Event())

    def heal(self, *operations: str) -> None:
        """Undo fail/stall for these operations (all when none are named)."""
        ops = _checked(operations) if operations else OPERATIONS
        for op in ops:
            self.failing.discard(op)
            gate = self._stalled.pop(op, None)
            if gate is not None:
                gate.set()
            self._parked.pop(op, None)

    async def wait_parked(self, operation: str) -> None:
        """Wait until a call of ``operation`` is held by a stall."""
        await self._parked.setdefault(operation, anyio.Event()).wait()

    async def _gate(self, op: str) -> None:
        self.calls[op] += 1
        gate = self._stalled.get(op)
        if gate is not None:
            self._parked.setdefault(op, anyio.Event()).set()
            await gate.wait()
        if op in self.failing:
            raise BackendError(f"injected fault: {op} fails")

    async def lockspace_id(self) -> str:
        return await self.inner.lockspace_id()

    async def join(self, host: HostIdentity, incarnation: str, advert: HostAdvert) -> HostRecord | None:
        await self._gate("join")
        return await self.inner.join(host, incarnation, advert)

    async def renew(self, advert: HostAdvert) -> HostRecord:
        await self._gate("renew")
        return await self.inner.renew(advert)

    async def leave(self, *, clean: bool) -> None:
        await self._gate("leave")
        await self.inner.leave(clean=clean)

    async def hosts(self) -> list[HostView]:
        await self._gate("hosts")
        return await self.inner.hosts()

    async def acquire(self, owner: LeaseOwner, requests: Sequence[LeaseRequest]) -> tuple[Lease, ...]:
        await self._gate("acquire")
        return await self.inner.acquire(owner, requests)

    async def release(self, owner: LeaseOwner, keys: Sequence[str]) -> None:
        await self._gate("release")
        await self.inner.release(owner, keys)

    async def transfer(
        self,
        source: LeaseOwner,
        destination: LeaseOwner,
        destination_incarnation: str,
        leases: Sequence[Lease],
    ) -> tuple[Lease, ...]:
        await self._gate("transfer")
        return await self.inner.transfer(source, destination, destination_incarnation, leases)

    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]:
        await self._gate("records")
        return await self.inner.records(keys)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _checked(operations: Sequence[str]) -> tuple[str, ...]:
    for op in operations:
        if op not in OPERATIONS:
            raise ValueError(f"unknown backend operation {op!r} (known: {', '.join(OPERATIONS)})")
    return tuple(operations)
