"""The rules every reachable world, and every end, must satisfy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...model import (
    Lease,
    LeaseMode,
    LeaseOwner,
    LockState,
)
from ...protocol import (
    Call,
    DestinationState,
    MigrationSource,
    Outcome,
    Side,
    SourceState,
    Timer,
    judge_ownership,
)
from ..migration_world import DESTINATION, SOURCE, Records
from .world import (
    DEST_OWNER,
    KEYS,
    ORIGINAL,
    SOURCE_OWNER,
    Problem,
    World,
)

if TYPE_CHECKING:
    from .tables import ExplorerTables


def owner(ex: ExplorerTables, w: World) -> Side:
    """Who the lockspace says holds the domain's leases in ``w``."""
    return judge_ownership(ex.records.obj(w.records), SOURCE_OWNER, DEST_OWNER, KEYS).side


def check(ex: ExplorerTables, w: World) -> list[Problem]:
    """The safety rules every reachable world must satisfy."""
    # They read only these parts of a world.
    key = (
        w.records,
        w.src,
        w.dst,
        w.generation,
        w.guest_src,
        w.guest_dst,
        w.down_src,
        w.down_dst,
        w.answers,
        w.timers,
    )
    found = ex.checked.get(key)
    if found is None:
        found = ex.checked[key] = _check(ex, w)
    return found


def _check(ex: ExplorerTables, w: World) -> list[Problem]:
    records = ex.records.obj(w.records)
    problems = _two_owners(records)
    side = judge_ownership(records, SOURCE_OWNER, DEST_OWNER, KEYS).side
    by_key = {record.key: record for record in records}

    def tokens(owner: LeaseOwner) -> LockState:
        held = []
        for key in KEYS:
            holder = by_key[key].held_by(owner) if key in by_key else None
            if holder is not None:
                held.append(Lease(key, holder.mode, holder.token))
        return LockState.of(held)

    if w.guest_src == "running" and w.guest_dst == "running":
        problems.append(Problem("split-brain", "the guest runs on both hosts"))
    if w.guest_src == "running" and (side is not Side.SOURCE or tokens(SOURCE_OWNER) != ORIGINAL):
        problems.append(
            Problem("guest-unowned", f"the source guest runs but the lockspace says {side.value}")
        )
    if w.guest_dst == "running":
        told = next(
            (
                a.lock_state
                for a in map(ex.answers_.obj, w.answers)
                if a.role == DESTINATION and a.call is Call.COMPLETE
            ),
            None,
        )
        if side is not Side.DESTINATION or tokens(DEST_OWNER) != told:
            problems.append(
                Problem(
                    "guest-unowned",
                    f"the destination guest runs but the lockspace says {side.value} "
                    f"(it holds {leases_text(tokens(DEST_OWNER))}, the guest was told {leases_text(told)})",
                )
            )
    source = ex.machines.obj(w.src)
    assert isinstance(source, MigrationSource)
    cancelled = source.state in (SourceState.CANCELLED, SourceState.REFUSED)
    if w.down_src != "crashed" and cancelled and tokens(SOURCE_OWNER) != ORIGINAL:
        problems.append(
            Problem("cancel-lost-leases", f"source {source.state.value} but holds {tokens(SOURCE_OWNER)}")
        )
    problems += _agreement(ex, w, side)
    problems += _timer_mismatches(ex, w)
    return problems


def _two_owners(records: Records) -> list[Problem]:
    """Records held exclusively by more than one holder, or by both source and destination."""
    problems: list[Problem] = []
    for record in records:
        exclusive = [h for h in record.holders if h.mode is LeaseMode.EXCLUSIVE]
        if exclusive and len(record.holders) > 1:
            holders = ", ".join(f"{h.owner.host}:{h.mode.value}" for h in record.holders)
            problems.append(Problem("two-owners", f"{record.key} held by {holders}"))
        if record.held_by(SOURCE_OWNER) is not None and record.held_by(DEST_OWNER) is not None:
            problems.append(Problem("two-owners", f"{record.key} held by both source and destination"))
    return problems


def _timer_mismatches(ex: ExplorerTables, w: World) -> list[Problem]:
    """Timers a live machine has armed that its driver does not hold (the same deadline)."""
    problems: list[Problem] = []
    for role, number, down in ((SOURCE, w.src, w.down_src), (DESTINATION, w.dst, w.down_dst)):
        if down or number < 0:
            continue
        driver = {(t.timer, t.at) for t in map(ex.timers.obj, w.timers) if t.role == role}
        for timer, at in ex.machines.obj(number).armed_timers.items():
            if (timer, -1.0 if timer is Timer.RETRY else at) not in driver:
                problems.append(
                    Problem("timer-mismatch", f"{role} machine armed {timer.value}@{at:g}, driver not")
                )
    return problems


def _agreement(ex: ExplorerTables, w: World, side: Side) -> list[Problem]:
    problems: list[Problem] = []
    source = ex.machines.obj(w.src)
    if w.down_src != "crashed" and source.finished:
        want = {
            SourceState.COMMITTED: Side.DESTINATION,
            SourceState.CANCELLED: Side.SOURCE,
            SourceState.REFUSED: Side.SOURCE,
            SourceState.FAILED: Side.NEITHER,
        }[source.state]  # type: ignore[index]
        if side is not want:
            problems.append(
                Problem("disagreement", f"source {source.state.value}, lockspace says {side.value}")
            )
    if w.dst >= 0 and w.down_dst != "crashed":
        dest = ex.machines.obj(w.dst)
        state = dest.state
        if state is DestinationState.COMMITTED and side is not Side.DESTINATION:
            problems.append(Problem("disagreement", f"destination committed, lockspace says {side.value}"))
        if state is DestinationState.FAILED and side is not Side.NEITHER:
            problems.append(Problem("disagreement", f"destination failed, lockspace says {side.value}"))
        # A destination re-created by a late PREPARE never said commit and
        # has no caller: only a commit would be a claim (the domain actor
        # ignores its other outcomes).
        exempt = w.generation > 1
        if (
            dest.finished
            and state is not DestinationState.COMMITTED
            and side is Side.DESTINATION
            and not exempt
        ):
            problems.append(
                Problem("disagreement", f"destination {state.value}, lockspace says {side.value}")
            )
    for answer in map(ex.answers_.obj, w.answers):
        if answer.call is not Call.COMPLETE:
            continue
        crashed = (w.down_src if answer.role == SOURCE else w.down_dst) == "crashed"
        if crashed:
            continue
        if answer.outcome is Outcome.COMMITTED and side is not Side.DESTINATION:
            problems.append(
                Problem("caller-misled", f"{answer.role} caller told COMMITTED, lockspace {side.value}")
            )
        if answer.outcome is Outcome.CANCELLED and side is Side.DESTINATION:
            problems.append(
                Problem("caller-misled", f"{answer.role} caller told CANCELLED, lockspace {side.value}")
            )
    return problems


def check_end(ex: ExplorerTables, w: World) -> list[Problem]:
    """Rules for a world where only the third host can still act."""
    problems: list[Problem] = []
    source = ex.machines.obj(w.src)
    if w.down_src != "crashed" and not source.finished:
        problems.append(Problem("stuck", f"source stuck in {source.state.value}"))
    if w.dst >= 0 and w.down_dst != "crashed":
        dest = ex.machines.obj(w.dst)
        if not dest.finished:
            problems.append(Problem("stuck", f"destination stuck in {dest.state.value}"))
    answered = {(a.role, a.call) for a in map(ex.answers_.obj, w.answers)}
    if w.down_src != "crashed" and (SOURCE, Call.PREPARE) not in answered:
        problems.append(Problem("stuck", "prepare_migrate never answered"))
    for role, said, down in ((SOURCE, w.said_src, w.down_src), (DESTINATION, w.said_dst, w.down_dst)):
        if said and down != "crashed" and (role, Call.COMPLETE) not in answered:
            problems.append(Problem("stuck", f"the {role} caller who said {said} was never answered"))
    return problems


def outcome_label(ex: ExplorerTables, w: World) -> str:
    """How an end is counted in :attr:`ExploreReport.outcomes`."""
    source = ex.machines.obj(w.src)
    src = source.state.value + (" (crashed)" if w.down_src == "crashed" else "")
    if w.dst < 0:
        dst = "none" + (" (crashed)" if w.down_dst == "crashed" else "")
    else:
        dst = ex.machines.obj(w.dst).state.value + (" (crashed)" if w.down_dst == "crashed" else "")
        if w.generation > 1:
            dst += " (re-created by a late PREPARE)"
    return f"source {src}, destination {dst}"


def leases_text(state: LockState | None) -> str:
    """Leases with their tokens, for a rule's message."""
    if state is None:
        return "nothing"
    return "[" + ", ".join(f"{lease.key} {lease.mode.value} #{lease.token}" for lease in state.leases) + "]"
