"""The host process: a standby that becomes one chaos host and runs the driver's ops on it.

It reads ops as JSON lines on stdin and answers on stdout (logs go to stderr),
and appends what its coordinator and its guests do to its history file.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import (
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import suppress
from typing import Any

import anyio
import anyio.abc
import attrs

from ... import events as host_events
from ...api import Domain, Host, open_host
from ...clock import host_clock
from ...errors import ActorlockError, InvalidParameterError, InvalidStateError, ResourceBusyError
from ...guest import is_running_sync, process_start_time_sync
from ...model import Lease, LeaseMode, Resource, disk
from ...supervisor import SupervisorService
from ...testing.history import (
    AcquireRefused,
    GuestStarted,
    GuestStopped,
    GuestWrote,
    History,
    HistoryEvent,
    LeaseHeld,
    LeasesTransferred,
    MigrationCancelled,
    StopReason,
    TransferredLease,
)
from ..host_processes.agent import LineReader, emit
from .codec import event_to_json
from .processes import open_pidfd, wait_exit
from .settings import GUEST_ARGV, PEER_TIMING, SUPERVISOR_KILL_LIMIT

log = logging.getLogger(__name__)


# --- the host process ---------------------------------------------------------------------


def _read_first_line(fd: int) -> bytes:
    """The standby's first line, read a byte at a time so nothing after it is buffered away."""
    line = bytearray()
    while True:
        byte = os.read(fd, 1)
        if not byte or byte == b"\n":
            return bytes(line)
        line += byte


def _resources(disks: Iterable[Sequence[Any]]) -> tuple[Resource, ...]:
    return tuple(disk(str(path), shared=bool(shared)) for path, shared in disks)


@attrs.define(eq=False)
class _Guest:
    """A guest as its host process sees it: the domain, its supervised ``sleep`` and its writer."""

    uuid: str
    resources: tuple[Resource, ...]
    pid: int | None
    pid_start: int | None
    supervisor_pid: int = 0
    leases: dict[str, Lease] = attrs.Factory(dict)
    running: bool = False
    writer: anyio.CancelScope | None = None

    def alive(self) -> bool:
        return self.pid is not None and is_running_sync(self.pid, self.pid_start)

    def disk_sets(self) -> tuple[list[str], list[str]]:
        exclusive = [r.key for r in self.resources if not r.readonly and r.mode is LeaseMode.EXCLUSIVE]
        shared = [r.key for r in self.resources if not r.readonly and r.mode is LeaseMode.SHARED]
        return exclusive, shared


class _HostAgent:
    """Runs the driver's ops on one coordinator and records what its guests do.

    Args:
        name: the host's name (every record names it).
        history_fd: the history file, opened for appending.
        seed: seeds the writers' phases.
        write_interval: how often a running guest writes.
    """

    def __init__(self, name: str, history_fd: int, seed: int, write_interval: float) -> None:
        self.name = name
        self.host: Host | None = None
        self.tg: anyio.abc.TaskGroup | None = None
        self.guests: dict[str, _Guest] = {}
        self._fd = history_fd
        self._rng = random.Random(f"{seed}:{name}:{os.getpid()}")
        self._write_interval = write_interval
        self._settled: dict[tuple[str, str], list[str]] = {}  # (uuid, role) -> outcomes, in order
        self._settle_changed = anyio.Event()
        self._mark: dict[tuple[str, str], int] = {}  # settlements seen when the migration began
        self._offered: dict[str, tuple[Lease, ...]] = {}  # the source's leases at prepare
        self._destination: dict[str, str] = {}

    # -- records ------------------------------------------------------------------------------

    def record(self, event: HistoryEvent) -> None:
        """Append one record to the history file (one write: a kill cannot split it)."""
        os.write(self._fd, (json.dumps(event_to_json(event)) + "\n").encode())

    def sink(self, event: host_events.HostEvent) -> None:
        """The coordinator's event sink: every event becomes a record, on the shared clock."""
        now = time.monotonic()
        if isinstance(event, host_events.LeasesTransferred):
            self.record(_transferred(now, event))
            return
        if isinstance(event, host_events.FailureActionRan):
            guest = self.guests.get(event.domain)
            if guest is not None and guest.running and not guest.alive():
                self._halt(guest, StopReason.FENCED, now)
        self.record(History().record_host_event(event, now))
        if isinstance(event, host_events.MigrationSettled):
            # Strings from here on: they cross to the driver process as JSON.
            uuid, role, outcome = event.domain, event.role.value, event.outcome.value
            self._settled.setdefault((uuid, role), []).append(outcome)
            self._settle_changed.set()
            self._settle_changed = anyio.Event()
            if role == "source" and outcome != "committed":
                leases = self._offered.get(uuid, ())
                self.record(MigrationCancelled(now, uuid, self.name, leases, self._destination.get(uuid, "")))
        elif isinstance(event, host_events.MigrationStarted):
            self._destination[event.domain] = event.destination

    # -- guests -------------------------------------------------------------------------------

    def _run(self, guest: _Guest, leases: Iterable[Lease], *, record_start: bool) -> bool:
        """The guest runs (and writes) from now, if its ``sleep`` is still alive."""
        now = time.monotonic()  # before the check: the guest provably lived at this instant
        if not guest.alive():
            return False
        guest.leases = {lease.key: lease for lease in leases}
        guest.running = True
        if record_start:
            exclusive, shared = guest.disk_sets()
            self.record(GuestStarted(now, self.name, guest.uuid, exclusive, shared))
        scope = guest.writer = anyio.CancelScope()
        assert self.tg is not None
        self.tg.start_soon(self._write_loop, guest, scope, name=f"writer {guest.uuid}")
        return True

    def _halt(self, guest: _Guest, reason: StopReason, now: float | None = None) -> None:
        """The guest stops writing now; recorded before anything is released."""
        if guest.writer is not None:
            guest.writer.cancel()
            guest.writer = None
        if guest.running:
            guest.running = False
            self.record(GuestStopped(time.monotonic() if now is None else now, self.name, guest.uuid, reason))
            if reason is StopReason.FENCED:
                emit({"event": "guest_stopped", "uuid": guest.uuid, "reason": reason.value})

    async def _write_loop(self, guest: _Guest, scope: anyio.CancelScope) -> None:
        with scope:
            await anyio.sleep(self._rng.uniform(0.0, self._write_interval))
            while guest.running:
                now = time.monotonic()  # read before the liveness check, as in _run
                if not guest.alive():
                    # Killed (by fencing) before the failure action was reported.
                    self._halt(guest, StopReason.FENCED, now)
                    return
                for lease in guest.leases.values():
                    self.record(GuestWrote(now, self.name, guest.uuid, lease.key, lease.token, lease.mode))
                await anyio.sleep(self._write_interval)

    async def _settlement(self, uuid: str, role: str, limit: float) -> str:
        """The outcome of the migration that began at the last mark, or "unknown" after ``limit`` s."""
        mark = self._mark.get((uuid, role), 0)
        with anyio.move_on_after(limit):
            while True:
                outcomes = self._settled.get((uuid, role), [])
                if len(outcomes) > mark:
                    return outcomes[mark]
                await self._settle_changed.wait()
        return "unknown"

    def _api(self) -> Host:
        assert self.host is not None
        return self.host

    async def _discard(self, uuid: str) -> bool:
        """Shut the domain down (release everything, forget it); False if that failed."""
        try:
            await self._api().domain(uuid).shutdown()
        except ActorlockError as exc:
            log.warning("host %s: shutting %s down failed: %s", self.name, uuid, exc)
            return False
        return True

    # -- the control channel ------------------------------------------------------------------

    async def serve(self, request: Mapping[str, Any]) -> None:
        """Run one op and answer it; a failure is answered, never raised."""
        request_id = request.get("id")
        op = str(request.get("op", ""))
        try:
            handler = getattr(self, f"op_{op}", None) if op.isidentifier() else None
            if handler is None:
                raise InvalidParameterError(f"unknown op {op!r}")
            result = dict(await handler(**request.get("args", {})))
        except Exception as exc:  # the driver decides what a failure means
            reply: dict[str, Any] = {
                "id": request_id,
                "ok": False,
                "error": type(exc).__name__,
                "kinds": [cls.__name__ for cls in type(exc).__mro__],
                "message": str(exc),
            }
            if isinstance(exc, ResourceBusyError):
                reply["resource"] = exc.resource
                reply["holders"] = [list(h) for h in exc.holders]
            emit(reply)
            return
        emit({"id": request_id, "ok": True, "result": result})

    async def op_start(
        self, uuid: str, disks: Sequence[Sequence[Any]], *, probe: bool = False
    ) -> dict[str, Any]:
        """Start a guest: take its leases, then its ``sleep`` runs under its supervisor and writes.

        A probe is a guest that writes once with its new tokens and stops at
        once (start, write and stop share one instant); it needs no ``sleep``.
        """
        resources = _resources(disks)
        domain = self._api().domain(uuid, name=uuid[:8])
        leftover = self.guests.pop(uuid, None)
        if leftover is not None:
            self._halt(leftover, StopReason.SHUTDOWN)
        status = await domain.status()
        if status.phase not in ("undefined", "stopped"):
            # A leftover of a failed op: libvirt would have cleaned it up.
            await self._end_guest(uuid, leftover)
            await domain.shutdown()
        guest = _Guest(uuid, resources, None, None)
        try:
            status = await domain.start(resources)
        except ResourceBusyError as exc:
            self.record(AcquireRefused.from_error(time.monotonic(), self.name, uuid, exc))
            await self._discard(uuid)
            raise
        except ActorlockError:
            await self._discard(uuid)
            raise
        leases = [[lease.key, lease.token] for lease in status.leases]
        if probe:
            now = time.monotonic()
            exclusive, shared = guest.disk_sets()
            self.record(GuestStarted(now, self.name, uuid, exclusive, shared))
            for lease in status.leases:
                self.record(GuestWrote(now, self.name, uuid, lease.key, lease.token, lease.mode))
            self.record(GuestStopped(now, self.name, uuid, StopReason.SHUTDOWN))
            await self._discard(uuid)
            return {"running": False, "leases": leases}
        # The leases are held: now the guest starts, as libvirt starts QEMU, under its supervisor.
        await self._spawn(guest, domain)
        self.guests[uuid] = guest
        status = await domain.status()
        running = status.phase == "running" and self._run(guest, status.leases, record_start=True)
        return {"running": running, "leases": leases, **guest_pids(guest)}

    async def _spawn(self, guest: _Guest, domain: Domain) -> None:
        """Run the guest's ``sleep`` under its supervisor (``Domain.spawn``); on failure no domain is left."""
        try:
            guest.pid = await domain.spawn(GUEST_ARGV)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._end_guest(guest.uuid, None)
                await self._discard(guest.uuid)
            raise
        guest.pid_start = await anyio.to_thread.run_sync(process_start_time_sync, guest.pid)
        supervised = self._supervisors().guest(guest.uuid)
        guest.supervisor_pid = supervised.supervisor_pid if supervised is not None else 0

    async def _end_guest(self, uuid: str, guest: _Guest | None) -> bool:
        """SIGKILL the domain's guest (its QEMU exits) and wait until it is gone; False if it outlived that.

        The guest is the one this process started or re-attached, else the
        one a supervisor registered for the domain.
        """
        pid, start = (guest.pid, guest.pid_start) if guest is not None else (None, None)
        supervised = self._supervisors().guest(uuid)
        if pid is None and supervised is not None and supervised.guest_pid and supervised.exit_status is None:
            pid, start = supervised.guest_pid, supervised.guest_start or None
        if pid is None:
            return True
        fd = await anyio.to_thread.run_sync(open_pidfd, pid, start)
        if fd is None:
            return True
        try:
            with suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            return await wait_exit(fd, SUPERVISOR_KILL_LIMIT)
        finally:
            os.close(fd)

    def _supervisors(self) -> SupervisorService:
        service = self._api().supervisors
        if service is None:
            raise InvalidStateError("the chaos hosts run their guests under supervisors: state_dir is set")
        return service

    async def op_stop(self, uuid: str) -> dict[str, Any]:
        """The guest stops (no more writes, its ``sleep`` killed), then its domain is shut down."""
        guest = self.guests.pop(uuid, None)
        if guest is not None:
            self._halt(guest, StopReason.SHUTDOWN)
        await self._end_guest(uuid, guest)
        return {"released": await self._discard(uuid)}

    async def op_kill_supervisor(self, uuid: str) -> dict[str, Any]:
        """SIGKILL the guest's supervisor: its guest must die with it (PR_SET_PDEATHSIG).

        The answer says whether it did within :data:`SUPERVISOR_KILL_LIMIT`
        and how long after the kill it was seen dead; the guest stops (fenced)
        at that moment, unless its writer saw it dead first.
        """
        guest = self.guests.get(uuid)
        supervised = self._supervisors().guest(uuid)
        if guest is None or guest.pid is None or supervised is None or not supervised.connected:
            raise InvalidStateError(f"{uuid} has no running supervised guest here")
        fd = await anyio.to_thread.run_sync(open_pidfd, guest.pid, guest.pid_start)
        supervisor = await anyio.to_thread.run_sync(open_pidfd, supervised.supervisor_pid, None)
        if fd is None or supervisor is None:
            for opened in (fd, supervisor):
                if opened is not None:
                    os.close(opened)
            raise InvalidStateError(f"the guest or the supervisor of {uuid} is gone already")
        try:
            killed_at = time.monotonic()
            with suppress(ProcessLookupError):
                signal.pidfd_send_signal(supervisor, signal.SIGKILL)
            died = await wait_exit(fd, SUPERVISOR_KILL_LIMIT)
            now = time.monotonic()
        finally:
            os.close(fd)
            os.close(supervisor)
        if died:
            self._halt(guest, StopReason.FENCED, now)
        return {"died": died, "after": now - killed_at, "supervisor": supervised.supervisor_pid}

    async def op_prepare(self, uuid: str, dest: str) -> dict[str, Any]:
        """Source: offer the guest's leases to the host whose peer endpoint is ``dest``."""
        domain = self._api().domain(uuid)
        status = await domain.status()
        self._offered[uuid] = tuple(status.leases)
        self._mark[(uuid, "source")] = len(self._settled.get((uuid, "source"), []))
        await domain.prepare_migration(dest)
        return {}

    async def op_incoming(self, uuid: str, disks: Sequence[Sequence[Any]]) -> dict[str, Any]:
        """Destination: register the incoming guest (no leases, not running yet) under its own supervisor."""
        resources = _resources(disks)
        self._mark[(uuid, "destination")] = len(self._settled.get((uuid, "destination"), []))
        guest = _Guest(uuid, resources, None, None)
        domain = self._api().domain(uuid, name=uuid[:8])
        await domain.start(resources, register_only=True)
        await self._spawn(guest, domain)
        self.guests[uuid] = guest
        return guest_pids(guest)

    async def op_commit(self, uuid: str, role: str) -> dict[str, Any]:
        """Either side says commit; the answer is the settled outcome and whether the guest runs here.

        The source's guest pauses first (its CPUs stop before the switchover)
        and runs again only if the migration settled as cancelled.
        """
        return await self._complete(uuid, role, commit=True)

    async def op_cancel(self, uuid: str, role: str) -> dict[str, Any]:
        """Either side says cancel; the source's guest never paused."""
        return await self._complete(uuid, role, commit=False)

    async def _complete(self, uuid: str, role: str, *, commit: bool) -> dict[str, Any]:
        domain = self._api().domain(uuid)
        guest = self.guests.get(uuid)
        if role == "source" and commit and guest is not None and guest.running:
            self._halt(guest, StopReason.PAUSED)
        error = ""
        try:
            if role == "destination" and commit and guest is not None:
                await domain.complete_migration(commit=True, resources=guest.resources, pid=guest.pid)
            else:
                await domain.complete_migration(commit=commit)
        except ActorlockError as exc:
            error = f"{type(exc).__name__}: {exc}"
        outcome = await self._settlement(uuid, role, PEER_TIMING["migration_timeout"] + 1.0)
        status = await domain.status()
        # A paused source whose outcome is unknown stays paused: it must not write.
        running = False
        if guest is not None and status.phase == "running":
            if guest.running:
                running = True  # a source that never paused (cancel) keeps writing
            elif outcome == "committed" if role == "destination" else outcome == "cancelled":
                running = self._run(guest, status.leases, record_start=True)
        return {"outcome": outcome, "running": running, "phase": status.phase, "error": error}

    async def op_attach(
        self, uuid: str, disks: Sequence[Sequence[Any]], *, was_paused: bool
    ) -> dict[str, Any]:
        """After a coordinator restart: re-attach a guest that kept running, and let it write again.

        A guest that was running when the coordinator died continues its run
        (nothing is recorded); one that was paused starts a new run.
        """
        domain = self._api().domain(uuid, name=uuid[:8])
        pid = await domain.attach()
        status = await domain.status()
        pid_start = await anyio.to_thread.run_sync(process_start_time_sync, pid)
        guest = _Guest(uuid, _resources(disks), pid, pid_start)
        supervised = self._supervisors().guest(uuid)  # once its supervisor reconnected
        guest.supervisor_pid = supervised.supervisor_pid if supervised is not None else 0
        self.guests[uuid] = guest
        running = status.phase == "running" and self._run(guest, status.leases, record_start=was_paused)
        return {"pid": pid, "running": running}

    async def op_known(self) -> dict[str, Any]:
        return {"domains": self._api().known_domains()}

    async def op_snapshot(self) -> dict[str, Any]:
        """Record every holder entry of the lockspace as ``LeaseHeld``.

        Stamped with the time *before* the read: an acquisition recorded
        earlier had finished before the read began, so the snapshot reflects it.
        """
        now = time.monotonic()
        records = await self._api().leases()
        held = 0
        for record in records:
            for holder in record.holders:
                self.record(
                    LeaseHeld(
                        now, record.key, holder.owner.host, holder.owner.domain, holder.mode, holder.token
                    )
                )
                held += 1
        return {"held": held}

    async def op_ping(self) -> dict[str, Any]:
        return {}


def guest_pids(guest: _Guest) -> dict[str, Any]:
    """The guest's processes, for the driver: it judges their deaths when the host is gone."""
    return {"pid": guest.pid, "start": guest.pid_start, "supervisor": guest.supervisor_pid}


def _tap_deadlines(service: SupervisorService) -> None:
    """Tell the driver every lease deadline the coordinator pushes to its supervisors.

    The driver judges a coordinator killed for good against the last one:
    its guests must be dead by then plus fence_timeout. Converted to
    CLOCK_MONOTONIC, the history's clock (the deadlines are on the host clock).
    """
    push = service.renewed

    def renewed(expires_at: float) -> None:
        push(expires_at)
        emit({"event": "deadline", "at": expires_at - host_clock() + time.monotonic()})

    # The service's own hook, called after each renewal; it must not wait, and neither does this.
    service.renewed = renewed  # type: ignore[method-assign]


def _transferred(now: float, event: host_events.LeasesTransferred) -> HistoryEvent:
    """The host's transfer event as the checker's ``LeasesTransferred``."""
    before = {lease.key: lease for lease in event.before}
    moved = [
        TransferredLease(
            lease.key, lease.mode, before[lease.key].token if lease.key in before else 0, lease.token
        )
        for lease in event.after
    ]
    source, destination = event.source, event.destination
    return LeasesTransferred(now, source.host, source.domain, destination.host, destination.domain, moved)


async def _run_host(spec: Mapping[str, Any]) -> int:
    """One host: join, say ready, serve ops until stdin closes."""
    fd = os.open(spec["history"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    agent = _HostAgent(spec["name"], fd, int(spec["seed"]), float(spec["write_interval"]))
    try:
        async with open_host(spec["config"], event_sink=agent.sink) as host:
            agent.host = host
            if host.supervisors is not None:
                _tap_deadlines(host.supervisors)
            reader = LineReader(sys.stdin.fileno())
            async with anyio.create_task_group() as tg:
                agent.tg = tg
                emit(
                    {
                        "event": "ready",
                        "pid": os.getpid(),
                        "endpoint": host.peer_endpoint,
                        "incarnation": host.incarnation,
                        "resumed": host.resumed,
                    }
                )
                while (line := await reader.readline()) is not None:
                    if line.strip():
                        tg.start_soon(agent.serve, json.loads(line))
                tg.cancel_scope.cancel()  # stdin closed: the driver wants us gone
    except (ActorlockError, OSError) as exc:
        emit({"event": "failed", "error": type(exc).__name__, "message": str(exc)})
        return 1
    finally:
        os.close(fd)
    return 0


async def _nothing() -> None:
    pass


def host_process_main() -> int:
    """A standby host process: import everything, say so, then become the host the first line names.

    Being warm matters: a coordinator restarted within ``lease_timeout`` of
    its last renewal resumes its incarnation, and a cold interpreter may not
    even have imported zmq by then.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    # The control channel moves off fd 1: the supervisors this process starts inherit fd 1 and
    # outlive it, and the driver learns of its death from the channel's end of file.
    control = os.dup(1)  # not inheritable
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    sys.stdout = open(control, "w", encoding="utf-8")  # noqa: SIM115 - the process's stdout from now on
    for backend in ("asyncio", "trio"):
        anyio.run(_nothing, backend=backend)  # loads both event loops' modules now
    emit({"event": "standby", "pid": os.getpid()})
    line = _read_first_line(sys.stdin.fileno())
    if not line.strip():
        return 0
    spec = json.loads(line)
    log_fd = os.open(spec["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    logging.basicConfig(
        level=logging.WARNING, format=f"%(relativeCreated)8.0f {spec['name']} %(name)s: %(message)s"
    )
    return anyio.run(_run_host, spec, backend=spec["backend"])
