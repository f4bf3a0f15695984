"""Answers for requests about migrations nobody here knows.

The host actor routes peer messages to domain actors by migration id; a
PREPARE with a new id creates a destination machine, anything else with an
unknown id (never started here, or finished and forgotten) is answered here
so retries settle instead of timing out.
"""

from __future__ import annotations

from ._errors import UnknownMigrationError
from .messages import Cancel, CancelReply, ErrorReply, Message, Outcome, Query, Request, Response, Status


def answer_unknown(message: Message, *, local: str) -> Response | None:
    """The answer to ``message`` when no migration has its id; None for a response.

    CANCEL is answered CANCELLED: nothing is pending here, which is what the
    sender wants. QUERY gets UNKNOWN. Anything else is an UnknownMigrationError.
    """
    if not isinstance(message, Request):
        return None
    mid, seq = message.migration_id, message.seq
    nothing = "no such migration here"
    if isinstance(message, Cancel):
        return CancelReply(
            migration_id=mid,
            sender=local,
            seq=seq,
            deadline_remaining=0.0,
            outcome=Outcome.CANCELLED,
            reason=nothing,
        )
    if isinstance(message, Query):
        return Status(
            migration_id=mid,
            sender=local,
            seq=seq,
            deadline_remaining=0.0,
            outcome=Outcome.UNKNOWN,
            reason=nothing,
        )
    error = UnknownMigrationError(f"no migration {mid!r} on {local}")
    return ErrorReply(
        migration_id=mid, sender=local, seq=seq, deadline_remaining=0.0, code=error.code, message=str(error)
    )
