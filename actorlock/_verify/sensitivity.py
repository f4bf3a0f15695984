"""Sensitivity of the random scenarios: with each fix of issue 7 undone, do they flag it?

A safety harness finds only what it models. For each of the four fixes of
issue 7, :data:`~actorlock._verify.undo_fixes.UNDO_FIXES` has a context
manager that puts the old code back for the duration of a block; this
module runs the random scenarios of :mod:`actorlock._verify.scenarios`
(the ones ``actorlock sim`` runs, seeds ``S``, ``S + 1``..., but without the
guests' supervisors and token-checking storage of issue 9, which would stop
the guests a coordinator bug leaves running: :data:`UNSUPERVISED`) with one
fix undone at a time, and counts how many of them flag a violation (or an
anomaly: a scenario that failed or hung). A fix the scenarios do not flag
is one the simulator cannot see.

Run it as::

    python -m actorlock._verify.sensitivity --scenarios 300 --seed 20261206

It first runs the scenarios with every fix in place (the baseline, which
must be clean), then once per fix, and prints one line per run::

    fence-starvation undone: 12/300 scenarios flagged (first: seed 20261214; rules 1, 2, 3) in 30.1s

(when the baseline flags some seeds too, the line also says how many of
the flagged ones the baseline left clean, and only those count as caught)

and exits 0 when the baseline is clean and every undone fix is flagged at
least once, 1 otherwise. ``--fix NAME`` (repeatable) picks fixes, ``--jobs``
runs scenarios in worker processes (each one applies the undo itself), and
``--no-baseline`` skips the baseline.
"""

from __future__ import annotations

import argparse
import functools
import logging
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import anyio
import attrs

from .scenarios import ScenarioResult, ScenarioSettings, run_scenario
from .trio_scheduling import seeded_virtual_clock
from .undo_fixes import UNDO_FIXES

__all__ = ["BASELINE", "FixSensitivity", "main", "run_sensitivity", "undone_scenario"]

BASELINE = "baseline"  # the run with every fix in place

Out = Callable[[str], Any]


@attrs.frozen
class FixSensitivity:
    """How the random scenarios fared with one fix undone (or none, for the baseline).

    Attributes:
        fix: a key of ``UNDO_FIXES``, or :data:`BASELINE`.
        scenarios: scenarios run.
        flagged: seeds of the scenarios with a violation or an anomaly.
        rules: checker rules broken, all scenarios together (rule numbers).
        anomalies: seeds of the scenarios that failed or hung.
        beyond: the flagged seeds that the baseline did not flag (all of
            them when no baseline was run): what undoing the fix broke.
        wall_seconds: real time taken (not compared).
    """

    fix: str
    scenarios: int
    flagged: tuple[int, ...]
    rules: tuple[int, ...]
    anomalies: tuple[int, ...] = ()
    beyond: tuple[int, ...] = ()
    wall_seconds: float = attrs.field(default=0.0, eq=False)

    @property
    def caught(self) -> bool:
        """At least one scenario flagged it that the baseline did not."""
        return bool(self.beyond)

    def line(self) -> str:
        """The one-line summary printed for this run."""
        what = "no fix undone" if self.fix == BASELINE else f"{self.fix} undone"
        text = f"{what}: {len(self.flagged)}/{self.scenarios} scenarios flagged"
        if self.fix != BASELINE and self.beyond != self.flagged:
            text += f", {len(self.beyond)} of them clean in the baseline"
        if self.flagged:
            rules = ", ".join(str(r) for r in self.rules) or "none"
            first = (self.beyond or self.flagged)[0]
            text += f" (first: seed {first}; rules {rules}"
            if self.anomalies:
                text += f"; {len(self.anomalies)} anomalous"
            text += ")"
        return f"{text} in {self.wall_seconds:.1f}s"


def _undo(fix: str) -> AbstractContextManager[None]:
    if fix == BASELINE:
        return nullcontext()
    return UNDO_FIXES[fix]()


# Without supervisors: they would stop the guests an undone fix leaves running, hiding it.
UNSUPERVISED = ScenarioSettings(supervised=False)


def undone_scenario(
    fix: str, seed: int, *, hosts: int = 4, settings: ScenarioSettings | None = None
) -> ScenarioResult:
    """One scenario (as ``actorlock sim`` runs it, in its own trio run) with ``fix`` undone.

    ``settings`` default to :data:`UNSUPERVISED`: the coordinator's own fencing is measured.
    """
    with _undo(fix):
        return anyio.run(
            functools.partial(run_scenario, seed, hosts=hosts, settings=settings or UNSUPERVISED),
            backend="trio",
            backend_options={"clock": seeded_virtual_clock(seed, inline_worker_calls=True)},
        )


_Job = tuple[str, int, int, ScenarioSettings | None]


def _job(job: _Job) -> ScenarioResult:
    fix, seed, hosts, settings = job
    return undone_scenario(fix, seed, hosts=hosts, settings=settings)


def _quiet_logs() -> None:
    logger = logging.getLogger("actorlock")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False


def _results(jobs: Sequence[_Job], workers: int) -> Iterator[ScenarioResult]:
    if workers == 1 or len(jobs) < 2:
        for job in jobs:
            yield _job(job)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_quiet_logs) as pool:
        yield from pool.map(_job, jobs, chunksize=4)


def run_sensitivity(
    fixes: Sequence[str] | None = None,
    *,
    scenarios: int,
    seed: int,
    hosts: int = 4,
    jobs: int = 1,
    baseline: bool = True,
    settings: ScenarioSettings | None = None,
    out: Out = print,
) -> list[FixSensitivity]:
    """Run the scenarios with each fix undone in turn; one :class:`FixSensitivity` per run.

    Args:
        fixes: keys of ``UNDO_FIXES`` (all of them, in order, by default).
        scenarios: scenarios per run, seeds ``seed`` to ``seed + scenarios - 1``.
        hosts: hosts per scenario (at least 3).
        jobs: worker processes.
        baseline: run with no fix undone first (named :data:`BASELINE`).
        settings: the scenario generator's knobs.
        out: where to print the header and one line per run.
    """
    names = list(UNDO_FIXES) if fixes is None else list(fixes)
    unknown = [n for n in names if n not in UNDO_FIXES]
    if unknown:
        raise ValueError(f"unknown fixes {unknown} (known: {', '.join(UNDO_FIXES)})")
    runs = ([BASELINE] if baseline else []) + names
    out(f"sensitivity: {scenarios} scenarios on {hosts} hosts per run, seeds {seed}..{seed + scenarios - 1}")
    found: list[FixSensitivity] = []
    baseline_flagged: set[int] = set()
    for fix in runs:
        started = time.perf_counter()
        flagged: list[int] = []
        anomalous: list[int] = []
        rules: set[int] = set()
        for result in _results([(fix, seed + i, hosts, settings) for i in range(scenarios)], jobs):
            if result.violations or result.anomalies:
                flagged.append(result.seed)
            if result.anomalies:
                anomalous.append(result.seed)
            rules.update(int(v.violation.rule.value) for v in result.violations)
        if fix == BASELINE:
            baseline_flagged = set(flagged)
        sensitivity = FixSensitivity(
            fix=fix,
            scenarios=scenarios,
            flagged=tuple(flagged),
            rules=tuple(sorted(rules)),
            anomalies=tuple(anomalous),
            beyond=tuple(s for s in flagged if s not in baseline_flagged),
            wall_seconds=time.perf_counter() - started,
        )
        out(sensitivity.line())
        found.append(sensitivity)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m actorlock._verify.sensitivity",
        description=(
            "Undo each fix of issue 7 in turn (actorlock._verify.undo_fixes) and count how many random "
            "scenarios (those of 'actorlock sim') flag a violation; exit 1 unless the baseline is clean "
            "and every undone fix is flagged."
        ),
    )
    parser.add_argument("--scenarios", type=int, default=300, help="scenarios per fix (default 300)")
    parser.add_argument("--seed", type=int, default=20261206, help="seed of the first scenario")
    parser.add_argument("--hosts", type=int, default=4, help="hosts per scenario (default 4)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--fix", action="append", choices=list(UNDO_FIXES), help="a fix to undo (repeatable; default all)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the run with every fix in place")
    args = parser.parse_args(argv)
    if args.scenarios < 1 or args.hosts < 3 or args.jobs < 1:
        print("sensitivity: --scenarios and --jobs at least 1, --hosts at least 3", file=sys.stderr)
        return 2
    _quiet_logs()
    found = run_sensitivity(
        args.fix,
        scenarios=args.scenarios,
        seed=args.seed,
        hosts=args.hosts,
        jobs=args.jobs,
        baseline=not args.no_baseline,
    )
    clean = all(not f.flagged for f in found if f.fix == BASELINE)
    caught = all(f.caught for f in found if f.fix != BASELINE)
    return 0 if clean and caught else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
