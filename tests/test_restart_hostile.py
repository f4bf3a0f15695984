"""A restart that finds one domain's lease record corrupt loses that domain only (issue 10)."""

from __future__ import annotations

from pathlib import Path

import pytest

import actorlock
from actorlock.errors import CorruptRecordError, LeaseLostError

from .lease_files import lease_lock
from .support import guest_process, host_config
from .test_restart import attach, start_guest

pytestmark = pytest.mark.anyio

# Room for a file-backed restart to resume in time on a loaded machine:
# host_dead >= (lease_timeout + fence_timeout + scheduling_delay) * 1.01.
SLOW_TIMING = {"lease_timeout": 2.0, "host_dead": 3.0}


async def test_a_corrupt_lease_record_after_a_restart_loses_only_its_domain(tmp_path: Path) -> None:
    lockspace = tmp_path / "ls"
    lockspace.mkdir()
    cfg = host_config(
        "a",
        1,
        backend="file",
        file={"lockspace_dir": str(lockspace)},
        host={"state_dir": str(tmp_path / "state")},
        timing=SLOW_TIMING,
    )
    with guest_process() as kept, guest_process() as broken:
        async with actorlock.plugin_load("file", cfg) as a:
            await start_guest(a, "u1", kept.pid, "/d/1.img")
            await start_guest(a, "u2", broken.pid, "/d/2.img")
        lease_lock(lockspace, "disk:/d/2.img").write_bytes(b"garbage")
        async with actorlock.plugin_load("file", cfg) as a2:
            assert a2.host.resumed
            manager = await attach(a2, "u1")
            assert await manager.get_child() == kept.pid
            lost = await attach(a2, "u2")
            with pytest.raises(LeaseLostError, match="could not be read back"):
                await lost.get_child()
            await manager.shutdown()
            # Giving back the corrupt record is an operation on it: that still fails, naming it.
            with pytest.raises(CorruptRecordError) as caught:
                await lost.shutdown()
            assert caught.value.path == str(lease_lock(lockspace, "disk:/d/2.img"))
