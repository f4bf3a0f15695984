"""What a supervised guest costs, and how soon it dies after its coordinator does.

Prints one table (benchtable; ``--json`` writes the rows), for ``--guests``
guests (``sleep``), every row against a floor from the same run:

* start time: ``Domain.spawn`` (supervisor start, control-socket welcome,
  guest start, registration) against a bare ``fork``/``exec`` of the guest
  until it runs (ratio of p50s);
* memory of one supervisor process: RSS, PSS (its share of pages it shares
  with the other supervisors) and private memory, from /proc/PID/smaps_rollup
  (notes, and fields of the spawn row in the JSON);
* kill time: a coordinator process is SIGKILLed and never restarted; the
  time until its supervised guest is gone, against the bound
  lease_timeout + fence_timeout counted from the kill (the last renewal was
  at or before it, so the real bound is never later): the ratio is <= 1
  when the bound holds.

Figures only; nothing is asserted. Bounded: every wait has a deadline.

    python benchmarks/bench_supervisor.py [--guests 10] [--kills 3] [--trio] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from benchtable import Table, run

import actorlock

TIMING = {
    "renew_interval": 0.1,
    "lease_timeout": 1.0,
    "fence_timeout": 0.5,
    "host_dead": 1.8,
    "io_timeout": 2.0,
}

COORDINATOR = """
import json, sys, anyio, actorlock
cfg = json.loads(sys.argv[1])
async def run():
    async with actorlock.open_host(cfg) as host:
        vm = host.domain("vm1")
        await vm.start([actorlock.disk("/d/1.img")])
        pid = await vm.spawn(["sleep", "600"])
        print(pid, flush=True)
        await anyio.sleep_forever()
anyio.run(run)
"""


def config(tmp: Path, name: str = "a") -> dict[str, Any]:
    (tmp / "ls").mkdir(exist_ok=True)
    (tmp / f"state-{name}").mkdir(exist_ok=True)
    return {
        "host": {"name": name, "id": 1, "state_dir": str(tmp / f"state-{name}")},
        "timing": TIMING,
        "locking": {"backend": "file", "kill_grace": 0.2},
        "file": {"lockspace_dir": str(tmp / "ls")},
    }


def memory(pid: int) -> dict[str, int]:
    """kB figures of one process."""
    figures = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                figures[key] = int(rest.split()[0])
    return figures


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    return int(raw[raw.rfind(b")") + 2 :].split()[1])


def running_as(pid: int, comm: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b" (", 1)[1].startswith(comm + b")")
    except FileNotFoundError:
        return False


def bare_start() -> tuple[float, subprocess.Popen[bytes]]:
    start = time.perf_counter()
    proc = subprocess.Popen(["sleep", "600"])
    while not running_as(proc.pid, b"sleep"):  # until exec has happened
        time.sleep(0.0002)
    return time.perf_counter() - start, proc


def bare_starts(guests: int) -> list[float]:
    times, procs = [], []
    for _ in range(guests):
        took, proc = bare_start()
        times.append(took)
        procs.append(proc)
    for proc in procs:
        proc.kill()
        proc.wait()
    return times


async def supervised(table: Table, guests: int, tmp: Path) -> None:
    bare = await anyio.to_thread.run_sync(bare_starts, guests)
    spawned: list[float] = []
    supervisors: list[int] = []
    guest_rss: list[int] = []
    async with actorlock.open_host(config(tmp)) as host:
        for i in range(guests):
            vm = host.domain(f"vm{i}")
            await vm.start([actorlock.disk(f"/d/{i}.img")])
            start = time.perf_counter()
            pid = await vm.spawn(["sleep", "600"])
            spawned.append(time.perf_counter() - start)
            supervisors.append(parent_of(pid))
            guest_rss.append(memory(pid)["Rss"])
        figures = [memory(s) for s in supervisors]
        for s in supervisors:
            os.kill(s, signal.SIGKILL)  # its guest follows it (PR_SET_PDEATHSIG)
        for i in range(guests):
            await host.domain(f"vm{i}").shutdown()
    bare_row = "floor: bare fork/exec of the guest"
    table.add_latencies(bare_row, bare)
    mib = {"guest_rss_mib": statistics.median(guest_rss) / 1024}
    for key, label in (("Rss", "rss"), ("Pss", "pss"), ("Private", "private")):
        values = [f["Private_Clean"] + f["Private_Dirty"] if key == "Private" else f[key] for f in figures]
        mib[f"supervisor_{label}_mib"] = statistics.median(values) / 1024
    table.add_latencies(
        "Domain.spawn (supervised start)",
        spawned,
        floor=bare_row,
        by="p50",
        extra=mib,
    )
    table.note(
        f"per supervisor (median of {guests}): RSS {mib['supervisor_rss_mib']:.2f} MiB, "
        f"PSS {mib['supervisor_pss_mib']:.2f} MiB, private {mib['supervisor_private_mib']:.2f} MiB; "
        f"the guest itself RSS {mib['guest_rss_mib']:.2f} MiB"
    )


async def kill_times(table: Table, kills: int, tmp: Path) -> None:
    bound = TIMING["lease_timeout"] + TIMING["fence_timeout"]
    bound_row = "bound: lease_timeout + fence_timeout"
    table.add(bound_row, 1 / bound, [bound], extra={"configured": True})
    gone: list[float] = []
    for attempt in range(kills):
        run = tmp / f"kill{attempt}"
        run.mkdir()
        argv = [sys.executable, "-c", COORDINATOR, json.dumps(config(run))]
        async with await anyio.open_process(argv, stderr=None) as coordinator:
            assert coordinator.stdout is not None
            with anyio.fail_after(20):
                pid = int((await coordinator.stdout.receive()).decode())
            await anyio.sleep(0.3)
            coordinator.kill()
            killed = time.perf_counter()
            await coordinator.wait()
            fd = os.pidfd_open(pid)
            with anyio.fail_after(10):
                await anyio.wait_readable(fd)
            gone.append(time.perf_counter() - killed)
            os.close(fd)
    table.add_latencies(
        "coordinator SIGKILLed: guest gone",
        gone,
        floor=bound_row,
        by="p50",
        goal="<= 1x",
    )


async def main(args: argparse.Namespace) -> None:
    table = Table(
        f"bench_supervisor ({'trio' if args.trio else 'asyncio'}, {args.guests} guests)", unit="ops/s"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        await supervised(table, args.guests, Path(tmp))
        await kill_times(table, args.kills, Path(tmp))
    table.write_json(args.json)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--guests", type=int, default=10)
    parser.add_argument("--kills", type=int, default=3)
    run(parser, main)
