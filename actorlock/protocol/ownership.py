"""Pure judgements over lease records that the migration effects need.

The actor reads records with ``backend.records(keys)`` and hands them here,
so the rules for "verified" and "who holds it now" live in one place and
are the same on both sides.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import StaleLockStateError
from ..model import DomainIdentity, HostIdentity, Lease, LeaseOwner, LeaseRecord, LockState
from .effects import Ownership, Side


def lease_owner(host: HostIdentity, domain: DomainIdentity) -> LeaseOwner:
    """The holder identity a domain's leases are recorded under on ``host``.

    Both sides must build owners this way: holder entries match by equality,
    so a differently spelled owner would not be found.
    """
    return LeaseOwner(host=host.name, host_id=host.id, domain=domain.uuid, domain_name=domain.name)


def verify_lock_state(
    records: Iterable[LeaseRecord], owner: LeaseOwner, lock_state: LockState
) -> StaleLockStateError | None:
    """Check that ``owner`` holds every lease of ``lock_state`` with that mode and token.

    Returns the mismatch as an error (to be sent back as a refusal), or None.
    """
    by_key = {record.key: record for record in records}
    wrong: list[str] = []
    seen: set[str] = set()
    for lease in lock_state.leases:
        record = by_key.get(lease.key)
        holder = record.held_by(owner) if record is not None else None
        if lease.key in seen or holder is None or (holder.mode, holder.token) != (lease.mode, lease.token):
            wrong.append(lease.key)
        seen.add(lease.key)
    if not wrong:
        return None
    shown = ", ".join(wrong[:5]) + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else "")
    return StaleLockStateError(
        f"lock state of domain {owner.domain} does not match the lockspace for {owner.host}: {shown}",
        wrong,
    )


def judge_ownership(
    records: Iterable[LeaseRecord], source: LeaseOwner, destination: LeaseOwner, keys: Iterable[str]
) -> Ownership:
    """Say which side holds every one of ``keys``, with that side's leases.

    SOURCE or DESTINATION only when that side holds every key and the other
    holds none; anything else (a key lost, or held by both) is NEITHER. With
    no keys nothing in the lockspace tells a commit apart, so the answer is
    SOURCE: nothing moved.
    """
    by_key = {record.key: record for record in records}
    mine: dict[Side, list[Lease]] = {Side.SOURCE: [], Side.DESTINATION: []}
    wanted = sorted(set(keys))
    for key in wanted:
        record = by_key.get(key)
        if record is None:
            return Ownership(Side.NEITHER)
        for side, owner in ((Side.SOURCE, source), (Side.DESTINATION, destination)):
            holder = record.held_by(owner)
            if holder is not None:
                mine[side].append(Lease(key, holder.mode, holder.token))
    for side, other in ((Side.SOURCE, Side.DESTINATION), (Side.DESTINATION, Side.SOURCE)):
        if len(mine[side]) == len(wanted) and not mine[other]:
            return Ownership(side, LockState.of(mine[side]))
    return Ownership(Side.NEITHER)
