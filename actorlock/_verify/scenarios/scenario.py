"""One random scenario on a simulated cluster, judged by the checker: :func:`run_scenario`."""

from __future__ import annotations

import functools
import hashlib
import random
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import attrs

from ...errors import ActorlockError, InvalidParameterError
from ...model import Resource, disk
from ...testing.cluster import (
    SIM_TIMING,
    Cluster,
    GuestState,
    HostGoneError,
    HostState,
    SimGuest,
    open_cluster,
)
from ...testing.faults import Shape
from ...testing.history import History, HistoryEvent, HostEvent, HostJoined
from .results import ScenarioAnomaly, ScenarioResult, ScenarioViolation
from .settings import (
    BACKEND_FAULTS,
    FAULT_WEIGHTS,
    OPERATION_WEIGHTS,
    SLOW_OPERATIONS,
    STORAGE_KINDS,
    ScenarioSettings,
)


class _Scenario:
    def __init__(self, cluster: Cluster, seed: int, settings: ScenarioSettings) -> None:
        self.cluster = cluster
        self.seed = seed
        self.settings = settings
        self.timing = cluster.timing
        count = len(cluster.hosts) + settings.extra_disks
        self.disks = [f"/sim/disk{i}.img" for i in range(count)]
        self.anomalies: list[str] = []
        self.own: dict[str, set[str]] = {}  # host -> the guest uuids its worker drives
        self.hunts = 0
        self.down_for_good: set[str] = set()  # hosts whose coordinator never comes back

    # -- guest operations ------------------------------------------------------

    async def host_worker(self, name: str) -> None:
        rng = random.Random(f"{self.seed}:ops:{name}")
        uuids = [f"{name}-vm{i}" for i in range(self.settings.guests_per_host)]
        for uuid in uuids:
            self.cluster.guest(name, uuid)
        self.own[name] = set(uuids)
        for _ in range(rng.randint(*self.settings.ops_per_host)):
            await anyio.sleep(rng.expovariate(1 / self.settings.op_gap))
            if self.cluster.host(name).state is not HostState.UP:
                continue  # libvirt's calls would wait; this one is simply not made
            choice = self._pick(rng, name)
            if choice is not None:
                await self._perform(rng, *choice)

    def _pick(self, rng: random.Random, host: str) -> tuple[str, SimGuest] | None:
        guests = [g for g in self.cluster.guests(host) if g.uuid in self.own[host]]
        eligible: dict[str, list[SimGuest]] = {
            "start": [g for g in guests if g.state is GuestState.STOPPED],
            "stop": [
                g for g in guests if g.state in (GuestState.RUNNING, GuestState.PAUSED, GuestState.FENCED)
            ],
            "hotplug": [g for g in guests if g.running and len(g.resources) < len(self.disks)],
            "unplug": [g for g in guests if g.running and g.leases],
            "pause": [g for g in guests if g.running],
            "resume": [g for g in guests if g.state is GuestState.PAUSED and g.saved is not None],
        }
        ops = [op for op, gs in eligible.items() if gs and OPERATION_WEIGHTS[op] > 0]
        if not ops:
            return None
        op = rng.choices(ops, [OPERATION_WEIGHTS[o] for o in ops])[0]
        return op, rng.choice(eligible[op])

    def _resource(self, rng: random.Random, path: str) -> Resource:
        return disk(path, shared=rng.random() < self.settings.shared_ratio)

    async def _perform(self, rng: random.Random, op: str, guest: SimGuest) -> None:
        cluster, host, uuid = self.cluster, guest.host, guest.uuid
        bound = 3 * self.timing.io_timeout + self.timing.host_dead
        try:
            with anyio.fail_after(bound):
                if op == "start":
                    paths = rng.sample(self.disks, 2 if rng.random() < 0.35 else 1)
                    await cluster.start_guest(host, uuid, [self._resource(rng, p) for p in paths])
                elif op == "stop":
                    await cluster.stop_guest(host, uuid)
                elif op == "hotplug":
                    free = [p for p in self.disks if disk(p).key not in guest.resources]
                    await cluster.hotplug(host, uuid, self._resource(rng, rng.choice(free)))
                elif op == "unplug":
                    await cluster.unplug(host, uuid, rng.choice(sorted(guest.leases)))
                elif op == "pause":
                    await cluster.pause_guest(host, uuid)
                elif op == "resume":
                    await cluster.resume_guest(host, uuid)
        except (ActorlockError, HostGoneError):
            pass  # refused, failed or interrupted by a fault: all part of the game
        except TimeoutError:
            self.anomalies.append(f"{op} of {host}/{uuid} did not finish within {bound}s")

    # -- faults ---------------------------------------------------------------------

    async def chaos_worker(self) -> None:
        rng = random.Random(f"{self.seed}:faults")
        kinds = [
            k
            for k in FAULT_WEIGHTS
            if (k != "read_delay" or self.cluster.backend_kind == "memory")
            and (k != "coordinator_down" or self.settings.supervised)
        ]
        weights = [FAULT_WEIGHTS[k] for k in kinds]
        async with anyio.create_task_group() as tg:
            for _ in range(rng.randint(*self.settings.faults)):
                await anyio.sleep(rng.expovariate(1 / self.settings.fault_gap))
                kind = rng.choices(kinds, weights)[0]
                candidates = [h for h in self.cluster.hosts if self._may_fault(h, kind)]
                if candidates:
                    # Faults hit hosts that run guests more often: that is where they matter.
                    # Storage faults pile up on a host that has some already: the
                    # dangerous cases combine them (a slow state save while renewals stall).
                    busy = [
                        (1 + 3 * sum(g.running for g in self.cluster.guests(h)))
                        * (3 if kind in STORAGE_KINDS and self.cluster.storage_faults(h) else 1)
                        for h in candidates
                    ]
                    await self._inject(rng, tg, kind, rng.choices(candidates, busy)[0])

    def _may_fault(self, name: str, kind: str) -> bool:
        cluster = self.cluster
        if cluster.host(name).state is not HostState.UP:
            return False
        if kind in STORAGE_KINDS:
            # Storage faults overlap each other and backend faults, never the same kind twice.
            label = kind.replace("_", "-")
            if kind == "pool_saturated" and (
                "pool-saturated" in cluster.storage_faults()
                # A restarting coordinator is a new process with a pool of its own.
                or any(
                    h.state in (HostState.COORDINATOR_DOWN, HostState.JOINING) for h in cluster.hosts.values()
                )
            ):
                return False
            return label not in cluster.storage_faults(name)
        if any(h == name for h, _ in cluster.active_faults()):
            return False
        if kind in ("crash_host", "coordinator_down"):
            # Keep two hosts that can take over and probe: a host whose coordinator is
            # down for good is as gone to them as a crashed one.
            alive = [
                h
                for h in cluster.hosts.values()
                if h.state is not HostState.CRASHED and h.name not in self.down_for_good
            ]
            return len(alive) > 2
        return True

    def _victims(self, name: str) -> list[str]:
        """What the host's guests use now: an HA manager would restart them elsewhere."""
        cluster = self.cluster
        return sorted({g.resources[k].name for g in cluster.guests(name) if g.running for k in g.leases})

    async def _inject(self, rng: random.Random, tg: Any, kind: str, name: str) -> None:
        cluster, timing = self.cluster, self.timing
        victims = self._victims(name)
        duration = 0.0
        if kind in STORAGE_KINDS:
            await self._inject_storage(rng, tg, kind, name, victims)
            return
        if kind == "crash_host":
            await cluster.crash_host(name)
            if rng.random() < self.settings.rejoin_ratio:
                duration = rng.uniform(0.05, 1.5)
                tg.start_soon(self._later, duration, self._rejoin, name)
        elif kind == "crash_coordinator":
            try:
                with anyio.fail_after(timing.io_timeout):
                    left = (await cluster.api(name).status()).seconds_to_expiry
            except (ActorlockError, HostGoneError, TimeoutError):
                return
            # Restart while the lease is still valid, as the service manager must
            # (a later restart is the documented gap, not generated).
            await cluster.crash_coordinator(name)
            duration = rng.uniform(0.0, 0.9) * left
            tg.start_soon(self._later, duration, self._restart, name)
        elif kind == "coordinator_down":
            # Never restarted: only the guests' supervisors stop them, at the last
            # deadline it pushed, before another host may take their disks.
            self.down_for_good.add(name)
            await cluster.crash_coordinator(name, for_good=True)
            duration = timing.host_dead + timing.renew_interval
        elif kind == "pause_host":
            await cluster.pause_host(name)
            # On waking, the guests run at once and the failure action takes up
            # to fence_timeout; it must be done before host_dead has passed since
            # the last renewal (less than one renew_interval before the pause).
            longest = timing.host_dead - timing.fence_timeout - timing.renew_interval
            if self.cluster.storage.fences:
                # Storage refuses the woken guests' writes with stale tokens
                # (issue 9): the pause may outlast host_dead and the takeovers.
                longest = 2 * timing.host_dead
            duration = rng.uniform(0.1, 1.0) * longest
            tg.start_soon(self._later, duration, cluster.resume_host, name)
        else:
            specs = list(BACKEND_FAULTS)
            how, ops = rng.choices(specs, [BACKEND_FAULTS[spec] for spec in specs])[0]
            if how == "fail":
                await cluster.fail_backend(name, *ops)
            else:
                await cluster.stall_backend(name, *ops)
            # Each operation heals on its own: storage may let acquisitions
            # through again while renewals still fail.
            for op in ops:
                heal_at = rng.uniform(0.05, 1.0) * 2 * timing.host_dead
                duration = max(duration, heal_at)
                tg.start_soon(self._later, heal_at, cluster.heal_backend, name, op)
        self._start_hunts(tg, name, victims, cluster.now() + duration)

    async def _inject_storage(
        self, rng: random.Random, tg: Any, kind: str, name: str, victims: list[str]
    ) -> None:
        """One storage fault with a duration, maybe a coordinator restart inside it, and its hunters."""
        cluster, timing, knobs = self.cluster, self.timing, self.settings
        restart = rng.random() < knobs.restart_inside
        if kind == "storage_stall":
            duration = rng.uniform(0.2, knobs.storage_stall) * timing.lease_timeout
            await cluster.stall_storage(name, duration)
        else:
            duration = rng.uniform(0.5, knobs.storage_fault) * timing.lease_timeout
            # Degraded storage is consistently slow: each fault has its own floor.
            floor = rng.uniform(0.0, 1.0)
            shape: Shape = rng.choice(("before", "after", "either"))
            if kind == "slow_io":
                choices = list(SLOW_OPERATIONS)
                ops = rng.choices(choices, [SLOW_OPERATIONS[o] for o in choices])[0]
                restart = restart or "join" in ops
                top = timing.io_timeout
                await cluster.slow_io(name, duration, *ops, longest=top, least=floor * top, shape=shape)
            elif kind == "pool_saturated":
                restart = False  # a crash ends it at once: the pool is the process's
                duration = rng.uniform(1.0, knobs.storage_fault) * timing.lease_timeout
                await cluster.saturate_pool(name, duration)
            elif kind == "slow_state":
                longest = knobs.slow_state * timing.io_timeout
                await cluster.slow_state(name, duration, longest=longest, least=floor * longest, shape=shape)
            else:
                # A stall between read and judgement hits some of the reads (a quick
                # read may be judged just before a slow one of the same record).
                longest = knobs.read_delay * timing.io_timeout
                least = (0.5 + floor / 2) * longest
                share = rng.uniform(0.3, 0.7)
                await cluster.delay_reads(name, duration, longest=longest, least=least, share=share)
        label = kind.replace("_", "-")
        ends = cluster.now() + duration
        at, back = rng.uniform(0.0, 1.0) * duration, rng.uniform(0.0, 0.9)
        if restart:
            tg.start_soon(self._restart_inside, at, back, name, label, ends)
        # Storage trouble comes together (issue 7): a pool fills up because the
        # host's lease I/O is stuck (path 1), and a slow state_dir save meets
        # renewals that stall or time out (path 3).
        if rng.random() < knobs.stall_inside:
            lease = timing.lease_timeout
            at = rng.uniform(0.0, 1.0) * duration  # not where the restart falls
            if kind == "pool_saturated":
                stall = functools.partial(cluster.stall_storage, name, rng.uniform(1.0, 2.0) * duration)
                tg.start_soon(self._inside, 0.0, name, label, "storage-stall", stall)
            elif kind == "slow_state" and rng.random() < 0.5:
                stall = functools.partial(
                    cluster.stall_storage, name, rng.uniform(0.2, knobs.storage_stall) * lease
                )
                tg.start_soon(self._inside, at, name, label, "storage-stall", stall)
            elif kind == "slow_state":
                # Every renewal waits past its lease before reaching storage: it is
                # cancelled, while acquisitions still go through.
                renewals = functools.partial(
                    cluster.slow_io,
                    name,
                    rng.uniform(2.0, knobs.storage_stall) * lease,
                    "renew",
                    longest=timing.io_timeout,
                    least=lease,
                    shape="before",
                )
                tg.start_soon(self._inside, at, name, label, "slow-io", renewals)
            if kind == "slow_state":
                # The host is asked to start a guest just before: its acquisition
                # completes, and its state save is still running when the lease goes.
                before = max(0.0, at - rng.uniform(0.0, 2.0) * timing.renew_interval)
                until = ends + timing.host_dead + 4 * timing.renew_interval
                tg.start_soon(self._start_during, tg, before, name, rng, ends, until)
        until = ends + timing.host_dead + 4 * timing.renew_interval
        hunted = set(victims)
        self._start_hunts(tg, name, victims, until)
        tg.start_soon(self._watch, tg, name, hunted, until)
        if kind == "read_delay":
            # The delayed host judges others' liveness: let it try, again and again,
            # to take a disk a healthy host's guest uses (it must never get it). One
            # such grabber, so that a quick read and a slow one of the same record
            # follow each other with no other judgement of it in between.
            held = [
                (holder, path) for holder in cluster.hosts if holder != name for path in self._victims(holder)
            ]
            if held:
                holder, path = rng.choice(held)
                self._start_hunts(tg, holder, [path], ends, hunter=name, pace=(0.0, 0.5))

    def _start_hunts(
        self,
        tg: Any,
        name: str,
        paths: list[str],
        until: float,
        *,
        hunter: str | None = None,
        pace: tuple[float, float] = (1.0, 3.0),
    ) -> None:
        for path in paths:
            tg.start_soon(self._hunt, self.hunts, name, path, until, hunter, pace)
            self.hunts += 1

    async def _inside(
        self, delay: float, name: str, label: str, kind: str, inject: Callable[[], Awaitable[None]]
    ) -> None:
        """Inject a ``kind`` storage fault ``delay`` into the host's ``label`` fault (if still on)."""
        cluster = self.cluster
        await anyio.sleep(delay)
        faults = cluster.storage_faults(name)
        if cluster.host(name).state is HostState.UP and label in faults and kind not in faults:
            await inject()

    async def _watch(self, tg: Any, name: str, hunted: set[str], until: float) -> None:
        """Until the hunt is over, hunt the disks the host's guests take meanwhile too."""
        cluster = self.cluster
        while cluster.now() < until - self.timing.host_dead:
            await anyio.sleep(self.timing.renew_interval)
            fresh = [path for path in self._victims(name) if path not in hunted]
            hunted.update(fresh)
            self._start_hunts(tg, name, fresh, until)

    async def _start_during(
        self, tg: Any, delay: float, name: str, rng: random.Random, ends: float, until: float
    ) -> None:
        """Start a guest on a free disk from ``name`` after ``delay``; stop it once the fault is over.

        Other hosts contend for the disk from the moment the start is asked
        for (and so watch ``name``'s record from then on).
        """
        cluster, timing = self.cluster, self.timing
        seed = rng.random()  # drawn now: the chaos worker's sequence does not depend on timing
        await anyio.sleep(delay)
        used = {
            g.resources[k].name
            for g in cluster.guests()
            if g.state is not GuestState.STOPPED
            for k in g.leases
        }
        free = [path for path in self.disks if path not in used]
        if cluster.host(name).state is not HostState.UP or not free:
            return
        path = free[int(seed * len(free))]
        uuid = f"burst-{name}-{self.hunts}"
        self.hunts += 1
        bound = 3 * timing.io_timeout + timing.host_dead
        tg.start_soon(self._hunt, self.hunts, name, path, until)
        self.hunts += 1
        try:
            with anyio.fail_after(bound):
                guest = await cluster.start_guest(name, uuid, [path])
        except (ActorlockError, HostGoneError):
            return
        except TimeoutError:
            self.anomalies.append(f"start of {name}/{uuid} did not finish within {bound}s")
            return
        await anyio.sleep(max(0.0, ends - cluster.now()) + timing.host_dead)
        if guest.running and cluster.host(name).state is HostState.UP:
            try:
                with anyio.fail_after(bound):
                    await cluster.stop_guest(name, uuid)
            except (ActorlockError, HostGoneError):
                pass
            except TimeoutError:
                self.anomalies.append(f"stop of {name}/{uuid} did not finish within {bound}s")

    async def _restart_inside(self, delay: float, back: float, name: str, label: str, ends: float) -> None:
        """Crash the coordinator ``delay`` into a storage fault and restart it, as crash_coordinator does.

        The restart comes ``back`` (a fraction) of the lease time left at the
        crash later: while the lease is still valid, as a service manager
        must restart it. When the domain actors are too busy in stuck storage
        calls to tell the time left, it comes within a renew_interval.
        """
        cluster, timing = self.cluster, self.timing
        await anyio.sleep(delay)
        host = cluster.host(name)
        if host.state is not HostState.UP or host.api is None or label not in cluster.storage_faults(name):
            return
        left = timing.renew_interval / 0.9
        with anyio.move_on_after(timing.renew_interval):
            left = (await host.api.status()).seconds_to_expiry
        if cluster.host(name).state is not HostState.UP:
            return  # crashed meanwhile (by another fault)
        await cluster.crash_coordinator(name)
        await anyio.sleep(back * left)
        # Start-up waits for the storage fault (and a join may wait host_dead for its
        # id); one that fails (storage errors) is restarted again, as a service manager would.
        bound = max(0.0, ends - cluster.now()) + timing.host_dead + 3 * timing.io_timeout
        failure: Exception | None = None
        with anyio.move_on_after(bound):
            while True:
                try:
                    await cluster.restart_coordinator(name)
                    return
                except (ActorlockError, HostGoneError) as exc:
                    failure = exc
                if cluster.host(name).state is not HostState.COORDINATOR_DOWN:
                    return  # crashed meanwhile: nothing left to restart
                await anyio.sleep(timing.renew_interval)
        self.anomalies.append(f"coordinator of {name} could not restart inside {label}: {failure!r}")

    async def _hunt(
        self,
        index: int,
        victim: str,
        path: str,
        until: float,
        hunter: str | None = None,
        pace: tuple[float, float] = (1.0, 3.0),
    ) -> None:
        """Restart a faulty host's guest (one disk of it) elsewhere, as HA would: retry until it starts.

        This is what puts takeovers right at the edge of ``host_dead``: a
        host that took over too early, or fenced too late, shows up as two
        guests on one disk. While the worker pool is saturated a guest start
        would wait for a thread (to read the guest's process start time), so
        the hunter probes instead: a probe that gets the disk is a takeover
        the checker judges like a start. The hunting host is a random other
        one that is up, or ``hunter``; it tries every ``pace`` (a range, in
        renew_intervals).
        """
        cluster, timing = self.cluster, self.timing
        rng = random.Random(f"{self.seed}:hunt:{index}")
        others = [h for h, host in cluster.hosts.items() if h != victim and host.state is HostState.UP]
        if hunter is not None:
            others = [hunter] if hunter in others else []
        if not others:
            return
        host = rng.choice(others)
        uuid = f"ha-{victim}-{index}"
        guest = cluster.guest(host, uuid)
        bound = 3 * timing.io_timeout + timing.host_dead
        while cluster.now() < until and not guest.running:
            await anyio.sleep(rng.uniform(*pace) * timing.renew_interval)
            if cluster.host(host).state is not HostState.UP or guest.state is not GuestState.STOPPED:
                continue
            try:
                with anyio.fail_after(bound):
                    if "pool-saturated" in cluster.storage_faults():
                        await cluster.probe(host, path)
                    else:
                        await cluster.start_guest(host, uuid, [path])
            except (ActorlockError, HostGoneError):
                continue
            except TimeoutError:
                self.anomalies.append(f"start of {host}/{uuid} did not finish within {bound}s")
                return
        if guest.running:
            await anyio.sleep(rng.uniform(0.05, 1.0))
            if guest.running and cluster.host(host).state is HostState.UP:
                try:
                    with anyio.fail_after(bound):
                        await cluster.stop_guest(host, uuid)
                except (ActorlockError, HostGoneError):
                    pass
                except TimeoutError:
                    self.anomalies.append(f"stop of {host}/{uuid} did not finish within {bound}s")

    async def _later(self, delay: float, action: Callable[..., Awaitable[Any]], *args: str) -> None:
        await anyio.sleep(delay)
        await action(*args)

    async def _rejoin(self, name: str) -> None:
        try:
            with anyio.fail_after(2 * self.timing.host_dead + self.timing.io_timeout):
                await self.cluster.rejoin_host(name)
        except (ActorlockError, HostGoneError, TimeoutError) as exc:
            self.anomalies.append(f"host {name} could not rejoin: {exc!r}")

    async def _restart(self, name: str) -> None:
        try:
            with anyio.fail_after(self.timing.host_dead + 2 * self.timing.io_timeout):
                api = await self.cluster.restart_coordinator(name)
        except (ActorlockError, HostGoneError, TimeoutError) as exc:
            self.anomalies.append(f"coordinator of {name} could not restart: {exc!r}")
            return
        if not api.resumed:
            self.anomalies.append(f"coordinator of {name} restarted in time but did not resume its leases")

    # -- the end ---------------------------------------------------------------------

    async def finish(self) -> None:
        cluster, timing = self.cluster, self.timing
        await cluster.heal_all()
        try:
            with anyio.fail_after(4 * timing.io_timeout):
                await cluster.tidy()
        except TimeoutError:
            self.anomalies.append("tidying up after the faults did not finish")
        gap = timing.host_dead + 2 * timing.renew_interval
        for probe_round in range(3):
            if probe_round:
                await anyio.sleep(gap)
            for name, host in cluster.hosts.items():
                for path in self.disks:
                    if host.state is not HostState.UP:
                        break
                    try:
                        with anyio.fail_after(2 * timing.io_timeout):
                            await cluster.probe(name, path)
                    except (ActorlockError, HostGoneError):
                        continue
                    except TimeoutError:
                        self.anomalies.append(f"a probe of {path} from {name} did not finish")
        observers = [n for n, h in cluster.hosts.items() if h.state is HostState.UP]
        if observers:
            await cluster.snapshot_leases(observers[0])


async def run_scenario(
    seed: int,
    *,
    hosts: int = 3,
    backend: str = "memory",
    settings: ScenarioSettings | None = None,
    timing: Mapping[str, float] | None = None,
    history: History | None = None,
) -> ScenarioResult:
    """Run one scenario, a function of ``seed``, and judge its history.

    Run it on trio with a :func:`~actorlock.testing.clock.virtual_clock`
    (fast; repeatable on the memory backend) or in real time.

    Args:
        seed: the scenario's seed.
        hosts: how many hosts (at least 3: faults always leave two up).
        backend: ``"memory"`` or ``"file"`` (a temporary lockspace directory).
        settings: the generator's knobs.
        timing: overrides of :data:`~actorlock.testing.cluster.SIM_TIMING`.
        history: record into this history (to study a scenario afterwards).
    """
    if hosts < 3:
        raise InvalidParameterError(f"scenarios need at least 3 hosts, got {hosts}")
    knobs = settings or ScenarioSettings()
    lockspace: str | None = None
    if backend == "file":
        lockspace = await anyio.to_thread.run_sync(tempfile.mkdtemp, None, "actorlock-sim-")
    anomalies: list[str] = []
    started = anyio.current_time()
    cluster: Cluster | None = None
    try:
        fence_timeout = {**SIM_TIMING, **(timing or {})}["fence_timeout"]
        async with open_cluster(
            hosts,
            backend=backend,
            lockspace_dir=lockspace,
            timing=timing,
            fence_delay=knobs.fence_delay * fence_timeout,
            seed=seed,
            history=history,
            supervised=knobs.supervised,
            fencing_storage=knobs.supervised,
        ) as cluster:
            scenario = _Scenario(cluster, seed, knobs)
            try:
                with anyio.fail_after(knobs.budget):
                    async with anyio.create_task_group() as tg:
                        for name in cluster.hosts:
                            tg.start_soon(scenario.host_worker, name)
                        tg.start_soon(scenario.chaos_worker)
                    await scenario.finish()
            except TimeoutError:
                anomalies.append(f"the scenario did not finish within {knobs.budget}s")
            anomalies.extend(scenario.anomalies)
    except Exception as exc:  # a scenario that crashed is reported, not fatal to the run
        anomalies.append(f"the scenario failed: {_describe(exc)}")
    finally:
        if lockspace is not None:
            await anyio.to_thread.run_sync(functools.partial(shutil.rmtree, lockspace, ignore_errors=True))
    # A scenario cut short is still judged: what happened before counts.
    found = cluster.check() if cluster is not None else []
    return ScenarioResult(
        seed=seed,
        hosts=hosts,
        backend=backend,
        operations=cluster.operations if cluster is not None else 0,
        faults=cluster.faults_injected if cluster is not None else 0,
        events=len(cluster.history) if cluster is not None else 0,
        sim_seconds=anyio.current_time() - started,
        violations=tuple(ScenarioViolation(seed, hosts, backend, v) for v in found),
        anomalies=tuple(ScenarioAnomaly(seed, hosts, backend, a) for a in anomalies),
        digest=_digest(cluster.history.events) if cluster is not None else "",
        fault_counts=tuple(cluster.fault_counts.items()) if cluster is not None else (),
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return repr(exc)


def _digest(events: Sequence[HistoryEvent]) -> str:
    h = hashlib.sha256()
    for event in events:
        if isinstance(event, HostJoined):
            event = attrs.evolve(event, incarnation="")  # random by design
        elif isinstance(event, HostEvent) and "incarnation" in event.fields:
            event = attrs.evolve(event, fields={**event.fields, "incarnation": ""})
        h.update(repr(event).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
