"""The public backend conformance suite, run on the memory and file backends."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from actorlock.backends.base import LeaseBackend
from actorlock.backends.file import FileLeaseBackend
from actorlock.backends.memory import MemoryLeaseBackend, MemoryLockspace
from actorlock.testing import conformance

pytestmark = pytest.mark.anyio

POLL = 0.01


@asynccontextmanager
async def memory_backends(
    count: int, *, clock: Callable[[], float], host_dead: float
) -> AsyncIterator[Sequence[LeaseBackend]]:
    space = MemoryLockspace("conformance")
    backends = [
        MemoryLeaseBackend(space, host_dead=host_dead, clock=clock, poll_interval=POLL) for _ in range(count)
    ]
    try:
        yield backends
    finally:
        for backend in backends:
            await backend.aclose()


@pytest.fixture
def file_backends(tmp_path: Path) -> conformance.BackendFactory:
    serial = itertools.count()

    @asynccontextmanager
    async def make(
        count: int, *, clock: Callable[[], float], host_dead: float
    ) -> AsyncIterator[Sequence[LeaseBackend]]:
        directory = tmp_path / f"lockspace-{next(serial)}"
        directory.mkdir()
        backends = [
            FileLeaseBackend(directory, host_dead=host_dead, clock=clock, poll_interval=POLL, io_timeout=10)
            for _ in range(count)
        ]
        try:
            yield backends
        finally:
            for backend in backends:
                await backend.aclose()

    return make


CHECKS = pytest.mark.parametrize("check", conformance.ALL_CHECKS, ids=lambda c: c.__name__)


@CHECKS
async def test_memory_backend(check: conformance.Check) -> None:
    await check(memory_backends)


@CHECKS
async def test_file_backend(check: conformance.Check, file_backends: conformance.BackendFactory) -> None:
    await check(file_backends)


async def test_run_all_reports_the_failing_check() -> None:
    """check_lease_backend runs every check and names the one a broken backend fails."""

    class ForgetfulRelease(MemoryLeaseBackend):
        async def release(self, owner: object, keys: Sequence[str]) -> None:
            return None

    @asynccontextmanager
    async def broken(
        count: int, *, clock: Callable[[], float], host_dead: float
    ) -> AsyncIterator[Sequence[LeaseBackend]]:
        space = MemoryLockspace("broken")
        yield [
            ForgetfulRelease(space, host_dead=host_dead, clock=clock, poll_interval=POLL)
            for _ in range(count)
        ]

    await conformance.check_lease_backend(memory_backends)
    with pytest.raises(conformance.ConformanceError, match=r"^check_acquire_all_or_nothing: "):
        await conformance.check_lease_backend(broken)
