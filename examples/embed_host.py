"""Embed actorlock in a management daemon's event loop (asyncio or trio).

Two hosts share a file lockspace in a temporary directory; host-b is refused
while host-a runs the guest, and succeeds once host-a has shut it down.

    python examples/embed_host.py [asyncio|trio]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio

import actorlock
from actorlock.errors import ResourceBusyError


def config(name: str, host_id: int, lockspace: Path) -> dict[str, object]:
    return {
        "host": {"name": name, "id": host_id},
        "timing": {"renew_interval": 0.5, "lease_timeout": 2.0, "fence_timeout": 1.0, "host_dead": 3.5},
        "locking": {"backend": "file", "kill_grace": 0.5},
        "file": {"lockspace_dir": str(lockspace)},
    }


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lockspace = Path(tmp)
        disks = [actorlock.disk("/images/web.qcow2"), actorlock.disk("/images/base.iso", readonly=True)]
        async with (
            actorlock.open_host(config("host-a", 1, lockspace)) as a,
            actorlock.open_host(config("host-b", 2, lockspace)) as b,
        ):
            web_a = a.domain("2b6f0cc9-0000-4000-8000-00000000000a", name="web")
            status = await web_a.start(disks)
            print("host-a runs web:", [(lease.key, lease.token) for lease in status.leases])
            try:
                await b.domain("2b6f0cc9-0000-4000-8000-00000000000a", name="web").start(disks)
            except ResourceBusyError as exc:
                print("host-b refused:", exc)
            state = await web_a.pause()
            print("host-a paused web, lock state:", state.to_string())
            await web_a.start(disks, state=state)
            await web_a.shutdown()
            status = await b.domain("2b6f0cc9-0000-4000-8000-00000000000a", name="web").start(disks)
            print("host-b runs web:", [(lease.key, lease.token) for lease in status.leases])
            for record in await b.leases():
                print("  ", record.key, "token", record.token, [h.owner.host for h in record.holders])


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
