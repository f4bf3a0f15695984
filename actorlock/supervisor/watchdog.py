"""The host watchdog: petted after each renewal while every held lease is fresh.

A write to the device pets it; the device resets the host ``fire_timeout``
after the last pet. The host coordinator asks for a pet (:meth:`Watchdog.pet`,
which never waits) after each renewal that kept its lockspace, and only
while no fence is unconfirmed: a coordinator that is stuck, or a guest that
will not die, stops the pets and the host resets before ``host_dead``
(config validation). Device writes run in a worker thread of the watchdog's
own, so a hung device blocks nothing else (and, hung, pets no more).

On a clean stop with nothing held it disarms the device (the magic close,
"V"); with guests still holding leases it leaves it armed: a coordinator
that is not back in time has the host reset.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

__all__ = ["Watchdog"]

log = logging.getLogger(__name__)

PET = b"\0"
MAGIC_CLOSE = b"V"
CLOSE_TIMEOUT = 1.0


class Watchdog:
    def __init__(self, device: Path, *, host: str) -> None:
        self.device = device
        self._host = host
        self._limiter = anyio.CapacityLimiter(1)  # its own thread, apart from lease traffic
        self._due = anyio.Event()
        self.pets = 0
        self.disarm = False  # set by a clean stop that holds nothing

    def pet(self) -> None:
        """Ask for a pet (never waits; pets asked for while one is being written merge)."""
        self._due.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the device and pet it when asked, until cancelled (in the host's task group)."""
        fd = await anyio.to_thread.run_sync(
            os.open, str(self.device), os.O_WRONLY | os.O_CLOEXEC, limiter=self._limiter
        )
        task_status.started()
        try:
            while True:
                await self._due.wait()
                self._due = anyio.Event()
                await anyio.to_thread.run_sync(
                    os.write, fd, PET, limiter=self._limiter, abandon_on_cancel=True
                )
                self.pets += 1
        finally:
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await anyio.to_thread.run_sync(
                    functools.partial(_close, fd, disarm=self.disarm),
                    limiter=self._limiter,
                    abandon_on_cancel=True,
                )


def _close(fd: int, *, disarm: bool) -> None:
    try:
        if disarm:
            os.write(fd, MAGIC_CLOSE)
    finally:
        os.close(fd)
