"""Fault injection for slow and stuck storage: each switch has its one effect, and heals.

Real time, on asyncio and on trio; the delays are a few tens of milliseconds.
"""

from __future__ import annotations

import anyio
import anyio.to_thread
import pytest

from actorlock.backends.base import HostAdvert
from actorlock.backends.memory import MemoryLeaseBackend, MemoryLockspace
from actorlock.errors import InvalidParameterError
from actorlock.model import DomainIdentity, HostIdentity, LeaseMode, LeaseOwner, LeaseRequest
from actorlock.statestore import DomainPhase, DomainState, HostPersisted, MemoryStateStore
from actorlock.testing.faults import (
    FaultyBackend,
    FaultyStateStore,
    Slowness,
    saturate_thread_pool,
)

pytestmark = pytest.mark.anyio

HOST_DEAD = 0.6
DELAY = 0.08
ADVERT = HostAdvert(boot_id="boot", renewed_monotonic=0.0)
OWNER = LeaseOwner("h1", 1, "vm1", "vm1")
REQUEST = [LeaseRequest("disk:/d/1.img", LeaseMode.EXCLUSIVE)]


async def joined(space: MemoryLockspace) -> FaultyBackend:
    faulty = FaultyBackend(MemoryLeaseBackend(space, host_dead=HOST_DEAD), seed=1)
    await faulty.join(HostIdentity("h1", 1), "inc-1", ADVERT)
    return faulty


def holders(space: MemoryLockspace) -> list[str]:
    record = space.records.get("disk:/d/1.img")
    return [h.owner.domain for h in record.holders] if record is not None else []


async def test_hold_all_stalls_every_operation_until_released() -> None:
    space = MemoryLockspace()
    faulty = await joined(space)
    counter = space.hosts[1].counter
    faulty.hold_all()
    holding = faulty.held  # a local, so mypy does not narrow faulty.held for the check below
    assert holding
    done: list[str] = []

    async def call(name: str, operation: object) -> None:
        await operation  # type: ignore[misc]
        done.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "renew", faulty.renew(ADVERT))
        tg.start_soon(call, "acquire", faulty.acquire(OWNER, REQUEST))
        tg.start_soon(call, "lockspace_id", faulty.lockspace_id())
        await anyio.sleep(DELAY)
        assert done == []
        assert space.hosts[1].counter == counter, "nothing reached storage"
        assert holders(space) == []
        faulty.release_all()
    assert sorted(done) == ["acquire", "lockspace_id", "renew"]
    assert space.hosts[1].counter == counter + 1
    assert holders(space) == ["vm1"]
    assert not faulty.held
    # fail/stall/heal are separate switches: heal() does not release a hold.
    faulty.hold_all()
    faulty.heal()
    with anyio.move_on_after(DELAY) as scope:
        await faulty.hosts()
    assert scope.cancelled_caught
    faulty.release_all()
    assert await faulty.hosts()


async def test_a_slow_call_before_storage_writes_late() -> None:
    space = MemoryLockspace()
    faulty = await joined(space)
    faulty.slow("acquire", DELAY, "before", least=DELAY)
    async with anyio.create_task_group() as tg:
        tg.start_soon(faulty.acquire, OWNER, REQUEST)
        await anyio.sleep(DELAY / 2)
        assert holders(space) == [], "the write has not landed yet"
    assert holders(space) == ["vm1"]


async def test_a_slow_call_after_storage_writes_at_once_and_answers_late() -> None:
    space = MemoryLockspace()
    faulty = await joined(space)
    faulty.slow("acquire", DELAY, "after", least=DELAY)
    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(faulty.acquire, OWNER, REQUEST)
        await anyio.sleep(DELAY / 2)
        assert holders(space) == ["vm1"], "the write landed at once"
    assert anyio.current_time() - started >= DELAY
    # Only the slowed operation is slow; unslow ends it.
    started = anyio.current_time()
    await faulty.records()
    assert anyio.current_time() - started < DELAY
    faulty.unslow()
    assert faulty.slowed == {}


async def test_unslowing_waits_for_the_delays_already_drawn() -> None:
    space = MemoryLockspace()
    faulty = await joined(space)
    faulty.slow("renew", DELAY, "before", least=DELAY)
    async with anyio.create_task_group() as tg:
        tg.start_soon(faulty.renew, ADVERT)
        await anyio.sleep(DELAY / 4)
        faulty.unslow("renew")
        started = anyio.current_time()
        await faulty.slow_settled()
        assert anyio.current_time() - started >= DELAY / 2, "the delay in flight ran out first"
    started = anyio.current_time()
    await faulty.renew(ADVERT)
    assert anyio.current_time() - started < DELAY


async def test_the_read_delay_hook_sleeps_only_while_judgements_are_delayed() -> None:
    space = MemoryLockspace()
    faulty = FaultyBackend(MemoryLeaseBackend(space, host_dead=HOST_DEAD), seed=1)
    # The memory backend awaits the hook between reading host records and judging them.
    faulty.inner = MemoryLeaseBackend(space, host_dead=HOST_DEAD, read_delay=faulty.read_delay)
    await faulty.join(HostIdentity("h1", 1), "inc-1", ADVERT)
    started = anyio.current_time()
    await faulty.hosts()
    assert anyio.current_time() - started < DELAY
    faulty.delay_judgements(DELAY, least=DELAY)
    started = anyio.current_time()
    await faulty.hosts()
    assert anyio.current_time() - started >= DELAY
    faulty.delay_judgements(None)
    await faulty.judgements_settled()
    started = anyio.current_time()
    await faulty.hosts()
    assert anyio.current_time() - started < DELAY


async def test_a_slow_state_store_slows_its_writes_only() -> None:
    inner = MemoryStateStore()
    store = FaultyStateStore(inner, seed=1)
    host = HostPersisted("h1", 1, "inc-1")
    state = DomainState(DomainIdentity("vm1"), DomainPhase.RUNNING)
    store.slow(DELAY, "before", least=DELAY)
    assert store.slowed == Slowness(DELAY, "before", DELAY)
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.save_domain, state)
        await anyio.sleep(DELAY / 2)
        assert inner.domains == {}, "the write has not landed yet"
        started = anyio.current_time()
        assert await store.load_domains() == [], "reads are not slowed"
        assert anyio.current_time() - started < DELAY / 2
    assert await store.load_domains() == [state]
    started = anyio.current_time()
    await store.save_host(host)
    await store.delete_domain("vm1")
    assert anyio.current_time() - started >= 2 * DELAY
    store.heal()
    await store.settled()
    started = anyio.current_time()
    await store.save_host(host)
    assert anyio.current_time() - started < DELAY
    assert await store.load_host() == host
    assert store.writes == 4


async def test_a_saturated_pool_holds_worker_threads_until_released() -> None:
    release = anyio.Event()
    ran: list[float] = []
    async with anyio.create_task_group() as tg:
        await tg.start(saturate_thread_pool, release)
        limiter = anyio.to_thread.current_default_thread_limiter()
        assert limiter.available_tokens == 0

        async def thread() -> None:
            await anyio.to_thread.run_sync(lambda: None)
            ran.append(anyio.current_time())

        tg.start_soon(thread)
        await anyio.sleep(DELAY)
        assert ran == [], "no worker thread while the pool is saturated"
        # A limiter of its own is not affected (as the fence board's).
        await anyio.to_thread.run_sync(lambda: None, limiter=anyio.CapacityLimiter(1))
        released_at = anyio.current_time()
        release.set()
    assert ran
    assert ran[0] >= released_at
    assert limiter.available_tokens == limiter.total_tokens


def test_delays_are_checked() -> None:
    with pytest.raises(InvalidParameterError):
        Slowness(-1.0)
    with pytest.raises(InvalidParameterError):
        Slowness(0.1, "either", 0.2)
    with pytest.raises(InvalidParameterError):
        Slowness(0.1, "sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown backend operation"):
        FaultyBackend(MemoryLeaseBackend(MemoryLockspace(), host_dead=HOST_DEAD)).slow("fsync", 0.1)
