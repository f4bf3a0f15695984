"""The host actor: owns the lease backend, proves liveness, fences on loss.

Safety rule (docs/timing.md): this host stops granting leases and runs the
failure action of every guest holding one once ``lease_timeout`` has passed
since its last successful renewal *started*; the action gets
``fence_timeout``. Other hosts take over only after seeing our record
unchanged for ``host_dead`` > lease_timeout + fence_timeout + scheduling_delay.
Deadlines are measured on :data:`actorlock.clock.host_clock` (CLOCK_BOOTTIME:
it counts a suspend), and always by reading it, never by counting timer ticks.

Lease operations are not queued through a mailbox here: domain actors call
:meth:`HostCoordinator.acquire` directly from their own tasks, so different
domains' backend I/O overlaps. Fencing does not wait in a domain's mailbox
either (it may be stuck behind storage I/O): domain actors publish what the
fence needs, the host kills or pauses first and tells the actor after.
"""

from __future__ import annotations

import contextlib
import logging
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import attrs
from anyio.abc import TaskGroup

from ..backends.base import BackendCapabilities, HostAdvert, LeaseBackend
from ..clock import host_clock
from ..config import Config
from ..constants import FailureAction
from ..errors import (
    ActorlockError,
    ConfigError,
    LeaseLostError,
    LockspaceLostError,
    NotSupportedError,
    PeerRefusedError,
    ProtocolError,
)
from ..model import (
    DomainIdentity,
    HostIdentity,
    HostState,
    HostView,
    Lease,
    LeaseOwner,
    LeaseRecord,
    LeaseRequest,
)
from ..statestore import DomainPhase, DomainState, HostPersisted, StateStore
from .domain import DomainActor
from .fencing import FenceBoard, FenceTarget
from .host_names import wait_for_name_free
from .mailbox import ActorRef, open_mailbox, run_actor
from .messages import DomainStatus, Inquire, LeasesLost, MigrationSettled
from .peer_limits import PeerDirectory, RefusalLog, admit_incoming

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from ..transport.zmq import KeyPair, PeerClient
    from .migration import MigrationDriver

log = logging.getLogger(__name__)

PauseCallback = Callable[[DomainIdentity, "int | None"], Awaitable[None]]
EventSink = Callable[[str, dict[str, Any]], None]


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


def read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


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
    ) -> None:
        self.config = config
        self.identity = HostIdentity(config.host.name, config.host.id)
        self.backend = backend
        self.store = store
        self._tg = task_group
        self._pause_callback = pause_callback
        self._event_sink = event_sink
        self._clock = clock
        self._peer_endpoint = peer_endpoint
        self._public_key = public_key
        self.incarnation = ""
        self.resumed = False
        self._boot_id = ""
        self._last_start = 0.0
        self._expires_at = 0.0
        self._journal_changed = anyio.Event()
        self._lost = False
        self._renewals = 0
        self._renew_failures = 0
        self._domains: dict[str, tuple[ActorRef[Any], DomainActor]] = {}
        self.fences = FenceBoard(
            host=config.host.name,
            action=config.locking.failure_action,
            fence_timeout=config.timing.fence_timeout,
            kill_grace=config.locking.kill_grace,
            task_group=task_group,
            emit=self.emit,
            pause_callback=pause_callback,
            first_result=self._tell_lost,
        )
        self._started = False
        self._crashed = False
        self._paused: anyio.Event | None = None
        self._renew_scope = anyio.CancelScope()
        self._keys: KeyPair | None = None
        self._migrations: dict[str, MigrationDriver] = {}
        self.lockspace_id = ""
        self.peers = PeerDirectory(lambda: self.backend.hosts(), lambda: self._renewals)
        self._refusals = RefusalLog()

    # -- public -------------------------------------------------------------

    @property
    def backend_kind(self) -> str:
        return self.backend.kind

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.backend.capabilities

    @property
    def live(self) -> bool:
        """True while this host may hold and grant leases."""
        return self._started and not self._lost and self._clock() < self._expires_at

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
        entry = self._domains.get(identity.uuid)
        if entry is None:
            entry = self._spawn(DomainActor(self, identity))
        return entry[0]

    def known_domains(self) -> list[str]:
        return sorted(self._domains)

    async def status(self) -> HostStatus:
        domains = []
        for ref, _actor in list(self._domains.values()):
            try:
                domains.append(await ref.ask(Inquire()))
            except ActorlockError:
                continue
        return HostStatus(
            identity=self.identity,
            incarnation=self.incarnation,
            backend=self.backend.kind,
            live=self.live,
            resumed=self.resumed,
            seconds_to_expiry=max(0.0, self._expires_at - self._clock()),
            renewals=self._renewals,
            renew_failures=self._renew_failures,
            domains=tuple(sorted(domains, key=lambda d: d.uuid)),
            unfenced=tuple(sorted(self.fences.unfenced.items())),
        )

    async def hosts(self) -> list[HostView]:
        return await self.backend.hosts()

    # -- used by domain actors ---------------------------------------------

    async def acquire(self, owner: LeaseOwner, requests: Sequence[LeaseRequest]) -> tuple[Lease, ...]:
        self._check_live()
        leases = await self.backend.acquire(owner, requests)
        if not self.live:
            # Liveness ran out while we waited on storage: the guest must not start.
            with anyio.move_on_after(self.config.timing.io_timeout, shield=True):
                await self.backend.release(owner, [r.key for r in requests])
            raise LockspaceLostError(f"host {self.identity.name} lost its lockspace while acquiring")
        self.emit("acquire", owner=owner, leases=leases)
        return leases

    async def release(self, owner: LeaseOwner, keys: Sequence[str]) -> None:
        await self.backend.release(owner, keys)
        self.emit("release", owner=owner, keys=tuple(keys))

    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]:
        return await self.backend.records(keys)

    def publish_fence_target(self, uuid: str, target: FenceTarget | None) -> None:
        """What a loss fences for domain ``uuid`` (None: nothing held); fenced at once while lost."""
        self.fences.publish(uuid, target)

    def domain_stopped(self, uuid: str, actor: DomainActor) -> None:
        entry = self._domains.get(uuid)
        if entry is not None and entry[1] is actor:
            del self._domains[uuid]

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
        self._boot_id = await anyio.to_thread.run_sync(read_boot_id)
        persisted = await self.store.load_host()
        domains = await self.store.load_domains()
        same_boot = persisted is not None and bool(self._boot_id) and persisted.boot_id == self._boot_id
        identity = (self.identity.name, self.identity.id)
        mine = persisted is not None and (persisted.name, persisted.id) == identity
        lost_results: dict[str, str] = {}
        if same_boot and mine and persisted is not None and persisted.renewed_at is not None:
            deadline = persisted.renewed_at + timing.lease_timeout
            if self._clock() < deadline:
                self.resumed = await self._resume(persisted.incarnation, deadline)
        if not self.resumed:
            self.incarnation = uuidlib.uuid4().hex
            if same_boot and domains:
                # Back too late (or the resume missed its deadline) on the same
                # boot: our guests may still run although our leases expired.
                # Fence them before anything else: another host may take over
                # as soon as host_dead has passed.
                lost_results = await self._fence_persisted(domains)
            self.lockspace_id = await self.backend.lockspace_id()
            await wait_for_name_free(self.backend.hosts, self.identity, poll=timing.renew_interval)
            if self.config.peer.endpoint and not self._peer_endpoint:
                await self._start_peer_service()
            await self.backend.join(self.identity, self.incarnation, self._advert(self._clock()))
            # join may have waited host_dead for the id to free up: the validity
            # period starts at a renewal whose start we measured ourselves.
            start = self._clock()
            await self.backend.renew(self._advert(start))
            self._last_start, self._expires_at = start, start + timing.lease_timeout
        unverified = await self._verify_resumed(domains) if self.resumed else {}
        # host.json is written by the journal task, not awaited here: a slow
        # state_dir must not keep the renew loop from watching the deadline
        # (found by actorlock sim). A journal that lags makes a later
        # restart's deadline earlier, or its resume fail: both fence sooner.
        self._journal_changed.set()
        self._started = True
        for state in domains:
            uuid = state.identity.uuid
            if state.phase == DomainPhase.RUNNING and (not self.resumed or uuid in unverified):
                state = attrs.evolve(state, phase=DomainPhase.LOST)
            actor = DomainActor(self, state.identity, state)
            if uuid in unverified:
                actor.lost_reason = unverified[uuid]
            elif state.phase == DomainPhase.LOST and not self.resumed:
                actor.lost_reason = "the coordinator was down longer than lease_timeout"
                if uuid in lost_results:
                    actor.lost_reason += f"; failure action: {lost_results[uuid]}"
            self._spawn(actor)
        self._tg.start_soon(self._renew_loop, name=f"renew {self.identity.name}")
        self._tg.start_soon(self._journal_loop, name=f"renewal journal {self.identity.name}")
        self.emit("joined", incarnation=self.incarnation, resumed=self.resumed)

    async def _resume(self, incarnation: str, deadline: float) -> bool:
        """Rejoin as ``incarnation`` with a renewal that completes before ``deadline``; False if not."""
        timing = self.config.timing
        try:
            with anyio.fail_after(max(deadline - self._clock(), 1e-6)):
                self.lockspace_id = await self.backend.lockspace_id()
                read_at = self._clock()
                previous = {v.record.id: v.record for v in await self.backend.hosts()}.get(self.identity.id)
                if previous is None or (previous.incarnation, previous.boot_id) != (
                    incarnation,
                    self._boot_id,
                ):
                    return False
                if self.config.peer.endpoint:
                    await self._start_peer_service()
                self.incarnation = incarnation
                await self.backend.join(self.identity, incarnation, self._advert(read_at))
                start = self._clock()
                await self.backend.renew(self._advert(start))
        except (TimeoutError, ActorlockError, OSError) as exc:
            log.error(
                "host %s: could not resume incarnation %s before its lease deadline: %r",
                self.identity.name,
                incarnation,
                exc,
            )
            self.emit("resume_failed", incarnation=incarnation, reason=repr(exc))
            return False
        if self._clock() >= deadline:
            return False
        self._last_start, self._expires_at = start, start + timing.lease_timeout
        return True

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
        with anyio.move_on_after(max(self._expires_at - self._clock(), 1e-6)):
            try:
                records = {r.key: r for r in await self.backend.records(keys)}
            except ActorlockError as exc:
                log.error("host %s: cannot read leases back after resuming: %s", self.identity.name, exc)
        for state in running:
            owner = self.owner_for(state.identity)
            if records is None:
                reasons[state.identity.uuid] = "its leases could not be read back after a restart"
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
                self.emit("leases_lost", domain=uuid, keys=(), reason=reasons[uuid])
        return reasons

    def _persisted(self) -> HostPersisted:
        return HostPersisted(
            self.identity.name,
            self.identity.id,
            self.incarnation,
            boot_id=self._boot_id,
            renewed_at=self._last_start,
        )

    async def _journal_loop(self) -> None:
        """Keep the last successful renewal's start in the state store, for a restart.

        Its own task: a slow state_dir delays only the journal (which then
        lags, making a restart's deadline earlier), never a renewal.
        """
        written: tuple[str, float] | None = None
        while True:
            await self._journal_changed.wait()
            self._journal_changed = anyio.Event()
            if (self.incarnation, self._last_start) == written:
                continue
            written = (self.incarnation, self._last_start)
            try:
                with anyio.fail_after(self.config.timing.io_timeout):
                    await self.store.save_host(self._persisted())
            except (TimeoutError, ActorlockError, OSError) as exc:
                log.warning("host %s: saving the renewal journal failed: %r", self.identity.name, exc)

    # -- migration ------------------------------------------------------------

    @property
    def peer_endpoint(self) -> str:
        """Where peers reach this host (the bound endpoint); empty without a peer service."""
        return self._peer_endpoint

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
        entry = self._domains.get(source.domain)
        if entry is not None and entry[1].phase == DomainPhase.LOST:
            # Fenced already: what it held was forfeited, not ours to hand on.
            raise LeaseLostError(f"domain {source.domain} lost its leases; nothing to transfer", [])
        moved = await self.backend.transfer(source, destination, destination_incarnation, leases)
        self.emit("transfer", source=source, destination=destination, before=tuple(leases), after=moved)
        return moved

    def require_peer_service(self) -> None:
        if not self._peer_endpoint:
            raise NotSupportedError(
                f"host {self.identity.name} has no peer endpoint configured ([peer] endpoint): "
                "migration needs one on both hosts"
            )
        if not self.capabilities.migration:
            raise NotSupportedError(f"the {self.backend.kind} backend does not support migration")

    async def resolve_peer(self, uri: str) -> tuple[str, str]:
        """The (host name, public key) advertised in our lockspace for peer endpoint ``uri``."""
        self.require_peer_service()
        for view in await self.backend.hosts():
            record = view.record
            if record.peer_endpoint == uri and record.state is HostState.LIVE:
                if record.id == self.identity.id:
                    raise PeerRefusedError(
                        f"{uri} is this host ({self.identity.name}): nothing to migrate to"
                    )
                if not self.config.peer.plaintext and record.public_key not in self.config.peer.allowed_keys:
                    raise PeerRefusedError(
                        f"host {record.name} at {uri} has public key {record.public_key!r}, "
                        "which is not in [peer] allowed_keys"
                    )
                return record.name, record.public_key
        raise PeerRefusedError(
            f"no live host in lockspace {self.lockspace_id} advertises peer endpoint {uri}: "
            "it is down, or uses another lockspace or backend"
        )

    def peer_connect(self, endpoint: str, server_key: str) -> AbstractAsyncContextManager[PeerClient]:
        from ..transport.zmq import connect

        if self.config.peer.plaintext:
            return connect(endpoint, plaintext=True)
        return connect(endpoint, server_key=server_key, keys=self._keys)

    async def start_migration(self, driver: MigrationDriver) -> None:
        """Run ``driver`` in this host's task group until its migration ends."""
        self._migrations[driver.migration_id] = driver
        try:
            await self._tg.start(driver.run, name=f"migration {driver.migration_id}")
        except BaseException:
            self._migrations.pop(driver.migration_id, None)
            raise

    def migration_ended(self, driver: MigrationDriver) -> None:
        if self._migrations.get(driver.migration_id) is driver:
            del self._migrations[driver.migration_id]

    def incoming_for(self, uuid: str, *, finished: bool = False) -> MigrationDriver | None:
        """The newest incoming migration of domain ``uuid`` still running (or, with
        ``finished``, still lingering to answer with its outcome)."""
        found = [
            d
            for d in self._migrations.values()
            if d.role == "destination" and d.domain_uuid == uuid and (finished or not d.machine.finished)
        ]
        return found[-1] if found else None

    async def domain_settled(self, uuid: str, settled: MigrationSettled) -> None:
        entry = self._domains.get(uuid)
        if entry is None:
            if settled.role == "destination" and settled.outcome.value != "committed":
                return
            identity = DomainIdentity(uuid)
            entry = self._spawn(DomainActor(self, identity))
        await entry[0].ask(settled)

    async def _start_peer_service(self) -> None:
        from ..transport.zmq import PeerServer, load_keypair

        peer = self.config.peer
        if not peer.plaintext:
            assert peer.key_file is not None
            key_file = peer.key_file
            self._keys = await anyio.to_thread.run_sync(load_keypair, key_file)
            self._public_key = self._keys.public
        if peer.plaintext:
            log.warning(
                "host %s: peer.plaintext is set: CURVE is off, so migration traffic on %s is "
                "neither encrypted nor authenticated; any process that can reach it may speak "
                "for a host of the lockspace",
                self.identity.name,
                peer.endpoint,
            )
        server = PeerServer(
            peer.endpoint,
            keys=self._keys,
            allowed_clients=peer.allowed_keys,
            plaintext=peer.plaintext,
            max_in_flight_per_peer=peer.max_requests_per_peer,
        )
        self._peer_endpoint = await self._tg.start(server.serve, self._handle_peer, name="peer service")

    async def _handle_peer(self, identity: bytes, user_id: str | None, frame: bytes) -> bytes | None:
        """One request from a peer coordinator: decode, authenticate, route, answer."""
        from ..protocol import Prepare, Request, answer_unknown
        from ..transport import codec

        try:
            message = codec.decode(frame)
            if not isinstance(message, Request):
                return None
            await self._authenticate(message.sender, user_id)
            driver = self._migrations.get(message.migration_id)
            if driver is None and isinstance(message, Prepare):
                driver = await self._incoming(message, user_id or "")
        except ActorlockError as exc:
            self._refusals.warn(self.identity.name, exc)
            return codec.encode(codec.error_reply_for(frame, exc, sender=self.identity.name))
        if driver is None:
            response = answer_unknown(message, local=self.identity.name)
            return codec.encode(response) if response is not None else None
        peer = self.config.peer
        # Whatever deadline the peer claims, a handler waits no longer than a migration may last.
        wait = min(
            max(message.deadline_remaining, peer.request_timeout),
            peer.prepare_timeout + peer.migration_timeout,
        )
        with anyio.move_on_after(wait):
            response = await driver.request(message)
            return codec.encode(response) if response is not None else None
        return None

    async def _authenticate(self, sender: str, user_id: str | None) -> None:
        """The sender named in the payload must be a host of our lockspace, and (CURVE) the
        host whose key signed the connection; plain text has no key to compare."""
        record = await self.peers.lookup(sender)
        if record is None:
            raise ProtocolError(f"peer {sender!r} is not a host of lockspace {self.lockspace_id}")
        if not self.config.peer.plaintext and record.public_key != user_id:
            raise ProtocolError(f"peer {sender!r} signed with a key that host does not advertise")

    async def _incoming(self, message: Any, peer_key: str) -> MigrationDriver:
        from ..protocol import MigrationDestination
        from .migration import MigrationDriver

        record = await self.peers.lookup(message.sender)
        peer_endpoint = record.peer_endpoint if record is not None else ""
        existing = self._migrations.get(message.migration_id)
        if existing is not None:
            return existing  # a retransmission that overtook the first PREPARE's setup
        # No await from this check until start_migration registers the driver,
        # so concurrent PREPAREs cannot all pass under the caps.
        admit_incoming(message, self._migrations.values(), self.config.peer)
        machine = MigrationDestination(
            migration_id=message.migration_id,
            local=self.identity,
            incarnation=self.incarnation,
            lockspace_kind=self.backend.kind,
            lockspace_id=self.lockspace_id,
            timing=self.protocol_timing(),
        )
        driver = MigrationDriver(
            self,
            machine,
            peer_endpoint=peer_endpoint,
            peer_key=peer_key,
            domain_uuid=message.domain.uuid,
            peer_name=message.sender,
        )
        await self.start_migration(driver)
        return driver

    def protocol_timing(self) -> Any:
        from ..protocol import Timing

        peer = self.config.peer
        return Timing(
            retry_interval=peer.retry_interval,
            prepare_timeout=peer.prepare_timeout,
            transfer_margin=peer.transfer_margin,
            # An incoming migration nobody confirms ends by then, whatever PREPARE claims.
            max_pending=peer.prepare_timeout + peer.migration_timeout,
        )

    def pause(self) -> None:
        """Fault injection: freeze renewal and fencing, as SIGSTOP would (see :meth:`resume`)."""
        if self._paused is None:
            self._paused = anyio.Event()
            self.emit("paused")

    def resume(self) -> None:
        """Thaw after :meth:`pause`; an expiry that passed meanwhile is handled at once."""
        if self._paused is not None:
            self._paused.set()
            self._paused = None
            self.emit("resumed")

    def crash(self) -> None:
        """Fault injection: every task of this host dies now; nothing is released or left.

        The caller's ``open_host`` block is cancelled; its exit writes nothing.
        """
        self._crashed = True
        self._started = False
        self._tg.cancel_scope.cancel()

    async def stop(self) -> None:
        """Leave the lockspace; guests still holding leases keep them (re-attach later)."""
        if self._crashed:
            with anyio.move_on_after(self.config.timing.io_timeout, shield=True):
                await self.backend.aclose()
            return
        # No renewal may race with (or follow) leaving the lockspace.
        self._renew_scope.cancel()
        holding = self.fences.holding or any(
            a.phase in (DomainPhase.RUNNING, DomainPhase.LOST) for _, a in self._domains.values()
        )
        self._started = False
        with anyio.move_on_after(self.config.timing.io_timeout, shield=True):
            try:
                await self.backend.leave(clean=not holding)
            except ActorlockError as exc:
                log.warning("host %s: leaving the lockspace failed: %s", self.identity.name, exc)
        with anyio.move_on_after(self.config.timing.io_timeout, shield=True):
            await self.backend.aclose()

    # -- internals ---------------------------------------------------------

    def _spawn(self, actor: DomainActor) -> tuple[ActorRef[Any], DomainActor]:
        ref, mailbox = open_mailbox(actor.name)
        entry = (ref, actor)
        self._domains[actor.identity.uuid] = entry
        self._tg.start_soon(run_actor, actor, ref, mailbox, name=actor.name)
        return entry

    def _check_live(self) -> None:
        if not self.live:
            raise LockspaceLostError(
                f"host {self.identity.name} has no valid lockspace membership (renewal failing)"
            )

    def _advert(self, renewal_start: float) -> HostAdvert:
        return HostAdvert(
            boot_id=self._boot_id,
            renewed_monotonic=renewal_start,
            peer_endpoint=self._peer_endpoint,
            public_key=self._public_key,
        )

    def emit(self, kind: str, **fields: Any) -> None:
        """Report an event to the configured sink (history, tests, metrics)."""
        if self._event_sink is not None:
            self._event_sink(kind, {"host": self.identity.name, **fields})

    async def _renew_loop(self) -> None:
        with self._renew_scope:
            await self._renew_forever()

    async def _renew_forever(self) -> None:
        timing = self.config.timing
        next_at = self._last_start + timing.renew_interval
        while True:
            wake = min(next_at, self._expires_at) if not self._lost else next_at
            # Sleep on the loop's clock, judge on ours: after a suspend (or a
            # lagging loop) the first reading tells how much time really passed.
            await anyio.sleep(max(0.0, wake - self._clock()))
            if self._paused is not None:
                await self._paused.wait()
            now = self._clock()
            if not self._lost and now >= self._expires_at:
                late = now - self._expires_at
                if late > timing.scheduling_delay:
                    log.error(
                        "host %s: noticed the lease expiry %.3fs late (scheduling_delay=%ss): "
                        "guests may have run past their lease",
                        self.identity.name,
                        late,
                        timing.scheduling_delay,
                    )
                    self.emit("expiry_noticed_late", late=late)
                self._lockspace_lost(f"no successful renewal for lease_timeout={timing.lease_timeout}s")
            if self._clock() < next_at:
                continue
            start = self._clock()
            bound = self._expires_at - start if not self._lost else timing.renew_interval
            next_at = start + timing.renew_interval
            try:
                with anyio.fail_after(max(bound, 1e-3)):
                    await self.backend.renew(self._advert(start))
            except (TimeoutError, ActorlockError, OSError) as exc:
                self._renew_failures += 1
                log.warning("host %s: renewal failed: %r", self.identity.name, exc)
                continue
            if not self._lost and self._clock() >= self._expires_at:
                continue  # completed, but after the lease it extends had expired: the loop fences
            self._renewals += 1
            self._last_start, self._expires_at = start, start + timing.lease_timeout
            self._journal_changed.set()
            if self._lost:
                log.warning("host %s: renewing again after a lockspace loss", self.identity.name)
                self._lost = False
                self.fences.lockspace_regained()
                self.emit("lockspace_regained")

    def _lockspace_lost(self, reason: str) -> None:
        self._lost = True
        log.error("host %s: lockspace lost: %s", self.identity.name, reason)
        self.emit("lockspace_lost", reason=reason)
        self.fences.lockspace_lost(reason)

    async def _tell_lost(self, target: FenceTarget, reason: str, result: str) -> None:
        """After a fence's first attempt: the domain actor marks itself lost."""
        entry = self._domains.get(target.identity.uuid)
        if entry is not None:
            with contextlib.suppress(ActorlockError):
                await entry[0].tell(LeasesLost(reason, result))

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
