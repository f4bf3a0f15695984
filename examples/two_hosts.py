"""Two host processes hand a guest's disk leases back and forth over ZeroMQ.

    python examples/two_hosts.py [--rounds 3] [--lockspace DIR] [--plaintext] [--backend asyncio|trio]

The script starts two host coordinators as separate child processes
(``two_hosts.py host --name a --id 1 ...``). Both join one file lockspace
(a temporary directory, or ``--lockspace DIR``) and run a ``[peer]`` service
on loopback, with CURVE by default: each host gets its own key pair and
admits only the other's public key. A ``sleep`` process stands in for QEMU
on each side.

The parent drives the hosts through a line-based control channel, one JSON
object per line: ``{"id": 1, "op": "prepare", "args": {...}}`` on the
child's stdin, ``{"id": 1, "ok": true, "result": {...}}`` (or ``"ok":
false`` with the error's class names and message) on its stdout; the child
starts with a ``{"event": "ready", ...}`` line and exits when its stdin
closes. Ops: start, incoming, prepare, commit, cancel, shutdown, status,
attach, leases, known, ping. Each host runs the libvirt lock-manager calls
the op names, so every migration crosses processes over ZeroMQ.

The parent also joins the lockspace itself as host 3 and tries to take each
disk between every two steps; it must be refused every time. After the
round trips it shows a migration that fails (the guest's own transfer broke)
and is cancelled on both sides: the source keeps every lease and token.

Exit status 0 when everything happened as it must; 1 with the reason (and
the tail of each host's log) otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import attrs
from anyio.streams.buffered import BufferedByteReceiveStream

import actorlock
from actorlock import MigrateFlags, NewFlags, ObjectType, ResourceFlags, ResourceType
from actorlock.errors import ActorlockError, InvalidParameterError, ResourceBusyError
from actorlock.lockspace_report import lockspace_report
from actorlock.model import LeaseRecord
from actorlock.transport.zmq import KeyPair, generate_keypair, save_keypair

SCRIPT = Path(__file__).resolve()
T = TypeVar("T")

# Short but safe timings (host_dead >= (lease_timeout + fence_timeout) * 1.01),
# so that a run, and the crash tests built on this script, take seconds.
TIMING: dict[str, float] = {
    "renew_interval": 0.05,
    "lease_timeout": 0.25,
    "fence_timeout": 0.2,
    "host_dead": 0.6,
    "io_timeout": 2.0,
}
KILL_GRACE = 0.05
PEER_TIMING: dict[str, float] = {
    "migration_timeout": 2.0,
    "prepare_timeout": 1.0,
    "transfer_margin": 0.3,
    "retry_interval": 0.05,
    "request_timeout": 0.5,
}

GUEST_UUID = "5e1f0a2b-7c3d-4e5f-8a9b-0c1d2e3f4a5b"
GUEST_NAME = "web"
DISKS = ("/images/web-root.qcow2", "/images/web-data.qcow2")
READONLY = ("/images/install.iso",)  # never leased: shows that only writable disks are locked
INTRUDER_UUID = "00000000-0000-4000-8000-00000000dead"

STARTUP_TIMEOUT = 20.0  # a child imports actorlock and zmq, then joins (may wait host_dead)
CALL_TIMEOUT = 15.0  # longest op: a commit waiting out migration_timeout, plus slack
EXIT_TIMEOUT = 5.0  # a child told to exit (stdin closed) gets this long before SIGKILL
MAX_LINE = 1 << 20


# --- the child: one host coordinator driven over stdin/stdout --------------------


class LineReader:
    """Lines from a pipe, read without a worker thread.

    A thread blocked in ``readline`` could not be cancelled and would keep
    the interpreter from exiting, so the descriptor is made non-blocking and
    awaited with ``anyio.wait_readable`` (works on asyncio and trio).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""
        self._eof = False
        os.set_blocking(fd, False)

    async def readline(self) -> bytes | None:
        """The next line without its newline, or None at the end of input."""
        while b"\n" not in self._buffer:
            if self._eof:
                return None
            await anyio.wait_readable(self._fd)
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                continue  # another reader of the same pipe got there first
            if not chunk:
                self._eof = True
                # A last line without a newline still counts.
                if self._buffer:
                    self._buffer += b"\n"
                continue
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


def emit(message: Mapping[str, Any]) -> None:
    """Write one JSON line to the parent (the control channel is stdout; logs go to stderr)."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def record_json(record: LeaseRecord) -> dict[str, Any]:
    return {
        "key": record.key,
        "token": record.token,
        "holders": [
            {"host": h.owner.host, "domain": h.owner.domain, "token": h.token} for h in record.holders
        ],
    }


class HostAgent:
    """Carries out the parent's ops on one host's lock managers, one task per op.

    Each op is the libvirt lock-manager sequence it names: ``start`` is
    new_manager + register_resource + acquire_object, ``incoming`` is
    new_manager(MIGRATE) + get_child, ``commit``/``cancel`` are
    complete_migrate_in(0 / CANCEL), and so on.

    Args:
        plugin: the loaded lock driver (it runs ``open_host``).
        args: the host-mode command line (key file, allowed keys, ...).
        task_group: where ops and any long-running services live.
    """

    def __init__(
        self, plugin: actorlock.LockManagerPlugin, args: argparse.Namespace, task_group: anyio.abc.TaskGroup
    ) -> None:
        self.plugin = plugin
        self.args = args
        self.task_group = task_group
        self.managers: dict[str, actorlock.LockManager] = {}

    async def serve(self, request: Mapping[str, Any]) -> None:
        """Run one op and answer it; any failure is answered, never raised."""
        request_id = request.get("id")
        op = str(request.get("op", ""))
        started = time.perf_counter()
        try:
            handler = getattr(self, f"op_{op}", None)
            if handler is None or not op.isidentifier():
                raise InvalidParameterError(f"unknown op {op!r}")
            result = dict(await handler(**request.get("args", {})))
        except Exception as exc:  # the parent decides what a failure means
            kinds = [cls.__name__ for cls in type(exc).__mro__]
            emit(
                {
                    "id": request_id,
                    "ok": False,
                    "error": type(exc).__name__,
                    "kinds": kinds,
                    "message": str(exc),
                }
            )
            return
        result["elapsed"] = time.perf_counter() - started
        emit({"id": request_id, "ok": True, "result": result})

    async def _manager(
        self,
        uuid: str,
        name: str,
        disks: Sequence[str],
        readonly: Sequence[str],
        pid: int | None,
        flags: NewFlags,
    ) -> actorlock.LockManager:
        manager = await self.plugin.new_manager(ObjectType.DOMAIN, flags)
        manager.set_parameter("uuid", uuid)
        if name:
            manager.set_parameter("name", name)
        if pid is not None:
            manager.set_parameter("pid", pid)
        for path in disks:
            manager.register_resource(ResourceType.DISK, path)
        for path in readonly:
            manager.register_resource(ResourceType.DISK, path, ResourceFlags.READONLY)
        return manager

    def _existing(self, uuid: str) -> actorlock.LockManager:
        manager = self.managers.get(uuid)
        if manager is None:
            raise InvalidParameterError(f"no guest {uuid} on this host")
        return manager

    async def op_start(
        self, uuid: str, name: str, disks: Sequence[str], readonly: Sequence[str] = (), pid: int | None = None
    ) -> dict[str, Any]:
        """Start a guest here: take every lease it needs."""
        manager = await self._manager(uuid, name, disks, readonly, pid, NewFlags.NONE)
        status = await manager.acquire_object()
        self.managers[uuid] = manager
        return {"phase": status.phase, "leases": [[lease.key, lease.token] for lease in status.leases]}

    async def op_incoming(
        self, uuid: str, name: str, disks: Sequence[str], readonly: Sequence[str] = (), pid: int | None = None
    ) -> dict[str, Any]:
        """Destination: register the incoming guest (paused, no leases yet)."""
        manager = await self._manager(uuid, name, disks, readonly, pid, NewFlags.MIGRATE)
        child = await manager.get_child()
        self.managers[uuid] = manager
        return {"pid": child}

    async def op_prepare(self, uuid: str, dest: str) -> dict[str, Any]:
        """Source: offer the guest's leases to the host whose peer endpoint is ``dest``."""
        await self._existing(uuid).prepare_migrate(dest)
        return {}

    async def op_commit(self, uuid: str) -> dict[str, Any]:
        await self._existing(uuid).complete_migrate_in(0)
        return {}

    async def op_cancel(self, uuid: str) -> dict[str, Any]:
        await self._existing(uuid).complete_migrate_in(MigrateFlags.CANCEL)
        return {}

    async def op_shutdown(self, uuid: str) -> dict[str, Any]:
        """The guest stopped here: release what it holds and forget it."""
        manager = self._existing(uuid)
        await manager.shutdown()
        await manager.free()
        del self.managers[uuid]
        return {}

    async def op_attach(self, uuid: str, name: str = "") -> dict[str, Any]:
        """After a restart: re-attach to the guest this host recorded (get_child)."""
        manager = await self._manager(uuid, name, (), (), None, NewFlags.ATTACH)
        pid = await manager.get_child()
        self.managers[uuid] = manager
        return {"pid": pid}

    async def op_status(self, uuid: str) -> dict[str, Any]:
        status = await self.plugin.host.domain(uuid).status()
        return {
            "phase": status.phase,
            "pid": status.pid,
            "leases": [[lease.key, lease.token] for lease in status.leases],
            "lost_reason": status.lost_reason,
        }

    async def op_leases(self) -> dict[str, Any]:
        """Every lease record of the lockspace, as this host reads it."""
        return {"records": [record_json(r) for r in await self.plugin.host.leases()]}

    async def op_known(self) -> dict[str, Any]:
        return {"domains": self.plugin.host.known_domains()}

    async def op_ping(self) -> dict[str, Any]:
        return {}


def host_config(args: argparse.Namespace) -> dict[str, Any]:
    """The coordinator configuration for host mode's command line."""
    peer: dict[str, Any] = {"endpoint": args.endpoint, **PEER_TIMING}
    if args.plaintext:
        peer["plaintext"] = True
    else:
        peer["key_file"] = str(args.key_file)
        peer["allowed_keys"] = list(args.allowed_key)
    host: dict[str, Any] = {"name": args.name, "id": args.id}
    if args.state_dir is not None:
        host["state_dir"] = str(args.state_dir)
    return {
        "host": host,
        "timing": {**TIMING, **json.loads(args.timing)},
        "locking": {"backend": "file", "kill_grace": KILL_GRACE},
        "file": {"lockspace_dir": str(args.lockspace)},
        "peer": peer,
    }


async def run_host(args: argparse.Namespace, agent_class: type[HostAgent] = HostAgent) -> int:
    """Host mode: join, say ready, serve ops until stdin closes."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            plugin = await stack.enter_async_context(actorlock.plugin_load("file", host_config(args)))
        except (ActorlockError, OSError, ValueError) as exc:
            emit({"event": "failed", "error": type(exc).__name__, "message": str(exc)})
            return 1
        reader = LineReader(sys.stdin.fileno())
        async with anyio.create_task_group() as tg:
            agent = agent_class(plugin, args, tg)
            emit(
                {
                    "event": "ready",
                    "name": args.name,
                    "pid": os.getpid(),
                    "endpoint": plugin.host.peer_endpoint,
                    "incarnation": plugin.host.incarnation,
                    "resumed": plugin.host.resumed,
                }
            )
            while (line := await reader.readline()) is not None:
                if not line.strip():
                    continue
                try:
                    request = json.loads(line)
                except ValueError as exc:
                    emit({"id": None, "ok": False, "error": "ValueError", "kinds": [], "message": str(exc)})
                    continue
                tg.start_soon(agent.serve, request)
            # stdin closed: the parent wants us gone; ops still running are abandoned.
            tg.cancel_scope.cancel()
    return 0


def add_host_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True)
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--lockspace", type=Path, required=True)
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:*", help="where the peer service binds")
    parser.add_argument("--key-file", type=Path, help="this host's CURVE key pair")
    parser.add_argument("--allowed-key", action="append", default=[], help="a peer's public key (repeat)")
    parser.add_argument("--plaintext", action="store_true", help="no CURVE (trusted networks only)")
    parser.add_argument("--state-dir", type=Path, help="persist guest state here (re-attach after restart)")
    parser.add_argument("--timing", default="{}", help="JSON object overriding [timing] keys")
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))


def host_main(args: argparse.Namespace, agent_class: type[HostAgent] = HostAgent) -> int:
    # Ctrl-C reaches the whole process group; the parent cleans up (it closes
    # our stdin or kills us), so a second, uncoordinated shutdown here would
    # only add noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return anyio.run(run_host, args, agent_class, backend=args.backend)


# --- the parent: host processes under control -----------------------------------


class HostError(Exception):
    """An op failed inside a host process.

    Attributes:
        host: the host's name.
        op: the op that failed.
        error: the exception's class name in the child.
        kinds: the class names of its MRO, to test for a base class.
    """

    def __init__(self, host: str, op: str, error: str, kinds: Sequence[str], message: str) -> None:
        super().__init__(f"host {host}: {op} failed: {error}: {message}")
        self.host = host
        self.op = op
        self.error = error
        self.kinds = tuple(kinds)
        self.message = message

    def is_a(self, class_name: str) -> bool:
        """Whether the child's exception was a ``class_name`` (or a subclass of one)."""
        return class_name in self.kinds


class HostGone(Exception):
    """The host process exited (or was killed) before answering."""


@attrs.frozen
class HostKeys:
    """One host's CURVE material: its key file and the peers' public keys it admits."""

    key_file: Path
    public: str
    allowed: tuple[str, ...]


def make_keys(directory: Path, names: Sequence[str]) -> dict[str, HostKeys]:
    """A key pair per host in ``directory``; each host admits every other host's key."""
    pairs = {name: KeyPair(*generate_keypair()) for name in names}
    keys = {}
    for name, pair in pairs.items():
        path = directory / f"{name}.key"
        save_keypair(path, pair)
        others = tuple(p.public for other, p in pairs.items() if other != name)
        keys[name] = HostKeys(path, pair.public, others)
    return keys


@attrs.define
class _Pending:
    done: anyio.Event = attrs.Factory(anyio.Event)
    reply: dict[str, Any] | None = None


class HostProcess:
    """The parent's handle on one host process (see :func:`spawn_host`)."""

    def __init__(self, name: str, process: anyio.abc.Process, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path
        self.endpoint = ""
        self.incarnation = ""
        self.resumed = False
        self._ready = anyio.Event()
        self._startup_error = ""
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._send_lock = anyio.Lock()  # trio's pipe streams refuse concurrent senders
        self._gone = False

    @property
    def pid(self) -> int:
        return self.process.pid

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Run ``op`` in the host and return its result (with ``elapsed``, the seconds it took there).

        Raises:
            HostError: the op failed in the host.
            HostGone: the host exited before answering.
            TimeoutError: no answer within CALL_TIMEOUT.
        """
        if self._gone:
            raise HostGone(f"host {self.name} has exited (status {self.process.returncode})")
        request_id = next(self._ids)
        pending = self._pending[request_id] = _Pending()
        line = json.dumps({"id": request_id, "op": op, "args": args}) + "\n"
        try:
            with anyio.fail_after(CALL_TIMEOUT):
                async with self._send_lock:
                    assert self.process.stdin is not None
                    await self.process.stdin.send(line.encode())
                await pending.done.wait()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise HostGone(f"host {self.name} stopped reading its control channel") from None
        finally:
            del self._pending[request_id]
        reply = pending.reply
        if reply is None:
            raise HostGone(f"host {self.name} exited (status {self.process.returncode}) during {op}")
        if not reply["ok"]:
            raise HostError(self.name, op, reply["error"], reply["kinds"], reply["message"])
        result: dict[str, Any] = reply["result"]
        return result

    async def kill(self) -> None:
        """SIGKILL the host (a crash: nothing is released or left) and reap it."""
        if self.process.returncode is None:
            self.process.kill()
        with anyio.CancelScope(shield=True):
            await self.process.wait()

    async def _exit(self) -> None:
        """Close the control channel (the host leaves cleanly) and wait a while for it to exit."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(EXIT_TIMEOUT):
            assert self.process.stdin is not None
            with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self.process.stdin.aclose()
            await self.process.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def _read(self) -> None:
        assert self.process.stdout is not None
        stream = BufferedByteReceiveStream(self.process.stdout)
        try:
            while True:
                message = json.loads(await stream.receive_until(b"\n", MAX_LINE))
                if message.get("event") == "ready":
                    self.endpoint = message["endpoint"]
                    self.incarnation = message["incarnation"]
                    self.resumed = message["resumed"]
                    self._ready.set()
                elif message.get("event") == "failed":
                    self._startup_error = f"{message['error']}: {message['message']}"
                else:
                    pending = self._pending.get(message.get("id"))
                    if pending is not None:
                        pending.reply = message
                        pending.done.set()
        except (
            anyio.IncompleteRead,
            anyio.EndOfStream,
            anyio.ClosedResourceError,
            anyio.BrokenResourceError,
        ):
            pass
        finally:
            # Whoever still waits learns that no answer will come.
            self._gone = True
            self._ready.set()
            for pending in self._pending.values():
                pending.done.set()


@asynccontextmanager
async def spawn_host(
    name: str,
    host_id: int,
    lockspace: Path,
    workdir: Path,
    *,
    keys: HostKeys | None,
    backend: str = "asyncio",
    state_dir: Path | None = None,
    timing: Mapping[str, float] | None = None,
    script: Path = SCRIPT,
) -> AsyncIterator[HostProcess]:
    """Run ``script host ...`` as host ``name`` until the block ends; yields once it is ready.

    ``keys=None`` runs the peer service in plain text. The child's stderr
    (its log) goes to ``workdir/host-<name>.log``. On exit the child's stdin
    is closed so it leaves the lockspace cleanly; it is killed if it has not
    exited within EXIT_TIMEOUT, and reaped in every case.
    """
    command = [sys.executable, str(script), "host", "--name", name, "--id", str(host_id)]
    command += [
        "--lockspace",
        str(lockspace),
        "--backend",
        backend,
        "--timing",
        json.dumps(dict(timing or {})),
    ]
    if keys is None:
        command.append("--plaintext")
    else:
        command += ["--key-file", str(keys.key_file)]
        # "--allowed-key=KEY": a Z85 key may start with "-" and pass for an option.
        command += [f"--allowed-key={key}" for key in keys.allowed]
    if state_dir is not None:
        command += ["--state-dir", str(state_dir)]
    log_path = workdir / f"host-{name}.log"
    async with await anyio.open_file(log_path, "ab") as log:
        process = await anyio.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.wrapped
        )
    host = HostProcess(name, process, log_path)
    failure: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(host._read, name=f"control channel of {name}")
            try:
                with anyio.fail_after(STARTUP_TIMEOUT):
                    await host._ready.wait()
                if not host.endpoint:
                    problem = host._startup_error or f"exited with status {await process.wait()}"
                    raise HostGone(f"host {name} did not start: {problem}\n{host.log_tail()}")
                yield host
            except BaseException as exc:
                # Raised again outside the task group, so that callers see the
                # error itself rather than an exception group around it (trio).
                failure = exc
            finally:
                await host._exit()
                tg.cancel_scope.cancel()
    finally:
        await host.kill()
    if failure is not None:
        raise failure


@asynccontextmanager
async def guest_processes() -> AsyncIterator[list[anyio.abc.Process]]:
    """A list to add stand-in guests (``sleep``) to; all are killed and reaped at the end."""
    guests: list[anyio.abc.Process] = []
    try:
        yield guests
    finally:
        with anyio.CancelScope(shield=True):
            for guest in guests:
                if guest.returncode is None:
                    guest.kill()
                await guest.wait()


async def start_guest(guests: list[anyio.abc.Process]) -> anyio.abc.Process:
    guest = await anyio.open_process(
        ["sleep", "120"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    guests.append(guest)
    return guest


async def stop_guest(guest: anyio.abc.Process) -> None:
    if guest.returncode is None:
        guest.kill()
    await guest.wait()


# --- the demonstration ----------------------------------------------------------------


class Unexpected(Exception):
    """Something happened that must not (or did not happen that must)."""


def check(condition: bool, problem: str) -> None:
    if not condition:
        raise Unexpected(problem)


async def concurrently(*calls: Callable[[], Awaitable[T]]) -> list[T]:
    """Run the calls at once; return their results in order, or raise the first failure as itself.

    A task group would wrap failures in an exception group on trio; callers
    here want to catch ``HostError`` and friends directly.
    """
    results: list[Any] = [None] * len(calls)
    errors: list[Exception | None] = [None] * len(calls)

    async def run(index: int) -> None:
        try:
            results[index] = await calls[index]()
        except Exception as exc:
            errors[index] = exc

    async with anyio.create_task_group() as tg:
        for index in range(len(calls)):
            tg.start_soon(run, index)
    for error in errors:
        if error is not None:
            raise error
    return results


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def guest_args(pid: int) -> dict[str, Any]:
    return {
        "uuid": GUEST_UUID,
        "name": GUEST_NAME,
        "disks": list(DISKS),
        "readonly": list(READONLY),
        "pid": pid,
    }


def owners(records: Sequence[LeaseRecord]) -> dict[str, list[tuple[str, int]]]:
    """``{key: [(host, token), ...]}`` for the guest's disks."""
    keys = {actorlock.disk(path).key for path in DISKS}
    return {r.key: [(h.owner.host, h.token) for h in r.holders] for r in records if r.key in keys}


class Demo:
    """The migrations, with every step checked and printed."""

    def __init__(
        self,
        hosts: Mapping[str, HostProcess],
        intruder: actorlock.Host,
        lockspace: Path,
        guests: list[anyio.abc.Process],
    ) -> None:
        self.hosts = hosts
        self.intruder = intruder
        self.lockspace = lockspace
        self.guests = guests
        self.running: dict[str, anyio.abc.Process] = {}  # host name -> its guest process
        self.refusals = 0

    async def holders(self) -> dict[str, list[tuple[str, int]]]:
        return owners(await self.intruder.leases())

    async def expect_holder(self, host: str, what: str) -> dict[str, list[tuple[str, int]]]:
        found = await self.holders()
        for path in DISKS:
            key = actorlock.disk(path).key
            holders = found.get(key, [])
            check(
                [h for h, _ in holders] == [host],
                f"{what}: {key} should be held by host {host} alone, the lockspace says {holders}",
            )
        return found

    async def refused(self, when: str, holder: str) -> None:
        """Host 3 tries each disk: every attempt must be refused, naming ``holder``."""
        domain = self.intruder.domain(INTRUDER_UUID, name="intruder")
        for path in DISKS:
            try:
                await domain.start([actorlock.disk(path)])
            except ResourceBusyError as exc:
                check(
                    [h for h, _ in exc.holders] == [holder],
                    f"host 3 was refused {path} {when}, but the holders named are {exc.holders}",
                )
                self.refusals += 1
            else:
                await domain.shutdown()
                raise Unexpected(f"host 3 acquired {path} {when}: two hosts could write one disk")
        print(f"    host 3 tries every disk {when}: refused, held by {holder}")

    async def show_lockspace(self, title: str, *, with_hosts: bool = False) -> None:
        # Observe briefly so the liveness column says who is renewing.
        report = await lockspace_report(self.lockspace, 0.1)
        text = report.to_text()
        start = text.index("ID") if with_hosts else text.index("RESOURCE")
        table = text[start:]
        print(f"    `actorlock leases` {title}:")
        for line in table.splitlines():
            print(f"      {line}".rstrip())

    async def start(self, name: str) -> None:
        guest = await start_guest(self.guests)
        self.running[name] = guest
        result = await self.hosts[name].call("start", **guest_args(guest.pid))
        tokens = ", ".join(f"{key} #{token}" for key, token in result["leases"])
        print(f"host {name} starts the guest (pid {guest.pid}) in {ms(result['elapsed'])}: {tokens}")
        await self.expect_holder(name, "after the start")
        await self.refused("while it runs", holder=name)
        await self.show_lockspace("after the start", with_hosts=True)

    async def prepare(self, src: str, dst: str, label: str) -> None:
        result = await self.hosts[src].call("prepare", uuid=GUEST_UUID, dest=self.hosts[dst].endpoint)
        where = self.hosts[dst].endpoint
        print(f"  {label} prepare on {src} -> {dst} ({where}): accepted in {ms(result['elapsed'])}")
        await self.refused("after prepare", holder=src)
        guest = await start_guest(self.guests)
        self.running[dst] = guest
        result = await self.hosts[dst].call("incoming", **guest_args(guest.pid))
        print(f"  {label} destination {dst} registered the incoming guest (pid {guest.pid}, no leases yet)")
        await self.refused("with the guest registered on both hosts", holder=src)

    async def migrate(self, src: str, dst: str, label: str) -> None:
        before = await self.expect_holder(src, f"{label} before the migration")
        await self.prepare(src, dst, label)
        # libvirt completes both sides independently; each waits for the other's word.
        done_src, done_dst = await concurrently(
            partial(self.hosts[src].call, "commit", uuid=GUEST_UUID),
            partial(self.hosts[dst].call, "commit", uuid=GUEST_UUID),
        )
        took = f"{src} in {ms(done_src['elapsed'])}, {dst} in {ms(done_dst['elapsed'])}"
        print(f"  {label} both commit: {took}")
        after = await self.expect_holder(dst, f"{label} after the commit")
        for key in sorted(after):
            ((_, old),), ((_, new),) = before[key], after[key]
            check(new == old + 1, f"{key}: the token went {old} -> {new}, expected {old + 1}")
            print(f"      {key}: {src} #{old} -> {dst} #{new}")
        status = await self.hosts[dst].call("status", uuid=GUEST_UUID)
        check(status["phase"] == "running", f"{label}: the guest on {dst} is {status['phase']}, not running")
        await self.refused("after the commit", holder=dst)
        # The source's QEMU exits once the migration is over; then libvirt shuts its lock manager down.
        await stop_guest(self.running.pop(src))
        result = await self.hosts[src].call("shutdown", uuid=GUEST_UUID)
        print(f"  {label} source {src} shut its side down in {ms(result['elapsed'])} (it held nothing)")
        await self.expect_holder(dst, f"{label} after the source's shutdown")
        await self.refused("after the source's shutdown", holder=dst)
        await self.show_lockspace(f"after round {label.strip('[]')}")

    async def failed_migration(self, src: str, dst: str, label: str) -> None:
        before = await self.expect_holder(src, f"{label} before the migration")
        await self.prepare(src, dst, label)
        print(f"  {label} the guest's own migration fails (say QEMU's transfer broke): cancel on both sides")
        await concurrently(
            partial(self.hosts[src].call, "cancel", uuid=GUEST_UUID),
            partial(self.hosts[dst].call, "cancel", uuid=GUEST_UUID),
        )
        after = await self.expect_holder(src, f"{label} after the cancel")
        check(after == before, f"{label}: a cancelled migration changed the leases: {before} -> {after}")
        for key in sorted(after):
            print(f"      {key}: still {src} #{after[key][0][1]}")
        status = await self.hosts[src].call("status", uuid=GUEST_UUID)
        phase = status["phase"]
        check(phase == "running", f"{label}: after the cancel the guest on {src} is {phase}")
        await stop_guest(self.running.pop(dst))
        await self.hosts[dst].call("shutdown", uuid=GUEST_UUID)
        print(f"  {label} the source keeps the guest, every lease and every token; {dst} dropped its side")
        await self.refused("after the cancel", holder=src)

    async def finish(self, holder: str) -> None:
        await stop_guest(self.running.pop(holder))
        await self.hosts[holder].call("shutdown", uuid=GUEST_UUID)
        last = {r.key: r.token for r in await self.intruder.leases()}
        domain = self.intruder.domain(INTRUDER_UUID, name="intruder")
        status = await domain.start([actorlock.disk(path) for path in DISKS])
        got = {lease.key: lease.token for lease in status.leases}
        for key, token in got.items():
            check(token == last[key] + 1, f"{key}: host 3 got token {token} after {last[key]}: not fresh")
        print(f"host {holder} shuts the guest down; now host 3 gets the disks: {got}")
        await domain.shutdown()


async def run_demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="two-hosts-") as tmp:
        workdir = Path(tmp)
        lockspace = args.lockspace
        if lockspace is None:
            lockspace = workdir / "lockspace"
            lockspace.mkdir()
        keys: dict[str, HostKeys | None] = dict.fromkeys(("a", "b"))
        if not args.plaintext:
            keys.update(make_keys(workdir, ["a", "b"]))
        hosts: dict[str, HostProcess] = {}
        try:
            with anyio.fail_after(60):
                async with AsyncExitStack() as stack:
                    guests = await stack.enter_async_context(guest_processes())

                    async def spawn(name: str, host_id: int) -> None:
                        host = spawn_host(
                            name, host_id, lockspace, workdir, keys=keys[name], backend=args.backend
                        )
                        hosts[name] = await stack.enter_async_context(host)

                    # One after the other: the exit stack is not for concurrent use.
                    await spawn("a", 1)
                    await spawn("b", 2)
                    security = "plain text" if args.plaintext else "CURVE, each host admits the other's key"
                    print(f"lockspace {lockspace}; peer service: {security}")
                    for host in hosts.values():
                        print(f"host {host.name}: pid {host.pid}, peer endpoint {host.endpoint}")
                    intruder_config = {
                        "host": {"name": "host-3", "id": 3},
                        "timing": TIMING,
                        "locking": {"backend": "file", "kill_grace": KILL_GRACE},
                        "file": {"lockspace_dir": str(lockspace)},
                    }
                    intruder = await stack.enter_async_context(actorlock.open_host(intruder_config))
                    print(
                        "host-3 (this script) joins the lockspace; it tries to take the disks at every step"
                    )
                    demo = Demo(hosts, intruder, lockspace, guests)
                    await demo.start("a")
                    src, dst = "a", "b"
                    for round_no in range(1, args.rounds + 1):
                        print(f"round {round_no}: migrate the guest {src} -> {dst}")
                        await demo.migrate(src, dst, f"[{round_no}]")
                        src, dst = dst, src
                    print(f"round {args.rounds + 1}: a migration {src} -> {dst} that fails")
                    await demo.failed_migration(src, dst, f"[{args.rounds + 1}]")
                    await demo.finish(src)
                    summary = f"{args.rounds} migrations committed, 1 cancelled"
                    print(f"ok: {summary}; host 3 was refused {demo.refusals} times")
        except (Unexpected, HostError, HostGone, ActorlockError, TimeoutError) as exc:
            print(f"two_hosts: FAILED: {exc}", file=sys.stderr)
            for host in hosts.values():
                tail = host.log_tail()
                if tail:
                    print(f"--- log of host {host.name} (last lines) ---\n{tail}", file=sys.stderr)
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="migrations to commit (default 3)")
    parser.add_argument("--lockspace", type=Path, help="an existing lockspace directory (default: temporary)")
    parser.add_argument("--plaintext", action="store_true", help="run the peer service without CURVE")
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    sub = parser.add_subparsers(dest="mode")
    add_host_arguments(sub.add_parser("host", help="run one host coordinator (started by the demo)"))
    args = parser.parse_args(argv)
    if args.mode == "host":
        return host_main(args)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    started = time.perf_counter()
    status = anyio.run(run_demo, args, backend=args.backend)
    print(f"({time.perf_counter() - started:.1f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
