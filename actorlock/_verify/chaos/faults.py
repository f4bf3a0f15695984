"""The chaos faults: kill -9, SIGSTOP, coordinator crashes, storage stalls, restarts, and their recovery."""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
from collections.abc import (
    AsyncIterator,
    Iterable,
    Sequence,
)
from contextlib import asynccontextmanager, suppress

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from ...backends.file import lease_file_name
from ...model import disk
from ...testing.history import (
    CoordinatorCrashed,
    FaultInjected,
    FaultsHealed,
    GuestStopped,
    HostCrashed,
    StopReason,
)
from .core import PlacedGuest, Placement, Slot, SlotState, Stall
from .processes import STALL_HELPER, HostGone, HostOpError, HostProcess, open_pidfd
from .settings import (
    BURST,
    BURST_DISK,
    FAULT_CYCLE,
    FIRST_FAULTS,
    HELPER_TIMEOUT,
    SETTLE,
    SIGSTOP_MAX,
    SLACK,
    STALL_BURST,
    STALL_CRASH,
    STALL_MAX,
    STALL_MIN,
    STALL_OTHER_DISKS,
    STALL_OWN_DISKS,
    STARTUP_TIMEOUT,
    SUPERVISOR_KILL_LIMIT,
    TIMING,
)
from .workload import Workload


class FaultInjector(Workload):
    """The injector and every fault it sends, with what the driver does to recover."""

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

    def _others_down(self, slot: Slot) -> bool:
        return any(s.state is not SlotState.UP for s in self.slots.values() if s is not slot)

    async def _inject(self, kind: str, rng: random.Random) -> bool:
        """Start one fault of ``kind`` if some host allows it now; False if none does."""
        # A host in a fault, or just out of a stall or a freeze, is left alone: every fault starts
        # from a host that renewed recently (SIGSTOP_MAX is derived from that).
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
        if kind == "supervisor_kill":
            running = [
                g
                for g in self.guests.values()
                if g.state is Placement.RUNNING
                and g.pid is not None
                and any(s.name == g.host for s in calm)
                and not self._locks.get((g.host, g.uuid), anyio.Lock()).locked()
            ]
            # One draw whatever the state; inline (a second at most): one that finds nothing
            # to kill leaves the kind queued.
            pick = rng.random()
            return bool(running) and await self._supervisor_kill(running[int(pick * len(running))])
        # One host down at a time: migrations keep two live hosts, and rule 5 keeps a clear culprit.
        calm = [s for s in calm if not self._others_down(s)]
        if not calm:
            return False
        slot = rng.choice(calm)
        if kind == "kill9":
            await self._kill9(slot)
            self._fault_task(self._restart_later, slot, rng.uniform(0.2, 2.0), name="restart")
            return True
        if kind == "coordinator_killed":
            # The host with the most running guests: their supervisors are what is judged.
            counts = {s.name: 0 for s in calm}
            for guest in self.guests.values():
                if guest.state is Placement.RUNNING and guest.host in counts:
                    counts[guest.host] += 1
            most = max(counts.values())
            if not most:
                return False  # later: a host without guests would show nothing
            if counts[slot.name] < most:
                slot = next(s for s in calm if counts[s.name] == most)
            return await self._coordinator_crash(slot, for_good=True, downtime=rng.uniform(0.2, 1.0))
        return await self._coordinator_crash(slot)

    def _inject_stall(self, slot: Slot, rng: random.Random) -> None:
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
            functools.partial(self._storage_stall, burst=burst, probe_at=probe_at),
            slot,
            stall,
            seconds,
            name=f"storage stall {slot.name}",
        )
        if crash:
            if crash_kind == "coordinator_crash":
                slot.draining = True  # see _crash_in_stall
            self._fault_task(
                self._crash_in_stall, slot, stall, crash_at, crash_kind, downtime, name="crash in stall"
            )

    def begin_stall(self, slot: Slot, disks: Iterable[tuple[str, bool]]) -> Stall:
        """Open a stall of ``slot``'s storage (recorded first: the fault is open before any lock is taken).

        It covers the host's liveness lock and the lease locks of ``disks``
        (path, shared): whoever writes those records blocks, that host for
        everything it renews, releases or transfers, another host only when
        it acquires the same disk, as on a hung NFS server.
        """
        keys = sorted({disk(path, shared=shared).key for path, shared in disks})
        leases = [str(self.lockspace / "leases" / f"{lease_file_name(key)}.lock") for key in keys]
        paths = (str(self.lockspace / "hosts" / f"{slot.id}.lock"), *leases)
        stall = Stall(slot.name, self.now(), paths)
        slot.stall = stall
        self._fault_begins("storage-stall", slot.name)
        return stall

    async def _storage_stall(
        self, slot: Slot, stall: Stall, seconds: float, *, burst: bool, probe_at: float
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

    async def _burst(self, slot: Slot, stall: Stall) -> None:
        """BURST starts at once on the stalled host, of a disk the stall holds: all of them wait on it."""
        proc = slot.proc  # also while it drains for a crash: the burst is not the driver's guests
        if proc is None or slot.state is not SlotState.UP or slot.stall is not stall:
            return
        self.ops["stall burst"] += 1

        async def start(uuid: str) -> None:
            with suppress(HostGone, TimeoutError, HostOpError):
                await proc.call("start", uuid=uuid, disks=[[BURST_DISK, False]], probe=True)
                self.ops["burst start taken"] += 1

        async with anyio.create_task_group() as tg:
            for _ in range(BURST):
                tg.start_soon(start, f"burst-{next(self._probes)}")

    async def _probe_stalled(self, slot: Slot, stall: Stall, at: float) -> None:
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

        async def probe(other: Slot, path: str) -> None:
            with suppress(HostGone, TimeoutError):
                await self._probe(other, path)

        async with anyio.create_task_group() as tg:
            for index, path in enumerate(paths):
                tg.start_soon(probe, others[index % len(others)], path)

    @asynccontextmanager
    async def stalled(self, slot: Slot, stall: Stall, seconds: float) -> AsyncIterator[bool]:
        """A helper process holds the stall's lock files within the block; yields whether it does.

        The helper is killed on the way out, and so every lock released,
        whatever happens; then the fault is over. ``seconds`` is the planned
        length: the helper dies by itself a while after it, should the driver.
        """
        helper: anyio.abc.Process | None = None
        held_at = 0.0
        try:
            with suppress(HostGone):  # the run is closing
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
                    [sys.executable, "-I", "-c", STALL_HELPER, f"{seconds + HELPER_TIMEOUT:.3f}", *paths],
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
            raise HostGone("the run is over")
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

    async def _crash_in_stall(self, slot: Slot, stall: Stall, at: float, kind: str, downtime: float) -> None:
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
                or slot.state is not SlotState.UP
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

    async def _sigstop(self, slot: Slot, seconds: float) -> None:
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

    def freeze(self, slot: Slot) -> HostProcess | None:
        """SIGSTOP the host's process (recorded first: the fault is open from before the stop)."""
        proc = slot.proc
        if proc is None or slot.frozen:
            return None
        slot.frozen = True
        self.faults["sigstop"] += 1
        self._fault_begins("sigstop", slot.name)
        proc.signal(signal.SIGSTOP)
        return proc

    def thaw(self, slot: Slot, proc: HostProcess) -> None:
        """SIGCONT what :meth:`freeze` stopped; ``FaultsHealed`` once no fault is left."""
        proc.signal(signal.SIGCONT)
        slot.frozen = False
        slot.settled_at = max(slot.settled_at, self.now() + SETTLE)
        self._fault_ends()

    async def _kill9(self, slot: Slot, proc: HostProcess | None = None, why: str = "kill9") -> None:
        """The machine dies: its process and every guest on it; nothing is released.

        ``proc`` is the host's process when it is not (yet) ``slot.proc``: a
        restarted coordinator that failed (``why`` then counts it apart).
        """
        proc = proc or slot.proc
        slot.proc, slot.state = None, SlotState.DOWN
        self.faults[why] += 1
        procs = [p for p in (proc, *slot.past) if p is not None]
        slot.past = []
        for each in procs:  # the host process first, at once: its guests' writers are in it
            each.signal(signal.SIGKILL)
        # Then its supervisors and their guests (also those an earlier process of the host started).
        for each in procs:
            await each.kill_all()
        # After the reaping: later than anything the dead process recorded.
        self.record(HostCrashed(self.now(), slot.name))
        for key in [k for k in self.guests if k[0] == slot.name]:
            del self.guests[key]

    async def _restart_later(self, slot: Slot, downtime: float) -> None:
        """Bring a dead host back after ``downtime`` (not once the run is stopping)."""
        with anyio.move_on_after(downtime):
            await self._stop.wait()
        while not self.stopping:
            slot.state = SlotState.RESTARTING
            proc: HostProcess | None = None
            try:
                proc = await self._take_standby()
                await proc.become(slot.name, self._spec(slot))
                await proc.wait_ready(STARTUP_TIMEOUT)
                # Every guest of the dead machine died with it: shut their domains down.
                for uuid in (await proc.call("known"))["domains"]:
                    async with self._locked((slot.name, uuid)):
                        with suppress(HostOpError):
                            await proc.call("stop", uuid=uuid)
            except (HostGone, TimeoutError, HostOpError) as exc:
                self.out(f"restart of {slot.name} failed ({exc}); trying again")
                if proc is not None:
                    await proc.kill()
                slot.state = SlotState.DOWN
                with anyio.move_on_after(1.0):
                    await self._stop.wait()
                continue
            self.faults["restart"] += 1
            slot.proc, slot.state = proc, SlotState.UP
            return
        slot.state = SlotState.DOWN

    async def _coordinator_crash(
        self, slot: Slot, stall: Stall | None = None, *, for_good: bool = False, downtime: float = 0.0
    ) -> bool:
        """Only the coordinator dies; its guests live on. Taken only while no op touches the host.

        New ops keep off the host (draining) while the ones under way finish;
        then this task holds every guest lock of the host until the restarted
        coordinator has re-attached them. With ``stall`` the crash happens
        only while that storage stall still holds. ``for_good``: no
        coordinator comes back for its guests (:meth:`_killed_for_good`).
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
                or slot.state is not SlotState.UP
                or (stall is not None and slot.stall is not stall)
            ):
                for lock in held or ():
                    lock.release()
                return False
            if stall is not None:
                self.faults["crash-in-stall"] += 1
            try:
                if for_good:
                    await self._killed_for_good(slot)
                else:
                    await self._crash_and_recover(slot)
            finally:
                for lock in held:
                    lock.release()
            if for_good:
                self._fault_task(self._takeover_then_restart, slot, downtime, name="after a coordinator")
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

    async def _crash_and_recover(self, slot: Slot) -> None:
        """Kill the coordinator, start it again at once, re-attach its guests (their locks are held)."""
        await self._kill_coordinator(slot, SlotState.RESTARTING, "coordinator_crash")
        mine = [g for g in self.guests.values() if g.host == slot.name]
        started: list[HostProcess] = []
        async with anyio.create_task_group() as tg:
            # Until the new coordinator is up, a guest's death is seen here: its supervisor
            # kills it at the last deadline pushed, if no coordinator resumes in time.
            for guest in mine:
                tg.start_soon(self._watch_guest, guest, name=f"watch {guest.uuid}")
            try:
                new = await self._take_standby()
                started.append(new)
                await new.become(slot.name, self._spec(slot))
                await new.wait_ready(STARTUP_TIMEOUT)
            except (HostGone, TimeoutError) as exc:
                self.out(f"restart of {slot.name}'s coordinator failed: {exc}")
            tg.cancel_scope.cancel()
        if not started or not started[0].ready:
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
                    with suppress(HostOpError):
                        await new.call("stop", uuid=uuid)
        except (HostGone, TimeoutError) as exc:
            self.out(f"{slot.name}'s restarted coordinator failed while re-attaching: {exc}")
            await self._kill9(slot, new, "restart failed")
            self._fault_task(self._restart_later, slot, 0.5, name="restart")
            return
        slot.proc, slot.state = new, SlotState.UP

    async def _kill_coordinator(self, slot: Slot, state: SlotState, kind: str) -> tuple[HostProcess, float]:
        """SIGKILL the host process only (counted as ``kind``); its supervisors live on, under its reaper."""
        proc = slot.proc
        assert proc is not None
        slot.proc, slot.state = None, state
        self.faults[kind] += 1
        await proc.kill()
        killed_at = self.now()
        self.record(CoordinatorCrashed(killed_at, slot.name))
        slot.past.append(proc)
        return proc, killed_at

    async def _watch_guest(self, guest: PlacedGuest) -> float | None:
        """Wait (until cancelled) for the guest's ``sleep`` to die; when it does, it stops (fenced) then.

        Returns when it was seen dead. No host records it: its host process is gone.
        """
        if guest.pid is None:
            return None
        fd = await anyio.to_thread.run_sync(open_pidfd, guest.pid, guest.start)
        try:
            if fd is not None:
                await anyio.wait_readable(fd)
        finally:
            if fd is not None:
                os.close(fd)
        now = self.now()
        if guest.state is Placement.RUNNING:  # a paused one had stopped already
            self.record(GuestStopped(now, guest.host, guest.uuid, StopReason.FENCED))
        guest.state = Placement.CLEANUP
        guest.pid = None
        return now

    async def _killed_for_good(self, slot: Slot) -> None:
        """SIGKILL the host process and never bring that coordinator back: its supervisors must act.

        Each guest must be dead (seen through a pidfd) no later than the last
        lease deadline the coordinator pushed plus fence_timeout; that time is
        recorded (``GuestStopped``), so the checker judges every takeover of
        their disks against it, and a later death is a finding.
        """
        proc, killed_at = await self._kill_coordinator(slot, SlotState.DOWN, "coordinator_killed")
        with anyio.move_on_after(SLACK):
            await proc.closed.wait()  # its last deadline line read: the pipe has ended
        # No deadline reported (killed before its first renewal): its last renewal came before
        # the kill, so kill + lease_timeout bounds the deadline its supervisors were welcomed with.
        deadline = proc.deadline or killed_at + TIMING["lease_timeout"]
        bound = deadline + TIMING["fence_timeout"]
        mine = [g for g in self.guests.values() if g.host == slot.name]
        # Judged: the guests that run. A migration's paused source or a guest left to clean up
        # may have been released from the deadline (its leases moved away): killed below.
        running = [g for g in mine if g.state is Placement.RUNNING and g.pid is not None]
        deaths: dict[str, float | None] = {}

        async def watch(guest: PlacedGuest) -> None:
            deaths[guest.uuid] = await self._watch_guest(guest)

        with anyio.move_on_after(max(0.0, bound - self.now()) + SUPERVISOR_KILL_LIMIT):
            async with anyio.create_task_group() as tg:
                for guest in running:
                    tg.start_soon(watch, guest, name=f"watch {guest.uuid}")
        late = 0.0
        for guest in mine:
            if guest not in running:
                await self._kill_guest(guest)
                continue
            seen = deaths.get(guest.uuid)
            if seen is None:
                self.findings.append(
                    f"{slot.name}'s coordinator was killed for good and its guest {guest.uuid} still "
                    f"ran {self.now() - bound:.2f} s past its last deadline + fence_timeout"
                )
                await self._kill_guest(guest)
                self.record(GuestStopped(self.now(), slot.name, guest.uuid, StopReason.FENCED))
            elif seen is not None:
                self.kill_margins.append(seen - deadline)
                late = max(late, seen - deadline)
                if seen > bound:
                    self.findings.append(
                        f"{slot.name}'s coordinator was killed for good and its guest {guest.uuid} died "
                        f"{seen - deadline:.3f} s after its last deadline (fence_timeout "
                        f"{TIMING['fence_timeout']} s)"
                    )
        self.out(
            f"coordinator of {slot.name} killed for good: {len(running)} guests dead, the last "
            f"{late:.3f} s after its last lease deadline (bound: fence_timeout {TIMING['fence_timeout']} s)"
        )
        for key in [k for k in self.guests if k[0] == slot.name]:
            del self.guests[key]

    async def _takeover_then_restart(self, slot: Slot, downtime: float) -> None:
        """Past host_dead, the other hosts take every disk the killed host's guests had; later a new
        process boots in its place (a new incarnation: its guests died long before)."""
        # host_dead after its last renewal (deadline - lease_timeout) the others may take over.
        proc = slot.past[-1] if slot.past else None
        renewed = self.now()
        if proc is not None and proc.deadline:
            renewed = proc.deadline - TIMING["lease_timeout"]
        with anyio.move_on_after(max(0.0, renewed + TIMING["host_dead"] + SLACK - self.now())):
            await self._stop.wait()
        others = [s for s in self._up() if s is not slot]
        if not self.stopping and others:
            self.ops["takeover probes"] += 1
            for index, path in enumerate(self.disks):
                with suppress(HostGone, TimeoutError):
                    await self._probe(others[index % len(others)], path)
        await self._restart_later(slot, downtime)

    async def _supervisor_kill(self, guest: PlacedGuest) -> bool:
        """SIGKILL a guest's supervisor: the guest dies with it; then its domain is shut down.

        False if that did not happen (the guest stopped meanwhile, its
        supervisor had not reconnected to a restarted coordinator yet...).
        """
        key = (guest.host, guest.uuid)
        async with self._locked(key):
            proc = self._live_proc(guest.host)
            if proc is None or self.guests.get(key) is not guest or guest.state is not Placement.RUNNING:
                return False
            try:
                result = await proc.call("kill_supervisor", uuid=guest.uuid)
            except HostOpError as exc:
                self.ops[f"supervisor kill failed: {exc.kind}"] += 1
                return False
            except (HostGone, TimeoutError):
                return False
            self.faults["supervisor_kill"] += 1
            if not result["died"]:
                self.findings.append(
                    f"the guest {guest.uuid} of {guest.host} outlived its killed supervisor "
                    f"{result['supervisor']} by {result['after']:.2f} s"
                )
            guest.state = Placement.CLEANUP
            with suppress(HostGone, TimeoutError):
                await self._stop_guest(key, "cleanup")
            return True

    async def _reattach(self, proc: HostProcess, guest: PlacedGuest) -> None:
        key = (guest.host, guest.uuid)
        if guest.state is not Placement.CLEANUP:
            self.ops["attach"] += 1
            try:
                result = await proc.call(
                    "attach",
                    uuid=guest.uuid,
                    disks=self._disks_of(guest.uuid),
                    was_paused=guest.state is Placement.PAUSED,
                )
            except HostOpError:
                self.ops["attach refused"] += 1
                result = {"running": False}
            if result["running"]:
                guest.state = Placement.RUNNING
                return
            # libvirt kills a guest it cannot reconnect to; the host recorded no stop for it.
            was_running = guest.state is Placement.RUNNING
            await self._kill_guest(guest)
            if was_running:
                self.record(GuestStopped(self.now(), guest.host, guest.uuid, StopReason.FENCED))
            guest.state = Placement.CLEANUP
        await self._kill_guest(guest)  # one that never ran (a destination's) too
        with suppress(HostOpError):
            result = await proc.call("stop", uuid=guest.uuid)
            if result["released"]:
                self.guests.pop(key, None)
