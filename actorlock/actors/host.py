"""The host actor: owns the lease backend, proves liveness, fences on loss.

Safety rule (docs/timing.md): this host stops granting leases and runs the
failure action of every guest holding one once ``lease_timeout`` has passed
since its last successful renewal *started*; the action gets
``fence_timeout``. Other hosts take over only after seeing our record
unchanged for ``host_dead`` > lease_timeout + fence_timeout.

Lease operations are not queued through a mailbox here: domain actors call
:meth:`HostCoordinator.acquire` directly from their own tasks, so different
domains' backend I/O overlaps. Fencing does not wait in a domain's mailbox
either (it may be stuck behind storage I/O): domain actors publish what the
fence needs, the host kills or pauses first and tells the actor after.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import attrs
from anyio.abc import TaskGroup

from ..backends.base import BackendCapabilities, HostAdvert, LeaseBackend
from ..config import Config
from ..constants import FailureAction
from ..errors import (
    ActorlockError,
    ConfigError,
    LockspaceLostError,
    NotSupportedError,
    PeerRefusedError,
    ProtocolError,
)
from ..guest import power_off
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
from .domain import DomainActor, FenceTarget
from .mailbox import ActorRef, open_mailbox, run_actor
from .messages import DomainStatus, Inquire, LeasesLost, MigrationSettled

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
        clock: Callable[[], float] = anyio.current_time,
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
        self._lost = False
        self._renewals = 0
        self._renew_failures = 0
        self._domains: dict[str, tuple[ActorRef[Any], DomainActor]] = {}
        self._fence_targets: dict[str, FenceTarget] = {}
        self._started = False
        self._crashed = False
        self._paused: anyio.Event | None = None
        self._renew_scope = anyio.CancelScope()
        self._keys: KeyPair | None = None
        self._migrations: dict[str, MigrationDriver] = {}
        self.lockspace_id = ""

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
        if target is None:
            self._fence_targets.pop(uuid, None)
        else:
            self._fence_targets[uuid] = target

    def domain_stopped(self, uuid: str, actor: DomainActor) -> None:
        entry = self._domains.get(uuid)
        if entry is not None and entry[1] is actor:
            del self._domains[uuid]

    # -- lifetime -------------------------------------------------------------

    async def start(self) -> None:
        """Join the lockspace (resuming if we restarted in time) and start renewing."""
        if self.config.locking.failure_action is FailureAction.PAUSE and self._pause_callback is None:
            raise ConfigError(
                "locking.failure_action", "'pause' needs a pause_callback passed to open_host/plugin_load"
            )
        self._boot_id = await anyio.to_thread.run_sync(read_boot_id)
        self.lockspace_id = await self.backend.lockspace_id()
        if self.config.peer.endpoint:
            await self._start_peer_service()
        persisted = await self.store.load_host()
        previous = {v.record.id: v.record for v in await self.backend.hosts()}.get(self.identity.id)
        ours = (
            persisted is not None
            and (persisted.name, persisted.id) == (self.identity.name, self.identity.id)
            and previous is not None
            and previous.incarnation == persisted.incarnation
        )
        self.resumed = bool(
            ours
            and previous is not None
            and previous.boot_id == self._boot_id
            and time.monotonic() - previous.renewed_monotonic < self.config.timing.lease_timeout
        )
        if self.resumed and persisted is not None:
            self.incarnation = persisted.incarnation
        else:
            self.incarnation = uuidlib.uuid4().hex
        domains = await self.store.load_domains()
        lost_results: dict[str, str] = {}
        if not self.resumed and previous is not None and previous.boot_id == self._boot_id:
            # Back too late on the same boot: our guests may still run although
            # our leases expired. Fence them before anything else, because
            # another host may take over as soon as host_dead has passed.
            lost_results = await self._fence_persisted(domains)
        await self.backend.join(self.identity, self.incarnation, self._advert())
        # join may have waited host_dead for the id to free up: the validity
        # period starts at a renewal whose start we measured ourselves.
        start = self._clock()
        await self.backend.renew(self._advert())
        self._last_start, self._expires_at = start, start + self.config.timing.lease_timeout
        await self.store.save_host(HostPersisted(self.identity.name, self.identity.id, self.incarnation))
        self._started = True
        for state in domains:
            if not self.resumed and state.phase == DomainPhase.RUNNING:
                state = attrs.evolve(state, phase=DomainPhase.LOST)
            actor = DomainActor(self, state.identity, state)
            if state.phase == DomainPhase.LOST and not self.resumed:
                actor.lost_reason = "the coordinator was down longer than lease_timeout"
                if state.identity.uuid in lost_results:
                    actor.lost_reason += f"; failure action: {lost_results[state.identity.uuid]}"
            self._spawn(actor)
        self._tg.start_soon(self._renew_loop, name=f"renew {self.identity.name}")
        self.emit("joined", incarnation=self.incarnation, resumed=self.resumed)

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
        server = PeerServer(
            peer.endpoint, keys=self._keys, allowed_clients=peer.allowed_keys, plaintext=peer.plaintext
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
        except ActorlockError as exc:
            log.warning("host %s: bad peer frame: %s", self.identity.name, exc)
            return codec.encode(codec.error_reply_for(frame, exc, sender=self.identity.name))
        driver = self._migrations.get(message.migration_id)
        if driver is None and isinstance(message, Prepare):
            driver = await self._incoming(message, user_id or "")
        if driver is None:
            response = answer_unknown(message, local=self.identity.name)
            return codec.encode(response) if response is not None else None
        with anyio.move_on_after(max(message.deadline_remaining, self.config.peer.request_timeout)):
            response = await driver.request(message)
            return codec.encode(response) if response is not None else None
        return None

    async def _authenticate(self, sender: str, user_id: str | None) -> None:
        """The sender named in the payload must be the host whose key signed the connection."""
        if self.config.peer.plaintext:
            return
        for view in await self.backend.hosts():
            if view.record.name == sender:
                if view.record.public_key != user_id:
                    raise ProtocolError(f"peer {sender!r} signed with a key that host does not advertise")
                return
        raise ProtocolError(f"peer {sender!r} is not a host of lockspace {self.lockspace_id}")

    async def _incoming(self, message: Any, peer_key: str) -> MigrationDriver:
        from ..protocol import MigrationDestination
        from .migration import MigrationDriver

        peer_endpoint = ""
        for view in await self.backend.hosts():
            if view.record.name == message.sender:
                peer_endpoint = view.record.peer_endpoint
        machine = MigrationDestination(
            migration_id=message.migration_id,
            local=self.identity,
            incarnation=self.incarnation,
            lockspace_kind=self.backend.kind,
            lockspace_id=self.lockspace_id,
            timing=self.protocol_timing(),
        )
        driver = MigrationDriver(
            self, machine, peer_endpoint=peer_endpoint, peer_key=peer_key, domain_uuid=message.domain.uuid
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
        holding = bool(self._fence_targets) or any(
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

    def _advert(self) -> HostAdvert:
        return HostAdvert(
            boot_id=self._boot_id,
            renewed_monotonic=time.monotonic(),
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
            await anyio.sleep_until(min(next_at, self._expires_at) if not self._lost else next_at)
            if self._paused is not None:
                await self._paused.wait()
            if not self._lost and self._clock() >= self._expires_at:
                await self._lockspace_lost(f"no successful renewal for lease_timeout={timing.lease_timeout}s")
            if self._clock() < next_at:
                continue
            start = self._clock()
            bound = self._expires_at - start if not self._lost else timing.renew_interval
            next_at = start + timing.renew_interval
            try:
                with anyio.fail_after(max(bound, 1e-3)):
                    await self.backend.renew(self._advert())
            except (TimeoutError, ActorlockError, OSError) as exc:
                self._renew_failures += 1
                log.warning("host %s: renewal failed: %r", self.identity.name, exc)
                continue
            self._renewals += 1
            self._last_start, self._expires_at = start, start + timing.lease_timeout
            if self._lost:
                log.warning("host %s: renewing again after a lockspace loss", self.identity.name)
                self._lost = False
                self.emit("lockspace_regained")

    async def _lockspace_lost(self, reason: str) -> None:
        self._lost = True
        log.error("host %s: lockspace lost: %s", self.identity.name, reason)
        self.emit("lockspace_lost", reason=reason)
        targets = list(self._fence_targets.values())
        async with anyio.create_task_group() as tg:
            for target in targets:
                tg.start_soon(self._fence, target, reason)

    async def _fence(self, target: FenceTarget, reason: str) -> None:
        result = await self._failure_action_bounded(target)
        entry = self._domains.get(target.identity.uuid)
        if entry is not None:
            with anyio.move_on_after(self.config.timing.fence_timeout), contextlib.suppress(ActorlockError):
                await entry[0].tell(LeasesLost(reason, result))

    async def _fence_persisted(self, domains: Sequence[DomainState]) -> dict[str, str]:
        """Run the failure action of every guest a previous run left holding leases."""
        results: dict[str, str] = {}

        async def fence(state: DomainState) -> None:
            target = FenceTarget(
                state.identity, state.pid, state.pid_start, tuple(lease.key for lease in state.leases)
            )
            results[state.identity.uuid] = await self._failure_action_bounded(target)

        async with anyio.create_task_group() as tg:
            for state in domains:
                if state.phase == DomainPhase.RUNNING:
                    tg.start_soon(fence, state)
        return results

    async def _failure_action_bounded(self, target: FenceTarget) -> str:
        action = self.config.locking.failure_action
        result = "failure action timed out"
        with anyio.move_on_after(self.config.timing.fence_timeout):
            try:
                result = await self._run_failure_action(action, target)
            except Exception as exc:
                result = f"failure action failed: {exc!r}"
                log.exception("host %s: failure action for %s failed", self.identity.name, target.identity)
        self.emit("failure_action", domain=target.identity.uuid, action=action.value, result=result)
        return result

    async def _run_failure_action(self, action: FailureAction, target: FenceTarget) -> str:
        if action is FailureAction.POWEROFF:
            if target.pid is None:
                return "no guest pid registered: nothing to kill"
            gone = await power_off(target.pid, target.pid_start, self.config.locking.kill_grace)
            return f"guest pid {target.pid} " + ("powered off" if gone else "survived SIGKILL")
        if action is FailureAction.PAUSE:
            assert self._pause_callback is not None
            await self._pause_callback(target.identity, target.pid)
            return "guest paused by callback"
        log.error(
            "host %s: %s keeps running without its leases (failure_action=ignore)",
            self.identity.name,
            target.identity.uuid,
        )
        return "ignored (failure_action=ignore)"
