"""The driver's handles on host processes, and the stall helper that holds lock files from outside."""

from __future__ import annotations

import itertools
import json
import os
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

from ...guest import is_running_sync
from .settings import CALL_TIMEOUT, MAX_LINE, REAP_TIMEOUT

# --- the reaper: every host process runs under one -------------------------------------------

# Run with ``python -I -c REAPER PYTHON ARGS...``. The supervisors a host process starts detach
# from it (they must outlive it), so they and their guests would be orphaned to whatever reaps
# for the machine; this small process is their subreaper instead. It runs the host process as
# its child, gives up its copies of the control pipes (the host's death must close them), reaps
# until nothing of its own is left, and on SIGTERM kills every process that is its child (the
# host process, the supervisors; their guests then die of PR_SET_PDEATHSIG and are reaped too):
# the machine died.
REAPER = r"""
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
host = os.fork()
if host == 0:
    os.execv(sys.argv[1], sys.argv[1:])
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 1)
ending = False
def kill_children():
    me = str(os.getpid()).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                raw = f.read()
            if raw[raw.rfind(b")") + 2:].split()[1] == me:
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, IndexError):
            pass
def end(signum, frame):
    global ending
    ending = True
    kill_children()
signal.signal(signal.SIGTERM, end)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
    if ending:
        kill_children()  # orphans reparented to us meanwhile
"""


def open_pidfd(pid: int, start: int | None) -> int | None:
    """A pidfd of ``pid`` while it is still the process that started at ``start``; None once it is not.

    Reads /proc: call it in a worker thread.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if not is_running_sync(pid, start):  # a zombie, or the pid was reused
        os.close(fd)
        return None
    return fd


async def wait_exit(fd: int, limit: float) -> bool:
    """Whether the process of pidfd ``fd`` exits within ``limit`` seconds (a pidfd polls readable then)."""
    with anyio.move_on_after(limit):
        await anyio.wait_readable(fd)
        return True
    return False


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
    """The driver's handle on one host process (a standby until it becomes a host).

    ``process`` is its reaper (:data:`REAPER`); the host process proper is
    known by the pid it reports, through a pidfd.
    """

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.host_pid = 0
        self._pidfd = -1
        # The last lease deadline its coordinator pushed to its supervisors, on CLOCK_MONOTONIC.
        self.deadline = 0.0
        self.name = ""
        self.endpoint = ""
        self.incarnation = ""
        self.resumed = False
        self.failure = ""
        self.gone = False
        self.fenced: set[str] = set()  # guests its coordinator fenced, reported as they happen
        self._standby = anyio.Event()
        self._ready = anyio.Event()  # set on ready, on failure and on exit
        self.closed = anyio.Event()  # the control channel ended: everything it said has been read
        self._pending: dict[int, _Reply] = {}
        self._ids = itertools.count(1)
        self._send_lock = anyio.Lock()  # trio's pipe streams refuse concurrent senders

    @property
    def pid(self) -> int:
        return self.host_pid or self.process.pid

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
                if event == "deadline":
                    self.deadline = float(message["at"])
                elif event == "standby":
                    self.host_pid = int(message["pid"])
                    with suppress(ProcessLookupError):  # already dead: its pipe ends next
                        self._pidfd = os.pidfd_open(self.host_pid)
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
            self.closed.set()
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
        """Signal the host process (before it said who it is: SIGKILL ends its reaper's children)."""
        if self._pidfd >= 0:
            with suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)
        elif sig is signal.SIGKILL:
            self._end_reaper()

    def _end_reaper(self) -> None:
        if self.process.returncode is None:
            with suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    async def kill(self) -> None:
        """SIGKILL the host process and wait for its death; its supervisors and guests live on.

        Nothing is released or left: a crash of the coordinator.
        """
        with anyio.CancelScope(shield=True):
            self.signal(signal.SIGKILL)
            if self._pidfd < 0 or not await wait_exit(self._pidfd, REAP_TIMEOUT):
                await self.kill_all()

    async def kill_all(self) -> None:
        """The machine dies: SIGKILL the host process, its supervisors and their guests, and reap them."""
        with anyio.CancelScope(shield=True):
            self.signal(signal.SIGKILL)
            self._end_reaper()
            with anyio.move_on_after(REAP_TIMEOUT):
                await self.process.wait()
                return
            with suppress(ProcessLookupError):
                self.process.kill()  # a reaper that does not end: its orphans go to the machine's
            await self.process.wait()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            # SIGCONT too: a stopped process does not die of SIGKILL any slower, but be plain about it.
            self.signal(signal.SIGCONT)
            await self.kill_all()
            await self.process.aclose()
            if self._pidfd >= 0:
                os.close(self._pidfd)
                self._pidfd = -1
