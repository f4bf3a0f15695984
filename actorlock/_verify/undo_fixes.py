"""The four storage-stall fixes of issue 7, each undone on demand: the verification's sensitivity.

A safety harness finds only the faults it models. To show that the
simulator models these, each context manager below puts one fix back to the
code it replaced (by patching, for the duration of the block only), and the
random scenarios must then flag violations (:mod:`actorlock._verify.sensitivity`
counts how many). Nothing here is imported by the library itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from types import MappingProxyType
from typing import Any

import anyio

from ..actors import domain as domain_module
from ..actors import fencing, host, lifeline
from ..backends import liveness
from ..errors import BackendTimeoutError
from ..model import HostRecord, HostView, Lease, LeaseRequest

__all__ = ["UNDO_FIXES"]


@contextmanager
def _patched(target: object, name: str, value: object) -> Iterator[None]:
    original = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, original)


@contextmanager
def fence_starvation() -> Iterator[None]:
    """Fence checks wait in the default worker pool (with lease traffic) and are never retried."""

    async def no_retry(
        self: fencing.FenceBoard, target: fencing.FenceTarget, reason: str, number: int
    ) -> None:
        self._done(target)

    with (
        _patched(fencing, "fence_thread_limiter", anyio.to_thread.current_default_thread_limiter),
        _patched(fencing.FenceBoard, "_retry", no_retry),
    ):
        yield


@contextmanager
def resume_reanchor() -> Iterator[None]:
    """A resumed restart counts its lease from its own (slow) renewal, and never reads its leases back."""

    async def reanchoring(
        self: lifeline.Lifeline,
        incarnation: str,
        deadline: float,
        before_join: Callable[[], Awaitable[None]],
    ) -> bool:
        m = self._membership
        m.lockspace_id = await self._backend.lockspace_id()
        previous = {v.record.id: v.record for v in await self._backend.hosts()}.get(m.identity.id)
        if previous is None or previous.incarnation != incarnation:
            return False
        await before_join()
        m.incarnation = incarnation
        await self._backend.join(m.identity, incarnation, self.advert(self._clock()))
        start = self._clock()
        await self._backend.renew(self.advert(start))
        self._renewed(start)
        return True

    async def trusting(self: host.HostCoordinator, domains: Any) -> dict[str, str]:
        return {}

    with (
        _patched(lifeline.Lifeline, "resume", reanchoring),
        _patched(host.HostCoordinator, "_verify_resumed", trusting),
    ):
        yield


@contextmanager
def acquire_expiry_race() -> Iterator[None]:
    """The fence target is published only after the leases are taken and saved; late ones are ignored."""

    async def take_then_publish(
        self: domain_module.DomainActor, requests: list[LeaseRequest]
    ) -> tuple[Lease, ...]:
        if not requests:
            return ()
        io_timeout = self.services.io_timeout
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(io_timeout):
                    leases = await self.services.leases.acquire(self.owner, requests)
            except (TimeoutError, BackendTimeoutError):
                await self._give_back([r.key for r in requests])
                raise BackendTimeoutError(f"{self.name}: acquiring took longer than io_timeout") from None
        return leases

    async def trust(self: domain_module.DomainActor, losses: int) -> None:
        return None

    def publish_quietly(self: fencing.FenceBoard, uuid: str, target: fencing.FenceTarget | None) -> None:
        if target is None:
            self._targets.pop(uuid, None)
        else:
            self._targets[uuid] = target

    with (
        _patched(domain_module.DomainActor, "_take", take_then_publish),
        _patched(domain_module.DomainActor, "_check_not_lost_since", trust),
        _patched(fencing.FenceBoard, "publish", publish_quietly),
    ):
        yield


@contextmanager
def clock_after_read() -> Iterator[None]:
    """Other hosts' records are dated by a clock reading taken after the read (at the judgement)."""
    original = liveness.LivenessObserver.observe

    def observe_late(self: liveness.LivenessObserver, record: HostRecord, read_at: float) -> HostView:
        return original(self, record, self.now())

    with _patched(liveness.LivenessObserver, "observe", observe_late):
        yield


UNDO_FIXES: Mapping[str, Callable[[], AbstractContextManager[None]]] = MappingProxyType(
    {
        "fence-starvation": fence_starvation,
        "resume-reanchor": resume_reanchor,
        "acquire-expiry-race": acquire_expiry_race,
        "clock-after-read": clock_after_read,
    }
)
