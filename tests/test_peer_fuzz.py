"""Garbage at a real host's peer endpoint: answered or dropped, never a crash or a state change."""

from __future__ import annotations

import random
from typing import Any

import anyio
import msgpack
import pytest

import actorlock
from actorlock.errors import PeerError
from actorlock.protocol import Response
from actorlock.transport import codec
from actorlock.transport.zmq import connect, unreachable_after

from .support import guest_process, unique
from .test_migration import DISKS, incoming_vm, owners, peer_config, start_vm

pytestmark = pytest.mark.anyio


def garbage_frames(seed: int, count: int) -> list[bytes]:
    """Random bytes, random msgpack, and well-formed-looking messages with bad fields."""
    rng = random.Random(seed)
    base: dict[str, Any] = {
        "v": 1,
        "type": "prepare",
        "migration_id": "m",
        "sender": "a",
        "seq": 1,
        "deadline_remaining": 1.0,
    }
    values: list[Any] = [
        None,
        True,
        -1,
        2**63 + 5,
        1.5,
        "x" * 5,
        b"\x00\xff",
        [1, 2],
        {"k": 1},
        "",
        "a" * 5000,
    ]
    frames = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            frames.append(rng.randbytes(rng.randint(0, 300)))
        elif kind == 1:
            frames.append(msgpack.packb([rng.choice(values) for _ in range(rng.randint(0, 5))]))
        elif kind == 2:
            message = dict(base)
            message[rng.choice(list(base))] = rng.choice(values)
            message[rng.choice(["extra", "type", "v"])] = rng.choice(values)
            frames.append(msgpack.packb(message))
        else:
            message = dict(base, type=rng.choice(["commit", "cancel", "query", "status", "nonsense"]))
            message["migration_id"] = f"unknown-{rng.randint(0, 9)}"
            frames.append(msgpack.packb(message))
    return frames


async def test_fuzzed_frames_never_crash_the_host_or_change_its_leases() -> None:
    space = unique()
    with guest_process() as guest:
        async with (
            await actorlock.plugin_load("memory", peer_config("a", 1, space)) as a,
            await actorlock.plugin_load("memory", peer_config("b", 2, space)) as b,
        ):
            source = await start_vm(a, guest.pid)
            before = owners(await a.host.leases())
            endpoint = b.host.peer_endpoint
            answered = 0
            async with connect(endpoint, plaintext=True) as client:
                for frame in garbage_frames(seed=7, count=400):
                    try:
                        with unreachable_after(0.5, peer=endpoint):
                            reply = codec.decode(await client.request(frame))
                    except PeerError:
                        continue
                    answered += 1
                    assert isinstance(reply, Response)
            assert answered > 100
            assert owners(await a.host.leases()) == before
            assert b.host.incoming_migration(source.identity.uuid) is None
            # The host still works: a real migration goes through.
            await source.prepare_migrate(endpoint)
            dest = await incoming_vm(b, guest.pid)
            async with anyio.create_task_group() as tg:
                tg.start_soon(dest.complete_migrate_in, 0)
                tg.start_soon(source.complete_migrate_in, 0)
            assert {holders[0][0] for holders in owners(await a.host.leases()).values()} == {"b"}
            assert set(owners(await a.host.leases())) == {f"disk:{p}" for p in DISKS}
