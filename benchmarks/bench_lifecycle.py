"""Domain lifecycle throughput: start (4 exclusive disks) + shutdown, against the storage floor.

Rows, all measured in this one run (a cycle is one start and one shutdown):

* floor: per disk an OFD lock, a 512 B pwrite, fsync and unlock, four disks,
  twice per cycle (start and shutdown each update every disk's record): the
  least a durable lock manager does per cycle; sequential, and with
  ``--domains`` threads at once;
* the same cycle with the in-place write the file backend does (lock every
  disk's lock file, read it, write the record into the slot not holding the
  newest copy, fdatasync each, unlock), for reference; and with the durable
  replace it did before (temp file, fsync, rename, directory fsync);
* the file backend with a state_dir, one domain and ``--domains`` at once,
  each against the sequential floor (goals: >= 1/3 and >= 1x);
* the memory backend without a state_dir (the simulator's engine; goal
  >= 20,000 cycles/s), its asks per second against an anyio memory-stream
  round trip (the actor overhead per message), and with a state_dir;
* what bounds that cycle: an ask to a live actor whose handler does nothing
  (the mailbox round trip: two task switches), and an actor's whole life as
  a cycle has it (spawn its task, two asks, stop), which the memory cycle
  is compared with: the rest of the cycle is the domain's own work.

Figures only; nothing is asserted. The load average is printed: on a shared
machine the storage figures move with the neighbours' I/O.

    python benchmarks/bench_lifecycle.py [--cycles 300] [--domains 100] [--trio] [--json out.json]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
from benchtable import Table, run

import actorlock
from actorlock.actors.mailbox import Actor, open_mailbox, run_actor

TIMING = {
    "renew_interval": 1.0,
    "lease_timeout": 5.0,
    "fence_timeout": 2.0,
    "host_dead": 8.0,
    "io_timeout": 30.0,
}
DISKS = 4
F_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", 38)
LOCK = struct.pack("hhqqi0q", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
UNLOCK = struct.pack("hhqqi0q", fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0)
RECORD = b"r" * 512
SLOT = RECORD.ljust(4096, b"\0")


def update_in_place(path: str) -> None:
    """The floor for one disk's record: lock, write it in place, fsync, unlock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.fcntl(fd, F_OFD_SETLKW, LOCK)
        os.pwrite(fd, RECORD, 0)
        os.fsync(fd)
        fcntl.fcntl(fd, F_OFD_SETLKW, UNLOCK)
    finally:
        os.close(fd)


def floor_cycle(directory: str, names: list[str]) -> None:
    """Per disk an in-place update, twice (start, shutdown)."""
    for _ in range(2):
        for name in names:
            update_in_place(os.path.join(directory, name))


def lock_all(directory: str, names: list[str]) -> list[int]:
    """Open and OFD-lock each name's ``.lock`` file, in order."""
    fds = []
    for name in names:
        fd = os.open(os.path.join(directory, name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.fcntl(fd, F_OFD_SETLKW, LOCK)
        fds.append(fd)
    return fds


def replace_cycle(directory: str, names: list[str]) -> None:
    """The durable replace: lock, temps, fsync each, renames, one directory fsync, unlock; twice."""
    for _ in range(2):
        fds = lock_all(directory, names)
        temps = []
        for name in names:
            tmp = os.path.join(directory, f".{name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, RECORD)
            temps.append(fd)
        for fd in temps:
            os.fsync(fd)
            os.close(fd)
        for name in names:
            os.rename(os.path.join(directory, f".{name}.tmp"), os.path.join(directory, name + ".json"))
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
        for fd in fds:
            fcntl.fcntl(fd, F_OFD_SETLKW, UNLOCK)
            os.close(fd)


def inplace_cycle(directory: str, names: list[str]) -> None:
    """The file backend's lease write: locks, reads, a 4 KiB slot each, fdatasync each, unlocks; twice.

    Each disk's record alternates between the slots at 0 and 4096 of its lock
    file, which never changes size once both slots were written.
    """
    for _ in range(2):
        fds = lock_all(directory, names)
        for fd in fds:
            head = os.pread(fd, 8193, 0)
            # The slot not holding the newest copy: each slot starts with a sequence byte.
            ahead = len(head) > 4096 and 0 < (head[4096] - head[0]) % 256 < 128
            newest = 4096 if ahead else 0
            seq = (head[newest] + 1) % 256 if head else 1
            os.pwrite(fd, bytes([seq]) + SLOT[1:], 4096 - newest)
        for fd in fds:
            os.fdatasync(fd)
        for fd in fds:
            fcntl.fcntl(fd, F_OFD_SETLKW, UNLOCK)
            os.close(fd)


def run_floor(
    root: Path, cycle: Callable[[str, list[str]], None], domains: int, cycles_each: int
) -> tuple[float, list[float]]:
    """``domains`` threads, each ``cycles_each`` cycles on its own four files."""
    assert callable(cycle)
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        directory = root / f"floor-{cycle.__name__}-{domains}-{n}"
        directory.mkdir()
        names = [f"disk{i}" for i in range(DISKS)]
        mine = []
        for _ in range(cycles_each):
            t = time.perf_counter()
            cycle(str(directory), names)
            mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(domains)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies) / (time.perf_counter() - start), latencies


async def run_backend(
    backend: str, root: Path, domains: int, cycles_each: int, *, state_dir: bool
) -> tuple[float, list[float]]:
    tag = f"{backend}-{domains}-{'state' if state_dir else 'nostate'}"
    cfg: dict[str, object] = {
        "host": {"name": "bench", "id": 1},
        "timing": TIMING,
        "locking": {"backend": backend, "kill_grace": 1.0},
        "memory": {"lockspace": f"bench-{root.name}-{tag}"},
    }
    if state_dir:
        cfg["host"] = {"name": "bench", "id": 1, "state_dir": str(root / f"state-{tag}")}
    if backend == "file":
        lockspace = root / f"ls-{tag}"
        lockspace.mkdir()
        cfg["file"] = {"lockspace_dir": str(lockspace)}
    latencies: list[float] = []
    async with actorlock.open_host(cfg) as host:

        async def run_domain(n: int) -> None:
            domain = host.domain(f"dom-{n}")
            disks = [actorlock.disk(f"/images/dom-{n}/disk{i}.qcow2") for i in range(DISKS)]
            for _ in range(cycles_each):
                t = time.perf_counter()
                await domain.start(disks)
                await domain.shutdown()
                latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for n in range(domains):
                tg.start_soon(run_domain, n)
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies


async def stream_round_trips(count: int) -> tuple[float, list[float]]:
    """The floor of one actor ask: a message into a memory stream, a reply back through another."""
    requests, inbox = anyio.create_memory_object_stream[int](16)
    replies, outbox = anyio.create_memory_object_stream[int](16)
    latencies: list[float] = []

    async def echo() -> None:
        async with inbox, replies:
            async for message in inbox:
                await replies.send(message)

    async with anyio.create_task_group() as tg:
        tg.start_soon(echo)
        start = time.perf_counter()
        async with requests, outbox:
            for i in range(count):
                t = time.perf_counter()
                await requests.send(i)
                await outbox.receive()
                latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
    return count / elapsed, latencies


class _Echo(Actor[object]):
    """Answers every message with itself; stops after ``"stop"``."""

    def __init__(self) -> None:
        self.stopping = False

    async def handle(self, message: object) -> object:
        self.stopping = message == "stop"
        return message

    def should_stop(self) -> bool:
        return self.stopping


async def actor_asks(count: int) -> tuple[float, list[float]]:
    """Asks to one live actor with an empty handler: the mailbox round trip alone."""
    latencies: list[float] = []
    async with anyio.create_task_group() as tg:
        ref, mailbox = open_mailbox("echo")
        tg.start_soon(run_actor, _Echo(), ref, mailbox)
        start = time.perf_counter()
        for i in range(count):
            t = time.perf_counter()
            await ref.ask(i)
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        tg.cancel_scope.cancel()
    return count / elapsed, latencies


async def actor_lifetimes(count: int) -> tuple[float, list[float]]:
    """A domain cycle's actor skeleton: spawn the task, ask twice, stop (the task ends)."""
    latencies: list[float] = []
    async with anyio.create_task_group() as tg:
        start = time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            ref, mailbox = open_mailbox("echo")
            tg.start_soon(run_actor, _Echo(), ref, mailbox)
            await ref.ask("start")
            await ref.ask("stop")
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
    return count / elapsed, latencies


async def main_async(args: argparse.Namespace) -> None:
    table = Table(f"bench_lifecycle ({'trio' if args.trio else 'asyncio'}, {DISKS} disks per domain)")
    with tempfile.TemporaryDirectory(prefix="actorlock-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        n = args.domains
        each = max(1, args.cycles // n)
        seq = "floor: lock+pwrite+fsync x4 x2"
        rate, lat = await anyio.to_thread.run_sync(run_floor, root, floor_cycle, 1, args.cycles)
        table.add(seq, rate, lat)
        rate, lat = await anyio.to_thread.run_sync(run_floor, root, floor_cycle, n, each)
        table.add(f"floor: same, {n} domains at once", rate, lat, floor=seq)
        rate, lat = await anyio.to_thread.run_sync(run_floor, root, inplace_cycle, 1, args.cycles)
        table.add("floor: in-place slot write x4 x2", rate, lat, floor=seq)
        rate, lat = await anyio.to_thread.run_sync(run_floor, root, replace_cycle, 1, args.cycles)
        table.add("floor: durable replace x4 x2 (before)", rate, lat, floor=seq)

        rate, lat = await run_backend("file", root, 1, args.cycles, state_dir=True)
        table.add("file+state_dir, 1 domain", rate, lat, floor=seq, goal=">= 0.33x")
        rate, lat = await run_backend("file", root, n, each * 2, state_dir=True)
        table.add(f"file+state_dir, {n} domains at once", rate, lat, floor=seq, goal=">= 1x")
        rate, lat = await run_backend("file", root, 1, args.cycles, state_dir=False)
        table.add("file, 1 domain", rate, lat, floor=seq)

        hops = "floor: memory-stream round trip"
        rate, lat = await stream_round_trips(args.cycles * 20)
        table.add(hops, rate, lat)
        mem_cycles = args.cycles * 20
        rate, lat = await actor_asks(mem_cycles)
        table.add("actor ask, empty handler", rate, lat, floor=hops)
        skeleton = "actor spawn + 2 asks + stop"
        rate, lat = await actor_lifetimes(mem_cycles)
        table.add(skeleton, rate, lat)
        rate, lat = await run_backend("memory", root, 1, mem_cycles, state_dir=False)
        table.add("memory, 1 domain", rate, lat, floor=skeleton, goal=">= 20,000/s")
        # start and shutdown are one ask each: the actor path per message against the bare hop.
        table.add("memory, 1 domain: asks/s", rate * 2, lat, floor=hops)
        rate, lat = await run_backend("memory", root, n, max(1, mem_cycles // n), state_dir=False)
        table.add(f"memory, {n} domains at once", rate, lat)
        rate, lat = await run_backend("memory", root, 1, args.cycles * 4, state_dir=True)
        table.add("memory+state_dir, 1 domain", rate, lat)
        rate, lat = await run_backend("memory", root, n, max(1, args.cycles * 4 // n), state_dir=True)
        table.add(f"memory+state_dir, {n} domains at once", rate, lat)
    one, five, _ = os.getloadavg()
    table.note(f"load average at end: {one:.2f} (5 min {five:.2f})")
    table.write_json(args.json)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=300, help="cycles for the single-domain storage runs")
    parser.add_argument("--domains", type=int, default=100, help="domains in the concurrent runs")
    run(parser, main_async)


if __name__ == "__main__":
    main()
