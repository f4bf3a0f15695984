"""The simulated cluster: each fault call has its one effect, and the checker agrees.

Most tests run on trio with the simulator's virtual clock: simulated seconds
pass at once, so waiting for ``host_dead`` costs nothing. Two run in real
time: a file lockspace (on both event loops), and a coordinator restart that
the coordinator itself times with ``time.monotonic()``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from actorlock.errors import (
    ActorlockError,
    InvalidParameterError,
    InvalidStateError,
    LockspaceLostError,
    NotSupportedError,
    ResourceBusyError,
    StaleLockStateError,
)
from actorlock.model import LeaseMode, disk
from actorlock.testing.checker import Rule
from actorlock.testing.clock import virtual_clock
from actorlock.testing.cluster import SIM_TIMING, Cluster, GuestState, HostState, open_cluster
from actorlock.testing.faults import Shape
from actorlock.testing.history import (
    AcquireRefused,
    CoordinatorCrashed,
    FailureActionRan,
    FaultInjected,
    FaultsHealed,
    GuestDisksChanged,
    GuestStarted,
    GuestStopped,
    GuestWrote,
    HostCrashed,
    HostJoined,
    HostRecovered,
    LeaseAcquired,
    LeaseLost,
    LeaseReleased,
    StopReason,
)

pytestmark = pytest.mark.anyio

RENEW = SIM_TIMING["renew_interval"]
LEASE_TIMEOUT = SIM_TIMING["lease_timeout"]
HOST_DEAD = SIM_TIMING["host_dead"]
D1, D2, D3 = "/d/1.img", "/d/2.img", "/d/3.img"
K1, K2 = disk(D1).key, disk(D2).key
# Simulated seconds on the virtual clock; real seconds for the file lockspace.
WAIT = 10.0


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("trio", {"clock": virtual_clock()})


async def take_over(cluster: Cluster, host: str, path: str) -> float:
    """Probe ``path`` from ``host`` every half renewal until it is ours; the time it was."""
    with anyio.fail_after(WAIT):
        for _attempt in range(int(WAIT / RENEW) * 2):
            if await cluster.probe(host, path):
                return cluster.now()
            await anyio.sleep(RENEW / 2)
    raise AssertionError(f"{host} never got {path}")


def writes_by(cluster: Cluster, host: str, domain: str, *, after: float = -1.0) -> list[GuestWrote]:
    return [w for w in cluster.history.of(GuestWrote, host=host, domain=domain) if w.time > after]


async def test_the_virtual_clock_stands_still_while_a_worker_thread_runs() -> None:
    woke: list[float] = []

    async def sleeper() -> None:
        await anyio.sleep(1.0)
        woke.append(anyio.current_time())

    start = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper)
        await anyio.to_thread.run_sync(time.sleep, 0.02)
        # A MockClock would have jumped to the sleeper's deadline meanwhile.
        assert anyio.current_time() == start
        assert woke == []
    assert woke == [start + 1.0]


async def test_crash_host_kills_its_guests_and_its_leases_wait_host_dead() -> None:
    async with open_cluster(3) as cluster:
        await cluster.start_guest("h1", "vm1", [D1, disk(D2, shared=True)])
        await anyio.sleep(5 * RENEW)
        assert writes_by(cluster, "h1", "vm1"), "a running guest writes"
        await cluster.crash_host("h1")
        crashed_at = cluster.now()
        assert cluster.host("h1").state is HostState.CRASHED
        assert cluster.guest("h1", "vm1").state is GuestState.STOPPED
        stopped = cluster.history.of(GuestStopped, host="h1")
        assert [(e.domain, e.reason) for e in stopped] == [("vm1", StopReason.HOST_DIED)]
        assert [e.time for e in cluster.history.of(HostCrashed)] == [crashed_at]
        # Nothing was released: the records still name the dead host.
        records = {r.key: r for r in await cluster.api("h2").leases()}
        assert [h.owner.host for h in records[K1].holders] == ["h1"]
        taken_at = await take_over(cluster, "h2", D1)
        assert taken_at - crashed_at >= HOST_DEAD - RENEW
        refusals = cluster.history.of(AcquireRefused, host="h2")
        assert refusals
        assert all(r.holders == (("h1", "vm1"),) for r in refusals)
        assert not writes_by(cluster, "h1", "vm1", after=crashed_at)
        assert cluster.check() == []


async def test_a_crashed_host_rejoins_as_a_new_incarnation() -> None:
    async with open_cluster(3) as cluster:
        await cluster.start_guest("h1", "vm1", [D1])
        before = cluster.history.of(HostJoined, host="h1")
        await cluster.crash_host("h1")
        crashed_at = cluster.now()
        with anyio.fail_after(WAIT):
            api = await cluster.rejoin_host("h1")
        assert not api.resumed
        assert cluster.now() - crashed_at >= HOST_DEAD - RENEW, "joining waits for the old record to die"
        joined = cluster.history.of(HostJoined, host="h1")[-1]
        assert joined.incarnation != before[0].incarnation
        assert cluster.history.of(HostRecovered, host="h1")
        # The new incarnation's own old entry is dead to it: the guest can start again at once.
        guest = await cluster.start_guest("h1", "vm1", [D1])
        assert guest.leases[K1].token == 2
        assert cluster.check() == []


async def test_coordinator_crash_and_restart_in_time_keeps_leases_and_tokens() -> None:
    async with open_cluster(3) as cluster:
        guest = await cluster.start_guest("h1", "vm1", [D1, D2])
        tokens = {k: lease.token for k, lease in guest.leases.items()}
        await cluster.crash_coordinator("h1")
        crashed_at = cluster.now()
        assert cluster.history.of(CoordinatorCrashed, host="h1")
        # The guest keeps running without its coordinator, and nobody may take its disks.
        assert not await cluster.probe("h2", D1)
        await anyio.sleep(LEASE_TIMEOUT / 3)
        assert writes_by(cluster, "h1", "vm1", after=crashed_at)
        with anyio.fail_after(WAIT):
            api = await cluster.restart_coordinator("h1")
        assert api.resumed
        assert guest.state is GuestState.RUNNING
        status = await api.domain("vm1").status()
        assert status.phase == "running"
        assert {lease.key: lease.token for lease in status.leases} == tokens
        records = {r.key: r for r in await api.leases()}
        assert {k: [(h.owner.host, h.token) for h in records[k].holders] for k in tokens} == {
            k: [("h1", t)] for k, t in tokens.items()
        }
        # Still renewing: long after host_dead the disks stay ours.
        await anyio.sleep(2 * HOST_DEAD)
        assert not await cluster.probe("h3", D2)
        assert guest.state is GuestState.RUNNING
        assert cluster.check() == []


async def test_pause_host_past_lease_timeout_fences_on_resume_and_takeover_comes_after() -> None:
    async with open_cluster(3) as cluster:
        await cluster.start_guest("h1", "vm1", [D1])
        await cluster.pause_host("h1")
        paused_at = cluster.now()
        assert cluster.history.of(FaultInjected, host="h1")
        await anyio.sleep(1.2 * LEASE_TIMEOUT)  # within host_dead - fence_timeout - renew_interval
        coordinator = cluster.host("h1").api
        assert coordinator is not None
        assert not coordinator.live, "its lease expired while it slept"
        assert not await cluster.probe("h2", D1), "a paused host's lease is not free before host_dead"
        assert not writes_by(cluster, "h1", "vm1", after=paused_at), "frozen guests do not write"
        assert not cluster.history.of(FailureActionRan), "a frozen coordinator fences nothing"
        await cluster.resume_host("h1")
        with anyio.fail_after(WAIT):
            fenced = await cluster.wait_for(GuestStopped, host="h1", domain="vm1", reason=StopReason.FENCED)
            await cluster.wait_for(LeaseLost, host="h1", domain="vm1")
        assert fenced.time == cluster.history.of(FaultsHealed)[-1].time, "fenced the moment it woke"
        assert cluster.guest("h1", "vm1").state is GuestState.FENCED
        assert not writes_by(cluster, "h1", "vm1", after=paused_at)
        # h1 renews again, so its entry stays until the fenced guest is destroyed.
        assert not await cluster.probe("h2", D1)
        await cluster.tidy()
        taken_at = await take_over(cluster, "h2", D1)
        assert taken_at >= fenced.time
        assert cluster.check() == []


async def test_failing_renewals_fence_the_guest_before_anyone_takes_over() -> None:
    async with open_cluster(3) as cluster:
        await cluster.start_guest("h1", "vm1", [D1])
        await cluster.fail_backend("h1", "renew")
        with anyio.fail_after(WAIT):
            fenced = await cluster.wait_for(GuestStopped, host="h1", domain="vm1", reason=StopReason.FENCED)
        (action,) = cluster.history.of(FailureActionRan, host="h1")
        assert (action.domain, action.action, action.result) == ("vm1", "pause", "guest paused by callback")
        taken_at = await take_over(cluster, "h2", D1)
        assert taken_at - fenced.time >= HOST_DEAD - LEASE_TIMEOUT - RENEW
        await cluster.heal_backend("h1")
        assert isinstance(cluster.history.events[-1], FaultsHealed)
        # The fenced guest's domain is shut down by tidy(); the disk was not its any more.
        await cluster.tidy()
        assert cluster.guest("h1", "vm1").state is GuestState.STOPPED
        assert cluster.check() == []


async def test_a_stalled_acquisition_holds_up_only_its_own_guest() -> None:
    async with open_cluster(3) as cluster:
        faults = cluster.host("h1").faults
        await cluster.stall_backend("h1", "acquire")
        async with anyio.create_task_group() as tg:
            tg.start_soon(cluster.start_guest, "h1", "vm1", [D1])
            with anyio.fail_after(WAIT):
                await faults.wait_parked("acquire")
            assert cluster.guest("h1", "vm1").state is GuestState.STARTING
            # Other hosts, and h1's renewals, go on.
            await cluster.start_guest("h2", "vm2", [D2])
            assert await cluster.probe("h3", D1)
            await anyio.sleep(LEASE_TIMEOUT)
            assert cluster.api("h1").live
            await cluster.heal_backend("h1")
        assert cluster.guest("h1", "vm1").state is GuestState.RUNNING
        assert cluster.guest("h2", "vm2").state is GuestState.RUNNING
        assert cluster.check() == []


async def test_an_acquisition_completing_after_the_lease_expired_is_rolled_back() -> None:
    async with open_cluster(3) as cluster:
        faults = cluster.host("h1").faults
        await cluster.stall_backend("h1", "acquire")
        await cluster.fail_backend("h1", "renew")
        refused: list[Exception] = []

        async def start() -> None:
            try:
                await cluster.start_guest("h1", "vm1", [D1])
            except LockspaceLostError as exc:
                refused.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(start)
            with anyio.fail_after(WAIT):
                await faults.wait_parked("acquire")
            await anyio.sleep(LEASE_TIMEOUT)
            assert not cluster.api("h1").live
            await cluster.heal_backend("h1", "acquire")
        assert len(refused) == 1
        # Its fence target was published before the lease was requested, so
        # the loss fenced the guest process waiting for its leases.
        assert cluster.guest("h1", "vm1").state is GuestState.FENCED
        assert not cluster.history.of(GuestStarted, host="h1")
        records = await cluster.api("h2").leases()
        assert all(not r.holders for r in records), "the late acquisition was given back"
        assert await cluster.probe("h2", D1)
        assert cluster.check() == []


async def test_guest_operations_are_recorded_in_the_order_the_checker_needs() -> None:
    async with open_cluster(3) as cluster:
        guest = await cluster.start_guest("h1", "vm1", [D1])
        await cluster.hotplug("h1", "vm1", disk(D2, shared=True))
        changed = cluster.history.of(GuestDisksChanged)[-1]
        assert (changed.exclusive, changed.shared) == ((K1,), (K2,))
        assert guest.leases[K2].mode is LeaseMode.SHARED
        await cluster.unplug("h1", "vm1", D1)
        events = cluster.history.events
        unplugged = events.index(cluster.history.of(GuestDisksChanged)[-1])
        released = events.index(cluster.history.of(LeaseReleased, host="h1")[-1])
        assert unplugged < released, "the guest lets go of the disk before its lease"
        state = await cluster.pause_guest("h1", "vm1")
        assert [lease.key for lease in state.leases] == [K2]
        paused = cluster.history.of(GuestStopped)[-1]
        assert paused.reason is StopReason.PAUSED
        resumed = await cluster.resume_guest("h1", "vm1")
        assert resumed.state is GuestState.RUNNING
        assert resumed.leases[K2].token > state.leases[0].token
        # Paused again, and somebody else used the disk meanwhile: the old state is stale.
        await cluster.pause_guest("h1", "vm1")
        await cluster.start_guest("h2", "vm2", [D2])
        await cluster.stop_guest("h2", "vm2")
        with pytest.raises(StaleLockStateError):
            await cluster.resume_guest("h1", "vm1")
        assert cluster.guest("h1", "vm1").state is GuestState.PAUSED
        assert cluster.guest("h1", "vm1").saved is None
        await cluster.stop_guest("h1", "vm1")
        assert cluster.history.of(LeaseAcquired, host="h2")
        assert cluster.check() == []


async def test_a_refused_start_is_recorded_with_its_holders() -> None:
    async with open_cluster(3) as cluster:
        await cluster.start_guest("h1", "vm1", [D1])
        with pytest.raises(ResourceBusyError):
            await cluster.start_guest("h2", "vm2", [D3, D1])
        (refused,) = cluster.history.of(AcquireRefused)
        assert (refused.host, refused.domain, refused.key, refused.holders) == (
            "h2",
            "vm2",
            K1,
            (("h1", "vm1"),),
        )
        assert cluster.guest("h2", "vm2").state is GuestState.STOPPED


async def test_every_host_records_on_the_one_clock() -> None:
    async with open_cluster(["a", "b", "c"]) as cluster:
        await cluster.start_guest("b", "vm1", [D1])
        acquired = cluster.history.of(LeaseAcquired, host="b")[-1]
        started = cluster.history.of(GuestStarted, host="b")[-1]
        assert acquired.time == started.time == cluster.now()
        assert sorted(e.host for e in cluster.history.of(HostJoined)) == ["a", "b", "c"]
        times = [e.time for e in cluster.history]
        assert times == sorted(times)


async def test_the_checker_catches_a_host_that_ignores_losing_its_leases() -> None:
    """A deliberately broken world: failure_action "ignore" keeps the guest writing."""
    async with open_cluster(3, failure_action={"h1": "ignore"}) as cluster:
        guest = await cluster.start_guest("h1", "vm1", [D1])
        await cluster.fail_backend("h1", "renew")
        with anyio.fail_after(WAIT):
            action = await cluster.wait_for(FailureActionRan, host="h1")
        assert action.result == "ignored (failure_action=ignore)"
        taken_at = await take_over(cluster, "h2", D1)
        await anyio.sleep(3 * RENEW)
        assert guest.state is GuestState.RUNNING
        assert writes_by(cluster, "h1", "vm1", after=taken_at)
        rules = {v.rule for v in cluster.check()}
        assert {Rule.EXCLUSIVE_OVERLAP, Rule.STALE_TOKEN_WRITE} <= rules


async def test_a_coordinator_that_stays_down_has_its_guest_stopped_by_the_supervisor() -> None:
    """Issue 9: the supervisor stops the guest at the last deadline its coordinator pushed."""
    async with open_cluster(3, supervised=True) as cluster:
        guest = await cluster.start_guest("h1", "vm1", [D1])
        await cluster.crash_coordinator("h1")
        taken_at = await take_over(cluster, "h2", D1)
        await anyio.sleep(3 * RENEW)
        assert guest.state is GuestState.FENCED
        assert not writes_by(cluster, "h1", "vm1", after=taken_at)
        assert cluster.check() == []


async def test_a_guest_started_before_its_coordinators_first_renewal_is_armed_by_the_welcome() -> None:
    """A supervisor takes the current deadline when it registers, not only from renewals.

    Seen on the file backend (sim seed 20261260): a coordinator crashed 14 ms
    after starting a guest and before its first renewal pushed a deadline;
    the simulated supervisors had none, so nothing stopped the guest and a
    takeover ran beside it. Real supervisors are welcomed with the deadline.
    """
    async with open_cluster(3, supervised=True) as cluster:
        await cluster.crash_host("h1")  # its supervisors die with it: none has a deadline now
        await cluster.rejoin_host("h1")
        guest = await cluster.start_guest("h1", "vm1", [D1])
        await cluster.crash_coordinator("h1")  # before its first renewal
        taken_at = await take_over(cluster, "h2", D1)
        await anyio.sleep(3 * RENEW)
        assert guest.state is GuestState.FENCED
        assert not writes_by(cluster, "h1", "vm1", after=taken_at)
        assert cluster.check() == []


async def test_a_supervised_guest_survives_a_coordinator_restarted_in_time() -> None:
    async with open_cluster(3, supervised=True) as cluster:
        guest = await cluster.start_guest("h1", "vm1", [D1])
        await cluster.crash_coordinator("h1")
        await cluster.restart_coordinator("h1")
        await anyio.sleep(3 * LEASE_TIMEOUT)  # the restarted coordinator's renewals push the deadline on
        assert guest.running
        assert not await cluster.probe("h2", D1)
        assert cluster.check() == []


async def test_a_host_paused_past_host_dead_wakes_up_beside_the_new_owner_and_storage_refuses_it() -> None:
    """No process on a frozen host can stop its guests' first write on waking: storage that checks
    fencing tokens refuses it (docs/timing.md). Random runs keep pauses under host_dead -
    fence_timeout - renew_interval, as storage without that check needs."""
    async with open_cluster(3, supervised=True, fencing_storage=True) as cluster:
        guest = await cluster.start_guest("h1", "vm1", [D1])
        assert not await cluster.probe("h2", D1)
        await cluster.pause_host("h1")
        await take_over(cluster, "h2", D1)
        await cluster.resume_host("h1")
        await anyio.sleep(3 * RENEW)
        assert guest.state is GuestState.FENCED
        assert cluster.check() == []


@pytest.mark.parametrize("anyio_backend", ["trio"])  # real time: a restart reads time.monotonic()
async def test_a_coordinator_back_after_lease_timeout_stops_its_guests_before_a_takeover() -> None:
    async with open_cluster(3) as cluster:
        await cluster.start_guest("h1", "vm1", [D1])
        await cluster.crash_coordinator("h1")
        assert not await cluster.probe("h2", D1), "h2 starts watching h1's record now"
        await anyio.sleep(1.2 * LEASE_TIMEOUT)
        async with anyio.create_task_group() as tg:
            tg.start_soon(cluster.restart_coordinator, "h1")
            await take_over(cluster, "h2", D1)
        assert cluster.check() == []


async def test_migration_is_an_extension_point() -> None:
    async with open_cluster(2) as cluster:
        with pytest.raises(NotSupportedError):
            await cluster.migrate("vm1", "h1", "h2")


async def test_poweroff_would_kill_the_simulator_and_is_refused() -> None:
    with pytest.raises(InvalidParameterError, match="poweroff"):
        async with open_cluster(2, failure_action="poweroff"):
            pass


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_file_lockspace_cluster_in_real_time(tmp_path: Path) -> None:
    async with open_cluster(3, backend="file", lockspace_dir=tmp_path) as cluster:
        await cluster.start_guest("h1", "vm1", [D1])
        await cluster.crash_host("h1")
        crashed_at = cluster.now()
        taken_at = await take_over(cluster, "h2", D1)
        assert taken_at - crashed_at >= HOST_DEAD - RENEW
        assert cluster.check() == []


# -- storage faults with a duration (issue 7) ----------------------------------------------

IO_TIMEOUT = SIM_TIMING["io_timeout"]
FENCE_TIMEOUT = SIM_TIMING["fence_timeout"]


async def probe_until_taken(cluster: Cluster, host: str, path: str, *, within: float) -> float | None:
    """Probe every half renewal for ``within`` simulated seconds; when ``path`` was taken, or None."""
    with anyio.move_on_after(within):
        while True:
            if await cluster.probe(host, path):
                return cluster.now()
            await anyio.sleep(RENEW / 2)
    return None


async def test_a_storage_stall_fences_the_guest_before_a_takeover_and_heals_by_itself() -> None:
    async with open_cluster(3) as cluster:
        await cluster.start_guest("h1", "vm1", [D1])
        assert not await cluster.probe("h2", D1), "h2 watches h1's record from now on"
        duration = 4 * LEASE_TIMEOUT
        await cluster.stall_storage("h1", duration)
        stalled_at = cluster.now()
        assert cluster.storage_faults("h1") == ["storage-stall"]
        assert cluster.host("h1").faults.held
        (injected,) = cluster.history.of(FaultInjected, host="h1")
        assert injected.fault.startswith("storage stalled")
        with anyio.fail_after(WAIT):
            fenced = await cluster.wait_for(GuestStopped, host="h1", domain="vm1", reason=StopReason.FENCED)
        assert fenced.time - stalled_at <= LEASE_TIMEOUT + FENCE_TIMEOUT
        taken_at = await take_over(cluster, "h2", D1)
        assert taken_at >= fenced.time
        with anyio.fail_after(WAIT):
            healed = await cluster.wait_for(FaultsHealed)
        assert healed.time == pytest.approx(stalled_at + duration)
        assert cluster.storage_faults() == []
        assert not cluster.host("h1").faults.held
        assert cluster.fault_counts["storage-stall"] == 1
        await anyio.sleep(2 * RENEW)
        assert cluster.api("h1").live, "h1 renews again once its storage answers"
        assert cluster.check() == []


async def test_a_slow_write_lands_late_and_a_slow_answer_comes_back_late() -> None:
    async with open_cluster(3) as cluster:
        delay = IO_TIMEOUT / 2
        shapes: tuple[tuple[Shape, bool], ...] = (("before", False), ("after", True))
        for shape, landed_early in shapes:
            await cluster.slow_io("h1", WAIT, "acquire", longest=delay, least=delay, shape=shape)
            async with anyio.create_task_group() as tg:
                tg.start_soon(cluster.start_guest, "h1", f"vm-{shape}", [D1])
                await anyio.sleep(delay / 2)
                records = {r.key: r for r in await cluster.api("h2").leases()}
                held = K1 in records and bool(records[K1].holders)
                assert held is landed_early, shape
            assert cluster.guest("h1", f"vm-{shape}").running
            await cluster.stop_guest("h1", f"vm-{shape}")
            await cluster.end_storage_fault("h1", "slow-io")
        assert cluster.fault_counts["slow-io"] == 2
        assert cluster.check() == []


async def test_a_saturated_pool_starves_threads_not_fencing() -> None:
    """Issue 7 path 1 in the simulator: the pool is full and the storage stuck; the guest is fenced."""
    async with open_cluster(3) as cluster:
        await cluster.start_guest("h1", "vm1", [D1])
        assert not await cluster.probe("h2", D1)
        duration = 3 * LEASE_TIMEOUT
        await cluster.saturate_pool("h1", duration)
        await cluster.stall_storage("h1", duration)
        saturated_at = cluster.now()
        async with anyio.create_task_group() as tg:
            # A guest start reads its process's start time in a worker thread: it waits.
            tg.start_soon(cluster.start_guest, "h3", "vm3", [D2])
            with anyio.fail_after(WAIT):
                fenced = await cluster.wait_for(
                    GuestStopped, host="h1", domain="vm1", reason=StopReason.FENCED
                )
            assert fenced.time - saturated_at <= LEASE_TIMEOUT + FENCE_TIMEOUT, (
                "fencing has threads of its own"
            )
            assert not cluster.history.of(GuestStarted, host="h3")
            # Probes need no worker thread: h2 takes the disk over while the pool is still full.
            taken_at = await probe_until_taken(cluster, "h2", D1, within=duration)
            assert taken_at is not None
            assert fenced.time <= taken_at < saturated_at + duration
        started = cluster.history.of(GuestStarted, host="h3")[0]
        assert started.time >= saturated_at + duration
        assert cluster.fault_counts["pool-saturated"] == 1
        assert cluster.check() == []


async def test_a_coordinator_crash_ends_the_pool_saturation() -> None:
    async with open_cluster(3) as cluster:
        await cluster.saturate_pool("h1", WAIT)
        await cluster.crash_coordinator("h1")
        assert cluster.storage_faults() == [], "a restarted coordinator has a pool of its own"
        with anyio.fail_after(2 * IO_TIMEOUT):
            api = await cluster.restart_coordinator("h1")
        assert api.resumed
        assert cluster.fault_counts["restart-in-storage"] == 1
        assert cluster.fault_counts["restart"] == 0


async def test_slow_state_writes_slow_the_guest_operations_that_save() -> None:
    async with open_cluster(3) as cluster:
        delay = IO_TIMEOUT / 2  # a save slower than io_timeout fails the start instead
        await cluster.slow_state("h1", 3 * delay, longest=delay, least=delay, shape="before")
        started = cluster.now()
        await cluster.start_guest("h1", "vm1", [D1])
        assert cluster.now() - started >= delay, "the domain state is saved before start returns"
        assert cluster.host("h1").state_faults.writes >= 1
        await cluster.end_storage_fault("h1", "slow-state")
        started = cluster.now()
        await cluster.stop_guest("h1", "vm1")
        assert cluster.now() - started < delay
        assert cluster.fault_counts["slow-state"] == 1
        assert cluster.check() == []


async def test_a_read_delay_does_not_make_a_renewing_host_look_dead() -> None:
    """Issue 7 path 4 in the simulator: a judgement long after the read, of a healthy holder."""
    async with open_cluster(3) as cluster:
        await cluster.start_guest("h1", "vm1", [D1])
        assert not await cluster.probe("h2", D1)
        delay = 0.95 * HOST_DEAD
        await cluster.delay_reads("h2", 4 * HOST_DEAD, longest=delay, least=delay)
        for _ in range(4):
            started = cluster.now()
            assert not await cluster.probe("h2", D1), "h1 renews all along"
            assert cluster.now() - started == pytest.approx(delay)
            await anyio.sleep(RENEW / 3)
        assert cluster.guest("h1", "vm1").running
        assert cluster.fault_counts["read-delay"] == 1
        assert cluster.check() == []


async def test_a_restart_inside_a_storage_stall_fences_at_its_old_deadline() -> None:
    """Issue 7 path 2: the restarted coordinator cannot reach storage, its old deadline still counts."""
    async with open_cluster(3) as cluster:
        await cluster.start_guest("h1", "vm1", [D1])
        assert not await cluster.probe("h2", D1)
        await cluster.stall_storage("h1", 4 * LEASE_TIMEOUT)
        await cluster.crash_coordinator("h1")
        assert cluster.fault_counts["restart-in-storage"] == 1
        async with anyio.create_task_group() as tg:
            tg.start_soon(cluster.restart_coordinator, "h1")
            taken_at = await take_over(cluster, "h2", D1)
        (fenced,) = cluster.history.of(GuestStopped, host="h1", domain="vm1")
        assert fenced.reason is StopReason.FENCED
        assert fenced.time <= taken_at
        assert cluster.check() == []


async def test_a_restart_with_slow_joins_and_renewals_keeps_its_old_deadline() -> None:
    """Issue 7 path 2: a resume whose storage calls each take io_timeout does not re-anchor its lease."""
    async with open_cluster(3) as cluster:
        await cluster.start_guest("h1", "vm1", [D1])
        assert not await cluster.probe("h2", D1)
        await cluster.slow_io(
            "h1", WAIT, "hosts", "join", "renew", longest=IO_TIMEOUT, least=IO_TIMEOUT, shape="before"
        )
        await cluster.crash_coordinator("h1")
        await anyio.sleep(LEASE_TIMEOUT / 2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(cluster.restart_coordinator, "h1")
            await take_over(cluster, "h2", D1)
        assert cluster.guest("h1", "vm1").state is not GuestState.RUNNING
        assert cluster.check() == []


async def test_a_resumed_restart_with_a_slow_state_save_still_fences_at_its_deadline() -> None:
    # Found by actorlock sim: the resume awaited host.json before the renew loop watched the deadline.
    async with open_cluster(3) as cluster:
        await cluster.start_guest("h1", "vm1", [D1])
        assert not await cluster.probe("h2", D1)
        delay = 1.5 * IO_TIMEOUT  # a slow state_dir: longer than host_dead
        await cluster.slow_state("h1", WAIT, longest=delay, least=delay, shape="before")
        await cluster.crash_coordinator("h1")
        async with anyio.create_task_group() as tg:
            tg.start_soon(cluster.restart_coordinator, "h1")
            # h2 keeps trying while h1 restarts (it had a lease_timeout left at the crash).
            taken_at = await probe_until_taken(cluster, "h2", D1, within=2 * delay)
        # The resume renewed in time and kept renewing while host.json was written:
        # the guest keeps its disk, and nobody else got it meanwhile.
        assert cluster.api("h1").resumed
        assert cluster.guest("h1", "vm1").running
        assert taken_at is None
        assert cluster.check() == []


async def test_a_crash_inside_a_storage_stall_is_instant() -> None:
    async with open_cluster(3) as cluster:
        await cluster.stall_storage("h1", WAIT)
        failed: list[Exception] = []

        async def start() -> None:
            try:
                await cluster.start_guest("h1", "vm1", [D1])
            except ActorlockError as exc:
                failed.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(start)  # held in its acquisition
            await anyio.sleep(RENEW)
            crashed_at = cluster.now()
            await cluster.crash_coordinator("h1")
        assert cluster.now() == crashed_at, "a dead process waits for nothing"
        assert len(failed) == 1, "the start died with its coordinator"
        assert cluster.host("h1").state is HostState.COORDINATOR_DOWN
        await cluster.heal_all()
        assert cluster.storage_faults() == []
        assert isinstance(cluster.history.events[-1], FaultsHealed)


async def test_storage_faults_are_refused_twice_and_checked() -> None:
    async with open_cluster(2) as cluster:
        await cluster.slow_io("h1", WAIT, "renew")
        with pytest.raises(InvalidStateError):
            await cluster.slow_io("h1", WAIT, "acquire")
        with pytest.raises(InvalidParameterError):
            await cluster.slow_io("h2", WAIT, "fsync")
        with pytest.raises(InvalidParameterError):
            await cluster.stall_storage("h2", -1.0)
        await cluster.saturate_pool("h1", WAIT)
        with pytest.raises(InvalidStateError):
            await cluster.saturate_pool("h2", WAIT)
        await cluster.heal_all()
        assert cluster.storage_faults() == []
        assert cluster.faults_injected == sum(cluster.fault_counts.values()) == 2
