"""What a host accepts from its peers, and how much of it at once.

Kept apart from the host actor so the rules read in one place: an incoming
migration costs a driver task and a socket (file descriptors) until it
ends, so a peer may keep only so many pending, and an offer with nothing in
it is refused before it costs anything. Peer requests are authenticated
against host records cached once per renewal, so a flood of requests is
not a flood of lockspace reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import anyio

from ..errors import ActorlockError, InvalidStateError, PeerRefusedError, ProtocolError
from ..model import HostRecord, HostView, LockState, MigrationRole
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


class PeerDirectory:
    """Host records as peers' requests need them, read at most once per renewal.

    ``generation()`` is the host's count of successful renewals: a new one
    means the cache may be stale. A name not found may read again once per
    generation, so a host that joined since is found without waiting, and
    a flood of unknown senders still costs one read per renewal.
    """

    def __init__(self, read: Callable[[], Awaitable[list[HostView]]], generation: Callable[[], int]) -> None:
        self._read = read
        self._generation = generation
        self._records: dict[str, list[HostView]] | None = None
        self._read_at = -1
        self._missed_at = -1
        self._lock = anyio.Lock()
        self.reads = 0

    async def lookup(self, name: str) -> HostRecord | None:
        """The record of the host called ``name``, None if there is none.

        Raises:
            ProtocolError: two hosts use the name (so neither can be trusted).
        """
        generation = self._generation()
        async with self._lock:
            if self._records is None or self._read_at != generation:
                await self._refresh(generation)
            elif name not in (self._records or {}) and self._missed_at != generation:
                self._missed_at = generation
                await self._refresh(generation)
            views = (self._records or {}).get(name, [])
        # An old record under the name (a host that left or died, then came
        # back with another id) does not make the live one ambiguous.
        alive = [v for v in views if v.alive]
        candidates = alive or views
        if len(candidates) > 1:
            ids = ", ".join(str(v.record.id) for v in candidates)
            raise ProtocolError(f"host name {name!r} is used by hosts {ids}: it cannot be trusted")
        return candidates[0].record if candidates else None

    async def _refresh(self, generation: int) -> None:
        views = await self._read()
        self.reads += 1
        records: dict[str, list[HostView]] = {}
        for view in views:
            records.setdefault(view.record.name, []).append(view)
        self._records, self._read_at = records, generation


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
