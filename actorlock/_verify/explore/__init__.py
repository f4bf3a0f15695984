"""Exhaustive exploration of the migration handoff (explicit-state search).

Both sans-I/O machines (:class:`~actorlock.protocol.MigrationSource`,
:class:`~actorlock.protocol.MigrationDestination`) run inside a *world*: a
model lockspace, a lossy network, timers, backend calls in flight, the two
local callers, crashes, and a third host that keeps trying to take the disks.
:func:`explore` visits every world reachable within the :class:`Bounds`,
breadth first with visited-state hashing, checks the safety rules in each,
and reports every violation with a shortest event trace to it.

Split by job: :mod:`.world` (the scenario, bounds, model and worlds as
interned parts), :mod:`.step` (one transition and its effects),
:mod:`.search` (the breadth-first search), :mod:`.rules` (what every world
and every end must satisfy), :mod:`.report` (violations, reports and their
text) and :mod:`.cli` (``actorlock explore``).

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

from ..migration_world import Lockspace, Records, merge
from .cli import main_explore, run_explore
from .report import ExploreReport, Violation, print_report
from .search import Explorer, explore
from .world import (
    DEFAULT_BOUNDS,
    DEST_HOST,
    DOMAIN,
    INITIAL_RECORDS,
    LOCKSPACE_ID,
    LOCKSPACE_KIND,
    MIGRATION_ID,
    ORIGINAL,
    SOURCE_HOST,
    THOROUGH_BOUNDS,
    TIMING,
    Bounds,
    Model,
    World,
    clone_machine,
    machine_key,
)

__all__ = [
    "DEFAULT_BOUNDS",
    "DEST_HOST",
    "DOMAIN",
    "INITIAL_RECORDS",
    "LOCKSPACE_ID",
    "LOCKSPACE_KIND",
    "MIGRATION_ID",
    "ORIGINAL",
    "SOURCE_HOST",
    "THOROUGH_BOUNDS",
    "TIMING",
    "Bounds",
    "ExploreReport",
    "Explorer",
    "Lockspace",
    "Model",
    "Records",
    "Violation",
    "World",
    "clone_machine",
    "explore",
    "machine_key",
    "main_explore",
    "merge",
    "print_report",
    "run_explore",
]
