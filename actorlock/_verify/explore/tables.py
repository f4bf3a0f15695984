"""The explorer's tables: interned machines, messages, timers and memoized machine steps.

The search (:mod:`.search`) extends them; the step, the rules and the report
read them, so they depend on this module and not on the search.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Iterable

from ...errors import ActorlockError
from ...protocol import Effect, Message, Timer
from ..migration_world import Machine, Records
from .world import (
    DEADLINE,
    TIMING,
    Answer,
    DriverTimer,
    Exchange,
    Interner,
    Model,
    Packet,
    PendingCall,
    Problem,
    World,
    clone_machine,
    machine_key,
)

__all__ = ["ExplorerTables", "MachineTable"]


class ExplorerTables:
    """Everything the explorer interns and memoizes: what the step, the rules and the report read.

    Args:
        model: what to explore.
    """

    def __init__(self, model: Model | None = None) -> None:
        self.model = model or Model()
        self.bounds = self.model.bounds
        self.machines = MachineTable()
        self.records: Interner[Records] = Interner()
        self.messages: Interner[Message] = Interner()
        self.packets: Interner[Packet] = Interner()
        self.exchanges_: Interner[Exchange] = Interner()
        self.timers: Interner[DriverTimer] = Interner()
        self.pending: Interner[PendingCall] = Interner()
        self.answers_: Interner[Answer] = Interner()
        self.memo: dict[tuple[int, Hashable, float], tuple[int, tuple[Effect, ...], str]] = {}
        self.third_memo: dict[tuple[int, int], int] = {}
        self._tombstones: dict[tuple[type, enum.Enum], int] = {}
        self.checked: dict[tuple[object, ...], list[Problem]] = {}
        self.packet_message: list[int] = []  # packet number -> message number
        self.drained: dict[World, tuple[World, tuple[Problem, ...]]] = {}

    # --- stepping machines -----------------------------------------------

    def step(
        self, before: int, what: Hashable, now: float, step: Callable[[Machine], list[Effect]]
    ) -> tuple[int, tuple[Effect, ...], str]:
        """Machine ``before`` after input ``what`` at ``now``: its number, effects, and any error.

        Memoized: a machine step is a pure function of (machine, input, now).
        """
        memo_key = (before, what, now)
        hit = self.memo.get(memo_key)
        if hit is None:
            twin = clone_machine(self.machines.obj(before))
            try:
                effects: tuple[Effect, ...] = tuple(step(twin))
            except ActorlockError as exc:
                # The rules say a refused event changes nothing; the driver
                # would crash its task on a non-call input. Either way: report.
                hit = (before, (), f"{type(exc).__name__}: {exc}")
            else:
                hit = (self.intern_machine(twin), effects, "")
            self.memo[memo_key] = hit
        return hit

    # --- interning -----------------------------------------------------

    def intern_machine(self, machine: Machine) -> int:
        """The number of ``machine`` by :func:`machine_key`; it must not be stepped afterwards."""
        return self.machines.intern(machine)

    def tombstone(self, number: int) -> int:
        """The canonical machine standing for dead machine ``number``.

        A machine whose host crashed or which forgot the migration never gets
        another input; only its state is read (by the rules and the report),
        so one representative per (class, state) is enough.
        """
        machine = self.machines.obj(number)
        return self._tombstones.setdefault((type(machine), machine.state), number)

    def packet_id(self, packet: Packet) -> int:
        """The number of ``packet`` (and its message's, remembered alongside)."""
        number = self.packets.id(packet)
        if number == len(self.packet_message):
            self.packet_message.append(self.messages.id(packet.message))
        return number

    def exchange_id(self, exchange: Exchange) -> int:
        """The number of ``exchange``."""
        self.messages.id(exchange.request)
        return self.exchanges_.id(exchange)

    # --- the start -----------------------------------------------------

    def landmark_after(self, now: float, dst: int, timers: Iterable[DriverTimer]) -> float | None:
        """The next landmark after ``now`` (see Time in the module docstring), if any."""
        marks = {
            min(TIMING.prepare_timeout, DEADLINE - TIMING.transfer_margin),
            DEADLINE - TIMING.transfer_margin,
            DEADLINE,
        }
        if dst >= 0:
            marks.add(self.machines.obj(dst).deadline_at)
        marks.update(t.at for t in timers if t.timer is not Timer.RETRY)
        later = [m for m in marks if m > now and m != float("inf")]
        return min(later) if later else None


class MachineTable:
    """Machines interned by :func:`machine_key`; interned machines are never stepped."""

    def __init__(self) -> None:
        self._ids: dict[Hashable, int] = {}
        self._objects: list[Machine] = []

    def intern(self, machine: Machine) -> int:
        key = machine_key(machine)
        found = self._ids.get(key)
        if found is None:
            found = self._ids[key] = len(self._objects)
            self._objects.append(machine)
        return found

    def obj(self, number: int) -> Machine:
        return self._objects[number]

    def __len__(self) -> int:
        return len(self._objects)
