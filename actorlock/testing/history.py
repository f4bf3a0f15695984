"""What happened in a simulated cluster, on one clock: the safety checker's input.

A simulator records every step that matters for safety as a frozen event
(past tense: ``LeaseAcquired``, ``GuestWrote``...) with ``time`` taken from
one clock shared by every simulated host. Two sources feed a history:

- the hosts themselves, through their event sink: pass ``history.sink()`` as
  ``open_host(event_sink=...)`` and :meth:`History.record_host_event` turns
  ``acquire``, ``release``, ``failure_action``... into records (kinds it does
  not know become :class:`HostEvent`, so nothing is lost);
- the simulator, for what only it can see: guests starting, writing and
  stopping, crashes it injected, faults it healed, refusals it got back.

Keys are lease keys as :attr:`actorlock.model.Resource.key` spells them
(``disk:/d/1.img``, ``lease:space/name``); a guest's "disks" are the lease
keys it depends on. Guests are named by ``(host, domain uuid)``: a migrating
domain has the same uuid on both hosts but is two guests.

Events at the same ``time`` keep the order they were appended in, and that
order is taken as the order they happened in (a fake clock that does not
advance between steps still yields a meaningful history).

Example::

    history = History()
    async with actorlock.open_host(cfg, event_sink=history.sink()) as host:
        await host.domain("u1").start([actorlock.disk("/d/1.img")])
        history.append(GuestStarted(anyio.current_time(), host.name, "u1", exclusive=["disk:/d/1.img"]))
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import anyio
import attrs

from .. import events as host_events
from ..errors import ResourceBusyError
from ..events import EventSink
from ..model import Lease, LeaseMode

__all__ = [
    "AcquireRefused",
    "CoordinatorCrashed",
    "EventSink",
    "FailureActionRan",
    "FaultInjected",
    "FaultsHealed",
    "GuestDisksChanged",
    "GuestStarted",
    "GuestStopped",
    "GuestWrote",
    "History",
    "HistoryEvent",
    "HostCrashed",
    "HostEvent",
    "HostFrozen",
    "HostJoined",
    "HostRecovered",
    "HostThawed",
    "LeaseAcquired",
    "LeaseHeld",
    "LeaseLost",
    "LeaseReleased",
    "LeasesTransferred",
    "LockspaceLost",
    "LockspaceRegained",
    "MigrationCancelled",
    "StopReason",
    "TransferredLease",
    "WriteRefused",
]

E = TypeVar("E", bound="HistoryEvent")


def _keys(value: Iterable[str]) -> tuple[str, ...]:
    # Sorted and deduplicated so equal sets compare equal and print stably.
    return tuple(sorted(set(value)))


def _leases(value: Iterable[Lease]) -> tuple[Lease, ...]:
    return tuple(value)


def _transferred(value: Iterable[TransferredLease]) -> tuple[TransferredLease, ...]:
    return tuple(value)


def _pairs(value: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((str(host), str(domain)) for host, domain in value)


@attrs.frozen
class HistoryEvent:
    """Base of every record.

    Attributes:
        time: when it happened, on the history's one clock.
    """

    time: float

    @property
    def hosts(self) -> tuple[str, ...]:
        """The hosts this event is about (used by :meth:`History.of`)."""
        host = getattr(self, "host", None)
        return (host,) if isinstance(host, str) else ()

    @property
    def domains(self) -> tuple[str, ...]:
        """The domain uuids this event is about (used by :meth:`History.of`)."""
        domain = getattr(self, "domain", None)
        return (domain,) if isinstance(domain, str) else ()


# --- what hosts report through their event sink ---------------------------


@attrs.frozen
class HostJoined(HistoryEvent):
    """A host coordinator joined the lockspace (sink kind ``joined``)."""

    host: str
    incarnation: str = ""
    resumed: bool = False


@attrs.frozen
class LockspaceLost(HistoryEvent):
    """A host stopped renewing in time and no longer grants leases (``lockspace_lost``)."""

    host: str
    reason: str = ""


@attrs.frozen
class LockspaceRegained(HistoryEvent):
    """A host renews again after a lockspace loss (``lockspace_regained``)."""

    host: str


@attrs.frozen
class LeaseAcquired(HistoryEvent):
    """A domain was granted leases, each with its fencing token (``acquire``)."""

    host: str
    domain: str
    leases: tuple[Lease, ...] = attrs.field(converter=_leases)


@attrs.frozen
class LeaseReleased(HistoryEvent):
    """A domain gave leases back (``release``)."""

    host: str
    domain: str
    keys: tuple[str, ...] = attrs.field(converter=_keys)


@attrs.frozen
class LeaseLost(HistoryEvent):
    """A host declared a domain's leases lost (``leases_lost``).

    Attributes:
        keys: the keys lost; empty means every lease the domain held on the host
            (the host sink does not name them).
    """

    host: str
    domain: str
    keys: tuple[str, ...] = attrs.field(default=(), converter=_keys)
    reason: str = ""


@attrs.frozen
class FailureActionRan(HistoryEvent):
    """A host ran (or gave up running) a guest's failure action (``failure_action``)."""

    host: str
    domain: str
    action: str = ""
    result: str = ""


@attrs.frozen
class HostEvent(HistoryEvent):
    """A sink event this module has no record for, kept as it came."""

    host: str
    kind: str
    fields: Mapping[str, Any] = attrs.field(factory=dict)


# --- leases as the simulator sees them ------------------------------------


@attrs.frozen
class TransferredLease:
    """One lease moved by a transfer: its token before and the one issued for it."""

    key: str
    mode: LeaseMode
    old_token: int
    new_token: int


@attrs.frozen
class LeasesTransferred(HistoryEvent):
    """Leases moved atomically from one owner to another (the migration switchover)."""

    from_host: str
    from_domain: str
    to_host: str
    to_domain: str
    leases: tuple[TransferredLease, ...] = attrs.field(converter=_transferred)

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.from_host, self.to_host)

    @property
    def domains(self) -> tuple[str, ...]:
        return (self.from_domain, self.to_domain)


@attrs.frozen
class AcquireRefused(HistoryEvent):
    """An acquisition of ``key`` was refused because of the named holders.

    Attributes:
        host: the host that asked.
        domain: the domain it asked for.
        key: the busy lease key.
        holders: ``(host, domain)`` of each holder the refusal named.
    """

    host: str
    domain: str
    key: str
    holders: tuple[tuple[str, str], ...] = attrs.field(converter=_pairs)

    @classmethod
    def from_error(cls, time: float, host: str, domain: str, error: ResourceBusyError) -> AcquireRefused:
        """The record of a :class:`~actorlock.errors.ResourceBusyError` the simulator caught."""
        return cls(time, host, domain, error.resource, error.holders)

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.host, *(h for h, _ in self.holders))


@attrs.frozen
class LeaseHeld(HistoryEvent):
    """A snapshot of one holder entry read from the lockspace records."""

    key: str
    holder_host: str
    holder_domain: str
    mode: LeaseMode = LeaseMode.EXCLUSIVE
    token: int = 0

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.holder_host,)

    @property
    def domains(self) -> tuple[str, ...]:
        return (self.holder_domain,)


@attrs.frozen
class MigrationCancelled(HistoryEvent):
    """A migration of ``domain`` away from ``source_host`` was cancelled and has settled.

    Record it once the outcome is final (the source guest may resume), not
    when the cancellation was first asked for.

    Attributes:
        leases: what the source owned when the migration began.
    """

    domain: str
    source_host: str
    leases: tuple[Lease, ...] = attrs.field(converter=_leases)
    dest_host: str = ""

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.source_host, self.dest_host) if self.dest_host else (self.source_host,)


# --- guests -------------------------------------------------------------------


class StopReason(enum.Enum):
    """Why a guest stopped running (writing)."""

    SHUTDOWN = "shutdown"
    FENCED = "fenced"  # killed by the failure action
    PAUSED = "paused"  # paused (by libvirt or the failure action); a resume is a new GuestStarted
    HOST_DIED = "host died"
    MIGRATED = "migrated"  # the source side of a completed migration


@attrs.frozen
class GuestStarted(HistoryEvent):
    """A guest began running (and may write) on the given disks."""

    host: str
    domain: str
    exclusive: tuple[str, ...] = attrs.field(default=(), converter=_keys)
    shared: tuple[str, ...] = attrs.field(default=(), converter=_keys)


@attrs.frozen
class GuestDisksChanged(HistoryEvent):
    """A running guest's disks after a hotplug or unplug (the full new sets)."""

    host: str
    domain: str
    exclusive: tuple[str, ...] = attrs.field(default=(), converter=_keys)
    shared: tuple[str, ...] = attrs.field(default=(), converter=_keys)


@attrs.frozen
class GuestStopped(HistoryEvent):
    """A guest stopped running: it writes nothing from now on."""

    host: str
    domain: str
    reason: StopReason = StopReason.SHUTDOWN


@attrs.frozen
class GuestWrote(HistoryEvent):
    """Storage accepted a write from a guest, stamped with a fencing token.

    Attributes:
        disk: the lease key of the disk written.
        token: the fencing token the write carried.
        mode: the mode the guest holds the disk in; writes among shared
            holders carry unrelated tokens and are not ordered by them.
    """

    host: str
    domain: str
    disk: str
    token: int
    mode: LeaseMode = LeaseMode.EXCLUSIVE


@attrs.frozen
class WriteRefused(HistoryEvent):
    """Storage that checks fencing tokens refused a write: its token is older than the disk's."""

    host: str
    domain: str
    disk: str
    token: int
    current: int  # the disk's token at the time


# --- faults ---------------------------------------------------------------


@attrs.frozen
class HostCrashed(HistoryEvent):
    """The whole host died: its guests with it, its coordinator stops renewing."""

    host: str


@attrs.frozen
class CoordinatorCrashed(HistoryEvent):
    """Only the coordinator process died: the host's guests keep running."""

    host: str


@attrs.frozen
class HostFrozen(HistoryEvent):
    """The whole host stopped executing (a hypervisor pause): its guests, coordinator and supervisors."""

    host: str


@attrs.frozen
class HostThawed(HistoryEvent):
    """A frozen host runs again."""

    host: str


@attrs.frozen
class HostRecovered(HistoryEvent):
    """A crashed host (or coordinator) is back and renewing again."""

    host: str


@attrs.frozen
class FaultInjected(HistoryEvent):
    """A fault began (storage failing or stalling, a partition...); lasts until FaultsHealed."""

    fault: str
    host: str = ""


@attrs.frozen
class FaultsHealed(HistoryEvent):
    """Every injected fault is gone (crashed hosts stay down)."""


# --- the container ----------------------------------------------------------


class History:
    """Events of one run, kept in time order (ties in append order).

    Appending is cheap; the time-ordered view is sorted once after a change
    (a simulator on one clock appends in order, so usually no sort at all).
    """

    def __init__(self, events: Iterable[HistoryEvent] = ()) -> None:
        self._events: list[HistoryEvent] = []
        self._ordered = True
        self._view: tuple[HistoryEvent, ...] | None = None
        self.extend(events)

    def append(self, event: HistoryEvent) -> None:
        """Record one event."""
        if self._events and event.time < self._events[-1].time:
            self._ordered = False
        self._events.append(event)
        self._view = None

    def extend(self, events: Iterable[HistoryEvent]) -> None:
        """Record several events."""
        for event in events:
            self.append(event)

    @property
    def events(self) -> tuple[HistoryEvent, ...]:
        """Every event in time order; equal times keep their append order."""
        if self._view is None:
            if not self._ordered:
                self._events.sort(key=_time)  # stable: ties keep append order
                self._ordered = True
            self._view = tuple(self._events)
        return self._view

    def __iter__(self) -> Iterator[HistoryEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self._events)

    def of(self, kind: type[E], *, host: str | None = None, domain: str | None = None) -> list[E]:
        """Events of one class (subclasses included), optionally about a host and a domain."""
        return [
            e
            for e in self.events
            if isinstance(e, kind)
            and (host is None or host in e.hosts)
            and (domain is None or domain in e.domains)
        ]

    def filter(self, predicate: Callable[[HistoryEvent], bool]) -> list[HistoryEvent]:
        """Events for which ``predicate`` is true, in time order."""
        return [e for e in self.events if predicate(e)]

    def between(self, start: float, end: float) -> list[HistoryEvent]:
        """Events with ``start <= time <= end``, in time order."""
        return [e for e in self.events if start <= e.time <= end]

    def record_host_event(self, event: host_events.HostEvent, time: float) -> HistoryEvent:
        """Convert one host event into a record, append it and return it.

        Kinds this module has no record for become :class:`HostEvent`.
        """
        record = _convert(event, time)
        self.append(record)
        return record

    def sink(self, clock: Callable[[], float] = anyio.current_time) -> EventSink:
        """A callable to pass as ``open_host(event_sink=...)``; times come from ``clock``."""

        def record(event: host_events.HostEvent) -> None:
            self.record_host_event(event, clock())

        return record


def _time(event: HistoryEvent) -> float:
    return event.time


def _convert(event: host_events.HostEvent, time: float) -> HistoryEvent:
    host = event.host
    match event:
        case host_events.Joined(incarnation=incarnation, resumed=resumed):
            return HostJoined(time, host, incarnation, resumed)
        case host_events.LeasesAcquired(owner=owner, leases=leases):
            return LeaseAcquired(time, owner.host, owner.domain, leases)
        case host_events.LeasesReleased(owner=owner, keys=keys):
            return LeaseReleased(time, owner.host, owner.domain, keys)
        case host_events.LockspaceLost(reason=reason):
            return LockspaceLost(time, host, reason)
        case host_events.LockspaceRegained():
            return LockspaceRegained(time, host)
        case host_events.FailureActionRan(domain=domain, action=action, result=result):
            return FailureActionRan(time, host, domain, action, result)
        case host_events.LeasesLost(domain=domain, keys=keys, reason=reason):
            return LeaseLost(time, host, domain, keys, reason)
    return HostEvent(time, host, event.kind, event.fields())
