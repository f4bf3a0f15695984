"""The world both migration simulators share: the two sides, the model lockspace, the guests.

The pair simulator (:mod:`actorlock._verify.pair`, one schedule chosen by a
test) and the explorer (:mod:`actorlock._verify.explore`, every schedule
within bounds) put the same sans-I/O machines in the same world, so they
share its rules rather than each keeping a copy that could drift apart:

- the lockspace, as pure functions over lease records that apply the rules
  every backend applies (:class:`Lockspace`);
- the guests: the source's guest pauses when its caller commits (libvirt
  pauses it for the switchover), resumes when the migration does not commit,
  and stops once it did or the leases are lost; the destination's guest runs
  once its caller, having said commit, heard COMMITTED
  (:func:`guest_at_commit`, :func:`guest_hears`);
- how a backend call's result is fed back to a machine (:func:`verify_result`,
  :func:`query_result`, :func:`transfer_result`).

The effects themselves are carried out by
:func:`actorlock._verify.effect_interpreter.carry_out`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from ..backends.rules import plan_acquire, plan_transfer
from ..errors import ActorlockError
from ..model import LeaseOwner, LeaseRecord, LeaseRequest, LockState
from ..protocol import (
    Call,
    CompleteCaller,
    Effect,
    MigrationDestination,
    MigrationLeasesLostError,
    MigrationSource,
    Outcome,
    Ownership,
    QueryBackend,
    TransferLeases,
    VerifyLeases,
    judge_ownership,
    verify_lock_state,
)

__all__ = [
    "DESTINATION",
    "ROLES",
    "SOURCE",
    "BackendCall",
    "Lockspace",
    "Machine",
    "MachineStep",
    "Records",
    "guest_at_commit",
    "guest_hears",
    "merge",
    "peer_of",
    "query_result",
    "transfer_result",
    "verify_result",
]

SOURCE = "source"
DESTINATION = "destination"
ROLES = (SOURCE, DESTINATION)

Machine = MigrationSource | MigrationDestination
MachineStep = Callable[[Machine], list[Effect]]
BackendCall = VerifyLeases | TransferLeases | QueryBackend
Records = tuple[LeaseRecord, ...]  # sorted by key


def peer_of(role: str) -> str:
    """The other side."""
    return DESTINATION if role == SOURCE else SOURCE


# --- the model lockspace -----------------------------------------------------


class Lockspace:
    """The lease backend as pure functions over immutable records.

    Subclass it to inject a bug (the explorer's tests do): the search must
    then find a violation. Every method may raise :class:`ActorlockError` for
    a refusal.
    """

    def verify(self, records: Records, effect: VerifyLeases) -> ActorlockError | None:
        """What the driver computes for VerifyLeases."""
        return verify_lock_state(records, effect.owner, effect.lock_state)

    def transfer(
        self, records: Records, effect: TransferLeases, source_incarnation: str
    ) -> tuple[Records, LockState]:
        """The backend's ``transfer``: one atomic compare-and-swap, or an error."""
        by_key = {record.key: record for record in records}
        updated, moved = plan_transfer(
            by_key,
            effect.source,
            source_incarnation,
            effect.destination,
            effect.destination_incarnation,
            effect.leases,
        )
        return merge(records, updated), LockState.of(moved)

    def query(self, records: Records, effect: QueryBackend) -> Ownership:
        """What the driver computes for QueryBackend."""
        return judge_ownership(records, effect.source, effect.destination, effect.keys)

    def acquire(
        self, records: Records, owner: LeaseOwner, incarnation: str, request: LeaseRequest
    ) -> Records:
        """The backend's ``acquire`` of one lease; every holder counts as alive."""
        by_key = {record.key: record for record in records}
        updated, _ = plan_acquire(by_key, owner, incarnation, [request], lambda _holder: True)
        return merge(records, updated)


def merge(records: Iterable[LeaseRecord], updated: Mapping[str, LeaseRecord]) -> Records:
    """``records`` with ``updated`` written over them, sorted by key."""
    by_key = {record.key: record for record in records}
    by_key.update(updated)
    return tuple(by_key[key] for key in sorted(by_key))


# --- the guests --------------------------------------------------------------


def guest_at_commit(role: str, guest: str) -> str:
    """The guest once its caller said commit: the source's is paused before it confirms."""
    return "paused" if role == SOURCE and guest == "running" else guest


def guest_hears(role: str, guest: str, said: str, answer: CompleteCaller) -> str:
    """The guest once its caller heard ``answer`` (``said``: what that caller had said)."""
    if answer.call is not Call.COMPLETE:
        return guest
    committed = answer.outcome is Outcome.COMMITTED
    if role == SOURCE:
        if committed or isinstance(answer.error, MigrationLeasesLostError):
            return "stopped"
        return "running" if guest == "paused" else guest  # the migration is off: libvirt resumes it
    return "running" if committed and said == "commit" else guest


# --- backend results ---------------------------------------------------------


def verify_result(problem: ActorlockError | None, now: float) -> MachineStep:
    """Feed a VerifyLeases result to the destination."""

    def step(m: Machine) -> list[Effect]:
        assert isinstance(m, MigrationDestination)
        return m.verify_done(problem, now=now)

    return step


def query_result(result: Ownership | ActorlockError, now: float) -> MachineStep:
    """Feed a QueryBackend result to either side."""
    return lambda m: m.query_done(result, now=now)


def transfer_result(result: LockState | ActorlockError, now: float) -> MachineStep:
    """Feed a TransferLeases result to the source."""

    def step(m: Machine) -> list[Effect]:
        assert isinstance(m, MigrationSource)
        return m.transfer_done(result, now=now)

    return step
