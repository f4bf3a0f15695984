"""Host crash, takeover after host_dead, and the failure action on lease loss."""

from __future__ import annotations

import anyio
import pytest

import actorlock
from actorlock.backends.memory import MemoryLeaseBackend, shared_lockspace
from actorlock.errors import LeaseLostError, LockspaceLostError, ResourceBusyError
from actorlock.guest import is_running_sync
from actorlock.model import DomainIdentity
from actorlock.testing import host_faults
from actorlock.testing.events import EventLog
from actorlock.testing.faults import FaultyBackend

from .support import TIMING, guest_process, host_config, unique

pytestmark = pytest.mark.anyio


def faulty_memory(space: str) -> FaultyBackend:
    return FaultyBackend(MemoryLeaseBackend(shared_lockspace(space), host_dead=TIMING["host_dead"]))


async def acquire_when_free(domain: actorlock.Domain, path: str, deadline: float) -> list[float]:
    """Retry until the disk is ours; returns the times of the refusals seen first."""
    refusals: list[float] = []
    with anyio.fail_after(deadline):
        while True:
            try:
                await domain.start([actorlock.disk(path)])
                return refusals
            except ResourceBusyError:
                refusals.append(anyio.current_time())
                await anyio.sleep(TIMING["renew_interval"] / 2)


async def test_crashed_host_leases_are_taken_over_only_after_host_dead() -> None:
    space = unique()
    async with actorlock.open_host(host_config("b", 2, lockspace=space)) as b:
        async with actorlock.open_host(host_config("a", 1, lockspace=space)) as a:
            await a.domain("u1").start([actorlock.disk("/d/1.img")])
            crashed_at = anyio.current_time()
            host_faults.crash(a)
        # Nothing was released: the record still names the crashed host.
        record = (await b.leases())[0]
        assert [h.owner.host for h in record.holders] == ["a"]
        refusals = await acquire_when_free(b.domain("u2"), "/d/1.img", deadline=5)
        taken_at = anyio.current_time()
        assert refusals, "the lease was free at once although its holder never released it"
        # b can only have started watching a's record after a's last renewal.
        assert taken_at - crashed_at >= TIMING["host_dead"] - TIMING["renew_interval"]
        record = (await b.leases())[0]
        assert [(h.owner.host, h.token) for h in record.holders] == [("b", 2)]


async def test_a_renewing_host_is_never_taken_over() -> None:
    space = unique()
    async with (
        actorlock.open_host(host_config("a", 1, lockspace=space)) as a,
        actorlock.open_host(host_config("b", 2, lockspace=space)) as b,
    ):
        await a.domain("u1").start([actorlock.disk("/d/1.img")])
        end = anyio.current_time() + 2 * TIMING["host_dead"]
        while anyio.current_time() < end:
            with pytest.raises(ResourceBusyError):
                await b.domain("u2").start([actorlock.disk("/d/1.img")])
            await anyio.sleep(TIMING["renew_interval"])


async def test_lost_lockspace_powers_off_the_guest_before_another_host_can_take_over() -> None:
    space = unique()
    events = EventLog()
    sink = events.sink
    faulty = faulty_memory(space)
    with guest_process() as guest:
        async with (
            actorlock.open_host(host_config("a", 1, lockspace=space), backend=faulty, event_sink=sink) as a,
            actorlock.open_host(host_config("b", 2, lockspace=space), event_sink=sink) as b,
        ):
            vm = a.domain("u1")
            await vm.start([actorlock.disk("/d/1.img")], pid=guest.pid)
            faulty.fail("renew")
            await acquire_when_free(b.domain("u2"), "/d/1.img", deadline=5)
            taken_at = anyio.current_time()
            fenced = events.of("failure_action")
            assert len(fenced) == 1
            fenced_at, fields = fenced[0].time, fenced[0].fields
            assert fields["result"] == f"guest pid {guest.pid} powered off"
            assert fenced_at < taken_at
            assert guest.wait(timeout=5) is not None
            status = await vm.status()
            assert status.phase == "lost"
            with pytest.raises(LeaseLostError):
                await vm.attach()
            with pytest.raises(LockspaceLostError):
                await a.domain("u3").start([actorlock.disk("/d/other.img")])


async def test_pause_action_calls_the_callback_and_keeps_the_guest() -> None:
    space = unique()
    paused: list[tuple[DomainIdentity, int | None]] = []

    async def pause(domain: DomainIdentity, pid: int | None) -> None:
        paused.append((domain, pid))

    faulty = faulty_memory(space)
    events = EventLog()
    cfg = host_config("a", 1, lockspace=space, locking={"failure_action": "pause"})
    with guest_process() as guest:
        async with actorlock.open_host(
            cfg, backend=faulty, pause_callback=pause, event_sink=events.sink
        ) as a:
            vm = a.domain("u1", name="vm1")
            await vm.start([actorlock.disk("/d/1.img")], pid=guest.pid)
            faulty.fail("renew")
            with anyio.fail_after(5):
                await events.wait_for("leases_lost", domain="u1")
            assert paused == [(DomainIdentity("u1", "vm1"), guest.pid)]
            assert is_running_sync(guest.pid, None)


async def test_pause_action_without_a_callback_is_a_config_error() -> None:
    cfg = host_config("a", 1, lockspace=unique(), locking={"failure_action": "pause"})
    with pytest.raises(actorlock.errors.ConfigError, match="pause_callback"):
        async with actorlock.open_host(cfg):
            pass


async def test_ignore_action_leaves_the_guest_running_and_marks_the_leases_lost() -> None:
    space = unique()
    faulty = faulty_memory(space)
    events = EventLog()
    cfg = host_config("a", 1, lockspace=space, locking={"failure_action": "ignore"})
    with guest_process() as guest:
        async with actorlock.open_host(cfg, backend=faulty, event_sink=events.sink) as a:
            vm = a.domain("u1")
            await vm.start([actorlock.disk("/d/1.img")], pid=guest.pid)
            faulty.fail("renew")
            with anyio.fail_after(5):
                await events.wait_for("leases_lost", domain="u1")
            assert "ignore" in (await vm.status()).lost_reason
            assert is_running_sync(guest.pid, None)


async def test_host_grants_again_after_renewal_recovers() -> None:
    space = unique()
    faulty = faulty_memory(space)
    events = EventLog()
    async with actorlock.open_host(
        host_config("a", 1, lockspace=space), backend=faulty, event_sink=events.sink
    ) as a:
        faulty.fail("renew")
        with anyio.fail_after(5):
            await events.wait_for("lockspace_lost")
        with pytest.raises(LockspaceLostError):
            await a.domain("u1").start([actorlock.disk("/d/1.img")])
        faulty.heal()
        with anyio.fail_after(5):
            await events.wait_for("lockspace_regained")
        status = await a.domain("u1").start([actorlock.disk("/d/1.img")])
        assert status.phase == "running"


async def test_stalled_storage_cannot_keep_a_host_live() -> None:
    space = unique()
    faulty = faulty_memory(space)
    events = EventLog()
    with guest_process() as guest:
        async with actorlock.open_host(
            host_config("a", 1, lockspace=space), backend=faulty, event_sink=events.sink
        ) as a:
            vm = a.domain("u1")
            await vm.start([actorlock.disk("/d/1.img")], pid=guest.pid)
            faulty.stall("renew")
            with anyio.fail_after(5):
                await events.wait_for("leases_lost", domain="u1")
            assert guest.wait(timeout=5) is not None
            faulty.heal()


async def test_a_paused_host_fences_as_soon_as_it_wakes_past_its_lease_timeout() -> None:
    space = unique()
    events = EventLog()
    with guest_process() as guest:
        async with actorlock.open_host(host_config("a", 1, lockspace=space), event_sink=events.sink) as a:
            vm = a.domain("u1")
            await vm.start([actorlock.disk("/d/1.img")], pid=guest.pid)
            host_faults.freeze(a)
            await anyio.sleep(TIMING["lease_timeout"] * 1.5)
            assert not a.live
            assert events.of("failure_action") == []
            host_faults.thaw(a)
            with anyio.fail_after(5):
                await events.wait_for("leases_lost", domain="u1")
            assert guest.wait(timeout=5) is not None
