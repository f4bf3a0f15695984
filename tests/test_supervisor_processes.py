"""A supervised guest outlives nothing it should not: real coordinator, supervisor and guest processes.

Each coordinator runs in a child process under a small subreaper, so the
supervisor it detaches (which outlives it) and the guest are reaped by the
test's own descendants whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

import actorlock
from actorlock.errors import ResourceBusyError
from actorlock.timing_presets import fast_timing

from .test_supervisor import alive, wait_gone

pytestmark = pytest.mark.anyio

# Wider than tests/support.TIMING: these hosts are separate interpreters on a busy machine.
PROCESS_TIMING = fast_timing(scale=2, lease_timeout=1.0, fence_timeout=0.5, host_dead=1.8)
WAIT = 20.0

# Becomes the subreaper of what it starts: the coordinator, then the supervisor it detaches.
REAPER = """
import ctypes, os, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
print(pid, flush=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""

# A coordinator: "spawn" starts vm1 on /d/1.img under its supervisor; "attach" is a
# restarted libvirtd finding it again (NewFlags.ATTACH + get_child).
COORDINATOR = """
import json, sys, anyio, actorlock
from actorlock import NewFlags, ObjectType, ResourceType
cfg, mode, backend = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
async def main():
    async with actorlock.plugin_load("file", cfg) as plugin:
        host = plugin.host
        if mode == "spawn":
            vm = host.domain("vm1")
            await vm.start([actorlock.disk("/d/1.img")])
            pid = await vm.spawn(["sleep", "600"])
        else:
            manager = await plugin.new_manager(ObjectType.DOMAIN, NewFlags.ATTACH)
            manager.set_parameter("uuid", "vm1")
            pid = await manager.get_child()
            service = host.supervisors
            with anyio.fail_after(10):  # its supervisor reconnects
                while service.guest("vm1") is None or not service.guest("vm1").connected:
                    await anyio.sleep(0.02)
        guest = host.supervisors.guest("vm1")
        info = {"pid": pid, "supervisor": guest.supervisor_pid, "resumed": host.resumed}
        print(json.dumps(info), flush=True)
        await anyio.sleep_forever()
anyio.run(main, backend=backend)
"""


# The restart test must start a new interpreter within lease_timeout, on a loaded machine.
RESTART_TIMING = fast_timing(scale=2, lease_timeout=4.0, fence_timeout=1.0, host_dead=5.6)


def host_cfg(
    name: str, host_id: int, lockspace: Path, state: Path | None, timing: dict[str, float] = PROCESS_TIMING
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "host": {"name": name, "id": host_id},
        "timing": dict(timing),
        "locking": {"backend": "file", "kill_grace": 0.2},
        "file": {"lockspace_dir": str(lockspace)},
    }
    if state is not None:
        cfg["host"]["state_dir"] = str(state)
    return cfg


class Coordinator:
    """A coordinator process (under its reaper) and what it printed."""

    def __init__(self, reaper: Process) -> None:
        self.reaper = reaper
        self._buffer = b""
        self.pid = 0

    async def line(self) -> str:
        assert self.reaper.stdout is not None
        with anyio.fail_after(WAIT):
            while b"\n" not in self._buffer:
                self._buffer += await self.reaper.stdout.receive()
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.pid and alive(self.pid):
            os.kill(self.pid, sig)


@asynccontextmanager
async def coordinator(cfg: dict[str, Any], mode: str, backend: str) -> AsyncIterator[Coordinator]:
    argv = [sys.executable, "-c", REAPER, "-c", COORDINATOR, json.dumps(cfg), mode, backend]
    reaper = await anyio.open_process(argv, stderr=None)
    proc = Coordinator(reaper)
    try:
        proc.pid = int(await proc.line())
        yield proc
    finally:
        proc.kill(signal.SIGKILL)
        with anyio.CancelScope(shield=True), anyio.fail_after(WAIT):
            await reaper.wait()  # after its descendants (supervisor and guest too, once killed)
        await reaper.aclose()


async def started(proc: Coordinator) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(await proc.line())
    return info


def cleanup(info: dict[str, Any]) -> None:
    """Kill what a failed test may leave: the supervisor first (its guest follows it)."""
    for pid in (info.get("supervisor", 0), info.get("pid", 0)):
        if pid and alive(pid):
            # The guest may die with its supervisor between the check and the kill.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_a_coordinator_killed_for_good_has_its_guest_killed_before_another_host_takes_the_disk(
    tmp_path: Path, anyio_backend: str
) -> None:
    lockspace, state = tmp_path / "ls", tmp_path / "state-a"
    lockspace.mkdir()
    state.mkdir()
    info: dict[str, Any] = {}
    async with coordinator(host_cfg("a", 1, lockspace, state), "spawn", anyio_backend) as a:
        try:
            info = await started(a)
            assert alive(info["pid"])
            async with actorlock.open_host(host_cfg("b", 2, lockspace, None)) as b:
                with pytest.raises(ResourceBusyError):
                    await b.domain("vm2").start([actorlock.disk("/d/1.img")])
                events: dict[str, float] = {}

                async def guest_dies() -> None:
                    await wait_gone(info["pid"])
                    events["guest dead"] = time.monotonic()

                async def b_takes_over() -> None:
                    while True:
                        try:
                            await b.domain("vm2").start([actorlock.disk("/d/1.img")])
                        except ResourceBusyError:
                            await anyio.sleep(PROCESS_TIMING["renew_interval"])
                            continue
                        events["taken over"] = time.monotonic()
                        return

                a.kill(signal.SIGKILL)  # and never restarted
                events["killed"] = time.monotonic()
                with anyio.fail_after(WAIT):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(guest_dies)
                        tg.start_soon(b_takes_over)
                assert events["guest dead"] < events["taken over"]
                took = events["guest dead"] - events["killed"]
                print(f"guest dead {took:.3f}s after the coordinator's kill")
        finally:
            cleanup(info)


async def test_a_stopped_coordinator_has_its_guest_killed(tmp_path: Path, anyio_backend: str) -> None:
    lockspace, state = tmp_path / "ls", tmp_path / "state-a"
    lockspace.mkdir()
    state.mkdir()
    info: dict[str, Any] = {}
    async with coordinator(host_cfg("a", 1, lockspace, state), "spawn", anyio_backend) as a:
        try:
            info = await started(a)
            a.kill(signal.SIGSTOP)  # frozen: it renews nothing and pushes nothing
            with anyio.fail_after(WAIT):
                await wait_gone(info["pid"])
            assert alive(info["supervisor"]) or not alive(info["pid"])
        finally:
            cleanup(info)
            a.kill(signal.SIGKILL)


async def test_killing_the_supervisor_kills_the_guest(tmp_path: Path, anyio_backend: str) -> None:
    lockspace, state = tmp_path / "ls", tmp_path / "state-a"
    lockspace.mkdir()
    state.mkdir()
    info: dict[str, Any] = {}
    async with coordinator(host_cfg("a", 1, lockspace, state), "spawn", anyio_backend) as a:
        try:
            info = await started(a)
            os.kill(info["supervisor"], signal.SIGKILL)
            with anyio.fail_after(WAIT):
                await wait_gone(info["pid"])
            assert alive(a.pid)  # the coordinator was never involved
        finally:
            cleanup(info)


async def test_a_coordinator_restarted_in_time_finds_its_supervised_guest_running(
    tmp_path: Path, anyio_backend: str
) -> None:
    lockspace, state = tmp_path / "ls", tmp_path / "state-a"
    lockspace.mkdir()
    state.mkdir()
    cfg = host_cfg("a", 1, lockspace, state, RESTART_TIMING)
    info: dict[str, Any] = {}
    try:
        async with coordinator(cfg, "spawn", anyio_backend) as first:
            info = await started(first)
            first.kill(signal.SIGKILL)
            killed = anyio.current_time()
            async with coordinator(cfg, "attach", anyio_backend) as second:
                again = await started(second)
                assert again["resumed"] is True
                assert (again["pid"], again["supervisor"]) == (info["pid"], info["supervisor"])
                # Past the deadline the first coordinator pushed: only the second's kept it alive.
                past_old_deadline = killed + RESTART_TIMING["lease_timeout"] + 0.5
                await anyio.sleep(max(0.0, past_old_deadline - anyio.current_time()))
                assert alive(info["pid"])
                async with actorlock.open_host(host_cfg("b", 2, lockspace, None, RESTART_TIMING)) as b:
                    with pytest.raises(ResourceBusyError):
                        await b.domain("vm2").start([actorlock.disk("/d/1.img")])
                cleanup(info)
    finally:
        cleanup(info)
