"""The domain actor: one guest's lifecycle, one message at a time.

It alone decides what its guest holds. Backend calls go through the host
(which owns the backend and refuses once its lockspace is lost). A lease
acquisition and the bookkeeping after it run shielded from cancellation, so
cancelling the caller or the host never leaves a lease taken but unrecorded.

The guest's fence target is published *before* the first lease is
requested, and an acquisition during which the host lost its lockspace ends
in LOST, never in RUNNING: however slow the storage or the state store, no
moment exists in which this domain holds a lease that a loss would not fence.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import anyio
import attrs

from ..constants import ResourceType
from ..errors import (
    BackendTimeoutError,
    GuestNotRunningError,
    InvalidParameterError,
    InvalidStateError,
    LeaseLostError,
    LeaseRequiredError,
    LockspaceLostError,
    NotSupportedError,
)
from ..events import LeasesLost as LeasesLostEvent
from ..events import MigrationSettled as MigrationSettledEvent
from ..events import MigrationStarted
from ..guest import is_running, process_start_time
from ..model import DomainIdentity, Lease, LeaseRequest, LockState, MigrationRole, Resource
from ..protocol import Outcome
from ..statestore import DomainState
from .call_result import CallResult
from .fencing import FenceTarget
from .mailbox import Actor
from .messages import (
    AcquireObject,
    AcquireResource,
    Attach,
    BindGuest,
    CompleteMigration,
    DomainStatus,
    Inquire,
    LeasesLost,
    MigrationSettled,
    PrepareMigrate,
    ReleaseAll,
    ReleaseResource,
    Shutdown,
)
from .peer_limits import check_offer
from .phases import DomainPhase, Move, next_phase
from .ports import DomainServices, MigrationHandle

log = logging.getLogger(__name__)

P = DomainPhase
T = TypeVar("T")


class DomainActor(Actor[Any]):
    """Owns one domain's registered resources, pid and leases."""

    def __init__(
        self,
        services: DomainServices,
        identity: DomainIdentity,
        state: DomainState | None = None,
        *,
        lost_reason: str = "",
    ) -> None:
        self.services = services
        self.identity = identity
        self.name = f"domain {identity.name or identity.uuid}"
        self.owner = services.owner_for(identity)
        self.phase = state.phase if state else P.UNDEFINED
        self.pid = state.pid if state else None
        self.pid_start = state.pid_start if state else None
        self.resources: dict[str, Resource] = {r.key: r for r in state.resources} if state else {}
        self.leases: dict[str, Lease] = {lease.key: lease for lease in state.leases} if state else {}
        self.lost_reason = lost_reason
        self._stopping = False
        self._outgoing: MigrationHandle | None = None
        if self.phase == P.RUNNING:
            self._publish()

    # -- dispatch ---------------------------------------------------------

    async def handle(self, message: Any) -> Any:
        match message:
            case AcquireObject():
                return await self._acquire_object(message)
            case AcquireResource(resource):
                return await self._acquire_resource(resource)
            case ReleaseResource(resource):
                return await self._release_resource(resource)
            case ReleaseAll(save_state):
                return await self._release_all(save_state=save_state)
            case Attach():
                return await self._attach()
            case BindGuest(pid):
                return await self._bind_guest(pid)
            case Shutdown():
                return await self._shutdown()
            case Inquire():
                return self._status()
            case LeasesLost(reason, action_result):
                return await self._leases_lost(reason, action_result)
            case PrepareMigrate(dest_uri):
                return await self._prepare_migrate(dest_uri)
            case CompleteMigration():
                return await self._complete_migration(message)
            case MigrationSettled():
                return await self._migration_settled(message)
        raise InvalidParameterError(f"{self.name}: unknown message {message!r}")

    def should_stop(self) -> bool:
        return self._stopping

    async def on_stop(self) -> None:
        self.services.stopped(self.identity.uuid, self)

    # -- lifecycle ----------------------------------------------------------

    async def _acquire_object(self, msg: AcquireObject) -> DomainStatus:
        after = next_phase(self.name, self.phase, Move.REGISTER if msg.register_only else Move.START)
        resources = {r.key: r for r in msg.resources}
        requests = self._requests(resources.values())
        if msg.state is not None:
            requests = _with_expected_tokens(requests, msg.state)
        if msg.pid is not None:
            start = await process_start_time(msg.pid)
            if start is None:
                raise GuestNotRunningError(f"{self.name}: guest pid {msg.pid} is not running")
            self.pid, self.pid_start = msg.pid, start
        self.resources = resources
        if msg.register_only:
            self.phase = after
            await self._save()
            return self._status()
        leases_access = self.services.leases
        losses = leases_access.losses
        before = self.phase
        leases = await self._take(requests)
        self.leases = {lease.key: lease for lease in leases}
        self.phase = after
        try:
            await self._save()
        except BackendTimeoutError:
            # Not persisted: a restarted coordinator could not fence what it
            # does not know it held. Give the leases back and fail the start.
            self.phase, held, self.leases = before, list(self.leases), {}
            try:
                await self._give_back(held)
            finally:
                self._publish()
            raise
        self._publish()
        await self._check_not_lost_since(losses)
        return self._status()

    def _require_hotplug(self) -> None:
        leases = self.services.leases
        if not leases.capabilities.hotplug:
            raise NotSupportedError(f"the {leases.backend_kind} backend does not support disk hotplug")

    async def _acquire_resource(self, resource: Resource) -> DomainStatus:
        self._require_hotplug()
        next_phase(self.name, self.phase, Move.HOTPLUG)
        if resource.key in self.resources:
            raise InvalidParameterError(f"{self.name}: {resource.key} is already registered")
        requests = self._requests([resource])
        losses = self.services.leases.losses
        if self.phase == P.RUNNING and requests:
            leases = await self._take(requests)
            self.leases.update({lease.key: lease for lease in leases})
        self.resources[resource.key] = resource
        await self._save()
        self._publish()
        if self.phase == P.RUNNING and requests:
            await self._check_not_lost_since(losses)
        return self._status()

    async def _release_resource(self, resource: Resource) -> DomainStatus:
        self._require_hotplug()
        next_phase(self.name, self.phase, Move.UNPLUG)
        if resource.key not in self.resources:
            raise InvalidParameterError(f"{self.name}: {resource.key} is not registered")
        if resource.key in self.leases:
            await self._give_back([resource.key])
            del self.leases[resource.key]
        del self.resources[resource.key]
        await self._save()
        self._publish()
        return self._status()

    async def _release_all(self, *, save_state: bool) -> LockState | None:
        if self.phase != P.RUNNING:
            # Nothing held: libvirt pauses guests in any state, and gets an empty state back.
            return LockState() if save_state else None
        after = next_phase(self.name, self.phase, Move.PAUSE)
        state = LockState.of(self.leases.values())
        await self._give_back(list(self.leases))
        self.leases = {}
        self.phase = after
        await self._save()
        self._publish()
        return state if save_state else None

    async def _attach(self) -> int:
        if self.phase == P.UNDEFINED:
            raise InvalidStateError(f"{self.name}: no running guest to attach to (nothing persisted)")
        if self.phase == P.LOST:
            raise LeaseLostError(f"{self.name}: leases were lost ({self.lost_reason})", list(self.leases))
        if self.phase == P.MIGRATED:
            raise LeaseLostError(f"{self.name}: its leases migrated to another host; it must not run here")
        if self.pid is None:
            raise InvalidStateError(f"{self.name}: no guest pid was registered")
        if not await is_running(self.pid, self.pid_start):
            raise GuestNotRunningError(f"{self.name}: guest pid {self.pid} is not running")
        if self.phase == P.RUNNING:
            await self._verify_held()
        return self.pid

    async def _bind_guest(self, pid: int) -> DomainStatus:
        """Record the guest its supervisor started, as a start with ``pid`` would."""
        start = await process_start_time(pid)
        if start is None:
            raise GuestNotRunningError(f"{self.name}: guest pid {pid} is not running")
        self.pid, self.pid_start = pid, start
        if self.phase != P.UNDEFINED:
            await self._save()
        self._publish()
        return self._status()

    async def _shutdown(self) -> None:
        if self._migrating_out():
            raise InvalidStateError(f"{self.name} is migrating: complete or cancel the migration first")
        after = next_phase(self.name, self.phase, Move.SHUTDOWN)
        keys = list(self.leases)
        if keys:
            await self._give_back(keys)
        self.leases = {}
        self.phase = after
        self._publish()
        deleting = self.services.store.delete_domain(self.identity.uuid)
        await self._bounded_store_write("deleting its state", deleting)
        self._stopping = True

    async def _leases_lost(self, reason: str, action_result: str) -> None:
        if self.phase != P.RUNNING:
            return
        await self._mark_lost(f"{reason}; failure action: {action_result}")

    async def _mark_lost(self, reason: str) -> None:
        self.phase = next_phase(self.name, self.phase, Move.LOSE)
        self.lost_reason = reason
        log.error("%s: leases lost (%s)", self.name, reason)
        # Reported before the save: a state_dir write may wait behind a
        # saturated worker pool, and the loss is decided already.
        keys = tuple(sorted(self.leases))
        host = self.services.host_name
        self.services.emit(LeasesLostEvent(host=host, domain=self.identity.uuid, keys=keys, reason=reason))
        await self._save()

    # -- migration ------------------------------------------------------------

    def _migrating_out(self) -> bool:
        return self._outgoing is not None and not self._outgoing.finished

    def _check_host_live(self) -> None:
        if not self.services.leases.live:
            # Its guest is being fenced: nothing it holds may be offered to a peer.
            raise LockspaceLostError(f"{self.name}: host {self.services.host_name} has lost its lockspace")

    async def _prepare_migrate(self, dest_uri: str) -> CallResult:
        migrations = self.services.migrations
        migrations.require_peer_service()
        next_phase(self.name, self.phase, Move.PREPARE_MIGRATION)
        self._check_host_live()
        if self._migrating_out():
            raise InvalidStateError(f"{self.name} is already migrating")
        offer = LockState.of(self.leases.values())
        check_offer(offer)  # a refusal here, not a peer that never answers
        peer = await migrations.resolve_peer(dest_uri)
        # The lookup read the lockspace, which may have stalled past the expiry.
        self._check_host_live()
        next_phase(self.name, self.phase, Move.PREPARE_MIGRATION)
        handle, result = await migrations.start_outgoing(self.identity, offer, peer)
        self._outgoing = handle
        self.services.emit(
            MigrationStarted(host=self.services.host_name, domain=self.identity.uuid, destination=peer.name)
        )
        return result

    async def _complete_migration(self, msg: CompleteMigration) -> CallResult:
        incoming = self.services.migrations.incoming_for(self.identity.uuid, finished=not msg.commit)
        outgoing = self._outgoing
        superseded = incoming is not None and outgoing is not None and incoming.serial > outgoing.serial
        if outgoing is not None and outgoing.finished and superseded:
            # It migrated out and is coming back: the call is the new migration's.
            self._outgoing = outgoing = None
        if outgoing is not None:
            # Running, or finished and answering late calls from its outcome.
            return await outgoing.complete(commit=msg.commit)
        if incoming is None:
            if msg.commit:
                raise InvalidStateError(f"{self.name}: no migration in progress")
            return CallResult.nothing_to_cancel()
        if msg.commit:
            await self._register_incoming(incoming, msg)
        return await incoming.complete(commit=msg.commit)

    async def _register_incoming(self, incoming: MigrationHandle, msg: CompleteMigration) -> None:
        """The destination's guest must register exactly the leases the source offered."""
        offered = incoming.offered
        wanted = {r.key for r in self._requests(msg.resources)} if msg.resources else None
        if offered is not None and wanted is not None:
            keys = {lease.key for lease in offered.leases}
            if keys != wanted:
                raise InvalidParameterError(
                    f"{self.name}: registered resources need leases {sorted(wanted)}, "
                    f"the source offers {sorted(keys)}"
                )
        if self.phase in (P.UNDEFINED, P.STOPPED, P.MIGRATED):
            # MIGRATED: it migrated away and comes back as a new guest process.
            await self._acquire_object(AcquireObject(msg.resources, msg.pid, register_only=True))

    async def _migration_settled(self, msg: MigrationSettled) -> None:
        committed = msg.outcome is Outcome.COMMITTED
        self.services.emit(
            MigrationSettledEvent(
                host=self.services.host_name,
                domain=self.identity.uuid,
                role=msg.role,
                outcome=msg.outcome,
                migration_id=msg.migration_id,
            )
        )
        if msg.role is MigrationRole.SOURCE:
            if committed:
                self.phase = next_phase(self.name, self.phase, Move.MIGRATED_OUT)
                self.leases = {}
                self.services.release_guest(self.identity.uuid)
                await self._save()
                self._publish()
            return
        # A settled incoming migration is newer than any outgoing one: that is history.
        if self._outgoing is not None and self._outgoing.finished:
            self._outgoing = None
        if committed and msg.lock_state is not None:
            self.phase = next_phase(self.name, self.phase, Move.MIGRATED_IN)
            self.leases = {lease.key: lease for lease in msg.lock_state.leases}
            await self._save()
            self._publish()

    # -- helpers ------------------------------------------------------------

    def _requests(self, resources: Iterable[Resource]) -> list[LeaseRequest]:
        """Which leases the resources need, by libvirt's rules."""
        locking = self.services.locking
        resources = list(resources)
        requests = []
        for r in resources:
            if r.readonly:
                continue
            if r.type is ResourceType.DISK and not locking.auto_disk_leases:
                continue
            requests.append(LeaseRequest(r.key, r.mode))
        if locking.leases_required and not locking.auto_disk_leases:
            writable = [r for r in resources if r.type is ResourceType.DISK and not r.readonly]
            has_lease = any(r.type is ResourceType.LEASE for r in resources) or any(
                r.type is ResourceType.LEASE for r in self.resources.values()
            )
            if writable and not has_lease:
                raise LeaseRequiredError(
                    f"{self.name}: writable disk {writable[0].name} needs a lease "
                    "(require_lease_for_disks is on and auto_disk_leases is off)"
                )
        return requests

    async def _take(self, requests: list[LeaseRequest]) -> tuple[Lease, ...]:
        """Acquire all-or-nothing; an unknown outcome is undone before raising.

        The fence target covering the requested keys is published first: a
        loss while the request is in flight (or before the caller records
        its outcome) fences the guest too.
        """
        if not requests:
            return ()
        keys = tuple(sorted(set(self.leases) | {r.key for r in requests}))
        self.services.fences.publish(
            self.identity.uuid, FenceTarget(self.identity, self.pid, self.pid_start, keys)
        )
        io_timeout = self.services.io_timeout
        acquiring = self.services.leases.acquire(self.owner, requests)
        try:
            leases = await self._shielded_io(acquiring, immediate=self.services.immediate_leases)
        except (TimeoutError, BackendTimeoutError):
            # The backend may have written the leases before we stopped
            # waiting; release is idempotent, so undo unconditionally.
            try:
                await self._give_back([r.key for r in requests])
            finally:
                self._publish()
            raise BackendTimeoutError(
                f"{self.name}: acquiring leases took longer than io_timeout={io_timeout}s"
            ) from None
        except BaseException:
            self._publish()
            raise
        return leases

    async def _check_not_lost_since(self, losses: int) -> None:
        """Fail an acquisition during which the host lost its lockspace (the guest is being fenced)."""
        leases = self.services.leases
        if leases.losses == losses and leases.live:
            return
        # The target stays published: the loss fences it (or already did).
        await self._mark_lost("the host lost its lockspace while the leases were being acquired")
        raise LeaseLostError(f"{self.name}: {self.lost_reason}", sorted(self.leases))

    async def _give_back(self, keys: list[str]) -> None:
        releasing = self.services.leases.release(self.owner, keys)
        try:
            await self._shielded_io(releasing, immediate=self.services.immediate_leases)
        except TimeoutError:
            raise BackendTimeoutError(
                f"{self.name}: releasing {', '.join(keys)} took longer than "
                f"io_timeout={self.services.io_timeout}s"
            ) from None

    async def _verify_held(self) -> None:
        records = {r.key: r for r in await self.services.leases.records(list(self.leases))}
        missing = []
        for key, lease in self.leases.items():
            record = records.get(key)
            mine = record.held_by(self.owner) if record else None
            if mine is None or mine.token != lease.token:
                missing.append(key)
        if missing:
            self.phase = next_phase(self.name, self.phase, Move.LOSE)
            self.lost_reason = "lease records no longer name this domain"
            await self._save()
            raise LeaseLostError(f"{self.name}: leases lost: {', '.join(missing)}", missing)

    async def _save(self) -> None:
        state = DomainState(
            identity=self.identity,
            phase=self.phase,
            pid=self.pid,
            pid_start=self.pid_start,
            resources=tuple(self.resources[k] for k in sorted(self.resources)),
            leases=tuple(self.leases[k] for k in sorted(self.leases)),
        )
        await self._bounded_store_write("saving its state", self.services.store.save_domain(state))

    async def _bounded_store_write(self, what: str, write: Awaitable[None]) -> None:
        """Shielded from cancellation (the write records what the guest holds), but bounded by io_timeout."""
        try:
            await self._shielded_io(write, immediate=self.services.immediate_store)
        except TimeoutError:
            raise BackendTimeoutError(
                f"{self.name}: the state store took longer than io_timeout={self.services.io_timeout}s {what}"
            ) from None

    async def _shielded_io(self, call: Awaitable[T], *, immediate: bool) -> T:
        """``call`` shielded from cancellation and bounded by io_timeout; TimeoutError past it.

        What lease and state calls do must not be cut in half by a cancelled
        caller or host. One cancel scope does both jobs: its deadline still
        cancels what it shields. An ``immediate`` call never suspends, so
        nothing could land inside it: it gets no scope at all.
        """
        if immediate:
            return await call
        deadline = anyio.current_time() + self.services.io_timeout
        with anyio.CancelScope(shield=True, deadline=deadline):
            return await call
        # Only the scope's own deadline can have cancelled what it shields.
        raise TimeoutError

    def _publish(self) -> None:
        target = None
        if self.phase in (P.RUNNING, P.LOST) and self.leases:
            target = FenceTarget(self.identity, self.pid, self.pid_start, tuple(sorted(self.leases)))
        self.services.fences.publish(self.identity.uuid, target)

    def _status(self) -> DomainStatus:
        return DomainStatus(
            uuid=self.identity.uuid,
            name=self.identity.name,
            phase=self.phase,
            pid=self.pid,
            resources=tuple(self.resources[k] for k in sorted(self.resources)),
            leases=tuple(self.leases[k] for k in sorted(self.leases)),
            lost_reason=self.lost_reason,
            unfenceable=self.services.fences.unfenceable(self.identity.uuid),
        )


def _with_expected_tokens(requests: list[LeaseRequest], state: LockState) -> list[LeaseRequest]:
    tokens = {lease.key: lease.token for lease in state.leases}
    wanted = {r.key for r in requests}
    if set(tokens) != wanted:
        raise InvalidParameterError(
            "lock state does not match the registered resources: "
            f"state has {sorted(tokens)}, resources need {sorted(wanted)}"
        )
    return [attrs.evolve(r, expect_token=tokens[r.key]) for r in requests]
