"""Migration flows end to end with no sockets: the happy paths and every failure rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import pytest

from actorlock._verify.migration_world import DESTINATION, SOURCE
from actorlock._verify.pair import Fault, Simulation
from actorlock.errors import InvalidParameterError, PeerUnreachableError, StaleLockStateError
from actorlock.model import Holder, Lease, LeaseMode, LeaseOwner, LeaseRecord, LockState
from actorlock.protocol import (
    Call,
    Cancel,
    CancelReply,
    Commit,
    CommitReply,
    CompleteCaller,
    DestinationState,
    Effect,
    ErrorReply,
    MigrationCancelledError,
    MigrationCommittedError,
    MigrationLeasesLostError,
    MigrationRefusedError,
    MigrationTimeoutError,
    Outcome,
    Prepare,
    PrepareReply,
    QueryBackend,
    Refuse,
    Reply,
    SendToPeer,
    Side,
    SourceState,
    Status,
    Timer,
    TransferLeases,
)


def prepared() -> Simulation:
    sim = Simulation()
    sim.start()
    sim.deliver_all()
    assert sim.source.state is SourceState.PREPARED
    assert sim.dest is not None
    assert sim.dest.state is DestinationState.PREPARED
    return sim


M = TypeVar("M")
E = TypeVar("E")


def sent(sim: Simulation, role: str, kind: type[M]) -> list[M]:
    """Every message of ``kind`` that ``role`` put on the network, in order."""
    return [ex.request for ex in sim.exchanges.values() if ex.sender == role and isinstance(ex.request, kind)]


def sole(effects: Sequence[Effect], kind: type[E]) -> E:
    """The one effect in ``effects``, checked to be a ``kind`` (and typed as one)."""
    (effect,) = effects
    assert isinstance(effect, kind), effect
    return effect


def finish(sim: Simulation) -> None:
    sim.settle()
    sim.check_invariants()
    sim.check_agreement()


# --- success ------------------------------------------------------------------


@pytest.mark.parametrize("first", [SOURCE, DESTINATION])
def test_commit_in_either_order(first: str) -> None:
    sim = prepared()
    assert sim.answers(SOURCE, Call.PREPARE)[0].outcome is Outcome.PENDING
    second = DESTINATION if first == SOURCE else SOURCE
    sim.commit(first)
    sim.deliver_all()
    assert sim.owner() is Side.SOURCE, "one side's word is not enough"
    sim.commit(second)
    sim.deliver_all()
    finish(sim)
    assert sim.owner() is Side.DESTINATION
    assert sim.backend.transfers == 1
    for role in (SOURCE, DESTINATION):
        (answer,) = sim.answers(role, Call.COMPLETE)
        assert answer.outcome is Outcome.COMMITTED
        assert answer.error is None
        assert answer.lock_state is not None
        assert [lease.token for lease in answer.lock_state.leases] == [8, 8]  # fresh tokens


def test_commit_at_the_same_time() -> None:
    sim = prepared()
    sim.commit(SOURCE)
    sim.commit(DESTINATION)
    finish(sim)
    assert sim.owner() is Side.DESTINATION
    assert sim.hosts[DESTINATION].guest == "running"
    assert sim.hosts[SOURCE].guest == "stopped"


def test_transfer_carries_both_identities_and_the_offered_tokens() -> None:
    sim = Simulation(defer_backend=True)
    sim.start()
    sim.deliver_all()
    sim.complete_op()  # verification
    sim.deliver_all()
    sim.commit(DESTINATION)
    sim.deliver_all()
    sim.commit(SOURCE)
    (op,) = sim.pending_ops
    assert isinstance(op.effect, TransferLeases)
    assert op.effect.source == sim.source_owner
    assert op.effect.destination == sim.dest_owner
    assert op.effect.destination_incarnation == "inc-dst"
    assert op.effect.leases == sim.original.leases
    assert op.effect.migration_id == "mig-1"


def test_deadline_travels_as_remaining_seconds() -> None:
    sim = Simulation(deadline=10.0)
    sim.now = 100.0
    sim.start()
    sim.now = 100.5  # half a second in flight
    sim.deliver_all()
    assert sim.dest is not None
    assert sim.dest.deadline_at == pytest.approx(110.5)
    assert sim.source.deadline_at == pytest.approx(110.0)
    assert sim.source.armed_timers[Timer.DEADLINE] == pytest.approx(109.0)  # minus the transfer margin


# --- refusals and unreachable destinations ----------------------------------------


def test_destination_refuses_a_stale_lock_state() -> None:
    offered = LockState.of(
        [Lease("disk:/vm/a.img", LeaseMode.EXCLUSIVE, 6), Lease("disk:/vm/b.img", LeaseMode.EXCLUSIVE, 7)]
    )
    sim = Simulation(offered=offered)
    sim.start()
    sim.deliver_all()
    finish(sim)
    assert sim.source.state is SourceState.REFUSED
    (answer,) = sim.answers(SOURCE, Call.PREPARE)
    assert isinstance(answer.error, MigrationRefusedError)
    assert answer.error.remote_code == StaleLockStateError.code
    assert "disk:/vm/a.img" in str(answer.error)
    assert sim.dest is not None
    assert sim.dest.state is DestinationState.REFUSED
    assert sim.hosts[DESTINATION].dropped
    assert sim.owner() is Side.SOURCE
    assert sim.backend.transfers == 0


def test_destination_refuses_another_lockspace() -> None:
    sim = Simulation(dest_lockspace_id="elsewhere")
    sim.start()
    sim.deliver_all()
    finish(sim)
    (answer,) = sim.answers(SOURCE, Call.PREPARE)
    assert isinstance(answer.error, MigrationRefusedError)
    assert "elsewhere" in str(answer.error)
    assert sim.owner() is Side.SOURCE


def test_unreachable_destination_fails_prepare_and_source_keeps_everything() -> None:
    sim = Simulation()
    sim.start()
    while sim.source.state is SourceState.PREPARING:
        while sim.net:
            sim.drop()
        sim.advance()
    assert sim.source.state is SourceState.CANCELLED
    (answer,) = sim.answers(SOURCE, Call.PREPARE)
    assert isinstance(answer.error, PeerUnreachableError)
    assert sim.now == pytest.approx(3.0)  # prepare_timeout
    assert len(sent(sim, SOURCE, Prepare)) > 1, "PREPARE was retried before giving up"
    assert all(p.seq == 1 for p in sent(sim, SOURCE, Prepare)), "a retry is the same request"
    finish(sim)
    assert sim.owner() is Side.SOURCE
    # The caller may still confirm: told it did not happen.
    sim.commit(SOURCE)
    (complete,) = sim.answers(SOURCE, Call.COMPLETE)
    assert complete.outcome is Outcome.CANCELLED
    assert isinstance(complete.error, PeerUnreachableError)


def test_start_rejects_a_deadline_inside_the_transfer_margin() -> None:
    sim = Simulation()
    with pytest.raises(InvalidParameterError):
        sim.source.start(now=0.0, deadline_at=0.5)
    assert sim.source.state is SourceState.IDLE


# --- crashes --------------------------------------------------------------------


@pytest.mark.parametrize("source_said_commit", [False, True])
def test_destination_crash_after_prepare_source_cancels_at_deadline(*, source_said_commit: bool) -> None:
    sim = prepared()
    sim.crash(DESTINATION)
    if source_said_commit:
        sim.commit(SOURCE)
    finish(sim)
    assert sim.source.state is SourceState.CANCELLED
    assert sim.owner() is Side.SOURCE
    if source_said_commit:
        (answer,) = sim.answers(SOURCE, Call.COMPLETE)
        assert isinstance(answer.error, MigrationTimeoutError)
        assert sim.hosts[SOURCE].guest == "running", "the source guest resumes"
    assert sent(sim, SOURCE, Cancel), "the destination is told, in case it comes back"


@pytest.mark.parametrize("destination_said_commit", [False, True])
def test_source_crash_after_prepare_destination_expires(*, destination_said_commit: bool) -> None:
    sim = prepared()
    if destination_said_commit:
        sim.commit(DESTINATION)
    sim.crash(SOURCE)
    finish(sim)
    assert sim.dest is not None
    assert sim.dest.state is DestinationState.EXPIRED
    assert sim.hosts[DESTINATION].dropped
    assert sim.owner() is Side.SOURCE
    assert sim.now >= sim.dest.deadline_at
    if destination_said_commit:
        (answer,) = sim.answers(DESTINATION, Call.COMPLETE)
        assert isinstance(answer.error, MigrationTimeoutError)
        assert sim.hosts[DESTINATION].guest == "none"


def test_source_crash_right_after_the_transfer_destination_learns_from_backend() -> None:
    sim = prepared()
    sim.commit(DESTINATION)
    sim.deliver_all()
    sim.commit(SOURCE)  # transfers at once (the backend runs inline)
    assert sim.owner() is Side.DESTINATION
    sim.net.clear()  # the COMMITTED answer never leaves
    sim.crash(SOURCE)
    finish(sim)
    assert sim.dest is not None
    assert sim.dest.state is DestinationState.COMMITTED
    (answer,) = sim.answers(DESTINATION, Call.COMPLETE)
    assert answer.outcome is Outcome.COMMITTED
    assert sim.hosts[DESTINATION].guest == "running"


# --- lost answers ---------------------------------------------------------------


def test_lost_commit_reply_is_recovered_by_retrying_commit() -> None:
    sim = prepared()
    sim.commit(SOURCE)
    sim.commit(DESTINATION)
    sim.deliver()  # COMMIT reaches the source, which transfers
    (reply,) = sim.net
    assert isinstance(reply.message, CommitReply)
    sim.drop()
    assert sim.dest is not None
    # Read into a local: asserting on sim.dest.state itself would narrow it for mypy,
    # which would then call the check after finish() unreachable.
    before = sim.dest.state
    assert before is DestinationState.COMMITTING
    finish(sim)
    assert sim.dest.state is DestinationState.COMMITTED
    assert sim.backend.transfers == 1
    commits = sent(sim, DESTINATION, Commit)
    assert len(commits) == 2
    assert commits[0].seq == commits[1].seq


@pytest.mark.parametrize(("fault", "outcome"), [(Fault.AFTER, Side.DESTINATION), (Fault.BEFORE, Side.SOURCE)])
def test_unclear_transfer_is_settled_by_asking_the_backend(fault: Fault, outcome: Side) -> None:
    sim = prepared()
    sim.faults = [fault]
    sim.commit(DESTINATION)
    sim.deliver_all()
    sim.commit(SOURCE)
    finish(sim)
    assert sim.owner() is outcome
    (answer,) = sim.answers(SOURCE, Call.COMPLETE)
    if outcome is Side.DESTINATION:
        assert answer.outcome is Outcome.COMMITTED
    else:
        assert isinstance(answer.error, MigrationCancelledError)
        assert "did not happen" in str(answer.error)
    assert any("QueryBackend" in line for line in sim.trace)


def test_failing_backend_query_is_asked_again_never_guessed() -> None:
    sim = prepared()
    sim.faults = [Fault.AFTER, Fault.BEFORE, Fault.BEFORE]  # transfer lands unseen; two queries fail
    sim.commit(DESTINATION)
    sim.deliver_all()
    sim.commit(SOURCE)
    before = sim.source.state  # a local, so mypy does not narrow sim.source.state
    assert before is SourceState.CHECKING
    finish(sim)
    assert sim.source.state is SourceState.COMMITTED
    assert sum("QueryBackend" in line and "source:" in line for line in sim.trace) == 3


def test_token_conflict_with_a_third_holder_fails_without_guessing() -> None:
    sim = prepared()
    thief = LeaseOwner("other", 3, "uuid-x")
    sim.backend.records["disk:/vm/a.img"] = LeaseRecord(
        "disk:/vm/a.img", 9, (Holder(thief, LeaseMode.EXCLUSIVE, 9, "i"),)
    )
    sim.commit(DESTINATION)
    sim.deliver_all()
    sim.commit(SOURCE)
    sim.settle()
    assert sim.source.state is SourceState.FAILED
    (answer,) = sim.answers(SOURCE, Call.COMPLETE)
    assert isinstance(answer.error, MigrationLeasesLostError)
    assert sim.hosts[SOURCE].guest == "stopped"
    assert sim.dest is not None
    assert sim.dest.outcome is Outcome.CANCELLED


# --- cancel -----------------------------------------------------------------------


@pytest.mark.parametrize("who", [SOURCE, DESTINATION])
def test_cancel_leaves_the_source_owning_everything(who: str) -> None:
    sim = prepared()
    other = DESTINATION if who == SOURCE else SOURCE
    sim.commit(other)
    sim.deliver_all()
    sim.cancel(who)
    finish(sim)
    assert sim.owner() is Side.SOURCE
    assert sim.source.outcome is Outcome.CANCELLED
    assert sim.dest is not None
    assert sim.dest.outcome is Outcome.CANCELLED
    (mine,) = sim.answers(who, Call.COMPLETE)
    assert mine.error is None
    (theirs,) = sim.answers(other, Call.COMPLETE)
    assert isinstance(theirs.error, MigrationCancelledError)


@pytest.mark.parametrize("role", [SOURCE, DESTINATION])
def test_cancel_after_commit_is_refused(role: str) -> None:
    sim = prepared()
    sim.commit(SOURCE)
    sim.commit(DESTINATION)
    finish(sim)
    machine = sim.hosts[role].machine
    assert machine is not None
    answer = sole(machine.cancel_requested(now=sim.now), CompleteCaller)
    assert answer.outcome is Outcome.COMMITTED
    assert isinstance(answer.error, MigrationCommittedError)
    assert "committed" in str(answer.error)
    assert machine.outcome is Outcome.COMMITTED
    # Committing again is harmless and says the same.
    again = sole(machine.commit_requested(now=sim.now), CompleteCaller)
    assert again.outcome is Outcome.COMMITTED
    assert again.error is None


def test_destination_cancel_reaching_a_committed_source_is_refused() -> None:
    sim = prepared()
    sim.commit(SOURCE)
    sim.commit(DESTINATION)
    finish(sim)
    late = Cancel(migration_id="mig-1", sender="dst", seq=9, deadline_remaining=1.0)
    reply = sole(sim.source.receive(late, now=sim.now), Reply)
    assert isinstance(reply.message, CancelReply)
    assert reply.message.outcome is Outcome.COMMITTED


def test_cancel_during_transfer_waits_for_its_outcome() -> None:
    sim = Simulation(defer_backend=True)
    sim.start()
    sim.deliver_all()
    sim.complete_op()
    sim.deliver_all()
    sim.commit(DESTINATION)
    sim.deliver_all()
    sim.commit(SOURCE)
    before = sim.source.state  # a local, so mypy does not narrow sim.source.state
    assert before is SourceState.TRANSFERRING
    cancel = Cancel(migration_id="mig-1", sender="dst", seq=5, deadline_remaining=1.0)
    assert sim.source.receive(cancel, now=sim.now) == []  # deferred: the transfer decides
    (op,) = sim.pending_ops
    assert isinstance(op.effect, TransferLeases)
    effects = sim.source.transfer_done(sim.backend.transfer(op.effect), now=sim.now)
    replies = [m for e in effects if isinstance(m := getattr(e, "message", None), CancelReply)]
    assert [(r.seq, r.outcome) for r in replies] == [(5, Outcome.COMMITTED)]
    assert sim.source.state is SourceState.COMMITTED


def test_late_commit_after_deadline_is_a_timeout() -> None:
    sim = prepared()
    sim.commit(DESTINATION)
    sim.deliver_all()
    # The caller answers after the deadline, before its timer had a chance to fire.
    effects = sim.source.commit_requested(now=9.5)
    assert sim.source.state is SourceState.CANCELLED
    assert not any(isinstance(e, TransferLeases) for e in effects)
    (answer,) = [e for e in effects if isinstance(e, CompleteCaller) and e.call is Call.COMPLETE]
    assert isinstance(answer.error, MigrationTimeoutError)


# --- duplicates, staleness, strangers ------------------------------------------------


def test_duplicates_get_the_same_answer() -> None:
    sim = prepared()
    dest = sim.dest
    assert dest is not None
    first_prepare = sent(sim, SOURCE, Prepare)[0]
    a = sole(dest.receive(first_prepare, now=1.0), Reply)
    (b,) = dest.receive(first_prepare, now=2.0)
    assert isinstance(a.message, PrepareReply)
    assert a == b

    sim.commit(SOURCE)
    sim.commit(DESTINATION)
    finish(sim)
    commit = sent(sim, DESTINATION, Commit)[0]
    c1 = sole(sim.source.receive(commit, now=3.0), Reply)
    (c2,) = sim.source.receive(commit, now=4.0)
    assert isinstance(c1.message, CommitReply)
    assert c1.message.outcome is Outcome.COMMITTED
    assert c1 == c2
    assert sim.backend.transfers == 1


def test_duplicate_cancel_gets_the_same_answer() -> None:
    sim = prepared()
    cancel = Cancel(migration_id="mig-1", sender="dst", seq=3, deadline_remaining=1.0, reason="x")
    (r1,) = [e for e in sim.source.receive(cancel, now=1.0) if isinstance(e, Reply)]
    (r2,) = sim.source.receive(cancel, now=1.5)
    assert r1 == r2
    assert isinstance(r1.message, CancelReply)
    assert r1.message.outcome is Outcome.CANCELLED


def test_stale_request_is_rejected_without_change() -> None:
    sim = prepared()
    newer = Commit(
        migration_id="mig-1", sender="dst", seq=5, deadline_remaining=1.0, host_id=2, incarnation="i"
    )
    sim.source.receive(newer, now=1.0)
    state = sim.source.state
    older = Cancel(migration_id="mig-1", sender="dst", seq=4, deadline_remaining=1.0)
    reply = sole(sim.source.receive(older, now=1.1), Reply)
    assert isinstance(reply.message, ErrorReply)
    assert reply.message.code == "stale-message"
    assert sim.source.state is state
    second = Commit(
        migration_id="mig-1", sender="dst", seq=6, deadline_remaining=1.0, host_id=2, incarnation="i"
    )
    reply = sole(sim.source.receive(second, now=1.2), Reply)
    assert isinstance(reply.message, ErrorReply)
    assert sim.source.state is state


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("migration_id", "mig-other", "unknown-migration"),
        ("sender", "mallory", "migration-protocol"),
        ("version", 2, "migration-protocol"),
        ("seq", 0, "migration-protocol"),
        ("deadline_remaining", float("nan"), "migration-protocol"),
    ],
)
def test_strangers_are_answered_with_an_error_and_change_nothing(
    field: str, value: object, code: str
) -> None:
    sim = prepared()
    fields: dict[str, object] = {
        "migration_id": "mig-1",
        "sender": "dst",
        "seq": 5,
        "deadline_remaining": 1.0,
        "host_id": 2,
        "incarnation": "i",
    }
    fields[field] = value
    reply = sole(sim.source.receive(Commit(**fields), now=1.0), Reply)  # type: ignore[arg-type]
    assert isinstance(reply.message, ErrorReply)
    assert reply.message.code == code
    assert sim.source.state is SourceState.PREPARED


def test_responses_that_answer_nothing_are_discarded() -> None:
    sim = prepared()
    bogus = [
        CommitReply(
            migration_id="mig-1", sender="dst", seq=1, deadline_remaining=0.0, outcome=Outcome.COMMITTED
        ),
        PrepareReply(
            migration_id="mig-1", sender="dst", seq=42, deadline_remaining=0.0, host_id=2, incarnation="i"
        ),
        PrepareReply(
            migration_id="mig-1", sender="eve", seq=1, deadline_remaining=0.0, host_id=2, incarnation="i"
        ),
        Refuse(migration_id="mig-1", sender="dst", seq=1, deadline_remaining=0.0, code="x", message="late"),
    ]
    for message in bogus:
        effects = sim.source.receive(message, now=1.0)
        assert [type(e).__name__ for e in effects] == ["Discard"], message
    assert sim.source.state is SourceState.PREPARED


def test_query_is_answered_from_the_state() -> None:
    from actorlock.protocol import Query

    sim = prepared()
    q = Query(migration_id="mig-1", sender="dst", seq=77, deadline_remaining=0.0)
    reply = sole(sim.source.receive(q, now=1.0), Reply)
    assert isinstance(reply.message, Status)
    assert reply.message.outcome is Outcome.PENDING
    sim.commit(SOURCE)
    sim.commit(DESTINATION)
    finish(sim)
    reply = sole(sim.source.receive(q, now=sim.now), Reply)
    assert isinstance(reply.message, Status)
    assert reply.message.outcome is Outcome.COMMITTED


def test_commit_overtaking_a_lost_prepare_reply() -> None:
    sim = Simulation()
    sim.start()
    sim.deliver()  # PREPARE reaches the destination
    sim.drop()  # its answer is lost
    sim.commit(DESTINATION)
    sim.deliver()  # COMMIT reaches the source first
    assert sim.source.state is SourceState.PEER_AGREED
    assert sim.answers(SOURCE, Call.PREPARE)[0].error is None
    sim.commit(SOURCE)
    finish(sim)
    assert sim.owner() is Side.DESTINATION


def test_checking_destination_queries_with_both_owners() -> None:
    sim = prepared()
    sim.commit(DESTINATION)
    sim.crash(SOURCE)
    dest = sim.dest
    assert dest is not None
    effects = dest.timer_fired(Timer.EXPIRY, now=dest.deadline_at)
    (query,) = [e for e in effects if isinstance(e, QueryBackend)]
    assert query.source == sim.source_owner
    assert query.destination == sim.dest_owner
    assert set(query.keys) == set(sim.backend.records)


def test_requests_retry_only_while_they_matter() -> None:
    sim = prepared()
    sim.commit(DESTINATION)
    (commit,) = [p.message for p in sim.net]
    assert sim.dest is not None
    sim.drop()
    effects = sim.dest.io_failed(commit, now=sim.now)  # type: ignore[arg-type]
    assert effects[0].timer is Timer.RETRY  # type: ignore[union-attr]
    (resend,) = sim.dest.timer_fired(Timer.RETRY, now=sim.now + 0.2)
    assert isinstance(resend, SendToPeer)
    assert resend.message.seq == commit.seq
    assert resend.message.deadline_remaining < commit.deadline_remaining
