"""Conformance checks every :class:`~actorlock.backends.base.LeaseBackend` must pass.

In the spirit of ``trio.testing.check_two_way_stream``: you supply a factory
that builds ``count`` backend instances sharing one fresh lockspace (one per
simulated host), and each check drives them through a scenario and asserts
the outcome. A failed check raises :class:`ConformanceError`.

The checks control time with a :class:`FakeClock` that they pass to the
factory; give it to each backend's ``clock=`` parameter so that ``host_dead``
expiries happen instantly. A short ``poll_interval`` (say 0.01 s) keeps the
one check that waits in ``join`` fast. Example with pytest::

    from contextlib import asynccontextmanager

    from actorlock.testing import conformance

    @asynccontextmanager
    async def make_backends(count, *, clock, host_dead):
        space = MyLockspace()          # fresh and empty for every call
        backends = [MyBackend(space, host_dead=host_dead, clock=clock) for _ in range(count)]
        try:
            yield backends
        finally:
            for backend in backends:
                await backend.aclose()

    @pytest.mark.anyio
    @pytest.mark.parametrize("check", conformance.ALL_CHECKS, ids=lambda c: c.__name__)
    async def test_conformance(check):
        await check(make_backends)

or run everything at once with ``await conformance.check_lease_backend(make_backends)``.
Each check bounds its own duration with ``anyio.fail_after``.
"""

from __future__ import annotations

import functools
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, TypeVar

import anyio
import anyio.lowlevel
import attrs

from ..backends.base import HostAdvert, LeaseBackend
from ..errors import (
    HostIdInUseError,
    InvalidParameterError,
    InvalidStateError,
    LeaseLostError,
    ResourceBusyError,
    StaleLockStateError,
)
from ..model import (
    HostIdentity,
    HostState,
    HostView,
    Lease,
    LeaseMode,
    LeaseOwner,
    LeaseRecord,
    LeaseRequest,
)

__all__ = [
    "ALL_CHECKS",
    "CHECK_TIMEOUT",
    "EPSILON",
    "HOST_DEAD",
    "BackendFactory",
    "Check",
    "ConformanceError",
    "FakeClock",
    "check_aclose",
    "check_acquire_all_or_nothing",
    "check_acquire_exclusive_shared",
    "check_acquire_requires_join",
    "check_concurrent_acquire",
    "check_expect_token",
    "check_invalid_requests",
    "check_join_id_in_use",
    "check_lease_backend",
    "check_left_holder_waits",
    "check_lockspace_id",
    "check_membership",
    "check_old_incarnation_dead",
    "check_own_old_incarnation_dead",
    "check_reacquire_idempotent",
    "check_records",
    "check_release",
    "check_renewing_holder_kept",
    "check_takeover_after_host_dead",
    "check_tokens_monotonic",
    "check_transfer",
    "check_transfer_fencing",
]

E = TypeVar("E", bound=BaseException)

HOST_DEAD = 8.0
"""``host_dead`` the checks ask the factory for (seconds of fake time)."""

EPSILON = 0.125
"""The margin used around ``HOST_DEAD``; both are exact binary fractions."""

CHECK_TIMEOUT = 30.0
"""Real seconds any one check may take before it fails."""

EXCLUSIVE = LeaseMode.EXCLUSIVE
SHARED = LeaseMode.SHARED


class ConformanceError(AssertionError):
    """A backend broke the LeaseBackend contract."""


class FakeClock:
    """A clock that only moves when told to; pass it as a backend's ``clock=``.

    Args:
        start: the initial reading.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("a clock never goes backwards")
        self.now += seconds


class BackendFactory(Protocol):
    """Builds ``count`` backends sharing one fresh, empty lockspace.

    The context manager yields the backends and closes them on exit. Every
    backend must use ``clock`` as its observer clock and ``host_dead`` as its
    expiry. Backends are handed out unjoined; the checks join them.
    """

    def __call__(
        self, count: int, *, clock: Callable[[], float], host_dead: float
    ) -> AbstractAsyncContextManager[Sequence[LeaseBackend]]: ...


Check = Callable[[BackendFactory], Awaitable[None]]
"""One conformance check: call it with your factory and await it."""

_REGISTERED: list[Check] = []


def _check(fn: Check) -> Check:
    @functools.wraps(fn)
    async def bounded(make_backends: BackendFactory) -> None:
        with anyio.fail_after(CHECK_TIMEOUT):
            await fn(make_backends)

    _REGISTERED.append(bounded)
    return bounded


async def check_lease_backend(make_backends: BackendFactory, *, skip: Sequence[str] = ()) -> None:
    """Run every check in :data:`ALL_CHECKS` except those named in ``skip``.

    Args:
        make_backends: the factory of backend instances sharing a lockspace.
        skip: names of checks to leave out (e.g. ``["check_join_id_in_use"]``).

    Raises:
        ConformanceError: the first check that failed, with its name.
    """
    for check in ALL_CHECKS:
        name = getattr(check, "__name__", repr(check))
        if name in skip:
            continue
        try:
            await check(make_backends)
        except ConformanceError as exc:
            raise ConformanceError(f"{name}: {exc}") from exc


# --- helpers -------------------------------------------------------------------


# The condition is what an assert-like helper checks, not a flag: positional like assert's.
def _expect(condition: bool, message: str) -> None:  # noqa: FBT001
    if not condition:
        raise ConformanceError(message)


async def _raises(exc_type: type[E], operation: Awaitable[object], what: str) -> E:
    try:
        result = await operation
    except exc_type as exc:
        return exc
    raise ConformanceError(f"{what}: expected {exc_type.__name__}, got {result!r}")


def _host(index: int) -> HostIdentity:
    return HostIdentity(f"host-{index + 1}", index + 1)


def _owner(host: HostIdentity, domain: str) -> LeaseOwner:
    return LeaseOwner(host.name, host.id, domain, f"name-of-{domain}")


def _req(key: str, mode: LeaseMode = EXCLUSIVE, expect_token: int | None = None) -> LeaseRequest:
    return LeaseRequest(key, mode, expect_token)


def _by_key(leases: Sequence[Lease]) -> dict[str, Lease]:
    return {lease.key: lease for lease in leases}


@attrs.define
class _Space:
    clock: FakeClock
    backends: Sequence[LeaseBackend]
    hosts: list[HostIdentity]
    incarnations: list[str]

    def owner(self, index: int, domain: str) -> LeaseOwner:
        return _owner(self.hosts[index], domain)

    async def record(self, key: str, backend: int = 0) -> LeaseRecord | None:
        found = await self.backends[backend].records([key])
        _expect(len(found) <= 1, f"records([{key!r}]) returned {len(found)} records")
        if found:
            _expect(found[0].key == key, f"records([{key!r}]) returned the record of {found[0].key!r}")
        return found[0] if found else None

    async def holders(self, key: str) -> set[LeaseOwner]:
        record = await self.record(key)
        return set() if record is None else {h.owner for h in record.holders}


@asynccontextmanager
async def _space(
    make_backends: BackendFactory, count: int, *, joined: int | None = None
) -> AsyncIterator[_Space]:
    """``count`` backends; the first ``joined`` (default all) join as host-1, host-2, ..."""
    clock = FakeClock()
    async with make_backends(count, clock=clock, host_dead=HOST_DEAD) as backends:
        _expect(len(backends) == count, f"factory gave {len(backends)} backends, asked for {count}")
        hosts = [_host(i) for i in range(count)]
        incarnations = [f"inc-{i + 1}-{uuid.uuid4().hex[:8]}" for i in range(count)]
        space = _Space(clock, backends, hosts, incarnations)
        for i in range(count if joined is None else joined):
            previous = await backends[i].join(hosts[i], incarnations[i], HostAdvert())
            _expect(previous is None, f"first join of {hosts[i].name} returned a previous record {previous}")
        yield space


def _view(views: Sequence[HostView], host_id: int) -> HostView:
    found = [v for v in views if v.record.id == host_id]
    _expect(len(found) == 1, f"hosts() lists host id {host_id} {len(found)} times")
    return found[0]


async def _expect_busy(
    space: _Space,
    backend: int,
    owner: LeaseOwner,
    requests: Sequence[LeaseRequest],
    key: str,
    holders: set[LeaseOwner],
) -> ResourceBusyError:
    err = await _raises(
        ResourceBusyError, space.backends[backend].acquire(owner, requests), f"acquire {requests} by {owner}"
    )
    _expect(err.resource == key, f"busy error names resource {err.resource!r}, expected {key!r}")
    expected = sorted((o.host, o.domain) for o in holders)
    _expect(sorted(err.holders) == expected, f"busy error names holders {err.holders}, expected {expected}")
    return err


# --- checks --------------------------------------------------------------------


@_check
async def check_lockspace_id(make_backends: BackendFactory) -> None:
    """Every backend of one lockspace reports the same, stable, non-empty id."""
    async with _space(make_backends, 2, joined=0) as space:
        ids = [await b.lockspace_id() for b in space.backends]
        _expect(
            bool(ids[0]) and isinstance(ids[0], str), f"lockspace id {ids[0]!r} is not a non-empty string"
        )
        _expect(ids[0] == ids[1], f"backends of one lockspace report ids {ids}")
        _expect(await space.backends[0].lockspace_id() == ids[0], "lockspace id changed between calls")
    async with _space(make_backends, 1, joined=0) as other:
        _expect(await other.backends[0].lockspace_id() != ids[0], "two fresh lockspaces share an id")


@_check
async def check_membership(make_backends: BackendFactory) -> None:
    """join, renew, leave and hosts() write and show what they should."""
    async with _space(make_backends, 3, joined=0) as space:
        a, b, c = space.backends
        host_a, host_c = space.hosts[0], space.hosts[2]
        await _raises(InvalidStateError, a.renew(HostAdvert()), "renew before join")

        previous = await a.join(host_a, "inc-a", HostAdvert(peer_endpoint="tcp://a:1"))
        _expect(previous is None, f"first join returned {previous}")
        view = _view(await b.hosts(), host_a.id)
        rec = view.record
        _expect(
            (rec.name, rec.incarnation, rec.state, rec.peer_endpoint)
            == (host_a.name, "inc-a", HostState.LIVE, "tcp://a:1"),
            f"joined record reads back as {rec}",
        )
        _expect(view.alive, "a host that just joined is judged dead")

        renewed = await a.renew(HostAdvert(peer_endpoint="tcp://a:2", boot_id="boot-1"))
        _expect(
            renewed.counter > rec.counter,
            f"renew did not bump the counter ({rec.counter} -> {renewed.counter})",
        )
        again = await a.renew(HostAdvert(peer_endpoint="tcp://a:2", boot_id="boot-1"))
        _expect(again.counter > renewed.counter, "second renew did not bump the counter")
        seen = _view(await b.hosts(), host_a.id).record
        _expect(seen == again, f"peer sees {seen}, renew returned {again}")
        _expect(seen.peer_endpoint == "tcp://a:2" and seen.boot_id == "boot-1", "renew lost the advert")

        await c.join(host_c, "inc-c", HostAdvert())
        views = await b.hosts()
        _expect([v.record.id for v in views] == [host_a.id, host_c.id], f"hosts() lists {views}")

        # A host that stops without leaving is alive until host_dead passes on the observer's clock.
        await c.leave(clean=False)
        _expect(_view(await b.hosts(), host_c.id).alive, "an unclean leave is judged dead at once")
        space.clock.advance(HOST_DEAD - EPSILON)
        _expect(_view(await b.hosts(), host_c.id).alive, "host judged dead before host_dead passed")
        space.clock.advance(EPSILON)
        _expect(not _view(await b.hosts(), host_c.id).alive, "host still alive after host_dead unchanged")

        await a.leave(clean=True)
        left = _view(await b.hosts(), host_a.id)
        _expect(left.record.state is HostState.LEFT, f"clean leave wrote {left.record}")
        _expect(not left.alive, "a host that left cleanly is judged alive")
        await a.leave(clean=True)  # leaving twice is harmless

        # A cleanly left id is free at once for a new incarnation.
        previous = await b.join(host_a, "inc-a2", HostAdvert())
        _expect(
            previous is not None and previous.incarnation == "inc-a" and previous.state is HostState.LEFT,
            f"join over a left record returned {previous}",
        )
        now = _view(await c.hosts(), host_a.id).record
        _expect(
            now.incarnation == "inc-a2" and now.state is HostState.LIVE and now.counter > left.record.counter,
            f"rejoined record is {now}",
        )


@_check
async def check_join_id_in_use(make_backends: BackendFactory) -> None:
    """A live incarnation keeps its id; a dead one loses it; the same incarnation resumes."""
    async with _space(make_backends, 3, joined=1) as space:
        old, new, resumed = space.backends
        host = space.hosts[0]
        done = anyio.Event()
        outcome: list[object] = []

        async def join() -> None:
            try:
                outcome.append(await new.join(host, "inc-new", HostAdvert()))
            except HostIdInUseError as exc:
                outcome.append(exc)
            finally:
                done.set()

        # The joiner can only return by seeing the record change (the fake
        # clock is frozen), which the renewals guarantee.
        async with anyio.create_task_group() as tg:
            tg.start_soon(join)
            while not done.is_set():
                await old.renew(HostAdvert())
                await anyio.lowlevel.checkpoint()
        _expect(
            len(outcome) == 1 and isinstance(outcome[0], HostIdInUseError),
            f"join over a renewing incarnation gave {outcome}",
        )
        current = _view(await new.hosts(), host.id).record
        _expect(current.incarnation == space.incarnations[0], f"failed join changed the record to {current}")

        # Once the old incarnation stops renewing for host_dead, the id is free.
        space.clock.advance(HOST_DEAD)
        with anyio.fail_after(5):
            previous = await new.join(host, "inc-new", HostAdvert())
        _expect(
            previous is not None and previous.incarnation == space.incarnations[0],
            f"join over a dead incarnation returned {previous}",
        )
        await _raises(InvalidStateError, old.renew(HostAdvert()), "renew by a taken-over incarnation")

        # A restart that resumes the same incarnation takes the id at once.
        with anyio.fail_after(5):
            previous = await resumed.join(host, "inc-new", HostAdvert())
        _expect(
            previous is not None and previous.incarnation == "inc-new",
            f"resuming join returned {previous}",
        )


@_check
async def check_acquire_requires_join(make_backends: BackendFactory) -> None:
    """A backend that has not joined may not acquire."""
    async with _space(make_backends, 1, joined=0) as space:
        owner = space.owner(0, "vm")
        await _raises(InvalidStateError, space.backends[0].acquire(owner, [_req("k")]), "acquire before join")
        _expect(await space.record("k") is None, "acquire before join wrote a record")


@_check
async def check_acquire_exclusive_shared(make_backends: BackendFactory) -> None:
    """One exclusive holder, or any number of shared holders, never both."""
    async with _space(make_backends, 3) as space:
        a, b, c = space.backends
        oa, ob, oc = space.owner(0, "vm-a"), space.owner(1, "vm-b"), space.owner(2, "vm-c")

        (lease,) = await a.acquire(oa, [_req("x")])
        _expect(
            lease == Lease("x", EXCLUSIVE, lease.token) and lease.token > 0, f"exclusive acquire gave {lease}"
        )
        await _expect_busy(space, 1, ob, [_req("x")], "x", {oa})
        await _expect_busy(space, 1, ob, [_req("x", SHARED)], "x", {oa})
        # Another domain on the same host conflicts just the same.
        await _expect_busy(space, 0, space.owner(0, "vm-a2"), [_req("x")], "x", {oa})
        _expect(await space.holders("x") == {oa}, "refused requests changed the holders of x")

        tokens = []
        for backend, owner in ((a, oa), (b, ob), (c, oc)):
            (lease,) = await backend.acquire(owner, [_req("y", SHARED)])
            _expect(lease.mode is SHARED, f"shared acquire gave {lease}")
            tokens.append(lease.token)
        _expect(tokens == sorted(set(tokens)), f"shared acquisitions gave tokens {tokens}")
        record = await space.record("y")
        assert record is not None
        _expect(
            {(h.owner, h.mode) for h in record.holders} == {(oa, SHARED), (ob, SHARED), (oc, SHARED)},
            f"record of y is {record}",
        )
        await _expect_busy(space, 2, space.owner(2, "vm-c2"), [_req("y")], "y", {oa, ob, oc})
        await _expect_busy(space, 1, ob, [_req("x", SHARED)], "x", {oa})


@_check
async def check_acquire_all_or_nothing(make_backends: BackendFactory) -> None:
    """A refused request leaves every requested record as it was."""
    async with _space(make_backends, 2) as space:
        a, b = space.backends
        oa, ob = space.owner(0, "vm-a"), space.owner(1, "vm-b")
        await a.acquire(oa, [_req("key-x")])
        await a.acquire(oa, [_req("key-v", SHARED)])
        await a.release(oa, ["key-v"])
        before = await a.records()

        await _expect_busy(space, 1, ob, [_req("key-z"), _req("key-x"), _req("key-w")], "key-x", {oa})
        await _expect_busy(space, 1, ob, [_req("key-v", SHARED), _req("key-x", SHARED)], "key-x", {oa})
        after = await b.records()
        _expect(after == before, f"refused acquisitions changed the records: {before} -> {after}")

        leases = _by_key(await b.acquire(ob, [_req("key-z"), _req("key-w"), _req("key-v", SHARED)]))
        _expect(sorted(leases) == ["key-v", "key-w", "key-z"], f"acquire gave {leases}")
        old_v = next(r for r in before if r.key == "key-v")
        _expect(leases["key-v"].token > old_v.token, "a token was reused after a refused acquisition")
        for key in ("key-v", "key-w", "key-z"):
            _expect(await space.holders(key) == {ob}, f"holders of {key} are wrong")


@_check
async def check_reacquire_idempotent(make_backends: BackendFactory) -> None:
    """Re-acquiring what one holds returns the same tokens and writes nothing."""
    async with _space(make_backends, 1) as space:
        (a,) = space.backends
        oa = space.owner(0, "vm")
        first = _by_key(await a.acquire(oa, [_req("x"), _req("y", SHARED)]))
        records = await a.records()
        again = _by_key(await a.acquire(oa, [_req("y", SHARED), _req("x"), _req("x")]))
        _expect(again == first, f"re-acquire gave {again}, first acquire gave {first}")
        _expect(await a.records() == records, "re-acquire changed the records")
        (only,) = await a.acquire(oa, [_req("x")])
        _expect(only == first["x"], f"re-acquiring one of two leases gave {only}")


@_check
async def check_tokens_monotonic(make_backends: BackendFactory) -> None:
    """Every grant gets a larger token than any before it; records keep the last."""
    async with _space(make_backends, 2) as space:
        owners = [space.owner(0, "vm-a"), space.owner(1, "vm-b")]
        tokens: list[int] = []
        for _round in range(3):
            for backend, owner in zip(space.backends, owners, strict=True):
                (lease,) = await backend.acquire(owner, [_req("x")])
                tokens.append(lease.token)
                record = await space.record("x")
                _expect(record is not None and record.token == lease.token, f"record of x is {record}")
                await backend.release(owner, ["x"])
            (lease,) = await space.backends[0].acquire(owners[0], [_req("x", SHARED)])
            tokens.append(lease.token)
            (lease,) = await space.backends[1].acquire(owners[1], [_req("x", SHARED)])
            tokens.append(lease.token)
            for backend, owner in zip(space.backends, owners, strict=True):
                await backend.release(owner, ["x"])
        _expect(all(t1 < t2 for t1, t2 in itertools.pairwise(tokens)), f"tokens are not increasing: {tokens}")
        record = await space.record("x")
        _expect(
            record is not None and record.token == tokens[-1] and record.holders == (),
            f"record after the last release is {record}",
        )
        # Changing mode is a new acquisition: a new token.
        (shared,) = await space.backends[0].acquire(owners[0], [_req("x", SHARED)])
        (exclusive,) = await space.backends[0].acquire(owners[0], [_req("x")])
        _expect(
            tokens[-1] < shared.token < exclusive.token and exclusive.mode is EXCLUSIVE,
            f"mode change gave {shared} then {exclusive}",
        )
        _expect(await space.holders("x") == {owners[0]}, "mode change left two entries for one owner")


@_check
async def check_release(make_backends: BackendFactory) -> None:
    """release drops only the caller's entries, ignores what it lacks, and is idempotent."""
    async with _space(make_backends, 3) as space:
        a, b, c = space.backends
        oa1, oa2, ob = space.owner(0, "vm-a1"), space.owner(0, "vm-a2"), space.owner(1, "vm-b")
        oc = space.owner(2, "vm-c")
        for backend, owner in ((a, oa1), (a, oa2), (b, ob)):
            await backend.acquire(owner, [_req("x", SHARED)])
        await a.acquire(oa1, [_req("y")])
        before = await space.record("x")

        await a.release(oa1, ["x", "never-acquired", "x"])
        _expect(await space.holders("x") == {oa2, ob}, "release removed the wrong entries of x")
        _expect(await space.holders("y") == {oa1}, "release of x touched y")
        after = await space.record("x")
        _expect(
            before is not None and after is not None and after.token == before.token,
            f"release changed the token: {before} -> {after}",
        )
        await a.release(oa1, ["x"])
        _expect(await space.record("x") == after, "second release changed the record")
        _expect(await space.record("never-acquired") is None, "release created a record")

        await c.release(oc, ["x", "y"])
        await b.release(ob, ["y"])
        _expect(await space.holders("x") == {oa2, ob}, "a non-holder's release changed x")
        _expect(await space.holders("y") == {oa1}, "a non-holder's release changed y")
        await b.release(ob, [])
        await b.release(ob, ["x"])
        _expect(await space.holders("x") == {oa2}, "release by b left its entry")
        await c.acquire(oc, [_req("x", SHARED)])
        _expect(await space.holders("x") == {oa2, oc}, "shared acquire after releases went wrong")


@_check
async def check_takeover_after_host_dead(make_backends: BackendFactory) -> None:
    """A holder whose host stopped renewing is displaced after host_dead, not before."""
    async with _space(make_backends, 3) as space:
        a, b, _ = space.backends
        oa, ob, oc = space.owner(0, "vm-a"), space.owner(1, "vm-b"), space.owner(2, "vm-c")
        (held,) = await a.acquire(oa, [_req("x")])
        await a.acquire(oa, [_req("s", SHARED)])

        await _expect_busy(space, 1, ob, [_req("x")], "x", {oa})  # b starts watching host-1
        space.clock.advance(HOST_DEAD - EPSILON)
        await _expect_busy(space, 1, ob, [_req("x")], "x", {oa})
        await _expect_busy(space, 1, ob, [_req("s")], "s", {oa})
        space.clock.advance(EPSILON)
        # c never looked at host-1 before: it must watch a full host_dead itself.
        await _expect_busy(space, 2, oc, [_req("x")], "x", {oa})

        (taken,) = await b.acquire(ob, [_req("x")])
        _expect(taken.token > held.token, f"takeover token {taken.token} is not above {held.token}")
        _expect(await space.holders("x") == {ob}, "takeover left the dead holder in the record")
        await b.acquire(ob, [_req("s", SHARED)])
        _expect(await space.holders("s") == {ob}, "shared acquire kept a dead holder")

        # The zombie's late release must not drop the new holder.
        await a.release(oa, ["x", "s"])
        _expect(await space.holders("x") == {ob}, "the dead holder's release removed the new holder")
        _expect(await space.holders("s") == {ob}, "the dead holder's release removed the new shared holder")


@_check
async def check_renewing_holder_kept(make_backends: BackendFactory) -> None:
    """A holder whose host keeps renewing is never taken over, however long it holds."""
    async with _space(make_backends, 2) as space:
        a, _b = space.backends
        oa, ob = space.owner(0, "vm-a"), space.owner(1, "vm-b")
        await a.acquire(oa, [_req("x")])
        await _expect_busy(space, 1, ob, [_req("x")], "x", {oa})
        for _ in range(6):
            space.clock.advance(HOST_DEAD * 0.75)
            await a.renew(HostAdvert())
            await _expect_busy(space, 1, ob, [_req("x")], "x", {oa})
        space.clock.advance(HOST_DEAD - EPSILON)
        await _expect_busy(space, 1, ob, [_req("x")], "x", {oa})


@_check
async def check_expect_token(make_backends: BackendFactory) -> None:
    """expect_token refuses (StaleLockStateError) once someone else acquired since."""
    async with _space(make_backends, 2) as space:
        a, b = space.backends
        oa, ob = space.owner(0, "vm-a"), space.owner(1, "vm-b")
        (t1,) = await a.acquire(oa, [_req("x")])
        (same,) = await a.acquire(oa, [_req("x", expect_token=t1.token)])
        _expect(same == t1, f"expect_token on a lease one holds gave {same}, expected {t1}")
        await a.release(oa, ["x"])

        (t2,) = await a.acquire(oa, [_req("x", expect_token=t1.token)])
        _expect(t2.token > t1.token, f"acquire with a current expect_token gave {t2}")
        await a.release(oa, ["x"])
        (t3,) = await b.acquire(ob, [_req("x")])
        await b.release(ob, ["x"])
        before = await a.records()

        err = await _raises(
            StaleLockStateError,
            a.acquire(oa, [_req("x", expect_token=t2.token)]),
            "acquire with a stale token",
        )
        _expect(tuple(err.resources) == ("x",), f"stale error names {err.resources}")
        err = await _raises(
            StaleLockStateError,
            a.acquire(oa, [_req("x", expect_token=t3.token), _req("y", expect_token=5)]),
            "acquire with one stale token of two",
        )
        _expect(tuple(err.resources) == ("y",), f"stale error names {err.resources}")
        _expect(await b.records() == before, "refused expect_token acquisitions changed the records")
        (t4,) = await a.acquire(oa, [_req("x", expect_token=t3.token)])
        _expect(t4.token > t3.token, f"acquire after another holder released gave {t4}")


@_check
async def check_records(make_backends: BackendFactory) -> None:
    """records() lists every record sorted by key, keeps released ones, and filters by key."""
    async with _space(make_backends, 2) as space:
        a, b = space.backends
        oa = space.owner(0, "vm-a")
        _expect(await a.records() == [], "a fresh lockspace has records")
        leases = _by_key(await a.acquire(oa, [_req("k-b"), _req("k-a", SHARED), _req("k-c")]))
        await a.release(oa, ["k-c"])

        listed = await b.records()
        _expect([r.key for r in listed] == ["k-a", "k-b", "k-c"], f"records() lists {listed}")
        for record in listed:
            _expect(record.token == leases[record.key].token, f"record {record} lost its token")
        by_key = {r.key: r for r in listed}
        _expect(by_key["k-c"].holders == (), f"released record is {by_key['k-c']}")
        (holder,) = by_key["k-a"].holders
        _expect(
            (holder.owner, holder.mode, holder.token, holder.incarnation)
            == (oa, SHARED, leases["k-a"].token, space.incarnations[0]),
            f"holder entry is {holder}",
        )
        picked = await b.records(["k-c", "missing", "k-a", "k-a"])
        _expect([r.key for r in picked] == ["k-a", "k-c"], f"records(keys) gave {picked}")
        _expect(picked == [by_key["k-a"], by_key["k-c"]], "records(keys) disagrees with records()")
        _expect(await b.records([]) == [], "records([]) is not empty")
        _expect(await a.records() == listed, "two observers list different records")


@_check
async def check_old_incarnation_dead(make_backends: BackendFactory) -> None:
    """A holder from an older incarnation of its host is dead at once."""
    async with _space(make_backends, 3, joined=2) as space:
        a, b, restarted = space.backends
        oa, ob = space.owner(0, "vm-a"), space.owner(1, "vm-b")
        host_a = space.hosts[0]
        (held,) = await a.acquire(oa, [_req("x")])

        # host-1 restarts: its new process waits out the old incarnation, then joins.
        await restarted.hosts()
        space.clock.advance(HOST_DEAD)
        await restarted.join(host_a, "inc-restarted", HostAdvert())
        # b has not watched host-1 for host_dead, but the incarnation changed.
        (taken,) = await b.acquire(ob, [_req("x")])
        _expect(taken.token > held.token, f"takeover from an old incarnation gave {taken}")
        _expect(await space.holders("x") == {ob}, "old incarnation's entry survived the takeover")


@_check
async def check_left_holder_waits(make_backends: BackendFactory) -> None:
    """An entry left behind by a host that left cleanly is taken only after host_dead."""
    async with _space(make_backends, 2) as space:
        a, b = space.backends
        oa, ob = space.owner(0, "vm-a"), space.owner(1, "vm-b")
        await a.acquire(oa, [_req("x")])
        await a.leave(clean=True)
        await _expect_busy(space, 1, ob, [_req("x")], "x", {oa})
        space.clock.advance(HOST_DEAD - EPSILON)
        await _expect_busy(space, 1, ob, [_req("x")], "x", {oa})
        space.clock.advance(EPSILON)
        await b.acquire(ob, [_req("x")])
        _expect(await space.holders("x") == {ob}, "takeover from a left host went wrong")


@_check
async def check_concurrent_acquire(make_backends: BackendFactory) -> None:
    """Concurrent requests from many hosts and domains never share an exclusive lease."""
    count = 4
    async with _space(make_backends, count) as space:
        for round_ in range(3):
            key = f"solo-{round_}"
            won: list[LeaseOwner] = []
            lost: list[ResourceBusyError] = []

            async def race(
                index: int, domain: str, key: str, won: list[LeaseOwner], lost: list[ResourceBusyError]
            ) -> None:
                owner = space.owner(index, domain)
                try:
                    await space.backends[index].acquire(owner, [_req(key)])
                except ResourceBusyError as exc:
                    lost.append(exc)
                else:
                    won.append(owner)

            async with anyio.create_task_group() as tg:
                for i in range(count):
                    for domain in ("vm-1", "vm-2"):
                        tg.start_soon(race, i, domain, key, won, lost)
            _expect(len(won) == 1 and len(lost) == 2 * count - 1, f"{len(won)} winners for {key}")
            winner = (won[0].host, won[0].domain)
            _expect(all(e.holders == (winner,) for e in lost), "a loser named the wrong holder")
            _expect(await space.holders(key) == set(won), f"holders of {key} disagree with the winner")

        # Overlapping multi-key requests: each key has at most one holder, and
        # every request got all of its keys or none.
        requests = {i: [f"ring-{i}", f"ring-{(i + 1) % count}"] for i in range(count)}
        granted: dict[int, bool] = {}

        async def ring(index: int) -> None:
            owner = space.owner(index, "vm-ring")
            try:
                await space.backends[index].acquire(owner, [_req(k) for k in requests[index]])
            except ResourceBusyError:
                granted[index] = False
            else:
                granted[index] = True

        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(ring, i)
        _expect(any(granted.values()), "no ring request was granted")
        for i, ok in granted.items():
            owner = space.owner(i, "vm-ring")
            for key in requests[i]:
                _expect((owner in await space.holders(key)) == ok, f"ring request {i} was granted in part")
        for key in {k for keys in requests.values() for k in keys}:
            _expect(len(await space.holders(key)) <= 1, f"{key} has several exclusive holders")


@_check
async def check_invalid_requests(make_backends: BackendFactory) -> None:
    """Contradictory requests raise InvalidParameterError and write nothing."""
    async with _space(make_backends, 1) as space:
        (a,) = space.backends
        oa = space.owner(0, "vm")
        await _raises(
            InvalidParameterError,
            a.acquire(oa, [_req("x"), _req("x", SHARED)]),
            "acquire of one key in two modes",
        )
        _expect(await a.records() == [], "an invalid request wrote records")


@_check
async def check_aclose(make_backends: BackendFactory) -> None:
    """aclose may be called more than once."""
    async with _space(make_backends, 2) as space:
        for backend in space.backends:
            await backend.aclose()
            await backend.aclose()


@_check
async def check_own_old_incarnation_dead(make_backends: BackendFactory) -> None:
    """A restarted host's new incarnation may re-take a lease its old incarnation held."""
    async with _space(make_backends, 2, joined=1) as space:
        a, restarted = space.backends
        oa = space.owner(0, "vm-a")
        (held,) = await a.acquire(oa, [_req("x")])
        await restarted.hosts()
        space.clock.advance(HOST_DEAD)
        await restarted.join(space.hosts[0], "inc-restarted", HostAdvert())
        (again,) = await restarted.acquire(oa, [_req("x")])
        _expect(again.token > held.token, f"re-acquire by a new incarnation gave {again}")
        record = await space.record("x")
        _expect(
            record is not None and [h.incarnation for h in record.holders] == ["inc-restarted"],
            f"the old incarnation's entry survived: {record}",
        )


@_check
async def check_transfer(make_backends: BackendFactory) -> None:
    """transfer moves every lease at once with fresh tokens; a third host stays refused."""
    async with _space(make_backends, 3) as space:
        a, b, c = space.backends
        oa, ob, oc = space.owner(0, "vm"), space.owner(1, "vm"), space.owner(2, "other")
        held = await a.acquire(oa, [_req("x"), _req("y", SHARED)])
        await c.acquire(oc, [_req("y", SHARED)])
        moved = await a.transfer(oa, ob, space.incarnations[1], held)
        _expect([m.key for m in moved] == ["x", "y"], f"transfer moved {moved}")
        for old, new in zip(held, moved, strict=True):
            _expect(new.token > old.token and new.mode is old.mode, f"transfer gave {new} for {old}")
        _expect(await space.holders("x") == {ob}, "x is not the destination's alone after transfer")
        _expect(await space.holders("y") == {ob, oc}, "the other shared holder of y was disturbed")
        await _expect_busy(space, 2, oc, [_req("x")], "x", {ob})
        again = await a.transfer(oa, ob, space.incarnations[1], held)
        _expect(again == moved, f"a retried transfer gave {again}, the first gave {moved}")
        (mine,) = await b.acquire(ob, [_req("x")])
        _expect(mine == moved[0], f"the destination does not hold what was transferred: {mine}")


@_check
async def check_transfer_fencing(make_backends: BackendFactory) -> None:
    """transfer refuses a stale token or a lease the source lost, and changes nothing."""
    async with _space(make_backends, 2) as space:
        a, b = space.backends
        oa, ob = space.owner(0, "vm"), space.owner(1, "vm")
        held = await a.acquire(oa, [_req("x"), _req("y")])
        stale = [held[0], Lease(held[1].key, held[1].mode, held[1].token - 1)]
        before = await a.records()
        err = await _raises(
            StaleLockStateError,
            a.transfer(oa, ob, space.incarnations[1], stale),
            "transfer with a stale token",
        )
        _expect(tuple(err.resources) == ("y",), f"stale transfer names {err.resources}")
        await a.release(oa, ["y"])
        before = await a.records()
        await _raises(
            LeaseLostError, a.transfer(oa, ob, space.incarnations[1], held), "transfer of a lost lease"
        )
        _expect(await b.records() == before, "a refused transfer changed the records")


ALL_CHECKS: tuple[Check, ...] = tuple(_REGISTERED)
"""Every check, in the order :func:`check_lease_backend` runs them."""
