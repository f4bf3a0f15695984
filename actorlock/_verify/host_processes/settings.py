"""Short but safe timings for host processes, and the control channel's limits."""

from __future__ import annotations

from ...timing_presets import FAST_KILL_GRACE, fast_timing

# Short but safe, so that a run, and the crash tests built on this script, take seconds.
TIMING: dict[str, float] = fast_timing()
KILL_GRACE = FAST_KILL_GRACE
PEER_TIMING: dict[str, float] = {
    "migration_timeout": 2.0,
    "prepare_timeout": 1.0,
    "transfer_margin": 0.3,
    "retry_interval": 0.05,
    "request_timeout": 0.5,
    # Back-to-back handoffs (benchmarks/bench_migration.py) leave each ended incoming
    # migration lingering 2 * retry_interval + 1 s, and the lingering ones count
    # against the caps: room for a hundred handoffs a second.
    "max_incoming_per_peer": 256,
    "max_incoming": 512,
}


STARTUP_TIMEOUT = 20.0  # a child imports actorlock and zmq, then joins (may wait host_dead)
CALL_TIMEOUT = 15.0  # longest op: a commit waiting out migration_timeout, plus slack
EXIT_TIMEOUT = 5.0  # a child told to exit (stdin closed) gets this long before SIGKILL
MAX_LINE = 1 << 20
