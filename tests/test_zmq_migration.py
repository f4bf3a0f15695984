"""A migration end to end: the machines, the codec and CURVE zmq between two toy hosts.

``ToyHost`` plays the domain actor in the smallest honest way: it carries
out effects, runs timers as tasks, sends requests with a deadline and feeds
answers and failures back. The lockspace is the protocol's model backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import attrs
import pytest

from actorlock._verify.pair import ModelBackend
from actorlock.errors import PeerError, PeerUnreachableError
from actorlock.model import DomainIdentity, Holder, HostIdentity, Lease, LeaseMode, LeaseRecord, LockState
from actorlock.protocol import (
    ArmTimer,
    Call,
    CancelTimer,
    CompleteCaller,
    Discard,
    DropPending,
    Effect,
    MigrationDestination,
    MigrationRefusedError,
    MigrationSource,
    Outcome,
    Prepare,
    QueryBackend,
    Reply,
    Request,
    Response,
    SendToPeer,
    Side,
    Timer,
    Timing,
    TransferLeases,
    VerifyLeases,
    lease_owner,
)
from actorlock.transport import codec
from actorlock.transport.zmq import (
    KeyPair,
    PeerClient,
    PeerServer,
    connect,
    generate_keypair,
    unreachable_after,
)

pytestmark = pytest.mark.anyio

DOMAIN = DomainIdentity("9d1c-vm", "vm9")
TIMING = Timing(retry_interval=0.05, prepare_timeout=1.0, transfer_margin=0.5)


@attrs.define
class _Waiting:
    done: anyio.Event = attrs.Factory(anyio.Event)
    reply: Response | None = None


class ToyHost:
    def __init__(self, identity: HostIdentity, backend: ModelBackend, tg: anyio.abc.TaskGroup) -> None:
        self.identity = identity
        self.backend = backend
        self.tg = tg
        self.keys = KeyPair(*generate_keypair())
        self.machine: MigrationSource | MigrationDestination | None = None
        self.client: PeerClient | None = None
        self.peer_key = ""
        self.timers: dict[Timer, anyio.CancelScope] = {}
        self.waiting: dict[int, list[_Waiting]] = {}
        self.answers: list[CompleteCaller] = []
        self.answered = anyio.Event()

    async def handle(self, identity: bytes, user_id: str | None, frame: bytes) -> bytes | None:
        assert user_id == self.peer_key, "only the authenticated peer gets here"
        message = codec.decode(frame)
        assert isinstance(message, Request)
        if self.machine is None and isinstance(message, Prepare):
            self.machine = MigrationDestination(
                migration_id=message.migration_id,
                local=self.identity,
                incarnation="inc-" + self.identity.name,
                lockspace_kind="memory",
                lockspace_id="shared",
                timing=TIMING,
            )
        assert self.machine is not None
        slot = _Waiting()
        self.waiting.setdefault(message.seq, []).append(slot)
        self.run(self.machine.receive(message, now=anyio.current_time()))
        with anyio.move_on_after(message.deadline_remaining or 1.0):
            await slot.done.wait()
        return codec.encode(slot.reply) if slot.reply is not None else None

    def run(self, effects: list[Effect]) -> None:
        machine = self.machine
        assert machine is not None
        now = anyio.current_time()
        for effect in effects:
            match effect:
                case SendToPeer(message=message):
                    self.tg.start_soon(self.send, message)
                case Reply(message=message):
                    for slot in self.waiting.pop(message.seq, []):
                        slot.reply = message
                        slot.done.set()
                case ArmTimer(timer=timer, at=at):
                    self._disarm(timer)
                    self.timers[timer] = scope = anyio.CancelScope()
                    self.tg.start_soon(self.fire, timer, at, scope)
                case CancelTimer(timer=timer):
                    self._disarm(timer)
                case VerifyLeases():
                    assert isinstance(machine, MigrationDestination)
                    self.run(machine.verify_done(self.backend.verify(effect), now=now))
                case TransferLeases():
                    assert isinstance(machine, MigrationSource)
                    self.run(machine.transfer_done(self.backend.transfer(effect), now=now))
                case QueryBackend():
                    self.run(machine.query_done(self.backend.query(effect), now=now))
                case CompleteCaller():
                    self.answers.append(effect)
                    self.answered.set()
                    self.answered = anyio.Event()
                case DropPending() | Discard():
                    pass

    def _disarm(self, timer: Timer) -> None:
        scope = self.timers.pop(timer, None)
        if scope is not None:
            scope.cancel()

    async def fire(self, timer: Timer, at: float, scope: anyio.CancelScope) -> None:
        with scope:
            await anyio.sleep_until(at)
            if self.timers.get(timer) is scope:
                del self.timers[timer]
                assert self.machine is not None
                self.run(self.machine.timer_fired(timer, now=anyio.current_time()))

    async def send(self, message: Request) -> None:
        assert self.machine is not None
        assert self.client is not None
        try:
            with unreachable_after(0.3, peer="peer"):
                reply = codec.decode(await self.client.request(codec.encode(message)))
        except PeerError as exc:
            self.run(self.machine.io_failed(message, exc, now=anyio.current_time()))
        else:
            self.run(self.machine.receive(reply, now=anyio.current_time()))

    async def answer(self, call: Call) -> CompleteCaller:
        with anyio.fail_after(10):
            while True:
                for answer in self.answers:
                    if answer.call is call:
                        return answer
                await self.answered.wait()


def source_of(host: ToyHost) -> MigrationSource:
    assert isinstance(host.machine, MigrationSource)
    return host.machine


@asynccontextmanager
async def two_hosts(*, dest_up: bool = True) -> AsyncIterator[tuple[ToyHost, ToyHost, ModelBackend]]:
    src_id, dst_id = HostIdentity("src", 1), HostIdentity("dst", 2)
    owner = lease_owner(src_id, DOMAIN)
    keys = ["disk:/img/a", "disk:/img/b"]
    backend = ModelBackend(
        {k: LeaseRecord(k, 3, (Holder(owner, LeaseMode.EXCLUSIVE, 3, "i"),)) for k in keys}
    )
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            src, dst = ToyHost(src_id, backend, tg), ToyHost(dst_id, backend, tg)
            src.peer_key, dst.peer_key = dst.keys.public, src.keys.public
            endpoints = {}
            for host in (src, dst) if dest_up else (src,):
                server = PeerServer("tcp://127.0.0.1:*", keys=host.keys, allowed_clients=[host.peer_key])
                endpoints[host.identity.name] = await tg.start(server.serve, host.handle)
            dst_endpoint = endpoints.get("dst", "tcp://127.0.0.1:9")
            async with (
                connect(dst_endpoint, server_key=dst.keys.public, keys=src.keys) as to_dst,
                connect(endpoints["src"], server_key=src.keys.public, keys=dst.keys) as to_src,
            ):
                src.client, dst.client = to_dst, to_src
                src.machine = MigrationSource(
                    migration_id="m-42",
                    local=src_id,
                    peer="dst",
                    domain=DOMAIN,
                    lockspace_kind="memory",
                    lockspace_id="shared",
                    lock_state=LockState.of(Lease(k, LeaseMode.EXCLUSIVE, 3) for k in keys),
                    timing=TIMING,
                )
                yield src, dst, backend
            tg.cancel_scope.cancel()


async def test_migration_commits_over_curve() -> None:
    async with two_hosts() as (src, dst, backend):
        src.run(source_of(src).start(now=anyio.current_time(), deadline_at=anyio.current_time() + 5))
        prepared = await src.answer(Call.PREPARE)
        assert prepared.error is None
        assert dst.machine is not None
        dst.run(dst.machine.commit_requested(now=anyio.current_time()))
        src.run(source_of(src).commit_requested(now=anyio.current_time()))
        for host in (src, dst):
            answer = await host.answer(Call.COMPLETE)
            assert answer.outcome is Outcome.COMMITTED
            assert answer.error is None
        assert (
            backend.side(lease_owner(src.identity, DOMAIN), lease_owner(dst.identity, DOMAIN))
            is Side.DESTINATION
        )


async def test_refusal_travels_back_as_a_coded_error() -> None:
    async with two_hosts() as (src, _dst, backend):
        # The source re-acquired disk b since it saved its lock state: the offer is stale.
        (holder,) = backend.records["disk:/img/b"].holders
        backend.records["disk:/img/b"] = LeaseRecord("disk:/img/b", 4, (attrs.evolve(holder, token=4),))
        src.run(source_of(src).start(now=anyio.current_time(), deadline_at=anyio.current_time() + 5))
        prepared = await src.answer(Call.PREPARE)
        assert isinstance(prepared.error, MigrationRefusedError)
        assert prepared.error.remote_code == "stale-state"


async def test_absent_destination_fails_prepare_in_time() -> None:
    async with two_hosts(dest_up=False) as (src, _dst, _backend):
        t0 = anyio.current_time()
        src.run(source_of(src).start(now=t0, deadline_at=t0 + 5))
        prepared = await src.answer(Call.PREPARE)
        assert isinstance(prepared.error, PeerUnreachableError)
        assert anyio.current_time() - t0 < TIMING.prepare_timeout + 0.5
