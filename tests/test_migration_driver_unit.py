"""The migration driver on its own: a real destination machine, a fake host and a fake peer.

No host coordinator and no socket: the driver is fed a PREPARE as the peer
service would, reads records from a fake lease store, and sends its COMMIT
to a fake peer client that answers as the source would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import pytest

from actorlock.actors.messages import MigrationSettled
from actorlock.actors.migration import MigrationDriver
from actorlock.errors import ActorlockError, MigrationError, PeerRefusedError, PeerUnreachableError
from actorlock.model import (
    DomainIdentity,
    Holder,
    HostIdentity,
    Lease,
    LeaseMode,
    LeaseOwner,
    LeaseRecord,
    LockState,
    MigrationRole,
)
from actorlock.protocol import (
    Call,
    Commit,
    CommitReply,
    IllegalEventError,
    MigrationDestination,
    MigrationSource,
    Outcome,
    Prepare,
    PrepareReply,
    Request,
    Response,
    Timing,
)

from .fakes import FakePeerClient

pytestmark = pytest.mark.anyio

VM = DomainIdentity("5f0c2b1e-0000-4000-8000-0000000000b2", "vm2")
SOURCE = LeaseOwner("a", 1, VM.uuid, VM.name)
DESTINATION = LeaseOwner("b", 2, VM.uuid, VM.name)
OFFERED = LockState((Lease("disk:/d/root.img", LeaseMode.EXCLUSIVE, 4),))
MOVED = LockState((Lease("disk:/d/root.img", LeaseMode.EXCLUSIVE, 5),))
TIMING = Timing(retry_interval=0.05, prepare_timeout=2.0, transfer_margin=0.5)


class FakeMigrationHost:
    """Records held by the source until it commits, then by us; what the driver settles and when it ends."""

    def __init__(self) -> None:
        self.client = FakePeerClient(self.source_answers)
        self.settled: list[MigrationSettled] = []
        self.ended: list[MigrationDriver] = []
        self.holder, self.held, self.incarnation = SOURCE, OFFERED, ""

    def source_answers(self, request: Request) -> Response | None:
        """The source commits: the records name us from now on, with the new tokens."""
        if isinstance(request, Commit):
            self.holder, self.held, self.incarnation = DESTINATION, MOVED, request.incarnation
            return CommitReply(
                migration_id=request.migration_id,
                sender="a",
                seq=request.seq,
                deadline_remaining=5.0,
                outcome=Outcome.COMMITTED,
                lock_state=MOVED,
            )
        return None

    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]:
        holder = self.holder
        return [
            LeaseRecord(lease.key, lease.token, (Holder(holder, lease.mode, lease.token, self.incarnation),))
            for lease in self.held.leases
        ]

    async def transfer(self, *args: Any) -> tuple[Lease, ...]:
        raise AssertionError("the destination never transfers")

    def peer_connect(self, endpoint: str, server_key: str) -> AbstractAsyncContextManager[Any]:
        @asynccontextmanager
        async def connection() -> AsyncIterator[FakePeerClient]:
            yield self.client

        return connection()

    async def domain_settled(self, uuid: str, settled: MigrationSettled) -> None:
        self.settled.append(settled)

    def migration_ended(self, driver: Any) -> None:
        self.ended.append(driver)


def destination(host: FakeMigrationHost) -> MigrationDriver:
    machine = MigrationDestination(
        migration_id="m1",
        local=HostIdentity("b", 2),
        incarnation="inc-b",
        lockspace_kind="fake",
        lockspace_id="space",
        timing=TIMING,
    )
    return driver_for(host, machine)


def driver_for(host: FakeMigrationHost, machine: Any, **options: Any) -> MigrationDriver:
    return MigrationDriver(
        host,
        machine,
        peer_endpoint="tcp://127.0.0.1:1",
        peer_key="",
        domain_uuid=VM.uuid,
        request_timeout=1.0,
        io_timeout=1.0,
        **options,
    )


@asynccontextmanager
async def running_destination() -> AsyncIterator[tuple[FakeMigrationHost, MigrationDriver]]:
    """A destination driver on its task, against a source that commits; stopped when the block ends."""
    host = FakeMigrationHost()
    driver = destination(host)
    async with anyio.create_task_group() as tg:
        await tg.start(driver.run)
        yield host, driver
        tg.cancel_scope.cancel()
    assert host.ended == [driver], "the driver told its host it ended"


def prepare() -> Prepare:
    return Prepare(
        migration_id="m1",
        sender="a",
        seq=1,
        deadline_remaining=5.0,
        domain=VM,
        source_host_id=1,
        lockspace_kind="fake",
        lockspace_id="space",
        lock_state=OFFERED,
    )


async def test_a_prepare_is_verified_against_the_records_and_answered() -> None:
    async with running_destination() as (_host, driver):
        with anyio.fail_after(5):
            reply = await driver.request(prepare())
        assert isinstance(reply, PrepareReply)
        assert (reply.host_id, reply.incarnation) == (2, "inc-b")
        assert driver.offered == OFFERED
        assert not driver.finished


async def test_two_commit_callers_both_hear_the_one_outcome() -> None:
    async with running_destination() as (host, driver):
        with anyio.fail_after(5):
            await driver.request(prepare())
            first = await driver.complete(commit=True)
            second = await driver.complete(commit=True)
            answers = [await first.wait(), await second.wait()]
        assert [a.outcome for a in answers] == [Outcome.COMMITTED, Outcome.COMMITTED]
        commits = [r for r in host.client.requests if isinstance(r, Commit)]
        assert len(commits) == 1, "the second caller joined the first instead of reaching the machine"
    assert [(s.role, s.outcome, s.lock_state) for s in host.settled] == [
        (MigrationRole.DESTINATION, Outcome.COMMITTED, MOVED)
    ], "the outcome is recorded once, before the callers hear it"


async def test_a_commit_of_a_migration_never_prepared_is_refused_and_the_driver_goes_on() -> None:
    async with running_destination() as (_host, driver):
        with anyio.fail_after(5):
            early = await driver.complete(commit=True)
            with pytest.raises(IllegalEventError, match="commit-call in state idle"):
                await early.wait()
            reply = await driver.request(prepare())
        assert isinstance(reply, PrepareReply), "the refused call left the machine as it was"


async def test_a_driver_that_ended_fails_its_late_callers_with_migration_error() -> None:
    async with running_destination() as (_host, driver):
        pass
    late = await driver.complete(commit=True)
    with pytest.raises(MigrationError, match="has ended"):
        await late.wait()


# -- the source's check of the destination's PREPARE reply ---------------------------

SHORT = Timing(retry_interval=0.02, prepare_timeout=0.3, transfer_margin=0.1)


class FakeDestinationHost(FakeMigrationHost):
    """A source's host whose peer answers every PREPARE as incarnation ``answering``."""

    def __init__(self, answering: str) -> None:
        super().__init__()
        self.client = FakePeerClient(self.destination_answers)
        self.answering = answering

    def destination_answers(self, request: Request) -> Response | None:
        if isinstance(request, Prepare):
            return PrepareReply(
                migration_id=request.migration_id,
                sender="b",
                seq=request.seq,
                deadline_remaining=5.0,
                host_id=2,
                incarnation=self.answering,
            )
        return None

    async def transfer(self, *args: Any) -> tuple[Lease, ...]:
        raise AssertionError("nothing may be transferred to an unconfirmed incarnation")


async def prepared_source(host: FakeDestinationHost, alive: str) -> BaseException | None:
    """Run a source driver whose records show incarnation ``alive`` of host b; how PREPARE ended."""

    async def confirm(reply: PrepareReply) -> None:
        if reply.incarnation != alive:
            raise PeerRefusedError(f"incarnation {reply.incarnation} is not alive")

    machine = MigrationSource(
        migration_id="m2",
        local=HostIdentity("a", 1),
        peer="b",
        domain=VM,
        lockspace_kind="fake",
        lockspace_id="space",
        lock_state=OFFERED,
        timing=SHORT,
    )
    driver = driver_for(host, machine, confirm=confirm)

    def start(m: Any, now: float) -> Any:
        return m.start(now=now, deadline_at=now + 2.0)

    failure: BaseException | None = None
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(driver.run)
            result = await driver.call(Call.PREPARE, start)
            try:
                await result.wait()
            except ActorlockError as exc:
                failure = exc
            tg.cancel_scope.cancel()
    return failure


async def test_a_prepare_reply_from_the_alive_incarnation_prepares() -> None:
    host = FakeDestinationHost(answering="inc-b2")
    assert await prepared_source(host, alive="inc-b2") is None
    assert len([r for r in host.client.requests if isinstance(r, Prepare)]) == 1


async def test_a_prepare_reply_from_an_unconfirmed_incarnation_counts_as_no_answer() -> None:
    host = FakeDestinationHost(answering="inc-b1")
    failure = await prepared_source(host, alive="inc-b2")
    assert isinstance(failure, PeerUnreachableError), failure
    assert "no answer from b to PREPARE" in str(failure)
    prepares = [r for r in host.client.requests if isinstance(r, Prepare)]
    assert len(prepares) > 1, "each unconfirmed reply was treated as no answer and PREPARE sent again"
