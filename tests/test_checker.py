"""The safety checker: each rule catches its bad histories and lets near misses pass.

Hand-made histories use a host_dead of 10 on a clock in whole seconds. The
property tests build safe histories with a tiny reference model that only
does legal things, then break one rule on purpose.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actorlock
import actorlock.events as ev
from actorlock.backends.memory import MemoryLeaseBackend, shared_lockspace
from actorlock.errors import ResourceBusyError
from actorlock.model import Lease, LeaseMode, LeaseOwner
from actorlock.testing.checker import Rule, Violation, check
from actorlock.testing.events import EventLog
from actorlock.testing.faults import FaultyBackend
from actorlock.testing.history import (
    AcquireRefused,
    CoordinatorCrashed,
    FailureActionRan,
    FaultInjected,
    FaultsHealed,
    GuestDisksChanged,
    GuestStarted,
    GuestStopped,
    GuestWrote,
    History,
    HistoryEvent,
    HostCrashed,
    HostEvent,
    HostJoined,
    HostRecovered,
    LeaseAcquired,
    LeaseHeld,
    LeaseLost,
    LeaseReleased,
    LeasesTransferred,
    LockspaceLost,
    LockspaceRegained,
    MigrationCancelled,
    StopReason,
    TransferredLease,
)

from .support import TIMING, host_config, unique

HOST_DEAD = 10.0
D1, D2, D3 = "disk:/d/1.img", "disk:/d/2.img", "disk:/d/3.img"
EXCL, SHARED = LeaseMode.EXCLUSIVE, LeaseMode.SHARED


def excl(key: str = D1, token: int = 1) -> Lease:
    return Lease(key, EXCL, token)


def shared(key: str = D1, token: int = 1) -> Lease:
    return Lease(key, SHARED, token)


def run(*events: HistoryEvent, slack: float = 0.0) -> list[Violation]:
    return check(History(events), host_dead=HOST_DEAD, slack=slack)


def only(violations: list[Violation], rule: Rule) -> Violation:
    assert [v.rule for v in violations] == [rule], violations
    return violations[0]


def moved(key: str, old: int, new: int, mode: LeaseMode = EXCL) -> TransferredLease:
    return TransferredLease(key, mode, old, new)


# --- the history container and the sink adapter ---------------------------------


def test_history_orders_by_time_and_keeps_ties_in_append_order() -> None:
    a = GuestStopped(5.0, "a", "u1")
    b = GuestStarted(5.0, "b", "u2", exclusive=[D1])
    early = HostJoined(1.0, "a")
    history = History([a, b, early])
    assert list(history) == [early, a, b]
    assert len(history) == 3
    assert history.of(GuestStarted) == [b]
    assert history.of(HistoryEvent, host="a") == [early, a]
    assert history.between(2.0, 5.0) == [a, b]
    assert history.filter(lambda e: e.time < 2) == [early]


def test_disk_sets_are_sorted_sets() -> None:
    started = GuestStarted(0.0, "a", "u1", exclusive=[D2, D1, D2], shared=(D3,))
    assert started.exclusive == (D1, D2)
    assert started == GuestStarted(0.0, "a", "u1", exclusive=(D1, D2), shared=[D3])


def test_host_events_convert_and_kinds_without_a_record_are_kept() -> None:
    history = History()
    owner = LeaseOwner("a", 1, "u1", "vm1")
    converted = [
        history.record_host_event(ev.Joined(host="a", incarnation="i1", resumed=False), 1.0),
        history.record_host_event(ev.LeasesAcquired(host="a", owner=owner, leases=(excl(),)), 2.0),
        history.record_host_event(ev.LeasesReleased(host="a", owner=owner, keys=(D1,)), 3.0),
        history.record_host_event(ev.LockspaceLost(host="a", reason="late"), 4.0),
        history.record_host_event(
            ev.FailureActionRan(
                host="a", domain="u1", action="poweroff", result="ok", attempt=1, confirmed=True
            ),
            5.0,
        ),
        history.record_host_event(ev.LeasesLost(host="a", domain="u1", keys=(), reason="late"), 6.0),
        history.record_host_event(ev.LockspaceRegained(host="a"), 7.0),
        history.record_host_event(ev.MigrationStarted(host="a", domain="u1", destination="b"), 8.0),
    ]
    assert converted == [
        HostJoined(1.0, "a", "i1", resumed=False),
        LeaseAcquired(2.0, "a", "u1", (excl(),)),
        LeaseReleased(3.0, "a", "u1", (D1,)),
        LockspaceLost(4.0, "a", "late"),
        FailureActionRan(5.0, "a", "u1", "poweroff", "ok"),
        LeaseLost(6.0, "a", "u1", (), "late"),
        LockspaceRegained(7.0, "a"),
        HostEvent(8.0, "a", "migration_started", {"host": "a", "domain": "u1", "destination": "b"}),
    ]
    assert list(history) == converted


def test_sink_helper_uses_the_given_clock() -> None:
    history = History()
    ticks = iter([10.0, 11.0])
    sink = history.sink(lambda: next(ticks))
    sink(ev.LockspaceLost(host="a", reason="r"))
    sink(ev.LockspaceRegained(host="b"))
    assert list(history) == [LockspaceLost(10.0, "a", "r"), LockspaceRegained(11.0, "b")]


def test_acquire_refused_from_a_busy_error() -> None:
    err = ResourceBusyError(D1, [("a", "u1")])
    assert AcquireRefused.from_error(3.0, "b", "u2", err) == AcquireRefused(
        3.0, "b", "u2", D1, (("a", "u1"),)
    )


@pytest.mark.anyio
async def test_real_hosts_record_a_fenced_takeover_that_the_checker_accepts() -> None:
    space = unique()
    history = History()
    record = history.sink()
    log = EventLog()

    def sink(event: ev.HostEvent) -> None:
        record(event)
        log.sink(event)

    faulty = FaultyBackend(MemoryLeaseBackend(shared_lockspace(space), host_dead=TIMING["host_dead"]))
    async with (
        actorlock.open_host(host_config("a", 1, lockspace=space), backend=faulty, event_sink=sink) as a,
        actorlock.open_host(host_config("b", 2, lockspace=space), event_sink=sink) as b,
    ):
        await a.domain("u1").start([actorlock.disk("/d/1.img")])
        history.append(GuestStarted(anyio.current_time(), "a", "u1", exclusive=[D1]))
        faulty.fail("renew")
        with anyio.fail_after(5):
            await log.wait_for("failure_action", domain="u1")
        # No pid was registered; the simulator plays the guest the action stopped.
        history.append(GuestStopped(anyio.current_time(), "a", "u1", StopReason.FENCED))
        with anyio.fail_after(5):
            while True:
                try:
                    status = await b.domain("u2").start([actorlock.disk("/d/1.img")])
                    break
                except ResourceBusyError as exc:
                    history.append(AcquireRefused.from_error(anyio.current_time(), "b", "u2", exc))
                    await anyio.sleep(TIMING["renew_interval"] / 2)
            await log.wait_for("leases_lost", domain="u1")
        history.append(GuestStarted(anyio.current_time(), "b", "u2", exclusive=[D1]))
        token = status.leases[0].token
        history.append(GuestWrote(anyio.current_time(), "b", "u2", D1, token))

    joined = history.of(HostJoined)
    assert sorted(e.host for e in joined) == ["a", "b"]
    acquired = history.of(LeaseAcquired)
    assert [(e.host, e.domain, e.leases) for e in acquired] == [
        ("a", "u1", (excl(D1, 1),)),
        ("b", "u2", (excl(D1, 2),)),
    ]
    assert [e.host for e in history.of(LockspaceLost)] == ["a"]
    (fenced,) = history.of(FailureActionRan)
    assert (fenced.host, fenced.domain, fenced.action) == ("a", "u1", "poweroff")
    assert fenced.result == "no guest pid registered: nothing to kill"
    (lost,) = history.of(LeaseLost)
    assert (lost.host, lost.domain, lost.keys) == ("a", "u1", ("disk:/d/1.img",))
    assert fenced.time <= lost.time
    assert all(r.holders == (("a", "u1"),) for r in history.of(AcquireRefused))
    assert check(history, host_dead=TIMING["host_dead"], slack=TIMING["renew_interval"]) == []


# --- rule 1: two hosts on one exclusive disk ---------------------------------------


def test_rule1_two_exclusive_guests_overlap() -> None:
    first = GuestStarted(1.0, "a", "u1", exclusive=[D1])
    second = GuestStarted(2.0, "b", "u2", exclusive=[D1])
    v = only(
        run(first, second, GuestStopped(3.0, "a", "u1"), GuestStopped(4.0, "b", "u2")), Rule.EXCLUSIVE_OVERLAP
    )
    assert v.evidence == (first, second)
    assert "u1 on host a" in v.message
    assert "u2 on host b" in v.message
    assert D1 in v.message


def test_rule1_shared_user_meets_an_exclusive_one() -> None:
    reader = GuestStarted(1.0, "a", "u1", shared=[D1])
    writer = GuestStarted(2.0, "b", "u2", exclusive=[D1])
    assert only(run(reader, writer), Rule.EXCLUSIVE_OVERLAP).evidence == (reader, writer)


def test_rule1_hotplug_onto_a_disk_in_use() -> None:
    a = GuestStarted(1.0, "a", "u1", exclusive=[D1])
    b = GuestStarted(2.0, "b", "u2", exclusive=[D2])
    plug = GuestDisksChanged(3.0, "b", "u2", exclusive=[D1, D2])
    assert only(run(a, b, plug), Rule.EXCLUSIVE_OVERLAP).evidence == (a, plug)


def test_rule1_shared_disk_switched_to_exclusive_while_shared_elsewhere() -> None:
    a = GuestStarted(1.0, "a", "u1", shared=[D1])
    b = GuestStarted(2.0, "b", "u2", shared=[D1])
    upgrade = GuestDisksChanged(3.0, "b", "u2", exclusive=[D1])
    assert only(run(a, b, upgrade), Rule.EXCLUSIVE_OVERLAP).evidence == (a, upgrade)


def test_rule1_a_coordinator_crash_does_not_stop_the_guest() -> None:
    a = GuestStarted(1.0, "a", "u1", exclusive=[D1])
    b = GuestStarted(20.0, "b", "u2", exclusive=[D1])
    assert only(run(a, CoordinatorCrashed(2.0, "a"), b), Rule.EXCLUSIVE_OVERLAP).evidence == (a, b)


@pytest.mark.parametrize(
    "events",
    [
        pytest.param(
            [
                GuestStarted(1.0, "a", "u1", exclusive=[D1]),
                GuestStopped(5.0, "a", "u1"),
                GuestStarted(5.0, "b", "u2", exclusive=[D1]),
            ],
            id="back-to-back-at-one-instant",
        ),
        pytest.param(
            [GuestStarted(1.0, "a", "u1", shared=[D1]), GuestStarted(2.0, "b", "u2", shared=[D1])],
            id="shared-and-shared",
        ),
        pytest.param(
            [GuestStarted(1.0, "a", "u1", exclusive=[D1]), GuestStarted(2.0, "b", "u2", exclusive=[D2])],
            id="different-disks",
        ),
        pytest.param(
            [GuestStarted(1.0, "a", "u1", exclusive=[D1]), GuestStarted(2.0, "a", "u2", exclusive=[D1])],
            id="same-host",
        ),
        pytest.param(
            [
                GuestStarted(1.0, "a", "u1", exclusive=[D1, D2]),
                GuestDisksChanged(2.0, "a", "u1", exclusive=[D2]),
                GuestStarted(3.0, "b", "u2", exclusive=[D1]),
            ],
            id="unplugged-first",
        ),
        pytest.param(
            [
                GuestStarted(1.0, "a", "u1", exclusive=[D1]),
                HostCrashed(2.0, "a"),
                GuestStarted(15.0, "b", "u2", exclusive=[D1]),
            ],
            id="died-with-its-host",
        ),
        pytest.param(
            [
                GuestStarted(1.0, "a", "u1", exclusive=[D1]),
                GuestStopped(2.0, "a", "u1", StopReason.PAUSED),
                GuestStarted(3.0, "b", "u2", exclusive=[D1]),
            ],
            id="paused-first",
        ),
    ],
)
def test_rule1_near_misses(events: list[HistoryEvent]) -> None:
    assert run(*events) == []


# --- rule 2: a write with a token older than one already seen ----------------------------


def test_rule2_old_token_after_newer() -> None:
    new = GuestWrote(2.0, "b", "u2", D1, 2)
    stale = GuestWrote(3.0, "a", "u1", D1, 1)
    v = only(run(GuestWrote(1.0, "a", "u1", D1, 1), new, stale), Rule.STALE_TOKEN_WRITE)
    assert v.evidence == (new, stale)
    assert "token 1" in v.message
    assert "token 2" in v.message


def test_rule2_shared_writer_with_a_token_older_than_an_exclusive_write() -> None:
    exclusive = GuestWrote(2.0, "b", "u2", D1, 5)
    stale = GuestWrote(3.0, "a", "u1", D1, 3, SHARED)
    assert only(run(exclusive, stale), Rule.STALE_TOKEN_WRITE).evidence == (exclusive, stale)


def test_rule2_exclusive_writer_older_than_a_shared_write() -> None:
    shared_write = GuestWrote(2.0, "b", "u2", D1, 6, SHARED)
    stale = GuestWrote(3.0, "a", "u1", D1, 4)
    assert only(run(shared_write, stale), Rule.STALE_TOKEN_WRITE).evidence == (shared_write, stale)


def test_rule2_every_stale_write_is_reported() -> None:
    violations = run(
        GuestWrote(1.0, "b", "u2", D1, 2),
        GuestWrote(2.0, "a", "u1", D1, 1),
        GuestWrote(3.0, "a", "u1", D1, 1),
    )
    assert [v.rule for v in violations] == [Rule.STALE_TOKEN_WRITE] * 2


def test_rule2_near_misses() -> None:
    assert (
        run(
            GuestWrote(1.0, "a", "u1", D1, 1),
            GuestWrote(2.0, "a", "u1", D1, 1),  # the same acquisition writes again
            GuestWrote(3.0, "b", "u2", D1, 2),
            GuestWrote(4.0, "a", "u1", D2, 1),  # another disk has its own tokens
            GuestWrote(5.0, "c", "u3", D3, 4, SHARED),
            GuestWrote(6.0, "d", "u4", D3, 3, SHARED),  # shared holders interleave
            GuestWrote(7.0, "c", "u3", D3, 4, SHARED),
            GuestWrote(8.0, "e", "u5", D3, 9),
        )
        == []
    )


# --- rule 3: a running guest loses a lease with no failure action -------------------------


def test_rule3_coordinator_crash_then_takeover_of_a_running_guest() -> None:
    acquired = LeaseAcquired(1.0, "a", "u1", [excl()])
    started = GuestStarted(1.0, "a", "u1", exclusive=[D1])
    takeover = LeaseAcquired(15.0, "b", "u2", [excl(D1, 2)])
    v = only(run(acquired, started, CoordinatorCrashed(2.0, "a"), takeover), Rule.UNFENCED_LEASE_LOSS)
    assert v.evidence == (acquired, started, takeover)
    assert "u1 on host a" in v.message
    assert "taken over" in v.message


def test_rule3_release_while_running_then_the_guest_writes() -> None:
    started = GuestStarted(1.0, "a", "u1", exclusive=[D1])
    release = LeaseReleased(2.0, "a", "u1", [D1])
    write = GuestWrote(3.0, "a", "u1", D1, 1)
    v = only(run(LeaseAcquired(1.0, "a", "u1", [excl()]), started, release, write), Rule.UNFENCED_LEASE_LOSS)
    assert v.evidence == (started, release, write)


def test_rule3_lost_without_failure_action_then_acquired_elsewhere() -> None:
    started = GuestStarted(1.0, "a", "u1", exclusive=[D1])
    lost = LeaseLost(2.0, "a", "u1")
    other = LeaseAcquired(3.0, "b", "u2", [excl(D1, 2)])
    v = only(run(LeaseAcquired(1.0, "a", "u1", [excl()]), started, lost, other), Rule.UNFENCED_LEASE_LOSS)
    assert v.evidence == (started, lost, other)


def test_rule3_destination_writes_before_the_source_stopped() -> None:
    started = GuestStarted(1.0, "a", "u1", exclusive=[D1])
    transfer = LeasesTransferred(2.0, "a", "u1", "b", "u1", [moved(D1, 1, 2)])
    dest_write = GuestWrote(3.0, "b", "u1", D1, 2)
    events = (
        LeaseAcquired(1.0, "a", "u1", [excl()]),
        started,
        transfer,
        GuestStarted(3.0, "b", "u1", exclusive=[D1]),
        dest_write,
    )
    violations = run(*events)
    rule3 = [v for v in violations if v.rule is Rule.UNFENCED_LEASE_LOSS]
    assert [v.evidence for v in rule3] == [(started, transfer, dest_write)]
    # The destination guest also started while the source still ran.
    assert {v.rule for v in violations} == {Rule.UNFENCED_LEASE_LOSS, Rule.EXCLUSIVE_OVERLAP}


def test_rule3_shared_holder_loses_to_an_exclusive_acquirer() -> None:
    started = GuestStarted(1.0, "a", "u1", shared=[D1])
    release = LeaseReleased(2.0, "a", "u1", [D1])
    writer = LeaseAcquired(3.0, "b", "u2", [excl(D1, 2)])
    v = only(
        run(LeaseAcquired(1.0, "a", "u1", [shared()]), started, release, writer), Rule.UNFENCED_LEASE_LOSS
    )
    assert v.evidence == (started, release, writer)


def fenced_then_taken_over(*, action_first: bool) -> list[HistoryEvent]:
    fence = FailureActionRan(3.0, "a", "u1", "poweroff", "powered off")
    lost = LeaseLost(3.0, "a", "u1", reason="late")
    return [
        LeaseAcquired(1.0, "a", "u1", [excl()]),
        GuestStarted(1.0, "a", "u1", exclusive=[D1]),
        LockspaceLost(3.0, "a"),
        *((fence, lost) if action_first else (lost, fence)),
        LeaseAcquired(15.0, "b", "u2", [excl(D1, 2)]),
        GuestStopped(16.0, "a", "u1", StopReason.FENCED),
    ]


@pytest.mark.parametrize(
    "events",
    [
        pytest.param(fenced_then_taken_over(action_first=True), id="fenced-then-taken-over"),
        pytest.param(fenced_then_taken_over(action_first=False), id="action-after-loss-before-takeover"),
        pytest.param(
            [
                LeaseAcquired(1.0, "a", "u1", [excl()]),
                GuestStarted(1.0, "a", "u1", exclusive=[D1]),
                FailureActionRan(3.0, "a", "u1", "ignore", "ignored (failure_action=ignore)"),
                LeaseAcquired(15.0, "b", "u2", [excl(D1, 2)]),
                LeaseReleased(16.0, "b", "u2", [D1]),
                LeaseReleased(17.0, "a", "u1", [D1]),
                GuestWrote(18.0, "a", "u1", D1, 1),
            ],
            id="ignore-action-ran-and-the-guest-runs-on",
        ),
        pytest.param(
            [
                LeaseAcquired(1.0, "a", "u1", [excl()]),
                GuestStarted(1.0, "a", "u1", exclusive=[D1]),
                LeasesTransferred(2.0, "a", "u1", "b", "u1", [moved(D1, 1, 2)]),
                GuestStopped(2.5, "a", "u1", StopReason.MIGRATED),
                GuestStarted(2.5, "b", "u1", exclusive=[D1]),
                GuestWrote(3.0, "b", "u1", D1, 2),
            ],
            id="completed-migration",
        ),
        pytest.param(
            [
                LeaseAcquired(1.0, "a", "u1", [excl()]),
                GuestStarted(1.0, "a", "u1", exclusive=[D1]),
                GuestStopped(2.0, "a", "u1"),
                LeaseReleased(2.0, "a", "u1", [D1]),
                LeaseAcquired(3.0, "b", "u2", [excl(D1, 2)]),
            ],
            id="stopped-before-release",
        ),
        pytest.param(
            [
                LeaseAcquired(1.0, "a", "u1", [excl(), excl(D2)]),
                GuestStarted(1.0, "a", "u1", exclusive=[D1, D2]),
                GuestDisksChanged(2.0, "a", "u1", exclusive=[D1]),
                LeaseReleased(2.0, "a", "u1", [D2]),
                LeaseAcquired(3.0, "b", "u2", [excl(D2, 2)]),
                GuestWrote(4.0, "a", "u1", D1, 1),
            ],
            id="hot-unplug",
        ),
        pytest.param(
            [
                LeaseAcquired(1.0, "a", "u1", [excl()]),
                GuestStarted(1.0, "a", "u1", exclusive=[D1]),
                HostCrashed(2.0, "a"),
                LeaseAcquired(12.0, "b", "u2", [excl(D1, 2)]),
            ],
            id="died-with-its-host",
        ),
        pytest.param(
            [
                LeaseAcquired(1.0, "a", "u1", [excl()]),
                GuestStarted(1.0, "a", "u1", exclusive=[D1]),
                LeaseReleased(2.0, "a", "u1", [D1]),
                LeaseAcquired(3.0, "a", "u1", [excl(D1, 2)]),
                GuestWrote(4.0, "a", "u1", D1, 2),
                LeaseAcquired(5.0, "b", "u2", [shared(D2, 1)]),
            ],
            id="re-acquired-before-harm",
        ),
        pytest.param(
            [
                LeaseAcquired(1.0, "a", "u1", [shared()]),
                GuestStarted(1.0, "a", "u1", shared=[D1]),
                LeaseReleased(2.0, "a", "u1", [D1]),
                LeaseAcquired(3.0, "b", "u2", [shared(D1, 2)]),
                GuestWrote(4.0, "b", "u2", D1, 2, SHARED),
            ],
            id="shared-released-shared-taken",
        ),
        pytest.param(
            [
                LeaseAcquired(1.0, "a", "u1", [excl()]),
                GuestStarted(1.0, "a", "u1", exclusive=[D1]),
                LeaseLost(2.0, "a", "u1"),
                GuestStopped(3.0, "a", "u1", StopReason.HOST_DIED),
                LeaseAcquired(4.0, "b", "u2", [excl(D1, 2)]),
            ],
            id="stopped-after-loss-before-takeover",
        ),
    ],
)
def test_rule3_near_misses(events: list[HistoryEvent]) -> None:
    assert run(*events) == []


# --- rule 4: a cancelled migration must leave the source owning everything ------------------


def test_rule4_cancelled_after_transfer_without_transfer_back() -> None:
    transfer = LeasesTransferred(2.0, "a", "u1", "b", "u1", [moved(D1, 1, 2), moved(D2, 1, 2)])
    back = LeasesTransferred(3.0, "b", "u1", "a", "u1", [moved(D2, 2, 3)])
    cancelled = MigrationCancelled(4.0, "u1", "a", [excl(D1), excl(D2)], dest_host="b")
    v = only(
        run(LeaseAcquired(1.0, "a", "u1", [excl(D1), excl(D2)]), transfer, back, cancelled),
        Rule.CANCELLED_MIGRATION_LOST_LEASE,
    )
    assert v.evidence == (transfer, cancelled)
    assert D1 in v.message
    assert D2 not in v.message


def test_rule4_source_released_one_lease() -> None:
    release = LeaseReleased(2.0, "a", "u1", [D2])
    cancelled = MigrationCancelled(3.0, "u1", "a", [excl(D1), excl(D2)])
    v = only(
        run(LeaseAcquired(1.0, "a", "u1", [excl(D1), excl(D2)]), release, cancelled),
        Rule.CANCELLED_MIGRATION_LOST_LEASE,
    )
    assert v.evidence == (release, cancelled)


def test_rule4_source_holds_the_lease_in_a_weaker_mode() -> None:
    reacquired = LeaseAcquired(2.0, "a", "u1", [shared(D1, 2)])
    cancelled = MigrationCancelled(3.0, "u1", "a", [excl(D1)])
    v = only(
        run(
            LeaseAcquired(1.0, "a", "u1", [excl()]),
            LeaseReleased(1.5, "a", "u1", [D1]),
            reacquired,
            cancelled,
        ),
        Rule.CANCELLED_MIGRATION_LOST_LEASE,
    )
    assert v.evidence == (reacquired, cancelled)


@pytest.mark.parametrize(
    "events",
    [
        pytest.param(
            [
                LeaseAcquired(1.0, "a", "u1", [excl(D1), shared(D2)]),
                MigrationCancelled(2.0, "u1", "a", [excl(D1), shared(D2)]),
            ],
            id="kept-everything",
        ),
        pytest.param(
            [
                LeaseAcquired(1.0, "a", "u1", [excl(D1), shared(D2)]),
                LeasesTransferred(2.0, "a", "u1", "b", "u1", [moved(D1, 1, 2), moved(D2, 1, 2, SHARED)]),
                LeasesTransferred(3.0, "b", "u1", "a", "u1", [moved(D1, 2, 3), moved(D2, 2, 3, SHARED)]),
                MigrationCancelled(4.0, "u1", "a", [excl(D1), shared(D2)]),
            ],
            id="transferred-back-with-newer-tokens",
        ),
        pytest.param(
            [
                LeaseAcquired(1.0, "a", "u1", [excl(D1)]),
                LeaseLost(2.0, "a", "u1"),
                MigrationCancelled(3.0, "u1", "a", [excl(D1)]),
            ],
            id="lost-to-a-lockspace-expiry",
        ),
        pytest.param(
            [
                LeaseAcquired(1.0, "a", "u1", [excl(D1)]),
                LockspaceLost(2.0, "a", "no renewal"),
                LeaseAcquired(4.0, "b", "u2", [excl(D1, 2)]),
                LeaseLost(5.0, "a", "u1"),  # reported late: its actor was busy
                MigrationCancelled(6.0, "u1", "a", [excl(D1)]),
            ],
            id="taken-over-while-the-source-lockspace-was-lost",
        ),
    ],
)
def test_rule4_near_misses(events: list[HistoryEvent]) -> None:
    assert run(*events) == []


def test_rule4_a_takeover_after_the_lockspace_was_regained_is_flagged() -> None:
    takeover = LeaseAcquired(4.0, "b", "u2", [excl(D1, 2)])
    cancelled = MigrationCancelled(5.0, "u1", "a", [excl(D1)])
    v = only(
        run(
            LeaseAcquired(1.0, "a", "u1", [excl(D1)]),
            LockspaceLost(2.0, "a", "no renewal"),
            LockspaceRegained(3.0, "a"),
            takeover,
            cancelled,
        ),
        Rule.CANCELLED_MIGRATION_LOST_LEASE,
    )
    assert v.evidence == (takeover, cancelled)


# --- rule 5: a gone host's lease must be taken over after host_dead ------------------------


def test_rule5_refused_long_after_the_holder_crashed() -> None:
    crash = HostCrashed(2.0, "a")
    first = AcquireRefused(3.0, "b", "u2", D1, [("a", "u1")])
    late = AcquireRefused(13.0, "b", "u2", D1, [("a", "u1")])
    again = AcquireRefused(14.0, "b", "u2", D1, [("a", "u1")])
    v = only(
        run(LeaseAcquired(1.0, "a", "u1", [excl()]), crash, first, late, again), Rule.GONE_HOST_KEEPS_LEASE
    )
    assert v.evidence == (crash, first, late)
    assert "host b was refused" in v.message
    assert "because of host a" in v.message
    assert D1 in v.message


def test_rule5_clock_starts_when_faults_heal() -> None:
    crash = CoordinatorCrashed(2.0, "a")
    healed = FaultsHealed(5.0)
    first = AcquireRefused(4.0, "b", "u2", D1, [("a", "u1")])
    during = AcquireRefused(14.5, "b", "u2", D1, [("a", "u1")])
    late = AcquireRefused(15.0, "b", "u2", D1, [("a", "u1")])
    events = (FaultInjected(1.0, "storage stalls"), crash, first, healed, during, late)
    assert only(run(*events), Rule.GONE_HOST_KEEPS_LEASE).evidence == (crash, first, healed, late)


def test_rule5_snapshot_still_names_the_gone_host_after_a_takeover() -> None:
    crash = HostCrashed(2.0, "a")
    takeover = LeaseAcquired(13.0, "b", "u2", [excl(D1, 2)])
    snapshot = LeaseHeld(14.0, D1, "a", "u1", EXCL, 1)
    v = only(
        run(LeaseAcquired(1.0, "a", "u1", [excl()]), crash, takeover, snapshot), Rule.GONE_HOST_KEEPS_LEASE
    )
    assert v.evidence == (crash, takeover, snapshot)


@pytest.mark.parametrize(
    "events",
    [
        pytest.param(
            [
                HostCrashed(2.0, "a"),
                AcquireRefused(3.0, "b", "u2", D1, [("a", "u1")]),
                AcquireRefused(12.9, "b", "u2", D1, [("a", "u1")]),
            ],
            id="before-host-dead",
        ),
        pytest.param(
            [HostCrashed(2.0, "a"), AcquireRefused(50.0, "b", "u2", D1, [("a", "u1")])],
            id="first-look-long-after",
        ),
        pytest.param(
            [
                HostCrashed(2.0, "a"),
                AcquireRefused(3.0, "b", "u2", D1, [("a", "u1")]),
                FaultInjected(4.0, "partition"),
                AcquireRefused(20.0, "b", "u2", D1, [("a", "u1")]),
            ],
            id="faults-still-active",
        ),
        pytest.param(
            [
                HostCrashed(2.0, "a"),
                AcquireRefused(3.0, "b", "u2", D1, [("a", "u1")]),
                HostRecovered(5.0, "a"),
                AcquireRefused(20.0, "b", "u2", D1, [("a", "u1")]),
            ],
            id="holder-recovered",
        ),
        pytest.param(
            [
                HostCrashed(2.0, "a"),
                AcquireRefused(3.0, "b", "u2", D1, [("a", "u1")]),
                HostCrashed(4.0, "b"),
                HostRecovered(6.0, "b"),
                AcquireRefused(15.0, "b", "u2", D1, [("a", "u1")]),
            ],
            id="observer-restarted",
        ),
        pytest.param(
            [
                HostCrashed(2.0, "a"),
                AcquireRefused(3.0, "b", "u2", D1, [("a", "u1")]),
                AcquireRefused(13.0, "b", "u2", D1, [("a", "u1")]),
            ],
            id="within-slack",
        ),
        pytest.param(
            [
                LeaseAcquired(1.0, "a", "u1", [excl()]),
                HostCrashed(2.0, "a"),
                LeaseAcquired(12.0, "b", "u2", [excl(D1, 2)]),
                LeaseHeld(13.0, D1, "b", "u2", EXCL, 2),
                LeaseHeld(13.0, D2, "a", "u1", EXCL, 1),
            ],
            id="taken-over-and-untouched-lease",
        ),
        pytest.param(
            [
                LeaseAcquired(1.0, "a", "u1", [shared()]),
                HostCrashed(2.0, "a"),
                LeaseAcquired(13.0, "b", "u2", [shared(D1, 2)]),
                LeaseHeld(14.0, D1, "a", "u1", SHARED, 1),
            ],
            id="shared-probe-need-not-evict",
        ),
    ],
)
def test_rule5_near_misses(events: list[HistoryEvent]) -> None:
    assert run(*events, slack=0.5) == []


# --- the checker as a whole ----------------------------------------------------------


def test_plain_iterables_are_ordered_and_results_are_deterministic() -> None:
    events = [
        GuestWrote(3.0, "a", "u1", D1, 1),
        GuestWrote(2.0, "b", "u2", D1, 2),
        GuestStarted(2.0, "b", "u2", exclusive=[D1]),
        GuestStarted(1.0, "a", "u1", exclusive=[D1]),
    ]
    first = check(events, host_dead=HOST_DEAD)
    assert [v.rule for v in first] == [Rule.EXCLUSIVE_OVERLAP, Rule.STALE_TOKEN_WRITE]
    assert check(History(events), host_dead=HOST_DEAD) == first
    assert first[0].time == 2.0


def test_unknown_events_are_ignored_by_the_checker() -> None:
    @attrs.frozen
    class Custom(HistoryEvent):
        note: str

    assert run(Custom(1.0, "x"), HostEvent(2.0, "a", "new_kind", {}), LockspaceRegained(3.0, "a")) == []


def test_a_hundred_thousand_events_check_quickly() -> None:
    history = History()
    hosts = [f"h{i}" for i in range(20)]
    t = 0.0
    for n in range(10_000):
        host, key, domain = hosts[n % 20], f"disk:/d/{n % 200}", f"u{n}"
        token = n // 200 + 1
        t += 1.0
        history.extend(
            [
                LeaseAcquired(t, host, domain, [excl(key, token)]),
                GuestStarted(t, host, domain, exclusive=[key], shared=["disk:/iso"]),
                *(GuestWrote(t + 0.1 * i, host, domain, key, token) for i in range(1, 6)),
                GuestStopped(t + 0.7, host, domain),
                LeaseReleased(t + 0.7, host, domain, [key]),
                LeaseHeld(t + 0.8, key, host, domain, EXCL, token),
            ]
        )
    assert len(history) == 100_000
    started = time.perf_counter()
    assert check(history, host_dead=HOST_DEAD) == []
    assert time.perf_counter() - started < 5.0


# --- property tests: a legal reference model, and one mutation that breaks a rule ---------------

HOSTS = ("h1", "h2", "h3")
KEYS = ("disk:/1", "disk:/2", "disk:/3")
Owner = tuple[str, str]
Op = tuple[Any, ...]


@attrs.define
class Entry:
    mode: LeaseMode
    token: int
    incarnation: int


class Model:
    """A cluster that only does legal things, recording what it does.

    Takeover of a crashed host's entries happens only after host_dead (or
    at once after the host came back as a new incarnation); guests stop
    before their leases go; the failure action runs before a lease is lost;
    migrations stop the source before the destination starts.
    """

    def __init__(self) -> None:
        self.history = History()
        self.now = 0.0
        self.tokens: dict[str, int] = {}
        self.records: dict[str, dict[Owner, Entry]] = {}
        self.running: dict[Owner, dict[str, LeaseMode]] = {}
        self.incarnation: dict[str, int] = dict.fromkeys(HOSTS, 0)
        self.crashed: dict[str, float] = {}
        self.written: dict[str, int] = {}
        self.faulty = False
        self.serial = 0

    def emit(self, event: HistoryEvent) -> HistoryEvent:
        self.history.append(event)
        return event

    def fresh_domain(self) -> str:
        self.serial += 1
        return f"u{self.serial}"

    def guests(self) -> list[Owner]:
        return sorted(self.running)

    def alive(self, owner: Owner, entry: Entry) -> bool:
        host = owner[0]
        if entry.incarnation != self.incarnation.get(host, 0):
            return False
        crashed = self.crashed.get(host)
        return crashed is None or self.now < crashed + HOST_DEAD

    def blockers(self, key: str, owner: Owner, mode: LeaseMode) -> list[Owner]:
        return sorted(
            o
            for o, e in self.records.get(key, {}).items()
            if o != owner and (mode is EXCL or e.mode is EXCL) and self.alive(o, e)
        )

    def acquire(self, owner: Owner, wanted: dict[str, LeaseMode]) -> bool:
        if owner[0] in self.crashed:
            return False
        for key in sorted(wanted):
            busy = self.blockers(key, owner, wanted[key])
            if busy:
                self.emit(AcquireRefused(self.now, owner[0], owner[1], key, busy))
                return False
        leases = []
        for key in sorted(wanted):
            leases.append(Lease(key, wanted[key], self.grant(key, owner, wanted[key])))
        self.emit(LeaseAcquired(self.now, owner[0], owner[1], leases))
        return True

    def grant(self, key: str, owner: Owner, mode: LeaseMode) -> int:
        record = self.records.setdefault(key, {})
        for other in [o for o, e in record.items() if o != owner and (mode is EXCL or e.mode is EXCL)]:
            del record[other]  # dead holders in the way: the takeover
        self.tokens[key] = self.tokens.get(key, 0) + 1
        record[owner] = Entry(mode, self.tokens[key], self.incarnation.get(owner[0], 0))
        return self.tokens[key]

    def held(self, owner: Owner) -> list[Lease]:
        return [
            Lease(key, record[owner].mode, record[owner].token)
            for key, record in sorted(self.records.items())
            if owner in record
        ]

    def start(self, host: str, exclusive: set[str], shared_: set[str]) -> Owner | None:
        owner = (host, self.fresh_domain())
        disks = {**dict.fromkeys(shared_ - exclusive, SHARED), **dict.fromkeys(exclusive, EXCL)}
        if not self.acquire(owner, disks):
            return None
        self.running[owner] = disks
        self.emit(GuestStarted(self.now, host, owner[1], exclusive=exclusive, shared=shared_ - exclusive))
        return owner

    def release(self, owner: Owner, keys: Sequence[str]) -> None:
        for key in keys:
            self.records[key].pop(owner, None)
        self.emit(LeaseReleased(self.now, owner[0], owner[1], keys))

    def write(self, owner: Owner, key: str) -> None:
        entry = self.records[key][owner]
        self.emit(GuestWrote(self.now, owner[0], owner[1], key, entry.token, entry.mode))
        self.written[key] = max(self.written.get(key, 0), entry.token)

    def stop(self, owner: Owner, reason: StopReason = StopReason.SHUTDOWN) -> None:
        disks = self.running.pop(owner)
        self.emit(GuestStopped(self.now, owner[0], owner[1], reason))
        if disks:
            self.release(owner, sorted(disks))

    def transfer(self, source: Owner, dest: Owner) -> None:
        moves = []
        for lease in self.held(source):
            del self.records[lease.key][source]
            moves.append(
                TransferredLease(lease.key, lease.mode, lease.token, self.grant(lease.key, dest, lease.mode))
            )
        self.emit(LeasesTransferred(self.now, source[0], source[1], dest[0], dest[1], moves))

    def apply(self, op: Op) -> None:
        """Do one drawn operation if it is legal now; otherwise do nothing."""
        getattr(self, "op_" + op[0])(*op[1:])

    def pick(self, index: int) -> Owner | None:
        guests = self.guests()
        return guests[index % len(guests)] if guests else None

    def op_tick(self, seconds: float) -> None:
        self.now += seconds

    def op_start(self, host: str, exclusive: frozenset[str], shared_: frozenset[str]) -> None:
        self.start(host, set(exclusive), set(shared_))

    def op_write(self, index: int, disk: int) -> None:
        owner = self.pick(index)
        disks = sorted(self.running[owner]) if owner else []
        if owner and disks:
            self.write(owner, disks[disk % len(disks)])

    def op_stop(self, index: int, reason: StopReason) -> None:
        owner = self.pick(index)
        if owner:
            self.stop(owner, reason)

    def op_crash(self, host: str) -> None:
        if host in self.crashed:
            return
        self.crashed[host] = self.now
        for owner in [g for g in self.guests() if g[0] == host]:
            del self.running[owner]  # died with the host; the records keep naming it
        self.emit(HostCrashed(self.now, host))

    def op_recover(self, host: str) -> None:
        if host in self.crashed:
            del self.crashed[host]
            self.incarnation[host] += 1  # entries of the old incarnation are dead at once
            self.emit(HostRecovered(self.now, host))

    def op_fence(self, host: str) -> None:
        if host in self.crashed:
            return
        self.emit(LockspaceLost(self.now, host, "renewals late"))
        for owner in [g for g in self.guests() if g[0] == host and self.running[g]]:
            self.emit(FailureActionRan(self.now, owner[0], owner[1], "poweroff", "powered off"))
            del self.running[owner]
            self.emit(GuestStopped(self.now, owner[0], owner[1], StopReason.FENCED))
            for record in self.records.values():
                record.pop(owner, None)
            self.emit(LeaseLost(self.now, owner[0], owner[1], reason="renewals late"))
        self.emit(LockspaceRegained(self.now, host))

    def op_migrate(self, index: int, dest_host: str, outcome: str) -> None:
        owner = self.pick(index)
        if owner:
            self.migrate(owner, dest_host, outcome)

    def op_hotplug(self, index: int, key: str, mode: LeaseMode) -> None:
        owner = self.pick(index)
        if owner and key not in self.running[owner] and self.acquire(owner, {key: mode}):
            self.running[owner][key] = mode
            self.emit(GuestDisksChanged(self.now, owner[0], owner[1], *_split(self.running[owner])))

    def op_unplug(self, index: int, disk: int) -> None:
        owner = self.pick(index)
        if owner and self.running[owner]:
            key = sorted(self.running[owner])[disk % len(self.running[owner])]
            del self.running[owner][key]
            self.emit(GuestDisksChanged(self.now, owner[0], owner[1], *_split(self.running[owner])))
            self.release(owner, [key])

    def op_probe(self, host: str, key: str) -> None:
        prober = (host, self.fresh_domain())
        if self.acquire(prober, {key: EXCL}):  # refused while alive, a takeover once dead
            self.release(prober, [key])

    def op_fault(self) -> None:
        if not self.faulty:
            self.faulty = True
            self.emit(FaultInjected(self.now, "storage stalls"))

    def op_heal(self) -> None:
        if self.faulty:
            self.faulty = False
            self.emit(FaultsHealed(self.now))

    def op_snapshot(self) -> None:
        for key, record in sorted(self.records.items()):
            for (host, domain), entry in sorted(record.items()):
                self.emit(LeaseHeld(self.now, key, host, domain, entry.mode, entry.token))

    def migrate(self, source: Owner, dest_host: str, outcome: str) -> None:
        dest = (dest_host, source[1])
        if dest_host == source[0] or dest_host in self.crashed or dest in self.running:
            return
        before = self.held(source)
        if outcome == "complete":
            self.transfer(source, dest)
            disks = self.running.pop(source)
            self.emit(GuestStopped(self.now, source[0], source[1], StopReason.MIGRATED))
            self.running[dest] = disks
            self.emit(GuestStarted(self.now, dest[0], dest[1], *_split(disks)))
            return
        if outcome == "cancel_after":
            self.transfer(source, dest)
            self.transfer(dest, source)
        self.emit(MigrationCancelled(self.now, source[1], source[0], before, dest_host))


def _split(disks: dict[str, LeaseMode]) -> tuple[list[str], list[str]]:
    return [k for k, m in disks.items() if m is EXCL], [k for k, m in disks.items() if m is SHARED]


host_st = st.sampled_from(HOSTS)
key_st = st.sampled_from(KEYS)
index_st = st.integers(0, 20)
ARGUMENTS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "tick": st.tuples(st.sampled_from([0.0, 0.5, 1.0, 5.0, 9.5, HOST_DEAD, 12.0])),
    "start": st.tuples(host_st, st.frozensets(key_st, max_size=2), st.frozensets(key_st, max_size=2)),
    "write": st.tuples(index_st, index_st),
    "stop": st.tuples(index_st, st.sampled_from([StopReason.SHUTDOWN, StopReason.PAUSED])),
    "crash": st.tuples(host_st),
    "recover": st.tuples(host_st),
    "fence": st.tuples(host_st),
    "migrate": st.tuples(index_st, host_st, st.sampled_from(["complete", "cancel_before", "cancel_after"])),
    "hotplug": st.tuples(index_st, key_st, st.booleans().map(lambda shared: SHARED if shared else EXCL)),
    "unplug": st.tuples(index_st, index_st),
    "probe": st.tuples(host_st, key_st),
    "fault": st.tuples(),
    "heal": st.tuples(),
    "snapshot": st.tuples(),
}
# Guests doing things is what the rules are about; faults are spice.
WEIGHTS = {"tick": 3, "start": 4, "write": 6, "migrate": 2, "probe": 2, "recover": 2}
KINDS = [kind for kind in ARGUMENTS for _ in range(WEIGHTS.get(kind, 1))]
op_st = st.sampled_from(KINDS).flatmap(lambda kind: ARGUMENTS[kind].map(lambda args: (kind, *args)))
ops_st = st.lists(op_st, min_size=20, max_size=100)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def play(ops: list[Op]) -> Model:
    model = Model()
    for op in ops:
        model.apply(op)
    return model


@PROPERTY
@given(ops_st)
def test_safe_histories_have_no_violations(ops: list[Op]) -> None:
    model = play(ops)
    assert check(model.history, host_dead=HOST_DEAD) == []


def running_exclusive(model: Model) -> Iterator[tuple[Owner, str]]:
    for owner in model.guests():
        for key, mode in sorted(model.running[owner].items()):
            if mode is EXCL:
                yield owner, key


def ensure_running_exclusive(model: Model) -> tuple[Owner, str]:
    for found in running_exclusive(model):
        return found
    owner = model.start("m1", {"disk:/fresh"}, set())
    assert owner is not None
    return owner, "disk:/fresh"


def break_rule(model: Model, rule: Rule) -> HistoryEvent:
    """Append one unsafe step (and what it needs) and return the event the rule must cite."""
    model.now += 1.0
    if rule is Rule.EXCLUSIVE_OVERLAP:
        _, key = ensure_running_exclusive(model)
        return model.emit(GuestStarted(model.now, "m2", "intruder", exclusive=[key]))
    if rule is Rule.STALE_TOKEN_WRITE:
        stale = [k for k, top in sorted(model.written.items()) if top >= 2]
        if stale:
            return model.emit(GuestWrote(model.now, "m2", "intruder", stale[0], model.written[stale[0]] - 1))
        old = model.start("m1", {"disk:/fresh"}, set())
        assert old is not None
        model.write(old, "disk:/fresh")
        model.stop(old)
        new = model.start("m2", {"disk:/fresh"}, set())
        assert new is not None
        model.write(new, "disk:/fresh")
        return model.emit(GuestWrote(model.now, old[0], old[1], "disk:/fresh", 1))
    if rule is Rule.UNFENCED_LEASE_LOSS:
        owner, key = ensure_running_exclusive(model)
        model.emit(CoordinatorCrashed(model.now, owner[0]))
        model.now += HOST_DEAD
        return model.emit(LeaseAcquired(model.now, "m2", "intruder", [excl(key, model.tokens[key] + 1)]))
    if rule is Rule.CANCELLED_MIGRATION_LOST_LEASE:
        owner, _ = ensure_running_exclusive(model)
        before = model.held(owner)
        model.transfer(owner, ("m2", owner[1]))
        return model.emit(MigrationCancelled(model.now, owner[1], owner[0], before, "m2"))
    # Rule 5: a crashed holder that is still refused once host_dead has passed.
    if model.faulty:
        model.emit(FaultsHealed(model.now))
    holder = model.start("m1", {"disk:/fresh"}, set())
    assert holder is not None
    model.emit(HostCrashed(model.now, "m1"))
    model.now += 1.0
    model.emit(AcquireRefused(model.now, "m2", "intruder", "disk:/fresh", [holder]))
    model.now += HOST_DEAD
    return model.emit(AcquireRefused(model.now, "m2", "intruder", "disk:/fresh", [holder]))


@PROPERTY
@given(ops_st, st.sampled_from(list(Rule)))
def test_one_unsafe_step_is_caught_by_its_rule(ops: list[Op], rule: Rule) -> None:
    model = play(ops)
    culprit = break_rule(model, rule)
    found = [v for v in check(model.history, host_dead=HOST_DEAD) if v.rule is rule]
    assert any(culprit in v.evidence for v in found), found
