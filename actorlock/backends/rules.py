"""Pure lease rules shared by every backend: given records, decide new records.

Backends load the records, call these functions, and store what they return
under their own atomicity (a lock, a transaction). The functions never do
I/O and never mutate their inputs; a refusal raises before anything changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ..errors import InvalidParameterError, LeaseLostError, ResourceBusyError, StaleLockStateError
from ..model import Holder, Lease, LeaseMode, LeaseOwner, LeaseRecord, LeaseRequest

HolderAlive = Callable[[Holder], bool]


def normalize_requests(requests: Sequence[LeaseRequest]) -> list[LeaseRequest]:
    """Sort by key (a global lock order) and reject contradictory duplicates."""
    by_key: dict[str, LeaseRequest] = {}
    for req in requests:
        prev = by_key.get(req.key)
        if prev is not None and prev != req:
            raise InvalidParameterError(f"resource {req.key} requested twice with different modes")
        by_key[req.key] = req
    return [by_key[k] for k in sorted(by_key)]


def plan_acquire(
    records: Mapping[str, LeaseRecord],
    owner: LeaseOwner,
    incarnation: str,
    requests: Sequence[LeaseRequest],
    holder_alive: HolderAlive,
) -> tuple[dict[str, LeaseRecord], tuple[Lease, ...]]:
    """Grant every request or raise; returns the records to store and the leases.

    Re-acquiring a lease the owner already holds in the same mode is a no-op
    that returns the existing token (retries are safe). Dead holders found in
    the way are dropped: that is the takeover.
    """
    updated: dict[str, LeaseRecord] = {}
    leases: list[Lease] = []
    for req in normalize_requests(requests):
        record = records.get(req.key) or LeaseRecord(req.key)
        if req.expect_token is not None and record.token != req.expect_token:
            mine = _entry_of(record, owner, incarnation)
            if not (mine is not None and mine.token == req.expect_token):
                raise StaleLockStateError(
                    f"resource {req.key} changed hands since the lock state was saved "
                    f"(token {req.expect_token}, now {record.token})",
                    [req.key],
                )
        mine = _entry_of(record, owner, incarnation)
        if mine is not None and mine.mode is req.mode:
            leases.append(Lease(req.key, mine.mode, mine.token))
            continue
        # An entry of ours from an older incarnation is somebody else now: a dead one.
        others = [h for h in record.holders if h is not mine]
        live = [h for h in others if holder_alive(h)]
        conflicting = [h for h in live if req.mode is LeaseMode.EXCLUSIVE or h.mode is LeaseMode.EXCLUSIVE]
        if conflicting:
            raise ResourceBusyError(req.key, [(h.owner.host, h.owner.domain) for h in conflicting])
        token = record.token + 1
        holder = Holder(owner, req.mode, token, incarnation)
        updated[req.key] = LeaseRecord(req.key, token, (*live, holder))
        leases.append(Lease(req.key, req.mode, token))
    return updated, tuple(leases)


def _entry_of(record: LeaseRecord, owner: LeaseOwner, incarnation: str) -> Holder | None:
    for h in record.holders:
        if h.owner == owner and h.incarnation == incarnation:
            return h
    return None


def plan_release(
    records: Mapping[str, LeaseRecord], owner: LeaseOwner, keys: Sequence[str]
) -> dict[str, LeaseRecord]:
    """Drop ``owner``'s entries; keys it does not hold are left alone."""
    updated: dict[str, LeaseRecord] = {}
    for key in sorted(set(keys)):
        record = records.get(key)
        if record is None or record.held_by(owner) is None:
            continue
        rest = tuple(h for h in record.holders if h.owner != owner)
        updated[key] = LeaseRecord(key, record.token, rest)
    return updated


def plan_transfer(
    records: Mapping[str, LeaseRecord],
    source: LeaseOwner,
    source_incarnation: str,
    destination: LeaseOwner,
    destination_incarnation: str,
    leases: Sequence[Lease],
) -> tuple[dict[str, LeaseRecord], tuple[Lease, ...]]:
    """Move every lease from ``source`` to ``destination`` in one step, or none.

    Each lease must be held by the source's current incarnation with exactly
    the given mode and token (the fencing check); the destination's entry
    gets a fresh token. A lease the destination already holds with a newer
    token counts as moved, so a retried transfer returns the same leases and
    a transfer interrupted between records (a crash) rolls forward.
    """
    updated: dict[str, LeaseRecord] = {}
    moved: list[Lease] = []
    for lease in sorted(leases, key=lambda item: item.key):
        if lease.key in updated:
            raise InvalidParameterError(f"resource {lease.key} listed twice in one transfer")
        record = records.get(lease.key) or LeaseRecord(lease.key)
        theirs = _entry_of(record, destination, destination_incarnation)
        mine = _entry_of(record, source, source_incarnation)
        if mine is None and theirs is not None and theirs.token > lease.token:
            moved.append(Lease(lease.key, theirs.mode, theirs.token))
            continue
        if mine is None:
            raise LeaseLostError(
                f"resource {lease.key} is not held by domain {source.domain} on host {source.host}",
                [lease.key],
            )
        if mine.token != lease.token or mine.mode is not lease.mode:
            raise StaleLockStateError(
                f"resource {lease.key}: held with token {mine.token} ({mine.mode.value}), "
                f"the transfer expected token {lease.token} ({lease.mode.value})",
                [lease.key],
            )
        token = record.token + 1
        rest = tuple(h for h in record.holders if h is not mine and h is not theirs)
        holder = Holder(destination, mine.mode, token, destination_incarnation)
        updated[lease.key] = LeaseRecord(lease.key, token, (*rest, holder))
        moved.append(Lease(lease.key, mine.mode, token))
    return updated, tuple(moved)
