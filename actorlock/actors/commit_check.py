"""The destination's check of the source's word that a migration committed.

A COMMITTED answer carries the leases the destination now holds; a source
that is buggy, confused or hostile could claim a commit it never made, and
the destination would start its guest on leases it does not hold. So the
claim is read back from the lockspace before the migration is reported in:
the leases PREPARE offered, held by this host's owner of the domain, with
the claimed modes and tokens, under this host's incarnation. A claim that
does not hold is treated as no answer: the destination asks again, and at
its deadline the lockspace alone decides.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import anyio

from ..errors import BackendTimeoutError, StaleLockStateError
from ..model import LeaseRecord
from ..protocol import (
    CommitReply,
    Message,
    MigrationDestination,
    MigrationProtocolError,
    Outcome,
    verify_lock_state,
)


def committed(reply: Message) -> bool:
    """Whether ``reply`` is a source's word that the migration committed."""
    return isinstance(reply, CommitReply) and reply.outcome is Outcome.COMMITTED


async def check_commit(
    read: Callable[[Sequence[str]], Awaitable[list[LeaseRecord]]],
    io_timeout: float,
    machine: MigrationDestination,
    reply: CommitReply,
) -> None:
    """Raise unless the lockspace shows the commit ``reply`` claims.

    Raises:
        MigrationProtocolError: the claim names other leases than PREPARE offered.
        StaleLockStateError: the records do not show this host holding them.
        BackendTimeoutError: the records took longer than io_timeout to read.
        ActorlockError: the records could not be read.
    """
    owner, offered, claimed = machine.owner, machine.offered, reply.lock_state
    if owner is None or offered is None:
        raise MigrationProtocolError(f"migration {machine.migration_id}: a commit before any PREPARE")
    if sorted((x.key, x.mode) for x in claimed.leases) != sorted((x.key, x.mode) for x in offered.leases):
        raise MigrationProtocolError(
            f"migration {machine.migration_id}: the source's commit names other leases than it offered"
        )
    records: list[LeaseRecord] = []
    with anyio.move_on_after(io_timeout) as scope:
        records = await read([lease.key for lease in claimed.leases])
    if scope.cancelled_caught:
        # A stalled lockspace is no answer either: asked again after retry_interval.
        raise BackendTimeoutError(f"reading the leases of a commit took over io_timeout={io_timeout}s")
    problem = verify_lock_state(records, owner, claimed)
    if problem is not None:
        raise problem
    foreign = [
        r.key for r in records if (h := r.held_by(owner)) is not None and h.incarnation != machine.incarnation
    ]
    if foreign:
        raise StaleLockStateError(
            f"migration {machine.migration_id}: the leases are held under another incarnation "
            f"of {owner.host}: {', '.join(foreign[:5])}",
            foreign,
        )
