"""Randomized scenarios: zero violations, real faults, reproducible from a seed.

The bounded runs here take a few seconds on the virtual clock; the long ones
are marked slow (``--run-slow``).
"""

from __future__ import annotations

import functools
from typing import Any

import anyio
import pytest

from actorlock._verify.scenarios import (
    ScenarioResult,
    SimReport,
    main_sim,
    run_scenario,
    run_sim,
    simulate,
)
from actorlock._verify.sensitivity import BASELINE, run_sensitivity, undone_scenario
from actorlock._verify.sensitivity import main as sensitivity_main
from actorlock._verify.trio_scheduling import seeded_virtual_clock
from actorlock.backends import liveness
from actorlock.errors import InvalidParameterError
from actorlock.testing.checker import Rule
from actorlock.testing.clock import virtual_clock
from actorlock.testing.cluster import FAULT_KINDS, SIM_TIMING, STORAGE_FAULTS
from actorlock.testing.history import (
    CoordinatorCrashed,
    FailureActionRan,
    FaultInjected,
    GuestStarted,
    GuestStopped,
    GuestWrote,
    History,
    HistoryEvent,
    HostCrashed,
    HostFrozen,
    HostRecovered,
    HostThawed,
    LeaseAcquired,
    LeaseHeld,
    StopReason,
)

CI_SEED = 20_240_601


def quiet(lines: list[str]) -> Any:
    return lines.append


def one_scenario(seed: int, hosts: int = 3, history: History | None = None) -> ScenarioResult:
    """One scenario in its own trio run, as simulate() runs it."""
    return anyio.run(
        functools.partial(run_scenario, seed, hosts=hosts, history=history),
        backend="trio",
        backend_options={"clock": seeded_virtual_clock(seed, inline_worker_calls=True)},
    )


def assert_clean(report: SimReport) -> None:
    problems = [f"{v.rerun}: {v.violation.message}" for v in report.violations]
    problems += [f"{a.rerun}: {a.problem}" for a in report.anomalies]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("hosts", "scenarios"), [(3, 60), (5, 20)])
def test_a_bounded_random_run_finds_no_violation(hosts: int, scenarios: int) -> None:
    lines: list[str] = []
    report = simulate(hosts=hosts, scenarios=scenarios, seed=CI_SEED + 1000 * hosts, out=quiet(lines))
    assert_clean(report)
    assert report.scenarios_run == scenarios
    assert report.faults_injected >= scenarios, "faults were injected"
    assert report.operations_done >= scenarios * 20, "guests were started, stopped, hotplugged..."
    assert lines[-1] == "violations: 0"
    assert len(lines) <= 20, "progress is printed sparingly"


def test_a_scenario_exercises_what_it_claims() -> None:
    """Across a few scenarios: crashes, fencing, takeovers and every guest operation happen."""
    events: list[HistoryEvent] = []
    for seed in range(CI_SEED, CI_SEED + 10):
        record = History()
        result = one_scenario(seed, history=record)
        assert not result.violations
        assert not result.anomalies
        events.extend(record)
    history = History(events)  # for counting only: the scenarios' clocks overlap
    stops = {e.reason for e in history.of(GuestStopped)}
    assert {StopReason.SHUTDOWN, StopReason.PAUSED, StopReason.FENCED, StopReason.HOST_DIED} <= stops
    assert history.of(HostCrashed)
    assert history.of(CoordinatorCrashed)
    faults = {e.fault.split()[0] for e in history.of(FaultInjected)}
    assert {"host", "fail", "stall"} <= faults
    # Storage faults with a duration, each healed by itself.
    assert {"storage", "slow", "thread", "read"} <= faults
    assert history.of(LeaseHeld)
    # Takeovers: a disk written with a higher token by another host than before.
    writers: dict[str, set[str]] = {}
    for write in history.of(GuestWrote):
        writers.setdefault(write.disk, set()).add(write.host)
    assert any(len(hosts) > 1 for hosts in writers.values())
    assert any(e.domain.startswith("ha-") for e in history.of(GuestStarted))


def test_the_same_seed_gives_the_same_report() -> None:
    first = simulate(hosts=4, scenarios=6, seed=99, out=quiet([]))
    second = simulate(hosts=4, scenarios=6, seed=99, out=quiet([]))
    assert first == second
    assert first.digest
    other = simulate(hosts=4, scenarios=6, seed=100, out=quiet([]))
    assert other.digest != first.digest


def test_a_scenario_reruns_alone_event_for_event() -> None:
    in_run = [one_scenario(seed) for seed in (7, 8, 9)]
    alone = one_scenario(9)
    assert alone == in_run[-1]


def test_main_sim_prints_a_summary_and_exits_zero() -> None:
    lines: list[str] = []
    assert main_sim(3, 5, CI_SEED, lines.append) == 0
    assert lines[0].startswith("simulating 5 scenarios on 3 hosts")
    summary = lines[-7:]
    assert summary[0] == "scenarios: 5"
    assert summary[1].startswith("faults injected: ")
    assert summary[2].startswith("faults: ")
    assert summary[3].startswith("operations: ")
    assert lines[-1] == "violations: 0"


def test_the_summary_counts_every_fault_kind_on_one_line() -> None:
    lines: list[str] = []
    report = simulate(hosts=4, scenarios=20, seed=CI_SEED, out=lines.append)
    assert_clean(report)
    (line,) = [line for line in lines if line.startswith("faults: ")]
    counts = dict(item.split("=") for item in line.removeprefix("faults: ").split())
    assert list(counts) == list(FAULT_KINDS)
    assert {kind: int(n) for kind, n in counts.items()} == dict(report.fault_counts)
    assert sum(int(n) for n in counts.values()) == report.faults_injected
    injected = f"faults injected: {report.faults_injected}"
    assert lines[lines.index(line) - 1] == injected, "the old line stays, just before"
    for kind in (*STORAGE_FAULTS, "restart-in-storage", "coordinator-down"):
        assert int(counts[kind]) > 0, f"{kind} was never injected"


def test_a_coordinator_down_for_good_has_its_guests_stopped_by_their_supervisors() -> None:
    """Issue 9 in the scenarios: a coordinator that never comes back, a pause past host_dead.

    The first scenario (from CI_SEED) where a coordinator went down for good
    while its guests ran: they were stopped by their supervisors (nobody else
    was left to), before any other host took one of their disks, and the
    checker finds nothing. And within the first scenarios some host pause
    outlasts host_dead (safe only because storage checks tokens).
    """
    found = long_pause = False
    for seed in range(CI_SEED, CI_SEED + 40):
        history = History()
        result = one_scenario(seed, hosts=4, history=history)
        assert not result.violations, (seed, result.violations)
        assert not result.anomalies, (seed, result.anomalies)
        host_dead = SIM_TIMING["host_dead"]
        frozen = {e.host: e.time for e in history.of(HostFrozen)}
        long_pause = long_pause or any(
            e.time - frozen[e.host] > host_dead for e in history.of(HostThawed) if e.host in frozen
        )
        if dict(result.fault_counts)["coordinator-down"] == 0:
            continue
        recovered = {e.host for e in history.of(HostRecovered)}
        down = [e for e in history.of(CoordinatorCrashed) if e.host not in recovered]
        kills = [
            e
            for e in history.of(FailureActionRan)
            if "supervisor" in e.result and any(d.host == e.host and d.time < e.time for d in down)
        ]
        if not kills:
            continue
        found = True
        for kill in kills:
            # No other host took one of the guest's exclusive disks between the crash and its stop.
            crashed = max(d.time for d in down if d.host == kill.host and d.time < kill.time)
            started = [
                e
                for e in history.of(GuestStarted)
                if e.host == kill.host and e.domain == kill.domain and e.time < kill.time
            ]
            disks = set(started[-1].exclusive) if started else set()
            taken = [
                e
                for e in history.of(LeaseAcquired)
                if e.host != kill.host
                and crashed < e.time < kill.time
                and {lease.key for lease in e.leases} & disks
            ]
            assert not taken, (seed, kill, taken)
        if long_pause:
            break
    assert found, "no scenario had a coordinator down for good while its guests ran"
    assert long_pause, "no host pause outlasted host_dead"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(InvalidParameterError, match="hosts"):
        simulate(hosts=2, scenarios=1, seed=0)
    with pytest.raises(InvalidParameterError, match="backend"):
        simulate(hosts=3, scenarios=1, seed=0, backend="etcd")


@pytest.mark.parametrize("anyio_backend", [("trio", {"clock": virtual_clock()})])
@pytest.mark.anyio
async def test_run_sim_runs_in_the_callers_event_loop() -> None:
    lines: list[str] = []
    report = await run_sim(hosts=3, scenarios=5, seed=CI_SEED, out=lines.append)
    assert_clean(report)
    assert report.scenarios_run == 5
    assert report.faults_injected > 0
    assert report.operations_done > 0
    assert lines[-1] == "violations: 0"


def test_a_broken_core_is_caught_and_reported_with_a_seed_to_rerun(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hosts that declare others dead after a third of host_dead: takeovers come before fencing."""
    original = liveness.LivenessObserver.__init__

    def hasty(self: liveness.LivenessObserver, host_dead: float, clock: Any) -> None:
        original(self, host_dead / 3, clock)

    monkeypatch.setattr(liveness.LivenessObserver, "__init__", hasty)
    lines: list[str] = []
    assert main_sim(3, 12, CI_SEED, lines.append) == 1
    violating = [line for line in lines if line.startswith("scenario seed ")]
    assert violating, lines
    assert lines[-1] != "violations: 0"
    seed = int(violating[0].split()[2].rstrip(":"))
    assert f"re-run: actorlock sim --hosts 3 --scenarios 1 --seed {seed}" in violating[0]
    rules = {line.split()[1] for line in lines if line.startswith("  rule ")}
    assert rules <= {str(r.value) for r in Rule}
    # The seed alone brings the same violations back.
    report = simulate(hosts=3, scenarios=1, seed=seed, out=quiet([]))
    assert report.violations
    assert {v.seed for v in report.violations} == {seed}


@pytest.mark.slow
@pytest.mark.parametrize("hosts", [3, 5])
def test_a_long_random_run_finds_no_violation(hosts: int) -> None:
    report = simulate(hosts=hosts, scenarios=1000, seed=7_000_000 + hosts, out=quiet([]))
    assert_clean(report)


def test_a_random_run_on_a_file_lockspace() -> None:
    """Real files and locks; the virtual clock stands still while their I/O runs."""
    lines: list[str] = []
    report = simulate(hosts=3, scenarios=3, seed=CI_SEED, backend="file", out=lines.append)
    assert_clean(report)
    assert report.faults_injected > 0
    assert "(file backend)" in lines[0]


def test_file_seed_20261260_fences_a_guest_started_before_the_first_renewal() -> None:
    """Found by a 100-scenario file-backend run: h3's coordinator crashed 14 ms after
    starting a guest, before its first renewal, and the simulated supervisors had no
    deadline to act on (tests/test_cluster.py has the same case by hand)."""
    report = simulate(hosts=4, scenarios=1, seed=20261260, backend="file", out=quiet([]))
    assert_clean(report)
    assert report.faults_injected > 0


def test_worker_processes_give_the_same_report() -> None:
    alone = simulate(hosts=3, scenarios=4, seed=CI_SEED, out=quiet([]))
    shared = simulate(hosts=3, scenarios=4, seed=CI_SEED, out=quiet([]), jobs=2)
    assert shared == alone


# One scenario per fix of issue 7 that flags it once the fix is undone, and is
# clean with the fix; found with `python -m actorlock._verify.sensitivity`
# (pick others there if the scenario generator changes).
FLAGGED_WHEN_UNDONE = {
    "fence-starvation": 20261208,
    "resume-reanchor": 20261220,
    "acquire-expiry-race": 20261263,
    "clock-after-read": 20261230,
}


@pytest.mark.parametrize(("fix", "seed"), sorted(FLAGGED_WHEN_UNDONE.items()))
def test_a_scenario_flags_each_fix_of_issue_7_once_undone(fix: str, seed: int) -> None:
    undone = undone_scenario(fix, seed)
    assert undone.violations, f"{fix} undone: seed {seed} no longer flags it"
    assert {v.violation.rule for v in undone.violations} & {Rule.EXCLUSIVE_OVERLAP, Rule.UNFENCED_LEASE_LOSS}
    fixed = undone_scenario(BASELINE, seed)
    assert not fixed.violations
    assert not fixed.anomalies


def test_the_sensitivity_runner_counts_flagged_scenarios() -> None:
    lines: list[str] = []
    seed = FLAGGED_WHEN_UNDONE["resume-reanchor"]
    found = run_sensitivity(["resume-reanchor"], scenarios=1, seed=seed, out=lines.append)
    assert [f.fix for f in found] == [BASELINE, "resume-reanchor"]
    assert not found[0].flagged
    assert found[1].flagged == found[1].beyond == (seed,)
    assert found[1].caught
    assert lines[1].startswith("no fix undone: 0/1 scenarios flagged")
    assert lines[2].startswith(f"resume-reanchor undone: 1/1 scenarios flagged (first: seed {seed}; rules ")
    assert sensitivity_main(["--fix", "clock-after-read", "--scenarios", "1", "--seed", str(seed)]) == 1
    assert sensitivity_main(["--scenarios", "0"]) == 2


@pytest.mark.slow
def test_every_fix_of_issue_7_is_flagged_within_300_scenarios_once_undone() -> None:
    found = run_sensitivity(scenarios=300, seed=20261206, jobs=2, out=quiet([]))
    assert not found[0].flagged, "the baseline is clean"
    assert all(f.caught for f in found[1:]), [f.line() for f in found]


@pytest.mark.slow
def test_a_random_run_on_a_file_lockspace_in_real_time() -> None:
    report = simulate(hosts=3, scenarios=3, seed=CI_SEED, backend="file", real_time=True, out=quiet([]))
    assert_clean(report)
    assert report.faults_injected > 0
