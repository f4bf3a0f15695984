"""libvirt's lock manager plugin API, name for name, over the actors.

Booleans become typed exceptions: every failure raises an ActorlockError
subclass. As in libvirt, a manager is a short-lived handle: ``free()`` drops
the handle, not the leases; the guest's domain actor keeps them until
``shutdown()`` (or a later manager's release).

``plugin_load``/``unload`` enter and leave the host's task group, so call
them from the same task (as libvirtd does at start-up and shutdown), or use
``async with await plugin_load(...) as plugin``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs

from .actors.host import PauseCallback
from .actors.messages import DomainStatus
from .api import Domain, Host, open_host
from .config import BACKENDS, Config, load_config
from .constants import AcquireFlags, MigrateFlags, NewFlags, ObjectType, ResourceFlags, ResourceType
from .errors import InvalidParameterError, InvalidStateError, NotSupportedError
from .model import DomainIdentity, LockState, Resource

PARAMETERS = ("id", "uuid", "name", "pid", "uri")


class LockManagerPlugin:
    """A loaded lock driver: one host coordinator for this process."""

    def __init__(self, name: str, host: Host, stack: contextlib.AsyncExitStack) -> None:
        self.name = name
        self.host = host
        self._stack = stack
        self._loaded = True

    async def new_manager(
        self, object_type: ObjectType, flags: NewFlags | int = NewFlags.NONE
    ) -> LockManager:
        """A manager for one guest (virLockManagerNew)."""
        if not self._loaded:
            raise InvalidStateError(f"lock plugin {self.name!r} is unloaded")
        if object_type is not ObjectType.DOMAIN:
            raise InvalidParameterError(f"unsupported object type {object_type!r}")
        flags = NewFlags(flags)
        if flags & NewFlags.MIGRATE:
            self.host.coordinator.require_peer_service()
        return LockManager(self, flags)

    async def unload(self) -> None:
        """Stop the host coordinator (virLockManagerPluginUnload). Idempotent."""
        if self._loaded:
            self._loaded = False
            await self._stack.aclose()

    async def __aenter__(self) -> LockManagerPlugin:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.unload()


async def plugin_load(
    name: str,
    config: Config | Mapping[str, Any] | str | Path | None = None,
    *,
    pause_callback: PauseCallback | None = None,
) -> LockManagerPlugin:
    """Load the lock driver ``name`` ("nop", "memory" or "file") with ``config``."""
    if name not in BACKENDS:
        raise InvalidParameterError(f"unknown lock plugin {name!r} (known: {', '.join(BACKENDS)})")
    cfg = load_config(config)
    cfg = attrs.evolve(cfg, locking=attrs.evolve(cfg.locking, backend=name))
    stack = contextlib.AsyncExitStack()
    try:
        host = await stack.enter_async_context(open_host(cfg, pause_callback=pause_callback))
    except BaseException:
        await stack.aclose()
        raise
    return LockManagerPlugin(name, host, stack)


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

    async def release_all(self, save_state: bool = True) -> LockState:
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
        on an incoming migration (MIGRATE) the pid set with ``set_parameter("pid")``."""
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
        raise NotSupportedError("a lease supervisor is not available in this build yet")

    def get_supervisor_args(self) -> list[str]:
        raise NotSupportedError("a lease supervisor is not available in this build yet")

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
