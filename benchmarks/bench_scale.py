"""Many domains on one host: start them all (2 exclusive disks each), then stop them all.

For each count of domains (default 10, 100, 1,000, 10,000) on a fresh
lockspace, prints one row: starts per second, p50/p99 of one start, the
time to start them all, and the RSS the host gained per domain actor
(measured with all of them running); then the same for shutdown. At most
``--concurrency`` domains start at once: 10,000 starts at once starve the
one event loop, renewals included, and the host loses its lockspace (main
did too). The cost per operation should stay flat as the count grows;
goals: <= 16 KiB RSS per domain, all 10,000 started in <= 10 s. The floor
of each start row is the per-disk in-place floor (OFD lock, 512 B pwrite,
fsync, unlock, two disks) measured just before it.

Figures only; nothing is asserted.

    python benchmarks/bench_scale.py [--counts 10,100,1000,10000] [--backend file] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

import anyio
from bench_lifecycle import TIMING, update_in_place
from benchtable import Table, run

import actorlock

DISKS = 2


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def floor_starts(directory: Path, count: int) -> tuple[float, list[float]]:
    """One start's worth of the in-place floor per domain, ``count`` times in a row."""
    latencies = []
    begin = time.perf_counter()
    for n in range(count):
        t = time.perf_counter()
        for i in range(DISKS):
            update_in_place(str(directory / f"d{n % 64}-{i}"))
        latencies.append(time.perf_counter() - t)
    return count / (time.perf_counter() - begin), latencies


async def run_count(
    table: Table, root: Path, backend: str, count: int, *, state_dir: bool, concurrency: int
) -> None:
    tag = f"{backend}-{count}"
    floor_dir = root / f"floor-{tag}"
    floor_dir.mkdir()
    floor_name = f"floor: {DISKS}-disk start, x{min(count, 200)}"
    rate, lat = await anyio.to_thread.run_sync(floor_starts, floor_dir, min(count, 200))
    table.add(floor_name, rate, lat)
    host_cfg: dict[str, object] = {"name": "bench", "id": 1}
    if state_dir:
        host_cfg["state_dir"] = str(root / f"state-{tag}")
    cfg: dict[str, object] = {
        "host": host_cfg,
        "timing": TIMING,
        "locking": {"backend": backend, "kill_grace": 1.0},
        "memory": {"lockspace": f"scale-{root.name}-{tag}"},
    }
    if backend == "file":
        lockspace = root / f"ls-{tag}"
        lockspace.mkdir()
        cfg["file"] = {"lockspace_dir": str(lockspace)}
    starts: list[float] = []
    stops: list[float] = []
    async with actorlock.open_host(cfg) as host:
        domains = [host.domain(f"dom-{n}") for n in range(count)]
        limiter = anyio.CapacityLimiter(concurrency)
        gc.collect()
        before = rss_bytes()

        async def start(n: int) -> None:
            disks = [actorlock.disk(f"/images/dom-{n}/disk{i}.qcow2") for i in range(DISKS)]
            async with limiter:
                t = time.perf_counter()
                await domains[n].start(disks)
                starts.append(time.perf_counter() - t)

        async def stop(n: int) -> None:
            async with limiter:
                t = time.perf_counter()
                await domains[n].shutdown()
                stops.append(time.perf_counter() - t)

        begin = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for n in range(count):
                tg.start_soon(start, n)
        started = time.perf_counter() - begin
        gc.collect()
        per_domain = (rss_bytes() - before) / count
        begin = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for n in range(count):
                tg.start_soon(stop, n)
        stopped = time.perf_counter() - begin
    extra = {"domains": count, "all_started_s": started, "rss_per_domain_kib": per_domain / 1024}
    table.add(
        f"{backend}: start {count} domains",
        count / started,
        starts,
        floor=floor_name,
        goal=f"all in {started:.2f} s, {per_domain / 1024:.1f} KiB RSS/domain",
        extra=extra,
    )
    table.add(f"{backend}: shutdown {count} domains", count / stopped, stops, floor=floor_name)


async def main_async(args: argparse.Namespace) -> None:
    table = Table(f"bench_scale ({'trio' if args.trio else 'asyncio'}, {DISKS} disks per domain)", "ops/s")
    with tempfile.TemporaryDirectory(prefix="actorlock-scale-", dir=args.dir) as tmp:
        for count in (int(c) for c in args.counts.split(",")):
            await run_count(
                table, Path(tmp), args.backend, count, state_dir=args.state_dir, concurrency=args.concurrency
            )
    one, five, _ = os.getloadavg()
    table.note(f"load average at end: {one:.2f} (5 min {five:.2f})")
    table.note("goals: 10,000 domains started in <= 10 s on the file backend, <= 16 KiB RSS per domain")
    table.write_json(args.json)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", default="10,100,1000,10000", help="comma-separated domain counts")
    parser.add_argument("--backend", default="file", choices=["file", "memory"])
    parser.add_argument("--state-dir", action="store_true", help="give the host a state_dir")
    parser.add_argument("--concurrency", type=int, default=500, help="domains starting at once at most")
    run(parser, main_async)


if __name__ == "__main__":
    main()
