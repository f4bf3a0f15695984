"""The floor under peer messaging: DEALER/ROUTER round trips of codec frames.

Prints one table (benchtable; ``--json`` writes the rows), for asyncio and
trio, with CURVE off and on: requests per second and latency (p50/p99) one
request at a time, and the throughput with 64 requests in flight. The floor
of each row is measured in the same run: the first row (asyncio, CURVE off,
one at a time) for the other one-at-a-time rows (ratio of p50s), and the
same configuration one at a time for the 64-in-flight rows (ratio of
rates). Each measurement runs for ``--seconds``. Figures only; no assertions.

    python benchmarks/bench_wire_floor.py [--seconds 1.5] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import time

import anyio
from benchtable import Table

from actorlock.model import DomainIdentity, Lease, LeaseMode, LockState
from actorlock.protocol import Prepare, PrepareReply
from actorlock.transport import codec
from actorlock.transport.zmq import KeyPair, PeerClient, PeerServer, connect, generate_keypair

REQUEST = codec.encode(
    Prepare(
        migration_id="5f1c9e0d3b2a4c7e8f901a2b3c4d5e6f",
        sender="host-a",
        seq=1,
        deadline_remaining=30.0,
        domain=DomainIdentity("0b5c1e2a-1d2f-4e5a-9b8c-7d6e5f4a3b2c", "vm1"),
        source_host_id=1,
        lockspace_kind="file",
        lockspace_id="file:/srv/lockspace",
        lock_state=LockState.of(
            Lease(f"disk:/var/lib/images/vm1-{i}.qcow2", LeaseMode.EXCLUSIVE, 40 + i) for i in range(4)
        ),
    )
)


async def handler(identity: bytes, user_id: str | None, frame: bytes) -> bytes:
    request = codec.decode(frame)
    reply = PrepareReply(
        migration_id=request.migration_id,
        sender="host-b",
        seq=request.seq,
        deadline_remaining=request.deadline_remaining,
        host_id=2,
        incarnation="b-1",
    )
    return codec.encode(reply)


async def round_trip(client: PeerClient) -> None:
    codec.decode(await client.request(REQUEST))


async def latency(client: PeerClient, seconds: float) -> list[float]:
    samples: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await round_trip(client)
        samples.append(time.perf_counter() - t0)
    return samples


async def throughput(client: PeerClient, seconds: float, in_flight: int) -> float:
    done = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await round_trip(client)
            done += 1

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(in_flight):
            tg.start_soon(worker)
    return done / (time.perf_counter() - t0)


async def measure(seconds: float, *, curve: bool) -> tuple[list[float], float]:
    server_keys, client_keys = KeyPair(*generate_keypair()), KeyPair(*generate_keypair())
    if curve:
        server = PeerServer("tcp://127.0.0.1:*", keys=server_keys, allowed_clients=[client_keys.public])
    else:
        server = PeerServer("tcp://127.0.0.1:*", plaintext=True)
    with anyio.fail_after(seconds * 3 + 30):
        async with anyio.create_task_group() as tg:
            endpoint = await tg.start(server.serve, handler)
            options = (
                {"server_key": server_keys.public, "keys": client_keys} if curve else {"plaintext": True}
            )
            async with connect(endpoint, **options) as client:
                await latency(client, 0.2)  # warm up: connect, handshake
                samples = await latency(client, seconds)
                rate = await throughput(client, seconds, in_flight=64)
            tg.cancel_scope.cancel()
    return samples, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="length of each measurement")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    table = Table(f"bench_wire_floor (request frame {len(REQUEST)} bytes, reply decoded)", unit="req/s")
    first = ""
    for backend in ("asyncio", "trio"):
        for curve in (False, True):
            samples, rate = anyio.run(functools.partial(measure, curve=curve), args.seconds, backend=backend)
            one = f"{backend}, CURVE {'on' if curve else 'off'}, 1 in flight"
            table.add_latencies(one, samples, floor=first, by="p50")
            first = first or one
            table.add(f"{backend}, CURVE {'on' if curve else 'off'}, 64 in flight", rate, floor=one)
    table.write_json(args.json)


if __name__ == "__main__":
    main()
