"""Two host coordinators in two processes sharing one file lockspace."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import anyio
import pytest

import actorlock
from actorlock.errors import LockspaceError, ResourceBusyError

from .support import TIMING, host_config

pytestmark = pytest.mark.anyio

# The other host: joins, starts a guest on /d/1.img, says so, then runs until killed.
HOLDER = """
import json, sys, anyio, actorlock
cfg = json.loads(sys.argv[1])
async def main():
    async with actorlock.open_host(cfg) as host:
        status = await host.domain("held-by-a", name="vm-a").start([actorlock.disk("/d/1.img")])
        print(json.dumps({"token": status.leases[0].token}), flush=True)
        await anyio.sleep_forever()
anyio.run(main)
"""


def file_config(name: str, host_id: int, lockspace: Path) -> dict[str, object]:
    return host_config(name, host_id, backend="file", file={"lockspace_dir": str(lockspace)})


async def test_a_host_in_another_process_holds_until_killed_then_is_taken_over_after_host_dead(
    tmp_path: Path,
) -> None:
    lockspace = tmp_path / "ls"
    lockspace.mkdir()
    cfg_a = file_config("a", 1, lockspace)
    async with await anyio.open_process([sys.executable, "-c", HOLDER, json.dumps(cfg_a)]) as proc:
        assert proc.stdout is not None
        with anyio.fail_after(20):
            line = await proc.stdout.receive()
        assert json.loads(line)["token"] == 1
        async with actorlock.open_host(file_config("b", 2, lockspace)) as b:
            with pytest.raises(ResourceBusyError) as caught:
                await b.domain("u2").start([actorlock.disk("/d/1.img")])
            assert caught.value.holders == (("a", "held-by-a"),)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            killed_at = anyio.current_time()
            with anyio.fail_after(10):
                while True:
                    try:
                        status = await b.domain("u2").start([actorlock.disk("/d/1.img")])
                        break
                    except ResourceBusyError:
                        await anyio.sleep(TIMING["renew_interval"])
            assert anyio.current_time() - killed_at >= TIMING["host_dead"] - TIMING["renew_interval"]
            assert status.leases[0].token == 2


async def test_a_missing_lockspace_directory_stops_the_host_from_starting(tmp_path: Path) -> None:
    with pytest.raises(LockspaceError, match="does not exist"):
        async with actorlock.open_host(file_config("a", 1, tmp_path / "absent")):
            pass
    assert not (tmp_path / "absent").exists()


async def test_a_corrupt_lease_record_refuses_the_start_and_changes_nothing(tmp_path: Path) -> None:
    from actorlock.backends.file import lease_file_name

    lockspace = tmp_path / "ls"
    lockspace.mkdir()
    async with actorlock.open_host(file_config("a", 1, lockspace)) as a:
        vm = a.domain("u1")
        await vm.start([actorlock.disk("/d/1.img"), actorlock.disk("/d/2.img")])
        await vm.shutdown()
        bad = lockspace / "leases" / f"{lease_file_name('disk:/d/2.img')}.lock"
        bad.write_text("{ this is not a lease record")
        before = {p.name: p.read_bytes() for p in (lockspace / "leases").iterdir()}
        with pytest.raises(actorlock.errors.CorruptRecordError) as caught:
            await vm.start([actorlock.disk("/d/1.img"), actorlock.disk("/d/2.img")])
        assert str(bad) in str(caught.value)
        after = {p.name: p.read_bytes() for p in (lockspace / "leases").iterdir()}
        assert after == before
        assert (await vm.status()).leases == ()
