"""The pure helpers around the machines: ownership rules, the transfer rule, unknown ids, timing."""

from __future__ import annotations

import math

import pytest

from actorlock.backends.rules import plan_transfer
from actorlock.errors import InvalidParameterError, LeaseLostError, StaleLockStateError
from actorlock.model import DomainIdentity, Holder, HostIdentity, Lease, LeaseMode, LeaseRecord, LockState
from actorlock.protocol import (
    Cancel,
    CancelReply,
    Commit,
    ErrorReply,
    Outcome,
    PrepareReply,
    Query,
    Side,
    Status,
    Timing,
    answer_unknown,
    judge_ownership,
    lease_owner,
    verify_lock_state,
)

DOMAIN = DomainIdentity("uuid-7", "vm7")
SRC = lease_owner(HostIdentity("src", 1), DOMAIN)
DST = lease_owner(HostIdentity("dst", 2), DOMAIN)
OTHER = lease_owner(HostIdentity("other", 3), DomainIdentity("uuid-8", "vm8"))


def records() -> dict[str, LeaseRecord]:
    return {
        "disk:/a": LeaseRecord("disk:/a", 5, (Holder(SRC, LeaseMode.EXCLUSIVE, 5, "i1"),)),
        # shared: another domain holds it too, and took a later token
        "disk:/s": LeaseRecord(
            "disk:/s", 9, (Holder(SRC, LeaseMode.SHARED, 4, "i1"), Holder(OTHER, LeaseMode.SHARED, 9, "i3"))
        ),
    }


STATE = LockState.of([Lease("disk:/a", LeaseMode.EXCLUSIVE, 5), Lease("disk:/s", LeaseMode.SHARED, 4)])


def test_lease_owner_names_host_and_domain() -> None:
    assert (SRC.host, SRC.host_id, SRC.domain, SRC.domain_name) == ("src", 1, "uuid-7", "vm7")


def test_verify_accepts_the_true_state_and_names_every_mismatch() -> None:
    assert verify_lock_state(records().values(), SRC, STATE) is None
    wrong = LockState.of([Lease("disk:/a", LeaseMode.SHARED, 5), Lease("disk:/s", LeaseMode.SHARED, 3)])
    err = verify_lock_state(records().values(), SRC, wrong)
    assert isinstance(err, StaleLockStateError)
    assert err.resources == ("disk:/a", "disk:/s")
    missing = verify_lock_state(
        records().values(), SRC, LockState.of([Lease("disk:/zz", LeaseMode.SHARED, 1)])
    )
    assert missing is not None
    assert missing.resources == ("disk:/zz",)
    assert verify_lock_state(records().values(), DST, STATE) is not None
    twice = LockState((Lease("disk:/a", LeaseMode.EXCLUSIVE, 5), Lease("disk:/a", LeaseMode.EXCLUSIVE, 5)))
    assert verify_lock_state(records().values(), SRC, twice) is not None


def test_plan_transfer_swaps_holders_and_bumps_tokens() -> None:
    before = records()
    updated, moved = plan_transfer(before, SRC, "i1", DST, "i2", STATE.leases)
    assert moved == (Lease("disk:/a", LeaseMode.EXCLUSIVE, 6), Lease("disk:/s", LeaseMode.SHARED, 10))
    assert updated["disk:/a"] == LeaseRecord("disk:/a", 6, (Holder(DST, LeaseMode.EXCLUSIVE, 6, "i2"),))
    assert updated["disk:/s"].holders == (
        Holder(OTHER, LeaseMode.SHARED, 9, "i3"),
        Holder(DST, LeaseMode.SHARED, 10, "i2"),
    )
    assert before == records(), "inputs are never mutated"
    assert judge_ownership(updated.values(), SRC, DST, ["disk:/a", "disk:/s"]).side is Side.DESTINATION


def test_plan_transfer_refuses_any_mismatch_and_writes_nothing() -> None:
    stale = LockState.of([Lease("disk:/a", LeaseMode.EXCLUSIVE, 4), Lease("disk:/s", LeaseMode.SHARED, 4)])
    with pytest.raises(StaleLockStateError) as err:
        plan_transfer(records(), SRC, "i1", DST, "i2", stale.leases)
    assert err.value.resources == ("disk:/a",)
    done, moved = plan_transfer(records(), SRC, "i1", DST, "i2", STATE.leases)
    # A retried transfer finds everything moved already and reports the same leases.
    assert plan_transfer(done, SRC, "i1", DST, "i2", STATE.leases) == ({}, moved)
    with pytest.raises(LeaseLostError):
        plan_transfer(records(), SRC, "another-incarnation", DST, "i2", STATE.leases)


def test_judge_ownership() -> None:
    keys = ["disk:/a", "disk:/s"]
    mine = judge_ownership(records().values(), SRC, DST, keys)
    assert mine.side is Side.SOURCE
    assert mine.lock_state == STATE
    assert judge_ownership(records().values(), SRC, DST, [*keys, "disk:/gone"]).side is Side.NEITHER
    split = records()
    split["disk:/a"] = LeaseRecord("disk:/a", 6, (Holder(DST, LeaseMode.EXCLUSIVE, 6, "i2"),))
    assert judge_ownership(split.values(), SRC, DST, keys).side is Side.NEITHER
    assert judge_ownership([], SRC, DST, []).side is Side.SOURCE  # nothing to move: nothing moved


def test_answer_unknown() -> None:
    base = {"migration_id": "gone", "sender": "peer", "seq": 4, "deadline_remaining": 1.0}
    cancel = answer_unknown(Cancel(**base), local="me")  # type: ignore[arg-type]
    assert isinstance(cancel, CancelReply)
    assert (cancel.outcome, cancel.seq, cancel.sender) == (Outcome.CANCELLED, 4, "me")
    status = answer_unknown(Query(**base), local="me")  # type: ignore[arg-type]
    assert isinstance(status, Status)
    assert status.outcome is Outcome.UNKNOWN
    error = answer_unknown(Commit(**base, host_id=2, incarnation="x"), local="me")  # type: ignore[arg-type]
    assert isinstance(error, ErrorReply)
    assert error.code == "unknown-migration"
    assert answer_unknown(PrepareReply(**base, host_id=2, incarnation="x"), local="me") is None  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan])
def test_timing_must_be_positive(value: float) -> None:
    with pytest.raises(InvalidParameterError, match="retry_interval"):
        Timing(retry_interval=value)
