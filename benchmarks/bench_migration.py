"""Migration handoff latency between two host processes, against its floors.

A guest with 4 exclusive disks ping-pongs between two host coordinators,
each in its own process (:mod:`actorlock._verify.host_processes`' host
mode with two extra ops), on loopback with a file lockspace. One handoff is the libvirt
sequence: prepare on the source, register the incoming guest on the
destination, commit on both sides at once. The source's shutdown after
each handoff is not timed (it releases nothing: the leases moved).

Printed as one table (benchtable; ``--json`` writes the rows), all from the
same run: handoff p50/p99 as the hosts measured it and as the driving
script sees it, its prepare and commit, handoffs per second over the whole
run, and the floors under a handoff, each row with the floor it is compared
with and the ratio of p50s:

* the control channel: one JSON-lines round trip between this script and a
  host process (the driving script's own overhead);
* the wire: a DEALER/ROUTER round trip of msgpack codec frames between the
  *same two host processes* (a ROUTER in host b, a DEALER in host a, CURVE
  as configured), on a warm connection and on a fresh one (connect,
  handshake, first reply);
* the backend: ``FileLeaseBackend.transfer`` of 4 leases alone on the same
  lockspace, between two backends joined as hosts 11 and 12 in this
  process, and ``records`` of the same 4 leases (a handoff reads them twice:
  the destination's check of the offer and of the commit);
* their sum along a handoff's path: 2 warm round trips + 1 transfer + 2 reads.

Figures and ratios only; nothing is asserted. Bounded: ``--handoffs`` (or
``--seconds``) after 5 warm-up handoffs, under a deadline.

    python benchmarks/bench_migration.py [--handoffs 200] [--seconds S] [--plaintext] [--state-dir]
                                         [--trio] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import benchtable

# bench_lifecycle's relaxed renewals: renewal fsyncs every 50 ms would
# compete with the handoffs' own fsyncs and only add noise.
from bench_lifecycle import DISKS, TIMING
from benchtable import Table, pct

from actorlock._verify import host_processes
from actorlock.backends.base import HostAdvert
from actorlock.backends.file import FileLeaseBackend
from actorlock.model import (
    DomainIdentity,
    HostIdentity,
    Lease,
    LeaseMode,
    LeaseOwner,
    LeaseRequest,
    LockState,
)
from actorlock.protocol import Prepare, PrepareReply
from actorlock.transport import codec
from actorlock.transport.zmq import PeerServer, connect, load_keypair

SCRIPT = Path(__file__).resolve()

UUID = "b3e1c0de-0000-4000-8000-00000000be7c"
WIRE_ROUND_TRIPS = 2000
WIRE_FRESH_CONNECTIONS = 50
TRANSFERS = 300
CONTROL_ROUND_TRIPS = 500
# A PREPARE as the source sends it: the biggest frame of a handoff.
FRAME = codec.encode(
    Prepare(
        migration_id="5f1c9e0d3b2a4c7e8f901a2b3c4d5e6f",
        sender="a",
        seq=1,
        deadline_remaining=2.0,
        domain=DomainIdentity(UUID, "bench"),
        source_host_id=1,
        lockspace_kind="file",
        lockspace_id="0123456789abcdef0123456789abcdef",
        lock_state=LockState.of(
            Lease(f"disk:/images/bench-{i}.qcow2", LeaseMode.EXCLUSIVE, 40 + i) for i in range(4)
        ),
    )
)


# --- host mode: the example's agent plus the wire floor ------------------------------


async def _answer(identity: bytes, user_id: str | None, frame: bytes) -> bytes:
    """Decode the request and encode a reply, as the peer service's handler does at least."""
    request = codec.decode(frame)
    reply = PrepareReply(
        migration_id=request.migration_id,
        sender="b",
        seq=request.seq,
        deadline_remaining=request.deadline_remaining,
        host_id=2,
        incarnation="b-1",
    )
    return codec.encode(reply)


class BenchAgent(host_processes.HostAgent):
    """The example's host agent with two ops for the wire floor."""

    async def op_wire_serve(self) -> dict[str, Any]:
        """Bind a ROUTER with this host's CURVE keys (or plain text) next to the peer service."""
        if self.args.plaintext:
            server = PeerServer("tcp://127.0.0.1:*", plaintext=True)
        else:
            keys = load_keypair(self.args.key_file)
            server = PeerServer("tcp://127.0.0.1:*", keys=keys, allowed_clients=self.args.allowed_key)
        endpoint = await self.task_group.start(server.serve, _answer)
        return {"endpoint": endpoint}

    async def op_wire_ping(self, endpoint: str, server_key: str, count: int, fresh: int) -> dict[str, Any]:
        """Round trips to ``endpoint``: ``count`` on one warm connection, then ``fresh`` new connections."""
        if self.args.plaintext:
            options: dict[str, Any] = {"plaintext": True}
        else:
            options = {"server_key": server_key, "keys": load_keypair(self.args.key_file)}
        with anyio.fail_after(120):
            async with connect(endpoint, **options) as client:
                for _ in range(50):  # warm up: connect, CURVE handshake
                    codec.decode(await client.request(FRAME))
                warm = []
                for _ in range(count):
                    started = time.perf_counter()
                    codec.decode(await client.request(FRAME))
                    warm.append(time.perf_counter() - started)
            cold = []
            for _ in range(fresh):
                started = time.perf_counter()
                async with connect(endpoint, **options) as client:
                    codec.decode(await client.request(FRAME))
                cold.append(time.perf_counter() - started)
        return {"warm": warm, "cold": cold}


# --- the parent --------------------------------------------------------------------


async def backend_floor(lockspace: Path, count: int) -> tuple[list[float], list[float]]:
    """``transfer`` of 4 leases ping-ponged between two backends joined as hosts 11 and 12,
    and ``records`` of the same 4 leases after each."""
    sides = []
    for host_id in (11, 12):
        backend = FileLeaseBackend(lockspace, host_dead=TIMING["host_dead"])
        incarnation = f"floor-{host_id}-{os.getpid()}"
        await backend.join(HostIdentity(f"floor-{host_id}", host_id), incarnation, HostAdvert())
        owner = LeaseOwner(f"floor-{host_id}", host_id, "floor-domain", "floor")
        sides.append((backend, owner, incarnation))
    requests = [LeaseRequest(f"disk:/floor/disk{i}.qcow2", LeaseMode.EXCLUSIVE) for i in range(DISKS)]
    holder, other = 0, 1
    leases = await sides[holder][0].acquire(sides[holder][1], requests)
    transfers, reads = [], []
    keys = [request.key for request in requests]
    try:
        for _ in range(count):
            backend, source, _ = sides[holder]
            _, destination, destination_incarnation = sides[other]
            started = time.perf_counter()
            leases = await backend.transfer(source, destination, destination_incarnation, leases)
            transfers.append(time.perf_counter() - started)
            started = time.perf_counter()
            await sides[other][0].records(keys)
            reads.append(time.perf_counter() - started)
            holder, other = other, holder
    finally:
        await sides[holder][0].release(sides[holder][1], [lease.key for lease in leases])
        for backend, _, _ in sides:
            await backend.leave(clean=True)
            await backend.aclose()
    return transfers, reads


def guest_args(pid: int) -> dict[str, Any]:
    disks = [f"/images/bench-{i}.qcow2" for i in range(DISKS)]
    return {"uuid": UUID, "name": "bench", "disks": disks, "pid": pid}


async def run(args: argparse.Namespace) -> None:
    backend = "trio" if args.trio else "asyncio"
    curve = "off" if args.plaintext else "on"
    state = ", state_dir" if args.state_dir else ""
    table = Table(
        f"bench_migration ({backend}, CURVE {curve}, {DISKS} disks, file lockspace{state})", unit="ops/s"
    )
    with tempfile.TemporaryDirectory(prefix="bench-migration-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        lockspace = workdir / "lockspace"
        lockspace.mkdir()
        keys: Mapping[str, Any] = dict.fromkeys(("a", "b"))
        if not args.plaintext:
            keys = host_processes.make_keys(workdir, ["a", "b"])
        async with AsyncExitStack() as stack:
            guests = await stack.enter_async_context(host_processes.guest_processes())
            hosts = {}
            for name, host_id in (("a", 1), ("b", 2)):
                state_dir = None
                if args.state_dir:
                    state_dir = workdir / f"state-{name}"
                    state_dir.mkdir(mode=0o700)
                spawn = host_processes.spawn_host(
                    name,
                    host_id,
                    lockspace,
                    workdir,
                    keys=keys[name],
                    backend=backend,
                    timing=TIMING,
                    script=SCRIPT,
                    state_dir=state_dir,
                )
                hosts[name] = await stack.enter_async_context(spawn)
            pids = {name: (await host_processes.start_guest(guests)).pid for name in hosts}
            a, b = hosts["a"], hosts["b"]
            # Floors first, with both hosts idle.
            control = []
            for _ in range(CONTROL_ROUND_TRIPS):
                started = time.perf_counter()
                await a.call("ping")
                control.append(time.perf_counter() - started)
            endpoint = (await b.call("wire_serve"))["endpoint"]
            server_key = "" if args.plaintext else keys["b"].public
            wire = await a.call(
                "wire_ping",
                endpoint=endpoint,
                server_key=server_key,
                count=WIRE_ROUND_TRIPS,
                fresh=WIRE_FRESH_CONNECTIONS,
            )
            transfers, reads = await backend_floor(lockspace, TRANSFERS)

            await a.call("start", **guest_args(pids["a"]))
            outside: list[float] = []
            inside: list[float] = []
            prepares: list[float] = []
            commits: list[float] = []
            src, dst = a, b
            warmup = 5
            done = 0
            run_started = time.perf_counter()
            end = run_started + args.seconds if args.seconds else None
            with anyio.fail_after(args.seconds + 120 if args.seconds else 600):
                while (done < args.handoffs + warmup) if end is None else (time.perf_counter() < end):
                    started = time.perf_counter()
                    prepared = await src.call("prepare", uuid=UUID, dest=dst.endpoint)
                    registered = await dst.call("incoming", **guest_args(pids[dst.name]))
                    out, inn = await host_processes.concurrently(
                        partial(src.call, "commit", uuid=UUID), partial(dst.call, "commit", uuid=UUID)
                    )
                    elapsed = time.perf_counter() - started
                    await src.call("shutdown", uuid=UUID)
                    done += 1
                    if done == warmup and end is None:
                        run_started = time.perf_counter()  # the rate counts timed handoffs only
                    if done > warmup or end is not None:
                        outside.append(elapsed)
                        commit = max(out["elapsed"], inn["elapsed"])
                        inside.append(prepared["elapsed"] + registered["elapsed"] + commit)
                        prepares.append(prepared["elapsed"])
                        commits.append(commit)
                    src, dst = dst, src
            run_time = time.perf_counter() - run_started
            await src.call("shutdown", uuid=UUID)

        floors(table, control=control, wire=wire, transfers=transfers, reads=reads)
        table.add_latencies(
            "handoff (as the hosts timed it)",
            inside,
            floor=WIRE,
            by="p50",
            goal="p50 <= 3 ms, p99 <= 15 ms",
        )
        table.add_latencies("handoff (hosts) against its path", inside, floor=PATH, by="p50")
        table.add_latencies("handoff (as this script sees it)", outside, floor=CONTROL, by="p50")
        table.add_latencies("  prepare, on the source", prepares, floor=WIRE, by="p50")
        table.add_latencies("  commit, the slower side", commits, floor=TRANSFER, by="p50")
        # Ratio of rates: handoffs per second against one path floor's worth per second.
        table.add("handoffs/s over the whole run", len(outside) / run_time, floor=PATH)
    table.write_json(args.json)


CONTROL = "floor: control round trip"
WIRE = "floor: wire round trip, warm"
TRANSFER = f"floor: file transfer of {DISKS} leases"
PATH = "floor: 2 RT + transfer + 2 reads"


def floors(
    table: Table,
    *,
    control: list[float],
    wire: Mapping[str, list[float]],
    transfers: list[float],
    reads: list[float],
) -> None:
    """The floor rows, measured before the handoffs with both hosts idle."""
    table.add_latencies(CONTROL, control)
    table.add_latencies(WIRE, wire["warm"])
    cold = wire["cold"]
    table.add_latencies("floor: wire, fresh conn. + handshake", cold, floor=WIRE, by="p50")
    table.add_latencies(TRANSFER, transfers)
    table.add_latencies(f"floor: file records of {DISKS} leases", reads)
    # One handoff's path: PREPARE and COMMIT round trips, the transfer, the destination's two reads.
    path = 2 * pct(wire["warm"], 0.5) + pct(transfers, 0.5) + 2 * pct(reads, 0.5)
    table.add(PATH, 1 / path, [path], extra={"sum_of_p50s": True})


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "host":
        parser = argparse.ArgumentParser(prog=f"{SCRIPT.name} host")
        host_processes.add_host_arguments(parser)
        sys.exit(host_processes.host_main(parser.parse_args(sys.argv[2:]), BenchAgent))
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="Floors and ratios are printed from the same run.",
    )
    parser.add_argument("--handoffs", type=int, default=200, help="timed handoffs (after 5 warm-up ones)")
    parser.add_argument("--seconds", type=float, default=0.0, help="run this long instead of --handoffs")
    parser.add_argument("--plaintext", action="store_true", help="peer traffic without CURVE")
    parser.add_argument(
        "--state-dir", action="store_true", help="hosts persist guest state (a durable write per step)"
    )
    benchtable.run(parser, run)


if __name__ == "__main__":
    main()
