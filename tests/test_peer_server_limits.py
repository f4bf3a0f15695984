"""The peer server under a flood: one peer's requests in flight are bounded (issue 10)."""

from __future__ import annotations

import anyio
import pytest

from actorlock.transport.zmq import PeerClient, PeerServer, connect, unreachable_after

pytestmark = pytest.mark.anyio


async def test_one_peer_cannot_have_more_requests_in_flight_than_its_share() -> None:
    release = anyio.Event()
    handled: list[bytes] = []

    async def handler(identity: bytes, user_id: str | None, frame: bytes) -> bytes:
        if frame.startswith(b"slow"):
            handled.append(frame)
            await release.wait()
        return b"ok:" + frame

    server = PeerServer("tcp://127.0.0.1:*", plaintext=True, max_in_flight_per_peer=3)
    answers: list[bytes] = []

    async def one(client: PeerClient, frame: bytes) -> None:
        with unreachable_after(10.0, peer="server"):
            answers.append(await client.request(frame))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            bound = await tg.start(server.serve, handler)
            async with (
                connect(bound, plaintext=True) as greedy,
                connect(bound, plaintext=True) as other,
                anyio.create_task_group() as requests,
            ):
                for i in range(10):
                    requests.start_soon(one, greedy, b"slow%d" % i)
                # Bounded waits for the server to have seen all ten (3 taken, 7 dropped).
                while server.dropped < 7 or len(handled) < 3:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                # Another peer is still served while the greedy one holds its share.
                assert await other.request(b"fast") == b"ok:fast"
                release.set()
                while len(answers) < 3:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                # The dropped requests are never answered: their callers give up.
                requests.cancel_scope.cancel()
            tg.cancel_scope.cancel()
    assert len(handled) == 3
    assert sorted(answers) == sorted(b"ok:" + f for f in handled)
    assert server.dropped == 7


def test_the_allow_list_remembers_few_refused_keys_and_logs_at_a_bounded_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from actorlock.transport import zmq as transport
    from actorlock.transport.zmq import generate_keypair

    now = [0.0]
    good = generate_keypair()[0]
    allow = transport._AllowList([good], clock=lambda: now[0])
    strangers = [generate_keypair()[0] for _ in range(50)]
    with caplog.at_level(logging.DEBUG, logger="actorlock.transport.zmq"):
        # Many distinct keys (an attacker may make up a fresh one per attempt).
        for i in range(20_000):
            assert not allow.callback("actorlock", b"%040d" % i)
        for key in strangers * 3:
            assert not allow.callback("actorlock", key.encode())
        assert allow.callback("actorlock", good.encode())
        first = [r for r in caplog.records if r.levelno >= logging.WARNING]
        now[0] += 3600.0  # an hour later the log speaks again, and says how much it kept back
        assert not allow.callback("actorlock", generate_keypair()[0].encode())
        later = [r for r in caplog.records if r.levelno >= logging.WARNING][len(first) :]
    assert allow.remembered() <= transport._AllowList.REMEMBERED
    assert 1 <= len(first) <= transport._AllowList.LOG_BURST
    assert len(later) == 1
    assert "more refused" in later[0].getMessage()
