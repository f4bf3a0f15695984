"""Exhaustive exploration of the migration handoff (explicit-state search).

Both sans-I/O machines (:class:`~actorlock.protocol.MigrationSource`,
:class:`~actorlock.protocol.MigrationDestination`) run inside a *world*: a
model lockspace, a lossy network, timers, backend calls in flight, the two
local callers, crashes, and a third host that keeps trying to take the disks.
:func:`explore` visits every world reachable within the :class:`Bounds`,
breadth first with visited-state hashing, checks the safety rules in each,
and reports every violation with a shortest event trace to it.

The world
=========

* Two disks, one exclusive and one shared, both held by the source domain
  with known fencing tokens. The model lockspace applies the real rules:
  :func:`actorlock.backends.rules.plan_transfer` (as the memory and file
  backends do, with the source host's incarnation) and
  :func:`~actorlock.backends.rules.plan_acquire`; verification and queries
  use :func:`~actorlock.protocol.verify_lock_state` and
  :func:`~actorlock.protocol.judge_ownership`, as the driver does.
* Effects are carried out as :class:`actorlock.actors.migration.MigrationDriver`
  does: SendToPeer opens an exchange and puts the request on the network;
  Reply puts the response on the network; ArmTimer/CancelTimer keep a
  driver-side timer table (the driver fires a timer the machine dropped on
  its own, and the machine ignores it); VerifyLeases, TransferLeases and
  QueryBackend become pending backend calls whose results are fed back with
  ``verify_done``/``transfer_done``/``query_done``; CompleteCaller answers the
  local caller waiting on that call (the first answer only: the driver pops
  the call). A backend call completes as an event of its own, so peer
  messages and timers may reach the machine meanwhile; the real driver
  awaits the call inline and queues them, so this explores more orders than
  the driver produces, never fewer.
* The network is a *set* of packets: any one may be delivered next (every
  reordering), lost (``losses``), or delivered while a copy stays in flight
  (``duplicates``). Sending a message identical to one in flight adds
  nothing: the copy there can still be delivered, and a second delivery is
  what ``duplicates`` pays for.
* A request sent opens an *exchange*, which times out (``io_failed``) at any
  moment once it is stuck: neither the request nor an answer to it is on the
  network (lost, deferred by the peer, dropped at a crash). A timeout racing
  a message still in flight is a slow network, paid from ``early_timeouts``.
  A response closes its exchanges; a late one is still delivered.
* A request for a migration the host does not know (the destination before
  PREPARE; a side that finished and *forgot* the migration once its driver
  stopped lingering) is answered by :func:`~actorlock.protocol.answer_unknown`,
  as the host's peer service does; a PREPARE reaching a destination that
  forgot creates a new destination machine there (at most once), as
  ``_incoming`` does; it has no caller, so it never commits. Forgetting
  while the peer still asks needs the peer's retransmissions to miss the
  whole linger: adversarial timing, paid from ``forgets``.
* Local callers: the source's caller may cancel at any time after start and
  commit once prepare_migrate returned PENDING; the destination's caller may
  cancel once PREPARE arrived and commit once it was accepted. Each says one
  thing once; both choices are explored, in every order with everything.
* Crashes (``crashes``) kill a host: its guest stops, its timers, exchanges
  and backend reads vanish, messages to it are lost, its messages in flight
  may still arrive. A transfer it had started is in the storage's hands: it
  lands or not, later (but within the margin, see Time). No restart:
  recovering a restarted coordinator is another protocol.
* Backend faults (``backend_faults``): a call fails before writing, or a
  transfer writes and its answer is lost. Backend calls are linearizable: a
  write happens, if at all, before its result is fed back.
* The third host asks for the exclusive disk, and for the shared disk
  exclusively: both must always be refused (every holder counts as alive;
  taking over dead hosts is the lockspace's business, not this protocol's).
  It may also take the shared disk in shared mode, a legitimate co-holder
  that moves that record's token. Nothing reads that token but the transfer
  (the destination's fresh token is the record's next one), so this is
  offered while a transfer is pending, to land before or after it: the
  other places give the same worlds up to an event no rule sees.
* The guests, as :mod:`actorlock._verify.pair` models them: the source's guest
  runs until its caller commits (libvirt pauses it for the switchover),
  resumes when that caller hears CANCELLED, and stops when it hears
  COMMITTED or that the leases are lost; the destination's guest runs once
  its caller, having said commit, heard COMMITTED. (A source guest running
  until the source *learned* COMMITTED would break the one-owner rule by
  construction between the backend's swap and its answer.)
* ``adversity`` caps the budgeted events (of every kind above) on one path.

Time
====

A global clock takes values from a few *landmarks*: 0, the source's
PREPARE_TIMEOUT (4), its DEADLINE timer (8 = ``D - transfer_margin``, the last
moment a transfer may start), its deadline ``D`` (10) and the destination's
deadline (never before ``D``: the remaining time travels in PREPARE). A
*tick* moves the clock to the next landmark; a timer fires at any moment
once the clock reached its due time (real timers fire late, never early);
RETRY, whose interval is tiny next to the others, fires whenever armed
without moving the clock. The machines compare ``now`` only with these
landmarks, so which side of each one an event falls on is all that
matters, and every such order is explored.

The destination's deadline is relabeled on delivery of PREPARE: any value
past ``D`` becomes ``max(now, D) + 1`` (see :func:`_relabel_deadline`). Past
``D`` it is the only landmark left, so this is an order-preserving
renaming, and both the tightest case (exactly ``D``) and a later one stay.

The protocol's one timing assumption is that a backend call takes less than
``transfer_margin``. No transfer may start at or after the DEADLINE landmark
(one that does is reported: ``late-transfer``), so the clock may reach ``D``
only when no transfer is pending (``Model.respect_transfer_margin``; turning
it off is a mutation the search must catch).

State keys and reductions
=========================

A :class:`World` is a tuple of small ints and strings; its parts (machines,
lease records, packets, exchanges, timers, pending calls, answers) are
interned. Two worlds are merged only when they behave alike up to wording:

* Texts are abstracted away: no decision in the machines reads a reason or
  message text (they only flow into other texts), and no receiver reads a
  ``deadline_remaining`` except PREPARE's. The network blanks them
  (:func:`normalized`); callers' errors are kept as their class.
* A machine's key (:func:`machine_key`) is built from *every* attribute in
  ``vars(machine)`` and its class, so a field added later is covered; one of
  an unknown kind makes the key raise, not guess. Inside it, exceptions and
  the failure factory count by class (only ``isinstance`` reads them), stored
  answers are normalized as on the network, stored requests without their
  deadline (resends recompute it, ``io_failed`` ignores it; their text stays,
  since ``io_failed`` compares it), and RETRY's due time is dropped (only its
  presence is read). Machine steps are pure functions of (machine, input,
  now) and are memoized by key.
* A machine that can get no more input (crashed, or forgot) is replaced by a
  canonical one with the same state: only its state is read any more.
* An exchange whose timeout can only be a no-op is dropped (answered, or its
  request no longer wanted: none of this can change back), and so is a
  response that a final machine would only discard (final states absorb,
  answered requests stay answered).
* A *settled* world (every side final or dead, no transfer pending, no
  PREPARE that could create a destination) has only noise left: final
  machines answer everything from their outcome. It is played out in one
  fixed order, checking that nothing relevant moves (else ``epilogue`` is
  reported), its unused budgets are zeroed, and only the callers who have
  not spoken yet (their answers move guests) and the third host remain.
  ``settle_epilogue=False`` explores every order instead; the tests check
  both reach the same ends.

Rules
=====

Checked in every world: no two conflicting holders of a disk and never both
the source's and the destination's entries (``two-owners``); never a guest
running on both hosts (``split-brain``); a running guest's host is the
recorded owner, with the tokens that guest was given (``guest-unowned``); a
live source that cancelled or was refused still holds every lease with its
tokens (``cancel-lost-leases``); each live side's final state
(``disagreement``) and what each caller was told (``caller-misled``) agree
with the lockspace; the driver's timers cover the machine's
(``timer-mismatch``); no machine raises (``machine-raised``). Where nothing
but the third host can act: every live side is final and every live caller
that spoke was answered (``stuck``). When nothing was cut off: from every
world some such end is reachable (``no-way-out``). A crash or forgetting
is an option of the adversary, not progress: an end may still offer them.
"""

from __future__ import annotations

import argparse
import copy
import enum
import sys
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Generic, NamedTuple, TextIO, TypeVar, cast

import attrs

from ..backends.rules import plan_acquire, plan_transfer
from ..errors import ActorlockError, BackendError
from ..model import (
    DomainIdentity,
    Holder,
    HostIdentity,
    Lease,
    LeaseMode,
    LeaseOwner,
    LeaseRecord,
    LeaseRequest,
    LockState,
)
from ..protocol import (
    ArmTimer,
    Call,
    CancelReply,
    CancelTimer,
    CommitReply,
    CompleteCaller,
    DestinationState,
    Discard,
    DropPending,
    Effect,
    ErrorReply,
    Message,
    MigrationDestination,
    MigrationLeasesLostError,
    MigrationSource,
    Outcome,
    Ownership,
    Prepare,
    QueryBackend,
    Reply,
    Request,
    Response,
    SendToPeer,
    Side,
    SourceState,
    Status,
    Timer,
    Timing,
    TransferLeases,
    VerifyLeases,
    answer_unknown,
    judge_ownership,
    lease_owner,
    verify_lock_state,
)

SOURCE = "source"
DESTINATION = "destination"
ROLES = (SOURCE, DESTINATION)

Machine = MigrationSource | MigrationDestination
Records = tuple[LeaseRecord, ...]  # sorted by key
T = TypeVar("T", bound=Hashable)
MachineT = TypeVar("MachineT", bound=MigrationSource | MigrationDestination)
MessageT = TypeVar("MessageT", bound=Message)

# --- the fixed scenario ------------------------------------------------------

MIGRATION_ID = "mig-1"
SOURCE_HOST = HostIdentity("src", 1)
DEST_HOST = HostIdentity("dst", 2)
THIRD_HOST = HostIdentity("third", 3)
DOMAIN = DomainIdentity("0b5c1e2a-4d4e-4c6f-9d2b-6f1e0c3a7b11", "vm1")
OTHER_DOMAIN = DomainIdentity("9a8b7c6d-1111-2222-3333-444455556666", "vm2")
SOURCE_INCARNATION = "inc-src"
DEST_INCARNATION = "inc-dst"
THIRD_INCARNATION = "inc-third"
LOCKSPACE_KIND = "memory"
LOCKSPACE_ID = "ls-1"
EXCLUSIVE_DISK = "disk:/vm/root.img"
SHARED_DISK = "disk:/shared/data.img"

SOURCE_OWNER = lease_owner(SOURCE_HOST, DOMAIN)
DEST_OWNER = lease_owner(DEST_HOST, DOMAIN)
THIRD_OWNER = lease_owner(THIRD_HOST, OTHER_DOMAIN)

ORIGINAL = LockState.of(
    [Lease(EXCLUSIVE_DISK, LeaseMode.EXCLUSIVE, 7), Lease(SHARED_DISK, LeaseMode.SHARED, 3)]
)
INITIAL_RECORDS: Records = (
    LeaseRecord(SHARED_DISK, 3, (Holder(SOURCE_OWNER, LeaseMode.SHARED, 3, SOURCE_INCARNATION),)),
    LeaseRecord(EXCLUSIVE_DISK, 7, (Holder(SOURCE_OWNER, LeaseMode.EXCLUSIVE, 7, SOURCE_INCARNATION),)),
)
KEYS = tuple(lease.key for lease in ORIGINAL.leases)

# The third host's attempts: the first two must always be refused while the
# domain holds the disks; the last is a legitimate co-holder of the shared disk.
THIRD_ATTEMPTS: tuple[LeaseRequest, ...] = (
    LeaseRequest(EXCLUSIVE_DISK, LeaseMode.EXCLUSIVE),
    LeaseRequest(SHARED_DISK, LeaseMode.EXCLUSIVE),
    LeaseRequest(SHARED_DISK, LeaseMode.SHARED),
)

# Landmarks: start 0, PREPARE_TIMEOUT 4, DEADLINE 8 (= 10 - margin), D = 10.
TIMING = Timing(retry_interval=0.25, prepare_timeout=4.0, transfer_margin=2.0, max_pending=3600.0)
DEADLINE = 10.0


# --- bounds, reports ---------------------------------------------------------


@attrs.frozen
class Bounds:
    """How much adversity the search may spend on one path, and how far it goes.

    Attributes:
        losses: packets the network may lose.
        duplicates: packets the network may deliver while keeping a copy.
        backend_faults: backend calls that may fail (before or after writing).
        crashes: hosts that may crash (each at most once).
        early_timeouts: requests that may time out while they, or their
            answer, are still on the network (a slow message); a request
            whose message and answer are gone (lost, deferred by the peer,
            dropped at a crash) may always time out.
        forgets: how often a finished side may forget the migration (its
            driver ended after lingering) while its peer may still ask: that
            needs the peer's retransmissions to miss the whole linger, an
            adversarial timing, so it is budgeted like a fault.
        adversity: budgeted events of any of the kinds above on one path
            (None: only the per-kind budgets count).
        third_host: whether the third host tries to acquire the disks.
        max_depth: expand no world deeper than this many events (None: no limit).
        max_states: stop once this many worlds were found (a safety net).
        stop_after: stop the search once this many violations were found.
        check_progress: check that an end is reachable from every world
            (keeps the graph in memory; skipped when the search was cut).
        traces_per_kind: violations kept (with traces) per kind.
        settle_epilogue: play a settled world's leftovers out in one order
            (see :meth:`_Step.quiesce`); False explores every order of them.
    """

    losses: int = 1
    duplicates: int = 1
    backend_faults: int = 1
    crashes: int = 1
    early_timeouts: int = 1
    forgets: int = 1
    adversity: int | None = 1
    third_host: bool = True
    max_depth: int | None = None
    max_states: int = 3_000_000
    stop_after: int | None = None
    check_progress: bool = True
    traces_per_kind: int = 2
    settle_epilogue: bool = True


DEFAULT_BOUNDS = Bounds()
THOROUGH_BOUNDS = Bounds(
    losses=2, duplicates=2, backend_faults=2, crashes=2, early_timeouts=2, forgets=1, adversity=2
)


@attrs.frozen
class Violation:
    """A broken rule and the shortest way found to break it.

    Attributes:
        kind: a short stable name of the rule.
        detail: what is wrong in that world.
        trace: the events from the start, in order.
        state: a one-line summary of the world.
    """

    kind: str
    detail: str
    trace: tuple[str, ...]
    state: str

    def render(self) -> str:
        """The violation, its world and its trace, one item per line."""
        steps = "\n".join(f"    {n:3d}. {step}" for n, step in enumerate(self.trace, 1))
        return f"[{self.kind}] {self.detail}\n  in: {self.state}\n  trace:\n{steps}"


@attrs.frozen
class ExploreReport:
    """The result of one search.

    Attributes:
        states: distinct worlds found.
        transitions: events applied (self-loops included).
        terminal_states: ends: worlds where only the third host, a crash or
            forgetting could still happen.
        max_depth: the longest shortest path to a world.
        truncated: worlds not expanded because of ``max_depth``/``max_states``.
        outcomes: ends per "source X, destination Y" label.
        violations: kept violations (``traces_per_kind`` per kind), shortest first.
        violation_counts: every violation found, per kind.
        progress_checked: whether the end-state reachability check ran.
        elapsed: seconds the search took.
        bounds: the bounds used.
    """

    states: int
    transitions: int
    terminal_states: int
    max_depth: int
    truncated: int
    outcomes: Mapping[str, int]
    violations: tuple[Violation, ...]
    violation_counts: Mapping[str, int]
    progress_checked: bool
    elapsed: float
    bounds: Bounds

    @property
    def ok(self) -> bool:
        """Whether no rule was broken."""
        return not self.violation_counts

    def kinds(self) -> set[str]:
        """The kinds of rules broken."""
        return set(self.violation_counts)


# --- the model lockspace -----------------------------------------------------


class Lockspace:
    """The lease backend as pure functions over immutable records.

    Subclass it to inject a bug (the tests do): the search must then find a
    violation. Every method may raise :class:`ActorlockError` for a refusal.
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


def merge(records: Records, updated: Mapping[str, LeaseRecord]) -> Records:
    """``records`` with ``updated`` written over them, sorted by key."""
    by_key = {record.key: record for record in records}
    by_key.update(updated)
    return tuple(by_key[key] for key in sorted(by_key))


# --- the model ---------------------------------------------------------------

SourceFactory = Callable[..., MigrationSource]
DestinationFactory = Callable[..., MigrationDestination]


@attrs.frozen
class Model:
    """What is explored: the bounds, the lockspace, the machine classes, the time rule.

    Attributes:
        bounds: the search bounds.
        lockspace: the backend model (a subclass injects backend bugs).
        source_factory: builds the source machine (a subclass injects machine bugs).
        destination_factory: builds destination machines.
        respect_transfer_margin: the protocol's timing assumption (a backend
            call ends within ``transfer_margin``); False is a mutation.
    """

    bounds: Bounds = DEFAULT_BOUNDS
    lockspace: Lockspace = attrs.field(factory=Lockspace)
    source_factory: SourceFactory = MigrationSource
    destination_factory: DestinationFactory = MigrationDestination
    respect_transfer_margin: bool = True


# --- interned parts of a world -----------------------------------------------


@attrs.frozen
class Packet:
    """A message on the network, to ``to``."""

    to: str
    message: Message


@attrs.frozen
class Exchange:
    """A request ``sender`` sent that has neither been answered nor timed out."""

    sender: str
    request: Request


@attrs.frozen
class DriverTimer:
    """A timer as the driver keeps it (it may outlive the machine's own record)."""

    role: str
    timer: Timer
    at: float


@attrs.frozen
class PendingCall:
    """A backend call under way; ``orphan`` when its host crashed meanwhile."""

    role: str
    effect: VerifyLeases | TransferLeases | QueryBackend
    orphan: bool = False


@attrs.frozen
class Answer:
    """What a local caller was told (the first answer to its call)."""

    role: str
    call: Call
    outcome: Outcome
    error: str  # "" or the error's class name (texts are abstracted away)
    leases_lost: bool
    lock_state: LockState | None


class Interner(Generic[T]):
    """Numbers for equal values: each value is stored once."""

    def __init__(self) -> None:
        self._ids: dict[T, int] = {}
        self._objects: list[T] = []

    def id(self, value: T) -> int:
        """The number of ``value`` (a new one if it was never seen)."""
        found = self._ids.get(value)
        if found is None:
            found = self._ids[value] = len(self._objects)
            self._objects.append(value)
        return found

    def obj(self, number: int) -> T:
        """The value numbered ``number``."""
        return self._objects[number]

    def __len__(self) -> int:
        return len(self._objects)


class World(NamedTuple):
    """One global state: numbers of interned parts, budgets and small flags.

    A NamedTuple rather than an attrs class: millions are hashed and kept,
    and a tuple of ints hashes and compares fastest and is smallest.
    """

    now: float
    src: int  # machine number
    dst: int  # machine number, -1 before the first PREPARE arrived
    generation: int  # destination machines created so far (2: one after forgetting)
    records: int
    net: tuple[int, ...]  # Packet numbers, sorted, no repeats
    exchanges: tuple[int, ...]  # Exchange numbers
    timers: tuple[int, ...]  # DriverTimer numbers
    pending: tuple[int, ...]  # PendingCall numbers
    answers: tuple[int, ...]  # Answer numbers
    said_src: str  # "", "commit", "cancel"
    said_dst: str
    guest_src: str  # "running", "paused", "stopped", "none"
    guest_dst: str
    down_src: str  # "", "crashed", "forgotten"
    down_dst: str
    dest_ready: bool  # the destination accepted PREPARE (its caller may commit)
    losses: int  # budgets left
    duplicates: int
    faults: int
    crashes: int
    early_timeouts: int
    forgets: int
    adversity: int  # budgeted events of any kind left
    settled: bool  # only noise was left, and it was played out (see _Step.quiesce)


# Events are small tuples; they are described only when a trace is printed.
EventTuple = tuple[object, ...]


# --- machine snapshots -------------------------------------------------------


def clone_machine(machine: MachineT) -> MachineT:
    """A copy that can be stepped without touching ``machine``.

    The machines keep immutable values (numbers, enums, frozen messages,
    exceptions never mutated) in plain dicts, sets and lists: copying those
    containers is a full copy.
    """
    twin = copy.copy(machine)
    for name, value in vars(machine).items():
        if isinstance(value, dict | set | list):
            setattr(twin, name, copy.copy(value))
    return twin


_NORMALIZED: dict[Message, Message] = {}


def normalized(message: MessageT) -> MessageT:
    """``message`` as the network carries it in the world: equal up to text.

    Texts (``reason``, ``message``) only ever flow into other texts, and no
    receiver reads ``deadline_remaining`` except PREPARE's (the destination
    sets its deadline from it); blanking them merges worlds that differ in
    wording only. ``code`` and every other field are kept.
    """
    found = _NORMALIZED.get(message)
    if found is None:
        if isinstance(message, Prepare):
            found = message
        else:
            changes: dict[str, Any] = {"deadline_remaining": 0.0}
            for name in ("reason", "message"):
                if hasattr(message, name):
                    changes[name] = ""
            found = attrs.evolve(message, **changes)
        _NORMALIZED[message] = found
    assert isinstance(found, type(message))
    return found


def _order(value: Hashable) -> tuple[str, str]:
    return type(value).__name__, repr(value)


def _canon(value: object) -> Hashable:
    if value is None or isinstance(value, bool | int | float | str | enum.Enum | type):
        return value
    if isinstance(value, BaseException):
        # Only the class is read (isinstance); the text only ever reaches
        # texts (reasons, callers' errors), which the world abstracts away.
        return ("error", type(value).__qualname__)
    if isinstance(value, dict):
        items = sorted(
            ((_canon(k), None if k is Timer.RETRY else _canon(v)) for k, v in value.items()),
            key=lambda kv: _order(kv[0]),
        )
        return ("dict", *items)
    if isinstance(value, set | frozenset):
        return ("set", *sorted((_canon(v) for v in value), key=_order))
    if isinstance(value, list | tuple):
        return ("seq", *(_canon(v) for v in value))
    if isinstance(value, Response):
        return normalized(value)  # a stored answer leaves only through the network boundary
    if isinstance(value, Request):
        # A stored request's deadline is never read: retransmissions recompute
        # it and io_failed compares requests without it. Its text is compared.
        return attrs.evolve(value, deadline_remaining=0.0)
    if attrs.has(type(value)):
        hash(value)  # frozen attrs records compare by value; an unhashable one must not slip in
        return value
    if callable(value):
        # The stored failure factory: what it makes is what the machine uses.
        return ("factory", _canon(value()))
    raise TypeError(f"no canonical form for {type(value).__name__}: extend _canon")


def machine_key(machine: Machine) -> tuple[Hashable, ...]:
    """A hashable key equal for two machines exactly when they behave alike.

    Built from every attribute (see the module docstring), sorted by name.
    """
    kind = cast(Hashable, type(machine))  # a mutant subclass is another machine
    return (kind, *((name, _canon(value)) for name, value in sorted(vars(machine).items())))


# --- the explorer ------------------------------------------------------------


class _Problem(NamedTuple):
    kind: str
    detail: str


class _Step:
    """One transition under construction: a world's parts, decoded and mutable."""

    def __init__(self, ex: Explorer, world: World) -> None:
        self.ex = ex
        self.now = world.now
        self.machine = {SOURCE: world.src, DESTINATION: world.dst}
        self.generation = world.generation
        self.records = world.records
        self.net = set(world.net)
        self.exchanges = set(world.exchanges)
        self.timers = {ex.timers.obj(t) for t in world.timers}
        self.pending = [ex.pending.obj(p) for p in world.pending]
        # Re-interning unchanged parts is most of a step's cost: track changes.
        self.timers_dirty = self.pending_dirty = False
        self.world0 = world
        self.answers = set(world.answers)
        self.said = {SOURCE: world.said_src, DESTINATION: world.said_dst}
        self.guest = {SOURCE: world.guest_src, DESTINATION: world.guest_dst}
        self.down = {SOURCE: world.down_src, DESTINATION: world.down_dst}
        self.dest_ready = world.dest_ready
        self.losses = world.losses
        self.duplicates = world.duplicates
        self.faults = world.faults
        self.crashes = world.crashes
        self.early_timeouts = world.early_timeouts
        self.forgets = world.forgets
        self.adversity = world.adversity
        self.problems: list[_Problem] = []

    # --- building the next world ---------------------------------------

    def world(self) -> World:
        ex = self.ex
        if not (ex.bounds.settle_epilogue and self.settled()):
            return self.finish(settled=False)
        # Draining is deterministic: one world before it gives one world after
        # it, with the same findings, however it was reached.
        before = self.snapshot(settled=False)
        hit = ex.drained.get(before)
        if hit is None:
            mark = len(self.problems)
            self.quiesce()
            # Nothing in a settled world can spend a budget: what is left of
            # them would only tell apart worlds that behave alike.
            self.losses = self.duplicates = self.faults = self.crashes = 0
            self.early_timeouts = self.forgets = self.adversity = 0
            hit = ex.drained[before] = (self.finish(settled=True), tuple(self.problems[mark:]))
        else:
            self.problems.extend(hit[1])
        return hit[0]

    def finish(self, *, settled: bool) -> World:
        ex = self.ex
        for role in ROLES:
            if self.down[role] and self.machine[role] >= 0:
                self.machine[role] = ex.tombstone(self.machine[role])
        self.prune_exchanges()
        self.prune_answers()
        return self.snapshot(settled=settled)

    def snapshot(self, *, settled: bool) -> World:
        ex = self.ex
        return World(
            now=self.now,
            src=self.machine[SOURCE],
            dst=self.machine[DESTINATION],
            generation=self.generation,
            records=self.records,
            net=tuple(sorted(self.net)),
            exchanges=tuple(sorted(self.exchanges)),
            timers=tuple(sorted(ex.timers.id(t) for t in self.timers))
            if self.timers_dirty
            else self.world0.timers,
            pending=tuple(sorted(ex.pending.id(p) for p in self.pending))
            if self.pending_dirty
            else self.world0.pending,
            answers=tuple(sorted(self.answers)),
            said_src=self.said[SOURCE],
            said_dst=self.said[DESTINATION],
            guest_src=self.guest[SOURCE],
            guest_dst=self.guest[DESTINATION],
            down_src=self.down[SOURCE],
            down_dst=self.down[DESTINATION],
            dest_ready=self.dest_ready,
            losses=self.losses,
            duplicates=self.duplicates,
            faults=self.faults,
            crashes=self.crashes,
            early_timeouts=self.early_timeouts,
            forgets=self.forgets,
            adversity=self.adversity,
            settled=settled,
        )

    # --- feeding a machine ---------------------------------------------

    def feed(self, role: str, what: Hashable, step: Callable[[Machine], list[Effect]]) -> None:
        """Apply one input to ``role``'s machine (memoized) and carry out its effects."""
        after, effects, error = self.ex.step(self.machine[role], what, self.now, step)
        self.machine[role] = after
        if error:
            self.problems.append(_Problem("machine-raised", f"{role} raised on {what!r}: {error}"))
            return
        machine = self.ex.machines.obj(after)
        if role == DESTINATION and self.generation == 1 and machine.state is DestinationState.PREPARED:
            self.dest_ready = True
        self.carry_out(role, effects)

    def settled(self) -> bool:
        """Whether only noise is left: every side final (or dead), nothing that could revive one.

        Final states are absorbing and answer every later request and call
        from the outcome, and ignore results of reads they no longer wait
        for; with no transfer pending the lockspace cannot change either. A
        PREPARE still travelling to a destination that has no machine (or
        forgot its own, or may still forget it) would create a new one: not
        settled.
        """
        ex = self.ex
        source = ex.machines.obj(self.machine[SOURCE])
        if self.down[SOURCE] != "crashed" and not source.finished:
            return False
        number = self.machine[DESTINATION]
        if number >= 0 and self.down[DESTINATION] != "crashed" and not ex.machines.obj(number).finished:
            return False
        if any(isinstance(p.effect, TransferLeases) for p in self.pending):
            return False  # it may still write
        # A PREPARE in flight creates a destination machine where there is
        # none, or where the last one forgot (or still may forget) its own.
        may_forget = self.forgets > 0 and self.adversity > 0
        revivable = (
            self.down[DESTINATION] != "crashed"
            and self.generation < 2
            and (number < 0 or self.down[DESTINATION] == "forgotten" or may_forget)
        )
        return not (revivable and any(isinstance(ex.packets.obj(p).message, Prepare) for p in self.net))

    def quiesce(self) -> None:
        """Play a settled world's leftovers out in one fixed order, checking they are noise.

        Deliveries, timeouts, timers and ticks are run until none is left; if
        any of them changes a machine's state, the lockspace, a guest or what
        a caller was told, the claim that made this shortcut sound is false
        and that is reported ("epilogue"). Callers that have not spoken yet
        are left to the search: their answers do matter.
        """
        ex = self.ex

        def picture() -> tuple[object, ...]:
            states = tuple(
                ex.machines.obj(n).state if n >= 0 else None
                for n in (self.machine[SOURCE], self.machine[DESTINATION])
            )
            return (states, self.records, dict(self.guest), frozenset(self.answers))

        dst = self.machine[DESTINATION] if not self.down[DESTINATION] else -1
        if not (self.net or self.exchanges or self.timers or self.pending) and (
            ex.landmark_after(self.now, dst, ()) is None
        ):
            return  # drained already
        before = picture()
        for _ in range(10_000):
            # Time first: past the last landmark nothing is resent any more,
            # so the leftovers drain in a few steps.
            dst = self.machine[DESTINATION] if not self.down[DESTINATION] else -1
            if (nxt := ex.landmark_after(self.now, dst, self.timers)) is not None:
                self.now = nxt
            elif self.pending:
                self.complete(0, "ok")
            elif self.net:
                self.deliver(min(self.net), keep=False)
            elif self.exchanges:
                self.io_failed(min(self.exchanges))
            elif firable := [t for t in self.timers if not self.down[t.role]]:
                self.fire(ex.timers.id(min(firable, key=lambda t: (t.role, t.timer.value))))
            else:
                break
            if picture() != before:
                self.problems.append(
                    _Problem("epilogue", f"a settled world changed while draining: {before} -> {picture()}")
                )
                return
        else:  # pragma: no cover - would mean an endless retry loop
            self.problems.append(_Problem("epilogue", "draining a settled world did not end"))

    def prune_answers(self) -> None:
        """Drop responses a final machine would discard: they stay discarded.

        A final state absorbs every event, and the set of answered requests
        only grows, so a response that now changes nothing (effects: only
        Discard) never will; dropping it merges worlds that differ only in it.
        """
        ex = self.ex
        for number in list(self.net):
            packet = ex.packets.obj(number)
            role, message = packet.to, packet.message
            if not isinstance(message, Response) or self.down[role] or self.machine[role] < 0:
                continue
            machine = self.machine[role]
            if not ex.machines.obj(machine).finished:
                continue
            after, effects, error = ex.step(
                machine,
                ("receive", ex.messages.id(message)),
                self.now,
                lambda m, message=message: m.receive(message, now=self.now),  # type: ignore[misc]
            )
            if not error and after == machine and all(isinstance(e, Discard) for e in effects):
                self.net.discard(number)

    def prune_exchanges(self) -> None:
        """Forget exchanges whose timeout can only ever be a no-op.

        ``io_failed`` does nothing once its request was answered or is no
        longer wanted (PREPARE once the source left PREPARING, COMMIT once the
        destination left COMMITTING, CANCEL once the deadline passed): none
        of these conditions can become false again, so such an exchange only
        offers an event that changes nothing but itself. Dropping it merges
        worlds that differ only in it.
        """
        ex = self.ex
        keep: set[int] = set()
        for number in self.exchanges:
            exchange = ex.exchanges_.obj(number)
            machine = self.machine[exchange.sender]
            request = exchange.request
            after, effects, error = ex.step(
                machine,
                ("io_failed", ex.messages.id(request)),
                self.now,
                lambda m, request=request: m.io_failed(request, now=self.now),  # type: ignore[misc]
            )
            if error or effects or after != machine:
                keep.add(number)
        self.exchanges = keep

    def carry_out(self, role: str, effects: Iterable[Effect]) -> None:
        """What the driver does with each effect, in order."""
        ex = self.ex
        peer = DESTINATION if role == SOURCE else SOURCE
        for effect in effects:
            match effect:
                case SendToPeer(message=message):
                    # io_failed must name the request as sent, up to its deadline.
                    request = attrs.evolve(message, deadline_remaining=0.0)
                    self.exchanges.add(ex.exchange_id(Exchange(role, request)))
                    self.put(peer, message)
                case Reply(message=message):
                    self.put(peer, message)
                case ArmTimer(timer=timer, at=at):
                    self.timers_dirty = True
                    self.timers = {t for t in self.timers if (t.role, t.timer) != (role, timer)}
                    # RETRY may fire whenever armed (see Time): its due time is not kept.
                    self.timers.add(DriverTimer(role, timer, -1.0 if timer is Timer.RETRY else at))
                case CancelTimer(timer=timer):
                    self.timers_dirty = True
                    self.timers = {t for t in self.timers if (t.role, t.timer) != (role, timer)}
                case VerifyLeases() | TransferLeases() | QueryBackend():
                    if isinstance(effect, TransferLeases) and self.now >= DEADLINE - TIMING.transfer_margin:
                        self.problems.append(
                            _Problem(
                                "late-transfer",
                                f"transfer started at {self.now:g}, at or after the last moment "
                                f"{DEADLINE - TIMING.transfer_margin:g}",
                            )
                        )
                    self.pending_dirty = True
                    self.pending.append(PendingCall(role, effect))
                case CompleteCaller():
                    self.answer(role, effect)
                case DropPending() | Discard():
                    pass

    def put(self, to: str, message: Message) -> None:
        """Put ``message`` on the network, unless nobody could ever receive it."""
        down = self.down[to]
        if down == "crashed" or (down == "forgotten" and isinstance(message, Response)):
            return  # delivering it would change nothing: drop it now
        self.net.add(self.ex.packet_id(Packet(to, normalized(message))))

    def answer(self, role: str, effect: CompleteCaller) -> None:
        waiting = effect.call is Call.PREPARE or self.said[role] != ""
        if role == DESTINATION and self.generation != 1:
            waiting = False  # a re-created destination has no caller
        if not waiting or any(
            (a := self.ex.answers_.obj(n)).role == role and a.call is effect.call for n in self.answers
        ):
            return  # the driver popped the call at its first answer
        error = effect.error
        answer = Answer(
            role,
            effect.call,
            effect.outcome,
            type(error).__name__ if error is not None else "",
            isinstance(error, MigrationLeasesLostError),
            effect.lock_state,
        )
        self.answers.add(self.ex.answers_.id(answer))
        if effect.call is not Call.COMPLETE:
            return
        committed = effect.outcome is Outcome.COMMITTED
        if role == SOURCE:
            if committed or answer.leases_lost:
                self.guest[SOURCE] = "stopped"
            elif self.guest[SOURCE] == "paused":
                self.guest[SOURCE] = "running"  # the migration is off: libvirt resumes it
        elif committed and self.said[DESTINATION] == "commit":
            self.guest[DESTINATION] = "running"

    # --- the events ----------------------------------------------------

    def deliver(self, number: int, *, keep: bool) -> None:
        ex = self.ex
        packet = ex.packets.obj(number)
        if not keep:
            self.net.discard(number)
        to, message = packet.to, packet.message
        msg_id = ex.packet_message[number]
        if isinstance(message, Response):
            if self.down[to]:
                return
            self.exchanges = {
                e
                for e in self.exchanges
                if not ((x := ex.exchanges_.obj(e)).sender == to and x.request.seq == message.seq)
            }
            self.feed(to, ("receive", msg_id), lambda m: m.receive(message, now=self.now))
            return
        assert isinstance(message, Request)
        if self.down[to] == "crashed":
            return
        fresh = self.machine[DESTINATION] < 0 or self.down[DESTINATION] == "forgotten"
        if to == DESTINATION and isinstance(message, Prepare) and self.generation < 2 and fresh:
            self.new_destination()  # as the host's peer service does for an unknown id
        if isinstance(message, Prepare) and message.deadline_remaining > 0:
            message = _relabel_deadline(message, self.now)
            msg_id = ex.messages.id(message)
        if self.machine[to] < 0 or self.down[to] == "forgotten":
            local = SOURCE_HOST.name if to == SOURCE else DEST_HOST.name
            unknown = answer_unknown(message, local=local)
            if unknown is not None:
                self.put(SOURCE if to == DESTINATION else DESTINATION, unknown)
            return
        self.feed(to, ("receive", msg_id), lambda m: m.receive(message, now=self.now))

    def new_destination(self) -> None:
        ex = self.ex
        machine = ex.model.destination_factory(
            migration_id=MIGRATION_ID,
            local=DEST_HOST,
            incarnation=DEST_INCARNATION,
            lockspace_kind=LOCKSPACE_KIND,
            lockspace_id=LOCKSPACE_ID,
            timing=TIMING,
        )
        self.machine[DESTINATION] = ex.intern_machine(machine)
        self.generation += 1
        self.down[DESTINATION] = ""

    def io_failed(self, number: int) -> None:
        exchange = self.ex.exchanges_.obj(number)
        self.exchanges.discard(number)
        request = exchange.request
        msg_id = self.ex.messages.id(request)
        self.feed(exchange.sender, ("io_failed", msg_id), lambda m: m.io_failed(request, now=self.now))

    def fire(self, number: int) -> None:
        timer = self.ex.timers.obj(number)
        self.timers_dirty = True
        self.timers.discard(timer)
        self.feed(timer.role, ("timer", timer.timer), lambda m: m.timer_fired(timer.timer, now=self.now))

    def complete(self, index: int, mode: str) -> None:
        """Finish pending backend call ``index``.

        ``mode``: ``ok``; ``before``/``after`` writing (faults); ``lands``/``lost``
        (a dead host's transfer).
        """
        ex = self.ex
        self.pending_dirty = True
        call = self.pending.pop(index)
        if mode in ("before", "after"):
            self.adversity -= 1
            self.faults -= 1
        records = ex.records.obj(self.records)
        lockspace = ex.model.lockspace
        fault = BackendError(f"backend fault ({mode} writing)")
        effect = call.effect
        role = call.role
        if isinstance(effect, VerifyLeases):
            problem = fault if mode == "before" else lockspace.verify(records, effect)
            self.feed(role, ("verify", _result_key(problem)), _verify_step(problem, self.now))
            return
        if isinstance(effect, QueryBackend):
            ownership: Ownership | ActorlockError = (
                fault if mode == "before" else lockspace.query(records, effect)
            )
            self.feed(role, ("query", _result_key(ownership)), _query_step(ownership, self.now))
            return
        result: LockState | ActorlockError = fault
        if mode != "before" and mode != "lost":
            try:
                written, moved = lockspace.transfer(records, effect, SOURCE_INCARNATION)
            except ActorlockError as exc:
                result = exc
            else:
                self.records = ex.records.id(written)
                result = moved if mode == "ok" else fault
        if call.orphan:
            return  # its host is dead: nobody hears the result
        self.feed(role, ("transfer", _result_key(result)), _transfer_step(result, self.now))

    def call(self, role: str, decision: str) -> None:
        self.said[role] = decision
        if decision == "commit":
            if role == SOURCE and self.guest[SOURCE] == "running":
                self.guest[SOURCE] = "paused"  # switchover: paused before it confirms
            self.feed(role, ("call", decision), lambda m: m.commit_requested(now=self.now))
        else:
            self.feed(role, ("call", decision), lambda m: m.cancel_requested(now=self.now))

    def crash(self, role: str) -> None:
        ex = self.ex
        self.adversity -= 1
        self.crashes -= 1
        self.down[role] = "crashed"
        self.guest[role] = "stopped"
        self.timers_dirty = self.pending_dirty = True
        self.timers = {t for t in self.timers if t.role != role}
        self.exchanges = {e for e in self.exchanges if ex.exchanges_.obj(e).sender != role}
        self.net = {p for p in self.net if ex.packets.obj(p).to != role}
        # Reads die with the host; a transfer is in the storage's hands already.
        self.pending = [
            p if p.role != role else attrs.evolve(p, orphan=True)
            for p in self.pending
            if p.role != role or isinstance(p.effect, TransferLeases)
        ]

    def forget(self, role: str) -> None:
        ex = self.ex
        self.down[role] = "forgotten"
        self.timers_dirty = True
        self.timers = {t for t in self.timers if t.role != role}
        self.exchanges = {e for e in self.exchanges if ex.exchanges_.obj(e).sender != role}
        self.net = {
            p
            for p in self.net
            if not ((pk := ex.packets.obj(p)).to == role and isinstance(pk.message, Response))
        }

    def tick(self, to: float) -> None:
        self.now = to

    def third(self, index: int) -> bool:
        """The third host's attempt; True when it changed the lockspace."""
        ex = self.ex
        key = (self.records, index)
        after = ex.third_memo.get(key)
        if after is None:
            records = ex.records.obj(self.records)
            try:
                written = ex.model.lockspace.acquire(
                    records, THIRD_OWNER, THIRD_INCARNATION, THIRD_ATTEMPTS[index]
                )
            except ActorlockError:
                written = records
            after = ex.third_memo[key] = ex.records.id(written)
        changed = after != self.records
        self.records = after
        return changed


def _relabel_deadline(prepare: Prepare, now: float) -> Prepare:
    """PREPARE as delivered at ``now``: a deadline past ``D`` becomes ``max(now, D) + 1``.

    The destination reads ``deadline_remaining`` once, to set its deadline
    ``now + remaining``, and afterwards only compares it with the clock,
    whose values are landmarks. Past ``D`` the only landmark left is that
    deadline itself, so every deadline later than ``D`` (and than ``now``)
    behaves alike: an order-preserving relabeling, which keeps the number of
    distinct deadlines (and clock values) to two or three.
    """
    due = now + prepare.deadline_remaining
    if due <= DEADLINE:
        return prepare
    return attrs.evolve(prepare, deadline_remaining=max(now, DEADLINE) + 1.0 - now)


def _result_key(result: object) -> Hashable:
    if isinstance(result, BaseException):
        return ("error", type(result).__qualname__, str(result))
    return result if result is None or attrs.has(type(result)) else repr(result)


def _verify_step(problem: ActorlockError | None, now: float) -> Callable[[Machine], list[Effect]]:
    def step(m: Machine) -> list[Effect]:
        assert isinstance(m, MigrationDestination)
        return m.verify_done(problem, now=now)

    return step


def _query_step(result: Ownership | ActorlockError, now: float) -> Callable[[Machine], list[Effect]]:
    return lambda m: m.query_done(result, now=now)


def _transfer_step(result: LockState | ActorlockError, now: float) -> Callable[[Machine], list[Effect]]:
    def step(m: Machine) -> list[Effect]:
        assert isinstance(m, MigrationSource)
        return m.transfer_done(result, now=now)

    return step


class Explorer:
    """Breadth-first search over worlds with visited-state hashing.

    Args:
        model: what to explore.
    """

    def __init__(self, model: Model | None = None) -> None:
        self.model = model or Model()
        self.bounds = self.model.bounds
        self.machines = _MachineTable()
        self.records: Interner[Records] = Interner()
        self.messages: Interner[Message] = Interner()
        self.packets: Interner[Packet] = Interner()
        self.exchanges_: Interner[Exchange] = Interner()
        self.timers: Interner[DriverTimer] = Interner()
        self.pending: Interner[PendingCall] = Interner()
        self.answers_: Interner[Answer] = Interner()
        self.memo: dict[tuple[int, Hashable, float], tuple[int, tuple[Effect, ...], str]] = {}
        self.third_memo: dict[tuple[int, int], int] = {}
        self._tombstones: dict[tuple[type, enum.Enum], int] = {}
        self._checked: dict[tuple[object, ...], list[_Problem]] = {}
        self.packet_message: list[int] = []  # packet number -> message number
        self._landmarks: dict[tuple[object, ...], float | None] = {}
        self.drained: dict[World, tuple[World, tuple[_Problem, ...]]] = {}

    # --- stepping machines -----------------------------------------------

    def step(
        self, before: int, what: Hashable, now: float, step: Callable[[Machine], list[Effect]]
    ) -> tuple[int, tuple[Effect, ...], str]:
        """Machine ``before`` after input ``what`` at ``now``: its number, effects, and any error.

        Memoized: a machine step is a pure function of (machine, input, now).
        """
        memo_key = (before, what, now)
        hit = self.memo.get(memo_key)
        if hit is None:
            twin = clone_machine(self.machines.obj(before))
            try:
                effects: tuple[Effect, ...] = tuple(step(twin))
            except ActorlockError as exc:
                # The rules say a refused event changes nothing; the driver
                # would crash its task on a non-call input. Either way: report.
                hit = (before, (), f"{type(exc).__name__}: {exc}")
            else:
                hit = (self.intern_machine(twin), effects, "")
            self.memo[memo_key] = hit
        return hit

    # --- interning -----------------------------------------------------

    def intern_machine(self, machine: Machine) -> int:
        """The number of ``machine`` by :func:`machine_key`; it must not be stepped afterwards."""
        return self.machines.intern(machine)

    def tombstone(self, number: int) -> int:
        """The canonical machine standing for dead machine ``number``.

        A machine whose host crashed or which forgot the migration never gets
        another input; only its state is read (by the rules and the report),
        so one representative per (class, state) is enough.
        """
        machine = self.machines.obj(number)
        return self._tombstones.setdefault((type(machine), machine.state), number)

    def packet_id(self, packet: Packet) -> int:
        """The number of ``packet`` (and its message's, remembered alongside)."""
        number = self.packets.id(packet)
        if number == len(self.packet_message):
            self.packet_message.append(self.messages.id(packet.message))
        return number

    def exchange_id(self, exchange: Exchange) -> int:
        """The number of ``exchange``."""
        self.messages.id(exchange.request)
        return self.exchanges_.id(exchange)

    # --- the start -----------------------------------------------------

    def initial(self) -> World:
        """The world right after prepare_migrate was called on the source."""
        source = self.model.source_factory(
            migration_id=MIGRATION_ID,
            local=SOURCE_HOST,
            peer=DEST_HOST.name,
            domain=DOMAIN,
            lockspace_kind=LOCKSPACE_KIND,
            lockspace_id=LOCKSPACE_ID,
            lock_state=ORIGINAL,
            timing=TIMING,
        )
        b = self.bounds
        empty = World(
            now=0.0,
            src=self.intern_machine(source),
            dst=-1,
            generation=0,
            records=self.records.id(INITIAL_RECORDS),
            net=(),
            exchanges=(),
            timers=(),
            pending=(),
            answers=(),
            said_src="",
            said_dst="",
            guest_src="running",
            guest_dst="none",
            down_src="",
            down_dst="",
            dest_ready=False,
            losses=b.losses,
            duplicates=b.duplicates,
            faults=b.backend_faults,
            crashes=b.crashes,
            early_timeouts=b.early_timeouts,
            forgets=b.forgets,
            adversity=b.adversity if b.adversity is not None else 1 << 30,
            settled=False,
        )
        step = _Step(self, empty)
        step.feed(SOURCE, ("start",), lambda m: _start(m))
        assert not step.problems, step.problems
        return step.world()

    # --- which events are enabled --------------------------------------

    def events(self, w: World) -> list[EventTuple]:
        """Every event enabled in ``w`` (the third host's attempts last)."""
        ex: list[EventTuple] = []
        bad = w.adversity > 0  # may another budgeted event happen on this path?
        for number in w.net:
            ex.append(("deliver", number))
            if bad and w.duplicates:
                ex.append(("duplicate", number))
            if bad and w.losses:
                ex.append(("lose", number))
        for number in w.exchanges:
            if self.stuck(w, number):
                ex.append(("io_failed", number))
            elif bad and w.early_timeouts:
                ex.append(("early_timeout", number))
        for number in w.timers:
            timer = self.timers.obj(number)
            if timer.timer is Timer.RETRY or w.now >= timer.at:
                ex.append(("fire", number))
        for index, number in enumerate(w.pending):
            call = self.pending.obj(number)
            if call.orphan:
                ex += [("backend", index, "lands"), ("backend", index, "lost")]
                continue
            ex.append(("backend", index, "ok"))
            if bad and w.faults:
                ex.append(("backend", index, "before"))
                if isinstance(call.effect, TransferLeases):
                    ex.append(("backend", index, "after"))
        nxt = self.next_landmark(w)
        if nxt is not None:
            ex.append(("tick", nxt))
        ex += self.calls(w)
        for role, down in ((SOURCE, w.down_src), (DESTINATION, w.down_dst)):
            if down or w.settled:
                continue  # in a settled world a crash or forgetting can only stop things
            if bad and w.crashes:
                ex.append(("crash", role))
            number = w.src if role == SOURCE else w.dst
            finished = number >= 0 and self.machines.obj(number).finished
            # The driver awaits backend calls inline: it cannot end during one.
            busy = any(self.pending.obj(p).role == role for p in w.pending)
            if bad and w.forgets and finished and (role == SOURCE or w.generation == 1) and not busy:
                ex.append(("forget", role))
        if self.bounds.third_host:
            # The refused attempts are self-loops: offered everywhere, free.
            # The shared co-holder changes only its record's token and holders,
            # which no rule and no machine reads, except the fresh token a
            # transfer issues: its place matters only around a transfer, so it
            # is offered while one is pending (it then lands before or after).
            transferring = any(isinstance(self.pending.obj(p).effect, TransferLeases) for p in w.pending)
            ex += [
                ("third", index)
                for index, request in enumerate(THIRD_ATTEMPTS)
                if request.mode is LeaseMode.EXCLUSIVE or transferring
            ]
        return ex

    def stuck(self, w: World, number: int) -> bool:
        """Whether exchange ``number`` can only end by timing out (nothing of it is in flight)."""
        exchange = self.exchanges_.obj(number)
        peer = DESTINATION if exchange.sender == SOURCE else SOURCE
        for packet in map(self.packets.obj, w.net):
            message = packet.message
            if message.seq != exchange.request.seq:
                continue
            if packet.to == peer and type(message) is type(exchange.request):
                return False
            if packet.to == exchange.sender and isinstance(message, Response):
                return False
        return True

    def calls(self, w: World) -> list[EventTuple]:
        """What the local callers may say in ``w`` (see the module docstring)."""
        ex: list[EventTuple] = []
        if not w.down_src and not w.said_src:
            ex.append(("call", SOURCE, "cancel"))
            prepared = any(
                (a := self.answers_.obj(n)).role == SOURCE
                and a.call is Call.PREPARE
                and a.outcome is Outcome.PENDING
                for n in w.answers
            )
            if prepared:
                ex.append(("call", SOURCE, "commit"))
        if not w.down_dst and not w.said_dst and w.generation == 1:
            ex.append(("call", DESTINATION, "cancel"))
            if w.dest_ready:
                ex.append(("call", DESTINATION, "commit"))
        return ex

    def landmark_after(self, now: float, dst: int, timers: Iterable[DriverTimer]) -> float | None:
        """The next landmark after ``now`` (see Time in the module docstring), if any."""
        marks = {
            min(TIMING.prepare_timeout, DEADLINE - TIMING.transfer_margin),
            DEADLINE - TIMING.transfer_margin,
            DEADLINE,
        }
        if dst >= 0:
            marks.add(self.machines.obj(dst).deadline_at)
        marks.update(t.at for t in timers if t.timer is not Timer.RETRY)
        later = [m for m in marks if m > now and m != float("inf")]
        return min(later) if later else None

    def next_landmark(self, w: World) -> float | None:
        """Where a tick may move the clock in ``w`` (None: nowhere, or not yet)."""
        key = (w.now, w.dst, w.down_dst, w.timers, w.pending)
        if key not in self._landmarks:
            self._landmarks[key] = self._next_landmark(w)
        return self._landmarks[key]

    def _next_landmark(self, w: World) -> float | None:
        dst = w.dst if not w.down_dst else -1  # a dead destination's deadline means nothing
        nxt = self.landmark_after(w.now, dst, map(self.timers.obj, w.timers))
        if nxt is None:
            return None
        if (
            self.model.respect_transfer_margin
            and nxt >= DEADLINE
            and any(isinstance(self.pending.obj(p).effect, TransferLeases) for p in w.pending)
        ):
            return None  # a transfer ends within the margin: before the deadline
        return nxt

    # --- applying an event ---------------------------------------------

    def apply(self, w: World, event: EventTuple) -> tuple[World, list[_Problem], bool]:
        """The world after ``event``, the problems met, and whether it changed anything."""
        step = _Step(self, w)
        kind = event[0]
        changed = True
        if kind == "deliver":
            step.deliver(_int(event[1]), keep=False)
        elif kind == "duplicate":
            step.adversity -= 1
            step.duplicates -= 1
            step.deliver(_int(event[1]), keep=True)
        elif kind == "lose":
            step.adversity -= 1
            step.losses -= 1
            step.net.discard(_int(event[1]))
        elif kind == "io_failed":
            step.io_failed(_int(event[1]))
        elif kind == "early_timeout":
            step.adversity -= 1
            step.early_timeouts -= 1
            step.io_failed(_int(event[1]))
        elif kind == "fire":
            step.fire(_int(event[1]))
        elif kind == "backend":
            step.complete(_int(event[1]), str(event[2]))
        elif kind == "tick":
            step.tick(float(_num(event[1])))
        elif kind == "call":
            step.call(str(event[1]), str(event[2]))
        elif kind == "crash":
            step.crash(str(event[1]))
        elif kind == "forget":
            step.adversity -= 1
            step.forgets -= 1
            step.forget(str(event[1]))
        elif kind == "third":
            changed = step.third(_int(event[1]))
        else:  # pragma: no cover - a typo in events()
            raise AssertionError(event)
        return step.world(), step.problems, changed

    # --- describing ------------------------------------------------------

    def describe(self, w: World, event: EventTuple) -> str:
        """``event`` (enabled in ``w``) in words."""
        kind = event[0]
        if kind in ("deliver", "duplicate", "lose"):
            packet = self.packets.obj(_int(event[1]))
            what = f"{_message_text(packet.message)} to {packet.to}"
            return {"deliver": "deliver ", "duplicate": "deliver a duplicate of ", "lose": "lose "}[
                str(kind)
            ] + what
        if kind in ("io_failed", "early_timeout"):
            exchange = self.exchanges_.obj(_int(event[1]))
            early = " while still in flight" if kind == "early_timeout" else ""
            return f"{exchange.sender}: {_message_text(exchange.request)} times out{early} (io_failed)"
        if kind == "fire":
            timer = self.timers.obj(_int(event[1]))
            return f"{timer.role}: timer {timer.timer.value} fires (due {timer.at:g})"
        if kind == "backend":
            call = self.pending.obj(w.pending[_int(event[1])])
            name = type(call.effect).__name__
            mode = {
                "ok": "succeeds",
                "before": "fails before writing",
                "after": "writes, then its answer is lost",
                "lands": "lands (its host is dead)",
                "lost": "never lands (its host is dead)",
            }[str(event[2])]
            return f"backend {name} of the {call.role} {mode}"
        if kind == "tick":
            return f"clock advances to {_num(event[1]):g}"
        if kind == "call":
            return f"{event[1]} caller says {event[2]}"
        if kind == "crash":
            return f"{event[1]} host crashes"
        if kind == "forget":
            return f"{event[1]} forgets the finished migration"
        request = THIRD_ATTEMPTS[_int(event[1])]
        return f"third host asks for {request.key} ({request.mode.value})"

    def summary(self, w: World) -> str:
        """A one-line picture of ``w``."""
        source = self.machines.obj(w.src)
        parts = [f"now={w.now:g}", f"source={source.state.value}{_down(w.down_src)}"]
        if w.dst >= 0:
            dest = self.machines.obj(w.dst)
            gen = f" (gen {w.generation})" if w.generation > 1 else ""
            parts.append(f"destination={dest.state.value}{gen}{_down(w.down_dst)}")
        else:
            parts.append(f"destination=none{_down(w.down_dst)}")
        parts.append(f"owner={self.owner(w).value}")
        parts.append(f"guests={w.guest_src}/{w.guest_dst}")
        if w.net:
            shown = ", ".join(
                f"{_message_text(self.packets.obj(p).message)}->{self.packets.obj(p).to}" for p in w.net
            )
            parts.append(f"net=[{shown}]")
        if w.pending:
            shown = ", ".join(
                f"{type(self.pending.obj(p).effect).__name__}({self.pending.obj(p).role})" for p in w.pending
            )
            parts.append(f"backend=[{shown}]")
        return " ".join(parts)

    def owner(self, w: World) -> Side:
        """Who the lockspace says holds the domain's leases in ``w``."""
        return judge_ownership(self.records.obj(w.records), SOURCE_OWNER, DEST_OWNER, KEYS).side

    # --- the rules -------------------------------------------------------

    def check(self, w: World) -> list[_Problem]:
        """The safety rules every reachable world must satisfy."""
        # They read only these parts of a world.
        key = (
            w.records,
            w.src,
            w.dst,
            w.generation,
            w.guest_src,
            w.guest_dst,
            w.down_src,
            w.down_dst,
            w.answers,
            w.timers,
        )
        found = self._checked.get(key)
        if found is None:
            found = self._checked[key] = self._check(w)
        return found

    def _check(self, w: World) -> list[_Problem]:
        problems: list[_Problem] = []
        records = self.records.obj(w.records)
        for record in records:
            exclusive = [h for h in record.holders if h.mode is LeaseMode.EXCLUSIVE]
            if exclusive and len(record.holders) > 1:
                holders = ", ".join(f"{h.owner.host}:{h.mode.value}" for h in record.holders)
                problems.append(_Problem("two-owners", f"{record.key} held by {holders}"))
            if record.held_by(SOURCE_OWNER) is not None and record.held_by(DEST_OWNER) is not None:
                problems.append(_Problem("two-owners", f"{record.key} held by both source and destination"))
        side = judge_ownership(records, SOURCE_OWNER, DEST_OWNER, KEYS).side
        by_key = {record.key: record for record in records}

        def tokens(owner: LeaseOwner) -> LockState:
            held = []
            for key in KEYS:
                holder = by_key[key].held_by(owner) if key in by_key else None
                if holder is not None:
                    held.append(Lease(key, holder.mode, holder.token))
            return LockState.of(held)

        if w.guest_src == "running" and w.guest_dst == "running":
            problems.append(_Problem("split-brain", "the guest runs on both hosts"))
        if w.guest_src == "running" and (side is not Side.SOURCE or tokens(SOURCE_OWNER) != ORIGINAL):
            problems.append(
                _Problem("guest-unowned", f"the source guest runs but the lockspace says {side.value}")
            )
        if w.guest_dst == "running":
            told = next(
                (
                    a.lock_state
                    for a in map(self.answers_.obj, w.answers)
                    if a.role == DESTINATION and a.call is Call.COMPLETE
                ),
                None,
            )
            if side is not Side.DESTINATION or tokens(DEST_OWNER) != told:
                problems.append(
                    _Problem(
                        "guest-unowned",
                        f"the destination guest runs but the lockspace says {side.value} "
                        f"(it holds {_leases(tokens(DEST_OWNER))}, the guest was told {_leases(told)})",
                    )
                )
        source = self.machines.obj(w.src)
        assert isinstance(source, MigrationSource)
        cancelled = source.state in (SourceState.CANCELLED, SourceState.REFUSED)
        if w.down_src != "crashed" and cancelled and tokens(SOURCE_OWNER) != ORIGINAL:
            problems.append(
                _Problem(
                    "cancel-lost-leases", f"source {source.state.value} but holds {tokens(SOURCE_OWNER)}"
                )
            )
        problems += self._agreement(w, side)
        for role, number, down in ((SOURCE, w.src, w.down_src), (DESTINATION, w.dst, w.down_dst)):
            if down or number < 0:
                continue
            driver = {(t.timer, t.at) for t in map(self.timers.obj, w.timers) if t.role == role}
            for timer, at in self.machines.obj(number).armed_timers.items():
                if (timer, -1.0 if timer is Timer.RETRY else at) not in driver:
                    problems.append(
                        _Problem("timer-mismatch", f"{role} machine armed {timer.value}@{at:g}, driver not")
                    )
        return problems

    def _agreement(self, w: World, side: Side) -> list[_Problem]:
        problems: list[_Problem] = []
        source = self.machines.obj(w.src)
        if w.down_src != "crashed" and source.finished:
            want = {
                SourceState.COMMITTED: Side.DESTINATION,
                SourceState.CANCELLED: Side.SOURCE,
                SourceState.REFUSED: Side.SOURCE,
                SourceState.FAILED: Side.NEITHER,
            }[source.state]  # type: ignore[index]
            if side is not want:
                problems.append(
                    _Problem("disagreement", f"source {source.state.value}, lockspace says {side.value}")
                )
        if w.dst >= 0 and w.down_dst != "crashed":
            dest = self.machines.obj(w.dst)
            state = dest.state
            if state is DestinationState.COMMITTED and side is not Side.DESTINATION:
                problems.append(
                    _Problem("disagreement", f"destination committed, lockspace says {side.value}")
                )
            if state is DestinationState.FAILED and side is not Side.NEITHER:
                problems.append(_Problem("disagreement", f"destination failed, lockspace says {side.value}"))
            # A destination re-created by a late PREPARE never said commit and
            # has no caller: only a commit would be a claim (the domain actor
            # ignores its other outcomes).
            exempt = w.generation > 1
            if (
                dest.finished
                and state is not DestinationState.COMMITTED
                and side is Side.DESTINATION
                and not exempt
            ):
                problems.append(
                    _Problem("disagreement", f"destination {state.value}, lockspace says {side.value}")
                )
        for answer in map(self.answers_.obj, w.answers):
            if answer.call is not Call.COMPLETE:
                continue
            crashed = (w.down_src if answer.role == SOURCE else w.down_dst) == "crashed"
            if crashed:
                continue
            if answer.outcome is Outcome.COMMITTED and side is not Side.DESTINATION:
                problems.append(
                    _Problem("caller-misled", f"{answer.role} caller told COMMITTED, lockspace {side.value}")
                )
            if answer.outcome is Outcome.CANCELLED and side is Side.DESTINATION:
                problems.append(
                    _Problem("caller-misled", f"{answer.role} caller told CANCELLED, lockspace {side.value}")
                )
        return problems

    def check_end(self, w: World) -> list[_Problem]:
        """Rules for a world where only the third host can still act."""
        problems: list[_Problem] = []
        source = self.machines.obj(w.src)
        if w.down_src != "crashed" and not source.finished:
            problems.append(_Problem("stuck", f"source stuck in {source.state.value}"))
        if w.dst >= 0 and w.down_dst != "crashed":
            dest = self.machines.obj(w.dst)
            if not dest.finished:
                problems.append(_Problem("stuck", f"destination stuck in {dest.state.value}"))
        answered = {(a.role, a.call) for a in map(self.answers_.obj, w.answers)}
        if w.down_src != "crashed" and (SOURCE, Call.PREPARE) not in answered:
            problems.append(_Problem("stuck", "prepare_migrate never answered"))
        for role, said, down in ((SOURCE, w.said_src, w.down_src), (DESTINATION, w.said_dst, w.down_dst)):
            if said and down != "crashed" and (role, Call.COMPLETE) not in answered:
                problems.append(_Problem("stuck", f"the {role} caller who said {said} was never answered"))
        return problems

    def outcome_label(self, w: World) -> str:
        """How an end is counted in :attr:`ExploreReport.outcomes`."""
        source = self.machines.obj(w.src)
        src = source.state.value + (" (crashed)" if w.down_src == "crashed" else "")
        if w.dst < 0:
            dst = "none" + (" (crashed)" if w.down_dst == "crashed" else "")
        else:
            dst = self.machines.obj(w.dst).state.value + (" (crashed)" if w.down_dst == "crashed" else "")
            if w.generation > 1:
                dst += " (re-created by a late PREPARE)"
        return f"source {src}, destination {dst}"


class _MachineTable:
    """Machines interned by :func:`machine_key`; interned machines are never stepped."""

    def __init__(self) -> None:
        self._ids: dict[Hashable, int] = {}
        self._objects: list[Machine] = []

    def intern(self, machine: Machine) -> int:
        key = machine_key(machine)
        found = self._ids.get(key)
        if found is None:
            found = self._ids[key] = len(self._objects)
            self._objects.append(machine)
        return found

    def obj(self, number: int) -> Machine:
        return self._objects[number]

    def __len__(self) -> int:
        return len(self._objects)


def _start(m: Machine) -> list[Effect]:
    assert isinstance(m, MigrationSource)
    return m.start(now=0.0, deadline_at=DEADLINE)


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def _num(value: object) -> float:
    assert isinstance(value, int | float)
    return float(value)


def _down(down: str) -> str:
    return f" ({down})" if down else ""


def _leases(state: LockState | None) -> str:
    if state is None:
        return "nothing"
    return "[" + ", ".join(f"{lease.key} {lease.mode.value} #{lease.token}" for lease in state.leases) + "]"


def _message_text(message: Message) -> str:
    text = f"{type(message).__name__}#{message.seq}"
    if isinstance(message, CommitReply | CancelReply | Status):
        text += f"({message.outcome.value})"
    elif isinstance(message, ErrorReply):
        text += f"({message.code})"
    if isinstance(message, Prepare):
        text += f"[deadline in {message.deadline_remaining:g}s]"  # the only deadline anyone reads
    return text


# --- the search --------------------------------------------------------------


def explore(model: Model | None = None) -> ExploreReport:
    """Visit every world reachable within the bounds and check the rules in each.

    Args:
        model: what to explore; the default model with :data:`DEFAULT_BOUNDS`.

    Returns:
        The figures and every violation found, each kind with its shortest traces.
    """
    started = time.perf_counter()
    ex = Explorer(model)
    bounds = ex.bounds
    first = ex.initial()
    index: dict[World, int] = {first: 0}
    worlds: list[World] = [first]
    parent = array("i", [-1])
    via: list[EventTuple] = [("start",)]
    depth = array("i", [0])
    # The graph, for the progress check: successors of world i are
    # edges[offsets[i]:offsets[i+1]] (BFS expands worlds in number order).
    keep_graph = bounds.check_progress
    offsets = array("q", [0])
    edges = array("i")
    terminal = array("b")
    expanded = array("b")
    transitions = 0
    truncated = 0
    outcomes: Counter[str] = Counter()
    found: dict[str, list[Violation]] = {}
    counts: Counter[str] = Counter()

    def trace(number: int) -> list[str]:
        steps: list[str] = []
        while number > 0:
            steps.append(ex.describe(worlds[parent[number]], via[number]))
            number = parent[number]
        return ["source calls prepare_migrate", *reversed(steps)]

    def report(problems: Sequence[_Problem], at: int, extra: EventTuple | None = None) -> None:
        for problem in problems:
            counts[problem.kind] += 1
            kept = found.setdefault(problem.kind, [])
            if len(kept) < bounds.traces_per_kind:
                steps = trace(at)
                if extra is not None:
                    steps.append(ex.describe(worlds[at], extra))
                kept.append(Violation(problem.kind, problem.detail, tuple(steps), ex.summary(worlds[at])))

    report(ex.check(first), 0)
    queue: deque[int] = deque([0])
    cut = False
    while queue:
        number = queue.popleft()
        w = worlds[number]
        if (bounds.max_depth is not None and depth[number] >= bounds.max_depth) or cut:
            truncated += 1
            terminal.append(0)
            expanded.append(0)
            offsets.append(len(edges))
            continue
        expanded.append(1)
        moves = 0
        for event in ex.events(w):
            transitions += 1
            nxt, problems, changed = ex.apply(w, event)
            if event[0] not in ("third", "crash", "forget"):
                moves += 1  # adversarial options are not progress: an end may still offer them
            elif not changed:
                continue  # refused: the world is the same
            target = index.get(nxt)
            if target is None:
                target = len(worlds)
                index[nxt] = target
                worlds.append(nxt)
                parent.append(number)
                via.append(event)
                depth.append(depth[number] + 1)
                queue.append(target)
                report(problems, target)
                report(ex.check(nxt), target)
                if len(worlds) >= bounds.max_states or (
                    bounds.stop_after is not None and sum(counts.values()) >= bounds.stop_after
                ):
                    cut = True
            elif problems:
                report(problems, number, event)
            if keep_graph:
                edges.append(target)
        offsets.append(len(edges))
        if moves == 0:
            terminal.append(1)
            outcomes[ex.outcome_label(w)] += 1
            report(ex.check_end(w), number)
        else:
            terminal.append(0)

    progress_checked = False
    if keep_graph and truncated == 0:
        progress_checked = True
        stuck = _cannot_finish(len(worlds), offsets, edges, terminal)
        if stuck:
            counts["no-way-out"] += len(stuck)
            first_stuck = stuck[0]
            found["no-way-out"] = [
                Violation(
                    "no-way-out",
                    f"{len(stuck)} worlds from which no end state is reachable",
                    tuple(trace(first_stuck)),
                    ex.summary(worlds[first_stuck]),
                )
            ]
    violations = tuple(sorted((v for kept in found.values() for v in kept), key=lambda v: len(v.trace)))
    return ExploreReport(
        states=len(worlds),
        transitions=transitions,
        terminal_states=sum(terminal),
        max_depth=max(depth),
        truncated=truncated,
        outcomes=dict(sorted(outcomes.items())),
        violations=violations,
        violation_counts=dict(sorted(counts.items())),
        progress_checked=progress_checked,
        elapsed=time.perf_counter() - started,
        bounds=bounds,
    )


def _cannot_finish(n: int, offsets: array[int], edges: array[int], terminal: array[int]) -> list[int]:
    """Worlds with no path to a terminal world, in number (BFS) order."""
    # Reverse the graph (counting sort), then search backwards from the ends.
    indegree = array("q", bytes(8 * (n + 1)))
    for target in edges:
        indegree[target + 1] += 1
    for i in range(n):
        indegree[i + 1] += indegree[i]
    fill = array("q", indegree)
    sources = array("i", bytes(4 * len(edges)))
    for src in range(n):
        for k in range(offsets[src], offsets[src + 1]):
            target = edges[k]
            sources[fill[target]] = src
            fill[target] += 1
    good = bytearray(n)
    queue = deque(i for i in range(n) if terminal[i])
    for i in queue:
        good[i] = 1
    while queue:
        target = queue.popleft()
        for k in range(indegree[target], indegree[target + 1]):
            src = sources[k]
            if not good[src]:
                good[src] = 1
                queue.append(src)
    return [i for i in range(n) if not good[i]]


# --- the command line --------------------------------------------------------


def run_explore(bounds: Bounds = DEFAULT_BOUNDS, out: TextIO | None = None) -> ExploreReport:
    """Explore the real protocol within ``bounds`` and print the figures to ``out``.

    Prints ``states explored: N`` and ``violations: V`` (and each violation
    with its trace).
    """
    report = explore(Model(bounds=bounds))
    print_report(report, out if out is not None else sys.stdout)
    return report


def print_report(report: ExploreReport, out: TextIO) -> None:
    """Write ``report`` as text."""
    b = report.bounds
    print(
        f"bounds: losses={b.losses} duplicates={b.duplicates} backend_faults={b.backend_faults} "
        f"crashes={b.crashes} early_timeouts={b.early_timeouts} forgets={b.forgets} "
        f"adversity={b.adversity} third_host={b.third_host} max_depth={b.max_depth}",
        file=out,
    )
    print(f"states explored: {report.states}", file=out)
    print(f"transitions: {report.transitions}", file=out)
    print(f"terminal states: {report.terminal_states}", file=out)
    print(f"max depth: {report.max_depth}", file=out)
    if report.truncated:
        print(f"not expanded (bound reached): {report.truncated}", file=out)
    print(f"progress checked: {'yes' if report.progress_checked else 'no'}", file=out)
    print(f"time: {report.elapsed:.1f}s", file=out)
    print("end states:", file=out)
    for label, count in report.outcomes.items():
        print(f"  {count:8d}  {label}", file=out)
    print(f"violations: {sum(report.violation_counts.values())}", file=out)
    for kind, count in report.violation_counts.items():
        print(f"  {count:8d}  {kind}", file=out)
    for violation in report.violations:
        print(violation.render(), file=out)


def main_explore(argv: Sequence[str] | None = None) -> int:
    """``actorlock explore``: 0 when no rule was broken, 1 otherwise."""
    parser = argparse.ArgumentParser(
        prog="actorlock explore",
        description="Exhaustively explore the lease migration protocol within bounds.",
    )
    parser.add_argument("--thorough", action="store_true", help="larger budgets (takes minutes)")
    parser.add_argument("--losses", type=int, help="messages the network may lose")
    parser.add_argument("--duplicates", type=int, help="messages the network may duplicate")
    parser.add_argument("--backend-faults", type=int, help="backend calls that may fail")
    parser.add_argument("--crashes", type=int, help="hosts that may crash")
    parser.add_argument("--max-depth", type=int, help="events per path at most")
    parser.add_argument("--early-timeouts", type=int, help="requests that may time out while in flight")
    parser.add_argument("--forgets", type=int, help="finished sides that may forget early")
    parser.add_argument("--adversity", type=int, help="budgeted events of any kind per path")
    parser.add_argument("--no-third-host", action="store_true", help="no third host")
    parser.add_argument("--no-progress-check", action="store_true", help="skip the reachability check")
    args = parser.parse_args(argv)
    bounds = THOROUGH_BOUNDS if args.thorough else DEFAULT_BOUNDS
    changes: dict[str, Any] = {}
    for name in (
        "losses",
        "duplicates",
        "backend_faults",
        "crashes",
        "early_timeouts",
        "forgets",
        "adversity",
        "max_depth",
    ):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.no_third_host:
        changes["third_host"] = False
    if args.no_progress_check:
        changes["check_progress"] = False
    report = run_explore(attrs.evolve(bounds, **changes))
    return 0 if report.ok else 1


__all__ = [
    "DEFAULT_BOUNDS",
    "THOROUGH_BOUNDS",
    "Bounds",
    "ExploreReport",
    "Explorer",
    "Lockspace",
    "Model",
    "Violation",
    "World",
    "clone_machine",
    "explore",
    "machine_key",
    "main_explore",
    "print_report",
    "run_explore",
]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main_explore())
