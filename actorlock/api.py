"""The idiomatic async API: ``async with open_host(config) as host``.

The seed's lock-manager API (:mod:`actorlock.lockmanager`) is a thin layer
over this one.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio

from .actors.call_result import CallResult
from .actors.host import HostCoordinator, HostStatus, PauseCallback
from .actors.messages import (
    AcquireObject,
    AcquireResource,
    Attach,
    BindGuest,
    CompleteMigration,
    DomainStatus,
    Inquire,
    PrepareMigrate,
    ReleaseAll,
    ReleaseResource,
    Shutdown,
)
from .backends import make_backend
from .backends.base import LeaseBackend
from .clock import host_clock
from .config import Config, load_config
from .errors import BackendTimeoutError, MigrationError, NotSupportedError, SupervisorError
from .events import EventSink
from .model import DomainIdentity, HostView, LeaseRecord, LockState, Resource, resolve_disk_symlinks
from .statestore import FileStateStore, MemoryStateStore, StateStore
from .supervisor.service import SupervisorService
from .supervisor.watchdog import Watchdog

T = TypeVar("T")

SPAWN_TIMEOUT = 10.0  # a supervisor's connection, welcome and guest start


class Domain:
    """One guest on this host. Every call is a message to the guest's actor."""

    def __init__(self, coordinator: HostCoordinator, identity: DomainIdentity) -> None:
        self._coordinator = coordinator
        self.identity = identity

    async def _ask(self, message: object, answer: type[T]) -> T:
        reply = await self._coordinator.domain_ref(self.identity).ask(message)
        if not isinstance(reply, answer):
            raise TypeError(f"{message!r} was answered with {reply!r}, expected {answer.__name__}")
        return reply

    async def start(
        self,
        resources: Iterable[Resource],
        *,
        pid: int | None = None,
        register_only: bool = False,
        state: LockState | None = None,
    ) -> DomainStatus:
        """Take every lease the resources need, all or nothing.

        With ``register_only`` the guest is bound but takes no lease (it starts
        paused); a later :meth:`start` takes them. With ``state`` (from
        :meth:`pause`) the same leases are re-taken only if nobody held them since.
        """
        wanted = await self._resolved(tuple(resources))
        return await self._ask(AcquireObject(wanted, pid, register_only, state), DomainStatus)

    async def pause(self) -> LockState:
        """Release every lease and return the state to resume with."""
        return await self._ask(ReleaseAll(save_state=True), LockState)

    async def hotplug(self, resource: Resource) -> DomainStatus:
        (resolved,) = await self._resolved((resource,))
        return await self._ask(AcquireResource(resolved), DomainStatus)

    async def unplug(self, resource: Resource) -> DomainStatus:
        (resolved,) = await self._resolved((resource,))
        return await self._ask(ReleaseResource(resolved), DomainStatus)

    async def _resolved(self, resources: tuple[Resource, ...]) -> tuple[Resource, ...]:
        """``resources`` with disk symlinks resolved, when ``[locking] resolve_disk_symlinks`` says so."""
        config = self._coordinator.config
        if not config.locking.resolve_disk_symlinks:
            return resources
        # realpath may hang on unreachable shared storage: bounded, and in a worker thread.
        try:
            with anyio.fail_after(config.timing.io_timeout):
                return await anyio.to_thread.run_sync(
                    resolve_disk_symlinks, resources, abandon_on_cancel=True
                )
        except TimeoutError:
            raise BackendTimeoutError(
                f"resolving disk symlinks took longer than io_timeout={config.timing.io_timeout}s"
            ) from None

    async def attach(self) -> int:
        """Re-attach after a restart: the guest pid, checked alive, leases checked held."""
        return await self._ask(Attach(), int)

    async def spawn(self, argv: Sequence[str]) -> int:
        """Run the guest ``argv`` under its supervisor; return the guest's pid once it runs.

        Call it once the domain holds its leases (after :meth:`start`). The
        supervisor (``actorlock-supervisor``'s code, started without its console
        script's site processing) outlives this process: it kills
        the guest by the lease deadline if no coordinator renews, and the guest
        dies with it. Needs ``host.state_dir`` (the control socket lives there).
        """
        from .supervisor import supervisor_command

        service = self._coordinator.supervisors
        if service is None or not service.serving:
            raise NotSupportedError("guest supervision needs host.state_dir (its control socket lives there)")
        if not argv:
            raise SupervisorError("spawn needs the guest's command line")
        command = [*supervisor_command(), *service.args(self.identity.uuid, detach=True), *argv]
        with anyio.fail_after(SPAWN_TIMEOUT + 1.0):
            # --detach: this waits only until the guest runs; the supervisor is not our child.
            done = await anyio.run_process(
                command, stdin=subprocess.DEVNULL, stdout=None, stderr=None, check=False
            )
        if done.returncode != 0:
            raise SupervisorError(
                f"the supervisor of {self.identity.uuid} did not start {argv[0]!r} (exit {done.returncode})"
            )
        guest = await service.wait_child(self.identity.uuid, within=SPAWN_TIMEOUT)
        await self._ask(BindGuest(guest.guest_pid), DomainStatus)
        return guest.guest_pid

    async def child(self) -> int:
        """The pid of the guest that a supervisor started for this domain (get_child), waiting
        for it to register; also records it as the domain's guest."""
        service = self._coordinator.supervisors
        if service is None:
            raise NotSupportedError("guest supervision needs host.state_dir (its control socket lives there)")
        guest = await service.wait_child(self.identity.uuid, within=SPAWN_TIMEOUT)
        await self._ask(BindGuest(guest.guest_pid), DomainStatus)
        return guest.guest_pid

    async def shutdown(self) -> None:
        """The guest has stopped: release everything and forget the domain."""
        await self._ask(Shutdown(), type(None))

    async def status(self) -> DomainStatus:
        return await self._ask(Inquire(), DomainStatus)

    async def prepare_migration(self, dest_uri: str) -> None:
        """Source: offer this guest's leases to the coordinator at ``dest_uri``."""
        peer = self._coordinator.config.peer
        result = await self._ask(PrepareMigrate(dest_uri), CallResult)
        await _bounded(result.wait(), peer.prepare_timeout + peer.request_timeout + 1.0, "prepare_migrate")

    async def complete_migration(
        self, *, commit: bool, resources: Iterable[Resource] = (), pid: int | None = None
    ) -> None:
        """Commit or cancel this guest's migration (either side).

        On the destination, ``resources`` and ``pid`` register the incoming
        guest; they must match the leases the source offered.
        """
        peer = self._coordinator.config.peer
        result = await self._ask(CompleteMigration(commit, tuple(resources), pid), CallResult)
        await _bounded(
            result.wait(), peer.migration_timeout + peer.request_timeout + 1.0, "complete_migrate_in"
        )

    @asynccontextmanager
    async def migrate_to(self, dest_uri: str) -> AsyncIterator[None]:
        """Source side of a migration: prepare; the block is the guest's own migration.

        Leaving the block normally commits (waiting for the destination's
        word); an exception cancels, and the guest keeps its leases here.
        """
        await self.prepare_migration(dest_uri)
        try:
            yield
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.complete_migration(commit=False)
            raise
        await self.complete_migration(commit=True)


async def _bounded(waiting: Awaitable[object], seconds: float, what: str) -> None:
    """A backstop: the protocol's own timers answer first; this only guards against a stuck driver."""
    try:
        with anyio.fail_after(seconds):
            await waiting
    except TimeoutError:
        raise MigrationError(f"{what} got no answer within {seconds:.1f}s") from None


class Host:
    """A running host coordinator (see :func:`open_host`)."""

    def __init__(self, coordinator: HostCoordinator) -> None:
        self._coordinator = coordinator

    @property
    def name(self) -> str:
        return self._coordinator.identity.name

    @property
    def config(self) -> Config:
        return self._coordinator.config

    @property
    def live(self) -> bool:
        return self._coordinator.live

    @property
    def lease_deadline(self) -> float:
        """When this host's lockspace membership lapses without another renewal, on its clock.

        What a guest's supervisor is welcomed with when it registers (and
        pushed after every renewal): the moment it runs the failure action
        if no newer deadline reaches it.
        """
        return self._coordinator.lifeline.expires_at

    @property
    def resumed(self) -> bool:
        """True when this start resumed a previous run's leases (restart in time)."""
        return self._coordinator.resumed

    @property
    def incarnation(self) -> str:
        """This run's identity in the lockspace (kept by a resumed restart)."""
        return self._coordinator.incarnation

    @property
    def peer_endpoint(self) -> str:
        """Where peers reach this host (the bound endpoint): pass it to ``prepare_migration``."""
        return self._coordinator.peer_endpoint

    @property
    def supervisors(self) -> SupervisorService | None:
        """The service the guests' supervisors talk to (None without a state_dir)."""
        return self._coordinator.supervisors

    @property
    def watchdog(self) -> Watchdog | None:
        """The host watchdog this coordinator pets ([watchdog] device), if configured."""
        return self._coordinator.watchdog

    @property
    def lockspace_id(self) -> str:
        return self._coordinator.lockspace_id

    @property
    def backend_kind(self) -> str:
        return self._coordinator.backend_kind

    @property
    def lockspace_losses(self) -> int:
        """How many times this host lost its lockspace (renewal failing for lease_timeout)."""
        return self._coordinator.losses

    def incoming_migration(self, uuid: str, *, finished: bool = False) -> str | None:
        """The id of a migration of domain ``uuid`` into this host still in progress (with
        ``finished``: or ended and still answering late calls), if any."""
        driver = self._coordinator.migrations.incoming_for(uuid, finished=finished)
        return driver.migration_id if driver is not None else None

    def incoming_migrations(self) -> list[str]:
        """The ids of every migration into this host that has not ended."""
        return self._coordinator.migrations.incoming()

    def require_peer_service(self) -> None:
        """Raise NotSupportedError unless this host can migrate (peer endpoint, backend support)."""
        self._coordinator.migrations.require_peer_service()

    def domain(self, uuid: str, *, name: str = "", id: int = -1) -> Domain:
        return Domain(self._coordinator, DomainIdentity(uuid, name, id))

    def known_domains(self) -> list[str]:
        """UUIDs of domains this host tracks (including ones persisted before a restart)."""
        return self._coordinator.known_domains()

    async def status(self) -> HostStatus:
        return await self._coordinator.status()

    async def leases(self) -> list[LeaseRecord]:
        return await self._coordinator.records()

    async def hosts(self) -> list[HostView]:
        return await self._coordinator.hosts()


@asynccontextmanager
async def open_host(
    config: Config | Mapping[str, Any] | str | Path | None = None,
    *,
    backend: LeaseBackend | None = None,
    state_store: StateStore | None = None,
    pause_callback: PauseCallback | None = None,
    event_sink: EventSink | None = None,
    clock: Callable[[], float] = host_clock,
    supervisors: SupervisorService | None = None,
) -> AsyncIterator[Host]:
    """Run a host coordinator for the duration of the block.

    On exit the host stops renewing and leaves the lockspace; guests that still
    hold leases keep them, so a restarted coordinator can re-attach in time.
    ``supervisors`` replaces the guest supervisors' service (the simulator's
    stand-in); by default there is one when ``host.state_dir`` is set.
    """
    cfg = load_config(config)
    lease_backend = backend if backend is not None else make_backend(cfg, clock=clock)
    store = state_store
    if store is None:
        if cfg.host.state_dir is not None:
            file_store = FileStateStore(cfg.host.state_dir)
            await file_store.open()
            store = file_store
        else:
            store = MemoryStateStore()
    # Errors from start-up or from the caller's block are re-raised as they are,
    # not wrapped in the task group's ExceptionGroup.
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        coordinator = HostCoordinator(
            cfg,
            lease_backend,
            store,
            tg,
            pause_callback=pause_callback,
            event_sink=event_sink,
            clock=clock,
            supervisors=supervisors,
        )
        try:
            await coordinator.start()
        except Exception as exc:
            error = exc
        except BaseException:
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await lease_backend.aclose()
            raise
        if error is not None:
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await lease_backend.aclose()
        else:
            try:
                yield Host(coordinator)
            except Exception as exc:
                error = exc
            finally:
                with anyio.CancelScope(shield=True):
                    await coordinator.stop()
                tg.cancel_scope.cancel()
    if error is not None:
        raise error
