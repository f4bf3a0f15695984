"""A recording event sink: what happened on which host, on one clock.

Pass ``log.sink`` as ``open_host(event_sink=...)`` for every host of a
scenario; tests wait on events instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import attrs

from ..events import HostEvent


@attrs.frozen
class Event:
    """A host event and when it was recorded; ``kind`` and ``fields`` are the record's."""

    time: float
    record: HostEvent
    # Taken once: every wait_for and of() reads it, for every event logged.
    fields: dict[str, Any] = attrs.field(
        init=False, default=attrs.Factory(lambda self: self.record.fields(), takes_self=True)
    )

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def host(self) -> str:
        return self.record.host


class EventLog:
    """Collects events from any number of hosts and lets tests wait for them."""

    def __init__(self, clock: Callable[[], float] = anyio.current_time) -> None:
        self.events: list[Event] = []
        self._clock = clock
        self._changed = anyio.Event()

    def sink(self, event: HostEvent) -> None:
        self.events.append(Event(self._clock(), event))
        self._changed.set()
        self._changed = anyio.Event()

    def of(self, kind: str, **match: Any) -> list[Event]:
        return [
            e for e in self.events if e.kind == kind and all(e.fields.get(k) == v for k, v in match.items())
        ]

    async def wait_for(self, kind: str, **match: Any) -> Event:
        """The first event of ``kind`` whose fields match, waiting for it if needed."""
        while True:
            found = self.of(kind, **match)
            if found:
                return found[0]
            await self._changed.wait()
