"""The driver of one chaos run: the workload and the faults, then the end game that settles and probes."""

from __future__ import annotations

from contextlib import suppress

import anyio
import anyio.abc

from ...testing.history import (
    FaultsHealed,
)
from .core import SlotState
from .faults import FaultInjector
from .processes import HostGone, HostOpError
from .settings import (
    SLACK,
    TIMING,
)


class Driver(FaultInjector):
    """The workload, the faults and the bookkeeping of one run, and how it ends."""

    async def close(self) -> None:
        """Kill and reap every process this run started (also the ones still being spawned)."""
        with anyio.CancelScope(shield=True):
            self._closing = True
            if self._spawning:
                await self._spawned.wait()
            for helper in self._helpers:
                await self._end_helper(helper)
            # Each host process with its reaper, which kills its supervisors and their guests.
            for proc in self._procs:
                await proc.aclose()

    def stop(self) -> None:
        self.stopping = True
        self._stop.set()

    async def finish(self) -> None:
        """Heal, leave one host down, probe every disk twice host_dead apart, snapshot."""
        host_dead = TIMING["host_dead"]
        self.record(FaultsHealed(self.now()))  # every SIGSTOP and storage stall has ended by now
        if not any(s.state is not SlotState.UP for s in self.slots.values()):
            up = self._up()
            victim = max(up, key=lambda s: sum(1 for g in self.guests.values() if g.host == s.name))
            self.out(f"final crash: {victim.name}")
            await self._kill9(victim)
        down = [s.name for s in self.slots.values() if s.state is not SlotState.UP]
        self.out(f"down at the end: {', '.join(down)}; probing every disk twice, host_dead apart")
        for _ in range(2):
            await anyio.sleep(host_dead + SLACK)
            up = self._up()
            if not up:
                break
            for index, path in enumerate(self.disks):
                slot = up[index % len(up)]
                with suppress(HostGone, TimeoutError):
                    taken = await self._probe(slot, path)
                    self.out(f"  probe {path} from {slot.name}: {'taken' if taken else 'refused'}")
        for slot in self._up():
            assert slot.proc is not None
            with suppress(HostGone, TimeoutError, HostOpError):
                await slot.proc.call("snapshot")
