"""The chaos workload: workers starting, stopping, migrating and probing guests on the host processes."""

from __future__ import annotations

import random
from collections.abc import (
    Awaitable,
    Callable,
)
from contextlib import suppress
from typing import TypeVar

import anyio
import anyio.abc

from .core import DriverCore, PlacedGuest, Placement, Slot
from .processes import HostGone, HostOpError, HostProcess
from .settings import (
    OP_GAP,
)

T = TypeVar("T")


class Workload(DriverCore):
    """The guest operations the workers pick from, each recorded as it happens."""

    async def worker(self, index: int) -> None:
        rng = random.Random(f"{self.seed}:worker:{index}")
        ops: list[tuple[float, Callable[[random.Random], Awaitable[None]]]] = [
            (0.38, self._op_start),
            (0.14, self._op_stop),
            (0.32, self._op_migrate),
            (0.08, self._op_probe),
            (0.04, self._op_tidy),
            (0.04, self._op_snapshot),
        ]
        weights = [w for w, _ in ops]
        while not self.stopping:
            (_, op), *_ = rng.choices(ops, weights)
            try:
                await op(rng)
            except HostGone:
                self.ops["lost to a crash"] += 1
            except TimeoutError:
                self.ops["timed out"] += 1
            except HostOpError as exc:
                self.ops[f"{exc.op} failed: {exc.kind}"] += 1
            # Paced so that guests run for a while (and meet faults) between operations.
            await anyio.sleep(rng.uniform(*OP_GAP))

    async def _op_start(self, rng: random.Random) -> None:
        up = self._up()
        if not up:
            return
        await self.start_guest(rng.choice(up), rng.choice(sorted(self.catalog)))

    async def start_guest(self, slot: Slot, uuid: str) -> bool:
        """Start ``uuid`` (its catalog disks) on ``slot``; True if it runs there now."""
        key = (slot.name, uuid)
        if key in self.guests:
            return False
        async with self._locked(key):
            proc = self._live_proc(slot.name)
            if proc is None or key in self.guests:
                return False
            self.ops["start"] += 1
            try:
                result = await proc.call("start", uuid=uuid, disks=self._disks_of(uuid))
            except HostOpError as exc:
                self.ops[
                    "start refused" if exc.is_a("ResourceBusyError") else f"start failed: {exc.kind}"
                ] += 1
                return False
            except TimeoutError:
                # It may still finish there: the domain (and its guest) is cleaned up later.
                if slot.proc is proc:
                    self.guests[key] = PlacedGuest(slot.name, uuid, None, None, Placement.CLEANUP)
                raise
            guest = PlacedGuest(slot.name, uuid, result["pid"], result["start"], Placement.CLEANUP)
            if slot.proc is not proc:
                await self._kill_guest(guest)
                return False
            proc.fenced.discard(uuid)
            guest.state = Placement.RUNNING if result["running"] else Placement.CLEANUP
            self.guests[key] = guest
            return guest.state is Placement.RUNNING

    async def _op_stop(self, rng: random.Random) -> None:
        if not self.guests:
            return
        # Fenced guests first: an operator destroys a guest that lost its leases.
        fenced = [k for k, g in self.guests.items() if (p := self._live_proc(g.host)) and g.uuid in p.fenced]
        key = rng.choice(fenced or sorted(self.guests))
        async with self._locked(key):
            await self._stop_guest(key, "stop")

    async def _stop_guest(self, key: tuple[str, str], why: str) -> None:
        """Stop the guest ``key`` (lock held): the host stops it, kills its ``sleep`` and shuts it down.

        ``why`` counts it: ``stop`` (the workload's) or ``cleanup`` (after a migration).
        """
        guest = self.guests.get(key)
        proc = self._live_proc(key[0])
        if guest is None or proc is None:
            return
        self.ops[why] += 1
        try:
            result = await proc.call("stop", uuid=guest.uuid)
        except HostOpError as exc:
            self.ops[f"{why} failed: {exc.kind}"] += 1
            return
        if self.slots[key[0]].proc is not proc:
            return  # crashed meanwhile: the crash took care of its guests
        proc.fenced.discard(guest.uuid)
        guest.pid = None  # the host killed it
        if result["released"]:
            del self.guests[key]
        else:
            guest.state = Placement.CLEANUP

    async def _op_migrate(self, rng: random.Random) -> None:
        candidates = [
            g
            for g in self.guests.values()
            if g.state is Placement.RUNNING
            and (p := self._live_proc(g.host)) is not None
            and g.uuid not in p.fenced
        ]
        if not candidates:
            return
        guest = rng.choice(candidates)
        targets = [s for s in self._up() if s.name != guest.host and (s.name, guest.uuid) not in self.guests]
        if not targets:
            return
        dst = rng.choice(targets)
        src_key, dst_key = (guest.host, guest.uuid), (dst.name, guest.uuid)
        async with self._locked(src_key, dst_key):
            sproc, dproc = self._live_proc(guest.host), self._live_proc(dst.name)
            if (
                sproc is None
                or dproc is None
                or self.guests.get(src_key) is not guest
                or guest.state is not Placement.RUNNING
                or dst_key in self.guests
            ):
                return
            await self._migrate(guest, sproc, dst.name, dproc, commit=rng.random() < 0.85)

    async def _migrate(
        self, guest: PlacedGuest, sproc: HostProcess, dst: str, dproc: HostProcess, *, commit: bool
    ) -> None:
        uuid, src = guest.uuid, guest.host
        self.ops["migrate"] += 1
        try:
            await sproc.call("prepare", uuid=uuid, dest=dproc.endpoint)
        except HostOpError as exc:
            self.ops[f"migrate refused: {exc.kind}"] += 1
            return
        incoming = PlacedGuest(dst, uuid, None, None, Placement.CLEANUP)
        try:
            result = await dproc.call("incoming", uuid=uuid, disks=self._disks_of(uuid))
            incoming.pid, incoming.start = result["pid"], result["start"]
        except (HostOpError, HostGone, TimeoutError):
            commit = False  # the destination cannot take it: cancel on both sides
        op = "commit" if commit else "cancel"
        results = await _both(
            sproc.call(op, uuid=uuid, role="source"), dproc.call(op, uuid=uuid, role="destination")
        )
        source, dest = results
        # The destination: keep its guest if it runs there, else drop its side.
        dst_key = (dst, uuid)
        self.guests[dst_key] = incoming
        if isinstance(dest, dict) and dest["running"] and self.slots[dst].proc is dproc:
            incoming.state = Placement.RUNNING
        elif self.slots[dst].proc is dproc:
            with suppress(HostGone, TimeoutError):
                await self._stop_guest(dst_key, "cleanup")
        else:
            self.guests.pop(dst_key, None)
            await self._kill_guest(incoming)
        outcome = ""
        for side in (source, dest):
            if isinstance(side, dict) and side["outcome"] in ("committed", "cancelled"):
                outcome = side["outcome"]
                break
        if outcome == "committed":
            self.committed += 1
        elif outcome == "cancelled":
            self.cancelled += 1
        # The source: migrated away (its QEMU exits), back to running, or in doubt.
        src_key = (src, uuid)
        if self.slots[src].proc is not sproc or self.guests.get(src_key) is not guest:
            return
        if not isinstance(source, dict):
            guest.state = Placement.PAUSED if commit else Placement.RUNNING
            return
        if source["running"]:
            guest.state = Placement.RUNNING
        elif source["outcome"] == "unknown":
            guest.state = Placement.PAUSED
        else:
            guest.state = Placement.CLEANUP
            with suppress(HostGone, TimeoutError):
                await self._stop_guest(src_key, "cleanup")

    async def _op_probe(self, rng: random.Random) -> None:
        up = self._up()
        if up:
            await self._probe(rng.choice(up), rng.choice(self.disks))

    async def _probe(self, slot: Slot, path: str) -> bool | None:
        """Try to take ``path`` exclusively from ``slot``: True taken (and written once), False refused."""
        uuid = f"probe-{next(self._probes)}"
        try:
            async with self._locked((slot.name, uuid)):
                proc = self._live_proc(slot.name)
                if proc is None:
                    return None
                self.ops["probe"] += 1
                try:
                    await proc.call("start", uuid=uuid, disks=[[path, False]], probe=True)
                except HostOpError as exc:
                    if exc.is_a("ResourceBusyError"):
                        self.ops["probe refused"] += 1
                        return False
                    return None
                return True
        finally:
            # A probe's uuid is never used again: keep the lock table small.
            lock = self._locks.get((slot.name, uuid))
            if lock is not None and not lock.locked() and not lock.statistics().tasks_waiting:
                del self._locks[(slot.name, uuid)]

    async def _op_tidy(self, rng: random.Random) -> None:
        """Shut down domains a host tracks that the driver has no guest for (leftovers of failed ops)."""
        up = self._up()
        if not up:
            return
        slot = rng.choice(up)
        proc = slot.proc
        assert proc is not None
        self.ops["tidy"] += 1
        known = (await proc.call("known"))["domains"]
        for uuid in known:
            await self._tidy_one(slot, proc, uuid)

    async def _tidy_one(self, slot: Slot, proc: HostProcess, uuid: str) -> None:
        key = (slot.name, uuid)
        if key in self.guests:
            return
        async with self._locked(key):
            if key in self.guests or slot.proc is not proc:
                return
            with suppress(HostOpError):
                await proc.call("stop", uuid=uuid)

    async def _op_snapshot(self, rng: random.Random) -> None:
        up = self._up()
        if up:
            proc = rng.choice(up).proc
            assert proc is not None
            self.ops["snapshot"] += 1
            await proc.call("snapshot")


async def _both(first: Awaitable[T], second: Awaitable[T]) -> tuple[T | BaseException, T | BaseException]:
    """Await two calls at once; each result is its value or the exception it raised."""
    results: list[T | BaseException] = [Exception("not run"), Exception("not run")]

    async def run(index: int, call: Awaitable[T]) -> None:
        try:
            results[index] = await call
        except (HostGone, HostOpError, TimeoutError) as exc:
            results[index] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, 0, first)
        tg.start_soon(run, 1, second)
    return results[0], results[1]
