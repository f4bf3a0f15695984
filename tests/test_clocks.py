"""Issue 7, "the same class": clocks, suspend, unfenceable guests, the resume journal, the timing rule.

- a lease loss that happens while the event loop lags is judged by clock
  readings, never by how many timer ticks fired (the loop is blocked on
  purpose, longer than lease_timeout);
- deadlines are on CLOCK_BOOTTIME, so a host waking from a suspend fences at
  its first wake (a suspend is simulated by a host clock that jumps while
  the event loop's monotonic clock does not);
- a guest registered without a pid under ``poweroff`` is reported
  unfenceable, and its fence fails once, finally, in the open;
- a restart within lease_timeout resumes untouched; a later one on the same
  boot fences first and only then rejoins;
- ``load_config`` enforces host_dead >= (lease_timeout + fence_timeout +
  scheduling_delay) * 1.01 and 0 <= scheduling_delay < lease_timeout.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import actorlock
import actorlock.clock
from actorlock.actors.fencing import fence_retry_interval
from actorlock.backends.base import HostAdvert
from actorlock.backends.memory import MemoryLeaseBackend, shared_lockspace
from actorlock.clock import host_clock
from actorlock.errors import BackendError, ConfigError, LeaseLostError
from actorlock.model import DomainIdentity, HostIdentity, HostRecord
from actorlock.statestore import MemoryStateStore
from actorlock.testing import host_faults
from actorlock.testing.events import EventLog
from actorlock.timing_presets import fast_timing

from .support import TIMING, guest_process, host_config, unique

# The short valid timing; scheduling_delay is left at its default,
# lease_timeout / 10 = 0.1 s.
CLOCK_TIMING = fast_timing(scale=4, fence_timeout=0.5, host_dead=2.0, io_timeout=3.0)
RENEW_INTERVAL = CLOCK_TIMING["renew_interval"]
LEASE_TIMEOUT = CLOCK_TIMING["lease_timeout"]
FENCE_TIMEOUT = CLOCK_TIMING["fence_timeout"]
SCHEDULING_DELAY = LEASE_TIMEOUT / 10
# How long after its first chance to run a host may take to act on an expiry it
# can read off its clock: a bound for a loaded box, far below lease_timeout.
REACT = 0.3

# Restart tests: shorter, so that waiting out host_dead on a late rejoin fits
# in a few seconds. (0.5 + 0.3 + 0.05) * 1.01 = 0.8585 <= 1.0.
RESTART_TIMING = fast_timing(scale=2, fence_timeout=0.3, host_dead=1.0)

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="needs CLOCK_BOOTTIME, pidfds and /proc (Linux)"
)


def clock_config(
    name: str,
    host_id: int,
    *,
    lockspace: str,
    failure_action: str = "poweroff",
    timing: dict[str, float] | None = None,
) -> dict[str, Any]:
    return host_config(
        name,
        host_id,
        lockspace=lockspace,
        timing=dict(CLOCK_TIMING if timing is None else timing),
        locking={"failure_action": failure_action, "kill_grace": 0.1},
    )


def alive(guest: subprocess.Popen[bytes]) -> bool:
    """True while the guest process has not exited (reaps it once it has)."""
    return guest.poll() is None


async def wait_until(condition: Callable[[], bool], within: float, what: str | Callable[[], str]) -> None:
    """Poll ``condition`` (state no event announces) until it holds, or fail."""
    with anyio.move_on_after(within):
        while not condition():  # noqa: ASYNC110 - process exits and callbacks signal no event
            await anyio.sleep(0.005)
        return
    message = what if isinstance(what, str) else what()
    raise AssertionError(f"{message}: not within {within} s")


def describe(events: EventLog, *kinds: str) -> str:
    shown = [e for e in events.events if not kinds or e.kind in kinds]
    return "; ".join(f"{e.time:.3f} {e.kind} {e.fields}" for e in shown)


class PauseRecorder:
    """A pause callback that records when (host clock) and for whom it was called."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    async def __call__(self, domain: DomainIdentity, pid: int | None) -> None:
        self.calls.append((domain.uuid, host_clock()))


class FailingRenewals(MemoryLeaseBackend):
    """A memory backend whose renewals raise once ``failing`` is set (storage that broke)."""

    failing = False

    async def renew(self, advert: HostAdvert) -> HostRecord:
        if self.failing:
            raise BackendError("renewal refused: the lockspace is unreachable")
        return await super().renew(advert)


class WatchedJoin(MemoryLeaseBackend):
    """A memory backend that runs ``on_join`` (when set) as a join reaches the lockspace."""

    on_join: Callable[[], None] | None = None

    async def join(self, host: HostIdentity, incarnation: str, advert: HostAdvert) -> HostRecord | None:
        if self.on_join is not None:
            self.on_join()
        return await super().join(host, incarnation, advert)


# --- an event loop that lags past the lease ------------------------------------------


@linux_only
@pytest.mark.anyio
@pytest.mark.parametrize("action", ["pause", "poweroff"])
async def test_an_expiry_during_an_event_loop_stall_is_fenced_at_the_first_wake(
    action: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop is blocked (time.sleep on it) for 1.5 x lease_timeout: no timer fires,
    no renewal runs. At the first wake the host must read its clock, call the lease
    lost, and run the failure action at once, and say it noticed the expiry late."""
    space = unique()
    events = EventLog(clock=host_clock)
    pause = PauseRecorder()
    block = 1.5 * LEASE_TIMEOUT
    caplog.set_level(logging.WARNING)
    with guest_process() as guest:
        async with actorlock.open_host(
            clock_config("a", 1, lockspace=space, failure_action=action),
            pause_callback=pause if action == "pause" else None,
            event_sink=events.sink,
        ) as a:
            await a.domain("u-lag").start([actorlock.disk("/d/lag.img")], pid=guest.pid)
            await anyio.sleep(2 * RENEW_INTERVAL)
            renewals_before = (await a.status()).renewals
            assert renewals_before >= 1, "the host never renewed before the stall"
            assert not events.of("lockspace_lost")
            blocked_at = host_clock()
            time.sleep(block)  # noqa: ASYNC251 - the point: the whole event loop stalls
            unblocked_at = host_clock()
            if action == "pause":
                await wait_until(lambda: bool(pause.calls), 2.0, "the pause callback never ran")
                fenced_at = pause.calls[0][1]
            else:
                await wait_until(lambda: not alive(guest), 2.0, f"guest pid {guest.pid} was never killed")
                fenced_at = host_clock()
            # The domain actor hears of the loss after the fence's first attempt.
            with anyio.fail_after(2.0):
                await events.wait_for("leases_lost", domain="u-lag")
            status = await a.domain("u-lag").status()
    assert unblocked_at - blocked_at >= block
    (lost,) = events.of("lockspace_lost")
    assert lost.time >= unblocked_at, "the loss was reported before the loop ran again"
    assert lost.time - unblocked_at < REACT, (
        f"the loss was noticed {lost.time - unblocked_at:.3f} s after the loop woke up "
        f"(events: {describe(events)})"
    )
    assert fenced_at - unblocked_at < REACT + (0.2 if action == "poweroff" else 0.0), (
        f"the {action} failure action ran {fenced_at - unblocked_at:.3f} s after the loop woke up"
    )
    # The loss was judged by a clock reading at the first wake, not by a renewal
    # that ran after the stall and "succeeded" late.
    first_after = [e for e in events.events if e.time >= unblocked_at]
    assert first_after, describe(events)
    assert first_after[0].kind in ("expiry_noticed_late", "lockspace_lost"), describe(events)
    (late,) = events.of("expiry_noticed_late")
    # The last renewal started before the stall: the expiry passed >= block - lease_timeout before the wake.
    assert late.fields["late"] > SCHEDULING_DELAY
    assert late.fields["late"] >= block - LEASE_TIMEOUT - 0.01, late.fields
    assert late.time <= lost.time
    (fence,) = events.of("failure_action", domain="u-lag")
    assert fence.fields["confirmed"] is True, fence.fields
    assert status.phase == "lost"
    assert "lease_timeout" in status.lost_reason
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and r.name == "actorlock.actors.lifeline" and "late" in r.getMessage()
    ]
    assert errors, "noticing the expiry later than scheduling_delay was not logged at error level"
    assert "scheduling_delay" in errors[0]


# --- CLOCK_BOOTTIME and suspend --------------------------------------------------------


@linux_only
def test_the_host_clock_is_clock_boottime() -> None:
    assert actorlock.clock.host_clock is not time.monotonic
    for _ in range(100):
        before = time.clock_gettime(time.CLOCK_BOOTTIME)
        reading = host_clock()
        after = time.clock_gettime(time.CLOCK_BOOTTIME)
        assert before <= reading <= after


class SuspendableClock:
    """The host clock plus an offset: :meth:`suspend` moves it as a suspend would,
    while the event loop's monotonic clock (CLOCK_MONOTONIC stops in a suspend) does not."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return host_clock() + self.offset

    def suspend(self, seconds: float) -> None:
        self.offset += seconds


@linux_only
@pytest.mark.anyio
async def test_a_host_waking_from_a_suspend_fences_within_one_renew_interval() -> None:
    """A suspend of 3 x lease_timeout (simulated: the host clock jumps, the loop clock does
    not). The host must fence within about one renew_interval of loop time, not wait
    for lease_timeout of it; renewals that succeed after the wake do not save the guest."""
    space = unique()
    clock = SuspendableClock()
    events = EventLog()  # anyio.current_time: the event loop's clock
    with guest_process() as guest:
        async with actorlock.open_host(
            clock_config("a", 1, lockspace=space), event_sink=events.sink, clock=clock
        ) as a:
            await a.domain("u-suspend").start([actorlock.disk("/d/s.img")], pid=guest.pid)
            await anyio.sleep(LEASE_TIMEOUT + RENEW_INTERVAL)
            assert alive(guest), "the guest was fenced before any suspend"
            assert a.live
            assert not events.of("lockspace_lost")
            clock.suspend(3 * LEASE_TIMEOUT)
            woke_at = anyio.current_time()
            await wait_until(
                lambda: not alive(guest),
                LEASE_TIMEOUT,
                lambda: f"guest still runs after a suspend of 3 x lease_timeout ({describe(events)})",
            )
            fenced_after = anyio.current_time() - woke_at
            with anyio.fail_after(2.0):
                await events.wait_for("leases_lost", domain="u-suspend")
            phase = (await a.domain("u-suspend").status()).phase
    assert fenced_after < RENEW_INTERVAL + REACT, f"fenced {fenced_after:.3f} s (loop time) after the wake"
    (lost,) = [e for e in events.of("lockspace_lost") if e.time >= woke_at]
    assert lost.time - woke_at <= RENEW_INTERVAL + REACT
    (late,) = events.of("expiry_noticed_late")
    # The lease ran out 2 x lease_timeout (at least) before the wake, by the clock that counts a suspend.
    assert late.fields["late"] >= 2 * LEASE_TIMEOUT - 0.01, late.fields
    assert phase == "lost"


# --- a guest without a pid ------------------------------------------------------------


@linux_only
@pytest.mark.anyio
async def test_a_guest_without_a_pid_is_reported_unfenceable_and_its_fence_fails_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """poweroff with no pid registered: a warning naming the domain, unfenceable=True in its
    status; when the lease is lost its fence fails finally (fence_failed, listed in
    unfenced) and is not retried. The guest with a pid beside it is powered off."""
    space = unique()
    events = EventLog()
    backend = FailingRenewals(
        shared_lockspace(space), host_dead=CLOCK_TIMING["host_dead"], poll_interval=RENEW_INTERVAL
    )
    caplog.set_level(logging.WARNING)
    with guest_process() as guest:
        async with actorlock.open_host(
            clock_config("a", 1, lockspace=space), backend=backend, event_sink=events.sink
        ) as a:
            await a.domain("u-nopid").start([actorlock.disk("/d/nopid.img")])
            await a.domain("u-pid").start([actorlock.disk("/d/pid.img")], pid=guest.pid)
            warnings = [
                r.getMessage()
                for r in caplog.records
                if r.levelno == logging.WARNING and r.name == "actorlock.actors.fencing"
            ]
            assert any("u-nopid" in m for m in warnings), f"no warning names u-nopid: {warnings}"
            assert not any("u-pid" in m for m in warnings), warnings
            status = await a.status()
            flags = {d.uuid: d.unfenceable for d in status.domains}
            assert flags == {"u-nopid": True, "u-pid": False}
            assert (await a.domain("u-nopid").status()).unfenceable
            assert status.unfenced == ()

            backend.failing = True
            with anyio.fail_after(LEASE_TIMEOUT + FENCE_TIMEOUT + 1.0):
                failed = await events.wait_for("fence_failed", domain="u-nopid")
            await wait_until(lambda: not alive(guest), FENCE_TIMEOUT + 1.0, "the guest with a pid survived")
            retry_interval = fence_retry_interval(FENCE_TIMEOUT)
            await anyio.sleep(4 * retry_interval)
            unfenced = (await a.status()).unfenced
            phases = {d.uuid: d.phase for d in (await a.status()).domains}
    assert "no guest pid" in failed.fields["result"], failed.fields
    assert unfenced == (("u-nopid", failed.fields["result"]),)
    assert len(events.of("failure_action", domain="u-nopid")) == 1, describe(events, "failure_action")
    assert len(events.of("fence_failed", domain="u-nopid")) == 1, describe(events, "fence_failed")
    assert [e.fields["confirmed"] for e in events.of("failure_action", domain="u-pid")] == [True]
    assert not events.of("fence_failed", domain="u-pid")
    assert phases == {"u-nopid": "lost", "u-pid": "lost"}
    giving_up = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and "u-nopid" in r.getMessage() and "giving up" in r.getMessage()
    ]
    assert len(giving_up) == 1, giving_up


# --- the resume journal ----------------------------------------------------------------


@linux_only
@pytest.mark.anyio
async def test_a_restart_within_lease_timeout_resumes_and_leaves_the_guest_alone() -> None:
    space = unique()
    store = MemoryStateStore()
    events = EventLog()
    cfg = clock_config("a", 1, lockspace=space, timing=RESTART_TIMING)
    lease_timeout = RESTART_TIMING["lease_timeout"]
    with guest_process() as guest:
        async with actorlock.open_host(cfg, state_store=store, event_sink=events.sink) as a:
            await a.domain("u1").start([actorlock.disk("/d/1.img")], pid=guest.pid)
            await anyio.sleep(2 * RESTART_TIMING["renew_interval"])
            host_faults.crash(a)
        assert store.host is not None
        assert store.host.renewed_at is not None, "no renewal journaled"
        await anyio.sleep(0.1)
        async with actorlock.open_host(cfg, state_store=store, event_sink=events.sink) as a2:
            assert a2.resumed
            assert (await a2.status()).resumed
            # Long enough that a missed deadline would have fenced it.
            await anyio.sleep(2 * lease_timeout)
            assert a2.live
            pid = await a2.domain("u1").attach()
            status = await a2.domain("u1").status()
            guest_alive = alive(guest)
    assert guest_alive, f"the guest was killed after a resume in time ({describe(events)})"
    assert pid == guest.pid
    assert status.phase == "running"
    assert not events.of("failure_action"), describe(events, "failure_action")
    assert not events.of("lockspace_lost"), describe(events, "lockspace_lost")
    assert [e.fields["resumed"] for e in events.of("joined")] == [False, True]


@linux_only
@pytest.mark.anyio
async def test_a_restart_after_lease_timeout_fences_before_it_rejoins() -> None:
    space = unique()
    store = MemoryStateStore()
    events = EventLog()
    cfg = clock_config("a", 1, lockspace=space, timing=RESTART_TIMING)
    lease_timeout = RESTART_TIMING["lease_timeout"]
    backend = WatchedJoin(
        shared_lockspace(space),
        host_dead=RESTART_TIMING["host_dead"],
        poll_interval=RESTART_TIMING["renew_interval"],
    )
    alive_at_join: list[bool] = []
    with guest_process() as guest:
        backend.on_join = lambda: alive_at_join.append(alive(guest))
        async with actorlock.open_host(cfg, state_store=store, event_sink=events.sink) as a:
            await a.domain("u1").start([actorlock.disk("/d/1.img")], pid=guest.pid)
            host_faults.crash(a)
        await anyio.sleep(1.5 * lease_timeout)
        assert alive(guest), "nothing should have touched the guest while the coordinator was down"
        async with actorlock.open_host(cfg, backend=backend, state_store=store, event_sink=events.sink) as a2:
            resumed = a2.resumed
            vm = a2.domain("u1")
            status = await vm.status()
            with pytest.raises(LeaseLostError):
                await vm.attach()
            guest_alive = alive(guest)
    assert not resumed
    assert alive_at_join == [False], f"the guest still ran when the late restart rejoined: {alive_at_join}"
    assert not guest_alive
    kinds = [e.kind for e in events.events]
    fenced = kinds.index("failure_action")
    rejoined = len(kinds) - 1 - kinds[::-1].index("joined")
    assert fenced < rejoined, describe(events)
    (fence,) = events.of("failure_action", domain="u1")
    assert fence.fields["confirmed"] is True, fence.fields
    assert status.phase == "lost"
    assert "longer than lease_timeout" in status.lost_reason
    assert "powered off" in status.lost_reason


# --- the timing rule in load_config ------------------------------------------------------


def timing_only(**timing: float) -> dict[str, Any]:
    return {"timing": timing}


@pytest.mark.parametrize(
    ("timing", "key"),
    [
        # (10 + 5 + 1) * 1.01 = 16.16: the default scheduling_delay counts...
        ({"host_dead": 16.1}, "timing.host_dead"),
        # ...and so does the margin: exactly lease + fence + scheduling_delay is too little.
        ({"host_dead": 16.0}, "timing.host_dead"),
        # (10 + 5 + 2) * 1.01 = 17.17: enough for the default, not for a delay of 2 s.
        ({"host_dead": 17.0, "scheduling_delay": 2.0}, "timing.host_dead"),
        ({"scheduling_delay": 10.0}, "timing.scheduling_delay"),
        ({"scheduling_delay": 12.0, "host_dead": 40.0}, "timing.scheduling_delay"),
        ({"scheduling_delay": -0.1}, "timing.scheduling_delay"),
        ({"scheduling_delay": "1s"}, "timing.scheduling_delay"),
    ],
)
def test_load_config_enforces_the_timing_rule(timing: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        actorlock.load_config(timing_only(**timing))
    assert caught.value.key == key
    assert key in str(caught.value)


def test_the_host_dead_error_says_what_the_floor_is_made_of() -> None:
    with pytest.raises(ConfigError) as caught:
        actorlock.load_config(timing_only(host_dead=17.0, scheduling_delay=2.0))
    assert "scheduling_delay" in caught.value.problem
    assert "17.170" in caught.value.problem


@pytest.mark.parametrize(
    ("timing", "scheduling_delay"),
    [
        ({}, 1.0),
        ({"host_dead": 16.2}, 1.0),
        ({"lease_timeout": 4.0}, 0.4),
        ({"scheduling_delay": 0.0, "host_dead": 15.2}, 0.0),
        ({"scheduling_delay": 2.0, "host_dead": 17.2}, 2.0),
        (TIMING, TIMING["lease_timeout"] / 10),
        (CLOCK_TIMING, SCHEDULING_DELAY),
        (RESTART_TIMING, RESTART_TIMING["lease_timeout"] / 10),
    ],
)
def test_load_config_accepts_valid_timings_and_defaults_scheduling_delay(
    timing: dict[str, Any], scheduling_delay: float
) -> None:
    # kill_grace below every fence_timeout here (the short timings have fence_timeout < 3 s).
    cfg = actorlock.load_config({**timing_only(**timing), "locking": {"kill_grace": 0.05}})
    assert cfg.timing.scheduling_delay == pytest.approx(scheduling_delay)
    t = cfg.timing
    assert t.host_dead >= (t.lease_timeout + t.fence_timeout + t.scheduling_delay) * 1.01


def test_scheduling_delay_loads_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "actorlock.toml"
    path.write_text("[timing]\nlease_timeout = 10.0\nscheduling_delay = 9.9\nhost_dead = 30.0\n")
    assert actorlock.load_config(path).timing.scheduling_delay == 9.9
    path.write_text("[timing]\nscheduling_delay = 10\n")
    with pytest.raises(ConfigError) as caught:
        actorlock.load_config(path)
    assert caught.value.key == "timing.scheduling_delay"
