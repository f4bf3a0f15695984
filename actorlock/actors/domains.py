"""The host's domain actors: one per guest, started on first use, forgotten when they stop."""

from __future__ import annotations

import contextlib
from typing import Any

from anyio.abc import TaskGroup

from ..errors import ActorlockError
from ..model import DomainIdentity, MigrationRole
from ..protocol import Outcome
from ..statestore import DomainState
from .domain import DomainActor
from .fencing import FenceTarget
from .mailbox import ActorRef, open_mailbox, run_actor
from .messages import DomainStatus, Inquire, LeasesLost, MigrationSettled
from .phases import DomainPhase
from .ports import DomainServices

__all__ = ["DomainRegistry"]


class DomainRegistry:
    """Owns every domain actor's task (in the host's task group) and finds actors by uuid."""

    def __init__(self, task_group: TaskGroup) -> None:
        self._tg = task_group
        self._domains: dict[str, tuple[ActorRef[Any], DomainActor]] = {}
        self._services: DomainServices | None = None

    def bind(self, services: DomainServices) -> None:
        """What every domain actor gets (built by the host after this registry: it names :meth:`forget`)."""
        self._services = services

    def spawn(
        self, identity: DomainIdentity, state: DomainState | None = None, *, lost_reason: str = ""
    ) -> ActorRef[Any]:
        assert self._services is not None, "bind() the domain services first"
        actor = DomainActor(self._services, identity, state, lost_reason=lost_reason)
        ref, mailbox = open_mailbox(actor.name)
        self._domains[identity.uuid] = (ref, actor)
        self._tg.start_soon(run_actor, actor, ref, mailbox, name=actor.name)
        return ref

    def ref(self, identity: DomainIdentity) -> ActorRef[Any]:
        """The actor for ``identity.uuid``, started on first use."""
        entry = self._domains.get(identity.uuid)
        return entry[0] if entry is not None else self.spawn(identity)

    def actor(self, uuid: str) -> DomainActor | None:
        entry = self._domains.get(uuid)
        return entry[1] if entry is not None else None

    def known(self) -> list[str]:
        return sorted(self._domains)

    def holding(self) -> bool:
        """Whether any domain still holds (or held, until fenced) leases."""
        return any(a.phase in (DomainPhase.RUNNING, DomainPhase.LOST) for _, a in self._domains.values())

    async def statuses(self) -> list[DomainStatus]:
        found = []
        for ref, _actor in list(self._domains.values()):
            try:
                found.append(await ref.ask(Inquire()))
            except ActorlockError:
                continue
        return sorted(found, key=lambda d: d.uuid)

    def forget(self, uuid: str, actor: object) -> None:
        entry = self._domains.get(uuid)
        if entry is not None and entry[1] is actor:
            del self._domains[uuid]

    async def settled(self, uuid: str, settled: MigrationSettled) -> None:
        """A migration's outcome, recorded by the domain actor before anyone hears of it."""
        entry = self._domains.get(uuid)
        if entry is None:
            if settled.role is MigrationRole.DESTINATION and settled.outcome is not Outcome.COMMITTED:
                return
            await self.spawn(DomainIdentity(uuid)).ask(settled)
            return
        await entry[0].ask(settled)

    async def tell_lost(self, target: FenceTarget, reason: str, result: str) -> None:
        """After a fence's first attempt: the domain actor marks itself lost."""
        entry = self._domains.get(target.identity.uuid)
        if entry is not None:
            with contextlib.suppress(ActorlockError):
                await entry[0].tell(LeasesLost(reason, result))
