"""The domain actor on its own, against fakes of its ports (no host, no backend, no sockets).

Each test puts one of the actor's I/O calls (acquire, state save, peer
lookup) at a chosen point of its timeline and checks what the actor holds,
publishes for the fence, and persists.
"""

from __future__ import annotations

import anyio
import pytest

import actorlock
from actorlock.actors.fencing import FenceTarget
from actorlock.actors.messages import (
    AcquireObject,
    AcquireResource,
    CompleteMigration,
    DomainStatus,
    MigrationSettled,
    PrepareMigrate,
    ReleaseAll,
    ReleaseResource,
    Shutdown,
)
from actorlock.actors.phases import TRANSITIONS, Move, next_phase
from actorlock.errors import (
    BackendTimeoutError,
    InvalidStateError,
    LeaseLostError,
    LockspaceLostError,
    NotSupportedError,
)
from actorlock.model import DomainIdentity, Lease, LeaseMode, LockState, MigrationRole
from actorlock.protocol import Outcome
from actorlock.statestore import DomainPhase, DomainState

from .fakes import FakeHandle, FakeHost, FakeLeases, running_domain

pytestmark = pytest.mark.anyio

VM = DomainIdentity("9d1e0f3a-0000-4000-8000-0000000000a1", "vm1")
ROOT, DATA = actorlock.disk("/d/root.img"), actorlock.disk("/d/data.img")


async def start(ref: object, *resources: actorlock.Resource) -> DomainStatus:
    status = await ref.ask(AcquireObject(tuple(resources)))  # type: ignore[attr-defined]
    assert isinstance(status, DomainStatus)
    return status


async def test_a_start_publishes_its_fence_target_before_the_first_lease_request() -> None:
    host = FakeHost()
    published_during_acquire: list[FenceTarget | None] = []
    host.leases.during_acquire = lambda: published_during_acquire.append(host.fences.current(VM.uuid))
    async with running_domain(host, VM) as (ref, _actor):
        status = await start(ref, ROOT, DATA)
    assert status.phase is DomainPhase.RUNNING
    target = published_during_acquire[0]
    assert target is not None
    assert set(target.keys) == {ROOT.key, DATA.key}
    assert host.store.saved[VM.uuid].phase is DomainPhase.RUNNING
    assert {lease.key for lease in host.store.saved[VM.uuid].leases} == {ROOT.key, DATA.key}


async def test_a_loss_during_the_acquisition_ends_lost_with_the_target_still_published() -> None:
    host = FakeHost()

    def lose() -> None:
        host.leases.losses += 1
        host.leases.live = False

    host.leases.during_acquire = lose
    async with running_domain(host, VM) as (ref, actor):
        with pytest.raises(LeaseLostError):
            await start(ref, ROOT)
        assert actor.phase is DomainPhase.LOST
    assert host.fences.current(VM.uuid) is not None, "the loss must fence this guest"
    assert host.store.saved[VM.uuid].phase is DomainPhase.LOST
    assert [event.kind for event in host.events] == ["leases_lost"]


async def test_a_state_save_past_io_timeout_fails_the_start_and_gives_the_leases_back() -> None:
    host = FakeHost(io_timeout=0.2)
    host.store.stall = anyio.Event()  # never set: the state_dir hangs
    async with running_domain(host, VM) as (ref, actor):
        with pytest.raises(BackendTimeoutError):
            await start(ref, ROOT)
        assert actor.phase is DomainPhase.UNDEFINED
        assert actor.leases == {}
    assert host.leases.held == {}
    assert host.leases.calls == [("acquire", (ROOT.key,)), ("release", (ROOT.key,))]
    assert host.fences.current(VM.uuid) is None


async def test_an_acquisition_stuck_past_io_timeout_is_undone_and_reported() -> None:
    host = FakeHost(io_timeout=0.2)
    host.leases.stall_acquire = anyio.Event()
    async with running_domain(host, VM) as (ref, _actor):
        with pytest.raises(BackendTimeoutError):
            await start(ref, ROOT)
    assert host.leases.calls[-1] == ("release", (ROOT.key,))
    assert host.fences.current(VM.uuid) is None
    assert VM.uuid not in host.store.saved


async def test_hotplug_needs_backend_support_and_a_registered_guest() -> None:
    host = FakeHost(leases=FakeLeases(hotplug=False))
    async with running_domain(host, VM) as (ref, _actor):
        await start(ref, ROOT)
        with pytest.raises(NotSupportedError, match="hotplug"):
            await ref.ask(AcquireResource(DATA))
    host = FakeHost()
    async with running_domain(host, VM) as (ref, _actor):
        with pytest.raises(InvalidStateError, match="nothing is registered"):
            await ref.ask(AcquireResource(DATA))
        await start(ref, ROOT)
        status = await ref.ask(AcquireResource(DATA))
        assert {lease.key for lease in status.leases} == {ROOT.key, DATA.key}
        status = await ref.ask(ReleaseResource(DATA))
        assert {lease.key for lease in status.leases} == {ROOT.key}


@pytest.mark.parametrize("phase", [DomainPhase.MIGRATED, DomainPhase.LOST])
async def test_no_hotplug_into_a_guest_that_migrated_away_or_lost_its_leases(phase: DomainPhase) -> None:
    host = FakeHost()
    state = DomainState(VM, phase, resources=(ROOT,))
    async with running_domain(host, VM, state) as (ref, _actor):
        with pytest.raises(InvalidStateError, match=f"is {phase.value}"):
            await ref.ask(AcquireResource(DATA))
    assert host.leases.calls == [], "refused before any lease I/O"


async def test_a_lost_guest_must_be_shut_down_before_it_starts_again() -> None:
    host = FakeHost()
    lease = Lease(ROOT.key, LeaseMode.EXCLUSIVE, 7)
    state = DomainState(VM, DomainPhase.LOST, resources=(ROOT,), leases=(lease,))
    async with running_domain(host, VM, state) as (ref, actor):
        with pytest.raises(InvalidStateError, match="shut it down first"):
            await start(ref, ROOT)
        await ref.ask(Shutdown())
        assert actor.phase is DomainPhase.STOPPED
    assert host.stopped == [VM.uuid], "the actor's task ended and told its registry"
    assert VM.uuid not in host.store.saved


async def test_pause_gives_every_lease_back_and_returns_the_state_to_resume_with() -> None:
    host = FakeHost()
    async with running_domain(host, VM) as (ref, actor):
        await start(ref, ROOT, DATA)
        state = await ref.ask(ReleaseAll(save_state=True))
        assert isinstance(state, LockState)
        assert {lease.key for lease in state.leases} == {ROOT.key, DATA.key}
        assert actor.phase is DomainPhase.PAUSED
        assert host.leases.held == {}
        assert host.fences.current(VM.uuid) is None
        resumed = await ref.ask(AcquireObject((ROOT, DATA), state=state))
        assert resumed.phase is DomainPhase.RUNNING


async def test_prepare_migration_is_refused_when_the_lookup_outlives_the_lease() -> None:
    host = FakeHost()

    def expire() -> None:
        host.leases.live = False

    host.migrations.resolving = expire
    async with running_domain(host, VM) as (ref, _actor):
        await start(ref, ROOT)
        with pytest.raises(LockspaceLostError):
            await ref.ask(PrepareMigrate("tcp://127.0.0.1:1"))
    assert host.migrations.started == [], "nothing was offered to the peer"


async def test_a_domain_that_migrated_out_and_back_routes_the_commit_to_the_new_incoming_migration() -> None:
    host = FakeHost()
    async with running_domain(host, VM) as (ref, actor):
        await start(ref, ROOT)
        await ref.ask(PrepareMigrate("tcp://127.0.0.1:1"))
        outgoing = host.migrations.started[0]
        outgoing.finished = True
        await ref.ask(MigrationSettled(outgoing.migration_id, MigrationRole.SOURCE, Outcome.COMMITTED, None))
        assert actor.phase is DomainPhase.MIGRATED
        assert host.fences.current(VM.uuid) is None, "the leases left with the guest"
        incoming = FakeHandle("in-1", host.migrations.new_serial())
        host.migrations.incoming = incoming
        await ref.ask(CompleteMigration(commit=True, resources=(ROOT,)))
    assert incoming.completes == [True]
    assert outgoing.completes == []


async def test_a_committed_incoming_migration_is_recorded_whatever_the_phase() -> None:
    host = FakeHost()
    moved = LockState((Lease(ROOT.key, LeaseMode.EXCLUSIVE, 9),))
    async with running_domain(host, VM) as (ref, actor):
        await ref.ask(MigrationSettled("m1", MigrationRole.DESTINATION, Outcome.COMMITTED, moved))
        assert actor.phase is DomainPhase.RUNNING
    assert host.store.saved[VM.uuid].leases == moved.leases
    target = host.fences.current(VM.uuid)
    assert target is not None
    assert target.keys == (ROOT.key,)


def test_the_phase_table_refuses_what_the_lifecycle_forbids_and_names_the_phase() -> None:
    for phase in (DomainPhase.MIGRATED, DomainPhase.STOPPED, DomainPhase.UNDEFINED, DomainPhase.LOST):
        with pytest.raises(InvalidStateError, match=f"vm is {phase.value}: cannot hotplug"):
            next_phase("vm", phase, Move.HOTPLUG)
    assert next_phase("vm", DomainPhase.RUNNING, Move.PAUSE) is DomainPhase.PAUSED
    for phase in DomainPhase:
        assert next_phase("vm", phase, Move.SHUTDOWN) is DomainPhase.STOPPED
    # Only a running guest pauses, migrates out or loses its leases.
    for move in (Move.PAUSE, Move.PREPARE_MIGRATION, Move.LOSE):
        assert {phase for phase, m in TRANSITIONS if m is move} == {DomainPhase.RUNNING}
