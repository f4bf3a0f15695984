"""An authenticated but hostile peer: PREPAREs that cost descriptors, empty offers, floods (issue 10)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

import actorlock
from actorlock.errors import ConfigError, PeerRefusedError, ProtocolError
from actorlock.model import DomainIdentity, Lease, LockState
from actorlock.protocol import ErrorReply, Prepare, PrepareReply, Query, Response
from actorlock.transport import codec
from actorlock.transport.zmq import PeerClient, connect, unreachable_after

from .support import guest_process, unique
from .test_migration import UUID, owners, peer_config, start_vm, write_keys

pytestmark = pytest.mark.anyio


def offer(records: list[Any], host: str) -> LockState:
    return LockState(
        tuple(Lease(r.key, h.mode, h.token) for r in records for h in r.holders if h.owner.host == host)
    )


def prepare_frame(
    plugin: actorlock.LockManagerPlugin,
    migration_id: str,
    *,
    sender: str,
    host_id: int,
    lock_state: LockState,
    deadline: float = 3600.0,
) -> bytes:
    return codec.encode(
        Prepare(
            migration_id=migration_id,
            sender=sender,
            seq=1,
            deadline_remaining=deadline,
            domain=DomainIdentity(UUID, "vm"),
            source_host_id=host_id,
            lockspace_kind="memory",
            lockspace_id=plugin.host.lockspace_id,
            lock_state=lock_state,
        )
    )


async def ask(client: PeerClient, frame: bytes) -> Response:
    with unreachable_after(5.0, peer=client.endpoint):
        reply = codec.decode(await client.request(frame))
    assert isinstance(reply, Response)
    return reply


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def incoming(plugin: actorlock.LockManagerPlugin) -> int:
    return len(plugin.host.incoming_migrations())


async def test_an_empty_lock_state_is_refused_before_a_driver_is_made() -> None:
    space = unique()
    async with (
        await actorlock.plugin_load("memory", peer_config("a", 1, space)) as a,
        await actorlock.plugin_load("memory", peer_config("b", 2, space)) as b,
    ):
        async with connect(b.host.peer_endpoint, plaintext=True) as client:
            reply = await ask(
                client, prepare_frame(b, "m-empty", sender="a", host_id=1, lock_state=LockState())
            )
        assert isinstance(reply, ErrorReply)
        assert reply.code == ProtocolError.code
        assert "empty lock state" in reply.message
        assert incoming(b) == 0
        del a


async def test_a_prepare_the_machine_would_not_read_makes_no_driver() -> None:
    # Found by bench_peer_fuzz: a PREPARE numbered 0 made a driver whose machine
    # refused it and stayed idle, with no timer, holding its socket for good.
    space = unique()
    with guest_process() as guest:
        async with (
            await actorlock.plugin_load("memory", peer_config("a", 1, space)) as a,
            await actorlock.plugin_load("memory", peer_config("b", 2, space)) as b,
        ):
            await start_vm(a, guest.pid)
            state = offer(await a.host.leases(), "a")
            frame = codec.decode(prepare_frame(b, "m-zero", sender="a", host_id=1, lock_state=state))
            async with connect(b.host.peer_endpoint, plaintext=True) as client:
                reply = await ask(client, codec.encode(attrs.evolve(frame, seq=0)))
            assert isinstance(reply, ErrorReply)
            assert incoming(b) == 0


async def test_pending_incoming_migrations_are_capped_per_peer_and_in_total() -> None:
    space = unique()
    caps = {"max_incoming_per_peer": 2, "max_incoming": 3}
    with guest_process() as guest:
        async with (
            await actorlock.plugin_load("memory", peer_config("a", 1, space)) as a,
            await actorlock.plugin_load("memory", peer_config("b", 2, space, **caps)) as b,
            await actorlock.plugin_load("memory", peer_config("c", 3, space)) as c,
        ):
            await start_vm(a, guest.pid)
            before = owners(await a.host.leases())
            state = offer(await a.host.leases(), "a")
            endpoint = b.host.peer_endpoint
            async with connect(endpoint, plaintext=True) as client:
                await ask(
                    client, codec.encode(Query(migration_id="warm", sender="a", seq=1, deadline_remaining=1))
                )
                fds_before = open_fds()
                answers = [
                    await ask(client, prepare_frame(b, f"m{i}", sender="a", host_id=1, lock_state=state))
                    for i in range(40)
                ]
                from_c = [
                    await ask(client, prepare_frame(b, f"c{i}", sender="c", host_id=3, lock_state=state))
                    for i in range(3)
                ]
                # Each pending migration costs a connection (a few descriptors, both ends
                # in this process): 43 PREPAREs cost no more than the 3 admitted ones.
                assert open_fds() - fds_before <= 3 * 5
            assert [type(r) for r in answers[:2]] == [PrepareReply, PrepareReply]
            refused = answers[2:]
            assert all(isinstance(r, ErrorReply) and r.code == PeerRefusedError.code for r in refused)
            assert "max_incoming_per_peer" in refused[0].message  # type: ignore[attr-defined]
            # c's PREPARE verifies against the lockspace and fails (a holds the leases),
            # but each one counts while it lingers; then the total cap refuses.
            assert any(isinstance(r, ErrorReply) and "peer.max_incoming" in r.message for r in from_c)
            assert incoming(b) <= 3
            assert owners(await a.host.leases()) == before
            del c


async def test_concurrent_prepares_cannot_all_slip_under_the_cap() -> None:
    space = unique()
    caps = {"max_incoming_per_peer": 2, "max_incoming": 30}
    with guest_process() as guest:
        async with (
            await actorlock.plugin_load("memory", peer_config("a", 1, space)) as a,
            await actorlock.plugin_load("memory", peer_config("b", 2, space, **caps)) as b,
        ):
            await start_vm(a, guest.pid)
            state = offer(await a.host.leases(), "a")
            answers: list[Response] = []

            async def one(client: PeerClient, i: int) -> None:
                frame = prepare_frame(b, f"m{i}", sender="a", host_id=1, lock_state=state)
                answers.append(await ask(client, frame))

            async with (
                connect(b.host.peer_endpoint, plaintext=True) as client,
                anyio.create_task_group() as tg,
            ):
                for i in range(30):
                    tg.start_soon(one, client, i)
            accepted = [r for r in answers if isinstance(r, PrepareReply)]
            assert 1 <= len(accepted) <= 2
            assert incoming(b) <= 2


async def test_an_unconfirmed_incoming_migration_expires_within_prepare_and_migration_timeout() -> None:
    space = unique()
    short = {"prepare_timeout": 0.3, "migration_timeout": 0.6, "transfer_margin": 0.2}
    with guest_process() as guest:
        async with (
            await actorlock.plugin_load("memory", peer_config("a", 1, space)) as a,
            await actorlock.plugin_load("memory", peer_config("b", 2, space, **short)) as b,
        ):
            await start_vm(a, guest.pid)
            before = owners(await a.host.leases())
            state = offer(await a.host.leases(), "a")
            async with connect(b.host.peer_endpoint, plaintext=True) as client:
                # The PREPARE claims an hour; the destination keeps it 0.9 s at most.
                reply = await ask(client, prepare_frame(b, "m-hour", sender="a", host_id=1, lock_state=state))
            assert isinstance(reply, PrepareReply)
            assert b.host.incoming_migration(UUID) is not None
            with anyio.fail_after(30):  # a bound on the wait, not a timing check
                # The host has no event for a migration's end: poll.
                while b.host.incoming_migration(UUID) is not None:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            assert owners(await a.host.leases()) == before


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ({"max_incoming": 0}, "peer.max_incoming"),
        ({"max_incoming_per_peer": "3"}, "peer.max_incoming_per_peer"),
        ({"max_incoming_per_peer": 9, "max_incoming": 4}, "peer.max_incoming_per_peer"),
        ({"max_requests_per_peer": -1}, "peer.max_requests_per_peer"),
    ],
)
def test_bad_peer_caps_are_config_errors_naming_the_key(peer: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        actorlock.load_config({"peer": peer})
    assert caught.value.key == key


def test_the_caps_have_sane_defaults() -> None:
    peer = actorlock.load_config(None).peer
    assert 1 <= peer.max_incoming_per_peer <= peer.max_incoming <= 256
    assert peer.max_requests_per_peer >= 1


async def test_plaintext_keeps_the_lockspace_check_and_warns_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    space = unique()
    with guest_process() as guest, caplog.at_level(logging.WARNING, logger="actorlock"):
        async with (
            await actorlock.plugin_load("memory", peer_config("a", 1, space)) as a,
            await actorlock.plugin_load("memory", peer_config("b", 2, space)) as b,
        ):
            assert any("CURVE is off" in r.getMessage() for r in caplog.records)
            await start_vm(a, guest.pid)
            state = offer(await a.host.leases(), "a")
            async with connect(b.host.peer_endpoint, plaintext=True) as client:
                reply = await ask(
                    client, prepare_frame(b, "m-x", sender="mallory", host_id=7, lock_state=state)
                )
            assert isinstance(reply, ErrorReply)
            assert "not a host of lockspace" in reply.message
            assert incoming(b) == 0


async def test_peer_requests_read_host_records_once_per_renewal(tmp_path: Path) -> None:
    space = unique()
    a_file, a_keys = write_keys(tmp_path, "a")
    b_file, b_keys = write_keys(tmp_path, "b")
    curve = {"plaintext": False, "allowed_keys": [a_keys.public, b_keys.public]}
    async with (
        await actorlock.plugin_load("memory", peer_config("a", 1, space, key_file=str(a_file), **curve)) as a,
        await actorlock.plugin_load("memory", peer_config("b", 2, space, key_file=str(b_file), **curve)) as b,
    ):
        coordinator = b.host._coordinator
        backend: Any = coordinator.backend
        reads = 0
        real = backend.hosts

        async def counting() -> Any:
            nonlocal reads
            reads += 1
            return await real()

        backend.hosts = counting
        renewals_before = coordinator.lifeline.renewals
        endpoint = coordinator.peer_endpoint
        async with connect(endpoint, server_key=b_keys.public, keys=a_keys) as client:
            for i in range(300):
                sender = "a" if i % 2 else f"stranger-{i}"
                query = Query(migration_id=f"q{i}", sender=sender, seq=1, deadline_remaining=1.0)
                await ask(client, codec.encode(query))
        renewals = coordinator.lifeline.renewals - renewals_before
        # One read per renewal, and one more per renewal for a name not found.
        assert reads <= 2 * (renewals + 1)
        assert reads < 300
        del a
