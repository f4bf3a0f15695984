"""The driver of one chaos run: the workload, the faults and the bookkeeping of host slots and guests."""

from __future__ import annotations

import enum
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Sequence,
)
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import attrs
from anyio.streams.buffered import BufferedByteReceiveStream

from ...backends.file import lease_file_name
from ...model import disk
from ...testing.history import (
    CoordinatorCrashed,
    FaultInjected,
    FaultsHealed,
    GuestStopped,
    History,
    HistoryEvent,
    HostCrashed,
    StopReason,
)
from .processes import STALL_HELPER, HostGone, HostOpError, HostProcess
from .settings import (
    BURST,
    BURST_DISK,
    EXCLUSIVE_DISKS,
    FAULT_CYCLE,
    FIRST_FAULTS,
    GUESTS,
    HELPER_TIMEOUT,
    KILL_GRACE,
    MODULE,
    OP_GAP,
    PEER_TIMING,
    SETTLE,
    SHARED_DISKS,
    SIGSTOP_MAX,
    SLACK,
    STALL_BURST,
    STALL_CRASH,
    STALL_MAX,
    STALL_MIN,
    STALL_OTHER_DISKS,
    STALL_OWN_DISKS,
    STARTUP_TIMEOUT,
    TIMING,
    WATCHDOG,
    WRITE_INTERVAL,
)

T = TypeVar("T")


class _HostState(enum.Enum):
    UP = "up"
    DOWN = "down"  # killed; a restart is pending (or none, at the end)
    RESTARTING = "restarting"


@attrs.define(eq=False)
class Slot:
    """One host name and everything that survives its processes: id, keys, state directory."""

    name: str
    id: int
    backend: str
    config: dict[str, Any]
    proc: HostProcess | None = None
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


class Driver:
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
        self.slots: dict[str, Slot] = {}
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
        self._procs: list[HostProcess] = []
        self._sleeps: list[anyio.abc.Process] = []
        self._helpers: list[anyio.abc.Process] = []  # storage stalls' lock holders
        self._standbys: list[HostProcess] = []
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
            from ...transport.zmq import KeyPair, generate_keypair, save_keypair

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
            self.slots[name] = Slot(name, host_id, backend, config)
            self.host_sleeps[name] = set()

    def _spec(self, slot: Slot) -> dict[str, Any]:
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

    async def _spawn_standby(self) -> HostProcess:
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
                proc = HostProcess(process)
                self._procs.append(proc)
        finally:
            os.close(log_fd)
            self._spawn_ends()
        self._tg.start_soon(proc.read_loop, name=f"control channel {proc.pid}")
        if self._closing:
            await proc.kill()
            raise HostGone("the run is over")
        await proc.wait_standby(STARTUP_TIMEOUT)
        return proc

    async def _refill_standby(self) -> None:
        with suppress(HostGone, TimeoutError):
            self._standbys.append(await self._spawn_standby())

    async def _take_standby(self) -> HostProcess:
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

    def _up(self) -> list[Slot]:
        """Hosts a new op may use (up, not waiting for a coordinator crash; frozen ones count)."""
        return [s for s in self.slots.values() if s.state is _HostState.UP and s.proc and not s.draining]

    def _live_proc(self, host: str) -> HostProcess | None:
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
            except HostGone:
                self.ops["lost to a crash"] += 1
            except TimeoutError:
                self.ops["timed out"] += 1
            except HostOpError as exc:
                self.ops[f"{exc.op} failed: {exc.kind}"] += 1
            # Paced so that guests run for a while (and meet faults) between operations.
            await anyio.sleep(rng.uniform(*OP_GAP))

    async def _op_start(self, rng: random.Random) -> None:
        up = self._up()
        if not up:
            return
        await self.start_guest(rng.choice(up), rng.choice(sorted(self.catalog)))

    async def start_guest(self, slot: Slot, uuid: str) -> bool:
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
            except HostOpError as exc:
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
            except HostGone:
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
        except HostOpError as exc:
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
        self, guest: _Placed, sproc: HostProcess, dst: str, dproc: HostProcess, *, commit: bool
    ) -> None:
        uuid, src = guest.uuid, guest.host
        self.ops["migrate"] += 1
        try:
            await sproc.call("prepare", uuid=uuid, dest=dproc.endpoint)
        except HostOpError as exc:
            self.ops[f"migrate refused: {exc.kind}"] += 1
            return
        sleep = await self._spawn_sleep(dst)
        try:
            await dproc.call("incoming", uuid=uuid, disks=self._disks_of(uuid), pid=sleep.pid)
        except (HostOpError, HostGone, TimeoutError):
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
                with suppress(HostGone, TimeoutError):
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
            with suppress(HostGone, TimeoutError):
                await self._stop_guest(src_key, "cleanup")

    async def _op_probe(self, rng: random.Random) -> None:
        up = self._up()
        if up:
            await self._probe(rng.choice(up), rng.choice(self.disks))

    async def _probe(self, slot: Slot, path: str) -> bool | None:
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
                except HostOpError as exc:
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

    async def _tidy_one(self, slot: Slot, proc: HostProcess, uuid: str) -> None:
        key = (slot.name, uuid)
        if key in self.guests:
            return
        async with self._locked(key):
            if key in self.guests or slot.proc is not proc:
                return
            with suppress(HostOpError):
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

    def _others_down(self, slot: Slot) -> bool:
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
            self._storage_stall, slot, stall, seconds, burst, probe_at, name=f"storage stall {slot.name}"
        )
        if crash:
            if crash_kind == "coordinator_crash":
                slot.draining = True  # see _crash_in_stall
            self._fault_task(
                self._crash_in_stall, slot, stall, crash_at, crash_kind, downtime, name="crash in stall"
            )

    def begin_stall(self, slot: Slot, disks: Iterable[tuple[str, bool]]) -> _Stall:
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
        self, slot: Slot, stall: _Stall, seconds: float, burst: bool, probe_at: float
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

    async def _burst(self, slot: Slot, stall: _Stall) -> None:
        """BURST starts at once on the stalled host, of a disk the stall holds: all of them wait on it."""
        proc = slot.proc  # also while it drains for a crash: the burst is not the driver's guests
        if proc is None or slot.state is not _HostState.UP or slot.stall is not stall:
            return
        self.ops["stall burst"] += 1

        async def start(uuid: str) -> None:
            with suppress(HostGone, TimeoutError, HostOpError):
                await proc.call("start", uuid=uuid, disks=[[BURST_DISK, False]], pid=None, probe=True)
                self.ops["burst start taken"] += 1

        async with anyio.create_task_group() as tg:
            for _ in range(BURST):
                tg.start_soon(start, f"burst-{next(self._probes)}")

    async def _probe_stalled(self, slot: Slot, stall: _Stall, at: float) -> None:
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
    async def stalled(self, slot: Slot, stall: _Stall, seconds: float) -> AsyncIterator[bool]:
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

    async def _crash_in_stall(
        self, slot: Slot, stall: _Stall, at: float, kind: str, downtime: float
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

    async def _restart_later(self, slot: Slot, downtime: float) -> None:
        """Bring a dead host back after ``downtime`` (not once the run is stopping)."""
        with anyio.move_on_after(downtime):
            await self._stop.wait()
        while not self.stopping:
            slot.state = _HostState.RESTARTING
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
                slot.state = _HostState.DOWN
                with anyio.move_on_after(1.0):
                    await self._stop.wait()
                continue
            self.faults["restart"] += 1
            slot.proc, slot.state = proc, _HostState.UP
            return
        slot.state = _HostState.DOWN

    async def _coordinator_crash(self, slot: Slot, stall: _Stall | None = None) -> bool:
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

    async def _crash_and_recover(self, slot: Slot) -> None:
        """Kill the coordinator, start it again at once, re-attach its guests (their locks are held)."""
        proc = slot.proc
        assert proc is not None
        slot.proc, slot.state = None, _HostState.RESTARTING
        self.faults["coordinator_crash"] += 1
        await proc.kill()
        crashed_at = self.now()
        self.record(CoordinatorCrashed(crashed_at, slot.name))
        mine = [g for g in self.guests.values() if g.host == slot.name]
        started: list[HostProcess] = []
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
            except (HostGone, TimeoutError) as exc:
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
                    with suppress(HostOpError):
                        await new.call("stop", uuid=uuid)
        except (HostGone, TimeoutError) as exc:
            self.out(f"{slot.name}'s restarted coordinator failed while re-attaching: {exc}")
            await self._kill9(slot, new, "restart failed")
            self._fault_task(self._restart_later, slot, 0.5, name="restart")
            return
        slot.proc, slot.state = new, _HostState.UP

    async def _watch(
        self, host: str, guests: Sequence[_Placed], since: float, started: Sequence[HostProcess]
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

    async def _reattach(self, proc: HostProcess, guest: _Placed) -> None:
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
            except HostOpError:
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
        with suppress(HostOpError):
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
                with suppress(HostGone, TimeoutError):
                    taken = await self._probe(slot, path)
                    self.out(f"  probe {path} from {slot.name}: {'taken' if taken else 'refused'}")
        for slot in self._up():
            assert slot.proc is not None
            with suppress(HostGone, TimeoutError, HostOpError):
                await slot.proc.call("snapshot")


async def _both(first: Awaitable[T], second: Awaitable[T]) -> tuple[T | BaseException, T | BaseException]:
    """Await two calls at once; each result is its value or the exception it raised."""
    results: list[T | BaseException] = [Exception("not run"), Exception("not run")]

    async def run(index: int, call: Awaitable[T]) -> None:
        try:
            results[index] = await call
        except (HostGone, HostOpError, TimeoutError) as exc:
            results[index] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, 0, first)
        tg.start_soon(run, 1, second)
    return results[0], results[1]
