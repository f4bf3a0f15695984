"""Migrations between host coordinators in separate processes, over real ZeroMQ (CURVE, loopback).

The hosts are child processes of :mod:`actorlock._verify.host_processes`,
driven through its JSON-lines control channel (the harness
``examples/two_hosts.py`` is written over). Crashes are SIGKILL: nothing is
released or left, as when a coordinator dies with its machine.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

import actorlock
from actorlock._verify import host_processes
from actorlock.errors import ResourceBusyError
from actorlock.lockspace_report import lockspace_report

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "two_hosts.py"


HostError = host_processes.HostError
TIMING = host_processes.TIMING
PEER = host_processes.PEER_TIMING
RENEW, HOST_DEAD = TIMING["renew_interval"], TIMING["host_dead"]

UUID = "8c0ffee0-1111-4222-8333-444455556666"
DISKS = ("/vm/root.img", "/vm/data.img", "/vm/logs.img")
KEYS = sorted(actorlock.disk(path).key for path in DISKS)
TEST_LIMIT = 30.0  # every test is bounded as a whole, on top of each call's own bound


def guest_args(pid: int) -> dict[str, Any]:
    return {"uuid": UUID, "name": "vm", "disks": list(DISKS), "pid": pid}


async def holders(lockspace: Path) -> dict[str, list[tuple[str, int]]]:
    """Who holds each disk, read straight from the lockspace as ``actorlock leases`` does."""
    report = await lockspace_report(lockspace, 0)
    return {r.key: [(h.owner.host, h.token) for h in r.holders] for r in report.records if r.key in KEYS}


def third_host_config(lockspace: Path) -> dict[str, Any]:
    return {
        "host": {"name": "c", "id": 3},
        "timing": TIMING,
        "locking": {"backend": "file", "kill_grace": host_processes.KILL_GRACE},
        "file": {"lockspace_dir": str(lockspace)},
    }


class Cluster:
    """Host processes on one file lockspace under ``tmp_path``, CURVE keys for a and b."""

    def __init__(self, tmp_path: Path, backend: str, stack: AsyncExitStack, guests: list[Any]) -> None:
        self.workdir = tmp_path
        self.lockspace = tmp_path / "lockspace"
        self.lockspace.mkdir()
        self.backend = backend
        self.keys = host_processes.make_keys(tmp_path, ["a", "b"])
        self._stack = stack
        self.guests = guests

    async def spawn(self, name: str, host_id: int, *, state: bool = False) -> Any:
        """Start host ``name`` (again, after a crash, with the same id and state directory)."""
        state_dir = None
        if state:
            state_dir = self.workdir / f"state-{name}"
            state_dir.mkdir(exist_ok=True)
        host = host_processes.spawn_host(
            name,
            host_id,
            self.lockspace,
            self.workdir,
            keys=self.keys[name],
            backend=self.backend,
            state_dir=state_dir,
        )
        return await self._stack.enter_async_context(host)

    async def guest(self) -> anyio.abc.Process:
        return await host_processes.start_guest(self.guests)


@asynccontextmanager
async def cluster(tmp_path: Path, backend: str) -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        guests = await stack.enter_async_context(host_processes.guest_processes())
        yield Cluster(tmp_path, backend, stack, guests)


async def started_and_prepared(
    c: Cluster, src: Any, dst: Any
) -> tuple[dict[str, list[tuple[str, int]]], float]:
    """The guest runs on ``src``; ``dst`` accepted the migration and registered the guest.

    Returns:
        Who held each disk before the migration, and when prepare was called
        (the migration deadline runs from then).
    """
    await src.call("start", **guest_args((await c.guest()).pid))
    before = await holders(c.lockspace)
    assert {key: [h for h, _ in who] for key, who in before.items()} == {key: [src.name] for key in KEYS}
    prepared_at = anyio.current_time()
    await src.call("prepare", uuid=UUID, dest=dst.endpoint)
    await dst.call("incoming", **guest_args((await c.guest()).pid))
    return before, prepared_at


async def commit_both(src: Any, dst: Any) -> None:
    await host_processes.concurrently(
        partial(src.call, "commit", uuid=UUID), partial(dst.call, "commit", uuid=UUID)
    )


def bumped(before: dict[str, list[tuple[str, int]]], host: str) -> dict[str, list[tuple[str, int]]]:
    """``before`` with every disk moved to ``host`` under the next fencing token."""
    return {key: [(host, who[0][1] + 1)] for key, who in before.items()}


async def test_a_migration_commits_across_processes(tmp_path: Path, anyio_backend: str) -> None:
    with anyio.fail_after(TEST_LIMIT):
        async with cluster(tmp_path, anyio_backend) as c:
            a, b = await c.spawn("a", 1), await c.spawn("b", 2)
            before, _ = await started_and_prepared(c, a, b)
            await commit_both(a, b)
            assert await holders(c.lockspace) == bumped(before, "b")
            assert (await b.call("status", uuid=UUID))["phase"] == "running"
            assert (await a.call("status", uuid=UUID))["phase"] == "migrated"
            await a.call("shutdown", uuid=UUID)
            assert await holders(c.lockspace) == bumped(before, "b")


async def test_destination_killed_after_prepare_the_source_fails_in_time_and_keeps_every_lease(
    tmp_path: Path, anyio_backend: str
) -> None:
    with anyio.fail_after(TEST_LIMIT):
        async with cluster(tmp_path, anyio_backend) as c:
            a, b = await c.spawn("a", 1), await c.spawn("b", 2)
            before, prepared_at = await started_and_prepared(c, a, b)
            await b.kill()
            with pytest.raises(HostError) as caught:
                await a.call("commit", uuid=UUID)
            assert caught.value.is_a("MigrationError"), caught.value
            # The deadline runs from prepare; the answer comes within it plus one request.
            assert (
                anyio.current_time() - prepared_at < PEER["migration_timeout"] + PEER["request_timeout"] + 1
            )
            assert await holders(c.lockspace) == before
            status = await a.call("status", uuid=UUID)
            assert status["phase"] == "running"
            assert sorted(status["leases"]) == sorted([key, who[0][1]] for key, who in before.items())


async def test_source_killed_after_prepare_the_destination_fails_and_a_third_host_waits_host_dead(
    tmp_path: Path, anyio_backend: str
) -> None:
    with anyio.fail_after(TEST_LIMIT):
        async with cluster(tmp_path, anyio_backend) as c:
            a, b = await c.spawn("a", 1), await c.spawn("b", 2)
            before, _ = await started_and_prepared(c, a, b)
            killed_at = anyio.current_time()  # read before the kill: a bound on a's last renewal
            await a.kill()
            # Host c joins only now, so its first look at a's record comes after a's last renewal.
            async with actorlock.open_host(third_host_config(c.lockspace)) as third:
                intruder = third.domain("intruder-uuid", name="intruder")
                disks = [actorlock.disk(path) for path in DISKS]
                refusals = 0
                dead_at = 0.0

                async def destination_commit() -> None:
                    with pytest.raises(HostError) as caught:
                        await b.call("commit", uuid=UUID)
                    assert caught.value.is_a("MigrationError"), caught.value
                    assert "source kept the leases" in caught.value.message

                async def watch_a_die() -> None:
                    nonlocal refusals, dead_at
                    while True:
                        views = {view.record.id: view for view in await third.hosts()}
                        now = anyio.current_time()
                        if not views[1].alive:
                            dead_at = now
                            return
                        # Probe with real acquisitions only well before host_dead: a probe
                        # must not win the race and take the disks while b is still deciding.
                        if now < killed_at + HOST_DEAD - 2 * RENEW:
                            with pytest.raises(ResourceBusyError):
                                await intruder.start(disks)
                            refusals += 1
                        await anyio.sleep(RENEW)  # polling pace

                await host_processes.concurrently(destination_commit, watch_a_die)
                assert refusals >= 3
                assert dead_at - killed_at >= HOST_DEAD - RENEW
                assert (await b.call("status", uuid=UUID))["phase"] != "running"
                # The dead source is still the recorded owner: nobody moved anything.
                assert await holders(c.lockspace) == before
                status = await intruder.start(disks)
                assert anyio.current_time() - killed_at >= HOST_DEAD - RENEW
                assert sorted((lease.key, lease.token) for lease in status.leases) == sorted(
                    (key, token) for key, [(_, token)] in bumped(before, "c").items()
                )
                assert await holders(c.lockspace) == bumped(before, "c")
                await intruder.shutdown()


async def test_source_killed_after_both_committed_keeps_the_destination_running_even_after_a_restart(
    tmp_path: Path, anyio_backend: str
) -> None:
    with anyio.fail_after(TEST_LIMIT):
        async with cluster(tmp_path, anyio_backend) as c:
            a, b = await c.spawn("a", 1, state=True), await c.spawn("b", 2, state=True)
            before, _ = await started_and_prepared(c, a, b)
            await commit_both(a, b)
            await a.kill()
            moved = bumped(before, "b")
            assert await holders(c.lockspace) == moved
            await anyio.sleep(HOST_DEAD + 4 * RENEW)  # a is now dead to everyone
            status = await b.call("status", uuid=UUID)
            assert status["phase"] == "running", status
            assert await holders(c.lockspace) == moved
            # The same host comes back (same id, same state directory) after host_dead.
            a2 = await c.spawn("a", 1, state=True)
            assert not a2.resumed
            assert (await a2.call("status", uuid=UUID))["phase"] == "migrated"
            with pytest.raises(HostError) as caught:
                await a2.call("start", **guest_args((await c.guest()).pid))
            assert caught.value.is_a("ResourceBusyError"), caught.value
            assert "on host b" in caught.value.message
            assert await holders(c.lockspace) == moved
            status = await b.call("status", uuid=UUID)
            assert status["phase"] == "running", status


def test_the_two_hosts_example_runs_and_host_3_is_always_refused() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--rounds", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "ok: 2 migrations committed, 1 cancelled" in out
    refusals = [line for line in out.splitlines() if "host 3 tries every disk" in line]
    # While running, then 4 per committed round and 3 around the cancelled one.
    assert len(refusals) == 1 + 2 * 4 + 3
    assert all(line.rstrip().split(": ")[-1].startswith("refused, held by") for line in refusals)
    assert "disk:/images/web-root.qcow2: a #1 -> b #2" in out
    assert "disk:/images/web-root.qcow2: b #2 -> a #3" in out
    assert "disk:/images/web-root.qcow2: still a #3" in out


async def test_after_a_restart_attach_refuses_a_guest_whose_leases_migrated_away(
    tmp_path: Path, anyio_backend: str
) -> None:
    with anyio.fail_after(TEST_LIMIT):
        async with cluster(tmp_path, anyio_backend) as c:
            a, b = await c.spawn("a", 1, state=True), await c.spawn("b", 2, state=True)
            await started_and_prepared(c, a, b)
            await commit_both(a, b)
            await a.kill()  # the source's QEMU (still running) outlives its coordinator
            a2 = await c.spawn("a", 1, state=True)
            with pytest.raises(HostError) as caught:
                await a2.call("attach", uuid=UUID)
            assert caught.value.is_a("LeaseLostError"), caught.value
