"""Actors: one task, one bounded mailbox, one message at a time.

Every mailbox item is an :class:`Envelope`: a message plus an optional reply
slot, so ``tell`` and ``ask`` share one path. The actor's task handles the
envelopes strictly in arrival order; an exception in a handler goes back to
the asker and the actor carries on. When the actor stops, every envelope
still queued fails with :class:`ActorStoppedError`.

The mailbox is a deque with one wake-up event for its single reader, not an
anyio memory object stream: an ask already waits on its reply (a
checkpoint), so the stream's extra checkpoints on send and receive only cost
two more trips through the event loop per message (bench_lifecycle measures
the difference). Senders that find it full wait their turn in order.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from ..errors import ActorStoppedError

log = logging.getLogger(__name__)

M = TypeVar("M")
DEFAULT_MAILBOX_SIZE = 64


class _ReplySlot:
    """Where a handler's result or exception lands for the asker."""

    __slots__ = ("_done", "_error", "_value", "abandoned", "started")

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self.started = False  # the actor began handling it: the caller can no longer take it back
        self.abandoned = False  # the caller went away before the actor began

    def set_result(self, value: Any) -> None:
        self._value = value
        self._done.set()

    def set_error(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    async def wait(self) -> Any:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


class Envelope:
    __slots__ = ("message", "reply")

    def __init__(self, message: object, reply: _ReplySlot | None) -> None:
        self.message = message
        self.reply = reply


class Mailbox:
    """A bounded FIFO of envelopes with one reader, the actor's task.

    ``put`` does not yield when there is room; a sender that finds the
    mailbox full waits in line, and each envelope the reader takes out
    makes room for the first one waiting (so newcomers never overtake it:
    the mailbox stays full while anyone waits). Once closed, puts
    fail with :class:`ActorStoppedError` (so do the senders still waiting
    for room), and ``get`` hands out what was queued, then raises
    ``anyio.EndOfStream``.
    """

    __slots__ = ("_capacity", "_closed", "_name", "_queue", "_reader_wakeup", "_waiting_senders")

    def __init__(self, name: str, capacity: float) -> None:
        self._name = name
        self._capacity = capacity
        self._queue: deque[Envelope] = deque()
        # Senders blocked by a full mailbox, oldest first: each one's room event and envelope.
        self._waiting_senders: OrderedDict[anyio.Event, Envelope] = OrderedDict()
        self._reader_wakeup: anyio.Event | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._queue)

    def _stopped(self) -> ActorStoppedError:
        return ActorStoppedError(f"actor {self._name} has stopped")

    def put_nowait(self, envelope: Envelope) -> None:
        """Queue ``envelope``; raises anyio.WouldBlock when full, ActorStoppedError when closed."""
        if self._closed:
            raise self._stopped()
        if len(self._queue) >= self._capacity:
            raise anyio.WouldBlock
        self._queue.append(envelope)
        wakeup = self._reader_wakeup
        if wakeup is not None:
            self._reader_wakeup = None
            wakeup.set()

    async def put(self, envelope: Envelope) -> None:
        """Queue ``envelope``, waiting for room in turn when the mailbox is full.

        A sender cancelled while waiting for room queues nothing; one
        cancelled after its envelope went in leaves it queued.
        """
        try:
            self.put_nowait(envelope)
            return
        except anyio.WouldBlock:
            pass
        room = anyio.Event()
        self._waiting_senders[room] = envelope
        try:
            await room.wait()
        finally:
            # Still listed: it never went in (cancelled, or the mailbox closed).
            still_waiting = self._waiting_senders.pop(room, None) is not None
        if still_waiting:
            raise self._stopped()

    def get_nowait(self) -> Envelope:
        """The oldest envelope; anyio.WouldBlock when empty, anyio.EndOfStream once closed and empty."""
        if not self._queue:
            raise anyio.EndOfStream if self._closed else anyio.WouldBlock
        envelope = self._queue.popleft()
        if self._waiting_senders and not self._closed:
            room, waiting = self._waiting_senders.popitem(last=False)
            self._queue.append(waiting)
            room.set()
        return envelope

    async def get(self) -> Envelope:
        """The oldest envelope, waiting for one; does not yield when one is queued."""
        while not self._queue:
            if self._closed:
                raise anyio.EndOfStream
            wakeup = self._reader_wakeup = anyio.Event()
            await wakeup.wait()
        return self.get_nowait()

    def close(self) -> None:
        """Refuse further envelopes and fail the senders waiting for room; queued ones stay.

        The waiting senders stay listed until they wake, which is how they tell
        that their envelope never went in.
        """
        self._closed = True
        for room in list(self._waiting_senders):
            room.set()
        wakeup = self._reader_wakeup
        if wakeup is not None:
            self._reader_wakeup = None
            wakeup.set()


class ActorRef(Generic[M]):
    """The only handle other code gets on an actor."""

    def __init__(self, name: str, mailbox: Mailbox) -> None:
        self.name = name
        self._mailbox = mailbox

    async def ask(self, message: M) -> Any:
        """Send ``message`` and wait for the handler's result (or its exception).

        If the caller is cancelled before the actor starts on the message, the
        message is skipped; once started it runs to completion so the actor's
        state stays whole.
        """
        # Queuing does not yield: a caller cancelled already must not get its message in.
        await anyio.lowlevel.checkpoint_if_cancelled()
        reply = _ReplySlot()
        try:
            await self._mailbox.put(Envelope(message, reply))
            return await reply.wait()
        except BaseException:
            if not reply.started:
                reply.abandoned = True
            raise

    async def tell(self, message: M) -> None:
        """Send ``message`` without waiting for it to be handled."""
        await anyio.lowlevel.checkpoint()
        await self._mailbox.put(Envelope(message, None))

    def tell_nowait(self, message: M) -> None:
        """Like :meth:`tell`; raises anyio.WouldBlock when the mailbox is full."""
        self._mailbox.put_nowait(Envelope(message, None))

    def close(self) -> None:
        """Refuse further messages; queued ones are failed by the actor's teardown."""
        self._mailbox.close()


class Actor(ABC, Generic[M]):
    """Subclasses implement :meth:`handle`; :func:`run_actor` drives them."""

    name: str = "actor"

    @abstractmethod
    async def handle(self, message: M) -> Any:
        """Handle one message; the return value or exception goes to the asker."""

    async def on_stop(self) -> None:
        """Runs once after the last message, with cancellation shielded."""

    def should_stop(self) -> bool:
        """Checked after each message; True ends the actor's loop."""
        return False


def open_mailbox(name: str, size: int = DEFAULT_MAILBOX_SIZE) -> tuple[ActorRef[Any], Mailbox]:
    """A mailbox for up to ``size`` envelopes (unbounded if ``size`` <= 0) and the ref that sends to it."""
    mailbox = Mailbox(name, size if size > 0 else math.inf)
    return ActorRef(name, mailbox), mailbox


async def run_actor(
    actor: Actor[Any],
    ref: ActorRef[Any],
    mailbox: Mailbox,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The actor's task: handle envelopes in order until stopped or cancelled."""
    task_status.started()
    try:
        while True:
            try:
                envelope = await mailbox.get()
            except anyio.EndOfStream:
                break
            await _deliver(actor, envelope)
            if actor.should_stop():
                break
    finally:
        with anyio.CancelScope(shield=True):
            ref.close()
            await _fail_pending(actor, mailbox)
            try:
                await actor.on_stop()
            except Exception:
                log.exception("actor %s: on_stop failed", actor.name)


async def _deliver(actor: Actor[Any], envelope: Envelope) -> None:
    reply = envelope.reply
    if reply is not None:
        if reply.abandoned:
            return
        reply.started = True
    try:
        result = await actor.handle(envelope.message)
    except Exception as exc:
        if reply is None:
            log.exception("actor %s: handling %r failed", actor.name, envelope.message)
        else:
            reply.set_error(exc)
        return
    except BaseException as exc:
        # Cancelled mid-handler: the asker must not hang on a reply that never comes.
        if reply is not None:
            reply.set_error(ActorStoppedError(f"actor {actor.name} stopped while handling the request"))
        raise exc
    if reply is not None:
        reply.set_result(result)


async def _fail_pending(actor: Actor[Any], mailbox: Mailbox) -> None:
    mailbox.close()
    while True:
        try:
            envelope = mailbox.get_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
        if envelope.reply is not None:
            envelope.reply.set_error(ActorStoppedError(f"actor {actor.name} has stopped"))
