"""Carrying out one migration machine's effects: the I/O shell around the protocol.

A :class:`MigrationDriver` is an actor of its own: one task owns the machine
and feeds it one input at a time (local calls, peer requests and responses,
timers, backend results), so the sans-I/O machine never sees two events at
once. Requests to the peer and timers run as tasks in the driver's own task
group and come back as inputs. The driver tells the domain actor the final
outcome (and waits until it is recorded) before it wakes the local caller.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import attrs
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from ..errors import ActorlockError, MigrationError, PeerError
from ..model import LockState, MigrationRole
from ..protocol import (
    ArmTimer,
    Call,
    CancelTimer,
    CommitReply,
    CompleteCaller,
    Discard,
    DropPending,
    Effect,
    MigrationDestination,
    MigrationSource,
    Ownership,
    PrepareReply,
    QueryBackend,
    Reply,
    Request,
    Response,
    SendToPeer,
    Timer,
    TransferLeases,
    VerifyLeases,
    judge_ownership,
    verify_lock_state,
)
from ..transport import codec
from ..transport.zmq import unreachable_after
from .call_result import CallResult
from .commit_check import check_commit, committed
from .messages import MigrationSettled
from .ports import MigrationHost

if TYPE_CHECKING:
    from ..transport.zmq import PeerClient

log = logging.getLogger(__name__)

Machine = MigrationSource | MigrationDestination
Input = Callable[[Machine, float], list[Effect]]
# The source's check of the destination's PREPARE reply (the incarnation it names is alive).
Confirm = Callable[[PrepareReply], Awaitable[None]]

_serials = itertools.count(1)


@attrs.frozen
class _Caller:
    """A local call on its way to the machine: which kind, which request, where to answer."""

    call: Call
    request: str
    result: CallResult


@attrs.define
class _ReplySlot:
    done: anyio.Event = attrs.Factory(anyio.Event)
    response: Response | None = None


class MigrationDriver:
    """Runs one migration for one domain, as source or destination."""

    def __init__(
        self,
        host: MigrationHost,
        machine: Machine,
        *,
        peer_endpoint: str,
        peer_key: str,
        domain_uuid: str,
        request_timeout: float,
        io_timeout: float,
        peer_name: str = "",
        confirm: Confirm | None = None,
    ) -> None:
        self.host = host
        self.machine = machine
        self.migration_id = machine.migration_id
        self.domain_uuid = domain_uuid
        self.peer_name = peer_name  # known before the machine reads PREPARE: caps count by it
        source = isinstance(machine, MigrationSource)
        self.role = MigrationRole.SOURCE if source else MigrationRole.DESTINATION
        self.serial = next(_serials)  # a later migration of this host has a larger one
        self._request_timeout = request_timeout
        self._io_timeout = io_timeout
        self._peer_endpoint = peer_endpoint
        self._peer_key = peer_key
        self._confirm = confirm
        self._send, self._inbox = anyio.create_memory_object_stream[tuple[Input, _Caller | None]](256)
        self._timers: dict[Timer, anyio.CancelScope] = {}
        self._replies: dict[int, list[_ReplySlot]] = {}
        # Every caller waiting for the machine's answer to a call kind: the
        # machine answers a kind once (CompleteCaller), and all of them hear it.
        self._calls: dict[Call, list[_Caller]] = {}
        self._client: PeerClient | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._settled = False

    # -- as a domain actor sees it (ports.MigrationHandle) -----------------------

    @property
    def finished(self) -> bool:
        return self.machine.finished

    @property
    def offered(self) -> LockState | None:
        """What the source offered (destination side, once prepared); None on the source."""
        return self.machine.offered if isinstance(self.machine, MigrationDestination) else None

    async def complete(self, *, commit: bool) -> CallResult:
        """The local commit (or cancel) of this migration."""

        def step(m: Machine, now: float) -> list[Effect]:
            return m.commit_requested(now=now) if commit else m.cancel_requested(now=now)

        return await self.call(Call.COMPLETE, step, request="commit" if commit else "cancel")

    # -- inputs -------------------------------------------------------------

    async def call(self, call: Call, step: Input, *, request: str = "") -> CallResult:
        """Feed a local call; the result is answered by the machine's CompleteCaller.

        A repeat of a ``request`` (say ``"commit"``) already waiting for its
        answer joins the waiting callers instead of reaching the machine a
        second time (which would refuse it): libvirt may call
        complete_migrate_in from two threads, and both hear the one outcome.
        """
        caller = _Caller(call, request, CallResult())
        await self._put(step, caller)
        return caller.result

    async def request(self, message: Request) -> Response | None:
        """A request from the peer; waits (bounded by the caller) for the machine's reply."""
        slot = _ReplySlot()
        self._replies.setdefault(message.seq, []).append(slot)
        await self._put(lambda m, now: m.receive(message, now=now), None)
        await slot.done.wait()
        return slot.response

    async def _put(self, step: Input, caller: _Caller | None) -> None:
        try:
            await self._send.send((step, caller))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            error = MigrationError(f"migration {self.migration_id} has ended")
            if caller is not None:
                caller.result.settle(error=error)
            else:
                raise error from None

    # -- the task -------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the machine until the migration ends.

        A bug or an unexpected error ends this migration only: its callers
        get MigrationError, and the host's task group (every other domain,
        renewal and fencing) never sees the exception.
        """
        started = False
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self._peer_endpoint:
                    connection = self.host.peer_connect(self._peer_endpoint, self._peer_key)
                    self._client = await stack.enter_async_context(connection)
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    task_status.started()
                    started = True
                    await self._serve(self._inbox)
                    tg.cancel_scope.cancel()
        except Exception as exc:
            if not started:
                raise
            log.exception("migration %s (%s) failed", self.migration_id, self.role)
            self._fail_calls(MigrationError(f"migration {self.migration_id} failed: {exc!r}"))
        finally:
            self._close()

    def _fail_calls(self, error: MigrationError) -> None:
        for callers in self._calls.values():
            for caller in callers:
                caller.result.settle(error=error)

    def _joined(self, caller: _Caller) -> bool:
        """Add ``caller`` to a caller of the same request still waiting for its answer."""
        waiting = self._calls.get(caller.call, [])
        if caller.request and any(other.request == caller.request for other in waiting):
            waiting.append(caller)
            return True
        return False

    async def _serve(self, inbox: MemoryObjectReceiveStream[tuple[Input, _Caller | None]]) -> None:
        linger_until: float | None = None
        while True:
            timeout = None if linger_until is None else max(0.0, linger_until - anyio.current_time())
            with anyio.move_on_after(timeout):
                step, caller = await inbox.receive()
                if caller is not None and self._joined(caller):
                    continue
                try:
                    effects = step(self.machine, anyio.current_time())
                except ActorlockError as exc:
                    if caller is None:
                        raise
                    caller.result.settle(error=exc)
                    continue
                if caller is not None:
                    # Waiting from now on: an answer to an earlier call of this
                    # kind, given before this step ran, is not this caller's.
                    self._calls.setdefault(caller.call, []).append(caller)
                await self._execute(effects)
                await self._settle()
            if self.machine.finished and self._settled:
                # Stay a little to answer retransmissions with the final outcome.
                if linger_until is None:
                    linger_until = anyio.current_time() + 2 * self.machine.timing.retry_interval + 1.0
                elif anyio.current_time() >= linger_until:
                    return

    def _close(self) -> None:
        self._send.close()
        self._inbox.close()
        for scope in self._timers.values():
            scope.cancel()
        self._fail_calls(MigrationError(f"migration {self.migration_id} stopped"))
        for slots in self._replies.values():
            for slot in slots:
                slot.done.set()
        self.host.migration_ended(self)

    async def _execute(self, effects: list[Effect]) -> None:
        queue = list(effects)
        while queue:
            effect = queue.pop(0)
            queue.extend(await self._one(effect))

    async def _one(self, effect: Effect) -> list[Effect]:
        machine, now = self.machine, anyio.current_time
        match effect:
            case SendToPeer(message=message):
                assert self._tg is not None
                self._tg.start_soon(self._send_request, message)
            case Reply(message=message):
                for slot in self._replies.pop(message.seq, []):
                    slot.response = message
                    slot.done.set()
            case ArmTimer(timer=timer, at=at):
                self._disarm(timer)
                self._timers[timer] = scope = anyio.CancelScope()
                assert self._tg is not None
                self._tg.start_soon(self._fire, timer, at, scope)
            case CancelTimer(timer=timer):
                self._disarm(timer)
            case VerifyLeases():
                assert isinstance(machine, MigrationDestination)
                return machine.verify_done(await self._verify(effect), now=now())
            case TransferLeases():
                assert isinstance(machine, MigrationSource)
                return machine.transfer_done(await self._transfer(effect), now=now())
            case QueryBackend():
                return machine.query_done(await self._query(effect), now=now())
            case CompleteCaller(call=call):
                await self._settle()
                for caller in self._calls.pop(call, []):
                    caller.result.settle(effect)
            case DropPending(reason=reason):
                log.info("migration %s (%s): dropped: %s", self.migration_id, self.role, reason)
            case Discard(message=message, reason=reason):
                log.debug("migration %s: discarded %s: %s", self.migration_id, type(message).__name__, reason)
        return []

    # The backend calls: each answers with the result or the error, for the machine to judge.

    async def _verify(self, effect: VerifyLeases) -> ActorlockError | None:
        owner, lock_state = effect.owner, effect.lock_state
        try:
            records = await self.host.records([lease.key for lease in lock_state.leases])
            problem: ActorlockError | None = verify_lock_state(records, owner, lock_state)
        except ActorlockError as exc:
            problem = exc
        return problem

    async def _transfer(self, effect: TransferLeases) -> LockState | ActorlockError:
        transfer_result: LockState | ActorlockError
        try:
            moved = await self.host.transfer(
                effect.source, effect.destination, effect.destination_incarnation, effect.leases
            )
            transfer_result = LockState.of(moved)
        except ActorlockError as exc:
            transfer_result = exc
        return transfer_result

    async def _query(self, effect: QueryBackend) -> Ownership | ActorlockError:
        source, destination, keys = effect.source, effect.destination, effect.keys
        try:
            records = await self.host.records(list(keys))
            ownership: Ownership | ActorlockError = judge_ownership(records, source, destination, keys)
        except ActorlockError as exc:
            ownership = exc
        return ownership

    async def _settle(self) -> None:
        """Record a final outcome in the domain actor, once, before anyone hears of it."""
        if not self.machine.finished or self._settled:
            return
        self._settled = True
        settled = MigrationSettled(
            self.migration_id, self.role, self.machine.outcome, self.machine.lock_state
        )
        with anyio.CancelScope(shield=True):
            try:
                await self.host.domain_settled(self.domain_uuid, settled)
            except ActorlockError as exc:
                log.error("migration %s: recording the outcome failed: %s", self.migration_id, exc)

    def _disarm(self, timer: Timer) -> None:
        scope = self._timers.pop(timer, None)
        if scope is not None:
            scope.cancel()

    async def _fire(self, timer: Timer, at: float, scope: anyio.CancelScope) -> None:
        with scope:
            await anyio.sleep_until(at)
            if self._timers.get(timer) is scope:
                del self._timers[timer]
                await self._put(lambda m, now: m.timer_fired(timer, now=now), None)

    async def _send_request(self, message: Request) -> None:
        assert self._client is not None
        try:
            with unreachable_after(self._request_timeout, peer=self._peer_endpoint):
                frame = await self._client.request(codec.encode(message))
            reply = codec.decode(frame)
            if isinstance(self.machine, MigrationDestination) and committed(reply):
                assert isinstance(reply, CommitReply)
                await check_commit(self.host.records, self._io_timeout, self.machine, reply)
            elif isinstance(reply, PrepareReply) and self._confirm is not None:
                # The peer was found in records cached for a renewal period: the
                # transfer will name the incarnation this reply names, so it must be alive.
                await self._confirm(reply)
        except (PeerError, ActorlockError) as exc:
            failure = exc  # the name bound by except is deleted when the block ends
            await self._put(lambda m, now: m.io_failed(message, failure, now=now), None)
            return
        await self._put(lambda m, now: m.receive(reply, now=now), None)
