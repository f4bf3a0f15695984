"""The chaos run's timings, workload sizes and fault bounds, shared by the driver and the host processes."""

from __future__ import annotations

from collections.abc import (
    Mapping,
)

from ...timing_presets import fast_timing

# The fast preset at twice its times, host_dead 1.0 (the rule asks for at least 0.858),
# with room above it for a loaded CI machine to schedule a woken host.
TIMING: Mapping[str, float] = fast_timing(scale=2, fence_timeout=0.3, host_dead=1.0)
KILL_GRACE = 0.1  # below fence_timeout: SIGKILL follows SIGTERM in time
PEER_TIMING: Mapping[str, float] = {
    "migration_timeout": 2.0,
    "prepare_timeout": 1.0,
    "transfer_margin": 0.3,
    "retry_interval": 0.05,
    "request_timeout": 0.5,
}
WRITE_INTERVAL = 0.05  # how often a running guest writes each of its disks
# A frozen host must wake, fence (fence_timeout) and have done so before others may
# take over (host_dead after its last renewal, which started up to renew_interval
# before the freeze): 1.0 - 0.3 - 0.1 = 0.6, less a margin for scheduling.
SIGSTOP_MAX = 0.55
# Every guest runs under its supervisor (actorlock.supervisor), as this command line.
GUEST_ARGV = ("sleep", "600")
# How long a guest may take to die once its supervisor was killed (PR_SET_PDEATHSIG: at once).
SUPERVISOR_KILL_LIMIT = 2.0
# A host process, or a reaper killing what it reaps, that takes longer than this to die is stuck.
REAP_TIMEOUT = 10.0
# Rule 5's allowance between a refusal being decided in a backend and being recorded.
SLACK = 0.25

CALL_TIMEOUT = 15.0  # the longest op: a commit waiting out migration_timeout and its settlement
STARTUP_TIMEOUT = 30.0  # a cold process imports everything; a new incarnation waits host_dead
MAX_LINE = 1 << 20
MODULE = "actorlock._verify.chaos"  # run with -m: also when this file is __main__ of the driver

# Few enough disks that guests compete for them (starts get refused, a guest started on a
# second host must be refused), enough that several guests run at once.
SHARED_DISKS = 1
EXCLUSIVE_DISKS = 6
GUESTS = 8
WORKERS = 3
OP_GAP = (0.05, 0.3)  # seconds a worker waits between two operations

# Stalled storage: another process holds the lock files of one host's records (a hung NFS
# server, as that host sees it) for STALL_MIN to STALL_MAX seconds: up to several
# lease_timeouts, past host_dead and past io_timeout.
STALL_MIN = 0.2
STALL_MAX = 5 * TIMING["lease_timeout"]
# The chances that the host is sent a burst of BURST starts, each blocked on the stall, which
# fill its worker threads (anyio's default limiter has 40) as a busy host's would; that a stall
# without a burst holds the disks of the host's own guests too (otherwise, and always with a
# burst, other hosts may take them over during the stall once the host is dead to them); that
# it holds those of each other guest (disks the host may be about to start, or take over by
# migration); and that a crash falls inside it.
STALL_BURST = 0.4
STALL_OWN_DISKS = 0.5
STALL_OTHER_DISKS = 0.25
STALL_CRASH = 0.5
BURST = 48
BURST_DISK = "/chaos/burst.img"  # no guest's: the burst's starts wait on it, and only they
# After a stall or a freeze ends the host renews again at once; no other fault on it until this
# has passed, so that every fault starts from a host whose last renewal is recent.
SETTLE = TIMING["lease_timeout"]
HELPER_TIMEOUT = 5.0  # the stall's lock holder must hold everything within this
# The injector's first cycle (fixed, so that a short run sees every kind) and the later ones
# (shuffled): a stall is the longest fault but one, and the one most worth meeting often.
FIRST_FAULTS = (
    "sigstop",
    "storage-stall",
    "supervisor_kill",
    "coordinator_crash",
    "coordinator_killed",
    "kill9",
)
FAULT_CYCLE = (
    "kill9",
    "sigstop",
    "coordinator_crash",
    "coordinator_killed",
    "supervisor_kill",
    "storage-stall",
    "storage-stall",
)
