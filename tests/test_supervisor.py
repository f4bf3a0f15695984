"""Guests under the supervisor (issue 9), in this process: spawn, get_child, fencing, the wire."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

import actorlock
from actorlock import ObjectType, ResourceType
from actorlock.backends.memory import MemoryLeaseBackend, shared_lockspace
from actorlock.errors import NotSupportedError, ProtocolError, SupervisorError
from actorlock.supervisor import messages, wire
from actorlock.testing.faults import FaultyBackend

from .support import TIMING, host_config, unique

pytestmark = pytest.mark.anyio

WAIT = 10.0  # bounds waits for things that happen within lease_timeout + fence_timeout


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    return int(raw[raw.rfind(b")") + 2 :].split()[1])


async def wait_gone(pid: int) -> None:
    """Until ``pid`` has exited (a pidfd turns readable; works for a process that is not our child)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await anyio.wait_readable(fd)
    finally:
        os.close(fd)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return False
    return raw[raw.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def state_config(tmp_path: Path, name: str = "a", host_id: int = 1, **extra: Any) -> dict[str, Any]:
    state = tmp_path / f"state-{name}"
    state.mkdir(exist_ok=True)
    space = extra.pop("lockspace", unique())
    return host_config(name, host_id, lockspace=space, host={"state_dir": str(state)})


async def test_spawn_runs_the_guest_under_its_supervisor_and_a_lost_lease_kills_it(tmp_path: Path) -> None:
    cfg: Any = state_config(tmp_path)
    backend = FaultyBackend(MemoryLeaseBackend(shared_lockspace(cfg["memory"]["lockspace"]), host_dead=0.6))
    async with actorlock.open_host(cfg, backend=backend) as host:
        vm = host.domain("u1")
        await vm.start([actorlock.disk("/d/1.img")])
        pid = await vm.spawn(["sleep", "60"])
        try:
            supervisor = parent_of(pid)
            assert supervisor != os.getpid()
            assert (await vm.status()).pid == pid
            assert host.supervisors is not None
            guest = host.supervisors.guest("u1")
            assert guest is not None
            assert (guest.guest_pid, guest.supervisor_pid) == (pid, supervisor)
            backend.fail("renew")
            with anyio.fail_after(WAIT):
                await wait_gone(pid)
            with anyio.fail_after(WAIT):
                while guest.exit_status is None:  # noqa: ASYNC110 - the supervisor reports how it ended
                    await anyio.sleep(0.01)
            assert guest.fenced
        finally:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_the_seed_sequence_runs_the_named_supervisor_and_killing_it_kills_the_guest(
    tmp_path: Path,
) -> None:
    async with actorlock.plugin_load("memory", state_config(tmp_path)) as plugin:
        manager = await plugin.new_manager(ObjectType.DOMAIN)
        manager.set_parameter("uuid", "u1")
        manager.register_resource(ResourceType.DISK, "/d/1.img")
        await manager.acquire_object()
        path = manager.get_supervisor_path()
        assert os.path.isabs(path)
        assert os.access(path, os.X_OK)
        args = manager.get_supervisor_args()
        assert all(isinstance(a, str) for a in args)
        # The daemon's part: [path, *args, *guest_argv], its own child, reaped by it.
        supervisor = subprocess.Popen([path, *args, "sleep", "60"])  # noqa: ASYNC220 - returns at once
        try:
            with anyio.fail_after(WAIT):
                pid = await manager.get_child()
            assert parent_of(pid) == supervisor.pid
            assert (await manager.inquire()).pid == pid
            supervisor.send_signal(signal.SIGKILL)  # the seed's kill(supervisorpid)
            with anyio.fail_after(WAIT):
                await wait_gone(pid)
        finally:
            supervisor.kill()
            supervisor.wait()
        await manager.shutdown()


async def test_get_child_fails_clearly_when_the_supervisor_exits_before_starting_the_guest(
    tmp_path: Path,
) -> None:
    async with actorlock.plugin_load("memory", state_config(tmp_path)) as plugin:
        manager = await plugin.new_manager(ObjectType.DOMAIN)
        manager.set_parameter("uuid", "u1")
        manager.register_resource(ResourceType.DISK, "/d/1.img")
        await manager.acquire_object()
        socket_path = plugin.host.supervisors.path  # type: ignore[union-attr]
        # A supervisor that says hello and dies before its guest runs.
        async with await anyio.connect_unix(str(socket_path)) as stream:
            await stream.send(
                messages.encode(messages.Hello("u1", supervisor_pid=os.getpid(), guest_pid=0, guest_start=0))
            )
            await stream.receive()  # the welcome
        with anyio.fail_after(WAIT), pytest.raises(SupervisorError, match="exited before starting its guest"):
            await manager.get_child()


async def test_supervision_needs_a_state_dir() -> None:
    async with actorlock.plugin_load("memory", host_config("a", 1, lockspace=unique())) as plugin:
        manager = await plugin.new_manager(ObjectType.DOMAIN)
        manager.set_parameter("uuid", "u1")
        with pytest.raises(NotSupportedError, match="state_dir"):
            manager.get_supervisor_args()


def test_the_control_wire_is_strict() -> None:
    frame = wire.encode("deadline", expires_at=12.5)
    assert wire.FrameBuffer().feed(frame) == [frame[4:]]
    assert messages.decode(frame[4:]) == messages.Deadline(12.5)
    import msgpack

    for bad in (
        {"v": 2, "kind": "deadline", "expires_at": 1.0},  # another version
        {"v": 1, "kind": "deadline"},  # a missing key
        {"v": 1, "kind": "deadline", "expires_at": 1.0, "extra": 1},  # an unknown key
        {"v": 1, "kind": "deadline", "expires_at": "soon"},  # a wrong type
        {"v": 1, "kind": "pickle", "data": "x"},  # an unknown kind
        {"v": 1, "kind": "started", "guest_pid": -1, "guest_start": 0},  # out of range
    ):
        with pytest.raises(ProtocolError):
            messages.decode(msgpack.packb(bad))
    with pytest.raises(wire.WireError, match="exceeds"):
        wire.FrameBuffer().feed((wire.MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(ProtocolError):
        messages.encode(messages.Exited(1, 0, "x" * (wire.MAX_TEXT + 1)))


async def test_a_migrated_guest_runs_under_the_destination_supervisor_and_the_source_is_released(
    tmp_path: Path,
) -> None:
    space = unique()
    peer = {"endpoint": "tcp://127.0.0.1:*", "plaintext": True, "retry_interval": 0.05}
    cfg_a = state_config(tmp_path, "a", 1, lockspace=space)
    cfg_b = state_config(tmp_path, "b", 2, lockspace=space)
    cfg_a["peer"] = cfg_b["peer"] = peer
    supervisors: list[subprocess.Popen[bytes]] = []

    def run_supervisor(manager: actorlock.LockManager) -> None:
        argv = [manager.get_supervisor_path(), *manager.get_supervisor_args(), "sleep", "60"]
        supervisors.append(subprocess.Popen(argv))

    try:
        async with actorlock.plugin_load("memory", cfg_a) as a, actorlock.plugin_load("memory", cfg_b) as b:
            source = await a.new_manager(ObjectType.DOMAIN)
            source.set_parameter("uuid", "vm")
            source.register_resource(ResourceType.DISK, "/d/1.img")
            await source.acquire_object()
            run_supervisor(source)
            with anyio.fail_after(WAIT):
                source_pid = await source.get_child()
            await source.prepare_migrate(b.host.peer_endpoint)
            dest = await b.new_manager(ObjectType.DOMAIN, actorlock.NewFlags.MIGRATE)
            dest.set_parameter("uuid", "vm")
            dest.register_resource(ResourceType.DISK, "/d/1.img")
            run_supervisor(dest)  # the incoming guest, under the destination's own supervisor
            with anyio.fail_after(WAIT):
                dest_pid = await dest.get_child()
            assert parent_of(dest_pid) == supervisors[1].pid
            async with anyio.create_task_group() as tg:
                tg.start_soon(dest.complete_migrate_in, 0)
                tg.start_soon(source.complete_migrate_in, 0)
            released = a.host.supervisors.guest("vm")  # type: ignore[union-attr]
            assert released is not None
            assert released.released
            assert (await dest.inquire()).pid == dest_pid
        # Both coordinators are gone now. The source's supervisor holds no deadline any
        # more; the destination's does, and kills its guest at it.
        with anyio.fail_after(WAIT):
            await wait_gone(dest_pid)
        await anyio.sleep(2 * TIMING["lease_timeout"])
        assert alive(source_pid)
    finally:
        for supervisor in supervisors:
            supervisor.kill()
            supervisor.wait()


async def test_a_guest_that_cannot_be_run_fails_spawn_clearly(tmp_path: Path) -> None:
    async with actorlock.open_host(state_config(tmp_path)) as host:
        vm = host.domain("u1")
        await vm.start([actorlock.disk("/d/1.img")])
        with anyio.fail_after(WAIT), pytest.raises(SupervisorError, match="did not start"):
            await vm.spawn([str(tmp_path / "no-such-guest")])
