"""What scenarios found: per scenario (:class:`ScenarioResult`) and for a whole run (:class:`SimReport`)."""

from __future__ import annotations

import attrs

from ...testing.checker import Violation


@attrs.frozen
class ScenarioViolation:
    """A checker violation and the scenario that produced it."""

    seed: int
    hosts: int
    backend: str
    violation: Violation

    @property
    def rerun(self) -> str:
        """The command that runs this scenario alone."""
        return rerun_command(self.seed, self.hosts, self.backend)


@attrs.frozen
class ScenarioAnomaly:
    """Something that kept a scenario from being judged whole (an error, a hang)."""

    seed: int
    hosts: int
    backend: str
    problem: str

    @property
    def rerun(self) -> str:
        """The command that runs this scenario alone."""
        return rerun_command(self.seed, self.hosts, self.backend)


@attrs.frozen
class ScenarioResult:
    """What one scenario did and what the checker found.

    Attributes:
        digest: a hash of the history (host incarnations left out, they are
            random): equal digests mean the same events at the same times.
    """

    seed: int
    hosts: int
    backend: str
    operations: int
    faults: int
    events: int
    sim_seconds: float
    violations: tuple[ScenarioViolation, ...]
    anomalies: tuple[ScenarioAnomaly, ...]
    digest: str
    fault_counts: tuple[tuple[str, int], ...] = ()


@attrs.frozen
class SimReport:
    """The outcome of a randomized run (:func:`run_sim`, :func:`simulate`).

    Attributes:
        scenarios_run: scenarios completed.
        faults_injected: crashes, pauses, backend and storage faults injected.
        operations_done: calls made into the coordinators (guest operations,
            probes, re-attachments).
        violations: every checker violation, with the seed of its scenario.
        anomalies: scenarios that failed or hung instead of finishing.
        events: history events recorded, all scenarios together.
        sim_seconds: simulated time, all scenarios together.
        digest: a hash of every scenario's history, in order.
        fault_counts: faults injected by kind (every kind of
            :data:`~actorlock.testing.cluster.FAULT_KINDS`, in that order).
        wall_seconds: real time taken (not compared).
    """

    scenarios_run: int
    faults_injected: int
    operations_done: int
    violations: tuple[ScenarioViolation, ...]
    anomalies: tuple[ScenarioAnomaly, ...] = ()
    events: int = 0
    sim_seconds: float = 0.0
    digest: str = ""
    fault_counts: tuple[tuple[str, int], ...] = ()
    wall_seconds: float = attrs.field(default=0.0, eq=False)

    @property
    def ok(self) -> bool:
        """No violation and no anomaly."""
        return not self.violations and not self.anomalies

    @property
    def faults_line(self) -> str:
        """``faults: storage-stall=N slow-io=N ...``: every fault kind with its count."""
        return "faults: " + " ".join(f"{kind}={count}" for kind, count in self.fault_counts)


def rerun_command(seed: int, hosts: int, backend: str) -> str:
    extra = f" --backend {backend}" if backend != "memory" else ""
    return f"actorlock sim --hosts {hosts} --scenarios 1 --seed {seed}{extra}"
