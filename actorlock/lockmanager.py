"""libvirt's lock manager plugin API, name for name, over the actors.

Booleans become typed exceptions: every failure raises an ActorlockError
subclass. As in libvirt, a manager is a short-lived handle: ``free()`` drops
the handle, not the leases; the guest's domain actor keeps them until
``shutdown()`` (or a later manager's release).

Loading the plugin
------------------
The plugin is a host coordinator, and a coordinator is a set of tasks, so it
runs inside a task group the caller owns. The two forms::

    async with actorlock.plugin_load("file", config) as plugin:
        ...                               # unloaded when the block ends

    plugin = await task_group.start(actorlock.run_plugin, "file", config)
    ...
    await plugin.unload()                 # or cancel task_group

Both are safe inside a timeout: ``with anyio.fail_after(60): plugin = await
tg.start(run_plugin, ...)`` bounds the load only, and the plugin outlives the
timeout; ``unload()`` may be called from any task, inside any scope.

``plugin = await plugin_load(...)`` on its own checks the name and the
configuration and starts nothing. It used to enter the host's task group in
the caller's task and return with it still open, so inside ``with
anyio.fail_after(...)`` (or any cancel scope or task group left before
``unload()``) it corrupted the caller's cancel-scope stack. That form cannot be
made safe: anyio (like trio) only runs a task inside a task group that some
task holds open around it, and after a bare ``await`` returns there is no such
scope left except the caller's own; the alternatives are a fire-and-forget task
(``asyncio.create_task``, trio system tasks: errors lost or fatal, nothing
bounds its lifetime) or an event loop in another thread, and neither belongs in
a library. So the awaited form returns a plugin that is not running, and
using it (``new_manager``, ``host``) raises InvalidStateError naming the two
forms above; ``async with plugin:`` runs it, which keeps ``async with await
plugin_load(...) as plugin`` working.
"""

from __future__ import annotations

import contextlib
import enum
import os
from collections.abc import Generator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import attrs
from anyio.abc import TaskStatus

from .actors.host import PauseCallback
from .actors.messages import DomainStatus
from .api import Domain, Host, open_host
from .config import BACKENDS, Config, load_config
from .constants import AcquireFlags, MigrateFlags, NewFlags, ObjectType, ResourceFlags, ResourceType
from .errors import InvalidParameterError, InvalidStateError, NotSupportedError
from .model import DomainIdentity, LockState, Resource
from .supervisor.service import SupervisorService

PARAMETERS = ("id", "uuid", "name", "pid", "uri")


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    UNLOADED = "unloaded"


class LockManagerPlugin:
    """A lock driver: one host coordinator for this process, run by a task group.

    Get one from ``async with plugin_load(...)`` or ``await
    task_group.start(run_plugin, ...)``; see the module docstring.
    """

    def __init__(self, name: str, config: Config, *, pause_callback: PauseCallback | None = None) -> None:
        self.name = name
        self.config = config
        self._pause_callback = pause_callback
        self._state = _State.NEW
        self._host: Host | None = None
        self._unload_requested: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def host(self) -> Host:
        """The running host (still readable after unload, for its last view)."""
        if self._host is None:
            raise self._not_running()
        return self._host

    @property
    def running(self) -> bool:
        return self._state is _State.RUNNING

    async def new_manager(
        self, object_type: ObjectType, flags: NewFlags | int = NewFlags.NONE
    ) -> LockManager:
        """A manager for one guest (virLockManagerNew)."""
        self._check_running()
        if object_type is not ObjectType.DOMAIN:
            raise InvalidParameterError(f"unsupported object type {object_type!r}")
        flags = NewFlags(flags)
        if flags & NewFlags.MIGRATE:
            self.host.require_peer_service()
        return LockManager(self, flags)

    async def unload(self) -> None:
        """Stop the host coordinator (virLockManagerPluginUnload).

        Idempotent, and callable from any task: it asks the plugin's own task
        to leave the lockspace and waits until it has. The task group that runs
        the plugin is not left here; the ``async with`` block's end (or the
        task group's) does that.
        """
        if self._state is _State.NEW:
            self._state = _State.UNLOADED
            return
        self._state = _State.UNLOADED
        if self._unload_requested is not None:
            self._unload_requested.set()
        if self._stopped is not None:
            await self._stopped.wait()

    async def _run(self, *, task_status: TaskStatus[LockManagerPlugin]) -> None:
        """Run the host until ``unload()`` or cancellation, in the task that calls this."""
        if self._state is not _State.NEW:
            raise self._not_new()
        self._state = _State.STARTING
        self._unload_requested = anyio.Event()
        self._stopped = anyio.Event()
        try:
            async with open_host(self.config, pause_callback=self._pause_callback) as host:
                self._host = host
                if self._state is not _State.STARTING:
                    raise InvalidStateError(f"lock plugin {self.name!r} was unloaded while loading")
                self._state = _State.RUNNING
                task_status.started(self)
                await self._unload_requested.wait()
        finally:
            self._state = _State.UNLOADED
            self._stopped.set()

    async def __aenter__(self) -> LockManagerPlugin:
        """Run the plugin in a task group held open by this block."""
        if self._state is not _State.NEW:
            raise self._not_new()
        stack = contextlib.AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        try:
            await tg.start(self._run)
        except Exception:
            # A load error: nothing runs in the task group; leave it cleanly and
            # raise the error as it is, not wrapped in an ExceptionGroup.
            await stack.aclose()
            raise
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        stack, self._stack = self._stack, None
        self._state = _State.UNLOADED
        if self._unload_requested is not None:
            self._unload_requested.set()
        if stack is None:  # pragma: no cover - __aenter__ failed, so no __aexit__
            return None
        if isinstance(exc, Exception):
            # The block's own error: leave the task group cleanly and let the
            # error through as it is, not wrapped in an ExceptionGroup.
            await stack.__aexit__(None, None, None)
            return None
        # Nothing, or a cancellation (maybe the task group's own): the task group decides.
        return await stack.__aexit__(exc_type, exc, tb)

    # -- internals ------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state is _State.UNLOADED:
            raise InvalidStateError(f"lock plugin {self.name!r} is unloaded")
        if self._state is not _State.RUNNING:
            raise self._not_running()

    def _not_running(self) -> InvalidStateError:
        return InvalidStateError(
            f"lock plugin {self.name!r} is not running: `plugin = await plugin_load(...)` only checks "
            "the name and configuration; run it with `async with plugin_load(...) as plugin:` or "
            "`plugin = await task_group.start(run_plugin, name, config)` (then `await plugin.unload()`)"
        )

    def _not_new(self) -> InvalidStateError:
        if self._state is _State.UNLOADED:
            return InvalidStateError(f"lock plugin {self.name!r} is unloaded; load it again")
        return InvalidStateError(f"lock plugin {self.name!r} is already running")


def _make_plugin(
    name: str, config: Config | Mapping[str, Any] | str | Path | None, pause_callback: PauseCallback | None
) -> LockManagerPlugin:
    if name not in BACKENDS:
        raise InvalidParameterError(f"unknown lock plugin {name!r} (known: {', '.join(BACKENDS)})")
    cfg = load_config(config)
    cfg = attrs.evolve(cfg, locking=attrs.evolve(cfg.locking, backend=name))
    return LockManagerPlugin(name, cfg, pause_callback=pause_callback)


class PluginLoad:
    """What :func:`plugin_load` returns: ``async with`` it, or ``await`` it.

    ``async with plugin_load(...) as plugin`` runs the plugin for the block.
    ``await plugin_load(...)`` only checks the arguments and returns a plugin
    that is not running yet (``async with`` that plugin to run it).
    """

    def __init__(
        self,
        name: str,
        config: Config | Mapping[str, Any] | str | Path | None,
        pause_callback: PauseCallback | None,
    ) -> None:
        self._args = (name, config, pause_callback)
        self._plugin: LockManagerPlugin | None = None

    async def _load(self) -> LockManagerPlugin:
        return _make_plugin(*self._args)

    def __await__(self) -> Generator[Any, None, LockManagerPlugin]:
        return self._load().__await__()

    async def __aenter__(self) -> LockManagerPlugin:
        if self._plugin is not None:
            raise InvalidStateError("this plugin_load(...) was already entered; call plugin_load again")
        self._plugin = _make_plugin(*self._args)
        return await self._plugin.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._plugin is not None
        return await self._plugin.__aexit__(exc_type, exc, tb)


def plugin_load(
    name: str,
    config: Config | Mapping[str, Any] | str | Path | None = None,
    *,
    pause_callback: PauseCallback | None = None,
) -> PluginLoad:
    """Load the lock driver ``name`` ("nop", "memory" or "file") with ``config``.

    Use ``async with plugin_load(name, config) as plugin:``; for a plugin whose
    lifetime is not a block, ``plugin = await task_group.start(run_plugin, name,
    config)``. ``await plugin_load(...)`` alone starts nothing (module docstring).
    """
    return PluginLoad(name, config, pause_callback)


async def run_plugin(
    name: str,
    config: Config | Mapping[str, Any] | str | Path | None = None,
    *,
    pause_callback: PauseCallback | None = None,
    task_status: TaskStatus[LockManagerPlugin] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the lock driver ``name`` until ``plugin.unload()`` or cancellation.

    ``plugin = await task_group.start(run_plugin, name, config)`` returns once
    the host has joined its lockspace; load errors are raised from ``start``.
    Pass ``pause_callback`` with ``functools.partial``.
    """
    plugin = _make_plugin(name, config, pause_callback)
    await plugin._run(task_status=task_status)


class LockManager:
    """One guest's lock manager handle (virLockManager)."""

    def __init__(self, plugin: LockManagerPlugin, flags: NewFlags) -> None:
        self._plugin = plugin
        self.flags = flags
        self._params: dict[str, Any] = {}
        self._resources: dict[str, Resource] = {}
        self._freed = False

    # -- parameters and resources (no I/O) ----------------------------------

    def set_parameter(self, name: str, value: Any) -> None:
        """Set "id", "uuid", "name", "pid" or "uri" (virLockManagerSetParameter)."""
        self._check_open()
        if name not in PARAMETERS:
            raise InvalidParameterError(f"unknown parameter {name!r} (known: {', '.join(PARAMETERS)})")
        if name in ("id", "pid"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidParameterError(f"parameter {name!r} must be an integer, got {value!r}")
            if name == "pid" and value <= 0:
                raise InvalidParameterError(f"parameter 'pid' must be positive, got {value}")
        elif not isinstance(value, str) or not value:
            raise InvalidParameterError(f"parameter {name!r} must be a non-empty string, got {value!r}")
        self._params[name] = value

    def register_resource(
        self,
        type: ResourceType,
        name: str,
        flags: ResourceFlags | int = ResourceFlags.NONE,
        **params: Any,
    ) -> Resource:
        """Add a DISK (path) or LEASE (key + lockspace, path, offset) resource."""
        self._check_open()
        resource = make_resource(type, name, flags, params)
        self._resources[resource.key] = resource
        return resource

    # -- lifecycle ------------------------------------------------------------

    async def acquire_object(
        self, flags: AcquireFlags | int = AcquireFlags.NONE, state: LockState | str | None = None
    ) -> DomainStatus:
        """Take every registered resource's lease, all or nothing (virLockManagerAcquire)."""
        flags = AcquireFlags(flags)
        lock_state = LockState.from_string(state) if isinstance(state, str) else state
        return await self._domain().start(
            self._resources.values(),
            pid=self._params.get("pid"),
            register_only=bool(flags & AcquireFlags.REGISTER_ONLY),
            state=lock_state,
        )

    async def release_all(self, *, save_state: bool = True) -> LockState:
        """Release every lease; returns the lock state to resume with (pause)."""
        state = await self._domain().pause()
        return state if save_state else LockState()

    async def acquire_resource(
        self, type: ResourceType, name: str, flags: ResourceFlags | int = ResourceFlags.NONE, **params: Any
    ) -> DomainStatus:
        """Hotplug one resource (virLockManagerAcquireResource)."""
        resource = make_resource(type, name, flags, params)
        status = await self._domain().hotplug(resource)
        self._resources[resource.key] = resource
        return status

    async def release_resource(
        self, type: ResourceType, name: str, flags: ResourceFlags | int = ResourceFlags.NONE, **params: Any
    ) -> DomainStatus:
        """Unplug one resource (virLockManagerReleaseResource)."""
        resource = make_resource(type, name, flags, params)
        status = await self._domain().unplug(resource)
        self._resources.pop(resource.key, None)
        return status

    async def get_child(self) -> int:
        """The guest pid: after a restart (ATTACH) verified alive and still holding its leases;
        on an incoming migration (MIGRATE) the pid set with ``set_parameter("pid")``.

        On a host with supervision (host.state_dir), without a "pid"
        parameter and not ATTACH, the guest is the one the supervisor named by
        get_supervisor_path/args started: this waits (bounded) until it registers,
        and raises SupervisorError if the supervisor exits first.
        """
        supervised = self._plugin.host.supervisors is not None
        if supervised and not self.flags & NewFlags.ATTACH and self._params.get("pid") is None:
            domain = self._domain()
            if self.flags & NewFlags.MIGRATE and (await domain.status()).phase == "undefined":
                await domain.start(self._resources.values(), register_only=True)
            child = await domain.child()
            self._params["pid"] = child
            return child
        if self.flags & NewFlags.MIGRATE:
            pid = self._params.get("pid")
            if pid is None:
                raise InvalidStateError("set the 'pid' parameter before get_child on an incoming migration")
            status = await self._domain().status()
            if status.phase == "undefined":
                await self._domain().start(self._resources.values(), pid=pid, register_only=True)
            return int(pid)
        return await self._domain().attach()

    async def inquire(self) -> DomainStatus:
        return await self._domain().status()

    async def shutdown(self) -> None:
        """The guest has stopped: release every lease (virLockManagerShutdown)."""
        await self._domain().shutdown()

    async def free(self) -> None:
        """Drop this handle; leases stay with the domain (virLockManagerFree)."""
        self._freed = True

    def get_supervisor_path(self) -> str:
        """The supervisor executable to run the guest under: ``[path, *args, *guest_argv]``."""
        from .supervisor import supervisor_path

        self._service()
        return supervisor_path()

    def get_supervisor_args(self) -> list[str]:
        """The supervisor's arguments (control socket, uuid, then ``--``); the guest's argv follows."""
        return self._service().args(self.identity.uuid)

    async def prepare_migrate(self, dest_uri: str) -> None:
        """Source: offer the guest's leases to the coordinator at ``dest_uri`` (its peer endpoint).

        Returns once the destination verified the offer and agreed; raises
        (and nothing changes) if it is unreachable, refuses, or is in another
        lockspace.
        """
        await self._domain().prepare_migration(dest_uri)

    async def complete_migrate_in(self, flags: MigrateFlags | int = MigrateFlags.NONE) -> None:
        """Either side: commit (0) or cancel (MigrateFlags.CANCEL) the migration.

        A side that needs the other's word waits for it, up to the migration
        deadline. A cancel after the commit raises MigrationCommittedError.
        """
        commit = not MigrateFlags(flags) & MigrateFlags.CANCEL
        await self._domain().complete_migration(
            commit=commit, resources=tuple(self._resources.values()), pid=self._params.get("pid")
        )

    # -- internals ----------------------------------------------------------

    def _service(self) -> SupervisorService:
        self._check_open()
        service = self._plugin.host.supervisors
        if service is None:
            raise NotSupportedError(
                "guest supervision needs host.state_dir (the supervisors' control socket lives there)"
            )
        return service

    def _check_open(self) -> None:
        if self._freed:
            raise InvalidStateError("this lock manager was freed")

    def _domain(self) -> Domain:
        self._check_open()
        uuid = self._params.get("uuid")
        if uuid is None:
            raise InvalidStateError("set the 'uuid' parameter before using the lock manager")
        params = self._params
        return self._plugin.host.domain(uuid, name=params.get("name", ""), id=params.get("id", -1))

    @property
    def identity(self) -> DomainIdentity:
        d = self._domain()
        return d.identity


def make_resource(
    type: ResourceType, name: str, flags: ResourceFlags | int, params: Mapping[str, Any]
) -> Resource:
    """Build a resource from the seed API's arguments, checking them."""
    if not isinstance(type, ResourceType):
        raise InvalidParameterError(f"unknown resource type {type!r}")
    if not isinstance(name, str) or not name:
        raise InvalidParameterError(f"resource name must be a non-empty string, got {name!r}")
    try:
        rflags = ResourceFlags(flags)
    except ValueError:
        raise InvalidParameterError(f"unknown resource flags {flags!r}") from None
    if type is ResourceType.DISK:
        if params:
            raise InvalidParameterError(f"disk resources take no parameters, got {sorted(params)}")
        if not os.path.isabs(name):
            raise InvalidParameterError(f"disk path must be absolute, got {name!r}")
        return Resource(type, name, rflags)
    allowed = {"lockspace", "key", "path", "offset"}
    unknown = set(params) - allowed
    if unknown:
        raise InvalidParameterError(f"unknown lease parameters {sorted(unknown)} (known: {sorted(allowed)})")
    lockspace = params.get("lockspace")
    if not isinstance(lockspace, str) or not lockspace:
        raise InvalidParameterError("lease resources need a non-empty 'lockspace' parameter")
    key = params.get("key", name)
    offset = params.get("offset", 0)
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InvalidParameterError(f"lease 'offset' must be a non-negative integer, got {offset!r}")
    return Resource(type, str(key), rflags, lockspace, str(params.get("path", "")), offset)
