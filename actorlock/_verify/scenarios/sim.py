"""Many scenarios, in this process or in worker processes, and the ``actorlock sim`` command."""

from __future__ import annotations

import functools
import hashlib
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import anyio

from ...errors import InvalidParameterError
from ...testing.cluster import (
    FAULT_KINDS,
)
from ..trio_scheduling import seeded_virtual_clock
from .results import ScenarioResult, SimReport, rerun_command
from .scenario import run_scenario
from .settings import ScenarioSettings

Out = Callable[[str], Any]

# --- many scenarios ---------------------------------------------------------------


class _Tally:
    """Adds scenario results up and prints progress sparingly."""

    def __init__(self, out: Out, hosts: int, scenarios: int, seed: int, backend: str) -> None:
        self.out = out
        self.total = scenarios
        self.every = max(1, scenarios // 10)
        self.results: list[ScenarioResult] = []
        self.started = time.perf_counter()
        last = seed + scenarios - 1
        out(f"simulating {scenarios} scenarios on {hosts} hosts ({backend} backend), seeds {seed}..{last}")

    def add(self, result: ScenarioResult) -> None:
        self.results.append(result)
        if result.violations:
            self.out(
                f"scenario seed {result.seed}: {len(result.violations)} violation(s); "
                f"re-run: {rerun_command(result.seed, result.hosts, result.backend)}"
            )
            for found in result.violations:
                v = found.violation
                self.out(f"  rule {v.rule.value} ({v.rule.name.lower()}): {v.message}")
        for anomaly in result.anomalies:
            self.out(f"scenario seed {anomaly.seed}: {anomaly.problem}; re-run: {anomaly.rerun}")
        done = len(self.results)
        if done % self.every == 0 and done < self.total:
            report = self.report()
            self.out(
                f"  {done}/{self.total} scenarios, {report.faults_injected} faults, "
                f"{report.operations_done} operations, {len(report.violations)} violations"
            )

    def report(self) -> SimReport:
        rs = self.results
        digest = hashlib.sha256("".join(r.digest for r in rs).encode()).hexdigest()[:16]
        counts = dict.fromkeys(FAULT_KINDS, 0)
        for r in rs:
            for kind, count in r.fault_counts:
                counts[kind] = counts.get(kind, 0) + count
        return SimReport(
            scenarios_run=len(rs),
            faults_injected=sum(r.faults for r in rs),
            operations_done=sum(r.operations for r in rs),
            violations=tuple(v for r in rs for v in r.violations),
            anomalies=tuple(a for r in rs for a in r.anomalies),
            events=sum(r.events for r in rs),
            sim_seconds=sum(r.sim_seconds for r in rs),
            digest=digest,
            fault_counts=tuple(counts.items()),
            wall_seconds=time.perf_counter() - self.started,
        )

    def finish(self) -> SimReport:
        report = self.report()
        self.out(f"scenarios: {report.scenarios_run}")
        self.out(f"faults injected: {report.faults_injected}")
        self.out(report.faults_line)
        self.out(f"operations: {report.operations_done}")
        self.out(f"simulated {report.sim_seconds:.1f}s in {report.wall_seconds:.1f}s")
        self.out(f"anomalies: {len(report.anomalies)}")
        self.out(f"violations: {len(report.violations)}")
        return report


def _check_args(hosts: int, scenarios: int, backend: str, jobs: int = 1) -> None:
    if hosts < 3:
        raise InvalidParameterError(f"hosts must be at least 3, got {hosts}")
    if scenarios < 0:
        raise InvalidParameterError(f"scenarios must not be negative, got {scenarios}")
    if backend not in ("memory", "file"):
        raise InvalidParameterError(f"backend must be memory or file, got {backend!r}")
    if jobs < 1:
        raise InvalidParameterError(f"jobs must be at least 1, got {jobs}")


async def run_sim(
    *,
    hosts: int,
    scenarios: int,
    seed: int,
    out: Out = print,
    backend: str = "memory",
    settings: ScenarioSettings | None = None,
) -> SimReport:
    """Run ``scenarios`` random scenarios (seeds ``seed``, ``seed + 1``...) in this event loop.

    Prints a header, progress about ten times, each violating scenario
    (with the command that re-runs it) and a summary ending with the line
    ``violations: V``. Run it on trio with a virtual clock for speed::

        anyio.run(functools.partial(run_sim, hosts=3, scenarios=100, seed=1),
                  backend="trio", backend_options={"clock": virtual_clock()})

    :func:`simulate` does that with one trio run per scenario, so that a
    scenario repeats exactly when re-run alone.
    """
    _check_args(hosts, scenarios, backend)
    tally = _Tally(out, hosts, scenarios, seed, backend)
    for i in range(scenarios):
        tally.add(await run_scenario(seed + i, hosts=hosts, backend=backend, settings=settings))
    return tally.finish()


def simulate(
    *,
    hosts: int,
    scenarios: int,
    seed: int,
    out: Out = print,
    backend: str = "memory",
    settings: ScenarioSettings | None = None,
    real_time: bool = False,
    jobs: int = 1,
) -> SimReport:
    """Like :func:`run_sim`, but each scenario in a trio run of its own.

    Args:
        real_time: run on the real clock instead of a
            :func:`~actorlock._verify.trio_scheduling.seeded_virtual_clock` seeded with the
            scenario's seed. The virtual clock is fast and, on the memory
            backend, repeats a scenario event for event; it stands still
            while storage I/O runs, so real time is what explores slow
            storage on the file backend.
        jobs: scenarios run at once, in worker processes; on the memory
            backend the report is the same as with one.

    The other arguments are :func:`run_sim`'s.
    """
    _check_args(hosts, scenarios, backend, jobs)
    tally = _Tally(out, hosts, scenarios, seed, backend)
    runs = [(seed + i, hosts, backend, settings, real_time) for i in range(scenarios)]
    if jobs == 1 or scenarios < 2:
        for run in runs:
            tally.add(_scenario_alone(run))
    else:
        # spawn, not fork: the parent may have trio's worker threads running.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_quiet_logs) as pool:
            for result in pool.map(_scenario_alone, runs, chunksize=4):
                tally.add(result)
    return tally.finish()


_Run = tuple[int, int, str, ScenarioSettings | None, bool]


def _scenario_alone(run: _Run) -> ScenarioResult:
    seed, hosts, backend, settings, real_time = run
    clock = seeded_virtual_clock(seed, inline_worker_calls=backend == "memory")
    options: dict[str, Any] = {} if real_time else {"clock": clock}
    scenario = functools.partial(run_scenario, seed, hosts=hosts, backend=backend, settings=settings)
    return anyio.run(scenario, backend="trio", backend_options=options)


def _quiet_logs() -> None:
    """Keep the coordinators' warnings about injected faults off the terminal."""
    logger = logging.getLogger("actorlock")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False


def main_sim(
    hosts: int, scenarios: int, seed: int, out: Out = print, backend: str = "memory", jobs: int = 1
) -> int:
    """The ``actorlock sim`` command: :func:`simulate`, then an exit status.

    The coordinators' log messages (thousands of expected warnings about
    injected faults) are silenced for the duration.

    Returns:
        0 when no scenario broke a rule or failed to finish, 1 otherwise.
    """
    logger = logging.getLogger("actorlock")
    handlers, propagate = list(logger.handlers), logger.propagate
    _quiet_logs()
    try:
        report = simulate(hosts=hosts, scenarios=scenarios, seed=seed, out=out, backend=backend, jobs=jobs)
    finally:
        logger.handlers[:] = handlers
        logger.propagate = propagate
    return 0 if report.ok else 1
