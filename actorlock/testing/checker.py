"""A safety checker for recorded cluster histories.

:func:`check` reads a :class:`~actorlock.testing.history.History` once, in
time order (ties in append order), and returns every :class:`Violation` with
the events that prove it. The rules are meant to be exact: a violation found
in a run of the real code is a bug in that code, so each rule flags only what
a correct coordinator can never produce, and says so below with the reason.

Words used below: a *guest* is ``(host, domain)``; it *runs* from
:class:`GuestStarted` until :class:`GuestStopped` or :class:`HostCrashed` of
its host (a :class:`CoordinatorCrashed` leaves it running); its *disks* are
the keys of its latest GuestStarted/:class:`GuestDisksChanged`, a key in both
sets counting as exclusive. Two modes *conflict* unless both are shared.
An *owner* ``(host, domain)`` *holds* a key from a LeaseAcquired (or a
transfer to it) until it releases it, a transfer moves it away, a
:class:`LeaseLost` names it (or names no keys), or another owner acquires the
key in a conflicting mode (a takeover: the backend dropped the old holder).

Rule 1, exclusive overlap. Two guests on different hosts run at the same
time with one key among both their disks, in conflicting modes. Checked when
a guest gains the key (start or hotplug) while the other runs on it, so the
evidence is the two events that put them on it. Runs are half-open: a stop
appended before a start at the same instant is back to back, not overlap.
Two guests of one host are not compared: that host's own lock manager and
hypervisor arbitrate local sharing, and this rule is about cluster safety.

Rule 2, stale token write. Per key, a write with token ``t`` after a write
with token ``t' > t`` was accepted. Storage that fences would have refused
it; a guest still writing with an old token after another took over is split
brain. Shared holders each get their own token and may interleave, so a
write is compared only with earlier writes where at least one of the two was
made in exclusive mode. Equal tokens are one acquisition writing again.

Rule 3, unfenced lease loss. A running guest stops holding a key among its
disks, and its failure action has not run. A failure action counts once it
ran for that guest at any point of the current run (the host sink reports
it *before* ``leases_lost``); after it ran, the guest's safety is left to
rules 1 and 2 (``ignore`` opts out of safety as in libvirt). A guest that
stops, loses the key from its disks, or re-acquires the key before the
deadline is fine. The deadline is the first of:

- another owner acquiring the key in a conflicting mode; when that
  acquisition is itself the loss (a takeover), the check is immediate: the
  guest was still running when the backend handed its disk to someone else;
- a write to the key by the guest itself (it writes without a lease);
- a write to the key by another guest in a conflicting mode.

The last one is the migration allowance: after a transfer away from a
running source guest the source must stop (migration completed) at or
before the destination's guest writes. A release while running, a
LeaseLost, or a transfer with no harm before the source stops is not a
violation: nothing was written unprotected.

With storage that checks fencing tokens (``check(..., storage_fences=True)``:
it refused every write whose token was older than the disk's, recorded as
:class:`WriteRefused`), a guest of a host frozen as a whole
(:class:`HostFrozen` .. :class:`HostThawed`) when another owner takes its
key is not judged at that moment by rules 1 and 3: it executes nothing, and
on waking no process can stop its first write, which storage refuses. Nor
is it judged by them for that key afterwards, when others take the key
again after it woke: its old token is refused all the same. It must stop,
or have its failure action run, before the history ends; an accepted write
with its old token is still rule 2.

Rule 4, cancelled migration lost a lease. When :class:`MigrationCancelled`
is recorded (the outcome has settled), the source owner ``(source_host,
domain)`` must hold each lease it listed, in the same mode with the same or
a newer token (a transfer back issues a new one). One violation per missing
lease; the evidence includes the event that took it away. A lease the
source lost through :class:`LeaseLost` (its lockspace expired) is left to
rule 3: that loss is not the migration's doing; so is one taken over while
the source host's lockspace was lost (between :class:`LockspaceLost` and
:class:`LockspaceRegained`): its host forfeited every lease at that moment,
whatever its domain actors reported later.

Rule 5, a gone host keeps a lease. Takeover is lazy (on demand), so a
record naming a dead host proves nothing until someone asks for the key. A
host is *gone* from its HostCrashed or CoordinatorCrashed until its
HostRecovered or HostJoined. An :class:`AcquireRefused` by host B naming
gone host G as holder, at time ``t``, is a violation when::

    t >= max(gone_since, healed, first_look) + host_dead + slack

``healed`` is the last :class:`FaultsHealed` (no refusal is judged while a
:class:`FaultInjected` is unhealed). ``first_look`` is B's first refusal naming
G since G went gone and B last (re)started: observers measure staleness on
their own clock from when they *first saw* a record, so a refusal on first
sight is correct however long G has been gone; the first refusal proves B
has been watching since. ``slack`` absorbs the delay between a step and the
moment the simulator records it (a renew_interval is ample). Each (B, G,
key) is reported once. A :class:`LeaseHeld` snapshot naming gone G is a
violation when, after ``max(gone_since, healed) + host_dead + slack``, another
host acquired the key in a mode conflicting with G's entry: that
acquisition had to drop G's entry, so the snapshot shows a stale record.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from ..model import LeaseMode
from .history import (
    AcquireRefused,
    CoordinatorCrashed,
    FailureActionRan,
    FaultInjected,
    FaultsHealed,
    GuestDisksChanged,
    GuestStarted,
    GuestStopped,
    GuestWrote,
    History,
    HistoryEvent,
    HostCrashed,
    HostFrozen,
    HostJoined,
    HostRecovered,
    HostThawed,
    LeaseAcquired,
    LeaseHeld,
    LeaseLost,
    LeaseReleased,
    LeasesTransferred,
    LockspaceLost,
    LockspaceRegained,
    MigrationCancelled,
)

__all__ = ["Rule", "Violation", "check"]

Owner = tuple[str, str]  # (host, domain)

EXCLUSIVE = LeaseMode.EXCLUSIVE
SHARED = LeaseMode.SHARED


class Rule(enum.Enum):
    """The safety rules, numbered as in the module documentation."""

    EXCLUSIVE_OVERLAP = 1
    STALE_TOKEN_WRITE = 2
    UNFENCED_LEASE_LOSS = 3
    CANCELLED_MIGRATION_LOST_LEASE = 4
    GONE_HOST_KEEPS_LEASE = 5


@attrs.frozen
class Violation:
    """One broken rule.

    Attributes:
        rule: which rule.
        message: a sentence naming the hosts, domains, keys and times involved.
        evidence: the events that prove it, in history order (time, then append order).
    """

    rule: Rule
    message: str
    evidence: tuple[HistoryEvent, ...]

    @property
    def time(self) -> float:
        """When the violation became certain (its last piece of evidence)."""
        return self.evidence[-1].time if self.evidence else 0.0


def check(
    history: History | Iterable[HistoryEvent],
    *,
    host_dead: float,
    slack: float = 0.0,
    storage_fences: bool = False,
) -> list[Violation]:
    """Every violation of the five rules in ``history``, in the order they became certain.

    Args:
        history: the events; a plain iterable is ordered by time (ties kept).
        host_dead: the lockspace's host_dead (rule 5).
        slack: extra time allowed for rule 5 on top of host_dead.
        storage_fences: storage refused every write whose token was older than
            the disk's (:class:`WriteRefused`). Then a guest of a host that was
            frozen as a whole (:class:`HostFrozen`) when another took its disk
            is not judged at that moment (it executed nothing, and its writes
            with the old token are refused); it must stop, or have its failure
            action run, before the history ends (rule 3).
    """
    events = history.events if isinstance(history, History) else sorted(history, key=lambda e: e.time)
    sweep = _Sweep(host_dead, slack, storage_fences=storage_fences)
    for event in events:
        sweep.feed(event)
    sweep.finish()
    return sweep.violations


def _conflict(a: LeaseMode, b: LeaseMode) -> bool:
    return a is EXCLUSIVE or b is EXCLUSIVE


def _t(time: float) -> str:
    return f"t={time:.6f}".rstrip("0").rstrip(".")


def _who(owner: Owner) -> str:
    return f"domain {owner[1]} on host {owner[0]}"


@attrs.define
class _Run:
    disks: dict[str, tuple[LeaseMode, HistoryEvent]]  # key -> mode, event that put it there
    fenced: FailureActionRan | None = None


@attrs.define
class _Held:
    mode: LeaseMode
    token: int
    event: HistoryEvent


@attrs.define
class _Pending:
    mode: LeaseMode
    loss: HistoryEvent
    on_disk: HistoryEvent
    frozen: bool = False  # taken while its host was frozen, with fencing storage: due by the end


@attrs.define
class _Writes:
    top: GuestWrote | None = None  # the highest-token write of any mode
    top_exclusive: GuestWrote | None = None  # the highest-token exclusive write


@attrs.define
class _Acquisition:
    event: HistoryEvent
    host: str
    mode: LeaseMode
    healed: float | None  # None: a fault was active


class _Sweep:
    """All rules' state, advanced one event at a time."""

    def __init__(self, host_dead: float, slack: float, *, storage_fences: bool = False) -> None:
        self.host_dead = host_dead
        self.slack = slack
        self.storage_fences = storage_fences
        self.frozen: set[str] = set()  # hosts frozen as a whole now
        self.violations: list[Violation] = []
        self.position: dict[int, int] = {}  # id(event) -> place in the sweep, to order evidence
        # guests (rules 1 and 3)
        self.runs: dict[Owner, _Run] = {}
        self.users: dict[str, dict[Owner, tuple[LeaseMode, HistoryEvent]]] = {}
        # writes (rule 2)
        self.writes: dict[str, _Writes] = {}
        # ownership (rules 3 and 4)
        self.holders: dict[str, dict[Owner, _Held]] = {}
        self.owned: dict[Owner, set[str]] = {}
        self.ended: dict[tuple[Owner, str], HistoryEvent] = {}
        self.pending: dict[str, dict[Owner, _Pending]] = {}
        self.pending_keys: dict[Owner, set[str]] = {}
        self.lockspace_lost: dict[str, LockspaceLost] = {}  # hosts whose lockspace is lost now
        self.forfeited: set[tuple[Owner, str]] = set()  # leases taken while their host's lockspace was lost
        # liveness (rule 5)
        self.gone: dict[str, HistoryEvent] = {}
        self.first_look: dict[str, dict[str, AcquireRefused]] = {}  # observer -> gone host -> refusal
        self.faults_open: FaultInjected | None = None
        self.healed: FaultsHealed | None = None
        self.acquisitions: dict[str, list[_Acquisition]] = {}
        self.reported: set[tuple[str, str, str]] = set()
        self.handlers: dict[type[HistoryEvent], Callable[[Any], None]] = {
            GuestStarted: self.guest_started,
            GuestDisksChanged: self.guest_disks_changed,
            GuestStopped: self.guest_stopped,
            GuestWrote: self.guest_wrote,
            LeaseAcquired: self.lease_acquired,
            LeaseReleased: self.lease_released,
            LeasesTransferred: self.leases_transferred,
            LeaseLost: self.lease_lost,
            FailureActionRan: self.failure_action_ran,
            MigrationCancelled: self.migration_cancelled,
            LockspaceLost: self.host_lockspace_lost,
            LockspaceRegained: self.host_lockspace_regained,
            HostCrashed: self.host_crashed,
            HostFrozen: self.host_frozen,
            HostThawed: self.host_thawed,
            CoordinatorCrashed: self.coordinator_crashed,
            HostRecovered: self.host_recovered,
            HostJoined: self.host_joined,
            FaultInjected: self.fault_injected,
            FaultsHealed: self.faults_healed,
            AcquireRefused: self.acquire_refused,
            LeaseHeld: self.lease_held,
        }

    def feed(self, event: HistoryEvent) -> None:
        self.position[id(event)] = len(self.position)
        handler = self.handlers.get(type(event))
        if handler is None:
            for cls in type(event).__mro__[1:]:
                handler = self.handlers.get(cls)
                if handler is not None:
                    break
        if handler is not None:
            handler(event)

    def flag(self, rule: Rule, message: str, *evidence: HistoryEvent | None) -> None:
        proof = sorted((e for e in evidence if e is not None), key=lambda e: self.position[id(e)])
        self.violations.append(Violation(rule, message, tuple(proof)))

    # -- guests ----------------------------------------------------------------

    def guest_started(self, e: GuestStarted) -> None:
        owner = (e.host, e.domain)
        if owner in self.runs:
            self.end_run(owner)  # a second start without a stop: the old run is over
        run = _Run({})
        self.runs[owner] = run
        self.put_on_disks(owner, run, _disk_modes(e.exclusive, e.shared), e)

    def guest_disks_changed(self, e: GuestDisksChanged) -> None:
        owner = (e.host, e.domain)
        run = self.runs.get(owner)
        if run is None:
            return
        wanted = _disk_modes(e.exclusive, e.shared)
        for key in [k for k in run.disks if k not in wanted]:
            del run.disks[key]
            self.users[key].pop(owner, None)
            self.drop_pending(owner, key)
        changed = {k: m for k, m in wanted.items() if k not in run.disks or run.disks[k][0] is not m}
        self.put_on_disks(owner, run, changed, e)

    def put_on_disks(self, owner: Owner, run: _Run, disks: dict[str, LeaseMode], e: HistoryEvent) -> None:
        for key, mode in disks.items():
            users = self.users.setdefault(key, {})
            for other, (other_mode, since) in users.items():
                if self.storage_fences and (other[0] in self.frozen or self.stale(other, key)):
                    # It executes nothing; awake, its old token is refused until it stops (rule 3
                    # follows it), also when yet another owner takes the key after it woke.
                    continue
                if other[0] != owner[0] and _conflict(mode, other_mode):
                    self.flag(
                        Rule.EXCLUSIVE_OVERLAP,
                        f"{_who(other)} ({other_mode.value}, since {_t(since.time)}) and {_who(owner)} "
                        f"({mode.value}, from {_t(e.time)}) ran on {key} at the same time",
                        since,
                        e,
                    )
            users[owner] = (mode, e)
            run.disks[key] = (mode, e)

    def stale(self, owner: Owner, key: str) -> bool:
        """Whether ``owner`` was taken over on ``key`` while its host was frozen (fencing storage)."""
        pending = self.pending.get(key, {}).get(owner)
        return pending is not None and pending.frozen

    def guest_stopped(self, e: GuestStopped) -> None:
        self.end_run((e.host, e.domain))

    def end_run(self, owner: Owner) -> None:
        run = self.runs.pop(owner, None)
        if run is None:
            return
        for key in run.disks:
            self.users[key].pop(owner, None)
        for key in list(self.pending_keys.get(owner, ())):
            self.drop_pending(owner, key)

    def guest_wrote(self, e: GuestWrote) -> None:
        writer = (e.host, e.domain)
        # rule 2
        state = self.writes.setdefault(e.disk, _Writes())
        rival = state.top if e.mode is EXCLUSIVE else state.top_exclusive
        if rival is not None and rival.token > e.token:
            self.flag(
                Rule.STALE_TOKEN_WRITE,
                f"{_who(writer)} wrote {e.disk} with token {e.token} at {_t(e.time)} after "
                f"{_who((rival.host, rival.domain))} had written it with token {rival.token} "
                f"at {_t(rival.time)}",
                rival,
                e,
            )
        if state.top is None or e.token > state.top.token:
            state.top = e
        if e.mode is EXCLUSIVE and (state.top_exclusive is None or e.token > state.top_exclusive.token):
            state.top_exclusive = e
        # rule 3: a write is a deadline for unfenced losses of this key
        pending = self.pending.get(e.disk)
        if not pending:
            return
        for loser, p in list(pending.items()):
            if loser == writer:
                what = "kept writing it"
            elif p.frozen:
                continue  # storage refuses the loser's old token: another's write harms nothing
            elif _conflict(p.mode, e.mode):
                what = f"was still running when {_who(writer)} wrote it"
            else:
                continue
            self.flag(
                Rule.UNFENCED_LEASE_LOSS,
                f"{_who(loser)} lost its lease on {e.disk} at {_t(p.loss.time)} and {what} at "
                f"{_t(e.time)} without its failure action having run",
                p.on_disk,
                p.loss,
                e,
            )
            self.drop_pending(loser, e.disk)

    def failure_action_ran(self, e: FailureActionRan) -> None:
        owner = (e.host, e.domain)
        run = self.runs.get(owner)
        if run is not None and run.fenced is None:
            run.fenced = e
        for key in list(self.pending_keys.get(owner, ())):
            self.drop_pending(owner, key)

    # -- leases ------------------------------------------------------------------

    def lease_acquired(self, e: LeaseAcquired) -> None:
        owner = (e.host, e.domain)
        for lease in e.leases:
            self.take(lease.key, owner, lease.mode, lease.token, e)

    def leases_transferred(self, e: LeasesTransferred) -> None:
        source, dest = (e.from_host, e.from_domain), (e.to_host, e.to_domain)
        for moved in e.leases:
            held = self.drop_holder(source, moved.key, e)
            self.take(moved.key, dest, moved.mode, moved.new_token, e)
            if held is not None and source != dest:
                self.lose(source, moved.key, held.mode, e)

    def lease_released(self, e: LeaseReleased) -> None:
        owner = (e.host, e.domain)
        for key in e.keys:
            held = self.drop_holder(owner, key, e)
            if held is not None:
                self.lose(owner, key, held.mode, e)

    def lease_lost(self, e: LeaseLost) -> None:
        owner = (e.host, e.domain)
        for key in e.keys or sorted(self.owned.get(owner, ())):
            held = self.drop_holder(owner, key, e)
            if held is not None:
                self.lose(owner, key, held.mode, e)

    def take(self, key: str, owner: Owner, mode: LeaseMode, token: int, e: HistoryEvent) -> None:
        holders = self.holders.setdefault(key, {})
        for other, held in list(holders.items()):
            if other != owner and _conflict(held.mode, mode):
                self.drop_holder(other, key, e)
                self.taken_over(other, key, held, e)
        holders[owner] = _Held(mode, token, e)
        self.owned.setdefault(owner, set()).add(key)
        self.ended.pop((owner, key), None)
        pending = self.pending.get(key)
        if pending:
            for loser, p in list(pending.items()):
                if loser == owner:
                    self.drop_pending(owner, key)  # the guest has its lease back
                elif p.frozen:
                    continue
                elif _conflict(p.mode, mode):
                    self.flag(
                        Rule.UNFENCED_LEASE_LOSS,
                        f"{_who(loser)} lost its lease on {key} at {_t(p.loss.time)} and was still "
                        f"running when {_who(owner)} acquired it at {_t(e.time)}, with no failure "
                        "action run",
                        p.on_disk,
                        p.loss,
                        e,
                    )
                    self.drop_pending(loser, key)
        self.acquisitions.setdefault(key, []).append(_Acquisition(e, owner[0], mode, self.healed_since()))

    def drop_holder(self, owner: Owner, key: str, e: HistoryEvent) -> _Held | None:
        held = self.holders.get(key, {}).pop(owner, None)
        if held is not None:
            self.owned[owner].discard(key)
            self.ended[(owner, key)] = e
            if owner[0] in self.lockspace_lost and e is not None and getattr(e, "host", None) != owner[0]:
                self.forfeited.add((owner, key))
            else:
                self.forfeited.discard((owner, key))
        return held

    def taken_over(self, loser: Owner, key: str, held: _Held, e: HistoryEvent) -> None:
        run = self.runs.get(loser)
        if run is None or key not in run.disks or run.fenced is not None:
            return
        if self.storage_fences and loser[0] in self.frozen:
            self.pending.setdefault(key, {})[loser] = _Pending(held.mode, e, run.disks[key][1], frozen=True)
            self.pending_keys.setdefault(loser, set()).add(key)
            return
        self.flag(
            Rule.UNFENCED_LEASE_LOSS,
            f"{_who(loser)} was still running on {key} when its lease was taken over at {_t(e.time)}, "
            "and its failure action had not run",
            held.event,
            run.disks[key][1],
            e,
        )

    def lose(self, owner: Owner, key: str, mode: LeaseMode, e: HistoryEvent) -> None:
        run = self.runs.get(owner)
        if run is None or key not in run.disks or run.fenced is not None:
            return
        self.pending.setdefault(key, {})[owner] = _Pending(mode, e, run.disks[key][1])
        self.pending_keys.setdefault(owner, set()).add(key)

    def drop_pending(self, owner: Owner, key: str) -> None:
        pending = self.pending.get(key)
        if pending is not None and pending.pop(owner, None) is not None:
            self.pending_keys[owner].discard(key)

    def migration_cancelled(self, e: MigrationCancelled) -> None:
        source = (e.source_host, e.domain)
        for lease in e.leases:
            held = self.holders.get(lease.key, {}).get(source)
            if held is not None and held.mode is lease.mode and held.token >= lease.token:
                continue
            if held is None:
                ended = self.ended.get((source, lease.key))
                if isinstance(ended, LeaseLost) or (source, lease.key) in self.forfeited:
                    continue
                problem = "no longer holds it" + (
                    f" (it ended at {_t(ended.time)} by {type(ended).__name__})" if ended else ""
                )
                proof: HistoryEvent | None = ended
            else:
                problem = f"holds it {held.mode.value} with token {held.token}"
                proof = held.event
            self.flag(
                Rule.CANCELLED_MIGRATION_LOST_LEASE,
                f"the migration of domain {e.domain} from host {e.source_host} was cancelled at "
                f"{_t(e.time)} but the source, which held {lease.key} {lease.mode.value} with token "
                f"{lease.token}, {problem}",
                proof,
                e,
            )

    # -- hosts and faults ----------------------------------------------------------

    def host_lockspace_lost(self, e: LockspaceLost) -> None:
        self.lockspace_lost.setdefault(e.host, e)

    def host_lockspace_regained(self, e: LockspaceRegained) -> None:
        self.lockspace_lost.pop(e.host, None)

    def host_crashed(self, e: HostCrashed) -> None:
        self.frozen.discard(e.host)
        for owner in [o for o in self.runs if o[0] == e.host]:
            self.end_run(owner)
        self.went_gone(e.host, e)

    def host_frozen(self, e: HostFrozen) -> None:
        self.frozen.add(e.host)

    def host_thawed(self, e: HostThawed) -> None:
        self.frozen.discard(e.host)

    def finish(self) -> None:
        """At the end: a guest taken over while frozen must have stopped or been fenced by now."""
        for key, pending in self.pending.items():
            for loser, p in pending.items():
                if p.frozen:
                    self.flag(
                        Rule.UNFENCED_LEASE_LOSS,
                        f"{_who(loser)} was taken over on {key} at {_t(p.loss.time)} while its host "
                        "was frozen, and was neither stopped nor fenced after it woke",
                        p.on_disk,
                        p.loss,
                    )

    def coordinator_crashed(self, e: CoordinatorCrashed) -> None:
        self.went_gone(e.host, e)

    def went_gone(self, host: str, e: HistoryEvent) -> None:
        self.gone.setdefault(host, e)  # its record stopped changing at the first crash
        self.first_look.pop(host, None)  # a restarted observer watches afresh

    def host_recovered(self, e: HostRecovered) -> None:
        self.gone.pop(e.host, None)
        self.first_look.pop(e.host, None)
        for looks in self.first_look.values():
            looks.pop(e.host, None)

    def host_joined(self, e: HostJoined) -> None:
        # A joined host renews: it is back, whether or not the simulator also said so.
        self.host_recovered(HostRecovered(e.time, e.host))

    def fault_injected(self, e: FaultInjected) -> None:
        if self.faults_open is None:
            self.faults_open = e

    def faults_healed(self, e: FaultsHealed) -> None:
        self.faults_open = None
        self.healed = e

    def healed_since(self) -> float | None:
        if self.faults_open is not None:
            return None
        return self.healed.time if self.healed is not None else float("-inf")

    def acquire_refused(self, e: AcquireRefused) -> None:
        for holder_host, _holder_domain in e.holders:
            gone = self.gone.get(holder_host)
            if gone is None or holder_host == e.host:
                continue
            looks = self.first_look.setdefault(e.host, {})
            first = looks.setdefault(holder_host, e)
            healed = self.healed_since()
            if healed is None:
                continue
            deadline = max(gone.time, healed, first.time) + self.host_dead + self.slack
            if e.time < deadline or (e.host, holder_host, e.key) in self.reported:
                continue
            self.reported.add((e.host, holder_host, e.key))
            self.flag(
                Rule.GONE_HOST_KEEPS_LEASE,
                f"host {e.host} was refused {e.key} at {_t(e.time)} because of host {holder_host}, "
                f"gone since {_t(gone.time)}; it had watched since {_t(first.time)} and should have "
                f"taken over from {_t(deadline)} (host_dead={self.host_dead})",
                gone,
                self.healed,
                first,
                e,
            )

    def lease_held(self, e: LeaseHeld) -> None:
        gone = self.gone.get(e.holder_host)
        if gone is None:
            return
        for acq in reversed(self.acquisitions.get(e.key, ())):
            if acq.event.time <= gone.time:
                break
            if acq.healed is None or acq.host == e.holder_host or not _conflict(acq.mode, e.mode):
                continue
            deadline = max(gone.time, acq.healed) + self.host_dead + self.slack
            if acq.event.time < deadline:
                continue
            self.flag(
                Rule.GONE_HOST_KEEPS_LEASE,
                f"the record of {e.key} still named host {e.holder_host} (gone since {_t(gone.time)}) "
                f"at {_t(e.time)}, although host {acq.host} acquired it {acq.mode.value} at "
                f"{_t(acq.event.time)}",
                gone,
                acq.event,
                e,
            )
            return


def _disk_modes(exclusive: Iterable[str], shared: Iterable[str]) -> dict[str, LeaseMode]:
    modes = dict.fromkeys(shared, SHARED)
    modes.update(dict.fromkeys(exclusive, EXCLUSIVE))
    return modes
