"""A deterministic simulation of one migration between two hosts, for tests.

Plays the part of both domain actors around the sans-I/O machines, like
h11's ConnectionPair: a model lockspace whose ``transfer`` is atomic, a
network that can drop, duplicate, delay and reorder messages, a fake clock,
backend faults and host crashes. Nothing here sleeps or does I/O; every
step is an explicit call, so a test (or hypothesis) chooses the schedule.

It also models the guest, to state the safety rules: the source's guest
runs until its caller commits (libvirt pauses it for the switchover) and
resumes if the migration does not commit; the destination's guest runs once
its caller heard COMMITTED. :meth:`Simulation.check_invariants` says that a
running guest's host owns every lease and that each lease has exactly one
holder; :meth:`Simulation.check_agreement` says that, once everything has
settled, each live side's outcome matches the lockspace.

The lockspace's rules, the guests' and the carrying out of effects are the
ones the explorer uses too (:mod:`.migration_world`,
:mod:`.effect_interpreter`); this module keeps one mutable world and lets
the caller choose every step.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Sequence

import attrs

from ..errors import ActorlockError, BackendError, LeaseLostError
from ..model import DomainIdentity, Holder, HostIdentity, Lease, LeaseMode, LeaseOwner, LeaseRecord, LockState
from ..protocol import (
    Call,
    CompleteCaller,
    Discard,
    DropPending,
    Effect,
    Message,
    MigrationDestination,
    MigrationSource,
    Outcome,
    Ownership,
    Prepare,
    QueryBackend,
    Request,
    Response,
    Side,
    Timer,
    Timing,
    TransferLeases,
    VerifyLeases,
    judge_ownership,
    lease_owner,
)
from .effect_interpreter import carry_out
from .migration_world import (
    DESTINATION,
    SOURCE,
    BackendCall,
    Lockspace,
    guest_at_commit,
    guest_hears,
    peer_of,
    query_result,
    transfer_result,
    verify_result,
)


class ModelBackend:
    """The lockspace, reduced to what migration touches: records and atomic transfer.

    Mutable (a test may overwrite a record); its rules are the shared
    :class:`~actorlock._verify.migration_world.Lockspace`'s.
    """

    def __init__(self, records: dict[str, LeaseRecord]) -> None:
        self.records = dict(records)
        self.transfers = 0
        self.rules = Lockspace()

    def verify(self, effect: VerifyLeases) -> ActorlockError | None:
        return self.rules.verify(tuple(self.records.values()), effect)

    def transfer(self, effect: TransferLeases) -> LockState:
        # The source's incarnation is whatever its entries carry in this model.
        incarnation = next(
            (h.incarnation for r in self.records.values() for h in r.holders if h.owner == effect.source), ""
        )
        written, moved = self.rules.transfer(tuple(self.records.values()), effect, incarnation)
        self.records.update((record.key, record) for record in written)
        self.transfers += 1
        return moved

    def query(self, effect: QueryBackend) -> Ownership:
        return self.rules.query(tuple(self.records.values()), effect)

    def side(self, source: LeaseOwner, destination: LeaseOwner) -> Side:
        return judge_ownership(self.records.values(), source, destination, self.records).side


class Fault(enum.Enum):
    """What happens to the next backend operation."""

    NONE = "none"
    BEFORE = "before"  # fails; nothing written
    AFTER = "after"  # written, but the caller sees an error (its answer was lost)


@attrs.define
class Exchange:
    """One request sent and, perhaps, answered; times out like a transport request."""

    id: int
    sender: str
    request: Request
    timeout_at: float
    open: bool = True


@attrs.define
class Packet:
    exchange: int
    to: str
    message: Message


@attrs.define
class Host:
    """One side: its machine, timers and what its callers were told."""

    role: str
    identity: HostIdentity
    machine: MigrationSource | MigrationDestination | None = None
    timers: dict[Timer, float] = attrs.Factory(dict)
    waiting: dict[int, list[int]] = attrs.Factory(dict)  # peer request number -> exchanges
    answers: list[CompleteCaller] = attrs.Factory(list)
    dropped: list[DropPending] = attrs.Factory(list)
    discarded: list[Discard] = attrs.Factory(list)
    crashed: bool = False
    called: str = ""  # "commit" or "cancel" once the local caller spoke
    guest: str = "none"  # none, running, paused, stopped


@attrs.define
class PendingOp:
    role: str
    effect: BackendCall


class Simulation:
    """Both ends of one migration, a model lockspace, a network and a clock.

    Args:
        keys: the domain's lease keys (exclusive, held by the source).
        timing: protocol timing for both machines.
        deadline: seconds from the start the source gives the migration.
        request_timeout: when a request without an answer counts as failed.
        defer_backend: queue backend operations until :meth:`complete_op`
            (otherwise they run at once).
        offered: the lock state the source sends (defaults to the true one).
        dest_lockspace_id: the destination's lockspace id (defaults to the same).
    """

    def __init__(
        self,
        *,
        keys: Sequence[str] = ("disk:/vm/a.img", "disk:/vm/b.img"),
        timing: Timing | None = None,
        deadline: float = 10.0,
        request_timeout: float = 1.0,
        defer_backend: bool = False,
        offered: LockState | None = None,
        dest_lockspace_id: str = "lockspace-1",
    ) -> None:
        self.timing = timing or Timing(retry_interval=0.2, prepare_timeout=3.0, transfer_margin=1.0)
        self.deadline = deadline
        self.request_timeout = request_timeout
        self.defer_backend = defer_backend
        self.dest_lockspace_id = dest_lockspace_id
        self.now = 0.0
        self.domain = DomainIdentity("0b5c1e2a-vm", "vm1")
        self.hosts = {
            SOURCE: Host(SOURCE, HostIdentity("src", 1), guest="running"),
            DESTINATION: Host(DESTINATION, HostIdentity("dst", 2)),
        }
        self.source_owner = lease_owner(self.hosts[SOURCE].identity, self.domain)
        self.dest_owner = lease_owner(self.hosts[DESTINATION].identity, self.domain)
        records = {
            key: LeaseRecord(key, 7, (Holder(self.source_owner, LeaseMode.EXCLUSIVE, 7, "inc-src"),))
            for key in keys
        }
        self.backend = ModelBackend(records)
        self.original = LockState.of(Lease(key, LeaseMode.EXCLUSIVE, 7) for key in keys)
        self.hosts[SOURCE].machine = MigrationSource(
            migration_id="mig-1",
            local=self.hosts[SOURCE].identity,
            peer=self.hosts[DESTINATION].identity.name,
            domain=self.domain,
            lockspace_kind="memory",
            lockspace_id="lockspace-1",
            lock_state=offered if offered is not None else self.original,
            timing=self.timing,
        )
        self.net: list[Packet] = []
        self.exchanges: dict[int, Exchange] = {}
        self.pending_ops: list[PendingOp] = []
        self.faults: list[Fault] = []
        self.trace: list[str] = []

    # --- views ---------------------------------------------------------

    @property
    def source(self) -> MigrationSource:
        machine = self.hosts[SOURCE].machine
        assert isinstance(machine, MigrationSource)
        return machine

    @property
    def dest(self) -> MigrationDestination | None:
        machine = self.hosts[DESTINATION].machine
        assert machine is None or isinstance(machine, MigrationDestination)
        return machine

    def owner(self) -> Side:
        """Who the lockspace says holds the domain's leases."""
        return self.backend.side(self.source_owner, self.dest_owner)

    def answers(self, role: str, call: Call) -> list[CompleteCaller]:
        return [a for a in self.hosts[role].answers if a.call is call]

    # --- the local callers ---------------------------------------------

    def start(self) -> None:
        self._run(SOURCE, self.source.start(now=self.now, deadline_at=self.now + self.deadline))

    def commit(self, role: str) -> None:
        """complete_migrate_in(0) on ``role``."""
        host = self.hosts[role]
        assert host.machine is not None
        host.called = "commit"
        host.guest = guest_at_commit(role, host.guest)
        self._run(role, host.machine.commit_requested(now=self.now))

    def cancel(self, role: str) -> None:
        """complete_migrate_in(CANCEL) on ``role``."""
        host = self.hosts[role]
        assert host.machine is not None
        host.called = "cancel"
        self._run(role, host.machine.cancel_requested(now=self.now))

    def crash(self, role: str, *, transfer_landed: bool = False) -> None:
        """Kill ``role``: its guest, timers and pending work vanish.

        A transfer it had under way lands or not, as ``transfer_landed`` says.
        """
        host = self.hosts[role]
        host.crashed = True
        host.guest = "stopped"
        host.timers.clear()
        host.waiting.clear()
        for op in [op for op in self.pending_ops if op.role == role]:
            self.pending_ops.remove(op)
            if isinstance(op.effect, TransferLeases) and transfer_landed:
                with contextlib.suppress(LeaseLostError):
                    self.backend.transfer(op.effect)
        self.trace.append(f"{self.now:7.3f} crash {role}")

    # --- the network ---------------------------------------------------

    def deliver(self, index: int = 0) -> None:
        packet = self.net.pop(index)
        self._deliver(packet)

    def drop(self, index: int = 0) -> None:
        packet = self.net.pop(index)
        self.trace.append(f"{self.now:7.3f} drop {type(packet.message).__name__} to {packet.to}")

    def duplicate(self, index: int = 0) -> None:
        self.net.append(self.net[index])

    def deliver_all(self) -> None:
        while self.net:
            self.deliver(0)

    # --- backend and time ----------------------------------------------

    def complete_op(self, index: int = 0) -> None:
        op = self.pending_ops.pop(index)
        self._perform(op.role, op.effect)

    def next_due(self) -> float | None:
        times = [at for host in self.hosts.values() if not host.crashed for at in host.timers.values()] + [
            ex.timeout_at for ex in self.exchanges.values() if ex.open and not self.hosts[ex.sender].crashed
        ]
        return min(times) if times else None

    def advance(self) -> bool:
        """Finish backend work, then jump to the next timer or request timeout and fire it.

        Backend work completes first because the protocol assumes a
        transfer finishes within ``transfer_margin``. Returns False when
        nothing is left to fire.
        """
        while self.pending_ops:
            self.complete_op(0)
        due = self.next_due()
        if due is None:
            return False
        self.now = max(self.now, due)
        for ex in list(self.exchanges.values()):
            if ex.open and ex.timeout_at <= self.now and not self.hosts[ex.sender].crashed:
                ex.open = False
                machine = self.hosts[ex.sender].machine
                assert machine is not None
                self._run(ex.sender, machine.io_failed(ex.request, None, now=self.now))
        for role, host in self.hosts.items():
            for timer, at in sorted(host.timers.items(), key=lambda item: item[1]):
                if at <= self.now and not host.crashed and host.timers.get(timer) == at:
                    del host.timers[timer]
                    assert host.machine is not None
                    self._run(role, host.machine.timer_fired(timer, now=self.now))
        return True

    def settle(self, *, max_steps: int = 10_000) -> None:
        """Deliver everything in order and let time run until nothing is left to do."""
        for _ in range(max_steps):
            if self.net:
                self.deliver(0)
            elif self.pending_ops:
                self.complete_op(0)
            elif not self.advance():
                return
        raise AssertionError("the simulation did not settle:\n" + "\n".join(self.trace[-40:]))

    # --- the rules -----------------------------------------------------

    def check_invariants(self) -> None:
        """Safety at this instant: one holder per lease; a running guest owns its leases."""
        for key, record in self.backend.records.items():
            assert len(record.holders) == 1, f"{key} has holders {record.holders}"
        owner = self.owner()
        src, dst = self.hosts[SOURCE], self.hosts[DESTINATION]
        assert not (src.guest == "running" and dst.guest == "running"), "guest runs on both hosts"
        if src.guest == "running":
            assert owner is Side.SOURCE, f"source guest runs but the leases are with {owner}"
        if dst.guest == "running":
            assert owner is Side.DESTINATION, f"destination guest runs but the leases are with {owner}"
        if not src.crashed and self.source.outcome is Outcome.COMMITTED:
            assert owner is Side.DESTINATION
        dest = self.dest
        if not dst.crashed and dest is not None and dest.outcome is Outcome.COMMITTED:
            assert owner is Side.DESTINATION

    def check_agreement(self) -> None:
        """After :meth:`settle`: each live side's final outcome is what the lockspace says."""
        owner = self.owner()
        assert owner is not Side.NEITHER
        src = self.hosts[SOURCE]
        if not src.crashed:
            assert self.source.finished, f"source stuck in {self.source.state}"
            assert (self.source.outcome is Outcome.COMMITTED) == (owner is Side.DESTINATION), (
                f"source says {self.source.outcome}, lockspace says {owner}"
            )
            if self.source.outcome is Outcome.CANCELLED:
                assert self.backend.records == {
                    key: LeaseRecord(key, 7, (Holder(self.source_owner, LeaseMode.EXCLUSIVE, 7, "inc-src"),))
                    for key in self.backend.records
                }, "cancel must leave the source's leases untouched"
            assert len(self.answers(SOURCE, Call.PREPARE)) == 1
            if src.called:
                assert len(self.answers(SOURCE, Call.COMPLETE)) == 1
        dst = self.hosts[DESTINATION]
        dest = self.dest
        if dest is not None and not dst.crashed:
            assert dest.finished, f"destination stuck in {dest.state}"
            assert (dest.outcome is Outcome.COMMITTED) == (owner is Side.DESTINATION), (
                f"destination says {dest.outcome}, lockspace says {owner}"
            )
            if dst.called:
                assert len(self.answers(DESTINATION, Call.COMPLETE)) == 1
        for role, host in self.hosts.items():
            if not host.crashed:
                assert not host.timers, f"{role} still has timers {host.timers}"

    # --- plumbing ------------------------------------------------------

    def _deliver(self, packet: Packet) -> None:
        host = self.hosts[packet.to]
        message = packet.message
        self.trace.append(f"{self.now:7.3f} -> {packet.to}: {message!r}")
        if host.crashed:
            return
        if isinstance(message, Request):
            if host.machine is None:
                if not isinstance(message, Prepare):
                    return  # the actor answers unknown ids itself; nothing to model here
                host.machine = MigrationDestination(
                    migration_id=message.migration_id,
                    local=host.identity,
                    incarnation="inc-dst",
                    lockspace_kind="memory",
                    lockspace_id=self.dest_lockspace_id,
                    timing=self.timing,
                )
            host.waiting.setdefault(message.seq, []).append(packet.exchange)
            self._run(packet.to, host.machine.receive(message, now=self.now))
            return
        assert isinstance(message, Response)
        exchange = self.exchanges[packet.exchange]
        exchange.open = False
        assert host.machine is not None
        self._run(packet.to, host.machine.receive(message, now=self.now))

    def _run(self, role: str, effects: list[Effect]) -> None:
        carry_out(role, effects, self, before_each=self._note)

    def _note(self, role: str, effect: Effect) -> None:
        self.trace.append(f"{self.now:7.3f} {role}: {effect!r}")

    # --- the effects, as the driver carries them out (EffectHandler) ---

    def send_request(self, role: str, message: Request) -> None:
        ex = Exchange(len(self.exchanges), role, message, self.now + self.request_timeout)
        self.exchanges[ex.id] = ex
        self.net.append(Packet(ex.id, peer_of(role), message))

    def send_reply(self, role: str, message: Response) -> None:
        for ex_id in self.hosts[role].waiting.pop(message.seq, []):
            self.net.append(Packet(ex_id, peer_of(role), message))

    def arm_timer(self, role: str, timer: Timer, at: float) -> None:
        self.hosts[role].timers[timer] = at

    def cancel_timer(self, role: str, timer: Timer) -> None:
        self.hosts[role].timers.pop(timer, None)

    def start_backend_call(self, role: str, effect: BackendCall) -> None:
        if self.defer_backend:
            self.pending_ops.append(PendingOp(role, effect))
        else:
            self._perform(role, effect)

    def answer_caller(self, role: str, effect: CompleteCaller) -> None:
        host = self.hosts[role]
        host.answers.append(effect)
        host.guest = guest_hears(role, host.guest, host.called, effect)

    def drop_pending(self, role: str, effect: DropPending) -> None:
        self.hosts[role].dropped.append(effect)

    def discard_message(self, role: str, effect: Discard) -> None:
        self.hosts[role].discarded.append(effect)

    def _perform(self, role: str, effect: BackendCall) -> None:
        fault = self.faults.pop(0) if self.faults else Fault.NONE
        host = self.hosts[role]
        machine = host.machine
        assert machine is not None
        if host.crashed:
            return
        now = self.now
        lost = BackendError(f"backend fault ({fault.value})")
        match effect:
            case VerifyLeases():
                result = lost if fault is not Fault.NONE else self.backend.verify(effect)
                self._run(role, verify_result(result, now)(machine))
            case TransferLeases():
                outcome: LockState | ActorlockError = lost
                if fault is not Fault.BEFORE:
                    try:
                        outcome = self.backend.transfer(effect)
                    except LeaseLostError as exc:  # StaleLockStateError included
                        outcome = exc
                    if fault is Fault.AFTER:
                        outcome = lost
                self._run(role, transfer_result(outcome, now)(machine))
            case QueryBackend():
                answer: Ownership | ActorlockError = (
                    lost if fault is not Fault.NONE else self.backend.query(effect)
                )
                self._run(role, query_result(answer, now)(machine))
