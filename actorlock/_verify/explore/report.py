"""What a search found, in words: violations with their traces, the report and its text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, TextIO

import attrs

from ...protocol import (
    CancelReply,
    CommitReply,
    ErrorReply,
    Message,
    Prepare,
    Status,
)
from .rules import owner
from .world import THIRD_ATTEMPTS, Bounds, EventTuple, World, event_int, event_number

if TYPE_CHECKING:
    from .tables import ExplorerTables


def describe(ex: ExplorerTables, w: World, event: EventTuple) -> str:
    """``event`` (enabled in ``w``) in words."""
    kind = event[0]
    if kind in ("deliver", "duplicate", "lose"):
        packet = ex.packets.obj(event_int(event[1]))
        what = f"{_message_text(packet.message)} to {packet.to}"
        return {"deliver": "deliver ", "duplicate": "deliver a duplicate of ", "lose": "lose "}[
            str(kind)
        ] + what
    if kind in ("io_failed", "early_timeout"):
        exchange = ex.exchanges_.obj(event_int(event[1]))
        early = " while still in flight" if kind == "early_timeout" else ""
        return f"{exchange.sender}: {_message_text(exchange.request)} times out{early} (io_failed)"
    if kind == "fire":
        timer = ex.timers.obj(event_int(event[1]))
        return f"{timer.role}: timer {timer.timer.value} fires (due {timer.at:g})"
    if kind == "backend":
        call = ex.pending.obj(w.pending[event_int(event[1])])
        name = type(call.effect).__name__
        mode = {
            "ok": "succeeds",
            "before": "fails before writing",
            "after": "writes, then its answer is lost",
            "lands": "lands (its host is dead)",
            "lost": "never lands (its host is dead)",
        }[str(event[2])]
        return f"backend {name} of the {call.role} {mode}"
    if kind == "tick":
        return f"clock advances to {event_number(event[1]):g}"
    if kind == "call":
        return f"{event[1]} caller says {event[2]}"
    if kind == "crash":
        return f"{event[1]} host crashes"
    if kind == "forget":
        return f"{event[1]} forgets the finished migration"
    request = THIRD_ATTEMPTS[event_int(event[1])]
    return f"third host asks for {request.key} ({request.mode.value})"


def summary(ex: ExplorerTables, w: World) -> str:
    """A one-line picture of ``w``."""
    source = ex.machines.obj(w.src)
    parts = [f"now={w.now:g}", f"source={source.state.value}{_down(w.down_src)}"]
    if w.dst >= 0:
        dest = ex.machines.obj(w.dst)
        gen = f" (gen {w.generation})" if w.generation > 1 else ""
        parts.append(f"destination={dest.state.value}{gen}{_down(w.down_dst)}")
    else:
        parts.append(f"destination=none{_down(w.down_dst)}")
    parts.append(f"owner={owner(ex, w).value}")
    parts.append(f"guests={w.guest_src}/{w.guest_dst}")
    if w.net:
        shown = ", ".join(
            f"{_message_text(ex.packets.obj(p).message)}->{ex.packets.obj(p).to}" for p in w.net
        )
        parts.append(f"net=[{shown}]")
    if w.pending:
        shown = ", ".join(
            f"{type(ex.pending.obj(p).effect).__name__}({ex.pending.obj(p).role})" for p in w.pending
        )
        parts.append(f"backend=[{shown}]")
    return " ".join(parts)


@attrs.frozen
class Violation:
    """A broken rule and the shortest way found to break it.

    Attributes:
        kind: a short stable name of the rule.
        detail: what is wrong in that world.
        trace: the events from the start, in order.
        state: a one-line summary of the world.
    """

    kind: str
    detail: str
    trace: tuple[str, ...]
    state: str

    def render(self) -> str:
        """The violation, its world and its trace, one item per line."""
        steps = "\n".join(f"    {n:3d}. {step}" for n, step in enumerate(self.trace, 1))
        return f"[{self.kind}] {self.detail}\n  in: {self.state}\n  trace:\n{steps}"


@attrs.frozen
class ExploreReport:
    """The result of one search.

    Attributes:
        states: distinct worlds found.
        transitions: events applied (self-loops included).
        terminal_states: ends: worlds where only the third host, a crash or
            forgetting could still happen.
        max_depth: the longest shortest path to a world.
        truncated: worlds not expanded because of ``max_depth``/``max_states``.
        outcomes: ends per "source X, destination Y" label.
        violations: kept violations (``traces_per_kind`` per kind), shortest first.
        violation_counts: every violation found, per kind.
        progress_checked: whether the end-state reachability check ran.
        elapsed: seconds the search took.
        bounds: the bounds used.
    """

    states: int
    transitions: int
    terminal_states: int
    max_depth: int
    truncated: int
    outcomes: Mapping[str, int]
    violations: tuple[Violation, ...]
    violation_counts: Mapping[str, int]
    progress_checked: bool
    elapsed: float
    bounds: Bounds

    @property
    def ok(self) -> bool:
        """Whether no rule was broken."""
        return not self.violation_counts

    def kinds(self) -> set[str]:
        """The kinds of rules broken."""
        return set(self.violation_counts)


def _down(down: str) -> str:
    return f" ({down})" if down else ""


def _message_text(message: Message) -> str:
    text = f"{type(message).__name__}#{message.seq}"
    if isinstance(message, CommitReply | CancelReply | Status):
        text += f"({message.outcome.value})"
    elif isinstance(message, ErrorReply):
        text += f"({message.code})"
    if isinstance(message, Prepare):
        text += f"[deadline in {message.deadline_remaining:g}s]"  # the only deadline anyone reads
    return text


def print_report(report: ExploreReport, out: TextIO) -> None:
    """Write ``report`` as text."""
    b = report.bounds
    print(
        f"bounds: losses={b.losses} duplicates={b.duplicates} backend_faults={b.backend_faults} "
        f"crashes={b.crashes} early_timeouts={b.early_timeouts} forgets={b.forgets} "
        f"adversity={b.adversity} third_host={b.third_host} max_depth={b.max_depth}",
        file=out,
    )
    print(f"states explored: {report.states}", file=out)
    print(f"transitions: {report.transitions}", file=out)
    print(f"terminal states: {report.terminal_states}", file=out)
    print(f"max depth: {report.max_depth}", file=out)
    if report.truncated:
        print(f"not expanded (bound reached): {report.truncated}", file=out)
    print(f"progress checked: {'yes' if report.progress_checked else 'no'}", file=out)
    print(f"time: {report.elapsed:.1f}s", file=out)
    print("end states:", file=out)
    for label, count in report.outcomes.items():
        print(f"  {count:8d}  {label}", file=out)
    print(f"violations: {sum(report.violation_counts.values())}", file=out)
    for kind, count in report.violation_counts.items():
        print(f"  {count:8d}  {kind}", file=out)
    for violation in report.violations:
        print(violation.render(), file=out)
