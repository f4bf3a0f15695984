"""What one chaos run did and found."""

from __future__ import annotations

from collections.abc import (
    Mapping,
)

import attrs

from ...testing.checker import Violation


@attrs.frozen
class ChaosReport:
    """What one chaos run did and found.

    Attributes:
        seed: the seed of the run.
        hosts: how many host processes.
        seconds: how long the workload ran (as asked).
        elapsed: the whole run, start-up and the final probes included.
        operations: guest operations the driver started (``operations_by_kind`` splits them).
        operations_by_kind: e.g. ``start``, ``start refused``, ``stop``, ``migrate``, ``probe``.
        faults: injected faults by kind: ``kill9``, ``sigstop``, ``coordinator_crash``,
            ``storage-stall``, ``restart``, and ``crash-in-stall`` (crashes, of either
            kind, that fell inside a storage stall: counted under their kind too).
        migrations_committed: migrations whose leases moved.
        migrations_cancelled: migrations that settled with the source keeping its leases.
        events: records in the merged history.
        writes: ``GuestWrote`` records among them.
        unreadable_lines: torn history lines skipped (a process killed while appending).
        violations: what the checker found; empty in a correct run.
        workdir: where the lockspace, histories and logs are ("" once removed).
        findings: what the driver judged wrong itself: a guest alive past its
            supervisor's bound after its coordinator was killed for good, or
            one that outlived its killed supervisor; empty in a correct run.
        kill_margins: for each guest of a coordinator killed for good, when it
            was seen dead, in seconds after the last lease deadline its
            coordinator pushed (at most fence_timeout).
    """

    seed: int
    hosts: int
    seconds: float
    elapsed: float
    operations: int
    operations_by_kind: Mapping[str, int]
    faults: Mapping[str, int]
    migrations_committed: int
    migrations_cancelled: int
    events: int
    writes: int
    unreadable_lines: int
    violations: tuple[Violation, ...]
    workdir: str = ""
    findings: tuple[str, ...] = ()
    kill_margins: tuple[float, ...] = ()

    @property
    def failures(self) -> int:
        """Violations and findings together: what ``violations: N`` counts."""
        return len(self.violations) + len(self.findings)

    def summary(self) -> list[str]:
        """The report as lines of text; the last one is ``violations: N`` (findings included)."""
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.operations_by_kind.items()))
        faults = " ".join(f"{k.replace(' ', '-')}={v}" for k, v in sorted(self.faults.items()))
        lines = [
            f"chaos: seed {self.seed}, {self.hosts} hosts, workload {self.seconds:.1f} s, "
            f"whole run {self.elapsed:.1f} s",
            f"operations: {self.operations} ({ops})",
            f"faults: {sum(self.faults.values())} ({faults})",
            f"migrations: {self.migrations_committed} committed, {self.migrations_cancelled} cancelled",
            f"events: {self.events} merged ({self.writes} writes, {self.unreadable_lines} torn lines)",
        ]
        if self.kill_margins:
            lines.append(
                f"coordinators killed for good: {len(self.kill_margins)} guests seen dead, the last "
                f"{max(self.kill_margins):.3f} s after the last lease deadline pushed"
            )
        if self.workdir:
            lines.append(f"workdir: {self.workdir}")
        lines.extend(f"FINDING: {finding}" for finding in self.findings)
        for violation in self.violations:
            lines.append(
                f"VIOLATION rule {violation.rule.value} ({violation.rule.name}): {violation.message}"
            )
            lines.extend(f"    {event!r}" for event in violation.evidence)
        lines.append(f"violations: {self.failures}")
        return lines
