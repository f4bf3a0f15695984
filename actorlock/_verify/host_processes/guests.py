"""Stand-in guests: ``sleep`` processes whose pids are registered like QEMU's, all reaped at the end."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc


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
