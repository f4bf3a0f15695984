"""A multi-process chaos run: real host processes, real faults, one merged history, one checker.

:func:`run_chaos` starts ``hosts`` host processes on loopback (``h1``, ``h2``,
...), each running a real coordinator (:func:`actorlock.open_host`) on one
file lockspace, with a ``[peer]`` service (CURVE unless ``plaintext``) and a
state directory, so a restarted process re-attaches. The driver (the calling
process) starts, stops and migrates guests on them while it kills, freezes
and restarts the processes; at the end every process's history is merged
with the driver's and :func:`actorlock.testing.checker.check` judges it.

Guests
    A guest is a real ``sleep`` process that its host process starts under
    its supervisor (``Domain.spawn``, :mod:`actorlock.supervisor`) once its
    leases are held, so ``failure_action = "poweroff"`` really kills it, and
    so does its supervisor at the last lease deadline the coordinator pushed
    if no coordinator renews. Every host process runs under a small reaper
    (:data:`~.processes.REAPER`, a child subreaper): the supervisors detach
    from the host process and outlive it, and the reaper reaps them and
    their guests, and kills them all when the machine dies. Its *writes* are made by a task in the host
    process: every ``WRITE_INTERVAL`` it reads the clock, checks that the
    ``sleep`` is still alive (pid and start time) and records ``GuestWrote``
    for each lease with the lease's fencing token. Reading the clock *before*
    the check means a write is only ever recorded at an instant the guest
    provably still lived, so a guest killed by fencing writes nothing after
    its death. A write represents I/O the guest issued; the writer lives in
    the host process because that is where the guest's tokens are known.
    When its host process is gone, the driver watches the guest through a
    pidfd and records its stop when it dies.

Workload
    ``WORKERS`` tasks each loop: start a guest of a fixed catalogue (GUESTS
    guests on EXCLUSIVE_DISKS disks plus a shared one; every disk is wanted
    by several guests, and any guest may be started on any host, also while
    it runs elsewhere: the lock manager must refuse), stop one, migrate one
    (prepare on the source, incoming on the destination, then commit, or
    about one time in seven cancel, on both sides at once), probe a disk
    (take it for an instant and write once), shut down leftover domains, or
    snapshot the lease records (``LeaseHeld``). Operations on one guest of one host
    are serialized by a lock; everything else runs concurrently.

Clock
    Every record carries ``time.monotonic()``: CLOCK_MONOTONIC is one clock
    for every process of a Linux machine, so the merged history is in one
    time base. (anyio's clock is not: trio adds a random offset per process.)

What each process records
    Host processes write JSON lines (see :func:`event_to_json`) to
    ``history-<host>.jsonl``: the coordinator's event sink converted as
    :meth:`History.record_host_event` does, plus ``transfer`` as
    ``LeasesTransferred`` and a cancelled outgoing migration as
    ``MigrationCancelled`` (with the leases the source held at prepare), and
    the guests' ``GuestStarted`` / ``GuestWrote`` / ``GuestStopped`` and
    ``AcquireRefused`` (stamped where the refusal happened, not where the
    driver heard of it). The driver records what only it sees: crashes,
    SIGSTOP windows and storage stalls (``FaultInjected``/``FaultsHealed``)
    and guests it killed itself. A guest stops (``GuestStopped``) *before*
    its leases are released; a migration's source pauses (``GuestStopped(PAUSED)``) before
    it is told to commit and runs again (``GuestStarted``) only once the
    migration settled as cancelled; the destination starts only once its
    domain runs (committed).

Faults (see :class:`ChaosReport` for the counts):

``kill9``
    SIGKILL of a host process *and* of every guest on it, with its
    supervisor (the machine died: the reaper kills them), then
    ``HostCrashed``. The host stays down for a random
    while, then ``restart`` brings it back with the same id and state
    directory: after a short downtime it resumes its incarnation, after a
    longer one it joins as a new one (waiting ``host_dead``); either way the
    driver then shuts down every domain the restarted coordinator still
    tracks (their guests died).
``coordinator_crash``
    SIGKILL of the host process only, ``CoordinatorCrashed``; its guests and
    their supervisors keep running. Taken only between operations of that
    host (the driver holds its guests' locks throughout), so the re-attach
    path is exercised cleanly. A warm standby process becomes the host at
    once; its guests' supervisors reconnect to it. Until it is up, the
    driver watches each guest: one that dies (its supervisor killed it at
    the deadline, since no coordinator resumed in time) stops then.
    Otherwise every guest is re-attached (``Domain.attach``) and writes
    again with the tokens it had; a guest that cannot be re-attached is
    killed, as libvirt kills a guest it cannot reconnect to. While it
    writes nothing (its coordinator is down) a guest still counts as
    running.
``coordinator_killed``
    The coordinator killed for good: SIGKILL of the host process of the
    host with the most running guests, and no coordinator comes back for
    them. Each running guest must be dead (seen through a pidfd) no later
    than the last lease deadline that coordinator pushed (the host process
    reports each one) plus ``fence_timeout``; the moment is recorded as its
    ``GuestStopped``, so the checker judges every takeover of its disks
    against it, and a later one is a finding (``violations`` counts
    findings too). The summary gives the latest death after its deadline.
    Once ``host_dead`` has passed since its last renewal, the other hosts
    take every disk (probes); only then does a new process boot in its
    place, as a new incarnation (a rebooted machine: every domain it still
    tracks is shut down), so that later faults can take other hosts down.
``supervisor_kill``
    SIGKILL of one running guest's supervisor (its pid from
    ``host.supervisors.guest(uuid)`` in the host process): the guest must
    die with it (``PR_SET_PDEATHSIG``) within ``SUPERVISOR_KILL_LIMIT``,
    else it is a finding; it stops (fenced) then, and its domain is shut
    down; it may be started again later.
``sigstop``
    SIGSTOP of a host process, SIGCONT after 0.1 to ``SIGSTOP_MAX`` seconds.
    The coordinator *and* the guests' writes freeze (the writers live in the
    process): that is what a frozen host is. The guests' ``sleep`` processes
    and their supervisors are not stopped; the ``sleep`` does no I/O of its
    own, and the supervisor kills it at the deadline. A stop longer than the
    time left on the lease makes the coordinator fence at once on waking.
    Stops are kept below ``host_dead - fence_timeout - renew_interval``
    (with margin): a host frozen past the moment others may take its disks,
    whose guests then write before it fences, is split brain that only
    storage-side fencing or a watchdog could prevent; the design does not
    claim otherwise (cluster.py's ``pause_host`` has the same bound).
``storage-stall``
    Something outside the host blocks its lockspace I/O, as a hung NFS
    server would: a helper process (a few lines of Python, no import of
    ours) takes the same OFD write locks the file backend takes, on the
    host's liveness lock file (``hosts/<id>.lock``) and on the lease lock
    files of some disks, holds them for ``STALL_MIN`` to ``STALL_MAX``
    seconds (up to five lease_timeouts: past host_dead and past
    io_timeout), and is then killed, which releases them (also at the end
    of the run, whatever happens, and it exits by itself soon after its
    time should the driver die). The host's renewals block, its lease
    expires and it must fence its guests; its releases and transfers of a
    held disk block too. Another host is blocked only when it writes the
    same disk's record, and only until the stall ends. Locks are taken in
    the backend's order (liveness, then leases sorted by key), so the
    helper cannot deadlock with a host. Lock-free reads (listing hosts and
    records, the liveness reads of an acquisition) are not blocked.
    Each stall draws (from the seed) whether it holds its guests' disks
    (otherwise other hosts may take them over during the stall once the
    host is dead to them), some other guests' disks, whether the host gets
    a burst of ``BURST`` starts at once, each blocked on a disk the stall
    holds, which fills its worker threads (the saturated pool a busy host
    has), and whether its coordinator crashes or the host dies at a random
    point inside the stall (``crash-in-stall``; the restart then meets the
    stall; for a coordinator crash the host takes no new operation from the
    start of the stall, so that the crash need not wait for operations the
    stall blocks). Past the middle of the stall the other hosts try to take
    every disk of its guests: refused while it may live, blocked while the
    stall holds the disk, granted once it is dead to them, by which time it
    must have fenced. One stall at a time; no other fault on the stalled host,
    nor for ``SETTLE`` after a stall or a freeze ends, so every fault
    starts from a host that renewed recently.
``restart``
    Bringing a killed host back (counted with the faults). A restarted
    process that dies or stalls before it is back counts as ``restart
    failed``: its guests are killed and it is restarted again later.

The injector's first cycle of faults is fixed (sigstop, storage-stall,
supervisor_kill, coordinator_crash, coordinator_killed, kill9), so that a short
run sees every kind; each later cycle is shuffled and holds every kind once
and storage-stall twice. A kind that no host allows now waits for the next try.

At the end the driver stops the workload, heals every SIGSTOP and stall,
makes sure one host is down (a last ``kill9`` if needed, so rule 5 always has a gone
host to judge), waits ``host_dead + SLACK``, probes every disk from the
live hosts, waits again and probes again (rule 5: the second probes must
not be refused because of the dead host), snapshots the lease records
(``LeaseHeld``), kills every process, merges the histories and checks them.

The seed fixes the guests' disks and the sequence of random choices each
task draws (a stall draws the same numbers whatever the state); the
interleaving (and so the run) still depends on timing.

Run it from the command line with ``python -m actorlock._verify.chaos
--seconds 60 --seed 7 [--workdir DIR]`` (or through :func:`main_chaos`);
with ``--workdir`` everything stays for a look: ``history-*.jsonl`` (read
them with :func:`read_history_file`), ``host-*.log`` and the lockspace.
:func:`chaos_hosts` gives a test the same host processes to script one
exact story with.

Split by job: :mod:`.settings` (timings, sizes, fault bounds), :mod:`.codec`
(history records as JSON lines), :mod:`.agent` (the host process),
:mod:`.processes` (the driver's handles on host processes, the stall
helper), :mod:`.core` (the run's shared bookkeeping), :mod:`.workload` (the
guest operations), :mod:`.faults` (the faults and the recovery from them),
:mod:`.driver` (the whole driver and the end of a run), :mod:`.report`
(:class:`ChaosReport`), :mod:`.scripted` (:func:`chaos_hosts`) and :mod:`.run`
(:func:`run_chaos` and the command line).
"""

from __future__ import annotations

from .codec import event_from_json, event_to_json, read_history_file
from .report import ChaosReport
from .run import main_chaos, run_chaos
from .scripted import ChaosHosts, chaos_hosts
from .settings import PEER_TIMING, TIMING

__all__ = [
    "PEER_TIMING",
    "TIMING",
    "ChaosHosts",
    "ChaosReport",
    "chaos_hosts",
    "event_from_json",
    "event_to_json",
    "main_chaos",
    "read_history_file",
    "run_chaos",
]
