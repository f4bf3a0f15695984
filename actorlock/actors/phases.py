"""The domain lifecycle as one table: which move is legal in which phase, and where it leads.

A domain actor asks :func:`next_phase` before it does any I/O for a move,
and enters the phase it returned only once the move succeeded. A move not
in the table is refused with :class:`InvalidStateError` and changes nothing.

Rules the table encodes (libvirt's lifecycle, and what migration adds):
- A guest that lost its leases must be shut down before it starts again.
- Only a running guest can pause, migrate out or lose its leases.
- Hotplug and unplug need a registered guest that is still this host's:
  never after it stopped, migrated away, or (hotplug) lost its leases.
- Shutdown is always legal: it is how a lost or migrated guest is forgotten.
- Recording a committed incoming migration is never refused: the lease
  records already name this host, and the actor must know what it holds.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from ..errors import InvalidStateError
from ..statestore import DomainPhase

__all__ = ["DomainPhase", "Move", "next_phase"]


class Move(enum.Enum):
    START = "start"  # take every lease the registered resources need
    REGISTER = "register"  # bind the guest without leases (started paused)
    HOTPLUG = "hotplug"
    UNPLUG = "unplug"
    PAUSE = "pause"  # give every lease back, keep the lock state
    LOSE = "lose"  # the host lost its lockspace, or the records no longer name us
    PREPARE_MIGRATION = "prepare a migration"
    MIGRATED_OUT = "migrate out"  # a committed outgoing migration
    MIGRATED_IN = "migrate in"  # a committed incoming migration
    SHUTDOWN = "shut down"


P = DomainPhase
_NOT_HELD = (P.UNDEFINED, P.REGISTERED, P.PAUSED, P.STOPPED, P.MIGRATED)
_REGISTERED = (P.REGISTERED, P.RUNNING, P.PAUSED)

TRANSITIONS: Mapping[tuple[DomainPhase, Move], DomainPhase] = {
    **{(phase, Move.START): P.RUNNING for phase in _NOT_HELD},
    **{(phase, Move.REGISTER): P.REGISTERED for phase in _NOT_HELD},
    **{(phase, Move.HOTPLUG): phase for phase in _REGISTERED},
    **{(phase, Move.UNPLUG): phase for phase in (*_REGISTERED, P.LOST)},
    (P.RUNNING, Move.PAUSE): P.PAUSED,
    (P.RUNNING, Move.LOSE): P.LOST,
    (P.RUNNING, Move.PREPARE_MIGRATION): P.RUNNING,
    # LOST too: the commit may land after a loss the actor heard of first.
    (P.RUNNING, Move.MIGRATED_OUT): P.MIGRATED,
    (P.LOST, Move.MIGRATED_OUT): P.MIGRATED,
    **{(phase, Move.MIGRATED_IN): P.RUNNING for phase in DomainPhase},
    **{(phase, Move.SHUTDOWN): P.STOPPED for phase in DomainPhase},
}

_WHY_NOT: Mapping[DomainPhase, str] = {
    P.UNDEFINED: "nothing is registered",
    P.RUNNING: "it already holds its leases",
    P.LOST: "it lost its leases; shut it down first",
    P.MIGRATED: "its leases migrated to another host",
    P.STOPPED: "it was shut down",
}


def next_phase(name: str, phase: DomainPhase, move: Move) -> DomainPhase:
    """The phase ``move`` leads to from ``phase``; InvalidStateError if it is not legal there."""
    try:
        return TRANSITIONS[phase, move]
    except KeyError:
        why = _WHY_NOT.get(phase, "")
        raise InvalidStateError(
            f"{name} is {phase.value}: cannot {move.value}" + (f" ({why})" if why else "")
        ) from None
