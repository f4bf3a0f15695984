"""A multi-process chaos run: real host processes, real faults, one merged history, one checker.

:func:`run_chaos` starts ``hosts`` host processes on loopback (``h1``, ``h2``,
...), each running a real coordinator (:func:`actorlock.open_host`) on one
file lockspace, with a ``[peer]`` service (CURVE unless ``plaintext``) and a
state directory, so a restarted process re-attaches. The driver (the calling
process) starts, stops and migrates guests on them while it kills, freezes
and restarts the processes; at the end every process's history is merged
with the driver's and :func:`actorlock.testing.checker.check` judges it.

Guests
    A guest is a real ``sleep`` process (spawned and reaped by the driver)
    whose pid is registered with the domain, so ``failure_action =
    "poweroff"`` really kills it. Its *writes* are made by a task in the host
    process: every ``WRITE_INTERVAL`` it reads the clock, checks that the
    ``sleep`` is still alive (pid and start time) and records ``GuestWrote``
    for each lease with the lease's fencing token. Reading the clock *before*
    the check means a write is only ever recorded at an instant the guest
    provably still lived, so a guest killed by fencing writes nothing after
    its death. A write represents I/O the guest issued; the writer lives in
    the host process because that is where the guest's tokens are known.

Workload
    ``WORKERS`` tasks each loop: start a guest of a fixed catalogue (GUESTS
    guests on EXCLUSIVE_DISKS disks plus a shared one; every disk is wanted
    by several guests, and any guest may be started on any host, also while
    it runs elsewhere: the lock manager must refuse), stop one, migrate one
    (prepare on the source, incoming on the destination, then commit, or
    about one time in seven cancel, on both sides at once), probe a disk
    (take it for an instant and write once), shut down leftover domains, or
    snapshot the lease records (``LeaseHeld``). Operations on one guest of one host
    are serialized by a lock; everything else runs concurrently.

Clock
    Every record carries ``time.monotonic()``: CLOCK_MONOTONIC is one clock
    for every process of a Linux machine, so the merged history is in one
    time base. (anyio's clock is not: trio adds a random offset per process.)

What each process records
    Host processes write JSON lines (see :func:`event_to_json`) to
    ``history-<host>.jsonl``: the coordinator's event sink converted as
    :meth:`History.record_host_event` does, plus ``transfer`` as
    ``LeasesTransferred`` and a cancelled outgoing migration as
    ``MigrationCancelled`` (with the leases the source held at prepare), and
    the guests' ``GuestStarted`` / ``GuestWrote`` / ``GuestStopped`` and
    ``AcquireRefused`` (stamped where the refusal happened, not where the
    driver heard of it). The driver records what only it sees: crashes,
    SIGSTOP windows and storage stalls (``FaultInjected``/``FaultsHealed``)
    and guests it killed itself. A guest stops (``GuestStopped``) *before*
    its leases are released; a migration's source pauses (``GuestStopped(PAUSED)``) before
    it is told to commit and runs again (``GuestStarted``) only once the
    migration settled as cancelled; the destination starts only once its
    domain runs (committed).

Faults (see :class:`ChaosReport` for the counts):

``kill9``
    SIGKILL of a host process *and* of every guest ``sleep`` on it (the
    machine died), then ``HostCrashed``. The host stays down for a random
    while, then ``restart`` brings it back with the same id and state
    directory: after a short downtime it resumes its incarnation, after a
    longer one it joins as a new one (waiting ``host_dead``); either way the
    driver then shuts down every domain the restarted coordinator still
    tracks (their guests died).
``coordinator_crash``
    SIGKILL of the host process only, ``CoordinatorCrashed``; its guests keep
    running. Taken only between operations of that host (the driver holds
    its guests' locks throughout), so the re-attach path is exercised
    cleanly. A warm standby process becomes the host at once; if it has not
    resumed its incarnation within ``WATCHDOG`` seconds of the crash, the
    driver kills the guests itself, as the not-yet-written supervisor would
    (docs/timing.md, "What is not covered yet"): a guest outliving a
    coordinator that stays down past ``host_dead`` is a known, documented
    gap, not a finding. (A coordinator back too late on the same boot also
    fences its persisted guests before it rejoins; the watchdog does not
    rely on that.) Otherwise every guest is re-attached (``Domain.attach``)
    and writes again with the tokens it had; a guest that cannot be
    re-attached is killed, as libvirt kills a guest it cannot reconnect to.
    While it writes nothing (its coordinator is down) a guest still counts
    as running.
``sigstop``
    SIGSTOP of a host process, SIGCONT after 0.1 to ``SIGSTOP_MAX`` seconds.
    The coordinator *and* the guests' writes freeze (the writers live in the
    process): that is what a frozen host is. The guests' ``sleep`` processes
    are not stopped; they do no I/O of their own. A stop longer than the
    time left on the lease makes the coordinator fence at once on waking.
    Stops are kept below ``host_dead - fence_timeout - renew_interval``
    (with margin): a host frozen past the moment others may take its disks,
    whose guests then write before it fences, is split brain that only
    storage-side fencing or a watchdog could prevent; the design does not
    claim otherwise (cluster.py's ``pause_host`` has the same bound).
``storage-stall``
    Something outside the host blocks its lockspace I/O, as a hung NFS
    server would: a helper process (a few lines of Python, no import of
    ours) takes the same OFD write locks the file backend takes, on the
    host's liveness lock file (``hosts/<id>.lock``) and on the lease lock
    files of some disks, holds them for ``STALL_MIN`` to ``STALL_MAX``
    seconds (up to five lease_timeouts: past host_dead and past
    io_timeout), and is then killed, which releases them (also at the end
    of the run, whatever happens, and it exits by itself soon after its
    time should the driver die). The host's renewals block, its lease
    expires and it must fence its guests; its releases and transfers of a
    held disk block too. Another host is blocked only when it writes the
    same disk's record, and only until the stall ends. Locks are taken in
    the backend's order (liveness, then leases sorted by key), so the
    helper cannot deadlock with a host. Lock-free reads (listing hosts and
    records, the liveness reads of an acquisition) are not blocked.
    Each stall draws (from the seed) whether it holds its guests' disks
    (otherwise other hosts may take them over during the stall once the
    host is dead to them), some other guests' disks, whether the host gets
    a burst of ``BURST`` starts at once, each blocked on a disk the stall
    holds, which fills its worker threads (the saturated pool a busy host
    has), and whether its coordinator crashes or the host dies at a random
    point inside the stall (``crash-in-stall``; the restart then meets the
    stall; for a coordinator crash the host takes no new operation from the
    start of the stall, so that the crash need not wait for operations the
    stall blocks). Past the middle of the stall the other hosts try to take
    every disk of its guests: refused while it may live, blocked while the
    stall holds the disk, granted once it is dead to them, by which time it
    must have fenced. One stall at a time; no other fault on the stalled host,
    nor for ``SETTLE`` after a stall or a freeze ends, so every fault
    starts from a host that renewed recently. A coordinator crash inside a
    stall has its watchdog count from the start of the stall, not from the
    crash: the last renewal was before the stall.
``restart``
    Bringing a killed host back (counted with the faults). A restarted
    process that dies or stalls before it is back counts as ``restart
    failed``: its guests are killed and it is restarted again later.

The injector's first cycle of faults is fixed (sigstop, storage-stall,
coordinator_crash, kill9), so that a short run sees every kind; each later
cycle is shuffled and holds every kind once and storage-stall twice.

At the end the driver stops the workload, heals every SIGSTOP and stall,
makes sure one host is down (a last ``kill9`` if needed, so rule 5 always has a gone
host to judge), waits ``host_dead + SLACK``, probes every disk from the
live hosts, waits again and probes again (rule 5: the second probes must
not be refused because of the dead host), snapshots the lease records
(``LeaseHeld``), kills every process, merges the histories and checks them.

The seed fixes the guests' disks and the sequence of random choices each
task draws (a stall draws the same numbers whatever the state); the
interleaving (and so the run) still depends on timing.

Run it from the command line with ``python -m actorlock._verify.chaos
--seconds 60 --seed 7 [--workdir DIR]`` (or through :func:`main_chaos`);
with ``--workdir`` everything stays for a look: ``history-*.jsonl`` (read
them with :func:`read_history_file`), ``host-*.log`` and the lockspace.
:func:`chaos_hosts` gives a test the same host processes to script one
exact story with.
"""

from __future__ import annotations

import argparse
import enum
import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import attrs
from anyio.streams.buffered import BufferedByteReceiveStream

from ..api import Host, open_host
from ..backends.file import lease_file_name
from ..errors import ActorlockError, InvalidParameterError, ResourceBusyError
from ..guest import is_running_sync, process_start_time_sync
from ..model import Lease, LeaseMode, LeaseOwner, Resource, disk
from ..testing.checker import Violation, check
from ..testing.history import (
    AcquireRefused,
    CoordinatorCrashed,
    FailureActionRan,
    FaultInjected,
    FaultsHealed,
    GuestDisksChanged,
    GuestStarted,
    GuestStopped,
    GuestWrote,
    History,
    HistoryEvent,
    HostCrashed,
    HostEvent,
    HostJoined,
    HostRecovered,
    LeaseAcquired,
    LeaseHeld,
    LeaseLost,
    LeaseReleased,
    LeasesTransferred,
    LockspaceLost,
    LockspaceRegained,
    MigrationCancelled,
    StopReason,
    TransferredLease,
)

__all__ = [
    "PEER_TIMING",
    "TIMING",
    "ChaosHosts",
    "ChaosReport",
    "chaos_hosts",
    "event_from_json",
    "event_to_json",
    "main_chaos",
    "read_history_file",
    "run_chaos",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Short but safe (docs/timing.md): host_dead >= (lease_timeout + fence_timeout) * 1.01
# = 0.808, with room above it for a loaded CI machine to schedule a woken host.
TIMING: Mapping[str, float] = {
    "renew_interval": 0.1,
    "lease_timeout": 0.5,
    "fence_timeout": 0.3,
    "host_dead": 1.0,
    "io_timeout": 2.0,
}
KILL_GRACE = 0.1  # below fence_timeout: SIGKILL follows SIGTERM in time
PEER_TIMING: Mapping[str, float] = {
    "migration_timeout": 2.0,
    "prepare_timeout": 1.0,
    "transfer_margin": 0.3,
    "retry_interval": 0.05,
    "request_timeout": 0.5,
}
WRITE_INTERVAL = 0.05  # how often a running guest writes each of its disks
# A frozen host must wake, fence (fence_timeout) and have done so before others may
# take over (host_dead after its last renewal, which started up to renew_interval
# before the freeze): 1.0 - 0.3 - 0.1 = 0.6, less a margin for scheduling.
SIGSTOP_MAX = 0.55
# The supervisor stand-in: a crashed coordinator's guests are killed unless it is back,
# resumed, this long after the crash. Its last renewal started at most renew_interval
# before the crash, so the guests are gone well before host_dead after it.
WATCHDOG = 0.4
# Rule 5's allowance between a refusal being decided in a backend and being recorded.
SLACK = 0.25

CALL_TIMEOUT = 15.0  # the longest op: a commit waiting out migration_timeout and its settlement
STARTUP_TIMEOUT = 30.0  # a cold process imports everything; a new incarnation waits host_dead
MAX_LINE = 1 << 20
MODULE = "actorlock._verify.chaos"  # run with -m: also when this file is __main__ of the driver

# Few enough disks that guests compete for them (starts get refused, a guest started on a
# second host must be refused), enough that several guests run at once.
SHARED_DISKS = 1
EXCLUSIVE_DISKS = 6
GUESTS = 8
WORKERS = 3
OP_GAP = (0.05, 0.3)  # seconds a worker waits between two operations

# Stalled storage: another process holds the lock files of one host's records (a hung NFS
# server, as that host sees it) for STALL_MIN to STALL_MAX seconds: up to several
# lease_timeouts, past host_dead and past io_timeout.
STALL_MIN = 0.2
STALL_MAX = 5 * TIMING["lease_timeout"]
# The chances that the host is sent a burst of BURST starts, each blocked on the stall, which
# fill its worker threads (anyio's default limiter has 40) as a busy host's would; that a stall
# without a burst holds the disks of the host's own guests too (otherwise, and always with a
# burst, other hosts may take them over during the stall once the host is dead to them); that
# it holds those of each other guest (disks the host may be about to start, or take over by
# migration); and that a crash falls inside it.
STALL_BURST = 0.4
STALL_OWN_DISKS = 0.5
STALL_OTHER_DISKS = 0.25
STALL_CRASH = 0.5
BURST = 48
BURST_DISK = "/chaos/burst.img"  # no guest's: the burst's starts wait on it, and only they
# After a stall or a freeze ends the host renews again at once; no other fault on it until this
# has passed, so that every fault starts from a host whose last renewal is recent.
SETTLE = TIMING["lease_timeout"]
HELPER_TIMEOUT = 5.0  # the stall's lock holder must hold everything within this
# The injector's first cycle (fixed, so that a short run sees every kind) and the later ones
# (shuffled): a stall is the longest fault but one, and the one most worth meeting often.
FIRST_FAULTS = ("sigstop", "storage-stall", "coordinator_crash", "kill9")
FAULT_CYCLE = ("kill9", "sigstop", "coordinator_crash", "storage-stall", "storage-stall")


# --- history records as JSON lines ------------------------------------------------------

_EVENT_TYPES: dict[str, type[HistoryEvent]] = {
    cls.__name__: cls
    for cls in (
        AcquireRefused,
        CoordinatorCrashed,
        FailureActionRan,
        FaultInjected,
        FaultsHealed,
        GuestDisksChanged,
        GuestStarted,
        GuestStopped,
        GuestWrote,
        HostCrashed,
        HostEvent,
        HostJoined,
        HostRecovered,
        LeaseAcquired,
        LeaseHeld,
        LeaseLost,
        LeaseReleased,
        LeasesTransferred,
        LockspaceLost,
        LockspaceRegained,
        MigrationCancelled,
    )
}


def _plain(value: object) -> Any:
    """A JSON-ready copy of a record field (enums by value, attrs classes as mappings)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    cls: Any = type(value)
    if attrs.has(cls):
        return {f.name: _plain(getattr(value, f.name)) for f in attrs.fields(cls)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return str(value)  # the rest of a HostEvent's fields: kept readable, not typed


def event_to_json(event: HistoryEvent) -> dict[str, Any]:
    """One history record as a JSON-ready mapping (``type`` names its class)."""
    body: dict[str, Any] = {"type": type(event).__name__}
    for field in attrs.fields(type(event)):
        body[field.name] = _plain(getattr(event, field.name))
    return body


def _field_value(cls: type[HistoryEvent], name: str, raw: Any) -> Any:
    if name == "leases":
        if cls is LeasesTransferred:
            return tuple(
                TransferredLease(
                    str(item["key"]), LeaseMode(item["mode"]), int(item["old_token"]), int(item["new_token"])
                )
                for item in raw
            )
        return tuple(Lease(str(item["key"]), LeaseMode(item["mode"]), int(item["token"])) for item in raw)
    if name == "mode":
        return LeaseMode(raw)
    if name == "reason" and cls is GuestStopped:
        return StopReason(raw)
    if name == "time":
        return float(raw)
    return raw


def event_from_json(data: Mapping[str, Any]) -> HistoryEvent:
    """The record :func:`event_to_json` produced.

    Raises:
        InvalidParameterError: an unknown record type or malformed fields.
    """
    cls = _EVENT_TYPES.get(str(data.get("type", "")))
    if cls is None:
        raise InvalidParameterError(f"unknown history record type {data.get('type')!r}")
    try:
        fields = {
            f.name: _field_value(cls, f.name, data[f.name]) for f in attrs.fields(cls) if f.name in data
        }
        return cls(**fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidParameterError(f"malformed {cls.__name__} record: {exc}") from None


def read_history_file(path: str | os.PathLike[str]) -> tuple[list[HistoryEvent], int]:
    """Every record of a JSON-lines history file, in file order, and how many lines were unreadable.

    A process killed while appending can leave at most a torn last line; it
    is skipped (and counted) rather than failing the whole run.
    """
    events: list[HistoryEvent] = []
    bad = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                events.append(event_from_json(json.loads(line)))
            except (ValueError, InvalidParameterError):
                bad += 1
    return events, bad


# --- the host process ---------------------------------------------------------------------


def _emit(message: Mapping[str, Any]) -> None:
    """One JSON line to the driver (stdout is the control channel; logs go to stderr)."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class _LineReader:
    """Lines from a pipe without a worker thread (a thread blocked in read cannot be cancelled)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""
        self._eof = False
        os.set_blocking(fd, False)

    async def readline(self) -> bytes | None:
        """The next line without its newline, or None at the end of input."""
        while b"\n" not in self._buffer:
            if self._eof:
                return None
            await anyio.wait_readable(self._fd)
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self._eof = True
                if self._buffer:
                    self._buffer += b"\n"
                continue
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


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
    """A guest as its host process sees it: the domain, its ``sleep`` and its writer."""

    uuid: str
    resources: tuple[Resource, ...]
    pid: int | None
    pid_start: int | None
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

    def sink(self, kind: str, fields: dict[str, Any]) -> None:
        """The coordinator's event sink: every event becomes a record, on the shared clock."""
        now = time.monotonic()
        if kind == "transfer":
            self.record(_transferred(now, fields))
            return
        if kind == "failure_action":
            guest = self.guests.get(str(fields.get("domain", "")))
            if guest is not None and guest.running and not guest.alive():
                self._halt(guest, StopReason.FENCED, now)
        self.record(History().record_host_event(kind, fields, now))
        if kind == "migration_settled":
            uuid, role, outcome = str(fields["domain"]), str(fields["role"]), str(fields["outcome"])
            self._settled.setdefault((uuid, role), []).append(outcome)
            self._settle_changed.set()
            self._settle_changed = anyio.Event()
            if role == "source" and outcome != "committed":
                leases = self._offered.get(uuid, ())
                self.record(MigrationCancelled(now, uuid, self.name, leases, self._destination.get(uuid, "")))
        elif kind == "migration_started":
            self._destination[str(fields["domain"])] = str(fields.get("destination", ""))

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
                _emit({"event": "guest_stopped", "uuid": guest.uuid, "reason": reason.value})

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
            _emit(reply)
            return
        _emit({"id": request_id, "ok": True, "result": result})

    async def op_start(
        self, uuid: str, disks: Sequence[Sequence[Any]], pid: int | None = None, probe: bool = False
    ) -> dict[str, Any]:
        """Start a guest: take its leases, then it runs and writes.

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
            await domain.shutdown()  # a leftover of a failed op: libvirt would have cleaned it up
        pid_start = None if pid is None else await anyio.to_thread.run_sync(process_start_time_sync, pid)
        guest = _Guest(uuid, resources, pid, pid_start)
        try:
            status = await domain.start(resources, pid=pid)
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
        self.guests[uuid] = guest
        running = status.phase == "running" and self._run(guest, status.leases, record_start=True)
        return {"running": running, "leases": leases}

    async def op_stop(self, uuid: str) -> dict[str, Any]:
        """The guest stops (no more writes), then its domain is shut down (leases released)."""
        guest = self.guests.pop(uuid, None)
        if guest is not None:
            self._halt(guest, StopReason.SHUTDOWN)
        return {"released": await self._discard(uuid)}

    async def op_prepare(self, uuid: str, dest: str) -> dict[str, Any]:
        """Source: offer the guest's leases to the host whose peer endpoint is ``dest``."""
        domain = self._api().domain(uuid)
        status = await domain.status()
        self._offered[uuid] = tuple(status.leases)
        self._mark[(uuid, "source")] = len(self._settled.get((uuid, "source"), []))
        await domain.prepare_migration(dest)
        return {}

    async def op_incoming(self, uuid: str, disks: Sequence[Sequence[Any]], pid: int) -> dict[str, Any]:
        """Destination: register the incoming guest (no leases, not running yet)."""
        resources = _resources(disks)
        self._mark[(uuid, "destination")] = len(self._settled.get((uuid, "destination"), []))
        pid_start = await anyio.to_thread.run_sync(process_start_time_sync, pid)
        self.guests[uuid] = _Guest(uuid, resources, pid, pid_start)
        await self._api().domain(uuid, name=uuid[:8]).start(resources, pid=pid, register_only=True)
        return {}

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

    async def op_attach(self, uuid: str, disks: Sequence[Sequence[Any]], was_paused: bool) -> dict[str, Any]:
        """After a coordinator restart: re-attach a guest that kept running, and let it write again.

        A guest that was running when the coordinator died continues its run
        (nothing is recorded); one that was paused starts a new run.
        """
        domain = self._api().domain(uuid, name=uuid[:8])
        pid = await domain.attach()
        status = await domain.status()
        pid_start = await anyio.to_thread.run_sync(process_start_time_sync, pid)
        guest = _Guest(uuid, _resources(disks), pid, pid_start)
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


def _transferred(now: float, fields: Mapping[str, Any]) -> HistoryEvent:
    """The sink's ``transfer`` event as the checker's ``LeasesTransferred``."""
    source, destination = fields.get("source"), fields.get("destination")
    before = {lease.key: lease for lease in fields.get("before", ()) if isinstance(lease, Lease)}
    after = [lease for lease in fields.get("after", ()) if isinstance(lease, Lease)]
    if not isinstance(source, LeaseOwner) or not isinstance(destination, LeaseOwner):
        return HostEvent(now, str(fields.get("host", "")), "transfer", dict(fields))
    moved = [
        TransferredLease(
            lease.key, lease.mode, before[lease.key].token if lease.key in before else 0, lease.token
        )
        for lease in after
    ]
    return LeasesTransferred(now, source.host, source.domain, destination.host, destination.domain, moved)


async def _run_host(spec: Mapping[str, Any]) -> int:
    """One host: join, say ready, serve ops until stdin closes."""
    fd = os.open(spec["history"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    agent = _HostAgent(spec["name"], fd, int(spec["seed"]), float(spec["write_interval"]))
    try:
        async with open_host(spec["config"], event_sink=agent.sink) as host:
            agent.host = host
            reader = _LineReader(sys.stdin.fileno())
            async with anyio.create_task_group() as tg:
                agent.tg = tg
                coordinator = host.coordinator
                _emit(
                    {
                        "event": "ready",
                        "pid": os.getpid(),
                        "endpoint": coordinator.peer_endpoint,
                        "incarnation": coordinator.incarnation,
                        "resumed": host.resumed,
                    }
                )
                while (line := await reader.readline()) is not None:
                    if line.strip():
                        tg.start_soon(agent.serve, json.loads(line))
                tg.cancel_scope.cancel()  # stdin closed: the driver wants us gone
    except (ActorlockError, OSError) as exc:
        _emit({"event": "failed", "error": type(exc).__name__, "message": str(exc)})
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
    for backend in ("asyncio", "trio"):
        anyio.run(_nothing, backend=backend)  # loads both event loops' modules now
    _emit({"event": "standby", "pid": os.getpid()})
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


# --- the stall helper: holds lock files from outside ----------------------------------------

# Run with ``python -I -c``: it imports nothing of ours, so it starts in tens of milliseconds.
# argv: the seconds after which it exits whatever happens, then the lock files in the order to
# take them (the host's liveness lock, then the lease locks sorted by key: the backend's own
# order, so that it cannot deadlock with a host's operation). It takes the same locks the file
# backend takes (OFD write locks on the whole file, or flock where the kernel lacks them),
# says "held", and keeps them until its stdin closes or it is killed: the locks die with it.
_STALL_HELPER = r"""
import errno, fcntl, os, signal, struct, sys
signal.alarm(int(float(sys.argv[1])) + 1)
setlkw = getattr(fcntl, "F_OFD_SETLKW", 38 if sys.platform.startswith("linux") else None)
whole = struct.pack("hhqqi0q", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
fds = []
for path in sys.argv[2:]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fds.append(fd)
    try:
        if setlkw is None:
            raise OSError(errno.EINVAL, "no OFD locks")
        fcntl.fcntl(fd, setlkw, whole)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        setlkw = None
        fcntl.flock(fd, fcntl.LOCK_EX)
sys.stdout.write("held\n")
sys.stdout.flush()
sys.stdin.buffer.read()
"""


# --- the driver: host processes under control -------------------------------------------


class _HostGone(Exception):
    """The host process died (or was killed) before answering."""


class _HostOpError(Exception):
    """An op failed inside a host process."""

    def __init__(self, op: str, reply: Mapping[str, Any]) -> None:
        super().__init__(f"{op}: {reply.get('error')}: {reply.get('message')}")
        self.op = op
        self.kinds = tuple(reply.get("kinds", ()))
        self.kind = str(reply.get("error", ""))
        self.resource = str(reply.get("resource", ""))

    def is_a(self, name: str) -> bool:
        return name in self.kinds


@attrs.define
class _Reply:
    done: anyio.Event = attrs.Factory(anyio.Event)
    message: dict[str, Any] | None = None


class _HostProc:
    """The driver's handle on one host process (a standby until it becomes a host)."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.name = ""
        self.endpoint = ""
        self.incarnation = ""
        self.resumed = False
        self.failure = ""
        self.gone = False
        self.fenced: set[str] = set()  # guests its coordinator fenced, reported as they happen
        self._standby = anyio.Event()
        self._ready = anyio.Event()  # set on ready, on failure and on exit
        self._pending: dict[int, _Reply] = {}
        self._ids = itertools.count(1)
        self._send_lock = anyio.Lock()  # trio's pipe streams refuse concurrent senders

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ready(self) -> bool:
        return bool(self.endpoint) and not self.gone

    async def read_loop(self) -> None:
        assert self.process.stdout is not None
        stream = BufferedByteReceiveStream(self.process.stdout)
        try:
            while True:
                message = json.loads(await stream.receive_until(b"\n", MAX_LINE))
                event = message.get("event")
                if event == "standby":
                    self._standby.set()
                elif event == "ready":
                    self.endpoint = str(message["endpoint"])
                    self.incarnation = str(message["incarnation"])
                    self.resumed = bool(message["resumed"])
                    self._ready.set()
                elif event == "failed":
                    self.failure = f"{message.get('error')}: {message.get('message')}"
                    self._ready.set()
                elif event == "guest_stopped":
                    self.fenced.add(str(message["uuid"]))
                else:
                    pending = self._pending.get(message.get("id"))
                    if pending is not None:
                        pending.message = message
                        pending.done.set()
        except (
            anyio.IncompleteRead,
            anyio.EndOfStream,
            anyio.ClosedResourceError,
            anyio.BrokenResourceError,
            ValueError,
        ):
            pass
        finally:
            self.gone = True  # whoever still waits learns that no answer will come
            self._standby.set()
            self._ready.set()
            for pending in self._pending.values():
                pending.done.set()

    async def _send(self, message: Mapping[str, Any]) -> None:
        if self.gone:
            raise _HostGone(f"process {self.pid} ({self.name or 'standby'}) has exited")
        try:
            async with self._send_lock:
                assert self.process.stdin is not None
                await self.process.stdin.send((json.dumps(message) + "\n").encode())
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            raise _HostGone(f"process {self.pid} ({self.name or 'standby'}) stopped reading") from None

    async def wait_standby(self, limit: float) -> None:
        with anyio.fail_after(limit):
            await self._standby.wait()
        if self.gone:
            raise _HostGone(f"standby process {self.pid} exited")

    async def become(self, name: str, spec: Mapping[str, Any]) -> None:
        self.name = name
        await self._send(spec)

    async def wait_ready(self, limit: float) -> None:
        """Wait until the host joined; raise _HostGone if it failed or exited, TimeoutError if slow."""
        with anyio.fail_after(limit):
            await self._ready.wait()
        if not self.ready:
            raise _HostGone(f"host {self.name} did not start: {self.failure or 'the process exited'}")

    async def call(self, op: str, *, limit: float = CALL_TIMEOUT, **args: Any) -> dict[str, Any]:
        """Run ``op`` in the host and return its result.

        Raises:
            _HostOpError: the op failed there.
            _HostGone: the process died before answering.
            TimeoutError: no answer within ``limit``.
        """
        request_id = next(self._ids)
        pending = self._pending[request_id] = _Reply()
        try:
            with anyio.fail_after(limit):
                await self._send({"id": request_id, "op": op, "args": args})
                await pending.done.wait()
        finally:
            del self._pending[request_id]
        reply = pending.message
        if reply is None:
            raise _HostGone(f"host {self.name} died during {op}")
        if not reply.get("ok"):
            raise _HostOpError(op, reply)
        result: dict[str, Any] = reply["result"]
        return result

    def signal(self, sig: signal.Signals) -> None:
        if self.process.returncode is None:
            with suppress(ProcessLookupError):
                self.process.send_signal(sig)

    async def kill(self) -> None:
        """SIGKILL and reap (nothing is released or left: a crash)."""
        with anyio.CancelScope(shield=True):
            self.signal(signal.SIGKILL)
            await self.process.wait()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            self.signal(signal.SIGKILL)
            # SIGCONT too: a stopped process does not die of SIGKILL any slower, but be plain about it.
            self.signal(signal.SIGCONT)
            await self.process.aclose()


class _HostState(enum.Enum):
    UP = "up"
    DOWN = "down"  # killed; a restart is pending (or none, at the end)
    RESTARTING = "restarting"


@attrs.define(eq=False)
class _Slot:
    """One host name and everything that survives its processes: id, keys, state directory."""

    name: str
    id: int
    backend: str
    config: dict[str, Any]
    proc: _HostProc | None = None
    state: _HostState = _HostState.DOWN
    frozen: bool = False  # SIGSTOPped now
    draining: bool = False  # no new op may start on it (a coordinator crash is waiting its turn)
    stall: _Stall | None = None  # its storage is stalled now
    settled_at: float = 0.0  # no fault begins on it before this (a stall or freeze just ended)


@attrs.define(eq=False)
class _Stall:
    """One stalled-storage fault: the lock files held, and since when."""

    host: str
    since: float  # when the fault was recorded: before the helper took anything
    paths: tuple[str, ...]
    held: anyio.Event = attrs.Factory(anyio.Event)


class _Placement(enum.Enum):
    RUNNING = "running"  # the host runs the guest, as far as the driver knows
    PAUSED = "paused"  # a migration source whose outcome was unknown: not writing
    CLEANUP = "cleanup"  # the guest does not run; the domain needs a shutdown


@attrs.define(eq=False)
class _Placed:
    """A guest as the driver sees it: on which host, its ``sleep``, and what it is doing."""

    host: str
    uuid: str
    sleep: anyio.abc.Process | None
    state: _Placement


@attrs.frozen
class ChaosReport:
    """What one chaos run did and found.

    Attributes:
        seed: the seed of the run.
        hosts: how many host processes.
        seconds: how long the workload ran (as asked).
        elapsed: the whole run, start-up and the final probes included.
        operations: guest operations the driver started (``operations_by_kind`` splits them).
        operations_by_kind: e.g. ``start``, ``start refused``, ``stop``, ``migrate``, ``probe``.
        faults: injected faults by kind: ``kill9``, ``sigstop``, ``coordinator_crash``,
            ``storage-stall``, ``restart``, and ``crash-in-stall`` (crashes, of either
            kind, that fell inside a storage stall: counted under their kind too).
        migrations_committed: migrations whose leases moved.
        migrations_cancelled: migrations that settled with the source keeping its leases.
        events: records in the merged history.
        writes: ``GuestWrote`` records among them.
        unreadable_lines: torn history lines skipped (a process killed while appending).
        violations: what the checker found; empty in a correct run.
        workdir: where the lockspace, histories and logs are ("" once removed).
    """

    seed: int
    hosts: int
    seconds: float
    elapsed: float
    operations: int
    operations_by_kind: Mapping[str, int]
    faults: Mapping[str, int]
    migrations_committed: int
    migrations_cancelled: int
    events: int
    writes: int
    unreadable_lines: int
    violations: tuple[Violation, ...]
    workdir: str = ""

    def summary(self) -> list[str]:
        """The report as lines of text; the last one is ``violations: N``."""
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.operations_by_kind.items()))
        faults = " ".join(f"{k.replace(' ', '-')}={v}" for k, v in sorted(self.faults.items()))
        lines = [
            f"chaos: seed {self.seed}, {self.hosts} hosts, workload {self.seconds:.1f} s, "
            f"whole run {self.elapsed:.1f} s",
            f"operations: {self.operations} ({ops})",
            f"faults: {sum(self.faults.values())} ({faults})",
            f"migrations: {self.migrations_committed} committed, {self.migrations_cancelled} cancelled",
            f"events: {self.events} merged ({self.writes} writes, {self.unreadable_lines} torn lines)",
        ]
        if self.workdir:
            lines.append(f"workdir: {self.workdir}")
        for violation in self.violations:
            lines.append(
                f"VIOLATION rule {violation.rule.value} ({violation.rule.name}): {violation.message}"
            )
            lines.extend(f"    {event!r}" for event in violation.evidence)
        lines.append(f"violations: {len(self.violations)}")
        return lines


class _Driver:
    """The workload, the faults and the bookkeeping of one run."""

    def __init__(
        self,
        tg: anyio.abc.TaskGroup,
        workdir: Path,
        *,
        seed: int,
        hosts: int,
        plaintext: bool,
        host_backends: Sequence[str],
        out: Callable[[str], object],
    ) -> None:
        self._tg = tg  # process readers and standby refills: they live until the very end
        self.chaos_tg: anyio.abc.TaskGroup | None = None  # workers and fault tasks: the workload
        self.workdir = workdir
        self.lockspace = workdir / "lockspace"
        self.seed = seed
        self.out = out
        self.rng = random.Random(seed)
        self.history = History()  # the driver's own records
        self.slots: dict[str, _Slot] = {}
        self.guests: dict[tuple[str, str], _Placed] = {}
        self.catalog: dict[str, tuple[tuple[str, bool], ...]] = {}
        self.disks: list[str] = []
        self.host_sleeps: dict[str, set[anyio.abc.Process]] = {}
        self.ops: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.committed = 0
        self.cancelled = 0
        self.stopping = False
        self._stop = anyio.Event()
        self._locks: dict[tuple[str, str], anyio.Lock] = {}
        self._procs: list[_HostProc] = []
        self._sleeps: list[anyio.abc.Process] = []
        self._helpers: list[anyio.abc.Process] = []  # storage stalls' lock holders
        self._standbys: list[_HostProc] = []
        self._spawning = 0  # processes being spawned right now (close() waits for them)
        self._spawned = anyio.Event()  # set whenever _spawning drops to 0
        self._closing = False
        self._open_faults = 0
        self._probes = itertools.count(1)
        self._make_catalog()
        self._make_slots(hosts, plaintext, host_backends)

    # -- set-up -----------------------------------------------------------------------------

    def _make_catalog(self) -> None:
        """Guests with fixed disks, every exclusive disk wanted by more than one guest."""
        exclusive = [f"/chaos/disk-{i}.img" for i in range(EXCLUSIVE_DISKS)]
        shared = [f"/chaos/shared-{i}.img" for i in range(SHARED_DISKS)]
        self.disks = exclusive + shared
        for i in range(GUESTS):
            uuid = f"c4a05000-{self.seed % 0xFFFF:04x}-4000-8000-{i:012x}"
            wanted: list[tuple[str, bool]] = [(exclusive[i % EXCLUSIVE_DISKS], False)]
            if self.rng.random() < 0.5:
                wanted.append((exclusive[(i + 1) % EXCLUSIVE_DISKS], False))
            if shared and self.rng.random() < 0.4:
                wanted.append((self.rng.choice(shared), True))
            self.catalog[uuid] = tuple(wanted)

    def _make_slots(self, hosts: int, plaintext: bool, host_backends: Sequence[str]) -> None:
        names = [f"h{i}" for i in range(1, hosts + 1)]
        keys: dict[str, tuple[Path, str]] = {}
        if not plaintext:
            from ..transport.zmq import KeyPair, generate_keypair, save_keypair

            for name in names:
                pair = KeyPair(*generate_keypair())
                path = self.workdir / f"{name}.key"
                save_keypair(path, pair)
                keys[name] = (path, pair.public)
        for host_id, name in enumerate(names, start=1):
            state_dir = self.workdir / f"state-{name}"
            state_dir.mkdir()
            peer: dict[str, Any] = {"endpoint": "tcp://127.0.0.1:*", **PEER_TIMING}
            if plaintext:
                peer["plaintext"] = True
            else:
                peer["key_file"] = str(keys[name][0])
                peer["allowed_keys"] = [public for other, (_, public) in keys.items() if other != name]
            config = {
                "host": {"name": name, "id": host_id, "state_dir": str(state_dir)},
                "timing": dict(TIMING),
                "locking": {"backend": "file", "kill_grace": KILL_GRACE, "failure_action": "poweroff"},
                "file": {"lockspace_dir": str(self.lockspace)},
                "peer": peer,
            }
            backend = host_backends[(host_id - 1) % len(host_backends)]
            self.slots[name] = _Slot(name, host_id, backend, config)
            self.host_sleeps[name] = set()

    def _spec(self, slot: _Slot) -> dict[str, Any]:
        return {
            "name": slot.name,
            "backend": slot.backend,
            "config": slot.config,
            "history": str(self.workdir / f"history-{slot.name}.jsonl"),
            "log": str(self.workdir / f"host-{slot.name}.log"),
            "seed": self.seed,
            "write_interval": WRITE_INTERVAL,
        }

    def record(self, event: HistoryEvent) -> None:
        self.history.append(event)

    def now(self) -> float:
        return time.monotonic()

    # -- processes --------------------------------------------------------------------------

    async def _spawn_standby(self) -> _HostProc:
        log_fd = os.open(self.workdir / "standby.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._spawn_begins()
        try:
            with anyio.CancelScope(shield=True):
                process = await anyio.open_process(
                    [sys.executable, "-m", MODULE, "host-process"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log_fd,
                )
                proc = _HostProc(process)
                self._procs.append(proc)
        finally:
            os.close(log_fd)
            self._spawn_ends()
        self._tg.start_soon(proc.read_loop, name=f"control channel {proc.pid}")
        if self._closing:
            await proc.kill()
            raise _HostGone("the run is over")
        await proc.wait_standby(STARTUP_TIMEOUT)
        return proc

    async def _refill_standby(self) -> None:
        with suppress(_HostGone, TimeoutError):
            self._standbys.append(await self._spawn_standby())

    async def _take_standby(self) -> _HostProc:
        """A warm process (and a replacement started in the background), or a cold one."""
        while self._standbys:
            proc = self._standbys.pop(0)
            if not proc.gone:
                self._tg.start_soon(self._refill_standby, name="standby refill")
                return proc
        self._tg.start_soon(self._refill_standby, name="standby refill")
        return await self._spawn_standby()

    async def _spawn_sleep(self, host: str) -> anyio.abc.Process:
        """A stand-in guest process on ``host`` (it dies with the host)."""
        self._spawn_begins()
        try:
            with anyio.CancelScope(shield=True):
                sleep = await anyio.open_process(
                    ["sleep", "600"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                self._sleeps.append(sleep)
        finally:
            self._spawn_ends()
        self.host_sleeps[host].add(sleep)
        return sleep

    def _spawn_begins(self) -> None:
        if not self._spawning:
            self._spawned = anyio.Event()
        self._spawning += 1

    def _spawn_ends(self) -> None:
        self._spawning -= 1
        if not self._spawning:
            self._spawned.set()

    async def _kill_sleep(self, host: str, sleep: anyio.abc.Process | None) -> None:
        if sleep is None:
            return
        self.host_sleeps[host].discard(sleep)
        with anyio.CancelScope(shield=True):
            if sleep.returncode is None:
                with suppress(ProcessLookupError):
                    sleep.kill()
            await sleep.wait()

    async def close(self) -> None:
        """Kill and reap every process this run started (also the ones still being spawned)."""
        with anyio.CancelScope(shield=True):
            self._closing = True
            if self._spawning:
                await self._spawned.wait()
            for helper in self._helpers:
                await self._end_helper(helper)
            for proc in self._procs:
                await proc.aclose()
            for sleep in self._sleeps:
                if sleep.returncode is None:
                    with suppress(ProcessLookupError):
                        sleep.kill()
                await sleep.aclose()

    async def start_hosts(self) -> None:
        standbys = [await self._spawn_standby() for _ in self.slots]
        for slot, proc in zip(self.slots.values(), standbys, strict=True):
            await proc.become(slot.name, self._spec(slot))
        for slot, proc in zip(self.slots.values(), standbys, strict=True):
            await proc.wait_ready(STARTUP_TIMEOUT)
            slot.proc, slot.state = proc, _HostState.UP
            self.out(f"host {slot.name} ({slot.backend}): pid {proc.pid}, peer {proc.endpoint}")
        self._tg.start_soon(self._refill_standby, name="standby refill")

    # -- helpers ----------------------------------------------------------------------------

    def _lock(self, host: str, uuid: str) -> anyio.Lock:
        lock = self._locks.get((host, uuid))
        if lock is None:
            lock = self._locks[(host, uuid)] = anyio.Lock()
        return lock

    @asynccontextmanager
    async def _locked(self, *keys: tuple[str, str]) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for key in sorted(set(keys)):  # one global order: no deadlock between two migrations
                await stack.enter_async_context(self._lock(*key))
            yield

    def _up(self) -> list[_Slot]:
        """Hosts a new op may use (up, not waiting for a coordinator crash; frozen ones count)."""
        return [s for s in self.slots.values() if s.state is _HostState.UP and s.proc and not s.draining]

    def _live_proc(self, host: str) -> _HostProc | None:
        slot = self.slots[host]
        return slot.proc if slot.state is _HostState.UP and not slot.draining else None

    def _fault_task(self, func: Callable[..., Coroutine[Any, Any, None]], *args: Any, name: str) -> None:
        assert self.chaos_tg is not None
        self.chaos_tg.start_soon(func, *args, name=name)

    def _disks_of(self, uuid: str) -> list[list[Any]]:
        return [[path, shared] for path, shared in self.catalog[uuid]]

    # -- the workload -------------------------------------------------------------------------

    async def worker(self, index: int) -> None:
        rng = random.Random(f"{self.seed}:worker:{index}")
        ops: list[tuple[float, Callable[[random.Random], Awaitable[None]]]] = [
            (0.38, self._op_start),
            (0.14, self._op_stop),
            (0.32, self._op_migrate),
            (0.08, self._op_probe),
            (0.04, self._op_tidy),
            (0.04, self._op_snapshot),
        ]
        weights = [w for w, _ in ops]
        while not self.stopping:
            (_, op), *_ = rng.choices(ops, weights)
            try:
                await op(rng)
            except _HostGone:
                self.ops["lost to a crash"] += 1
            except TimeoutError:
                self.ops["timed out"] += 1
            except _HostOpError as exc:
                self.ops[f"{exc.op} failed: {exc.kind}"] += 1
            # Paced so that guests run for a while (and meet faults) between operations.
            await anyio.sleep(rng.uniform(*OP_GAP))

    async def _op_start(self, rng: random.Random) -> None:
        up = self._up()
        if not up:
            return
        await self.start_guest(rng.choice(up), rng.choice(sorted(self.catalog)))

    async def start_guest(self, slot: _Slot, uuid: str) -> bool:
        """Start ``uuid`` (its catalog disks) on ``slot``; True if it runs there now."""
        key = (slot.name, uuid)
        if key in self.guests:
            return False
        async with self._locked(key):
            proc = self._live_proc(slot.name)
            if proc is None or key in self.guests:
                return False
            sleep = await self._spawn_sleep(slot.name)
            self.ops["start"] += 1
            try:
                result = await proc.call("start", uuid=uuid, disks=self._disks_of(uuid), pid=sleep.pid)
            except _HostOpError as exc:
                await self._kill_sleep(slot.name, sleep)
                self.ops[
                    "start refused" if exc.is_a("ResourceBusyError") else f"start failed: {exc.kind}"
                ] += 1
                return False
            except TimeoutError:
                # It may still finish there: the guest is killed and the domain cleaned up later.
                await self._kill_sleep(slot.name, sleep)
                if slot.proc is proc:
                    self.guests[key] = _Placed(slot.name, uuid, None, _Placement.CLEANUP)
                raise
            except _HostGone:
                await self._kill_sleep(slot.name, sleep)
                raise
            if slot.proc is not proc:
                await self._kill_sleep(slot.name, sleep)
                return False
            proc.fenced.discard(uuid)
            state = _Placement.RUNNING if result["running"] else _Placement.CLEANUP
            self.guests[key] = _Placed(slot.name, uuid, sleep, state)
            return state is _Placement.RUNNING

    async def _op_stop(self, rng: random.Random) -> None:
        if not self.guests:
            return
        # Fenced guests first: an operator destroys a guest that lost its leases.
        fenced = [k for k, g in self.guests.items() if (p := self._live_proc(g.host)) and g.uuid in p.fenced]
        key = rng.choice(fenced or sorted(self.guests))
        async with self._locked(key):
            await self._stop_guest(key, "stop")

    async def _stop_guest(self, key: tuple[str, str], why: str) -> None:
        """Stop the guest ``key`` (lock held): the host stops and shuts it down, then its sleep is killed.

        ``why`` counts it: ``stop`` (the workload's) or ``cleanup`` (after a migration).
        """
        guest = self.guests.get(key)
        proc = self._live_proc(key[0])
        if guest is None or proc is None:
            return
        self.ops[why] += 1
        try:
            result = await proc.call("stop", uuid=guest.uuid)
        except _HostOpError as exc:
            self.ops[f"{why} failed: {exc.kind}"] += 1
            return
        if self.slots[key[0]].proc is not proc:
            return  # crashed meanwhile: the crash took care of its guests
        proc.fenced.discard(guest.uuid)
        await self._kill_sleep(guest.host, guest.sleep)
        guest.sleep = None
        if result["released"]:
            del self.guests[key]
        else:
            guest.state = _Placement.CLEANUP

    async def _op_migrate(self, rng: random.Random) -> None:
        candidates = [
            g
            for g in self.guests.values()
            if g.state is _Placement.RUNNING
            and (p := self._live_proc(g.host)) is not None
            and g.uuid not in p.fenced
        ]
        if not candidates:
            return
        guest = rng.choice(candidates)
        targets = [s for s in self._up() if s.name != guest.host and (s.name, guest.uuid) not in self.guests]
        if not targets:
            return
        dst = rng.choice(targets)
        src_key, dst_key = (guest.host, guest.uuid), (dst.name, guest.uuid)
        async with self._locked(src_key, dst_key):
            sproc, dproc = self._live_proc(guest.host), self._live_proc(dst.name)
            if (
                sproc is None
                or dproc is None
                or self.guests.get(src_key) is not guest
                or guest.state is not _Placement.RUNNING
                or dst_key in self.guests
            ):
                return
            await self._migrate(guest, sproc, dst.name, dproc, commit=rng.random() < 0.85)

    async def _migrate(
        self, guest: _Placed, sproc: _HostProc, dst: str, dproc: _HostProc, *, commit: bool
    ) -> None:
        uuid, src = guest.uuid, guest.host
        self.ops["migrate"] += 1
        try:
            await sproc.call("prepare", uuid=uuid, dest=dproc.endpoint)
        except _HostOpError as exc:
            self.ops[f"migrate refused: {exc.kind}"] += 1
            return
        sleep = await self._spawn_sleep(dst)
        try:
            await dproc.call("incoming", uuid=uuid, disks=self._disks_of(uuid), pid=sleep.pid)
        except (_HostOpError, _HostGone, TimeoutError):
            commit = False  # the destination cannot take it: cancel on both sides
        op = "commit" if commit else "cancel"
        results = await _both(
            sproc.call(op, uuid=uuid, role="source"), dproc.call(op, uuid=uuid, role="destination")
        )
        source, dest = results
        # The destination: keep its guest if it runs there, else drop its side.
        dst_key = (dst, uuid)
        if isinstance(dest, dict) and dest["running"] and self.slots[dst].proc is dproc:
            self.guests[dst_key] = _Placed(dst, uuid, sleep, _Placement.RUNNING)
        else:
            self.guests[dst_key] = _Placed(dst, uuid, sleep, _Placement.CLEANUP)
            if self.slots[dst].proc is dproc:
                with suppress(_HostGone, TimeoutError):
                    await self._stop_guest(dst_key, "cleanup")
            else:
                self.guests.pop(dst_key, None)
                await self._kill_sleep(dst, sleep)
        outcome = ""
        for side in (source, dest):
            if isinstance(side, dict) and side["outcome"] in ("committed", "cancelled"):
                outcome = side["outcome"]
                break
        if outcome == "committed":
            self.committed += 1
        elif outcome == "cancelled":
            self.cancelled += 1
        # The source: migrated away (its QEMU exits), back to running, or in doubt.
        src_key = (src, uuid)
        if self.slots[src].proc is not sproc or self.guests.get(src_key) is not guest:
            return
        if not isinstance(source, dict):
            guest.state = _Placement.PAUSED if commit else _Placement.RUNNING
            return
        if source["running"]:
            guest.state = _Placement.RUNNING
        elif source["outcome"] == "unknown":
            guest.state = _Placement.PAUSED
        else:
            guest.state = _Placement.CLEANUP
            with suppress(_HostGone, TimeoutError):
                await self._stop_guest(src_key, "cleanup")

    async def _op_probe(self, rng: random.Random) -> None:
        up = self._up()
        if up:
            await self._probe(rng.choice(up), rng.choice(self.disks))

    async def _probe(self, slot: _Slot, path: str) -> bool | None:
        """Try to take ``path`` exclusively from ``slot``: True taken (and written once), False refused."""
        uuid = f"probe-{next(self._probes)}"
        try:
            async with self._locked((slot.name, uuid)):
                proc = self._live_proc(slot.name)
                if proc is None:
                    return None
                self.ops["probe"] += 1
                try:
                    await proc.call("start", uuid=uuid, disks=[[path, False]], pid=None, probe=True)
                except _HostOpError as exc:
                    if exc.is_a("ResourceBusyError"):
                        self.ops["probe refused"] += 1
                        return False
                    return None
                return True
        finally:
            # A probe's uuid is never used again: keep the lock table small.
            lock = self._locks.get((slot.name, uuid))
            if lock is not None and not lock.locked() and not lock.statistics().tasks_waiting:
                del self._locks[(slot.name, uuid)]

    async def _op_tidy(self, rng: random.Random) -> None:
        """Shut down domains a host tracks that the driver has no guest for (leftovers of failed ops)."""
        up = self._up()
        if not up:
            return
        slot = rng.choice(up)
        proc = slot.proc
        assert proc is not None
        self.ops["tidy"] += 1
        known = (await proc.call("known"))["domains"]
        for uuid in known:
            await self._tidy_one(slot, proc, uuid)

    async def _tidy_one(self, slot: _Slot, proc: _HostProc, uuid: str) -> None:
        key = (slot.name, uuid)
        if key in self.guests:
            return
        async with self._locked(key):
            if key in self.guests or slot.proc is not proc:
                return
            with suppress(_HostOpError):
                await proc.call("stop", uuid=uuid)

    async def _op_snapshot(self, rng: random.Random) -> None:
        up = self._up()
        if up:
            proc = rng.choice(up).proc
            assert proc is not None
            self.ops["snapshot"] += 1
            await proc.call("snapshot")

    # -- faults ---------------------------------------------------------------------------------

    async def injector(self, gap: tuple[float, float]) -> None:
        """Inject a fault every ``gap`` seconds; every kind comes round in each shuffled cycle.

        The first cycle has a fixed order, a storage stall second and the long
        one (kill9: down for seconds) last, so that even a short run sees every
        kind and a restart. Later cycles hold two stalls (:data:`FAULT_CYCLE`).
        """
        rng = random.Random(f"{self.seed}:faults")
        queue = list(FIRST_FAULTS)
        while True:
            with anyio.move_on_after(rng.uniform(*gap)):
                await self._stop.wait()
            if self.stopping:
                return
            if not queue:
                queue = list(FAULT_CYCLE)
                rng.shuffle(queue)
            for kind in list(queue):
                if await self._inject(kind, rng):
                    queue.remove(kind)
                    break

    def _others_down(self, slot: _Slot) -> bool:
        return any(s.state is not _HostState.UP for s in self.slots.values() if s is not slot)

    async def _inject(self, kind: str, rng: random.Random) -> bool:
        """Start one fault of ``kind`` if some host allows it now; False if none does."""
        # A host in a fault, or just out of a stall or a freeze, is left alone: every fault starts
        # from a host that renewed recently (SIGSTOP_MAX and WATCHDOG are derived from that).
        now = self.now()
        calm = [s for s in self._up() if not s.frozen and s.stall is None and s.settled_at <= now]
        if kind == "sigstop":
            if not calm:
                return False
            slot = rng.choice(calm)
            self._fault_task(self._sigstop, slot, rng.uniform(0.1, SIGSTOP_MAX), name="sigstop")
            return True
        if kind == "storage-stall":
            # One stall at a time; the host may be the only one up besides a dead one.
            if not calm or any(s.stall is not None for s in self.slots.values()):
                return False
            self._inject_stall(rng.choice(calm), rng)
            return True
        # One host down at a time: migrations keep two live hosts, and rule 5 keeps a clear culprit.
        calm = [s for s in calm if not self._others_down(s)]
        if not calm:
            return False
        slot = rng.choice(calm)
        if kind == "kill9":
            await self._kill9(slot)
            self._fault_task(self._restart_later, slot, rng.uniform(0.2, 2.0), name="restart")
            return True
        return await self._coordinator_crash(slot)

    def _inject_stall(self, slot: _Slot, rng: random.Random) -> None:
        """Stall ``slot``'s storage, perhaps with a crash inside; the draws do not depend on the state."""
        seconds = rng.uniform(STALL_MIN, STALL_MAX)
        uuids = sorted(self.catalog)
        burst = rng.random() < STALL_BURST
        own = rng.random() < STALL_OWN_DISKS and not burst
        extra = {uuid for uuid in uuids if rng.random() < STALL_OTHER_DISKS}
        crash = rng.random() < STALL_CRASH
        crash_kind = rng.choice(("coordinator_crash", "kill9"))
        crash_at = rng.uniform(0.0, seconds)
        downtime = 0.05 + rng.random() * (seconds - crash_at)  # a kill9's restart: inside the stall too
        probe_at = rng.uniform(seconds / 2, seconds)  # more often than not past host_dead
        # The disks of its guests (also those it is cleaning up) and of some others.
        disks = {
            d
            for uuid in uuids
            if uuid in extra or (own and (slot.name, uuid) in self.guests)
            for d in self.catalog[uuid]
        }
        if burst:
            disks.add((BURST_DISK, False))
        stall = self.begin_stall(slot, sorted(disks))
        self.out(
            f"storage stall of {slot.name}: {seconds:.2f} s, {len(stall.paths)} lock files"
            + (", its guests' disks" if own else "")
            + (f", a burst of {BURST} starts" if burst else "")
            + (f", {crash_kind} {crash_at:.2f} s in" if crash else "")
        )
        self._fault_task(
            self._storage_stall, slot, stall, seconds, burst, probe_at, name=f"storage stall {slot.name}"
        )
        if crash:
            if crash_kind == "coordinator_crash":
                slot.draining = True  # see _crash_in_stall
            self._fault_task(
                self._crash_in_stall, slot, stall, crash_at, crash_kind, downtime, name="crash in stall"
            )

    def begin_stall(self, slot: _Slot, disks: Iterable[tuple[str, bool]]) -> _Stall:
        """Open a stall of ``slot``'s storage (recorded first: the fault is open before any lock is taken).

        It covers the host's liveness lock and the lease locks of ``disks``
        (path, shared): whoever writes those records blocks, that host for
        everything it renews, releases or transfers, another host only when
        it acquires the same disk, as on a hung NFS server.
        """
        keys = sorted({disk(path, shared=shared).key for path, shared in disks})
        leases = [str(self.lockspace / "leases" / f"{lease_file_name(key)}.lock") for key in keys]
        paths = (str(self.lockspace / "hosts" / f"{slot.id}.lock"), *leases)
        stall = _Stall(slot.name, self.now(), paths)
        slot.stall = stall
        self._fault_begins("storage-stall", slot.name)
        return stall

    async def _storage_stall(
        self, slot: _Slot, stall: _Stall, seconds: float, burst: bool, probe_at: float
    ) -> None:
        """Hold the stall's lock files for ``seconds`` (less if the run stops), then release them.

        Meanwhile perhaps a burst of starts on the host, and ``probe_at``
        seconds in, other hosts try to take the disks of its guests.
        """
        async with self.stalled(slot, stall, seconds) as held:
            if held:
                self.faults["storage-stall"] += 1
                if burst:
                    self._fault_task(self._burst, slot, stall, name=f"burst on {slot.name}")
                self._fault_task(self._probe_stalled, slot, stall, probe_at, name="probes in a stall")
                with anyio.move_on_after(seconds):
                    await self._stop.wait()

    async def _burst(self, slot: _Slot, stall: _Stall) -> None:
        """BURST starts at once on the stalled host, of a disk the stall holds: all of them wait on it."""
        proc = slot.proc  # also while it drains for a crash: the burst is not the driver's guests
        if proc is None or slot.state is not _HostState.UP or slot.stall is not stall:
            return
        self.ops["stall burst"] += 1

        async def start(uuid: str) -> None:
            with suppress(_HostGone, TimeoutError, _HostOpError):
                await proc.call("start", uuid=uuid, disks=[[BURST_DISK, False]], pid=None, probe=True)
                self.ops["burst start taken"] += 1

        async with anyio.create_task_group() as tg:
            for _ in range(BURST):
                tg.start_soon(start, f"burst-{next(self._probes)}")

    async def _probe_stalled(self, slot: _Slot, stall: _Stall, at: float) -> None:
        """``at`` seconds into the stall, the other hosts try to take every disk of the stalled host's guests.

        Refused while the stalled host may still be alive, blocked while the
        stall holds the disk, taken once it is dead to them: it must have
        fenced its guests by then.
        """
        with anyio.move_on_after(at):
            await self._stop.wait()
        others = [s for s in self._up() if s is not slot]
        if self.stopping or slot.stall is not stall or not others:
            return
        paths = sorted(
            {path for (host, uuid) in self.guests if host == slot.name for path, _ in self.catalog[uuid]}
        )
        self.ops["stall probes"] += 1

        async def probe(other: _Slot, path: str) -> None:
            with suppress(_HostGone, TimeoutError):
                await self._probe(other, path)

        async with anyio.create_task_group() as tg:
            for index, path in enumerate(paths):
                tg.start_soon(probe, others[index % len(others)], path)

    @asynccontextmanager
    async def stalled(self, slot: _Slot, stall: _Stall, seconds: float) -> AsyncIterator[bool]:
        """A helper process holds the stall's lock files within the block; yields whether it does.

        The helper is killed on the way out, and so every lock released,
        whatever happens; then the fault is over. ``seconds`` is the planned
        length: the helper dies by itself a while after it, should the driver.
        """
        helper: anyio.abc.Process | None = None
        held_at = 0.0
        try:
            with suppress(_HostGone):  # the run is closing
                helper = await self._spawn_helper(stall.paths, seconds)
            if helper is not None and await self._helper_holds(helper):
                held_at = self.now()
                stall.held.set()
            else:
                self.ops["storage-stall not held"] += 1
                self.out(f"warning: the storage stall of {slot.name} took no hold")
            yield stall.held.is_set()
        finally:
            with anyio.CancelScope(shield=True):
                if helper is not None:
                    await self._end_helper(helper)
                ended = self.now()
                slot.stall = None
                slot.settled_at = max(slot.settled_at, ended + SETTLE)
                self._fault_ends()
            if held_at and ended - held_at > seconds + 0.25:
                # The driver was starved: other hosts waited on those locks longer than meant.
                self.ops["storage-stall overran"] += 1
                self.out(
                    f"warning: {slot.name}'s storage stalled {ended - held_at:.2f} s (asked {seconds:.2f})"
                )

    async def _spawn_helper(self, paths: Sequence[str], seconds: float) -> anyio.abc.Process:
        log_fd = os.open(self.workdir / "stall.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._spawn_begins()
        try:
            with anyio.CancelScope(shield=True):
                helper = await anyio.open_process(
                    [sys.executable, "-I", "-c", _STALL_HELPER, f"{seconds + HELPER_TIMEOUT:.3f}", *paths],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log_fd,
                )
                self._helpers.append(helper)
        finally:
            os.close(log_fd)
            self._spawn_ends()
        if self._closing:
            await self._end_helper(helper)
            raise _HostGone("the run is over")
        return helper

    async def _helper_holds(self, helper: anyio.abc.Process) -> bool:
        """Wait until the helper holds every lock (False if it died or took too long)."""
        assert helper.stdout is not None
        stream = BufferedByteReceiveStream(helper.stdout)
        with anyio.move_on_after(HELPER_TIMEOUT):
            try:
                return await stream.receive_until(b"\n", 64) == b"held"
            except (anyio.IncompleteRead, anyio.EndOfStream, anyio.DelimiterNotFound, OSError):
                return False
        return False

    async def _end_helper(self, helper: anyio.abc.Process) -> None:
        """Kill and reap a stall helper: its locks go with it."""
        with anyio.CancelScope(shield=True):
            if helper.returncode is None:
                with suppress(ProcessLookupError):
                    helper.kill()
            await helper.aclose()

    async def _crash_in_stall(
        self, slot: _Slot, stall: _Stall, at: float, kind: str, downtime: float
    ) -> None:
        """``at`` seconds into the stall, if it still holds: the coordinator crashes, or the host dies.

        Either way the restart meets the stall: the restarted coordinator
        cannot write its liveness record until the stall ends. A coordinator
        crash waits for the host's operations under way to end, so the host
        takes no new one from the start of the stall (it drains): ops blocked
        on the stall would otherwise push the crash past its end.
        """
        try:
            with anyio.move_on_after(HELPER_TIMEOUT):
                await stall.held.wait()
            if not stall.held.is_set():
                return
            with anyio.move_on_after(at):
                await self._stop.wait()
            if (
                self.stopping
                or slot.stall is not stall
                or slot.state is not _HostState.UP
                or slot.proc is None
                or slot.frozen
                or self._others_down(slot)
            ):
                return
            if kind == "kill9":
                self.faults["crash-in-stall"] += 1
                await self._kill9(slot)
                self._fault_task(self._restart_later, slot, downtime, name="restart")
            else:
                await self._coordinator_crash(slot, stall)
        finally:
            if kind == "coordinator_crash":
                slot.draining = False

    async def _sigstop(self, slot: _Slot, seconds: float) -> None:
        proc = self.freeze(slot)
        if proc is None:
            return
        frozen_at = self.now()
        try:
            await anyio.sleep(seconds)
        finally:
            self.thaw(slot, proc)
        took = self.now() - frozen_at
        if took > SIGSTOP_MAX + 0.15:
            # The driver itself was starved: a violation after this would be the harness's doing.
            self.ops["sigstop overran"] += 1
            self.out(f"warning: {slot.name} stayed frozen {took:.2f} s (asked {seconds:.2f} s)")

    def _fault_begins(self, kind: str, host: str) -> None:
        self._open_faults += 1
        self.record(FaultInjected(self.now(), kind, host))

    def _fault_ends(self) -> None:
        """One fault is over; ``FaultsHealed`` once none is left."""
        self._open_faults -= 1
        if not self._open_faults:
            self.record(FaultsHealed(self.now()))

    def freeze(self, slot: _Slot) -> _HostProc | None:
        """SIGSTOP the host's process (recorded first: the fault is open from before the stop)."""
        proc = slot.proc
        if proc is None or slot.frozen:
            return None
        slot.frozen = True
        self.faults["sigstop"] += 1
        self._fault_begins("sigstop", slot.name)
        proc.signal(signal.SIGSTOP)
        return proc

    def thaw(self, slot: _Slot, proc: _HostProc) -> None:
        """SIGCONT what :meth:`freeze` stopped; ``FaultsHealed`` once no fault is left."""
        proc.signal(signal.SIGCONT)
        slot.frozen = False
        slot.settled_at = max(slot.settled_at, self.now() + SETTLE)
        self._fault_ends()

    async def _kill9(self, slot: _Slot, proc: _HostProc | None = None, why: str = "kill9") -> None:
        """The machine dies: its process and every guest on it; nothing is released.

        ``proc`` is the host's process when it is not (yet) ``slot.proc``: a
        restarted coordinator that failed (``why`` then counts it apart).
        """
        proc = proc or slot.proc
        slot.proc, slot.state = None, _HostState.DOWN
        self.faults[why] += 1
        sleeps = list(self.host_sleeps[slot.name])
        if proc is not None:
            proc.signal(signal.SIGKILL)
        for sleep in sleeps:
            with suppress(ProcessLookupError):
                sleep.kill()
        if proc is not None:
            await proc.kill()
        for sleep in sleeps:
            await self._kill_sleep(slot.name, sleep)
        # After the reaping: later than anything the dead process recorded.
        self.record(HostCrashed(self.now(), slot.name))
        for key in [k for k in self.guests if k[0] == slot.name]:
            del self.guests[key]

    async def _restart_later(self, slot: _Slot, downtime: float) -> None:
        """Bring a dead host back after ``downtime`` (not once the run is stopping)."""
        with anyio.move_on_after(downtime):
            await self._stop.wait()
        while not self.stopping:
            slot.state = _HostState.RESTARTING
            proc: _HostProc | None = None
            try:
                proc = await self._take_standby()
                await proc.become(slot.name, self._spec(slot))
                await proc.wait_ready(STARTUP_TIMEOUT)
                # Every guest of the dead machine died with it: shut their domains down.
                for uuid in (await proc.call("known"))["domains"]:
                    async with self._locked((slot.name, uuid)):
                        with suppress(_HostOpError):
                            await proc.call("stop", uuid=uuid)
            except (_HostGone, TimeoutError, _HostOpError) as exc:
                self.out(f"restart of {slot.name} failed ({exc}); trying again")
                if proc is not None:
                    await proc.kill()
                slot.state = _HostState.DOWN
                with anyio.move_on_after(1.0):
                    await self._stop.wait()
                continue
            self.faults["restart"] += 1
            slot.proc, slot.state = proc, _HostState.UP
            return
        slot.state = _HostState.DOWN

    async def _coordinator_crash(self, slot: _Slot, stall: _Stall | None = None) -> bool:
        """Only the coordinator dies; its guests live on. Taken only while no op touches the host.

        New ops keep off the host (draining) while the ones under way finish;
        then this task holds every guest lock of the host until the restarted
        coordinator has re-attached them. With ``stall`` the crash happens
        only while that storage stall still holds.
        """
        slot.draining = True
        try:
            with anyio.move_on_after(2.0):
                while True:
                    held = self._try_lock_host(slot.name)
                    if held is not None:
                        break
                    await anyio.sleep(0.02)
            if (
                held is None
                or slot.proc is None
                or slot.state is not _HostState.UP
                or (stall is not None and slot.stall is not stall)
            ):
                for lock in held or ():
                    lock.release()
                return False
            if stall is not None:
                self.faults["crash-in-stall"] += 1
            try:
                await self._crash_and_recover(slot)
            finally:
                for lock in held:
                    lock.release()
            return True
        finally:
            slot.draining = False

    def _try_lock_host(self, host: str) -> list[anyio.Lock] | None:
        """Every guest lock of ``host``, taken at once, or None (nothing taken) if one is busy."""
        held: list[anyio.Lock] = []
        for key in [k for k in self._locks if k[0] == host]:
            lock = self._locks[key]
            try:
                lock.acquire_nowait()
            except anyio.WouldBlock:
                for other in held:
                    other.release()
                return None
            held.append(lock)
        return held

    async def _crash_and_recover(self, slot: _Slot) -> None:
        """Kill the coordinator, start it again at once, re-attach its guests (their locks are held)."""
        proc = slot.proc
        assert proc is not None
        slot.proc, slot.state = None, _HostState.RESTARTING
        self.faults["coordinator_crash"] += 1
        await proc.kill()
        crashed_at = self.now()
        self.record(CoordinatorCrashed(crashed_at, slot.name))
        mine = [g for g in self.guests.values() if g.host == slot.name]
        started: list[_HostProc] = []
        # In a storage stall the last renewal was not just before the crash but before the stall.
        since = crashed_at if slot.stall is None else min(crashed_at, slot.stall.since)
        async with anyio.create_task_group() as tg:
            # The supervisor stand-in runs on its own timer, however slow the restart is.
            tg.start_soon(self._watch, slot.name, mine, since, started, name="watchdog")
            try:
                new = await self._take_standby()
                started.append(new)
                await new.become(slot.name, self._spec(slot))
                await new.wait_ready(STARTUP_TIMEOUT)
            except (_HostGone, TimeoutError) as exc:
                self.out(f"restart of {slot.name}'s coordinator failed: {exc}")
        if not started or not started[0].ready:
            # Its guests were killed by the watchdog: the host counts as dead from here.
            await self._kill9(slot, started[0] if started else None, "restart failed")
            self._fault_task(self._restart_later, slot, 0.5, name="restart")
            return
        new = started[0]
        self.faults["restart"] += 1
        try:
            for guest in mine:
                await self._reattach(new, guest)
            tracked = {g.uuid for g in mine if (g.host, g.uuid) in self.guests}
            for uuid in (await new.call("known"))["domains"]:
                if uuid not in tracked:
                    with suppress(_HostOpError):
                        await new.call("stop", uuid=uuid)
        except (_HostGone, TimeoutError) as exc:
            self.out(f"{slot.name}'s restarted coordinator failed while re-attaching: {exc}")
            await self._kill9(slot, new, "restart failed")
            self._fault_task(self._restart_later, slot, 0.5, name="restart")
            return
        slot.proc, slot.state = new, _HostState.UP

    async def _watch(
        self, host: str, guests: Sequence[_Placed], since: float, started: Sequence[_HostProc]
    ) -> None:
        """At ``since + WATCHDOG``: unless the new coordinator is up and resumed, kill the guests.

        ``since`` is the crash, or the start of the storage stall the crash fell in.
        """
        await anyio.sleep(max(0.0, since + WATCHDOG - self.now()))
        if not (started and started[0].ready and started[0].resumed):
            await self._watchdog(host, guests)

    async def _watchdog(self, host: str, guests: Sequence[_Placed]) -> None:
        victims = [g for g in guests if g.sleep is not None and g.state is not _Placement.CLEANUP]
        for guest in victims:
            await self._kill_sleep(host, guest.sleep)
            guest.sleep = None
        now = self.now()
        for guest in victims:
            if guest.state is _Placement.RUNNING:  # a paused one had stopped already
                self.record(GuestStopped(now, host, guest.uuid, StopReason.FENCED))
            guest.state = _Placement.CLEANUP
        if victims:
            self.ops["watchdog kills"] += len(victims)

    async def _reattach(self, proc: _HostProc, guest: _Placed) -> None:
        key = (guest.host, guest.uuid)
        if guest.state is not _Placement.CLEANUP:
            self.ops["attach"] += 1
            try:
                result = await proc.call(
                    "attach",
                    uuid=guest.uuid,
                    disks=self._disks_of(guest.uuid),
                    was_paused=guest.state is _Placement.PAUSED,
                )
            except _HostOpError:
                self.ops["attach refused"] += 1
                result = {"running": False}
            if result["running"]:
                guest.state = _Placement.RUNNING
                return
            # libvirt kills a guest it cannot reconnect to; the host recorded no stop for it.
            was_running = guest.state is _Placement.RUNNING
            await self._kill_sleep(guest.host, guest.sleep)
            guest.sleep = None
            if was_running:
                self.record(GuestStopped(self.now(), guest.host, guest.uuid, StopReason.FENCED))
            guest.state = _Placement.CLEANUP
        await self._kill_sleep(guest.host, guest.sleep)  # one that never ran (a destination's) too
        guest.sleep = None
        with suppress(_HostOpError):
            result = await proc.call("stop", uuid=guest.uuid)
            if result["released"]:
                self.guests.pop(key, None)

    # -- the end --------------------------------------------------------------------------------

    def stop(self) -> None:
        self.stopping = True
        self._stop.set()

    async def finish(self) -> None:
        """Heal, leave one host down, probe every disk twice host_dead apart, snapshot."""
        host_dead = TIMING["host_dead"]
        self.record(FaultsHealed(self.now()))  # every SIGSTOP and storage stall has ended by now
        if not any(s.state is not _HostState.UP for s in self.slots.values()):
            up = self._up()
            victim = max(up, key=lambda s: sum(1 for g in self.guests.values() if g.host == s.name))
            self.out(f"final crash: {victim.name}")
            await self._kill9(victim)
        down = [s.name for s in self.slots.values() if s.state is not _HostState.UP]
        self.out(f"down at the end: {', '.join(down)}; probing every disk twice, host_dead apart")
        for _ in range(2):
            await anyio.sleep(host_dead + SLACK)
            up = self._up()
            if not up:
                break
            for index, path in enumerate(self.disks):
                slot = up[index % len(up)]
                with suppress(_HostGone, TimeoutError):
                    taken = await self._probe(slot, path)
                    self.out(f"  probe {path} from {slot.name}: {'taken' if taken else 'refused'}")
        for slot in self._up():
            assert slot.proc is not None
            with suppress(_HostGone, TimeoutError, _HostOpError):
                await slot.proc.call("snapshot")


class ChaosHosts:
    """Scripted access to chaos host processes, for a test that needs one exact story.

    Everything is recorded exactly as in :func:`run_chaos`; :meth:`check`
    merges what has been recorded so far and judges it. Create with
    :func:`chaos_hosts`.
    """

    def __init__(self, driver: _Driver) -> None:
        self._driver = driver

    @property
    def names(self) -> list[str]:
        return list(self._driver.slots)

    def _slot(self, host: str) -> _Slot:
        try:
            return self._driver.slots[host]
        except KeyError:
            raise InvalidParameterError(f"no chaos host {host!r}") from None

    async def start_guest(self, host: str, uuid: str, paths: Sequence[str]) -> bool:
        """Start guest ``uuid`` on ``host`` with exclusive disks ``paths``; True if it runs."""
        self._driver.catalog[uuid] = tuple((path, False) for path in paths)
        return await self._driver.start_guest(self._slot(host), uuid)

    async def probe(self, host: str, path: str) -> bool | None:
        """Take ``path`` from ``host`` for an instant (one write): True taken, False refused."""
        return await self._driver._probe(self._slot(host), path)

    def freeze(self, host: str) -> None:
        """SIGSTOP the host process (its coordinator and its guests' writes)."""
        self._driver.freeze(self._slot(host))

    def thaw(self, host: str) -> None:
        """SIGCONT a frozen host process."""
        slot = self._slot(host)
        if slot.frozen and slot.proc is not None:
            self._driver.thaw(slot, slot.proc)

    async def kill9(self, host: str) -> None:
        """SIGKILL the host process and every guest on it."""
        await self._driver._kill9(self._slot(host))

    @asynccontextmanager
    async def stalled_storage(
        self, host: str, disks: Sequence[str] = (), *, limit: float = 30.0
    ) -> AsyncIterator[bool]:
        """Stall ``host``'s storage within the block; yields True once a helper process holds it.

        The helper holds the host's liveness lock and the lease locks of the
        exclusive ``disks`` (against other hosts acquiring them too); it is
        killed, releasing everything, when the block ends, and exits by
        itself should the block last much longer than ``limit`` seconds.
        """
        slot = self._slot(host)
        stall = self._driver.begin_stall(slot, [(path, False) for path in disks])
        async with self._driver.stalled(slot, stall, limit) as held:
            yield held

    def check(self, *, slack: float = SLACK) -> tuple[History, list[Violation]]:
        """The merged history so far and what the checker finds in it."""
        history, _ = _merge(self._driver.workdir, self._driver.history.events, self._driver.slots)
        return history, check(history, host_dead=TIMING["host_dead"], slack=slack)


@asynccontextmanager
async def chaos_hosts(
    workdir: str | os.PathLike[str],
    *,
    hosts: int = 2,
    seed: int = 0,
    plaintext: bool = False,
    host_backends: Sequence[str] = ("asyncio", "trio"),
    out: Callable[[str], object] = print,
) -> AsyncIterator[ChaosHosts]:
    """Host processes as :func:`run_chaos` runs them, driven by the caller; all killed on exit.

    Args:
        workdir: an empty (or new) directory for the lockspace, histories and logs.
        hosts: how many host processes.
        seed: seeds the guests' write phases.
        plaintext: run the peer service without CURVE.
        host_backends: the event loops of the host processes, used in turn.
        out: where progress lines go.
    """
    directory = Path(workdir)
    await anyio.Path(directory / "lockspace").mkdir(parents=True)
    # An error is raised again outside the task group: as itself, not in an exception group.
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        driver = _Driver(
            tg, directory, seed=seed, hosts=hosts, plaintext=plaintext, host_backends=host_backends, out=out
        )
        try:
            await driver.start_hosts()
            yield ChaosHosts(driver)
        except Exception as exc:
            error = exc
        finally:
            await driver.close()
            tg.cancel_scope.cancel()
    if error is not None:
        raise error


async def _both(first: Awaitable[T], second: Awaitable[T]) -> tuple[T | BaseException, T | BaseException]:
    """Await two calls at once; each result is its value or the exception it raised."""
    results: list[T | BaseException] = [Exception("not run"), Exception("not run")]

    async def run(index: int, call: Awaitable[T]) -> None:
        try:
            results[index] = await call
        except (_HostGone, _HostOpError, TimeoutError) as exc:
            results[index] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, 0, first)
        tg.start_soon(run, 1, second)
    return results[0], results[1]


def _save(path: Path, events: Iterable[HistoryEvent]) -> None:
    """Write the driver's records next to the hosts' (for a look at a failed run)."""
    with path.open("w") as f:
        for event in events:
            f.write(json.dumps(event_to_json(event)) + "\n")


def _merge(workdir: Path, driver_events: Iterable[HistoryEvent], names: Iterable[str]) -> tuple[History, int]:
    events: list[HistoryEvent] = []
    torn = 0
    for name in names:
        path = workdir / f"history-{name}.jsonl"
        if path.exists():
            found, bad = read_history_file(path)
            events.extend(found)
            torn += bad
    events.extend(driver_events)
    # A stable sort: records of one process at one instant keep the order they were written in.
    events.sort(key=lambda e: e.time)
    return History(events), torn


@contextmanager
def _workdir(path: str | os.PathLike[str] | None) -> Iterator[tuple[Path, bool]]:
    """The run's directory and whether to keep it (a temporary one is removed afterwards)."""
    if path is not None:
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        yield directory, True
        return
    with tempfile.TemporaryDirectory(prefix="actorlock-chaos-") as tmp:
        yield Path(tmp), False


async def run_chaos(
    seconds: float,
    seed: int,
    hosts: int = 3,
    out: Callable[[str], object] = print,
    *,
    workdir: str | os.PathLike[str] | None = None,
    plaintext: bool = False,
    host_backends: Sequence[str] = ("asyncio", "trio"),
    fault_gap: tuple[float, float] = (0.8, 1.6),
) -> ChaosReport:
    """Run the chaos workload for ``seconds`` and judge the merged history.

    Args:
        seconds: how long guests are started, stopped and migrated under faults.
        seed: seeds every random choice (the interleaving still depends on timing).
        hosts: how many host processes (at least 2).
        out: where progress and the summary go, one line per call.
        workdir: an existing or new directory to keep everything in (the
            lockspace, histories, logs); a temporary one, removed after, by default.
        plaintext: run the peer service without CURVE.
        host_backends: the event loops of the host processes, used in turn.
        fault_gap: the range of seconds between two faults.

    Returns:
        The report; ``report.violations`` is empty when the run was safe.
    """
    if hosts < 2:
        raise InvalidParameterError(f"a chaos run needs at least 2 hosts, got {hosts}")
    started = time.monotonic()
    with _workdir(workdir) as (directory, keep):
        await anyio.Path(directory / "lockspace").mkdir(exist_ok=keep)
        async with anyio.create_task_group() as tg:
            driver = _Driver(
                tg,
                directory,
                seed=seed,
                hosts=hosts,
                plaintext=plaintext,
                host_backends=list(host_backends),
                out=out,
            )
            error: Exception | None = None
            try:
                await driver.start_hosts()
                async with anyio.create_task_group() as chaos:
                    driver.chaos_tg = chaos
                    for index in range(WORKERS):
                        chaos.start_soon(driver.worker, index, name=f"worker {index}")
                    chaos.start_soon(driver.injector, fault_gap, name="fault injector")
                    await anyio.sleep(seconds)
                    driver.stop()
                await driver.finish()
            except Exception as exc:
                error = exc
            finally:
                await driver.close()
                tg.cancel_scope.cancel()
        if error is not None:
            raise error
        _save(directory / "history-driver.jsonl", driver.history.events)
        history, torn = _merge(directory, driver.history.events, driver.slots)
        violations = check(history, host_dead=TIMING["host_dead"], slack=SLACK)
        report = ChaosReport(
            seed=seed,
            hosts=hosts,
            seconds=seconds,
            elapsed=time.monotonic() - started,
            operations=sum(driver.ops[k] for k in ("start", "stop", "migrate", "probe", "tidy", "snapshot")),
            operations_by_kind=dict(driver.ops),
            faults=dict(driver.faults),
            migrations_committed=driver.committed,
            migrations_cancelled=driver.cancelled,
            events=len(history),
            writes=len(history.of(GuestWrote)),
            unreadable_lines=torn,
            violations=tuple(violations),
            workdir=str(directory) if keep else "",
        )
    for line in report.summary():
        out(line)
    return report


def main_chaos(argv: Sequence[str] | None = None) -> int:
    """``actorlock chaos``: run :func:`run_chaos`; exit 1 on violations, 0 otherwise."""
    parser = argparse.ArgumentParser(
        prog="actorlock chaos",
        description="Host processes on loopback under kill -9, SIGSTOP and restarts; the history is checked.",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the workload runs (default 20)")
    parser.add_argument("--seed", type=int, help="seed of the random choices (default: random, printed)")
    parser.add_argument("--hosts", type=int, default=3, help="host processes (default 3)")
    parser.add_argument("--workdir", type=Path, help="keep the lockspace, histories and logs here")
    parser.add_argument("--plaintext", action="store_true", help="run the peer service without CURVE")
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"), help="the driver's loop")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.hosts < 2:
        parser.error("--hosts must be at least 2")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    report = anyio.run(
        _run_for_cli, args.seconds, seed, args.hosts, args.workdir, args.plaintext, backend=args.backend
    )
    return 1 if report.violations else 0


async def _run_for_cli(
    seconds: float, seed: int, hosts: int, workdir: Path | None, plaintext: bool
) -> ChaosReport:
    return await run_chaos(seconds, seed, hosts, print, workdir=workdir, plaintext=plaintext)


def _module_main(argv: Sequence[str]) -> int:
    if argv[:1] == ["host-process"]:
        return host_process_main()
    return main_chaos(argv)


if __name__ == "__main__":
    sys.exit(_module_main(sys.argv[1:]))
