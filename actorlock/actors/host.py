"""The host coordinator: builds the host's parts, owns their tasks, and is their lease access.

Parts, each in its module:
- :class:`~actorlock.actors.lifeline.Lifeline`: join, renew, notice the expiry, journal;
- :class:`~actorlock.actors.fencing.FenceBoard`: fence every published target on a loss;
- :class:`~actorlock.actors.domains.DomainRegistry`: one actor per guest;
- :class:`~actorlock.actors.migrations.MigrationRegistry` and
  :class:`~actorlock.actors.peer_service.PeerService`: migrations and peers.
Domain actors and migration drivers see the host only through the narrow
interfaces of :mod:`actorlock.actors.ports`.

Lease operations are not queued through a mailbox here: domain actors call
:meth:`HostCoordinator.acquire` directly from their own tasks, so different
domains' backend I/O overlaps. Fencing does not wait in a domain's mailbox
either (it may be stuck behind storage I/O): domain actors publish what the
fence needs, the host kills or pauses first and tells the actor after.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import anyio
import attrs
from anyio.abc import TaskGroup

from ..backends import memory as memory_backend
from ..backends.base import BackendCapabilities, LeaseBackend
from ..clock import host_clock
from ..config import Config
from ..constants import FailureAction
from ..errors import (
    ActorlockError,
    ConfigError,
    CorruptRecordError,
    CorruptStateError,
    LeaseLostError,
    LockspaceLostError,
    NotSupportedError,
)
from ..events import (
    EventSink,
    HostEvent,
    Joined,
    LeasesAcquired,
    LeasesLost,
    LeasesReleased,
    LeasesTransferred,
)
from ..model import DomainIdentity, HostIdentity, HostView, Lease, LeaseOwner, LeaseRecord, LeaseRequest
from ..statestore import DomainPhase, DomainState, StateStore
from ..statestore import completes_without_suspending as store_completes_without_suspending
from ..supervisor.service import SupervisorService
from ..supervisor.watchdog import Watchdog
from .domains import DomainRegistry
from .fencing import FenceBoard, FenceTarget
from .host_names import wait_for_name_free
from .lifeline import Lifeline, Membership, read_boot_id
from .mailbox import ActorRef
from .messages import DomainStatus
from .migrations import MigrationRegistry
from .peer_connections import PeerConnections
from .peer_directory import PeerDirectory
from .peer_service import PeerService
from .ports import DomainServices

if TYPE_CHECKING:
    from ..transport.zmq import PeerClient

__all__ = ["HostCoordinator", "HostStatus", "PauseCallback"]

log = logging.getLogger(__name__)

PauseCallback = Callable[[DomainIdentity, "int | None"], Awaitable[None]]


@attrs.frozen
class HostStatus:
    """A snapshot for operators (``actorlock leases``, metrics)."""

    identity: HostIdentity
    incarnation: str
    backend: str
    live: bool
    resumed: bool
    seconds_to_expiry: float
    renewals: int
    renew_failures: int
    domains: tuple[DomainStatus, ...]
    unfenced: tuple[tuple[str, str], ...] = ()  # (domain uuid, last attempt's result): fence not confirmed


class HostCoordinator:
    """One per host. Created and run by :func:`actorlock.open_host`."""

    def __init__(
        self,
        config: Config,
        backend: LeaseBackend,
        store: StateStore,
        task_group: TaskGroup,
        *,
        pause_callback: PauseCallback | None = None,
        event_sink: EventSink | None = None,
        clock: Callable[[], float] = host_clock,
        peer_endpoint: str = "",
        public_key: str = "",
        supervisors: SupervisorService | None = None,
    ) -> None:
        self.config = config
        self.identity = HostIdentity(config.host.name, config.host.id)
        self.backend = backend
        self.store = store
        self._tg = task_group
        self._pause_callback = pause_callback
        self._event_sink = event_sink
        self._clock = clock
        self.membership = Membership(self.identity, peer_endpoint=peer_endpoint, public_key=public_key)
        self.resumed = False
        self._started = False
        self._abandoned = False
        self.domains = DomainRegistry(task_group)
        self.fences = FenceBoard(
            host=config.host.name,
            action=config.locking.failure_action,
            fence_timeout=config.timing.fence_timeout,
            kill_grace=config.locking.kill_grace,
            task_group=task_group,
            emit=self.emit,
            pause_callback=pause_callback,
            first_result=self.domains.tell_lost,
        )
        self.lifeline = Lifeline(
            config,
            self.membership,
            backend,
            store,
            self.fences,
            emit=self.emit,
            clock=clock,
            on_renewed=self._renewed,
        )
        # Guests' supervisors (issue 9), fed the lease deadline after each renewal.
        self.supervisors = supervisors
        if supervisors is None and config.host.state_dir is not None and clock is host_clock:
            self.supervisors = SupervisorService(
                config.host.state_dir,
                host=config.host.name,
                expires_at=lambda: self.lifeline.expires_at if self.live else 0.0,
                action=config.locking.failure_action.value,
                kill_grace=config.locking.kill_grace,
                fence_timeout=config.timing.fence_timeout,
            )
        self.fences.supervisor = self.supervisors
        # The host watchdog, petted while every held lease is fresh.
        self.watchdog: Watchdog | None = None
        if config.watchdog.device is not None:
            self.watchdog = Watchdog(config.watchdog.device, host=config.host.name)
        # Peer requests and outgoing migrations read host records at most once per renewal.
        self.peers = PeerDirectory(
            lambda: self.backend.hosts(),
            lambda: self.lifeline.renewals,
            io_timeout=config.timing.io_timeout,
        )
        self.migrations = MigrationRegistry(
            config.peer,
            self.membership,
            self,
            task_group,
            settle=self.domains.settled,
            connect=self._connect,
            peers=self.peers,
            io_timeout=config.timing.io_timeout,
        )
        self.peer_service = PeerService(config.peer, self.membership, self.peers, self.migrations)
        # One connection per peer, kept across migrations (no CURVE handshake each time).
        self.connections = PeerConnections(self.peer_service.connect, task_group)
        self.domains.bind(
            DomainServices(
                leases=self,
                store=store,
                fences=self.fences,
                migrations=self.migrations,
                emit=self.emit,
                locking=config.locking,
                io_timeout=config.timing.io_timeout,
                host_name=self.identity.name,
                owner_for=self.owner_for,
                stopped=self.domains.forget,
                release_guest=self._release_guest,
                immediate_leases=memory_backend.completes_without_suspending(backend),
                immediate_store=store_completes_without_suspending(store),
            )
        )

    def _connect(self, endpoint: str, server_key: str) -> AbstractAsyncContextManager[PeerClient]:
        return self.connections.shared(endpoint, server_key)

    def _release_guest(self, uuid: str) -> None:
        """The domain's leases moved away: its supervisor no longer enforces our deadline."""
        if self.supervisors is not None:
            self.supervisors.release(uuid)

    def _renewed(self, expires_at: float) -> None:
        """After each successful renewal: neither push may wait."""
        if self.supervisors is not None:
            self.supervisors.renewed(expires_at)
        if self.watchdog is not None and not self.fences.unfenced:
            self.watchdog.pet()

    # -- public -------------------------------------------------------------

    @property
    def incarnation(self) -> str:
        return self.membership.incarnation

    @property
    def lockspace_id(self) -> str:
        return self.membership.lockspace_id

    @property
    def peer_endpoint(self) -> str:
        """Where peers reach this host (the bound endpoint); empty without a peer service."""
        return self.membership.peer_endpoint

    @property
    def backend_kind(self) -> str:
        return self.backend.kind

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.backend.capabilities

    @property
    def live(self) -> bool:
        """True while this host may hold and grant leases."""
        return self._started and self.lifeline.valid()

    @property
    def losses(self) -> int:
        """How many times this host lost its lockspace (compare it around an acquisition)."""
        return self.fences.losses

    def owner_for(self, identity: DomainIdentity) -> LeaseOwner:
        return LeaseOwner(self.identity.name, self.identity.id, identity.uuid, identity.name)

    def domain_ref(self, identity: DomainIdentity) -> ActorRef[Any]:
        """The actor for ``identity.uuid``, started on first use."""
        if not self._started:
            raise LockspaceLostError("the host coordinator is not running")
        return self.domains.ref(identity)

    def known_domains(self) -> list[str]:
        return self.domains.known()

    async def status(self) -> HostStatus:
        return HostStatus(
            identity=self.identity,
            incarnation=self.incarnation,
            backend=self.backend.kind,
            live=self.live,
            resumed=self.resumed,
            seconds_to_expiry=self.lifeline.seconds_to_expiry(),
            renewals=self.lifeline.renewals,
            renew_failures=self.lifeline.renew_failures,
            domains=tuple(await self.domains.statuses()),
            unfenced=tuple(sorted(self.fences.unfenced.items())),
        )

    async def hosts(self) -> list[HostView]:
        return await self.backend.hosts()

    # -- lease access (ports.HostLeases) -----------------------------------------

    async def acquire(self, owner: LeaseOwner, requests: Sequence[LeaseRequest]) -> tuple[Lease, ...]:
        self._check_live()
        leases = await self.backend.acquire(owner, requests)
        if not self.live:
            # Liveness ran out while we waited on storage: the guest must not start.
            with anyio.move_on_after(self.config.timing.io_timeout, shield=True):
                await self.backend.release(owner, [r.key for r in requests])
            raise LockspaceLostError(f"host {self.identity.name} lost its lockspace while acquiring")
        if self._event_sink is not None:  # the record is built only for a listener
            self.emit(LeasesAcquired(host=self.identity.name, owner=owner, leases=leases))
        return leases

    async def release(self, owner: LeaseOwner, keys: Sequence[str]) -> None:
        await self.backend.release(owner, keys)
        if self._event_sink is not None:
            self.emit(LeasesReleased(host=self.identity.name, owner=owner, keys=tuple(keys)))

    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]:
        return await self.backend.records(keys)

    async def transfer(
        self,
        source: LeaseOwner,
        destination: LeaseOwner,
        destination_incarnation: str,
        leases: Sequence[Lease],
    ) -> tuple[Lease, ...]:
        """The migration commit: one compare-and-swap in the backend (we are the source)."""
        if not self.capabilities.migration:
            raise NotSupportedError(f"the {self.backend.kind} backend does not support migration")
        self._check_live()
        actor = self.domains.actor(source.domain)
        if actor is not None and actor.phase == DomainPhase.LOST:
            # Fenced already: what it held was forfeited, not ours to hand on.
            raise LeaseLostError(f"domain {source.domain} lost its leases; nothing to transfer", [])
        moved = await self.backend.transfer(source, destination, destination_incarnation, leases)
        self.emit(
            LeasesTransferred(
                host=self.identity.name,
                source=source,
                destination=destination,
                before=tuple(leases),
                after=moved,
            )
        )
        return moved

    # -- lifetime -------------------------------------------------------------

    async def start(self) -> None:
        """Join the lockspace (resuming if we restarted in time) and start renewing.

        A coordinator that restarts on the same boot reads, before any
        lockspace I/O, when its last successful renewal started. If that is
        less than ``lease_timeout`` ago it tries to resume its incarnation,
        but its old deadline still stands: a join and renewal that do not
        complete before it (slow or stuck storage) give up, and the guests
        it left running are fenced at once. After a resume every running
        domain's leases are read back and compared, tokens included.
        """
        timing = self.config.timing
        if self.config.locking.failure_action is FailureAction.PAUSE and self._pause_callback is None:
            raise ConfigError(
                "locking.failure_action", "'pause' needs a pause_callback passed to open_host/plugin_load"
            )
        self.membership.boot_id = await anyio.to_thread.run_sync(read_boot_id)
        persisted = await self.store.load_host()
        boot_id = self.membership.boot_id
        same_boot = persisted is not None and bool(boot_id) and persisted.boot_id == boot_id
        try:
            domains = await self.store.load_domains()
        except CorruptStateError as exc:
            # Going on without a domain is safe only if its guest cannot be
            # running: after a reboot. Otherwise its leases would expire
            # under a guest nobody fences.
            rebooted = persisted is not None and bool(persisted.boot_id and boot_id) and not same_boot
            if not rebooted:
                raise CorruptStateError(
                    exc.path,
                    f"{exc.problem}; the guest it describes may still be running on this boot: "
                    "make sure it is stopped, then move the file out of the state_dir",
                    exc.readable,
                ) from exc
            log.warning("host %s: skipping unreadable state after a reboot: %s", self.identity.name, exc)
            domains = list(exc.readable)
        identity = (self.identity.name, self.identity.id)
        mine = persisted is not None and (persisted.name, persisted.id) == identity
        lost_results: dict[str, str] = {}
        if same_boot and mine and persisted is not None and persisted.renewed_at is not None:
            deadline = persisted.renewed_at + timing.lease_timeout
            if self._clock() < deadline:
                self.resumed = await self.lifeline.resume(
                    persisted.incarnation, deadline, self._start_peer_service
                )
        if not self.resumed:
            if same_boot and domains:
                # Back too late (or the resume missed its deadline) on the same
                # boot: our guests may still run although our leases expired.
                # Fence them before anything else: another host may take over
                # as soon as host_dead has passed.
                lost_results = await self._fence_persisted(domains)
            self.membership.lockspace_id = await self.backend.lockspace_id()
            await wait_for_name_free(self.backend.hosts, self.identity, poll=timing.renew_interval)
            await self._start_peer_service()
            await self.lifeline.join_fresh()
        unverified = await self._verify_resumed(domains) if self.resumed else {}
        # host.json is written by the lifeline's journal task, not awaited
        # here: a slow state_dir must not keep the renew loop from watching
        # the deadline (found by actorlock sim). A journal that lags makes a
        # later restart's deadline earlier, or its resume fail: both fence sooner.
        self._started = True
        for state in domains:
            uuid = state.identity.uuid
            reason = ""
            if state.phase == DomainPhase.RUNNING and (not self.resumed or uuid in unverified):
                state = attrs.evolve(state, phase=DomainPhase.LOST)
            if uuid in unverified:
                reason = unverified[uuid]
            elif state.phase == DomainPhase.LOST and not self.resumed:
                reason = "the coordinator was down longer than lease_timeout"
                if uuid in lost_results:
                    reason += f"; failure action: {lost_results[uuid]}"
            self.domains.spawn(state.identity, state, lost_reason=reason)
        if self.supervisors is not None:  # after the join: welcomes carry a real deadline
            await self._tg.start(self.supervisors.serve, name=f"supervisors {self.identity.name}")
        if self.watchdog is not None:
            await self._tg.start(self.watchdog.run, name=f"watchdog {self.identity.name}")
            self.watchdog.pet()
        self.lifeline.start(self._tg)
        self.emit(Joined(host=self.identity.name, incarnation=self.incarnation, resumed=self.resumed))

    async def _start_peer_service(self) -> None:
        if self.peer_service.configured and not self.membership.peer_endpoint:
            await self.peer_service.start(self._tg)

    async def _verify_resumed(self, domains: Sequence[DomainState]) -> dict[str, str]:
        """Read back the leases of every running domain; fence those that do not hold all of them.

        A crash in the middle of a transfer, or a takeover we did not see,
        leaves records that no longer name this domain with the token it
        saved. Returns the reason for each domain found lost.
        """
        running = [d for d in domains if d.phase == DomainPhase.RUNNING and d.leases]
        if not running:
            return {}
        keys = sorted({lease.key for d in running for lease in d.leases})
        reasons: dict[str, str] = {}
        records: dict[str, LeaseRecord] | None = None
        corrupt: dict[str, str] = {}
        with anyio.move_on_after(max(self.lifeline.seconds_to_expiry(), 1e-6)):
            try:
                records = {r.key: r for r in await self.backend.records(keys)}
            except CorruptRecordError:
                # One bad record must cost only the domains holding it: read key by key.
                found: dict[str, LeaseRecord] = {}
                for key in keys:
                    try:
                        found.update((r.key, r) for r in await self.backend.records([key]))
                    except CorruptRecordError as exc:
                        log.error("host %s: cannot read a lease back: %s", self.identity.name, exc)
                        corrupt[key] = str(exc)
                records = found
            except ActorlockError as exc:
                log.error("host %s: cannot read leases back after resuming: %s", self.identity.name, exc)
        for state in running:
            owner = self.owner_for(state.identity)
            bad = [corrupt[lease.key] for lease in state.leases if lease.key in corrupt]
            if records is None or bad:
                reasons[state.identity.uuid] = "its leases could not be read back after a restart" + (
                    f" ({'; '.join(bad)})" if bad else ""
                )
                continue
            missing = []
            for lease in state.leases:
                record = records.get(lease.key)
                held = record.held_by(owner) if record is not None else None
                if held is None or held.token != lease.token or held.incarnation != self.incarnation:
                    missing.append(lease.key)
            if missing:
                reasons[state.identity.uuid] = (
                    f"after a restart the lease records no longer name it: {', '.join(missing)}"
                )
        lost = [d for d in running if d.identity.uuid in reasons]
        if lost:
            results = await self._fence_persisted(lost)
            for uuid, result in results.items():
                reasons[uuid] += f"; failure action: {result}"
                self.emit(LeasesLost(host=self.identity.name, domain=uuid, keys=(), reason=reasons[uuid]))
        return reasons

    async def _fence_persisted(self, domains: Sequence[DomainState]) -> dict[str, str]:
        """Run the failure action of every guest a previous run left holding leases."""
        targets = [
            FenceTarget(
                state.identity, state.pid, state.pid_start, tuple(lease.key for lease in state.leases)
            )
            for state in domains
            if state.phase == DomainPhase.RUNNING
        ]
        return await self.fences.fence_now(targets, "the coordinator restarted past its lease deadline")

    def abandon(self) -> None:
        """Every task of this host dies now; nothing is released, nothing written on the way out.

        What a SIGKILL of the coordinator leaves (the testing kit's crash):
        the caller's ``open_host`` block is cancelled.
        """
        self._abandoned = True
        self._started = False
        self._tg.cancel_scope.cancel()

    async def stop(self) -> None:
        """Leave the lockspace; guests still holding leases keep them (re-attach later)."""
        if self._abandoned:
            with anyio.move_on_after(self.config.timing.io_timeout, shield=True):
                await self.backend.aclose()
            return
        self.lifeline.stop_renewing()
        holding = self.fences.holding or self.domains.holding()
        self._started = False
        if self.watchdog is not None:  # guests left running keep it armed
            self.watchdog.disarm = not holding
        with anyio.move_on_after(self.config.timing.io_timeout, shield=True):
            try:
                await self.backend.leave(clean=not holding)
            except ActorlockError as exc:
                log.warning("host %s: leaving the lockspace failed: %s", self.identity.name, exc)
        with anyio.move_on_after(self.config.timing.io_timeout, shield=True):
            await self.backend.aclose()

    # -- internals ---------------------------------------------------------

    def _check_live(self) -> None:
        if not self.live:
            raise LockspaceLostError(
                f"host {self.identity.name} has no valid lockspace membership (renewal failing)"
            )

    def emit(self, event: HostEvent) -> None:
        """Report an event to the configured sink (history, tests, metrics)."""
        if self._event_sink is not None:
            self._event_sink(event)
