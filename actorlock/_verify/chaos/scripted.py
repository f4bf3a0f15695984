"""Chaos host processes driven by a test, for one exact story: :func:`chaos_hosts`."""

from __future__ import annotations

import os
from collections.abc import (
    AsyncIterator,
    Callable,
    Sequence,
)
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from ...errors import InvalidParameterError
from ...testing.checker import Violation, check
from ...testing.history import (
    History,
)
from .codec import merge_histories
from .core import Slot
from .driver import Driver
from .settings import SLACK, TIMING


class ChaosHosts:
    """Scripted access to chaos host processes, for a test that needs one exact story.

    Everything is recorded exactly as in :func:`run_chaos`; :meth:`check`
    merges what has been recorded so far and judges it. Create with
    :func:`chaos_hosts`.
    """

    def __init__(self, driver: Driver) -> None:
        self._driver = driver

    @property
    def names(self) -> list[str]:
        return list(self._driver.slots)

    def _slot(self, host: str) -> Slot:
        try:
            return self._driver.slots[host]
        except KeyError:
            raise InvalidParameterError(f"no chaos host {host!r}") from None

    async def start_guest(self, host: str, uuid: str, paths: Sequence[str]) -> bool:
        """Start guest ``uuid`` on ``host`` with exclusive disks ``paths``; True if it runs."""
        self._driver.catalog[uuid] = tuple((path, False) for path in paths)
        return await self._driver.start_guest(self._slot(host), uuid)

    async def probe(self, host: str, path: str) -> bool | None:
        """Take ``path`` from ``host`` for an instant (one write): True taken, False refused."""
        return await self._driver._probe(self._slot(host), path)

    def freeze(self, host: str) -> None:
        """SIGSTOP the host process (its coordinator and its guests' writes)."""
        self._driver.freeze(self._slot(host))

    def thaw(self, host: str) -> None:
        """SIGCONT a frozen host process."""
        slot = self._slot(host)
        if slot.frozen and slot.proc is not None:
            self._driver.thaw(slot, slot.proc)

    async def kill9(self, host: str) -> None:
        """SIGKILL the host process and every guest on it."""
        await self._driver._kill9(self._slot(host))

    async def kill_coordinator_for_good(self, host: str) -> list[float]:
        """SIGKILL the host process, never to restart it, and wait for its running guests to die.

        Returns, per guest, when it was seen dead in seconds after the last
        lease deadline its coordinator pushed; a guest still alive past that
        plus fence_timeout (and a little) is in :attr:`findings`.
        """
        driver = self._driver
        before = len(driver.kill_margins)
        await driver._killed_for_good(self._slot(host))
        return driver.kill_margins[before:]

    async def kill_supervisor(self, host: str, uuid: str) -> dict[str, Any]:
        """SIGKILL the supervisor of guest ``uuid`` on ``host``: whether its guest died with it, and when."""
        proc = self._slot(host).proc
        if proc is None:
            raise InvalidParameterError(f"chaos host {host} is down")
        return await proc.call("kill_supervisor", uuid=uuid)

    @property
    def findings(self) -> list[str]:
        """What the driver judged wrong itself (a guest that outlived its bound)."""
        return list(self._driver.findings)

    @asynccontextmanager
    async def stalled_storage(
        self, host: str, disks: Sequence[str] = (), *, limit: float = 30.0
    ) -> AsyncIterator[bool]:
        """Stall ``host``'s storage within the block; yields True once a helper process holds it.

        The helper holds the host's liveness lock and the lease locks of the
        exclusive ``disks`` (against other hosts acquiring them too); it is
        killed, releasing everything, when the block ends, and exits by
        itself should the block last much longer than ``limit`` seconds.
        """
        slot = self._slot(host)
        stall = self._driver.begin_stall(slot, [(path, False) for path in disks])
        async with self._driver.stalled(slot, stall, limit) as held:
            yield held

    def check(self, *, slack: float = SLACK) -> tuple[History, list[Violation]]:
        """The merged history so far and what the checker finds in it."""
        history, _ = merge_histories(self._driver.workdir, self._driver.history.events, self._driver.slots)
        return history, check(history, host_dead=TIMING["host_dead"], slack=slack)


@asynccontextmanager
async def chaos_hosts(
    workdir: str | os.PathLike[str],
    *,
    hosts: int = 2,
    seed: int = 0,
    plaintext: bool = False,
    host_backends: Sequence[str] = ("asyncio", "trio"),
    out: Callable[[str], object] = print,
) -> AsyncIterator[ChaosHosts]:
    """Host processes as :func:`run_chaos` runs them, driven by the caller; all killed on exit.

    Args:
        workdir: an empty (or new) directory for the lockspace, histories and logs.
        hosts: how many host processes.
        seed: seeds the guests' write phases.
        plaintext: run the peer service without CURVE.
        host_backends: the event loops of the host processes, used in turn.
        out: where progress lines go.
    """
    directory = Path(workdir)
    await anyio.Path(directory / "lockspace").mkdir(parents=True)
    # An error is raised again outside the task group: as itself, not in an exception group.
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        driver = Driver(
            tg, directory, seed=seed, hosts=hosts, plaintext=plaintext, host_backends=host_backends, out=out
        )
        try:
            await driver.start_hosts()
            yield ChaosHosts(driver)
        except Exception as exc:
            error = exc
        finally:
            await driver.close()
            tg.cancel_scope.cancel()
    if error is not None:
        raise error
