"""The breadth-first search over worlds: which events are enabled, applying them, and the progress check."""

from __future__ import annotations

import time
from array import array
from collections import Counter, deque
from collections.abc import Sequence

from ...model import (
    LeaseMode,
)
from ...protocol import (
    Call,
    Effect,
    MigrationSource,
    Outcome,
    Response,
    Timer,
    TransferLeases,
)
from ..migration_world import DESTINATION, SOURCE, Machine
from .report import ExploreReport, Violation, describe, summary
from .rules import check, check_end, outcome_label
from .step import Step
from .tables import ExplorerTables
from .world import (
    DEADLINE,
    DEST_HOST,
    DOMAIN,
    INITIAL_RECORDS,
    LOCKSPACE_ID,
    LOCKSPACE_KIND,
    MIGRATION_ID,
    ORIGINAL,
    SOURCE_HOST,
    THIRD_ATTEMPTS,
    TIMING,
    EventTuple,
    Model,
    Problem,
    World,
    event_int,
    event_number,
)


class Explorer(ExplorerTables):
    """Breadth-first search over worlds with visited-state hashing.

    Args:
        model: what to explore.
    """

    def __init__(self, model: Model | None = None) -> None:
        super().__init__(model)
        self._landmarks: dict[tuple[object, ...], float | None] = {}

    def initial(self) -> World:
        """The world right after prepare_migrate was called on the source."""
        source = self.model.source_factory(
            migration_id=MIGRATION_ID,
            local=SOURCE_HOST,
            peer=DEST_HOST.name,
            domain=DOMAIN,
            lockspace_kind=LOCKSPACE_KIND,
            lockspace_id=LOCKSPACE_ID,
            lock_state=ORIGINAL,
            timing=TIMING,
        )
        b = self.bounds
        empty = World(
            now=0.0,
            src=self.intern_machine(source),
            dst=-1,
            generation=0,
            records=self.records.id(INITIAL_RECORDS),
            net=(),
            exchanges=(),
            timers=(),
            pending=(),
            answers=(),
            said_src="",
            said_dst="",
            guest_src="running",
            guest_dst="none",
            down_src="",
            down_dst="",
            dest_ready=False,
            losses=b.losses,
            duplicates=b.duplicates,
            faults=b.backend_faults,
            crashes=b.crashes,
            early_timeouts=b.early_timeouts,
            forgets=b.forgets,
            adversity=b.adversity if b.adversity is not None else 1 << 30,
            settled=False,
        )
        step = Step(self, empty)
        step.feed(SOURCE, ("start",), lambda m: _start(m))
        assert not step.problems, step.problems
        return step.world()

    # --- which events are enabled --------------------------------------

    def events(self, w: World) -> list[EventTuple]:
        """Every event enabled in ``w`` (the third host's attempts last)."""
        bad = w.adversity > 0  # may another budgeted event happen on this path?
        # The order is the exploration order: network, timers, backend, clock,
        # callers, host faults, third host.
        ex = self._network_events(w, bad=bad)
        ex += self._timer_events(w)
        ex += self._backend_events(w, bad=bad)
        nxt = self.next_landmark(w)
        if nxt is not None:
            ex.append(("tick", nxt))
        ex += self.calls(w)
        ex += self._host_events(w, bad=bad)
        if self.bounds.third_host:
            ex += self._third_host_events(w)
        return ex

    def _network_events(self, w: World, *, bad: bool) -> list[EventTuple]:
        """Deliveries, duplicates and losses of packets; exchanges that fail or time out."""
        ex: list[EventTuple] = []
        for number in w.net:
            ex.append(("deliver", number))
            if bad and w.duplicates:
                ex.append(("duplicate", number))
            if bad and w.losses:
                ex.append(("lose", number))
        for number in w.exchanges:
            if self.stuck(w, number):
                ex.append(("io_failed", number))
            elif bad and w.early_timeouts:
                ex.append(("early_timeout", number))
        return ex

    def _timer_events(self, w: World) -> list[EventTuple]:
        """Timers that may fire now (a retry timer at any time)."""
        ex: list[EventTuple] = []
        for number in w.timers:
            timer = self.timers.obj(number)
            if timer.timer is Timer.RETRY or w.now >= timer.at:
                ex.append(("fire", number))
        return ex

    def _backend_events(self, w: World, *, bad: bool) -> list[EventTuple]:
        """The ways each pending backend call may end."""
        ex: list[EventTuple] = []
        for index, number in enumerate(w.pending):
            call = self.pending.obj(number)
            if call.orphan:
                ex += [("backend", index, "lands"), ("backend", index, "lost")]
                continue
            ex.append(("backend", index, "ok"))
            if bad and w.faults:
                ex.append(("backend", index, "before"))
                if isinstance(call.effect, TransferLeases):
                    ex.append(("backend", index, "after"))
        return ex

    def _host_events(self, w: World, *, bad: bool) -> list[EventTuple]:
        """Crashes and forgetting, per host that is up."""
        ex: list[EventTuple] = []
        for role, down in ((SOURCE, w.down_src), (DESTINATION, w.down_dst)):
            if down or w.settled:
                continue  # in a settled world a crash or forgetting can only stop things
            if bad and w.crashes:
                ex.append(("crash", role))
            number = w.src if role == SOURCE else w.dst
            finished = number >= 0 and self.machines.obj(number).finished
            # The driver awaits backend calls inline: it cannot end during one.
            busy = any(self.pending.obj(p).role == role for p in w.pending)
            if bad and w.forgets and finished and (role == SOURCE or w.generation == 1) and not busy:
                ex.append(("forget", role))
        return ex

    def _third_host_events(self, w: World) -> list[EventTuple]:
        """The third host's attempts on the shared disks."""
        # The refused attempts are self-loops: offered everywhere, free.
        # The shared co-holder changes only its record's token and holders,
        # which no rule and no machine reads, except the fresh token a
        # transfer issues: its place matters only around a transfer, so it
        # is offered while one is pending (it then lands before or after).
        transferring = any(isinstance(self.pending.obj(p).effect, TransferLeases) for p in w.pending)
        return [
            ("third", index)
            for index, request in enumerate(THIRD_ATTEMPTS)
            if request.mode is LeaseMode.EXCLUSIVE or transferring
        ]

    def stuck(self, w: World, number: int) -> bool:
        """Whether exchange ``number`` can only end by timing out (nothing of it is in flight)."""
        exchange = self.exchanges_.obj(number)
        peer = DESTINATION if exchange.sender == SOURCE else SOURCE
        for packet in map(self.packets.obj, w.net):
            message = packet.message
            if message.seq != exchange.request.seq:
                continue
            if packet.to == peer and type(message) is type(exchange.request):
                return False
            if packet.to == exchange.sender and isinstance(message, Response):
                return False
        return True

    def calls(self, w: World) -> list[EventTuple]:
        """What the local callers may say in ``w`` (see the module docstring)."""
        ex: list[EventTuple] = []
        if not w.down_src and not w.said_src:
            ex.append(("call", SOURCE, "cancel"))
            prepared = any(
                (a := self.answers_.obj(n)).role == SOURCE
                and a.call is Call.PREPARE
                and a.outcome is Outcome.PENDING
                for n in w.answers
            )
            if prepared:
                ex.append(("call", SOURCE, "commit"))
        if not w.down_dst and not w.said_dst and w.generation == 1:
            ex.append(("call", DESTINATION, "cancel"))
            if w.dest_ready:
                ex.append(("call", DESTINATION, "commit"))
        return ex

    def next_landmark(self, w: World) -> float | None:
        """Where a tick may move the clock in ``w`` (None: nowhere, or not yet)."""
        key = (w.now, w.dst, w.down_dst, w.timers, w.pending)
        if key not in self._landmarks:
            self._landmarks[key] = self._next_landmark(w)
        return self._landmarks[key]

    def _next_landmark(self, w: World) -> float | None:
        dst = w.dst if not w.down_dst else -1  # a dead destination's deadline means nothing
        nxt = self.landmark_after(w.now, dst, map(self.timers.obj, w.timers))
        if nxt is None:
            return None
        if (
            self.model.respect_transfer_margin
            and nxt >= DEADLINE
            and any(isinstance(self.pending.obj(p).effect, TransferLeases) for p in w.pending)
        ):
            return None  # a transfer ends within the margin: before the deadline
        return nxt

    # --- applying an event ---------------------------------------------

    def apply(self, w: World, event: EventTuple) -> tuple[World, list[Problem], bool]:
        """The world after ``event``, the problems met, and whether it changed anything."""
        step = Step(self, w)
        kind = event[0]
        changed = True
        if kind == "deliver":
            step.deliver(event_int(event[1]), keep=False)
        elif kind == "duplicate":
            step.adversity -= 1
            step.duplicates -= 1
            step.deliver(event_int(event[1]), keep=True)
        elif kind == "lose":
            step.adversity -= 1
            step.losses -= 1
            step.net.discard(event_int(event[1]))
        elif kind == "io_failed":
            step.io_failed(event_int(event[1]))
        elif kind == "early_timeout":
            step.adversity -= 1
            step.early_timeouts -= 1
            step.io_failed(event_int(event[1]))
        elif kind == "fire":
            step.fire(event_int(event[1]))
        elif kind == "backend":
            step.complete(event_int(event[1]), str(event[2]))
        elif kind == "tick":
            step.tick(float(event_number(event[1])))
        elif kind == "call":
            step.call(str(event[1]), str(event[2]))
        elif kind == "crash":
            step.crash(str(event[1]))
        elif kind == "forget":
            step.adversity -= 1
            step.forgets -= 1
            step.forget(str(event[1]))
        elif kind == "third":
            changed = step.third(event_int(event[1]))
        else:  # pragma: no cover - a typo in events()
            raise AssertionError(event)
        return step.world(), step.problems, changed


def _start(m: Machine) -> list[Effect]:
    assert isinstance(m, MigrationSource)
    return m.start(now=0.0, deadline_at=DEADLINE)


# --- the search --------------------------------------------------------------


def explore(model: Model | None = None) -> ExploreReport:
    """Visit every world reachable within the bounds and check the rules in each.

    Args:
        model: what to explore; the default model with :data:`DEFAULT_BOUNDS`.

    Returns:
        The figures and every violation found, each kind with its shortest traces.
    """
    started = time.perf_counter()
    ex = Explorer(model)
    bounds = ex.bounds
    first = ex.initial()
    index: dict[World, int] = {first: 0}
    worlds: list[World] = [first]
    parent = array("i", [-1])
    via: list[EventTuple] = [("start",)]
    depth = array("i", [0])
    # The graph, for the progress check: successors of world i are
    # edges[offsets[i]:offsets[i+1]] (BFS expands worlds in number order).
    keep_graph = bounds.check_progress
    offsets = array("q", [0])
    edges = array("i")
    terminal = array("b")
    expanded = array("b")
    transitions = 0
    truncated = 0
    outcomes: Counter[str] = Counter()
    findings = _Findings(ex, worlds, parent, via)
    found, counts, report = findings.found, findings.counts, findings.report

    report(check(ex, first), 0)
    queue: deque[int] = deque([0])
    cut = False
    while queue:
        number = queue.popleft()
        w = worlds[number]
        if (bounds.max_depth is not None and depth[number] >= bounds.max_depth) or cut:
            truncated += 1
            terminal.append(0)
            expanded.append(0)
            offsets.append(len(edges))
            continue
        expanded.append(1)
        moves = 0
        for event in ex.events(w):
            transitions += 1
            nxt, problems, changed = ex.apply(w, event)
            if event[0] not in ("third", "crash", "forget"):
                moves += 1  # adversarial options are not progress: an end may still offer them
            elif not changed:
                continue  # refused: the world is the same
            target = index.get(nxt)
            if target is None:
                target = len(worlds)
                index[nxt] = target
                worlds.append(nxt)
                parent.append(number)
                via.append(event)
                depth.append(depth[number] + 1)
                queue.append(target)
                report(problems, target)
                report(check(ex, nxt), target)
                if len(worlds) >= bounds.max_states or (
                    bounds.stop_after is not None and sum(counts.values()) >= bounds.stop_after
                ):
                    cut = True
            elif problems:
                report(problems, number, event)
            if keep_graph:
                edges.append(target)
        offsets.append(len(edges))
        if moves == 0:
            terminal.append(1)
            outcomes[outcome_label(ex, w)] += 1
            report(check_end(ex, w), number)
        else:
            terminal.append(0)

    progress_checked = keep_graph and truncated == 0
    if progress_checked:
        findings.check_progress(offsets, edges, terminal)
    violations = tuple(sorted((v for kept in found.values() for v in kept), key=lambda v: len(v.trace)))
    return ExploreReport(
        states=len(worlds),
        transitions=transitions,
        terminal_states=sum(terminal),
        max_depth=max(depth),
        truncated=truncated,
        outcomes=dict(sorted(outcomes.items())),
        violations=violations,
        violation_counts=dict(sorted(counts.items())),
        progress_checked=progress_checked,
        elapsed=time.perf_counter() - started,
        bounds=bounds,
    )


class _Findings:
    """The violations found so far: a count per kind and the first few traces of each."""

    def __init__(self, ex: Explorer, worlds: list[World], parent: array[int], via: list[EventTuple]) -> None:
        # The search's own lists, shared (it appends to them as it goes).
        self.ex = ex
        self.worlds = worlds
        self.parent = parent
        self.via = via
        self.found: dict[str, list[Violation]] = {}
        self.counts: Counter[str] = Counter()

    def trace(self, number: int) -> list[str]:
        """The events that lead from the first world to world ``number``."""
        steps: list[str] = []
        while number > 0:
            steps.append(describe(self.ex, self.worlds[self.parent[number]], self.via[number]))
            number = self.parent[number]
        return ["source calls prepare_migrate", *reversed(steps)]

    def report(self, problems: Sequence[Problem], at: int, extra: EventTuple | None = None) -> None:
        """Count ``problems`` seen in world ``at`` (after ``extra``, if given) and keep a trace."""
        for problem in problems:
            self.counts[problem.kind] += 1
            kept = self.found.setdefault(problem.kind, [])
            if len(kept) < self.ex.bounds.traces_per_kind:
                steps = self.trace(at)
                if extra is not None:
                    steps.append(describe(self.ex, self.worlds[at], extra))
                world = self.worlds[at]
                kept.append(Violation(problem.kind, problem.detail, tuple(steps), summary(self.ex, world)))

    def check_progress(self, offsets: array[int], edges: array[int], terminal: array[int]) -> None:
        """Report the worlds from which no end state is reachable (the whole graph is known)."""
        stuck = _cannot_finish(len(self.worlds), offsets, edges, terminal)
        if stuck:
            self.counts["no-way-out"] += len(stuck)
            first_stuck = stuck[0]
            self.found["no-way-out"] = [
                Violation(
                    "no-way-out",
                    f"{len(stuck)} worlds from which no end state is reachable",
                    tuple(self.trace(first_stuck)),
                    summary(self.ex, self.worlds[first_stuck]),
                )
            ]


def _cannot_finish(n: int, offsets: array[int], edges: array[int], terminal: array[int]) -> list[int]:
    """Worlds with no path to a terminal world, in number (BFS) order."""
    # Reverse the graph (counting sort), then search backwards from the ends.
    indegree = array("q", bytes(8 * (n + 1)))
    for target in edges:
        indegree[target + 1] += 1
    for i in range(n):
        indegree[i + 1] += indegree[i]
    fill = array("q", indegree)
    sources = array("i", bytes(4 * len(edges)))
    for src in range(n):
        for k in range(offsets[src], offsets[src + 1]):
            target = edges[k]
            sources[fill[target]] = src
            fill[target] += 1
    good = bytearray(n)
    queue = deque(i for i in range(n) if terminal[i])
    for i in queue:
        good[i] = 1
    while queue:
        target = queue.popleft()
        for k in range(indegree[target], indegree[target + 1]):
            src = sources[k]
            if not good[src]:
                good[src] = 1
                queue.append(src)
    return [i for i in range(n) if not good[i]]
