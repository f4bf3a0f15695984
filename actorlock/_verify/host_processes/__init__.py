"""Host coordinators in child processes, driven over a line-based control channel.

The parent starts each host as a child process (:func:`spawn_host`); the
child joins a file lockspace, runs a ``[peer]`` service on loopback (CURVE
unless told otherwise, keys from :func:`make_keys`) and carries out the
libvirt lock-manager sequences the parent names, one JSON object per line
(:mod:`.agent`). Every migration between two such hosts crosses processes
over ZeroMQ. ``sleep`` processes stand in for QEMU (:mod:`.guests`).

Used by ``examples/two_hosts.py``, ``tests/test_migration_processes.py`` and
``benchmarks/bench_migration.py``. Split by job: :mod:`.settings` (timings,
limits), :mod:`.agent` (the child), :mod:`.control` (the parent's handles)
and :mod:`.guests` (stand-in guests).
"""

from __future__ import annotations

from .agent import HostAgent, LineReader, add_host_arguments, emit, host_main
from .control import HostError, HostGone, HostKeys, HostProcess, concurrently, make_keys, spawn_host
from .guests import guest_processes, start_guest, stop_guest
from .settings import KILL_GRACE, PEER_TIMING, TIMING

__all__ = [
    "KILL_GRACE",
    "PEER_TIMING",
    "TIMING",
    "HostAgent",
    "HostError",
    "HostGone",
    "HostKeys",
    "HostProcess",
    "LineReader",
    "add_host_arguments",
    "concurrently",
    "emit",
    "guest_processes",
    "host_main",
    "make_keys",
    "spawn_host",
    "start_guest",
    "stop_guest",
]
