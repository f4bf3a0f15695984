"""The child: one host coordinator driven over stdin/stdout, one JSON object per line.

``{"id": 1, "op": "prepare", "args": {...}}`` arrives on stdin; the answer
``{"id": 1, "ok": true, "result": {...}}`` (or ``"ok": false`` with the
error's class names and message) leaves on stdout. The child starts with a
``{"event": "ready", ...}`` line and exits when its stdin closes. Each op is
the libvirt lock-manager sequence it names (see :class:`HostAgent`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from ...constants import MigrateFlags, NewFlags, ObjectType, ResourceFlags, ResourceType
from ...errors import ActorlockError, InvalidParameterError
from ...lockmanager import LockManager, LockManagerPlugin, plugin_load
from ...model import LeaseRecord
from .settings import KILL_GRACE, PEER_TIMING, TIMING


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
        self, plugin: LockManagerPlugin, args: argparse.Namespace, task_group: anyio.abc.TaskGroup
    ) -> None:
        self.plugin = plugin
        self.args = args
        self.task_group = task_group
        self.managers: dict[str, LockManager] = {}

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
    ) -> LockManager:
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

    def _existing(self, uuid: str) -> LockManager:
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
            plugin = await stack.enter_async_context(plugin_load("file", host_config(args)))
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
