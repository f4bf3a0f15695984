"""The state of one chaos run that every part of its driver shares: host slots, guests, processes, locks."""

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
    Callable,
    Coroutine,
    Sequence,
)
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import attrs

from ...testing.history import (
    History,
    HistoryEvent,
)
from .processes import REAPER, HostGone, HostProcess, open_pidfd, wait_exit
from .settings import (
    EXCLUSIVE_DISKS,
    GUESTS,
    KILL_GRACE,
    MODULE,
    PEER_TIMING,
    REAP_TIMEOUT,
    SHARED_DISKS,
    STARTUP_TIMEOUT,
    TIMING,
    WRITE_INTERVAL,
)


class SlotState(enum.Enum):
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
    state: SlotState = SlotState.DOWN
    frozen: bool = False  # SIGSTOPped now
    draining: bool = False  # no new op may start on it (a coordinator crash is waiting its turn)
    stall: Stall | None = None  # its storage is stalled now
    settled_at: float = 0.0  # no fault begins on it before this (a stall or freeze just ended)
    # Earlier processes of this host whose supervisors (and guests) may still run: a coordinator
    # crash leaves them to the next process. The machine's death (kill9) ends them too.
    past: list[HostProcess] = attrs.Factory(list)


@attrs.define(eq=False)
class Stall:
    """One stalled-storage fault: the lock files held, and since when."""

    host: str
    since: float  # when the fault was recorded: before the helper took anything
    paths: tuple[str, ...]
    held: anyio.Event = attrs.Factory(anyio.Event)


class Placement(enum.Enum):
    RUNNING = "running"  # the host runs the guest, as far as the driver knows
    PAUSED = "paused"  # a migration source whose outcome was unknown: not writing
    CLEANUP = "cleanup"  # the guest does not run; the domain needs a shutdown


@attrs.define(eq=False)
class PlacedGuest:
    """A guest as the driver sees it: on which host, its ``sleep`` (pid, start time), and what it is doing.

    The ``sleep`` runs under its supervisor, which the host process started;
    the driver only watches it (and kills it when the host cannot).
    """

    host: str
    uuid: str
    pid: int | None
    start: int | None
    state: Placement


class DriverCore:
    """The bookkeeping of one run: host slots and their processes, guests, locks, the history."""

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
        self.guests: dict[tuple[str, str], PlacedGuest] = {}
        self.catalog: dict[str, tuple[tuple[str, bool], ...]] = {}
        self.disks: list[str] = []
        self.ops: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.findings: list[str] = []  # what the driver itself judged wrong (not the checker)
        self.kill_margins: list[float] = []  # coordinators killed for good: guest death - deadline
        self.committed = 0
        self.cancelled = 0
        self.stopping = False
        self._stop = anyio.Event()
        self._locks: dict[tuple[str, str], anyio.Lock] = {}
        self._procs: list[HostProcess] = []
        self._helpers: list[anyio.abc.Process] = []  # storage stalls' lock holders
        self._standbys: list[HostProcess] = []
        self._spawning = 0  # processes being spawned right now (close() waits for them)
        self._spawned = anyio.Event()  # set whenever _spawning drops to 0
        self._closing = False
        self._open_faults = 0
        self._probes = itertools.count(1)
        self._make_catalog()
        self._make_slots(hosts, host_backends, plaintext=plaintext)

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

    def _make_slots(self, hosts: int, host_backends: Sequence[str], *, plaintext: bool) -> None:
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

    async def _spawn_standby(self) -> HostProcess:
        log_fd = os.open(self.workdir / "standby.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._spawn_begins()
        try:
            with anyio.CancelScope(shield=True):
                process = await anyio.open_process(
                    [sys.executable, "-I", "-c", REAPER, sys.executable, "-m", MODULE, "host-process"],
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

    def _spawn_begins(self) -> None:
        if not self._spawning:
            self._spawned = anyio.Event()
        self._spawning += 1

    def _spawn_ends(self) -> None:
        self._spawning -= 1
        if not self._spawning:
            self._spawned.set()

    async def _kill_guest(self, guest: PlacedGuest) -> None:
        """SIGKILL a guest's ``sleep`` from here (its host could not) and wait until it is gone."""
        if guest.pid is None:
            return
        fd = await anyio.to_thread.run_sync(open_pidfd, guest.pid, guest.start)
        guest.pid = None
        if fd is None:
            return
        try:
            with suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            if not await wait_exit(fd, REAP_TIMEOUT):
                self.findings.append(f"the guest {guest.uuid} of {guest.host} survived SIGKILL")
        finally:
            os.close(fd)

    async def start_hosts(self) -> None:
        standbys = [await self._spawn_standby() for _ in self.slots]
        for slot, proc in zip(self.slots.values(), standbys, strict=True):
            await proc.become(slot.name, self._spec(slot))
        for slot, proc in zip(self.slots.values(), standbys, strict=True):
            await proc.wait_ready(STARTUP_TIMEOUT)
            slot.proc, slot.state = proc, SlotState.UP
            self.out(f"host {slot.name} ({slot.backend}): pid {proc.pid}, peer {proc.endpoint}")
        self._tg.start_soon(self._refill_standby, name="standby refill")

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
        return [s for s in self.slots.values() if s.state is SlotState.UP and s.proc and not s.draining]

    def _live_proc(self, host: str) -> HostProcess | None:
        slot = self.slots[host]
        return slot.proc if slot.state is SlotState.UP and not slot.draining else None

    def _fault_task(self, func: Callable[..., Coroutine[Any, Any, None]], *args: Any, name: str) -> None:
        assert self.chaos_tg is not None
        self.chaos_tg.start_soon(func, *args, name=name)

    def _disks_of(self, uuid: str) -> list[list[Any]]:
        return [[path, shared] for path, shared in self.catalog[uuid]]
