"""Faults of a whole coordinator, for tests and simulators: freeze, thaw, crash.

These reach into a running host from outside; the production classes carry
no fault hooks, only the seams used here (the lifeline's checkpoint, the
coordinator's :meth:`abandon`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from ..events import HostFrozen, HostThawed

if TYPE_CHECKING:
    from ..actors.host import HostCoordinator
    from ..api import Host

__all__ = ["crash", "freeze", "frozen", "thaw"]

_gates: dict[int, anyio.Event] = {}


def _coordinator(host: Host | HostCoordinator) -> HostCoordinator:
    from ..api import Host

    return host._coordinator if isinstance(host, Host) else host


def freeze(host: Host | HostCoordinator) -> None:
    """Stop renewal and expiry judgement, as a SIGSTOP of the coordinator would (see :func:`thaw`)."""
    coordinator = _coordinator(host)
    if id(coordinator) in _gates:
        return
    gate = _gates[id(coordinator)] = anyio.Event()
    coordinator.lifeline.checkpoint = gate.wait
    coordinator.emit(HostFrozen(host=coordinator.identity.name))


def thaw(host: Host | HostCoordinator) -> None:
    """Undo :func:`freeze`; an expiry that passed meanwhile is handled at once."""
    coordinator = _coordinator(host)
    gate = _gates.pop(id(coordinator), None)
    if gate is not None:
        gate.set()
        coordinator.emit(HostThawed(host=coordinator.identity.name))


def frozen(host: Host | HostCoordinator) -> bool:
    return id(_coordinator(host)) in _gates


def crash(host: Host | HostCoordinator) -> None:
    """Every task of the host dies now; nothing is released or written (a SIGKILL).

    The ``open_host`` block running it is cancelled.
    """
    coordinator = _coordinator(host)
    thaw(coordinator)
    coordinator.abandon()
