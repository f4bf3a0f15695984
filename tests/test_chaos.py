"""The multi-process chaos run: host processes under kill -9, SIGSTOP, stalled storage and restarts.

Guests run under their supervisors; the CI run also kills a coordinator for
good (its guests must die by its last pushed deadline + fence_timeout) and
a supervisor (its guest must die with it), and asserts both were judged.

The CI run is short (a workload of CI_SECONDS, about half a minute in all);
``--run-slow`` adds a longer one. A scripted run first shows that the
pipeline (host processes recording, merging on one clock, the checker) does
see split brain when it is staged: a host frozen past ``host_dead`` while
another host takes its disk, the one case the design leaves to storage-side
fencing (docs/timing.md). A chaos run that reports no violation means
something only because that one reports some. A scripted storage stall
shows that the stall fault is real (the host's renewals block and it fences)
and that another host waits on it only as long as it lasts.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import anyio
import pytest

from actorlock._verify.chaos import (
    TIMING,
    ChaosReport,
    chaos_hosts,
    event_from_json,
    event_to_json,
    main_chaos,
    read_history_file,
    run_chaos,
)
from actorlock._verify.chaos import run as chaos_run
from actorlock.model import Lease, LeaseMode
from actorlock.testing.checker import Rule, Violation
from actorlock.testing.history import (
    AcquireRefused,
    CoordinatorCrashed,
    FaultInjected,
    FaultsHealed,
    GuestStopped,
    GuestWrote,
    HostEvent,
    LeaseAcquired,
    LeasesTransferred,
    LockspaceLost,
    LockspaceRegained,
    MigrationCancelled,
    StopReason,
    TransferredLease,
)

pytestmark = pytest.mark.anyio

CI_SECONDS = 16.0
CI_LIMIT = 120.0  # the whole CI run, start-up and final probes included (about 25 s when idle)
SLOW_SECONDS = 90.0
FAULT_KINDS = (
    "kill9",
    "sigstop",
    "coordinator_crash",
    "coordinator_killed",
    "supervisor_kill",
    "storage-stall",
    "restart",
)


def test_history_records_survive_json_lines(tmp_path: Path) -> None:
    lease = Lease("disk:/d/1.img", LeaseMode.EXCLUSIVE, 7)
    events = [
        LeaseAcquired(1.5, "h1", "u1", [lease]),
        GuestWrote(2.0, "h1", "u1", "disk:/d/1.img", 7, LeaseMode.SHARED),
        GuestStopped(2.5, "h1", "u1", StopReason.FENCED),
        LeasesTransferred(
            3.0, "h1", "u1", "h2", "u1", [TransferredLease("disk:/d/1.img", LeaseMode.EXCLUSIVE, 7, 8)]
        ),
        MigrationCancelled(3.5, "u1", "h1", [lease], "h2"),
        AcquireRefused(4.0, "h3", "u2", "disk:/d/1.img", [("h2", "u1")]),
        FaultInjected(4.5, "sigstop", "h2"),
        HostEvent(5.0, "h2", "migration_settled", {"role": "source", "outcome": "committed"}),
    ]
    path = tmp_path / "history.jsonl"
    lines = [json.dumps(event_to_json(event)) for event in events]
    path.write_text("\n".join(lines) + '\n{"type": "GuestWr')  # a torn last line, as a kill leaves it
    assert [event_from_json(json.loads(line)) for line in lines] == events
    assert read_history_file(path) == (events, 1)


async def test_a_host_frozen_past_host_dead_is_caught_as_split_brain(
    tmp_path: Path, anyio_backend: str
) -> None:
    """The staged unsafe case: the checker must see it in what the processes recorded.

    h1 runs a guest on a disk and is frozen (SIGSTOP: coordinator and guest
    writes) far longer than host_dead; h2 keeps probing the disk until it
    takes it over, as it may; then h1 wakes up. Its guest was still running,
    unfenced, when h2 was handed the disk.
    """
    host_dead = TIMING["host_dead"]
    with anyio.fail_after(60):
        async with chaos_hosts(tmp_path / "run", plaintext=True, out=lambda line: None) as hosts:
            assert await hosts.start_guest("h1", "guest-1", ["/chaos/frozen.img"])
            await anyio.sleep(0.3)  # a few writes with its token
            hosts.freeze("h1")
            taken_at = None
            started = anyio.current_time()
            while taken_at is None:
                if await hosts.probe("h2", "/chaos/frozen.img"):
                    taken_at = anyio.current_time()
                else:
                    await anyio.sleep(0.1)
            assert taken_at - started >= host_dead - 0.1  # a takeover, not a grant: h1 stayed alive
            hosts.thaw("h1")
            await anyio.sleep(1.0)  # h1 wakes, finds its lease expired, fences its guest
            history, violations = hosts.check()
    rules = {v.rule for v in violations}
    assert Rule.UNFENCED_LEASE_LOSS in rules, violations
    assert Rule.EXCLUSIVE_OVERLAP in rules, violations
    assert any(isinstance(e, GuestStopped) and e.reason is StopReason.FENCED for e in history.events)


async def test_a_storage_stall_fences_the_host_and_holds_others_only_while_it_lasts(
    tmp_path: Path, anyio_backend: str
) -> None:
    """The stall fault, scripted: a helper process holds h1's liveness lock and its guest's disk lock.

    h1's renewals block, so its lease expires and it powers its guest off
    within the stall (the fault is real, not a no-op); h2, acquiring the
    same disk meanwhile, waits on the lock until the stall ends and not much
    longer (it is then granted the disk or refused, whichever renewal lands
    first); the checker finds nothing, and h1 renews again once it is over.
    """
    stall = 1.6  # past host_dead, within io_timeout: h2's acquisition waits instead of timing out
    path = "/chaos/stalled.img"
    probed: list[tuple[bool | None, float]] = []
    with anyio.fail_after(60):
        async with chaos_hosts(tmp_path / "run", plaintext=True, out=lambda line: None) as hosts:
            assert await hosts.start_guest("h1", "guest-1", [path])
            await anyio.sleep(0.3)  # a few writes with its token

            async def probe() -> None:
                probed.append((await hosts.probe("h2", path), time.monotonic()))

            async with anyio.create_task_group() as tg:
                async with hosts.stalled_storage("h1", [path]) as held:
                    assert held
                    held_at = time.monotonic()
                    tg.start_soon(probe)
                    await anyio.sleep(stall)
                released_at = time.monotonic()
            await anyio.sleep(0.5)
            history, violations = hosts.check()
    assert violations == [], violations
    [(taken, answered_at)] = probed
    assert taken is not None
    assert held_at + stall - 0.05 <= answered_at <= released_at + 1.0, (held_at, answered_at, released_at)
    lost = [e.time for e in history.of(LockspaceLost) if e.host == "h1"]
    assert any(held_at < t < released_at for t in lost), lost
    fenced = [
        e.time
        for e in history.of(GuestStopped)
        if e.host == "h1" and e.domain == "guest-1" and e.reason is StopReason.FENCED
    ]
    assert fenced, "h1 did not power its guest off"
    assert held_at < fenced[0] < held_at + TIMING["host_dead"], fenced
    stalls = [e for e in history.of(FaultInjected) if e.fault == "storage-stall"]
    assert [e.host for e in stalls] == ["h1"]
    assert any(e.time >= released_at - 0.5 for e in history.of(FaultsHealed))
    assert any(e.host == "h1" and e.time > held_at for e in history.of(LockspaceRegained))


async def test_a_coordinator_killed_for_good_has_its_guest_killed_before_another_host_takes_the_disk(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Issue 9, scripted: h1's host process is SIGKILLed and never restarted.

    Its guest's supervisor kills the guest by the last deadline h1 pushed
    plus fence_timeout (seen through a pidfd, recorded as its stop); h2,
    probing meanwhile, is refused until h1 is dead to it and then takes the
    disk, after the guest's stop; the checker finds nothing.
    """
    path = "/chaos/orphan.img"
    with anyio.fail_after(60):
        async with chaos_hosts(tmp_path / "run", plaintext=True, out=lambda line: None) as hosts:
            assert await hosts.start_guest("h1", "guest-1", [path])
            await anyio.sleep(0.3)  # a few writes with its token
            margins = await hosts.kill_coordinator_for_good("h1")
            for _ in range(100):  # h1 is dead to h2 after host_dead: a few dozen tries
                if await hosts.probe("h2", path):
                    break
                await anyio.sleep(0.1)
            history, violations = hosts.check()
            findings = hosts.findings
    assert violations == [], violations
    assert findings == [], findings
    (margin,) = margins
    assert -0.05 <= margin <= TIMING["fence_timeout"], margin
    (stopped,) = [e for e in history.of(GuestStopped) if e.host == "h1" and e.reason is StopReason.FENCED]
    taken = [e for e in history.of(LeaseAcquired) if e.host == "h2"]
    assert taken, "h2 never took the disk"
    assert stopped.time < taken[0].time
    (crashed,) = [e.time for e in history.of(CoordinatorCrashed) if e.host == "h1"]
    assert taken[0].time - crashed >= TIMING["host_dead"] - TIMING["lease_timeout"], (crashed, taken)
    assert not [e for e in history.of(GuestWrote) if e.host == "h1" and e.time > stopped.time]


async def test_killing_a_guests_supervisor_kills_the_guest(tmp_path: Path, anyio_backend: str) -> None:
    """SIGKILL of the supervisor (pid from host.supervisors in the host process): the guest dies at once."""
    with anyio.fail_after(60):
        async with chaos_hosts(tmp_path / "run", plaintext=True, out=lambda line: None) as hosts:
            assert await hosts.start_guest("h1", "guest-1", ["/chaos/supervised.img"])
            await anyio.sleep(0.2)
            result = await hosts.kill_supervisor("h1", "guest-1")
            history, violations = hosts.check()
    assert result["died"], result
    assert result["after"] < 1.0, result
    assert violations == [], violations
    assert [e.reason for e in history.of(GuestStopped) if e.host == "h1"] == [StopReason.FENCED]


async def _chaos(tmp_path: Path, seconds: float, seed: int, *, burst: bool = False) -> None:
    lines: list[str] = []
    report = await run_chaos(seconds, seed, out=lines.append, workdir=tmp_path / "run")
    summary = "\n".join(report.summary())
    assert report.violations == (), summary
    assert report.findings == (), summary
    assert lines[-1] == "violations: 0"
    assert report.operations > 0, summary
    for kind in FAULT_KINDS:
        assert report.faults.get(kind, 0) > 0, f"no {kind} fault\n{summary}"
    # One line names every kind as KIND=N (the injector's first cycle has a stall second).
    (faults,) = [line for line in lines if line.startswith("faults: ")]
    counted = {kind: int(n) for kind, n in re.findall(r"([\w-]+)=(\d+)", faults)}
    assert counted == {kind.replace(" ", "-"): n for kind, n in report.faults.items()}, faults
    assert counted["storage-stall"] > 0, faults
    if burst:  # a stall with 48 starts behind it: the worker pool is full while the host must fence
        assert any("a burst of" in line for line in lines), summary
    # A coordinator killed for good had running guests, and every one was seen dead by its
    # supervisor's bound (the last deadline pushed + fence_timeout; a later one is a finding).
    assert report.kill_margins, summary
    assert max(report.kill_margins) <= TIMING["fence_timeout"], summary
    assert any(line.startswith("coordinators killed for good: ") for line in lines), summary
    assert report.migrations_committed >= 1, summary
    assert report.writes > 0, summary
    assert report.events > report.writes, summary


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_short_chaos_run_breaks_no_rule(tmp_path: Path, anyio_backend: str) -> None:
    with anyio.fail_after(CI_LIMIT):
        # Seed 32 draws a stall with a burst of starts that fills the worker
        # pool (on the code before issue 7 it powered off nothing in time).
        await _chaos(tmp_path, CI_SECONDS, seed=32, burst=True)


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_long_chaos_run_breaks_no_rule(tmp_path: Path, anyio_backend: str) -> None:
    with anyio.fail_after(SLOW_SECONDS + 240):
        await _chaos(tmp_path, SLOW_SECONDS, seed=7)


def test_the_command_line_says_how_many_violations_and_exits_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A very short run from argv; its exit status is 0 with no violation (non-zero otherwise)."""
    status = main_chaos(["--seconds", "2", "--seed", "3", "--workdir", str(tmp_path / "cli"), "--plaintext"])
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == "violations: 0", out
    assert status == 0
    assert (tmp_path / "cli" / "history-driver.jsonl").exists()


def test_the_command_line_exits_non_zero_on_a_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    violation = Violation(Rule.EXCLUSIVE_OVERLAP, "two guests ran on one disk", ())

    async def found_one(seconds: float, seed: int, hosts: int, out: object, **_: object) -> ChaosReport:
        return ChaosReport(seed, hosts, seconds, seconds, 1, {"start": 1}, {}, 0, 0, 1, 0, 0, (violation,))

    monkeypatch.setattr(chaos_run, "run_chaos", found_one)
    assert main_chaos(["--seconds", "1", "--seed", "1"]) == 1
