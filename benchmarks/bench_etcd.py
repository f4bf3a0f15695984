"""Domain lifecycle on the etcd backend: start (4 exclusive disks) + shutdown.

Starts a 3-member etcd cluster on loopback (the ``etcd`` binary from PATH),
then prints dom4 cycles per second and p50/p99 latency, sequential and with
``--domains`` concurrent domains, and in the same run the floor: two raw
txns per cycle on the same cluster (each compares the mod revision of 4 keys
and puts 4 values, as an acquisition and a release must), with the same
concurrency. Figures only; nothing is asserted.

    python benchmarks/bench_etcd.py [--cycles 200] [--domains 100] [--trio]
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

import actorlock
from actorlock.backends.etcd_client import EtcdClient, mod_is, put_op, range_kvs, range_op
from actorlock.testing.etcd_cluster import EtcdCluster

TIMING = {
    "renew_interval": 1.0,
    "lease_timeout": 5.0,
    "fence_timeout": 2.0,
    "host_dead": 8.0,
    "io_timeout": 30.0,
}
DISKS = 4


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(label: str, latencies: list[float], elapsed: float) -> float:
    rate = len(latencies) / elapsed
    print(
        f"{label:<40} {rate:9.1f} cycles/s   p50 {pct(latencies, 0.5) * 1e3:8.2f} ms"
        f"   p99 {pct(latencies, 0.99) * 1e3:8.2f} ms   ({len(latencies)} cycles)"
    )
    return rate


async def bench_floor(endpoints: list[str], domains: int, cycles_each: int) -> float:
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
    return report(f"floor: 2 raw txns, {domains} domain(s)", latencies, time.perf_counter() - start)


async def bench_backend(endpoints: list[str], domains: int, cycles_each: int) -> float:
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
    return report(f"etcd backend, {domains} domain(s)", latencies, elapsed)


async def main_async(args: argparse.Namespace, cluster: EtcdCluster) -> None:
    ends = cluster.endpoints
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {'trio' if args.trio else 'asyncio'}")
    each = max(3, args.cycles * 2 // args.domains)
    floor_1 = await bench_floor(ends, 1, args.cycles)
    seq = await bench_backend(ends, 1, args.cycles)
    floor_n = await bench_floor(ends, args.domains, each)
    conc = await bench_backend(ends, args.domains, each)
    print()
    print(
        f"sequential: etcd backend at {seq / floor_1:.2f}x the floor's rate ({floor_1 / seq:.2f}x its time)"
    )
    print(f"{args.domains} domains: etcd backend at {conc / floor_n:.2f}x the floor's rate")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=200, help="cycles in each run (split among domains)")
    parser.add_argument("--domains", type=int, default=100, help="domains in the concurrent runs")
    parser.add_argument("--trio", action="store_true", help="run on trio")
    args = parser.parse_args()
    binary = shutil.which("etcd")
    if binary is None:
        sys.exit("bench_etcd: no etcd binary on PATH (apt-get install etcd-server)")
    with tempfile.TemporaryDirectory(prefix="actorlock-bench-etcd-") as tmp:
        cluster = EtcdCluster(binary, Path(tmp))
        try:
            cluster.start()
            anyio.run(main_async, args, cluster, backend="trio" if args.trio else "asyncio")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
