"""What the explorer explores: the fixed scenario, the bounds, the model, and worlds as interned parts.

See the package docstring for the world's parts and the state-key reductions.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable, Hashable
from typing import Any, Generic, NamedTuple, TypeVar, cast

import attrs

from ...model import (
    DomainIdentity,
    Holder,
    HostIdentity,
    Lease,
    LeaseMode,
    LeaseRecord,
    LeaseRequest,
    LockState,
)
from ...protocol import (
    Call,
    Message,
    MigrationDestination,
    MigrationSource,
    Outcome,
    Prepare,
    QueryBackend,
    Request,
    Response,
    Timer,
    Timing,
    TransferLeases,
    VerifyLeases,
    lease_owner,
)
from ..migration_world import Lockspace, Machine, Records

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
            (see :meth:`Step.quiesce`); False explores every order of them.
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
    settled: bool  # only noise was left, and it was played out (see Step.quiesce)


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


class Problem(NamedTuple):
    kind: str
    detail: str


def event_int(value: object) -> int:
    """An event tuple's item that is a number (a part's number, an index)."""
    assert isinstance(value, int)
    return value


def event_number(value: object) -> float:
    """An event tuple's item that is a time."""
    assert isinstance(value, int | float)
    return float(value)
