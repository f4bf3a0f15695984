"""What a scenario draws from: operation and fault weights, slow operations, backend faults, and the knobs."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import attrs

# How often each guest operation is picked among those that apply.
# "migrate" is the extension point for Cluster.migrate (weight 0 until it exists).
OPERATION_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        "start": 4.0,
        "stop": 2.0,
        "hotplug": 2.0,
        "unplug": 1.5,
        "pause": 1.5,
        "resume": 2.0,
        "migrate": 0.0,
    }
)

FAULT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        "crash_host": 2.0,
        "crash_coordinator": 2.0,
        # The coordinator dies and never comes back: its guests' supervisors stop them (issue 9).
        "coordinator_down": 1.5,
        "pause_host": 2.0,
        "backend": 3.0,
        # Storage faults with a duration (issue 7); Cluster.fault_counts spells them with dashes.
        "storage_stall": 2.5,
        "slow_io": 3.0,
        "pool_saturated": 1.5,
        "slow_state": 2.0,
        "read_delay": 3.0,
    }
)

# The faults that last a while on a host's storage path and may overlap each other.
STORAGE_KINDS = ("storage_stall", "slow_io", "pool_saturated", "slow_state", "read_delay")

# Backend operations -> weight, for the "slow_io" fault: one operation, or a
# coordinator's start-up path (each of its calls slowed). A slow join only matters
# to a coordinator that restarts meanwhile, so one is always restarted inside it.
SLOW_OPERATIONS: Mapping[tuple[str, ...], float] = MappingProxyType(
    {
        ("renew",): 3.0,
        ("join",): 1.5,
        ("hosts", "join", "renew"): 2.0,
        ("acquire",): 2.0,
        ("hosts",): 1.0,
        ("records",): 1.0,
        ("release",): 1.0,
    }
)

# (fail or stall, backend operations) -> weight, for the "backend" fault. Renewal
# faults weigh most: they are the ones that make a host lose its leases.
BACKEND_FAULTS: Mapping[tuple[str, tuple[str, ...]], float] = MappingProxyType(
    {
        ("fail", ("renew",)): 3.0,
        ("stall", ("renew",)): 2.0,
        ("fail", ("acquire",)): 1.0,
        ("stall", ("acquire",)): 1.0,
        ("fail", ("release",)): 1.0,
        ("stall", ("release",)): 1.0,
        ("fail", ("renew", "acquire", "release")): 2.0,
        # An acquisition held up until after the lease expired must be rolled back.
        ("stall", ("renew", "acquire")): 1.0,
    }
)


@attrs.frozen
class ScenarioSettings:
    """The knobs of the scenario generator (times in simulated seconds).

    Attributes:
        guests_per_host: guest uuids each host cycles through.
        extra_disks: disks beyond one per host in the shared pool.
        ops_per_host: inclusive range of guest operations per host worker.
        op_gap: mean pause between one host's operations.
        faults: inclusive range of faults the chaos worker tries to inject.
        fault_gap: mean pause between two faults.
        shared_ratio: chance that a disk is attached shared.
        rejoin_ratio: chance that a crashed host comes back before the end.
        fence_delay: how long, at most, a fenced guest takes to stop, as a
            fraction of ``fence_timeout`` (it writes until it does).
        budget: a scenario that runs longer is reported as an anomaly.
        storage_stall: longest storage stall, in lease_timeouts.
        storage_fault: longest slow-io, pool-saturated, slow-state and
            read-delay fault, in lease_timeouts.
        slow_state: longest extra time of one state-store write, in io_timeouts.
        read_delay: longest delay between a read and its judgement, in io_timeouts.
        restart_inside: chance that the coordinator crashes and restarts
            inside a storage fault (always inside a slow join).
        stall_inside: chance that a saturated pool comes with a storage stall
            of the same host (its lease I/O is what filled the pool), and that
            a slow state store meets one.
        supervised: guests run under supervisors, on storage that checks
            fencing tokens (issue 9), with the faults only they make safe
            (coordinators down for good, pauses past host_dead). False is
            the model before them, seed for seed: the sensitivity harness
            uses it, since a supervisor would stop the guests that a
            coordinator bug leaves running, and so hide the bug it measures.
    """

    guests_per_host: int = 3
    extra_disks: int = 1
    ops_per_host: tuple[int, int] = (8, 16)
    op_gap: float = 0.12
    faults: tuple[int, int] = (2, 5)
    fault_gap: float = 0.3
    shared_ratio: float = 0.25
    rejoin_ratio: float = 0.75
    fence_delay: float = 0.9
    budget: float = 120.0
    storage_stall: float = 4.0
    storage_fault: float = 4.0
    slow_state: float = 1.5
    read_delay: float = 1.0
    restart_inside: float = 0.35
    stall_inside: float = 0.6
    supervised: bool = True
