"""What a host coordinator persists so a restart can re-attach running guests.

Files are replaced atomically (temp + rename) but not fsynced: they only
have to survive a crash of the coordinator process, which keeps the page
cache. A crash of the whole host kills the guests too, and a new boot id
then tells the restarted coordinator that every lease is gone anyway.

Callers bound every write by ``io_timeout`` and may abandon it (a hung
state_dir must not make the coordinator impossible to cancel). An abandoned
write may still finish later in its worker thread, so each write carries a
generation number per file and renames its temporary file only if no newer
write or delete of that file was issued meanwhile: a late write never
replaces a newer state.
"""

from __future__ import annotations

import enum
import itertools
import json
import os
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import anyio
import attrs

from .constants import ResourceFlags, ResourceType
from .errors import CorruptRecordError, LockspaceError
from .model import DomainIdentity, Lease, LeaseMode, Resource


class DomainPhase(enum.StrEnum):
    """Where a domain's lifecycle stands; the values are what state files hold.

    The moves between phases are one table: :mod:`actorlock.actors.phases`.
    """

    UNDEFINED = "undefined"  # nothing registered yet (never persisted)
    REGISTERED = "registered"  # guest bound, no leases (started paused)
    RUNNING = "running"  # leases held
    PAUSED = "paused"  # leases released, lock state saved
    LOST = "lost"  # leases lost, failure action ran
    MIGRATED = "migrated"  # the leases moved to another host; the guest must not run here
    STOPPED = "stopped"  # shut down and forgotten (never persisted)


# A state file names one of these; the others exist only in a running actor.
PERSISTED_PHASES = frozenset(
    {DomainPhase.REGISTERED, DomainPhase.RUNNING, DomainPhase.PAUSED, DomainPhase.LOST, DomainPhase.MIGRATED}
)


@attrs.frozen
class DomainState:
    """A domain as persisted: enough to re-attach after a coordinator restart."""

    identity: DomainIdentity
    phase: DomainPhase
    pid: int | None = None
    pid_start: int | None = None  # process start time, guards against pid reuse
    resources: tuple[Resource, ...] = ()
    leases: tuple[Lease, ...] = ()


@attrs.frozen
class HostPersisted:
    """Who this coordinator was, and when its last successful renewal started.

    ``renewed_at`` is on :data:`actorlock.clock.host_clock`, meaningful only
    on the same ``boot_id``: a restart reads it before any lockspace I/O, so
    it knows its old lease's deadline even while the lockspace stalls. It
    may lag the truth (written after the renewal), which only makes that
    deadline earlier.
    """

    name: str
    id: int
    incarnation: str
    boot_id: str = ""
    renewed_at: float | None = None


class StateStore(Protocol):
    async def load_host(self) -> HostPersisted | None: ...
    async def save_host(self, host: HostPersisted) -> None: ...
    async def load_domains(self) -> list[DomainState]: ...
    async def save_domain(self, state: DomainState) -> None: ...
    async def delete_domain(self, uuid: str) -> None: ...


class MemoryStateStore:
    """Keeps state in memory; survives a simulated coordinator restart in-process."""

    def __init__(self) -> None:
        self.host: HostPersisted | None = None
        self.domains: dict[str, DomainState] = {}

    async def load_host(self) -> HostPersisted | None:
        return self.host

    async def save_host(self, host: HostPersisted) -> None:
        self.host = host

    async def load_domains(self) -> list[DomainState]:
        return [self.domains[k] for k in sorted(self.domains)]

    async def save_domain(self, state: DomainState) -> None:
        self.domains[state.identity.uuid] = state

    async def delete_domain(self, uuid: str) -> None:
        self.domains.pop(uuid, None)


class FileStateStore:
    """``state_dir/host.json`` and ``state_dir/domains/<uuid>.json``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = Path(state_dir)
        self._domains = self.root / "domains"
        self._generations = itertools.count(1)
        self._issued: dict[Path, int] = {}  # newest write or delete issued per file (event loop only)
        self._renames = threading.Lock()  # worker threads: check the generation and rename as one step

    def _issue(self, path: Path) -> int:
        generation = self._issued[path] = next(self._generations)
        return generation

    def _replace(self, path: Path, data: Any, generation: int) -> None:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        with self._renames:
            if self._issued.get(path) != generation:
                tmp.unlink(missing_ok=True)  # overtaken by a newer write: this one is stale
                return
            os.replace(tmp, path)

    def _delete(self, path: Path, generation: int) -> None:
        with self._renames:
            if self._issued.get(path) == generation:
                path.unlink(missing_ok=True)

    async def _run(self, fn: Any, *args: Any) -> None:
        await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)

    def _prepare(self) -> None:
        try:
            self._domains.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LockspaceError(str(self.root), f"cannot create state directory: {exc.strerror}") from None

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._prepare)

    async def load_host(self) -> HostPersisted | None:
        data = await anyio.to_thread.run_sync(_read_json, self.root / "host.json")
        if data is None:
            return None
        try:
            renewed_at = data.get("renewed_at")
            return HostPersisted(
                str(data["name"]),
                int(data["id"]),
                str(data["incarnation"]),
                boot_id=str(data.get("boot_id", "")),
                renewed_at=None if renewed_at is None else float(renewed_at),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptRecordError(str(self.root / "host.json"), f"bad field: {exc}") from None

    async def save_host(self, host: HostPersisted) -> None:
        path = self.root / "host.json"
        await self._run(self._replace, path, attrs.asdict(host), self._issue(path))

    async def load_domains(self) -> list[DomainState]:
        def load() -> list[DomainState]:
            out = []
            for path in sorted(self._domains.glob("*.json")):
                data = _read_json(path)
                if data is not None:
                    out.append(_decode_domain(path, data))
            return out

        return await anyio.to_thread.run_sync(load)

    async def save_domain(self, state: DomainState) -> None:
        path = self._domains / f"{_safe_name(state.identity.uuid)}.json"
        await self._run(self._replace, path, _encode_domain(state), self._issue(path))

    async def delete_domain(self, uuid: str) -> None:
        path = self._domains / f"{_safe_name(uuid)}.json"
        await self._run(self._delete, path, self._issue(path))


def _safe_name(uuid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in uuid)


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CorruptRecordError(str(path), f"not JSON: {exc}") from None


def encode_resource(r: Resource) -> dict[str, Any]:
    return {
        "type": r.type.value,
        "name": r.name,
        "flags": int(r.flags),
        "lockspace": r.lockspace,
        "path": r.path,
        "offset": r.offset,
    }


def decode_resource(d: Mapping[str, Any]) -> Resource:
    return Resource(
        ResourceType(d["type"]),
        str(d["name"]),
        ResourceFlags(int(d["flags"])),
        str(d.get("lockspace", "")),
        str(d.get("path", "")),
        int(d.get("offset", 0)),
    )


def _encode_domain(s: DomainState) -> dict[str, Any]:
    return {
        "uuid": s.identity.uuid,
        "name": s.identity.name,
        "id": s.identity.id,
        "phase": s.phase,
        "pid": s.pid,
        "pid_start": s.pid_start,
        "resources": [encode_resource(r) for r in s.resources],
        "leases": [[lease.key, lease.mode.value, lease.token] for lease in s.leases],
    }


def _decode_phase(raw: Any) -> DomainPhase:
    try:
        phase = DomainPhase(raw)
    except ValueError:
        phase = None
    if phase not in PERSISTED_PHASES:
        raise ValueError(f"unknown phase {raw!r}")
    assert phase is not None
    return phase


def _decode_domain(path: Path, d: Any) -> DomainState:
    try:
        return DomainState(
            identity=DomainIdentity(str(d["uuid"]), str(d["name"]), int(d["id"])),
            phase=_decode_phase(d["phase"]),
            pid=None if d["pid"] is None else int(d["pid"]),
            pid_start=None if d["pid_start"] is None else int(d["pid_start"]),
            resources=tuple(decode_resource(r) for r in d["resources"]),
            leases=tuple(Lease(str(k), LeaseMode(m), int(t)) for k, m, t in d["leases"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptRecordError(str(path), f"bad domain state: {exc}") from None
