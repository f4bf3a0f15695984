"""States and transitions of the lease migration protocol.

The rules
=========

Two coordinators move one domain's leases: the SOURCE (the guest runs here
and its leases are recorded here) and the DESTINATION. The commit is one
compare-and-swap in the lease backend, ``transfer``: every lease of the
domain moves from the source's holder entry to the destination's, the
source's tokens are checked and fresh ones issued, atomically. So at every
instant exactly one host is the recorded owner, and "did it commit?" always
has an answer in the backend, which is the truth; no side ever guesses.

The SOURCE performs the transfer. Why the source:

* It is the recorded owner and holds the tokens the swap compares against.
* It is the single decider. The transfer happens only on the source, so once
  the source has decided to cancel (its caller said so, the destination
  refused or vanished, the deadline passed) no commit can follow: every
  source-side failure is settled without the peer's word, and the source
  keeps its leases.
* Deadlines travel from source to destination as *remaining seconds*,
  measured by the receiver on arrival, so the destination's deadline always
  falls at or after the source's. The source starts no transfer later than
  ``deadline - transfer_margin`` (the margin bounds one backend call), so
  when the destination's deadline passes the backend already holds the final
  outcome, and one query settles the only case where the destination could
  be in doubt: it said "commit" and never heard back.

Flow: the source sends PREPARE carrying the lock state; the destination
checks it against the backend (VerifyLeases) and accepts or refuses. Each
side's local caller then says commit (complete_migrate_in(0)) or cancel
(complete_migrate_in(CANCEL)), in either order. The destination's "commit"
becomes a COMMIT request; the source answers it once it has decided: when
its own caller also said commit it runs TransferLeases and answers
COMMITTED with the new leases; when it cancelled it answers CANCELLED. A side
waiting for the other's word waits until its deadline at most.

Rules every event obeys:

* A local event that the table does not allow in the current state raises
  IllegalEventError and changes nothing.
* A peer request is always answered: by the table's transition, or, when it
  does not change the state, from the state (duplicates get the same final
  answer as the first; a request still being decided is deferred and the
  later Reply answers every copy). A response that answers nothing we are
  waiting for is discarded.
* Requests carry their sender's number; a number lower than one already seen
  from that peer (and not a retransmission) is stale: ErrorReply, no change.
  So are a wrong migration id, a wrong sender and another protocol version.
* Results of backend effects no longer awaited (the state moved on) are
  ignored; results never asked for are illegal.
* Timers not armed are ignored when fired. RETRY, io_failed and a failed
  backend query never change the state; they only resend or re-ask.
* Failure outcomes: a refusal or no answer to PREPARE leaves the source owning
  everything; a destination that never commits makes the source cancel at
  its deadline; a source that vanishes makes the destination's pending
  migration expire (asking the backend first if it had said commit); an
  unclear transfer result makes the source ask the backend; cancel after the
  commit is answered with MigrationCommittedError.

The tables below list, per role, every (state, event) pair that is allowed
and the state it leads to. The machines in ``machine.py`` compute effects;
the tables decide legality and the next state.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final


class SourceState(enum.Enum):
    IDLE = "idle"  # created, prepare_migrate not called yet
    PREPARING = "preparing"  # PREPARE sent, no answer yet
    PREPARED = "prepared"  # destination accepted; nobody said commit yet
    LOCAL_AGREED = "local-agreed"  # our caller said commit; waiting for the destination's COMMIT
    PEER_AGREED = "peer-agreed"  # the destination said commit; waiting for our caller
    TRANSFERRING = "transferring"  # the backend transfer is running
    CHECKING = "checking"  # the transfer's outcome was unclear; asking the backend
    COMMITTED = "committed"  # leases moved to the destination
    CANCELLED = "cancelled"  # leases stay here
    REFUSED = "refused"  # destination refused PREPARE; leases stay here
    FAILED = "failed"  # after a failed transfer neither side holds every lease


class DestinationState(enum.Enum):
    IDLE = "idle"  # created for an incoming PREPARE not handled yet
    VERIFYING = "verifying"  # checking the lock state against the backend
    PREPARED = "prepared"  # verified and accepted; waiting for our caller
    COMMITTING = "committing"  # our caller said commit; COMMIT sent, waiting for the source
    CHECKING = "checking"  # expired after saying commit; asking the backend
    COMMITTED = "committed"  # the leases are ours
    CANCELLED = "cancelled"  # cancelled by either side
    REFUSED = "refused"  # we refused PREPARE
    EXPIRED = "expired"  # the deadline passed without a commit
    FAILED = "failed"  # expired, and neither side holds every lease


class Event(enum.Enum):
    # local API calls
    START = "start"  # source: prepare_migrate
    COMMIT_CALL = "commit-call"  # complete_migrate_in(0)
    CANCEL_CALL = "cancel-call"  # complete_migrate_in(CANCEL)
    # peer messages
    PEER_PREPARE = "peer-prepare"  # a PREPARE we can check
    PEER_PREPARE_BAD = "peer-prepare-bad"  # a PREPARE refused on sight (lockspace, deadline)
    PREPARE_ACCEPTED = "prepare-accepted"  # PREPARE_REPLY
    PREPARE_REFUSED = "prepare-refused"  # REFUSE, or an error answering PREPARE
    PEER_COMMIT = "peer-commit"  # COMMIT
    PEER_CANCEL = "peer-cancel"  # CANCEL
    COMMIT_ACCEPTED = "commit-accepted"  # COMMIT_REPLY(COMMITTED)
    COMMIT_REFUSED = "commit-refused"  # COMMIT_REPLY(CANCELLED)
    # backend results
    VERIFIED = "verified"
    VERIFY_FAILED = "verify-failed"
    TRANSFER_OK = "transfer-ok"
    TRANSFER_FAILED = "transfer-failed"  # conflict or unknown outcome: ask the backend
    OWNER_SOURCE = "owner-source"
    OWNER_DESTINATION = "owner-destination"
    OWNER_NEITHER = "owner-neither"
    # timers
    PREPARE_TIMEOUT = "prepare-timeout"
    DEADLINE = "deadline"
    EXPIRY = "expiry"


LOCAL_EVENTS: Final = frozenset(
    {
        Event.START,
        Event.COMMIT_CALL,
        Event.CANCEL_CALL,
        Event.VERIFIED,
        Event.VERIFY_FAILED,
        Event.TRANSFER_OK,
        Event.TRANSFER_FAILED,
        Event.OWNER_SOURCE,
        Event.OWNER_DESTINATION,
        Event.OWNER_NEITHER,
    }
)

S = SourceState
D = DestinationState
E = Event

SOURCE_TRANSITIONS: Final[Mapping[SourceState, Mapping[Event, SourceState]]] = {
    S.IDLE: {E.START: S.PREPARING},
    S.PREPARING: {
        E.PREPARE_ACCEPTED: S.PREPARED,
        E.PREPARE_REFUSED: S.REFUSED,
        E.PEER_COMMIT: S.PEER_AGREED,  # COMMIT overtook a lost PREPARE_REPLY
        E.PEER_CANCEL: S.CANCELLED,
        E.CANCEL_CALL: S.CANCELLED,
        E.PREPARE_TIMEOUT: S.CANCELLED,
        E.DEADLINE: S.CANCELLED,
    },
    S.PREPARED: {
        E.COMMIT_CALL: S.LOCAL_AGREED,
        E.CANCEL_CALL: S.CANCELLED,
        E.PEER_COMMIT: S.PEER_AGREED,
        E.PEER_CANCEL: S.CANCELLED,
        E.DEADLINE: S.CANCELLED,
    },
    S.LOCAL_AGREED: {
        E.PEER_COMMIT: S.TRANSFERRING,
        E.PEER_CANCEL: S.CANCELLED,
        E.DEADLINE: S.CANCELLED,
    },
    S.PEER_AGREED: {
        E.COMMIT_CALL: S.TRANSFERRING,
        E.CANCEL_CALL: S.CANCELLED,
        E.PEER_COMMIT: S.PEER_AGREED,  # retransmission: still deferred
        E.PEER_CANCEL: S.CANCELLED,
        E.DEADLINE: S.CANCELLED,
    },
    S.TRANSFERRING: {
        E.TRANSFER_OK: S.COMMITTED,
        E.TRANSFER_FAILED: S.CHECKING,
        E.PEER_COMMIT: S.TRANSFERRING,  # deferred until the transfer returns
        E.PEER_CANCEL: S.TRANSFERRING,  # likewise
        E.DEADLINE: S.TRANSFERRING,  # too late to stop it: the backend decides
    },
    S.CHECKING: {
        E.OWNER_DESTINATION: S.COMMITTED,
        E.OWNER_SOURCE: S.CANCELLED,
        E.OWNER_NEITHER: S.FAILED,
        E.PEER_COMMIT: S.CHECKING,
        E.PEER_CANCEL: S.CHECKING,
        E.DEADLINE: S.CHECKING,
    },
    # Final states answer repeated calls and requests from the outcome.
    S.COMMITTED: {
        E.COMMIT_CALL: S.COMMITTED,
        E.CANCEL_CALL: S.COMMITTED,  # refused: MigrationCommittedError
        E.PEER_COMMIT: S.COMMITTED,
        E.PEER_CANCEL: S.COMMITTED,
    },
    S.CANCELLED: {
        E.COMMIT_CALL: S.CANCELLED,
        E.CANCEL_CALL: S.CANCELLED,
        E.PEER_COMMIT: S.CANCELLED,
        E.PEER_CANCEL: S.CANCELLED,
    },
    S.REFUSED: {
        E.COMMIT_CALL: S.REFUSED,
        E.CANCEL_CALL: S.REFUSED,
        E.PEER_COMMIT: S.REFUSED,
        E.PEER_CANCEL: S.REFUSED,
    },
    S.FAILED: {
        E.COMMIT_CALL: S.FAILED,
        E.CANCEL_CALL: S.FAILED,
        E.PEER_COMMIT: S.FAILED,
        E.PEER_CANCEL: S.FAILED,
    },
}

DESTINATION_TRANSITIONS: Final[Mapping[DestinationState, Mapping[Event, DestinationState]]] = {
    D.IDLE: {E.PEER_PREPARE: D.VERIFYING, E.PEER_PREPARE_BAD: D.REFUSED},
    D.VERIFYING: {
        E.VERIFIED: D.PREPARED,
        E.VERIFY_FAILED: D.REFUSED,
        E.PEER_PREPARE: D.VERIFYING,  # retransmission: deferred until verified
        E.PEER_CANCEL: D.CANCELLED,
        E.CANCEL_CALL: D.CANCELLED,
        E.EXPIRY: D.EXPIRED,
    },
    D.PREPARED: {
        E.COMMIT_CALL: D.COMMITTING,
        E.CANCEL_CALL: D.CANCELLED,
        E.PEER_PREPARE: D.PREPARED,
        E.PEER_CANCEL: D.CANCELLED,
        E.EXPIRY: D.EXPIRED,  # we never said commit: nothing can have moved
    },
    D.COMMITTING: {
        E.COMMIT_ACCEPTED: D.COMMITTED,
        E.COMMIT_REFUSED: D.CANCELLED,
        E.PEER_PREPARE: D.COMMITTING,
        E.PEER_CANCEL: D.CANCELLED,  # the source decided: it will never transfer
        E.EXPIRY: D.CHECKING,  # the source may have committed: ask the backend
    },
    D.CHECKING: {
        E.OWNER_DESTINATION: D.COMMITTED,
        E.OWNER_SOURCE: D.EXPIRED,
        E.OWNER_NEITHER: D.FAILED,
        E.COMMIT_ACCEPTED: D.COMMITTED,  # a late answer from the source is as good
        E.COMMIT_REFUSED: D.CANCELLED,
        E.PEER_PREPARE: D.CHECKING,
        E.PEER_CANCEL: D.CANCELLED,
    },
    D.COMMITTED: {
        E.COMMIT_CALL: D.COMMITTED,
        E.CANCEL_CALL: D.COMMITTED,  # refused: MigrationCommittedError
        E.PEER_PREPARE: D.COMMITTED,
        E.PEER_CANCEL: D.COMMITTED,
    },
    D.CANCELLED: {
        E.COMMIT_CALL: D.CANCELLED,
        E.CANCEL_CALL: D.CANCELLED,
        E.PEER_PREPARE: D.CANCELLED,
        E.PEER_CANCEL: D.CANCELLED,
    },
    D.REFUSED: {
        E.COMMIT_CALL: D.REFUSED,
        E.CANCEL_CALL: D.REFUSED,
        E.PEER_PREPARE: D.REFUSED,
        E.PEER_CANCEL: D.REFUSED,
    },
    D.EXPIRED: {
        E.COMMIT_CALL: D.EXPIRED,
        E.CANCEL_CALL: D.EXPIRED,
        E.PEER_PREPARE: D.EXPIRED,
        E.PEER_CANCEL: D.EXPIRED,
    },
    D.FAILED: {
        E.COMMIT_CALL: D.FAILED,
        E.CANCEL_CALL: D.FAILED,
        E.PEER_PREPARE: D.FAILED,
        E.PEER_CANCEL: D.FAILED,
    },
}

SOURCE_FINAL: Final = frozenset({S.COMMITTED, S.CANCELLED, S.REFUSED, S.FAILED})
DESTINATION_FINAL: Final = frozenset({D.COMMITTED, D.CANCELLED, D.REFUSED, D.EXPIRED, D.FAILED})
