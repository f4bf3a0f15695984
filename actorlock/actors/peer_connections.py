"""One persistent, authenticated connection per peer host, shared by every migration to it.

A migration used to open its own connection, paying a CURVE handshake each
time. Now the first migration to a peer opens one (endpoint and server key
together name it: a peer that changed its key gets a new connection, checked
with the new key), later ones reuse it, and requests from concurrent
migrations share it (replies are matched by request id). ZeroMQ reconnects a
dropped connection by itself with the same keys; one whose socket was closed
is opened again on next use. Each connection is held by a task in the host's
task group, so it ends with the host.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup, TaskStatus

if TYPE_CHECKING:
    from ..transport.zmq import PeerClient

__all__ = ["PeerConnections"]

Open = Callable[[str, str], AbstractAsyncContextManager["PeerClient"]]


class PeerConnections:
    """The host's connections to its peers, by (endpoint, server key)."""

    def __init__(self, open_connection: Open, task_group: TaskGroup) -> None:
        self._open = open_connection
        self._tg = task_group
        self._clients: dict[tuple[str, str], PeerClient] = {}
        self._opening: dict[tuple[str, str], anyio.Lock] = {}
        self.opened = 0  # connections opened so far (a figure for tests and benchmarks)

    @asynccontextmanager
    async def shared(self, endpoint: str, server_key: str) -> AsyncIterator[PeerClient]:
        """The connection to this peer for the block; it stays open after it."""
        yield await self.get(endpoint, server_key)

    async def get(self, endpoint: str, server_key: str) -> PeerClient:
        key = (endpoint, server_key)
        client = self._clients.get(key)
        if client is not None and client.usable:
            return client
        # One opener per peer: concurrent first migrations share its connection.
        async with self._opening.setdefault(key, anyio.Lock()):
            client = self._clients.get(key)
            if client is None or not client.usable:
                client = await self._tg.start(self._hold, endpoint, server_key, name=f"peer {endpoint}")
            return client

    async def _hold(
        self,
        endpoint: str,
        server_key: str,
        *,
        task_status: TaskStatus[PeerClient] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        key = (endpoint, server_key)
        async with self._open(endpoint, server_key) as client:
            self._clients[key] = client
            self.opened += 1
            task_status.started(client)
            try:
                await anyio.sleep_forever()
            finally:
                if self._clients.get(key) is client:
                    del self._clients[key]
