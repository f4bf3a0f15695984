"""The one interface every lease backend implements.

A backend instance belongs to one host (the host actor owns it). Many
instances, in one process or on many machines, share one *lockspace*: the
memory registry, a directory, an etcd cluster. Contract, checked by
``actorlock.testing.conformance``:

* ``acquire`` is all-or-nothing: every request is granted or none is, and a
  refusal names the busy resource and its holders.
* Each granted acquisition bumps the resource's fencing token; tokens only
  grow and are never reused, even after the record has no holders.
* A holder whose host stopped renewing may be displaced only once this
  observer has seen that host's record unchanged for ``host_dead`` seconds on
  its own clock (no clock sync between hosts is assumed).
* ``release`` removes only the caller's own holder entries and is idempotent.
* Nothing is written when an operation raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs

from ..model import (
    Holder,
    HostIdentity,
    HostRecord,
    HostState,
    HostView,
    Lease,
    LeaseOwner,
    LeaseRecord,
    LeaseRequest,
)


@attrs.frozen
class BackendCapabilities:
    """Optional features; a missing one answers with NotSupportedError."""

    hotplug: bool = True
    migration: bool = True


@attrs.frozen
class HostAdvert:
    """What a host publishes next to its liveness record for its peers."""

    boot_id: str = ""
    renewed_monotonic: float = 0.0
    peer_endpoint: str = ""
    public_key: str = ""

    def renewal_of(self, record: HostRecord) -> HostRecord:
        """``record`` renewed with this advert: counter bumped, live, advert fields current."""
        return attrs.evolve(
            record,
            counter=record.counter + 1,
            state=HostState.LIVE,
            boot_id=self.boot_id,
            renewed_monotonic=self.renewed_monotonic,
            peer_endpoint=self.peer_endpoint,
            public_key=self.public_key,
        )


def holder_fields(holder: Holder) -> dict[str, object]:
    """The fields a stored lease record keeps per holder (the file and etcd backends store the same)."""
    return {
        "host": holder.owner.host,
        "host_id": holder.owner.host_id,
        "domain": holder.owner.domain,
        "domain_name": holder.owner.domain_name,
        "mode": holder.mode.value,
        "token": holder.token,
        "incarnation": holder.incarnation,
    }


@runtime_checkable
class LeaseBackend(Protocol):
    """Storage of lease records and host liveness records for one host."""

    @property
    def kind(self) -> str:
        """Backend name as configured: "memory", "file", "nop", ..."""
        ...

    @property
    def capabilities(self) -> BackendCapabilities: ...

    async def lockspace_id(self) -> str:
        """A stable identifier of the shared lockspace (same for every host in it)."""
        ...

    async def join(self, host: HostIdentity, incarnation: str, advert: HostAdvert) -> HostRecord | None:
        """Write this host's liveness record and return the one it replaced.

        A record for the same id with another incarnation that is still live
        (it changed within ``host_dead``) raises HostIdInUseError; the backend
        may wait up to ``host_dead`` to find out. The same incarnation (a
        restart that resumes) or a cleanly left record is taken at once.
        """
        ...

    async def renew(self, advert: HostAdvert) -> HostRecord:
        """Prove liveness: rewrite the record with a bumped counter."""
        ...

    async def leave(self, *, clean: bool) -> None:
        """Stop being a member. ``clean`` marks the record LEFT (only when holding nothing)."""
        ...

    async def hosts(self) -> list[HostView]:
        """Every host record, judged alive or not by this observer."""
        ...

    async def acquire(self, owner: LeaseOwner, requests: Sequence[LeaseRequest]) -> tuple[Lease, ...]:
        """Take every requested lease or none (ResourceBusyError / StaleLockStateError)."""
        ...

    async def release(self, owner: LeaseOwner, keys: Sequence[str]) -> None:
        """Drop ``owner``'s holder entries for ``keys``; absent ones are ignored."""
        ...

    async def transfer(
        self,
        source: LeaseOwner,
        destination: LeaseOwner,
        destination_incarnation: str,
        leases: Sequence[Lease],
    ) -> tuple[Lease, ...]:
        """The migration commit: move ``leases`` from ``source`` (this host) to ``destination``.

        One compare-and-swap: every lease must be held by ``source`` with its
        exact mode and token, each becomes the destination's with a fresh
        token, all at once or not at all (LeaseLostError/StaleLockStateError).
        Retrying a transfer that already happened returns the same leases.
        A backend without migration raises NotSupportedError.
        """
        ...

    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]:
        """Lease records for ``keys`` (all records when None), sorted by key."""
        ...

    async def aclose(self) -> None:
        """Release OS resources (file descriptors, connections). Idempotent."""
        ...
