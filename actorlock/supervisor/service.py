"""The coordinator's side of guest supervision: the control socket and the deadline pushes.

One per host coordinator (when ``host.state_dir`` is set: the socket is
``STATE_DIR/supervisor.sock``). Each guest's supervisor
(:mod:`actorlock.supervisor.shim`) connects, is welcomed with the current
lease deadline and the failure action, and gets a new deadline after every
successful renewal (:meth:`SupervisorService.renewed`, called from the
renew loop; it never waits: each connection has its own small outbox and
writer task, and a supervisor that stops reading is disconnected, keeping
its last deadline). A supervisor that reconnects (after a coordinator
restart) is welcomed with the new process's deadline.

Connections are accepted only from processes of this user (SO_PEERCRED),
whose pid is the supervisor pid they claim.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Final

import anyio
import attrs
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from ..errors import ActorlockError, ProtocolError, SupervisorError
from . import wire
from .messages import Deadline, Exited, Fence, Hello, Message, Release, Started, Welcome, decode, encode

__all__ = ["SOCKET_NAME", "SupervisedGuest", "SupervisorService"]

log = logging.getLogger(__name__)

SOCKET_NAME: Final = "supervisor.sock"
HELLO_TIMEOUT: Final = 5.0  # a connection that names no guest in this time is dropped
SEND_TIMEOUT: Final = 1.0  # one frame to one supervisor; past it the connection is dropped
OUTBOX: Final = 8  # frames queued for one supervisor before it counts as not reading
_SUN_PATH_MAX: Final = 100


@attrs.define
class SupervisedGuest:
    """What the coordinator knows of one supervised guest (by domain uuid)."""

    uuid: str
    supervisor_pid: int
    guest_pid: int = 0
    guest_start: int = 0
    connected: bool = True
    released: bool = False
    exit_status: int | None = None
    fenced: str = ""


class _Link:
    """One supervisor connection: a bounded outbox that never makes the sender wait."""

    def __init__(self) -> None:
        self.send, self.receive = anyio.create_memory_object_stream[bytes](OUTBOX)
        self.broken = False

    def push(self, message: Message) -> None:
        if self.broken:
            return
        try:
            self.send.send_nowait(encode(message))
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.broken = True  # not reading: its writer task closes the connection
            self.send.close()


class SupervisorService:
    """Accepts supervisor connections and pushes deadlines to them.

    Args:
        state_dir: where the control socket lives.
        host: the host's name, for logs.
        expires_at: the coordinator's current lease deadline on the host clock
            (a time in the past while its lockspace is lost).
        action: the failure action the supervisors run ("poweroff", "pause", "ignore").
        kill_grace: SIGTERM to SIGKILL.
        fence_timeout: for the supervisors' logs; kill_grace is below it.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str,
        expires_at: Callable[[], float],
        action: str,
        kill_grace: float,
        fence_timeout: float,
    ) -> None:
        self.path = state_dir / SOCKET_NAME
        self._host = host
        self._expires_at = expires_at
        self._action = action
        self._kill_grace = kill_grace
        self._fence_timeout = fence_timeout
        self._guests: dict[str, SupervisedGuest] = {}
        self._links: dict[str, _Link] = {}
        self._failed: dict[str, str] = {}  # uuid -> why its supervisor ended before starting the guest
        self._changed = anyio.Event()
        self.serving = False

    # -- what the coordinator tells -------------------------------------------

    def args(self, uuid: str, *, detach: bool = False) -> list[str]:
        """The supervisor's arguments for domain ``uuid``; the guest's argv follows them."""
        return ["--control", str(self.path), "--uuid", uuid, *(["--detach"] if detach else []), "--"]

    def renewed(self, expires_at: float) -> None:
        """After a successful renewal: every armed supervisor's new deadline (never waits)."""
        for uuid, link in self._links.items():
            guest = self._guests.get(uuid)
            if guest is not None and not guest.released:
                link.push(Deadline(expires_at))

    def fence(self, uuid: str, reason: str) -> SupervisedGuest | None:
        """Ask ``uuid``'s supervisor to run the failure action now; its guest, if one is known."""
        link = self._links.get(uuid)
        if link is not None:
            link.push(Fence(reason))
        guest = self._guests.get(uuid)
        return guest if guest is not None and guest.guest_pid else None

    def release(self, uuid: str) -> None:
        """The guest's leases moved away (migration committed): its supervisor drops the deadline."""
        guest = self._guests.get(uuid)
        if guest is not None:
            guest.released = True
        link = self._links.get(uuid)
        if link is not None:
            link.push(Release())

    def guest(self, uuid: str) -> SupervisedGuest | None:
        return self._guests.get(uuid)

    async def wait_child(self, uuid: str, *, within: float) -> SupervisedGuest:
        """The guest of ``uuid``'s supervisor once it runs; SupervisorError if the supervisor
        ends first or nothing registers ``within`` seconds."""
        with anyio.move_on_after(within):
            while True:
                guest = self._guests.get(uuid)
                if guest is not None and guest.guest_pid:
                    return guest
                failed = self._failed.get(uuid)
                if failed is not None:
                    raise SupervisorError(f"the supervisor of domain {uuid} {failed}")
                await self._changed.wait()
        raise SupervisorError(
            f"no supervisor registered a guest for domain {uuid} within {within:.1f}s "
            f"(control socket {self.path})"
        )

    # -- serving -------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen on the control socket until cancelled (run in the host's task group)."""
        path = str(self.path)
        dirfd = -1
        if len(path) > _SUN_PATH_MAX:
            # sun_path holds ~108 bytes: bind through our own descriptor of the directory.
            dirfd = await anyio.to_thread.run_sync(os.open, str(self.path.parent), os.O_PATH | os.O_CLOEXEC)
            path = f"/proc/self/fd/{dirfd}/{SOCKET_NAME}"
        try:
            listener = await anyio.create_unix_listener(path, mode=0o600)
        finally:
            if dirfd >= 0:
                os.close(dirfd)
        self.serving = True
        task_status.started()
        try:
            async with listener, anyio.create_task_group() as tg:
                await listener.serve(self._connection, task_group=tg)
        finally:
            self.serving = False
            for guest in self._guests.values():
                guest.connected = False

    async def _connection(self, stream: SocketStream) -> None:
        async with stream:
            try:
                await self._converse(stream)
            except (
                ActorlockError,
                anyio.EndOfStream,
                anyio.BrokenResourceError,
                OSError,
                TimeoutError,
            ) as exc:
                log.warning("host %s: supervisor connection ended: %r", self._host, exc)

    async def _converse(self, stream: SocketStream) -> None:
        peer_pid = _peer_pid(stream)
        frames = wire.FrameBuffer()
        pending: list[Message] = []
        with anyio.fail_after(HELLO_TIMEOUT):
            while not pending:
                pending = await _read(stream, frames)
        hello = pending.pop(0)
        if not isinstance(hello, Hello):
            raise ProtocolError(f"a supervisor must say hello first, got {hello!r}")
        if peer_pid is not None and peer_pid != hello.supervisor_pid:
            raise ProtocolError(f"supervisor pid {hello.supervisor_pid} is not the peer's pid {peer_pid}")
        uuid = hello.uuid
        known = self._guests.get(uuid)
        guest = SupervisedGuest(uuid, hello.supervisor_pid, hello.guest_pid, hello.guest_start)
        if known is not None and known.guest_pid == hello.guest_pid:
            guest.released = known.released
        self._guests[uuid] = guest
        self._failed.pop(uuid, None)
        link = _Link()
        old = self._links.get(uuid)
        if old is not None:
            old.broken = True
            old.send.close()
        self._links[uuid] = link
        link.push(
            Welcome(
                expires_at=self._expires_at(),
                action=self._action,
                kill_grace=self._kill_grace,
                fence_timeout=self._fence_timeout,
            )
        )
        if guest.released:
            link.push(Release())
        self._notify()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._write, stream, link, tg.cancel_scope)
                await self._read_all(stream, frames, guest, pending)
                tg.cancel_scope.cancel()
        finally:
            link.send.close()
            if self._links.get(uuid) is link:
                del self._links[uuid]
                guest.connected = False
                if not guest.guest_pid:
                    self._failed[uuid] = "exited before starting its guest"
                self._notify()

    async def _read_all(
        self, stream: SocketStream, frames: wire.FrameBuffer, guest: SupervisedGuest, pending: list[Message]
    ) -> None:
        """Until the supervisor hangs up or breaks the protocol (errors end here, not in a group)."""
        try:
            for message in pending:
                self._received(guest, message)
            while True:
                for message in await _read(stream, frames):
                    self._received(guest, message)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        except (ProtocolError, OSError) as exc:
            log.warning("host %s: dropping the supervisor of %s: %r", self._host, guest.uuid, exc)

    async def _write(self, stream: SocketStream, link: _Link, scope: anyio.CancelScope) -> None:
        try:
            async with link.receive:
                async for frame in link.receive:
                    with anyio.fail_after(SEND_TIMEOUT):
                        await stream.send(frame)
        except (TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            log.warning("host %s: a supervisor stopped taking messages: %r", self._host, exc)
        finally:
            scope.cancel()  # not reading, replaced, or gone: end the connection

    def _received(self, guest: SupervisedGuest, message: Message) -> None:
        if isinstance(message, Started):
            guest.guest_pid, guest.guest_start = message.guest_pid, message.guest_start
            log.info("host %s: domain %s runs as pid %d", self._host, guest.uuid, message.guest_pid)
        elif isinstance(message, Exited):
            guest.exit_status, guest.fenced = message.status, message.fenced
            log.info("host %s: guest of domain %s exited (%d)", self._host, guest.uuid, message.status)
        else:
            raise ProtocolError(f"unexpected message from a supervisor: {message!r}")
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


async def _read(stream: SocketStream, frames: wire.FrameBuffer) -> list[Message]:
    data = await stream.receive(wire.MAX_FRAME)
    try:
        return [decode(body) for body in frames.feed(data)]
    except wire.WireError as exc:
        raise ProtocolError(f"supervisor frame: {exc}") from None


def _peer_pid(stream: SocketStream) -> int | None:
    """The connecting process's pid; refuses another user's process (SO_PEERCRED)."""
    raw = stream.extra(SocketAttribute.raw_socket, None)
    if raw is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    pid, uid, _gid = struct.unpack("3i", raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid not in (os.getuid(), 0):
        raise ProtocolError(f"a process of uid {uid} may not supervise this host's guests")
    return int(pid)
