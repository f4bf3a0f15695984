"""The one interpreter of the migration machines' effects for both simulators.

A machine's step returns effects; what each one means for the world around
it (a request on the network, a timer, a backend call, an answer to a local
caller) is the same for the pair simulator and the explorer, and is what
:class:`actorlock.actors.migration.MigrationDriver` does for real. Each
simulator implements :class:`EffectHandler` over its own representation of
the world (mutable objects in the pair simulator, interned parts in the
explorer); :func:`carry_out` decides which handler each effect goes to, in
order, so a new effect kind is added in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from ..protocol import (
    ArmTimer,
    CancelTimer,
    CompleteCaller,
    Discard,
    DropPending,
    Effect,
    QueryBackend,
    Reply,
    Request,
    Response,
    SendToPeer,
    Timer,
    TransferLeases,
    VerifyLeases,
)
from .migration_world import BackendCall

__all__ = ["EffectHandler", "carry_out"]


class EffectHandler(Protocol):
    """What a simulator does with each kind of effect of ``role``'s machine."""

    def send_request(self, role: str, message: Request) -> None:
        """SendToPeer: a new exchange, its request on the network."""

    def send_reply(self, role: str, message: Response) -> None:
        """Reply: the response on the network, to whoever asked."""

    def arm_timer(self, role: str, timer: Timer, at: float) -> None:
        """ArmTimer: (re)arm the driver's timer."""

    def cancel_timer(self, role: str, timer: Timer) -> None:
        """CancelTimer: forget the driver's timer."""

    def start_backend_call(self, role: str, effect: BackendCall) -> None:
        """VerifyLeases, TransferLeases, QueryBackend: the call, done now or later."""

    def answer_caller(self, role: str, effect: CompleteCaller) -> None:
        """CompleteCaller: the local caller hears it."""

    def drop_pending(self, role: str, effect: DropPending) -> None:
        """DropPending: a request the machine will never answer."""

    def discard_message(self, role: str, effect: Discard) -> None:
        """Discard: a message the machine ignored."""


def carry_out(
    role: str,
    effects: Iterable[Effect],
    handler: EffectHandler,
    before_each: Callable[[str, Effect], object] | None = None,
) -> None:
    """Hand each of ``role``'s effects, in order, to ``handler`` (after ``before_each``, if given)."""
    for effect in effects:
        if before_each is not None:
            before_each(role, effect)
        match effect:
            case SendToPeer(message=message):
                handler.send_request(role, message)
            case Reply(message=message):
                handler.send_reply(role, message)
            case ArmTimer(timer=timer, at=at):
                handler.arm_timer(role, timer, at)
            case CancelTimer(timer=timer):
                handler.cancel_timer(role, timer)
            case VerifyLeases() | TransferLeases() | QueryBackend():
                handler.start_backend_call(role, effect)
            case CompleteCaller():
                handler.answer_caller(role, effect)
            case DropPending():
                handler.drop_pending(role, effect)
            case Discard():
                handler.discard_message(role, effect)
