"""The driver's handles on host processes, and the stall helper that holds lock files from outside."""

from __future__ import annotations

import itertools
import json
import signal
from collections.abc import (
    Mapping,
)
from contextlib import suppress
from typing import Any

import anyio
import anyio.abc
import attrs
from anyio.streams.buffered import BufferedByteReceiveStream

from .settings import CALL_TIMEOUT, MAX_LINE

# --- the stall helper: holds lock files from outside ----------------------------------------

# Run with ``python -I -c``: it imports nothing of ours, so it starts in tens of milliseconds.
# argv: the seconds after which it exits whatever happens, then the lock files in the order to
# take them (the host's liveness lock, then the lease locks sorted by key: the backend's own
# order, so that it cannot deadlock with a host's operation). It takes the same locks the file
# backend takes (OFD write locks on the whole file, or flock where the kernel lacks them),
# says "held", and keeps them until its stdin closes or it is killed: the locks die with it.
STALL_HELPER = r"""
import errno, fcntl, os, signal, struct, sys
signal.alarm(int(float(sys.argv[1])) + 1)
setlkw = getattr(fcntl, "F_OFD_SETLKW", 38 if sys.platform.startswith("linux") else None)
whole = struct.pack("hhqqi0q", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
fds = []
for path in sys.argv[2:]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fds.append(fd)
    try:
        if setlkw is None:
            raise OSError(errno.EINVAL, "no OFD locks")
        fcntl.fcntl(fd, setlkw, whole)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        setlkw = None
        fcntl.flock(fd, fcntl.LOCK_EX)
sys.stdout.write("held\n")
sys.stdout.flush()
sys.stdin.buffer.read()
"""


# --- the driver: host processes under control -------------------------------------------


class HostGone(Exception):
    """The host process died (or was killed) before answering."""


class HostOpError(Exception):
    """An op failed inside a host process."""

    def __init__(self, op: str, reply: Mapping[str, Any]) -> None:
        super().__init__(f"{op}: {reply.get('error')}: {reply.get('message')}")
        self.op = op
        self.kinds = tuple(reply.get("kinds", ()))
        self.kind = str(reply.get("error", ""))
        self.resource = str(reply.get("resource", ""))

    def is_a(self, name: str) -> bool:
        return name in self.kinds


@attrs.define
class _Reply:
    done: anyio.Event = attrs.Factory(anyio.Event)
    message: dict[str, Any] | None = None


class HostProcess:
    """The driver's handle on one host process (a standby until it becomes a host)."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.name = ""
        self.endpoint = ""
        self.incarnation = ""
        self.resumed = False
        self.failure = ""
        self.gone = False
        self.fenced: set[str] = set()  # guests its coordinator fenced, reported as they happen
        self._standby = anyio.Event()
        self._ready = anyio.Event()  # set on ready, on failure and on exit
        self._pending: dict[int, _Reply] = {}
        self._ids = itertools.count(1)
        self._send_lock = anyio.Lock()  # trio's pipe streams refuse concurrent senders

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ready(self) -> bool:
        return bool(self.endpoint) and not self.gone

    async def read_loop(self) -> None:
        assert self.process.stdout is not None
        stream = BufferedByteReceiveStream(self.process.stdout)
        try:
            while True:
                message = json.loads(await stream.receive_until(b"\n", MAX_LINE))
                event = message.get("event")
                if event == "standby":
                    self._standby.set()
                elif event == "ready":
                    self.endpoint = str(message["endpoint"])
                    self.incarnation = str(message["incarnation"])
                    self.resumed = bool(message["resumed"])
                    self._ready.set()
                elif event == "failed":
                    self.failure = f"{message.get('error')}: {message.get('message')}"
                    self._ready.set()
                elif event == "guest_stopped":
                    self.fenced.add(str(message["uuid"]))
                else:
                    pending = self._pending.get(message.get("id"))
                    if pending is not None:
                        pending.message = message
                        pending.done.set()
        except (
            anyio.IncompleteRead,
            anyio.EndOfStream,
            anyio.ClosedResourceError,
            anyio.BrokenResourceError,
            ValueError,
        ):
            pass
        finally:
            self.gone = True  # whoever still waits learns that no answer will come
            self._standby.set()
            self._ready.set()
            for pending in self._pending.values():
                pending.done.set()

    async def _send(self, message: Mapping[str, Any]) -> None:
        if self.gone:
            raise HostGone(f"process {self.pid} ({self.name or 'standby'}) has exited")
        try:
            async with self._send_lock:
                assert self.process.stdin is not None
                await self.process.stdin.send((json.dumps(message) + "\n").encode())
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            raise HostGone(f"process {self.pid} ({self.name or 'standby'}) stopped reading") from None

    async def wait_standby(self, limit: float) -> None:
        with anyio.fail_after(limit):
            await self._standby.wait()
        if self.gone:
            raise HostGone(f"standby process {self.pid} exited")

    async def become(self, name: str, spec: Mapping[str, Any]) -> None:
        self.name = name
        await self._send(spec)

    async def wait_ready(self, limit: float) -> None:
        """Wait until the host joined; raise HostGone if it failed or exited, TimeoutError if slow."""
        with anyio.fail_after(limit):
            await self._ready.wait()
        if not self.ready:
            raise HostGone(f"host {self.name} did not start: {self.failure or 'the process exited'}")

    async def call(self, op: str, *, limit: float = CALL_TIMEOUT, **args: Any) -> dict[str, Any]:
        """Run ``op`` in the host and return its result.

        Raises:
            HostOpError: the op failed there.
            HostGone: the process died before answering.
            TimeoutError: no answer within ``limit``.
        """
        request_id = next(self._ids)
        pending = self._pending[request_id] = _Reply()
        try:
            with anyio.fail_after(limit):
                await self._send({"id": request_id, "op": op, "args": args})
                await pending.done.wait()
        finally:
            del self._pending[request_id]
        reply = pending.message
        if reply is None:
            raise HostGone(f"host {self.name} died during {op}")
        if not reply.get("ok"):
            raise HostOpError(op, reply)
        result: dict[str, Any] = reply["result"]
        return result

    def signal(self, sig: signal.Signals) -> None:
        if self.process.returncode is None:
            with suppress(ProcessLookupError):
                self.process.send_signal(sig)

    async def kill(self) -> None:
        """SIGKILL and reap (nothing is released or left: a crash)."""
        with anyio.CancelScope(shield=True):
            self.signal(signal.SIGKILL)
            await self.process.wait()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            self.signal(signal.SIGKILL)
            # SIGCONT too: a stopped process does not die of SIGKILL any slower, but be plain about it.
            self.signal(signal.SIGCONT)
            await self.process.aclose()
