"""Actors: one task, one bounded mailbox, one message at a time.

Every mailbox item is an :class:`Envelope`: a message plus an optional reply
slot, so ``tell`` and ``ask`` share one path. The actor's task handles the
envelopes strictly in arrival order; an exception in a handler goes back to
the asker and the actor carries on. When the actor stops, every envelope
still queued fails with :class:`ActorStoppedError`.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

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


class ActorRef(Generic[M]):
    """The only handle other code gets on an actor."""

    def __init__(self, name: str, send: MemoryObjectSendStream[Envelope]) -> None:
        self.name = name
        self._send = send

    async def ask(self, message: M) -> Any:
        """Send ``message`` and wait for the handler's result (or its exception).

        If the caller is cancelled before the actor starts on the message, the
        message is skipped; once started it runs to completion so the actor's
        state stays whole.
        """
        reply = _ReplySlot()
        await self._put(Envelope(message, reply))
        try:
            return await reply.wait()
        except BaseException:
            if not reply.started:
                reply.abandoned = True
            raise

    async def tell(self, message: M) -> None:
        """Send ``message`` without waiting for it to be handled."""
        await self._put(Envelope(message, None))

    def tell_nowait(self, message: M) -> None:
        """Like :meth:`tell`; raises anyio.WouldBlock when the mailbox is full."""
        try:
            self._send.send_nowait(Envelope(message, None))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ActorStoppedError(f"actor {self.name} has stopped") from None

    def close(self) -> None:
        """Refuse further messages; queued ones are failed by the actor's teardown."""
        self._send.close()

    async def _put(self, envelope: Envelope) -> None:
        try:
            await self._send.send(envelope)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ActorStoppedError(f"actor {self.name} has stopped") from None


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


def open_mailbox(
    name: str, size: int = DEFAULT_MAILBOX_SIZE
) -> tuple[ActorRef[Any], MemoryObjectReceiveStream[Envelope]]:
    send, receive = anyio.create_memory_object_stream[Envelope](size if size > 0 else math.inf)
    return ActorRef(name, send), receive


async def run_actor(
    actor: Actor[Any],
    ref: ActorRef[Any],
    mailbox: MemoryObjectReceiveStream[Envelope],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The actor's task: handle envelopes in order until stopped or cancelled."""
    task_status.started()
    try:
        async for envelope in mailbox:
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


async def _fail_pending(actor: Actor[Any], mailbox: MemoryObjectReceiveStream[Envelope]) -> None:
    while True:
        try:
            envelope = mailbox.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            break
        if envelope.reply is not None:
            envelope.reply.set_error(ActorStoppedError(f"actor {actor.name} has stopped"))
    mailbox.close()
