"""Seeded random scenarios on a simulated cluster, judged by the safety checker.

One *scenario* (:func:`run_scenario`) opens a :class:`~actorlock.testing.cluster.Cluster`
of N hosts sharing a handful of disks (``hosts + 1`` of them, so contention
is real) and runs, concurrently:

- one worker per host, doing what libvirt would ask its coordinator
  (:data:`OPERATION_WEIGHTS`): start guests on one or two disks (a quarter of
  them shared), stop them, hotplug and unplug disks, pause guests
  (``Domain.pause``) and resume them with their saved state; a host that is
  not up gets no calls meanwhile;
- one chaos worker injecting 2 to 5 faults (:data:`FAULT_WEIGHTS`), at most
  one at a time per host and mostly on hosts that run guests, each healed
  after a random while:

  - host crash, then (usually) a rejoin as a new host process after a
    random downtime; some hosts stay down to the end (two always stay up);
  - coordinator crash, restarted (and its guests re-attached) before its
    lease expires;
  - coordinator down for good (``coordinator_down``): never restarted; its
    guests' supervisors stop them at the last deadline it pushed, before
    another host may take their disks (the HA hunters try);
  - host pause (guests and their supervisors frozen too), up to twice
    ``host_dead``: past it other hosts take the disks of its guests, which
    write on waking before anything can stop them, and the storage, which
    checks fencing tokens, refuses those writes;
  - backend faults (:data:`BACKEND_FAULTS`): renewals, acquisitions or
    releases failing or stalling, alone or together; each operation heals
    at its own time;
  - storage faults with a duration (issue 7), which may overlap each other
    and backend faults on one host: all of the host's storage I/O stalled
    for up to ``storage_stall`` lease_timeouts; one backend operation
    (:data:`SLOW_OPERATIONS`) slowed by up to ``io_timeout`` per call, before
    or after reaching storage; the process's worker-thread pool saturated;
    the host's state-store writes slowed by up to ``slow_state`` io_timeouts;
    a delay of up to ``read_delay`` io_timeouts between reading host records
    and judging their liveness (memory backend). Within some of them
    (``restart_inside``, and always for a slow join) the coordinator crashes
    at a random point and is restarted, as ``crash_coordinator`` does.
    Storage trouble comes together (``stall_inside``): a saturated pool
    comes with a stall of the same host's storage (issue 7, path 1), and a
    slow state store meets a stall or renewals that time out just after the
    host was asked to start a guest (path 3); a host whose judgements are
    delayed keeps trying to take a disk a healthy host's guest uses (path 4);
- for every fault, "HA" workers on other hosts that try to restart each
  disk of the faulty host's running guests until they get it: they are what
  brings takeovers right to the edge of ``host_dead``. During a storage
  fault, disks the host's guests take meanwhile are hunted too, and while
  the worker pool is saturated the hunters try with probes (which need no
  worker thread) instead of guest starts.

Then everything is healed (``FaultsHealed``), fenced and half-done guests
are tidied away, and every up host probes every disk three times,
``host_dead`` plus two renewals apart: the refusals are the evidence the
checker's rule 5 needs to judge that leases of hosts that stayed down were
taken over. A snapshot of the lease records (``LeaseHeld``) is taken last and
:func:`~actorlock.testing.checker.check` judges the whole history.

Every cluster runs supervised, on storage that checks fencing tokens
(``open_cluster(supervised=True, fencing_storage=True)``, issue 9): each
host's guests run under supervisors that outlive its coordinator, and the
checker knows that storage refused the stale writes of a woken host. That
is what makes the two faults above safe, and without either they are
unsafe by design: a coordinator that stays down leaves its guests running
as others take their disks, and a host frozen past ``host_dead`` wakes with
guests whose first write nothing on the host can stop (docs/timing.md).

The summary counts the faults by kind (``faults: storage-stall=N slow-io=N
...``, :data:`~actorlock.testing.cluster.FAULT_KINDS`).

Every scenario is a function of its seed: scenario ``i`` of a run with seed
``S`` has seed ``S + i`` and is re-run alone with ``actorlock sim --hosts N
--scenarios 1 --seed S+i``. :func:`simulate` (and :func:`main_sim`) run each
scenario in its own trio run on a
:func:`~actorlock._verify.trio_scheduling.seeded_virtual_clock`: on the memory backend a
re-run repeats it event for event. On the file backend the hosts' storage
threads really run at once and race for real locks, so a re-run follows the
same plan but may order simultaneous storage operations differently.
:func:`run_sim` runs all the scenarios in the caller's event loop, for
embedding.

Split by job: :mod:`.settings` (weights and knobs), :mod:`.scenario` (one
scenario), :mod:`.results` (what scenarios found) and :mod:`.sim` (many
scenarios and the ``actorlock sim`` command).
"""

from __future__ import annotations

from .results import ScenarioAnomaly, ScenarioResult, ScenarioViolation, SimReport
from .scenario import run_scenario
from .settings import BACKEND_FAULTS, FAULT_WEIGHTS, OPERATION_WEIGHTS, SLOW_OPERATIONS, ScenarioSettings
from .sim import main_sim, run_sim, simulate

__all__ = [
    "BACKEND_FAULTS",
    "FAULT_WEIGHTS",
    "OPERATION_WEIGHTS",
    "SLOW_OPERATIONS",
    "ScenarioAnomaly",
    "ScenarioResult",
    "ScenarioSettings",
    "ScenarioViolation",
    "SimReport",
    "main_sim",
    "run_scenario",
    "run_sim",
    "simulate",
]
