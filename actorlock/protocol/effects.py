"""What a migration machine asks its actor to do, and the results fed back.

The machines never do I/O: every event returns a list of these records, to
be carried out in order. Effects that produce a result (a backend check, the
transfer, a backend query, a request to the peer) are answered by calling
the machine's matching ``*_done`` / ``receive`` / ``io_failed`` method.
"""

from __future__ import annotations

import enum

import attrs

from ..errors import ActorlockError
from ..model import Lease, LeaseOwner, LockState
from .messages import NO_LEASES, Message, Outcome, Request, Response


class Timer(enum.Enum):
    """Timers a machine arms. Arming a timer again replaces it."""

    PREPARE_TIMEOUT = "prepare-timeout"  # source: give up waiting for PREPARE's answer
    DEADLINE = "deadline"  # source: last moment to start the transfer
    EXPIRY = "expiry"  # destination: the pending migration dies
    RETRY = "retry"  # resend requests that got no answer; re-query the backend


class Call(enum.Enum):
    """The local API call a :class:`CompleteCaller` answers."""

    PREPARE = "prepare"  # source: prepare_migrate
    COMPLETE = "complete"  # either side: complete_migrate_in (commit or cancel)


class Side(enum.Enum):
    """Who holds a domain's leases, as the backend says."""

    SOURCE = "source"
    DESTINATION = "destination"
    NEITHER = "neither"  # not all held by one of the two: lost or split


@attrs.frozen
class SendToPeer:
    """Send a request to the peer; feed its response to ``receive``, a failure to ``io_failed``."""

    message: Request


@attrs.frozen
class Reply:
    """Answer the peer's request numbered ``message.seq``.

    The answer to a request may come from a later event (the request is
    *deferred*, e.g. while the backend is checked); it then answers every
    copy of that request still waiting.
    """

    message: Response


@attrs.frozen
class ArmTimer:
    """Call ``timer_fired(timer)`` at ``at`` (the clock ``now`` is read from)."""

    timer: Timer
    at: float


@attrs.frozen
class CancelTimer:
    """Forget ``timer``; firing it anyway does nothing."""

    timer: Timer


@attrs.frozen
class VerifyLeases:
    """Destination: check ``owner`` holds ``lock_state`` in the lockspace; feed ``verify_done``."""

    owner: LeaseOwner
    lock_state: LockState


@attrs.frozen
class TransferLeases:
    """Source: the commit. One atomic compare-and-swap; feed ``transfer_done``.

    Every lease must be held by ``source`` with exactly the mode and token in
    ``leases``; each holder entry is replaced by one for ``destination``
    (incarnation ``destination_incarnation``) with a fresh token. On any
    mismatch nothing is written.
    """

    migration_id: str
    source: LeaseOwner
    destination: LeaseOwner
    destination_incarnation: str
    leases: tuple[Lease, ...]


@attrs.frozen
class QueryBackend:
    """Ask the lockspace who holds ``keys``; feed ``query_done`` (see :func:`judge_ownership`)."""

    source: LeaseOwner
    destination: LeaseOwner
    keys: tuple[str, ...]


@attrs.frozen
class CompleteCaller:
    """Wake the local caller waiting on ``call``.

    ``error`` is None when the call got what it asked for. ``lock_state`` is
    the domain's leases as they stand after the outcome, where known.
    """

    call: Call
    outcome: Outcome
    error: ActorlockError | None = None
    lock_state: LockState | None = None


@attrs.frozen
class DropPending:
    """Destination: the incoming migration ended without the leases; forget it."""

    reason: str


@attrs.frozen
class Discard:
    """A peer message was ignored (late, duplicate, or not for us); log it."""

    message: Message
    reason: str


Effect = (
    SendToPeer
    | Reply
    | ArmTimer
    | CancelTimer
    | VerifyLeases
    | TransferLeases
    | QueryBackend
    | CompleteCaller
    | DropPending
    | Discard
)


@attrs.frozen
class Ownership:
    """The result of a :class:`QueryBackend`: who holds the keys, with their leases."""

    side: Side
    lock_state: LockState = NO_LEASES


__all__ = [
    "ArmTimer",
    "Call",
    "CancelTimer",
    "CompleteCaller",
    "Discard",
    "DropPending",
    "Effect",
    "Ownership",
    "QueryBackend",
    "Reply",
    "SendToPeer",
    "Side",
    "Timer",
    "TransferLeases",
    "VerifyLeases",
]
