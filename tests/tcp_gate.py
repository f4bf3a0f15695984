"""A loopback TCP forwarder that a test can cut: one host's network path to one etcd member.

While cut, open connections are closed and new ones are accepted but never
answered (a black hole, as a partition looks to the client: timeouts).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import ByteStream, SocketStream, TaskGroup


class TcpGate:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target`` until :meth:`cut`."""

    def __init__(self, tg: TaskGroup, target: int) -> None:
        self._tg = tg
        self.target = target
        self.port = 0
        self.is_cut = False
        self._scopes: set[anyio.CancelScope] = set()
        self._healed = anyio.Event()
        self._listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self._listener = listener
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self._tg.start_soon(listener.serve, self._handle)

    async def aclose(self) -> None:
        if self._listener is not None:
            await self._listener.aclose()

    def cut(self) -> None:
        self.is_cut = True
        self._healed = anyio.Event()
        for scope in list(self._scopes):
            scope.cancel()

    def heal(self) -> None:
        self.is_cut = False
        self._healed.set()

    async def _handle(self, client: SocketStream) -> None:
        async with client:
            if self.is_cut:
                await self._healed.wait()  # hold the connection, answer nothing
                return
            try:
                upstream = await anyio.connect_tcp("127.0.0.1", self.target)
            except OSError:
                return
            with anyio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    async with upstream, anyio.create_task_group() as tg:
                        tg.start_soon(_pipe, client, upstream, tg.cancel_scope)
                        await _pipe(upstream, client, tg.cancel_scope)
                finally:
                    self._scopes.discard(scope)


async def _pipe(source: ByteStream, sink: ByteStream, scope: anyio.CancelScope) -> None:
    try:
        async for chunk in source:
            await sink.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    scope.cancel()


@asynccontextmanager
async def gates(targets: list[int]) -> AsyncIterator[list[TcpGate]]:
    """One gate per target port, served for the duration of the block."""
    made: list[TcpGate] = []
    try:
        async with anyio.create_task_group() as tg:
            made.extend(TcpGate(tg, port) for port in targets)
            for gate in made:
                await gate.start()
            try:
                yield made
            finally:
                for gate in made:
                    gate.heal()
                tg.cancel_scope.cancel()
    finally:
        # Only once serve() has stopped accepting: closing under it would raise there.
        with anyio.CancelScope(shield=True):
            for gate in made:
                await gate.aclose()
