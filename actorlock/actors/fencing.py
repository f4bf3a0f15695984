"""The fence board: what to fence if the lockspace is lost, and fences run until confirmed.

Domain actors publish a :class:`FenceTarget` *before* they request their
first lease and withdraw it only once nothing is held; the host tells the
board when its lockspace is lost and regained. A fence:

* never waits behind lease traffic: signals go through a pidfd, and the one
  /proc read per check runs in worker threads of the board's own limiter,
  which nothing else uses (a pool saturated by starts blocked on a hung
  NFS server once made the fence time out while the guest ran on);
* runs at once for a target published while the lockspace is lost;
* is retried until the guest is confirmed stopped (dead, or paused by the
  callback); every attempt that falls short is logged at error level, sent
  as a ``fence_failed`` event and listed in :attr:`FenceBoard.unfenced`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import anyio
import attrs
from anyio.abc import TaskGroup

from ..constants import FailureAction
from ..events import FailureActionRan, FenceFailed, HostEvent
from ..guest import is_running, power_off
from ..model import DomainIdentity

if TYPE_CHECKING:
    from ..supervisor.service import SupervisorService

__all__ = ["FENCE_THREADS", "FenceBoard", "FenceTarget", "fence_retry_interval", "fence_thread_limiter"]

log = logging.getLogger(__name__)

# Each fence attempt holds at most one thread at a time, for a /proc read.
FENCE_THREADS = 4

PauseCallback = Callable[[DomainIdentity, "int | None"], Awaitable[None]]
Emit = Callable[[HostEvent], None]
FirstResult = Callable[["FenceTarget", str, str], Awaitable[None]]


@attrs.frozen
class FenceTarget:
    """What the host needs to run the failure action without asking the domain actor."""

    identity: DomainIdentity
    pid: int | None
    pid_start: int | None
    keys: tuple[str, ...]


@attrs.frozen
class _Attempt:
    result: str
    confirmed: bool
    final: bool = False  # no retry can change it (no pid to kill)


def fence_retry_interval(fence_timeout: float) -> float:
    """How often an unconfirmed fence is tried again: twice per fence_timeout, within [0.05, 1] s."""
    return max(0.05, min(1.0, fence_timeout / 2))


def fence_thread_limiter() -> anyio.CapacityLimiter:
    """The worker threads fencing may use, shared with nothing else."""
    return anyio.CapacityLimiter(FENCE_THREADS)


class FenceBoard:
    """One per host: published fence targets and the fences in progress.

    Args:
        host: the host's name, for logs.
        action: the configured failure action.
        fence_timeout: the bound of one attempt.
        kill_grace: SIGTERM to SIGKILL, for ``poweroff``.
        task_group: the host's task group, which owns every fence task.
        emit: the host's event sink.
        pause_callback: runs the ``pause`` action.
        first_result: told once per fence, after its first attempt (the
            host forwards it to the domain actor as ``LeasesLost``).
    """

    def __init__(
        self,
        *,
        host: str,
        action: FailureAction,
        fence_timeout: float,
        kill_grace: float,
        task_group: TaskGroup,
        emit: Emit,
        pause_callback: PauseCallback | None,
        first_result: FirstResult,
    ) -> None:
        self._host = host
        self.action = action
        self._fence_timeout = fence_timeout
        self._kill_grace = kill_grace
        self._tg = task_group
        self._emit = emit
        self._pause_callback = pause_callback
        self._first_result = first_result
        self._limiter = fence_thread_limiter()
        self._targets: dict[str, FenceTarget] = {}
        self._running: dict[str, FenceTarget] = {}
        self._unfenced: dict[str, str] = {}
        self._warned_unfenceable: set[str] = set()
        self.lost = False
        self.losses = 0  # lockspace losses so far: a domain compares it around an acquisition
        self.retry_interval = fence_retry_interval(fence_timeout)
        self.supervisor: SupervisorService | None = None  # set by the host when guests are supervised

    # -- what domain actors and the host tell the board -------------------------

    def publish(self, uuid: str, target: FenceTarget | None) -> None:
        """Set (or, with None, withdraw) what a loss fences for domain ``uuid``.

        A target published while the lockspace is lost is fenced at once.
        """
        if target is None:
            self._targets.pop(uuid, None)
            return
        self._targets[uuid] = target
        if self._cannot_fence(target):
            if uuid not in self._warned_unfenceable:
                self._warned_unfenceable.add(uuid)
                log.warning(
                    "host %s: domain %s holds leases with no guest pid registered: "
                    "it cannot be powered off if the lease is lost",
                    self._host,
                    uuid,
                )
        else:
            self._warned_unfenceable.discard(uuid)
        if self.lost:
            self._start(target, "published while the lockspace was lost")

    def lockspace_lost(self, reason: str) -> None:
        """Fence every published target (in the host's task group) and fence new ones at once."""
        self.lost = True
        self.losses += 1
        for target in list(self._targets.values()):
            self._start(target, reason)

    def lockspace_regained(self) -> None:
        """Targets published from now on wait for the next loss (running fences go on)."""
        self.lost = False

    async def fence_now(self, targets: Iterable[FenceTarget], reason: str) -> dict[str, str]:
        """Fence ``targets`` now; return each first attempt's result by uuid (retries go on)."""
        results: dict[str, str] = {}

        async def first(target: FenceTarget) -> None:
            attempt = await self._attempt(target, 1)
            results[target.identity.uuid] = attempt.result
            if not (attempt.confirmed or attempt.final):
                self._running[target.identity.uuid] = target
                self._tg.start_soon(self._retry, target, reason, 2, name=f"fence {target.identity.uuid}")

        async with anyio.create_task_group() as tg:
            for target in targets:
                tg.start_soon(first, target)
        return results

    # -- what the host reports -----------------------------------------------------

    def unfenceable(self, uuid: str) -> bool:
        """True if domain ``uuid`` holds leases that no failure action could enforce."""
        target = self._targets.get(uuid)
        return target is not None and self._cannot_fence(target)

    def _cannot_fence(self, target: FenceTarget) -> bool:
        return target.pid is None and self.action is FailureAction.POWEROFF

    @property
    def unfenced(self) -> dict[str, str]:
        """Domains whose fence is not confirmed yet, with the last attempt's result."""
        return dict(self._unfenced)

    @property
    def holding(self) -> bool:
        """True while any domain has a target published (it holds, or is acquiring, leases)."""
        return bool(self._targets)

    @property
    def fencing(self) -> bool:
        """True while any fence is still being attempted."""
        return bool(self._running)

    # -- fencing ---------------------------------------------------------------------

    def _start(self, target: FenceTarget, reason: str) -> None:
        uuid = target.identity.uuid
        if self._running.get(uuid) == target:
            return
        self._running[uuid] = target
        self._tg.start_soon(self._fence, target, reason, name=f"fence {uuid}")

    async def _fence(self, target: FenceTarget, reason: str) -> None:
        attempt = await self._attempt(target, 1)
        try:
            with anyio.move_on_after(self._fence_timeout):
                await self._first_result(target, reason, attempt.result)
        finally:
            if attempt.confirmed:
                self._done(target)
        if not (attempt.confirmed or attempt.final):
            await self._retry(target, reason, 2)

    async def _retry(self, target: FenceTarget, reason: str, number: int) -> None:
        try:
            while True:
                await anyio.sleep(self.retry_interval)
                if self._running.get(target.identity.uuid) != target:
                    return  # superseded by a newer fence of the same domain
                attempt = await self._attempt(target, number)
                if attempt.confirmed or attempt.final:
                    return
                number += 1
        finally:
            self._done(target)

    def _done(self, target: FenceTarget) -> None:
        uuid = target.identity.uuid
        if self._running.get(uuid) == target:
            del self._running[uuid]

    async def _attempt(self, target: FenceTarget, number: int) -> _Attempt:
        uuid = target.identity.uuid
        attempt = _Attempt("failure action timed out", confirmed=False)
        with anyio.move_on_after(self._fence_timeout):
            try:
                attempt = await self._run_action(target)
            except Exception as exc:
                attempt = _Attempt(f"failure action failed: {exc!r}", confirmed=False)
        self._emit(
            FailureActionRan(
                host=self._host,
                domain=uuid,
                action=self.action.value,
                result=attempt.result,
                attempt=number,
                confirmed=attempt.confirmed,
            )
        )
        if attempt.confirmed:
            self._unfenced.pop(uuid, None)
        else:
            self._unfenced[uuid] = attempt.result
            retry = "giving up" if attempt.final else f"retrying every {self.retry_interval:.2f}s"
            log.error(
                "host %s: fencing %s failed (attempt %d): %s; %s",
                self._host,
                uuid,
                number,
                attempt.result,
                retry,
            )
            self._emit(FenceFailed(host=self._host, domain=uuid, attempt=number, result=attempt.result))
        return attempt

    async def _run_action(self, target: FenceTarget) -> _Attempt:
        if self.supervisor is not None and self.action is FailureAction.POWEROFF:
            # Told first and without waiting: it runs the action on its
            # own even if this process stalls next; it also knows the pid of a guest
            # registered without one.
            supervised = self.supervisor.fence(target.identity.uuid, "the host reports the lease lost")
            if target.pid is None and supervised is not None:
                target = attrs.evolve(target, pid=supervised.guest_pid, pid_start=supervised.guest_start)
        if self.action is FailureAction.IGNORE:
            log.error(
                "host %s: %s keeps running without its leases (failure_action=ignore)",
                self._host,
                target.identity.uuid,
            )
            return _Attempt("ignored (failure_action=ignore)", confirmed=True)
        if target.pid is not None and not await is_running(target.pid, target.pid_start, self._limiter):
            return _Attempt(f"guest pid {target.pid} already stopped", confirmed=True)
        if self.action is FailureAction.PAUSE:
            assert self._pause_callback is not None
            await self._pause_callback(target.identity, target.pid)
            return _Attempt("guest paused by callback", confirmed=True)
        if target.pid is None:
            return _Attempt("no guest pid registered: nothing to kill", confirmed=False, final=True)
        gone = await power_off(target.pid, target.pid_start, self._kill_grace, self._limiter)
        result = f"guest pid {target.pid} " + ("powered off" if gone else "survived SIGKILL")
        return _Attempt(result, confirmed=gone)
