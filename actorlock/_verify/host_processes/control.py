"""The parent: host processes under control (:func:`spawn_host`), their keys, and their errors."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import attrs
from anyio.streams.buffered import BufferedByteReceiveStream

from ...transport.zmq import KeyPair, generate_keypair, save_keypair
from .settings import CALL_TIMEOUT, EXIT_TIMEOUT, MAX_LINE, STARTUP_TIMEOUT

T = TypeVar("T")
CHILD_MODULE = "actorlock._verify.host_processes"  # its __main__ runs host mode


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
    script: Path | None = None,
) -> AsyncIterator[HostProcess]:
    """Run ``script host ...`` as host ``name`` until the block ends; yields once it is ready.

    Without ``script`` the child is ``python -m actorlock._verify.host_processes``
    (a :class:`~.agent.HostAgent`); a script with a ``host`` mode of its own
    (:func:`~.agent.host_main` with an agent subclass) extends the ops.

    ``keys=None`` runs the peer service in plain text. The child's stderr
    (its log) goes to ``workdir/host-<name>.log``. On exit the child's stdin
    is closed so it leaves the lockspace cleanly; it is killed if it has not
    exited within EXIT_TIMEOUT, and reaped in every case.
    """
    child = [str(script)] if script is not None else ["-m", CHILD_MODULE]
    command = [sys.executable, *child, "host", "--name", name, "--id", str(host_id)]
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
