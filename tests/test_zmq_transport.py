"""The ZeroMQ peer transport on asyncio and trio, loopback only."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actorlock.errors import (
    ConfigError,
    InvalidParameterError,
    PeerRefusedError,
    PeerUnreachableError,
    ProtocolError,
)
from actorlock.transport import codec
from actorlock.transport.zmq import (
    KeyPair,
    PeerClient,
    PeerServer,
    connect,
    generate_keypair,
    load_keypair,
    save_keypair,
    unreachable_after,
)

pytestmark = pytest.mark.anyio


async def echo(identity: bytes, user_id: str | None, frame: bytes) -> bytes:
    return b"echo:" + frame


def keypair() -> KeyPair:
    return KeyPair(*generate_keypair())


# --- request / reply ---------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
async def test_request_reply(transport: str, tmp_path: Path) -> None:
    endpoint = "tcp://127.0.0.1:*" if transport == "tcp" else f"ipc://{tmp_path}/peer.sock"
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            bound = await tg.start(PeerServer(endpoint, plaintext=True).serve, echo)
            assert "*" not in bound
            async with connect(bound, plaintext=True) as client:
                assert await client.request(b"hello") == b"echo:hello"
                assert await client.request(b"") == b"echo:"
            tg.cancel_scope.cancel()


async def test_many_concurrent_requests_from_several_clients() -> None:
    seen: set[bytes] = set()

    async def handler(identity: bytes, user_id: str | None, frame: bytes) -> bytes:
        seen.add(identity)
        await anyio.lowlevel.checkpoint()  # let requests interleave inside the server too
        return frame[::-1]

    async def hammer(client: PeerClient, who: int) -> None:
        async def one(i: int) -> None:
            payload = f"{who}:{i}".encode()
            assert await client.request(payload) == payload[::-1]

        async with anyio.create_task_group() as inner:
            for i in range(100):
                inner.start_soon(one, i)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            bound = await tg.start(PeerServer("tcp://127.0.0.1:*", plaintext=True).serve, handler)
            async with (
                connect(bound, plaintext=True) as a,
                connect(bound, plaintext=True) as b,
                connect(bound, plaintext=True) as c,
                anyio.create_task_group() as clients,
            ):
                for who, client in enumerate((a, b, c)):
                    clients.start_soon(hammer, client, who)
            assert len(seen) == 3
            tg.cancel_scope.cancel()


# --- CURVE -----------------------------------------------------------------------------


async def test_curve_admits_an_allowed_key_and_names_it() -> None:
    server, client_keys = keypair(), keypair()
    callers: list[str | None] = []

    async def handler(identity: bytes, user_id: str | None, frame: bytes) -> bytes:
        callers.append(user_id)
        return b"ok"

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            srv = PeerServer("tcp://127.0.0.1:*", keys=server, allowed_clients=[client_keys.public])
            bound = await tg.start(srv.serve, handler)
            async with connect(bound, server_key=server.public, keys=client_keys) as client:
                assert await client.request(b"hi") == b"ok"
            tg.cancel_scope.cancel()
    assert callers == [client_keys.public]


async def test_curve_refuses_a_key_not_allowed() -> None:
    server, allowed, stranger = keypair(), keypair(), keypair()
    calls: list[bytes] = []

    async def handler(identity: bytes, user_id: str | None, frame: bytes) -> bytes:
        calls.append(frame)
        return b"ok"

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            srv = PeerServer("tcp://127.0.0.1:*", keys=server, allowed_clients=[allowed.public])
            bound = await tg.start(srv.serve, handler)
            async with connect(bound, server_key=server.public, keys=stranger) as client:
                with (
                    pytest.raises(PeerUnreachableError, match="no answer from host-b"),
                    unreachable_after(0.5, peer="host-b"),
                ):
                    await client.request(b"let me in")
            # The allowed key still gets through on the same server.
            async with connect(bound, server_key=server.public, keys=allowed) as client:
                assert await client.request(b"hi") == b"ok"
            tg.cancel_scope.cancel()
    assert calls == [b"hi"]


async def test_curve_client_with_the_wrong_server_key_gets_nowhere() -> None:
    server, client_keys, impostor = keypair(), keypair(), keypair()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            srv = PeerServer("tcp://127.0.0.1:*", keys=server, allowed_clients=[client_keys.public])
            bound = await tg.start(srv.serve, echo)
            async with connect(bound, server_key=impostor.public, keys=client_keys) as client:
                with pytest.raises(PeerUnreachableError), unreachable_after(0.3, peer="x"):
                    await client.request(b"hi")
            tg.cancel_scope.cancel()


async def test_plaintext_must_be_explicit() -> None:
    with pytest.raises(InvalidParameterError, match="plaintext"):
        PeerServer("tcp://127.0.0.1:*")
    with pytest.raises(InvalidParameterError):
        PeerServer("tcp://127.0.0.1:*", keys=keypair(), plaintext=True)
    with pytest.raises(InvalidParameterError):
        PeerServer("tcp://127.0.0.1:*", keys=keypair(), allowed_clients=["not a key"])
    with pytest.raises(InvalidParameterError, match="plaintext"):
        async with connect("tcp://127.0.0.1:1"):
            pass
    with pytest.raises(InvalidParameterError):
        async with connect("tcp://127.0.0.1:1", plaintext=True, keys=keypair()):
            pass


async def test_plaintext_server_refuses_curve_clients() -> None:
    server, client_keys = keypair(), keypair()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            bound = await tg.start(PeerServer("tcp://127.0.0.1:*", plaintext=True).serve, echo)
            async with connect(bound, server_key=server.public, keys=client_keys) as client:
                with pytest.raises(PeerUnreachableError), unreachable_after(0.3, peer="x"):
                    await client.request(b"hi")
            tg.cancel_scope.cancel()


# --- handler failures and malformed input ---------------------------------------------------


async def test_handler_failure_is_reported_and_the_server_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(identity: bytes, user_id: str | None, frame: bytes) -> bytes | None:
        if frame == b"boom":
            raise RuntimeError("handler bug")
        if frame == b"silence":
            return None
        return b"fine"

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            bound = await tg.start(PeerServer("tcp://127.0.0.1:*", plaintext=True).serve, handler)
            async with connect(bound, plaintext=True) as client:
                with pytest.raises(PeerRefusedError, match="failed to handle"):
                    await client.request(b"boom")
                with pytest.raises(PeerUnreachableError), unreachable_after(0.2, peer="x"):
                    await client.request(b"silence")
                assert await client.request(b"ok?") == b"fine"
            tg.cancel_scope.cancel()
    assert "handler failed" in caplog.text


async def codec_handler(identity: bytes, user_id: str | None, frame: bytes) -> bytes:
    """What a coordinator does: decode, and answer garbage with an ErrorReply."""
    try:
        message = codec.decode(frame)
    except ProtocolError as exc:
        return codec.encode(codec.error_reply_for(frame, exc, sender="server"))
    return codec.encode(message)


@pytest.fixture
async def codec_server() -> AsyncIterator[tuple[str, PeerClient]]:
    async with anyio.create_task_group() as tg:
        bound = await tg.start(PeerServer("tcp://127.0.0.1:*", plaintext=True).serve, codec_handler)
        async with connect(bound, plaintext=True) as client:
            yield bound, client
        tg.cancel_scope.cancel()


frames = st.one_of(
    st.lists(st.binary(max_size=64), max_size=5),  # any shape of envelope
    st.tuples(st.binary(min_size=8, max_size=8), st.binary(max_size=300)).map(list),  # good envelope, junk
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(parts=frames)
async def test_malformed_frames_never_crash_the_server(
    codec_server: tuple[str, PeerClient], parts: list[bytes]
) -> None:
    bound, good = codec_server
    raw: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    try:
        raw.connect(bound)
        if parts:
            raw.send_multipart(parts, zmq.NOBLOCK)
        # Whatever that was, the server still answers a proper request.
        query = codec.encode(codec.error_reply_for(b"", ProtocolError("ping"), sender="client"))
        with anyio.fail_after(5):
            reply = codec.decode(await good.request(query))
        assert reply == codec.decode(query)
    finally:
        raw.close(linger=0)


async def test_junk_payload_gets_an_error_reply(codec_server: tuple[str, PeerClient]) -> None:
    _, client = codec_server
    with anyio.fail_after(5):
        reply = codec.decode(await client.request(b"\xc1 not msgpack"))
    assert reply.code == "protocol"  # type: ignore[attr-defined]


# --- shutdown -------------------------------------------------------------------------------


async def test_stopping_the_server_with_requests_in_flight_does_not_hang() -> None:
    started = anyio.Event()

    async def slow(identity: bytes, user_id: str | None, frame: bytes) -> bytes:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            server_scope = anyio.CancelScope()

            async def run_server(*, task_status: anyio.abc.TaskStatus[str]) -> None:
                with server_scope:
                    await PeerServer("tcp://127.0.0.1:*", plaintext=True).serve(slow, task_status=task_status)

            bound = await tg.start(run_server)
            async with connect(bound, plaintext=True) as client, anyio.create_task_group() as waiting:

                async def ask() -> None:
                    with pytest.raises(PeerUnreachableError), unreachable_after(0.3, peer="x"):
                        await client.request(b"hang")

                waiting.start_soon(ask)
                await started.wait()
                server_scope.cancel()  # the server stops mid-request
            tg.cancel_scope.cancel()


async def test_closing_the_client_with_requests_waiting_does_not_hang() -> None:
    received = anyio.Event()

    async def never(identity: bytes, user_id: str | None, frame: bytes) -> bytes | None:
        received.set()
        await anyio.sleep_forever()
        return None

    outcome: list[BaseException] = []

    async def ask(client: PeerClient) -> None:
        try:
            await client.request(b"waiting")  # no deadline: only closing can end it
        except PeerUnreachableError as exc:
            outcome.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            bound = await tg.start(PeerServer("tcp://127.0.0.1:*", plaintext=True).serve, never)
            async with anyio.create_task_group() as askers, connect(bound, plaintext=True) as client:
                # The asker lives in a task group that outlives the client.
                askers.start_soon(ask, client)
                await received.wait()
            assert [str(e) for e in outcome] == [f"connection to {bound} closed before the reply"]
            with pytest.raises(PeerUnreachableError, match="closed"):
                await client.request(b"after close")
            tg.cancel_scope.cancel()


async def test_client_to_nobody_times_out_and_closes() -> None:
    # Nothing listens here: the send never completes, the deadline covers it.
    with anyio.fail_after(10):
        async with connect("tcp://127.0.0.1:9", plaintext=True) as client:
            with pytest.raises(PeerUnreachableError), unreachable_after(0.2, peer="nobody"):
                await client.request(b"anyone?")


async def test_errors_in_the_client_body_are_not_wrapped() -> None:
    with pytest.raises(KeyError):
        async with connect("tcp://127.0.0.1:9", plaintext=True):
            raise KeyError("mine")


async def test_late_replies_are_ignored() -> None:
    release = anyio.Event()

    async def handler(identity: bytes, user_id: str | None, frame: bytes) -> bytes:
        if frame == b"slow":
            await release.wait()
        return frame

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            bound = await tg.start(PeerServer("tcp://127.0.0.1:*", plaintext=True).serve, handler)
            async with connect(bound, plaintext=True) as client:
                with anyio.move_on_after(0.1):
                    await client.request(b"slow")
                release.set()  # the answer now comes back to nobody
                assert await client.request(b"next") == b"next"
            tg.cancel_scope.cancel()


# --- keys -------------------------------------------------------------------------------------


def test_generated_keys_are_z85_and_pair_up() -> None:
    public, secret = generate_keypair()
    assert len(public) == len(secret) == 40
    pair = KeyPair(public, secret)
    assert secret not in repr(pair)
    with pytest.raises(InvalidParameterError, match="does not belong"):
        KeyPair(generate_keypair()[0], secret)
    with pytest.raises(InvalidParameterError):
        KeyPair("short", secret)


def test_key_file_round_trip_and_permissions(tmp_path: Path) -> None:
    pair = keypair()
    path = tmp_path / "host.key"
    save_keypair(path, pair)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keypair(path) == pair
    text = path.read_text()
    assert pair.public in text
    save_keypair(path, keypair())  # replaces atomically
    assert load_keypair(path) != pair
    assert [p.name for p in tmp_path.iterdir()] == ["host.key"]


def test_key_file_problems_are_config_errors_without_the_secret(tmp_path: Path) -> None:
    pair = keypair()
    path = tmp_path / "host.key"
    save_keypair(path, pair)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="0644") as err:
        load_keypair(path)
    assert pair.secret not in str(err.value)

    other = keypair()
    path.write_text(f'public-key = "{other.public}"\nsecret-key = "{pair.secret}"\n')
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="does not belong") as err:
        load_keypair(path)
    assert pair.secret not in str(err.value)

    path.write_text("not = [toml")
    with pytest.raises(ConfigError, match="not a key file"):
        load_keypair(path)
    path.write_text(f'public-key = "{pair.public}"\n')
    with pytest.raises(ConfigError, match="secret-key"):
        load_keypair(path)
    with pytest.raises(ConfigError, match="cannot open"):
        load_keypair(tmp_path / "absent.key")


def test_only_the_transport_module_imports_zmq() -> None:
    root = Path(__file__).resolve().parent.parent / "actorlock"
    importers = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if any(line.startswith(("import zmq", "from zmq")) for line in p.read_text().splitlines())
    )
    assert importers == ["transport/zmq.py"]
