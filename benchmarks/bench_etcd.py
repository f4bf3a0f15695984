"""Domain lifecycle on the etcd backend: start (4 exclusive disks) + shutdown.

Starts a 3-member etcd cluster on loopback (the ``etcd`` binary from PATH),
then prints dom4 cycles per second and p50/p99 latency, sequential and with
``--domains`` concurrent domains, and in the same run the floor: two raw
txns per cycle on the same cluster (each compares the mod revision of 4 keys
and puts 4 values, as an acquisition and a release must), with the same
concurrency. Each backend row's floor is the raw-txn row of the same
concurrency. Figures only; nothing is asserted.

    python benchmarks/bench_etcd.py [--cycles 200] [--domains 100] [--trio] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import anyio
from bench_lifecycle import DISKS, TIMING
from benchtable import Table, run

import actorlock
from actorlock.backends.etcd_client import EtcdClient, mod_is, put_op, range_kvs, range_op
from actorlock.testing.etcd_cluster import EtcdCluster


async def bench_floor(table: Table, endpoints: list[str], domains: int, cycles_each: int) -> None:
    """Two txns per cycle, each a compare-and-put of 4 keys: what a cycle needs at least."""
    client = EtcdClient(endpoints, io_timeout=30.0, request_timeout=30.0)
    latencies: list[float] = []

    async def run_domain(n: int) -> None:
        keys = [f"/bench-floor/{n}/disk{i}" for i in range(DISKS)]
        answer = await client.txn(success=[range_op(k) for k in keys])
        mods = [kvs[0][2] if (kvs := range_kvs(r)) else 0 for r in answer["responses"]]
        for _ in range(cycles_each):
            t = time.perf_counter()
            for value in ("held", "free"):
                for _attempt in range(100):
                    answer = await client.txn(
                        [mod_is(k, m) for k, m in zip(keys, mods, strict=True)],
                        [put_op(k, value) for k in keys],
                        [range_op(k) for k in keys],
                    )
                    if answer.get("succeeded"):
                        mods = [int(answer["header"]["revision"])] * DISKS
                        break
                    # A retried request whose first copy had landed: nobody else writes here.
                    mods = [range_kvs(r)[0][2] for r in answer["responses"]]
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    try:
        async with anyio.create_task_group() as tg:
            for n in range(domains):
                tg.start_soon(run_domain, n)
    finally:
        await client.aclose()
    table.add(floor_name(domains), len(latencies) / (time.perf_counter() - start), latencies)


async def bench_backend(table: Table, endpoints: list[str], domains: int, cycles_each: int) -> None:
    cfg = {
        "host": {"name": "bench", "id": 1},
        "timing": TIMING,
        "locking": {"backend": "etcd", "kill_grace": 1.0},
        "etcd": {"endpoints": endpoints, "prefix": f"/bench/{os.getpid()}-{domains}-{time.monotonic_ns()}"},
    }
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
    table.add(
        f"etcd backend, {domains} domain(s)",
        len(latencies) / elapsed,
        latencies,
        floor=floor_name(domains),
    )


def floor_name(domains: int) -> str:
    return f"floor: 2 raw txns, {domains} domain(s)"


async def main_async(args: argparse.Namespace) -> None:
    binary = shutil.which("etcd")
    if binary is None:
        sys.exit("bench_etcd: no etcd binary on PATH (apt-get install etcd-server)")
    backend = "trio" if args.trio else "asyncio"
    table = Table(f"bench_etcd ({backend}, {DISKS} disks per domain, 3 etcd members on loopback)")
    with tempfile.TemporaryDirectory(prefix="actorlock-bench-etcd-") as tmp:
        cluster = EtcdCluster(binary, Path(tmp))
        try:
            await anyio.to_thread.run_sync(cluster.start)
            ends = cluster.endpoints
            each = max(3, args.cycles * 2 // args.domains)
            await bench_floor(table, ends, 1, args.cycles)
            await bench_backend(table, ends, 1, args.cycles)
            await bench_floor(table, ends, args.domains, each)
            await bench_backend(table, ends, args.domains, each)
        finally:
            await anyio.to_thread.run_sync(cluster.stop)
    table.write_json(args.json)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=200, help="cycles in each run (split among domains)")
    parser.add_argument("--domains", type=int, default=100, help="domains in the concurrent runs")
    run(parser, main_async)


if __name__ == "__main__":
    main()
