"""The two ends of a lease migration as sans-I/O state machines.

Read ``_state.py`` first: it states the rules and holds the transition
tables. Here each event computes its effects; the tables decide whether the
event is allowed and which state follows. No clock is read (every event
gets ``now``), nothing sleeps, nothing is sent: the domain actor carries out
the returned effects and feeds their results back.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import attrs

from ..errors import ActorlockError, InvalidParameterError, PeerUnreachableError
from ..model import DomainIdentity, HostIdentity, LeaseOwner, LockState
from ._errors import (
    IllegalEventError,
    MigrationCancelledError,
    MigrationCommittedError,
    MigrationLeasesLostError,
    MigrationProtocolError,
    MigrationRefusedError,
    MigrationTimeoutError,
    StaleMessageError,
    UnknownMigrationError,
)
from ._state import (
    DESTINATION_FINAL,
    DESTINATION_TRANSITIONS,
    SOURCE_FINAL,
    SOURCE_TRANSITIONS,
    DestinationState,
    Event,
    SourceState,
)
from .effects import (
    ArmTimer,
    Call,
    CancelTimer,
    CompleteCaller,
    Discard,
    DropPending,
    Effect,
    Ownership,
    QueryBackend,
    Reply,
    SendToPeer,
    Side,
    Timer,
    TransferLeases,
    VerifyLeases,
)
from .messages import (
    ANSWERS,
    NO_LEASES,
    PROTOCOL_VERSION,
    Cancel,
    CancelReply,
    Commit,
    CommitReply,
    ErrorReply,
    Message,
    Outcome,
    Prepare,
    PrepareReply,
    Query,
    Refuse,
    Request,
    Response,
    Status,
)
from .ownership import lease_owner


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise InvalidParameterError(
            f"timing {attribute.name} must be a positive number of seconds, got {value!r}"
        )


@attrs.frozen
class Timing:
    """Protocol timing, in seconds.

    Attributes:
        retry_interval: wait before resending a request that got no answer,
            and before asking the backend again after it failed.
        prepare_timeout: how long the source waits for PREPARE's answer.
        transfer_margin: the source starts no transfer later than this before
            its deadline; it must cover one backend ``transfer`` call.
        max_pending: the destination keeps a pending migration at most this
            long, whatever deadline PREPARE claims.
    """

    retry_interval: float = attrs.field(default=0.25, validator=_positive)
    prepare_timeout: float = attrs.field(default=10.0, validator=_positive)
    transfer_margin: float = attrs.field(default=2.0, validator=_positive)
    max_pending: float = attrs.field(default=3600.0, validator=_positive)


_Factory = Callable[[], ActorlockError]
StateT = TypeVar("StateT", bound=enum.Enum)
M = TypeVar("M", bound=Message)


class _Awaiting(enum.Enum):
    """The backend result a machine waits for (at most one at a time)."""

    VERIFY = "verify"
    TRANSFER = "transfer"
    QUERY = "query"


class _Machine(Generic[StateT]):
    """What both ends share: numbering, duplicates, deferred answers, timers."""

    _role = ""
    _table: Mapping[StateT, Mapping[Event, StateT]]
    _final_states: frozenset[StateT]

    def __init__(self, migration_id: str, local: HostIdentity, timing: Timing, state: StateT) -> None:
        self.migration_id = migration_id
        self.local = local
        self.timing = timing
        self.peer: str | None = None
        self._state = state
        self._deadline_at = math.inf
        self._next_seq = 1
        self._sent: dict[int, Request] = {}
        self._answered: set[int] = set()  # our requests that got a response
        self._resend: set[int] = set()
        self._peer_seqs: dict[type[Request], int] = {}
        self._peer_max_seq = 0
        self._deferred: dict[type[Request], int] = {}
        self._final: dict[type[Request], Response] = {}
        self._armed: dict[Timer, float] = {}
        self._awaiting: _Awaiting | None = None
        self._requery = False
        self._failure: _Factory | None = None  # why this migration did not commit
        self._result: LockState | None = None

    # --- public views -------------------------------------------------

    @property
    def state(self) -> StateT:
        """The current state (see ``_state.py``)."""
        return self._state

    @property
    def deadline_at(self) -> float:
        """This side's deadline on the clock ``now`` comes from (inf before it is known)."""
        return self._deadline_at

    @property
    def finished(self) -> bool:
        """Whether the outcome is final."""
        return self._state in self._final_states

    @property
    def lock_state(self) -> LockState | None:
        """The domain's leases after the outcome (the destination's if committed), when known."""
        return self._result

    @property
    def armed_timers(self) -> Mapping[Timer, float]:
        """Timers armed now and when they are due."""
        return dict(self._armed)

    def _committed_state(self) -> StateT:
        raise NotImplementedError

    @property
    def outcome(self) -> Outcome:
        """COMMITTED, CANCELLED (any final state without the commit) or PENDING."""
        if self._state is self._committed_state():
            return Outcome.COMMITTED
        return Outcome.CANCELLED if self.finished else Outcome.PENDING

    # --- events shared by both roles ----------------------------------

    def receive(self, message: Message, *, now: float) -> list[Effect]:
        """Handle a message from the peer: a request (always answered) or a response.

        Never raises for the peer's faults: a bad request gets an ErrorReply,
        a response that answers nothing we wait for is discarded.
        """
        if isinstance(message, Request):
            problem = self._request_problem(message)
            if problem is not None:
                return [Reply(self._error_reply(message, problem, now))]
            if isinstance(message, Query):
                return [Reply(self._status(message, now))]
            answered = self._final.get(type(message))
            if answered is not None:
                return [Reply(answered)]  # a retransmission: the same answer again
            return self._on_request(message, now)
        if isinstance(message, Response):
            reason = self._response_problem(message)
            if reason is not None:
                return [Discard(message, reason)]
            self._answered.add(message.seq)
            self._resend.discard(message.seq)
            return self._on_response(message, self._sent[message.seq], now)
        return [Discard(message, "neither a request nor a response")]

    def timer_fired(self, timer: Timer, *, now: float) -> list[Effect]:
        """A timer armed by an ArmTimer effect is due. Unarmed timers are ignored."""
        if timer not in self._armed:
            return []
        del self._armed[timer]
        if timer is Timer.RETRY:
            return self._retry(now)
        return self._on_timer(timer, now)

    def io_failed(self, message: Request, error: BaseException | None = None, *, now: float) -> list[Effect]:
        """A request we sent got no response (timeout, unreachable peer). Resent after a pause.

        Raises:
            IllegalEventError: ``message`` is not a request this machine sent.
        """
        if not self._same_request(message):
            raise IllegalEventError(f"{self._role} never sent {type(message).__name__} #{message.seq}")
        if message.seq in self._answered or not self._wanted(self._sent[message.seq], now):
            return []
        self._resend.add(message.seq)
        fx: list[Effect] = []
        if Timer.RETRY not in self._armed:
            self._arm(fx, Timer.RETRY, now + self.timing.retry_interval)
        return fx

    def query_done(self, result: Ownership | ActorlockError, *, now: float) -> list[Effect]:
        """The result of a QueryBackend effect: who holds the leases, or the backend's error.

        Raises:
            IllegalEventError: no query was asked for.
        """
        self._take_result(_Awaiting.QUERY)
        fx: list[Effect] = []
        if self._state not in self._checking_states():
            return fx  # a peer's answer settled it meanwhile
        if isinstance(result, ActorlockError):
            self._requery = True  # the backend is the truth: ask again, never guess
            if Timer.RETRY not in self._armed:
                self._arm(fx, Timer.RETRY, now + self.timing.retry_interval)
            return fx
        event = {
            Side.SOURCE: Event.OWNER_SOURCE,
            Side.DESTINATION: Event.OWNER_DESTINATION,
            Side.NEITHER: Event.OWNER_NEITHER,
        }[result.side]
        nxt = self._legal(event)
        self._on_ownership(fx, result, now)
        self._state = nxt
        return fx

    # --- hooks for the roles ------------------------------------------

    def _on_request(self, message: Request, now: float) -> list[Effect]:
        raise NotImplementedError

    def _on_response(self, message: Response, request: Request, now: float) -> list[Effect]:
        raise NotImplementedError

    def _on_timer(self, timer: Timer, now: float) -> list[Effect]:
        raise NotImplementedError

    def _on_ownership(self, fx: list[Effect], result: Ownership, now: float) -> None:
        raise NotImplementedError

    def _checking_states(self) -> frozenset[StateT]:
        raise NotImplementedError

    def _query_effect(self) -> QueryBackend:
        raise NotImplementedError

    def _wanted(self, request: Request, now: float) -> bool:
        """Whether a request that got no answer is still worth resending."""
        if isinstance(request, Cancel):
            return now < self._deadline_at
        return False

    # --- helpers -------------------------------------------------------

    def _next(self, event: Event) -> StateT | None:
        return self._table[self._state].get(event)

    def _legal(self, event: Event) -> StateT:
        nxt = self._next(event)
        if nxt is None:
            raise IllegalEventError(f"{self._role} cannot handle {event.value} in state {self._state.value}")
        return nxt

    def _take_result(self, kind: _Awaiting) -> None:
        if self._awaiting is not kind:
            raise IllegalEventError(f"{self._role} is not waiting for a {kind.value} result")
        self._awaiting = None

    def _remaining(self, now: float) -> float:
        if math.isinf(self._deadline_at):
            return 0.0
        return max(0.0, self._deadline_at - now)

    def _arm(self, fx: list[Effect], timer: Timer, at: float) -> None:
        self._armed[timer] = at
        fx.append(ArmTimer(timer, at))

    def _disarm(self, fx: list[Effect], *timers: Timer) -> None:
        for timer in timers:
            if self._armed.pop(timer, None) is not None:
                fx.append(CancelTimer(timer))

    def _send(self, fx: list[Effect], request: Request) -> None:
        self._sent[request.seq] = request
        fx.append(SendToPeer(request))

    def _numbered(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _msg(self, cls: type[M], now: float, seq: int, **fields: Any) -> M:
        """A message of ours: the envelope filled in, ``seq`` the request's number."""
        return cls(
            migration_id=self.migration_id,
            sender=self.local.name,
            seq=seq,
            deadline_remaining=self._remaining(now),
            **fields,
        )

    def _answer(self, fx: list[Effect], kind: type[Request], make: Callable[[int], Response]) -> None:
        """Answer the deferred request of ``kind``, if any, and remember the answer."""
        seq = self._deferred.pop(kind, None)
        if seq is not None:
            self._reply(fx, kind, make(seq))

    def _reply(self, fx: list[Effect], kind: type[Request], response: Response) -> None:
        self._final[kind] = response
        fx.append(Reply(response))

    def _defer(self, message: Request) -> None:
        self._deferred[type(message)] = message.seq

    def _accept_seq(self, message: Request) -> None:
        self._peer_seqs[type(message)] = message.seq
        self._peer_max_seq = max(self._peer_max_seq, message.seq)

    def _same_request(self, message: Request) -> bool:
        sent = self._sent.get(message.seq)
        return (
            sent is not None and attrs.evolve(sent, deadline_remaining=message.deadline_remaining) == message
        )

    def _request_problem(self, message: Request) -> ActorlockError | None:
        if message.version != PROTOCOL_VERSION:
            return MigrationProtocolError(
                f"protocol version {message.version} is not supported (this host speaks {PROTOCOL_VERSION})"
            )
        if message.migration_id != self.migration_id:
            return UnknownMigrationError(f"no migration {message.migration_id!r} here")
        if self.peer is not None and message.sender != self.peer:
            return MigrationProtocolError(
                f"migration {self.migration_id} is with {self.peer!r}, not {message.sender!r}"
            )
        if message.seq < 1 or not math.isfinite(message.deadline_remaining):
            return MigrationProtocolError(
                f"bad envelope: seq {message.seq}, deadline {message.deadline_remaining}"
            )
        if isinstance(message, Query):
            return None  # read-only: any number will do
        known = self._peer_seqs.get(type(message))
        kind = type(message).__name__
        if known is not None and known != message.seq:
            if message.seq < known:
                return StaleMessageError(f"{kind} #{message.seq} is older than #{known}")
            return MigrationProtocolError(f"second {kind} (#{message.seq}) after #{known}")
        if known is None and message.seq <= self._peer_max_seq:
            return StaleMessageError(f"{kind} #{message.seq} is older than #{self._peer_max_seq}")
        return None

    def _response_problem(self, message: Response) -> str | None:
        if message.version != PROTOCOL_VERSION:
            return f"protocol version {message.version} is not supported"
        if message.migration_id != self.migration_id:
            return f"for migration {message.migration_id!r}, not {self.migration_id!r}"
        if self.peer is None or message.sender != self.peer:
            return f"from {message.sender!r}, not the peer {self.peer!r}"
        request = self._sent.get(message.seq)
        if request is None:
            return f"answers #{message.seq}, which we never sent"
        if not isinstance(request, ANSWERS.get(type(message), ())):
            return f"a {type(message).__name__} cannot answer {type(request).__name__} #{message.seq}"
        return None

    def _error_reply(self, message: Request, error: ActorlockError, now: float) -> ErrorReply:
        reply = self._msg(ErrorReply, now, message.seq, code=error.code, message=str(error))
        return attrs.evolve(reply, migration_id=message.migration_id)

    def _not_expected(self, message: Request, now: float) -> list[Effect]:
        error = MigrationProtocolError(
            f"{type(message).__name__} is not expected by the {self._role} in state {self._state.value}"
        )
        return [Reply(self._error_reply(message, error, now))]

    def _status(self, message: Query, now: float) -> Status:
        reason = f"{self._role} is {self._state.value}"
        return self._msg(Status, now, message.seq, outcome=self.outcome, reason=reason)

    def _retry(self, now: float) -> list[Effect]:
        fx: list[Effect] = []
        for seq in sorted(self._resend):
            request = self._sent[seq]
            if seq not in self._answered and self._wanted(request, now):
                fx.append(SendToPeer(attrs.evolve(request, deadline_remaining=self._remaining(now))))
        self._resend.clear()
        if self._requery and self._awaiting is None and self._state in self._checking_states():
            self._requery = False
            self._awaiting = _Awaiting.QUERY
            fx.append(self._query_effect())
        return fx

    def _fail(self) -> ActorlockError:
        return (
            self._failure() if self._failure is not None else MigrationCancelledError("migration cancelled")
        )

    def _answer_call(self, event: Event) -> list[Effect]:
        """Answer a local call made after the outcome is final."""
        if self._state is self._committed_state():
            if event is Event.CANCEL_CALL:
                refused = MigrationCommittedError(
                    f"cannot cancel migration {self.migration_id}: "
                    "it is committed, the leases are held by the destination"
                )
                return [CompleteCaller(Call.COMPLETE, Outcome.COMMITTED, refused, self._result)]
            return [CompleteCaller(Call.COMPLETE, Outcome.COMMITTED, None, self._result)]
        error: ActorlockError | None = self._fail()
        if event is Event.CANCEL_CALL and not isinstance(error, MigrationLeasesLostError):
            error = None
        return [CompleteCaller(Call.COMPLETE, Outcome.CANCELLED, error, self._result)]


# === source ================================================================


class MigrationSource(_Machine[SourceState]):
    """The side that holds the leases, sends PREPARE and performs the transfer.

    Args:
        migration_id: unique id, chosen by the caller (e.g. a uuid4 hex).
        local: this host.
        peer: the destination host's name (as it signs its messages).
        domain: the migrating guest.
        lockspace_kind: the backend kind ("memory", "file", ...).
        lockspace_id: the shared lockspace's id; the destination must be in the same one.
        lock_state: the leases the domain holds here, with their tokens.
        timing: protocol timing.
    """

    _role = "source"
    _table = SOURCE_TRANSITIONS
    _final_states = SOURCE_FINAL

    def __init__(
        self,
        *,
        migration_id: str,
        local: HostIdentity,
        peer: str,
        domain: DomainIdentity,
        lockspace_kind: str,
        lockspace_id: str,
        lock_state: LockState,
        timing: Timing = Timing(),
    ) -> None:
        super().__init__(migration_id, local, timing, SourceState.IDLE)
        self.peer = peer
        self.domain = domain
        self.lockspace_kind = lockspace_kind
        self.lockspace_id = lockspace_id
        self.original = lock_state
        self.owner = lease_owner(local, domain)
        self._dest_owner: LeaseOwner | None = None
        self._dest_incarnation = ""
        self._decide_by = math.inf
        self._transfer_error: ActorlockError | None = None

    def _committed_state(self) -> SourceState:
        return SourceState.COMMITTED

    def _checking_states(self) -> frozenset[SourceState]:
        return frozenset({SourceState.CHECKING})

    # --- local calls --------------------------------------------------

    def start(self, *, now: float, deadline_at: float) -> list[Effect]:
        """prepare_migrate: send PREPARE. Answered by CompleteCaller(PREPARE).

        Args:
            now: the current time.
            deadline_at: when the whole migration must be decided, on the same clock.

        Raises:
            IllegalEventError: already started.
            InvalidParameterError: the deadline leaves less than ``transfer_margin``.
        """
        nxt = self._legal(Event.START)
        if not deadline_at - self.timing.transfer_margin > now:
            raise InvalidParameterError(
                f"migration deadline in {deadline_at - now:.3f}s leaves no time to commit "
                f"(transfer margin {self.timing.transfer_margin}s)"
            )
        fx: list[Effect] = []
        self._deadline_at = deadline_at
        self._decide_by = deadline_at - self.timing.transfer_margin
        prepare = self._msg(
            Prepare,
            now,
            self._numbered(),
            domain=self.domain,
            source_host_id=self.local.id,
            lockspace_kind=self.lockspace_kind,
            lockspace_id=self.lockspace_id,
            lock_state=self.original,
        )
        self._send(fx, prepare)
        self._arm(fx, Timer.PREPARE_TIMEOUT, min(now + self.timing.prepare_timeout, self._decide_by))
        self._arm(fx, Timer.DEADLINE, self._decide_by)
        self._state = nxt
        return fx

    def commit_requested(self, *, now: float) -> list[Effect]:
        """complete_migrate_in(0) on the source. Answered by CompleteCaller(COMPLETE)."""
        nxt = self._legal(Event.COMMIT_CALL)
        if self.finished:
            return self._answer_call(Event.COMMIT_CALL)
        if self._state is SourceState.PEER_AGREED and now >= self._decide_by:
            return self._late(now) + self.commit_requested(now=now)
        fx: list[Effect] = []
        if self._state is SourceState.PEER_AGREED:
            self._start_transfer(fx)
        self._state = nxt
        return fx

    def cancel_requested(self, *, now: float) -> list[Effect]:
        """complete_migrate_in(CANCEL) on the source: final at once, the leases stay here."""
        nxt = self._legal(Event.CANCEL_CALL)
        if self.finished:
            return self._answer_call(Event.CANCEL_CALL)
        fx: list[Effect] = []
        if self._state is SourceState.PREPARING:
            fx.append(
                CompleteCaller(
                    Call.PREPARE, Outcome.CANCELLED, MigrationCancelledError("cancelled by the local caller")
                )
            )
        reason = "cancelled on the source"
        self._cancel(fx, now, reason, lambda: MigrationCancelledError(reason), notify=True)
        fx.append(CompleteCaller(Call.COMPLETE, Outcome.CANCELLED, None, self.original))
        self._state = nxt
        return fx

    # --- backend results ----------------------------------------------

    def transfer_done(self, result: LockState | ActorlockError, *, now: float) -> list[Effect]:
        """The result of TransferLeases: the destination's new leases, or the error.

        Any error (a token conflict or an unknown outcome) is settled by asking
        the backend, never by assuming.

        Raises:
            IllegalEventError: no transfer is running.
        """
        self._take_result(_Awaiting.TRANSFER)
        fx: list[Effect] = []
        if isinstance(result, LockState):
            nxt = self._legal(Event.TRANSFER_OK)
            self._committed(fx, now, result)
        else:
            nxt = self._legal(Event.TRANSFER_FAILED)
            self._transfer_error = result
            self._awaiting = _Awaiting.QUERY
            fx.append(self._query_effect())
        self._state = nxt
        return fx

    # --- the rest -----------------------------------------------------

    def _query_effect(self) -> QueryBackend:
        assert self._dest_owner is not None
        keys = tuple(lease.key for lease in self.original.leases)
        return QueryBackend(self.owner, self._dest_owner, keys)

    def _wanted(self, request: Request, now: float) -> bool:
        if isinstance(request, Prepare):
            return self._state is SourceState.PREPARING
        return super()._wanted(request, now)

    def _start_transfer(self, fx: list[Effect]) -> None:
        assert self._dest_owner is not None
        self._awaiting = _Awaiting.TRANSFER
        fx.append(
            TransferLeases(
                self.migration_id, self.owner, self._dest_owner, self._dest_incarnation, self.original.leases
            )
        )

    def _learn_destination(self, host_id: int, incarnation: str) -> None:
        if self._dest_owner is None:
            assert self.peer is not None
            self._dest_owner = LeaseOwner(self.peer, host_id, self.domain.uuid, self.domain.name)
            self._dest_incarnation = incarnation

    def _late(self, now: float) -> list[Effect]:
        """The deadline passed but its timer has not fired yet: act as if it had."""
        self._armed.pop(Timer.DEADLINE, None)
        return self._on_timer(Timer.DEADLINE, now)

    def _cancel(self, fx: list[Effect], now: float, reason: str, failure: _Factory, *, notify: bool) -> None:
        """Decide "no commit": final, since only this side can transfer."""
        self._failure = failure
        self._result = self.original
        self._disarm(fx, Timer.PREPARE_TIMEOUT, Timer.DEADLINE)
        self._resend.clear()
        self._answer(fx, Commit, lambda seq: self._commit_reply(seq, now, Outcome.CANCELLED, reason))
        self._answer(fx, Cancel, lambda seq: self._cancel_reply(seq, now, Outcome.CANCELLED, reason))
        if notify:
            self._send(fx, self._msg(Cancel, now, self._numbered(), reason=reason))

    def _committed(self, fx: list[Effect], now: float, leases: LockState) -> None:
        self._result = leases
        self._disarm(fx, Timer.PREPARE_TIMEOUT, Timer.DEADLINE, Timer.RETRY)
        self._resend.clear()
        self._answer(fx, Commit, lambda seq: self._commit_reply(seq, now, Outcome.COMMITTED, "", leases))
        self._answer(
            fx,
            Cancel,
            lambda seq: self._cancel_reply(seq, now, Outcome.COMMITTED, "cancel came after the commit"),
        )
        fx.append(CompleteCaller(Call.COMPLETE, Outcome.COMMITTED, None, leases))

    def _commit_reply(
        self, seq: int, now: float, outcome: Outcome, reason: str, leases: LockState = NO_LEASES
    ) -> CommitReply:
        return self._msg(CommitReply, now, seq, outcome=outcome, lock_state=leases, reason=reason)

    def _cancel_reply(self, seq: int, now: float, outcome: Outcome, reason: str) -> CancelReply:
        return self._msg(CancelReply, now, seq, outcome=outcome, reason=reason)

    def _on_request(self, message: Request, now: float) -> list[Effect]:
        if isinstance(message, Commit):
            return self._on_commit(message, now)
        if isinstance(message, Cancel):
            return self._on_cancel(message, now)
        return self._not_expected(message, now)

    def _on_commit(self, message: Commit, now: float) -> list[Effect]:
        nxt = self._next(Event.PEER_COMMIT)
        if nxt is None:
            return self._not_expected(message, now)
        state = self._state
        if state is SourceState.LOCAL_AGREED and now >= self._decide_by:
            return self._late(now) + self.receive(message, now=now)
        self._accept_seq(message)
        fx: list[Effect] = []
        if state is SourceState.COMMITTED:
            assert self._result is not None
            self._reply(fx, Commit, self._commit_reply(message.seq, now, Outcome.COMMITTED, "", self._result))
        elif state in SOURCE_FINAL:
            reason = str(self._fail())
            self._reply(fx, Commit, self._commit_reply(message.seq, now, Outcome.CANCELLED, reason))
        else:
            self._learn_destination(message.host_id, message.incarnation)
            self._defer(message)
            if state is SourceState.PREPARING:
                self._disarm(fx, Timer.PREPARE_TIMEOUT)
                self._resend.clear()
                fx.append(CompleteCaller(Call.PREPARE, Outcome.PENDING))
            elif state is SourceState.LOCAL_AGREED:
                self._start_transfer(fx)
        self._state = nxt
        return fx

    def _on_cancel(self, message: Cancel, now: float) -> list[Effect]:
        nxt = self._next(Event.PEER_CANCEL)
        if nxt is None:
            return self._not_expected(message, now)
        self._accept_seq(message)
        state = self._state
        fx: list[Effect] = []
        reason = f"the destination {self.peer} cancelled" + (f": {message.reason}" if message.reason else "")
        if state is SourceState.COMMITTED:
            self._reply(
                fx, Cancel, self._cancel_reply(message.seq, now, Outcome.COMMITTED, "already committed")
            )
        elif state in SOURCE_FINAL:
            self._reply(
                fx, Cancel, self._cancel_reply(message.seq, now, Outcome.CANCELLED, str(self._fail()))
            )
        elif state in (SourceState.TRANSFERRING, SourceState.CHECKING):
            self._defer(message)  # the transfer's outcome decides the answer
        else:
            if state is SourceState.PREPARING:
                fx.append(CompleteCaller(Call.PREPARE, Outcome.CANCELLED, MigrationRefusedError(reason)))
            elif state is SourceState.LOCAL_AGREED:
                error = MigrationCancelledError(reason)
                fx.append(CompleteCaller(Call.COMPLETE, Outcome.CANCELLED, error, self.original))
            self._defer(message)
            self._cancel(fx, now, reason, lambda: MigrationCancelledError(reason), notify=False)
        self._state = nxt
        return fx

    def _on_response(self, message: Response, request: Request, now: float) -> list[Effect]:
        if isinstance(request, Prepare):
            if isinstance(message, ErrorReply) and message.code == StaleMessageError.code:
                return [Discard(message, "stale-message answer to a retransmission")]
            event = Event.PREPARE_ACCEPTED if isinstance(message, PrepareReply) else Event.PREPARE_REFUSED
            nxt = self._next(event)
            if nxt is None:
                return [Discard(message, f"late answer to PREPARE in state {self._state.value}")]
            fx: list[Effect] = []
            self._disarm(fx, Timer.PREPARE_TIMEOUT)
            if isinstance(message, PrepareReply):
                self._learn_destination(message.host_id, message.incarnation)
                fx.append(CompleteCaller(Call.PREPARE, Outcome.PENDING))
            else:
                assert isinstance(message, Refuse | ErrorReply)
                text = f"{self.peer} refused migration {self.migration_id}: {message.message}"
                code = message.code
                fx.append(CompleteCaller(Call.PREPARE, Outcome.CANCELLED, MigrationRefusedError(text, code)))
                self._cancel(fx, now, text, lambda: MigrationRefusedError(text, code), notify=False)
            self._state = nxt
            return fx
        if isinstance(message, CancelReply) and message.outcome is Outcome.COMMITTED:
            return [Discard(message, "the destination claims a commit the source never made")]
        return []  # an answer to our CANCEL notice: nothing more to do

    def _on_timer(self, timer: Timer, now: float) -> list[Effect]:
        event = Event.PREPARE_TIMEOUT if timer is Timer.PREPARE_TIMEOUT else Event.DEADLINE
        nxt = self._next(event)
        if nxt is None or nxt is self._state:
            return []
        fx: list[Effect] = []
        state = self._state
        if state is SourceState.PREPARING:
            text = f"no answer from {self.peer} to PREPARE of migration {self.migration_id} in time"
            fx.append(CompleteCaller(Call.PREPARE, Outcome.CANCELLED, PeerUnreachableError(text)))
            self._cancel(fx, now, text, lambda: PeerUnreachableError(text), notify=True)
        else:
            waiting_for = "the destination" if state is SourceState.LOCAL_AGREED else "the local caller"
            text = f"migration {self.migration_id}: {waiting_for} did not commit before the deadline"
            if state is SourceState.LOCAL_AGREED:
                fx.append(
                    CompleteCaller(
                        Call.COMPLETE, Outcome.CANCELLED, MigrationTimeoutError(text), self.original
                    )
                )
            self._cancel(fx, now, text, lambda: MigrationTimeoutError(text), notify=True)
        self._state = nxt
        return fx

    def _on_ownership(self, fx: list[Effect], result: Ownership, now: float) -> None:
        if result.side is Side.DESTINATION:
            self._committed(fx, now, result.lock_state)
            return
        cause = self._transfer_error
        if result.side is Side.SOURCE:
            text = f"transfer of migration {self.migration_id} did not happen ({cause}); the leases stay here"
            failure: _Factory = lambda: MigrationCancelledError(text)  # noqa: E731
        else:
            text = f"after a failed transfer ({cause}) neither side holds every lease of {self.domain.uuid}"
            keys = [lease.key for lease in self.original.leases]
            failure = lambda: MigrationLeasesLostError(text, keys)  # noqa: E731
        fx.append(CompleteCaller(Call.COMPLETE, Outcome.CANCELLED, failure(), result.lock_state))
        self._cancel(fx, now, text, failure, notify=True)
        self._result = result.lock_state


# === destination ===========================================================


class MigrationDestination(_Machine[DestinationState]):
    """The side that receives PREPARE, verifies it and asks the source to commit.

    Create one per incoming PREPARE (keyed by its migration id) and feed that
    PREPARE to :meth:`receive`.

    Args:
        migration_id: the id in the incoming PREPARE.
        local: this host.
        incarnation: this host's incarnation (names its future holder entries).
        lockspace_kind: this host's backend kind; PREPARE must match.
        lockspace_id: this host's lockspace id; PREPARE must match.
        timing: protocol timing.
    """

    _role = "destination"
    _table = DESTINATION_TRANSITIONS
    _final_states = DESTINATION_FINAL

    def __init__(
        self,
        *,
        migration_id: str,
        local: HostIdentity,
        incarnation: str,
        lockspace_kind: str,
        lockspace_id: str,
        timing: Timing = Timing(),
    ) -> None:
        super().__init__(migration_id, local, timing, DestinationState.IDLE)
        self.incarnation = incarnation
        self.lockspace_kind = lockspace_kind
        self.lockspace_id = lockspace_id
        self.domain: DomainIdentity | None = None
        self.offered: LockState | None = None
        self._source_owner: LeaseOwner | None = None

    def _committed_state(self) -> DestinationState:
        return DestinationState.COMMITTED

    def _checking_states(self) -> frozenset[DestinationState]:
        return frozenset({DestinationState.CHECKING})

    @property
    def owner(self) -> LeaseOwner | None:
        """The holder identity the leases will have here (known once PREPARE arrived)."""
        return lease_owner(self.local, self.domain) if self.domain is not None else None

    # --- local calls --------------------------------------------------

    def commit_requested(self, *, now: float) -> list[Effect]:
        """complete_migrate_in(0) on the destination: ask the source to commit.

        Answered by CompleteCaller(COMPLETE) once the source has decided, or
        once the deadline passed and the backend was asked.
        """
        nxt = self._legal(Event.COMMIT_CALL)
        if self.finished:
            return self._answer_call(Event.COMMIT_CALL)
        if now >= self._deadline_at and Timer.EXPIRY in self._armed:
            del self._armed[Timer.EXPIRY]
            return self._on_timer(Timer.EXPIRY, now) + self.commit_requested(now=now)
        fx: list[Effect] = []
        self._send(
            fx,
            self._msg(Commit, now, self._numbered(), host_id=self.local.id, incarnation=self.incarnation),
        )
        self._state = nxt
        return fx

    def cancel_requested(self, *, now: float) -> list[Effect]:
        """complete_migrate_in(CANCEL) on the destination: final at once (we never said commit)."""
        nxt = self._legal(Event.CANCEL_CALL)
        if self.finished:
            return self._answer_call(Event.CANCEL_CALL)
        fx: list[Effect] = []
        reason = "cancelled on the destination"
        if self._state is DestinationState.PREPARED:
            self._send(fx, self._msg(Cancel, now, self._numbered(), reason=reason))
        self._drop(fx, now, reason, lambda: MigrationCancelledError(reason))
        fx.append(CompleteCaller(Call.COMPLETE, Outcome.CANCELLED, None, self._result))
        self._state = nxt
        return fx

    # --- backend results ----------------------------------------------

    def verify_done(self, error: ActorlockError | None, *, now: float) -> list[Effect]:
        """The result of VerifyLeases: None when the lock state matched, else why not.

        Raises:
            IllegalEventError: no verification was asked for.
        """
        self._take_result(_Awaiting.VERIFY)
        fx: list[Effect] = []
        if self._state is not DestinationState.VERIFYING:
            return fx  # cancelled or expired meanwhile
        if error is None:
            nxt = self._legal(Event.VERIFIED)
            self._answer(fx, Prepare, lambda seq: self._prepare_reply(seq, now))
        else:
            nxt = self._legal(Event.VERIFY_FAILED)
            text = f"refused migration {self.migration_id}: {error}"
            self._drop(fx, now, text, lambda: MigrationCancelledError(text), refuse_with=error)
        self._state = nxt
        return fx

    # --- the rest -----------------------------------------------------

    def _query_effect(self) -> QueryBackend:
        assert self._source_owner is not None
        assert self.offered is not None
        assert self.owner is not None
        keys = tuple(lease.key for lease in self.offered.leases)
        return QueryBackend(self._source_owner, self.owner, keys)

    def _wanted(self, request: Request, now: float) -> bool:
        if isinstance(request, Commit):
            return self._state is DestinationState.COMMITTING
        return super()._wanted(request, now)

    def _prepare_reply(self, seq: int, now: float) -> PrepareReply:
        return self._msg(PrepareReply, now, seq, host_id=self.local.id, incarnation=self.incarnation)

    def _refuse(self, seq: int, now: float, error: ActorlockError) -> Refuse:
        return self._msg(Refuse, now, seq, code=error.code, message=str(error))

    def _drop(
        self,
        fx: list[Effect],
        now: float,
        reason: str,
        failure: _Factory,
        *,
        refuse_with: ActorlockError | None = None,
    ) -> None:
        """End without the leases: answer what waits, stop the timers, tell the actor."""
        self._failure = failure
        self._disarm(fx, Timer.EXPIRY, Timer.RETRY)
        self._resend.clear()
        refusal = refuse_with if refuse_with is not None else MigrationCancelledError(reason)
        self._answer(fx, Prepare, lambda seq: self._refuse(seq, now, refusal))
        self._answer(
            fx,
            Cancel,
            lambda seq: self._msg(CancelReply, now, seq, outcome=Outcome.CANCELLED),
        )
        fx.append(DropPending(reason))

    def _committed(self, fx: list[Effect], leases: LockState) -> None:
        self._result = leases
        self._disarm(fx, Timer.EXPIRY, Timer.RETRY)
        self._resend.clear()
        fx.append(CompleteCaller(Call.COMPLETE, Outcome.COMMITTED, None, leases))

    def _on_request(self, message: Request, now: float) -> list[Effect]:
        if isinstance(message, Prepare):
            return self._on_prepare(message, now)
        if isinstance(message, Cancel):
            return self._on_cancel(message, now)
        return self._not_expected(message, now)

    def _prepare_problem(self, message: Prepare) -> ActorlockError | None:
        if (message.lockspace_kind, message.lockspace_id) != (self.lockspace_kind, self.lockspace_id):
            return MigrationProtocolError(
                f"source lockspace {message.lockspace_kind}:{message.lockspace_id} is not this host's "
                f"{self.lockspace_kind}:{self.lockspace_id}"
            )
        if not message.deadline_remaining > 0:
            return MigrationTimeoutError("PREPARE arrived after its deadline")
        keys = [lease.key for lease in message.lock_state.leases]
        if len(set(keys)) != len(keys):
            return InvalidParameterError("lock state names a resource twice")
        return None

    def _on_prepare(self, message: Prepare, now: float) -> list[Effect]:
        if self._state is DestinationState.VERIFYING:
            self._defer(message)  # same number: the answer comes with verify_done
            return []
        problem = self._prepare_problem(message)
        nxt = self._next(Event.PEER_PREPARE_BAD if problem is not None else Event.PEER_PREPARE)
        if nxt is None:
            return self._not_expected(message, now)
        self._accept_seq(message)
        self.peer = message.sender
        self.domain = message.domain
        self.offered = message.lock_state
        self._source_owner = LeaseOwner(
            message.sender, message.source_host_id, message.domain.uuid, message.domain.name
        )
        fx: list[Effect] = []
        self._defer(message)
        if problem is not None:
            text = f"refused migration {self.migration_id}: {problem}"
            self._drop(fx, now, text, lambda: MigrationCancelledError(text), refuse_with=problem)
        else:
            self._deadline_at = now + min(message.deadline_remaining, self.timing.max_pending)
            self._arm(fx, Timer.EXPIRY, self._deadline_at)
            self._awaiting = _Awaiting.VERIFY
            fx.append(VerifyLeases(self._source_owner, message.lock_state))
        self._state = nxt
        return fx

    def _on_cancel(self, message: Cancel, now: float) -> list[Effect]:
        nxt = self._next(Event.PEER_CANCEL)
        if nxt is None:
            return self._not_expected(message, now)
        self._accept_seq(message)
        state = self._state
        fx: list[Effect] = []
        if state in DESTINATION_FINAL:
            outcome = Outcome.COMMITTED if state is DestinationState.COMMITTED else Outcome.CANCELLED
            self._reply(fx, Cancel, self._msg(CancelReply, now, message.seq, outcome=outcome))
        else:
            reason = f"the source {self.peer} cancelled" + (f": {message.reason}" if message.reason else "")
            if state in (DestinationState.COMMITTING, DestinationState.CHECKING):
                fx.append(CompleteCaller(Call.COMPLETE, Outcome.CANCELLED, MigrationCancelledError(reason)))
            self._defer(message)
            self._drop(fx, now, reason, lambda: MigrationCancelledError(reason))
        self._state = nxt
        return fx

    def _on_response(self, message: Response, request: Request, now: float) -> list[Effect]:
        if not isinstance(request, Commit):
            return []  # an answer to our CANCEL notice: nothing more to do
        if isinstance(message, ErrorReply) or (
            isinstance(message, CommitReply) and message.outcome not in (Outcome.COMMITTED, Outcome.CANCELLED)
        ):
            # The source could not say (it restarted, or is confused): ask again
            # until the deadline, when the backend settles it.
            self._answered.discard(message.seq)
            return [
                Discard(message, "no decision in the answer to COMMIT"),
                *self.io_failed(request, now=now),
            ]
        assert isinstance(message, CommitReply)
        committed = message.outcome is Outcome.COMMITTED
        nxt = self._next(Event.COMMIT_ACCEPTED if committed else Event.COMMIT_REFUSED)
        if nxt is None:
            return [Discard(message, f"late answer to COMMIT in state {self._state.value}")]
        fx: list[Effect] = []
        if committed:
            self._committed(fx, message.lock_state)
        else:
            reason = f"the source {self.peer} did not commit" + (
                f": {message.reason}" if message.reason else ""
            )
            fx.append(CompleteCaller(Call.COMPLETE, Outcome.CANCELLED, MigrationCancelledError(reason)))
            self._drop(fx, now, reason, lambda: MigrationCancelledError(reason))
        self._state = nxt
        return fx

    def _on_timer(self, timer: Timer, now: float) -> list[Effect]:
        nxt = self._next(Event.EXPIRY)
        if timer is not Timer.EXPIRY or nxt is None:
            return []
        fx: list[Effect] = []
        text = f"migration {self.migration_id} expired on the destination"
        if self._state is DestinationState.COMMITTING:
            # We said commit: the source may have moved the leases. Ask the backend.
            self._disarm(fx, Timer.RETRY)
            self._resend.clear()
            self._awaiting = _Awaiting.QUERY
            fx.append(self._query_effect())
        else:
            self._drop(fx, now, text, lambda: MigrationTimeoutError(text))
        self._state = nxt
        return fx

    def _on_ownership(self, fx: list[Effect], result: Ownership, now: float) -> None:
        if result.side is Side.DESTINATION:
            self._committed(fx, result.lock_state)
            return
        if result.side is Side.SOURCE:
            text = f"migration {self.migration_id} expired; the source kept the leases"
            failure: _Factory = lambda: MigrationTimeoutError(text)  # noqa: E731
        else:
            text = f"migration {self.migration_id} expired and neither side holds every lease"
            keys = [lease.key for lease in self.offered.leases] if self.offered is not None else []
            failure = lambda: MigrationLeasesLostError(text, keys)  # noqa: E731
        fx.append(CompleteCaller(Call.COMPLETE, Outcome.CANCELLED, failure(), result.lock_state))
        self._drop(fx, now, text, failure)
