"""What a host coordinator persists so a restart can re-attach running guests.

Files are private to the coordinator's user (0600 in 0700 directories: they
show guest pids and disk paths), read without following symlinks or
blocking on special files, and replaced atomically (temp + rename) but not
fsynced: they only
have to survive a crash of the coordinator process, which keeps the page
cache. A crash of the whole host kills the guests too, and a new boot id
then tells the restarted coordinator that every lease is gone anyway.

Callers bound every write by ``io_timeout`` and may abandon it (a hung
state_dir must not make the coordinator impossible to cancel). An abandoned
write may still finish later in its worker thread, so each write carries a
generation number per file and renames its temporary file only if no newer
write or delete of that file was issued meanwhile: a late write never
replaces a newer state.

Domain writes and deletes go through one long-lived I/O thread fed by a
queue (:mod:`actorlock.backends.ioworker`), not a worker-thread hop each:
everything queued while a batch runs is written in the next one, and of
several writes of one file in a batch only the newest is made (the older
ones would be overtaken anyway). The host's own file keeps a plain worker
thread: the lifeline writes it and must not queue behind domain traffic.

A file that cannot be read is an error naming it, never skipped silently:
the host must not forget a guest it may be running. ``load_domains`` raises
:class:`~actorlock.errors.CorruptStateError` carrying the domains it could
read, and the host decides whether going on without the bad one is safe
(only after a reboot, when no guest of the previous run can still run).
"""

from __future__ import annotations

import enum
import itertools
import json
import math
import os
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import anyio
import attrs

from .backends.ioworker import BatchWorker, Job
from .constants import ResourceFlags, ResourceType
from .errors import CorruptRecordError, CorruptStateError, LockspaceError
from .model import DomainIdentity, Lease, LeaseMode, Resource
from .safefile import read_regular

# A domain's state is a few KB even with hundreds of disks.
MAX_STATE_FILE = 4 << 20


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


def completes_without_suspending(store: object) -> bool:
    """Whether every call of ``store`` finishes without ever suspending: a plain :class:`MemoryStateStore`."""
    return type(store) is MemoryStateStore


class _StateJob(Job[None]):
    __slots__ = ("data", "generation", "path")

    def __init__(self, path: Path, data: Any, generation: int) -> None:
        super().__init__()
        self.path = path
        self.data = data  # None: delete the file
        self.generation = generation


class FileStateStore:
    """``state_dir/host.json`` and ``state_dir/domains/<uuid>.json``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = Path(state_dir)
        self._domains = self.root / "domains"
        self._generations = itertools.count(1)
        self._issued: dict[Path, int] = {}  # newest write or delete issued per file (event loop only)
        self._renames = threading.Lock()  # worker threads: check the generation and rename as one step
        self._worker: BatchWorker[_StateJob] = BatchWorker("actorlock-state", self._write_batch)

    def _issue(self, path: Path) -> int:
        generation = self._issued[path] = next(self._generations)
        return generation

    def _replace(self, path: Path, data: Any, generation: int) -> None:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        # O_EXCL never follows a symlink planted under the temporary name.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=1, sort_keys=True))
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

    async def _queue(self, path: Path, data: Any) -> None:
        """Write (or with None delete) ``path`` in the I/O worker's next batch.

        Abandonable, unbounded: the callers bound it by io_timeout.
        """
        job = _StateJob(path, data, self._issue(path))
        await self._worker.submit(job, bound=None)
        job.result()

    def _write_batch(self, jobs: list[_StateJob]) -> list[_StateJob]:
        newest: dict[Path, _StateJob] = {}
        for job in jobs:
            if job.path not in newest or newest[job.path].generation < job.generation:
                newest[job.path] = job
        for job in newest.values():
            try:
                if job.data is None:
                    self._delete(job.path, job.generation)
                else:
                    self._replace(job.path, job.data, job.generation)
            except BaseException as exc:
                job.fail(exc)
        for job in jobs:
            # Overtaken: done when the newer write of its file is, failed when it failed.
            job.error = newest[job.path].error
        return []

    def _prepare(self) -> None:
        try:
            self._domains.mkdir(mode=0o700, parents=True, exist_ok=True)
            # An existing state_dir from before may be world-readable: tighten it.
            for directory in (self.root, self._domains):
                os.chmod(directory, 0o700, follow_symlinks=False)
        except OSError as exc:
            raise LockspaceError(str(self.root), f"cannot create state directory: {exc.strerror}") from None

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._prepare)

    async def load_host(self) -> HostPersisted | None:
        path = self.root / "host.json"
        data = await anyio.to_thread.run_sync(_read_json, path)
        if data is None:
            return None
        fields = _Checked(path, data)
        renewed_at = fields.get("renewed_at", (int, float), optional=True)
        if renewed_at is not None and not math.isfinite(renewed_at):
            raise CorruptRecordError(str(path), f"field 'renewed_at' is not finite: {renewed_at}")
        return HostPersisted(
            fields.get("name", str),
            fields.get("id", int),
            fields.get("incarnation", str),
            boot_id=fields.get("boot_id", str, optional=True) or "",
            renewed_at=None if renewed_at is None else float(renewed_at),
        )

    async def save_host(self, host: HostPersisted) -> None:
        path = self.root / "host.json"
        await self._run(self._replace, path, attrs.asdict(host), self._issue(path))

    async def load_domains(self) -> list[DomainState]:
        def load() -> list[DomainState]:
            out = []
            bad: list[CorruptRecordError] = []
            for path in sorted(self._domains.glob("*.json")):
                try:
                    data = _read_json(path)
                    if data is not None:
                        out.append(_decode_domain(path, data))
                except CorruptRecordError as exc:
                    bad.append(exc)
            if bad:
                more = f" (and {len(bad) - 1} more unreadable state files)" if len(bad) > 1 else ""
                raise CorruptStateError(bad[0].path, bad[0].problem + more, out)
            return out

        return await anyio.to_thread.run_sync(load)

    async def save_domain(self, state: DomainState) -> None:
        path = self._domains / f"{_safe_name(state.identity.uuid)}.json"
        await self._queue(path, _encode_domain(state))

    async def delete_domain(self, uuid: str) -> None:
        path = self._domains / f"{_safe_name(uuid)}.json"
        await self._queue(path, None)


def _safe_name(uuid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in uuid)


def _read_json(path: Path) -> Any:
    try:
        data = read_regular(str(path), MAX_STATE_FILE)
    except OSError as exc:
        raise CorruptRecordError(str(path), f"cannot be read: {exc.strerror or exc}") from None
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptRecordError(str(path), f"is not UTF-8 text: {exc}") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CorruptRecordError(str(path), f"not JSON: {exc}") from None


class _Checked:
    """Typed access to the fields of one decoded JSON object; errors name the file and field."""

    def __init__(self, path: Path, data: Any) -> None:
        if not isinstance(data, dict):
            raise CorruptRecordError(str(path), f"is not a JSON object: {type(data).__name__}")
        self._path = path
        self._data: dict[str, Any] = data

    def get(self, name: str, kind: type[Any] | tuple[type[Any], ...], *, optional: bool = False) -> Any:
        value = self._data.get(name)
        if value is None:
            if optional:
                return None
            raise CorruptRecordError(str(self._path), f"missing field {name!r}")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CorruptRecordError(str(self._path), f"field {name!r} has a bad value {value!r}")
        return value


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
    if not isinstance(d, dict):
        raise CorruptRecordError(str(path), f"is not a JSON object: {type(d).__name__}")
    if d.get("phase") not in {phase.value for phase in PERSISTED_PHASES}:
        raise CorruptRecordError(str(path), f"unknown phase {d.get('phase')!r}")
    try:
        return DomainState(
            identity=DomainIdentity(str(d["uuid"]), str(d["name"]), int(d["id"])),
            phase=_decode_phase(d["phase"]),
            pid=None if d["pid"] is None else int(d["pid"]),
            pid_start=None if d["pid_start"] is None else int(d["pid_start"]),
            resources=tuple(decode_resource(r) for r in d["resources"]),
            leases=tuple(Lease(str(k), LeaseMode(m), int(t)) for k, m, t in d["leases"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptRecordError(str(path), f"bad domain state: {exc}") from None
