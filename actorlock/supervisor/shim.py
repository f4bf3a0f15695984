"""The guest supervisor: one small process per guest, the guest's parent.

Run as ``actorlock-supervisor --control SOCKET --uuid UUID [--detach] -- GUEST...``
(what :meth:`~actorlock.LockManager.get_supervisor_path` and
``get_supervisor_args`` name). It connects to its host coordinator's control
socket, takes the current lease deadline, starts the guest with
``PR_SET_PDEATHSIG`` (killing the supervisor kills the guest), reports the
guest's pid, and from then on acts on its own clock:

* every successful renewal the coordinator pushes a new deadline
  (last renewal start + lease_timeout, on CLOCK_BOOTTIME);
* at the deadline (or at once on a ``fence`` message) it runs the failure
  action: ``poweroff`` is SIGTERM, then SIGKILL after kill_grace (below
  fence_timeout), confirmed by the guest's exit, which it waits for as its
  parent; ``pause`` stops the guest with SIGSTOP; ``ignore`` only logs;
* a lost connection keeps the last deadline and reconnects every
  :data:`RECONNECT_INTERVAL`: a coordinator restarted in time takes over
  without a gap, one that never comes back leaves the deadline to fire.
  A coordinator that is stuck (SIGSTOP) pushes nothing: same thing.
* ``release`` (the guest's leases migrated away) lifts the deadline.

It does no storage I/O. Why one plain process per guest and not anyio:
the work is one socket, one pidfd and one timer, which ``select`` covers;
anyio and attrs would add ~6 MiB of private memory and ~60 ms of start per
guest (benchmarks/bench_supervisor.py). It imports only the standard
library, msgpack and :mod:`actorlock.supervisor.wire`, and is loaded without
importing the actorlock package (``actorlock_supervisor.py``). A blocking
``select`` is right here: there is no event loop in this process.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import sys
import time

# Not `from typing import ...`: typing (and the re it imports) costs ~15 ms and
# ~1 MiB per guest; annotations are strings here, read only by type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Final

if __package__:
    from . import wire
else:  # loaded alone: load the sibling the same way
    import importlib.util

    if __name__ == "__main__" and sys.argv[1:2] == ["--site"]:
        # Domain.spawn's fast start, `python -I -S shim.py --site DIR ...`: no site
        # processing (the console script's costs tens of ms), msgpack from DIR.
        sys.path.append(sys.argv[2])
        del sys.argv[1:3]

    _spec = importlib.util.spec_from_file_location(
        "actorlock_supervisor_wire", os.path.join(os.path.dirname(__file__), "wire.py")
    )
    assert _spec is not None
    assert _spec.loader is not None
    wire: ModuleType = importlib.util.module_from_spec(_spec)  # type: ignore[no-redef]
    _spec.loader.exec_module(wire)

CLOCK: Final[int] = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
CONNECT_TIMEOUT: Final = 5.0  # the first connection and welcome, before any guest runs
RECONNECT_INTERVAL: Final = 0.1
PR_SET_PDEATHSIG: Final = 1
# A unix socket path longer than this is reached through /proc/self/fd/N/NAME.
_SUN_PATH_MAX: Final = 100


def now() -> float:
    return time.clock_gettime(CLOCK)


class UsageError(Exception):
    pass


def parse_args(argv: list[str]) -> tuple[str, str, bool, list[str]]:
    """(control socket, uuid, detach, guest argv) from ``--control S --uuid U [--detach] -- GUEST...``."""
    control = uuid = ""
    detach = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if arg in ("--control", "--uuid") and i + 1 < len(argv):
            if arg == "--control":
                control = argv[i + 1]
            else:
                uuid = argv[i + 1]
            i += 2
        elif arg == "--detach":
            detach = True
            i += 1
        else:
            break
    guest = argv[i:]
    if not control or not uuid or not guest:
        raise UsageError("usage: actorlock-supervisor --control SOCKET --uuid UUID [--detach] -- GUEST...")
    return control, uuid, detach, guest


def _connect(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        if len(path) > _SUN_PATH_MAX:
            dirfd = os.open(os.path.dirname(path), os.O_PATH | os.O_CLOEXEC)
            try:
                sock.connect(f"/proc/self/fd/{dirfd}/{os.path.basename(path)}")
            finally:
                os.close(dirfd)
        else:
            sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def _start_time(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return 0
    return int(raw[raw.rfind(b")") + 2 :].split()[19])


def _spawn(argv: list[str]) -> tuple[int, str]:
    """Fork and exec the guest; it is SIGKILLed by the kernel if this process dies.

    Returns (pid, "") once the exec has happened (a close-on-exec pipe closes),
    so the pid reported is the guest program's; or (pid, why) if it failed.
    """
    parent = os.getpid()
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid:
        os.close(write_end)
        try:
            failure = os.read(read_end, 512)  # EOF at the exec; the child is our own, never stuck here
        finally:
            os.close(read_end)
        return pid, failure.decode(errors="replace")
    try:  # the child: only what exec needs
        os.close(read_end)
        import ctypes  # imported here: the child's memory is replaced by exec

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != parent:
            raise ProcessLookupError("the supervisor died before the guest started")
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.execvp(argv[0], argv)
    except BaseException as exc:
        try:  # noqa: SIM105 - contextlib costs an import per guest
            os.write(write_end, f"cannot run {argv[0]!r}: {exc}".encode()[:512])
        except BaseException:
            pass
    os._exit(127)


class Supervisor:
    """The state of one supervisor process (see the module docstring)."""

    def __init__(self, control: str, uuid: str, guest_argv: list[str]) -> None:
        self.control = control
        self.uuid = uuid
        self.guest_argv = guest_argv
        self.sock: socket.socket | None = None
        self.frames = wire.FrameBuffer()
        self.expires_at: float | None = None
        self.action = "poweroff"
        self.kill_grace = 1.0
        self.fence_timeout = 2.0
        self.guest_pid = 0
        self.guest_start = 0
        self.pidfd = -1
        self.fenced = ""  # why the failure action ran; empty while it has not
        self.kill_at: float | None = None  # SIGKILL time of a poweroff in progress
        self.next_connect = 0.0

    # -- the coordinator link -------------------------------------------------

    def hello(self) -> None:
        assert self.sock is not None
        self.sock.sendall(
            wire.encode(
                "hello",
                uuid=self.uuid,
                supervisor_pid=os.getpid(),
                guest_pid=self.guest_pid,
                guest_start=self.guest_start,
            )
        )

    def first_contact(self) -> None:
        """Connect and wait for the welcome, bounded by CONNECT_TIMEOUT; raises OSError or WireError."""
        self.sock = _connect(self.control, CONNECT_TIMEOUT)
        self.hello()
        end = now() + CONNECT_TIMEOUT
        while self.expires_at is None:
            self.sock.settimeout(max(end - now(), 0.001))
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("the coordinator closed the control connection")
            for body in self.frames.feed(data):
                self.handle(*wire.decode(body))
        # socket.setblocking takes its flag positionally only.
        self.sock.setblocking(False)  # noqa: FBT003

    def send(self, kind: str, **fields: Any) -> None:
        if self.sock is None:
            return
        try:
            self.sock.send(wire.encode(kind, **fields))
        except OSError:  # full or broken: the link is gone, the deadline stays
            self.disconnect()

    def disconnect(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self.frames = wire.FrameBuffer()
            self.next_connect = now() + RECONNECT_INTERVAL

    def try_reconnect(self) -> None:
        self.next_connect = now() + RECONNECT_INTERVAL
        try:
            self.sock = _connect(self.control, RECONNECT_INTERVAL)
            # socket.setblocking takes its flag positionally only.
            self.sock.setblocking(False)  # noqa: FBT003
            self.hello()
        except OSError:
            self.disconnect()

    def receive(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.disconnect()
            return
        try:
            for body in self.frames.feed(data):
                self.handle(*wire.decode(body))
        except wire.WireError as exc:
            _log(f"bad frame from the coordinator, dropping the connection: {exc}")
            self.disconnect()

    def handle(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "welcome":
            self.action = fields["action"]
            self.kill_grace = fields["kill_grace"]
            self.fence_timeout = fields["fence_timeout"]
            self.expires_at = fields["expires_at"]
        elif kind == "deadline":
            self.expires_at = fields["expires_at"]
        elif kind == "fence":
            self.fence(fields["reason"])
        elif kind == "release":
            self.expires_at = None
        else:
            _log(f"ignoring a {kind} message")

    # -- the guest --------------------------------------------------------------

    def fence(self, reason: str) -> None:
        if self.fenced or not self.guest_pid:
            return
        self.fenced = reason
        _log(f"guest {self.guest_pid} of {self.uuid}: {reason}; failure action {self.action}")
        if self.action == "poweroff":
            self.signal(signal.SIGTERM)
            self.kill_at = now() + self.kill_grace
        elif self.action == "pause":
            self.signal(signal.SIGSTOP)

    def signal(self, sig: int) -> None:
        try:  # noqa: SIM105 - contextlib costs an import per guest
            signal.pidfd_send_signal(self.pidfd, sig)
        except ProcessLookupError:
            pass

    def run(self, ready_fd: int | None) -> int:
        try:
            self.first_contact()
        except (OSError, wire.WireError) as exc:
            _log(f"cannot reach the coordinator at {self.control}: {exc!r}; not starting the guest")
            return 2
        assert self.expires_at is not None
        if self.expires_at <= now():
            _log("the host's lease is not fresh: not starting the guest")
            return 2
        pid, failure = _spawn(self.guest_argv)
        if failure:
            os.waitpid(pid, 0)
            _log(failure)
            return 127
        self.guest_pid = pid
        self.pidfd = os.pidfd_open(self.guest_pid)
        self.guest_start = _start_time(self.guest_pid)
        self.send("started", guest_pid=self.guest_pid, guest_start=self.guest_start)
        if ready_fd is not None:
            try:  # noqa: SIM105 - contextlib costs an import per guest
                os.write(ready_fd, b"%d\n" % self.guest_pid)
            except OSError:
                pass  # the caller is gone: the guest is supervised all the same
            os.close(ready_fd)
        return self.loop()

    def loop(self) -> int:
        while True:  # ends when the guest is reaped: after the deadline it ends within fence_timeout
            t = now()
            if self.expires_at is not None and t >= self.expires_at:
                self.fence("no renewal pushed before the lease deadline")
            if self.kill_at is not None and t >= self.kill_at:
                self.signal(signal.SIGKILL)
                self.kill_at = None
            if self.sock is None and t >= self.next_connect:
                self.try_reconnect()
            wake = [self.next_connect] if self.sock is None else []
            if self.expires_at is not None and not self.fenced:
                wake.append(self.expires_at)
            if self.kill_at is not None:
                wake.append(self.kill_at)
            timeout = max(0.0, min(wake) - now()) if wake else None
            watched = [self.pidfd] + ([self.sock.fileno()] if self.sock is not None else [])
            try:
                readable, _, _ = select.select(watched, [], [], timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries select
                continue
            if self.pidfd in readable:
                return self.reap()
            if self.sock is not None and readable:
                self.receive()

    def reap(self) -> int:
        _, status = os.waitpid(self.guest_pid, 0)
        code = os.waitstatus_to_exitcode(status)
        self.send("exited", guest_pid=self.guest_pid, status=code & 0xFFFF, fenced=self.fenced)
        os.close(self.pidfd)
        if self.sock is not None:
            self.sock.close()
        return code if code >= 0 else 128 - code


def _log(message: str) -> None:
    try:
        os.write(2, f"actorlock-supervisor[{os.getpid()}]: {message}\n".encode())
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise


def main(argv: list[str] | None = None) -> int:
    try:
        control, uuid, detach, guest = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        _log(str(exc))
        return 2
    supervisor = Supervisor(os.path.abspath(control), uuid, guest)
    if not detach:
        return supervisor.run(None)
    # --detach: the caller waits only until the guest runs; the supervisor
    # goes on in a session of its own, outliving (and not reaped by) the caller.
    read_end, write_end = os.pipe()
    if os.fork():
        os.close(write_end)
        ready, _, _ = select.select([read_end], [], [], 2 * CONNECT_TIMEOUT)
        # The guest's pid, once it runs (the caller learns it from the coordinator).
        return 0 if ready and os.read(read_end, 64) else 1
    os.close(read_end)
    os.setsid()
    code = supervisor.run(write_end)
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
