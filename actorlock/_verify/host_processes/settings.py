"""Short but safe timings for host processes, and the control channel's limits."""

from __future__ import annotations

# Short but safe timings (host_dead >= (lease_timeout + fence_timeout) * 1.01),
# so that a run, and the crash tests built on this script, take seconds.
TIMING: dict[str, float] = {
    "renew_interval": 0.05,
    "lease_timeout": 0.25,
    "fence_timeout": 0.2,
    "host_dead": 0.6,
    "io_timeout": 2.0,
}
KILL_GRACE = 0.05
PEER_TIMING: dict[str, float] = {
    "migration_timeout": 2.0,
    "prepare_timeout": 1.0,
    "transfer_margin": 0.3,
    "retry_interval": 0.05,
    "request_timeout": 0.5,
}


STARTUP_TIMEOUT = 20.0  # a child imports actorlock and zmq, then joins (may wait host_dead)
CALL_TIMEOUT = 15.0  # longest op: a commit waiting out migration_timeout, plus slack
EXIT_TIMEOUT = 5.0  # a child told to exit (stdin closed) gets this long before SIGKILL
MAX_LINE = 1 << 20
