"""Every (state, event) pair of both machines: table transitions, and illegal events changing nothing."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from actorlock.errors import BackendError
from actorlock.model import DomainIdentity, HostIdentity, Lease, LeaseMode, LockState
from actorlock.protocol import (
    DESTINATION_TRANSITIONS,
    SOURCE_TRANSITIONS,
    Cancel,
    Commit,
    CommitReply,
    DestinationState,
    Discard,
    ErrorReply,
    Event,
    IllegalEventError,
    MigrationDestination,
    MigrationSource,
    Outcome,
    Ownership,
    Prepare,
    PrepareReply,
    Refuse,
    Reply,
    Side,
    SourceState,
    Timer,
    Timing,
    lease_owner,
)

SRC = HostIdentity("src", 1)
DST = HostIdentity("dst", 2)
DOMAIN = DomainIdentity("uuid-1", "vm1")
LEASES = LockState.of([Lease("disk:/a", LeaseMode.EXCLUSIVE, 3), Lease("disk:/b", LeaseMode.SHARED, 5)])
MOVED = LockState.of([Lease("disk:/a", LeaseMode.EXCLUSIVE, 4), Lease("disk:/b", LeaseMode.SHARED, 6)])
TIMING = Timing(retry_interval=0.1, prepare_timeout=2.0, transfer_margin=1.0, max_pending=100.0)
MID = "mig-1"


def source() -> MigrationSource:
    return MigrationSource(
        migration_id=MID,
        local=SRC,
        peer=DST.name,
        domain=DOMAIN,
        lockspace_kind="memory",
        lockspace_id="ls",
        lock_state=LEASES,
        timing=TIMING,
    )


def destination() -> MigrationDestination:
    return MigrationDestination(
        migration_id=MID,
        local=DST,
        incarnation="inc-d",
        lockspace_kind="memory",
        lockspace_id="ls",
        timing=TIMING,
    )


def env(sender: str, seq: int, **fields: Any) -> dict[str, Any]:
    return {"migration_id": MID, "sender": sender, "seq": seq, "deadline_remaining": 5.0, **fields}


def prepare(**over: Any) -> Prepare:
    fields = env(
        SRC.name,
        1,
        domain=DOMAIN,
        source_host_id=SRC.id,
        lockspace_kind="memory",
        lockspace_id="ls",
        lock_state=LEASES,
    )
    fields.update(over)
    return Prepare(**fields)


def commit(seq: int = 1) -> Commit:
    return Commit(**env(DST.name, seq, host_id=DST.id, incarnation="inc-d"))


def cancel_from(sender: str, seq: int = 2) -> Cancel:
    return Cancel(**env(sender, seq, reason="test"))


# --- builders: a machine in each state --------------------------------------


def src_in(state: SourceState) -> MigrationSource:
    m = source()
    if state is SourceState.IDLE:
        return m
    m.start(now=0.0, deadline_at=10.0)
    steps: dict[SourceState, Callable[[MigrationSource], object]] = {
        SourceState.PREPARING: lambda m: None,
        SourceState.PREPARED: lambda m: m.receive(
            PrepareReply(**env(DST.name, 1, host_id=DST.id, incarnation="inc-d")), now=0.1
        ),
        SourceState.REFUSED: lambda m: m.receive(Refuse(**env(DST.name, 1, code="x", message="no")), now=0.1),
    }
    if state in steps:
        steps[state](m)
        return m
    m.receive(PrepareReply(**env(DST.name, 1, host_id=DST.id, incarnation="inc-d")), now=0.1)
    if state is SourceState.LOCAL_AGREED:
        m.commit_requested(now=0.2)
        return m
    if state is SourceState.CANCELLED:
        m.cancel_requested(now=0.2)
        return m
    m.receive(commit(), now=0.2)
    if state is SourceState.PEER_AGREED:
        return m
    m.commit_requested(now=0.3)
    if state is SourceState.TRANSFERRING:
        return m
    if state is SourceState.COMMITTED:
        m.transfer_done(MOVED, now=0.4)
        return m
    m.transfer_done(BackendError("lost"), now=0.4)
    if state is SourceState.CHECKING:
        return m
    assert state is SourceState.FAILED
    m.query_done(Ownership(Side.NEITHER), now=0.5)
    return m


def dst_in(state: DestinationState) -> MigrationDestination:
    m = destination()
    if state is DestinationState.IDLE:
        return m
    if state is DestinationState.REFUSED:
        m.receive(prepare(lockspace_id="other"), now=0.0)
        return m
    m.receive(prepare(), now=0.0)
    if state is DestinationState.VERIFYING:
        return m
    m.verify_done(None, now=0.1)
    if state is DestinationState.PREPARED:
        return m
    if state is DestinationState.CANCELLED:
        m.cancel_requested(now=0.2)
        return m
    if state is DestinationState.EXPIRED:
        m.timer_fired(Timer.EXPIRY, now=5.0)
        return m
    m.commit_requested(now=0.2)
    if state is DestinationState.COMMITTING:
        return m
    if state is DestinationState.COMMITTED:
        m.receive(CommitReply(**env(SRC.name, 1, outcome=Outcome.COMMITTED, lock_state=MOVED)), now=0.3)
        return m
    m.timer_fired(Timer.EXPIRY, now=5.0)
    if state is DestinationState.CHECKING:
        return m
    assert state is DestinationState.FAILED
    m.query_done(Ownership(Side.NEITHER), now=5.1)
    return m


def test_builders_reach_every_state() -> None:
    for s in SourceState:
        assert src_in(s).state is s
    for d in DestinationState:
        assert dst_in(d).state is d


# --- events -------------------------------------------------------------------


def fire_source(m: MigrationSource, event: Event, now: float = 1.0) -> list[Any]:
    match event:
        case Event.START:
            return m.start(now=now, deadline_at=now + 10)
        case Event.COMMIT_CALL:
            return m.commit_requested(now=now)
        case Event.CANCEL_CALL:
            return m.cancel_requested(now=now)
        case Event.PREPARE_ACCEPTED:
            return m.receive(PrepareReply(**env(DST.name, 1, host_id=DST.id, incarnation="inc-d")), now=now)
        case Event.PREPARE_REFUSED:
            return m.receive(Refuse(**env(DST.name, 1, code="x", message="no")), now=now)
        case Event.PEER_COMMIT:
            return m.receive(commit(), now=now)
        case Event.PEER_CANCEL:
            return m.receive(cancel_from(DST.name), now=now)
        case Event.TRANSFER_OK:
            return m.transfer_done(MOVED, now=now)
        case Event.TRANSFER_FAILED:
            return m.transfer_done(BackendError("x"), now=now)
        case Event.OWNER_SOURCE:
            return m.query_done(Ownership(Side.SOURCE, LEASES), now=now)
        case Event.OWNER_DESTINATION:
            return m.query_done(Ownership(Side.DESTINATION, MOVED), now=now)
        case Event.OWNER_NEITHER:
            return m.query_done(Ownership(Side.NEITHER), now=now)
        case Event.PREPARE_TIMEOUT:
            return m.timer_fired(Timer.PREPARE_TIMEOUT, now=now)
        case Event.DEADLINE:
            return m.timer_fired(Timer.DEADLINE, now=now)
    raise AssertionError(event)


SOURCE_EVENTS = [
    e
    for e in Event
    if e
    not in (
        Event.PEER_PREPARE,
        Event.PEER_PREPARE_BAD,
        Event.COMMIT_ACCEPTED,
        Event.COMMIT_REFUSED,
        Event.VERIFIED,
        Event.VERIFY_FAILED,
        Event.EXPIRY,
    )
]


def fire_dest(m: MigrationDestination, event: Event, now: float = 1.0) -> list[Any]:
    commit_seq = next((seq for seq, r in m._sent.items() if isinstance(r, Commit)), 1)
    match event:
        case Event.COMMIT_CALL:
            return m.commit_requested(now=now)
        case Event.CANCEL_CALL:
            return m.cancel_requested(now=now)
        case Event.PEER_PREPARE:
            return m.receive(prepare(), now=now)
        case Event.PEER_PREPARE_BAD:
            return m.receive(prepare(lockspace_id="other"), now=now)
        case Event.PEER_CANCEL:
            return m.receive(cancel_from(SRC.name), now=now)
        case Event.COMMIT_ACCEPTED:
            reply = CommitReply(**env(SRC.name, commit_seq, outcome=Outcome.COMMITTED, lock_state=MOVED))
            return m.receive(reply, now=now)
        case Event.COMMIT_REFUSED:
            return m.receive(CommitReply(**env(SRC.name, commit_seq, outcome=Outcome.CANCELLED)), now=now)
        case Event.VERIFIED:
            return m.verify_done(None, now=now)
        case Event.VERIFY_FAILED:
            return m.verify_done(BackendError("x"), now=now)
        case Event.OWNER_SOURCE:
            return m.query_done(Ownership(Side.SOURCE, LEASES), now=now)
        case Event.OWNER_DESTINATION:
            return m.query_done(Ownership(Side.DESTINATION, MOVED), now=now)
        case Event.OWNER_NEITHER:
            return m.query_done(Ownership(Side.NEITHER), now=now)
        case Event.EXPIRY:
            return m.timer_fired(Timer.EXPIRY, now=now)
    raise AssertionError(event)


DEST_EVENTS = [
    Event.COMMIT_CALL,
    Event.CANCEL_CALL,
    Event.PEER_PREPARE,
    Event.PEER_PREPARE_BAD,
    Event.PEER_CANCEL,
    Event.COMMIT_ACCEPTED,
    Event.COMMIT_REFUSED,
    Event.VERIFIED,
    Event.VERIFY_FAILED,
    Event.OWNER_SOURCE,
    Event.OWNER_DESTINATION,
    Event.OWNER_NEITHER,
    Event.EXPIRY,
]

LOCAL_CALLS = {Event.START, Event.COMMIT_CALL, Event.CANCEL_CALL}
BACKEND_RESULTS = {
    Event.TRANSFER_OK,
    Event.TRANSFER_FAILED,
    Event.OWNER_SOURCE,
    Event.OWNER_DESTINATION,
    Event.OWNER_NEITHER,
    Event.VERIFIED,
    Event.VERIFY_FAILED,
}

RESULT_KIND = {
    Event.TRANSFER_OK: "transfer",
    Event.TRANSFER_FAILED: "transfer",
    Event.OWNER_SOURCE: "query",
    Event.OWNER_DESTINATION: "query",
    Event.OWNER_NEITHER: "query",
    Event.VERIFIED: "verify",
    Event.VERIFY_FAILED: "verify",
}


def snapshot(m: object) -> dict[str, Any]:
    # Containers are copied; what they hold is immutable.
    return {k: copy.copy(v) if isinstance(v, dict | set | list) else v for k, v in vars(m).items()}


@pytest.mark.parametrize("state", list(SourceState), ids=lambda s: s.value)
@pytest.mark.parametrize("event", SOURCE_EVENTS, ids=lambda e: e.value)
def test_source_table(state: SourceState, event: Event) -> None:
    m = src_in(state)
    target = SOURCE_TRANSITIONS[state].get(event)
    before = snapshot(m)
    if target is not None:
        fire_source(m, event)
        assert m.state is target
        return
    if event in LOCAL_CALLS or event in BACKEND_RESULTS:
        with pytest.raises(IllegalEventError):
            fire_source(m, event)
        assert snapshot(m) == before
        return
    effects = fire_source(m, event)
    assert m.state is state
    if event in (Event.PEER_COMMIT, Event.PEER_CANCEL):
        # Not expected here: answered with an error, nothing else.
        assert len(effects) == 1
        assert isinstance(effects[0], Reply)
        assert isinstance(effects[0].message, ErrorReply)
        assert snapshot(m) == before
    elif event in (Event.PREPARE_ACCEPTED, Event.PREPARE_REFUSED):
        assert all(isinstance(e, Discard) for e in effects)
    else:
        assert effects == []  # a timer that is not armed, or has no meaning here


@pytest.mark.parametrize("state", list(DestinationState), ids=lambda s: s.value)
@pytest.mark.parametrize("event", DEST_EVENTS, ids=lambda e: e.value)
def test_destination_table(state: DestinationState, event: Event) -> None:
    m = dst_in(state)
    target = DESTINATION_TRANSITIONS[state].get(event)
    before = snapshot(m)
    if target is not None:
        fire_dest(m, event)
        assert m.state is target
        return
    if event in LOCAL_CALLS:
        with pytest.raises(IllegalEventError):
            fire_dest(m, event)
        assert snapshot(m) == before
        return
    if event in BACKEND_RESULTS:
        if m._awaiting is not None and m._awaiting.value == RESULT_KIND[event]:
            # Asked for, but the state moved on: the late result is dropped.
            assert fire_dest(m, event) == []
            assert m.state is state
        else:
            with pytest.raises(IllegalEventError):
                fire_dest(m, event)
            assert snapshot(m) == before
        return
    effects = fire_dest(m, event)
    assert m.state is state
    if event in (Event.PEER_PREPARE, Event.PEER_PREPARE_BAD):
        # The same number is the same request: answered again, or still deferred.
        assert len(effects) == (0 if state is DestinationState.VERIFYING else 1)
        assert all(isinstance(e, Reply) for e in effects)
    elif event is Event.PEER_CANCEL:
        assert len(effects) == 1
        assert isinstance(effects[0], Reply)
        assert isinstance(effects[0].message, ErrorReply)
        assert snapshot(m) == before
    elif event in (Event.COMMIT_ACCEPTED, Event.COMMIT_REFUSED):
        assert all(isinstance(e, Discard) for e in effects)
    else:
        assert effects == []


def test_late_backend_results_are_dropped() -> None:
    # A verification still running when the source cancels: its result no longer matters.
    m = dst_in(DestinationState.VERIFYING)
    m.receive(cancel_from(SRC.name), now=0.2)
    assert m.state is DestinationState.CANCELLED
    assert m.verify_done(None, now=0.3) == []
    assert m.state is DestinationState.CANCELLED
    with pytest.raises(IllegalEventError):
        m.verify_done(None, now=0.4)  # asked once, answered once

    # A backend query overtaken by the source's late answer.
    d = dst_in(DestinationState.CHECKING)
    d.receive(CommitReply(**env(SRC.name, 1, outcome=Outcome.COMMITTED, lock_state=MOVED)), now=5.1)
    assert d.state is DestinationState.COMMITTED
    assert d.query_done(Ownership(Side.SOURCE, LEASES), now=5.2) == []
    assert d.state is DestinationState.COMMITTED


def test_io_failed_for_a_request_never_sent_is_illegal() -> None:
    m = src_in(SourceState.PREPARING)
    before = snapshot(m)
    with pytest.raises(IllegalEventError):
        m.io_failed(commit(7), now=1.0)
    assert snapshot(m) == before


def test_owner_helper_matches_the_source_owner() -> None:
    m = source()
    assert m.owner == lease_owner(SRC, DOMAIN)
    d = dst_in(DestinationState.PREPARED)
    assert d.owner == lease_owner(DST, DOMAIN)
