"""What a host reports as it runs: one frozen record type per kind of event.

Pass a callable to ``open_host(event_sink=...)``: it is called with each
:class:`HostEvent` as it happens, from the host's own tasks, so it must not
block (append to a list, set an event, count a metric). Consumers match on
the record's type; ``kind`` is a stable short name for logs and metrics, and
:meth:`HostEvent.fields` the record's values by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from .model import Lease, LeaseOwner, MigrationRole
from .protocol.messages import Outcome

__all__ = [
    "EventSink",
    "ExpiryNoticedLate",
    "FailureActionRan",
    "FenceFailed",
    "HostEvent",
    "HostFrozen",
    "HostThawed",
    "Joined",
    "LeasesAcquired",
    "LeasesLost",
    "LeasesReleased",
    "LeasesTransferred",
    "LockspaceLost",
    "LockspaceRegained",
    "MigrationSettled",
    "MigrationStarted",
    "ResumeFailed",
]


@attrs.frozen(kw_only=True)
class HostEvent:
    """Something that happened on ``host``."""

    kind: ClassVar[str] = "event"
    host: str

    def fields(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False)


EventSink = Callable[[HostEvent], None]


@attrs.frozen(kw_only=True)
class Joined(HostEvent):
    """The host joined its lockspace (``resumed``: as the incarnation it had before a restart)."""

    kind: ClassVar[str] = "joined"
    incarnation: str
    resumed: bool


@attrs.frozen(kw_only=True)
class ResumeFailed(HostEvent):
    """A restart could not resume its incarnation before the old lease deadline."""

    kind: ClassVar[str] = "resume_failed"
    incarnation: str
    reason: str


@attrs.frozen(kw_only=True)
class LeasesAcquired(HostEvent):
    kind: ClassVar[str] = "acquire"
    owner: LeaseOwner
    leases: tuple[Lease, ...]


@attrs.frozen(kw_only=True)
class LeasesReleased(HostEvent):
    kind: ClassVar[str] = "release"
    owner: LeaseOwner
    keys: tuple[str, ...]


@attrs.frozen(kw_only=True)
class LeasesTransferred(HostEvent):
    """A migration's commit moved ``before`` (the source's) to ``after`` (the destination's)."""

    kind: ClassVar[str] = "transfer"
    source: LeaseOwner
    destination: LeaseOwner
    before: tuple[Lease, ...]
    after: tuple[Lease, ...]


@attrs.frozen(kw_only=True)
class LockspaceLost(HostEvent):
    """No successful renewal for lease_timeout: every guest holding a lease is being fenced."""

    kind: ClassVar[str] = "lockspace_lost"
    reason: str


@attrs.frozen(kw_only=True)
class LockspaceRegained(HostEvent):
    kind: ClassVar[str] = "lockspace_regained"


@attrs.frozen(kw_only=True)
class ExpiryNoticedLate(HostEvent):
    """The expiry was judged ``late`` seconds after it passed, more than scheduling_delay."""

    kind: ClassVar[str] = "expiry_noticed_late"
    late: float


@attrs.frozen(kw_only=True)
class FailureActionRan(HostEvent):
    """One attempt of the failure action on a domain's guest (``confirmed``: it is stopped)."""

    kind: ClassVar[str] = "failure_action"
    domain: str
    action: str
    result: str
    attempt: int
    confirmed: bool


@attrs.frozen(kw_only=True)
class FenceFailed(HostEvent):
    """An attempt that did not confirm the guest stopped; it is retried."""

    kind: ClassVar[str] = "fence_failed"
    domain: str
    attempt: int
    result: str


@attrs.frozen(kw_only=True)
class LeasesLost(HostEvent):
    """A domain's leases are gone (lockspace loss, records that no longer name it)."""

    kind: ClassVar[str] = "leases_lost"
    domain: str
    keys: tuple[str, ...]
    reason: str


@attrs.frozen(kw_only=True)
class MigrationStarted(HostEvent):
    kind: ClassVar[str] = "migration_started"
    domain: str
    destination: str


@attrs.frozen(kw_only=True)
class MigrationSettled(HostEvent):
    """A migration's final outcome as this host's domain actor recorded it."""

    kind: ClassVar[str] = "migration_settled"
    domain: str
    role: MigrationRole
    outcome: Outcome  # COMMITTED or CANCELLED
    migration_id: str


@attrs.frozen(kw_only=True)
class HostFrozen(HostEvent):
    """The testing kit froze the host's renewal (a SIGSTOP)."""

    kind: ClassVar[str] = "paused"


@attrs.frozen(kw_only=True)
class HostThawed(HostEvent):
    kind: ClassVar[str] = "resumed"
