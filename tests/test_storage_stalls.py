"""Issue 7: slow and stuck storage must never let two hosts run one disk.

One deterministic regression test per split-brain path of the issue, and one
for the surrogate crash. Every test uses the issue's short but valid timing
(renew 0.2 s, lease_timeout 1.0 s, fence_timeout 0.5 s, host_dead 2.0 s) and
real guest processes; the delays are injected by small test-local wrappers
(a backend whose join/renew are slow or held, a state store whose saves are
slow, a host-record read that stalls before its judgement) or, for the hung
NFS server, by holding the backend's own record locks from this process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import attrs
import pytest

import actorlock
from actorlock.backends.base import BackendCapabilities, HostAdvert, LeaseBackend
from actorlock.backends.file import FileLeaseBackend, lease_file_name
from actorlock.backends.memory import MemoryLeaseBackend, shared_lockspace
from actorlock.errors import ActorlockError, InvalidParameterError, LeaseLostError, ResourceBusyError
from actorlock.model import (
    DomainIdentity,
    HostIdentity,
    HostRecord,
    HostView,
    Lease,
    LeaseOwner,
    LeaseRecord,
    LeaseRequest,
)
from actorlock.statestore import DomainState, MemoryStateStore
from actorlock.testing import host_faults
from actorlock.testing.events import EventLog
from actorlock.testing.faults import FaultyBackend
from actorlock.timing_presets import fast_timing

from .support import guest_process, host_config, unique

pytestmark = pytest.mark.anyio

# The timing: host_dead >= (lease_timeout + fence_timeout) * 1.01, and
# io_timeout long enough that the injected delays never time out on their own.
STALL_TIMING = fast_timing(scale=4, fence_timeout=0.5, host_dead=2.0, io_timeout=3.0)
LEASE_TIMEOUT = STALL_TIMING["lease_timeout"]
FENCE_TIMEOUT = STALL_TIMING["fence_timeout"]
HOST_DEAD = STALL_TIMING["host_dead"]
# Scheduling slack on top of lease_timeout + fence_timeout (a loaded CI box).
SLACK = 0.5
# What "fenced in time" means: dead (or paused) no later than this after the
# last renewal that could have succeeded.
FENCE_BUDGET = LEASE_TIMEOUT + FENCE_TIMEOUT + SLACK

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="needs OFD locks and /proc/locks (Linux)"
)


def stall_config(
    name: str,
    host_id: int,
    *,
    lockspace: str | None = None,
    lockspace_dir: Path | None = None,
    failure_action: str = "poweroff",
    peer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One host on the issue's timing: a memory lockspace by name, or a file lockspace directory."""
    sections: dict[str, Any] = {
        "timing": dict(STALL_TIMING),
        "locking": {"failure_action": failure_action, "kill_grace": 0.1},
    }
    backend = "memory"
    if lockspace_dir is not None:
        backend = "file"
        sections["file"] = {"lockspace_dir": str(lockspace_dir)}
    if peer is not None:
        sections["peer"] = peer
    return host_config(name, host_id, lockspace=lockspace, backend=backend, **sections)


def memory_backend(space: str) -> MemoryLeaseBackend:
    return MemoryLeaseBackend(
        shared_lockspace(space), host_dead=HOST_DEAD, poll_interval=STALL_TIMING["renew_interval"]
    )


def file_backend(lockspace_dir: Path) -> FileLeaseBackend:
    return FileLeaseBackend(
        lockspace_dir,
        host_dead=HOST_DEAD,
        poll_interval=STALL_TIMING["renew_interval"],
        io_timeout=STALL_TIMING["io_timeout"],
    )


def alive(guest: subprocess.Popen[bytes]) -> bool:
    """True while the guest process has not exited (reaps it once it has)."""
    return guest.poll() is None


async def wait_exit(guest: subprocess.Popen[bytes], deadline: float) -> float | None:
    """The time the guest was seen gone, or None if it still ran at ``deadline``."""
    while alive(guest):
        if anyio.current_time() >= deadline:
            return None
        await anyio.sleep(0.01)
    return anyio.current_time()


async def wait_until(condition: Callable[[], bool], within: float, what: str | Callable[[], str]) -> None:
    """Poll ``condition`` (state outside any event we could await) until it holds."""
    with anyio.move_on_after(within):
        while not condition():  # noqa: ASYNC110 - callbacks and logs signal no event
            await anyio.sleep(0.02)
        return
    message = what if isinstance(what, str) else what()
    raise AssertionError(f"{message}: not within {within} s")  # not pytest.fail: a BaseException


async def wait_phase(domain: actorlock.Domain, phase: str, within: float) -> None:
    seen = ""
    with anyio.move_on_after(within):
        while (seen := (await domain.status()).phase) != phase:  # noqa: ASYNC110 - a status, not an event
            await anyio.sleep(0.02)
        return
    raise AssertionError(f"{domain.identity.uuid} is {seen!r}, not {phase!r}, after {within} s")


def holders(space: str, key: str) -> list[str]:
    """The hosts named in a memory lockspace's record for ``key``."""
    record = shared_lockspace(space).records.get(key)
    return [] if record is None else [h.owner.host for h in record.holders]


def describe(events: EventLog, *kinds: str) -> str:
    shown = [e for e in events.events if not kinds or e.kind in kinds]
    return "; ".join(f"{e.time:.2f} {e.kind} {e.fields}" for e in shown)


@attrs.define
class Takeover:
    """What host B saw when it finally got the disk."""

    taken_at: float | None = None
    guest_alive: bool | None = None
    refusals: int = 0
    done: anyio.Event = attrs.field(factory=anyio.Event)


async def take_over(
    domain: actorlock.Domain, path: str, guest: subprocess.Popen[bytes], result: Takeover, within: float
) -> None:
    """Retry until ``domain`` holds ``path``; note whether the other host's guest was alive then."""
    try:
        with anyio.move_on_after(within):
            while True:
                try:
                    await domain.start([actorlock.disk(path)])
                except ResourceBusyError:
                    result.refusals += 1
                    await anyio.sleep(0.05)
                    continue
                # No await in between: a guest alive now was alive when the lease was granted.
                result.guest_alive = alive(guest)
                result.taken_at = anyio.current_time()
                return
    finally:
        result.done.set()


class SlowStorage:
    """A backend whose own-record I/O is slow or held, as storage behind a hung server.

    ``join_delay``/``renew_delay``: seconds before the operation reaches the
    lockspace (its write lands at the end of the delay). ``hold_renewals``
    parks every renewal until ``release_renewals``. Everything else forwards.
    """

    def __init__(self, inner: LeaseBackend, *, join_delay: float = 0.0, renew_delay: float = 0.0) -> None:
        self.inner = inner
        self.join_delay = join_delay
        self.renew_delay = renew_delay
        self._held: anyio.Event | None = None
        self._parked = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        # Anything the protocol gains later goes straight to the real backend.
        return getattr(self.inner, name)

    @property
    def kind(self) -> str:
        return self.inner.kind

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.inner.capabilities

    def hold_renewals(self) -> None:
        self._held = anyio.Event()
        self._parked = anyio.Event()

    def release_renewals(self) -> None:
        if self._held is not None:
            self._held.set()
            self._held = None

    async def wait_parked(self) -> None:
        await self._parked.wait()

    async def lockspace_id(self) -> str:
        return await self.inner.lockspace_id()

    async def join(self, host: HostIdentity, incarnation: str, advert: HostAdvert) -> HostRecord | None:
        await anyio.sleep(self.join_delay)
        return await self.inner.join(host, incarnation, advert)

    async def renew(self, advert: HostAdvert) -> HostRecord:
        held = self._held
        if held is not None:
            self._parked.set()
            await held.wait()
        await anyio.sleep(self.renew_delay)
        return await self.inner.renew(advert)

    async def leave(self, *, clean: bool) -> None:
        await self.inner.leave(clean=clean)

    async def hosts(self) -> list[HostView]:
        return await self.inner.hosts()

    async def acquire(self, owner: LeaseOwner, requests: Sequence[LeaseRequest]) -> tuple[Lease, ...]:
        return await self.inner.acquire(owner, requests)

    async def release(self, owner: LeaseOwner, keys: Sequence[str]) -> None:
        await self.inner.release(owner, keys)

    async def transfer(
        self,
        source: LeaseOwner,
        destination: LeaseOwner,
        destination_incarnation: str,
        leases: Sequence[Lease],
    ) -> tuple[Lease, ...]:
        return await self.inner.transfer(source, destination, destination_incarnation, leases)

    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]:
        return await self.inner.records(keys)

    async def aclose(self) -> None:
        await self.inner.aclose()


class SlowSaves(MemoryStateStore):
    """A state store whose domain saves take ``delay`` seconds (a slow state_dir)."""

    def __init__(self) -> None:
        super().__init__()
        self.delay = 0.0

    async def save_domain(self, state: DomainState) -> None:
        await anyio.sleep(self.delay)
        await super().save_domain(state)


# --- holding the file backend's record locks, as a hung NFS server would -----

_F_OFD_SETLK: int = getattr(fcntl, "F_OFD_SETLK", 37)
_WRITE_LOCK = struct.pack("hhqqi0q", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)


class HeldLocks:
    """Open-file-description locks on record lock files, held until :meth:`release`.

    The file backend locks the same files the same way (OFD locks), so while
    one is held here every backend operation on that record blocks in its
    worker thread, exactly as behind a storage server that stopped answering.
    """

    def __init__(self) -> None:
        self._fds: list[int] = []

    async def take(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._fds.append(fd)
        # Non-blocking tries: the host itself holds the lock for a moment per renewal,
        # and no worker thread may be spent waiting (the pool is about to be full).
        while True:
            try:
                fcntl.fcntl(fd, _F_OFD_SETLK, _WRITE_LOCK)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            await anyio.sleep(0.005)

    def release(self) -> None:
        while self._fds:
            os.close(self._fds.pop())  # closing the only descriptor drops an OFD lock


def blocked_waiters(path: Path) -> int:
    """How many lock requests are blocked on ``path`` (the ``->`` lines of /proc/locks)."""
    st = os.stat(path)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    with open("/proc/locks") as f:
        return sum(1 for line in f if "->" in line and inode in line)


async def settled_waiters(path: Path, within: float = 3.0) -> int:
    """Wait until some requests block on ``path`` and their number stops growing."""
    history: list[int] = []
    with anyio.fail_after(within):
        while True:
            history.append(blocked_waiters(path))
            if history[-1] > 0 and len(history) >= 5 and len(set(history[-5:])) == 1:
                return history[-1]
            await anyio.sleep(0.05)


# --- path 1: fencing starved by stuck lease I/O ---------------------------------


@linux_only
async def test_fencing_is_not_starved_by_lease_io_stuck_on_a_hung_lockspace(tmp_path: Path) -> None:
    """45 starts blocked on a held lease lock fill the worker pool; the host's own
    record is held too, so its lease expires: the guest must still be powered off
    within lease_timeout + fence_timeout of the last renewal."""
    lockspace = tmp_path / "ls"
    lockspace.mkdir()
    events = EventLog()
    stuck = actorlock.disk("/d/stuck.img")
    stuck_lock = lockspace / "leases" / f"{lease_file_name(stuck.key)}.lock"
    host_lock = lockspace / "hosts" / "1.lock"
    blocked = 0
    locked_at = died_at = None
    with guest_process() as guest:
        async with actorlock.open_host(
            stall_config("a", 1, lockspace_dir=lockspace), event_sink=events.sink
        ) as a:
            await a.domain("vm").start([actorlock.disk("/d/vm.img")], pid=guest.pid)
            assert host_lock.exists(), "the file backend no longer keeps hosts/<id>.lock"
            held = HeldLocks()
            try:
                await held.take(stuck_lock)

                async def start_starved(n: int) -> None:
                    with contextlib.suppress(ActorlockError):
                        await a.domain(f"starved-{n}").start([stuck])

                async with anyio.create_task_group() as starts:
                    for n in range(45):
                        starts.start_soon(start_starved, n)
                    blocked = await settled_waiters(stuck_lock)
                    # The hung server now also holds the host's liveness record:
                    # the last renewal that can succeed has already started.
                    await held.take(host_lock)
                    locked_at = anyio.current_time()
                    died_at = await wait_exit(guest, locked_at + FENCE_BUDGET)
                    starts.cancel_scope.cancel()
            finally:
                held.release()
    assert blocked >= 1, "no start ever blocked on the held lease lock: the stall was not reproduced"
    assert locked_at is not None
    assert died_at is not None, (
        f"guest pid {guest.pid} still ran {FENCE_BUDGET} s after the host's renewals stalled "
        f"({blocked} lease operations blocked); failure actions: {describe(events, 'failure_action')}"
    )
    assert events.of("lockspace_lost"), "the guest died but the host never lost its lockspace"


async def test_a_failed_fence_is_reported_and_retried_until_it_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The pause callback fails once: a ``fence_failed`` event and an error log, then a retry that works."""
    uuid = "u-fence-retry"
    space = unique()
    events = EventLog()
    calls: list[float] = []

    async def pause(domain: DomainIdentity, pid: int | None) -> None:
        calls.append(anyio.current_time())
        if len(calls) == 1:
            raise RuntimeError("the hypervisor did not answer the pause")

    faulty = FaultyBackend(memory_backend(space))
    caplog.set_level(logging.ERROR)
    with guest_process() as guest:
        async with actorlock.open_host(
            stall_config("a", 1, lockspace=space, failure_action="pause"),
            backend=faulty,
            pause_callback=pause,
            event_sink=events.sink,
        ) as a:
            await a.domain(uuid).start([actorlock.disk("/d/1.img")], pid=guest.pid)
            faulty.fail("renew")
            await wait_until(
                lambda: bool(events.of("fence_failed", domain=uuid)),
                LEASE_TIMEOUT + FENCE_BUDGET,
                lambda: f"no fence_failed event after the pause callback raised (events: {describe(events)})",
            )
            await wait_until(lambda: len(calls) >= 2, 5.0, "the failed fence was never retried")
            retried_at = calls[1]
            await wait_until(
                lambda: any(e.time >= retried_at for e in events.of("failure_action", domain=uuid)),
                5.0,
                lambda: f"no failure_action event for the retry that succeeded (events: {describe(events)})",
            )
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and uuid in r.getMessage()]
    assert errors, "the failed fence attempt was not logged at error level"


# --- path 2: a resumed restart re-anchors its lease --------------------------------


async def test_a_resumed_restart_keeps_the_deadline_of_its_last_renewal() -> None:
    """Crash, restart 0.2 s later with a join whose read and write take 1.2 s each.

    The restarted host's lease runs out one lease_timeout after its last
    renewal *before* the crash: it must fence its guest by then, and host B,
    which takes the disk once A's record has been still for host_dead, must
    never get it while A's guest runs.
    """
    space = unique()
    store = MemoryStateStore()
    events = EventLog()
    cfg = stall_config("a", 1, lockspace=space)
    takeover = Takeover()
    restart_error: BaseException | None = None
    phase_after = ""
    died_at: float | None = None
    with guest_process() as guest:
        async with (
            actorlock.open_host(stall_config("b", 2, lockspace=space)) as b,
            anyio.create_task_group() as tg,
        ):
            async with actorlock.open_host(cfg, state_store=store, event_sink=events.sink) as a:
                await a.domain("u1").start([actorlock.disk("/d/1.img")], pid=guest.pid)
                tg.start_soon(take_over, b.domain("u2"), "/d/1.img", guest, takeover, 8.0)
                await anyio.sleep(STALL_TIMING["renew_interval"])  # B watches A renew first
                host_faults.crash(a)
            crashed_at = anyio.current_time()  # A's last renewal started no later than this

            async def watch_guest() -> None:
                nonlocal died_at
                died_at = await wait_exit(guest, crashed_at + FENCE_BUDGET)

            tg.start_soon(watch_guest)
            await anyio.sleep(0.2)
            slow = SlowStorage(memory_backend(space), join_delay=2.4)
            try:
                async with actorlock.open_host(
                    cfg, backend=slow, state_store=store, event_sink=events.sink
                ) as a2:
                    await takeover.done.wait()
                    phase_after = (await a2.domain("u1").status()).phase
            except ActorlockError as exc:  # refusing to come back is fine; fencing is not optional
                restart_error = exc
    assert takeover.taken_at is not None, f"host B never got the disk ({takeover.refusals} refusals)"
    assert not takeover.guest_alive, (
        f"split brain: host B took the disk {takeover.taken_at - crashed_at:.2f} s after A crashed "
        f"while A's guest still ran (restart error: {restart_error!r}; A's events: {describe(events)})"
    )
    assert died_at is not None, (
        f"A's guest still ran {FENCE_BUDGET} s after A's last renewal (A's events: {describe(events)})"
    )
    assert phase_after != "running", "the restarted host reports the domain running with an expired lease"


@pytest.mark.parametrize("damage", ["token", "gone"])
async def test_a_resumed_restart_checks_the_lease_records_and_fences_what_it_lost(damage: str) -> None:
    """While A is down (within lease_timeout) one of its two lease records stops naming
    its current grant, as a crash in the middle of a transfer would leave it. The
    resumed domain must be fenced and reported lost."""
    space = unique()
    store = MemoryStateStore()
    events = EventLog()
    cfg = stall_config("a", 1, lockspace=space)
    key = actorlock.disk("/d/2.img").key
    with guest_process() as guest:
        async with actorlock.open_host(cfg, state_store=store, event_sink=events.sink) as a:
            status = await a.domain("u1").start(
                [actorlock.disk("/d/1.img"), actorlock.disk("/d/2.img")], pid=guest.pid
            )
            assert status.phase == "running"
            host_faults.crash(a)
        records = shared_lockspace(space).records
        record = records[key]
        (mine,) = record.holders
        if damage == "token":
            newer = attrs.evolve(mine, token=record.token + 1)
            records[key] = attrs.evolve(record, token=record.token + 1, holders=(newer,))
        else:
            records[key] = attrs.evolve(record, holders=())
        await anyio.sleep(0.2)
        async with actorlock.open_host(cfg, state_store=store, event_sink=events.sink) as a2:
            assert a2.resumed, "the restart came too late to resume: the test did not exercise a resume"
            restarted_at = anyio.current_time()
            died_at = await wait_exit(guest, restarted_at + FENCE_TIMEOUT + 2 * SLACK)
            assert died_at is not None, (
                f"guest pid {guest.pid} still runs after a resume that no longer holds {key} "
                f"({damage}); A's events: {describe(events)}"
            )
            vm = a2.domain("u1")
            await wait_phase(vm, "lost", 2.0)
            with pytest.raises(LeaseLostError):
                await vm.attach()


# --- path 3: acquisition racing the expiry -------------------------------------------


async def test_an_acquisition_racing_the_expiry_is_fenced_and_never_revived() -> None:
    """The state save after the acquisition takes 1.5 s while renewals stall: the lease
    expires in the middle of start(). The guest must be fenced in time (or start()
    refuses and fences), B must never hold the disk while A's guest runs, and once
    storage heals A must not call the domain running again."""
    space = unique()
    store = SlowSaves()
    events = EventLog()
    faulty = FaultyBackend(memory_backend(space))
    key = actorlock.disk("/d/1.img").key
    takeover = Takeover()
    start_result: str = ""
    died_at: float | None = None
    with guest_process() as guest:
        async with (
            actorlock.open_host(stall_config("b", 2, lockspace=space)) as b,
            actorlock.open_host(
                stall_config("a", 1, lockspace=space),
                backend=faulty,
                state_store=store,
                event_sink=events.sink,
            ) as a,
        ):
            vm = a.domain("u1")

            async def start_vm() -> None:
                nonlocal start_result
                try:
                    status = await vm.start([actorlock.disk("/d/1.img")], pid=guest.pid)
                    start_result = status.phase
                except ActorlockError as exc:
                    start_result = repr(exc)

            async def watch_guest() -> None:
                nonlocal died_at
                died_at = await wait_exit(guest, stalled_at + FENCE_BUDGET)

            store.delay = 1.5
            faulty.stall("renew")
            stalled_at = anyio.current_time()  # A's last successful renewal started before this
            async with anyio.create_task_group() as tg:
                tg.start_soon(start_vm)
                tg.start_soon(watch_guest)
                # B starts trying once A holds the disk (A is inside its slow state save then).
                await wait_until(
                    lambda: holders(space, key) == ["a"], LEASE_TIMEOUT, "A never took the lease"
                )
                tg.start_soon(take_over, b.domain("u2"), "/d/1.img", guest, takeover, 6.0)
            store.delay = 0.0
            faulty.heal()
            with anyio.fail_after(5):
                await events.wait_for("lockspace_regained")
            phase_after_heal = (await vm.status()).phase
    assert start_result, "start() never finished"
    assert takeover.taken_at is not None, f"host B never got the disk ({takeover.refusals} refusals)"
    assert not takeover.guest_alive, (
        f"split brain: host B took the disk {takeover.taken_at - stalled_at:.2f} s after A's renewals "
        f"stalled while A's guest still ran (A's start(): {start_result}; events: {describe(events)})"
    )
    assert died_at is not None, (
        f"A's guest was not fenced within {FENCE_BUDGET} s of A's last renewal "
        f"(start(): {start_result}; events: {describe(events)})"
    )
    assert phase_after_heal != "running", (
        f"A revived the domain as running after storage healed, with leases B now holds "
        f"(start(): {start_result})"
    )


# --- path 4: the observer's clock is read after the read ------------------------------


async def test_a_stall_between_reading_and_judging_does_not_kill_a_healthy_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B reads A's record, then stalls 1.9 s before judging it (io_timeout 3.0). A renews
    meanwhile and never misses its lease; B must refuse, not take A's disk."""
    lockspace = tmp_path / "ls"
    lockspace.mkdir()
    a_backend = SlowStorage(file_backend(lockspace))
    b_backend = file_backend(lockspace)
    events = EventLog()
    with guest_process() as guest:
        async with (
            actorlock.open_host(
                stall_config("a", 1, lockspace_dir=lockspace), backend=a_backend, event_sink=events.sink
            ) as a,
            actorlock.open_host(stall_config("b", 2, lockspace_dir=lockspace), backend=b_backend) as b,
        ):
            await a.domain("u1").start([actorlock.disk("/d/1.img")], pid=guest.pid)
            # Keep A's record still across B's two reads (A stays live: it renewed
            # less than renew_interval ago and is released long before lease_timeout).
            a_backend.hold_renewals()
            with anyio.fail_after(2):
                await a_backend.wait_parked()
            (held_counter,) = [v.record.counter for v in await b.hosts() if v.record.id == 1]
            with pytest.raises(ResourceBusyError):
                await b.domain("u2").start([actorlock.disk("/d/1.img")])  # B first sees this record
            await anyio.sleep(0.3)

            read_back = anyio.Event()
            stalled: list[HostRecord | None] = []
            real_read = b_backend._read_host_sync

            def read_then_stall(host_id: int) -> HostRecord | None:
                record = real_read(host_id)
                if host_id == 1:
                    stalled.append(record)
                    anyio.from_thread.run_sync(read_back.set)
                    time.sleep(1.9)
                return record

            monkeypatch.setattr(b_backend, "_read_host_sync", read_then_stall)
            outcome: str = ""

            async def second_try() -> None:
                nonlocal outcome
                try:
                    await b.domain("u2").start([actorlock.disk("/d/1.img")])
                    outcome = "granted"
                except ActorlockError as exc:
                    outcome = repr(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(second_try)
                with anyio.fail_after(3):
                    await read_back.wait()
                a_backend.release_renewals()  # A renews while B sits on what it read
            monkeypatch.undo()
            a_live = a.live
            a_phase = (await a.domain("u1").status()).phase
    assert stalled, "B's acquisition never read A's host record through _read_host_sync"
    # The judgement B stalled on was of the very record it had already seen 0.3 s earlier.
    record = stalled[0]
    assert record is not None
    assert record.counter == held_counter, "A's record changed between B's reads: nothing was stale"
    assert not events.of("lockspace_lost"), f"A itself lost its lockspace: {describe(events)}"
    assert a_live, "host A was not live after its short renewal hold"
    assert a_phase == "running", "host A's domain did not stay running"
    assert outcome.startswith("ResourceBusyError"), (
        f"host B judged healthy, renewing host A dead from a read 1.9 s old and took its disk: {outcome}"
    )


# --- the surrogate crash: every handler fails only its caller ----------------------------


FAST_PEER = {
    "endpoint": "tcp://127.0.0.1:*",
    "plaintext": True,
    "retry_interval": 0.05,
    "prepare_timeout": 2.0,
    "transfer_margin": 0.5,
    "migration_timeout": 4.0,
}


async def test_a_disk_path_with_a_lone_surrogate_fails_only_its_caller() -> None:
    """A path ``os.fsdecode`` made from non-UTF-8 bytes is refused by start(), or its
    migration fails with an ActorlockError; either way the host keeps running."""
    space = unique()
    path = os.fsdecode(b"/images/\xff.img")
    assert "\udcff" in path
    outcome = ""
    async with (
        actorlock.open_host(stall_config("a", 1, lockspace=space, peer=FAST_PEER)) as a,
        actorlock.open_host(stall_config("b", 2, lockspace=space, peer=FAST_PEER)) as b,
    ):
        vm = a.domain("u-surrogate")
        try:
            await vm.start([actorlock.disk(path)])
        except InvalidParameterError as exc:
            outcome = f"start refused: {exc!r}"
        else:
            with pytest.raises(ActorlockError) as raised:
                async with vm.migrate_to(b.peer_endpoint):
                    pass
            outcome = f"migration refused: {raised.value!r}"
        # Still running: live, answering, and granting leases to other domains.
        status = await a.status()
        assert status.live, f"host a is no longer live after: {outcome}"
        other = await a.domain("u-other").start([actorlock.disk("/images/ok.img")])
        assert other.phase == "running"
        await a.domain("u-other").shutdown()
        assert (await b.status()).live
    assert outcome
