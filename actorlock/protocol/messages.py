"""The messages two coordinators exchange to migrate a domain's leases.

Every message carries the protocol version, the migration id, the sending
host's name, a sequence number and the sender's remaining deadline in
seconds. Requests are numbered by their sender, one counter per migration
and side; a retransmission reuses its request's number, and each kind of
request (except QUERY) is sent at most once per migration, so a number
names one request. A response carries the number of the request it
answers, which is how the requester pairs them.

Only plain values live here: the codec (:mod:`actorlock.transport.codec`)
turns these records into maps and back, and nothing here does I/O.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs

from ..model import DomainIdentity, LockState

PROTOCOL_VERSION: Final = 1
NO_LEASES: Final = LockState()


class Outcome(enum.Enum):
    """Where a migration stands, as one side tells the other."""

    PENDING = "pending"  # not decided yet
    COMMITTED = "committed"  # the leases moved to the destination
    CANCELLED = "cancelled"  # they stay (or stayed) with the source
    UNKNOWN = "unknown"  # the answering host knows no such migration


@attrs.frozen(kw_only=True)
class Message:
    """Fields every message carries."""

    migration_id: str
    sender: str
    seq: int
    deadline_remaining: float
    version: int = PROTOCOL_VERSION


@attrs.frozen(kw_only=True)
class Request(Message):
    """A message that expects a response."""


@attrs.frozen(kw_only=True)
class Response(Message):
    """The answer to a request; ``seq`` is the request's number."""


@attrs.frozen(kw_only=True)
class Prepare(Request):
    """Source to destination: take over this domain's leases when we both agree.

    The destination checks ``lock_state`` against the lockspace before it
    accepts; nothing in it is trusted.
    """

    domain: DomainIdentity
    source_host_id: int
    lockspace_kind: str
    lockspace_id: str
    lock_state: LockState


@attrs.frozen(kw_only=True)
class PrepareReply(Response):
    """The destination verified the lock state and waits for the commit.

    ``host_id`` and ``incarnation`` name the destination's future holder entries.
    """

    host_id: int
    incarnation: str


@attrs.frozen(kw_only=True)
class Refuse(Response):
    """The destination will not take part; ``code`` is a stable error code."""

    code: str
    message: str


@attrs.frozen(kw_only=True)
class Commit(Request):
    """Destination to source: our side agrees; move the leases when yours does.

    Carries what PREPARE_REPLY carries, so a COMMIT that overtakes a lost
    PREPARE_REPLY is enough for the source to go on.
    """

    host_id: int
    incarnation: str


@attrs.frozen(kw_only=True)
class CommitReply(Response):
    """The source's decision: COMMITTED with the destination's new leases, or CANCELLED."""

    outcome: Outcome
    lock_state: LockState = NO_LEASES
    reason: str = ""


@attrs.frozen(kw_only=True)
class Cancel(Request):
    """Either side: this migration is off (from the destination: asks the source)."""

    reason: str = ""


@attrs.frozen(kw_only=True)
class CancelReply(Response):
    """CANCELLED, or COMMITTED when the cancel came too late."""

    outcome: Outcome
    reason: str = ""


@attrs.frozen(kw_only=True)
class Query(Request):
    """Ask the peer where the migration stands."""


@attrs.frozen(kw_only=True)
class Status(Response):
    """The answer to QUERY."""

    outcome: Outcome
    reason: str = ""


@attrs.frozen(kw_only=True)
class ErrorReply(Response):
    """The request broke a rule (stale, wrong peer, unknown migration...).

    ``code`` is a stable error code (see ``actorlock.errors``), never a class path.
    """

    code: str
    message: str


# Which request each response type may answer; ErrorReply answers any.
ANSWERS: Final[dict[type[Response], tuple[type[Request], ...]]] = {
    PrepareReply: (Prepare,),
    Refuse: (Prepare,),
    CommitReply: (Commit,),
    CancelReply: (Cancel,),
    Status: (Query,),
    ErrorReply: (Prepare, Commit, Cancel, Query),
}
