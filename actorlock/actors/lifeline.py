"""Proving this host alive: join the lockspace, renew, notice the expiry, journal the renewals.

Safety rule (docs/timing.md): this host stops granting leases and runs the
failure action of every guest holding one once ``lease_timeout`` has passed
since its last successful renewal *started*; the action gets
``fence_timeout``. Other hosts take over only after seeing our record
unchanged for ``host_dead`` > lease_timeout + fence_timeout + scheduling_delay.
Deadlines are measured on :data:`actorlock.clock.host_clock` (CLOCK_BOOTTIME:
it counts a suspend), and always by reading it, never by counting timer ticks.
"""

from __future__ import annotations

import logging
import uuid as uuidlib
from collections.abc import Awaitable, Callable

import anyio
import attrs
from anyio.abc import TaskGroup

from ..backends.base import HostAdvert, LeaseBackend
from ..config import Config
from ..errors import ActorlockError
from ..events import ExpiryNoticedLate, LockspaceLost, LockspaceRegained, ResumeFailed
from ..model import HostIdentity
from ..statestore import HostPersisted, StateStore
from .fencing import FenceBoard
from .ports import EmitEvent

__all__ = ["Lifeline", "Membership", "read_boot_id"]

log = logging.getLogger(__name__)


def read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


@attrs.define
class Membership:
    """Who this host is in the lockspace, as the other parts of the host read it."""

    identity: HostIdentity
    incarnation: str = ""
    lockspace_id: str = ""
    boot_id: str = ""
    peer_endpoint: str = ""
    public_key: str = ""


async def _carry_on() -> None:
    return None


class Lifeline:
    """Renews this host's lockspace membership and fences everything once it lapses."""

    def __init__(
        self,
        config: Config,
        membership: Membership,
        backend: LeaseBackend,
        store: StateStore,
        fences: FenceBoard,
        *,
        emit: EmitEvent,
        clock: Callable[[], float],
        on_renewed: Callable[[float], None] = lambda expires_at: None,
    ) -> None:
        self._config = config
        self._membership = membership
        self._backend = backend
        self._store = store
        self._fences = fences
        self._emit = emit
        self._clock = clock
        self._on_renewed = on_renewed  # must not wait: supervisors' deadlines, the watchdog
        self._name = membership.identity.name
        self.last_start = 0.0
        self.expires_at = 0.0
        self.lost = False
        self.renewals = 0
        self.renew_failures = 0
        self._journal_changed = anyio.Event()
        self._renew_scope = anyio.CancelScope()
        # Awaited before each judgement of the deadline: the testing kit's
        # freeze (a SIGSTOP of renewal and fencing) plugs in here.
        self.checkpoint: Callable[[], Awaitable[None]] = _carry_on

    def valid(self) -> bool:
        return not self.lost and self._clock() < self.expires_at

    def seconds_to_expiry(self) -> float:
        return max(0.0, self.expires_at - self._clock())

    def advert(self, renewal_start: float) -> HostAdvert:
        m = self._membership
        return HostAdvert(
            boot_id=m.boot_id,
            renewed_monotonic=renewal_start,
            peer_endpoint=m.peer_endpoint,
            public_key=m.public_key,
        )

    def persisted(self) -> HostPersisted:
        m = self._membership
        return HostPersisted(
            m.identity.name,
            m.identity.id,
            m.incarnation,
            boot_id=m.boot_id,
            renewed_at=self.last_start,
        )

    # -- joining --------------------------------------------------------------

    async def join_fresh(self) -> None:
        """Join as a new incarnation; the lease runs from a renewal whose start we measured."""
        m = self._membership
        m.incarnation = uuidlib.uuid4().hex
        await self._backend.join(m.identity, m.incarnation, self.advert(self._clock()))
        # join may have waited host_dead for the id to free up: the validity
        # period starts at a renewal whose start we measured ourselves.
        start = self._clock()
        await self._backend.renew(self.advert(start))
        self._renewed(start)

    async def resume(
        self, incarnation: str, deadline: float, before_join: Callable[[], Awaitable[None]]
    ) -> bool:
        """Rejoin as ``incarnation`` with a renewal that completes before ``deadline``; False if not."""
        m = self._membership
        try:
            with anyio.fail_after(max(deadline - self._clock(), 1e-6)):
                m.lockspace_id = await self._backend.lockspace_id()
                read_at = self._clock()
                previous = {v.record.id: v.record for v in await self._backend.hosts()}.get(m.identity.id)
                if previous is None or (previous.incarnation, previous.boot_id) != (incarnation, m.boot_id):
                    return False
                await before_join()
                m.incarnation = incarnation
                await self._backend.join(m.identity, incarnation, self.advert(read_at))
                start = self._clock()
                await self._backend.renew(self.advert(start))
        except (TimeoutError, ActorlockError, OSError) as exc:
            log.error(
                "host %s: could not resume incarnation %s before its lease deadline: %r",
                self._name,
                incarnation,
                exc,
            )
            self._emit(ResumeFailed(host=self._name, incarnation=incarnation, reason=repr(exc)))
            return False
        if self._clock() >= deadline:
            return False
        self._renewed(start)
        return True

    def _renewed(self, start: float) -> None:
        self.last_start, self.expires_at = start, start + self._config.timing.lease_timeout
        self._journal_changed.set()

    # -- the tasks --------------------------------------------------------------

    def start(self, task_group: TaskGroup) -> None:
        task_group.start_soon(self._renew_loop, name=f"renew {self._name}")
        task_group.start_soon(self._journal_loop, name=f"renewal journal {self._name}")

    def stop_renewing(self) -> None:
        """No renewal may race with (or follow) leaving the lockspace."""
        self._renew_scope.cancel()

    async def _renew_loop(self) -> None:
        with self._renew_scope:
            await self._renew_forever()

    async def _renew_forever(self) -> None:
        timing = self._config.timing
        next_at = self.last_start + timing.renew_interval
        while True:
            wake = min(next_at, self.expires_at) if not self.lost else next_at
            # Sleep on the loop's clock, judge on ours: after a suspend (or a
            # lagging loop) the first reading tells how much time really passed.
            await anyio.sleep(max(0.0, wake - self._clock()))
            await self.checkpoint()
            now = self._clock()
            if not self.lost and now >= self.expires_at:
                late = now - self.expires_at
                if late > timing.scheduling_delay:
                    log.error(
                        "host %s: noticed the lease expiry %.3fs late (scheduling_delay=%ss): "
                        "guests may have run past their lease",
                        self._name,
                        late,
                        timing.scheduling_delay,
                    )
                    self._emit(ExpiryNoticedLate(host=self._name, late=late))
                self._lockspace_lost(f"no successful renewal for lease_timeout={timing.lease_timeout}s")
            if self._clock() < next_at:
                continue
            start = self._clock()
            bound = self.expires_at - start if not self.lost else timing.renew_interval
            next_at = start + timing.renew_interval
            try:
                with anyio.fail_after(max(bound, 1e-3)):
                    await self._backend.renew(self.advert(start))
            except (TimeoutError, ActorlockError, OSError) as exc:
                self.renew_failures += 1
                log.warning("host %s: renewal failed: %r", self._name, exc)
                continue
            if not self.lost and self._clock() >= self.expires_at:
                continue  # completed, but after the lease it extends had expired: the loop fences
            self.renewals += 1
            self._renewed(start)
            if self.lost:
                log.warning("host %s: renewing again after a lockspace loss", self._name)
                self.lost = False
                self._fences.lockspace_regained()
                self._emit(LockspaceRegained(host=self._name))
            self._on_renewed(self.expires_at)

    def _lockspace_lost(self, reason: str) -> None:
        self.lost = True
        log.error("host %s: lockspace lost: %s", self._name, reason)
        self._emit(LockspaceLost(host=self._name, reason=reason))
        self._fences.lockspace_lost(reason)

    async def _journal_loop(self) -> None:
        """Keep the last successful renewal's start in the state store, for a restart.

        Its own task: a slow state_dir delays only the journal (which then
        lags, making a restart's deadline earlier), never a renewal.
        """
        written: tuple[str, float] | None = None
        while True:
            await self._journal_changed.wait()
            self._journal_changed = anyio.Event()
            if (self._membership.incarnation, self.last_start) == written:
                continue
            written = (self._membership.incarnation, self.last_start)
            try:
                with anyio.fail_after(self._config.timing.io_timeout):
                    await self._store.save_host(self.persisted())
            except (TimeoutError, ActorlockError, OSError) as exc:
                log.warning("host %s: saving the renewal journal failed: %r", self._name, exc)
