"""Domain lifecycle throughput: start (4 exclusive disks) + shutdown.

Prints cycles per second and p50/p99 latency of one start+shutdown cycle for
the memory and file backends, with 1 and 1,000 concurrent domains, and in
the same run the floor: raw OFD lock + durable write (temp, fsync, rename,
directory fsync) + unlock of the same 4 files, done twice per cycle (acquire
and release each rewrite 4 records). Figures only; nothing is asserted.

    python benchmarks/bench_lifecycle.py [--cycles 300] [--domains 1000] [--trio]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

import anyio

import actorlock

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


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(label: str, latencies: list[float], elapsed: float) -> float:
    rate = len(latencies) / elapsed
    print(
        f"{label:<34} {rate:9.1f} cycles/s   p50 {pct(latencies, 0.5) * 1e3:8.2f} ms"
        f"   p99 {pct(latencies, 0.99) * 1e3:8.2f} ms   ({len(latencies)} cycles)"
    )
    return rate


def floor_cycle(directory: str, names: list[str]) -> None:
    """What a cycle must do at least: two locked, durable rewrites of 4 records."""
    for _ in range(2):
        fds = []
        for name in names:
            fd = os.open(os.path.join(directory, name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.fcntl(fd, F_OFD_SETLKW, LOCK)
            fds.append(fd)
        for name in names:
            tmp = os.path.join(directory, f".{name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, b'{"key":"disk:/x","token":1,"holders":[]}')
            os.fsync(fd)
            os.close(fd)
            os.rename(tmp, os.path.join(directory, name + ".json"))
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
        for fd in fds:
            fcntl.fcntl(fd, F_OFD_SETLKW, UNLOCK)
            os.close(fd)


def bench_floor(directory: str, cycles: int) -> float:
    names = [f"disk{i}" for i in range(DISKS)]
    latencies = []
    start = time.perf_counter()
    for _ in range(cycles):
        t = time.perf_counter()
        floor_cycle(directory, names)
        latencies.append(time.perf_counter() - t)
    return report("floor: OFD lock+durable write x4 x2", latencies, time.perf_counter() - start)


async def bench_backend(backend: str, root: Path, domains: int, cycles_each: int) -> float:
    cfg: dict[str, object] = {
        "host": {"name": "bench", "id": 1},
        "timing": TIMING,
        "locking": {"backend": backend, "kill_grace": 1.0},
        "memory": {"lockspace": f"bench-{root.name}-{domains}"},
    }
    if backend == "file":
        lockspace = root / f"ls-{domains}"
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
    return report(f"{backend}, {domains} concurrent domain(s)", latencies, elapsed)


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="actorlock-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {'trio' if args.trio else 'asyncio'}, "
            f"lockspace on {root}"
        )
        floor_dir = root / "floor"
        floor_dir.mkdir()
        floor = await anyio.to_thread.run_sync(bench_floor, str(floor_dir), args.cycles)
        rates: dict[str, float] = {}
        for backend in ("memory", "file"):
            rates[f"{backend}/1"] = await bench_backend(backend, root, 1, args.cycles)
            each = max(1, args.cycles * 2 // args.domains) if backend == "file" else 3
            rates[f"{backend}/{args.domains}"] = await bench_backend(backend, root, args.domains, each)
        print()
        print(f"file backend, 1 domain, vs floor: {rates['file/1'] / floor:.2f}x the floor's rate")
        print(f"file backend, {args.domains} domains, vs floor: {rates[f'file/{args.domains}'] / floor:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=300, help="cycles for the single-domain runs")
    parser.add_argument("--domains", type=int, default=1000, help="domains in the concurrent runs")
    parser.add_argument("--trio", action="store_true", help="run on trio")
    parser.add_argument("--dir", default=None, help="where to put the temporary lockspace")
    args = parser.parse_args()
    anyio.run(main_async, args, backend="trio" if args.trio else "asyncio")


if __name__ == "__main__":
    main()
