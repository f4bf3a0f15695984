"""Storage that checks fencing tokens (issue 9): the last line for a host frozen as a whole."""

from __future__ import annotations

from actorlock.model import Lease, LeaseMode
from actorlock.testing.checker import Rule, check
from actorlock.testing.cluster import SimGuest, SimStorage
from actorlock.testing.history import (
    FailureActionRan,
    GuestStarted,
    GuestStopped,
    GuestWrote,
    History,
    HistoryEvent,
    HostFrozen,
    HostThawed,
    LeaseAcquired,
    LeaseReleased,
    StopReason,
    WriteRefused,
)

HOST_DEAD = 10.0
D1 = "disk:/d/1.img"


def old(token: int = 1) -> Lease:
    return Lease(D1, LeaseMode.EXCLUSIVE, token)


def frozen_then_taken(*after: HistoryEvent) -> list[HistoryEvent]:
    """h1's guest runs on D1 (token 1), h1 freezes, h2 takes D1 (token 2) and writes."""
    return [
        LeaseAcquired(0.0, "h1", "vm1", (old(1),)),
        GuestStarted(0.0, "h1", "vm1", exclusive=(D1,)),
        GuestWrote(1.0, "h1", "vm1", D1, 1),
        HostFrozen(2.0, "h1"),
        LeaseAcquired(13.0, "h2", "vm2", (old(2),)),
        GuestStarted(13.0, "h2", "vm2", exclusive=(D1,)),
        GuestWrote(14.0, "h2", "vm2", D1, 2),
        HostThawed(20.0, "h1"),
        *after,
    ]


def rules(events: list[HistoryEvent], *, storage_fences: bool) -> list[Rule]:
    return [v.rule for v in check(History(events), host_dead=HOST_DEAD, storage_fences=storage_fences)]


def test_a_frozen_host_waking_beside_the_new_owner_is_safe_only_with_storage_that_checks_tokens() -> None:
    woke = [
        WriteRefused(20.0, "h1", "vm1", D1, 1, 2),  # its first write on waking: refused
        FailureActionRan(20.1, "h1", "vm1", "poweroff", "powered off"),
        GuestStopped(20.1, "h1", "vm1", StopReason.FENCED),
    ]
    assert rules(frozen_then_taken(*woke), storage_fences=True) == []
    # Storage that does not check: the same moments are split brain.
    assert set(rules(frozen_then_taken(*woke), storage_fences=False)) == {
        Rule.EXCLUSIVE_OVERLAP,
        Rule.UNFENCED_LEASE_LOSS,
    }


def test_a_woken_guest_taken_over_while_frozen_may_see_another_takeover_before_it_is_fenced() -> None:
    """Found by ``actorlock sim`` (seed 20261378): between waking and its failure action, a third
    owner takes the disk; the woken guest's token is refused all the same, so only its end counts."""
    woke = [
        WriteRefused(20.0, "h1", "vm1", D1, 1, 2),
        GuestStopped(20.02, "h2", "vm2", StopReason.SHUTDOWN),  # h2's probe is done
        LeaseReleased(20.02, "h2", "vm2", (D1,)),
        LeaseAcquired(20.05, "h3", "vm3", (old(3),)),
        GuestStarted(20.05, "h3", "vm3", exclusive=(D1,)),
        WriteRefused(20.06, "h1", "vm1", D1, 1, 3),
        FailureActionRan(20.1, "h1", "vm1", "poweroff", "powered off"),
        GuestStopped(20.1, "h1", "vm1", StopReason.FENCED),
    ]
    assert rules(frozen_then_taken(*woke), storage_fences=True) == []
    # Never stopped: still a violation at the end; storage that does not check: split brain.
    assert rules(frozen_then_taken(*woke[:6]), storage_fences=True) == [Rule.UNFENCED_LEASE_LOSS]
    assert Rule.EXCLUSIVE_OVERLAP in rules(frozen_then_taken(*woke), storage_fences=False)
    # A guest that was never taken over while frozen gets no such pass after it wakes.
    awake = [
        LeaseAcquired(0.0, "h1", "vm1", (old(1),)),
        GuestStarted(0.0, "h1", "vm1", exclusive=(D1,)),
        HostFrozen(2.0, "h1"),
        HostThawed(3.0, "h1"),
        LeaseAcquired(20.05, "h3", "vm3", (old(3),)),
        GuestStarted(20.05, "h3", "vm3", exclusive=(D1,)),
    ]
    assert Rule.EXCLUSIVE_OVERLAP in rules(awake, storage_fences=True)


def test_a_frozen_guest_that_is_never_stopped_after_waking_is_still_a_violation() -> None:
    assert rules(frozen_then_taken(), storage_fences=True) == [Rule.UNFENCED_LEASE_LOSS]


def test_an_accepted_write_with_the_old_token_is_still_caught() -> None:
    stale = [GuestWrote(20.0, "h1", "vm1", D1, 1), GuestStopped(20.1, "h1", "vm1", StopReason.FENCED)]
    assert Rule.STALE_TOKEN_WRITE in rules(frozen_then_taken(*stale), storage_fences=True)


def test_token_checking_storage_refuses_a_write_older_than_the_disks_token() -> None:
    recorded: list[HistoryEvent] = []
    storage = SimStorage(recorded.append, fences=True)
    first, second = SimGuest("h1", "vm1"), SimGuest("h2", "vm2")
    storage.write(0.0, first, old(1))
    storage.admit(old(2))  # the new owner runs: its token is the disk's now
    storage.write(1.0, first, old(1))
    storage.write(1.0, second, old(2))
    assert [type(e) for e in recorded] == [GuestWrote, WriteRefused, GuestWrote]
    assert (storage.accepted, storage.refused, first.writes, second.writes) == (2, 1, 1, 1)
    unchecked = SimStorage(recorded.append)
    unchecked.admit(old(2))
    unchecked.write(2.0, first, old(1))
    assert unchecked.refused == 0
