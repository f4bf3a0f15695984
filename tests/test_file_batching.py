"""Group commit in the file backend and the state store: what a batch commits, and for whom.

Operations queued while the I/O worker is busy run as one batch: one sync
round for all of them. These tests hold the worker on a step of their own
(a private hook) to queue a batch deterministically.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from actorlock.backends import file as file_backend
from actorlock.backends.base import HostAdvert
from actorlock.backends.file import FileLeaseBackend
from actorlock.errors import BackendError, ResourceBusyError
from actorlock.model import DomainIdentity, HostIdentity, LeaseMode, LeaseOwner, LeaseRequest
from actorlock.statestore import DomainPhase, DomainState, FileStateStore

from .lease_files import lease_lock, lease_payloads, newest

pytestmark = pytest.mark.anyio

A = HostIdentity("host-a", 1)


def owner(n: int) -> LeaseOwner:
    return LeaseOwner(A.name, A.id, f"vm-{n}")


def excl(key: str) -> LeaseRequest:
    return LeaseRequest(key, LeaseMode.EXCLUSIVE)


async def joined(directory: Path, **kwargs: Any) -> FileLeaseBackend:
    backend = FileLeaseBackend(directory, host_dead=60.0, poll_interval=0.01, **kwargs)
    await backend.join(A, "inc-a", HostAdvert())
    return backend


class HeldWorker:
    """Occupies the backend's I/O worker until released, so what is queued meanwhile is one batch."""

    def __init__(self, backend: FileLeaseBackend) -> None:
        self.backend = backend
        self.entered = anyio.Event()
        self.release = threading.Event()

    def step(self, cancel: threading.Event, locked: Mapping[str, int]) -> tuple[None, list[Any]]:
        anyio.from_thread.run_sync(self.entered.set)
        self.release.wait(10)
        return None, []

    async def hold(self) -> None:
        await self.backend._submit(self.step)


def count_commits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Groups per call of the batch commit."""
    calls: list[int] = []
    real = file_backend._commit

    def counting(directory: str, groups: Any, *args: Any) -> list[bool]:
        calls.append(len(groups))
        return real(directory, groups, *args)

    monkeypatch.setattr(file_backend, "_commit", counting)
    return calls


async def test_operations_queued_together_share_one_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await joined(tmp_path)
    commits = count_commits(monkeypatch)
    held = HeldWorker(backend)
    granted: dict[int, tuple[int, ...]] = {}

    async def take(n: int) -> None:
        leases = await backend.acquire(owner(n), [excl(f"k{n}-{i}") for i in range(4)])
        granted[n] = tuple(lease.token for lease in leases)

    async with anyio.create_task_group() as tg:
        tg.start_soon(held.hold)
        await held.entered.wait()
        for n in range(10):
            tg.start_soon(take, n)
        await anyio.wait_all_tasks_blocked()
        held.release.set()
    assert commits == [10], "ten four-record acquisitions should be one group commit"
    assert granted == {n: (1, 1, 1, 1) for n in range(10)}
    records = await backend.records()
    assert len(records) == 40
    assert all(record.holders[0].owner == owner(int(record.key[1:].split("-")[0])) for record in records)
    await backend.aclose()


async def test_conflicting_requests_in_one_batch_are_decided_in_order(tmp_path: Path) -> None:
    """Two descriptions of one lock file exclude each other even in one thread: the later
    request on a key waits for the next batch instead of deadlocking the worker."""
    backend = await joined(tmp_path)
    held = HeldWorker(backend)
    outcomes: dict[int, str] = {}

    async def take(n: int) -> None:
        try:
            await backend.acquire(owner(n), [excl("shared"), excl(f"own-{n}")])
            outcomes[n] = "granted"
        except ResourceBusyError:
            outcomes[n] = "busy"

    with anyio.fail_after(10):  # a deadlocked worker would never answer
        async with anyio.create_task_group() as tg:
            tg.start_soon(held.hold)
            await held.entered.wait()
            for n in range(5):
                tg.start_soon(take, n)
                await anyio.wait_all_tasks_blocked()  # queued in this order
            held.release.set()
    assert outcomes == {0: "granted", 1: "busy", 2: "busy", 3: "busy", 4: "busy"}
    (record,) = await backend.records(["shared"])
    assert [h.owner for h in record.holders] == [owner(0)]
    await backend.aclose()


async def test_a_caller_that_gave_up_before_its_batch_commits_nothing(tmp_path: Path) -> None:
    backend = await joined(tmp_path)
    held = HeldWorker(backend)
    async with anyio.create_task_group() as tg:
        tg.start_soon(held.hold)
        await held.entered.wait()
        with anyio.move_on_after(0.2) as scope:
            await backend.acquire(owner(1), [excl("abandoned")])
        assert scope.cancelled_caught
        tg.start_soon(backend.acquire, owner(2), [excl("kept")])
        await anyio.wait_all_tasks_blocked()
        held.release.set()
    assert [r.key for r in await backend.records()] == ["kept"]
    await backend.aclose()


async def test_a_failed_batch_commit_fails_every_caller_in_it_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await joined(tmp_path)
    await backend.acquire(owner(0), [excl("before")])
    before = lease_payloads(tmp_path)
    held = HeldWorker(backend)
    real_pwrite = os.pwrite
    writes: list[int] = []

    def failing_pwrite(fd: int, data: Any, offset: int) -> int:
        writes.append(fd)
        if len(writes) == 3:
            raise OSError(errno.EIO, "Input/output error")
        return real_pwrite(fd, data, offset)

    failures: list[BaseException] = []

    async def take(n: int) -> None:
        try:
            await backend.acquire(owner(n), [excl(f"x{n}"), excl(f"y{n}")])
        except BackendError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(held.hold)
        await held.entered.wait()
        monkeypatch.setattr(os, "pwrite", failing_pwrite)
        for n in (1, 2):
            tg.start_soon(take, n)
        await anyio.wait_all_tasks_blocked()
        held.release.set()
    monkeypatch.undo()
    assert len(failures) == 2, "both callers of the failed batch must hear of it"
    assert [r.key for r in await backend.records()] == ["before"]
    assert await backend.damaged() == []
    # Lock files were created; none holds a record, and no other file stays.
    assert {k: v for k, v in lease_payloads(tmp_path).items() if v is not None} == before
    for key in ("x1", "y1", "x2", "y2"):
        assert newest(lease_lock(tmp_path, key)) is None
    assert [p.name for p in (tmp_path / "leases").iterdir() if not p.name.endswith(".lock")] == []
    await backend.aclose()


async def test_state_store_batch_writes_only_the_newest_state_of_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStateStore(tmp_path)
    await store.open()
    written: list[str] = []
    real_replace = store._replace

    def replace(path: Path, data: Any, generation: int) -> None:
        written.append(data["phase"])
        real_replace(path, data, generation)

    monkeypatch.setattr(store, "_replace", replace)
    identity = DomainIdentity("u1", "vm1", 1)
    phases = [DomainPhase.REGISTERED, DomainPhase.RUNNING, DomainPhase.PAUSED]
    held = threading.Event()
    entered = anyio.Event()
    batches = 0

    def first_batch_waits(jobs: list[Any]) -> list[Any]:
        nonlocal batches
        batches += 1
        if batches == 1:
            anyio.from_thread.run_sync(entered.set)
            held.wait(10)
        return store._write_batch(jobs)

    monkeypatch.setattr(store._worker, "_run_batch", first_batch_waits)
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.delete_domain, "other")
        await entered.wait()
        for phase in phases:
            tg.start_soon(store.save_domain, DomainState(identity, phase))
            await anyio.wait_all_tasks_blocked()
        held.set()
    assert batches == 2
    assert written == ["paused"]
    data = json.loads((tmp_path / "domains" / "u1.json").read_text())
    assert data["phase"] == "paused"
    assert [state.phase for state in await store.load_domains()] == [DomainPhase.PAUSED]


async def test_a_record_another_writer_replaced_is_decoded_not_taken_from_what_we_wrote(
    tmp_path: Path,
) -> None:
    # The worker keeps the records it wrote to skip decoding them again; a
    # record another backend wrote over one of them must be read as it is.
    mine = await joined(tmp_path)
    other = FileLeaseBackend(tmp_path, host_dead=60.0, poll_interval=0.01)
    await other.join(HostIdentity("host-b", 2), "inc-b", HostAdvert())
    await mine.acquire(owner(1), [excl("disk:/a")])
    (before,) = await mine.records(["disk:/a"])
    assert [h.owner for h in before.holders] == [owner(1)]
    await other.release(owner(1), ["disk:/a"])
    (after,) = await mine.records(["disk:/a"])
    assert after.holders == ()
    assert after.token == before.token
    # And what it decides on is the new record: another domain may take the disk.
    await mine.acquire(owner(2), [excl("disk:/a")])
    for backend in (mine, other):
        await backend.aclose()


async def test_a_record_read_back_equals_the_one_written(tmp_path: Path) -> None:
    # Reading back skips decoding only because the record kept equals what decoding gives.
    backend = await joined(tmp_path)
    await backend.acquire(owner(1), [excl("disk:/a"), LeaseRequest("disk:/s", LeaseMode.SHARED)])
    await backend.acquire(owner(2), [LeaseRequest("disk:/s", LeaseMode.SHARED)])
    kept = await backend.records(["disk:/a", "disk:/s"])
    backend._written.clear()
    assert await backend.records(["disk:/a", "disk:/s"]) == kept
    await backend.aclose()
