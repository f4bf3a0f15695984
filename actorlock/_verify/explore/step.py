"""One transition: a world decoded into mutable parts, one event applied, the effects carried out."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING

import attrs

from ...errors import ActorlockError, BackendError
from ...model import (
    LockState,
)
from ...protocol import (
    Call,
    CompleteCaller,
    DestinationState,
    Discard,
    DropPending,
    Effect,
    Message,
    MigrationLeasesLostError,
    Ownership,
    Prepare,
    QueryBackend,
    Request,
    Response,
    Timer,
    TransferLeases,
    VerifyLeases,
    answer_unknown,
)

if TYPE_CHECKING:
    from .tables import ExplorerTables

from ..effect_interpreter import carry_out
from ..migration_world import (
    DESTINATION,
    ROLES,
    SOURCE,
    BackendCall,
    Machine,
    guest_at_commit,
    guest_hears,
    peer_of,
    query_result,
    transfer_result,
    verify_result,
)
from .world import (
    DEADLINE,
    DEST_HOST,
    DEST_INCARNATION,
    LOCKSPACE_ID,
    LOCKSPACE_KIND,
    MIGRATION_ID,
    SOURCE_HOST,
    SOURCE_INCARNATION,
    THIRD_ATTEMPTS,
    THIRD_INCARNATION,
    THIRD_OWNER,
    TIMING,
    Answer,
    DriverTimer,
    Exchange,
    Packet,
    PendingCall,
    Problem,
    World,
    normalized,
)


class Step:
    """One transition under construction: a world's parts, decoded and mutable."""

    def __init__(self, ex: ExplorerTables, world: World) -> None:
        self.ex = ex
        self.now = world.now
        self.machine = {SOURCE: world.src, DESTINATION: world.dst}
        self.generation = world.generation
        self.records = world.records
        self.net = set(world.net)
        self.exchanges = set(world.exchanges)
        self.timers = {ex.timers.obj(t) for t in world.timers}
        self.pending = [ex.pending.obj(p) for p in world.pending]
        # Re-interning unchanged parts is most of a step's cost: track changes.
        self.timers_dirty = self.pending_dirty = False
        self.world0 = world
        self.answers = set(world.answers)
        self.said = {SOURCE: world.said_src, DESTINATION: world.said_dst}
        self.guest = {SOURCE: world.guest_src, DESTINATION: world.guest_dst}
        self.down = {SOURCE: world.down_src, DESTINATION: world.down_dst}
        self.dest_ready = world.dest_ready
        self.losses = world.losses
        self.duplicates = world.duplicates
        self.faults = world.faults
        self.crashes = world.crashes
        self.early_timeouts = world.early_timeouts
        self.forgets = world.forgets
        self.adversity = world.adversity
        self.problems: list[Problem] = []

    # --- building the next world ---------------------------------------

    def world(self) -> World:
        ex = self.ex
        if not (ex.bounds.settle_epilogue and self.settled()):
            return self.finish(settled=False)
        # Draining is deterministic: one world before it gives one world after
        # it, with the same findings, however it was reached.
        before = self.snapshot(settled=False)
        hit = ex.drained.get(before)
        if hit is None:
            mark = len(self.problems)
            self.quiesce()
            # Nothing in a settled world can spend a budget: what is left of
            # them would only tell apart worlds that behave alike.
            self.losses = self.duplicates = self.faults = self.crashes = 0
            self.early_timeouts = self.forgets = self.adversity = 0
            hit = ex.drained[before] = (self.finish(settled=True), tuple(self.problems[mark:]))
        else:
            self.problems.extend(hit[1])
        return hit[0]

    def finish(self, *, settled: bool) -> World:
        ex = self.ex
        for role in ROLES:
            if self.down[role] and self.machine[role] >= 0:
                self.machine[role] = ex.tombstone(self.machine[role])
        self.prune_exchanges()
        self.prune_answers()
        return self.snapshot(settled=settled)

    def snapshot(self, *, settled: bool) -> World:
        ex = self.ex
        return World(
            now=self.now,
            src=self.machine[SOURCE],
            dst=self.machine[DESTINATION],
            generation=self.generation,
            records=self.records,
            net=tuple(sorted(self.net)),
            exchanges=tuple(sorted(self.exchanges)),
            timers=tuple(sorted(ex.timers.id(t) for t in self.timers))
            if self.timers_dirty
            else self.world0.timers,
            pending=tuple(sorted(ex.pending.id(p) for p in self.pending))
            if self.pending_dirty
            else self.world0.pending,
            answers=tuple(sorted(self.answers)),
            said_src=self.said[SOURCE],
            said_dst=self.said[DESTINATION],
            guest_src=self.guest[SOURCE],
            guest_dst=self.guest[DESTINATION],
            down_src=self.down[SOURCE],
            down_dst=self.down[DESTINATION],
            dest_ready=self.dest_ready,
            losses=self.losses,
            duplicates=self.duplicates,
            faults=self.faults,
            crashes=self.crashes,
            early_timeouts=self.early_timeouts,
            forgets=self.forgets,
            adversity=self.adversity,
            settled=settled,
        )

    # --- feeding a machine ---------------------------------------------

    def feed(self, role: str, what: Hashable, step: Callable[[Machine], list[Effect]]) -> None:
        """Apply one input to ``role``'s machine (memoized) and carry out its effects."""
        after, effects, error = self.ex.step(self.machine[role], what, self.now, step)
        self.machine[role] = after
        if error:
            self.problems.append(Problem("machine-raised", f"{role} raised on {what!r}: {error}"))
            return
        machine = self.ex.machines.obj(after)
        if role == DESTINATION and self.generation == 1 and machine.state is DestinationState.PREPARED:
            self.dest_ready = True
        self.carry_out(role, effects)

    def settled(self) -> bool:
        """Whether only noise is left: every side final (or dead), nothing that could revive one.

        Final states are absorbing and answer every later request and call
        from the outcome, and ignore results of reads they no longer wait
        for; with no transfer pending the lockspace cannot change either. A
        PREPARE still travelling to a destination that has no machine (or
        forgot its own, or may still forget it) would create a new one: not
        settled.
        """
        ex = self.ex
        source = ex.machines.obj(self.machine[SOURCE])
        if self.down[SOURCE] != "crashed" and not source.finished:
            return False
        number = self.machine[DESTINATION]
        if number >= 0 and self.down[DESTINATION] != "crashed" and not ex.machines.obj(number).finished:
            return False
        if any(isinstance(p.effect, TransferLeases) for p in self.pending):
            return False  # it may still write
        # A PREPARE in flight creates a destination machine where there is
        # none, or where the last one forgot (or still may forget) its own.
        may_forget = self.forgets > 0 and self.adversity > 0
        revivable = (
            self.down[DESTINATION] != "crashed"
            and self.generation < 2
            and (number < 0 or self.down[DESTINATION] == "forgotten" or may_forget)
        )
        return not (revivable and any(isinstance(ex.packets.obj(p).message, Prepare) for p in self.net))

    def quiesce(self) -> None:
        """Play a settled world's leftovers out in one fixed order, checking they are noise.

        Deliveries, timeouts, timers and ticks are run until none is left; if
        any of them changes a machine's state, the lockspace, a guest or what
        a caller was told, the claim that made this shortcut sound is false
        and that is reported ("epilogue"). Callers that have not spoken yet
        are left to the search: their answers do matter.
        """
        ex = self.ex

        def picture() -> tuple[object, ...]:
            states = tuple(
                ex.machines.obj(n).state if n >= 0 else None
                for n in (self.machine[SOURCE], self.machine[DESTINATION])
            )
            return (states, self.records, dict(self.guest), frozenset(self.answers))

        dst = self.machine[DESTINATION] if not self.down[DESTINATION] else -1
        if not (self.net or self.exchanges or self.timers or self.pending) and (
            ex.landmark_after(self.now, dst, ()) is None
        ):
            return  # drained already
        before = picture()
        for _ in range(10_000):
            # Time first: past the last landmark nothing is resent any more,
            # so the leftovers drain in a few steps.
            dst = self.machine[DESTINATION] if not self.down[DESTINATION] else -1
            if (nxt := ex.landmark_after(self.now, dst, self.timers)) is not None:
                self.now = nxt
            elif self.pending:
                self.complete(0, "ok")
            elif self.net:
                self.deliver(min(self.net), keep=False)
            elif self.exchanges:
                self.io_failed(min(self.exchanges))
            elif firable := [t for t in self.timers if not self.down[t.role]]:
                self.fire(ex.timers.id(min(firable, key=lambda t: (t.role, t.timer.value))))
            else:
                break
            if picture() != before:
                self.problems.append(
                    Problem("epilogue", f"a settled world changed while draining: {before} -> {picture()}")
                )
                return
        else:  # pragma: no cover - would mean an endless retry loop
            self.problems.append(Problem("epilogue", "draining a settled world did not end"))

    def prune_answers(self) -> None:
        """Drop responses a final machine would discard: they stay discarded.

        A final state absorbs every event, and the set of answered requests
        only grows, so a response that now changes nothing (effects: only
        Discard) never will; dropping it merges worlds that differ only in it.
        """
        ex = self.ex
        for number in list(self.net):
            packet = ex.packets.obj(number)
            role, message = packet.to, packet.message
            if not isinstance(message, Response) or self.down[role] or self.machine[role] < 0:
                continue
            machine = self.machine[role]
            if not ex.machines.obj(machine).finished:
                continue
            after, effects, error = ex.step(
                machine,
                ("receive", ex.messages.id(message)),
                self.now,
                lambda m, message=message: m.receive(message, now=self.now),  # type: ignore[misc]
            )
            if not error and after == machine and all(isinstance(e, Discard) for e in effects):
                self.net.discard(number)

    def prune_exchanges(self) -> None:
        """Forget exchanges whose timeout can only ever be a no-op.

        ``io_failed`` does nothing once its request was answered or is no
        longer wanted (PREPARE once the source left PREPARING, COMMIT once the
        destination left COMMITTING, CANCEL once the deadline passed): none
        of these conditions can become false again, so such an exchange only
        offers an event that changes nothing but itself. Dropping it merges
        worlds that differ only in it.
        """
        ex = self.ex
        keep: set[int] = set()
        for number in self.exchanges:
            exchange = ex.exchanges_.obj(number)
            machine = self.machine[exchange.sender]
            request = exchange.request
            after, effects, error = ex.step(
                machine,
                ("io_failed", ex.messages.id(request)),
                self.now,
                lambda m, request=request: m.io_failed(request, now=self.now),  # type: ignore[misc]
            )
            if error or effects or after != machine:
                keep.add(number)
        self.exchanges = keep

    def carry_out(self, role: str, effects: Iterable[Effect]) -> None:
        """What the driver does with each effect, in order (see :class:`EffectHandler`)."""
        carry_out(role, effects, self)

    # --- the effects, as the driver carries them out (EffectHandler) -----

    def send_request(self, role: str, message: Request) -> None:
        # io_failed must name the request as sent, up to its deadline.
        request = attrs.evolve(message, deadline_remaining=0.0)
        self.exchanges.add(self.ex.exchange_id(Exchange(role, request)))
        self.put(peer_of(role), message)

    def send_reply(self, role: str, message: Response) -> None:
        self.put(peer_of(role), message)

    def arm_timer(self, role: str, timer: Timer, at: float) -> None:
        self.timers_dirty = True
        self.timers = {t for t in self.timers if (t.role, t.timer) != (role, timer)}
        # RETRY may fire whenever armed (see Time): its due time is not kept.
        self.timers.add(DriverTimer(role, timer, -1.0 if timer is Timer.RETRY else at))

    def cancel_timer(self, role: str, timer: Timer) -> None:
        self.timers_dirty = True
        self.timers = {t for t in self.timers if (t.role, t.timer) != (role, timer)}

    def start_backend_call(self, role: str, effect: BackendCall) -> None:
        if isinstance(effect, TransferLeases) and self.now >= DEADLINE - TIMING.transfer_margin:
            self.problems.append(
                Problem(
                    "late-transfer",
                    f"transfer started at {self.now:g}, at or after the last moment "
                    f"{DEADLINE - TIMING.transfer_margin:g}",
                )
            )
        self.pending_dirty = True
        self.pending.append(PendingCall(role, effect))

    def drop_pending(self, role: str, effect: DropPending) -> None:
        pass  # the peer's retransmission or timeout is explored anyway

    def discard_message(self, role: str, effect: Discard) -> None:
        pass  # nothing changed

    def put(self, to: str, message: Message) -> None:
        """Put ``message`` on the network, unless nobody could ever receive it."""
        down = self.down[to]
        if down == "crashed" or (down == "forgotten" and isinstance(message, Response)):
            return  # delivering it would change nothing: drop it now
        self.net.add(self.ex.packet_id(Packet(to, normalized(message))))

    def answer_caller(self, role: str, effect: CompleteCaller) -> None:
        waiting = effect.call is Call.PREPARE or self.said[role] != ""
        if role == DESTINATION and self.generation != 1:
            waiting = False  # a re-created destination has no caller
        if not waiting or any(
            (a := self.ex.answers_.obj(n)).role == role and a.call is effect.call for n in self.answers
        ):
            return  # the driver popped the call at its first answer
        error = effect.error
        answer = Answer(
            role,
            effect.call,
            effect.outcome,
            type(error).__name__ if error is not None else "",
            isinstance(error, MigrationLeasesLostError),
            effect.lock_state,
        )
        self.answers.add(self.ex.answers_.id(answer))
        self.guest[role] = guest_hears(role, self.guest[role], self.said[role], effect)

    # --- the events ----------------------------------------------------

    def deliver(self, number: int, *, keep: bool) -> None:
        ex = self.ex
        packet = ex.packets.obj(number)
        if not keep:
            self.net.discard(number)
        to, message = packet.to, packet.message
        msg_id = ex.packet_message[number]
        if isinstance(message, Response):
            if self.down[to]:
                return
            self.exchanges = {
                e
                for e in self.exchanges
                if not ((x := ex.exchanges_.obj(e)).sender == to and x.request.seq == message.seq)
            }
            self.feed(to, ("receive", msg_id), lambda m: m.receive(message, now=self.now))
            return
        assert isinstance(message, Request)
        if self.down[to] == "crashed":
            return
        fresh = self.machine[DESTINATION] < 0 or self.down[DESTINATION] == "forgotten"
        if to == DESTINATION and isinstance(message, Prepare) and self.generation < 2 and fresh:
            self.new_destination()  # as the host's peer service does for an unknown id
        if isinstance(message, Prepare) and message.deadline_remaining > 0:
            message = _relabel_deadline(message, self.now)
            msg_id = ex.messages.id(message)
        if self.machine[to] < 0 or self.down[to] == "forgotten":
            local = SOURCE_HOST.name if to == SOURCE else DEST_HOST.name
            unknown = answer_unknown(message, local=local)
            if unknown is not None:
                self.put(SOURCE if to == DESTINATION else DESTINATION, unknown)
            return
        self.feed(to, ("receive", msg_id), lambda m: m.receive(message, now=self.now))

    def new_destination(self) -> None:
        ex = self.ex
        machine = ex.model.destination_factory(
            migration_id=MIGRATION_ID,
            local=DEST_HOST,
            incarnation=DEST_INCARNATION,
            lockspace_kind=LOCKSPACE_KIND,
            lockspace_id=LOCKSPACE_ID,
            timing=TIMING,
        )
        self.machine[DESTINATION] = ex.intern_machine(machine)
        self.generation += 1
        self.down[DESTINATION] = ""

    def io_failed(self, number: int) -> None:
        exchange = self.ex.exchanges_.obj(number)
        self.exchanges.discard(number)
        request = exchange.request
        msg_id = self.ex.messages.id(request)
        self.feed(exchange.sender, ("io_failed", msg_id), lambda m: m.io_failed(request, now=self.now))

    def fire(self, number: int) -> None:
        timer = self.ex.timers.obj(number)
        self.timers_dirty = True
        self.timers.discard(timer)
        self.feed(timer.role, ("timer", timer.timer), lambda m: m.timer_fired(timer.timer, now=self.now))

    def complete(self, index: int, mode: str) -> None:
        """Finish pending backend call ``index``.

        ``mode``: ``ok``; ``before``/``after`` writing (faults); ``lands``/``lost``
        (a dead host's transfer).
        """
        ex = self.ex
        self.pending_dirty = True
        call = self.pending.pop(index)
        if mode in ("before", "after"):
            self.adversity -= 1
            self.faults -= 1
        records = ex.records.obj(self.records)
        lockspace = ex.model.lockspace
        fault = BackendError(f"backend fault ({mode} writing)")
        effect = call.effect
        role = call.role
        if isinstance(effect, VerifyLeases):
            problem = fault if mode == "before" else lockspace.verify(records, effect)
            self.feed(role, ("verify", _result_key(problem)), verify_result(problem, self.now))
            return
        if isinstance(effect, QueryBackend):
            ownership: Ownership | ActorlockError = (
                fault if mode == "before" else lockspace.query(records, effect)
            )
            self.feed(role, ("query", _result_key(ownership)), query_result(ownership, self.now))
            return
        result: LockState | ActorlockError = fault
        if mode != "before" and mode != "lost":
            try:
                written, moved = lockspace.transfer(records, effect, SOURCE_INCARNATION)
            except ActorlockError as exc:
                result = exc
            else:
                self.records = ex.records.id(written)
                result = moved if mode == "ok" else fault
        if call.orphan:
            return  # its host is dead: nobody hears the result
        self.feed(role, ("transfer", _result_key(result)), transfer_result(result, self.now))

    def call(self, role: str, decision: str) -> None:
        self.said[role] = decision
        if decision == "commit":
            self.guest[role] = guest_at_commit(role, self.guest[role])
            self.feed(role, ("call", decision), lambda m: m.commit_requested(now=self.now))
        else:
            self.feed(role, ("call", decision), lambda m: m.cancel_requested(now=self.now))

    def crash(self, role: str) -> None:
        ex = self.ex
        self.adversity -= 1
        self.crashes -= 1
        self.down[role] = "crashed"
        self.guest[role] = "stopped"
        self.timers_dirty = self.pending_dirty = True
        self.timers = {t for t in self.timers if t.role != role}
        self.exchanges = {e for e in self.exchanges if ex.exchanges_.obj(e).sender != role}
        self.net = {p for p in self.net if ex.packets.obj(p).to != role}
        # Reads die with the host; a transfer is in the storage's hands already.
        self.pending = [
            p if p.role != role else attrs.evolve(p, orphan=True)
            for p in self.pending
            if p.role != role or isinstance(p.effect, TransferLeases)
        ]

    def forget(self, role: str) -> None:
        ex = self.ex
        self.down[role] = "forgotten"
        self.timers_dirty = True
        self.timers = {t for t in self.timers if t.role != role}
        self.exchanges = {e for e in self.exchanges if ex.exchanges_.obj(e).sender != role}
        self.net = {
            p
            for p in self.net
            if not ((pk := ex.packets.obj(p)).to == role and isinstance(pk.message, Response))
        }

    def tick(self, to: float) -> None:
        self.now = to

    def third(self, index: int) -> bool:
        """The third host's attempt; True when it changed the lockspace."""
        ex = self.ex
        key = (self.records, index)
        after = ex.third_memo.get(key)
        if after is None:
            records = ex.records.obj(self.records)
            try:
                written = ex.model.lockspace.acquire(
                    records, THIRD_OWNER, THIRD_INCARNATION, THIRD_ATTEMPTS[index]
                )
            except ActorlockError:
                written = records
            after = ex.third_memo[key] = ex.records.id(written)
        changed = after != self.records
        self.records = after
        return changed


def _relabel_deadline(prepare: Prepare, now: float) -> Prepare:
    """PREPARE as delivered at ``now``: a deadline past ``D`` becomes ``max(now, D) + 1``.

    The destination reads ``deadline_remaining`` once, to set its deadline
    ``now + remaining``, and afterwards only compares it with the clock,
    whose values are landmarks. Past ``D`` the only landmark left is that
    deadline itself, so every deadline later than ``D`` (and than ``now``)
    behaves alike: an order-preserving relabeling, which keeps the number of
    distinct deadlines (and clock values) to two or three.
    """
    due = now + prepare.deadline_remaining
    if due <= DEADLINE:
        return prepare
    return attrs.evolve(prepare, deadline_remaining=max(now, DEADLINE) + 1.0 - now)


def _result_key(result: object) -> Hashable:
    if isinstance(result, BaseException):
        return ("error", type(result).__qualname__, str(result))
    return result if result is None or attrs.has(type(result)) else repr(result)
