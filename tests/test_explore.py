"""Exhaustive exploration of the migration handoff (:mod:`actorlock._verify.explore`).

Within the default bounds every interleaving of both machines, the model
lockspace, a lossy network, crashes and a third host keeps the safety rules,
can always finish, and reaches every kind of end. Mutants (a lockspace that
copies instead of moving, one that reads stale records, machines that guess
instead of asking, a destination that expires too early, a broken timing
assumption, a livelock) must each be caught with a trace: the search can fail.
"""

from __future__ import annotations

import attrs
import pytest

from actorlock._verify.explore import (
    DEFAULT_BOUNDS,
    DEST_HOST,
    DOMAIN,
    INITIAL_RECORDS,
    LOCKSPACE_ID,
    LOCKSPACE_KIND,
    MIGRATION_ID,
    ORIGINAL,
    SOURCE_HOST,
    THOROUGH_BOUNDS,
    TIMING,
    Bounds,
    ExploreReport,
    Lockspace,
    Model,
    Records,
    clone_machine,
    explore,
    machine_key,
    main_explore,
    merge,
)
from actorlock.errors import ActorlockError
from actorlock.model import LockState
from actorlock.protocol import (
    Effect,
    Message,
    MigrationDestination,
    MigrationSource,
    Ownership,
    PrepareReply,
    QueryBackend,
    Side,
    SourceState,
    Timer,
    TransferLeases,
)

# The protocol's own interleavings only: no budgeted fault, no third host.
QUIET = Bounds(adversity=0, third_host=False)


@pytest.fixture(scope="module")
def default_report() -> ExploreReport:
    return explore(Model(bounds=DEFAULT_BOUNDS))


def _violations(report: ExploreReport) -> str:
    return "\n\n".join(v.render() for v in report.violations)


# --- the real protocol -----------------------------------------------------------


def test_default_bounds_break_no_rule(default_report: ExploreReport) -> None:
    assert default_report.ok, _violations(default_report)


def test_the_search_really_ran(default_report: ExploreReport) -> None:
    report = default_report
    assert report.states > 50_000
    assert report.transitions > 5 * report.states
    assert report.terminal_states > 500
    assert report.max_depth >= 15
    assert report.truncated == 0  # the bounded space was explored to its end...
    assert report.progress_checked  # ...so "an end is always reachable" was checked


@pytest.mark.parametrize(
    "label",
    [
        "source committed, destination committed",
        "source cancelled, destination cancelled",
        "source cancelled, destination expired",
        "source cancelled, destination refused",
        "source refused, destination refused",
        "source refused, destination expired",
        # The source crashed after the swap, or during it and the swap landed:
        # the destination learns it from the backend.
        "source committed (crashed), destination committed",
        "source transferring (crashed), destination committed",
        # The destination crashed: the source cancels at its deadline, or had committed.
        "source cancelled, destination committing (crashed)",
        "source committed, destination committing (crashed)",
        # The destination forgot its migration; a late PREPARE made a new one.
        "source cancelled, destination expired (re-created by a late PREPARE)",
    ],
)
def test_every_kind_of_end_is_reached(default_report: ExploreReport, label: str) -> None:
    assert default_report.outcomes.get(label, 0) > 0, sorted(default_report.outcomes)


def test_the_epilogue_shortcut_loses_no_end_state() -> None:
    # Playing settled worlds out in one order must reach the same ends as every order.
    shortcut = explore(Model(bounds=QUIET))
    full = explore(Model(bounds=attrs.evolve(QUIET, settle_epilogue=False)))
    assert shortcut.ok, _violations(shortcut)
    assert full.ok, _violations(full)
    assert set(shortcut.outcomes) == set(full.outcomes)
    assert shortcut.states < full.states


def test_the_search_is_deterministic() -> None:
    first = explore(Model(bounds=QUIET))
    second = explore(Model(bounds=QUIET))
    assert (first.states, first.transitions, first.terminal_states, first.max_depth) == (
        second.states,
        second.transitions,
        second.terminal_states,
        second.max_depth,
    )
    assert first.outcomes == second.outcomes


def test_a_cut_search_claims_no_progress() -> None:
    # Worlds left unexpanded could lead anywhere: "an end is reachable" is not checked.
    report = explore(Model(bounds=attrs.evolve(QUIET, max_depth=6)))
    assert report.truncated > 0
    assert not report.progress_checked
    assert report.max_depth == 6


def test_command_prints_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_explore(["--adversity", "0", "--no-third-host"]) == 0
    out = capsys.readouterr().out
    assert "states explored: " in out
    assert "violations: 0" in out


@pytest.mark.slow
def test_thorough_bounds_break_no_rule() -> None:
    report = explore(Model(bounds=THOROUGH_BOUNDS))
    assert report.ok, _violations(report)
    assert report.truncated == 0


# --- state keys ----------------------------------------------------------------------


def _source() -> MigrationSource:
    source = MigrationSource(
        migration_id=MIGRATION_ID,
        local=SOURCE_HOST,
        peer=DEST_HOST.name,
        domain=DOMAIN,
        lockspace_kind=LOCKSPACE_KIND,
        lockspace_id=LOCKSPACE_ID,
        lock_state=ORIGINAL,
        timing=TIMING,
    )
    source.start(now=0.0, deadline_at=10.0)
    return source


def _accepted() -> PrepareReply:
    return PrepareReply(
        migration_id=MIGRATION_ID,
        sender=DEST_HOST.name,
        seq=1,
        deadline_remaining=10.0,
        host_id=DEST_HOST.id,
        incarnation="inc-dst",
    )


def test_a_clone_steps_without_touching_the_original() -> None:
    source = _source()
    key = machine_key(source)
    twin = clone_machine(source)
    twin.receive(_accepted(), now=1.0)
    assert twin.state is SourceState.PREPARED
    assert source.state is SourceState.PREPARING
    assert machine_key(source) == key
    assert machine_key(twin) != key


def test_equal_histories_give_equal_keys() -> None:
    a, b = _source(), _source()
    assert machine_key(a) == machine_key(b)
    a.receive(_accepted(), now=1.0)
    b.receive(_accepted(), now=1.0)
    assert machine_key(a) == machine_key(b)
    a.cancel_requested(now=2.0)
    assert machine_key(a) != machine_key(b)


def test_a_field_of_unknown_kind_is_refused_not_guessed() -> None:
    source = _source()
    source.extra = object()  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="canonical form"):
        machine_key(source)


# --- mutants: the search must be able to fail -----------------------------------------


class CopyingLockspace(Lockspace):
    """``transfer`` writes the destination's entries but leaves the source's."""

    def transfer(
        self, records: Records, effect: TransferLeases, source_incarnation: str
    ) -> tuple[Records, LockState]:
        written, moved = super().transfer(records, effect, source_incarnation)
        before = {record.key: record for record in records}
        kept = {}
        for record in written:
            mine = before[record.key].held_by(effect.source)
            if mine is not None and record.held_by(effect.source) is None:
                kept[record.key] = attrs.evolve(record, holders=(mine, *record.holders))
        return merge(written, kept), moved


class StaleQueryLockspace(Lockspace):
    """``query`` reads a stale replica: the records as they were before the migration."""

    def query(self, records: Records, effect: QueryBackend) -> Ownership:
        return super().query(INITIAL_RECORDS, effect)


class HastyDestination(MigrationDestination):
    """At expiry after saying commit, assumes the commit happened instead of asking the backend."""

    def timer_fired(self, timer: Timer, *, now: float) -> list[Effect]:
        effects = super().timer_fired(timer, now=now)
        if not any(isinstance(e, QueryBackend) for e in effects):
            return effects
        assert self.offered is not None
        guess = LockState.of(attrs.evolve(lease, token=lease.token + 1) for lease in self.offered.leases)
        rest = [e for e in effects if not isinstance(e, QueryBackend)]
        return rest + self.query_done(Ownership(Side.DESTINATION, guess), now=now)


class HastySource(MigrationSource):
    """After an unclear transfer, assumes nothing moved instead of asking the backend."""

    def transfer_done(self, result: LockState | ActorlockError, *, now: float) -> list[Effect]:
        effects = super().transfer_done(result, now=now)
        if not any(isinstance(e, QueryBackend) for e in effects):
            return effects
        rest = [e for e in effects if not isinstance(e, QueryBackend)]
        return rest + self.query_done(Ownership(Side.SOURCE, self.original), now=now)


class EarlyDestination(MigrationDestination):
    """Expires 3 s before the deadline PREPARE carries: its deadline falls before the source's."""

    def receive(self, message: Message, *, now: float) -> list[Effect]:
        remaining = message.deadline_remaining
        if type(message).__name__ == "Prepare" and remaining > 3:
            message = attrs.evolve(message, deadline_remaining=remaining - 3)
        return super().receive(message, now=now)


class SlowClockSource(MigrationSource):
    """Misreads its clock when its caller commits, so it may start the transfer too late."""

    def commit_requested(self, *, now: float) -> list[Effect]:
        return super().commit_requested(now=0.0)


class DeafDestination(MigrationDestination):
    """Ignores its EXPIRY timer: after saying commit it waits for the source forever."""

    def timer_fired(self, timer: Timer, *, now: float) -> list[Effect]:
        if timer is Timer.EXPIRY:
            return []
        return super().timer_fired(timer, now=now)


FIND_ONE = Bounds(stop_after=1, check_progress=False)
FIND_ONE_QUIET = attrs.evolve(QUIET, stop_after=1, check_progress=False)
ONE_CRASH = Bounds(
    losses=0, duplicates=0, backend_faults=0, early_timeouts=0, forgets=0, third_host=False, adversity=1
)

MUTANTS = {
    # name: (model, the kind of violation it must cause)
    "lockspace copies instead of moving": (
        Model(lockspace=CopyingLockspace(), bounds=FIND_ONE_QUIET),
        "two-owners",
    ),
    "lockspace query reads stale records": (
        Model(lockspace=StaleQueryLockspace(), bounds=FIND_ONE),
        "guest-unowned",
    ),
    "destination assumes COMMITTED at expiry": (
        Model(destination_factory=HastyDestination, bounds=FIND_ONE_QUIET),
        "split-brain",
    ),
    "source assumes nothing moved after an unclear transfer": (
        Model(source_factory=HastySource, bounds=FIND_ONE),
        "guest-unowned",
    ),
    "destination deadline before the source's": (
        Model(destination_factory=EarlyDestination, bounds=FIND_ONE_QUIET),
        "disagreement",
    ),
    "transfer started after deadline - margin": (
        Model(source_factory=SlowClockSource, bounds=FIND_ONE_QUIET),
        "late-transfer",
    ),
    "a transfer outlasts the margin": (
        Model(respect_transfer_margin=False, bounds=FIND_ONE_QUIET),
        "disagreement",
    ),
    "destination waits forever": (
        Model(destination_factory=DeafDestination, bounds=ONE_CRASH),
        "no-way-out",
    ),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_a_mutant_is_caught_with_a_trace(name: str) -> None:
    model, kind = MUTANTS[name]
    report = explore(model)
    assert kind in report.kinds(), f"{name}: found {dict(report.violation_counts)}"
    violation = next(v for v in report.violations if v.kind == kind)
    assert violation.trace[0] == "source calls prepare_migrate"
    assert len(violation.trace) > 1
    assert kind in violation.render()
