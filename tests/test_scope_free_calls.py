"""Which storage calls the domain actor may make without a cancel scope: only those that never suspend.

Dropping the shield and the io_timeout deadline is safe only where nothing
can land inside the call; a backend or store that may wait (fault injection,
a wrapper, a read delay) must keep both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import anyio.lowlevel
import pytest

from actorlock.backends import memory
from actorlock.backends.base import HostAdvert
from actorlock.backends.memory import MemoryLeaseBackend, MemoryLockspace
from actorlock.model import DomainIdentity, HostIdentity, LeaseMode, LeaseOwner, LeaseRequest, disk
from actorlock.statestore import DomainPhase, DomainState, FileStateStore, MemoryStateStore
from actorlock.statestore import completes_without_suspending as store_completes_without_suspending
from actorlock.testing.faults import FaultyBackend, FaultyStateStore, ForwardingBackend

T = TypeVar("T")


def _memory_backend(read_delay: Callable[[], Awaitable[None]] | None = None) -> MemoryLeaseBackend:
    return MemoryLeaseBackend(MemoryLockspace("scope-free"), host_dead=1.0, read_delay=read_delay)


def test_a_plain_memory_backend_never_suspends() -> None:
    assert memory.completes_without_suspending(_memory_backend())


def test_a_memory_backend_with_a_read_delay_may_suspend() -> None:
    async def delay() -> None:
        await anyio.lowlevel.checkpoint()

    assert not memory.completes_without_suspending(_memory_backend(read_delay=delay))


@pytest.mark.parametrize("wrapper", [ForwardingBackend, FaultyBackend])
def test_a_wrapper_around_a_memory_backend_may_suspend(wrapper: type[ForwardingBackend]) -> None:
    assert not memory.completes_without_suspending(wrapper(_memory_backend()))


def test_a_plain_memory_state_store_never_suspends() -> None:
    assert store_completes_without_suspending(MemoryStateStore())


def test_file_and_wrapped_state_stores_may_suspend(tmp_path: Path) -> None:
    assert not store_completes_without_suspending(FileStateStore(str(tmp_path)))
    assert not store_completes_without_suspending(FaultyStateStore(MemoryStateStore()))


def _run_to_completion_in_one_step(call: Coroutine[Any, Any, T]) -> T:
    """What ``call`` returns, when it finishes without ever suspending; fails otherwise."""
    try:
        call.send(None)
    except StopIteration as done:
        return cast("T", done.value)
    call.close()
    raise AssertionError("the call suspended")


@pytest.mark.anyio
async def test_the_plain_memory_backend_and_store_calls_the_actor_makes_finish_in_one_step() -> None:
    backend = _memory_backend()
    await backend.join(HostIdentity("h", 1), "inc-1", HostAdvert())
    owner = LeaseOwner("h", 1, "dom-uuid", "dom")
    requests = [LeaseRequest(disk(f"/images/d{i}").key, LeaseMode.EXCLUSIVE) for i in range(4)]
    leases = _run_to_completion_in_one_step(backend.acquire(owner, requests))
    assert len(leases) == 4
    _run_to_completion_in_one_step(backend.release(owner, [r.key for r in requests]))
    assert all(not r.holders for r in await backend.records())
    store = MemoryStateStore()
    state = DomainState(DomainIdentity("dom-uuid"), DomainPhase.RUNNING, leases=leases)
    _run_to_completion_in_one_step(store.save_domain(state))
    assert await store.load_domains() == [state]
    _run_to_completion_in_one_step(store.delete_domain("dom-uuid"))
    assert await store.load_domains() == []
