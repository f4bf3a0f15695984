"""Messages a domain actor handles. Commands are imperative, events past tense."""

from __future__ import annotations

import attrs

from ..model import Lease, LockState, MigrationRole, Resource
from ..protocol.messages import Outcome
from ..statestore import DomainPhase


@attrs.frozen
class AcquireObject:
    """Start (or resume) the guest: take leases for every registered resource."""

    resources: tuple[Resource, ...]
    pid: int | None = None
    register_only: bool = False
    state: LockState | None = None


@attrs.frozen
class AcquireResource:
    """Hotplug: lease one more resource for a running guest."""

    resource: Resource


@attrs.frozen
class ReleaseResource:
    """Unplug: give back one resource's lease."""

    resource: Resource


@attrs.frozen
class ReleaseAll:
    """Pause: give back every lease, returning the lock state to resume with."""

    save_state: bool = True


@attrs.frozen
class Attach:
    """Re-attach after a coordinator restart; answers the guest pid (get_child)."""


@attrs.frozen
class BindGuest:
    """The guest now runs as ``pid`` (started by its supervisor): fence and persist it."""

    pid: int


@attrs.frozen
class Shutdown:
    """The guest stopped: release everything and forget the domain."""


@attrs.frozen
class Inquire:
    """Answer a :class:`DomainStatus` snapshot."""


@attrs.frozen
class LeasesLost:
    """The host lost its lockspace; the failure action has run (or was ignored)."""

    reason: str
    action_result: str


@attrs.frozen
class DomainStatus:
    uuid: str
    name: str
    phase: DomainPhase
    pid: int | None
    resources: tuple[Resource, ...]
    leases: tuple[Lease, ...]
    lost_reason: str = ""
    unfenceable: bool = False  # holds leases under poweroff with no guest pid: a loss cannot kill it


@attrs.frozen
class PrepareMigrate:
    """Source: offer this running guest's leases to the coordinator at ``dest_uri``."""

    dest_uri: str


@attrs.frozen
class CompleteMigration:
    """Either side: commit (or cancel) the migration in progress.

    The destination registers ``resources`` and ``pid`` first if it has not.
    """

    commit: bool
    resources: tuple[Resource, ...] = ()
    pid: int | None = None


@attrs.frozen
class MigrationSettled:
    """A migration's final outcome, from its driver: update what the domain holds."""

    migration_id: str
    role: MigrationRole
    outcome: Outcome
    lock_state: LockState | None
