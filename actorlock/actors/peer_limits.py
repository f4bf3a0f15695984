"""What a host accepts from its peers, and how much of it at once.

Kept apart from the host actor so the rules read in one place: an incoming
migration costs a driver task and a socket (file descriptors) until it
ends, so a peer may keep only so many pending, and an offer with nothing in
it is refused before it costs anything. (Peer requests are authenticated
against host records cached once per renewal: peer_directory.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..errors import ActorlockError, InvalidStateError, PeerRefusedError, ProtocolError
from ..model import LockState, MigrationRole
from ..transport.limits import check_lock_state
from ..transport.ratelimit import LogLimiter

if TYPE_CHECKING:
    from ..config import PeerConfig
    from ..protocol import Prepare
    from .migration import MigrationDriver

log = logging.getLogger(__name__)


def check_offer(offer: LockState) -> None:
    """Refuse, on the source, a lock state no peer would accept.

    Raises:
        InvalidStateError: the guest holds no leases.
        ProtocolError: the lock state does not fit in a migration message.
    """
    if not offer.leases:
        raise InvalidStateError(
            "the guest holds no leases: peers refuse a migration with an empty lock state"
        )
    check_lock_state(offer)


def admit_incoming(message: Prepare, drivers: Iterable[MigrationDriver], config: PeerConfig) -> None:
    """Refuse a PREPARE for a new incoming migration before any driver or socket is made for it.

    Every incoming migration still known (pending, or lingering to answer
    retransmissions) counts: each holds a task and its machine.

    Raises:
        ProtocolError: the lock state is empty, or the PREPARE is numbered below 1.
        PeerRefusedError: the sender, or all peers together, have as many
            incoming migrations as ``[peer] max_incoming_per_peer`` /
            ``max_incoming`` allow.
    """
    if not message.lock_state.leases:
        raise ProtocolError(f"PREPARE from {message.sender} offers an empty lock state")
    if message.seq < 1:
        # The machine would refuse it and stay idle with no timer: a driver that never ends.
        raise ProtocolError(f"PREPARE #{message.seq} from {message.sender}: requests are numbered from 1")
    incoming = [d for d in drivers if d.role is MigrationRole.DESTINATION]
    if len(incoming) >= config.max_incoming:
        raise PeerRefusedError(
            f"{len(incoming)} incoming migrations are pending, the most peer.max_incoming allows"
        )
    from_sender = sum(1 for d in incoming if d.peer_name == message.sender)
    if from_sender >= config.max_incoming_per_peer:
        raise PeerRefusedError(
            f"{from_sender} incoming migrations from {message.sender} are pending, "
            "the most peer.max_incoming_per_peer allows"
        )


class RefusalLog:
    """Warnings about refused peer frames, at a bounded rate: a peer can send them at will."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = LogLimiter(burst=20, interval=10.0, clock=clock)

    def warn(self, host: str, error: ActorlockError) -> None:
        held_back = self._limit.take()
        if held_back is None:
            log.debug("host %s: bad peer frame: %s", host, error)
            return
        more = f" ({held_back} more not logged)" if held_back else ""
        log.warning("host %s: bad peer frame: %s%s", host, error, more)
