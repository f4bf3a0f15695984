"""A kit for testing your own daemon, or your own lease backend, against simulated hosts.

What is public here, each part in its own module:

- **Conformance suite** (:mod:`~actorlock.testing.conformance`): the checks
  every :class:`~actorlock.backends.base.LeaseBackend` must pass;
  :func:`check_lease_backend` runs them all.
- **Fault injection** (:mod:`~actorlock.testing.faults`): wrap a backend in a
  :class:`FaultyBackend` (or a state store in a :class:`FaultyStateStore`) and
  fail, stall or slow its operations from the test.
- **Simulated cluster** (:mod:`~actorlock.testing.cluster`): :func:`open_cluster`
  runs N real host coordinators in one process with simulated guests and
  storage, and crashes, pauses and restarts them on demand.
- **Virtual clock** (:mod:`~actorlock.testing.clock`): :func:`virtual_clock`
  for trio, so simulated seconds cost no real time and runs repeat.
- **History and checker** (:mod:`~actorlock.testing.history`,
  :mod:`~actorlock.testing.checker`): what happened, on one clock, and
  :func:`check`, which judges it against the safety rules.
- **Event log** (:mod:`~actorlock.testing.events`): an event sink for
  ``open_host(event_sink=...)`` that tests can wait on.
- **Host faults** (:mod:`~actorlock.testing.host_faults`): :func:`freeze`,
  :func:`thaw` and :func:`crash` a running host from outside, as a SIGSTOP,
  SIGCONT or SIGKILL of its coordinator would.

The history's event records are in :mod:`actorlock.testing.history`. This
project's own verification drivers (the random scenarios of ``actorlock sim``,
the explorer, the chaos driver) are not part of this kit: they live in the
private package ``actorlock._verify``, which nothing here imports.
"""

from .checker import Rule, Violation, check
from .clock import VirtualClock, virtual_clock
from .cluster import (
    FAULT_KINDS,
    SIM_TIMING,
    STORAGE_FAULTS,
    Cluster,
    GuestState,
    HostGoneError,
    HostState,
    SimGuest,
    SimHost,
    SimStorage,
    open_cluster,
)
from .conformance import ALL_CHECKS, BackendFactory, ConformanceError, FakeClock, check_lease_backend
from .events import EventLog
from .faults import FaultyBackend, FaultyStateStore, ForwardingBackend, Shape, Slowness, saturate_thread_pool
from .history import EventSink, History, HistoryEvent
from .host_faults import crash, freeze, thaw

__all__ = [
    "ALL_CHECKS",
    "FAULT_KINDS",
    "SIM_TIMING",
    "STORAGE_FAULTS",
    "BackendFactory",
    "Cluster",
    "ConformanceError",
    "EventLog",
    "EventSink",
    "FakeClock",
    "FaultyBackend",
    "FaultyStateStore",
    "ForwardingBackend",
    "GuestState",
    "History",
    "HistoryEvent",
    "HostGoneError",
    "HostState",
    "Rule",
    "Shape",
    "SimGuest",
    "SimHost",
    "SimStorage",
    "Slowness",
    "Violation",
    "VirtualClock",
    "check",
    "check_lease_backend",
    "crash",
    "freeze",
    "open_cluster",
    "saturate_thread_pool",
    "thaw",
    "virtual_clock",
]
