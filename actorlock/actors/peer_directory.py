"""The lockspace's hosts as this host's migrations need them, read at most once per renewal.

Both directions look peers up here: a peer's request is authenticated by
the sender's record (name, key), and an outgoing migration finds its
destination by the endpoint the caller names. Reading the hosts folder for
each of them put a listing of every host record on every handoff's path
(and let a flood of peer requests become a flood of reads), so the records
are read once per renewal of this host (``generation()``) and kept.

What a cached record may get wrong, and what bounds it:

* a host that joined, or restarted on another endpoint or key, since the
  read: a name or endpoint not found reads again (for a peer's request,
  once per renewal; for a local caller, every time);
* a host that restarted on the same endpoint and key: its PREPARE reply
  names another incarnation than the cached record, so the source reads
  again before it believes it (:meth:`PeerDirectory.confirm`);
* a reply from an incarnation that is dead (a new one joined since):
  ``confirm`` finds the newer record and refuses, so no transfer names it;
* a host that died or left since: the migration gets no answer and is
  cancelled, which drops the cache (:meth:`PeerDirectory.invalidate`).

Every read is bounded by ``io_timeout``: a stalled lockspace fails the
lookup (BackendTimeoutError) and releases the directory for the next one.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from ..errors import BackendTimeoutError, ProtocolError
from ..model import HostRecord, HostState, HostView

__all__ = ["PeerDirectory"]

T = TypeVar("T")


class _Miss(enum.Enum):
    """Whose lookup found nothing in the cached records: it decides whether they are read again."""

    LOCAL = "local"  # a migration this host starts: read again every time
    SENDER = "sender"  # a peer's name: once per renewal, whatever names peers send
    INCARNATION = "incarnation"  # a peer's PREPARE reply to confirm: once per renewal


class PeerDirectory:
    """Host records by name and by peer endpoint, read at most once per renewal (plus misses).

    Args:
        read: reads every host record of the lockspace, judged by this host.
        generation: this host's count of successful renewals; a new one
            means the cached records may be stale.
        io_timeout: the longest one read may take.
    """

    def __init__(
        self,
        read: Callable[[], Awaitable[list[HostView]]],
        generation: Callable[[], int],
        *,
        io_timeout: float,
    ) -> None:
        self._read = read
        self._generation = generation
        self._io_timeout = io_timeout
        self._by_name: dict[str, list[HostView]] | None = None
        self._by_endpoint: dict[str, list[HostView]] = {}
        self._read_at = -1
        self._missed_at: dict[_Miss, int] = {}  # the renewal in which each kind of miss last read again
        self._lock = anyio.Lock()
        self.reads = 0  # reads of the hosts folder so far (a figure for tests and benchmarks)

    async def lookup(self, name: str) -> HostRecord | None:
        """The record of the host called ``name`` (a peer's request's sender), None if there is none.

        A name not found reads again at most once per renewal: peers choose
        the names they send.

        Raises:
            ProtocolError: two hosts use the name (so neither can be trusted).
            BackendTimeoutError: reading the records took longer than io_timeout.
        """
        views = await self._cached(lambda: (self._by_name or {}).get(name), miss=_Miss.SENDER)
        # An old record under the name (a host that left or died, then came
        # back with another id) does not make the live one ambiguous.
        alive = [v for v in views or [] if v.alive]
        candidates = alive or views or []
        if len(candidates) > 1:
            ids = ", ".join(str(v.record.id) for v in candidates)
            raise ProtocolError(f"host name {name!r} is used by hosts {ids}: it cannot be trusted")
        return candidates[0].record if candidates else None

    async def at_endpoint(self, endpoint: str) -> HostRecord | None:
        """The live host advertising peer endpoint ``endpoint``, None if none does.

        For a local caller (a migration this host starts): a miss reads
        again every time, so a peer that restarted on a new endpoint is
        found at once.

        Raises:
            BackendTimeoutError: reading the records took longer than io_timeout.
        """
        return await self._cached(lambda: _live(self._by_endpoint.get(endpoint, [])), miss=_Miss.LOCAL)

    async def confirm(self, name: str, host_id: int, incarnation: str) -> bool:
        """Whether host ``name`` (id ``host_id``) is alive as ``incarnation``: a peer's PREPARE reply.

        The cached record answers when it agrees; otherwise the records are
        read again, at most once per renewal (a peer that answers from a
        dead incarnation would otherwise cost a read per retry).

        Raises:
            BackendTimeoutError: reading the records took longer than io_timeout.
        """

        def shown() -> bool | None:
            views = (self._by_name or {}).get(name, [])
            return (
                any(v.alive and v.record.id == host_id and v.record.incarnation == incarnation for v in views)
                or None
            )

        return bool(await self._cached(shown, miss=_Miss.INCARNATION))

    def invalidate(self) -> None:
        """Forget the records: the next lookup reads them again (a migration found no one there)."""
        self._by_name = None
        self._by_endpoint = {}

    def _stale(self, generation: int) -> bool:
        return self._by_name is None or self._read_at != generation

    async def _cached(self, find: Callable[[], T | None], *, miss: _Miss) -> T | None:
        """``find()`` in this renewal's records; on a ``miss``, in records read again if it may."""
        generation = self._generation()
        async with self._lock:
            fresh = self._stale(generation)
            if fresh:
                await self._refresh(generation)
            found = find()
            if found is None and not fresh and self._may_read_again(miss, generation):
                await self._refresh(generation)
                found = find()
        return found

    def _may_read_again(self, miss: _Miss, generation: int) -> bool:
        if miss is _Miss.LOCAL:
            return True
        if self._missed_at.get(miss) == generation:
            return False
        self._missed_at[miss] = generation
        return True

    async def _refresh(self, generation: int) -> None:
        views: list[HostView] = []
        with anyio.move_on_after(self._io_timeout) as scope:
            views = await self._read()
        if scope.cancelled_caught:
            raise BackendTimeoutError(f"reading the host records took over io_timeout={self._io_timeout}s")
        self.reads += 1
        by_name: dict[str, list[HostView]] = {}
        by_endpoint: dict[str, list[HostView]] = {}
        for view in views:
            by_name.setdefault(view.record.name, []).append(view)
            if view.record.peer_endpoint:
                by_endpoint.setdefault(view.record.peer_endpoint, []).append(view)
        self._by_name, self._by_endpoint, self._read_at = by_name, by_endpoint, generation


def _live(views: list[HostView]) -> HostRecord | None:
    """The first (lowest id) record of a host judged alive and not left, if any."""
    for view in views:
        if view.alive and view.record.state is HostState.LIVE:
            return view.record
    return None
